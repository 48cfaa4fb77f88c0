"""Which family a checkpoint belongs to, and loading it with its tokenizer (from any
:mod:`~jumplora.families.sources` source: a bundled name, a GGUF file, a folder, a hub id)."""

from __future__ import annotations

import copy
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from jumplora import _compat, layout
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
    if model_type in layout.ENCODER_MODEL_TYPES:
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
    settings: Mapping[str, Any] | None = None,
    **options: Any,
) -> tuple[torch.nn.Module, Any, Family]:
    """Load a model (see :func:`~jumplora.families.sources.resolve_model`), its tokenizer and its
    :class:`Family`.

    ``family`` overrides :func:`detect_family`; the family's options are ``settings`` (run settings
    by their flat keys, see ``Family.SETTINGS``) or ``options`` (its constructor keywords: ``mode``
    for causal, ``temperature`` for encoder, ``max_source_length`` for all). Weights load in
    ``dtype`` (fp32 by default; a GGUF file is dequantised to it) and are moved to ``device``.
    """
    source = model if isinstance(model, ModelSource) else resolve_model(model)
    config, tokenizer, handler = open_model(source, family, trust_remote_code, settings, options)
    try:
        loaded = AUTO_CLASSES[handler.name].from_pretrained(
            source.path, config=config, dtype=dtype, trust_remote_code=trust_remote_code,
            use_safetensors=None if source.gguf_file else True, **source.kwargs())
    except (OSError, ValueError, SafetensorError, struct.error, EOFError) as error:
        raise JumploraError(load_error(source, error)) from None
    if source.gguf_file:
        _compat.forget_gguf_quantization(loaded)
    return loaded.to(device), tokenizer, handler


def open_model(source: ModelSource, family: str | None, trust_remote_code: bool,
               settings: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None):
    """What loading a model needs before its weights: (config, tokenizer, Family). The family's
    options are checked here, and a folder of pickle-only weights is refused."""
    if family is not None and family not in FAMILIES:
        raise JumploraError(f"unknown model family {family!r}: use one of {', '.join(FAMILIES)}")
    config = load_config(source, trust_remote_code)
    tokenizer = load_tokenizer(source, trust_remote_code)
    kind = FAMILIES[family or detect_family(config)]
    handler = kind(tokenizer, **({**kind.keywords(settings), **(options or {})} if settings else dict(options or {})))
    _refuse_pickle_only(source)
    return config, tokenizer, handler


def load_config(source: ModelSource, trust_remote_code: bool = False) -> Any:
    """The transformers config of ``source``; one that cannot be read is a JumploraError."""
    return _read(AutoConfig, source, trust_remote_code)


def load_tokenizer(source: ModelSource, trust_remote_code: bool = False) -> Any:
    """The tokenizer of ``source``; one that cannot be read is a JumploraError."""
    return _read(AutoTokenizer, source, trust_remote_code)


# A GGUF file's config and tokenizer are rebuilt from the whole file each time (seconds for
# SmolLM2's), and a run reads them twice (the check before it, the load): read once per process,
# keyed by the file's path, size and modification time; each caller gets its own copy.
_GGUF_READ: dict[tuple, Any] = {}


def _read(auto_class, source: ModelSource, trust_remote_code: bool) -> Any:
    key = None
    if source.gguf_file:
        stat = (Path(source.path) / source.gguf_file).stat()
        key = (auto_class.__name__, source.path, source.gguf_file, stat.st_size, stat.st_mtime_ns)
        if key in _GGUF_READ:
            return copy.deepcopy(_GGUF_READ[key])
    try:
        value = auto_class.from_pretrained(source.path, trust_remote_code=trust_remote_code, **source.kwargs())
    except (OSError, ValueError, KeyError, struct.error, EOFError) as error:
        raise JumploraError(load_error(source, error)) from None
    if key is not None:
        _GGUF_READ[key] = copy.deepcopy(value)
    return value


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
    dtype = torch.bfloat16 if config.precision == "bf16-base" else torch.float32
    return load_model(resolve_model(config.model), family=config.family_options.family, dtype=dtype, device=device,
                      trust_remote_code=config.trust_remote_code, settings=config.family_options.as_settings())


def check_for_run(config, tasks: list) -> None:
    """What loading and adapting the model of a run would refuse, found before anything is written:
    a model that cannot be read, options its family refuses (a prompt length too short for its
    tokenizer), target modules that match nothing and a rank r larger than a layer allows. The
    model is built on the meta device; its weight files are checked by their headers and sizes."""
    from jumplora.adapters import AdapterSet

    source = resolve_model(config.model)
    model_config, _, family = open_model(source, config.family_options.family, config.trust_remote_code,
                                         config.family_options.as_settings())
    for task in tasks:  # a prompt must fit (a causal model's: next to the longest label)
        family.prompt_ids(task, (task.train or task.test)[:1])
    check_weight_files(source)
    with torch.device("meta"):
        model = AUTO_CLASSES[family.name].from_config(model_config, trust_remote_code=config.trust_remote_code)
    adapters = AdapterSet(model, config.adapter_config("lora"))
    for layer_name, layer in adapters.layers.items():
        d_in, d_out = layout.in_out_features(layer.base_layer)
        if config.adapter.r > min(d_in, d_out):
            raise JumploraError(f"rank r = {config.adapter.r} is larger than {layer_name} allows ({d_out}×{d_in}: "
                                f"at most {min(d_in, d_out)}): lower --r")


def check_weight_files(source: ModelSource) -> None:
    """Read the header of every weight file of a local model and check that the file holds all the
    bytes its header promises (a truncated or empty file is found before a run starts)."""
    if source.gguf_file:
        from jumplora.families.gguf_check import check_gguf

        check_gguf(Path(source.path) / source.gguf_file)
        return
    folder = Path(source.path)
    if not folder.is_dir():
        return  # a hub id: transformers checks what it downloads
    for path in sorted(folder.glob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem:
            raise JumploraError(f"the weights file {path} is damaged ({problem}): restore the model folder")


def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file cannot be read whole (its header, its size), or None."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return f"{size} bytes, shorter than a header"
            length = int.from_bytes(head, "little")
            if length > size - 8:
                return "its header runs past the end of the file"
            header = json.loads(handle.read(length))
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
        if 8 + length + max(ends, default=0) > size:
            return f"{size} bytes, shorter than its header says ({8 + length + max(ends)})"
    except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    return None


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
