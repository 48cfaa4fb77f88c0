"""Using the continual model: its manifest, predict, evaluate, keep learning, and an honest ledger (slow)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from _models import save, tiny_llama
from _results import read_run
from _streams import ROWS, write_tasks
from jumplora.cli import main
from jumplora.manifest import MANIFEST_FILE as MANIFEST
from jumplora.model_folder import ModelFolder

pytestmark = pytest.mark.slow
NAMES = ("first", "second", "third", "fourth")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("use")
    model, tokenizer = tiny_llama()
    save(model, tokenizer, root / "model")
    for stem, names in (("three", NAMES[:3]), ("four", NAMES), ("last", NAMES[3:])):
        write_tasks(root, names, repeats=8, task_file=f"{stem}.json")
    return root


def run(setup, output, stream="three", method="jumplora+inclora", *extra):
    args = ["run", "--model", str(setup / "model"), "--task-file", str(setup / f"{stream}.json"), "--method", method,
            "--output", str(output), "--batch-size", "2", "--learning-rate", "1e-2", "--keep-checkpoints", "4", *extra]
    assert main(args) == 0
    return output / method / "seed0"


@pytest.fixture(scope="module")
def three(setup, tmp_path_factory):
    return run(setup, tmp_path_factory.mktemp("three") / "out")


def test_the_model_folder_knows_its_tasks_and_ledger(three):
    manifest = ModelFolder(three / "model").manifest()
    results = read_run(three)
    assert (manifest.family, manifest.scoring, manifest.base_model) == ("causal", "generate", manifest.base_model)
    assert [t.name for t in manifest.tasks] == list(NAMES[:3]) and manifest.tasks[0].labels == ["food", "sport"]
    assert [t.accuracy_learned for t in manifest.tasks] == [results["accuracy_matrix"][i][i] for i in range(3)]
    assert [t.accuracy_last for t in manifest.tasks] == results["accuracy_matrix"][2]
    deltas = json.loads((three / "deltas" / "manifest.json").read_text())
    assert [(e.task, e.file, e.sha256, e.sign) for e in manifest.ledger] == [
        (d["task"], d["file"], d["sha256"], 1) for d in deltas]
    config = json.loads((three / "model" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]  # still a plain transformers folder


def test_predict_gives_the_runs_own_answers(three, tmp_path, capsys):
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps({"text": f"{s} first"}) + "\n" for s, _ in ROWS))
    capsys.readouterr()
    assert main(["predict", str(three / "model"), "--task", "first", "--merged", "--input", str(inputs),
                 "--output", str(tmp_path / "out.jsonl")]) == 0
    predictions = [json.loads(line)["prediction"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(predictions) == len(ROWS)
    correct = sum(p == y for p, (_, y) in zip(predictions, ROWS))
    assert 100 * correct / len(ROWS) == read_run(three)["accuracy_matrix"][2][0]  # the run's own evaluation
    assert main(["predict", str(three / "model"), "--task", "first", "a bowl of soup"]) == 0
    label, text = capsys.readouterr().out.strip().split("\t")
    assert text == "a bowl of soup" and label  # generated text, scored by exact match against the options


def test_evaluate_reproduces_the_last_row(three, tmp_path, capsys):
    assert main(["evaluate", str(three / "model"), "--output", str(tmp_path / "eval.json")]) == 0
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert [evaluation["tasks"][n]["accuracy"] for n in NAMES[:3]] == read_run(three)["accuracy_matrix"][2]
    assert "mean" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["predict", "{plain}", "--task", "first", "x"], f"has no {MANIFEST}"),
    (["predict", "{model}", "--task", "fifth", "x"], "the model learned no task 'fifth'"),
    (["predict", "{model}", "--task", "first", "--input", "{bad}"], "record 1 of"),
    (["evaluate", "{plain}"], f"has no {MANIFEST}"),
    (["evaluate", "{model}", "--tasks", "nope", "--task-file", "{task_file}"], "no test data for nope"),
])
def test_bad_input_to_predict_and_evaluate_is_one_line(three, setup, tmp_path, capsys, args, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"words": "no text"}) + "\n")
    values = {"plain": str(setup / "model"), "model": str(three / "model"), "bad": str(bad),
              "task_file": str(setup / "three.json")}
    out = tmp_path / "out.jsonl"
    code = main([a.format(**values) for a in args] + (["--output", str(out)]))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("jumplora: error:") and message in err[-1], err
    assert not out.exists()


def test_a_run_extended_by_a_task_equals_the_longer_run(setup, tmp_path):
    four = run(setup, tmp_path / "four", "four")
    extended_root = tmp_path / "extended"
    extended = run(setup, extended_root, "three")
    assert main(["run", "--resume", str(extended_root), "--add-task-file", str(setup / "last.json")]) == 0
    a, b = read_run(four), read_run(extended)
    assert b["tasks"] == list(NAMES) and b["accuracy_matrix"] == a["accuracy_matrix"]
    same = ("metrics", "sparsity", "thresholds", "threshold_trace", "jaccard", "losses", "answer_origins", "gate")
    assert {k: b[k] for k in same} == {k: a[k] for k in same}
    assert b["resumes"][-1]["changed"] == {"add_tasks": {"was": None, "now": [str(setup / "last.json")]}}
    wa, wb = load_file(four / "model" / "model.safetensors"), load_file(extended / "model" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    manifest = ModelFolder(extended / "model").manifest()
    assert [t.name for t in manifest.tasks] == list(NAMES) and len(manifest.ledger) == 4
    # Rollback works on any task of the extended run, here the first.
    assert main(["rollback", str(extended_root), "--task", "first", "--output", str(tmp_path / "rolled")]) == 0
    assert [t.name for t in ModelFolder(tmp_path / "rolled").manifest().tasks] == list(NAMES[1:])


def test_apply_and_rollback_keep_the_ledger_honest(three, tmp_path, capsys):
    update = three / "deltas" / "01-second.safetensors"
    capsys.readouterr()
    assert main(["apply", "--model", str(three / "model"), "--update", str(update), "--output", str(tmp_path / "x")]) == 2
    assert "already holds the update 01-second.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["rollback", str(three), "--task", "second", "--output", str(tmp_path / "without")]) == 0
    assert "ledger: +first; +second; +third; -second" in capsys.readouterr().out
    assert main(["apply", "--model", str(tmp_path / "without"), "--update", str(update), "--subtract",
                 "--output", str(tmp_path / "twice")]) == 2
    assert "does not hold the update" in capsys.readouterr().err
    assert main(["apply", "--model", str(tmp_path / "without"), "--update", str(update),
                 "--output", str(tmp_path / "back")]) == 0
    back, final = load_file(tmp_path / "back" / "model.safetensors"), load_file(three / "model" / "model.safetensors")
    assert all(float((back[k] - final[k]).abs().max()) <= 1e-6 for k in final)
    # A manifest whose task names were swapped: the file's own metadata says otherwise.
    tampered = tmp_path / "tampered"
    shutil.copytree(three, tampered)
    entries = json.loads((tampered / "deltas" / "manifest.json").read_text())
    entries[0]["task"], entries[1]["task"] = entries[1]["task"], entries[0]["task"]
    (tampered / "deltas" / "manifest.json").write_text(json.dumps(entries))
    capsys.readouterr()
    assert main(["rollback", str(tampered), "--task", "first", "--output", str(tmp_path / "wrong")]) == 2
    assert "the manifest was changed" in capsys.readouterr().err and not (tmp_path / "wrong").exists()
