"""Evaluation: the accuracy of a model on a task, and row t of a run's matrices.

Inference is task-agnostic (no task id reaches the model; the options are in the prompt) and an
answer is right when it equals the gold label after normalisation (exact match).
"""

from __future__ import annotations

import numpy as np
import torch

from jumplora import metrics
from jumplora.data import Task, is_correct
from jumplora.errors import JumploraError
from jumplora.families import CausalFamily
from jumplora.record import RunRecord


def evaluate(model, family, task: Task, batch_size: int, split: str = "test", accelerator=None) -> float:
    """Accuracy (percent) on one split of the task, exact match after normalisation."""
    return evaluate_answers(model, family, task, batch_size, {}, split, accelerator)[0]


def evaluate_answers(model, family, task: Task, batch_size: int, other_tasks: dict[str, tuple[str, ...]],
                     split: str = "test", accelerator=None) -> tuple[float, dict[str, int]]:
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
    correct = sum(is_correct(p, e.label) for p, e in zip(predictions, examples))
    origins = metrics.answer_origins(predictions, task.labels, other_tasks)
    counts = [correct, len(examples), *origins.values()]
    if shards > 1:
        counts = accelerator.reduce(torch.tensor(counts, dtype=torch.float64, device=accelerator.device),
                                    reduction="sum").tolist()
    correct, total, *values = counts
    return 100.0 * (correct / total), dict(zip(origins, map(int, values)))


def evaluate_seen(model, family, ranker, tasks: list[Task], t: int, batch_size: int, accelerator,
                  accuracy: np.ndarray, record: RunRecord) -> None:
    """Row t of the accuracy matrix and of the answer origins (with ``ranker`` also of the ranked
    accuracy matrix): every task seen so far, after training task t. An answer's origin is looked
    up among the tasks seen so far (a later task's labels cannot have taken over yet)."""
    labels = {task.name: task.labels for task in tasks[: t + 1]}
    for i in range(t + 1):
        others = {name: values for name, values in labels.items() if name != tasks[i].name}
        accuracy[t, i], record.answer_origins[t][i] = evaluate_answers(
            model, family, tasks[i], batch_size, others, accelerator=accelerator)
    if ranker is not None:
        ranked = record.rank_accuracy if record.rank_accuracy is not None else np.full((len(tasks),) * 2, np.nan)
        for i in range(t + 1):
            ranked[t, i] = evaluate(model, ranker, tasks[i], batch_size, accelerator=accelerator)
        record.rank_accuracy_matrix = metrics.accuracy_matrix_to_json(ranked)
        record.rank_metrics = metrics.run_metrics(ranked, t + 1)


def make_ranker(also_rank: bool, family):
    """With ``also_rank``, the causal family that scores by ranking the options, else None."""
    if not also_rank:
        return None
    if family.name != "causal":
        raise JumploraError(f"--also-rank scores a generating causal model a second way, but this run's model "
                            f"is {family.name}: drop --also-rank")
    return CausalFamily(family.tokenizer, family.max_source_length, mode="rank")
