"""The ELLA penalty on hand-built matrices."""

import pytest
import torch
from torch import nn

from jumplora import AdapterConfig, AdapterSet, EllaPenalty, JumploraError, TaskUpdate


class TwoProjections(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(2, 2, bias=False)
        self.v = nn.Linear(2, 2, bias=False)


def adapters_with(kind, a, b):
    model = TwoProjections()
    adapters = AdapterSet(model, AdapterConfig(kind=kind, r=1, alpha=2.0, targets=("q", "v")))
    with torch.no_grad():
        for layer in adapters.layers.values():
            layer.lora_A.copy_(torch.tensor(a))
            layer.lora_B.copy_(torch.tensor(b))
    return model, adapters


def test_penalty_by_hand():
    # β = 2, ΔW = B·A = [[1],[2]]·[[1, -3]] = [[1, -3], [2, -6]], so β·ΔW = [[2, -6], [4, -12]].
    model, adapters = adapters_with("lora", [[1.0, -3.0]], [[1.0], [2.0]])
    ella = EllaPenalty()
    assert float(ella(adapters, 10.0).detach()) == 0.0  # no past yet
    past = torch.tensor([[1.0, 0.0], [0.5, 2.0]])
    ella.add(TaskUpdate({"q": past}, "lora"), model)  # only q has a past: L = 1
    # ‖β·ΔW ⊙ P‖² = 2² + 0 + 2² + 24² = 584; λ/L · 584 with λ = 10.
    assert float(ella(adapters, 10.0).detach()) == pytest.approx(5840.0)
    ella.past["q"] = 2 * ella.past["q"]  # e.g. a checkpoint restored: the stacked copy must follow
    assert float(ella(adapters, 10.0).detach()) == pytest.approx(4 * 5840.0)
    ella.past["q"] = ella.past["q"] / 2
    ella.add(TaskUpdate({"q": past, "v": 2 * past}, "lora"), model)  # q: 2P, v: 2P; L = 2
    # Each layer: ‖β·ΔW ⊙ 2P‖² = 4·584; mean over L = 2 layers → 2336; λ = 0.5 → 1168.
    assert float(ella(adapters, 0.5).detach()) == pytest.approx(1168.0)


def test_penalty_gradient_reaches_adapters():
    model, adapters = adapters_with("lora", [[1.0, -3.0]], [[1.0], [2.0]])
    ella = EllaPenalty()
    ella.add(TaskUpdate({"q": torch.ones(2, 2), "v": torch.ones(2, 2)}, "lora"), model)
    ella(adapters, 1.0).backward()
    # ∂/∂B of (1/2)·2·‖β·B·A‖² summed: 2β²·(B·A)·Aᵀ per layer, / L=2, twice (q and v share values).
    delta = torch.tensor([[1.0, -3.0], [2.0, -6.0]])
    expected = 2 * 4 * delta @ torch.tensor([[1.0], [-3.0]]) / 2
    torch.testing.assert_close(adapters.layers["q"].lora_B.grad, expected)


def test_sparse_mode_penalises_the_gated_update_after_start():
    model, adapters = adapters_with("jumplora", [[1.0, -3.0]], [[1.0], [2.0]])
    ella_sparse, ella_interp = EllaPenalty("sparse"), EllaPenalty("interpolated")
    for ella in (ella_sparse, ella_interp):
        ella.add(TaskUpdate({"q": torch.ones(2, 2)}, "jumplora"), model)
    adapters.begin_task(10)
    dense = float(ella_sparse(adapters, 1.0).detach())
    assert dense == pytest.approx(4 * (1 + 9 + 4 + 36))  # before S_start: β·ΔW
    adapters.set_step(2)  # S_start: k = r·(2+2) = 4 = n → every entry kept... make τ cut some
    with torch.no_grad():
        adapters.groups["model"].log_threshold.fill_(torch.tensor(2.5).log())  # keeps |ΔW| ∈ {3, 6}
    adapters.set_step(5)  # γ = 0.5
    assert float(ella_sparse(adapters, 1.0).detach()) == pytest.approx(4 * (9 + 36))
    # interpolated: (1−γ)·ΔW + γ·ΔW_jump = [[0.5, -3], [1, -6]] → β² · (0.25 + 9 + 1 + 36)
    assert float(ella_interp(adapters, 1.0).detach()) == pytest.approx(4 * (0.25 + 9 + 1 + 36))


def test_bad_lambda_and_mode():
    _, adapters = adapters_with("lora", [[1.0, 0.0]], [[1.0], [0.0]])
    with pytest.raises(JumploraError, match="lambda must be >= 0"):
        EllaPenalty()(adapters, -1.0)
    with pytest.raises(JumploraError, match="unknown ELLA delta mode"):
        EllaPenalty("dense")


def reference_penalty(adapters, past, lam, mode):
    """The penalty one layer at a time through the layer's own (scalar-τ) gate: the v0.1 code."""
    names = [n for n in adapters.layers if n in past]
    total = 0
    for name in names:
        layer = adapters.layers[name]
        if mode == "interpolated":
            delta = layer.interpolated_delta()
        else:
            delta = layer.jumped_delta() if adapters.gate_active else layer.delta()
        total = total + (layer.scaling * delta * past[name]).square().sum()
    return lam * total / len(names)


@pytest.mark.parametrize("mode", ["sparse", "interpolated"])
@pytest.mark.parametrize("threshold_mode", ["global", "per_block"])
@pytest.mark.parametrize("stack_entries", [None, 1024])
def test_stacked_penalty_equals_the_per_layer_formula(mode, threshold_mode, stack_entries, monkeypatch):
    from _models import tiny_llama

    if stack_entries is not None:  # one 32×32 layer per stack: the split stacks
        monkeypatch.setattr("jumplora.strategies.ella.CPU_STACK_ENTRIES", stack_entries)

    # Llama with 2 key/value heads: q_proj is 32×32 and v_proj 16×32, so two stacks of two layers.
    model, _ = tiny_llama()
    model = model.double()
    config = AdapterConfig(kind="jumplora", r=4, alpha=8.0, targets=("q_proj", "v_proj"), threshold_mode=threshold_mode)
    adapters = AdapterSet(model, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in adapters.layers.values():
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=generator, dtype=torch.float64))
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator, dtype=torch.float64) * 0.1)
    ella = EllaPenalty(mode)
    past = {name: torch.randn(layer.delta().shape, generator=generator, dtype=torch.float64)
            for name, layer in list(adapters.layers.items())[:-1]}  # the last layer has no past
    ella.past.update({name: value.clone() for name, value in past.items()})
    adapters.begin_task(10)
    adapters.set_step(5)  # after S_start, γ = 0.5: the gate and its threshold gradient are live
    with torch.no_grad():  # put a few entries of every matrix inside the kernel band around ±τ
        tau = float(next(iter(adapters.groups.values()))())
        for layer in adapters.layers.values():
            layer.lora_B[:, 1:].zero_()
            layer.lora_B[:, 0] = torch.linspace(-1, 1, layer.lora_B.shape[0], dtype=torch.float64)
            layer.lora_A[0, :3] = torch.tensor([tau, -tau, tau]) / layer.lora_B[-1, 0]
            layer.lora_A[0, 0] += config.bandwidth / 5
    assert len({layer.delta().shape for layer in adapters.layers.values()}) == 2
    params = adapters.parameters()

    ours = ella(adapters, 3.0)
    ours_grads = torch.autograd.grad(ours, params, allow_unused=True, materialize_grads=True)
    reference = reference_penalty(adapters, past, 3.0, mode)
    reference_grads = torch.autograd.grad(reference, params, allow_unused=True, materialize_grads=True)

    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=0)
    for name, mine, theirs in zip(["A/B"] * (len(params) - len(adapters.groups)) + ["log tau"] * len(adapters.groups),
                                  ours_grads, reference_grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12, msg=name)
    assert any(float(g) != 0.0 for g in reference_grads[-len(adapters.groups):])  # τ's gradient was exercised
    # W_past is kept once: each layer's tensor is a view into its shape's stack.
    stacks = adapters.stacked_factors(list(past), stack_entries)
    assert len(stacks) == (3 if stack_entries else 2)
    for members, *_ in stacks:
        stack = ella.stacked_past(members)
        assert all(ella.past[n].data_ptr() == stack[i].data_ptr() for i, n in enumerate(members))


def test_olora_stacked_penalty_equals_the_per_layer_per_task_formula():
    """O-LoRA's λ₁ Σ_layers Σ_{i<t} ‖A_i·A_tᵀ‖²_F, stacked by shape of layer, against the plain sum."""
    from _models import tiny_llama

    from jumplora.config import RunConfig
    from jumplora.strategies.methods import make_strategy
    from jumplora.strategies.registry import parse_method

    model, _ = tiny_llama()
    model = model.double()  # q_proj 32×32 and v_proj 16×32: two stacks
    config = RunConfig.from_dict(dict(methods=["olora"], r=4, alpha=8.0, targets=["q_proj", "v_proj"], olora_lambda=0.7))
    strategy = make_strategy(parse_method("olora"), model, config, num_tasks=3)
    generator = torch.Generator().manual_seed(0)
    for task in range(3):
        strategy.start_task(task, 10)
        with torch.no_grad():
            for layer in strategy.adapters.layers.values():
                layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=generator, dtype=torch.float64))
        if task < 2:
            assert task > 0 or strategy.penalty() is None  # nothing in the past yet
            strategy.end_task()
    layers = strategy.adapters.layers
    assert len({layer.lora_A.shape for layer in layers.values()}) == 1 and len(strategy.regulariser.past_A) == len(layers) == 4
    ours = strategy.penalty()
    reference = 0.7 * sum((past @ layer.lora_A.t()).square().sum()
                          for name, layer in layers.items() for past in strategy.regulariser.past_A[name])
    assert len(next(iter(strategy.regulariser.past_A.values()))) == 2
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=0)
    params = [layer.lora_A for layer in layers.values()]
    for mine, theirs in zip(torch.autograd.grad(ours, params), torch.autograd.grad(reference, params)):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)
    # A new past task is seen: the stacks are rebuilt after end_task.
    strategy.end_task()
    strategy.start_task(3, 10)
    assert all(len(v) == 3 for v in strategy.regulariser.past_A.values())
    assert {tuple(s.shape[1:]) for s in strategy.regulariser._stacks.values()} <= {(12, 32)}
    strategy.penalty()
    assert {tuple(s.shape[1:]) for s in strategy.regulariser._stacks.values()} == {(12, 32)}


def test_olora_state_restores_the_past_tasks_in_order():
    """12 past tasks through a checkpoint's state: task 10 comes after task 2, as trained."""
    from _models import tiny_llama

    from jumplora.config import RunConfig
    from jumplora.strategies.methods import make_strategy
    from jumplora.strategies.registry import parse_method

    model, _ = tiny_llama()
    config = RunConfig.from_dict(dict(methods=["olora"], r=2, targets=["q_proj"]))
    saved = make_strategy(parse_method("olora"), model, config, num_tasks=13)
    saved.regulariser.past_A = {"model.layers.0.self_attn.q_proj": [torch.full((2, 32), float(i)) for i in range(12)]}
    fresh = make_strategy(parse_method("olora"), model, config, num_tasks=13)
    fresh.restore(saved.state(), set())
    assert [float(a[0, 0]) for a in fresh.regulariser.past_A["model.layers.0.self_attn.q_proj"]] == [float(i) for i in range(12)]


@pytest.mark.parametrize("method", ["ella", "jumplora+ella"])
def test_lambda_auto_balances_the_penalty_against_the_task_loss(method, tmp_path):
    """--ella-lambda auto on a toy stream: λ of each task after the first is Σ loss / Σ penalty over
    its first steps with a penalty, recorded; over those steps λ·penalty is within 2× of the task loss,
    and afterwards it is smaller (training pulls the penalty down) but not gone."""
    import json

    from _models import save, tiny_llama
    from _streams import write_tasks
    from jumplora.cli import main

    model, tokenizer = tiny_llama()
    save(model, tokenizer, tmp_path / "model")
    write_tasks(tmp_path, ("first", "second", "third"), repeats=10)
    assert main(["run", "--model", str(tmp_path / "model"), "--task-file", str(tmp_path / "tasks.json"), "--method",
                 method, "--output", str(tmp_path / "out"), "--batch-size", "2", "--learning-rate", "1e-2",
                 "--ella-lambda", "auto"]) == 0
    results = json.loads((tmp_path / "out" / method / "seed0" / "results.json").read_text())
    balance = results["lambda_balance"]
    assert list(balance) == ["second", "third"]  # the first task has no past: nothing to balance
    for task, entry in balance.items():
        assert entry["steps"] == 5 and entry["lambda"] > 0
        assert 0.5 <= entry["ratio_at_choice"] <= 2.0, (task, entry)
        assert 0 < entry["ratio_after"] < entry["ratio_at_choice"], (task, entry)
    assert results["chosen_lambda"][0] == 0.0 and results["chosen_lambda"][1:] == [e["lambda"] for e in balance.values()]
