"""The paper's settings under bad or odd input (an adversarial read of --preset paper, --ella-lambda,
--order and --precision): refused before anything is written, noted when legal but surprising, and
recorded as they ran."""

from __future__ import annotations

import json

import pytest

from _cli import last_error
from _streams import ROWS, tiny_workspace
from jumplora.cli import main
from jumplora.config import RunConfig, load_config
from jumplora.data.stream import StreamConfig, resolve_stream
from jumplora.errors import JumploraError
from jumplora.runner import step_warnings
from jumplora.strategies.ella import EllaPenalty
from jumplora.strategies.registry import paper_ella_lambdas
from jumplora.train import make_accelerator


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_workspace(tmp_path_factory.mktemp("paper-checks"), rows=ROWS[:4])


def run_args(setup, output, method="ella", *extra):
    return ["run", "--model", str(setup / "model"), "--task-file", str(setup / "tasks.json"), "--method", method,
            "--output", str(output), "--batch-size", "2", "--learning-rate", "1e-2", *extra]


def test_an_extension_keeps_the_lambda_auto_chose_for_the_earlier_tasks(setup, tmp_path):
    out = tmp_path / "out"
    assert main(run_args(setup, out, "ella", "--ella-lambda", "auto")) == 0
    before = json.loads((out / "ella" / "seed0" / "results.json").read_text())["chosen_lambda"]
    assert before[0] == 0.0 and before[1] > 0
    assert main(["run", "--resume", str(out), "--add-task-file", str(setup / "more.json")]) == 0
    after = json.loads((out / "ella" / "seed0" / "results.json").read_text())
    # Before the fix the resumed process wrote [0, 0, λ_third]: its penalty had no λ for task 1.
    assert after["chosen_lambda"][:2] == before and after["chosen_lambda"][2] == after["lambda_balance"]["third"]["lambda"]


def test_a_lambda_list_that_does_not_fit_the_stream_is_refused_before_the_earlier_run_is_replaced(setup, tmp_path,
                                                                                                  capsys):
    out = tmp_path / "out"
    assert main(run_args(setup, out, "inclora")) == 0
    kept = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert main(run_args(setup, out, "ella", "--ella-lambda", "1,2,3", "--overwrite")) == 2
    assert "lists 3 values for a stream of 2 tasks" in last_error(capsys)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == kept  # the earlier run is whole


def test_the_paper_lambdas_are_one_per_task_for_every_order_and_length():
    assert paper_ella_lambdas(4, 15) == [0.0] + [5e5] * 13 + [5e7]  # Table 7
    assert paper_ella_lambdas(5, 15) == [0.0] + [5e6] * 11 + [5e7] * 3
    assert paper_ella_lambdas(6, 15) == [0.0] + [5e5] * 14
    assert paper_ella_lambdas(5, 3) == [0.0, 5e6, 5e6]  # was 12 values
    assert paper_ella_lambdas(4, 17)[-3:] == [5e7, 5e7, 5e7]  # tasks added after the order's 15
    assert paper_ella_lambdas(1, 4) == paper_ella_lambdas(None, 4) == [3e4] * 4


def test_the_order_a_stream_follows():
    assert StreamConfig(benchmark="ls").resolved_order() == 4  # was None: ELLA got 3e4 for every task
    assert StreamConfig(benchmark="sc", order=2).resolved_order() == 2
    assert StreamConfig(order=5).benchmark == "ls"  # an order names its benchmark
    assert StreamConfig(benchmark="sc", tasks=["dbpedia"]).resolved_order() is None
    assert StreamConfig().resolved_order() is None
    with pytest.raises(JumploraError, match="give only one of them"):
        StreamConfig(benchmark="sc", order=2, tasks=["dbpedia", "amazon"])  # the order was ignored


def test_fp16_on_a_cpu_is_refused_rather_than_run_as_fp32(setup, tmp_path, capsys):
    with pytest.raises(JumploraError, match="fp16 is a GPU setting"):
        make_accelerator("cpu", "fp16")
    assert main(run_args(setup, tmp_path / "out", "inclora", "--precision", "fp16", "--device", "cpu")) == 2
    assert "fp16 is a GPU setting" in last_error(capsys) and not (tmp_path / "out").exists()


def test_resume_refuses_a_preset_or_a_config_it_would_ignore(setup, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("batch_size: 8\n")
    for extra in (["--preset", "paper"], ["--config", str(tmp_path / "c.yaml")]):
        assert main(["run", "--resume", str(tmp_path / "any"), *extra]) == 2
        assert "with the settings it was started with" in last_error(capsys)


def test_lambda_auto_never_divides_by_a_zero_loss():
    penalty = EllaPenalty("sparse", [0.0, None])
    penalty._task, penalty._measured = 1, [(0.0, 2.0), (1.0, 1.0)]
    penalty._choose()
    assert penalty.lambdas[1] == 1 / 3 and penalty.balance[1]["ratio_at_choice"] == pytest.approx(1 / 3)
    penalty._measured = [(0.0, 2.0)]
    penalty._choose()
    assert penalty.lambdas[1] == 0.0 and penalty.balance[1]["ratio_at_choice"] is None


def test_short_tasks_under_lambda_auto_are_warned_about(setup):
    config = RunConfig.from_dict({"task_file": str(setup / "tasks.json"), "methods": ["ella"], "batch_size": 4,
                                  "ella_lambda": "auto"})
    tasks = resolve_stream(config.data)  # 16 examples a task: 4 steps, all measured, none penalised
    warnings = [w for w in step_warnings(config, tasks) if "ella-lambda auto" in w]
    assert len(warnings) == 1 and "task second gets 4" in warnings[0] and "acts on 0 of them" in warnings[0]
    numeric = RunConfig.from_dict({**config.to_dict(), "ella_lambda": 3e4})
    assert not [w for w in step_warnings(numeric, tasks) if "ella-lambda auto" in w]


def test_a_label_holding_the_option_separator_is_noted(tmp_path):
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps({"sentence": f"s{i}", "label": y, "split": split})
                                                for split in ("train", "test")
                                                for i, y in enumerate(["Science, Math", "Sports"] * 2)))
    (tmp_path / "tasks.json").write_text(json.dumps([{"name": "t", "path": "t.jsonl", "instruction": "Topic?"}]))
    olora = resolve_stream(StreamConfig(task_file=str(tmp_path / "tasks.json")))[0]
    assert any("holds ','" in note and "--prompt-format authors" in note for note in olora.notes)
    authors = resolve_stream(StreamConfig(task_file=str(tmp_path / "tasks.json"), prompt_format="authors"))[0]
    assert not any("holds" in note for note in authors.notes)


def test_the_paper_preset_outside_its_benchmarks_and_ella_settings_on_other_methods_are_noted(setup, tmp_path,
                                                                                              capsys):
    assert main(run_args(setup, tmp_path / "a", "inclora", "--preset", "paper", "--ella-lambda", "5",
                         "--save-model", "false")) == 0
    out = capsys.readouterr().out
    assert "--preset paper is Table 1's settings for --benchmark sc or ls" in out
    assert "ELLA's λ settings do not apply to inclora" in out
    with pytest.raises(JumploraError, match="set λ two ways"):
        load_config(overrides={"ella_lambda": 5.0, "ella_lambda_search": True})


def test_a_given_lambda_is_recorded_as_it_trained(setup, tmp_path):
    assert main(run_args(setup, tmp_path / "out", "ella", "--ella-lambda", "5", "--save-model", "false")) == 0
    assert json.loads((tmp_path / "out" / "ella" / "seed0" / "results.json").read_text())["chosen_lambda"] == [5.0, 5.0]


def test_a_settings_file_may_name_a_preset_which_its_keys_override(tmp_path):
    (tmp_path / "c.yaml").write_text("preset: paper\nbenchmark: sc\nbatch_size: 8\n")
    config = load_config(tmp_path / "c.yaml")
    assert (config.optim.batch_size, config.adapter.r, config.data.prompt_format) == (8, 8, "authors")
    assert config.adapter_config("jumplora", "jumplora+inclora").threshold_mode == "per_block"
    (tmp_path / "bad.yaml").write_text("preset: papr\n")
    with pytest.raises(JumploraError, match="unknown preset 'papr'.*paper"):
        load_config(tmp_path / "bad.yaml")
