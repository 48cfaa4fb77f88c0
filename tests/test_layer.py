"""The adapted layer: fused path ≡ autograd path ≡ a float64 re-derivation of its backward."""

import copy

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from jumplora import AdapterConfig
from jumplora.adapters import AdaptedLinear, ThresholdGroup

D_IN, D_OUT, R, TOKENS = 12, 10, 3, 7


def make_layer(base, fused, kind="jumplora", gamma=0.4, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    config = AdapterConfig(kind=kind, r=R, alpha=6.0, fused=fused, dropout=0.0)
    group = ThresholdGroup(-4.0).to(dtype)
    layer = AdaptedLinear(base, config, group if kind == "jumplora" else None)
    nn.init.normal_(layer.lora_B, std=0.3)
    layer.gamma = gamma
    # Plant entries of ΔW inside the kernel band so the threshold gradient is exercised.
    with torch.no_grad():
        tau = float(group().detach())
        layer.lora_B[0].zero_()
        layer.lora_B[0, 0] = (tau + config.bandwidth / 5) / layer.lora_A[0, 0]
    return layer, group


def base_linear(kind, dtype=torch.float64):
    torch.manual_seed(1)
    if kind == "conv1d":
        base = Conv1D(D_OUT, D_IN)
    else:
        base = nn.Linear(D_IN, D_OUT)
    base.to(dtype).requires_grad_(False)
    return base


def grads(layer, group, x, grad_out):
    x = x.clone().requires_grad_()
    out = layer(x)
    out.backward(grad_out)
    return out.detach(), x.grad, layer.lora_A.grad, layer.lora_B.grad, group.log_threshold.grad


@pytest.mark.parametrize("base_kind", ["linear", "conv1d"])
@pytest.mark.parametrize("gamma", [0.0, 0.4, 1.0])
def test_fused_path_matches_autograd_path(base_kind, gamma):
    base = base_linear(base_kind)
    fused, fused_group = make_layer(copy.deepcopy(base), fused=True, gamma=gamma)
    plain, plain_group = make_layer(copy.deepcopy(base), fused=False, gamma=gamma)
    x = torch.randn(2, TOKENS, D_IN, dtype=torch.float64)
    grad_out = torch.randn(2, TOKENS, D_OUT, dtype=torch.float64)
    for got, want in zip(grads(fused, fused_group, x, grad_out), grads(plain, plain_group, x, grad_out)):
        if want is None:
            assert got is None or gamma == 0.0 and float(got.abs().max()) == 0.0
            continue
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("gamma", [0.4, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_layer_gradients_match_hand_derivation(gamma, reduction):
    """y = x(W + βΔW_interp)ᵀ + b; ∂L/∂ΔW = βG⊙((1−γ)+γH), G = gᵀx; ∂L/∂τ = βγ·reduce(G⊙∂ΔW_jump/∂τ)."""
    base = base_linear("linear")
    layer, group = make_layer(base, fused=True, gamma=gamma)
    layer.reduction = reduction
    x = torch.randn(TOKENS, D_IN, dtype=torch.float64)
    g = torch.randn(TOKENS, D_OUT, dtype=torch.float64)
    out, grad_x, grad_A, grad_B, grad_log_tau = grads(layer, group, x, g)

    A, B, W, b = layer.lora_A.detach(), layer.lora_B.detach(), base.weight, base.bias
    beta, eps, tau = layer.scaling, layer.bandwidth, float(group().detach())
    delta = B @ A
    keep = (delta.abs() > tau).double()
    interp = (1 - gamma) * delta + gamma * delta * keep
    torch.testing.assert_close(out, x @ (W + beta * interp).T + b, rtol=1e-12, atol=1e-12)
    G = g.T @ x
    d_delta = beta * G * ((1 - gamma) + gamma * keep)
    torch.testing.assert_close(grad_x, g @ (W + beta * interp), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_A, B.T @ d_delta, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_B, d_delta @ A.T, rtol=1e-12, atol=1e-12)
    in_band = lambda u: ((u > -0.5) & (u < 0.5)).double()  # noqa: E731
    partial = -(tau / eps) * in_band((delta - tau) / eps) + (tau / eps) * in_band((-delta - tau) / eps)
    per_entry = beta * gamma * G * partial
    d_tau = per_entry.mean() if reduction == "mean" else per_entry.sum()
    assert float(d_tau) != 0.0
    # τ = exp(log τ): ∂L/∂log τ = τ·∂L/∂τ.
    torch.testing.assert_close(grad_log_tau, d_tau * tau, rtol=1e-10, atol=0)


def test_low_rank_path_before_start_is_plain_lora():
    base = base_linear("linear")
    layer, _ = make_layer(base, fused=True, gamma=0.0)
    x = torch.randn(TOKENS, D_IN, dtype=torch.float64)
    want = base(x) + layer.scaling * x @ (layer.lora_B @ layer.lora_A).T
    torch.testing.assert_close(layer(x), want, rtol=1e-12, atol=1e-12)


def test_bf16_base_with_fp32_adapters_runs_and_keeps_fp32_gradients():
    base = base_linear("linear", dtype=torch.bfloat16)
    layer, group = make_layer(base, fused=True, gamma=0.5, dtype=torch.float32)
    assert layer.lora_A.dtype == torch.float32 and base.weight.dtype == torch.bfloat16
    x = torch.randn(4, D_IN, dtype=torch.bfloat16, requires_grad=True)
    layer(x).float().square().sum().backward()
    assert x.grad.dtype == torch.bfloat16
    assert layer.lora_A.grad.dtype == torch.float32 and torch.isfinite(layer.lora_B.grad).all()
