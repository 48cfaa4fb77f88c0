"""Figures of the accuracy matrix: the matrix of one run, and forgetting per task (paper Fig. 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.lines import Line2D

from jumplora.report.document import Figure, Paragraph
from jumplora.report.load import Run
from jumplora.report.style import by_method, legend_below, new_figure, save


def accuracy_heatmap(run: Run, folder: Path, filename: str) -> Figure:
    """a[t, i] as a T x T heatmap, each measured cell annotated with its value."""
    tasks = run.stream.tasks
    T = len(tasks)
    side = max(6.0, 2.5 + 0.45 * T)
    canvas, ax = new_figure((side, side * 0.75))
    image = ax.imshow(np.ma.masked_invalid(run.accuracy), cmap="viridis", vmin=0, vmax=100)
    for (t, i), value in np.ndenumerate(run.accuracy):
        if not np.isnan(value):
            ax.text(i, t, f"{value:.1f}", ha="center", va="center", fontsize=9 if T <= 6 else 6,
                    color="white" if value < 60 else "black")
    ax.set_xticks(range(T), tasks, rotation=30, ha="right")
    ax.set_yticks(range(T), tasks)
    ax.set_xlabel("evaluated on task")
    ax.set_ylabel("after training task")
    canvas.colorbar(image, ax=ax, label="accuracy (%)")
    ax.set_title(f"Accuracy matrix: {run.method}, seed {run.seed} ({run.stream.label})")
    caption = (f"Test accuracy (%) of {run.method}, seed {run.seed}, on {run.stream.label}: row t after training "
               "task t, column i evaluated on task i; blank cells were not measured.")
    if not run.complete:
        caption += f" Incomplete run: {run.finished} of {T} tasks trained."
    return save(canvas, folder, filename, caption)


def forgetting_per_task(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each task i: the final drop d_i = a[i,i] - a[T-1,i] (so BWT = -mean_{i<T-1} d_i) and the
    largest drop at any time after learning it, max_{t>=i} (a[i,i] - a[t,i]) >= 0."""
    diagonal = np.diag(matrix)
    drops = diagonal[None, :] - matrix  # [t, i]: how far task i is below its just-learned accuracy
    return drops[-1], np.nanmax(np.where(np.tri(len(matrix), dtype=bool), drops, np.nan), axis=0)


def bwt_radial(runs: list[Run], folder: Path, filename: str, colors: dict) -> Figure | Paragraph:
    """Paper Fig. 2: forgetting per task on a polar plot, one closed line per method (mean over seeds)."""
    sequential = [r for r in runs if r.complete and not np.isnan(r.accuracy[np.tril_indices(len(r.accuracy))]).any()]
    if not sequential:
        return Paragraph("Forgetting per task: no complete run of a sequential method on this stream; figure skipped.")
    tasks = sequential[0].stream.tasks
    theta = 2 * np.pi * np.arange(len(tasks) + 1) / len(tasks)  # the first task again at the end: a closed line
    canvas, ax = new_figure((6.0, 6.0), projection="polar")
    radii, handles = [0.0], []
    for method, group in by_method(sequential).items():
        final, worst = (np.mean(values, axis=0) for values in zip(*(forgetting_per_task(r.accuracy) for r in group)))
        handles += ax.plot(theta, np.append(final, final[0]), "-o", color=colors[method], label=method, markersize=4)
        ax.plot(theta, np.append(worst, worst[0]), ":", color=colors[method], linewidth=1.0, alpha=0.7)
        radii += [*final, *worst]
    low, high = min(radii), max(radii)
    pad = max(1.0, 0.15 * (high - low))
    ax.set_ylim(low - pad, high + pad)  # the centre is the largest gain, not 0: a negative drop stays visible
    ax.plot(np.linspace(0, 2 * np.pi, 200), np.zeros(200), color="black", linewidth=1)
    ax.set_xticks(theta[:-1], tasks, fontsize=8)
    ax.set_rlabel_position(180 / len(tasks))  # radius labels between the first two tasks' spokes
    ax.tick_params(axis="y", labelsize=7)
    ax.tick_params(axis="x", pad=6)
    ax.set_title("Forgetting per task (accuracy drop, percentage points)", pad=14)
    styles = [Line2D([], [], color="black", label="drop after the last task"),
              Line2D([], [], color="black", linestyle=":", label="largest drop during training")]
    legend_below(canvas, [*handles, *styles])
    caption = (f"Forgetting per task on {sequential[0].stream.label} (paper Fig. 2). Angle: task, in training "
               "order. Radius: drop a[i,i] - a[T-1,i] of task i from just after learning it to the end of the "
               "stream (solid), and the largest such drop at any later point (dotted); mean over seeds. The black "
               "circle is no change: outside it the task was forgotten, inside it improved (positive backward "
               "transfer). The last task has no later task, so its drop is 0. Mean solid radius over all tasks "
               "but the last = -BWT.")
    return save(canvas, folder, filename, caption)
