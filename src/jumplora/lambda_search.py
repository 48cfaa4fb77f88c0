"""ELLA's λ per task by the paper's search (App. A.2): the candidate with the best dev accuracy.

Task t is trained once per candidate λ from the same starting point (the model's weights, the
penalty's state, the RNG states) and the candidate whose model has the best dev accuracy averaged
over the tasks seen so far is kept, with the weights it trained.
"""

from __future__ import annotations

import numpy as np

from jumplora.checkpoint import restore_rng, rng_state
from jumplora.evaluation import evaluate
from jumplora.train import train_task


def searchable(strategy) -> bool:
    """Whether the strategy's penalty has a λ per task to search (ELLA's)."""
    return getattr(strategy.regulariser, "lambdas", None) is not None


def search_lambda(model, family, strategy, t, plan, tasks, config, accelerator, name, log) -> dict:
    """Train task t for each λ of ``config.weights.ella_lambda_grid``; keep the best (see above).
    Returns train_task's result for the kept λ, with ``search``: the dev accuracy of each λ."""
    penalty = strategy.regulariser
    start = _snapshot(model, penalty)
    best, scores = None, {}
    for lam in config.weights.ella_lambda_grid:
        _restore_snapshot(start, model, penalty)
        penalty.lambdas[t] = lam
        info = train_task(model, family, strategy, t, plan, config, accelerator, f"{name} λ={lam:g}")
        scores[f"{lam:g}"] = float(np.mean([evaluate(model, family, task, config.eval_batch_size, "dev", accelerator)
                                            for task in tasks[: t + 1]]))
        if best is None or scores[f"{lam:g}"] > best[0]:
            best = (scores[f"{lam:g}"], lam, info, _snapshot(model, penalty))
    _, lam, info, state = best
    _restore_snapshot(state, model, penalty)
    penalty.lambdas[t] = lam
    log(f"  λ search for {name}: dev accuracy {scores} -> λ = {lam:g}")
    return {**info, "search": scores}


def _snapshot(model, penalty) -> tuple:
    rng_tensors, rng_json = rng_state()
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            {k: v.clone() for k, v in penalty.state().items()}, rng_tensors, rng_json)


def _restore_snapshot(snapshot: tuple, model, penalty) -> None:
    weights, state, rng_tensors, rng_json = snapshot
    model.load_state_dict(weights)
    penalty.load_state({k: v.clone() for k, v in state.items()}, next(model.parameters()).device)
    restore_rng(rng_tensors, rng_json)
