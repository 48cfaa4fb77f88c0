"""The JumpReLU gate of JumpLoRA (paper Eq. 1-2): tensors in, tensors out, no model code.

A LoRA update ΔW = B·A is gated entry by entry with a learned threshold τ > 0:

    JumpReLU_τ(x) = x · H(x − τ)                        (H = Heaviside step, H(0) = 0)
    ΔW_jump = JumpReLU_τ(ΔW) − JumpReLU_τ(−ΔW) = ΔW ⊙ H(|ΔW| − τ)

so only the entries with |ΔW| > τ survive. H has no useful derivative, so the backward pass uses
the straight-through estimator of JumpReLU sparse autoencoders:

* w.r.t. ΔW: the gradient passes on kept entries (|ΔW| > τ) and is zero elsewhere;
* w.r.t. τ (Eq. 2): the pseudo-derivative with a rectangle kernel K(u) = 1[−½ < u < ½] of bandwidth ε,

      ∂JumpReLU_τ(x)/∂τ := −(τ/ε) · K((x − τ)/ε),

  applied to both halves of the symmetric gate, so per entry

      ∂ΔW_jump/∂τ = −(τ/ε)·K((ΔW − τ)/ε) + (τ/ε)·K((−ΔW − τ)/ε).

  Only entries within ε/2 of ±τ contribute. The per-entry terms g ⊙ ∂ΔW_jump/∂τ are reduced to
  one number per threshold: ``"mean"`` over the matrix's entries (the authors' implementation,
  the default) or ``"sum"`` (JumpReLU SAE libraries). The two differ by the factor numel(ΔW): plain
  SGD would need a learning rate that much smaller with ``"sum"``; Adam divides by the running RMS
  of the gradient, so the scale cancels except where the gradient is near Adam's ε (1e-8), which a
  mean over a million entries can reach.
"""

from __future__ import annotations

import torch

REDUCTIONS = ("mean", "sum")


def rectangle_kernel(u: torch.Tensor) -> torch.Tensor:
    """K(u) = 1 if −½ < u < ½ else 0, in the dtype of ``u``."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


def threshold_partial(delta: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Per-entry pseudo-derivative ∂ΔW_jump/∂τ of the symmetric gate (Eq. 2, both halves)."""
    scale = threshold / bandwidth
    upper = rectangle_kernel((delta - threshold) / bandwidth)
    lower = rectangle_kernel((-delta - threshold) / bandwidth)
    return scale * (lower - upper)


def reduce_entries(per_entry: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce per-entry threshold gradients to one number: mean (authors) or sum (SAE libraries)."""
    return per_entry.mean() if reduction == "mean" else per_entry.sum()


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
            per_entry = grad_out * threshold_partial(delta, threshold, ctx.bandwidth)
            grad_threshold = reduce_entries(per_entry, ctx.reduction).reshape(threshold.shape)
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
