"""Synthetic results.json files in the layout `jumplora run` writes, every field filled; and reading a run's.

    write_run(root, fake_results("jumplora+inclora", seed=1, matrix=...))  # root/<method>/seed1/results.json
    read_run(root / "jumplora+inclora" / "seed1")  # the parsed results.json
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TASKS = ["alpha", "beta", "gamma"]
# A small encoder-decoder (T5 naming: the block index, then the sub-layer index) adapted on q and v.
LAYERS = [f"{stack}.block.{b}.layer.0.SelfAttention.{p}" for stack in ("encoder", "decoder") for b in range(3) for p in "qv"]
MATRIX = [[80.0, None, None], [70.0, 90.0, None], [60.0, 84.0, 75.0]]


def fake_results(method: str = "inclora", seed: int = 0, matrix=None, tasks=None, order: int | None = None,
                 finished: int | None = None, threshold_mode: str = "global", ella_delta: str = "sparse") -> dict:
    """A run's results; JumpLoRA methods also get sparsity, thresholds, τ traces and Jaccard overlaps."""
    tasks = list(tasks or TASKS)
    matrix = [list(row) for row in (matrix or MATRIX)]
    finished = len(tasks) if finished is None else finished
    rng = np.random.default_rng(seed)
    steps = 30
    results = {
        "tasks": tasks, "method": method, "model": "fake-t5", "seed": seed, "accuracy_matrix": matrix,
        "metrics": {}, "single_task_accuracy": [78.0 + i for i in range(len(tasks))],
        "sparsity": {}, "mean_sparsity": {}, "thresholds": {}, "threshold_trace": {},
        "jaccard": {"mean_with_previous": [], "per_layer": {}},
        "losses": {t: list(2.0 * np.exp(-np.arange(steps) / 10) + 0.1 * rng.random(steps)) for t in tasks[:finished]},
        "config": {"benchmark": "sc" if order else "demo", "order": order, "threshold_mode": threshold_mode,
                   "ella_delta": ella_delta, "seeds": [seed]},
        "timing": {"tasks": {t: {"train_s": 1.0, "eval_s": 0.5, "steps": steps} for t in tasks[:finished]},
                   "total_s": 1.5 * finished},
        "finished_tasks": finished, "collapsed": [],
    }
    if method.startswith("jumplora"):
        _add_masks(results, tasks[:finished], steps, threshold_mode, rng)
    if method.endswith("ella"):
        results["chosen_lambda"] = [3e4, 1e2, 10.0][: len(tasks)]
    return results


def _add_masks(results: dict, tasks: list[str], steps: int, threshold_mode: str, rng) -> None:
    groups = ["model"] if threshold_mode == "global" else sorted({name.split(".layer.")[0] for name in LAYERS})
    for t, task in enumerate(tasks):
        sparsity = {name: 0.4 + 0.05 * int(name.split(".")[2]) + 0.1 * t + 0.02 * name.endswith("v") for name in LAYERS}
        results["sparsity"][task] = sparsity
        results["mean_sparsity"][task] = float(np.mean(list(sparsity.values())))
        trace = {g: [0.009] * (steps // 5) + list(3e-4 * (1 + k / 10 + 0.1 * rng.random(steps - steps // 5)))
                 for k, g in enumerate(groups)}
        results["threshold_trace"][task] = trace
        results["thresholds"][task] = {g: values[-1] for g, values in trace.items()}
        results["jaccard"]["mean_with_previous"].append(None if t == 0 else 0.2 + 0.01 * t)


def read_run(folder: Path) -> dict:
    """The parsed ``results.json`` of one run folder (``OUTPUT/<method>/seed<k>``)."""
    return json.loads((Path(folder) / "results.json").read_text())


def write_run(root: Path, results: dict) -> Path:
    """``root/<method>/seed<k>/results.json`` as the runner lays it out; returns the file."""
    path = root / results["method"] / f"seed{results['seed']}" / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results))
    return path
