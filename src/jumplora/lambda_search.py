"""ELLA's λ per task by the paper's search (App. A.2): the candidate with the best dev accuracy.
(``--ella-lambda auto``, the balance rule, is :class:`jumplora.strategies.ella.EllaPenalty`'s.)

Task t is trained once per candidate λ from the same starting point (the model's weights, the
penalty's state, the RNG states) and the candidate whose model has the best dev accuracy averaged
over the tasks seen so far is kept, with the weights it trained.
"""

from __future__ import annotations

import numpy as np

from jumplora.checkpoint import restore_rng, rng_state
from jumplora.evaluation import evaluate
from jumplora.context import RunContext
from jumplora.train import TaskTraining, train_task


def searchable(strategy) -> bool:
    """Whether the strategy's penalty has a λ per task to search (ELLA's)."""
    return getattr(strategy.regulariser, "lambdas", None) is not None


def search_lambda(ctx: RunContext, t: int, plan: list, tasks: list, name: str) -> TaskTraining:
    """Train task t for each λ of ``ctx.config.weights.ella_lambda_grid``; keep the best (see above).
    Returns the training of the kept λ, with ``search``: the dev accuracy of each λ."""
    model, penalty, config = ctx.model, ctx.strategy.regulariser, ctx.config
    start = _snapshot(model, penalty)
    best, scores = None, {}
    for lam in config.weights.ella_lambda_grid:
        _restore_snapshot(start, model, penalty)
        penalty.lambdas[t] = lam
        trained = train_task(ctx, t, plan, f"{name} λ={lam:g}")
        scores[f"{lam:g}"] = float(np.mean([evaluate(model, ctx.family, task, config.eval_batch_size, "dev",
                                                     ctx.accelerator) for task in tasks[: t + 1]]))
        if best is None or scores[f"{lam:g}"] > best[0]:
            best = (scores[f"{lam:g}"], lam, trained, _snapshot(model, penalty))
    _, lam, trained, state = best
    _restore_snapshot(state, model, penalty)
    penalty.lambdas[t] = lam
    ctx.log(f"  λ search for {name}: dev accuracy {scores} -> λ = {lam:g}")
    trained.search = scores
    return trained


def _snapshot(model, penalty) -> tuple:
    rng_tensors, rng_json = rng_state()
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            {k: v.clone() for k, v in penalty.state().items()}, rng_tensors, rng_json)


def _restore_snapshot(snapshot: tuple, model, penalty) -> None:
    weights, state, rng_tensors, rng_json = snapshot
    model.load_state_dict(weights)
    penalty.load_state({k: v.clone() for k, v in state.items()}, next(model.parameters()).device)
    restore_rng(rng_tensors, rng_json)
