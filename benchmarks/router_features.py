"""Which features route an input to its task best: a small sentence encoder, or the model's own state 0.

    python benchmarks/router_features.py --json router-features.json        # SC order 1, ~20 min on 2 cores
    python benchmarks/router_features.py --train 100 --test 50              # fewer inputs, for a busy CPU
    python benchmarks/router_features.py --quick                            # 16 train / 8 test per task

For each task of SC order 1 (dbpedia, amazon, yahoo, agnews; the README's sizes: 400 training, 100
test and 100 dev examples per task, the authors' prompt), the router (jumplora.routing) is fitted on
the training inputs' features in stream order and calibrated on the dev inputs; then every test
input is routed among the four tasks. Two features, each of the whole prompt and of the text alone:

* ``minilm``: all-MiniLM-L6-v2 (bundled, 22.7M), mean-pooled and L2-normalised (the router's default);
* ``smollm2 state 0``: SmolLM2-135M-Instruct as loaded (no task's update), the mean over the real
  tokens of its last hidden state, L2-normalised.

Rows: routing accuracy per task and overall (%), inputs called "no learned task" (%), and the
feature cost in ms per input (the same process, one after the other).
"""

from __future__ import annotations

import time

import common
from jumplora.data.stream import StreamConfig, resolve_stream
from jumplora.routing import FeatureEncoder, Router


def measure(encode, tasks, view) -> dict:
    started, count = time.perf_counter(), 0
    router = Router()
    for task in tasks:
        router.add(task.name, encode([view(task, e) for e in task.train]), encode([view(task, e) for e in task.dev]))
        count += len(task.train) + len(task.dev)
    per_task, outside, total, right = {}, 0, 0, 0
    for index, task in enumerate(tasks):
        chosen, _ = router.route(encode([view(task, e) for e in task.test]))
        count += len(task.test)
        per_task[task.name] = round(100 * float((chosen == index).mean()), 1)
        outside += int((chosen == -1).sum())
        right += int((chosen == index).sum())
        total += len(chosen)
    ms = 1000 * (time.perf_counter() - started) / count
    return {"accuracy": round(100 * right / total, 1), "per_task": per_task,
            "outside_pct": round(100 * outside / total, 1), "ms_per_input": round(ms, 1)}


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], dtype=False)
    p.add_argument("--data-dir", default=str(common.TOKENIZER.parents[1] / "data" / "cl_benchmark"))
    p.add_argument("--train", type=int, default=400, help="training inputs per task (dev and test: --test)")
    p.add_argument("--test", type=int, default=100, help="test (and dev) inputs per task")
    args = p.parse_args()
    device = common.check_device(args)
    train, test = (16, 8) if args.quick else (args.train, args.test)
    tasks = resolve_stream(StreamConfig(benchmark="sc", order=1, data_dir=args.data_dir, max_train_per_task=train,
                                        max_test_per_task=test, prompt_format="authors"))
    views = {"prompt": lambda task, e: task.prompt(e.sentence), "text": lambda task, e: e.sentence}
    rows = [common.metadata(device, "fp32", train=train, test=test, tasks=[t.name for t in tasks])]
    encoders = {"minilm": FeatureEncoder,
                "smollm2 state 0": lambda: FeatureEncoder("smollm2-135m", max_length=128, batch_size=16, family="causal")}
    for name, make in encoders.items():
        encode = make()
        for view, text_of in views.items():
            result = measure(encode, tasks, text_of)
            rows.append({"name": f"{name}, from the {view}", "gamma": None, "ms": None, "peak_mib": None, **result})
            print(f"  {rows[-1]['name']}: {result['accuracy']}% {result['per_task']} outside {result['outside_pct']}% "
                  f"{result['ms_per_input']} ms/input", flush=True)
        del encode
    common.report(rows, ["name", "accuracy", "per_task", "outside_pct", "ms_per_input"], args.json)


if __name__ == "__main__":
    main()
