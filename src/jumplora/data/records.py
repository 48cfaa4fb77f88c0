"""Raw records into examples, the same way wherever they come from: a task file, the benchmark, the hub.

A record is a mapping with a text field and a label field. :func:`read_records` reads them from a
``.jsonl``/``.ndjson`` (one object a line), ``.json`` (an array), ``.csv`` or ``.tsv`` (a header
row) file; :func:`examples_from_records` turns them into :class:`Example` and checks their types.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from jumplora.data.tasks import Example
from jumplora.errors import JumploraError
from jumplora.settings import shorten

RECORD_FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv")  # files of records (one task's data)


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
            raise JumploraError(f"{where}: field {text_column!r} must be a string, got {shorten(text)}")
        if label_names is not None and isinstance(label, int) and 0 <= label < len(label_names):
            label = label_names[label]
        if not isinstance(label, (str, int)):  # bool is an int
            raise JumploraError(f"{where}: field {label_column!r} must be a string or an integer, got {shorten(label)}")
        examples.append(Example(text, str(label)))
    return examples


def keep_labelled(examples: list[Example], labels: Sequence[str]) -> tuple[list[Example], int]:
    """The examples whose label is one of ``labels``, and how many were dropped."""
    known = set(labels)
    kept = [example for example in examples if example.label in known]
    return kept, len(examples) - len(kept)


def read_records(path: Path) -> list:
    """The records of a task file, by its suffix; see :func:`load_task_file`."""
    if path.suffix not in RECORD_FILE_SUFFIXES:
        raise JumploraError(f"cannot read {path}: data files must end in {', '.join(RECORD_FILE_SUFFIXES)}")
    if path.suffix == ".json":
        records = read_json(path, "data file")
        if not isinstance(records, list):
            raise JumploraError(f"{path} must hold a JSON array of records (or use a .jsonl file, one a line)")
    else:
        text = read_text(path, "data file")
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


def read_text(path: Path, what: str) -> str:
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


def read_json(path: Path, what: str) -> object:
    text = read_text(path, what)
    if not text.strip():
        raise JumploraError(f"{what} {path} is empty: it must hold JSON")
    return _parse_json(text, path)


def _parse_json(text: str, path: Path, line: int | None = None) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        at = f"line {line if line is not None else error.lineno}"
        raise JumploraError(f"{path} is not valid JSON ({error.msg} at {at}): fix the file") from error
