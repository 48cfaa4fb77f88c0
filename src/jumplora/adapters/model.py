"""Put adapters into a model, drive the JumpLoRA schedule, merge the task's update and take them out.

    adapters = AdapterSet(model, AdapterConfig(kind="jumplora"))
    adapters.begin_task(num_steps)
    for step, batch in enumerate(loader):
        adapters.set_step(step)           # τ initialised at S_start, γ(step) set on every layer
        loss = ...; loss.backward(); optimizer.step()
    update = adapters.merge_and_unload()  # W ← W + β·ΔW_final; the model is its plain self again
"""

from __future__ import annotations

import torch
from torch import nn

from jumplora import layout
from jumplora.adapters.config import THRESHOLD_MODES, AdapterConfig, JumpSchedule
from jumplora.adapters.layer import AdaptedLinear, Gamma, Kernels, ThresholdGroup
from jumplora.adapters.update import TaskUpdate
from jumplora.errors import JumploraError

THRESHOLDS_ATTR = "jumplora_thresholds"


class AdapterSet:
    """The adapters of one model: the layers, their threshold groups and the schedule of a task."""

    def __init__(self, model: nn.Module, config: AdapterConfig | None = None, kernels: Kernels | None = None) -> None:
        self.model = model
        self.config = config or AdapterConfig()
        if self.config.threshold_mode not in THRESHOLD_MODES:
            raise JumploraError(f"threshold mode {self.config.threshold_mode!r} is chosen per method by a run: give the "
                                f"adapters one of {', '.join(THRESHOLD_MODES)}")
        self.gamma = Gamma()  # one γ for every layer, set at each step
        self.kernels = kernels or Kernels()  # how the layers' (and ELLA's) elementwise work runs
        self.schedule: JumpSchedule | None = None
        self.step = 0
        self.thresholds_ready = False
        # The gate where the schedule turns: "s_start" (τ just initialised, k/n kept by construction)
        # and "s_final" (γ reaches 1), each {"kept": kept_fractions(), "tau": thresholds()}.
        self.gate_trace: dict[str, dict[str, dict[str, float]]] = {}
        self._stack_cache: dict = {}
        names = self.target_names(model, self.config)
        self.groups = self._make_groups(names) if self.config.kind == "jumplora" else {}
        self.layers: dict[str, AdaptedLinear] = {}
        for name in names:
            group = self.groups.get(self._group_key(name))
            layer = AdaptedLinear(model.get_submodule(name), self.config, group, self.gamma, self.kernels)
            model.set_submodule(name, layer)
            self.layers[name] = layer

    # -- construction -------------------------------------------------------------------------

    @staticmethod
    def target_names(model: nn.Module, config: AdapterConfig) -> list[str]:
        """The names of the linear modules of ``model`` that ``config`` adapts."""
        targets = config.targets or layout.default_targets(model)
        linear = [n for n, m in model.named_modules() if layout.is_linear(m) and n]
        if any(isinstance(m, AdaptedLinear) for m in model.modules()):
            raise JumploraError("the model already has adapters: merge_and_unload() them before adding new ones")
        if targets is None:
            model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
            raise JumploraError(
                f"no default target modules for model type {model_type!r}: pass targets "
                f"(linear modules: {_short_list(sorted({n.rsplit('.', 1)[-1] for n in linear}))})"
            )
        names = [n for n in linear if n.rsplit(".", 1)[-1] in targets or any(n.endswith("." + t) for t in targets)]
        if not names:
            raise JumploraError(
                f"target modules {', '.join(targets)} match nothing in the model: choose among its linear modules "
                f"{_short_list(sorted({n.rsplit('.', 1)[-1] for n in linear}))}"
            )
        return names

    def _group_key(self, name: str) -> str:
        # ModuleDict keys may not contain dots.
        return "model" if self.config.threshold_mode == "global" else layout.block_of(name).replace(".", "/")

    def _make_groups(self, names: list[str]) -> dict[str, ThresholdGroup]:
        device = self.model.get_submodule(names[0]).weight.device
        keys = dict.fromkeys(self._group_key(n) for n in names)
        groups = nn.ModuleDict({k: ThresholdGroup(self.config.initial_log_threshold, device) for k in keys})
        # Registered on the model so that model.to(...) and model.parameters() see the thresholds.
        self.model.add_module(THRESHOLDS_ATTR, groups)
        return dict(groups.items())

    # -- training -----------------------------------------------------------------------------

    def parameters(self) -> list[nn.Parameter]:
        """The trainable parameters: every A and B, and each group's log τ."""
        params = [p for layer in self.layers.values() for p in (layer.lora_A, layer.lora_B)]
        return params + [g.log_threshold for g in self.groups.values()]

    def begin_task(self, num_steps: int) -> None:
        """Start the schedule of a task of ``num_steps`` optimiser steps (γ = 0, τ not yet set)."""
        self.schedule = JumpSchedule(num_steps, self.config.start_fraction, self.config.final_fraction)
        self.thresholds_ready = False
        self.gate_trace = {}
        self.set_step(0)

    def set_step(self, step: int) -> None:
        """Call before the forward of optimiser step ``step`` (0-based) of the task."""
        if self.config.kind != "jumplora":
            return
        if self.schedule is None:
            raise JumploraError("call begin_task(num_steps) before set_step(): the schedule needs the task length")
        self.step = step
        if step >= self.schedule.start and not self.thresholds_ready and self._has_update():
            self.initialise_thresholds()
            self.gate_trace["s_start"] = self.gate_state()
        if step == self.schedule.final and self.thresholds_ready and "s_final" not in self.gate_trace:
            self.gate_trace["s_final"] = self.gate_state()
        # Until τ is set the gate cannot act: a task whose S_start comes before ΔW has left zero
        # (S_start = 0 in very short tasks, where B is still all zeros) starts it one step later.
        self.gamma.set(self.schedule.gamma(step) if self.thresholds_ready else 0.0)

    @torch.no_grad()
    def _has_update(self) -> bool:
        return any(bool(layer.lora_B.any()) and bool(layer.lora_A.any()) for layer in self.layers.values())

    @property
    def gate_active(self) -> bool:
        """True from S_start on: the sparse ELLA mode then penalises ΔW_jump instead of ΔW."""
        return self.config.kind == "jumplora" and self.thresholds_ready

    @torch.no_grad()
    def initialise_thresholds(self) -> dict[str, float]:
        """Set each group's τ so that exactly k entries of its matrices have |ΔW| > τ.

        k = Σ r·(d_in + d_out) over the group's layers, the number of parameters of its A and B.
        τ is put halfway between the k-th and (k+1)-th largest of the group's n magnitudes (one
        partial selection, no full sort), so the k larger ones pass the strict gate |ΔW| > τ even
        after the rounding of exp(log τ). When k ≥ n every entry is kept.
        """
        members: dict[str, list[AdaptedLinear]] = {}
        for name, layer in self.layers.items():
            members.setdefault(self._group_key(name), []).append(layer)
        values = {}
        for key, layers in members.items():
            magnitudes = torch.cat([layer.delta().abs().flatten() for layer in layers])
            k = sum(layer.lora_A.numel() + layer.lora_B.numel() for layer in layers)
            if k < magnitudes.numel():
                top = magnitudes.topk(k + 1, sorted=False).values
                kth, next_below = top.topk(2, largest=False).values.flip(0)
                tau = (kth + next_below) / 2
            else:
                positive = magnitudes[magnitudes > 0]
                tau = positive.min() / 2 if positive.numel() else magnitudes.new_tensor(0.0)
            # A ΔW that is still exactly zero (nothing learned yet) would give log τ = −inf.
            tau = tau.clamp_min(torch.finfo(magnitudes.dtype).tiny)
            self.groups[key].log_threshold.copy_(tau.log())
            values[key] = float(tau)
        self.thresholds_ready = True
        return values

    @torch.no_grad()
    def kept_fractions(self) -> dict[str, float]:
        """Per group, the fraction of its entries the gate keeps now: Σ 1[|ΔW| > τ] / n.

        At S_start it is k/n (the initialisation); afterwards it grows when |ΔW| grows faster than τ,
        and its value at the end of the task is 1 − the merged update's sparsity.
        """
        kept: dict[str, list[torch.Tensor]] = {}
        for name, layer in self.layers.items():
            delta = layer.delta()
            kept.setdefault(self._group_key(name), []).append(
                torch.stack([(delta.abs() > layer.threshold()).sum().double(),
                             torch.tensor(float(delta.numel()), dtype=torch.float64, device=delta.device)]))
        totals = {key: torch.stack(pairs).sum(0).tolist() for key, pairs in kept.items()}
        return {key.replace("/", "."): float(k / n) for key, (k, n) in totals.items()}

    def gate_state(self) -> dict[str, dict[str, float]]:
        """``{"kept": kept_fractions(), "tau": thresholds()}``, per group."""
        return {"kept": self.kept_fractions(), "tau": self.thresholds()}

    @torch.no_grad()
    def thresholds(self) -> dict[str, float]:
        """τ of each group, keyed by block name ("model" for the global group)."""
        return {key.replace("/", "."): float(g()) for key, g in self.groups.items()}

    def effective_gamma(self, mode: str = "sparse") -> float:
        """The γ for which ΔW_eff = ΔW_interp(γ), the update the ELLA penalty sees.

        Plain LoRA, or JumpLoRA before S_start: 0 (ΔW itself). JumpLoRA ``sparse`` (Algorithm 1
        line 16) from S_start on: 1 (ΔW_jump). ``interpolated`` (Table 3 ablation): the layers' γ.
        """
        if self.config.kind != "jumplora" or not self.thresholds_ready:
            return 0.0
        return 1.0 if mode == "sparse" else self.gamma.value

    def stacked_factors(
        self, names: list[str] | None = None, max_entries: int | None = None, thresholds: bool = True
    ) -> list[tuple]:
        """``(layer names, A (L, r, d_in), B (L, d_out, r), τ (L, 1, 1) or None)`` per shape of layer.

        The factors of ``names`` (every layer by default) stacked, differentiable, so that a
        computation over every layer at each step is a few batched kernels per shape instead of a
        few per layer. τ is each layer's group threshold (None for plain LoRA or ``thresholds=False``:
        a τ in the graph that gets no gradient would still count as used under DDP). ``max_entries``
        caps L·d_out·d_in of a stack (a shape's layers are then split; at least one per stack).
        """
        names = tuple(self.layers) if names is None else tuple(names)
        out = []
        for members in self._stack_members(names, max_entries):
            layers = [self.layers[n] for n in members]
            tau = None
            if self.groups and thresholds:
                tau = torch.stack([self.groups[self._group_key(n)].log_threshold for n in members]).exp().view(-1, 1, 1)
            out.append((members, torch.stack([l.lora_A for l in layers]), torch.stack([l.lora_B for l in layers]), tau))
        return out

    def _stack_members(self, names: tuple[str, ...], max_entries: int | None) -> list[tuple[str, ...]]:
        """The layer names of each stack of :meth:`stacked_factors`: fixed for a set of layers, so
        worked out once, not at every step."""
        cache = self._stack_cache
        if (names, max_entries) not in cache:
            by_shape: dict[tuple, list[list[str]]] = {}
            for name in names:
                A, B = self.layers[name].lora_A, self.layers[name].lora_B
                stacks = by_shape.setdefault((B.shape[0], A.shape[1], A.dtype, A.device), [[]])
                if stacks[-1] and max_entries is not None and (len(stacks[-1]) + 1) * B.shape[0] * A.shape[1] > max_entries:
                    stacks.append([])
                stacks[-1].append(name)
            cache[(names, max_entries)] = [tuple(m) for stacks in by_shape.values() for m in stacks]
        return cache[(names, max_entries)]

    # -- end of task --------------------------------------------------------------------------

    @torch.no_grad()
    def merge_and_unload(self) -> TaskUpdate:
        """W ← W + β·ΔW_final on every layer, put the original modules back and return the update.

        JumpLoRA: ΔW_final = ΔW ⊙ H(|ΔW| − τ) (hard gate; τ is initialised now if the task ended
        before S_start). Plain LoRA: ΔW_final = B·A.
        """
        if self.config.kind == "jumplora" and not self.thresholds_ready:
            self.initialise_thresholds()
        deltas = {}
        for name, layer in self.layers.items():
            delta = layer.final_delta()
            if not torch.isfinite(delta).all():
                raise JumploraError(f"the update of {name} is not finite: the task diverged; lower the learning rate")
            deltas[name] = delta
        # A plain LoRA update is exactly (B·A)·β: its factors are what is saved (adapters/update.py).
        factors = {name: (layer.lora_A, layer.lora_B, layer.scaling) for name, layer in self.layers.items()} \
            if self.config.kind == "lora" else None
        update = TaskUpdate.from_linear_deltas(self.model, deltas, kind=self.config.kind, factors=factors)
        self.unload()
        update.apply(self.model)
        return update

    def unload(self) -> None:
        """Put the original modules back without merging anything."""
        for name, layer in self.layers.items():
            self.model.set_submodule(name, layer.base_layer)
        if hasattr(self.model, THRESHOLDS_ATTR):
            delattr(self.model, THRESHOLDS_ATTR)
        self.layers = {}


def _short_list(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "") if names else "(none)"
