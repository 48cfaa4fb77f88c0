"""Hyper-parameters of the adapters and the JumpLoRA schedule inside one task."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from jumplora.errors import JumploraError
from jumplora.gate import REDUCTIONS
from jumplora.settings import check, setting

ADAPTER_KINDS = ("lora", "jumplora")
THRESHOLD_MODES = ("global", "per_block")
# A run's setting may also say "paper": the threshold of the paper's Table 1 for each method and
# benchmark (paper_threshold_mode), resolved by the run before the adapters are made.
PAPER_THRESHOLDS = {("sc", "jumplora+inclora"): "per_block", ("sc", "jumplora+ella"): "global",
                    ("ls", "jumplora+inclora"): "global", ("ls", "jumplora+ella"): "per_block"}


def paper_threshold_mode(method: str, benchmark: str | None) -> str:
    """Table 1's threshold of a JumpLoRA method on a benchmark (Table 3: local = per_block); global
    for any other stream."""
    return PAPER_THRESHOLDS.get((benchmark or "", method), "global")


@dataclass
class AdapterConfig:
    """One adapter per target module: ΔW = B·A, A ∈ R^{r×d_in}, B ∈ R^{d_out×r}, scaling β = α/r.

    The paper's settings are the defaults: r 8, α 32 on the attention query/value projections, the
    JumpReLU kernel's bandwidth ε = 1e-3, S_start/S_final at 0.2/0.8 of a task's steps.
    """

    TITLE: ClassVar[str] = "adapters (the paper: r 8, α 32 on q/v, ε 1e-3, S_start/S_final = 0.2/0.8 of a task's steps)"

    kind: str = setting("jumplora", "jumplora (gated, sparse merge) or lora (plain LoRA, dense merge)",
                        choices=ADAPTER_KINDS, hidden=True, label="adapter kind")  # set by the method
    r: int = setting(8, "rank of A and B, a positive integer")
    alpha: float = setting(32.0, "α; the update is scaled by β = α / r", above=0)
    targets: tuple[str, ...] | None = setting(None, "names of the linear modules to adapt, comma-separated",
                                              shown="the family's query/value projections", separator=",",
                                              metavar="NAMES")
    dropout: float = setting(0.1, "plain LoRA only: dropout on x before A (the authors' baseline)",
                             key="lora_dropout")
    bandwidth: float = setting(1e-3, "ε of the threshold's rectangle kernel (Eq. 2)", above=0,
                               label="bandwidth (epsilon)")
    reduction: str = setting("mean", "how the threshold gradient is reduced over a matrix: mean (the authors) "
                             "or sum (JumpReLU SAE libraries)", choices=REDUCTIONS, key="threshold_reduction",
                             label="reduction")
    threshold_mode: str = setting("global", "global: one τ for the model; per_block: one τ per transformer block; "
                                  "paper: what Table 1 used for the method and benchmark (SC: per_block for "
                                  "jumplora+inclora, global for jumplora+ella; LS: the other way round; else global)",
                                  choices=(*THRESHOLD_MODES, "paper"), label="threshold mode")
    initial_log_threshold: float = setting(-4.7, "log τ before S_start (then reset from |ΔW|)", hidden=True)
    start_fraction: float = setting(0.2, "S_start = ⌊start_fraction · N⌋ of a task's N optimiser steps: the "
                                    "gate comes in (τ initialised)")
    final_fraction: float = setting(0.8, "S_final = ⌊final_fraction · N⌋: the gate is fully on (γ = 1)")
    fused: bool = setting(True, "JumpLoRA: one folded matmul with a hand-written backward (False: autograd)",
                          hidden=True)

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, (int, str)):
            raise JumploraError(f"rank r must be a positive integer, got {self.r!r}")
        check(self)  # r is an int from here on (a flag's "8" included)
        if self.r <= 0:
            raise JumploraError(f"rank r must be a positive integer, got {self.r!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise JumploraError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.targets is not None and len(self.targets) == 0:
            raise JumploraError("targets is empty: name at least one module, or None")
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
