"""Task states: the weights of the adapted layers as they were right after each learned task.

    state_t = W_0 + Σ_{s ≤ t} β·ΔW_final(s)       (added one after the other, in fp32, as training merged them)

W_0 is the adapted layers' weights before any task (a model folder's states/base.safetensors) and
the updates are the task's merged updates in the order they were learned, so state t is bit for
bit the weights that produced row t of the accuracy matrix. Only the adapted layers differ between
states: a switch rewrites those (a few matrices per block) and nothing else.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from jumplora.adapters import TaskUpdate


class TaskStates:
    """``base``: W_0 by module name; ``updates``: per learned task, its update (or the file holding it)."""

    def __init__(self, base: dict[str, torch.Tensor], updates: list[TaskUpdate | Path]) -> None:
        self.base = base
        self.updates = list(updates)
        self._cached: tuple[int, dict[str, torch.Tensor]] | None = None

    def __len__(self) -> int:
        return len(self.updates)

    def add(self, update: TaskUpdate | Path) -> None:
        self.updates.append(update)

    def weights(self, t: int) -> dict[str, torch.Tensor]:
        """State t (0-based: after the task of index t), by module name, in the base's dtype."""
        if not 0 <= t < len(self.updates):
            raise IndexError(f"no state {t}: {len(self.updates)} tasks learned")
        start, state = -1, {name: weight.clone() for name, weight in self.base.items()}
        if self._cached is not None and self._cached[0] <= t:  # go on from the last one made
            start, state = self._cached[0], {name: w.clone() for name, w in self._cached[1].items()}
        for index in range(start + 1, t + 1):
            update = self._update(index)
            for name, delta in update.deltas.items():
                state[name].add_(delta.to(state[name].device))
        self._cached = (t, state)
        return {name: weight.clone() for name, weight in state.items()}

    def _update(self, index: int) -> TaskUpdate:
        update = self.updates[index]
        return update if isinstance(update, TaskUpdate) else TaskUpdate.load(update)

    @contextmanager
    def use(self, model: torch.nn.Module, t: int):
        """The model with state t in its adapted layers for the block, then its own weights back."""
        modules = {name: model.get_submodule(name) for name in self.base}
        kept = {name: module.weight.detach().clone() for name, module in modules.items()}
        state = self.weights(t)
        with torch.no_grad():
            for name, module in modules.items():
                module.weight.copy_(state[name].to(module.weight.device, module.weight.dtype))
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, module in modules.items():
                    module.weight.copy_(kept[name])
