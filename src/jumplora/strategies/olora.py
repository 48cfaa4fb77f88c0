"""O-LoRA's orthogonality penalty (Wang et al. 2023): each new task's A orthogonal to the earlier ones'.

    penalty_t = λ₁ · Σ_layers Σ_{s<t} ‖A_s · A_tᵀ‖²_F = λ₁ · Σ_layers ‖[A_1; …; A_{t−1}] · A_tᵀ‖²_F

A_s (r × d_in) is task s's down-projection of a layer, kept after the task; A_t the one being
trained. The rows of the A's span the input subspace each task's update reads, so the penalty
pushes a new task into directions the earlier ones did not use. The earlier A's of the layers of
one shape are stacked once per task, so a step costs a few batched kernels per shape instead of a
few per layer and past task (2,000+ small launches on T5-large by the 15th task).
"""

from __future__ import annotations

import torch
from torch import nn

from jumplora.adapters import AdapterSet
from jumplora.strategies.penalty import TaskEnd


class OLoraPenalty:
    """Holds every earlier task's A per layer, in task order."""

    PREFIX = "olora/"

    def __init__(self, weight: float) -> None:
        self.weight = weight  # λ₁
        self.past_A: dict[str, list[torch.Tensor]] = {}
        self._stacks: dict[tuple[str, ...], torch.Tensor] = {}  # built once per task from past_A

    def value(self, model: nn.Module, adapters: AdapterSet | None, task: int) -> torch.Tensor | None:
        if not self.past_A:
            return None
        names = [n for n in adapters.layers if n in self.past_A]
        stacks = adapters.stacked_factors(names, thresholds=False)
        total = sum((self.stacked_past_A(members) @ A.mT).square().sum() for members, A, _, _ in stacks)
        return self.weight * total

    def stacked_past_A(self, names: tuple[str, ...]) -> torch.Tensor:
        """(L, (t−1)·r, d_in): the earlier tasks' A of each of ``names``, stacked, built once per task."""
        if names not in self._stacks:
            self._stacks[names] = torch.stack([torch.cat(self.past_A[n]) for n in names])
        return self._stacks[names]

    def remember(self, ending: TaskEnd) -> None:
        self._stacks.clear()
        for name, (lora_A, _) in ending.factors.items():
            self.past_A.setdefault(name, []).append(lora_A)

    def observe(self, loss: float, term: float) -> None:
        pass

    def state(self) -> dict[str, torch.Tensor]:
        return {f"{self.PREFIX}{i}/{name}": a for name, matrices in self.past_A.items() for i, a in enumerate(matrices)}

    def load_state(self, tensors: dict[str, torch.Tensor], device: torch.device) -> None:
        # "olora/<i>/<layer>": the past tasks in their order, task 10 after task 2.
        ours = [(int(key.split("/")[1]), key.split("/", 2)[2], value) for key, value in tensors.items()
                if key.startswith(self.PREFIX)]
        self.past_A = {}
        for _, name, value in sorted(ours, key=lambda item: (item[0], item[1])):
            self.past_A.setdefault(name, []).append(value.to(device))
        self._stacks.clear()
