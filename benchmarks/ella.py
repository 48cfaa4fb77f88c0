"""ELLA's (and O-LoRA's) penalty, forward + backward: stacked by shape vs one layer at a time.

    python benchmarks/ella.py --device cuda --json ella-gpu.json
    python benchmarks/ella.py --device cpu --threads 1 --json ella-cpu.json
    python benchmarks/ella.py --device cpu --quick

The penalty λ·(1/L)·Σ_layers ‖β·ΔW_eff ⊙ W_past‖² is computed at every training step of ``ella`` and
``jumplora+ella``, over every adapted layer. Two models, r = 8 on q and v:

* ``minilm``: the real all-MiniLM-L6-v2 (12 adapted layers of 384×384): a small model, where the
  per-layer Python and kernel launches of a loop are most of the cost;
* ``t5-large``: the T5-large architecture with random weights (144 adapted layers of 1024×1024:
  encoder q/v, decoder self- and cross-attention q/v); ``--quick`` uses a tiny T5 instead.

Rows: ``loop`` is the formula one layer at a time through autograd (each layer's B·A, its gate,
the product with its W_past: what jumplora 0.1 did), the baseline of ``ratio_vs_loop``; ``stacked``
is ``EllaPenalty`` (one batched product per shape of layer, hand-written backward).
Each in two settings: plain LoRA (``ella``) and JumpLoRA's sparse mode after S_start (γ = 0.5, the
gate and its threshold gradient live; ``jumplora+ella``). The script first checks that the two give
the same penalty and gradients. With ``--olora-tasks N`` (default 14) also O-LoRA's
λ₁ Σ_layers Σ_{i<t} ‖A_i·A_tᵀ‖²: ``loop`` one layer and past task at a time, ``stacked`` the
strategy's penalty (each layer's past A concatenated, layers of a shape stacked).
Median of --iters after --warmup calls. ``saved_mib``: what
autograd keeps from the forward for the backward (W_past included), the memory the penalty holds
through a training step's backward. ``ops``: operations dispatched to kernels by one forward +
backward, about one kernel launch each on a GPU, where the loop's count makes it host-bound.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

import common
from jumplora import AdapterConfig, AdapterSet, EllaPenalty
from jumplora.families.sources import resolve_model
from jumplora.strategies import ella as ella_module

LAMBDA = 1e4


def build(model_name: str, quick: bool, device: torch.device, kind: str):
    """The model with r = 8 adapters on q/v, a ΔW that is not zero and a random W_past per layer."""
    if model_name == "minilm":
        from transformers import AutoModel

        model = AutoModel.from_pretrained(resolve_model(None).path).to(device)
        targets = ("query", "value")
    else:
        model = common.t5(quick, device)
        targets = ("q", "v")
    model.requires_grad_(False)
    adapters = AdapterSet(model, AdapterConfig(kind=kind, r=8, alpha=32, targets=targets))
    generator = torch.Generator(device).manual_seed(0)
    ella = EllaPenalty("sparse")
    for name, layer in adapters.layers.items():
        nn.init.normal_(layer.lora_B, std=0.02)
        ella.past[name] = torch.randn(layer.delta().shape, device=device, generator=generator) * 1e-3
    adapters.begin_task(1000)
    if kind == "jumplora":
        adapters.initialise_thresholds()
        for layer in adapters.layers.values():
            layer.gamma = 0.5
    return adapters, ella


def loop_penalty(adapters: AdapterSet, ella: EllaPenalty, lam: float) -> torch.Tensor:
    """The penalty one layer at a time (the baseline)."""
    names = [n for n in adapters.layers if n in ella.past]
    total = 0
    for name in names:
        layer = adapters.layers[name]
        delta = layer.jumped_delta() if adapters.gate_active else layer.delta()
        total = total + (layer.scaling * delta * ella.past[name]).square().sum()
    return lam * total / len(names)


def saved_mib(penalty) -> float:
    """MiB that autograd keeps from the forward of ``penalty()`` for its backward (each storage once).

    W_past, saved by both ways, is counted too. A device-independent measure of the memory the
    penalty adds between a step's forward and backward."""
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        value = penalty()
    del value
    return round(sum(storages.values()) / 2**20, 1)


def count_ops(fn) -> int:
    """Operations dispatched below autograd by one call of ``fn`` (forward and backward).

    Each costs some microseconds of host time and, views aside, launches a kernel on a GPU: this
    count is what makes a penalty over many small layers host-bound there, and it can be taken on
    any device.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Counter.calls += 1
            return func(*args, **(kwargs or {}))

    with Counter():
        fn()
    return Counter.calls


def olora_strategy(model_name: str, quick: bool, device: torch.device, past_tasks: int):
    """O-LoRA's strategy on the model's adapters, with ``past_tasks`` random earlier A per layer."""
    from jumplora.config import RunConfig
    from jumplora.strategies.methods import make_strategy
    from jumplora.strategies.registry import parse_method

    adapters, _ = build(model_name, quick, device, "lora")
    config = RunConfig.from_dict(dict(methods=["olora"], r=8, alpha=32.0, olora_lambda=0.5))
    strategy = make_strategy(parse_method("olora"), adapters.model, config, num_tasks=past_tasks + 1)
    strategy._adapters, strategy.index = adapters, past_tasks
    generator = torch.Generator(device).manual_seed(1)
    strategy.regulariser.past_A = {name: [torch.randn(layer.lora_A.shape, device=device, generator=generator) * 0.1
                              for _ in range(past_tasks)] for name, layer in adapters.layers.items()}
    return strategy


def olora_loop(strategy) -> torch.Tensor:
    """λ₁ Σ_layers Σ_{i<t} ‖A_i·A_tᵀ‖²_F one layer and past task at a time (jumplora 0.1)."""
    return strategy.config.weights.olora_lambda * sum(
        (past @ layer.lora_A.t()).square().sum()
        for name, layer in strategy.adapters.layers.items() for past in strategy.regulariser.past_A[name])


def compare(label: str, ways: dict, adapters: AdapterSet, gamma, device, iters: int, warmup: int, profile) -> list[dict]:
    """Check that the ways give the same value and gradients, then time each (the first is the baseline)."""
    params = adapters.parameters()
    results = {}
    for way, penalty in ways.items():
        value = penalty()
        results[way] = (value.detach(), torch.autograd.grad(value, params, allow_unused=True, materialize_grads=True))
    (first, first_grads), (other, other_grads) = results.values()
    torch.testing.assert_close(other, first, rtol=1e-5, atol=0)
    for mine, theirs in zip(other_grads, first_grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6 * float(theirs.abs().max()))
    del results
    rows, baseline = [], None
    for way, penalty in ways.items():
        def step():
            torch.autograd.grad(penalty(), params, allow_unused=True)

        common.free_memory(device)
        with common.peak_memory(device) as peak:
            ms = common.median(common.time_ms(step, device, iters, warmup))
        baseline = baseline or ms
        name = f"{label}: {way}"
        rows.append({"name": name, "layers": len(adapters.layers), "gamma": gamma, "ms": round(ms, 3),
                     "ratio_vs_loop": round(ms / baseline, 3), "peak_mib": peak["mib"],
                     "saved_mib": saved_mib(penalty), "ops": count_ops(step)})
        if profile and profile in name:
            common.profile(name, step, device)
    return rows


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], dtype=False)
    p.add_argument("--iters", type=int, help="timed calls (default 100 on CUDA, 10 on the CPU)")
    p.add_argument("--warmup", type=int, help="untimed calls first (default 20 on CUDA, 3 on the CPU)")
    p.add_argument("--models", default="minilm,t5-large", help="comma-separated: minilm, t5-large")
    p.add_argument("--olora-tasks", type=int, default=14, help="also O-LoRA's penalty with this many earlier "
                   "tasks' A per layer (default 14: the last task of a 15-task stream; 0: skip)")
    p.add_argument("--stack-entries", type=int, help="override the library's cap on entries per stack "
                   f"(CPU {ella_module.CPU_STACK_ENTRIES}, GPU {ella_module.DEVICE_STACK_ENTRIES}), e.g. to count "
                   "on the CPU the operations of the GPU layout")
    args = p.parse_args()
    if args.stack_entries:
        ella_module.CPU_STACK_ENTRIES = ella_module.DEVICE_STACK_ENTRIES = args.stack_entries
    device = common.check_device(args)
    iters = args.iters or (100 if device.type == "cuda" else 10)
    warmup = args.warmup or (20 if device.type == "cuda" else 3)
    models = [m.strip() for m in args.models.split(",")]
    unknown = sorted(set(models) - {"minilm", "t5-large"})
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; use minilm and/or t5-large")

    rows = [common.metadata(device, "fp32", lam=LAMBDA, r=8, iters=iters, warmup=warmup,
                            stack_entries=ella_module.CPU_STACK_ENTRIES if device.type == "cpu" else ella_module.DEVICE_STACK_ENTRIES,
                            t5=common.T5_TINY if args.quick else common.T5_LARGE)]
    for model_name in models:
        for kind, setting in (("lora", "ella (lora)"), ("jumplora", "jumplora+ella sparse, γ=0.5")):
            adapters, ella = build(model_name, args.quick, device, kind)
            ways = {"loop": partial(loop_penalty, adapters, ella, LAMBDA), "stacked": partial(ella, adapters, LAMBDA)}
            rows += compare(f"{model_name} {setting}", ways, adapters, 0.5 if kind == "jumplora" else None,
                            device, iters, warmup, args.profile)
            del adapters, ella
        if args.olora_tasks:
            strategy = olora_strategy(model_name, args.quick, device, args.olora_tasks)
            ways = {"loop": partial(olora_loop, strategy), "stacked": strategy.penalty}
            rows += compare(f"{model_name} olora, {args.olora_tasks} past tasks", ways, strategy.adapters, None,
                            device, iters, warmup, args.profile)
            del strategy
    common.report(rows, ["name", "layers", "ms", "ratio_vs_loop", "peak_mib", "saved_mib", "ops"], args.json)


if __name__ == "__main__":
    main()
