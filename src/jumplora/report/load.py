"""Find the ``results.json`` files below some run folders, check them, and say which stream each ran.

A *stream* is the sequence of tasks a run learned: a benchmark order (``order 1`` ... ``order 6``),
the bundled ``demo`` stream, or a ``custom`` list of tasks. Runs are compared only within a stream.
The checks cover what the report reads; a file that fails one is an error naming the file and field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jumplora.adapters.config import paper_threshold_mode
from jumplora.config import defaults
from jumplora.data.benchmark import BENCHMARK_ORDERS, DEFAULT_ORDER, benchmark_of_order
from jumplora.errors import JumploraError
from jumplora.record import RunRecord
from jumplora.run_folder import RESULTS_FILE as RESULTS
from jumplora.run_folder import SINGLE_TASK as SKIPPED_FOLDER

# The JumpLoRA settings a method label names when they differ from a run's defaults (also what a
# results.json without them ran with): RunConfig's own defaults, so the two cannot drift apart.
VARIANT_DEFAULTS = {key: defaults()[key] for key in ("threshold_mode", "ella_delta")}
ALL_ORDERS = [order for orders in BENCHMARK_ORDERS.values() for order in orders]


@dataclass(frozen=True)
class Stream:
    """The tasks of a run in training order, and where they come from."""

    tasks: tuple[str, ...]
    order: int | None  # benchmark order (1-6), None for the demo and custom streams
    benchmark: str  # "SC" (orders 1-3), "LS" (orders 4-6), "demo" or "custom"
    label: str  # "order 2", "demo", "custom" (numbered when several custom streams differ)


@dataclass(frozen=True)
class Run:
    """One results.json: a method trained on a stream with one seed."""

    path: Path
    record: RunRecord
    method: str  # the method, plus its non-default JumpLoRA settings: "jumplora+ella (per_block)"
    seed: int
    stream: Stream
    accuracy: np.ndarray  # T x T, percent, NaN where not measured

    @property
    def finished(self) -> int:
        return self.record.finished_tasks

    @property
    def complete(self) -> bool:
        return self.finished == len(self.stream.tasks)


def load_runs(run_dirs: list[Path]) -> list[Run]:
    """Every run below ``run_dirs``, each file once; an error when there is none or two clash."""
    if not run_dirs:
        raise JumploraError("no run folder given: pass the OUTPUT folder of `jumplora run`")
    paths = sorted({path.resolve() for folder in run_dirs for path in _results_files(Path(folder))})
    runs = _label_streams([_load_run(path) for path in paths])
    seen: dict[tuple, Path] = {}
    for run in runs:
        key = (run.stream.label, run.method, run.seed)
        if key in seen:
            raise JumploraError(
                f"{seen[key]} and {run.path} are both {run.method} seed {run.seed} on {run.stream.label}: "
                "pass only one of their folders"
            )
        seen[key] = run.path
    return runs


def _results_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise JumploraError(f"run folder {folder} {problem}: pass the OUTPUT folder of `jumplora run`")
    found = [path for path in folder.rglob(RESULTS) if SKIPPED_FOLDER not in path.relative_to(folder).parts[:-1]]
    if not found:
        raise JumploraError(
            f"no {RESULTS} below {folder}: pass the OUTPUT folder of `jumplora run` (written once a task is finished)"
        )
    return found


def _load_run(path: Path) -> Run:
    record = RunRecord.read(path)
    order = record.config.get("order")
    if order is not None and (isinstance(order, bool) or str(order) not in {str(o) for o in ALL_ORDERS}):
        raise JumploraError(f"{path}: its settings name the order {str(order)[:20]!r}, which is none of "
                            f"{', '.join(map(str, ALL_ORDERS))}: restore the file (or re-run)")
    return Run(path=path, record=record, method=_method_label(record.method, record.config), seed=record.seed,
               stream=_stream(record.tasks, record.config), accuracy=record.accuracy)


def _method_label(method: str, config: dict) -> str:
    """The method and the JumpLoRA settings it ran with when they are not the defaults (Table 3)."""
    if not method.startswith("jumplora"):
        return method
    config = dict(config)
    if config.get("threshold_mode") == "paper":  # the paper's choice for the method and benchmark
        config["threshold_mode"] = paper_threshold_mode(method, config.get("benchmark"))
    variant = [str(config[k]) for k, default in VARIANT_DEFAULTS.items() if config.get(k, default) != default]
    return f"{method} ({', '.join(variant)})" if variant else method


def _stream(tasks: list[str], config: dict) -> Stream:
    benchmark = config.get("benchmark")
    order = config.get("order")
    custom = config.get("tasks") or config.get("task_file") or config.get("add_tasks")
    if custom:
        order = None  # an explicit task list (or tasks added to an order) is not the benchmark's order
    elif order is None and benchmark in DEFAULT_ORDER:
        order = DEFAULT_ORDER[benchmark]
    if order is not None:
        return Stream(tuple(tasks), int(order), benchmark_of_order(order), f"order {order}")
    name = "custom" if custom else "demo"
    return Stream(tuple(tasks), None, name, name)


def _label_streams(runs: list[Run]) -> list[Run]:
    """Number the labels of streams that share one ("custom 1", "custom 2") but not their tasks."""
    task_lists: dict[str, list[tuple[str, ...]]] = {}
    for run in runs:
        lists = task_lists.setdefault(run.stream.label, [])
        if run.stream.tasks not in lists:
            lists.append(run.stream.tasks)
    relabelled = []
    for run in runs:
        lists = task_lists[run.stream.label]
        if len(lists) > 1:
            label = f"{run.stream.label} {lists.index(run.stream.tasks) + 1}"
            run = dataclasses.replace(run, stream=dataclasses.replace(run.stream, label=label))
        relabelled.append(run)
    return relabelled
