"""Write ``tests/assets/legacy-run/``: a small finished run made by the code of 2026-12-07 (commit ef2a088),
before the run and model folders got their owners (issue 22). ``tests/test_legacy.py`` extends it by one
task with today's code and checks the result against a run made from scratch today.

Run from the repository root: ``python tests/assets/make_legacy_run.py``. Its model is a Llama of
hidden size 16 (1 layer) on the tiny tokenizer, small enough to commit; the paths in its
config.yaml are relative to the asset folder (the test runs from a copy of it).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _models import tiny_tokenizer  # noqa: E402
from _streams import write_tasks  # noqa: E402
from jumplora.cli import main  # noqa: E402


def micro_llama():
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    return LlamaForCausalLM(config), tokenizer


if __name__ == "__main__":
    root = HERE / "legacy-run"
    shutil.rmtree(root, ignore_errors=True)
    (root / "data").mkdir(parents=True)
    model, tokenizer = micro_llama()
    model.save_pretrained(root / "base-model")  # the tokenizer is copied in by the test (tiny-tokenizer)
    write_tasks(root / "data", ("first", "second"), repeats=6, task_file="two.json")
    write_tasks(root / "data", ("third",), repeats=6, task_file="more.json")
    shutil.copytree(HERE / "tiny-tokenizer", root / "base-model", dirs_exist_ok=True)
    os.chdir(root)
    code = main(["run", "--model", "base-model", "--task-file", "data/two.json", "--method", "jumplora+inclora",
                 "--method", "ella", "--output", "run", "--batch-size", "2", "--learning-rate", "3e-2", "--r", "2",
                 "--max-source-length", "64"])
    for name in os.listdir(root / "base-model"):  # keep only the weights and config: the tokenizer is the test's
        if name not in ("config.json", "model.safetensors"):
            os.remove(root / "base-model" / name)
    for model_folder in (root / "run").glob("*/seed0/model"):
        for name in os.listdir(model_folder):
            if name.startswith("tokenizer") or name == "special_tokens_map.json":
                os.remove(model_folder / name)
    sys.exit(code)
