"""What the commands on a model folder write, and where: never over a user's files or the model's own,
and bad input to them (CLI and API) is one line. The cases of an adversarial read of 2026-12-07."""

from __future__ import annotations

import json
import shutil

import pytest

from _cli import last_error
from _models import save, tiny_llama
from _streams import write_tasks
from jumplora import ContinualModel
from jumplora.cli import main
from jumplora.errors import JumploraError

METHOD = "jumplora+inclora"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    model, tokenizer = tiny_llama()
    save(model, tokenizer, root / "base")
    write_tasks(root, ("first", "second"), repeats=4, task_file="two.json")
    write_tasks(root, ("third",), repeats=4, task_file="more.json")
    assert main(["run", "--model", str(root / "base"), "--task-file", str(root / "two.json"), "--method", METHOD,
                 "--output", str(root / "run"), "--batch-size", "4", "--learning-rate", "1e-2"]) == 0
    return root


@pytest.fixture
def model(trained, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(trained / "run" / METHOD / "seed0" / "model", copy)
    return copy


def teach(model, output, trained, capsys) -> str:
    assert main(["teach", str(model), "--task-file", str(trained / "more.json"), "--output", str(output)]) == 2
    return last_error(capsys)


def test_teach_never_replaces_what_is_at_its_output(model, trained, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert "already exists" in teach(model, mine, trained, capsys)
    afile = tmp_path / "afile"
    afile.write_text("keep me too")
    assert "already exists" in teach(model, afile, trained, capsys)
    assert "inside (or around) the model folder" in teach(model, model / "sub", trained, capsys)
    assert "already exists" in teach(model, tmp_path, trained, capsys)  # the folder around the model
    (tmp_path / "d.teach").mkdir()
    (tmp_path / "d.teach" / "notes.txt").write_text("not a teach's")
    assert "not written by jumplora teach" in teach(model, tmp_path / "d", trained, capsys)
    (tmp_path / "e.candidate").mkdir()
    (tmp_path / "e.candidate" / "notes.txt").write_text("not a model")
    assert "is not a model folder" in teach(model, tmp_path / "e", trained, capsys)
    assert (mine / "notes.txt").read_text() == "keep me" and afile.read_text() == "keep me too"
    assert (tmp_path / "d.teach" / "notes.txt").is_file() and (tmp_path / "e.candidate" / "notes.txt").is_file()
    assert not (model / "sub").exists()


def test_a_missing_update_file_is_named_not_a_traceback_nor_an_inexact_rollback(model, trained, tmp_path, capsys):
    (model / "updates" / "01-second.safetensors").unlink()
    message = teach(model, tmp_path / "taught", trained, capsys)
    assert "01-second.safetensors is missing" in message and not (tmp_path / "taught.teach").exists()
    assert main(["rollback", str(model), "--task", "first", "--output", str(tmp_path / "rolled")]) == 2
    assert "01-second.safetensors is missing" in last_error(capsys) and not (tmp_path / "rolled").exists()
    assert main(["rollback", str(model), "--task", "nosuch", "--output", str(tmp_path / "rolled")]) == 2
    assert "learned no task 'nosuch' (its tasks: first, second)" in last_error(capsys)


def test_predict_evaluate_and_export_do_not_write_into_the_model(model, capsys):
    before = (model / "model.safetensors").read_bytes()
    for argv in (["predict", str(model), "x", "--task", "first", "--output", str(model / "model.safetensors")],
                 ["evaluate", str(model), "--output", str(model / "jumplora-model.json")],
                 ["export", str(model), "--gguf", str(model / "model.safetensors"), "--overwrite"]):
        assert main(argv) == 2
        message = last_error(capsys)
        assert "inside (or around) the model folder" in message or "not trained from a GGUF" in message \
            or "GGUF" in message, message
    assert (model / "model.safetensors").read_bytes() == before
    assert main(["predict", str(model), "--task", "first", "", "   "]) == 2
    assert "input 0 is empty" in last_error(capsys)
    assert main(["predict", str(model), "--states", "--labels", "x,y", "a text"]) == 2
    assert "leave out --states" in last_error(capsys)


def test_predict_prints_one_line_per_input_and_a_learned_tasks_instruction_stays(model, capsys):
    capsys.readouterr()
    assert main(["predict", str(model), "--task", "first", "one\nline", "two"]) == 0
    lines = capsys.readouterr().out.rstrip("\n").split("\n")
    assert len(lines) == 2 and lines[0].endswith("\tone\\nline") and lines[1].endswith("\ttwo")
    from jumplora.inference import task_to_ask
    from jumplora.model_folder import ModelFolder

    manifest = ModelFolder(model).verify()
    asked = task_to_ask(manifest, "first", None, ["x", "y"])
    assert asked.instruction == manifest.task("first").instruction and asked.labels == ("x", "y")


def test_the_api_refuses_wrong_types_in_one_line_and_follows_a_teach_in_place(model, trained):
    loaded = ContinualModel.load(model)
    for call in (lambda: loaded.predict((t for t in ["a"])), lambda: loaded.predict([1, None], task="first"),
                 lambda: loaded.predict(["a"], instruction="x", labels="yes,no"),
                 lambda: loaded.predict(["a"], task="first", batch_size=1.5),
                 lambda: loaded.evaluate(tasks="first"), lambda: loaded.evaluate(foo="bar"),
                 lambda: loaded.teach(task_file=trained / "more.json", max_forgetting="5"),
                 lambda: loaded.save(None), lambda: ContinualModel.load(model, device="bogus"),
                 lambda: ContinualModel.load(model.parent / "nonexistent")):
        with pytest.raises(JumploraError):
            call()
    outcome = loaded.teach(task_file=trained / "more.json", log=lambda *_: None)
    assert outcome.accepted and outcome.model == model
    assert loaded.tasks == ["first", "second", "third"]  # the object is the taught model now
    assert len(loaded.predict(["a text"], task="third")) == 1


def test_labels_written_as_one_string_are_refused(tmp_path, capsys):
    rows = [{"sentence": f"text {i}", "label": "sport" if i % 2 else "food", "split": s}
            for s in ("train", "test") for i in range(8)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "t.yaml").write_text("- {name: t, path: d.jsonl, instruction: x, labels: 'sport,food'}\n")
    model, tokenizer = tiny_llama()
    save(model, tokenizer, tmp_path / "base")
    assert main(["run", "--model", str(tmp_path / "base"), "--task-file", str(tmp_path / "t.yaml"),
                 "--output", str(tmp_path / "out")]) == 2
    assert "write it as a list" in last_error(capsys) and not (tmp_path / "out").exists()
