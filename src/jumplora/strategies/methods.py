"""The continual-learning methods as thin objects the training loop calls at four points.

    params = strategy.start_task(index, num_steps)   # what the optimiser trains this task
    strategy.set_step(step)                           # before each forward (JumpLoRA's schedule)
    loss = task_loss + strategy.penalty()             # the method's regulariser, or None
    update = strategy.end_task(losses)                # merge (IncLoRA-style) → the task's update

What differs between methods is data (:mod:`~jumplora.strategies.registry`): the adapter (none,
LoRA, JumpLoRA), whether it is merged after every task, and the penalty. Two classes serve them
all: :class:`Strategy` trains every weight (seqft, ewc), :class:`AdapterStrategy` a frozen base plus
an adapter (seqlora, inclora, ella, olora, mtl and the JumpLoRA variants).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from jumplora.adapters import AdapterSet, TaskUpdate
from jumplora.strategies.penalty import Penalty, TaskEnd
from jumplora.strategies.registry import MethodSpec


class Strategy:
    """Every weight trains (seqft; with a penalty, ewc)."""

    def __init__(self, spec: MethodSpec, model: nn.Module, config, regulariser: Penalty | None = None) -> None:
        self.spec, self.model, self.config = spec, model, config
        self.regulariser = regulariser
        self.index = 0

    @property
    def adapters(self) -> AdapterSet | None:
        return None

    def start_task(self, index: int, num_steps: int) -> list[nn.Parameter]:
        self.index = index
        self.model.requires_grad_(True)
        return [p for p in self.model.parameters() if p.requires_grad]

    def set_step(self, step: int) -> None:
        pass

    def penalty(self) -> torch.Tensor | None:
        """The regulariser's term at this step, or None."""
        if self.regulariser is None:
            return None
        return self.regulariser.value(self.model, self.adapters, self.index)

    def observe(self, loss: float, total: float) -> None:
        """After each step: the task loss and the loss with the penalty (a regulariser that has
        ``observe`` sees both; it is optional, so a penalty written as value/remember/state is enough)."""
        observe = getattr(self.regulariser, "observe", None)
        if observe is not None:
            observe(loss, total - loss)

    def end_task(self, fisher_losses: Iterable[torch.Tensor] = ()) -> TaskUpdate | None:
        self._remember(TaskEnd(self.index, self.model, fisher_losses=fisher_losses))
        return None

    def _remember(self, ending: TaskEnd) -> None:
        if self.regulariser is not None:
            self.regulariser.remember(ending)

    def finish(self) -> None:
        """After the last task (seqlora merges its one adapter here)."""

    def thresholds(self) -> dict[str, float]:
        """τ per threshold group (JumpLoRA methods only)."""
        return {}

    def threshold_tensor(self) -> torch.Tensor | None:
        """τ of every group as one detached tensor on the device (no host sync), or None."""
        return None

    def gate_trace(self) -> dict[str, dict[str, dict[str, float]]]:
        """JumpLoRA: the kept fraction and τ per group at S_start, S_final and now (the end of the
        task): ``{"s_start": {"kept": {...}, "tau": {...}}, "s_final": ..., "end": ...}``."""
        return {}

    def state(self) -> dict[str, torch.Tensor]:
        """The method's own tensors that a checkpoint must keep (besides the model's weights)."""
        return self.regulariser.state() if self.regulariser is not None else {}

    def changed_weights(self) -> set[str] | None:
        """The model's state_dict keys that training may have changed between tasks (None: any);
        a checkpoint keeps only these, the rest is the base model, reloaded on resume."""
        return None

    def restore(self, tensors: dict[str, torch.Tensor], model_keys: set[str]) -> None:
        """Undo :meth:`state` on a fresh strategy, before the model's weights are loaded."""
        if self.regulariser is not None:
            self.regulariser.load_state(tensors, next(self.model.parameters()).device)


class AdapterStrategy(Strategy):
    """A frozen base plus a LoRA or JumpLoRA adapter: fresh per task and merged after it, or (seqlora)
    one for the whole stream, merged after the last task."""

    def __init__(self, spec: MethodSpec, model: nn.Module, config, regulariser: Penalty | None = None) -> None:
        super().__init__(spec, model, config, regulariser)
        self._adapters: AdapterSet | None = None

    @property
    def adapters(self) -> AdapterSet | None:
        return self._adapters

    def _new_adapters(self) -> None:
        self.model.requires_grad_(False)
        self._adapters = AdapterSet(self.model, self.config.adapter_config(self.spec.adapter, self.spec.name))

    def start_task(self, index: int, num_steps: int) -> list[nn.Parameter]:
        self.index = index
        if self._adapters is None:  # every task when merged per task; only the first for seqlora
            self._new_adapters()
        self._adapters.begin_task(num_steps)
        params = self._adapters.parameters()
        for p in params:
            p.requires_grad_(True)
        return params

    def set_step(self, step: int) -> None:
        self._adapters.set_step(step)

    def end_task(self, fisher_losses: Iterable[torch.Tensor] = ()) -> TaskUpdate | None:
        if not self.spec.adapter_per_task:
            return None
        factors = {} if self.regulariser is None else {  # taken before the merge removes the layers
            name: (layer.lora_A.detach().clone(), layer.lora_B.detach().clone())
            for name, layer in self._adapters.layers.items()}
        update = self._adapters.merge_and_unload()
        self._remember(TaskEnd(self.index, self.model, factors, update, fisher_losses))
        self._adapters = None
        return update

    def finish(self) -> None:
        if not self.spec.adapter_per_task and self._adapters is not None:
            self._adapters.merge_and_unload()
            self._adapters = None

    def thresholds(self) -> dict[str, float]:
        return self._adapters.thresholds() if self._adapters is not None else {}

    def gate_trace(self) -> dict[str, dict[str, dict[str, float]]]:
        if self._adapters is None or not self._adapters.gate_active:
            return {}
        return {**self._adapters.gate_trace, "end": self._adapters.gate_state()}

    def changed_weights(self) -> set[str] | None:
        # Between tasks the adapters are merged: only the adapted layers' weights differ from the
        # base (576 MB of T5-large's 3 GB). seqlora keeps its adapter across tasks: everything.
        if self._adapters is not None:
            return None
        names = AdapterSet.target_names(self.model, self.config.adapter_config(self.spec.adapter, self.spec.name))
        return {f"{name}.weight" for name in names}

    def restore(self, tensors: dict[str, torch.Tensor], model_keys: set[str]) -> None:
        super().restore(tensors, model_keys)
        if any(k.endswith("lora_A") for k in model_keys):  # seqlora between tasks: its adapter is live
            self._new_adapters()

    def threshold_tensor(self) -> torch.Tensor | None:
        if self._adapters is None or not self._adapters.groups:
            return None
        return torch.stack([g.log_threshold.detach() for g in self._adapters.groups.values()]).exp()


def make_strategy(spec: MethodSpec, model: nn.Module, config, num_tasks: int) -> Strategy:
    """The strategy of method ``spec`` for a stream of ``num_tasks`` tasks."""
    regulariser = spec.penalty(config.weights, config.data.resolved_order(), num_tasks) if spec.penalty else None
    return (AdapterStrategy if spec.adapter else Strategy)(spec, model, config, regulariser)


def check_penalties(config, num_tasks: int) -> None:
    """Build each method's penalty once, before a run writes anything: settings that do not fit the
    stream (a λ list of the wrong length) are refused then, not after a finished method."""
    from jumplora.strategies.registry import METHODS

    for method in config.methods:
        spec = METHODS[method]
        if spec.penalty:
            spec.penalty(config.weights, config.data.resolved_order(), num_tasks)
