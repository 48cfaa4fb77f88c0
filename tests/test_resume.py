"""Crash-safe runs: SIGKILL and resume, rollback of one task, refusals, determinism (slow)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from _models import save, tiny_llama
from jumplora.cli import main

pytestmark = pytest.mark.slow
ROWS = [("the striker scored twice", "sport"), ("a slow-cooked stew", "food"), ("the team won the title", "sport"),
        ("fresh bread this morning", "food"), ("a world record run", "sport"), ("spicy noodle soup", "food")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    model, tokenizer = tiny_llama()
    save(model, tokenizer, root / "model")
    entries = []
    for name in ("first", "second", "third"):
        records = [{"sentence": f"{s} {i}", "label": y, "split": "train"} for i in range(12) for s, y in ROWS]
        records += [{"sentence": s, "label": y, "split": "test"} for s, y in ROWS]
        (root / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in records))
        entries.append({"name": name, "path": f"{name}.jsonl", "instruction": "Sport or food?"})
    (root / "tasks.json").write_text(json.dumps(entries))
    return root


def run_args(setup, output, method="jumplora+ella", *extra):
    return ["run", "--model", str(setup / "model"), "--task-file", str(setup / "tasks.json"), "--method", method,
            "--output", str(output), "--batch-size", "2", "--learning-rate", "5e-3", "--ella-lambda", "100", *extra]


def comparable(results):
    return {k: v for k, v in results.items() if k not in ("timing", "config")}


def test_sigkill_mid_task_then_resume_gives_the_uninterrupted_results(setup, tmp_path):
    assert main(run_args(setup, tmp_path / "straight")) == 0
    killed = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    process = subprocess.Popen([sys.executable, "-m", "jumplora.cli", *run_args(setup, killed)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = killed / "jumplora+ella" / "seed0"
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / "00-first").is_dir():
        assert process.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    time.sleep(0.5)  # into the second task's training
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert json.loads((run_dir / "results.json").read_text())["finished_tasks"] == 1  # killed mid-task 2
    assert main(["run", "--resume", str(killed)]) == 0
    straight = json.loads((tmp_path / "straight" / "jumplora+ella" / "seed0" / "results.json").read_text())
    resumed = json.loads((run_dir / "results.json").read_text())
    assert comparable(resumed) == comparable(straight)
    a = load_file(tmp_path / "straight" / "jumplora+ella" / "seed0" / "model" / "model.safetensors")
    b = load_file(run_dir / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert main(["run", "--resume", str(killed)]) == 0  # a finished run is left as it is


def test_same_seed_same_results_and_weights(setup, tmp_path):
    for name in ("a", "b"):
        assert main(run_args(setup, tmp_path / name, "jumplora+inclora")) == 0
    a, b = (tmp_path / name / "jumplora+inclora" / "seed0" for name in ("a", "b"))
    assert comparable(json.loads((a / "results.json").read_text())) == comparable(
        json.loads((b / "results.json").read_text()))
    wa, wb = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_rollback_of_the_last_task_reproduces_the_checkpoint_before_it(setup, tmp_path, capsys):
    assert main(run_args(setup, tmp_path / "run", "jumplora+inclora")) == 0
    run_dir = tmp_path / "run" / "jumplora+inclora" / "seed0"
    assert main(["rollback", str(run_dir), "--task", "third", "--output", str(tmp_path / "rolled")]) == 0
    rolled = load_file(tmp_path / "rolled" / "model.safetensors")
    before = load_file(run_dir / "checkpoints" / "01-second" / "state.safetensors")
    for key, value in rolled.items():
        assert float((value - before["model/" + key]).abs().max()) <= 1e-6, key
    # apply puts it back: the final model again.
    update = run_dir / "deltas" / "02-third.safetensors"
    assert main(["apply", "--model", str(tmp_path / "rolled"), "--update", str(update),
                 "--output", str(tmp_path / "again")]) == 0
    final = load_file(run_dir / "model" / "model.safetensors")
    again = load_file(tmp_path / "again" / "model.safetensors")
    assert all(float((again[k] - final[k]).abs().max()) <= 1e-6 for k in final)
    # A tampered update file is refused, and nothing is written.
    tampered = tmp_path / "tampered"
    shutil.copytree(run_dir, tampered)
    data = bytearray((tampered / "deltas" / "02-third.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tampered / "deltas" / "02-third.safetensors").write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["rollback", str(tampered), "--task", "third", "--output", str(tmp_path / "no")]) == 2
    assert "does not match its SHA-256" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


def test_resume_refusals(setup, tmp_path, capsys):
    assert main(run_args(setup, tmp_path / "run", "inclora")) == 0
    capsys.readouterr()
    assert main(["run", "--resume", str(tmp_path / "run"), "--learning-rate", "0.1", "--r", "4"]) == 2
    err = capsys.readouterr().err
    assert "other settings for learning_rate, r" in err and "--force" in err
    assert main(["run", "--resume", str(tmp_path / "nothing")]) == 2
    assert "no run to resume" in capsys.readouterr().err
    run_dir = tmp_path / "run" / "inclora" / "seed0"
    (run_dir / "model").rename(run_dir / "model-gone")  # unfinished again: resume needs the checkpoint
    (run_dir / "checkpoints" / "02-third" / "state.safetensors").write_bytes(b"garbage")
    assert main(["run", "--resume", str(tmp_path / "run")]) == 2
    assert "is damaged" in capsys.readouterr().err


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(setup, tmp_path, capsys,
                                                                                     monkeypatch):
    from jumplora.families.causal import CausalFamily

    real_loss, calls = CausalFamily.loss, []

    def loss_that_diverges_in_task_two(self, model, batch):
        calls.append(1)  # task one has 36 steps; the loss goes non-finite inside task two
        return real_loss(self, model, batch) * (float("nan") if len(calls) > 40 else 1.0)

    monkeypatch.setattr(CausalFamily, "loss", loss_that_diverges_in_task_two)
    assert main(run_args(setup, tmp_path / "run", "inclora")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the loss became nan at step 4 of task second" in err and "lower the learning rate" in err
    run_dir = tmp_path / "run" / "inclora" / "seed0"
    assert json.loads((run_dir / "results.json").read_text())["finished_tasks"] == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["00-first"]
    assert load_file(run_dir / "checkpoints" / "00-first" / "state.safetensors")  # intact


def test_collapsed_gate_is_reported(setup, tmp_path, capsys):
    # r = 16 on 32-wide projections: the budget k = r·(d_in+d_out) covers every entry, nothing is cut.
    assert main(run_args(setup, tmp_path / "run", "jumplora+inclora", "--r", "16")) == 0
    results = json.loads((tmp_path / "run" / "jumplora+inclora" / "seed0" / "results.json").read_text())
    assert results["collapsed"] == ["first", "second", "third"]
    assert "the gate collapsed" in capsys.readouterr().out


def test_output_that_cannot_be_written(setup, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(run_args(setup, blocker / "out", "inclora")) == 2
    assert "is not writable" in capsys.readouterr().err
