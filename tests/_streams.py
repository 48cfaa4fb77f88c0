"""Task files for end-to-end tests: a few short labelled sentences per task, in the layout users write."""

from __future__ import annotations

import json
from pathlib import Path

ROWS = [("the striker scored twice", "sport"), ("a slow-cooked stew", "food"), ("the team won the title", "sport"),
        ("fresh bread this morning", "food"), ("a world record run", "sport"), ("spicy noodle soup", "food")]


def write_tasks(root: Path, names, repeats: int, rows=ROWS, task_file: str = "tasks.json") -> Path:
    """One JSONL file per task of ``names`` (``rows`` × ``repeats`` for training, ``rows`` once for
    test, each sentence marked with the task and a number) and the task file listing them; returns it."""
    entries = []
    for name in names:
        records = [{"sentence": f"{s} {name} {i}", "label": y, "split": "train"} for i in range(repeats) for s, y in rows]
        records += [{"sentence": f"{s} {name}", "label": y, "split": "test"} for s, y in rows]
        (root / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in records))
        entries.append({"name": name, "path": f"{name}.jsonl", "instruction": "Sport or food?"})
    (root / task_file).write_text(json.dumps(entries))
    return root / task_file


def tiny_workspace(root: Path, rows=ROWS, task_file: str = "tasks.json", more: str | None = "more.json") -> Path:
    """``root`` with a tiny Llama in ``model/``, tasks first and second in ``task_file`` (4 repeats of
    ``rows``) and, unless ``more`` is None, task third in ``more`` (what an extension or teach adds)."""
    from _models import save, tiny_llama

    model, tokenizer = tiny_llama()
    save(model, tokenizer, root / "model")
    write_tasks(root, ("first", "second"), repeats=4, rows=rows, task_file=task_file)
    if more is not None:
        write_tasks(root, ("third",), repeats=4, rows=rows, task_file=more)
    return root
