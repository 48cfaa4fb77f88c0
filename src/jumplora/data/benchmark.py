"""Loading tasks: the CL benchmark folder, a user's own file, a dataset from the Hugging Face hub.

All three turn raw records (mappings with a text field and a label field) into :class:`Example`
through the same code, :func:`examples_from_records`, so a record is read the same way wherever it
comes from. They differ in what happens to a record whose label is not one of the task's labels:

- the benchmark and hub datasets drop it and count it in ``Task.dropped`` (the benchmark's MNLI
  test split and GLUE's hidden test labels carry such unlabelled records by design);
- a user's own file is an error naming the record: a typo in one's own labels should not vanish.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from jumplora.data.tasks import SPLITS, Example, Task, stratified_split
from jumplora.errors import JumploraError

# Paper Table 6: orders 1-3 are the Standard CL benchmark (4 tasks), 4-6 the Long Sequence one (15);
# the first is each benchmark's default. The tasks of each order are read from tasks.json.
BENCHMARK_ORDERS = {"sc": (1, 2, 3), "ls": (4, 5, 6)}
DEFAULT_ORDER = {name: orders[0] for name, orders in BENCHMARK_ORDERS.items()}
TASK_FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv")


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
            records = _read_json(path, f"{split} split of task {name}")
            if not isinstance(records, list) or not records:
                raise JumploraError(f"{path} must be a non-empty JSON array of {{'sentence', 'label'}} records")
            examples = examples_from_records(records, str(path))
            loaded[split], dropped[split] = _keep_labelled(examples, spec.labels)
        return Task(spec.name, spec.instruction, spec.labels, dropped=dropped, **loaded)


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
    index = _read_json(root / "tasks.json", "benchmark index")
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


def examples_from_records(
    records: Iterable[Mapping],
    source: str,
    text_column: str = "sentence",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
) -> list[Example]:
    """Turn raw records into examples; every loader goes through here.

    The text must be a string. The label may be a string, or an integer or boolean written as its
    string (``1`` -> ``"1"``, ``true`` -> ``"True"``), unless ``label_names`` is given (a hub
    ``ClassLabel``): then an integer label ``i`` in range becomes ``label_names[i]``.
    """
    examples = []
    for index, record in enumerate(records):
        where = f"record {index} of {source}"
        if not isinstance(record, Mapping):
            raise JumploraError(
                f"{where} is not an object: every record needs {text_column!r} and {label_column!r} fields"
            )
        for column in (text_column, label_column):
            if column not in record:
                raise JumploraError(
                    f"{where} has no {column!r} field (it has: {', '.join(map(str, record))}): "
                    f"every record needs {text_column!r} and {label_column!r} fields"
                )
        text, label = record[text_column], record[label_column]
        if not isinstance(text, str):
            raise JumploraError(f"{where}: field {text_column!r} must be a string, got {text!r}")
        if label_names is not None and isinstance(label, int) and 0 <= label < len(label_names):
            label = label_names[label]
        if not isinstance(label, (str, int)):  # bool is an int
            raise JumploraError(f"{where}: field {label_column!r} must be a string or an integer, got {label!r}")
        examples.append(Example(text, str(label)))
    return examples


def _keep_labelled(examples: list[Example], labels: Sequence[str]) -> tuple[list[Example], int]:
    """The examples whose label is one of ``labels``, and how many were dropped."""
    known = set(labels)
    kept = [example for example in examples if example.label in known]
    return kept, len(examples) - len(kept)


def load_task_file(
    path: str | Path,
    name: str,
    instruction: str,
    labels: Sequence[str] | None = None,
    text_column: str | None = None,
    label_column: str = "label",
    test_path: str | Path | None = None,
    dev_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Task:
    """A user's own task from a ``.jsonl``/``.ndjson`` (one object a line), ``.json`` (an array of
    objects), ``.csv`` or ``.tsv`` (a header row) file.

    Splits, the first rule that applies:

    1. ``test_path`` given: ``path`` is the training data, ``test_path`` the test data; a
       ``dev_fraction`` of the training data is set aside, class-stratified, as dev.
    2. the records have a ``split`` field (``train``, ``dev``/``validation`` or ``test``; every
       record then needs one): it decides, and the fractions are not used.
    3. otherwise one stratified, seeded cut: ``test_fraction`` test, ``dev_fraction`` dev, the rest train.

    ``text_column=None`` takes ``sentence``, or ``text`` when the records have no ``sentence``.
    ``labels=None`` takes the sorted distinct labels of the data (their order is the option order
    of the prompt). A record whose label is not in ``labels`` is an error naming the record.
    """
    _check_fractions(dev_fraction, 0.0 if test_path is not None else test_fraction)
    records = read_records(Path(path))
    if text_column is None:
        first = records[0] if isinstance(records[0], Mapping) else {}
        text_column = "text" if "sentence" not in first and "text" in first else "sentence"
    has_split = any("split" in record for record in records if isinstance(record, Mapping))
    examples = examples_from_records(records, str(path), text_column, label_column)
    test = []
    if test_path is not None:
        if has_split:
            raise JumploraError(f"{path} has a 'split' field and test_path is also given: use one of the two")
        test = examples_from_records(read_records(Path(test_path)), str(test_path), text_column, label_column)
    # Labels are strings: `labels: [0, 1]` in YAML means the labels "0" and "1" of the data.
    labels = tuple(map(str, labels)) if labels is not None else tuple(sorted({e.label for e in examples + test}))
    _check_labels(examples, labels, str(path))
    _check_labels(test, labels, str(test_path))
    if test_path is not None:
        dev, train = _cut(examples, [dev_fraction], seed)
        parts = {"train": train, "dev": dev, "test": test}
    elif has_split:
        parts = _by_split_field(records, examples, str(path))
    else:
        test, dev, train = _cut(examples, [test_fraction, dev_fraction], seed)
        parts = {"train": train, "dev": dev, "test": test}
    return _finish_task(name, instruction, labels, parts, {split: 0 for split in SPLITS}, str(path))


def _cut(examples: list[Example], fractions: Sequence[float], seed: int) -> list[list[Example]]:
    """Stratified parts of ``fractions`` of the examples, then the rest, in that order."""
    sizes = [round(fraction * len(examples)) for fraction in fractions]
    return stratified_split(examples, [*sizes, len(examples)], seed)


def _check_fractions(dev_fraction: float, test_fraction: float) -> None:
    if not (0 <= dev_fraction < 1 and 0 <= test_fraction < 1 and dev_fraction + test_fraction < 1):
        raise JumploraError(
            f"dev_fraction={dev_fraction} and test_fraction={test_fraction}: each must be in [0, 1) "
            "and together below 1, leaving data to train on"
        )


def _by_split_field(records: list, examples: list[Example], source: str) -> dict[str, list[Example]]:
    aliases = {"train": "train", "dev": "dev", "validation": "dev", "test": "test"}
    parts: dict[str, list[Example]] = {split: [] for split in SPLITS}
    for index, (record, example) in enumerate(zip(records, examples, strict=True)):
        split = record.get("split")
        if split not in aliases:
            raise JumploraError(
                f"record {index} of {source} has split {split!r}: with a 'split' field, every record "
                f"needs one of {', '.join(aliases)}"
            )
        parts[aliases[split]].append(example)
    return parts


def _check_labels(examples: list[Example], labels: Sequence[str], source: str) -> None:
    """Examples in file order: an unknown label is reported with its record index."""
    known = set(labels)
    for index, example in enumerate(examples):
        if example.label not in known:
            raise JumploraError(
                f"record {index} of {source} has label {example.label!r}, not one of {list(labels)}: "
                "fix the record or add its label to labels"
            )


def _finish_task(
    name: str,
    instruction: str,
    labels: Sequence[str],
    parts: dict[str, list[Example]],
    dropped: dict[str, int],
    source: str,
) -> Task:
    for split in ("train", "test"):
        if not parts[split]:
            raise JumploraError(f"task {name} from {source} has no {split} examples: give it {split} data")
    return Task(name, instruction, tuple(labels), dropped=dropped, **parts)


def read_records(path: Path) -> list:
    """The records of a task file, by its suffix; see :func:`load_task_file`."""
    if path.suffix not in TASK_FILE_SUFFIXES:
        raise JumploraError(f"cannot read {path}: task files must end in {', '.join(TASK_FILE_SUFFIXES)}")
    if path.suffix == ".json":
        records = _read_json(path, "task file")
        if not isinstance(records, list):
            raise JumploraError(f"{path} must hold a JSON array of records (or use a .jsonl file, one a line)")
    else:
        text = _read_text(path, "task file")
        if path.suffix in (".csv", ".tsv"):
            delimiter = "," if path.suffix == ".csv" else "\t"
            records = list(csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter))
        else:
            # split("\n"), not splitlines(): a JSON string may hold U+2028 and other line breaks of Unicode.
            lines = enumerate(text.split("\n"), 1)
            records = [_parse_json(line, path, number) for number, line in lines if line.strip()]
    if not records:
        raise JumploraError(f"{path} has no records: give it at least one")
    return records


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise JumploraError(f"{what} {path} not found: check the path")
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: spreadsheet tools prepend a BOM
    except UnicodeDecodeError as error:
        raise JumploraError(
            f"{what} {path} is not UTF-8 text ({error.reason} at byte {error.start}): re-save it as UTF-8"
        ) from error
    except OSError as error:
        raise JumploraError(f"cannot read {what} {path} ({error.strerror}): check its permissions") from None


def _read_json(path: Path, what: str) -> object:
    text = _read_text(path, what)
    if not text.strip():
        raise JumploraError(f"{what} {path} is empty: it must hold JSON")
    return _parse_json(text, path)


def _parse_json(text: str, path: Path, line: int | None = None) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        at = f"line {line if line is not None else error.lineno}"
        raise JumploraError(f"{path} is not valid JSON ({error.msg} at {at}): fix the file") from error


def load_hub_task(
    dataset_id: str,
    instruction: str,
    name: str | None = None,
    config: str | None = None,
    labels: Sequence[str] | None = None,
    text_column: str = "sentence",
    label_column: str = "label",
    train_split: str = "train",
    dev_split: str | None = "validation",
    test_split: str = "test",
    dev_fraction: float = 0.1,
    seed: int = 0,
    **load_options,
) -> Task:
    """A task from an original dataset on the Hugging Face hub (needs ``pip install 'jumplora[hub]'``).

    ``load_options`` go to ``datasets.load_dataset`` (e.g. ``data_files`` with ``dataset_id="json"``
    for local files, which is how this path is tested without a network).

    ``datasets.load_dataset(dataset_id, config)`` is read split by split. When ``dev_split`` is None
    or absent, a stratified ``dev_fraction`` of the training split is set aside as dev. Labels
    default to the ``ClassLabel`` names of ``label_column`` (else its sorted distinct values);
    records labelled outside them (e.g. GLUE's ``-1`` hidden test labels) are dropped and counted.
    For GLUE-style datasets whose test labels are hidden, pass ``test_split="validation"``.
    """
    _check_fractions(dev_fraction, 0.0)
    dataset = _load_dataset(dataset_id, config, load_options)
    source = dataset_id if config is None else f"{dataset_id}/{config}"
    wanted = {"train": train_split, "test": test_split}
    if dev_split is not None and dev_split in dataset:
        wanted["dev"] = dev_split
    for split, hub_split in wanted.items():
        if hub_split not in dataset:
            raise JumploraError(
                f"{source} has no split {hub_split!r} (it has: {', '.join(dataset)}): pass {split}_split=..."
            )
    label_names = getattr(dataset[train_split].features.get(label_column), "names", None)
    parts = {
        split: examples_from_records(dataset[hub], f"{source}[{hub}]", text_column, label_column, label_names)
        for split, hub in wanted.items()
    }
    if labels is None:
        labels = label_names or sorted({example.label for example in parts["train"]})
    dropped = {}
    for split in list(parts):
        parts[split], dropped[split] = _keep_labelled(parts[split], labels)
    if "dev" not in parts:
        parts["dev"], parts["train"] = _cut(parts["train"], [dev_fraction], seed)
        dropped["dev"] = 0
    return _finish_task(name or dataset_id.split("/")[-1], instruction, labels, parts, dropped, source)


def _load_dataset(dataset_id: str, config: str | None, load_options: dict):
    """``datasets.load_dataset(dataset_id, config)``; a missing library or a failed load is one line."""
    try:
        import datasets
    except ImportError as error:
        raise JumploraError("loading a hub dataset needs the datasets library: pip install 'jumplora[hub]'") from error
    try:
        return datasets.load_dataset(dataset_id, config, **load_options)
    except Exception as error:  # the hub raises many types (not found, offline, gated): report all alike
        raise JumploraError(
            f"could not load {dataset_id!r} (config {config!r}) from the hub: {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}; check the id, the config and network access"
        ) from error
