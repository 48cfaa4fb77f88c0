"""The record of one run (a method, a seed, a stream of T tasks): the ``results.json`` form, owned here.

The runner fills a :class:`RunRecord` task by task and writes it after each one; resume reads it
back from a checkpoint; the report reads every ``results.json`` through :meth:`RunRecord.read`,
which checks each field it relies on and names the first that is wrong. The fields::

    tasks, method, model, seed          what ran
    accuracy_matrix                     T×T, percent; row t = after task t, null above the diagonal
    metrics                             {oa, bwt, fwt} over the finished tasks
    single_task_accuracy                a_{0,i} per task (FWT baselines) or null
    rank_accuracy_matrix, rank_metrics  causal models with --also-rank: the options ranked
    answer_origins                      T×T of {own, <other task>: n, other} counts (metrics.answer_origins)
    sparsity, mean_sparsity             per task (and layer): zeros of the merged JumpLoRA update
    thresholds, threshold_trace, gate   per task: τ per group at the end, per step, and the gate at
                                        S_start / S_final / the end ({kept, tau} per group)
    jaccard                             {per_layer: T×T per layer, mean_with_previous: per task}
    losses, timing, dropped             per task: the loss per step; seconds and steps; records dropped
    config                              the flat settings of the latest part of the run
    finished_tasks, collapsed           tasks done; tasks whose gate kept nothing or everything
    chosen_lambda, lambda_search        ELLA's λ per task as it trained (given, auto or searched), and the
                                        search's dev accuracies (App. A.2), when run
    lambda_balance                      ELLA's λ auto per task: {lambda, steps, ratio_at_choice, ratio_after}
                                        (EllaPenalty.balance)
    routed_accuracy_matrix, routed_metrics   T×T and {oa, bwt}: each input answered by the state of the
                                        task the router chose from its prompt (jumplora.routed)
    routing                             at the latest row: {from_prompt, from_text: inputs routed to their
                                        own task per task (%), outside: no learned task's (%),
                                        confusion: [true task][chosen task] counts, from the prompt}
    resumes                             [{after_task, changed: {key: {was, now}}}] per resume
    config_key                          a single-task baseline's settings (its cache key)
    data_sha256                         per task and split, the SHA-256 of its data (Task.fingerprints)
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jumplora import metrics
from jumplora.errors import JumploraError
from jumplora.files import json_sha256, write_json

OPTIONAL = ("rank_accuracy_matrix", "rank_metrics", "chosen_lambda", "lambda_search", "resumes", "config_key",
            "data_sha256", "lambda_balance", "routed_accuracy_matrix", "routed_metrics", "routing")


def _empty_matrix(tasks: list[str]) -> list[list]:
    return [[None] * len(tasks) for _ in tasks]


@dataclass
class RunRecord:
    tasks: list[str]
    method: str
    seed: int
    model: str = ""
    accuracy_matrix: list[list[float | None]] | None = None
    metrics: dict = field(default_factory=dict)
    single_task_accuracy: list[float] | None = None
    sparsity: dict[str, dict[str, float]] = field(default_factory=dict)
    mean_sparsity: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)
    threshold_trace: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    gate: dict[str, dict] = field(default_factory=dict)
    jaccard: dict = field(default_factory=lambda: {"mean_with_previous": [], "per_layer": {}})
    answer_origins: list[list[dict | None]] = field(default_factory=list)
    losses: dict[str, list[float]] = field(default_factory=dict)
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    timing: dict = field(default_factory=lambda: {"tasks": {}})
    finished_tasks: int = 0
    collapsed: list[str] = field(default_factory=list)
    rank_accuracy_matrix: list[list[float | None]] | None = None
    rank_metrics: dict | None = None
    chosen_lambda: list[float] | None = None
    lambda_search: dict | None = None
    resumes: list[dict] | None = None
    config_key: dict | None = None
    data_sha256: dict[str, dict[str, str]] | None = None
    lambda_balance: dict[str, dict] | None = None
    routed_accuracy_matrix: list[list[float | None]] | None = None
    routed_metrics: dict | None = None
    routing: dict | None = None

    def __post_init__(self) -> None:
        if not self.answer_origins:
            self.answer_origins = _empty_matrix(self.tasks)

    # -- the matrices as arrays ------------------------------------------------------------------

    @property
    def accuracy(self) -> np.ndarray:
        """The accuracy matrix, NaN where not measured (all NaN before the first task)."""
        return _matrix(self.accuracy_matrix, self.tasks)

    @property
    def rank_accuracy(self) -> np.ndarray | None:
        return None if self.rank_accuracy_matrix is None else _matrix(self.rank_accuracy_matrix, self.tasks)

    @property
    def routed_accuracy(self) -> np.ndarray | None:
        return None if self.routed_accuracy_matrix is None else _matrix(self.routed_accuracy_matrix, self.tasks)

    @property
    def complete(self) -> bool:
        return self.finished_tasks == len(self.tasks)

    def extend_to(self, tasks: list[str], dropped: dict[str, dict[str, int]]) -> None:
        """Grow the record of a run to a longer stream whose first tasks are this run's: the
        matrices get rows and columns (null) for the new tasks."""
        new = len(tasks) - len(self.tasks)
        if tasks[: len(self.tasks)] != self.tasks or new < 0:
            raise JumploraError(f"the run learned {self.tasks}: a resume can only add tasks after them, not "
                                f"change them ({tasks})")

        def grow(rows):
            return None if rows is None else [list(row) + [None] * new for row in rows] + _empty_matrix(tasks)[-new:]

        self.accuracy_matrix = grow(self.accuracy_matrix)
        self.rank_accuracy_matrix = grow(self.rank_accuracy_matrix)
        self.routed_accuracy_matrix = grow(self.routed_accuracy_matrix)
        self.answer_origins = grow(self.answer_origins)
        self.single_task_accuracy = None  # computed again for the whole stream when asked for
        self.dropped = {**self.dropped, **{name: dropped[name] for name in tasks[len(self.tasks):]}}
        self.tasks = list(tasks)

    # -- the one recorder: a run's loop writes each task's outcome through these -----------------------

    def add_row(self, t: int, row, single_task: list[float] | None = None) -> None:
        """Row t of the matrices (an ``evaluation.EvaluationRow``) and the metrics over the tasks so far."""
        accuracy = self.accuracy
        accuracy[t, : t + 1] = row.accuracy
        self.accuracy_matrix = metrics.accuracy_matrix_to_json(accuracy)
        self.answer_origins[t][: t + 1] = row.origins
        if row.ranked is not None:
            ranked = self.rank_accuracy if self.rank_accuracy is not None else np.full(accuracy.shape, np.nan)
            ranked[t, : t + 1] = row.ranked
            self.rank_accuracy_matrix = metrics.accuracy_matrix_to_json(ranked)
            self.rank_metrics = metrics.run_metrics(ranked, t + 1)
        self.single_task_accuracy = single_task
        self.metrics = metrics.run_metrics(accuracy, t + 1, single_task)
        self.finished_tasks = t + 1
        if row.routed is not None:
            self._add_routed(t, row.routed, accuracy.shape)

    def _add_routed(self, t: int, routed, shape) -> None:
        matrix = self.routed_accuracy if self.routed_accuracy is not None else np.full(shape, np.nan)
        matrix[t, : t + 1] = routed.accuracy
        self.routed_accuracy_matrix = metrics.accuracy_matrix_to_json(matrix)
        self.routed_metrics = metrics.run_metrics(matrix, t + 1)
        self.routing = {"from_prompt": _numbers(routed.routing["prompt"]), "from_text": _numbers(routed.routing["text"]),
                        "outside": _numbers(routed.outside), "confusion": routed.confusion}

    def add_training(self, label: str, trained, eval_seconds: float) -> None:
        """How task ``label`` trained (a ``train.TaskTraining``): its loss curve and its timing."""
        self.losses[label] = trained.losses
        self.timing["tasks"][label] = {"train_s": round(trained.seconds, 3), "eval_s": round(eval_seconds, 3),
                                       "steps": trained.steps}
        if trained.search is not None:
            self.lambda_search = {**(self.lambda_search or {}), label: trained.search}

    def add_gate(self, label: str, trained, masks: list[dict]) -> None:
        """A JumpLoRA task's merged update: its sparsity per layer, τ, the gate over training, and
        the Jaccard overlap of its support (``masks[-1]``) with every earlier task's."""
        sparsity = trained.update.sparsity()
        self.sparsity[label] = sparsity
        self.mean_sparsity[label] = float(np.mean(list(sparsity.values())))
        self.thresholds[label] = trained.thresholds
        self.threshold_trace[label] = trained.threshold_trace
        self.gate[label] = trained.gate
        if any(s in (0.0, 1.0) for s in sparsity.values()):
            # A gate that keeps nothing (or everything) is no longer a sparse update: say so.
            self.collapsed.append(label)
        # The matrix of the earlier tasks is already in the record (J is symmetric): only the new
        # task's row is computed.
        known = self.jaccard["per_layer"]
        per_layer = {name: metrics.jaccard_matrix([m[name] for m in masks], known.get(name)) for name in masks[-1]}
        self.jaccard["per_layer"] = per_layer
        # Entry t of the mean over layers of metrics.mean_with_previous: (1/t)·Σ_{s<t} J(t, s).
        last = [metrics.mean_with_previous(matrix)[-1] for matrix in per_layer.values()]
        self.jaccard["mean_with_previous"].append(None if len(masks) == 1 else float(np.mean(last)))

    # -- JSON --------------------------------------------------------------------------------------

    def to_json(self) -> dict:
        """The results.json object (optional fields only when set)."""
        values = dataclasses.asdict(self)
        return {k: v for k, v in values.items() if k not in OPTIONAL or v is not None}

    @classmethod
    def from_json(cls, values, source: str | Path = "results.json") -> RunRecord:
        """A record from parsed JSON, after checking every field (an error names the first bad one)."""
        _check(values, source)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        # null where the record keeps an empty map or list (older files) reads as that default
        return cls(**{k: v for k, v in values.items() if k in fields
                      and (v is not None or fields[k].default_factory is dataclasses.MISSING)})

    @classmethod
    def read(cls, path: Path) -> RunRecord:
        """A results.json, checked field by field and against its own SHA-256 (files written before
        2026-12-07 carry none): a hand-edited record is refused, not reported."""
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise JumploraError(f"{path} is not readable JSON ({error}): re-run or delete it") from None
        recorded = values.pop("sha256", None) if isinstance(values, dict) else None
        if recorded is not None and recorded != json_sha256(values):
            raise JumploraError(f"{path} does not match its own SHA-256: it was edited or damaged; resume the run to "
                                "write it again (results are written by jumplora, not by hand)")
        return cls.from_json(values, path)

    def write(self, path: Path) -> None:
        """Atomically (a reader, or a crash, never sees half a file), with the SHA-256 of its content."""
        values = self.to_json()
        write_json(Path(path), {**values, "sha256": json_sha256(values)})


def _numbers(values) -> list[float | None]:
    return [None if v is None or np.isnan(v) else float(v) for v in values]


def _matrix(rows, tasks: list[str]) -> np.ndarray:
    return metrics.accuracy_matrix_from_json(rows if rows is not None else _empty_matrix(tasks))


# -- validation: what the report and resume read ---------------------------------------------------

NUMBER, OPTIONAL_NUMBER, TEXT, ANY = "number", "number or null", "text", "anything"
RESUME = "resume"  # {"after_task": number, "changed": {setting: {"was": ..., "now": ...}}}
SHAPES = {
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
    ("data_sha256",): ("map", ("map", TEXT)),
    ("lambda_balance",): ("map", ("map", OPTIONAL_NUMBER)),
    ("routed_accuracy_matrix",): ("list", ("list", OPTIONAL_NUMBER)),
    ("routing", "from_prompt"): ("list", OPTIONAL_NUMBER),
    ("routing", "from_text"): ("list", OPTIONAL_NUMBER),
    ("routing", "confusion"): ("list", ("list", NUMBER)),
}


def _check(results, path) -> None:
    """Raise a one-line error for the first field that is not as :class:`RunRecord` writes it."""
    def fail(name: str, expected: str) -> None:
        raise JumploraError(f"{path}: {name} must be {expected}; re-run `jumplora run` or fix the file")

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
    if not isinstance(finished, int) or not 1 <= finished <= T:  # written after a task, never before
        fail("'finished_tasks'", f"an integer from 1 to {T}")
    matrix = results.get("accuracy_matrix")
    if not (_fits(matrix, ("list", ("list", OPTIONAL_NUMBER))) and len(matrix) == T and all(len(r) == T for r in matrix)):
        fail("'accuracy_matrix'", f"a {T} x {T} list of numbers and nulls (one row and column per task)")
    if any(value is None for value in matrix[finished - 1][:finished]):
        fail(f"row {finished - 1} of 'accuracy_matrix'", f"filled up to column {finished - 1} (finished_tasks = {finished})")
    for name, shape in SHAPES.items():
        value = results
        for key in name:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None and not _fits(value, shape):
            fail("'" + ".".join(name) + "'", _describe(shape))
    single = results.get("single_task_accuracy")
    if single is not None and len(single) != T:
        fail("'single_task_accuracy'", f"null or one accuracy per task ({T})")


def _fits(value, shape) -> bool:
    """Whether ``value`` (parsed JSON) has ``shape``: NUMBER, OPTIONAL_NUMBER, TEXT, ANY, RESUME,
    ("list", inner), ("map", inner) (an object whose every value has shape ``inner``) or
    ("optional", inner) (null or ``inner``)."""
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


WORDS = {NUMBER: ("a number", "numbers"), OPTIONAL_NUMBER: ("a number or null", "numbers or nulls"),
         TEXT: ("a name", "names"), ANY: ("anything", "values"),
         RESUME: ("a resume record", "{after_task, changed: {setting: {was, now}}} records")}


def _describe(shape, plural: bool = False) -> str:
    """``shape`` in words: ("map", ("list", NUMBER)) -> "an object of lists of numbers"."""
    if isinstance(shape, str):
        return WORDS[shape][plural]
    kind, inner = shape
    if kind == "optional":
        return f"{'nulls' if plural else 'null'} or {_describe(inner, plural)}"
    noun = {"list": ("a list", "lists"), "map": ("an object", "objects")}[kind][plural]
    return f"{noun} of {_describe(inner, plural=True)}"
