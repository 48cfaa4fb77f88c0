"""How transformers lays out its models: which modules are the attention projections, which are linear maps.

Which modules are the attention query/value projections of each family (the paper's targets), which
module classes are linear maps (GPT-2's ``Conv1D`` stores its weight transposed), how a module name
tells its transformer block, which model types are encoders. Plain tables and functions of public
classes; the private APIs jumplora depends on are in :mod:`jumplora._compat`.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

# The paper adapts the query and value projections (q/v) of every attention layer.
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "t5": ("q", "v"),
    "mt5": ("q", "v"),
    "umt5": ("q", "v"),
    "bart": ("q_proj", "v_proj"),
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "qwen3": ("q_proj", "v_proj"),
    "gemma": ("q_proj", "v_proj"),
    "phi3": ("qkv_proj",),
    "bert": ("query", "value"),
    "roberta": ("query", "value"),
    "xlm-roberta": ("query", "value"),
    "distilbert": ("q_lin", "v_lin"),
    "gpt2": ("c_attn",),
}

# Bidirectional encoders. Several (bert, roberta, ...) also have a causal-LM class in transformers,
# so they are recognised by name before the causal-LM table is asked.
ENCODER_MODEL_TYPES = frozenset(
    {"bert", "roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2", "xlm-roberta",
     "xlm-roberta-xl", "camembert", "mpnet", "modernbert", "ernie", "nomic_bert", "mobilebert"}
)

# The attention projection a module name ends in, in each family's naming: q, k or v.
PROJECTIONS = {"q": "q", "q_proj": "q", "query": "q", "k": "k", "k_proj": "k", "key": "k",
               "v": "v", "v_proj": "v", "value": "v"}

# `encoder.block.3.layer.0.SelfAttention.q` -> `encoder.block.3`; `model.layers.5.self_attn.q_proj`
# -> `model.layers.5`; `encoder.layer.2.attention.self.query` -> `encoder.layer.2`; `transformer.h.1...`
# The first match: T5's block, not the sub-layer inside it. Group 2 is the block index.
_BLOCK = re.compile(r"^(.*?(?:^|\.)(?:block|blocks|layers|layer|h)\.(\d+))(?:\.|$)")


def default_targets(model: nn.Module) -> tuple[str, ...] | None:
    """The q/v projection names for the model's family, or None when the family is unknown."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return DEFAULT_TARGETS.get(model_type)


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight as (d_out, d_in), the layout of nn.Linear; a view for Conv1D (stored (d_in, d_out))."""
    return module.weight.t() if isinstance(module, Conv1D) else module.weight


def unwrap(module: nn.Module) -> nn.Module:
    """The original module under an adapter (the module itself when it carries none)."""
    return getattr(module, "base_layer", module)


def convert_layout(module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """Between the (d_out, d_in) layout and the module's weight layout (a transpose for Conv1D; its own inverse)."""
    return tensor.t() if isinstance(module, Conv1D) else tensor


def is_transposed(module: nn.Module) -> bool:
    """Whether the module stores its weight as (d_in, d_out) (GPT-2's Conv1D)."""
    return isinstance(module, Conv1D)


def in_out_features(module: nn.Module) -> tuple[int, int]:
    d_out, d_in = linear_weight(module).shape
    return d_in, d_out


def block_of(module_name: str) -> str:
    """The transformer block a module belongs to (the module's own name when it is in none)."""
    match = _BLOCK.match(module_name)
    return match.group(1) if match else module_name


def block_index(module_name: str) -> int | None:
    """The index of that block (0 = nearest the input), or None for a module in no block."""
    match = _BLOCK.match(module_name)
    return int(match.group(2)) if match else None
