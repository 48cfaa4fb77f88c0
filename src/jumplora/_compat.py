"""The private APIs of transformers and torch that jumplora depends on, in one place.

How a GGUF-loaded model is unmarked as quantised, which forward arguments keep logits at given
positions and carry the KV cache, the causal-LM table of transformers' auto classes, the
torch.compile backends and errors. When transformers or torch rename these, this is the file to
change. (The public layout facts are in :mod:`jumplora.layout`.)
"""

from __future__ import annotations

from torch import nn


def forget_gguf_quantization(model: nn.Module) -> None:
    """Unmark a model that transformers dequantised from a GGUF file as quantised.

    Its weights are ordinary floating-point tensors once loaded, but transformers keeps the GGUF
    quantizer on the model and in its config, and then refuses ``save_pretrained``. Without the
    marking the merged model saves as plain safetensors that any transformers reads.
    """
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model, "quantization_method"):
        model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def takes_logit_positions(model: nn.Module) -> bool:
    """Whether ``model`` (a causal LM, possibly wrapped by DDP or torch.compile) computes logits
    only at given positions: ``logits_to_keep`` as a (batch, positions) tensor, which transformers
    reads through ``modeling_utils.slice_logits_to_keep`` (5.x)."""
    import inspect

    from transformers import modeling_utils

    inner = getattr(model, "_orig_mod", model)  # torch.compile
    inner = getattr(inner, "module", inner)  # DistributedDataParallel
    return (hasattr(modeling_utils, "slice_logits_to_keep")
            and "logits_to_keep" in inspect.signature(inner.forward).parameters)


def cache_keyword(model: nn.Module) -> str:
    """The name of the KV-cache argument of the model's forward (``past_key_values`` before
    transformers renamed it ``cache``)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(output):
    """The KV cache an output carries, under either name."""
    return getattr(output, "cache", None) or getattr(output, "past_key_values", None)


def compile_backends() -> list[str]:
    """The torch.compile backends, the debugging ones (aot_eager, eager) included."""
    import torch

    return torch.compiler.list_backends(exclude_tags=())


def has_causal_lm_class(model_type: str) -> bool:
    """Whether transformers has a causal-LM class for ``model_type`` (its auto-model table, which
    lives in a private module)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def dynamo_error_types() -> tuple[type, ...]:
    """The exception types torch.compile raises for a model it cannot compile."""
    from torch._dynamo.exc import TorchDynamoException  # no public alias exists

    return (TorchDynamoException,)
