"""Keep teaching the deployed model: the model folder alone, teach ≡ resume with added tasks, the
forgetting check, nothing finished lost unasked, exact rollback, the files' modes."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
import torch
from safetensors.torch import load_file

from _models import minilm, save
from _results import read_run
from _streams import ROWS, tiny_workspace, write_tasks
from jumplora.cli import main

FLAGS = ["--batch-size", "4", "--learning-rate", "1e-2", "--ella-lambda", "100"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_workspace(tmp_path_factory.mktemp("teach"), task_file="two.json")


def run(setup, output, method, *extra):
    assert main(["run", "--model", str(setup / "model"), "--task-file", str(setup / "two.json"), "--method", method,
                 "--output", str(output), *FLAGS, *extra]) == 0
    return output / method / "seed0"


def weights(folder):
    return {k: v.clone() for k, v in load_file(folder / "model.safetensors").items()}


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["jumplora+inclora", "ella"])
def test_teaching_the_model_folder_equals_extending_its_run(setup, tmp_path, method, capsys):
    first = run(setup, tmp_path / "out", method)
    model = first / "model"
    before = json.loads((model / "jumplora-model.json").read_text())
    shutil.copytree(tmp_path / "out", tmp_path / "extended")
    assert main(["run", "--resume", str(tmp_path / "extended"), "--add-task-file", str(setup / "more.json")]) == 0
    extended = tmp_path / "extended" / method / "seed0"
    capsys.readouterr()
    assert main(["teach", str(model), "--task-file", str(setup / "more.json"), "--output", str(tmp_path / "taught")]) == 0
    out = capsys.readouterr().out
    assert "earlier tasks, test accuracy (%):" in out and "learned  before  after" in out
    assert f"the new version is in {tmp_path / 'taught'}" in out
    taught = tmp_path / "taught"
    assert same(weights(taught), weights(extended / "model"))  # bit-identical
    manifest = json.loads((taught / "jumplora-model.json").read_text())
    matrix = read_run(extended)["accuracy_matrix"]
    assert [t["accuracy_learned"] for t in manifest["tasks"]] == [matrix[i][i] for i in range(3)]
    assert [t["accuracy_last"] for t in manifest["tasks"]] == matrix[2]
    assert (taught / "updates" / "02-third.safetensors").read_bytes() == \
        (extended / "deltas" / "02-third.safetensors").read_bytes()
    assert manifest["generation"] == 2 and manifest["parent"]["generation"] == 1
    before.pop("sha256")
    from jumplora.files import json_sha256

    assert manifest["parent"]["sha256"] == json_sha256(before)
    assert (model / "jumplora-model.json").read_text() != (taught / "jumplora-model.json").read_text()
    assert not (tmp_path / "taught.teach").exists()  # the work folder is gone
    # The taught model keeps learning: a second teach from it (generation 3), in place.
    write_tasks(tmp_path, ("fourth",), repeats=2, task_file="fourth.json")
    assert main(["teach", str(taught), "--task-file", str(tmp_path / "fourth.json")]) == 0
    again = json.loads((taught / "jumplora-model.json").read_text())
    assert again["generation"] == 3 and [t["name"] for t in again["tasks"]] == ["first", "second", "third", "fourth"]


def test_a_model_folder_without_its_test_examples_teaches_but_cannot_check(setup, tmp_path, capsys):
    first = run(setup, tmp_path / "out", "inclora", "--no-keep-eval-data")
    assert not (first / "model" / "eval").exists()
    capsys.readouterr()
    assert main(["teach", str(first / "model"), "--task-file", str(setup / "more.json"),
                 "--max-forgetting", "0"]) == 0  # nothing measured, nothing refused
    out = capsys.readouterr().out
    assert "not kept" in out and "the check cannot measure them" in out


def test_a_run_on_a_model_folder_names_teach_and_a_rolled_back_model_cannot_be_taught(setup, tmp_path, capsys):
    first = run(setup, tmp_path / "out", "jumplora+inclora")
    capsys.readouterr()
    assert main(["run", "--model", str(first / "model"), "--task-file", str(setup / "more.json"),
                 "--output", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    assert "is a model folder written by jumplora" in err and "jumplora teach" in err
    assert main(["rollback", str(first / "model"), "--task", "second", "--output", str(tmp_path / "rolled")]) == 0
    assert main(["teach", str(tmp_path / "rolled"), "--task-file", str(setup / "more.json")]) == 2
    assert "carries no training state" in capsys.readouterr().err


def test_rollback_and_apply_again_give_back_the_same_bits(setup, tmp_path):
    first = run(setup, tmp_path / "out", "jumplora+inclora")
    model = first / "model"
    assert main(["rollback", str(first), "--task", "first", "--output", str(tmp_path / "rolled")]) == 0
    assert main(["apply", "--model", str(tmp_path / "rolled"), "--update", str(first / "deltas" / "00-first.safetensors"),
                 "--output", str(tmp_path / "back")]) == 0
    assert same(weights(tmp_path / "back"), weights(model))  # exact, not up to rounding
    # The rolled-back weights are state 0 plus the second update alone, added as training merges.
    from jumplora import TaskUpdate

    base, rolled = load_file(model / "states" / "base.safetensors"), weights(tmp_path / "rolled")
    second = TaskUpdate.load(first / "deltas" / "01-second.safetensors")
    for name, delta in second.deltas.items():
        assert torch.equal(rolled[f"{name}.weight"], base[name] + delta)


def test_a_second_run_without_output_keeps_the_first(setup, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["run", "--model", str(setup / "model"), "--task-file", str(setup / "more.json"), "--method", "inclora",
            *FLAGS]
    assert main(args) == 0
    first = (tmp_path / "runs" / "latest").resolve()
    assert main(args) == 0
    second = (tmp_path / "runs" / "latest").resolve()
    assert first != second and first.parent == second.parent == tmp_path / "runs"
    assert read_run(first / "inclora" / "seed0")["finished_tasks"] == 1  # still there, whole
    assert (tmp_path / "runs" / "latest").is_symlink()


def test_files_get_the_umask_mode_and_rare_labels_are_warned_about(setup, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        first = run(setup, tmp_path / "out", "jumplora+inclora")
    finally:
        os.umask(old)
    for path in [first / "model" / "model.safetensors", first / "deltas" / "00-first.safetensors",
                 *first.glob("checkpoints/*/state.safetensors"), first / "model" / "jumplora-model.json"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    rows = [{"sentence": f"{s} {i}", "label": y} for i in range(10) for s, y in ROWS]
    rows[3]["label"] = "sprot"  # a typo: a class of its own
    (tmp_path / "typo.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "typo.json").write_text(json.dumps([{"name": "typo", "path": "typo.jsonl", "instruction": "?"}]))
    capsys.readouterr()
    assert main(["run", "--model", str(setup / "model"), "--task-file", str(tmp_path / "typo.json"), "--method",
                 "inclora", "--output", str(tmp_path / "typo-out"), *FLAGS]) == 0
    assert "label 'sprot' has 1 of 60 examples (a typo of 'sport'?)" in capsys.readouterr().out


@pytest.mark.slow
def test_the_forgetting_check_keeps_the_model_and_exits_3_on_a_drop(tmp_path, capsys):
    model, tokenizer = minilm()
    save(model, tokenizer, tmp_path / "minilm")
    write_tasks(tmp_path, ("topic",), repeats=12, task_file="one.json")
    flipped = [(s, "food" if y == "sport" else "sport") for s, y in ROWS]  # the same texts, the other label
    write_tasks(tmp_path, ("flipped",), repeats=12, rows=flipped, task_file="flip.json")
    assert main(["run", "--model", str(tmp_path / "minilm"), "--task-file", str(tmp_path / "one.json"), "--method",
                 "inclora", "--output", str(tmp_path / "out"), "--batch-size", "8", "--learning-rate", "5e-3"]) == 0
    model_dir = tmp_path / "out" / "inclora" / "seed0" / "model"
    before = (model_dir / "jumplora-model.json").read_text()
    assert json.loads(before)["tasks"][0]["accuracy_learned"] >= 80
    capsys.readouterr()
    assert main(["teach", str(model_dir), "--task-file", str(tmp_path / "flip.json"), "--max-forgetting", "10"]) == 3
    captured = capsys.readouterr()
    assert "warning: topic dropped by" in captured.out and "(more than 10)" in captured.out
    assert "is unchanged" in captured.err
    assert (model_dir / "jumplora-model.json").read_text() == before  # the current model stays where it is
    candidate = json.loads((tmp_path / "out" / "inclora" / "seed0" / "model.candidate" / "jumplora-model.json").read_text())
    assert [t["name"] for t in candidate["tasks"]] == ["topic", "flipped"]
