"""The benchmark scripts run (CPU, --quick) and write the rows the README's Performance section reads.

No timing is asserted: the figures come from the scripts on the machine that matters. What is
checked is that each script still runs and writes, after its metadata row, rows with a name, a
positive time, a peak-memory field, γ where it applies and a ratio whose baseline row is 1.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name, tmp_path, *extra):
    out = tmp_path / f"{name}.json"
    env = dict(os.environ, OMP_NUM_THREADS="2")
    done = subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), "--device", "cpu", "--quick",
                           "--json", str(out), *extra], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert rows[0]["name"] == "metadata" and rows[0]["device"] == "cpu" and rows[0]["date"]
    assert len(rows) > 1
    for row in rows[1:]:
        assert row["name"] and "gamma" in row and "peak_mib" in row, row
        assert row["ms"] is None or row["ms"] > 0, row
    return rows[1:]


@pytest.mark.parametrize("script, ratio, baseline, extra", [
    ("layer", "ratio_vs_lora", "peft lora", ["--kernels"]),
    ("ella", "ratio_vs_loop", "minilm ella (lora): loop", []),
    ("eval", "ratio_vs_naive", "naive:", []),
])
def test_script_writes_its_rows(script, ratio, baseline, extra, tmp_path):
    rows = run_script(script, tmp_path, *extra)
    assert [row[ratio] for row in rows if row["name"].startswith(baseline)] == [1.0]
    assert all(isinstance(row.get(ratio), float) and row[ratio] > 0 for row in rows), rows
    if "--kernels" in extra:  # the layer's kernels compiled on the CPU too (checked against eager first)
        assert [row["gamma"] for row in rows if row["name"].endswith(", compiled layer kernels")] == [0.5, 1.0]


def test_causal_step_checks_the_label_only_loss_and_writes_every_row(tmp_path):
    rows = run_script("causal_step", tmp_path)
    assert [row["name"] for row in rows][:3] == ["peft lora", "ours lora, full-logit", "ours lora, label-only"]
    assert len(rows) == 11 and rows[0]["ratio_vs_lora"] == 1.0
    for full, label_only in zip(rows[1:9:2], rows[2:9:2]):
        assert (full["gamma"], full["loss_value"]) == (label_only["gamma"], label_only["loss_value"])  # the same loss
        assert label_only["speedup_vs_full_logit"] > 0 and label_only["peak_mib"] is not None
    bf16 = rows[9:]
    assert [row["name"] for row in bf16] == ["ours lora, label-only, bf16 autocast",
                                             "ours jumplora γ=0.5, label-only, bf16 autocast"]
    assert all(row["speedup_vs_fp32"] > 0 and row["peak_mib"] is not None for row in bf16)


def test_eval_runs_on_the_real_smollm2(tmp_path):
    rows = run_script("eval", tmp_path, "--model", "smollm2-135m", "--examples", "8", "--batch-size", "4")
    assert [row["ratio_vs_naive"] for row in rows if row["name"].startswith("naive:")] == [1.0]
    assert rows[0]["name"].startswith("ours: CausalFamily.predict")


def test_step_rows_filter_keeps_the_baselines(tmp_path):
    rows = run_script("step", tmp_path, "--rows", "γ=1")
    assert [row["name"] for row in rows] == ["peft lora", "jumplora γ=1", "(a) peft lora, autocast bf16"]
    assert rows[0]["ratio_vs_lora"] == 1.0 and rows[1]["ratio_vs_lora"] > 0 and rows[1]["gamma"] == 1.0


def test_main_job_runs_the_readme_command(tmp_path):
    rows = {row["name"]: row for row in run_script("main_job", tmp_path)}
    wall = rows["main job: wall"]
    # What the row says, not how fast this machine is (speed is the benchmark's to report, not a test's).
    assert wall["seconds"] > 0 and wall["ratio_vs_target"] == round(wall["seconds"] / 300, 3)
    assert wall["finished"]
    assert not (tmp_path / "runs").exists()  # its output went to a temporary folder, deleted after


def test_the_routing_benchmarks_run(tmp_path):
    import sys as _sys

    _sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _models import save, tiny_llama
    from _topics import write_topic_tasks
    from jumplora.cli import main

    model, tokenizer = tiny_llama()
    save(model, tokenizer, tmp_path / "model")
    assert main(["run", "--model", str(tmp_path / "model"), "--task-file", str(write_topic_tasks(tmp_path)),
                 "--method", "jumplora+inclora", "--output", str(tmp_path / "out"), "--batch-size", "8"]) == 0
    rows = run_script("routing", tmp_path, "--model", str(tmp_path / "out" / "jumplora+inclora" / "seed0" / "model"),
                      "--inputs", "8")
    by_name = {row["name"].rsplit(": ", 1)[1]: row for row in rows}
    assert by_name["predict merged, task given"]["ratio_vs_merged"] == 1.0
    assert by_name["predict routed (no task given)"]["inputs_per_s"] > 0 and by_name["switch of state"]["ms"] > 0
    assert by_name["disk"]["mb_per_task"] > 0
    features = run_script("router_features", tmp_path)
    assert [row["name"] for row in features] == [f"{encoder}, from the {view}" for encoder in
                                                 ("minilm", "smollm2 state 0") for view in ("prompt", "text")]
    assert all(0 <= row["accuracy"] <= 100 for row in features)
