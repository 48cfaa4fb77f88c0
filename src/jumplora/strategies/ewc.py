"""Elastic weight consolidation (Kirkpatrick et al. 2017) on full fine-tuning.

    penalty = (λ/2) · Σ_j F_j · (θ_j − θ*_j)²

θ* are the weights at the end of the previous task and F the diagonal Fisher information, summed
over the past tasks. F of a task is the empirical Fisher at its trained weights, estimated from
the squared gradients of the batch losses of its first few batches:

    F_j = (1/B) · Σ_{b ≤ B} (∂L_b/∂θ_j)²,    B ≤ 8

(per batch, not per example: a cheap approximation that keeps one backward per batch).
"""

from __future__ import annotations

import torch
from torch import nn

from jumplora.adapters import AdapterSet
from jumplora.strategies.penalty import TaskEnd


class EwcPenalty:
    """Holds F (summed over the past tasks) and θ* (the weights after the last task) per parameter."""

    def __init__(self, weight: float) -> None:
        self.weight = weight  # λ
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def value(self, model: nn.Module, adapters: AdapterSet | None, task: int) -> torch.Tensor | None:
        if not self.fisher:
            return None
        params = dict(model.named_parameters())
        total = sum((self.fisher[n] * (params[n] - self.anchor[n]).square()).sum() for n in self.fisher)
        return self.weight / 2 * total

    def remember(self, ending: TaskEnd) -> None:
        params = {n: p for n, p in ending.model.named_parameters() if p.requires_grad}
        fisher = {n: torch.zeros_like(p) for n, p in params.items()}
        count = 0
        for loss in ending.fisher_losses:
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for (n, _), g in zip(params.items(), grads):
                if g is not None:
                    fisher[n] += g.detach().square()
            count += 1
        for n, value in fisher.items():
            self.fisher[n] = self.fisher.get(n, 0) + value / max(count, 1)
            self.anchor[n] = params[n].detach().clone()

    def observe(self, loss: float, term: float) -> None:
        pass

    def state(self) -> dict[str, torch.Tensor]:
        return {**{f"fisher/{n}": v for n, v in self.fisher.items()}, **{f"anchor/{n}": v for n, v in self.anchor.items()}}

    def load_state(self, tensors: dict[str, torch.Tensor], device: torch.device) -> None:
        self.fisher = {k.split("/", 1)[1]: v.to(device) for k, v in tensors.items() if k.startswith("fisher/")}
        self.anchor = {k.split("/", 1)[1]: v.to(device) for k, v in tensors.items() if k.startswith("anchor/")}
