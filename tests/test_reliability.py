"""Nothing lost, nothing silently wrong: the final save, runs that mix, checkpoints and updates that
were changed, a full disk, two runs at once, and every user error in one line (exit 2)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from _cli import last_error
from _models import save, tiny_llama
from _results import fake_results, read_run, write_run
from _streams import ROWS, tiny_workspace
from jumplora import TaskUpdate
from jumplora.run_folder import OutputLock
from jumplora.cli import main
from jumplora.errors import JumploraError

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_workspace(tmp_path_factory.mktemp("reliable"), rows=ROWS[:4], more=None)


def args(setup, output, *methods, extra=()):
    methods = methods or ("inclora",)
    return ["run", "--model", str(setup / "model"), "--task-file", str(setup / "tasks.json"),
            *[a for m in methods for a in ("--method", m)], "--output", str(output), "--batch-size", "4", *extra]


# `jumplora run` (argv[2:]) in a process that, once the final model's config.json is written in the
# folder being saved, creates the file argv[1] and waits there to be killed.
PAUSE_IN_THE_FINAL_SAVE = """
import sys, time
from pathlib import Path
from transformers import PreTrainedModel
from jumplora.cli import main

marker, real_save = Path(sys.argv[1]), PreTrainedModel.save_pretrained

def save_pretrained(self, folder, *args, **kwargs):
    real_save(self, folder, *args, **kwargs)
    if Path(folder).name.startswith("model"):
        (Path(folder) / "config.json").write_text("")  # as if killed while it was written
        marker.touch()
        time.sleep(600)

PreTrainedModel.save_pretrained = save_pretrained
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_sigkill_in_the_final_save_then_resume_repairs_the_model(setup, tmp_path):
    assert main(args(setup, tmp_path / "straight")) == 0
    killed, marker = tmp_path / "killed", tmp_path / "in-the-save"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    process = subprocess.Popen([sys.executable, "-c", PAUSE_IN_THE_FINAL_SAVE, str(marker), *args(setup, killed)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert process.poll() is None and time.monotonic() < deadline, "the run did not reach its final save"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_dir = killed / "inclora" / "seed0"
    assert not (run_dir / "model").exists()  # the half-written folder is beside it, never in its place
    assert main(["run", "--resume", str(killed)]) == 0
    a = load_file(tmp_path / "straight" / "inclora" / "seed0" / "model" / "model.safetensors")
    b = load_file(run_dir / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # A finished run whose results.json is gone: the resume writes it again.
    want = read_run(run_dir)
    (run_dir / "results.json").unlink()
    assert main(["run", "--resume", str(killed)]) == 0
    got = read_run(run_dir)
    drop = ("resumes", "sha256")
    assert {k: v for k, v in got.items() if k not in drop} == {k: v for k, v in want.items() if k not in drop}


@pytest.mark.slow
def test_a_new_run_replaces_the_earlier_run_whole(setup, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(args(setup, out, "inclora", "jumplora+inclora")) == 0
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(args(setup, out, "inclora", extra=("--learning-rate", "5e-3"))) == 2  # nothing lost unasked
    error = last_error(capsys)
    assert "holds a run already: pass --resume" in error and "--overwrite" in error
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["inclora", "jumplora+inclora"]
    assert main(args(setup, out, "inclora", extra=("--learning-rate", "5e-3", "--overwrite"))) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["inclora"]  # no stale jumplora+inclora
    assert (out / "notes.txt").read_text() == "mine"  # not ours: left alone
    assert "replaced the earlier run" in capsys.readouterr().out
    assert read_run(out / "inclora" / "seed0")["config"]["learning_rate"] == 5e-3


@pytest.mark.slow
def test_a_changed_checkpoint_byte_is_refused(setup, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(args(setup, out)) == 0
    run_dir = out / "inclora" / "seed0"
    shutil.rmtree(run_dir / "model")  # unfinished again: resume loads the newest checkpoint
    state = run_dir / "checkpoints" / "01-second" / "state.safetensors"
    data = bytearray(state.read_bytes())
    data[-5] ^= 0x01  # inside a tensor: the file still parses
    state.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["run", "--resume", str(out)]) == 2
    assert "state.safetensors does not match its SHA-256" in last_error(capsys)


def test_resume_with_another_output_is_refused(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path / "a"), "--output", str(tmp_path / "b")]) == 2
    assert "--output" in last_error(capsys) and not (tmp_path / "b").exists()


def test_a_second_run_into_a_locked_output_is_refused(setup, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    with OutputLock(out):
        assert main(args(setup, out)) == 2
    assert "another jumplora run is writing to" in last_error(capsys)
    assert not (out / "config.yaml").exists()


def test_a_full_disk_is_one_line_and_resume_goes_on_after_space_is_freed(setup, tmp_path, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip()}): needs root")
    try:
        capsys.readouterr()
        assert main(args(setup, disk / "out")) == 2
        assert "No space left on device" in last_error(capsys)
        subprocess.run(["mount", "-o", "remount,size=200m", str(disk)], check=True)
        assert main(["run", "--resume", str(disk / "out")]) == 0
        assert read_run(disk / "out" / "inclora" / "seed0")["finished_tasks"] == 2
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.parametrize("key, value, message", [
    ("warmup_steps", -5, "warmup_steps must be >= 0, got -5"),
    ("batch_size", 2.5, "batch_size must be a whole number, got 2.5"),
    ("epochs", 1.5, "epochs must be a whole number, got 1.5"),
    ("output", 123, "output must be text (put a number in quotes), got 123"),
    ("seeds", "one", "seeds must be a whole number, got 'one'"),
    ("r", 100000, "rank r = 100000 is larger than"),
    ("max_source_length", 1, "max_source_length 1 is too short for this tokenizer"),
])
def test_bad_settings_are_one_line(setup, tmp_path, capsys, key, value, message):
    import yaml

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": str(setup / "model"), "task_file": str(setup / "tasks.json"),
                                      "output": str(tmp_path / "out"), key: value}))
    assert main(["run", "--config", str(config)]) == 2
    assert message in last_error(capsys)
    assert not (tmp_path / "out").exists()  # nothing written before everything was checked


def test_a_single_seed_in_yaml_is_a_list_of_one():
    from jumplora.config import load_config

    assert load_config(overrides={"seeds": 1, "method": "inclora"}).seeds == [1]


@pytest.mark.parametrize("entry, message", [
    ({"name": 3, "path": "first.jsonl", "instruction": "?"}, "name must be a non-empty text, got 3"),
    ({"name": None, "path": "first.jsonl", "instruction": "?"}, "name must be a non-empty text, got None"),
    ({"name": "t", "path": "first.jsonl", "instruction": 7}, "instruction must be text, got 7"),
    ({"name": "t", "path": 5, "instruction": "?"}, "path must be text, got 5"),
])
def test_task_fields_of_the_wrong_type_are_one_line(setup, tmp_path, capsys, entry, message):
    shutil.copy(setup / "first.jsonl", tmp_path / "first.jsonl")
    (tmp_path / "tasks.json").write_text(json.dumps([entry]))
    assert main(["run", "--task-file", str(tmp_path / "tasks.json"), "--output", str(tmp_path / "out")]) == 2
    assert message in last_error(capsys)


def test_an_unreadable_task_file_is_one_line(setup, tmp_path, capsys, monkeypatch):
    real = Path.read_text

    def refuse(self, *a, **k):
        if self.name == "tasks.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", refuse)  # root reads anything: the refusal is simulated
    assert main(["run", "--task-file", str(setup / "tasks.json"), "--output", str(tmp_path / "out")]) == 2
    error = last_error(capsys)
    assert "cannot read task file" in error and "Permission denied" in error


def test_numeric_labels_in_yaml_are_the_datas_labels(tmp_path):
    from jumplora.data.stream import StreamConfig, resolve_stream

    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"sentence": f"s{i}", "label": i % 2}) for i in range(10)))
    (tmp_path / "t.yaml").write_text("- {name: t, path: d.jsonl, instruction: '?', labels: [0, 1]}\n")
    (task,) = resolve_stream(StreamConfig(task_file=str(tmp_path / "t.yaml")))
    assert task.labels == ("0", "1")


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    import jumplora.runner

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(jumplora.runner, "run", interrupted)
    assert main(["run", "--output", str(tmp_path / "out")]) == 130
    assert capsys.readouterr().err.strip() == f"jumplora: interrupted; resume with `jumplora run --resume {tmp_path / 'out'}`"


def test_a_pickle_only_model_is_refused(setup, tmp_path, capsys):
    model, tokenizer = tiny_llama()
    save(model, tokenizer, tmp_path / "pickled")
    (tmp_path / "pickled" / "model.safetensors").unlink()  # the weights as a pickle only, as older tools wrote them
    torch.save(model.state_dict(), tmp_path / "pickled" / "pytorch_model.bin")
    command = args(setup, tmp_path / "out")
    command[command.index("--model") + 1] = str(tmp_path / "pickled")
    assert main(command) == 2
    assert "holds its weights only as pickle files" in last_error(capsys)


def test_a_report_over_a_malformed_config_is_one_line(tmp_path, capsys):
    results = fake_results("inclora", 0)
    results["config"] = ["not", "a", "map"]
    write_run(tmp_path / "runs", results)
    assert main(["report", str(tmp_path / "runs"), "--output", str(tmp_path / "report")]) == 2
    assert "'config' must be an object" in last_error(capsys)


def crafted(tmp_path, tensors: dict) -> Path:
    path = tmp_path / "crafted.safetensors"
    save_file(tensors, str(path), metadata={"jumplora": json.dumps({"format": "jumplora-task-update", "kind": "lora"})})
    return path


@pytest.mark.parametrize("tensors, message", [
    ({"q.indices": torch.tensor([0, 99]), "q.values": torch.ones(2), "q.shape": torch.tensor([2, 2])}, "indices outside"),
    ({"q.indices": torch.tensor([0]), "q.shape": torch.tensor([2, 2])}, "which make no update"),
    ({"q.indices": torch.tensor([0]), "q.values": torch.ones(1), "q.shape": torch.tensor([-2, 2])}, "has the shape"),
    ({"nodot": torch.ones(2, 2)}, "is not <module>.<"),
    ({"q.indices": torch.tensor([0, 1]), "q.values": torch.ones(3), "q.shape": torch.tensor([2, 2])}, "2 positions but 3 values"),
    ({"q.dense": torch.tensor([[1.0, float("nan")], [0.0, 0.0]])}, "not finite"),
])
def test_a_crafted_update_is_refused_in_one_line(tmp_path, tensors, message):
    with pytest.raises(JumploraError, match=message):
        TaskUpdate.load(crafted(tmp_path, tensors))


def test_rollback_and_apply_to_an_existing_file_are_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["apply", "--model", str(tmp_path), "--update", str(tmp_path / "u.safetensors"),
                 "--output", str(tmp_path / "file")]) == 2
    assert "already exists and is not an empty folder" in last_error(capsys)


def test_writing_a_model_to_a_read_only_filesystem_is_one_line(tmp_path, capsys):
    from jumplora.manifest import ModelManifest
    from jumplora.model_folder import ModelFolder

    disk = tmp_path / "ro"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here ({mounted.stderr.decode().strip()}): needs root")
    try:
        model, tokenizer = tiny_llama()
        with pytest.raises(JumploraError, match="could not write the model to .*Read-only file system"):
            ModelFolder(disk / "model").save(model, tokenizer, ModelManifest("tiny", "causal", "generate", 64))
    finally:
        subprocess.run(["umount", str(disk)], check=False)
