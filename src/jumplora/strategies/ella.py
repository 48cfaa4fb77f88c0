"""ELLA's penalty against the sum of past updates (Biswas et al.), the plug-in JumpLoRA is paired with.

    penalty = λ · (1/L) · Σ_layers ‖ΔW_eff ⊙ W_past‖²_F

W_past is the sum of every earlier task's merged update of that layer and L the number of adapted
layers that have a past. The penalty pushes the new update away from the entries that earlier
tasks changed most. ΔW_eff is β·B·A for plain LoRA; for JumpLoRA see
``AdapterSet.effective_deltas`` (``sparse`` by default, ``interpolated`` as the ablation).
The memory is one matrix per adapted layer whatever the number of tasks.
"""

from __future__ import annotations

import torch

from jumplora.adapters import AdapterSet, TaskUpdate, _compat
from jumplora.adapters.config import ELLA_DELTA_MODES
from jumplora.errors import JumploraError


class EllaPenalty:
    """Holds W_past per layer, in the (d_out, d_in) layout and the adapters' dtype and device."""

    def __init__(self, delta_mode: str = "sparse") -> None:
        if delta_mode not in ELLA_DELTA_MODES:
            raise JumploraError(f"unknown ELLA delta mode {delta_mode!r}: use one of {', '.join(ELLA_DELTA_MODES)}")
        self.delta_mode = delta_mode
        self.past: dict[str, torch.Tensor] = {}

    def __call__(self, adapters: AdapterSet, lam: float) -> torch.Tensor:
        if lam < 0:
            raise JumploraError(f"the ELLA weight lambda must be >= 0, got {lam}")
        names = [n for n in adapters.layers if n in self.past]
        if lam == 0 or not names:
            return torch.zeros((), device=next(iter(adapters.layers.values())).lora_A.device)
        deltas = adapters.effective_deltas(self.delta_mode)
        total = sum((deltas[n] * self.past[n]).square().sum() for n in names)
        return lam * total / len(names)

    @torch.no_grad()
    def add(self, update: TaskUpdate, model) -> None:
        """W_past ← W_past + the task's merged update, kept on the weight's device in fp32."""
        for name, delta in update.linear_deltas(model).items():
            device = _compat.unwrap(model.get_submodule(name)).weight.device
            delta = delta.to(device=device, dtype=torch.float32)
            self.past[name] = self.past[name] + delta if name in self.past else delta.clone()
