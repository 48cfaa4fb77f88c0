"""One adapted 1024×1024 linear layer, forward + backward over 8192 tokens: JumpLoRA vs PEFT's LoRA.

    python benchmarks/layer.py --device cuda --dtype bf16 --json layer-bf16.json
    python benchmarks/layer.py --device cpu --quick

Rows: PEFT's LoRA layer (the baseline, ratio 1.0), then our layer at γ = 0, 0.5, 1, once with the
fused path (folded weight + hand-written backward, the default) and once with the plain autograd
path (fused=False). At γ = 0 both take the same low-rank path, so those two rows measure the same
code: their difference is the noise of the measurement.

The input x requires a gradient (as inside a model, where the layer below needs it); each iteration
is `layer(x).backward(grad_out)` with the gradients reset to None first. --dtype bf16 stores the
base weight and x in bf16; the adapters stay fp32 in both libraries (ours always; PEFT's
get_peft_model upcasts them by default, autocast_adapter_dtype=True): the metadata row records the
adapter dtypes that were actually used. B is random (std 0.02) and τ is put at the 90% quantile of
|B·A|, so the gate keeps ~10% of ΔW, as during training.

Before anything is timed, the fused path is checked against the autograd path (output and the
gradients of x, A, B, log τ) at every γ, and our γ = 0 layer against PEFT with the same A and B,
so a broken fast path cannot produce a nice number.

``--kernels`` adds the fused rows at γ = 0.5 and 1 with the layer's elementwise kernels run the other
way than the library's default on the device: eager on CUDA, compiled on the CPU.

``--sampled-gradient`` adds the measurement behind a road not taken: at γ = 1 the gradient of ΔW
is needed only at the kept entries (and the few in the threshold's band), so the weight gradient
gᵀx could be a sampled matmul (``torch.sparse.sampled_addmm`` over the kept entries as CSR)
instead of the dense product. Rows: dense gᵀx (the baseline of ``ratio_vs_dense``), then the
sampled product with 5, 10 and 15% of the entries kept, each checked against the dense one.
"""

from __future__ import annotations

import math

import peft
import torch
from torch import nn

import common
from jumplora import AdapterConfig
from jumplora.adapters import AdaptedLinear, ThresholdGroup

GAMMAS = (0.0, 0.5, 1.0)
KEPT_FRACTION = 0.1
# Relative error ‖got − want‖ / ‖want‖ allowed between two paths that round differently.
TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2}


def make_ours(base: nn.Linear, fused: bool, gamma: float, seed: int = 0, kernels=None) -> AdaptedLinear:
    torch.manual_seed(seed)  # the same A and B for every layer built from the same seed
    config = AdapterConfig(kind="jumplora", r=8, alpha=32, dropout=0.0, fused=fused)
    layer = AdaptedLinear(base, config, ThresholdGroup(-4.7, base.weight.device), kernels=kernels)
    nn.init.normal_(layer.lora_B, std=0.02)
    with torch.no_grad():
        magnitudes = layer.delta().abs().flatten()
        quantile = magnitudes.kthvalue(int((1 - KEPT_FRACTION) * magnitudes.numel())).values
        layer.threshold.log_threshold.fill_(math.log(float(quantile)))
    layer.gamma = gamma
    return layer


def make_peft(base: nn.Linear, ours: AdaptedLinear) -> nn.Module:
    """PEFT's LoRA layer around ``base``, with the A and B of ``ours`` (checked against it at γ = 0)."""
    holder = nn.Module()
    holder.proj = base
    config = peft.LoraConfig(r=8, lora_alpha=32, target_modules=["proj"], lora_dropout=0.0)
    layer = peft.get_peft_model(holder, config).base_model.model.proj
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(ours.lora_A)
        layer.lora_B["default"].weight.copy_(ours.lora_B)
    return layer


def trainable(layer: nn.Module) -> list[nn.Parameter]:
    params = [p for p in layer.parameters() if p.requires_grad]
    threshold = getattr(layer, "threshold", None)  # ours: the group lives outside the layer
    return params + ([threshold.log_threshold] if threshold is not None else [])


def step(layer: nn.Module, x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """One forward + backward; returns the output (the gradients are left on x and the parameters)."""
    x.grad = None
    for p in trainable(layer):
        p.grad = None
    out = layer(x)
    out.backward(grad_out)
    return out


def outputs(layer: nn.Module, x: torch.Tensor, grad_out: torch.Tensor) -> dict[str, torch.Tensor]:
    out = step(layer, x, grad_out).detach()
    results = {"output": out.float(), "grad x": x.grad.float()}
    for p, name in zip(trainable(layer), ("grad A", "grad B", "grad log τ")):
        if p.grad is not None:  # τ gets no gradient at γ = 0
            results[name] = p.grad.float()
    return results


def check_close(label: str, got: dict, want: dict, tolerance: float) -> None:
    for key in want:
        error = float((got[key] - want[key]).norm() / want[key].norm().clamp_min(1e-30))
        assert error < tolerance, f"{label}: {key} differs by {error:.2e} (relative), more than {tolerance:.0e}"


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    # A step is ~1 ms on an H100: more iterations there, so the clocks are up and the median is steady.
    p.add_argument("--iters", type=int, help="timed iterations, the median is reported (default: cuda 200, cpu 20)")
    p.add_argument("--warmup", type=int, help="untimed iterations first (default: cuda 50, cpu 5)")
    p.add_argument("--kernels", action="store_true",
                   help="add fused γ=0.5 and 1 with the layer's kernels eager on CUDA / compiled on the CPU")
    p.add_argument("--sampled-gradient", action="store_true",
                   help="also time gᵀx sampled at the kept entries against the dense gᵀx")
    args = p.parse_args()
    device = common.check_device(args)
    dtype = common.DTYPES[args.dtype]
    # (batch, sequence, d): 8 × 1024 = 8192 tokens through a d × d weight.
    batch, seq, d = (2, 256, 256) if args.quick else (8, 1024, 1024)
    cuda = device.type == "cuda"
    iters, warmup = (5, 2) if args.quick else (args.iters or (200 if cuda else 20), args.warmup or (50 if cuda else 5))

    torch.manual_seed(0)
    base = nn.Linear(d, d, bias=False, device=device, dtype=dtype).requires_grad_(False)  # T5's q/v have no bias
    x = torch.randn(batch, seq, d, device=device, dtype=dtype, requires_grad=True)
    grad_out = torch.randn(batch, seq, d, device=device, dtype=dtype)

    # name: (γ, layer, its Kernels when not the library's default on the device)
    layers = {"peft lora": (None, make_peft(base, make_ours(base, True, 0.0)), None)}
    for gamma in GAMMAS:
        for fused in (True, False):
            layers[f"jumplora {'fused' if fused else 'plain'} γ={gamma}"] = (gamma, make_ours(base, fused, gamma), None)
    if args.kernels:
        label, compiled_kernels = common.other_kernels(device)
        for gamma in GAMMAS[1:]:
            kernels = common.layer_kernels(device, compiled_kernels)
            layers[f"jumplora fused γ={gamma}, {label}"] = (gamma, make_ours(base, True, gamma, kernels=kernels), kernels)

    tolerance = TOLERANCE[args.dtype]
    for gamma in GAMMAS:
        fused, plain = layers[f"jumplora fused γ={gamma}"][1], layers[f"jumplora plain γ={gamma}"][1]
        check_close(f"fused vs plain at γ={gamma}", outputs(fused, x, grad_out), outputs(plain, x, grad_out), tolerance)
    ours, theirs = outputs(layers["jumplora fused γ=0.0"][1], x, grad_out), outputs(layers["peft lora"][1], x, grad_out)
    check_close("ours at γ=0 vs peft", {k: ours[k] for k in theirs}, theirs, tolerance)
    print(f"correctness: fused ≡ plain at γ ∈ {GAMMAS} and γ=0 ≡ PEFT (relative error < {tolerance:.0e})")

    peft_layer = layers["peft lora"][1]
    rows = [common.metadata(
        device, args.dtype, shape=[batch, seq, d], tokens=batch * seq, iters=iters, warmup=warmup,
        kept_fraction=KEPT_FRACTION, adapter_dtype_ours=str(layers["jumplora fused γ=0.0"][1].lora_A.dtype),
        adapter_dtype_peft=str(peft_layer.lora_A["default"].weight.dtype),
    )]
    baseline = None
    for name, (gamma, layer, kernels) in layers.items():
        if kernels is not None:  # the other kernels must compute what the default ones do
            want = outputs(layers[f"jumplora fused γ={gamma}"][1], x, grad_out)
            check_close(name, outputs(layer, x, grad_out), want, tolerance)
        common.free_memory(device)
        with common.peak_memory(device) as peak:
            times = common.time_ms(lambda: step(layer, x, grad_out), device, iters, warmup)
            if args.profile and args.profile in name:
                common.profile(name, lambda: step(layer, x, grad_out), device)
        ms = common.median(times)
        baseline = baseline or ms
        rows.append({"name": name, "gamma": gamma, "ms": round(ms, 4), "ms_min": round(min(times), 4),
                     "ratio_vs_lora": round(ms / baseline, 3), "peak_mib": peak["mib"]})
    columns = ["name", "gamma", "ms", "ms_min", "ratio_vs_lora", "peak_mib"]
    if args.sampled_gradient:
        rows += sampled_gradient_rows(x.detach(), grad_out, device, iters, warmup, tolerance)
        columns.append("ratio_vs_dense")
    common.report(rows, columns, args.json)


def sampled_gradient_rows(x, grad_out, device, iters: int, warmup: int, tolerance: float) -> list[dict]:
    """Dense gᵀx against gᵀx computed only at a kept fraction of the entries (a CSR pattern)."""
    import warnings

    warnings.filterwarnings("ignore", message=".*[Ss]parse.*")  # CSR support is marked beta
    g = grad_out.reshape(-1, grad_out.shape[-1]).t().contiguous()  # (d_out, tokens)
    x2 = x.reshape(-1, x.shape[-1])  # (tokens, d_in)
    dense = g @ x2
    scores = torch.rand(dense.shape, device=device, generator=torch.Generator(device).manual_seed(0))
    rows, baseline = [], None
    for kept in (None, 0.05, 0.10, 0.15):
        if kept is None:
            name, fn = "weight gradient gᵀx: dense", lambda: g @ x2
        else:
            mask = (scores < kept).to_sparse_csr()
            pattern = torch.sparse_csr_tensor(mask.crow_indices(), mask.col_indices(),
                                              torch.zeros(mask.values().shape, dtype=g.dtype, device=device),
                                              size=dense.shape)
            name = f"weight gradient gᵀx: sampled, {kept:.0%} kept"
            fn = lambda pattern=pattern: torch.sparse.sampled_addmm(pattern, g, x2, beta=0.0)
            try:
                got = fn()
            except RuntimeError as error:  # e.g. a dtype the sparse kernels do not support
                rows.append({"name": name, "gamma": 1.0, "ms": None, "error": str(error).splitlines()[0][:120]})
                continue
            want = dense[scores < kept]
            error = float((got.values() - want).norm() / want.norm())
            assert error < tolerance, f"{name}: differs from the dense product by {error:.2e}"
        times = common.time_ms(fn, device, iters, warmup)
        ms = common.median(times)
        baseline = baseline or ms
        rows.append({"name": name, "gamma": 1.0, "ms": round(ms, 4), "ms_min": round(min(times), 4),
                     "ratio_vs_dense": round(ms / baseline, 3), "peak_mib": None})
    return rows


if __name__ == "__main__":
    main()
