"""Find the ``results.json`` files below some run folders, check them, and say which stream each ran.

A *stream* is the sequence of tasks a run learned: a benchmark order (``order 1`` ... ``order 6``),
the bundled ``demo`` stream, or a ``custom`` list of tasks. Runs are compared only within a stream.
The checks cover what the report reads; a file that fails one is an error naming the file and field.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jumplora.config import RunConfig
from jumplora.data.benchmark import benchmark_of_order
from jumplora.errors import JumploraError
from jumplora.metrics import accuracy_matrix_from_json
from jumplora.data.stream import DEFAULT_ORDER

RESULTS = "results.json"
SKIPPED_FOLDER = "single_task"  # FWT baselines: one task each, not a stream
# The JumpLoRA settings a method label names when they differ from a run's defaults (also what a
# results.json without them ran with): RunConfig's own defaults, so the two cannot drift apart.
VARIANT_DEFAULTS = {key: getattr(RunConfig, key) for key in ("threshold_mode", "ella_delta")}


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
    results: dict
    method: str  # the method, plus its non-default JumpLoRA settings: "jumplora+ella (per_block)"
    seed: int
    stream: Stream
    accuracy: np.ndarray  # T x T, percent, NaN where not measured

    @property
    def finished(self) -> int:
        return self.results["finished_tasks"]

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
    try:
        results = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise JumploraError(f"{path} is not readable JSON ({error}): re-run or delete it") from None
    _check(results, path)
    config = results.get("config") or {}
    return Run(
        path=path,
        results=results,
        method=_method_label(results["method"], config),
        seed=results["seed"],
        stream=_stream(results["tasks"], config),
        accuracy=accuracy_matrix_from_json(results["accuracy_matrix"]),
    )


def _method_label(method: str, config: dict) -> str:
    """The method and the JumpLoRA settings it ran with when they are not the defaults (Table 3)."""
    if not method.startswith("jumplora"):
        return method
    variant = [str(config[k]) for k, default in VARIANT_DEFAULTS.items() if config.get(k, default) != default]
    return f"{method} ({', '.join(variant)})" if variant else method


def _stream(tasks: list[str], config: dict) -> Stream:
    benchmark = config.get("benchmark")
    order = config.get("order")
    if config.get("tasks") or config.get("task_file"):
        order = None  # an explicit task list replaces the benchmark's orders
    elif order is None and benchmark in DEFAULT_ORDER:
        order = DEFAULT_ORDER[benchmark]
    if order is not None:
        return Stream(tuple(tasks), int(order), benchmark_of_order(order), f"order {order}")
    name = "custom" if config.get("tasks") or config.get("task_file") else "demo"
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


def _check(results, path: Path) -> None:
    """Raise a one-line error for the first field the report cannot read."""
    def fail(field: str, expected: str) -> None:
        raise JumploraError(f"{path}: {field} must be {expected}; re-run `jumplora run` or fix the file")

    if not isinstance(results, dict):
        fail("the file", "a JSON object")
    tasks = results.get("tasks")
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
        fail("'tasks'", "a non-empty list of task names")
    if not isinstance(results.get("method"), str):
        fail("'method'", "a method name")
    if not isinstance(results.get("seed"), int):
        fail("'seed'", "an integer")
    T = len(tasks)
    finished = results.get("finished_tasks")
    if not isinstance(finished, int) or not 1 <= finished <= T:
        fail("'finished_tasks'", f"an integer from 1 to {T}")
    matrix = results.get("accuracy_matrix")
    row_shape = ("list", OPTIONAL_NUMBER)
    if not (_fits(matrix, ("list", row_shape)) and len(matrix) == T and all(len(row) == T for row in matrix)):
        fail("'accuracy_matrix'", f"a {T} x {T} list of numbers and nulls (one row and column per task)")
    if any(value is None for value in matrix[finished - 1][:finished]):
        fail(f"row {finished - 1} of 'accuracy_matrix'", f"filled up to column {finished - 1} (finished_tasks = {finished})")
    for field, shape in OPTIONAL_FIELDS.items():
        value = results
        for key in field:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None and not _fits(value, shape):
            fail("'" + ".".join(field) + "'", _describe(shape))
    single = results.get("single_task_accuracy")
    if single is not None and len(single) != T:
        fail("'single_task_accuracy'", f"null or one accuracy per task ({T})")


# What the report reads besides the accuracy matrix; each may be absent (older files, other methods).
NUMBER, OPTIONAL_NUMBER, TEXT, ANY = "number", "number or null", "text", "anything"
RESUME = "resume"  # {"after_task": number, "changed": {setting: {"was": ..., "now": ...}}}
OPTIONAL_FIELDS = {
    ("config",): ("map", ANY),
    ("collapsed",): ("list", TEXT),
    ("timing", "total_s"): NUMBER,
    ("single_task_accuracy",): ("list", NUMBER),
    ("losses",): ("map", ("list", NUMBER)),
    ("mean_sparsity",): ("map", NUMBER),
    ("sparsity",): ("map", ("map", NUMBER)),
    ("threshold_trace",): ("map", ("map", ("list", NUMBER))),
    ("jaccard", "mean_with_previous"): ("list", OPTIONAL_NUMBER),
    ("chosen_lambda",): ("list", NUMBER),
    ("resumes",): ("list", RESUME),
    ("rank_accuracy_matrix",): ("list", ("list", OPTIONAL_NUMBER)),
    ("answer_origins",): ("list", ("list", ("optional", ("map", NUMBER)))),
    ("gate",): ("map", ("map", ("map", ("map", NUMBER)))),
}


def _fits(value, shape) -> bool:
    """Whether ``value`` (parsed JSON) has ``shape``: NUMBER, OPTIONAL_NUMBER, TEXT, ANY, ("list", inner) or
    ("map", inner), an object whose every value has shape ``inner``."""
    if shape == ANY:
        return True
    if shape == TEXT:
        return isinstance(value, str)
    if shape == RESUME:
        changed = value.get("changed") if isinstance(value, dict) else None
        return (_fits(value.get("after_task"), NUMBER) and isinstance(changed, dict)
                and all(isinstance(v, dict) and v.keys() == {"was", "now"} for v in changed.values()))
    if shape in (NUMBER, OPTIONAL_NUMBER):
        return (value is None and shape == OPTIONAL_NUMBER) or (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))
    kind, inner = shape
    if kind == "optional":
        return value is None or _fits(value, inner)
    if kind == "list":
        return isinstance(value, list) and all(_fits(v, inner) for v in value)
    return isinstance(value, dict) and all(_fits(v, inner) for v in value.values())


def _describe(shape) -> str:
    """``shape`` in words: ("map", ("list", NUMBER)) -> "an object of lists of numbers"."""
    if isinstance(shape, str):
        return {NUMBER: "a number", OPTIONAL_NUMBER: "a number or null", TEXT: "a name", ANY: "anything",
                RESUME: "a resume record"}[shape]
    kind, inner = shape
    if kind == "optional":
        return f"null or {_describe(inner)}"
    return f"{'a list' if kind == 'list' else 'an object'} of {_plural(inner)}"


def _plural(shape) -> str:
    if isinstance(shape, str):
        return {NUMBER: "numbers", OPTIONAL_NUMBER: "numbers or nulls", TEXT: "names", ANY: "values",
                RESUME: "{after_task, changed: {setting: {was, now}}} records"}[shape]
    kind, inner = shape
    if kind == "optional":
        return f"nulls or {_plural(inner)}"
    return f"{'lists' if kind == 'list' else 'objects'} of {_plural(inner)}"
