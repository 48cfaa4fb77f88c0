"""Bad input on the command line: one line naming the problem, exit code 2, no traceback."""

import json
import subprocess
import sys

import pytest

from jumplora.cli import main


def write(path, text):
    path.write_text(text)
    return path


CASES = {
    "unknown method": (["--method", "lora2"], "unknown method 'lora2'"),
    "repeated method": (["--method", "inclora", "--method", "inclora"], "repeated"),
    "unknown benchmark": (["--benchmark", "glue"], "unknown benchmark 'glue'"),
    "order of the other benchmark": (["--benchmark", "sc", "--order", "4"], "does not belong to benchmark sc"),
    "order out of range": (["--order", "9"], "order 9 does not belong"),
    "unknown preset": (["--preset", "fast"], "unknown preset 'fast'"),
    "rank zero": (["--r", "0"], "rank r must be a positive integer"),
    "negative lambda": (["--ella-lambda", "-1"], "must be >= 0"),
    "start after final": (["--start-fraction", "0.9", "--final-fraction", "0.5"], "must be smaller than final"),
    "unknown threshold mode": (["--threshold-mode", "layer"], "unknown threshold mode"),
    "duplicate tasks": (["--tasks", "a,a", "--data-dir", "."], "duplicate task names"),
    "sc without data": (["--benchmark", "sc"], "pass --data-dir"),
    "missing data dir": (["--benchmark", "sc", "--data-dir", "/nonexistent/data"], "not found"),
    "unknown task": (["--tasks", "nope", "--data-dir", "{bench}"], "unknown task 'nope'"),
    "missing task file": (["--task-file", "/nonexistent/tasks.yaml"], "task file /nonexistent/tasks.yaml not found"),
    "missing model": (["--model", "/nonexistent/model", "--task-file", "{tasks}"], "cannot load model"),
    "record without label": (["--task-file", "{nolabel}"], "label"),
    "label outside the label set": (["--task-file", "{badlabel}"], "not one of"),
    "duplicate labels": (["--task-file", "{duplabels}"], "duplicates"),
    "bad yaml config": (["--config", "{badyaml}"], "not valid YAML"),
    "unknown config key": (["--config", "{unknownkey}"], "unknown configuration key(s) learning_rat"),
    "unknown tracker": (["--log-with", "mlflow"], "unknown tracker 'mlflow': use one of tensorboard, wandb"),
    "empty data file": (["--task-file", "{empty}"], "empty"),
    "malformed data file": (["--task-file", "{malformed}"], "line 2"),
    "task entry without path or hub": (["--task-file", "{nopath}"], "one of path (a file) or hub"),
    "demo with order": (["--benchmark", "demo", "--order", "1"], "demo benchmark has one fixed stream"),
    "unknown precision": (["--precision", "fp8"], "unknown precision 'fp8'"),
    "unknown compile backend": (["--compile", "fastest"], "unknown torch.compile backend 'fastest'"),
    "bf16 weights for full fine-tuning": (["--precision", "bf16-base", "--method", "inclora", "--method", "seqft"],
                                          "seqft trains them all"),
    "target matching nothing": (["--targets", "nothing", "--task-file", "{tasks}", "--model", "{model}"],
                                "match nothing"),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory, cl_benchmark_dir):
    from _models import save, tiny_llama

    root = tmp_path_factory.mktemp("bad")
    good = [{"sentence": f"text {i}", "label": "yes" if i % 2 else "no"} for i in range(8)]
    data = write(root / "data.jsonl", "\n".join(json.dumps(r) for r in good))
    nolabel = write(root / "nolabel.jsonl", json.dumps({"sentence": "x"}))
    badlabel = write(root / "badlabel.jsonl", "\n".join(json.dumps(r) for r in good + [{"sentence": "y", "label": "maybe"}]))
    paths = {}
    for name, path, labels in [("tasks", data, None), ("nolabel", nolabel, None), ("badlabel", badlabel, ["yes", "no"]),
                               ("duplabels", data, ["yes", "Yes", "no"])]:
        entry = {"name": "t", "path": str(path), "instruction": "Yes or no?"}
        if labels:
            entry["labels"] = labels
        paths[name] = write(root / f"{name}.yaml", json.dumps([entry]))
    empty = write(root / "empty.jsonl", "")
    malformed = write(root / "malformed.jsonl", json.dumps(good[0]) + "\n{not json\n")
    for name, path in [("empty", empty), ("malformed", malformed)]:
        paths[name] = write(root / f"{name}.yaml", json.dumps([{"name": "t", "path": str(path), "instruction": "?"}]))
    paths["nopath"] = write(root / "nopath.yaml", json.dumps([{"name": "t", "instruction": "?"}]))
    paths["badyaml"] = write(root / "bad.yaml", "methods: [inclora\n")
    paths["unknownkey"] = write(root / "unknown.yaml", "learning_rat: 0.1\n")
    paths["bench"] = cl_benchmark_dir
    model, tokenizer = tiny_llama()
    save(model, tokenizer, root / "model")
    paths["model"] = root / "model"
    return paths


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_exit_2(case, files, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args, message = CASES[case]
    args = [a.format(**files) for a in args]
    output = tmp_path / "out"
    code = main(["run", "--output", str(output), *args])
    stderr = capsys.readouterr().err
    # Progress bars of a model load may come first; the error is the one last line.
    err = stderr.strip().replace("\r", "\n").splitlines()[-1]
    assert code == 2
    assert err.startswith("jumplora: error:") and "Traceback" not in stderr
    assert sum(line.startswith("jumplora: error:") for line in stderr.splitlines()) == 1
    assert message in err, err
    assert not output.exists() or not any(output.rglob("results.json"))


def test_console_script_exit_code_and_stderr(tmp_path):
    result = subprocess.run([sys.executable, "-m", "jumplora.cli", "run", "--method", "nope"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "unknown method 'nope'" in result.stderr


def test_list_names_every_method(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("seqft", "inclora", "ella", "olora", "ewc", "mtl", "jumplora+inclora", "jumplora+ella", "quick-sc"):
        assert name in out


def test_trackers_start_only_when_asked_and_a_missing_one_is_named(files, capsys, tmp_path, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real_find_spec(name, *a))
    code = main(["run", "--output", str(tmp_path / "out"), "--task-file", str(files["tasks"]), "--log-with", "wandb"])
    assert code == 2
    assert "--log-with wandb needs the wandb package: pip install wandb" in capsys.readouterr().err


def test_apply_refuses_an_update_for_another_model(files, tmp_path, capsys):
    import torch

    from jumplora import TaskUpdate

    from jumplora.manifest import MANIFEST_FILE, ModelManifest

    ModelManifest("tiny-llama", "causal", "generate", 512).write(files["model"] / MANIFEST_FILE)
    update = TaskUpdate({"model.layers.0.self_attn.q_proj": torch.ones(7, 7)}, "lora")
    update.save(tmp_path / "other.safetensors")
    code = main(["apply", "--model", str(files["model"]), "--update", str(tmp_path / "other.safetensors"),
                 "--output", str(tmp_path / "new")])
    assert code == 2
    assert "belongs to another model" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "new").exists() and not (tmp_path / "new.tmp").exists()
    # An update made for another base model is refused before its shapes are even looked at.
    TaskUpdate(update.deltas, "lora", {"base_model": "smollm2-135m"}).save(tmp_path / "foreign.safetensors")
    assert main(["apply", "--model", str(files["model"]), "--update", str(tmp_path / "foreign.safetensors"),
                 "--output", str(tmp_path / "new")]) == 2
    assert "was made for the base model smollm2-135m, not tiny-llama" in capsys.readouterr().err


def test_every_run_option_explains_itself():
    """Each option of `jumplora run --help` says what it is, not only its default."""
    from jumplora.cli import build_parser

    parser = build_parser()
    run = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith(" run"))
    options = [a for a in run._actions if a.option_strings and a.dest != "help"]
    assert len(options) > 40
    for action in options:
        words = (action.help or "").split("; default:")[0].strip()
        assert len(words) >= 12 and not words.startswith("default"), (action.option_strings, action.help)
    text = " ".join(run.format_help().split())  # argparse wraps lines
    assert "one of fp32, bf16, fp16, bf16-base" in text and "--no-also-rank" in text
    assert "(the demo, without data flags: 16)" in text  # the batch size `jumplora run` really uses


def test_yaml_keys_are_the_flags_and_a_typo_gets_the_closest_key(tmp_path, capsys):
    from jumplora.config import load_config

    path = tmp_path / "run.yaml"
    path.write_text("method: inclora\nseed: 3\nlearning-rate: 5e-3\nmax_train_per_task: 8\n")
    config = load_config(path)
    assert (config.methods, config.seeds, config.optim.learning_rate) == (["inclora"], [3], 0.005)
    path.write_text("learning_rat: 0.1\n")
    assert main(["run", "--config", str(path), "--output", str(tmp_path / "out")]) == 2
    assert "unknown configuration key(s) learning_rat (did you mean learning_rate?)" in capsys.readouterr().err
    path.write_text("batch_size: 2.5\n")
    assert main(["run", "--config", str(path), "--output", str(tmp_path / "out")]) == 2
    assert "batch_size must be a whole number, got 2.5" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
