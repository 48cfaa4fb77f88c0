"""Crash-safe runs: SIGKILL and resume, rollback of one task, refusals, determinism (slow)."""

import hashlib
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
from _results import read_run
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


# `jumplora run` (argv[3:]) in a process that, once the checkpoint argv[2] exists (the first task is
# done) and two steps of the second task are taken, creates the file argv[1] and waits there to be
# killed: the test kills it inside task two on a condition, not after a guessed delay.
PAUSE_IN_TASK_TWO = """
import sys, time
from pathlib import Path
from jumplora.cli import main
from jumplora.families.causal import CausalFamily

marker, checkpoint, real_loss, steps = Path(sys.argv[1]), Path(sys.argv[2]), CausalFamily.loss, []

def loss(self, model, batch):
    if checkpoint.is_dir():
        steps.append(1)
        if len(steps) == 3:
            marker.touch()
            time.sleep(600)
    return real_loss(self, model, batch)

CausalFamily.loss = loss
sys.exit(main(sys.argv[3:]))
"""


def comparable(results):
    return {k: v for k, v in results.items() if k not in ("timing", "config", "resumes", "sha256")}


def file_states(folder):
    """Every file below ``folder``: its size, modification time and SHA-256."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns,
                                         hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_sigkill_mid_task_then_resume_gives_the_uninterrupted_results(setup, tmp_path, capsys):
    assert main(run_args(setup, tmp_path / "straight")) == 0
    killed = tmp_path / "killed"
    run_dir = killed / "jumplora+ella" / "seed0"
    marker, stderr = tmp_path / "in-task-two", tmp_path / "killed.err"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    with open(stderr, "w") as err:  # a file, not a pipe: the progress bars cannot fill it and stall the run
        process = subprocess.Popen([sys.executable, "-c", PAUSE_IN_TASK_TWO, str(marker),
                                    str(run_dir / "checkpoints" / "00-first"), *run_args(setup, killed)],
                                   env=env, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 300
    while not marker.exists():
        if process.poll() is not None:
            pytest.fail(f"the run ended (exit {process.returncode}) before task two:\n{stderr.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the run did not reach the third step of task two within 300 s")
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert read_run(run_dir)["finished_tasks"] == 1  # killed mid-task 2
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["00-first"]
    assert main(["run", "--resume", str(killed)]) == 0
    straight = read_run(tmp_path / "straight" / "jumplora+ella" / "seed0")
    resumed = read_run(run_dir)
    assert comparable(resumed) == comparable(straight)
    assert resumed["resumes"] == [{"after_task": 1, "changed": {}}] and "resumes" not in straight
    a = load_file(tmp_path / "straight" / "jumplora+ella" / "seed0" / "model" / "model.safetensors")
    b = load_file(run_dir / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # A finished run is left as it is: no file rewritten, added or removed.
    before = file_states(killed)
    capsys.readouterr()
    assert main(["run", "--resume", str(killed)]) == 0
    assert f"already finished in {run_dir}" in capsys.readouterr().out
    assert file_states(killed) == before


def test_same_seed_same_results_and_weights(setup, tmp_path):
    for name in ("a", "b"):
        assert main(run_args(setup, tmp_path / name, "jumplora+inclora")) == 0
    a, b = (tmp_path / name / "jumplora+inclora" / "seed0" for name in ("a", "b"))
    assert comparable(read_run(a)) == comparable(read_run(b))
    wa, wb = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_rollback_of_the_last_task_reproduces_the_checkpoint_before_it(setup, tmp_path, capsys):
    assert main(run_args(setup, tmp_path / "run", "jumplora+inclora")) == 0
    run_dir = tmp_path / "run" / "jumplora+inclora" / "seed0"
    assert main(["rollback", str(run_dir), "--task", "third", "--output", str(tmp_path / "rolled")]) == 0
    rolled = load_file(tmp_path / "rolled" / "model.safetensors")
    before = load_file(run_dir / "checkpoints" / "01-second" / "state.safetensors")
    base = load_file(setup / "model" / "model.safetensors")
    # The checkpoint keeps only the adapted layers' weights (q/v); the others are the base model's.
    assert {k for k in before if k.startswith("model/")} == {"model/" + k for k in rolled if "q_proj" in k or "v_proj" in k}
    for key, value in rolled.items():
        expected = before.get("model/" + key, base.get(key))
        assert float((value - expected).abs().max()) <= 1e-6, key
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


def test_resume_takes_execution_settings_in_a_moved_folder_and_records_them(setup, tmp_path, capsys):
    assert main(run_args(setup, tmp_path / "run", "inclora", "--keep-checkpoints", "3")) == 0
    straight = read_run(tmp_path / "run" / "inclora" / "seed0")
    moved = tmp_path / "moved"
    (tmp_path / "run").rename(moved)  # the saved settings still name tmp_path/run as the output
    run_dir = moved / "inclora" / "seed0"

    def unfinish(after_task):  # as if the run had stopped after `after_task` tasks
        (run_dir / "model").rename(run_dir / f"model-{after_task}")
        for checkpoint in (run_dir / "checkpoints").iterdir():
            if int(checkpoint.name[:2]) >= after_task:  # checkpoints/<t>-<task>, t from 0
                shutil.rmtree(checkpoint)

    unfinish(1)
    capsys.readouterr()
    # A setting that changes what is learned is refused, and only that one is named.
    assert main(["run", "--resume", str(moved), "--learning-rate", "0.1", "--compile", "aot_eager"]) == 2
    assert "other settings for learning_rate: drop" in capsys.readouterr().err
    # Settings of where and how fast it runs are taken without --force.
    assert main(["run", "--resume", str(moved), "--compile", "aot_eager", "--keep-checkpoints", "2"]) == 0
    assert "with changed settings: keep_checkpoints 3 -> 2, compile None -> 'aot_eager'" in capsys.readouterr().out
    resumed = read_run(run_dir)
    assert resumed["resumes"] == [{"after_task": 1, "changed": {"compile": {"was": None, "now": "aot_eager"},
                                                                "keep_checkpoints": {"was": 3, "now": 2}}}]
    assert resumed["config"]["compile"] == "aot_eager" and resumed["config"]["output"] == str(moved)
    # Tasks two and three again, compiled: the same accuracies; the losses equal to rounding (the
    # compiled graph's decompositions of Llama's norm and activation round differently, ~1e-6 here).
    assert comparable(resumed) | {"losses": None} == comparable(straight) | {"losses": None}
    assert resumed["losses"].keys() == straight["losses"].keys()
    for task, losses in straight["losses"].items():
        assert resumed["losses"][task] == pytest.approx(losses, rel=1e-5, abs=0), task
    # `--compile off` resumes a compiled run eagerly; the record keeps both resumes.
    unfinish(2)
    assert main(["run", "--resume", str(moved), "--compile", "off"]) == 0
    resumes = read_run(run_dir)["resumes"]
    assert [r["after_task"] for r in resumes] == [1, 2]
    assert resumes[1]["changed"] == {"compile": {"was": "aot_eager", "now": None}, "keep_checkpoints": {"was": 2, "now": 3}}


def test_resume_refuses_a_base_model_that_changed(setup, tmp_path, capsys):
    from safetensors.torch import save_file

    shutil.copytree(setup / "model", tmp_path / "model")
    args = run_args(setup, tmp_path / "run", "inclora")
    args[args.index("--model") + 1] = str(tmp_path / "model")
    assert main(args) == 0
    run_dir = tmp_path / "run" / "inclora" / "seed0"
    (run_dir / "model").rename(run_dir / "model-gone")  # unfinished again: resume loads the base + checkpoint
    weights = load_file(tmp_path / "model" / "model.safetensors")
    original = weights["model.norm.weight"].clone()
    weights["model.norm.weight"] += 1e-3  # a weight no checkpoint stores, as another base model would have
    save_file(weights, tmp_path / "model" / "model.safetensors", metadata={"format": "pt"})
    results = (run_dir / "results.json").read_bytes()
    capsys.readouterr()
    assert main(["run", "--resume", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "model.norm.weight is not the one the run started from" in err and "Traceback" not in err
    assert (run_dir / "results.json").read_bytes() == results
    weights["model.norm.weight"] = original  # the run's own base again: resume goes through
    save_file(weights, tmp_path / "model" / "model.safetensors", metadata={"format": "pt"})
    assert main(["run", "--resume", str(tmp_path / "run")]) == 0
    assert read_run(run_dir)["finished_tasks"] == 3


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
    assert read_run(run_dir)["finished_tasks"] == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["00-first"]
    assert load_file(run_dir / "checkpoints" / "00-first" / "state.safetensors")  # intact


def test_collapsed_gate_is_reported(setup, tmp_path, capsys):
    # r = 16 on 32-wide projections: the budget k = r·(d_in+d_out) covers every entry, nothing is cut.
    assert main(run_args(setup, tmp_path / "run", "jumplora+inclora", "--r", "16")) == 0
    results = read_run(tmp_path / "run" / "jumplora+inclora" / "seed0")
    assert results["collapsed"] == ["first", "second", "third"]
    assert "the gate collapsed" in capsys.readouterr().out


def test_output_that_cannot_be_written(setup, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(run_args(setup, blocker / "out", "inclora")) == 2
    assert "is not writable" in capsys.readouterr().err
