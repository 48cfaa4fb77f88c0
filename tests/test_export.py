"""GGUF export (jumplora.export_gguf) of a model trained on SmolLM2-135M's Q4_1 GGUF file.

One small run (one sport/food task, ~2 min on 2 cores) and one export in the default type are
shared by the slow tests; a model whose base is not a GGUF file is refused (quick, tiny Llama).
"""

from __future__ import annotations

import json

import pytest
import torch
from gguf import GGUFReader
from safetensors.torch import load_file

from jumplora.errors import JumploraError
from jumplora.export_gguf import DEFAULT_GGUF_TYPE, export_gguf, gguf_weights

SPORT = ["The striker scored twice in the final.", "The tennis champion won in straight sets.",
         "The marathon runner broke the course record.", "The team lost the basketball game at home.",
         "The goalkeeper saved a penalty in the last minute.", "The cyclist won the mountain stage.",
         "The boxer knocked out his rival in round three.", "The swimmer took gold in the relay."]
FOOD = ["The soup was made with fresh tomatoes and basil.", "She baked a chocolate cake for dessert.",
        "The bakery sells warm bread every morning.", "He grilled salmon with lemon and garlic.",
        "The pasta was served with a creamy sauce.", "They ate sushi and rice for dinner.",
        "The salad had apples, nuts and cheese.", "The pancakes came with maple syrup."]
# The default type is F16: its rounding moves each rewritten weight by at most 2^-11 of itself, which
# through 30 blocks moves SmolLM2's logits (|logit| up to ~35) by ~0.02 at most (measured 0.017);
# 0.1 leaves room for other prompts and BLAS orders, and is far below what the update itself moves
# them (> 1, checked below), so a lost or misplaced update cannot pass.
LOGIT_ATOL = 0.1


def run_model(root, model: str) -> object:
    """The model folder of a jumplora+inclora run of one sport/food task on ``model``."""
    from jumplora.cli import main

    records = [{"sentence": s, "label": label, "split": "train" if i < 5 else "test"}
               for label, sentences in (("sport", SPORT), ("food", FOOD)) for i, s in enumerate(sentences)]
    (root / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (root / "tasks.json").write_text(json.dumps([{"name": "t", "path": "t.jsonl", "instruction": "Sport or food?"}]))
    code = main(["run", "--model", model, "--task-file", str(root / "tasks.json"), "--method", "jumplora+inclora",
                 "--output", str(root / "run"), "--batch-size", "4", "--max-source-length", "64", "--no-route"])
    assert code == 0
    return root / "run" / "jumplora+inclora" / "seed0" / "model"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model folder, exported file, export_gguf's result) of SmolLM2 exported in the default type."""
    root = tmp_path_factory.mktemp("export")
    folder = run_model(root, "smollm2-135m")
    output = root / "model.gguf"
    return folder, output, export_gguf(folder, output, log=lambda line: None)


@pytest.mark.slow
def test_the_export_answers_as_the_merged_model(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, output, result = exported
    assert result["gguf_type"] == DEFAULT_GGUF_TYPE == "f16" and result["types"] == ["F16"]
    merged = AutoModelForCausalLM.from_pretrained(folder).eval()
    gguf = AutoModelForCausalLM.from_pretrained(output.parent, gguf_file=output.name).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    task = "Sport or food?\nOption: food, sport\nThe cyclist won the mountain stage.\nAnswer:"
    chats = [tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                           tokenize=False) for text in ("What is the capital of France?",
                                                                        "Name a sport played with a ball.")]
    with torch.inference_mode():
        for prompt in [task, *chats]:
            ids = tokenizer(prompt, return_tensors="pt")
            torch.testing.assert_close(gguf(**ids).logits, merged(**ids).logits, rtol=0, atol=LOGIT_ATOL)
            ours = gguf.generate(**ids, max_new_tokens=8, do_sample=False)
            assert torch.equal(ours, merged.generate(**ids, max_new_tokens=8, do_sample=False)), prompt
        ids = tokenizer(task, return_tensors="pt")
        expected = merged(**ids).logits
        for name, weight in load_file(str(folder / "states" / "base.safetensors")).items():
            merged.get_submodule(name).weight.copy_(weight)  # the update taken out again
        assert (merged(**ids).logits - expected).abs().max() > 10 * LOGIT_ATOL


@pytest.mark.slow
def test_untouched_tensors_are_the_source_bytes_and_the_metadata_is_kept(exported):
    from jumplora.manifest import ModelManifest

    folder, output, result = exported
    source, written = GGUFReader(result["source"]), GGUFReader(output)
    adapted = {f"blk.{i}.attn_{m}.weight" for i in range(30) for m in "qv"}
    assert set(result["tensors_rewritten"]) == adapted and result["tensors_copied"] == len(source.tensors) - 60
    assert [t.name for t in written.tensors] == [t.name for t in source.tensors]
    for old, new in zip(source.tensors, written.tensors):
        assert list(new.shape) == list(old.shape)
        if old.name in adapted:
            assert new.tensor_type.name == "F16"
        else:
            assert new.tensor_type == old.tensor_type and new.data.tobytes() == old.data.tobytes(), old.name
    for key, field in source.fields.items():
        if key != "GGUF.kv_count":
            assert written.fields[key].types == field.types and written.fields[key].contents() == field.contents(), key
    manifest = ModelManifest.read_file(folder / "jumplora-model.json")
    tasks = json.loads(written.fields["jumplora.tasks"].contents())
    assert [(t["name"], t["instruction"], t["labels"]) for t in tasks] == [("t", "Sport or food?", ["food", "sport"])]
    ledger = json.loads(written.fields["jumplora.ledger"].contents())
    assert [(e["task"], e["file"], e["sha256"]) for e in ledger] == [(e.task, e.file, e.sha256)
                                                                     for e in manifest.ledger]
    assert written.fields["jumplora.prompt"].contents() == manifest.prompt
    assert written.fields["jumplora.generation"].contents() == 1
    assert written.fields["jumplora.base_model"].contents() == "smollm2-135m"
    assert result["bytes"] == output.stat().st_size


@pytest.mark.slow
def test_an_existing_output_is_refused_and_a_failed_write_leaves_it_whole(exported, tmp_path, monkeypatch):
    import jumplora.export_gguf as export

    folder, output, result = exported
    target = tmp_path / "out.gguf"
    target.write_bytes(b"keep me")
    with pytest.raises(JumploraError, match="already exists: pass another output, or overwrite") as error:
        export_gguf(folder, target)
    assert "\n" not in str(error.value)

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "_check_written", full_disk)
    with pytest.raises(JumploraError, match="could not write .*No space left on device"):
        export_gguf(folder, target, overwrite=True, log=lambda line: None)
    assert target.read_bytes() == b"keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf"]
    monkeypatch.undo()
    # F32 holds the merged weights exactly: the q rows are put back in llama.cpp's order and read out of it.
    export_gguf(folder, target, "f32", overwrite=True, log=lambda line: None)
    merged = load_file(str(folder / "model.safetensors"))
    names = [f"model.layers.{i}.self_attn.{m}_proj.weight" for i in (0, 29) for m in "qv"]
    for name, weight in gguf_weights(target, names).items():
        assert torch.equal(weight, merged[name]), name


def test_a_model_not_trained_from_a_gguf_file_is_refused(tmp_path):
    from _models import save, tiny_llama

    with pytest.raises(JumploraError, match="GGUF type 'q4_k' is not one of source, q8_0, f16, f32"):
        export_gguf(tmp_path, tmp_path / "x.gguf", "q4_k")
    base = save(*tiny_llama(), tmp_path / "tiny")
    folder = run_model(tmp_path, str(base))
    with pytest.raises(JumploraError, match="not from a GGUF file: GGUF export needs a model whose base is a .gguf "
                                            "file .* convert_hf_to_gguf.py") as error:
        export_gguf(folder, tmp_path / "x.gguf")
    assert "\n" not in str(error.value) and not (tmp_path / "x.gguf").exists()
