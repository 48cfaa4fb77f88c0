"""The files of examples/ run as the README says (at tiny sizes), so they never rot."""

from pathlib import Path

import pytest
import yaml

from _results import read_run
from jumplora.cli import main
from jumplora.data.stream import StreamConfig, resolve_stream

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def test_the_example_task_file_reads_a_csv_with_text_and_a_jsonl():
    topics, reviews = resolve_stream(StreamConfig(task_file=str(EXAMPLES / "tasks.yaml")))
    assert topics.labels == ("business", "sport") and reviews.labels == ("good", "bad")
    assert len(reviews.train) + len(reviews.dev) + len(reviews.test) == 12  # every row of the `text` column
    assert reviews.test and topics.test


@pytest.mark.slow
def test_the_example_run_config_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # its task_file is relative to the file itself, wherever the run starts
    assert main(["run", "--config", str(EXAMPLES / "run.yaml"), "--output", str(tmp_path / "out")]) == 0
    for method in ("inclora", "jumplora+inclora"):
        assert read_run(tmp_path / "out" / method / "seed0")["finished_tasks"] == 2
    # The real MiniLM's model folder answers with the task's labels, as the run scored it.
    from jumplora.inference import predict

    _, reviews = resolve_stream(StreamConfig(task_file=str(EXAMPLES / "tasks.yaml")))
    run_dir = tmp_path / "out" / "jumplora+inclora" / "seed0"
    task, labels = predict(run_dir / "model", None, [e.sentence for e in reviews.test], name="reviews")
    assert set(labels) <= set(task.labels) == {"good", "bad"}
    accuracy = 100 * sum(p == e.label for p, e in zip(labels, reviews.test)) / len(reviews.test)
    assert accuracy == read_run(run_dir)["accuracy_matrix"][1][1]


@pytest.mark.slow
def test_the_example_sweep_runs(tmp_path, monkeypatch, cl_benchmark_dir):
    monkeypatch.chdir(ROOT)
    settings = yaml.safe_load((EXAMPLES / "sweep.yaml").read_text())
    settings.update(max_train_per_task=16, max_test_per_task=8, methods=["jumplora+inclora"], data_dir=str(cl_benchmark_dir),
                    output=str(tmp_path / "sweep"))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(settings))
    assert main(["sweep", "--config", str(tmp_path / "sweep.yaml")]) == 0
    for order in settings["order"]:
        assert read_run(tmp_path / "sweep" / f"order{order}" / "jumplora+inclora" / "seed0")["finished_tasks"] == 4
    assert (tmp_path / "sweep" / "report" / "report.html").is_file()


@pytest.mark.slow
def test_the_python_api_example_runs(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(EXAMPLES / "teach.py"), str(tmp_path / "example")], capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert "learned: topics, reviews" in lines
    assert "v2 learned: topics, reviews, urgency | generation 2" in lines
    assert "after rollback: topics, reviews" in lines
    assert any(line.startswith("urgency says: ['") for line in lines)
    assert (tmp_path / "example" / "v2" / "jumplora-model.json").is_file()
