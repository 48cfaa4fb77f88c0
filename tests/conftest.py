"""Shared pytest fixtures."""

import json
from pathlib import Path

import pytest

# --- data fixtures (tests/test_data.py): the real benchmark and a tiny fake one -----------------

@pytest.fixture(scope="session")
def cl_benchmark_dir() -> Path:
    """The real CL benchmark, read-only, in the shared folder next to the repository."""
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "cl_benchmark"
    if not (path / "tasks.json").is_file():
        pytest.skip(f"the shared CL benchmark is not at {path}")
    return path


@pytest.fixture
def tmp_benchmark(tmp_path: Path) -> Path:
    """A two-task benchmark folder in the real layout, small enough to break in every way.

    ``alpha`` (labels yes/no) has one test record labelled ``-`` that the loader must drop;
    ``beta`` (labels a/b/c) has an empty instruction, as COPA does.
    """
    tasks = {
        "alpha": {"path": "G/alpha", "group": "G", "instruction": "Is it so?", "labels": ["yes", "no"],
                  "sizes": {"train": 4, "dev": 2, "test": 3}},
        "beta": {"path": "H/beta", "group": "H", "instruction": "", "labels": ["a", "b", "c"],
                 "sizes": {"train": 3, "dev": 3, "test": 3}},
    }
    splits = {
        "alpha": {"train": ["yes", "no", "yes", "no"], "dev": ["yes", "no"], "test": ["yes", "-", "no"]},
        "beta": {split: ["a", "b", "c"] for split in ("train", "dev", "test")},
    }
    for name, entry in tasks.items():
        folder = tmp_path / entry["path"]
        folder.mkdir(parents=True)
        (folder / "labels.json").write_text(json.dumps(entry["labels"]))
        for split, labels in splits[name].items():
            records = [{"sentence": f"{name} {split} {i}", "label": label} for i, label in enumerate(labels)]
            (folder / f"{split}.json").write_text(json.dumps(records))
    index = {"tasks": tasks, "orders": {"1": ["alpha", "beta"], "4": ["beta", "alpha"]}}
    (tmp_path / "tasks.json").write_text(json.dumps(index))
    return tmp_path


# --- end of data fixtures -------------------------------------------------------------------------
