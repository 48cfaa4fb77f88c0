"""Which family a checkpoint belongs to, and loading it with its tokenizer (from any
:mod:`~jumplora.families.sources` source: a bundled name, a GGUF file, a folder, a hub id)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from jumplora.adapters import _compat
from jumplora.errors import JumploraError
from jumplora.families.base import Family
from jumplora.families.causal import CausalFamily
from jumplora.families.encoder import EncoderFamily
from jumplora.families.seq2seq import Seq2SeqFamily
from jumplora.families.sources import ModelSource, resolve_model

FAMILIES: dict[str, type[Family]] = {family.name: family for family in (Seq2SeqFamily, CausalFamily, EncoderFamily)}
AUTO_CLASSES = {"seq2seq": AutoModelForSeq2SeqLM, "causal": AutoModelForCausalLM, "encoder": AutoModel}

def detect_family(config: Any) -> str:
    """``seq2seq`` for encoder-decoders, ``encoder`` for bidirectional encoders and models with
    no language-model head, ``causal`` otherwise."""
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    model_type = getattr(config, "model_type", "")
    if model_type in _compat.ENCODER_MODEL_TYPES:
        return "encoder"
    architectures = getattr(config, "architectures", None) or []
    if any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures):
        return "causal"
    return "causal" if _compat.has_causal_lm_class(model_type) else "encoder"


def load_model(
    model: str | ModelSource | None,
    family: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    **options: Any,
) -> tuple[torch.nn.Module, Any, Family]:
    """Load a model (see :func:`~jumplora.families.sources.resolve_model`), its tokenizer and its
    :class:`Family`.

    ``family`` overrides :func:`detect_family`; ``options`` go to the family (``mode`` for causal,
    ``temperature`` for encoder, ``max_source_length`` for all). Weights load in ``dtype``
    (fp32 by default; a GGUF file is dequantised to it) and are moved to ``device``.
    """
    source = model if isinstance(model, ModelSource) else resolve_model(model)
    if family is not None and family not in FAMILIES:
        raise JumploraError(f"unknown model family {family!r}: use one of {', '.join(FAMILIES)}")
    config = load_config(source, trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, trust_remote_code=trust_remote_code, **source.kwargs())
    except (OSError, ValueError) as error:
        raise JumploraError(load_error(source, error)) from error
    family = family or detect_family(config)
    # Built before the weights load, so a bad option fails fast.
    handler = FAMILIES[family](tokenizer, **options)
    _refuse_pickle_only(source)
    loaded = AUTO_CLASSES[family].from_pretrained(
        source.path, config=config, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=None if source.gguf_file else True,
        **source.kwargs()
    )
    if source.gguf_file:
        _compat.forget_gguf_quantization(loaded)
    return loaded.to(device), tokenizer, handler


def load_config(source: ModelSource, trust_remote_code: bool = False) -> Any:
    """The transformers config of ``source``; one that cannot be read is a JumploraError."""
    try:
        return AutoConfig.from_pretrained(source.path, trust_remote_code=trust_remote_code, **source.kwargs())
    except (OSError, ValueError) as error:
        raise JumploraError(load_error(source, error)) from error


def load_error(source: ModelSource, error: Exception) -> str:
    """One line on why transformers could not read ``source`` and what to pass instead."""
    name_or_path = source.label
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if source.gguf_file:
        return f"cannot read the GGUF file {name_or_path!r} ({reason}): pass a GGUF model transformers can read"
    if os.path.isdir(name_or_path):
        return (
            f"cannot load model {name_or_path!r}: the folder is not a transformers model ({reason}); "
            "pass a folder with config.json, weights and tokenizer files"
        )
    return (
        f"cannot load model {name_or_path!r}: no such local folder and it is not a model id on the hub "
        "you can reach; pass --model PATH"
    )


def load_for_run(config, device: torch.device) -> tuple[torch.nn.Module, Any, Family]:
    """The model, tokenizer and family of a run's settings (``config``, a RunConfig), on ``device``:
    bf16 weights for ``precision bf16-base``, fp32 otherwise; the options of the model's family."""
    source = resolve_model(config.model)
    options = config.family_options
    name = options.family or detect_family(load_config(source, config.trust_remote_code))
    dtype = torch.bfloat16 if config.precision == "bf16-base" else torch.float32
    model, tokenizer, family = load_model(source, family=name, dtype=dtype, trust_remote_code=config.trust_remote_code,
                                          **options.for_family(name))
    return model.to(device), tokenizer, family


def check_for_run(config, tasks: list) -> None:
    """What loading and adapting the model of a run would refuse, found before anything is written:
    a model that cannot be read, options its family refuses (a prompt length too short for its
    tokenizer), target modules that match nothing and a rank r larger than a layer allows. The
    weights are not loaded: the model is built on the meta device."""
    from jumplora.adapters import AdapterSet

    source = resolve_model(config.model)
    model_config = load_config(source, config.trust_remote_code)
    name = config.family_options.family or detect_family(model_config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, trust_remote_code=config.trust_remote_code,
                                                  **source.kwargs())
    except (OSError, ValueError) as error:
        raise JumploraError(load_error(source, error)) from error
    family = FAMILIES[name](tokenizer, **config.family_options.for_family(name))
    for task in tasks:  # a prompt must fit (a causal model's: next to the longest label)
        family.prompt_ids(task, (task.train or task.test)[:1])
    _refuse_pickle_only(source)
    with torch.device("meta"):
        model = AUTO_CLASSES[name].from_config(model_config, trust_remote_code=config.trust_remote_code)
    adapters = AdapterSet(model, config.adapter_config("lora"))
    for layer_name, layer in adapters.layers.items():
        d_in, d_out = _compat.in_out_features(layer.base_layer)
        if config.adapter.r > min(d_in, d_out):
            raise JumploraError(f"rank r = {config.adapter.r} is larger than {layer_name} allows ({d_out}×{d_in}: "
                                f"at most {min(d_in, d_out)}): lower --r")


def _refuse_pickle_only(source: ModelSource) -> None:
    """A local model folder whose weights are only pickle files (pytorch_model.bin): loading one runs
    arbitrary code, so it is refused with how to convert it."""
    folder = Path(source.path)
    if source.gguf_file or not folder.is_dir():
        return
    if not any(folder.glob("*.safetensors")) and any(folder.glob("*.bin")):
        raise JumploraError(
            f"{folder} holds its weights only as pickle files (*.bin), which jumplora does not load (they can run "
            "code): convert them once with `python -c \"from transformers import AutoModel; "
            f"AutoModel.from_pretrained('{folder}').save_pretrained('{folder}-safe')\"` and pass the new folder")
