"""A task's merged update, β·ΔW_final per layer, saved as one safetensors file in its smallest exact form.

Each layer's update is applied in the layout of the module's own ``weight`` (transposed for GPT-2's
Conv1D), so applying it is ``weight += delta``. On disk, per layer ``<name>``, whichever is smallest:

* ``<name>.lora_A``, ``.lora_B``, ``.scaling``, ``.transposed`` — a plain LoRA update as its factors:
  delta = (B·A)·β (transposed for Conv1D), r·(d_in + d_out) numbers instead of d_in·d_out;
* ``<name>.mask`` (the nonzero entries as packed bits), ``.values`` and ``.shape`` — a gated update
  at any sparsity above a few percent;
* ``<name>.indices`` (flat positions, int32 or int64), ``.values``, ``.shape`` — very sparse ones;
* ``<name>.dense`` — the whole matrix.

Every form gives back exactly the matrix that was merged (the factors are multiplied again in the
same order and precision, on the CPU). The file's metadata is one JSON entry (format, kind, task,
method, seed, index), so the same update is always the same bytes and its SHA-256 identifies it.
Loading checks every entry: names, shapes, index ranges, lengths, finite values.

The updates of successive tasks are additive, so ``apply(model, sign=-1)`` removes one exactly
(up to floating-point rounding of the additions).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from jumplora import metrics
from jumplora import layout
from jumplora.errors import JumploraError
from jumplora.files import save_tensors

FORMAT = "jumplora-task-update"
FORMAT_VERSION = "2"
PARTS = ("dense", "indices", "values", "shape", "mask", "lora_A", "lora_B", "scaling", "transposed")


@dataclass
class TaskUpdate:
    """``deltas[name]``: the dense update of module ``name``'s weight, in that weight's layout.

    ``factors[name]`` = (A, B, β, transposed) when the update is a plain LoRA's (B·A)·β: saved that way.
    """

    deltas: dict[str, torch.Tensor]
    kind: str = "jumplora"
    metadata: dict[str, str] = field(default_factory=dict)
    factors: dict[str, tuple[torch.Tensor, torch.Tensor, float, bool]] = field(default_factory=dict)

    @classmethod
    def from_linear_deltas(cls, model: nn.Module, deltas: dict[str, torch.Tensor], kind: str,
                           factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]] | None = None) -> TaskUpdate:
        """From (d_out, d_in) updates (and, for LoRA, their (A, B, β)) to the layout of each module's weight."""
        stored, kept = {}, {}
        for name, delta in deltas.items():
            module = layout.unwrap(model.get_submodule(name))
            stored[name] = layout.convert_layout(module, delta).contiguous()
            if factors and name in factors:
                A, B, scaling = factors[name]
                kept[name] = (A.detach(), B.detach(), scaling, layout.is_transposed(module))
        return cls(stored, kind, factors=kept)

    def linear_deltas(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The updates in the (d_out, d_in) layout of nn.Linear, e.g. for ELLA's W_past."""
        modules = {name: layout.unwrap(model.get_submodule(name)) for name in self.deltas}
        return {name: layout.convert_layout(modules[name], d) for name, d in self.deltas.items()}

    def masks(self) -> dict[str, torch.Tensor]:
        """The binary support of each layer's update (True where the entry is nonzero)."""
        return {name: delta != 0 for name, delta in self.deltas.items()}

    def sparsity(self) -> dict[str, float]:
        """Per layer, the fraction of entries that are exactly zero (:func:`jumplora.metrics.sparsity`)."""
        return {name: metrics.sparsity(delta) for name, delta in self.deltas.items()}

    @torch.no_grad()
    def apply(self, model: nn.Module, sign: float = 1.0) -> None:
        """weight += sign · delta on every layer; shapes and names are checked before anything is written."""
        targets = {}
        for name, delta in self.deltas.items():
            try:
                module = model.get_submodule(name)
            except AttributeError:
                raise JumploraError(f"the update names module {name!r}, which this model does not have") from None
            if not layout.is_linear(module) or module.weight.shape != delta.shape:
                shape = tuple(module.weight.shape) if hasattr(module, "weight") else None
                raise JumploraError(
                    f"the update of {name!r} has shape {tuple(delta.shape)} but the model's weight is {shape}: "
                    "the update belongs to another model"
                )
            targets[name] = module.weight
        for name, weight in targets.items():
            # The sum is formed in the delta's precision and rounded once into a bf16/fp16 weight.
            weight.add_(self.deltas[name].to(device=weight.device), alpha=sign)

    def save(self, path: str | Path) -> None:
        """Write one safetensors file (the smallest exact form per layer, see above) atomically."""
        tensors = {}
        for name, delta in self.deltas.items():
            tensors.update(_smallest(name, delta.detach().cpu(), self.factors.get(name)))
        header = {"format": FORMAT, "version": FORMAT_VERSION, "kind": self.kind, **self.metadata}
        save_tensors(tensors, Path(path), metadata={"jumplora": json.dumps(header, sort_keys=True)})

    @classmethod
    def load(cls, path: str | Path) -> TaskUpdate:
        """An update file, every entry checked; a damaged or foreign file is a one-line error."""
        path = Path(path)
        if not path.is_file():
            raise JumploraError(f"update file {path} not found")
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), framework="pt") as handle:
                header = _header(handle.metadata() or {})
        except (SafetensorError, OSError, ValueError) as exc:
            raise JumploraError(f"{path} is not a readable safetensors file ({str(exc).splitlines()[0]})") from None
        if header.get("format") != FORMAT:
            raise JumploraError(f"{path} is not a jumplora task update (format {header.get('format')!r})")
        deltas = {name: _dense(name, parts, path) for name, parts in _by_layer(tensors, path).items()}
        metadata = {k: v for k, v in header.items() if k not in ("format", "version", "kind")}
        return cls(deltas, header.get("kind", "jumplora"), metadata)


def _header(raw: dict) -> dict:
    """The file's metadata: one JSON entry (version 2), or the separate keys of version 1."""
    if "jumplora" in raw:
        header = json.loads(raw["jumplora"])
        return {k: str(v) for k, v in header.items()}
    extra = json.loads(raw.get("extra", "{}"))
    return {**{k: v for k, v in raw.items() if k != "extra"}, **extra}


def _smallest(name: str, delta: torch.Tensor, factors) -> dict[str, torch.Tensor]:
    flat = delta.flatten()
    nonzero = flat.nonzero().flatten()
    item, n, k = delta.element_size(), flat.numel(), nonzero.numel()
    index_dtype = torch.int32 if n < 2**31 else torch.int64
    shape = torch.tensor(delta.shape, dtype=torch.int64)
    forms = {"dense": (n * item, lambda: {"dense": delta.contiguous()})}
    forms["indices"] = (k * (item + torch.empty((), dtype=index_dtype).element_size()), lambda: {
        "indices": nonzero.to(index_dtype), "values": flat[nonzero].contiguous(), "shape": shape})
    forms["mask"] = (math.ceil(n / 8) + k * item, lambda: {
        "mask": torch.from_numpy(np.packbits((flat != 0).numpy())), "values": flat[nonzero].contiguous(),
        "shape": shape})
    if factors is not None:
        A, B, scaling, transposed = factors
        if torch.equal(_multiply(A.cpu(), B.cpu(), scaling, transposed), delta):  # exact, or not taken
            forms["factors"] = ((A.numel() + B.numel()) * A.element_size(), lambda: {
                "lora_A": A.cpu().contiguous(), "lora_B": B.cpu().contiguous(),
                "scaling": torch.tensor(scaling, dtype=torch.float64), "transposed": torch.tensor(transposed)})
    best = min(forms, key=lambda form: forms[form][0])
    return {f"{name}.{part}": tensor for part, tensor in forms[best][1]().items()}


def _multiply(A: torch.Tensor, B: torch.Tensor, scaling: float, transposed: bool) -> torch.Tensor:
    """(B·A)·β as the layer computed it at the merge (AdaptedLinear.final_delta), in the weight's layout."""
    delta = (B @ A) * scaling
    return (delta.t() if transposed else delta).contiguous()


def _by_layer(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, dict[str, torch.Tensor]]:
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name, _, part = key.rpartition(".")
        if not name or part not in PARTS:
            raise JumploraError(f"{path}: entry {key!r} is not <module>.<{'|'.join(PARTS)}>: not a jumplora update")
        layers.setdefault(name, {})[part] = tensor
    return layers


def _dense(name: str, parts: dict[str, torch.Tensor], path: Path) -> torch.Tensor:
    """The matrix of one layer from its stored form, after checking that the form is whole and sound."""
    def bad(problem: str) -> JumploraError:
        return JumploraError(f"{path}: the update of {name!r} {problem}: the file is damaged or not a jumplora update")

    if {"lora_A", "lora_B", "scaling", "transposed"} <= parts.keys():
        A, B = parts["lora_A"], parts["lora_B"]
        if A.dim() != 2 or B.dim() != 2 or B.shape[1] != A.shape[0]:
            raise bad(f"has factors of shapes {tuple(B.shape)} and {tuple(A.shape)} that do not multiply")
        delta = _multiply(A, B, float(parts["scaling"]), bool(parts["transposed"]))
    elif "dense" in parts:
        delta = parts["dense"]
    elif {"values", "shape"} <= parts.keys() and ("indices" in parts or "mask" in parts):
        delta = _scatter(parts, bad)
    else:
        raise bad(f"has the parts {sorted(parts)}, which make no update")
    if not torch.isfinite(delta).all():
        raise bad("holds values that are not finite (NaN or infinity)")
    return delta


def _scatter(parts: dict[str, torch.Tensor], bad) -> torch.Tensor:
    shape = tuple(int(s) for s in parts["shape"])
    if not shape or any(s < 1 for s in shape):
        raise bad(f"has the shape {shape}")
    values, n = parts["values"], math.prod(shape)
    if "mask" in parts:
        bits = np.unpackbits(parts["mask"].numpy(), count=n) if parts["mask"].numel() * 8 >= n else None
        if bits is None:
            raise bad(f"has a mask of {parts['mask'].numel() * 8} bits for {n} entries")
        indices = torch.from_numpy(bits.astype(bool)).nonzero().flatten()
    else:
        indices = parts["indices"].long()
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n):
            raise bad(f"has indices outside its {n} entries")
    if indices.numel() != values.numel():
        raise bad(f"has {indices.numel()} positions but {values.numel()} values")
    dense = torch.zeros(n, dtype=values.dtype)
    dense[indices] = values
    return dense.reshape(shape)


def update_labels(metadata: dict[str, str]) -> list[str]:
    """The task's labels an update file records: a JSON list (files written before 2026-12-07 joined
    them with newlines)."""
    text = metadata.get("labels")
    if not text:
        return []
    if text.startswith("["):
        try:
            labels = json.loads(text)
            if isinstance(labels, list) and all(isinstance(label, str) for label in labels):
                return labels
        except ValueError:
            pass
    return text.split("\n")
