"""End to end: `jumplora run` on 2-task streams for every method and model family (slow)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModel

from _models import minilm, save, tiny_llama, tiny_t5
from _results import read_run
from jumplora.cli import main
from jumplora.config import load_config
from jumplora.data.stream import resolve_stream
from jumplora.evaluation import evaluate
from jumplora.families import load_model
from jumplora.strategies.registry import METHODS

pytestmark = pytest.mark.slow

TOY = {
    "sport": ("Which topic is it about?", ["sport", "food"], [
        ("the striker scored twice in the final", "sport"), ("a slow-cooked stew with garlic", "food"),
        ("the team won the league title", "sport"), ("fresh bread baked this morning", "food"),
        ("the runner broke the world record", "sport"), ("a bowl of spicy noodle soup", "food"),
        ("the goalkeeper saved a penalty", "sport"), ("chocolate cake with cream", "food"),
    ]),
    "mood": ("What is the sentiment?", ["good", "bad"], [
        ("i loved every minute of it", "good"), ("this was a waste of time", "bad"),
        ("a wonderful, warm film", "good"), ("boring and far too long", "bad"),
        ("great acting and a clever plot", "good"), ("the worst meal i have had", "bad"),
        ("an absolute delight", "good"), ("terrible service and cold food", "bad"),
    ]),
}


def write_stream(folder):
    entries = []
    for name, (instruction, labels, rows) in TOY.items():
        records = [{"sentence": s, "label": y, "split": "train"} for s, y in rows * 3]
        records += [{"sentence": s, "label": y, "split": "test"} for s, y in rows]
        records += [{"sentence": s, "label": y, "split": "dev"} for s, y in rows[:2]]
        path = folder / f"{name}.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in records))
        entries.append({"name": name, "path": path.name, "instruction": instruction, "labels": labels})
    task_file = folder / "tasks.json"
    task_file.write_text(json.dumps(entries))
    return task_file


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    return write_stream(tmp_path_factory.mktemp("stream"))


@pytest.fixture(scope="module", params=["t5", "llama", "minilm"])
def model_dir(request, tmp_path_factory):
    model, tokenizer = {"t5": tiny_t5, "llama": tiny_llama, "minilm": minilm}[request.param]()
    folder = tmp_path_factory.mktemp(request.param)
    save(model, tokenizer, folder)
    return request.param, folder


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_runs_the_stream(model_dir, stream, method, tmp_path):
    family, folder = model_dir
    code = main(["run", "--model", str(folder), "--task-file", str(stream), "--method", method,
                 "--output", str(tmp_path), "--batch-size", "8", "--learning-rate", "5e-3",
                 "--ella-lambda", "100", "--ewc-lambda", "10", "--save-model", str(method == "inclora")])
    assert code == 0
    out = tmp_path / method / "seed0"
    results = read_run(out)
    matrix = results["accuracy_matrix"]
    assert results["tasks"] == ["sport", "mood"] and results["finished_tasks"] == 2
    # 8 test examples per task: every accuracy is a whole number of them, out of 8.
    assert matrix[0][1] is None and all(v is not None and (v * 8 / 100).is_integer() for v in matrix[1])
    assert results["metrics"]["oa"] == pytest.approx(sum(matrix[1]) / 2)
    if method == "mtl":
        assert matrix[0][0] is None and results["metrics"]["bwt"] is None
    else:
        assert results["metrics"]["bwt"] == pytest.approx(matrix[1][0] - matrix[0][0])
    assert results["metrics"]["fwt"] is None
    deltas = sorted(p.name for p in (out / "deltas").glob("*.safetensors"))
    if method in ("inclora", "ella", "olora", "jumplora+inclora", "jumplora+ella"):
        assert deltas == ["00-sport.safetensors", "01-mood.safetensors"]
        manifest = json.loads((out / "deltas" / "manifest.json").read_text())
        assert [(e["index"], e["task"], e["file"]) for e in manifest] == [(0, "sport", deltas[0]), (1, "mood", deltas[1])]
    if method.startswith("jumplora+"):
        for task in ("sport", "mood"):
            assert all(0.0 < s < 1.0 for s in results["sparsity"][task].values())
        assert results["jaccard"]["mean_with_previous"][0] is None
        assert 0.0 <= results["jaccard"]["mean_with_previous"][1] <= 1.0
        assert set(results["thresholds"]["sport"]) == {"model"}
    if method == "inclora":
        # The saved model, loaded and evaluated apart from the run, gives the run's last row.
        loaded, _, loaded_family = load_model(str(out / "model"))
        tasks = resolve_stream(load_config(overrides={"task_file": str(stream)}).data)
        assert [evaluate(loaded, loaded_family, task, 64) for task in tasks] == matrix[1]
        reloaded = AutoModel.from_pretrained(out / "model")
        base = AutoModel.from_pretrained(folder)
        changed = [k for k, v in reloaded.state_dict().items() if not torch.equal(v, base.state_dict()[k])]
        assert changed and all(k.rsplit(".", 2)[-2] in ("q", "v", "q_proj", "v_proj", "query", "value")
                               for k in changed)


# Stand-ins for the tracker packages, which are not installed here: each writes its import (wandb's also
# the calls accelerate's WandBTracker makes) to the file $FAKE_TRACKER_LOG.
FAKE_TRACKERS = {
    "wandb": """import os


def note(line):
    with open(os.environ["FAKE_TRACKER_LOG"], "a") as log:
        log.write(line + "\\n")


note("import wandb")


class Run:
    def log(self, values, step=None, **kwargs):
        note(f"log {step} {','.join(sorted(values))}")

    def finish(self):
        note("finish")


class Config:
    def update(self, values, **kwargs):
        note(f"config {values['methods']}")


config = Config()


def init(project=None, **kwargs):
    note(f"init {project}")
    return Run()
""",
    "tensorboard": """import os

with open(os.environ["FAKE_TRACKER_LOG"], "a") as log:
    log.write("import tensorboard\\n")
""",
}


def test_trackers_are_imported_only_when_asked_for(stream, tmp_path):
    """No tracker package is imported unless --log-with names it; the one named gets the run.

    The stand-ins carry dist-info, so accelerate counts them as installed (it checks importlib.metadata)
    and a runner that always passed log_with (or "all") would import them. accelerate takes that census
    once, when it is imported, hence a fresh process with the stand-ins on its PYTHONPATH.
    """
    fakes = tmp_path / "fakes"
    for name, code in FAKE_TRACKERS.items():
        (fakes / name).mkdir(parents=True)
        (fakes / name / "__init__.py").write_text(code)
        (fakes / f"{name}-0.0.0.dist-info").mkdir()
        (fakes / f"{name}-0.0.0.dist-info" / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.0\n")
    model, tokenizer = tiny_llama()
    save(model, tokenizer, tmp_path / "llama")
    log = tmp_path / "trackers.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fakes), *sys.path]), FAKE_TRACKER_LOG=str(log))

    def run(output, *extra):
        args = ["run", "--model", str(tmp_path / "llama"), "--task-file", str(stream), "--method", "inclora",
                "--output", str(tmp_path / output), "--batch-size", "8", "--save-model", "false", *extra]
        done = subprocess.run([sys.executable, "-m", "jumplora.cli", *args], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]

    run("plain")
    assert not log.exists(), f"a run without --log-with imported a tracker: {log.read_text()}"
    run("logged", "--log-with", "wandb")  # the stand-in is used when asked for: the check above can fail
    lines = log.read_text().splitlines()
    assert lines[:3] == ["import wandb", "init inclora-seed0", "config ['inclora']"] and lines[-1] == "finish"
    steps = [int(line.split()[1]) for line in lines if line.startswith("log ")]
    assert steps == list(range(len(steps))) and len(steps) == 6  # 2 tasks x 3 steps, numbered across the stream
    assert all(line.endswith(" train/loss,train/lr") for line in lines if line.startswith("log "))
    assert "import tensorboard" not in lines  # only the tracker asked for


def test_minilm_learns_the_toy_stream_and_fwt_uses_single_task_runs(stream, tmp_path):
    model, tokenizer = minilm()
    folder = tmp_path / "minilm"
    save(model, tokenizer, folder)
    args = ["run", "--model", str(folder), "--task-file", str(stream), "--method", "jumplora+inclora",
            "--output", str(tmp_path / "out"), "--batch-size", "8", "--learning-rate", "5e-3",
            "--single-task-baselines", "true", "--save-model", "false"]
    assert main(args) == 0
    results = read_run(tmp_path / "out" / "jumplora+inclora" / "seed0")
    matrix, single = results["accuracy_matrix"], results["single_task_accuracy"]
    assert matrix[0][0] >= 75 and matrix[1][1] >= 75  # real weights learn these easy tasks
    assert results["metrics"]["fwt"] == pytest.approx((matrix[0][0] - single[0] + matrix[1][1] - single[1]) / 2)
    cache = tmp_path / "out" / "jumplora+inclora" / "single_task" / "seed0" / "sport" / "results.json"
    stamp = cache.stat().st_mtime_ns
    assert main([*args, "--overwrite"]) == 0  # the single-task runs are cached, not trained again
    assert cache.stat().st_mtime_ns == stamp


def test_lambda_search_picks_per_task_by_dev_accuracy(stream, tmp_path):
    model, tokenizer = tiny_llama()
    save(model, tokenizer, tmp_path / "llama")
    assert main(["run", "--model", str(tmp_path / "llama"), "--task-file", str(stream), "--method", "jumplora+ella",
                 "--output", str(tmp_path / "out"), "--batch-size", "8", "--ella-lambda-search", "true",
                 "--ella-lambda-grid", "1,1000", "--save-model", "false"]) == 0
    results = read_run(tmp_path / "out" / "jumplora+ella" / "seed0")
    assert len(results["chosen_lambda"]) == 2 and set(results["chosen_lambda"]) <= {1.0, 1000.0}
    for task, chosen in zip(["sport", "mood"], results["chosen_lambda"]):
        scores = results["lambda_search"][task]
        assert set(scores) == {"1", "1000"}
        assert scores[f"{chosen:g}"] == max(scores.values())  # the first of the best wins a tie


def test_hub_tasks_go_through_the_datasets_library(tmp_path, monkeypatch):
    """The hub path users take, on local JSON files through the real `datasets` library (no network)."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = write_stream(tmp_path).parent
    for name in ("sport", "mood"):
        rows = [json.loads(line) for line in (folder / f"{name}.jsonl").read_text().splitlines()]
        for split in ("train", "test"):
            (folder / f"{name}-{split}.jsonl").write_text(
                "\n".join(json.dumps({"text": r["sentence"], "label": r["label"]}) for r in rows if r["split"] == split))
    entries = [{"name": name, "hub": "json", "instruction": instruction, "text_column": "text",
                "data_files": {s: str(folder / f"{name}-{s}.jsonl") for s in ("train", "test")}}
               for name, (instruction, _, _) in TOY.items()]
    (folder / "hub.yaml").write_text(json.dumps(entries))
    model, tokenizer = tiny_llama()
    save(model, tokenizer, tmp_path / "llama")
    assert main(["run", "--model", str(tmp_path / "llama"), "--task-file", str(folder / "hub.yaml"),
                 "--method", "inclora", "--output", str(tmp_path / "out"), "--batch-size", "8",
                 "--save-model", "false"]) == 0
    results = read_run(tmp_path / "out" / "inclora" / "seed0")
    assert results["tasks"] == ["sport", "mood"] and results["finished_tasks"] == 2
    assert results["dropped"]["sport"]["test"] == 0


def test_sweep_skips_finished_runs_and_writes_the_report(tmp_benchmark, tmp_path):
    model, tokenizer = tiny_llama()
    save(model, tokenizer, tmp_path / "llama")
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(json.dumps({
        "model": str(tmp_path / "llama"), "benchmark": "sc", "order": [1], "data_dir": str(tmp_benchmark),
        "methods": ["inclora", "jumplora+inclora"], "seeds": [0, 1], "batch_size": 2, "save_model": False,
        "output": str(tmp_path / "sweep"),
    }))
    assert main(["sweep", "--config", str(sweep_file)]) == 0
    results = sorted((tmp_path / "sweep" / "order1").glob("*/seed*/results.json"))
    assert len(results) == 4
    stamps = [p.stat().st_mtime_ns for p in results]
    assert main(["sweep", "--config", str(sweep_file)]) == 0  # nothing left to do: every run is skipped
    assert [p.stat().st_mtime_ns for p in results] == stamps
    report = tmp_path / "sweep" / "report"
    html = (report / "report.html").read_text()
    assert "jumplora+inclora" in html and "data:image/png;base64" in html
    # Every figure of the report, from these real (tiny) runs.
    names = ["bwt_radial.png", "sparsity_overlap.png", "sparsity_depth.png", "threshold_trace.png", "loss.png"]
    names += [f"accuracy_{m}_seed{k}.png" for m in ("inclora", "jumplora+inclora") for k in (0, 1)]
    for name in names:
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (report / name).stat().st_size > 5000, name


@pytest.mark.parametrize("make", [tiny_t5, minilm], ids=["t5", "minilm"])
def test_bf16_base_trains_fp32_adapters_on_bf16_weights(make, stream, tmp_path):
    from safetensors.torch import load_file

    from jumplora.adapters import TaskUpdate

    model, tokenizer = make()
    save(model, tokenizer, tmp_path / "model")
    assert main(["run", "--model", str(tmp_path / "model"), "--task-file", str(stream), "--method", "jumplora+ella",
                 "--output", str(tmp_path / "out"), "--batch-size", "8", "--learning-rate", "5e-3",
                 "--ella-lambda", "100", "--precision", "bf16-base"]) == 0
    out = tmp_path / "out" / "jumplora+ella" / "seed0"
    results = read_run(out)
    assert results["finished_tasks"] == 2 and all(0 <= v <= 100 for v in results["accuracy_matrix"][1])
    final = load_file(out / "model" / "model.safetensors")
    assert {v.dtype for v in final.values()} == {torch.bfloat16}
    # The updates are recorded in fp32; the weights are base + update, rounded once per task to bf16.
    updates = [TaskUpdate.load(out / "deltas" / name) for name in ("00-sport.safetensors", "01-mood.safetensors")]
    base = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    changed = 0
    for name, first in updates[0].deltas.items():
        assert first.dtype == torch.float32
        key = next(k for k in final if k.endswith(name + ".weight"))
        expected = (base[key].float() + first).to(torch.bfloat16).float() + updates[1].deltas[name]
        torch.testing.assert_close(final[key].float(), expected, rtol=2**-8, atol=1e-6)
        changed += int(not torch.equal(final[key], base[key]))
    assert changed > 0
