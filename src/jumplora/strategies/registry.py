"""The methods: one row each, naming the adapter, the penalty and what survives a task.

Adding a method is adding a row here (:func:`register`) and, if it regularises, one class that
implements :class:`~jumplora.strategies.penalty.Penalty`. JumpLoRA is not a method of its own but
a modifier of the adapter: ``jumplora+inclora`` and ``jumplora+ella`` are IncLoRA and ELLA whose
LoRA passes through the JumpReLU gate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from jumplora.errors import JumploraError
from jumplora.settings import did_you_mean
from jumplora.strategies.config import MethodWeights
from jumplora.strategies.ella import EllaPenalty
from jumplora.strategies.ewc import EwcPenalty
from jumplora.strategies.olora import OLoraPenalty
from jumplora.strategies.penalty import Penalty

# (the run's method weights, its benchmark order, the number of tasks) -> the penalty of one run
PenaltyFactory = Callable[[MethodWeights, "int | None", int], Penalty]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    adapter: str | None  # "lora" or "jumplora"; None: every weight of the model trains
    penalty: PenaltyFactory | None = None
    adapter_per_task: bool = True  # a fresh adapter per task, merged after it; False: one for the stream
    joint: bool = False  # every task at once in one stage (mtl: the upper bound, not continual)
    base: str | None = None  # the method this one is with the JumpReLU gate added (jumplora+ella -> ella)

    @property
    def jump(self) -> bool:
        return self.adapter == "jumplora"


# ELLA's λ per task of the Long Sequence orders as the paper tuned them (Table 7), for its 15 tasks.
LS_LAMBDAS = {4: [0.0] + [5e5] * 13 + [5e7], 5: [0.0] + [5e6] * 11 + [5e7] * 3, 6: [0.0] + [5e5] * 14}


def paper_ella_lambdas(order: int | None, num_tasks: int) -> list[float]:
    """ELLA's λ per task as tuned in the paper: Table 7's per task for orders 4-6, 3e4 for orders 1-3
    and any other stream. Always ``num_tasks`` values: tasks added after an order's 15 take its last λ."""
    if order in LS_LAMBDAS:
        values = LS_LAMBDAS[order]
        return values[:num_tasks] + [values[-1]] * (num_tasks - len(values))
    return [3e4] * num_tasks


def ella(weights: MethodWeights, order: int | None, num_tasks: int) -> EllaPenalty:
    lambdas = weights.ella_lambda
    if lambdas == "auto":
        return EllaPenalty(weights.ella_delta, [None] * num_tasks)  # chosen per task (EllaPenalty.observe)
    if lambdas is None:
        lambdas = paper_ella_lambdas(order, num_tasks)
    elif not isinstance(lambdas, list):
        lambdas = [float(lambdas)] * num_tasks
    if len(lambdas) != num_tasks:
        raise JumploraError(f"ella_lambda lists {len(lambdas)} values for a stream of {num_tasks} tasks: give one per task")
    return EllaPenalty(weights.ella_delta, list(lambdas))  # a copy: the λ search writes into it


def olora(weights: MethodWeights, order: int | None, num_tasks: int) -> OLoraPenalty:
    return OLoraPenalty(weights.olora_lambda)


def ewc(weights: MethodWeights, order: int | None, num_tasks: int) -> EwcPenalty:
    return EwcPenalty(weights.ewc_lambda)


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method (replacing one of the same name); returns it."""
    METHODS[spec.name] = spec
    return spec


for _spec in (
    MethodSpec("seqft", "full fine-tuning, one task after another", None),
    MethodSpec("seqlora", "one LoRA kept and trained across all tasks, merged at the end", "lora",
               adapter_per_task=False),
    MethodSpec("inclora", "a fresh LoRA per task, merged into the weights after it", "lora"),
    MethodSpec("ella", "inclora + ELLA's penalty λ‖ΔW ⊙ W_past‖² against the sum of past updates", "lora", ella),
    MethodSpec("olora", "O-LoRA: inclora + λ₁Σ_{i<t}‖A_i·A_tᵀ‖² keeping the new A orthogonal to the past ones",
               "lora", olora),
    MethodSpec("ewc", "seqft + a diagonal Fisher penalty (EWC)", None, ewc),
    MethodSpec("mtl", "all tasks jointly with one LoRA: the upper bound, not continual", "lora", joint=True),
    MethodSpec("jumplora+inclora", "inclora with the JumpReLU-gated sparse LoRA (the paper)", "jumplora",
               base="inclora"),
    MethodSpec("jumplora+ella", "ella with the JumpReLU-gated sparse LoRA (the paper)", "jumplora", ella, base="ella"),
):
    register(_spec)


def parse_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise JumploraError(f"unknown method {name!r}: use one of {', '.join(METHODS)}" + did_you_mean(name, list(METHODS)))
    return METHODS[name]
