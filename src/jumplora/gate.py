"""The JumpReLU gate of JumpLoRA (paper Eq. 1-2): tensors in, tensors out, no model code.

A LoRA update ΔW = B·A is gated entry by entry with a learned threshold τ > 0:

    JumpReLU_τ(x) = x · H(x − τ)                        (H = Heaviside step, H(0) = 0)
    ΔW_jump = JumpReLU_τ(ΔW) − JumpReLU_τ(−ΔW) = ΔW ⊙ H(|ΔW| − τ)

so only the entries with |ΔW| > τ survive. Inside a task the gate comes in gradually: with γ going
from 0 to 1 the layer uses ΔW_interp = (1−γ)·ΔW + γ·ΔW_jump, scaled by β = α/r.

H has no useful derivative, so the backward pass uses the straight-through estimator of JumpReLU
sparse autoencoders:

* w.r.t. ΔW: the gradient passes on kept entries (|ΔW| > τ) and is zero elsewhere;
* w.r.t. τ (Eq. 2): the pseudo-derivative with a rectangle kernel K(u) = 1[−½ < u < ½] of bandwidth ε,

      ∂JumpReLU_τ(x)/∂τ := −(τ/ε) · K((x − τ)/ε),

  applied to both halves of the symmetric gate, so per entry

      ∂ΔW_jump/∂τ = (τ/ε) · (1[|ΔW + τ| < ε/2] − 1[|ΔW − τ| < ε/2])

  (K((∓ΔW − τ)/ε) written without the divisions; the two bands overlap when τ < ε/2 and both are
  kept). Only entries within ε/2 of ±τ contribute. The per-entry terms g ⊙ ∂ΔW_jump/∂τ are
  reduced to one number per threshold: ``"mean"`` over the matrix's entries (the authors'
  implementation, the default) or ``"sum"`` (JumpReLU SAE libraries). The two differ by the
  factor numel(ΔW): plain SGD would need a learning rate that much smaller with ``"sum"``; Adam
  divides by the running RMS of the gradient, so the scale cancels except where the gradient is
  near Adam's ε (1e-8), which a mean over a million entries can reach.

The functions below are the one place this math is written: the autograd gate :func:`jump_gate`,
the fused layer (``adapters.layer``) and ELLA's penalty (``strategies.ella``) all call them. They
take a single matrix or a stack of L matrices (L, d_out, d_in) with one τ each (L, 1, 1).
"""

from __future__ import annotations

import torch

REDUCTIONS = ("mean", "sum")


def gate_factor(delta: torch.Tensor, threshold: torch.Tensor, scaling: float, gamma) -> torch.Tensor:
    """β·((1−γ) + γ·H(|ΔW| − τ)) per entry, so that β·ΔW_interp = ΔW ⊙ this factor."""
    return torch.where(delta.abs() > threshold, scaling, scaling * (1 - gamma))


def interpolated_update(delta: torch.Tensor, threshold: torch.Tensor, scaling: float, gamma) -> torch.Tensor:
    """β·ΔW_interp = β·((1−γ)·ΔW + γ·ΔW_jump) from ΔW = B·A (γ = 1: β·ΔW_jump)."""
    return delta * gate_factor(delta, threshold, scaling, gamma)


def threshold_gradient(grad: torch.Tensor, delta: torch.Tensor, threshold: torch.Tensor, bandwidth: float,
                       mean: bool, scale=1.0) -> torch.Tensor:
    """reduce(scale · grad ⊙ ∂ΔW_jump/∂τ): the gradient of τ given ``grad`` = ∂L/∂(the gated term).

    Reduced over the entries that share τ (the dimensions where τ has size 1), summed or, with
    ``mean``, averaged; the result has τ's shape. ``scale`` is β·γ when ``grad`` is the gradient of
    β·ΔW_interp.
    """
    half = bandwidth / 2
    band = ((delta + threshold).abs() < half).to(delta.dtype) - ((delta - threshold).abs() < half).to(delta.dtype)
    shape = (1,) * (delta.dim() - threshold.dim()) + tuple(threshold.shape)
    dims = tuple(d for d, size in enumerate(shape) if size == 1)
    grad_tau = (grad * band).sum(dims, keepdim=True) * (scale * threshold / bandwidth)
    if mean:  # the entries per threshold
        grad_tau = grad_tau / (delta.numel() // threshold.numel())
    return grad_tau.reshape(threshold.shape)


class _JumpGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, delta, threshold, bandwidth, reduction):
        ctx.save_for_backward(delta, threshold)
        ctx.bandwidth, ctx.reduction = bandwidth, reduction
        return delta * (delta.abs() > threshold)

    @staticmethod
    def backward(ctx, grad_out):
        delta, threshold = ctx.saved_tensors
        grad_delta = grad_threshold = None
        if ctx.needs_input_grad[0]:
            grad_delta = grad_out * (delta.abs() > threshold)
        if ctx.needs_input_grad[1]:
            grad_threshold = threshold_gradient(grad_out, delta, threshold, ctx.bandwidth, ctx.reduction == "mean")
        return grad_delta, grad_threshold, None, None


def jump_gate(
    delta: torch.Tensor,
    threshold: torch.Tensor,
    bandwidth: float = 1e-3,
    *,
    reduction: str = "mean",
) -> torch.Tensor:
    """ΔW_jump = ΔW ⊙ H(|ΔW| − τ), differentiable in ΔW and τ by the estimator above.

    Args:
        delta: the update ΔW, any shape.
        threshold: τ, a one-element tensor (one threshold shared by every entry; threshold groups
            share it across matrices). Give it ``requires_grad=True`` to learn it.
        bandwidth: ε of the rectangle kernel (paper default 1e-3).
        reduction: how the per-entry threshold gradients are reduced: ``"mean"`` or ``"sum"``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}: use one of {', '.join(REDUCTIONS)}")
    if threshold.numel() != 1:
        raise ValueError(f"threshold must hold one value, got shape {tuple(threshold.shape)}")
    if bandwidth <= 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    return _JumpGate.apply(delta, threshold, bandwidth, reduction)
