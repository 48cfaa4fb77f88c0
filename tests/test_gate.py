"""The gate, its two gradients and the schedule, against a float64 re-derivation of Eq. 1-2."""

import numpy as np
import pytest
import torch

from jumplora import JumploraError, JumpSchedule, jump_gate

EPS = 1e-3


def reference_gate(delta: np.ndarray, tau: float, grad_out: np.ndarray, reduction: str):
    """Eq. 1-2 written out in numpy: the forward, ∂L/∂ΔW and ∂L/∂τ of ΔW_jump = J(ΔW) − J(−ΔW)."""
    def kernel(u):
        return ((u > -0.5) & (u < 0.5)).astype(np.float64)

    out = np.where(delta > tau, delta, 0.0) - np.where(-delta > tau, -delta, 0.0)
    grad_delta = grad_out * (np.abs(delta) > tau)
    # ∂J_τ(x)/∂τ = −(τ/ε)K((x−τ)/ε); the second half enters with a minus sign.
    d_upper = -(tau / EPS) * kernel((delta - tau) / EPS)
    d_lower = -(tau / EPS) * kernel((-delta - tau) / EPS)
    per_entry = grad_out * (d_upper - d_lower)
    grad_tau = per_entry.mean() if reduction == "mean" else per_entry.sum()
    return out, grad_delta, grad_tau


def delta_with_band_entries(generator, tau):
    delta = torch.randn(24, 16, dtype=torch.float64, generator=generator) * 0.02
    # Entries inside the kernel's band on both sides of +τ and −τ, and just outside it.
    band = torch.tensor([tau + EPS / 4, tau - EPS / 4, -tau + EPS / 3, -tau - EPS / 3, tau + EPS, -tau - EPS],
                        dtype=torch.float64)
    delta.view(-1)[: band.numel()] = band
    return delta


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gate_forward_and_gradients_match_float64_rederivation(reduction):
    generator = torch.Generator().manual_seed(0)
    tau_value = 0.015
    delta = delta_with_band_entries(generator, tau_value).requires_grad_()
    tau = torch.tensor(tau_value, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(delta.shape, dtype=torch.float64, generator=generator)

    out = jump_gate(delta, tau, EPS, reduction=reduction)
    out.backward(grad_out)

    ref_out, ref_grad_delta, ref_grad_tau = reference_gate(
        delta.detach().numpy(), tau_value, grad_out.numpy(), reduction
    )
    np.testing.assert_allclose(out.detach().numpy(), ref_out, rtol=0, atol=0)
    np.testing.assert_allclose(delta.grad.numpy(), ref_grad_delta, rtol=0, atol=0)
    np.testing.assert_allclose(tau.grad.item(), ref_grad_tau, rtol=1e-12)
    # Four of the planted entries lie inside ±ε/2 of ±τ, so the threshold gradient is not zero.
    assert ref_grad_tau != 0.0


def test_gate_threshold_gradient_only_from_band_entries():
    delta = torch.tensor([0.5, -0.5, 0.01, -0.01], dtype=torch.float64)
    tau = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    jump_gate(delta, tau, EPS).sum().backward()
    assert tau.grad.item() == 0.0
    tau.grad = None
    delta = torch.tensor([0.1 + EPS / 4, -0.1 - EPS / 4], dtype=torch.float64)
    jump_gate(delta, tau, EPS, reduction="sum").backward(torch.tensor([1.0, 1.0], dtype=torch.float64))
    # +side: −τ/ε, −side: +τ/ε → they cancel for equal upstream gradients.
    assert tau.grad.item() == pytest.approx(0.0, abs=1e-9)
    tau.grad = None
    jump_gate(delta, tau, EPS, reduction="sum").backward(torch.tensor([1.0, -1.0], dtype=torch.float64))
    assert tau.grad.item() == pytest.approx(-2 * 0.1 / EPS)


def test_gate_is_symmetric_and_strict():
    delta = torch.tensor([0.2, -0.2, 0.1, -0.1, 0.05])
    out = jump_gate(delta, torch.tensor(0.1))
    assert out.tolist() == pytest.approx([0.2, -0.2, 0.0, 0.0, 0.0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(reduction="max"), "unknown reduction"),
        (dict(bandwidth=0.0), "bandwidth must be > 0"),
    ],
)
def test_gate_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        jump_gate(torch.ones(3), torch.tensor(0.1), **kwargs)


def test_gate_refuses_threshold_of_several_values():
    with pytest.raises(ValueError, match="threshold must hold one value"):
        jump_gate(torch.ones(3), torch.ones(3))


def test_schedule_floors_and_interpolates():
    schedule = JumpSchedule(100)
    assert (schedule.start, schedule.final) == (20, 80)
    assert schedule.gamma(19) == 0.0 and schedule.gamma(20) == 0.0
    assert schedule.gamma(50) == pytest.approx(0.5)
    assert schedule.gamma(80) == 1.0 and schedule.gamma(99) == 1.0
    odd = JumpSchedule(7, 0.29, 0.71)
    assert (odd.start, odd.final) == (2, 4)  # ⌊2.03⌋, ⌊4.97⌋
    assert JumpSchedule(100, 0.29, 0.8).start == 29  # 0.29·100 is 28.999… in floating point
    short = JumpSchedule(1)
    assert (short.start, short.final, short.gamma(0)) == (0, 0, 1.0)


@pytest.mark.parametrize(
    "args, message",
    [
        ((0,), "at least one optimiser step"),
        ((10, 0.8, 0.2), "must be smaller than final fraction"),
        ((10, 0.5, 0.5), "must be smaller than final fraction"),
        ((10, -0.1, 0.8), r"must lie in \[0, 1\]"),
        ((10, 0.2, 1.5), r"must lie in \[0, 1\]"),
    ],
)
def test_schedule_bad_input(args, message):
    with pytest.raises(JumploraError, match=message):
        JumpSchedule(*args)
