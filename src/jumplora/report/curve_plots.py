"""Curves over the optimiser steps of the whole stream, tasks end to end: the JumpLoRA threshold τ and
the training loss. One line per method (mean over seeds), dotted lines between tasks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from jumplora.report.document import Figure, Paragraph
from jumplora.report.load import Run
from jumplora.report.style import by_method, legend_below, mark_tasks, nan_mean, new_figure, save

SMOOTHING = 25  # a task's loss curve is averaged over windows of 1/SMOOTHING of its steps


def threshold_trace(runs: list[Run], folder: Path, filename: str, colors: dict) -> Figure | Paragraph:
    """Left: τ at each step (for a per-block threshold, the mean over blocks and a band from the
    lowest to the highest). Right: the fraction of ΔW's entries the gate keeps at S_start, S_final
    and the end of each task."""
    traced = _runs_with(runs, _tau)
    if not traced:
        return Paragraph("Threshold τ over training: no run on this stream recorded a threshold_trace (plain "
                         "LoRA methods have no τ; files written before traces were recorded lack it); figure skipped.")
    gated = [run for run in traced if run.record.gate]
    canvas, axes = new_figure((11.0 if gated else 7.0, 4.5), ncols=2 if gated else 1)
    ax = axes[0] if gated else axes
    values = _plot_curves(ax, traced, _tau, colors, band=True)
    low, high = np.nanmin(values), np.nanmax(values)
    if low > 0 and high / low > 20:
        ax.set_yscale("log")
    ax.set(title="JumpLoRA threshold τ during training", xlabel="optimiser step (tasks end to end)", ylabel="τ")
    if gated:
        _kept_panel(axes[1], gated, colors)
    lr = traced[0].record.config.get("learning_rate", 1e-3)
    caption = (f"Left: the JumpReLU threshold τ at every optimiser step on {traced[0].stream.label}, tasks in training "
               "order with dotted lines between them; mean over seeds (a threshold per block: the mean over blocks, "
               "the band from the lowest to the highest). Before S_start τ is unused (its initial value); at "
               "S_start it is set so that k = r·(d_in + d_out) entries pass. From then on only Adam moves it, by "
               f"about the learning rate ({lr:g}) in log τ per step at most, so over the task's remaining steps it can "
               "change by a few percent at most: a flat line after S_start is the method at this step count, not a "
               "stuck parameter.")
    if gated:
        caption += (" Right: the fraction of ΔW's entries with |ΔW| > τ at S_start (k/n by construction), at S_final "
                    "and at the end of each task (what the merge keeps; 100 − sparsity): it grows after S_start "
                    "when |ΔW| grows faster than τ moves.")
    return save(canvas, folder, filename, caption)


def _kept_panel(ax, runs: list[Run], colors: dict) -> None:
    tasks = list(runs[0].stream.tasks)
    x = np.arange(1, len(tasks) + 1)
    styles = {"s_start": (":", "S_start"), "s_final": ("--", "S_final"), "end": ("-", "end")}
    for method, group in by_method(runs).items():
        for point, (style, name) in styles.items():
            rows = [[_kept(r, t, point) for t in tasks] for r in group]
            ax.plot(x, nan_mean(rows), linestyle=style, marker="o", markersize=3, color=colors[method],
                    label=f"{method}: {name}")
    # Long names or many tasks: the labels turn and shrink so that neighbours do not overlap.
    crowded = len(tasks) > 4 or max(map(len, tasks)) * len(tasks) > 48
    ax.set_xticks(x, tasks, rotation=35 if crowded else 0, ha="right" if crowded else "center",
                  fontsize=7 if crowded else None)
    ax.set(title="Entries the gate keeps", xlabel="task (training order)", ylabel="|ΔW| > τ (% of entries)")
    ax.set_ylim(0, None)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, handlelength=3)  # long enough to show each line's dash pattern


def _kept(run: Run, task: str, point: str) -> float:
    """Percent of entries kept at ``point`` of a task; a task too short to reach S_start had its gate
    only at the merge: its end is 100 − its sparsity, and it has no S_start or S_final."""
    kept = run.record.gate.get(task, {}).get(point, {}).get("kept")
    if kept:
        return 100 * float(np.mean(list(kept.values())))
    if point == "end" and task in run.record.mean_sparsity:
        return 100 * (1 - run.record.mean_sparsity[task])
    return np.nan


def loss_curves(runs: list[Run], folder: Path, filename: str, colors: dict) -> Figure | Paragraph:
    """The training loss at each step, each task's curve smoothed on its own."""
    logged = _runs_with(runs, _loss)
    if not logged:
        return Paragraph("Training loss: no run on this stream recorded its losses; figure skipped.")

    canvas, ax = new_figure((7.0, 4.5))
    _plot_curves(ax, logged, _loss, colors, band=False)
    ax.set(title="Training loss", xlabel="optimiser step (tasks end to end)", ylabel="loss")
    caption = (f"Training loss of every step on {logged[0].stream.label}, tasks in training order with dotted lines "
               f"between them; mean over seeds. A task of {2 * SMOOTHING} steps or more is smoothed by a centred "
               f"moving average over 1/{SMOOTHING} of its steps.")
    return save(canvas, folder, filename, caption)


def smooth(x: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over ``window`` steps, the window cut short at both ends (no padding)."""
    if window <= 1:
        return x
    cumulative = np.concatenate([[0.0], np.cumsum(x)])
    steps = np.arange(len(x))
    start, stop = np.clip(steps - window // 2, 0, len(x)), np.clip(steps + window // 2 + 1, 0, len(x))
    return (cumulative[stop] - cumulative[start]) / (stop - start)


Series = Callable[[Run, str], np.ndarray | None]  # (groups, steps) of one task of a run, None if absent


def _tau(run: Run, task: str) -> np.ndarray | None:
    """τ of each threshold group (rows) at each step of ``task``."""
    trace = run.record.threshold_trace.get(task)
    return np.array(list(trace.values()), dtype=float) if trace else None


def _loss(run: Run, task: str) -> np.ndarray | None:
    """The loss of each step of ``task`` as one row, smoothed over 1/SMOOTHING of the task."""
    values = run.record.losses.get(task)
    return smooth(np.array(values, dtype=float), len(values) // SMOOTHING)[None, :] if values else None


def _runs_with(runs: list[Run], series: Series) -> list[Run]:
    return [run for run in runs if any(series(run, task) is not None for task in run.stream.tasks)]


def _plot_curves(ax, runs: list[Run], series: Series, colors: dict, band: bool) -> np.ndarray:
    """Per method: each run's series, tasks end to end, reduced over groups, then averaged over seeds;
    a line breaks between tasks, where the dotted task boundary is drawn. Returns every value drawn."""
    lengths = _task_lengths(runs, series)
    drawn = []
    for method, group in by_method(runs).items():
        per_run = [[part for task in run.stream.tasks if (part := series(run, task)) is not None] for run in group]
        curves = {name: nan_mean([np.concatenate([reduce(p, axis=0) for p in parts]) for parts in per_run if parts])
                  for name, reduce in (("mean", np.mean), ("low", np.min), ("high", np.max))}
        breaks = [end for end in np.cumsum(lengths)[:-1] if end < len(curves["mean"])]
        steps = np.insert(np.arange(1.0, len(curves["mean"]) + 1), breaks, np.nan)
        curves = {name: np.insert(curve, breaks, np.nan) for name, curve in curves.items()}
        ax.plot(steps, curves["mean"], color=colors[method], label=method, linewidth=1.5)
        drawn.append(curves["mean"])
        if band and not np.allclose(curves["low"], curves["high"], equal_nan=True):
            ax.fill_between(steps, curves["low"], curves["high"], color=colors[method], alpha=0.2, linewidth=0)
    ax.grid(alpha=0.3)
    legend_below(ax.figure, ax.get_lines())
    mark_tasks(ax, lengths, list(runs[0].stream.tasks))
    return np.concatenate(drawn)


def _task_lengths(runs: list[Run], series: Series) -> list[int]:
    """Steps per task, from the runs that trained it."""
    tasks = runs[0].stream.tasks
    return [max((part.shape[1] for run in runs if (part := series(run, task)) is not None), default=0)
            for task in tasks]
