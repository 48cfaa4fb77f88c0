"""Every method through the same checks, one row each; EWC's penalty by hand; a method added by a row.

Table-driven like the families' tests: each registered method trains a tiny Llama on a short task
through its strategy, then its state goes through a checkpoint into a fresh strategy, its penalty
is checked to be nothing before a past exists, and an adapter's merge must not change the model's
output. A resumed stream must equal the uninterrupted one for every method (slow).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

from _models import save, tiny_llama
from _results import read_run
from jumplora.checkpoint import load_checkpoint, save_checkpoint
from jumplora.cli import main
from jumplora.config import load_config
from jumplora.data import Example, Task
from jumplora.families import CausalFamily
from jumplora.strategies import METHODS, MethodSpec, TaskEnd, register
from jumplora.strategies.ewc import EwcPenalty
from jumplora.strategies.methods import make_strategy
from jumplora.strategies.registry import parse_method
from jumplora.context import RunContext
from jumplora.train import batches, make_accelerator, train_task

TASKS = [Task(name, "Sport or food?", ("sport", "food"),
              train=[Example(f"{text} {i}", label) for i in range(4) for text, label in rows])
         for name, rows in (("first", [("the striker scored", "sport"), ("a slow stew", "food")]),
                            ("second", [("the team won", "sport"), ("fresh bread", "food")]))]


def config_for(method: str):
    return load_config(overrides={"methods": [method], "batch_size": 4, "learning_rate": 5e-3, "ella_lambda": 100,
                                  "ewc_lambda": 10, "lora_dropout": 0.0})


def prepared(method: str, tasks: list[Task]):
    """(model, family, strategy, config): every task but the last trained; the last one started."""
    model, tokenizer = tiny_llama()
    config, family = config_for(method), CausalFamily(tokenizer)
    strategy = make_strategy(parse_method(method), model, config, num_tasks=len(tasks))
    accelerator = make_accelerator("cpu", "fp32")
    for t, task in enumerate(tasks):
        plan = batches([task], 4, 1, seed=t, limit=None)
        if t < len(tasks) - 1:
            train_task(RunContext(config, accelerator, model, tokenizer, family, strategy), t, plan, task.name)
    last = len(tasks) - 1
    strategy.start_task(last, 1)
    strategy.set_step(0)
    return model, family, strategy, config


@pytest.mark.parametrize("method", list(METHODS))
def test_state_goes_through_a_checkpoint_into_a_fresh_strategy(method, tmp_path):
    model, _, strategy, config = prepared(method, TASKS)
    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, model, strategy.state(), {"index": 0, "results": {}}, changed=None)
    weights, tensors, _ = load_checkpoint(folder)
    fresh_model, _ = tiny_llama()
    fresh = make_strategy(parse_method(method), fresh_model, config, num_tasks=2)
    fresh.restore({k: v for k, v in tensors.items() if not k.startswith("rng/")}, set(weights))
    fresh_model.load_state_dict(weights, strict=False)
    assert fresh.state().keys() == strategy.state().keys()
    for key, value in strategy.state().items():
        assert torch.equal(fresh.state()[key], value), key
    for key, value in model.state_dict().items():
        assert torch.equal(fresh_model.state_dict()[key], value), key
    if strategy.regulariser is not None:  # the same term on the same weights
        want, got = strategy.penalty(), fresh.penalty()
        assert want is not None and torch.equal(got, want)


@pytest.mark.parametrize("method", [m for m, spec in METHODS.items() if spec.penalty is not None])
def test_no_penalty_before_a_past_exists(method):
    model, _ = tiny_llama()
    strategy = make_strategy(parse_method(method), model, config_for(method), num_tasks=2)
    strategy.start_task(0, 4)
    strategy.set_step(0)
    value = strategy.penalty()
    assert value is None or float(value) == 0.0


@pytest.mark.parametrize("method", [m for m, spec in METHODS.items() if spec.adapter and spec.adapter_per_task])
def test_the_merge_keeps_the_trained_model(method):
    model, family, strategy, _ = prepared(method, TASKS[:1])
    for layer in strategy.adapters.layers.values():
        nn.init.normal_(layer.lora_B, std=0.05)
    strategy.adapters.set_step(strategy.adapters.schedule.num_steps)  # γ = 1: the gate as merged
    batch = family.collate(TASKS[0], TASKS[0].train)
    with torch.no_grad():
        before = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        update = strategy.end_task()
        after = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert update is not None and float(after.sub(before).abs().max()) < 1e-4


def test_ewc_penalty_by_hand():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0]]))
    penalty = EwcPenalty(weight=4.0)
    assert penalty.value(model, None, 0) is None  # no past task
    # One past task with two batches: F = mean of the squared gradients = ((1² + 3²)/2, (2² + 0²)/2) = (5, 2).
    grads = iter([torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 0.0]])])
    losses = [(model.weight * next(grads)).sum() for _ in range(2)]
    penalty.remember(TaskEnd(0, model, fisher_losses=losses))
    assert torch.equal(penalty.fisher["weight"], torch.tensor([[5.0, 2.0]]))
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[2.0, 0.0]]))  # θ − θ* = (1, 2)
    # (λ/2) Σ F (θ − θ*)² = 2 · (5·1 + 2·4) = 26.
    assert float(penalty.value(model, None, 1).detach()) == pytest.approx(26.0)


class ShrinkB:
    """A toy penalty, μ·Σ‖B‖², that counts its calls and keeps the number of tasks it has seen."""

    calls = 0

    def __init__(self, weight: float) -> None:
        self.weight, self.seen = weight, torch.zeros(())

    def value(self, model, adapters, task):
        ShrinkB.calls += 1
        return self.weight * sum(layer.lora_B.square().sum() for layer in adapters.layers.values())

    def remember(self, ending: TaskEnd) -> None:
        self.seen = self.seen + 1

    def state(self):
        return {"shrink/seen": self.seen}

    def load_state(self, tensors, device):
        self.seen = tensors.get("shrink/seen", torch.zeros(()))


@pytest.fixture
def toy_method():
    spec = register(MethodSpec("shrink", "inclora + μ‖B‖² (a test method)", "lora", lambda weights, order, n: ShrinkB(0.1)))
    yield spec
    del METHODS[spec.name]


@pytest.mark.slow
def test_a_method_added_by_one_row_and_one_class_runs(toy_method, tmp_path):
    model, tokenizer = tiny_llama()
    save(model, tokenizer, tmp_path / "model")
    lines = [json.dumps({"sentence": e.sentence, "label": e.label, "split": split})
             for split in ("train", "test") for e in TASKS[0].train]
    (tmp_path / "first.jsonl").write_text("\n".join(lines))
    (tmp_path / "tasks.yaml").write_text("- {name: first, path: first.jsonl, instruction: 'Sport or food?'}\n"
                                         "- {name: again, path: first.jsonl, instruction: 'Sport or food?'}\n")
    ShrinkB.calls = 0
    code = main(["run", "--model", str(tmp_path / "model"), "--task-file", str(tmp_path / "tasks.yaml"),
                 "--method", "shrink", "--batch-size", "4", "--output", str(tmp_path / "out")])
    assert code == 0 and ShrinkB.calls == 4  # 2 tasks × 2 steps
    results = read_run(tmp_path / "out" / "shrink" / "seed0")
    assert results["finished_tasks"] == 2
    assert sorted(p.name for p in (tmp_path / "out" / "shrink" / "seed0" / "deltas").glob("*.safetensors")) == [
        "00-first.safetensors", "01-again.safetensors"]
    _, tensors, _ = load_checkpoint(tmp_path / "out" / "shrink" / "seed0" / "checkpoints" / "01-again")
    assert float(tensors["shrink/seen"]) == 2.0


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_a_resumed_stream_equals_the_uninterrupted_one(method, tmp_path):
    model, tokenizer = tiny_llama()
    save(model, tokenizer, tmp_path / "model")
    entries = []
    for task in TASKS:
        lines = [json.dumps({"sentence": e.sentence, "label": e.label, "split": split})
                 for split in ("train", "test") for e in task.train]
        (tmp_path / f"{task.name}.jsonl").write_text("\n".join(lines))
        entries.append({"name": task.name, "path": f"{task.name}.jsonl", "instruction": task.instruction})
    (tmp_path / "tasks.json").write_text(json.dumps(entries))
    args = ["run", "--model", str(tmp_path / "model"), "--task-file", str(tmp_path / "tasks.json"), "--method", method,
            "--batch-size", "4", "--learning-rate", "5e-3", "--ella-lambda", "100", "--ewc-lambda", "10"]
    assert main([*args, "--output", str(tmp_path / "straight")]) == 0
    stopped = tmp_path / "stopped" / method / "seed0"
    assert main([*args, "--output", str(tmp_path / "stopped")]) == 0
    # As if it had stopped after the first task: the last checkpoint and the final model gone.
    for path in [stopped / "model", *(stopped / "checkpoints").glob("01-*")]:
        remove(path)
    assert main(["run", "--resume", str(tmp_path / "stopped")]) == 0
    straight, resumed = read_run(tmp_path / "straight" / method / "seed0"), read_run(stopped)
    drop = ("timing", "config", "resumes", "sha256")
    assert {k: v for k, v in resumed.items() if k not in drop} == {k: v for k, v in straight.items() if k not in drop}
    a = load_checkpoint(tmp_path / "straight" / method / "seed0" / "checkpoints" / last_checkpoint(straight))[0]
    b = load_checkpoint(stopped / "checkpoints" / last_checkpoint(straight))[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def last_checkpoint(results: dict) -> str:
    """The folder name of a finished run's last checkpoint: <t>-<label of the last stage>."""
    return f"{results['finished_tasks'] - 1:02d}-{list(results['losses'])[-1]}"


def remove(path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
