"""One full training step of T5-large with r = 8 adapters on q/v: PEFT's LoRA vs JumpLoRA.

    python benchmarks/step.py --device cuda --json step.json
    python benchmarks/step.py --device cpu --quick

The T5-large architecture is built from its config with random weights (nothing is downloaded):
the cost of a step does not depend on what the weights are. A step is forward, backward and AdamW
over the adapters, on a batch of 32 random sources of 256 tokens and targets of 8 tokens, the model
in train mode (T5's own dropout on), as the paper trains. Every configuration gets a freshly built
model (same seed) and its own peak-memory measurement, which includes the frozen weights.

Rows, fp32 weights: PEFT LoRA (the baseline of ratio_vs_lora), JumpLoRA at γ = 0, 0.5, 1 (γ forced
on every layer after the thresholds are initialised; B random, so the gate has something to keep).
Two "fast configuration" rows: (a) PEFT LoRA with fp32 weights under torch.autocast(bf16), the
usual research setup, and (b) JumpLoRA at γ = 0.5 with the frozen base stored in bf16
(model.to(bf16) before AdapterSet, adapters then fp32), no autocast; ratio_vs_peft_autocast is
(b)/(a).

``--compile`` adds two rows with the whole model wrapped in ``torch.compile`` (inductor; what
``jumplora run --compile`` does), which removes the Python and launch overhead of the ~20,000
operations of an eager step (the first warm-up step compiles): ``jumplora γ=0.5, torch.compile``
(fp32, against PEFT LoRA) and (c), which is (b) compiled (against (a)).

``--host-bound`` keeps T5-large's depth, heads and vocabulary but shrinks the widths (d_model 64)
and the batch (2 × 16 + 8 tokens): every operation of a step is still issued, each on a few
numbers, so the time of a step is the host's (Python, dispatch, launches). This is the part that
bounds a bf16 step on an H100 (144 ms of kernels in a 460 ms step) and it can be measured on a CPU.
Run it with ``--threads 1``; on a CPU compare fp32 rows (bf16 is emulated there).

``--kernels`` adds γ = 0.5 and 1 with the layer's elementwise kernels run the other way than the
library does by default on the device: eager on CUDA (where they are compiled), compiled on the CPU
(where they are eager). On CUDA this answers whether the compiled kernels pay for their own host
cost in a whole step; on the CPU with ``--host-bound`` it measures that host cost.
"""

from __future__ import annotations

from functools import partial

import peft
import torch
from torch import nn

import common
from jumplora import AdapterConfig, AdapterSet

# name, adapter ("peft" or "jumplora"), γ, base weights in bf16, autocast to bf16
CONFIGURATIONS = [
    ("peft lora", "peft", None, False, False),
    ("jumplora γ=0", "jumplora", 0.0, False, False),
    ("jumplora γ=0.5", "jumplora", 0.5, False, False),
    ("jumplora γ=1", "jumplora", 1.0, False, False),
    ("(a) peft lora, autocast bf16", "peft", None, False, True),
    ("(b) jumplora γ=0.5, bf16 base", "jumplora", 0.5, True, False),
]


def build(quick: bool, device: torch.device, adapter: str, gamma: float | None, bf16_base: bool,
          sizes: dict | None = None, kernels=None):
    """A fresh T5 (seed 0) with its adapters; returns the model and its trainable parameters."""
    model = common.t5(quick, device, sizes).train()
    if adapter == "peft":
        lora = peft.LoraConfig(r=8, lora_alpha=32, target_modules=["q", "v"], lora_dropout=0.0)
        model = peft.get_peft_model(model, lora)
        return model, [p for p in model.parameters() if p.requires_grad]
    model.requires_grad_(False)
    if bf16_base:
        model.to(torch.bfloat16)  # before AdapterSet: the adapters it creates are fp32
    adapters = AdapterSet(model, AdapterConfig(kind="jumplora", r=8, alpha=32), kernels=kernels)
    for layer in adapters.layers.values():
        nn.init.normal_(layer.lora_B, std=0.02)  # a ΔW that is not zero, as after some training
    adapters.begin_task(1000)
    if gamma > 0:
        adapters.initialise_thresholds()
        for layer in adapters.layers.values():
            layer.gamma = gamma
    return model, adapters.parameters()


def random_batch(vocab: int, batch: int, source: int, target: int, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(2, vocab, (batch, source), generator=generator)
    labels = torch.randint(2, vocab, (batch, target), generator=generator)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels.to(device)}


def train_step(model, optimizer, batch: dict, autocast: bool) -> None:
    optimizer.zero_grad(set_to_none=True)
    device_type = batch["input_ids"].device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], dtype=False)
    p.add_argument("--iters", type=int, default=20, help="timed steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="add the rows under torch.compile(model)")
    p.add_argument("--host-bound", action="store_true", help="T5-large's depth with tiny widths: the host's time per step")
    p.add_argument("--kernels", action="store_true",
                   help="add γ=0.5 and 1 with the layer's kernels eager on CUDA / compiled on the CPU")
    p.add_argument("--rows", help="comma-separated parts of row names to run (the two baselines always run), e.g. "
                                  "'compile' to fit the compiled rows into one short GPU session")
    args = p.parse_args()
    device = common.check_device(args)
    sizes = common.T5_HOST if args.host_bound else common.T5_TINY if args.quick else common.T5_LARGE
    batch_size, source, target = (2, 16, 8) if args.host_bound else (4, 64, 8) if args.quick else (32, 256, 8)
    iters, warmup = (3, 1) if args.quick else (args.iters, args.warmup)
    batch = random_batch(32128, batch_size, source, target, device)

    rows = [common.metadata(device, "fp32 (rows (a), (b), (c): see name)", t5=sizes, host_bound=args.host_bound,
                            batch=batch_size, source_tokens=source, target_tokens=target, iters=iters, warmup=warmup)]
    # + whether the model is compiled, and the layer kernels' mode (None: the library's default)
    configurations = [(*c, False, None) for c in CONFIGURATIONS]
    if args.compile:
        configurations += [("jumplora γ=0.5, torch.compile", "jumplora", 0.5, False, False, True, None),
                           ("(c) jumplora γ=0.5, bf16 base, torch.compile", "jumplora", 0.5, True, False, True, None)]
    if args.kernels:
        label, compiled_kernels = common.other_kernels(device)
        configurations += [(f"jumplora γ={g}, {label}", "jumplora", g, False, False, False, compiled_kernels)
                           for g in (0.5, 1.0)]
    if args.rows:
        wanted = [part.strip() for part in args.rows.split(",") if part.strip()]
        baselines = ("peft lora", "(a) peft lora, autocast bf16")
        configurations = [c for c in configurations if c[0] in baselines or any(w in c[0] for w in wanted)]
    for name, adapter, gamma, bf16_base, autocast, compiled, kernels in configurations:
        common.free_memory(device)
        with common.peak_memory(device) as peak:
            model, params = build(args.quick, device, adapter, gamma, bf16_base, sizes, common.layer_kernels(device, kernels))
            if compiled:
                model = torch.compile(model)
            optimizer = torch.optim.AdamW(params, lr=1e-3)
            step = partial(train_step, model, optimizer, batch, autocast)
            times = common.time_ms(step, device, iters, warmup)
            if args.profile and args.profile in name:
                common.profile(name, step, device)
        rows.append({"name": name, "gamma": gamma, "ms": round(common.median(times), 2), "ms_min": round(min(times), 2),
                     "peak_mib": peak["mib"], "trainable": sum(p.numel() for p in params)})
        del model, params, optimizer, step
        print(f"  {name}: {rows[-1]['ms']:.1f} ms", flush=True)
    by_name = {row["name"]: row for row in rows[1:]}
    lora, autocast = by_name["peft lora"]["ms"], by_name["(a) peft lora, autocast bf16"]["ms"]
    for row in rows[1:]:
        if row["name"].startswith(("(b)", "(c)")):
            row["ratio_vs_peft_autocast"] = round(row["ms"] / autocast, 3)
        else:
            row["ratio_vs_lora"] = round(row["ms"] / lora, 3)
    columns = ["name", "gamma", "ms", "ms_min", "ratio_vs_lora", "ratio_vs_peft_autocast", "peak_mib", "trainable"]
    common.report(rows, columns, args.json)


if __name__ == "__main__":
    main()
