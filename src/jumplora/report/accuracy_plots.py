"""Figures of the accuracy matrix: the matrix of one run, and forgetting per task (paper Fig. 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.lines import Line2D

from jumplora.report.document import Figure, Paragraph
from jumplora.report.load import Run
from jumplora.report.style import by_method, legend_below, new_figure, save


def accuracy_heatmap(run: Run, folder: Path, filename: str, routed: bool = False) -> Figure:
    """a[t, i] as a T x T heatmap, each measured cell annotated with its value (``routed``: the
    routed task states' matrix)."""
    tasks = run.stream.tasks
    T = len(tasks)
    matrix = run.record.routed_accuracy if routed else run.accuracy
    side = max(6.0, 2.5 + 0.45 * T)
    canvas, ax = new_figure((side, side * 0.75))
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis", vmin=0, vmax=100)
    for (t, i), value in np.ndenumerate(matrix):
        if not np.isnan(value):
            ax.text(i, t, f"{value:.1f}", ha="center", va="center", fontsize=9 if T <= 6 else 6,
                    color="white" if value < 60 else "black")
    ax.set_xticks(range(T), tasks, rotation=30, ha="right")
    ax.set_yticks(range(T), tasks)
    ax.set_xlabel("evaluated on task")
    ax.set_ylabel("after training task")
    canvas.colorbar(image, ax=ax, label="accuracy (%)")
    kind = "Routed accuracy matrix" if routed else "Accuracy matrix"
    ax.set_title(f"{kind}: {run.method}, seed {run.seed} ({run.stream.label})")
    caption = (f"Test accuracy (%) of {run.method}, seed {run.seed}, on {run.stream.label}: row t after training "
               "task t, column i evaluated on task i; blank cells were not measured.")
    if routed:
        caption += (" Each input answered by the state of the task the router picked from its prompt (the merged "
                    "model where it picked none).")
    if not run.complete:
        caption += f" Incomplete run: {run.finished} of {T} tasks trained."
    return save(canvas, folder, filename, caption)


def routing_confusion(run: Run, folder: Path, filename: str) -> Figure:
    """Where the router sent each task's test inputs after the last task (from the prompt), in % of them."""
    tasks = run.stream.tasks
    counts = np.array(run.record.routing["confusion"], dtype=float)
    share = 100 * counts / np.maximum(counts.sum(1, keepdims=True), 1)
    side = max(5.0, 2.5 + 0.45 * len(tasks))
    canvas, ax = new_figure((side, side * 0.8))
    image = ax.imshow(share, cmap="magma", vmin=0, vmax=100)
    for (t, i), value in np.ndenumerate(share):
        ax.text(i, t, f"{value:.0f}", ha="center", va="center", fontsize=9, color="white" if value < 60 else "black")
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    ax.set_yticks(range(len(tasks)), tasks)
    ax.set(xlabel="routed to the state of", ylabel="test input of", title=f"Routing: {run.method}, seed {run.seed}")
    canvas.colorbar(image, ax=ax, label="% of the task's inputs")
    outside = run.record.routing.get("outside") or []
    caption = (f"Where the router sent the test inputs of each task after the last task of {run.stream.label} "
               "(from the whole prompt), in % of the task's inputs; the rest of a row is inputs called no learned "
               "task's (" + ", ".join(f"{t} {o:.0f}%" for t, o in zip(tasks, outside) if o is not None) + ").")
    return save(canvas, folder, filename, caption)


def _sequential(runs: list[Run]) -> list[Run]:
    """Complete runs with the whole lower triangle measured (not mtl's single row)."""
    return [r for r in runs if r.complete and not np.isnan(r.accuracy[np.tril_indices(len(r.accuracy))]).any()]


def bwt_radial(runs: list[Run], folder: Path, filename: str, colors: dict) -> Figure | Paragraph:
    """Paper Fig. 2: each task's accuracy when learned and after the last task on a polar plot, one
    pair of closed lines per method (mean over seeds): the gap between them is the forgetting."""
    sequential = _sequential(runs)
    if not sequential:
        return Paragraph("Forgetting per task: no complete run of a sequential method on this stream; figure skipped.")
    tasks = sequential[0].stream.tasks
    theta = 2 * np.pi * np.arange(len(tasks) + 1) / len(tasks)  # the first task again at the end: a closed line
    canvas, ax = new_figure((6.4, 6.4), projection="polar")
    handles = []
    for method, group in by_method(sequential).items():
        learned = np.mean([np.diag(r.accuracy) for r in group], axis=0)
        last = np.mean([r.accuracy[-1] for r in group], axis=0)
        handles += ax.plot(theta, np.append(last, last[0]), "-o", color=colors[method], label=method, markersize=4)
        ax.plot(theta, np.append(learned, learned[0]), "--", color=colors[method], linewidth=1.0, alpha=0.8)
    ax.set_ylim(0, 100)
    ax.set_yticks([25, 50, 75, 100], ["25", "50", "75", "100 %"], fontsize=7)
    ax.set_rlabel_position(180 / len(tasks))  # radius labels between the first two tasks' spokes
    ax.set_xticks(theta[:-1], tasks, fontsize=8)
    ax.tick_params(axis="x", pad=14)  # task names clear of the markers on the 100 % circle
    ax.set_title("Accuracy of each task: when learned and after the last task", pad=22)
    styles = [Line2D([], [], color="grey", marker="o", markersize=4, label="after the last task"),
              Line2D([], [], color="grey", linestyle="--", label="just after learning it")]
    legend_below(canvas, [*handles, *styles])
    caption = (f"Forgetting per task on {sequential[0].stream.label} (after paper Fig. 2). Angle: task, in "
               "training order. Radius: test accuracy (%), dashed just after the task was learned (a[i,i]), solid "
               "after the last task (a[T-1,i]); mean over seeds. Where the solid line lies inside the dashed one "
               "the task was forgotten; the mean gap over all tasks but the last is -BWT. The last task has no "
               "later one, so its two points coincide.")
    return save(canvas, folder, filename, caption)


def jumplora_vs_base(runs: list[Run], folder: Path, filename: str, colors: dict) -> Figure | Paragraph:
    """Each JumpLoRA method beside the method it gates (jumplora+ella beside ella): OA and BWT, one
    point per seed and the mean."""
    from jumplora.strategies.registry import METHODS

    complete = [r for r in _sequential(runs)]
    pairs = [(m, METHODS[m].base) for m in by_method(complete) if m in METHODS and METHODS[m].base]
    pairs = [(m, b) for m, b in pairs if any(r.method == b for r in complete)]
    if not pairs:
        return Paragraph("JumpLoRA against its base method: no complete pair of runs (e.g. inclora and "
                         "jumplora+inclora) on this stream; figure skipped.")
    canvas, axes = new_figure((4.0 + 2.2 * len(pairs), 4.2), ncols=2)
    for ax, (metric, title) in zip(axes, (("oa", "OA (%)"), ("bwt", "BWT (pp)"))):
        for k, pair in enumerate(pairs):
            for j, method in enumerate(pair[::-1]):  # the base first, then its JumpLoRA version
                x = 3 * k + j
                values = [_metric(r, metric) for r in complete if r.method == method]
                ax.scatter([x] * len(values), values, color=colors[method], s=18, zorder=3)
                ax.bar(x, np.mean(values), color=colors[method], alpha=0.35, width=0.8)
        ax.set_xticks([3 * k + j for k in range(len(pairs)) for j in range(2)],
                      [m for pair in pairs for m in pair[::-1]], rotation=20, ha="right", fontsize=8)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set(title=title)
        ax.grid(axis="y", alpha=0.3)
    caption = (f"Each JumpLoRA method beside the method it adds the gate to, on {complete[0].stream.label}: OA "
               "(left) and BWT (right; negative = forgetting). Dots: seeds; bars: their mean.")
    return save(canvas, folder, filename, caption)


def _metric(run: Run, key: str) -> float:
    from jumplora.metrics import run_metrics

    return run_metrics(run.accuracy, run.finished)[key]
