"""Evaluation: the accuracy of a model on a task, and row t of a run's matrices.

Inference is task-agnostic (no task id reaches the model; the options are in the prompt) and an
answer is right when it equals the gold label after normalisation (exact match).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from jumplora import metrics
from jumplora.context import RunContext
from jumplora.data import Task, is_correct
from jumplora.errors import JumploraError
from jumplora.families import CausalFamily


def evaluate(model, family, task: Task, batch_size: int, split: str = "test", accelerator=None) -> float:
    """Accuracy (percent) on one split of the task, exact match after normalisation."""
    return evaluate_answers(model, family, task, batch_size, {}, split, accelerator)[0]


def evaluate_answers(model, family, task: Task, batch_size: int, other_tasks: dict[str, tuple[str, ...]],
                     split: str = "test", accelerator=None, answers: list | None = None) -> tuple[float, dict[str, int]]:
    """Accuracy (percent) on one split of the task, and where the answers come from
    (:func:`jumplora.metrics.answer_origins` against the labels of ``other_tasks``).

    With an ``accelerator`` of several processes each one predicts every n-th example and the
    counts are summed over the processes: the same numbers in 1/n of the time.
    """
    examples = task.split(split)
    if not examples:
        raise JumploraError(f"task {task.name} has no {split} examples to evaluate on")
    shards = accelerator.num_processes if accelerator is not None else 1
    if shards > 1:
        examples = examples[accelerator.process_index :: shards]
    predictions = family.predict(model, task, examples, batch_size=batch_size) if examples else []
    if answers is not None:  # the caller keeps them (one process: every example's, in order)
        answers.extend(predictions)
    correct = sum(is_correct(p, e.label) for p, e in zip(predictions, examples))
    origins = metrics.answer_origins(predictions, task.labels, other_tasks)
    counts = [correct, len(examples), *origins.values()]
    if shards > 1:
        counts = accelerator.reduce(torch.tensor(counts, dtype=torch.float64, device=accelerator.device),
                                    reduction="sum").tolist()
    correct, total, *values = counts
    return 100.0 * (correct / total), dict(zip(origins, map(int, values)))


@dataclass
class EvaluationRow:
    """Row t of a run's matrices: every task seen so far, after training task t."""

    accuracy: list[float]  # a[t, i], i ≤ t, percent
    origins: list[dict[str, int]]  # where the answers to task i come from (metrics.answer_origins)
    ranked: list[float] | None = None  # the options ranked (--also-rank), or None
    answers: dict[str, list[str]] | None = None  # each task's answers (one process), for the routed row
    routed: object = None  # routed.RoutedRow, when the run routes


def evaluate_seen(ctx: RunContext, tasks: list[Task], t: int) -> EvaluationRow:
    """Row t of the accuracy matrix and of the answer origins (with the context's ranker also of the
    ranked accuracy matrix). An answer's origin is looked up among the tasks seen so far (a later
    task's labels cannot have taken over yet)."""
    batch_size, accelerator = ctx.config.eval_batch_size, ctx.accelerator
    labels = {task.name: task.labels for task in tasks[: t + 1]}
    accuracy, origins, answers = [], [], {}
    for task in tasks[: t + 1]:
        if not task.test:  # a task taught earlier whose test examples were not kept: not measured
            accuracy.append(float("nan"))
            origins.append(None)
            continue
        others = {name: values for name, values in labels.items() if name != task.name}
        answers[task.name] = []
        value, counts = evaluate_answers(ctx.model, ctx.family, task, batch_size, others, accelerator=accelerator,
                                         answers=answers[task.name])
        accuracy.append(value)
        origins.append(counts)
    ranked = None
    if ctx.ranker is not None:
        ranked = [evaluate(ctx.model, ctx.ranker, task, batch_size, accelerator=accelerator) if task.test
                  else float("nan") for task in tasks[: t + 1]]
    return EvaluationRow(accuracy, origins, ranked, answers if accelerator.num_processes == 1 else None)


def make_ranker(also_rank: bool, family):
    """With ``also_rank``, the causal family that scores by ranking the options, else None."""
    if not also_rank:
        return None
    if family.name != "causal":
        raise JumploraError(f"--also-rank scores a generating causal model a second way, but this run's model "
                            f"is {family.name}: drop --also-rank")
    return CausalFamily(family.tokenizer, family.max_source_length, mode="rank")
