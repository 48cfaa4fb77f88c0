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
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from jumplora.adapters import _compat
from jumplora.gate import jump_gate


class ThresholdGroup(nn.Module):
    """One learned threshold τ = exp(log τ), shared by the adapted matrices of a group.

    The exponential keeps τ > 0 and makes its updates relative (the authors' parametrisation).
    """

    def __init__(self, initial_log_threshold: float, device=None) -> None:
        super().__init__()
        self.log_threshold = nn.Parameter(torch.tensor(float(initial_log_threshold), device=device))

    def forward(self) -> torch.Tensor:
        return self.log_threshold.exp()


class AdaptedLinear(nn.Module):
    """A frozen ``base_layer`` (nn.Linear or GPT-2 Conv1D) plus a LoRA or JumpLoRA adapter."""

    def __init__(self, base_layer: nn.Module, config, threshold: ThresholdGroup | None) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.kind = config.kind
        self.scaling = config.scaling
        self.bandwidth = config.bandwidth
        self.reduction = config.reduction
        self.fused = config.fused
        d_in, d_out = _compat.in_out_features(base_layer)
        weight = base_layer.weight
        # Adapters live in fp32 even when the frozen base is stored in bf16: the optimiser state and
        # the small per-step updates need the precision, and they are a tiny part of the memory.
        dtype = weight.dtype if weight.dtype == torch.float64 else torch.float32
        self.lora_A = nn.Parameter(torch.empty(config.r, d_in, device=weight.device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(d_out, config.r, device=weight.device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=5**0.5)
        self.dropout = nn.Dropout(config.dropout) if self.kind == "lora" and config.dropout > 0 else nn.Identity()
        # Not registered as a submodule: a group is shared by many layers and owned by the AdapterSet.
        self.__dict__["threshold"] = threshold
        # γ as the forward reads it: a 0-dim tensor changed in place and a flag for the path. A
        # compiled model (--compile) then sees the γ of every step as the same input, and is
        # rebuilt only when the flag flips (at S_start), not at every step. Not a buffer: DDP would
        # broadcast it before every forward, and state_dict would carry it.
        self._gamma = 0.0
        self._gate_on = False
        self.__dict__["_gamma_value"] = self.lora_A.new_zeros(())
        self.train(base_layer.training)  # a model in eval mode must not start dropping out

    @property
    def gamma(self) -> float:
        """The interpolation weight γ of the current step (set by AdapterSet.set_step)."""
        return self._gamma

    @gamma.setter
    def gamma(self, value: float) -> None:
        value = float(value)
        if value != self._gamma:
            self._gamma, self._gate_on = value, value != 0.0
            # fill_ on the device: no host-to-device copy, which would wait for the queued work.
            self.__dict__["_gamma_value"].fill_(value)

    def _gamma_tensor(self) -> torch.Tensor:
        tensor = self.__dict__["_gamma_value"]
        if tensor.device != self.lora_A.device or tensor.dtype != self.lora_A.dtype:  # the model was moved
            tensor = self.lora_A.new_full((), self._gamma)
            self.__dict__["_gamma_value"] = tensor
        return tensor

    def delta(self) -> torch.Tensor:
        """ΔW = B·A, (d_out, d_in), unscaled."""
        return self.lora_B @ self.lora_A

    def jumped_delta(self) -> torch.Tensor:
        """ΔW_jump = ΔW ⊙ H(|ΔW| − τ), differentiable in A, B and τ."""
        return jump_gate(self.delta(), self.threshold(), self.bandwidth, reduction=self.reduction)

    def interpolated_delta(self) -> torch.Tensor:
        """ΔW_interp = (1−γ)·ΔW + γ·ΔW_jump (= ΔW for plain LoRA or γ = 0)."""
        if self.kind == "lora" or not self._gate_on:
            return self.delta()
        return torch.lerp(self.delta(), self.jumped_delta(), self._gamma_tensor())

    def final_delta(self) -> torch.Tensor:
        """The update merged at the end of the task, β·ΔW_final, (d_out, d_in), no gradient."""
        with torch.no_grad():
            delta = self.delta()
            if self.kind == "jumplora":
                delta = delta * (delta.abs() > self.threshold())
            return delta * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "lora" or not self._gate_on:
            # The low-rank path: what plain LoRA costs, no d_out×d_in matrix.
            low_rank = F.linear(F.linear(self.dropout(x).to(self.lora_A.dtype), self.lora_A), self.lora_B)
            return self.base_layer(x) + (self.scaling * low_rank).to(x.dtype)
        weight = _compat.linear_weight(self.base_layer)
        bias = self.base_layer.bias
        if self.fused:
            return _FoldedJumpLinear.apply(
                x, weight, bias, self.lora_A, self.lora_B, self.threshold(),
                self.scaling, self._gamma_tensor(), self.bandwidth, self.reduction,
            )
        folded = weight + (self.scaling * self.interpolated_delta()).to(weight.dtype)
        return F.linear(x, folded, bias)


def gate_factor(delta, threshold, scaling: float, gamma):
    """β·((1−γ) + γ·H(|ΔW| − τ)) per entry, so that β·ΔW_interp = ΔW ⊙ this factor."""
    return torch.where(delta.abs() > threshold, scaling, scaling * (1 - gamma))


def interpolated_update(delta, threshold, scaling: float, gamma):
    """β·ΔW_interp from ΔW = B·A, no gradient graph of its own.

    Also for stacks of L layers of one shape: ΔW (L, d_out, d_in) with τ (L, 1, 1).
    """
    return delta * gate_factor(delta, threshold, scaling, gamma)


def fold_weight(weight, delta, threshold, scaling: float, gamma):
    """W + β·ΔW_interp, in W's dtype."""
    return interpolated_update(delta, threshold, scaling, gamma).to(weight.dtype) + weight


def adapter_gradients(grad_weight, delta, lora_A, lora_B, threshold, scaling: float, gamma, bandwidth: float, mean: bool,
                      factor=None):
    """∂L/∂A, ∂L/∂B, ∂L/∂τ from G = ∂L/∂(β·ΔW_interp), here the weight gradient (module docstring).

    ``delta`` is ΔW = B·A, computed once by the caller, and ``factor`` its :func:`gate_factor` if
    the caller has it. The kernel terms of Eq. 2 are written |ΔW ± τ| < ε/2, the same set as
    −½ < (∓ΔW − τ)/ε < ½ without the divisions; both halves are kept, as they overlap when
    τ < ε/2. Works on stacks like :func:`interpolated_update`; ∂L/∂τ then has one entry per
    layer, (L, 1, 1).
    """
    half = bandwidth / 2
    band = ((delta + threshold).abs() < half).to(delta.dtype) - ((delta - threshold).abs() < half).to(delta.dtype)
    grad_tau = (grad_weight * band).sum((-2, -1), keepdim=True) * (scaling * gamma * threshold / bandwidth)
    if mean:
        grad_tau = grad_tau / (delta.shape[-2] * delta.shape[-1])
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


class _Kernels:
    """The functions above as run on a device: plain PyTorch on the CPU (what the tests cover); on
    CUDA compiled by torch.compile into a few fused kernels, because there the ~35 small
    elementwise launches per layer of the plain code cost more host time than the GPU spends on
    them (benchmarks/layer.py). If compilation fails, the plain code is used from then on.

    ``compile_on``: the device types whose calls are compiled. The benchmarks' ``--kernels`` flips
    it, to measure the other way on the same device (a compiled call has a fixed host cost of its
    own: guards, wrappers, launches)."""

    def __init__(self) -> None:
        self.compile_on = {"cuda"}
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


KERNELS = _Kernels()


class _FoldedJumpLinear(torch.autograd.Function):
    """y = x·(W + β·ΔW_interp)ᵀ + b with the backward of the module docstring.

    Saves only x and the small factors; ΔW and the gate mask are recomputed in the backward (a
    d_out×r×d_in product, small next to the token matmuls), so no d_out×d_in tensor is kept between
    forward and backward. γ comes as a 0-dim tensor so that a compiled kernel is not rebuilt when
    it changes every step.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, threshold, scaling, gamma, bandwidth, reduction):
        folded = KERNELS.call(fold_weight, x.device, weight, lora_B @ lora_A, threshold, scaling, gamma)
        ctx.save_for_backward(x, weight, bias, lora_A, lora_B, threshold, gamma)
        ctx.constants = (scaling, bandwidth, reduction)
        return F.linear(x, folded, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, lora_A, lora_B, threshold, gamma = ctx.saved_tensors
        scaling, bandwidth, reduction = ctx.constants
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
                folded, grad_A, grad_B, grad_tau = KERNELS.call(
                    folded_backward, x.device, weight, grad_weight, delta, lora_A, lora_B, threshold, scaling, gamma,
                    bandwidth, reduction == "mean")
                grad_tau = grad_tau.reshape(threshold.shape)
        if needs[0]:
            if folded is None:
                folded = KERNELS.call(fold_weight, x.device, weight, delta, threshold, scaling, gamma)
            grad_x = grad_out @ folded
        return grad_x, grad_w, grad_b, grad_A, grad_B, grad_tau, None, None, None, None
