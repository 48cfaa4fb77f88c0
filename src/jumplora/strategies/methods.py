"""The continual-learning methods as thin objects the training loop calls at four points.

    params = strategy.start_task(index, num_steps)   # what the optimiser trains this task
    strategy.set_step(step)                           # before each forward (JumpLoRA's schedule)
    loss = task_loss + strategy.penalty()             # ELLA / O-LoRA / EWC regulariser, or 0
    update = strategy.end_task(losses)                # merge (IncLoRA-style) → the task's update

JumpLoRA is not a method of its own but a modifier of the adapter: ``jumplora+inclora`` and
``jumplora+ella`` are IncLoRA and ELLA whose LoRA passes through the JumpReLU gate.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from jumplora.adapters import AdapterSet, TaskUpdate
from jumplora.errors import JumploraError
from jumplora.strategies.ella import EllaPenalty

METHODS = {
    "seqft": "full fine-tuning, one task after another",
    "seqlora": "one LoRA kept and trained across all tasks, merged at the end",
    "inclora": "a fresh LoRA per task, merged into the weights after it",
    "ella": "inclora + ELLA's penalty λ‖ΔW ⊙ W_past‖² against the sum of past updates",
    "olora": "O-LoRA: inclora + λ₁Σ_{i<t}‖A_i·A_tᵀ‖² keeping the new A orthogonal to the past ones",
    "ewc": "seqft + a diagonal Fisher penalty (EWC)",
    "mtl": "all tasks jointly with one LoRA: the upper bound, not continual",
    "jumplora+inclora": "inclora with the JumpReLU-gated sparse LoRA (the paper)",
    "jumplora+ella": "ella with the JumpReLU-gated sparse LoRA (the paper)",
}
ADAPTER_BASES = ("seqlora", "inclora", "ella", "olora", "mtl")


@dataclass(frozen=True)
class MethodSpec:
    name: str
    base: str  # the method without the JumpLoRA modifier
    jump: bool

    @property
    def adapter_kind(self) -> str | None:
        if self.base not in ADAPTER_BASES:
            return None
        return "jumplora" if self.jump else "lora"


def parse_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise JumploraError(f"unknown method {name!r}: use one of {', '.join(METHODS)}")
    jump = name.startswith("jumplora+")
    return MethodSpec(name, name.split("+", 1)[1] if jump else name, jump)


def paper_ella_lambdas(order: int | None, num_tasks: int) -> list[float]:
    """ELLA's λ per task as tuned in the paper (3e4 for orders 1-3 and for any other stream)."""
    if order == 4:
        return [0.0] + [5e5] * (num_tasks - 2) + [5e7]
    if order == 5:
        return [0.0] + [5e6] * 11 + [5e7] * (num_tasks - 12)
    if order == 6:
        return [0.0] + [5e5] * (num_tasks - 1)
    return [3e4] * num_tasks


class Strategy:
    """Full fine-tuning (seqft); the base the other strategies change."""

    def __init__(self, spec: MethodSpec, model: nn.Module, config) -> None:
        self.spec, self.model, self.config = spec, model, config
        self.index = 0

    def start_task(self, index: int, num_steps: int) -> list[nn.Parameter]:
        self.index = index
        self.model.requires_grad_(True)
        return [p for p in self.model.parameters() if p.requires_grad]

    def set_step(self, step: int) -> None:
        pass

    def penalty(self) -> torch.Tensor | None:
        return None

    def end_task(self, fisher_losses: Iterable[torch.Tensor] = ()) -> TaskUpdate | None:
        return None

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
        return {}

    def changed_weights(self) -> set[str] | None:
        """The model's state_dict keys that training may have changed between tasks (None: any);
        a checkpoint keeps only these, the rest is the base model, reloaded on resume."""
        return None

    def restore(self, tensors: dict[str, torch.Tensor], model_keys: set[str]) -> None:
        """Undo :meth:`state` on a fresh strategy, before the model's weights are loaded."""


class AdapterStrategy(Strategy):
    """seqlora, inclora, ella, olora, mtl and their JumpLoRA variants: a frozen base plus a LoRA."""

    def __init__(self, spec: MethodSpec, model: nn.Module, config, ella_lambdas: list[float]) -> None:
        super().__init__(spec, model, config)
        self.adapters: AdapterSet | None = None
        self.ella = EllaPenalty(config.ella_delta) if spec.base == "ella" else None
        self.ella_lambdas = ella_lambdas
        self.past_A: dict[str, list[torch.Tensor]] = {}  # O-LoRA: every earlier task's A per layer
        self._past_A_stacks: dict[tuple[str, ...], torch.Tensor] = {}  # built once per task from past_A

    def start_task(self, index: int, num_steps: int) -> list[nn.Parameter]:
        self.index = index
        if self.adapters is None:  # every task for inclora-style methods; only the first for seqlora
            self.model.requires_grad_(False)
            self.adapters = AdapterSet(self.model, self.config.adapter_config(self.spec.adapter_kind))
        self.adapters.begin_task(num_steps)
        params = self.adapters.parameters()
        for p in params:
            p.requires_grad_(True)
        return params

    def set_step(self, step: int) -> None:
        self.adapters.set_step(step)

    def penalty(self) -> torch.Tensor | None:
        if self.ella is not None:
            return self.ella(self.adapters, self.ella_lambdas[min(self.index, len(self.ella_lambdas) - 1)])
        if self.spec.base == "olora" and self.past_A:
            # λ₁ Σ_layers Σ_{i<t} ‖A_i·A_tᵀ‖²_F = λ₁ Σ_layers ‖[A_1; …; A_{t−1}]·A_tᵀ‖²_F, with the
            # layers of one shape stacked: a few batched kernels per shape at each step, instead of
            # a few per layer and past task (2,000+ small launches on T5-large by the 15th task).
            names = [n for n in self.adapters.layers if n in self.past_A]
            stacks = self.adapters.stacked_factors(names, thresholds=False)
            total = sum((self.stacked_past_A(members) @ A.mT).square().sum() for members, A, _, _ in stacks)
            return self.config.olora_lambda * total
        return None

    def stacked_past_A(self, names: tuple[str, ...]) -> torch.Tensor:
        """(L, (t−1)·r, d_in): the earlier tasks' A of each of ``names``, stacked, built once per task."""
        if names not in self._past_A_stacks:
            self._past_A_stacks[names] = torch.stack([torch.cat(self.past_A[n]) for n in names])
        return self._past_A_stacks[names]

    def end_task(self, fisher_losses: Iterable[torch.Tensor] = ()) -> TaskUpdate | None:
        if self.spec.base == "seqlora":
            return None
        if self.spec.base == "olora":
            self._past_A_stacks.clear()
            for name, layer in self.adapters.layers.items():
                self.past_A.setdefault(name, []).append(layer.lora_A.detach().clone())
        update = self.adapters.merge_and_unload()
        if self.ella is not None:
            self.ella.add(update, self.model)
        self.adapters = None
        return update

    def finish(self) -> None:
        if self.spec.base == "seqlora" and self.adapters is not None:
            self.adapters.merge_and_unload()
            self.adapters = None

    def thresholds(self) -> dict[str, float]:
        return self.adapters.thresholds() if self.adapters is not None else {}

    def gate_trace(self) -> dict[str, dict[str, dict[str, float]]]:
        if self.adapters is None or not self.adapters.gate_active:
            return {}
        return {**self.adapters.gate_trace, "end": self.adapters.gate_state()}

    def changed_weights(self) -> set[str] | None:
        # Between tasks the adapters are merged: only the adapted layers' weights differ from the
        # base (576 MB of T5-large's 3 GB). seqlora keeps its adapter across tasks: everything.
        if self.adapters is not None:
            return None
        names = AdapterSet.target_names(self.model, self.config.adapter_config(self.spec.adapter_kind))
        return {f"{name}.weight" for name in names}

    def state(self) -> dict[str, torch.Tensor]:
        tensors = {f"ella/{name}": past for name, past in (self.ella.past if self.ella else {}).items()}
        for name, matrices in self.past_A.items():
            tensors.update({f"olora/{i}/{name}": a for i, a in enumerate(matrices)})
        return tensors

    def restore(self, tensors: dict[str, torch.Tensor], model_keys: set[str]) -> None:
        device = next(self.model.parameters()).device

        def task_order(key: str) -> tuple:  # "olora/<i>/<layer>": past tasks in order, 2 before 10
            kind, rest = key.split("/", 1)
            return (kind, int(rest.split("/", 1)[0])) if kind == "olora" else (kind, 0)

        for key, value in sorted(tensors.items(), key=lambda item: (task_order(item[0]), item[0])):
            kind, rest = key.split("/", 1)
            if kind == "ella":
                self.ella.past[rest] = value.to(device)
            elif kind == "olora":
                self.past_A.setdefault(rest.split("/", 1)[1], []).append(value.to(device))
        self._past_A_stacks.clear()  # rebuilt from the restored past_A at the next penalty
        if any(k.endswith("lora_A") for k in model_keys):  # seqlora between tasks: its adapter is live
            self.model.requires_grad_(False)
            self.adapters = AdapterSet(self.model, self.config.adapter_config(self.spec.adapter_kind))

    def threshold_tensor(self) -> torch.Tensor | None:
        if self.adapters is None or not self.adapters.groups:
            return None
        return torch.stack([g.log_threshold.detach() for g in self.adapters.groups.values()]).exp()


class EwcStrategy(Strategy):
    """seqft + λ/2 · Σ_j F_j·(θ_j − θ*_j)², F the diagonal empirical Fisher summed over past tasks."""

    def __init__(self, spec: MethodSpec, model: nn.Module, config) -> None:
        super().__init__(spec, model, config)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def state(self) -> dict[str, torch.Tensor]:
        return {**{f"fisher/{n}": v for n, v in self.fisher.items()}, **{f"anchor/{n}": v for n, v in self.anchor.items()}}

    def restore(self, tensors: dict[str, torch.Tensor], model_keys: set[str]) -> None:
        device = next(self.model.parameters()).device
        for key, value in tensors.items():
            kind, name = key.split("/", 1)
            {"fisher": self.fisher, "anchor": self.anchor}[kind][name] = value.to(device)

    def penalty(self) -> torch.Tensor | None:
        if not self.fisher:
            return None
        params = dict(self.model.named_parameters())
        total = sum((self.fisher[n] * (params[n] - self.anchor[n]).square()).sum() for n in self.fisher)
        return self.config.ewc_lambda / 2 * total

    def end_task(self, fisher_losses: Iterable[torch.Tensor] = ()) -> TaskUpdate | None:
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        fisher = {n: torch.zeros_like(p) for n, p in params.items()}
        count = 0
        for loss in fisher_losses:
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for (n, _), g in zip(params.items(), grads):
                if g is not None:
                    fisher[n] += g.detach().square()
            count += 1
        for n, value in fisher.items():
            self.fisher[n] = self.fisher.get(n, 0) + value / max(count, 1)
            self.anchor[n] = params[n].detach().clone()
        return None


def make_strategy(spec: MethodSpec, model: nn.Module, config, num_tasks: int) -> Strategy:
    if spec.base == "ewc":
        return EwcStrategy(spec, model, config)
    if spec.adapter_kind is None:
        return Strategy(spec, model, config)
    lambdas = config.ella_lambda
    if lambdas is None:
        lambdas = paper_ella_lambdas(config.order, num_tasks)
    elif not isinstance(lambdas, list):
        lambdas = [float(lambdas)] * num_tasks
    if spec.base == "ella" and len(lambdas) != num_tasks:
        raise JumploraError(f"ella_lambda lists {len(lambdas)} values for a stream of {num_tasks} tasks: give one per task")
    return AdapterStrategy(spec, model, config, list(lambdas))  # a copy: the λ search writes into it
