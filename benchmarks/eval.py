"""Evaluation throughput: the family's predict vs the loop research scripts usually write.

    python benchmarks/eval.py --device cuda --json eval.json                          # T5-large
    python benchmarks/eval.py --model smollm2-135m --device cpu --json eval-smollm2.json
    python benchmarks/eval.py --device cpu --quick

Both predict the same synthetic prompts (random real words of the model's vocabulary, a task with
4 labels) with the same model:

* ``--model t5-large`` (default): the T5-large architecture with random weights (tiny with
  --quick), 2,048 prompts of 40-400 tokens;
* ``--model smollm2-135m`` (or any decoder-only model jumplora loads: a bundled name, a .gguf
  file, a folder): the real SmolLM2-135M-Instruct, 512 prompts of 40-128 tokens.

* ours: ``Family.predict`` (prompts sorted by length into batches of --batch-size, greedy
  ``generate`` with the KV cache, under inference_mode; the decoder-only family left-pads and
  computes the logits of the last position only);
* naive: batches of 32 in dataset order, ``tokenizer(padding=True)`` (left padding for a
  decoder-only model, without which its answers would be wrong) and ``model.generate(max_new_tokens=...,
  num_beams=1)`` per batch, under no_grad; for a decoder-only model with the logits of every
  position (``logits_to_keep=0``), as a forward without that argument computes them.

A fair comparison needs the same decoding work: random weights may emit the end token early in one
batch and not in another. So ``min_new_tokens`` is set on the model's generation config to the same
budget that both pass as ``max_new_tokens`` (the family's: the longest label's tokens + the end
token); every ``generate`` call then decodes exactly that many tokens, and a wrapper around
``model.generate`` checks it on every call's output and counts the rows decoded.
"""

from __future__ import annotations

import random
import time

import torch
from transformers import AutoTokenizer

import common
from jumplora.data import Example, Task
from jumplora.families import CausalFamily, Seq2SeqFamily, load_model

LABELS = ("world politics", "science and technology", "sports", "business and finance")
NAIVE_BATCH = 32


def synthetic_task(tokenizer, count: int, shortest: int = 40, longest: int = 400, seed: int = 0) -> Task:
    """``count`` test examples whose prompts are about ``shortest``-``longest`` tokens of real words."""
    # Whole words of a sentencepiece ("▁word") or BPE ("Ġword") vocabulary.
    words = [piece[1:] for piece in tokenizer.get_vocab() if piece[:1] in ("▁", "Ġ") and piece[1:].isalpha()]
    words.sort()  # the vocabulary's order is a dict's: sort so the seed alone fixes the text
    rng = random.Random(seed)
    task = Task("synthetic", "What is the topic of the text?", LABELS)
    overhead = len(tokenizer(task.prompt(""))["input_ids"])
    examples = []
    for _ in range(count):
        length = rng.randint(shortest, longest) - overhead
        examples.append(Example(" ".join(rng.choices(words, k=length)), rng.choice(LABELS)))
    task.test = examples
    return task


def count_generated(model, budget: int, counter: dict) -> None:
    """Wrap ``model.generate`` to check that each call decodes exactly ``budget`` new tokens per row."""
    generate = model.generate
    decoder_only = not model.config.is_encoder_decoder

    def counted(*args, **kwargs):
        output = generate(*args, **kwargs)
        # A decoder-only model returns prompt + continuation; T5 the decoder start token + continuation.
        new_tokens = output.shape[1] - (kwargs["input_ids"].shape[1] if decoder_only else 1)
        assert new_tokens == budget, f"a generate call decoded {new_tokens} tokens, not {budget}"
        counter["rows"] += output.shape[0]
        return output

    model.generate = counted


def naive_predict(model, tokenizer, task: Task, examples, max_new_tokens: int) -> list[str]:
    device = next(model.parameters()).device
    decoder_only = not model.config.is_encoder_decoder
    extra = {"logits_to_keep": 0} if decoder_only else {}  # every position's logits
    if decoder_only:
        tokenizer.padding_side = "left"
    predictions = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), NAIVE_BATCH):
            prompts = [task.prompt(e.sentence) for e in examples[start : start + NAIVE_BATCH]]
            inputs = tokenizer(prompts, padding=True, truncation=True, max_length=512, return_tensors="pt").to(device)
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=1, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id, **extra)
            if decoder_only:
                output = output[:, inputs["input_ids"].shape[1]:]
            predictions += tokenizer.batch_decode(output, skip_special_tokens=True)
    return predictions


def load(args, device: torch.device):
    """(model, tokenizer, family, shortest, longest prompt) for --model."""
    if args.model == "t5-large":
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        model = common.t5(args.quick, device).to(common.DTYPES[args.dtype]).eval()
        return model, tokenizer, Seq2SeqFamily(tokenizer, max_source_length=512), 40, 400
    model, tokenizer, _ = load_model(args.model, family="causal", dtype=common.DTYPES[args.dtype], device=device)
    return model.eval(), tokenizer, CausalFamily(tokenizer, max_source_length=512), 40, 128


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--model", default="t5-large", help="t5-large (random weights) or a decoder-only model jumplora "
                                                       "loads (smollm2-135m, a .gguf file, a folder)")
    p.add_argument("--batch-size", type=int, default=256, help="ours: rows per batch")
    p.add_argument("--examples", type=int, help="prompts (default 2048 for T5, 512 otherwise)")
    p.add_argument("--tokenizer", default=str(common.TOKENIZER), help="a local T5 tokenizer folder (T5 only)")
    args = p.parse_args()
    device = common.check_device(args)
    model, tokenizer, family, shortest, longest = load(args, device)
    count = args.examples or (2048 if args.model == "t5-large" else 512)
    count = min(count, 512 if args.model == "t5-large" else 64) if args.quick else count
    task = synthetic_task(tokenizer, count, shortest, longest)
    budget = max(map(len, family.label_ids(task.labels)))  # the longest label's tokens + its end token
    model.generation_config.min_new_tokens = budget  # no early end token: the same work in both
    counter = {"rows": 0}
    count_generated(model, budget, counter)
    lengths = [len(ids) for ids in family.prompt_ids(task, task.test)]

    methods = {
        f"ours: {type(family).__name__}.predict (sorted, batch {args.batch_size})":
            lambda examples: family.predict(model, task, examples, batch_size=args.batch_size),
        f"naive: dataset order, batch {NAIVE_BATCH}, padding=True":
            lambda examples: naive_predict(model, tokenizer, task, examples, budget),
    }
    sizes = (common.T5_TINY if args.quick else common.T5_LARGE) if args.model == "t5-large" else args.model
    rows = [common.metadata(device, args.dtype, model=args.model, sizes=sizes, examples=count, new_tokens=budget,
                            prompt_tokens={"min": min(lengths), "mean": round(sum(lengths) / count, 1), "max": max(lengths)})]
    for name, predict in methods.items():
        predict(task.test[:64])  # warm-up: kernels, allocator
        common.free_memory(device)
        counter["rows"] = 0
        with common.peak_memory(device) as peak:
            common.synchronize(device)
            started = time.perf_counter()
            predictions = predict(task.test)
            common.synchronize(device)
            seconds = time.perf_counter() - started
        assert len(predictions) == count and counter["rows"] == count, "every example decoded exactly once"
        rows.append({"name": name, "gamma": None, "ms": round(seconds * 1e3, 1), "seconds": round(seconds, 3),
                     "examples_per_s": float(f"{count / seconds:.4g}"), "peak_mib": peak["mib"]})
    for row in rows[1:]:  # the throughput ratio, from the unrounded times (same examples: naive's time / ours)
        row["ratio_vs_naive"] = round(rows[2]["ms"] / row["ms"], 3)
    common.report(rows, ["name", "seconds", "examples_per_s", "ratio_vs_naive", "peak_mib"], args.json)


if __name__ == "__main__":
    main()
