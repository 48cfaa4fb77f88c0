"""The continual-learning benchmark folder: its index (``tasks.json``), its tasks and the papers' task orders."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from jumplora.data.records import examples_from_records, keep_labelled, read_json
from jumplora.data.tasks import SPLITS, Example, Task
from jumplora.errors import JumploraError

# Paper Table 6: orders 1-3 are the Standard CL benchmark (4 tasks), 4-6 the Long Sequence one (15);
# the first is each benchmark's default. The tasks of each order are read from tasks.json.
BENCHMARK_ORDERS = {"sc": (1, 2, 3), "ls": (4, 5, 6)}
DEFAULT_ORDER = {name: orders[0] for name, orders in BENCHMARK_ORDERS.items()}


@dataclass(frozen=True)
class TaskSpec:
    """One entry of ``tasks.json``: where a task's split files are and how it is prompted."""

    name: str
    folder: Path
    group: str
    instruction: str
    labels: tuple[str, ...]


@dataclass
class Benchmark:
    """The benchmark index (``tasks.json``): the tasks and the task orders of the papers.

    Layout of ``root``: ``tasks.json`` and, per task, ``<path>/{train,dev,test}.json``, each a JSON
    array of ``{"sentence": str, "label": str}``. ``tasks.json`` is
    ``{"tasks": {name: {"path", "group", "instruction", "labels", "sizes"}}, "orders": {"1": [names], ...}}``.
    """

    root: Path
    tasks: dict[str, TaskSpec]
    orders: dict[str, list[str]]

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    def order(self, n: int | str) -> list[str]:
        """The task names of order ``n``, in training order."""
        key = str(n)
        if key not in self.orders:
            raise JumploraError(f"unknown task order {key!r}: valid orders are {', '.join(self.orders)}")
        return list(self.orders[key])

    def load_task(self, name: str, splits: Sequence[str] = SPLITS) -> Task:
        """Read ``splits`` of task ``name``; a split not asked for stays empty and is absent from ``dropped``."""
        if name not in self.tasks:
            raise JumploraError(f"unknown task {name!r}: known tasks are {', '.join(self.tasks)}")
        spec = self.tasks[name]
        loaded: dict[str, list[Example]] = {}
        dropped: dict[str, int] = {}
        for split in splits:
            if split not in SPLITS:
                raise JumploraError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
            path = spec.folder / f"{split}.json"
            records = read_json(path, f"{split} split of task {name}")
            if not isinstance(records, list) or not records:
                raise JumploraError(f"{path} must be a non-empty JSON array of {{'sentence', 'label'}} records")
            examples = examples_from_records(records, str(path))
            loaded[split], dropped[split] = keep_labelled(examples, spec.labels)
        return Task(spec.name, spec.instruction, spec.labels, dropped=dropped, source=str(spec.folder), **loaded)


def benchmark_of_order(n: int | str) -> str:
    """The benchmark an order belongs to: "SC" (Standard CL, orders 1-3) or "LS" (Long Sequence, 4-6)."""
    for name, orders in BENCHMARK_ORDERS.items():
        if str(n) in map(str, orders):
            return name.upper()
    known = ", ".join(str(order) for orders in BENCHMARK_ORDERS.values() for order in orders)
    raise JumploraError(f"unknown task order {str(n)!r}: valid orders are {known}")


def load_benchmark(data_dir: str | Path) -> Benchmark:
    """Read and check ``data_dir/tasks.json``; the split files are read later, by ``load_task``."""
    root = Path(data_dir).expanduser()
    hint = "pass --data-dir pointing at a folder with tasks.json"
    if not root.is_dir():
        raise JumploraError(f"benchmark folder {root} not found: {hint}")
    if not (root / "tasks.json").is_file():
        raise JumploraError(f"{root} has no tasks.json: {hint}")
    index = read_json(root / "tasks.json", "benchmark index")
    where = f"{root / 'tasks.json'}"
    if not isinstance(index, dict) or not isinstance(index.get("tasks"), dict) or not index["tasks"]:
        raise JumploraError(f"{where} must be an object with a non-empty 'tasks' object")
    tasks = {name: _task_spec(root, name, entry, where) for name, entry in index["tasks"].items()}
    orders = index.get("orders", {})
    if not isinstance(orders, dict):
        raise JumploraError(f"{where}: 'orders' must map an order name to a list of task names")
    for key, names in orders.items():
        if not isinstance(names, list):
            raise JumploraError(f"{where}: order {key!r} must be a list of task names")
        unknown = [n for n in names if n not in tasks]
        if unknown:
            raise JumploraError(f"{where}: order {key!r} names unknown tasks {unknown}: list only tasks of 'tasks'")
    return Benchmark(root, tasks, {str(key): list(names) for key, names in orders.items()})


def _task_spec(root: Path, name: str, entry: object, where: str) -> TaskSpec:
    fields = {"path": str, "instruction": str, "labels": list}
    if not isinstance(entry, dict):
        raise JumploraError(f"{where}: task {name!r} must be an object with fields {', '.join(fields)}")
    for key, kind in fields.items():
        if not isinstance(entry.get(key), kind):
            raise JumploraError(f"{where}: task {name!r} needs a {kind.__name__} field {key!r}")
    return TaskSpec(name, root / entry["path"], entry.get("group", ""), entry["instruction"], tuple(entry["labels"]))
