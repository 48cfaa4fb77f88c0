"""A user's own tasks: from local files of records, or from datasets on the Hugging Face hub.

A record whose label is not one of the task's labels is an error naming it in a user's own file (a
typo in one's own labels should not vanish); hub datasets drop such records and count them in
``Task.dropped`` (GLUE's hidden test labels are ``-1`` by design), as the benchmark does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from jumplora.data.records import examples_from_records, keep_labelled, read_records
from jumplora.data.tasks import MAX_LABELS, SPLITS, Example, Task, stratified_split
from jumplora.errors import JumploraError
from jumplora.settings import read_yaml, shorten

TASK_LIST_SUFFIXES = (".yaml", ".yml", ".json")  # files that list tasks (task files)


@dataclass(frozen=True)
class Splitting:
    """How examples without a given split are cut (seeded, class-stratified): a ``test_fraction`` for
    test (when there is no test file), a ``dev_fraction`` for dev, the rest for training."""

    dev_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0


@dataclass(frozen=True)
class HubSplits:
    """The splits of a hub dataset to read; with no ``dev`` split there, ``dev_fraction`` of train."""

    train: str = "train"
    dev: str | None = "validation"
    test: str = "test"
    dev_fraction: float = 0.1
    seed: int = 0


def load_task_file(
    path: str | Path,
    name: str,
    instruction: str,
    labels: Sequence[str] | None = None,
    text_column: str | None = None,
    label_column: str = "label",
    test_path: str | Path | None = None,
    splitting: Splitting = Splitting(),
) -> Task:
    """A user's own task from a ``.jsonl``/``.ndjson`` (one object a line), ``.json`` (an array of
    objects), ``.csv`` or ``.tsv`` (a header row) file.

    Splits, the first rule that applies:

    1. ``test_path`` given: ``path`` is the training data, ``test_path`` the test data; a
       ``dev_fraction`` of the training data is set aside, class-stratified, as dev (``splitting``).
    2. the records have a ``split`` field (``train``, ``dev``/``validation`` or ``test``; every
       record then needs one): it decides, and the fractions are not used.
    3. otherwise one stratified, seeded cut: ``test_fraction`` test, ``dev_fraction`` dev, the rest train.

    ``text_column=None`` takes ``sentence``, or ``text`` when the records have no ``sentence``.
    ``labels=None`` takes the sorted distinct labels of the data (their order is the option order
    of the prompt). A record whose label is not in ``labels`` is an error naming the record.
    """
    dev_fraction, test_fraction, seed = splitting.dev_fraction, splitting.test_fraction, splitting.seed
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
    if isinstance(labels, str):  # `labels: "a,b"` would be read as the labels "a", ",", "b"
        raise JumploraError(f"task {name}: labels is one string ({labels!r:.80}); write it as a list, e.g. "
                            "labels: [sport, food]")
    notes = [] if labels is not None else rare_labels(name, examples + test)
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
    task = _finish_task(name, instruction, labels, parts, {split: 0 for split in SPLITS}, str(path))
    task.notes += notes
    return task


def rare_labels(name: str, examples: list[Example]) -> list[str]:
    """A warning for each label of the data with fewer than 3 examples or under 1% of them, naming
    the closest other label: labels taken from the data turn a typo into a class of its own."""
    import difflib
    from collections import Counter

    counts = Counter(example.label for example in examples)
    if len(counts) > MAX_LABELS:  # refused when the task is made, with the bound: nothing to compare
        return []
    notes = []
    for label, count in sorted(counts.items()):
        if count < 3 or count < 0.01 * len(examples):
            others = [other for other in counts if other != label]
            close = difflib.get_close_matches(label, others, n=1, cutoff=0.6)
            hint = f" (a typo of {close[0]!r}?)" if close else ""
            notes.append(f"warning: task {name}: label {label[:40]!r} has {count} of {len(examples)} examples{hint}; "
                         "list the task's labels in the task file to make a label outside them an error")
    return notes


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
    return Task(name, instruction, tuple(labels), dropped=dropped, source=source, **parts)


def load_hub_task(
    dataset_id: str,
    instruction: str,
    name: str | None = None,
    config: str | None = None,
    labels: Sequence[str] | None = None,
    text_column: str = "sentence",
    label_column: str = "label",
    splits: HubSplits = HubSplits(),
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
    train_split, dev_split, test_split = splits.train, splits.dev, splits.test
    dev_fraction, seed = splits.dev_fraction, splits.seed
    _check_fractions(dev_fraction, 0.0)
    dataset = _load_dataset(dataset_id, config, load_options)
    source = dataset_id if config is None else f"{dataset_id}/{config}"
    wanted = {"train": train_split, "test": test_split}
    if dev_split is not None and dev_split in dataset:
        wanted["dev"] = dev_split
    for split, hub_split in wanted.items():
        if hub_split not in dataset:
            raise JumploraError(
                f"{source} has no split {hub_split!r} (it has: {', '.join(dataset)}): give the task {split}_split: ..."
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
        parts[split], dropped[split] = keep_labelled(parts[split], labels)
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


# The keys of a task in a task file, beyond name and instruction: where its records are, how they
# are read, how they are split.
FILE_KEYS = ("path", "labels", "text_column", "label_column", "test_path", "dev_fraction", "test_fraction", "seed")
HUB_KEYS = ("hub", "config", "labels", "text_column", "label_column", "train_split", "dev_split", "test_split",
            "dev_fraction", "seed", "data_files")


def read_task_list(path: Path) -> list[Task]:
    """A YAML/JSON list of tasks: {name, instruction, path, labels?, text_column?, label_column?,
    test_path?, dev_fraction?, test_fraction?, seed?} for a local file (paths relative to the task
    file), or {name, instruction, hub, config?, labels?, text_column?, label_column?, train_split?,
    dev_split?, test_split?, dev_fraction?, seed?} for a dataset on the Hugging Face hub."""
    entries = read_yaml(path, "task file")
    if not isinstance(entries, list) or not entries:
        raise JumploraError(f"task file {path} must be a non-empty list of tasks (name, path, instruction, ...)")
    return [_task_of_entry(entry, number, path) for number, entry in enumerate(entries, 1)]


def _task_of_entry(entry, number: int, path: Path) -> Task:
    where = f"task {number} of {path}"
    if not isinstance(entry, dict) or not {"name", "instruction"} <= set(entry) or ("path" in entry) == ("hub" in entry):
        raise JumploraError(f"{where} needs name, instruction and one of path (a file) or hub (a dataset id)")
    known = ("name", "instruction", *(HUB_KEYS if "hub" in entry else FILE_KEYS))
    unknown = [key for key in entry if key not in known]
    if unknown:
        from jumplora.settings import did_you_mean

        raise JumploraError(f"{where}: unknown key {str(unknown[0])[:40]!r}{did_you_mean(str(unknown[0]), list(known))}: "
                            f"its keys are {', '.join(known)}")
    for key in ("name", "instruction", "path", "hub", "test_path", "text_column", "label_column", "config"):
        value = entry.get(key)
        if (value is not None or key in ("name", "instruction")) and (
                not isinstance(value, str) or (key == "name" and not value.strip())):
            raise JumploraError(f"{where}: {key} must be {'a non-empty ' if key == 'name' else ''}text, got "
                                f"{shorten(value)}")
    values = {key: value for key, value in entry.items() if key in ("dev_fraction", "test_fraction", "seed")}
    for key, value in values.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or (key == "seed" and not isinstance(value, int)):
            raise JumploraError(f"{where}: {key} must be a {'whole ' if key == 'seed' else ''}number, got {shorten(value)}")
    common = {"name": entry["name"], "instruction": entry["instruction"], "labels": entry.get("labels"),
              "text_column": entry.get("text_column"), "label_column": entry.get("label_column", "label")}
    if "hub" in entry:
        splits = HubSplits(**{k: entry[k] for k in ("dev_fraction", "seed") if k in entry},
                           **{k.removesuffix("_split"): entry[k] for k in ("train_split", "dev_split", "test_split")
                              if k in entry})
        options = {"data_files": entry["data_files"]} if "data_files" in entry else {}
        return load_hub_task(entry["hub"], config=entry.get("config"), splits=splits,
                             **{**common, "text_column": common["text_column"] or "sentence"}, **options)
    relative = {key: Path(entry[key]) if Path(entry[key]).is_absolute() else path.parent / entry[key]
                for key in ("path", "test_path") if entry.get(key)}
    return load_task_file(relative["path"], test_path=relative.get("test_path"), splitting=Splitting(**values),
                          **common)
