"""The paper's settings: its preset per benchmark, the authors' prompt, the threshold per method."""

from __future__ import annotations

import json

import pytest

from _models import save, tiny_llama
from _streams import write_tasks
from jumplora.adapters.config import paper_threshold_mode
from jumplora.cli import list_text, main
from jumplora.config import load_config
from jumplora.data import Example, Task, build_prompt
from jumplora.data.stream import StreamConfig, resolve_stream


def test_the_two_prompt_formats():
    labels = ["Society & Culture", "Science, Technology"]
    assert build_prompt("Which topic?", labels, "a text") == \
        "Which topic?\nOption: Society & Culture, Science, Technology\na text\nAnswer:"
    assert build_prompt("Which topic?", labels, "a text", "authors") == \
        "Task Instruction: Which topic?\nOptions: Society & Culture | Science, Technology\nText: a text\nAnswer:"
    # COPA has no instruction: its line is left out in both formats.
    assert build_prompt("", ["A", "B"], "premise", "olora") == "Option: A, B\npremise\nAnswer:"
    assert build_prompt("", ["A", "B"], "premise", "authors") == "Options: A | B\nText: premise\nAnswer:"


def test_the_stream_writes_its_tasks_in_the_prompt_format_asked(tmp_path):
    write_tasks(tmp_path, ("one",), repeats=1)
    tasks = resolve_stream(StreamConfig(task_file=str(tmp_path / "tasks.json"), prompt_format="authors"))
    assert tasks[0].prompt("x").startswith("Task Instruction: Sport or food?\nOptions: food | sport\nText: x")


def test_the_paper_preset_is_table_1_and_its_threshold_depends_on_method_and_benchmark():
    config = load_config(preset="paper", overrides={"benchmark": "sc"})
    assert (config.adapter.r, config.adapter.alpha, config.optim.learning_rate, config.optim.batch_size,
            config.optim.epochs) == (8, 32.0, 1e-3, 32, 1)
    assert (config.adapter.start_fraction, config.adapter.final_fraction) == (0.2, 0.8)
    assert config.data.prompt_format == "authors" and config.weights.ella_delta == "sparse"
    assert config.adapter_config("jumplora", "jumplora+inclora").threshold_mode == "per_block"  # Table 3: local
    assert config.adapter_config("jumplora", "jumplora+ella").threshold_mode == "global"
    ls = load_config(preset="paper", overrides={"benchmark": "ls"})
    assert ls.adapter_config("jumplora", "jumplora+inclora").threshold_mode == "global"
    assert ls.adapter_config("jumplora", "jumplora+ella").threshold_mode == "per_block"
    assert paper_threshold_mode("jumplora+inclora", "demo") == "global"
    assert "paper" in list_text() and "'prompt_format': 'authors'" in list_text()
    # A flag overrides the preset: the README's CPU runs use batch 8.
    assert load_config(preset="paper", overrides={"benchmark": "sc", "batch_size": 8}).optim.batch_size == 8


def test_a_model_learned_in_the_authors_format_is_asked_in_it(tmp_path, capsys):
    model, tokenizer = tiny_llama()
    save(model, tokenizer, tmp_path / "model")
    write_tasks(tmp_path, ("one", "two"), repeats=2)
    assert main(["run", "--model", str(tmp_path / "model"), "--task-file", str(tmp_path / "tasks.json"),
                 "--method", "jumplora+inclora", "--output", str(tmp_path / "out"), "--batch-size", "4",
                 "--prompt-format", "authors", "--threshold-mode", "paper"]) == 0
    run = tmp_path / "out" / "jumplora+inclora" / "seed0"
    manifest = json.loads((run / "model" / "jumplora-model.json").read_text())
    assert manifest["prompt_format"] == "authors" and manifest["prompt"].startswith("Task Instruction:")
    results = json.loads((run / "results.json").read_text())
    assert results["config"]["prompt_format"] == "authors" and list(results["thresholds"]["one"]) == ["model"]
    assert main(["evaluate", str(run / "model"), "--output", str(tmp_path / "e.json")]) == 0
    evaluation = json.loads((tmp_path / "e.json").read_text())
    assert [evaluation["tasks"][n]["accuracy"] for n in ("one", "two")] == results["accuracy_matrix"][-1]


def test_threshold_mode_paper_is_not_an_adapter_setting():
    from jumplora import AdapterConfig, AdapterSet, JumploraError

    model, _ = tiny_llama()
    with pytest.raises(JumploraError, match="chosen per method by a run"):
        AdapterSet(model, AdapterConfig(kind="jumplora", threshold_mode="paper"))
    assert Task("t", "?", ("a",), train=[Example("x", "a")]).prompt_format == "olora"  # the default
