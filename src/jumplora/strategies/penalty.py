"""What a continual-learning penalty is: a term of the loss that remembers the tasks before.

    loss = task_loss + penalty.value(model, adapters, task)   # at every step (None: no term yet)
    penalty.remember(TaskEnd(...))                            # after each task: what it keeps
    penalty.state() / penalty.load_state(tensors)             # checkpoints, resume, the λ search

ELLA (:mod:`~jumplora.strategies.ella`), O-LoRA (:mod:`~jumplora.strategies.olora`) and EWC
(:mod:`~jumplora.strategies.ewc`) implement it, each with its equation in its docstring. A method
pairs an adapter (or none) with at most one penalty (:mod:`~jumplora.strategies.registry`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from jumplora.adapters import AdapterSet, TaskUpdate


@dataclass
class TaskEnd:
    """What a penalty may keep when a task ends.

    ``factors``: each adapted layer's (A, B), taken before the merge; ``update``: the merged update
    (None when nothing was merged); ``fisher_losses``: losses of a few of the task's batches at
    the trained weights, computed only if iterated.
    """

    task: int
    model: nn.Module
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    update: TaskUpdate | None = None
    fisher_losses: Iterable[torch.Tensor] = ()


class Penalty(Protocol):
    """A regulariser of the task loss with a memory of the earlier tasks."""

    def value(self, model: nn.Module, adapters: AdapterSet | None, task: int) -> torch.Tensor | None:
        """The term added to task ``task``'s loss at this step (None: nothing to add yet)."""

    def remember(self, ending: TaskEnd) -> None:
        """Keep what the next tasks are penalised against."""

    def observe(self, loss: float, term: float) -> None:
        """Optional. After each step: the task loss and the term this penalty added (0.0 for none);
        a penalty that sets its own weight from them (ELLA's λ auto) defines it, others may omit it."""

    def state(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint must keep (keys unique to the penalty: ``<name>/...``)."""

    def load_state(self, tensors: dict[str, torch.Tensor], device: torch.device) -> None:
        """Undo :meth:`state` (the tensors of other owners are ignored)."""
