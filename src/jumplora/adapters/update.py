"""A task's merged update, β·ΔW_final per layer: kept sparse, saved as one safetensors file.

Each layer's update is stored in the layout of the module's own ``weight`` (transposed for GPT-2's
Conv1D), so applying it is ``weight += delta``. On disk, per layer ``<name>`` either

* ``<name>.indices`` (int64, flat positions of the nonzero entries), ``<name>.values`` and
  ``<name>.shape`` — the sparse form, used while at most a third of the entries are nonzero
  (JumpLoRA keeps ~5-15%); or
* ``<name>.dense`` — the whole matrix, smaller for plain LoRA's dense B·A.

The updates of successive tasks are additive, so ``apply(model, sign=-1)`` removes one exactly
(up to floating-point rounding of the additions).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from jumplora import metrics
from jumplora.adapters import _compat
from jumplora.errors import JumploraError

FORMAT = "jumplora-task-update"
FORMAT_VERSION = "1"


@dataclass
class TaskUpdate:
    """``deltas[name]``: the dense update of module ``name``'s weight, in that weight's layout."""

    deltas: dict[str, torch.Tensor]
    kind: str = "jumplora"
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_linear_deltas(cls, model: nn.Module, deltas: dict[str, torch.Tensor], kind: str) -> TaskUpdate:
        """From (d_out, d_in) updates to the layout of each module's weight."""
        stored = {}
        for name, delta in deltas.items():
            module = _compat.unwrap(model.get_submodule(name))
            stored[name] = _compat.convert_layout(module, delta).contiguous()
        return cls(stored, kind)

    def linear_deltas(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The updates in the (d_out, d_in) layout of nn.Linear, e.g. for ELLA's W_past."""
        modules = {name: _compat.unwrap(model.get_submodule(name)) for name in self.deltas}
        return {name: _compat.convert_layout(modules[name], d) for name, d in self.deltas.items()}

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
            if not _compat.is_linear(module) or module.weight.shape != delta.shape:
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
        """Write one safetensors file (the sparse or dense form above) atomically."""
        tensors = {}
        for name, delta in self.deltas.items():
            delta = delta.detach().cpu()
            nonzero = delta.flatten().nonzero().flatten()
            if nonzero.numel() * 3 <= delta.numel():
                tensors[f"{name}.indices"] = nonzero
                tensors[f"{name}.values"] = delta.flatten()[nonzero].contiguous()
                tensors[f"{name}.shape"] = torch.tensor(delta.shape, dtype=torch.int64)
            else:
                tensors[f"{name}.dense"] = delta.contiguous()
        metadata = {"format": FORMAT, "version": FORMAT_VERSION, "kind": self.kind,
                    "extra": json.dumps(self.metadata, sort_keys=True)}
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> TaskUpdate:
        path = Path(path)
        if not path.is_file():
            raise JumploraError(f"update file {path} not found")
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
        except (SafetensorError, OSError, ValueError) as exc:
            raise JumploraError(f"{path} is not a readable safetensors file ({exc})") from None
        if metadata.get("format") != FORMAT:
            raise JumploraError(f"{path} is not a jumplora task update (format {metadata.get('format')!r})")
        deltas = {}
        for key, tensor in tensors.items():
            name, part = key.rsplit(".", 1)
            if part == "dense":
                deltas[name] = tensor
            elif part == "shape":
                shape = tuple(int(s) for s in tensor)
                values, indices = tensors[f"{name}.values"], tensors[f"{name}.indices"]
                dense = torch.zeros(shape, dtype=values.dtype).flatten()
                dense[indices] = values
                deltas[name] = dense.reshape(shape)
        return cls(deltas, metadata.get("kind", "jumplora"), json.loads(metadata.get("extra", "{}")))
