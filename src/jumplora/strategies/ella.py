"""ELLA's penalty against the sum of past updates (Biswas et al.), the plug-in JumpLoRA is paired with.

    penalty_t = λ_t · (1/L) · Σ_layers ‖ΔW_eff ⊙ W_past‖²_F,    W_past = Σ_{s<t} β·ΔW_final(s)

W_past is the sum of every earlier task's merged update of that layer and L the number of adapted
layers that have a past; λ_t is the weight of task t (the paper's per-order values by default). The penalty pushes the new update away from the entries that earlier
tasks changed most. ΔW_eff is β·B·A for plain LoRA; for JumpLoRA it is ΔW_interp at the γ of
``AdapterSet.effective_gamma`` (``sparse`` by default: ΔW_jump from S_start on; ``interpolated`` as
the ablation). The memory is one matrix per adapted layer whatever the number of tasks.

Cost. The penalty is taken at every step over every adapted layer, so it is computed per shape of
layer, not per layer: A, B and τ of the layers of one shape are stacked and one batched product
gives their ΔW. Its gradient is written by hand with the JumpLoRA layer's own kernels (compiled
on CUDA): with U = β·ΔW_eff and P = W_past,

    ∂/∂U [c·Σ (U ⊙ P)²] = 2c·U ⊙ P²,

from which ``adapter_gradients`` gives ∂/∂A, ∂/∂B and ∂/∂τ exactly as for the layer's weight
gradient. ΔW is recomputed in the backward, so no d_out×d_in tensor is kept in between; autograd
keeps one per layer for LoRA and two for JumpLoRA (``saved_mib`` of benchmarks/ella.py).
"""

from __future__ import annotations

import torch

from torch import nn

from jumplora.adapters import AdapterSet, TaskUpdate
from jumplora import layout
from jumplora.adapters.layer import Kernels, adapter_gradients
from jumplora.errors import JumploraError
from jumplora.gate import interpolated_update
from jumplora.strategies.penalty import TaskEnd

# JumpLoRA + ELLA: the penalty sees ΔW_jump from S_start on (sparse, Algorithm 1 line 16) or
# ΔW_interp (interpolated, the Table 3 ablation).
ELLA_DELTA_MODES = ("sparse", "interpolated")

# The most entries L·d_out·d_in in one stack. On the CPU a stack's temporaries should stay in the
# cache: 2^19 (2 MiB in fp32) measured fastest on MiniLM (benchmarks/ella.py; whole-model stacks
# ran up to 2x slower than a per-layer loop there, 4.5x on T5-large). On a GPU the cap only bounds
# the backward's temporaries (a few of 128 MiB each); the launches saved are per stack.
CPU_STACK_ENTRIES = 2**19
DEVICE_STACK_ENTRIES = 2**25


# λ auto: the unweighted penalty and the task loss are compared over this many steps (the first
# ones of a task whose penalty is not zero: at its first step B = 0, so ΔW and the penalty are 0).
BALANCE_STEPS = 5


class EllaPenalty:
    """Holds W_past per layer, in the (d_out, d_in) layout, in fp32 on the device of the layer's weight.

    W_past is also stacked by shape (see the module docstring); the stacks are built once after each
    change and ``past[name]`` then points into them, so it is held once. ``lambdas``: λ_t per task
    (the last one serves longer streams); ``ella(adapters, lam)`` computes the term for any λ.

    A λ_t of None is chosen by the ELLA paper's balance rule (App. A.2: the cross-entropy and the
    penalty of the same size): over the first :data:`BALANCE_STEPS` steps of task t whose penalty
    P is not zero, nothing is added and λ_t = Σ loss / Σ P; from then on λ_t·P is. ``balance[t]``
    records λ_t, the steps it was measured on, the mean of λ_t·P / loss over those steps
    (``ratio_at_choice``, near 1 by the rule) and Σ λ_t·P / Σ loss over the rest of the task
    (``ratio_after``: lower, as training then pulls P down).
    """

    PREFIX = "ella/"

    def __init__(self, delta_mode: str = "sparse", lambdas: list[float | None] | None = None) -> None:
        if delta_mode not in ELLA_DELTA_MODES:
            raise JumploraError(f"unknown ELLA delta mode {delta_mode!r}: use one of {', '.join(ELLA_DELTA_MODES)}")
        self.delta_mode = delta_mode
        self.lambdas = list(lambdas or [])
        self.past: dict[str, torch.Tensor] = {}
        self._stacks: dict[tuple[str, ...], tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = {}
        self.balance: dict[int, dict] = {}
        self._task, self._probe, self._measured, self._after = 0, None, [], []

    def value(self, model: nn.Module, adapters: AdapterSet | None, task: int) -> torch.Tensor | None:
        self._task = task
        lam = self.lambdas[min(task, len(self.lambdas) - 1)]
        if lam is not None or not self.past:
            return self(adapters, lam or 0.0)
        with torch.no_grad():  # λ not chosen yet: the penalty is measured, not added
            self._probe = self(adapters, 1.0).detach()
        return None

    def observe(self, loss: float, term: float) -> None:
        """After each step: the task loss and the term that was added (λ auto, see the class)."""
        if self._probe is not None:
            raw, self._probe = float(self._probe), None
            if raw > 0:
                self._measured.append((loss, raw))
            if len(self._measured) == BALANCE_STEPS:
                self._choose()
        elif self._task in self.balance:
            self._after.append((loss, term))

    def _choose(self) -> None:
        losses, penalties = zip(*self._measured)
        lam = sum(losses) / sum(penalties)
        self.lambdas[min(self._task, len(self.lambdas) - 1)] = lam
        ratios = [lam * p / loss for loss, p in self._measured if loss > 0]  # a loss of exactly 0 has no ratio
        at_choice = sum(ratios) / len(ratios) if ratios else None
        self.balance[self._task] = {"lambda": lam, "steps": len(self._measured), "ratio_at_choice": at_choice}

    def remember(self, ending: TaskEnd) -> None:
        if self._measured and ending.task not in self.balance:  # a task shorter than the measurement
            self._choose()
        if ending.task in self.balance and self._after:
            added, loss = sum(t for _, t in self._after), sum(l for l, _ in self._after)
            self.balance[ending.task]["ratio_after"] = added / loss if loss else None
        self._probe, self._measured, self._after = None, [], []
        if ending.update is not None:
            self.add(ending.update, ending.model)

    def state(self) -> dict[str, torch.Tensor]:
        return {self.PREFIX + name: past for name, past in self.past.items()}

    def load_state(self, tensors: dict[str, torch.Tensor], device: torch.device) -> None:
        self.past = {key[len(self.PREFIX):]: value.to(device) for key, value in tensors.items()
                     if key.startswith(self.PREFIX)}
        self._stacks.clear()

    def __call__(self, adapters: AdapterSet, lam: float) -> torch.Tensor:
        if lam < 0:
            raise JumploraError(f"the ELLA weight lambda must be >= 0, got {lam}")
        names = [n for n in adapters.layers if n in self.past]
        if lam == 0 or not names:
            return torch.zeros((), device=next(iter(adapters.layers.values())).lora_A.device)
        config = adapters.config
        gamma = adapters.effective_gamma(self.delta_mode)
        on_cpu = adapters.layers[names[0]].lora_A.device.type == "cpu"
        total = sum(
            _StackPenalty.apply(A, B, tau, self.stacked_past(members), config.scaling, gamma,
                                config.bandwidth, config.reduction == "mean", adapters.kernels)
            for members, A, B, tau in adapters.stacked_factors(
                names, CPU_STACK_ENTRIES if on_cpu else DEVICE_STACK_ENTRIES, thresholds=gamma != 0.0)
        )
        return lam * total / len(names)

    def stacked_past(self, names: tuple[str, ...]) -> torch.Tensor:
        """W_past of ``names`` as one (L, d_out, d_in) tensor, rebuilt only when ``past`` changed."""
        cached = self._stacks.get(names)
        if cached is None or any(self.past[n] is not view for n, view in zip(names, cached[1])):
            stack = torch.stack([self.past[n] for n in names])
            views = stack.unbind(0)
            self.past.update(zip(names, views))  # the per-layer tensors are freed: one copy in memory
            cached = self._stacks[names] = (stack, views)
        return cached[0]

    @torch.no_grad()
    def add(self, update: TaskUpdate, model) -> None:
        """W_past ← W_past + the task's merged update, kept on the weight's device in fp32."""
        self._stacks.clear()
        for name, delta in update.linear_deltas(model).items():
            device = layout.unwrap(model.get_submodule(name)).weight.device
            delta = delta.to(device=device, dtype=torch.float32)
            self.past[name] = self.past[name] + delta if name in self.past else delta.clone()


class _StackPenalty(torch.autograd.Function):
    """Σ (U ⊙ P)² for a stack of layers, U = β·ΔW_interp(γ); the backward of the module docstring.

    With γ = 0 (plain LoRA, or before S_start) U = β·ΔW and ∂/∂ΔW = β·∂/∂U: the gate's
    elementwise work is skipped, and τ gets no gradient.
    """

    @staticmethod
    def forward(ctx, lora_A, lora_B, threshold, past, scaling, gamma, bandwidth, mean, kernels: Kernels):
        gated = gamma != 0.0
        gamma_t = lora_A.new_full((), gamma) if gated else None  # a fill kernel, no host-to-device copy
        update = _update(lora_B @ lora_A, threshold, scaling, gamma_t, kernels)
        ctx.save_for_backward(lora_A, lora_B, threshold if gated else None, past, gamma_t)
        ctx.constants = (scaling, bandwidth, mean, kernels)
        return (update * past).square().sum()

    @staticmethod
    def backward(ctx, grad_value):
        lora_A, lora_B, tau, past, gamma = ctx.saved_tensors
        scaling, bandwidth, mean, kernels = ctx.constants
        delta = lora_B @ lora_A  # recomputed once, not kept from the forward
        grad_update = (2 * grad_value) * _update(delta, tau, scaling, gamma, kernels) * past.square()
        nothing = (None,) * 6
        if gamma is None:
            grad_delta = grad_update * scaling
            return lora_B.mT @ grad_delta, grad_delta @ lora_A.mT, *nothing, None
        grad_A, grad_B, grad_tau = kernels.call(
            adapter_gradients, lora_A.device, grad_update, delta, lora_A, lora_B, tau, scaling, gamma, bandwidth, mean)
        return grad_A, grad_B, grad_tau if ctx.needs_input_grad[2] else None, *nothing


def _update(delta, threshold, scaling, gamma, kernels: Kernels):
    """U = β·ΔW_interp(γ) from ΔW; γ None means 0 (no gate)."""
    if gamma is None:
        return delta * scaling
    return kernels.call(interpolated_update, delta.device, delta, threshold, scaling, gamma)
