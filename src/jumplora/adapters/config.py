"""Hyper-parameters of the adapters and the JumpLoRA schedule inside one task."""

from __future__ import annotations

import math
from dataclasses import dataclass

from jumplora.errors import JumploraError
from jumplora.gate import REDUCTIONS

ADAPTER_KINDS = ("lora", "jumplora")
THRESHOLD_MODES = ("global", "per_block")
ELLA_DELTA_MODES = ("sparse", "interpolated")


@dataclass
class AdapterConfig:
    """One adapter per target module: ΔW = B·A, A ∈ R^{r×d_in}, B ∈ R^{d_out×r}, scaling β = α/r."""

    kind: str = "jumplora"  # "jumplora" (gated, sparse merge) or "lora" (plain LoRA, dense merge)
    r: int = 8  # rank of A and B
    alpha: float = 32.0  # β = alpha / r
    targets: tuple[str, ...] | None = None  # module names to adapt; None = the model family's q/v
    dropout: float = 0.1  # plain LoRA only: dropout on x before A (the authors' baseline)
    bandwidth: float = 1e-3  # ε of the threshold's rectangle kernel (Eq. 2)
    reduction: str = "mean"  # threshold gradient over a matrix: "mean" (authors) or "sum" (SAE libs)
    threshold_mode: str = "global"  # one τ for the model, or "per_block": one τ per transformer block
    initial_log_threshold: float = -4.7  # log τ before S_start (then reset from |ΔW|)
    start_fraction: float = 0.2  # S_start = ⌊start_fraction · N⌋
    final_fraction: float = 0.8  # S_final = ⌊final_fraction · N⌋
    fused: bool = True  # JumpLoRA: one folded matmul with a hand-written backward (False: autograd)

    def __post_init__(self) -> None:
        if self.targets is not None:
            self.targets = tuple(self.targets)
        checks = [
            (self.kind in ADAPTER_KINDS, f"unknown adapter kind {self.kind!r}: use one of {', '.join(ADAPTER_KINDS)}"),
            (isinstance(self.r, int) and self.r > 0, f"rank r must be a positive integer, got {self.r!r}"),
            (self.alpha > 0, f"alpha must be > 0, got {self.alpha!r}"),
            (self.bandwidth > 0, f"bandwidth (epsilon) must be > 0, got {self.bandwidth!r}"),
            (0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout!r}"),
            (self.reduction in REDUCTIONS, f"unknown reduction {self.reduction!r}: use one of {', '.join(REDUCTIONS)}"),
            (
                self.threshold_mode in THRESHOLD_MODES,
                f"unknown threshold mode {self.threshold_mode!r}: use one of {', '.join(THRESHOLD_MODES)}",
            ),
            (self.targets is None or len(self.targets) > 0, "targets is empty: name at least one module, or None"),
        ]
        for ok, message in checks:
            if not ok:
                raise JumploraError(message)
        JumpSchedule.validate_fractions(self.start_fraction, self.final_fraction)

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


@dataclass(frozen=True)
class JumpSchedule:
    """Where the gate comes in during a task of N optimiser steps (Algorithm 1).

    S_start = ⌊start_fraction·N⌋ and S_final = ⌊final_fraction·N⌋;
    γ(s) = clip((s − S_start)/(S_final − S_start), 0, 1), and the layer uses
    ΔW_interp = (1−γ)·ΔW + γ·ΔW_jump. At step S_start τ is initialised from |ΔW|.
    When S_final == S_start (very short tasks) γ jumps straight from 0 to 1 at S_start.
    """

    num_steps: int
    start_fraction: float = 0.2
    final_fraction: float = 0.8

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise JumploraError(f"a task needs at least one optimiser step, got {self.num_steps}")
        self.validate_fractions(self.start_fraction, self.final_fraction)

    @staticmethod
    def validate_fractions(start: float, final: float) -> None:
        if not (0.0 <= start <= 1.0 and 0.0 <= final <= 1.0):
            raise JumploraError(f"start/final fractions must lie in [0, 1], got {start} and {final}")
        if start >= final:
            raise JumploraError(f"start fraction {start} must be smaller than final fraction {final} (S_start < S_final)")

    @property
    def start(self) -> int:
        return _floor(self.start_fraction * self.num_steps)

    @property
    def final(self) -> int:
        return _floor(self.final_fraction * self.num_steps)

    def gamma(self, step: int) -> float:
        if step < self.start:
            return 0.0
        if self.final <= self.start:
            return 1.0
        return min(max((step - self.start) / (self.final - self.start), 0.0), 1.0)


def _floor(x: float) -> int:
    # 0.29 * 100 is 28.999999999999996 in floating point; the paper's ⌊·⌋ means 29.
    return math.floor(x + 1e-9)
