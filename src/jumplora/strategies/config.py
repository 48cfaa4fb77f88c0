"""The weights of the methods' penalties: one section of a run's settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from jumplora.errors import JumploraError
from jumplora.settings import check, setting
from jumplora.strategies.ella import ELLA_DELTA_MODES


@dataclass
class MethodWeights:
    """λ of ELLA, O-LoRA and EWC, and the paper's λ search for ELLA."""

    TITLE: ClassVar[str] = "method weights"

    ella_lambda: float | list[float] | str | None = setting(
        None, "ELLA's λ: one value, one per task comma-separated, or auto: per task after the first, λ = the task "
        "loss / the unweighted penalty over the first steps that have one (the ELLA paper's balance, ratio ≈ 1)",
        minimum=0, separator=",", metavar="λ|auto",
        shown="the paper's per-order values (3e4 for orders 1-3 and other streams)")
    ella_delta: str = setting("sparse", "jumplora+ella: the penalty sees ΔW_jump from S_start on (sparse, "
                              "Algorithm 1) or ΔW_interp (interpolated, the Table 3 ablation)", choices=ELLA_DELTA_MODES)
    ella_lambda_search: bool = setting(False, "per task, pick ELLA's λ from --ella-lambda-grid by the dev accuracy "
                                       "over the tasks seen so far (paper App. A.2)")
    ella_lambda_grid: list[float] = setting(factory=lambda: [1.0, 10.0, 1e2, 1e3, 1e4, 1e5],
                                            help="λ candidates of --ella-lambda-search, comma-separated",
                                            minimum=0, separator=",", metavar="λS")
    olora_lambda: float = setting(0.5, "O-LoRA's λ₁ of Σ‖A_s·A_tᵀ‖²", minimum=0)
    ewc_lambda: float = setting(5000.0, "EWC's λ of (λ/2)·Σ F·(θ − θ*)²", minimum=0)

    def __post_init__(self) -> None:
        check(self)
        if isinstance(self.ella_lambda, str) and self.ella_lambda != "auto":
            raise JumploraError(f"ella_lambda must be a number, one per task, or auto; got {self.ella_lambda[:40]!r}")
        if self.ella_lambda_search and not self.ella_lambda_grid:
            raise JumploraError("ella_lambda_grid must list at least one value >= 0")
        if self.ella_lambda_search and self.ella_lambda is not None:
            raise JumploraError(f"--ella-lambda {self.ella_lambda if self.ella_lambda == 'auto' else 'VALUE'} and "
                                "--ella-lambda-search set λ two ways: keep one")
