"""Evaluation throughput on T5: Seq2SeqFamily.predict vs the loop research scripts usually write.

    python benchmarks/eval.py --device cuda --json eval.json
    python benchmarks/eval.py --device cpu --quick

Both predict the same 2,048 synthetic prompts (random real words from the T5 vocabulary, 40-400
tokens, a task with 4 labels) with the same model (the T5-large architecture, random weights; tiny
with --quick):

* ours: ``Seq2SeqFamily.predict`` (prompts sorted by length into batches of --batch-size, greedy
  ``generate`` with the KV cache, under inference_mode);
* naive: batches of 32 in dataset order, ``tokenizer(padding=True)`` and
  ``model.generate(max_new_tokens=..., num_beams=1)`` per batch, under no_grad.

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
from jumplora.families import Seq2SeqFamily

LABELS = ("world politics", "science and technology", "sports", "business and finance")
NAIVE_BATCH = 32


def synthetic_task(tokenizer, count: int, shortest: int = 40, longest: int = 400, seed: int = 0) -> Task:
    """``count`` test examples whose prompts are about ``shortest``-``longest`` tokens of real words."""
    words = [piece[1:] for piece in tokenizer.get_vocab() if piece.startswith("▁") and piece[1:].isalpha()]
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

    def counted(*args, **kwargs):
        output = generate(*args, **kwargs)
        new_tokens = output.shape[1] - 1  # the first column is the decoder start token
        assert new_tokens == budget, f"a generate call decoded {new_tokens} tokens, not {budget}"
        counter["rows"] += output.shape[0]
        return output

    model.generate = counted


def naive_predict(model, tokenizer, task: Task, examples, max_new_tokens: int) -> list[str]:
    device = next(model.parameters()).device
    predictions = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), NAIVE_BATCH):
            prompts = [task.prompt(e.sentence) for e in examples[start : start + NAIVE_BATCH]]
            inputs = tokenizer(prompts, padding=True, truncation=True, max_length=512, return_tensors="pt").to(device)
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=1, do_sample=False)
            predictions += tokenizer.batch_decode(output, skip_special_tokens=True)
    return predictions


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=256, help="ours: rows per batch")
    p.add_argument("--examples", type=int, default=2048)
    p.add_argument("--tokenizer", default=str(common.TOKENIZER), help="a local T5 tokenizer folder")
    args = p.parse_args()
    device = common.check_device(args)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    count = min(args.examples, 512) if args.quick else args.examples
    task = synthetic_task(tokenizer, count)
    model = common.t5(args.quick, device).to(common.DTYPES[args.dtype]).eval()
    family = Seq2SeqFamily(tokenizer, max_source_length=512)
    budget = family.prepare(model, task)  # what the family decodes: the longest label + its end token
    model.generation_config.min_new_tokens = budget  # no early end token: the same work in both
    counter = {"rows": 0}
    count_generated(model, budget, counter)
    lengths = [len(ids) for ids in family.prompt_ids(task, task.test)]

    methods = {
        f"ours: Seq2SeqFamily.predict (sorted, batch {args.batch_size})":
            lambda examples: family.predict(model, task, examples, batch_size=args.batch_size),
        f"naive: dataset order, batch {NAIVE_BATCH}, padding=True":
            lambda examples: naive_predict(model, tokenizer, task, examples, budget),
    }
    rows = [common.metadata(device, args.dtype, t5=common.T5_TINY if args.quick else common.T5_LARGE, examples=count, new_tokens=budget,
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
                     "examples_per_s": round(count / seconds, 1), "peak_mib": peak["mib"]})
    for row in rows[1:]:
        row["ratio_vs_naive"] = round(row["examples_per_s"] / rows[2]["examples_per_s"], 3)  # throughput ratio
    common.report(rows, ["name", "seconds", "examples_per_s", "ratio_vs_naive", "peak_mib"], args.json)


if __name__ == "__main__":
    main()
