"""Export a model folder whose base is a GGUF file as one GGUF file that llama.cpp and Ollama run.

The exported file is the base GGUF file with the tensors the tasks changed rewritten, nothing else:

* every tensor no task changed is the source file's own bytes (same quantisation type, copied raw),
  so the export of a Q4_1 model is a Q4_1 model, about the size of its source;
* every changed tensor (JumpLoRA's merged q_proj / v_proj of each block; every weight for methods
  that train them all) holds the weights of the folder's ``model.safetensors``, put back in
  llama.cpp's layout (its converter permutes the rows of ``attn_q`` / ``attn_k`` per head for its
  rotary embedding; transformers un-permutes them on load, so the export permutes them again) and
  stored as ``gguf_type``; a 1-D tensor (a norm) is always written F32, as llama.cpp's converter does;
* the metadata is every key of the source, with its type and value, plus ``jumplora.*``: the tasks
  (names, instructions, labels, accuracies), the ledger of updates, the prompt template and format,
  the generation, the base model and the type the changed tensors were written in.

Which tensors changed is measured, not assumed: each weight of ``model.safetensors`` is compared
with the source tensor as transformers dequantises it; equal ones are copied raw. When the folder
holds the adapted layers' state 0 (``states/base.safetensors``), it must equal the source's tensors:
a model is never exported onto another base file than the one it was trained from.

The default ``gguf_type`` is ``f16``, chosen by benchmarks/gguf_precision.py: the relative error
of the update that survives, ‖(W_exported − W_source) − β·ΔW‖_F / ‖β·ΔW‖_F over the 60 adapted
tensors (mean / max), and the accuracy on the 8 kept test examples, for SmolLM2-135M's Q4_1 file
and one sport/food task of jumplora+inclora trained 4 steps (‖β·ΔW‖ = 0.4% of ‖W‖; the merged
model: 75%, the source file without the update: 0%) and 40 steps (``--epochs 10``: 1.2%; 100%, 0%):

    type           4 steps                 40 steps                file (source: 98.4 MB)
    source (Q4_1)  1.23 / 1.25, 0%         1.22 / 1.25, 87.5%      98.4 MB
    q8_0           1.34 / 2.03, 75%        0.50 / 0.97, 100%       104.2 MB
    f16            0.047 / 0.066, 75%      0.017 / 0.034, 100%     116.6 MB
    f32            0 / 0, 75%              0 / 0, 100%             143.2 MB

Requantised to Q4_1, the source's own type, the update is gone (error > 1: a block's 4-bit grid is
far coarser than the update, and requantising moves every weight of the tensor) and the task with
it. Q8_0's rounding noise, spread over every weight of the tensor, is as large as a small sparse
update (error 0.5 to 2), although its answers still matched the merged model's on these few
examples. F16 keeps the update within a few percent for +18% file size; F32 exactly, for +46%.
Real llama.cpp (b10605, built from source) loads the f16 and q8_0 exports of a 30-step model of the
same kind and answers its six test prompts right; the source file answers none of them with a label.

    from jumplora.export_gguf import export_gguf
    export_gguf("runs/x/jumplora+inclora/seed0/model", "model.gguf")   # then: llama-cli -m model.gguf
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from jumplora.errors import JumploraError
from jumplora.files import check_outside, umask_mode
from jumplora.manifest import ModelManifest
from jumplora.model_folder import ModelFolder

GGUF_TYPES = ("source", "q8_0", "f16", "f32")
DEFAULT_GGUF_TYPE = "f16"
HINT = ("use the model folder with transformers (AutoModelForCausalLM.from_pretrained), or convert it with "
        "llama.cpp's convert_hf_to_gguf.py")
_ARCHITECTURES = ("llama",)  # transformers' GGUF loader changes nothing but the q/k row order of these


def export_gguf(model_dir: Path | str, output: Path | str, gguf_type: str = DEFAULT_GGUF_TYPE,
                overwrite: bool = False, log: Callable[[str], None] = print) -> dict:
    """Write the model folder ``model_dir`` as the GGUF file ``output`` (see the module docstring).

    ``gguf_type``: how the changed tensors are stored: ``source`` (the source tensor's own type,
    e.g. Q4_1), ``q8_0``, ``f16`` or ``f32``. The file is written beside ``output`` and renamed into
    place once read back whole: a crash never leaves half a file; an existing ``output`` is refused
    unless ``overwrite``. Returns what was done: the source, the type, the tensors copied and
    rewritten, the size in bytes.
    """
    started = time.perf_counter()
    if gguf_type not in GGUF_TYPES:
        raise JumploraError(f"GGUF type {gguf_type!r} is not one of {', '.join(GGUF_TYPES)}: pass one of them")
    folder = ModelFolder(Path(model_dir))
    manifest = folder.verify()
    source = base_gguf(manifest, folder.path)
    output = Path(output)
    _check_output(output, source, overwrite)
    check_outside(output, folder.path, "--gguf")
    reader = open_gguf(source)
    layout = Layout(reader)
    changed = changed_weights(folder, reader, layout)
    log(f"{source.name}: {len(changed)} of {len(reader.tensors)} tensors changed by the tasks; writing them as "
        f"{gguf_type}, copying the others")
    by_name = {t.name: t for t in reader.tensors}
    encoded = {}
    for name, weight in changed.items():
        qtype = _target_type(by_name[name], weight, gguf_type)
        encoded[name] = (qtype, _encode(layout.to_gguf(name, weight), qtype, name))
    metadata = jumplora_metadata(manifest, gguf_type)
    size = write_gguf(reader, encoded, metadata, output, overwrite)
    types = sorted({qtype.name for qtype, _ in encoded.values()})
    log(f"wrote {output} ({size / 1e6:.1f} MB; {len(encoded)} tensors rewritten as {', '.join(types) or '-'})")
    return {"output": str(output), "source": str(source), "gguf_type": gguf_type, "types": types,
            "tensors_copied": len(reader.tensors) - len(encoded), "tensors_rewritten": sorted(encoded),
            "bytes": size, "seconds": round(time.perf_counter() - started, 2)}


def base_gguf(manifest: ModelManifest, folder: Path) -> Path:
    """The GGUF file the model was trained from; a model from anything else is a one-line error."""
    from jumplora.families.sources import resolve_model

    base = manifest.base_model
    if base.lower().endswith(".gguf") and not Path(base).expanduser().is_file():
        raise JumploraError(f"the base GGUF file of {folder}, {base}, is not found: put it back where the model was "
                            "trained from it, then export again")
    source = resolve_model(base)
    if not source.gguf_file:
        raise JumploraError(f"{folder} was trained from {base}, not from a GGUF file: GGUF export needs a model whose "
                            f"base is a .gguf file (e.g. --model smollm2-135m); {HINT}")
    return Path(source.path) / source.gguf_file


def open_gguf(path: Path):
    """The gguf package's reader of a checked GGUF file of a supported architecture."""
    from gguf import GGUFReader

    from jumplora.families.gguf_check import check_gguf

    check_gguf(path)
    reader = GGUFReader(str(path))
    architecture = _field(reader, "general.architecture")
    if architecture not in _ARCHITECTURES:
        raise JumploraError(f"{path} is a {architecture} model: GGUF export supports {', '.join(_ARCHITECTURES)} "
                            f"models (SmolLM2, Llama, Mistral); {HINT}")
    if reader.byte_order != "I":
        raise JumploraError(f"{path} is a big-endian GGUF file: export from a little-endian one")
    return reader


class Layout:
    """Where and how a transformers weight sits in a GGUF file of the Llama architecture.

    llama.cpp's converter stores ``attn_q`` / ``attn_k`` with the rows of each head reordered
    (pairs of rotary halves interleaved): ``W.reshape(h, 2, d/2, n).swapaxes(1, 2)``, with h the
    query heads for q and the key/value heads for k; transformers applies the inverse on load.
    """

    def __init__(self, reader) -> None:
        import gguf

        architecture = _field(reader, "general.architecture")
        blocks = int(_field(reader, f"{architecture}.block_count"))
        self.heads = int(_field(reader, f"{architecture}.attention.head_count"))
        self.kv_heads = int(_field(reader, f"{architecture}.attention.head_count_kv") or self.heads)
        arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == architecture)
        self.names = gguf.get_tensor_name_map(arch, blocks)

    def gguf_name(self, hf_name: str) -> str | None:
        """``model.layers.3.self_attn.q_proj.weight`` -> ``blk.3.attn_q.weight`` (None: not a GGUF tensor)."""
        return self.names.get_name(hf_name, try_suffixes=(".weight", ".bias"))

    def _heads(self, gguf_name: str) -> int | None:
        if ".attn_q." in gguf_name:
            return self.heads
        if ".attn_k." in gguf_name:
            return self.kv_heads
        return None

    def to_gguf(self, gguf_name: str, weight: torch.Tensor) -> np.ndarray:
        """A transformers weight in the GGUF tensor's row order (float32, rows x columns)."""
        array = weight.detach().to(torch.float32).cpu().numpy()
        heads = self._heads(gguf_name)
        if heads is None:
            return array
        rows, rest = array.shape[0], array.shape[1:]
        return array.reshape(heads, 2, rows // heads // 2, *rest).swapaxes(1, 2).reshape(array.shape)

    def from_gguf(self, gguf_name: str, array: np.ndarray) -> torch.Tensor:
        """A dequantised GGUF tensor as transformers loads it (the inverse of :meth:`to_gguf`)."""
        heads = self._heads(gguf_name)
        if heads is not None:
            rows, rest = array.shape[0], array.shape[1:]
            array = array.reshape(heads, rows // heads // 2, 2, *rest).swapaxes(1, 2).reshape(array.shape)
        return torch.from_numpy(np.require(array, np.float32, ["C", "W"]))  # a copy of a read-only memmap


def dequantized(reader, layout: Layout, gguf_name: str) -> torch.Tensor:
    """The GGUF tensor ``gguf_name`` as transformers loads it: dequantised to float32, in its row order."""
    from gguf import dequantize

    tensor = next(t for t in reader.tensors if t.name == gguf_name)
    return layout.from_gguf(gguf_name, dequantize(tensor.data, tensor.tensor_type))


def gguf_weights(path: Path | str, hf_names: Iterable[str]) -> dict[str, torch.Tensor]:
    """The weights ``hf_names`` (transformers names, e.g. ``model.layers.0.self_attn.q_proj.weight``)
    of a GGUF file, as transformers' GGUF loader dequantises them."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    layout = Layout(reader)
    return {name: dequantized(reader, layout, layout.gguf_name(name)) for name in hf_names}


def changed_weights(folder: ModelFolder, reader, layout: Layout) -> dict[str, torch.Tensor]:
    """{GGUF tensor name: the folder's weight} for every weight of ``model.safetensors`` that differs
    from the source's, after checking that the folder's state 0 (its adapted layers before any
    task) is the source's: a model is not exported onto another base file."""
    from safetensors import safe_open

    present = {t.name for t in reader.tensors}
    base_state = _read_tensors(folder.base_state) if folder.base_state.is_file() else {}
    differ = [name for name, weight in base_state.items()
              if not _equal(weight, _source(reader, layout, f"{name}.weight", present))]
    if differ:
        raise JumploraError(f"the base weights of {folder.path} differ from its base GGUF file ({len(differ)} of "
                            f"{len(base_state)} adapted layers, e.g. {differ[0]}): export needs the GGUF file the "
                            "model was trained from")
    changed = {}
    for path in folder.weight_files():
        with safe_open(str(path), framework="pt") as handle:
            for hf_name in handle.keys():
                gguf_name = layout.gguf_name(hf_name)
                if gguf_name is None or gguf_name not in present:
                    if hf_name == "lm_head.weight":  # tied to the embeddings: token_embd is compared instead
                        continue
                    raise JumploraError(f"{path} holds {hf_name}, which its base GGUF file has no tensor for: "
                                        f"export needs the GGUF file the model was trained from; {HINT}")
                weight, source = handle.get_tensor(hf_name), dequantized(reader, layout, gguf_name)
                if weight.shape != source.shape:
                    raise JumploraError(f"{hf_name} is {tuple(weight.shape)} in {path}, {tuple(source.shape)} in its "
                                        "base GGUF file: export needs the GGUF file the model was trained from")
                if not _equal(weight, source):
                    changed[gguf_name] = weight
    return changed


def _source(reader, layout: Layout, hf_name: str, present: set[str]) -> torch.Tensor | None:
    gguf_name = layout.gguf_name(hf_name)
    return dequantized(reader, layout, gguf_name) if gguf_name in present else None


def _equal(weight: torch.Tensor, source: torch.Tensor | None) -> bool:
    return source is not None and weight.shape == source.shape and torch.equal(weight.to(torch.float32), source)


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _target_type(tensor, weight: torch.Tensor, gguf_type: str):
    """The GGML type a changed tensor is written in: 1-D tensors F32 (llama.cpp's norms), else ``gguf_type``."""
    from gguf import GGMLQuantizationType as types

    if weight.dim() < 2 or gguf_type == "f32":
        return types.F32
    if gguf_type == "source":
        return tensor.tensor_type
    return {"q8_0": types.Q8_0, "f16": types.F16}[gguf_type]


def _encode(array: np.ndarray, qtype, name: str) -> bytes:
    from gguf import quantize

    try:
        return np.ascontiguousarray(quantize(array, qtype)).tobytes()
    except (NotImplementedError, ValueError) as error:
        raise JumploraError(f"cannot write {name} as {qtype.name} ({str(error).splitlines()[0]}): pass "
                            "gguf_type q8_0 or f16 (--gguf-type)") from None


def jumplora_metadata(manifest: ModelManifest, gguf_type: str) -> dict[str, str | int]:
    """The ``jumplora.*`` keys of an exported file: what the model learned and how to ask it."""
    tasks = [{"name": t.name, "instruction": t.instruction, "labels": list(t.labels),
              "accuracy_learned": t.accuracy_learned, "accuracy_last": t.accuracy_last} for t in manifest.tasks]
    ledger = [{"task": e.task, "method": e.method, "file": e.file, "sha256": e.sha256, "sign": e.sign}
              for e in manifest.ledger]
    return {"jumplora.tasks": json.dumps(tasks, ensure_ascii=False),
            "jumplora.ledger": json.dumps(ledger, ensure_ascii=False),
            "jumplora.prompt": manifest.prompt, "jumplora.prompt_format": manifest.prompt_format,
            "jumplora.generation": int(manifest.generation), "jumplora.base_model": manifest.base_model,
            "jumplora.gguf_type": gguf_type, "jumplora.manifest_sha256": manifest.digest()}


def write_gguf(reader, encoded: dict[str, tuple], metadata: dict[str, str | int], output: Path,
               overwrite: bool) -> int:
    """Write ``reader``'s file with the tensors of ``encoded`` ({name: (GGML type, bytes)}) replaced
    and ``metadata`` added; atomically (a temporary file beside, read back, then renamed).
    Returns the size in bytes."""
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    tmp = Path(name)
    try:
        with os.fdopen(handle, "wb") as out:
            _write(out, reader, encoded, metadata)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, umask_mode())
        _check_written(tmp, reader, encoded, metadata)
        size = tmp.stat().st_size
        _publish(tmp, output, overwrite)
        return size
    except OSError as error:
        raise JumploraError(f"could not write {output} ({error.strerror or error}): free some space or pass another "
                            "output, then export again") from None
    finally:
        tmp.unlink(missing_ok=True)


def _write(out, reader, encoded: dict[str, tuple], metadata: dict[str, str | int]) -> None:
    """The GGUF v3 layout: header, metadata, tensor infos, then each tensor's data at an aligned offset."""
    from gguf import GGUF_MAGIC, GGUF_VERSION, GGUFValueType

    kept = [f for name, f in reader.fields.items() if not name.startswith("GGUF.") and name not in metadata]
    out.write(struct.pack("<IIQQ", GGUF_MAGIC, GGUF_VERSION, len(reader.tensors), len(kept) + len(metadata)))
    for field in kept:  # each key/value as the source's bytes: key, type and value unchanged
        out.write(reader.data[field.offset:field.offset + sum(int(p.nbytes) for p in field.parts)].tobytes())
    for key, value in metadata.items():
        out.write(_string(key))
        if isinstance(value, int):
            out.write(struct.pack("<II", GGUFValueType.UINT32, value))
        else:
            out.write(struct.pack("<I", GGUFValueType.STRING) + _string(value))
    align, offset, blobs = int(reader.alignment), 0, []
    for tensor in reader.tensors:
        qtype, data = encoded.get(tensor.name, (tensor.tensor_type, None))
        blob = data if data is not None else reader.data[tensor.data_offset:tensor.data_offset + tensor.n_bytes]
        dims = [int(d) for d in tensor.shape]
        out.write(_string(tensor.name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, int(qtype), offset))
        offset += _pad(len(blob), align)
        blobs.append(blob)
    out.write(b"\0" * (_pad(out.tell(), align) - out.tell()))
    for blob in blobs:
        out.write(memoryview(blob))
        out.write(b"\0" * (_pad(len(blob), align) - len(blob)))


def _check_written(path: Path, reader, encoded: dict[str, tuple], metadata: dict) -> None:
    """Read the written file back: every tensor, with its new type, and every key must be there."""
    from gguf import GGUFReader

    written = GGUFReader(str(path))
    expected = [(t.name, encoded.get(t.name, (t.tensor_type,))[0]) for t in reader.tensors]
    assert [(t.name, t.tensor_type) for t in written.tensors] == expected, "the written tensors differ from the plan"
    assert set(reader.fields) | set(metadata) == set(written.fields), "the written metadata differs from the plan"


def _publish(tmp: Path, output: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, output)
        return
    try:
        os.link(tmp, output)  # "create if absent", atomically: a file that appeared meanwhile is never replaced
    except FileExistsError:
        raise JumploraError(f"{output} was written by another command meanwhile: pass another output") from None


def _check_output(output: Path, source: Path, overwrite: bool) -> None:
    if output.exists() and output.resolve() == source.resolve():
        raise JumploraError(f"{output} is the model's base GGUF file: pass another output")
    if output.is_dir():
        raise JumploraError(f"{output} is a folder: pass the path of the .gguf file to write")
    if output.exists() and not overwrite:
        raise JumploraError(f"{output} already exists: pass another output, or overwrite it (--overwrite)")


def _field(reader, key: str):
    field = reader.get_field(key)
    return None if field is None else field.contents()


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def _pad(n: int, align: int) -> int:
    return (n + align - 1) // align * align
