"""Continual-learning metrics and adapter-mask statistics: pure functions over arrays.

The accuracy matrix of a stream of T tasks is ``a`` (T x T, percent): ``a[t, i]`` is the test
accuracy on task i after training task t (0-based), NaN above the diagonal (task i not yet seen).
The formulas are those of the JumpLoRA / O-LoRA / ELLA papers (Lopez-Paz & Ranzato 2017 for BWT).
Masks and tensors may be numpy arrays or torch tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from jumplora.data.tasks import normalize_answer
from jumplora.errors import JumploraError


def _checked_matrix(accuracy_matrix) -> np.ndarray:
    """``accuracy_matrix`` as a float array, after checking it is square and filled on and below the diagonal."""
    a = np.asarray(accuracy_matrix, dtype=float)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise JumploraError(f"an accuracy matrix must be square and non-empty (T x T), got shape {a.shape}")
    if np.isnan(a[np.tril_indices(a.shape[0])]).any():
        raise JumploraError("the accuracy matrix has NaN on or below its diagonal: every a[t, i] with i <= t is needed")
    return a


def overall_accuracy(accuracy_matrix) -> float:
    """OA = (1/T) sum_i a[T-1, i]: the mean accuracy over all tasks after training the last one."""
    a = _checked_matrix(accuracy_matrix)
    return float(a[-1].mean())


def backward_transfer(accuracy_matrix) -> float | None:
    """BWT = 1/(T-1) sum_{i<T-1} (a[T-1, i] - a[i, i]): how much later training changed earlier tasks.

    Negative means forgetting. None for a single task (T = 1): there is no earlier task, and None,
    unlike NaN, is valid JSON.
    """
    a = _checked_matrix(accuracy_matrix)
    if a.shape[0] == 1:
        return None
    return float((a[-1, :-1] - np.diag(a)[:-1]).mean())


def forward_transfer(accuracy_matrix, single_task: Sequence[float] | None) -> float | None:
    """FWT = (1/T) sum_i (a[i, i] - s[i]), with ``s[i]`` the accuracy of the same method trained on task
    i alone from the base model: how much the tasks seen before i help (or hurt) learning it.

    None when ``single_task`` is None (those runs were not made).
    """
    if single_task is None:
        return None
    a = _checked_matrix(accuracy_matrix)
    s = np.asarray(single_task, dtype=float)
    if s.shape != (a.shape[0],):
        raise JumploraError(f"single-task accuracies need one value per task ({a.shape[0]}), got shape {s.shape}")
    return float((np.diag(a) - s).mean())


def run_metrics(accuracy_matrix, finished: int, single_task: Sequence[float] | None = None) -> dict[str, float | None]:
    """OA, BWT and FWT of a run over the first ``finished`` tasks of its T x T accuracy matrix.

    The runner (after each task) and the report (over the saved matrix) both call this, so the numbers
    in results.json and in the report's tables are the same. A stopped run is measured on the block of
    the tasks it finished. Joint training (mtl) fills only the last row: its OA is that row's mean and
    BWT, FWT are None (they need the diagonal). ``single_task`` (one accuracy per task of the stream,
    or None) gives FWT.
    """
    a = np.asarray(accuracy_matrix, dtype=float)[:finished, :finished]
    if np.isnan(a[np.tril_indices(finished)]).any():
        return {"oa": float(np.mean(a[-1])), "bwt": None, "fwt": None}
    single = None if single_task is None else single_task[:finished]
    return {"oa": overall_accuracy(a), "bwt": backward_transfer(a), "fwt": forward_transfer(a, single)}


def accuracy_matrix_to_json(accuracy_matrix) -> list[list[float | None]]:
    """Nested lists, row t = after training task t, with None where the matrix has NaN (not valid JSON)."""
    a = np.asarray(accuracy_matrix, dtype=float)
    return [[None if np.isnan(value) else float(value) for value in row] for row in a]


def accuracy_matrix_from_json(rows: Sequence[Sequence[float | None]]) -> np.ndarray:
    """The inverse of :func:`accuracy_matrix_to_json`: None back to NaN."""
    return np.array([[np.nan if value is None else value for value in row] for row in rows], dtype=float)


def _support(x) -> np.ndarray:
    """The boolean mask of non-zero entries of a numpy array or torch tensor (any dtype, any device)."""
    if hasattr(x, "detach"):  # torch, duck-typed: compared on its device, so bfloat16 never meets numpy
        return (x.detach() != 0).cpu().numpy()
    return np.asarray(x) != 0


def sparsity(x) -> float:
    """The fraction of entries that are exactly zero (False for a boolean mask)."""
    support = _support(x)
    if support.size == 0:
        raise JumploraError("sparsity of an empty tensor is undefined")
    return float(1.0 - np.count_nonzero(support) / support.size)


def jaccard(mask_a, mask_b) -> float:
    """J(A, B) = |A and B| / |A or B| of two masks of the same shape (non-zero entries count as set).

    Two empty masks give 0, not 1: this measures the units two tasks *share*, and two adapters that
    use no unit share none.
    """
    a, b = _support(mask_a), _support(mask_b)
    if a.shape != b.shape:
        raise JumploraError(f"masks of different shapes {a.shape} and {b.shape} cannot be compared")
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 0.0


def jaccard_matrix(masks_by_task: Sequence, known: Sequence[Sequence[float]] | None = None) -> list[list[float]]:
    """J[s][t] = J(mask_s, mask_t) for every pair of one layer's masks across tasks (symmetric).

    ``known``, the matrix of the first ``len(known)`` masks (from the task before), is reused: a
    stream of T tasks then costs O(T) comparisons per task, not O(T²).
    """
    n = len(masks_by_task)
    if known is None or len(known) != n - 1:
        known = [[jaccard(a, b) for b in masks_by_task[: max(n - 1, 0)]] for a in masks_by_task[: max(n - 1, 0)]]
    if n == 0:
        return []
    row = [jaccard(masks_by_task[-1], m) for m in masks_by_task]
    return [list(values) + [row[i]] for i, values in enumerate(known)] + [row]


def mean_with_previous(matrix: Sequence[Sequence[float]]) -> list[float | None]:
    """Entry t = (1/t) Σ_{s<t} J[t][s] of a :func:`jaccard_matrix`; None for the first task."""
    return [None if t == 0 else float(np.mean(row[:t])) for t, row in enumerate(matrix)]


def mean_jaccard_with_previous(masks_by_task: Sequence) -> list[float | None]:
    """For the masks of one layer across tasks, entry t = (1/t) sum_{s<t} J(mask_t, mask_s).

    How much task t's active units overlap, on average, those of each earlier task; None for the
    first task, which has no earlier one.
    """
    return mean_with_previous(jaccard_matrix(masks_by_task))


def answer_origins(predictions: Sequence[str], labels: Sequence[str],
                   other_tasks: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Where a task's predicted answers come from, counted (answers and labels compared after
    :func:`jumplora.data.tasks.normalize_answer`):

    * ``own``: one of the task's own labels (right or wrong);
    * ``<task name>``: not one of them, but a label of that other task of the stream (the first
      one in ``other_tasks`` order that has it): another task's label vocabulary taking over the
      answers, the generative forgetting mode;
    * ``other``: no task's label.

    Every key is present (0 where nothing came from it), so the counts of runs can be added.
    """
    own = {normalize_answer(label) for label in labels}
    owners: dict[str, str] = {}
    for name, task_labels in other_tasks.items():
        for label in task_labels:
            owners.setdefault(normalize_answer(label), name)
    counts = {"own": 0, **{name: 0 for name in other_tasks}, "other": 0}
    for prediction in predictions:
        answer = normalize_answer(prediction)
        counts["own" if answer in own else owners.get(answer, "other")] += 1
    return counts
