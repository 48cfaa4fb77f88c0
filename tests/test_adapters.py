"""Adapters in real model families: injection, τ initialisation, merge ≡ unmerged, saved updates."""

import copy

import pytest
import torch
from torch import nn

from _models import minilm, tiny_gpt2, tiny_llama, tiny_t5
from jumplora import AdapterConfig, AdapterSet, JumploraError, TaskUpdate
from jumplora.adapters import AdaptedLinear
from jumplora.layout import block_index, block_of

BUILDERS = {"t5": tiny_t5, "llama": tiny_llama, "gpt2": tiny_gpt2, "minilm": minilm}


def model_inputs(name, tokenizer):
    batch = tokenizer(["a short sentence", "another, somewhat longer, sentence here"], return_tensors="pt",
                      padding=True)
    if name == "t5":
        batch["decoder_input_ids"] = batch["input_ids"][:, :3]
    return dict(batch)


def outputs(model, inputs):
    with torch.no_grad():
        result = model(**inputs)
    return result.logits if hasattr(result, "logits") else result.last_hidden_state


def randomise_updates(adapters, std=0.05):
    torch.manual_seed(3)
    for layer in adapters.layers.values():
        nn.init.normal_(layer.lora_B, std=std)


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def family(request):
    model, tokenizer = BUILDERS[request.param]()
    return request.param, model.eval(), tokenizer


@pytest.mark.parametrize("kind, mode", [("jumplora", "global"), ("jumplora", "per_block"), ("lora", "global")])
def test_merged_equals_unmerged_and_update_round_trips(family, kind, mode, tmp_path):
    name, base, tokenizer = family
    model = copy.deepcopy(base)
    inputs = model_inputs(name, tokenizer)
    adapters = AdapterSet(model, AdapterConfig(kind=kind, threshold_mode=mode))
    randomise_updates(adapters)
    adapters.begin_task(10)
    adapters.set_step(9)  # γ = 1: the forward uses the hard gate, as the merge does
    adapted = outputs(model, inputs)
    update = adapters.merge_and_unload()
    merged = outputs(model, inputs)

    assert not any(isinstance(m, AdaptedLinear) for m in model.modules())
    assert not hasattr(model, "jumplora_thresholds")
    torch.testing.assert_close(merged, adapted, rtol=1e-5, atol=1e-5 * float(adapted.abs().max()))
    assert float((merged - outputs(base, inputs)).abs().max()) > 0  # the update did change the model
    if kind == "jumplora":
        assert all(0 < s < 1 for s in update.sparsity().values())

    update.save(tmp_path / "task.safetensors")
    replay = copy.deepcopy(base)
    TaskUpdate.load(tmp_path / "task.safetensors").apply(replay)
    for (key, want), got in zip(model.state_dict().items(), replay.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("mode", ["global", "per_block"])
def test_threshold_init_keeps_exactly_k_entries_per_group(family, mode):
    _, base, _ = family
    adapters = AdapterSet(copy.deepcopy(base), AdapterConfig(threshold_mode=mode))
    randomise_updates(adapters)
    adapters.begin_task(10)
    adapters.set_step(2)  # S_start
    counts, budgets = {}, {}
    for name, layer in adapters.layers.items():
        key = "model" if mode == "global" else block_of(name)
        tau = adapters.thresholds()[key]
        counts[key] = counts.get(key, 0) + int((layer.delta().abs() > tau).sum())
        budgets[key] = budgets.get(key, 0) + layer.lora_A.numel() + layer.lora_B.numel()
    assert counts == budgets
    assert len(counts) == (1 if mode == "global" else len({block_of(n) for n in adapters.layers}))


def test_kept_fractions_at_s_start_s_final_and_the_end_count_the_gate():
    model, _ = tiny_llama()
    adapters = AdapterSet(model, AdapterConfig(threshold_mode="per_block"))
    randomise_updates(adapters)
    adapters.begin_task(10)
    adapters.set_step(2)  # S_start: τ initialised, k of n entries kept per block
    for layer in adapters.layers.values():  # |ΔW| grows after S_start while τ stays: more entries pass
        layer.lora_B.data.mul_(3.0)
    adapters.set_step(8)  # S_final
    trace = adapters.gate_trace
    assert set(trace) == {"s_start", "s_final"}
    for block, kept in trace["s_start"]["kept"].items():
        layers = [layer for name, layer in adapters.layers.items() if block_of(name) == block]
        k = sum(layer.lora_A.numel() + layer.lora_B.numel() for layer in layers)
        n = sum(layer.delta().numel() for layer in layers)
        assert kept == pytest.approx(k / n)
        assert trace["s_final"]["kept"][block] > kept
        tau = adapters.thresholds()[block]
        assert trace["s_start"]["tau"][block] == trace["s_final"]["tau"][block] == tau  # no optimiser step between
        by_hand = sum(int((layer.delta().abs() > tau).sum()) for layer in layers) / n
        assert adapters.kept_fractions()[block] == pytest.approx(by_hand)


def test_blocks_of_each_family():
    assert block_of("encoder.block.3.layer.0.SelfAttention.q") == "encoder.block.3"
    assert block_of("decoder.block.3.layer.1.EncDecAttention.v") == "decoder.block.3"
    assert block_of("model.layers.12.self_attn.q_proj") == "model.layers.12"
    assert block_of("encoder.layer.2.attention.self.query") == "encoder.layer.2"
    assert block_of("transformer.h.1.attn.c_attn") == "transformer.h.1"
    # The index of that block (the report's depth axis), T5's block index and not its sub-layer's.
    assert block_index("decoder.block.3.layer.1.EncDecAttention.v") == 3
    assert block_index("model.layers.12.self_attn.q_proj") == 12
    assert block_index("classifier.dense") is None and block_of("classifier.dense") == "classifier.dense"


def test_default_targets_per_family(family):
    name, base, _ = family
    adapters = AdapterSet(copy.deepcopy(base), AdapterConfig())
    leaves = {n.rsplit(".", 1)[-1] for n in adapters.layers}
    assert leaves == {"t5": {"q", "v"}, "llama": {"q_proj", "v_proj"}, "gpt2": {"c_attn"},
                      "minilm": {"query", "value"}}[name]


def test_training_learns_threshold_and_merges_a_sparse_update():
    model, tokenizer = tiny_llama()
    adapters = AdapterSet(model, AdapterConfig(r=4))
    model.requires_grad_(False)
    params = adapters.parameters()
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    batch = tokenizer(["the cat sat on the mat", "a dog ran in the park"], return_tensors="pt", padding=True)
    steps, log_taus = 20, []
    adapters.begin_task(steps)
    for step in range(steps):
        adapters.set_step(step)
        loss = model(**batch, labels=batch["input_ids"]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        log_taus.append(float(adapters.groups["model"].log_threshold.detach()))
    # τ was reset at S_start = 4 and then learned (it moves only once γ > 0).
    assert log_taus[3] == pytest.approx(-4.7)
    assert len(set(log_taus[5:])) > 1
    update = adapters.merge_and_unload()
    assert all(0.0 < s < 1.0 for s in update.sparsity().values())


def test_bad_targets_list_the_linear_modules():
    model, _ = tiny_gpt2()
    with pytest.raises(JumploraError, match=r"match nothing.*c_attn.*c_proj"):
        AdapterSet(model, AdapterConfig(targets=("query",)))


def test_unknown_family_needs_targets():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(JumploraError, match="no default target modules.*pass targets"):
        AdapterSet(model, AdapterConfig())
    adapters = AdapterSet(model, AdapterConfig(targets=("0",)))
    assert list(adapters.layers) == ["0"]
    with pytest.raises(JumploraError, match="already has adapters"):
        AdapterSet(model, AdapterConfig(targets=("0",)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(r=0), "rank r must be a positive integer"),
        (dict(r=-2), "rank r must be a positive integer"),
        (dict(alpha=0), "alpha must be > 0"),
        (dict(bandwidth=0), "bandwidth"),
        (dict(bandwidth=-1e-3), "bandwidth"),
        (dict(start_fraction=0.8, final_fraction=0.2), "must be smaller than final"),
        (dict(start_fraction=-0.1), r"must lie in \[0, 1\]"),
        (dict(final_fraction=1.2), r"must lie in \[0, 1\]"),
        (dict(threshold_mode="per_layer"), "unknown threshold mode 'per_layer'"),
        (dict(reduction="max"), "unknown reduction 'max'"),
        (dict(kind="dora"), "unknown adapter kind 'dora'"),
        (dict(dropout=1.0), "dropout must be in"),
        (dict(targets=()), "targets is empty"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(JumploraError, match=message):
        AdapterConfig(**kwargs)


def test_update_for_another_model_is_refused(tmp_path):
    model, _ = tiny_gpt2()
    adapters = AdapterSet(model, AdapterConfig())
    randomise_updates(adapters)
    adapters.begin_task(5)
    update = adapters.merge_and_unload()
    other, _ = tiny_llama()
    with pytest.raises(JumploraError, match="does not have"):
        update.apply(other)
    update.deltas = {name: d[:-1] for name, d in update.deltas.items()}
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(JumploraError, match="belongs to another model"):
        update.apply(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(JumploraError, match="not a readable safetensors file"):
        TaskUpdate.load(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("kind", ["lora", "jumplora"])
def test_updates_are_stored_in_their_smallest_exact_form(family, kind, tmp_path):
    name, base, _ = family
    model = copy.deepcopy(base)
    adapters = AdapterSet(model, AdapterConfig(kind=kind))
    randomise_updates(adapters)
    adapters.begin_task(10)
    adapters.set_step(9)
    update = adapters.merge_and_unload()
    update.save(tmp_path / "compact.safetensors")
    TaskUpdate(update.deltas, kind).save(tmp_path / "dense-or-sparse.safetensors")  # without the factors
    from safetensors.torch import load_file, save_file

    save_file({f"{k}.dense": v.contiguous() for k, v in update.deltas.items()}, str(tmp_path / "dense.safetensors"))
    stored = load_file(tmp_path / "compact.safetensors")
    parts = {key.rsplit(".", 1)[1] for key in stored}
    if kind == "lora":
        assert parts == {"lora_A", "lora_B", "scaling", "transposed"}  # r·(d_in + d_out), not d_in·d_out
    else:
        assert "dense" not in parts  # a gated update is a mask (or indices) and its values
    sizes = {f: (tmp_path / f"{f}.safetensors").stat().st_size for f in ("compact", "dense")}
    assert sizes["compact"] < sizes["dense"]
    replay, dense = copy.deepcopy(base), copy.deepcopy(base)
    TaskUpdate.load(tmp_path / "compact.safetensors").apply(replay)
    for key, value in update.deltas.items():
        dense.get_submodule(key).weight.data += value
    for (key, want), got in zip(dense.state_dict().items(), replay.state_dict().values()):
        assert torch.equal(got, want), key


def test_the_same_update_is_the_same_bytes_in_another_process(tmp_path):
    import subprocess
    import sys

    script = ("import sys, torch; from jumplora import TaskUpdate; torch.manual_seed(0); "
              "d = {f'layer{i}.q': torch.randn(6, 6) * (torch.rand(6, 6) > 0.7) for i in range(4)}; "
              "u = TaskUpdate(d, 'jumplora', {'task': 'a', 'method': 'm', 'seed': '0', 'index': '0'}); u.save(sys.argv[1])")
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / f"{name}.safetensors")], check=True)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    assert TaskUpdate.load(tmp_path / "a.safetensors").metadata == {"task": "a", "method": "m", "seed": "0", "index": "0"}
