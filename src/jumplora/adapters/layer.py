"""The adapted linear layer: plain LoRA or JumpLoRA around a frozen base layer.

For a base layer y = x·Wᵀ + b (W ∈ R^{d_out×d_in}) the adapter adds ΔW = B·A with scaling β = α/r:

* plain LoRA:  y = x·Wᵀ + b + β·(dropout(x)·Aᵀ)·Bᵀ
* JumpLoRA:    y = x·(W + β·ΔW_interp)ᵀ + b,  ΔW_interp = (1−γ)·ΔW + γ·ΔW ⊙ H(|ΔW| − τ)

JumpLoRA's cost is plain LoRA's: while γ = 0 (before S_start) ΔW_interp = ΔW and the low-rank
path is taken, no d_out×d_in matrix is formed. From S_start on, β·ΔW_interp is folded into the
weight, so the forward is still one matmul over the tokens; the authors' layer computes x·ΔWᵀ as a
second one (≈25% per training step). The backward then needs one extra matmul over the tokens, the
weight gradient G = gᵀ·x, from which the gradients of A, B and τ follow by small products:

    ∂L/∂ΔW = β·G ⊙ ((1−γ) + γ·H(|ΔW|−τ)),  ∂L/∂B = ∂L/∂ΔW·Aᵀ,  ∂L/∂A = Bᵀ·∂L/∂ΔW,
    ∂L/∂τ  = reduce(β·γ·G ⊙ ∂ΔW_jump/∂τ)   (see jumplora.gate).

The γ of the current step is one :class:`Gamma` shared by the layers of an adapter set, and the
elementwise work runs through that set's :class:`Kernels` (plain PyTorch, or compiled on CUDA).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from jumplora import layout
from jumplora.gate import gate_factor, interpolated_update, jump_gate, threshold_gradient


class ThresholdGroup(nn.Module):
    """One learned threshold τ = exp(log τ), shared by the adapted matrices of a group.

    The exponential keeps τ > 0 and makes its updates relative (the authors' parametrisation).
    """

    def __init__(self, initial_log_threshold: float, device=None) -> None:
        super().__init__()
        self.log_threshold = nn.Parameter(torch.tensor(float(initial_log_threshold), device=device))

    def forward(self) -> torch.Tensor:
        return self.log_threshold.exp()


class Gamma:
    """γ of the current step, shared by every layer of an adapter set.

    The forward reads it as a 0-dim tensor changed in place, so a compiled model (--compile) sees
    the γ of every step as the same input and is rebuilt only when the gate turns on (at S_start),
    not at every step. The tensor is made when the first layer is built, outside any compiled
    code (made inside, its value would be traced as a constant). It is not a buffer: DDP would
    broadcast it before every forward and state_dict would carry it.
    """

    def __init__(self) -> None:
        self.value = 0.0
        # A flag of its own, not `value != 0`: a compiled forward guards on what it reads, and a
        # bool changes once per task (at S_start) where the float changes at every step.
        self.on = False
        self._tensor: torch.Tensor | None = None

    def set(self, value: float) -> None:
        value = float(value)
        if value != self.value:
            self.value, self.on = value, value != 0.0
            if self._tensor is not None:
                self._tensor.fill_(value)  # on the device: no host-to-device copy, which would wait

    def tensor(self, like: torch.Tensor) -> torch.Tensor:
        """γ as a 0-dim tensor on ``like``'s device and dtype (made again if the model was moved)."""
        if self._tensor is None or self._tensor.device != like.device or self._tensor.dtype != like.dtype:
            self._tensor = like.new_full((), self.value)
        return self._tensor


class Kernels:
    """How the layer's elementwise functions run on a device: plain PyTorch on the CPU (what the
    tests cover); on CUDA compiled by torch.compile into a few fused kernels, because there the ~35
    small elementwise launches per layer of the plain code cost more host time than the GPU spends
    on them (benchmarks/layer.py). If compilation fails, the plain code is used from then on.

    One object per adapter set (its layers and ELLA's penalty share it). ``compile_on``: the device
    types whose calls are compiled; the benchmarks' ``--kernels`` passes the other choice, to
    measure it on the same device (a compiled call has a fixed host cost of its own: guards,
    wrappers, launches).
    """

    def __init__(self, compile_on: frozenset[str] = frozenset({"cuda"})) -> None:
        self.compile_on = set(compile_on)
        self.compiled: dict = {}
        self.working: set = set()  # functions whose compiled form has run once
        self.failed = False

    def call(self, fn, device: torch.device, *args):
        # Inside a compiled model (--compile) the plain code is traced into the model's own graph.
        if device.type not in self.compile_on or self.failed or torch.compiler.is_compiling():
            return fn(*args)
        if fn in self.working:  # errors from here on are the run's own (out of memory...), not the compiler's
            return self.compiled[fn](*args)
        try:
            if fn not in self.compiled:
                self.compiled[fn] = torch.compile(fn, dynamic=False)
            result = self.compiled[fn](*args)
        except Exception as error:  # noqa: BLE001 - a compiler failure must not stop training
            warnings.warn(f"torch.compile of the JumpLoRA kernels failed ({type(error).__name__}); using eager PyTorch")
            self.failed = True
            return fn(*args)
        self.working.add(fn)
        return result


class _Shared:
    """What a layer uses but does not own (a plain object, so nn.Module does not register it as a
    submodule): its group's threshold, the set's γ and kernels."""

    def __init__(self, threshold: ThresholdGroup | None, gamma: Gamma, kernels: Kernels) -> None:
        self.threshold, self.gamma, self.kernels = threshold, gamma, kernels


class AdaptedLinear(nn.Module):
    """A frozen ``base_layer`` (nn.Linear or GPT-2 Conv1D) plus a LoRA or JumpLoRA adapter."""

    def __init__(self, base_layer: nn.Module, config, threshold: ThresholdGroup | None,
                 gamma: Gamma | None = None, kernels: Kernels | None = None) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.kind = config.kind
        self.scaling = config.scaling
        self.bandwidth = config.bandwidth
        self.reduction = config.reduction
        self.fused = config.fused
        d_in, d_out = layout.in_out_features(base_layer)
        weight = base_layer.weight
        # Adapters live in fp32 even when the frozen base is stored in bf16: the optimiser state and
        # the small per-step updates need the precision, and they are a tiny part of the memory.
        dtype = weight.dtype if weight.dtype == torch.float64 else torch.float32
        self.lora_A = nn.Parameter(torch.empty(config.r, d_in, device=weight.device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(d_out, config.r, device=weight.device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=5**0.5)
        self.dropout = nn.Dropout(config.dropout) if self.kind == "lora" and config.dropout > 0 else nn.Identity()
        self.shared = _Shared(threshold, gamma or Gamma(), kernels or Kernels())
        self.shared.gamma.tensor(self.lora_A)  # made now, on the adapters' device (see Gamma)
        self.train(base_layer.training)  # a model in eval mode must not start dropping out

    @property
    def threshold(self) -> ThresholdGroup | None:
        """The layer's threshold group (shared with the other layers of its group); call it for τ."""
        return self.shared.threshold

    @property
    def gamma(self) -> float:
        """The interpolation weight γ of the current step (shared by the adapter set's layers)."""
        return self.shared.gamma.value

    @gamma.setter
    def gamma(self, value: float) -> None:
        self.shared.gamma.set(value)

    def delta(self) -> torch.Tensor:
        """ΔW = B·A, (d_out, d_in), unscaled."""
        return self.lora_B @ self.lora_A

    def jumped_delta(self) -> torch.Tensor:
        """ΔW_jump = ΔW ⊙ H(|ΔW| − τ), differentiable in A, B and τ."""
        return jump_gate(self.delta(), self.threshold(), self.bandwidth, reduction=self.reduction)

    def interpolated_delta(self) -> torch.Tensor:
        """ΔW_interp = (1−γ)·ΔW + γ·ΔW_jump (= ΔW for plain LoRA or γ = 0)."""
        if self.kind == "lora" or not self.shared.gamma.on:
            return self.delta()
        return torch.lerp(self.delta(), self.jumped_delta(), self.shared.gamma.tensor(self.lora_A))

    def final_delta(self) -> torch.Tensor:
        """The update merged at the end of the task, β·ΔW_final, (d_out, d_in), no gradient."""
        with torch.no_grad():
            delta = self.delta()
            if self.kind == "jumplora":
                delta = delta * (delta.abs() > self.threshold())
            return delta * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "lora" or not self.shared.gamma.on:
            # The low-rank path: what plain LoRA costs, no d_out×d_in matrix.
            low_rank = F.linear(F.linear(self.dropout(x).to(self.lora_A.dtype), self.lora_A), self.lora_B)
            return self.base_layer(x) + (self.scaling * low_rank).to(x.dtype)
        weight = layout.linear_weight(self.base_layer)
        bias = self.base_layer.bias
        if self.fused:
            return _FoldedJumpLinear.apply(
                x, weight, bias, self.lora_A, self.lora_B, self.threshold(),
                self.scaling, self.shared.gamma.tensor(self.lora_A), self.bandwidth, self.reduction, self.shared.kernels,
            )
        folded = weight + (self.scaling * self.interpolated_delta()).to(weight.dtype)
        return F.linear(x, folded, bias)


def fold_weight(weight, delta, threshold, scaling: float, gamma):
    """W + β·ΔW_interp, in W's dtype."""
    return interpolated_update(delta, threshold, scaling, gamma).to(weight.dtype) + weight


def adapter_gradients(grad_weight, delta, lora_A, lora_B, threshold, scaling: float, gamma, bandwidth: float, mean: bool,
                      factor=None):
    """∂L/∂A, ∂L/∂B, ∂L/∂τ from G = ∂L/∂(β·ΔW_interp), here the weight gradient (module docstring).

    ``delta`` is ΔW = B·A, computed once by the caller, and ``factor`` its gate factor if the
    caller has it. Works on stacks of L layers of one shape (ΔW (L, d_out, d_in), τ (L, 1, 1));
    ∂L/∂τ then has one entry per layer, (L, 1, 1).
    """
    grad_tau = threshold_gradient(grad_weight, delta, threshold, bandwidth, mean, scale=scaling * gamma)
    if factor is None:
        factor = gate_factor(delta, threshold, scaling, gamma)
    grad_delta = grad_weight * factor
    return lora_B.mT @ grad_delta, grad_delta @ lora_A.mT, grad_tau


def folded_backward(weight, grad_weight, delta, lora_A, lora_B, threshold, scaling: float, gamma, bandwidth: float,
                    mean: bool):
    """The elementwise work of the layer's backward in one function (one compiled call on CUDA):
    W + β·ΔW_interp for the input gradient, and the adapter gradients, sharing the gate factor."""
    factor = gate_factor(delta, threshold, scaling, gamma)
    folded = (delta * factor).to(weight.dtype) + weight
    return folded, *adapter_gradients(grad_weight, delta, lora_A, lora_B, threshold, scaling, gamma, bandwidth, mean,
                                      factor)


class _FoldedJumpLinear(torch.autograd.Function):
    """y = x·(W + β·ΔW_interp)ᵀ + b with the backward of the module docstring.

    Saves only x and the small factors; ΔW and the gate mask are recomputed in the backward (a
    d_out×r×d_in product, small next to the token matmuls), so no d_out×d_in tensor is kept between
    forward and backward. γ comes as a 0-dim tensor so that a compiled kernel is not rebuilt when
    it changes every step.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, threshold, scaling, gamma, bandwidth, reduction, kernels):
        folded = kernels.call(fold_weight, x.device, weight, lora_B @ lora_A, threshold, scaling, gamma)
        ctx.save_for_backward(x, weight, bias, lora_A, lora_B, threshold, gamma)
        ctx.constants = (scaling, bandwidth, reduction, kernels)
        return F.linear(x, folded, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, lora_A, lora_B, threshold, gamma = ctx.saved_tensors
        scaling, bandwidth, reduction, kernels = ctx.constants
        needs = ctx.needs_input_grad
        grad_out = grad_out.to(x.dtype)  # under autocast the output was computed in a lower precision
        grad_x = grad_w = grad_b = grad_A = grad_B = grad_tau = None
        delta = lora_B @ lora_A  # once for every use below
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        if needs[2]:
            grad_b = g2.sum(0)
        folded = None
        if needs[1] or any(needs[3:6]):
            # The one extra matmul over the tokens: the weight gradient G = gᵀ·x.
            grad_weight = (g2.t() @ x.reshape(-1, x.shape[-1])).to(lora_A.dtype)
            if needs[1]:
                grad_w = grad_weight.to(weight.dtype, copy=True)
            if any(needs[3:6]):
                folded, grad_A, grad_B, grad_tau = kernels.call(
                    folded_backward, x.device, weight, grad_weight, delta, lora_A, lora_B, threshold, scaling, gamma,
                    bandwidth, reduction == "mean")
                grad_tau = grad_tau.reshape(threshold.shape)
        if needs[0]:
            if folded is None:
                folded = kernels.call(fold_weight, x.device, weight, delta, threshold, scaling, gamma)
            grad_x = grad_out @ folded
        return grad_x, grad_w, grad_b, grad_A, grad_B, grad_tau, None, None, None, None, None
