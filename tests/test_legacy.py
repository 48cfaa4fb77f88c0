"""A run folder written by the code of 2026-12-07, before the run and model folders got their owners
(``tests/assets/legacy-run``, made by ``tests/assets/make_legacy_run.py``), resumes, takes one more
task and reports with today's code, and ends with the weights and matrices of a run made from
scratch today (slow)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _results import read_run
from jumplora.cli import main

pytestmark = pytest.mark.slow
ASSETS = Path(__file__).resolve().parent / "assets"
METHODS = ("jumplora+inclora", "ella")
FLAGS = ["--batch-size", "2", "--learning-rate", "3e-2", "--r", "2", "--max-source-length", "64"]


@pytest.fixture
def legacy(tmp_path, monkeypatch):
    root = tmp_path / "legacy"
    shutil.copytree(ASSETS / "legacy-run", root)
    for folder in (root / "base-model", *root.glob("run/*/seed0/model")):  # the asset leaves its tokenizer out
        shutil.copytree(ASSETS / "tiny-tokenizer", folder, dirs_exist_ok=True)
    monkeypatch.chdir(root)  # its config.yaml names the model and the data relative to here
    return root


def test_a_legacy_run_extends_to_the_run_made_from_scratch_today(legacy, capsys):
    assert main(["run", "--resume", "run", "--add-task-file", "data/more.json"]) == 0
    tasks = json.loads((legacy / "data" / "two.json").read_text()) + json.loads((legacy / "data" / "more.json").read_text())
    (legacy / "data" / "three.json").write_text(json.dumps(tasks))
    methods = [arg for method in METHODS for arg in ("--method", method)]
    assert main(["run", "--model", "base-model", "--task-file", "data/three.json", *methods, "--output", "fresh",
                 *FLAGS]) == 0
    for method in METHODS:
        extended, fresh = legacy / "run" / method / "seed0", legacy / "fresh" / method / "seed0"
        a, b = load_file(extended / "model" / "model.safetensors"), load_file(fresh / "model" / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), method
        assert read_run(extended)["accuracy_matrix"] == read_run(fresh)["accuracy_matrix"]
        assert (extended / "deltas" / "02-third.safetensors").read_bytes() == \
            (fresh / "deltas" / "02-third.safetensors").read_bytes()
        assert sorted(p.name for p in (extended / "model" / "updates").iterdir()) == [
            "00-first.safetensors", "01-second.safetensors", "02-third.safetensors"]
    capsys.readouterr()
    assert main(["report", "run", "--output", "report"]) == 0
    assert (legacy / "report" / "report.md").is_file()


def test_a_legacy_finished_run_resumes_as_finished_and_its_model_is_used(legacy, capsys):
    assert main(["run", "--resume", "run"]) == 0
    assert "already finished" in capsys.readouterr().out
    assert main(["evaluate", "run/ella/seed0/model", "--output", "evaluation.json"]) == 0
    evaluation = json.loads((legacy / "evaluation.json").read_text())
    last = read_run(legacy / "run" / "ella" / "seed0")["accuracy_matrix"][-1]
    assert [evaluation["tasks"][name]["accuracy"] for name in ("first", "second")] == last
