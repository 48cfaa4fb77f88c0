"""Reliability round 3 (issue 23): each reproduction of the adversarial pass, made small. The promise:
one line `jumplora: error: ...`, exit 2, nothing half-written, nothing outside the output touched."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _cli import last_error
from _results import fake_results, read_run, write_run
from _streams import ROWS, tiny_workspace, write_tasks
from jumplora.cli import main
from jumplora.errors import JumploraError
from jumplora.run_folder import OutputLock

METHOD = "jumplora+inclora"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_workspace(tmp_path_factory.mktemp("round3"), rows=ROWS[:4])


def run_args(setup, output, *extra, tasks="tasks.json"):
    return ["run", "--model", str(setup / "model"), "--task-file", str(setup / tasks), "--method", METHOD,
            "--output", str(output), "--batch-size", "4", "--keep-checkpoints", "3", *extra]


@pytest.fixture(scope="module")
def finished(setup, tmp_path_factory):
    """A finished 2-task run (copy it before changing it)."""
    out = tmp_path_factory.mktemp("finished") / "out"
    assert main(run_args(setup, out)) == 0
    return out


def copy_of(finished, tmp_path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    return out


def weights(folder: Path) -> dict[str, torch.Tensor]:
    # Copies: load_file maps the file, and a test that rewrites it in place would change them too.
    return {k: v.clone() for k, v in load_file(folder / "model" / "model.safetensors").items()}


# 1. A task name that would leave the output folder ------------------------------------------------

@pytest.mark.parametrize("name, problem", [
    ("x/../../../../../victim/zz", "holds a path separator"),
    ("../../evil", "holds a path separator"),
    ("n" * 300, "is 300 characters long (at most 100)"),
    ("nul\0name", "holds a control character"),
    ("..", "starts with '.'"),
])
def test_a_task_name_never_becomes_a_path_outside_the_output(setup, tmp_path, capsys, name, problem):
    victim = tmp_path / "victim" / "aaa"
    victim.mkdir(parents=True)
    (victim / "keep.txt").write_text("a user's file")
    (tmp_path / "t.json").write_text(json.dumps([{"name": name, "path": str(setup / "first.jsonl"), "instruction": "x"}]))
    out = tmp_path / "trav" / "out"
    assert main(["run", "--model", str(setup / "model"), "--task-file", str(tmp_path / "t.json"), "--method", "seqft",
                 "--output", str(out), "--max-train-per-task", "4"]) == 2
    assert problem in last_error(capsys)
    assert (victim / "keep.txt").read_text() == "a user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json", "victim"]  # nothing written anywhere


# 2. The earlier run is kept until the new one has passed every check --------------------------------

@pytest.mark.parametrize("break_it, message", [
    ("truncate", "the weights file .*model.safetensors is damaged"),
    ("empty", "the weights file .*model.safetensors is damaged"),
    ("seed", "seed 4294967296 is out of range"),
    ("negative", "seed -1 is out of range"),
])
def test_a_run_that_cannot_start_leaves_the_earlier_run_alone(setup, finished, tmp_path, capsys, break_it, message):
    out = copy_of(finished, tmp_path)
    model = tmp_path / "model"
    shutil.copytree(setup / "model", model)
    data = (model / "model.safetensors").read_bytes()
    extra = ["--overwrite"]
    if break_it in ("truncate", "empty"):
        (model / "model.safetensors").write_bytes(data[: len(data) // 2] if break_it == "truncate" else b"")
    else:
        extra += ["--seed", "4294967296" if break_it == "seed" else "-1"]
    before = weights(out / METHOD / "seed0")
    args = run_args(setup, out, *extra)
    args[args.index("--model") + 1] = str(model)
    capsys.readouterr()
    assert main(args) == 2
    error = last_error(capsys)
    import re

    assert re.search(message, error), error
    after = weights(out / METHOD / "seed0")
    assert all(torch.equal(before[k], after[k]) for k in before)


# 3. An extension stopped once results.json said "finished" but before its model was written ----------

def test_an_extension_stopped_before_its_model_was_written_is_not_finished(setup, finished, tmp_path):
    whole = tmp_path / "whole"
    shutil.copytree(finished, whole)
    assert main(["run", "--resume", str(whole), "--add-task-file", str(setup / "more.json")]) == 0
    stopped = copy_of(finished, tmp_path)
    # What the extension had written when it stopped: config.yaml, the third update and its ledger
    # entry, results.json with 3 finished tasks; neither its checkpoint nor its model.
    run, done = stopped / METHOD / "seed0", whole / METHOD / "seed0"
    shutil.copy(whole / "config.yaml", stopped / "config.yaml")
    for name in ("results.json", "deltas/manifest.json", "deltas/02-third.safetensors"):
        shutil.copy(done / name, run / name)
    assert read_run(run)["finished_tasks"] == 3
    assert main(["run", "--resume", str(stopped)]) == 0
    a, b = weights(run), weights(done)
    assert all(torch.equal(a[k], b[k]) for k in a)
    manifest = json.loads((run / "model" / "jumplora-model.json").read_text())
    assert [t["name"] for t in manifest["tasks"]] == ["first", "second", "third"]


# 4. Checkpoint state: its JSON is covered by a hash, and a hash that is missing is refused ----------

@pytest.mark.parametrize("edit, message", [
    (lambda s: {**s, "index": 0}, "does not match its SHA-256"),
    (lambda s: {k: v for k, v in s.items() if k != "sha256"}, "does not match its SHA-256"),
    (lambda s: {**s, "results": {**s["results"], "accuracy_matrix": [[99.0, None], [99.0, 99.0]]}},
     "does not match its SHA-256"),
    (lambda s: {k: v for k, v in s.items() if k not in ("sha256", "tensors_sha256", "format")},
     "records no SHA-256 of state.safetensors"),
])
def test_an_edited_checkpoint_is_refused(finished, tmp_path, capsys, edit, message):
    out = copy_of(finished, tmp_path)
    run = out / METHOD / "seed0"
    shutil.rmtree(run / "model")  # unfinished: resume must load the checkpoint
    state = run / "checkpoints" / "01-second" / "state.json"
    state.write_text(json.dumps(edit(json.loads(state.read_text()))))
    capsys.readouterr()
    assert main(["run", "--resume", str(out)]) == 2
    error = last_error(capsys)
    assert message in error and "01-second" in error


# 5. A damaged model is noticed: resume repairs it, evaluate and predict refuse it ---------------------

def test_flipped_bits_in_the_model_weights_are_noticed(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    run = out / METHOD / "seed0"
    good = weights(run)
    path = run / "model" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40  # an exponent bit of the last weight: the header is intact, the file parses
    path.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["evaluate", str(run / "model")]) == 2
    assert "does not match its SHA-256" in last_error(capsys)
    assert main(["predict", str(run / "model"), "--task", "first", "some text"]) == 2
    assert "does not match its SHA-256" in last_error(capsys)
    assert main(["run", "--resume", str(out)]) == 0  # not finished: the model is written again
    repaired = weights(run)
    assert all(torch.equal(good[k], repaired[k]) for k in good)


# 6. Data read from another directory, or changed since the run ---------------------------------------

def test_relative_paths_are_stored_absolute_and_changed_data_is_refused(setup, tmp_path, capsys, monkeypatch):
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    for root in (home, elsewhere):
        (root / "tiny").mkdir(parents=True)
    write_tasks(home / "tiny", ("first", "second"), repeats=4, rows=ROWS[:4], task_file="all.json")
    write_tasks(elsewhere / "tiny", ("first", "second"), repeats=4, rows=ROWS[2:6], task_file="all.json")
    monkeypatch.chdir(home)
    # Without its test examples in the model folder, evaluate reads the run's data again.
    assert main(["run", "--model", str(setup / "model"), "--task-file", "tiny/all.json", "--method", METHOD,
                 "--output", "out", "--batch-size", "4", "--no-keep-eval-data"]) == 0
    run = home / "out" / METHOD / "seed0"
    assert read_run(run)["config"]["task_file"] == str(home / "tiny" / "all.json")
    monkeypatch.chdir(elsewhere)  # a different tiny/all.json here: the run's own data is read
    capsys.readouterr()
    assert main(["evaluate", str(run / "model"), "--output", "e.json"]) == 0
    assert [v["accuracy"] for v in json.loads(Path("e.json").read_text())["tasks"].values()] == \
        read_run(run)["accuracy_matrix"][-1]
    data = home / "tiny" / "second.jsonl"
    data.write_text(data.read_text().replace("stew", "soup"))  # the data changed since the run
    assert main(["evaluate", str(run / "model")]) == 2
    error = last_error(capsys)
    assert "test data of task second" in error and str(data.parent) in error and "--force" in error
    assert main(["evaluate", str(run / "model"), "--force", "--output", "f.json"]) == 0
    assert main(["run", "--resume", str(home / "out"), "--add-task-file", str(setup / "more.json")]) == 2
    error = last_error(capsys)
    assert "data of task second" in error and "--force" in error


# 7. Resume checks the update ledger against its files ---------------------------------------------

@pytest.mark.parametrize("damage", ["drop an entry", "swap two files"])
def test_resume_refuses_a_ledger_that_does_not_match_its_files(setup, finished, tmp_path, capsys, damage):
    out = copy_of(finished, tmp_path)
    deltas = out / METHOD / "seed0" / "deltas"
    if damage == "drop an entry":
        entries = json.loads((deltas / "manifest.json").read_text())
        (deltas / "manifest.json").write_text(json.dumps(entries[1:]))
    else:
        first, second = deltas / "00-first.safetensors", deltas / "01-second.safetensors"
        a, b = first.read_bytes(), second.read_bytes()
        first.write_bytes(b)
        second.write_bytes(a)
    capsys.readouterr()
    assert main(["run", "--resume", str(out), "--add-task-file", str(setup / "more.json")]) == 2
    assert "manifest.json" in last_error(capsys)


# 8. A run never replaces a folder that holds, or is inside, a running run ------------------------------

@pytest.mark.parametrize("locked, output, where", [("nest/inclora/seed0", "nest", "inside"),
                                                   ("nest", "nest/inclora/seed0", "around")])
def test_the_lock_covers_folders_inside_and_around_the_output(setup, tmp_path, capsys, locked, output, where):
    live = tmp_path / locked
    live.mkdir(parents=True, exist_ok=True)
    (live / "mine.txt").write_text("a live run's file")
    with OutputLock(live):
        assert main(run_args(setup, tmp_path / output, "--overwrite")) == 2
    assert f"a jumplora command is writing to {live}, {where}" in last_error(capsys)
    assert (live / "mine.txt").read_text() == "a live run's file"


# 9. Two commands writing one new output: one wins, the other is told -----------------------------------

def test_two_rollbacks_into_one_output_cannot_both_succeed(finished, tmp_path, capsys):
    run = finished / METHOD / "seed0"
    codes = []

    def rollback():
        codes.append(main(["rollback", str(run), "--task", "second", "--output", str(tmp_path / "race")]))

    threads = [threading.Thread(target=rollback) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(codes) == [0, 2]
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    assert (tmp_path / "race" / "jumplora-model.json").is_file()


# 10. Labels are single lines; an update's labels are stored as JSON ----------------------------------

def test_a_label_with_a_line_break_is_refused_and_labels_survive_rollback_and_apply(setup, finished, tmp_path, capsys):
    from jumplora.adapters.update import update_labels
    from jumplora.data import Task

    with pytest.raises(JumploraError, match="holds a control character"):
        Task("t", "?", ("good\nbad", "neutral"))
    assert update_labels({"labels": json.dumps(["a, b", "c"])}) == ["a, b", "c"]
    assert update_labels({"labels": "old\nstyle"}) == ["old", "style"]  # files of before 2026-12-07
    run = finished / METHOD / "seed0"
    assert main(["rollback", str(run), "--task", "second", "--output", str(tmp_path / "rolled")]) == 0
    assert main(["apply", "--model", str(tmp_path / "rolled"), "--update", str(run / "deltas" / "01-second.safetensors"),
                 "--output", str(tmp_path / "back")]) == 0
    manifest = json.loads((tmp_path / "back" / "jumplora-model.json").read_text())
    assert [t["labels"] for t in manifest["tasks"]] == [["food", "sport"], ["food", "sport"]]


# 11. Hand-edited manifests and records are refused ---------------------------------------------------

def test_a_hand_edited_manifest_or_record_is_refused(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    run = out / METHOD / "seed0"
    manifest_path = run / "model" / "jumplora-model.json"
    original = manifest_path.read_text()
    manifest = json.loads(original)
    manifest["tasks"][0]["labels"] = "neg"
    manifest_path.write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["predict", str(run / "model"), "--task", "first", "text"]) == 2
    assert "does not match its own SHA-256" in last_error(capsys)
    manifest = json.loads(original)
    manifest["ledger"] = manifest["ledger"][1:]
    manifest_path.write_text(json.dumps(manifest))
    assert main(["apply", "--model", str(run / "model"), "--update", str(run / "deltas" / "00-first.safetensors"),
                 "--output", str(tmp_path / "twice")]) == 2
    assert "does not match its own SHA-256" in last_error(capsys)
    manifest_path.write_text(original)
    results = json.loads((run / "results.json").read_text())
    results["accuracy_matrix"][-1] = [99.0, 99.0]
    (run / "results.json").write_text(json.dumps(results))
    assert main(["report", str(out), "--output", str(tmp_path / "report")]) == 2
    assert "does not match its own SHA-256" in last_error(capsys)
    assert main(["run", "--resume", str(out)]) == 0  # not a finished record: written again from the checkpoint
    assert read_run(run)["accuracy_matrix"][-1] != [99.0, 99.0]


def test_a_manifest_with_fields_of_the_wrong_type_is_refused(finished, tmp_path, capsys):
    from jumplora.files import json_sha256

    out = copy_of(finished, tmp_path)
    path = out / METHOD / "seed0" / "model" / "jumplora-model.json"
    for key, value in (("max_source_length", "abc"), ("family", "seq2seq-ish"), ("tasks", [{"name": "x"}])):
        manifest = json.loads(path.read_text())
        manifest.pop("sha256")
        manifest[key] = value
        path.write_text(json.dumps({**manifest, "sha256": json_sha256(manifest)}))  # consistent, but wrong
        assert main(["predict", str(path.parent), "--task", "first", "text"]) == 2
        assert "is not a valid jumplora model manifest" in last_error(capsys)


# 12. Files that expand without bound, and labels without bound -----------------------------------------

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8))


def test_a_yaml_alias_bomb_is_refused_quickly(setup, tmp_path, capsys):
    (tmp_path / "bomb.yaml").write_text(BOMB)
    started = time.monotonic()
    assert main(["run", "--config", str(tmp_path / "bomb.yaml")]) == 2
    assert "expands to more than 100,000 values" in last_error(capsys)
    assert main(["run", "--task-file", str(tmp_path / "bomb.yaml"), "--output", str(tmp_path / "o")]) == 2
    assert "expands to more than" in last_error(capsys)
    assert time.monotonic() - started < 30


def test_ten_thousand_labels_are_refused_with_the_bound(setup, tmp_path, capsys):
    rows = [{"sentence": f"text {i}", "label": f"label {i}", "split": s} for i in range(10_000) for s in ("train",)]
    rows += [{"sentence": "t", "label": "label 0", "split": "test"}]
    (tmp_path / "many.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "t.json").write_text(json.dumps([{"name": "many", "path": "many.jsonl", "instruction": "?"}]))
    assert main(["run", "--task-file", str(tmp_path / "t.json"), "--output", str(tmp_path / "o")]) == 2
    error = last_error(capsys)
    assert "10000 labels; at most 500" in error and len(error) < 400


def test_a_long_bad_value_is_cut_in_the_message(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(f"learning_rate: {'x' * 100_000}\n")
    assert main(["run", "--config", str(tmp_path / "c.yaml")]) == 2
    assert len(last_error(capsys)) < 300


# 13. What gave tracebacks ----------------------------------------------------------------------------

@pytest.mark.parametrize("size", [1_000_000, 100])
def test_a_truncated_gguf_file_is_one_line(tmp_path, capsys, size):
    from jumplora.families.sources import resolve_model

    source = resolve_model("smollm2-135m")
    with open(Path(source.path) / source.gguf_file, "rb") as handle:
        (tmp_path / "cut.gguf").write_bytes(handle.read(size))
    assert main(["run", "--model", str(tmp_path / "cut.gguf"), "--output", str(tmp_path / "o")]) == 2
    assert "cannot read the GGUF file" in last_error(capsys)
    assert not (tmp_path / "o").exists()


def test_a_legacy_record_with_a_bad_order_is_one_line_in_the_report(tmp_path, capsys):
    results = fake_results("inclora")
    results["config"]["order"] = "abc"
    write_run(tmp_path / "runs", results)  # no sha256: as written before 2026-12-07
    assert main(["report", str(tmp_path / "runs"), "--output", str(tmp_path / "report")]) == 2
    assert "name the order 'abc'" in last_error(capsys)


# 14. Settings that mean nothing ------------------------------------------------------------------------

@pytest.mark.parametrize("flag, value", [("--encoder-temperature", "inf"), ("--learning-rate", "nan"),
                                         ("--alpha=-inf", None)])
def test_infinite_and_nan_settings_are_refused(flag, value, capsys):
    assert main(["run", flag, *([value] if value else [])]) == 2
    assert "a finite number" in last_error(capsys)


# 15. Smaller -------------------------------------------------------------------------------------------

def test_a_failed_rollback_leaves_nothing_and_says_what_applies_to_it(finished, tmp_path, capsys, monkeypatch):
    import errno

    from transformers import PreTrainedModel

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    out = tmp_path / "rolled"
    assert main(["rollback", str(finished / METHOD / "seed0"), "--task", "second", "--output", str(out)]) == 2
    error = last_error(capsys)
    assert "No space left" in error and "run the command again" in error
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_the_environment_advice_fits_the_command():
    from jumplora.cli import _again, build_parser

    parser = build_parser()
    rollback = parser.parse_args(["rollback", "r", "--task", "t", "--output", "o"])
    assert "run `jumplora rollback` again" in _again(rollback)
    assert "--resume" in _again(parser.parse_args(["run", "--output", "x"]))


def test_typos_get_the_closest_name(capsys):
    assert main(["run", "--method", "jumplora"]) == 2
    assert "(did you mean jumplora+inclora?)" in last_error(capsys)
    assert main(["run", "--lerning-rate", "3"]) == 2
    assert "unknown option --lerning-rate for `jumplora run` (did you mean --learning-rate?)" in last_error(capsys)
