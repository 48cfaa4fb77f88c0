"""What the figures share: size and resolution, one colour per method, means over seeds, task boundaries.

Figures are built on :class:`matplotlib.figure.Figure` directly, not pyplot: no global state, no
interactive backend, and PNGs are written by the Agg canvas.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure as Canvas

from jumplora.report.document import Figure

SIZE = (6.0, 4.5)  # inches: readable on a page at DPI
DPI = 120


def new_figure(size: tuple[float, float] = SIZE, ncols: int = 1, **subplot_kw) -> tuple[Canvas, Axes | np.ndarray]:
    """A canvas and its axes: one, or an array of ``ncols`` side by side."""
    canvas = Canvas(figsize=size, layout="constrained")
    return canvas, canvas.subplots(1, ncols, subplot_kw=subplot_kw)


def save(canvas: Canvas, folder: Path, filename: str, caption: str) -> Figure:
    canvas.savefig(folder / filename, dpi=DPI)
    return Figure(filename, caption)


def method_colors(methods: list[str]) -> dict[str, tuple]:
    """A fixed colour per method, the same in every figure of the report."""
    palette = matplotlib.colormaps["tab10" if len(methods) <= 10 else "tab20"]
    return {method: palette(i % palette.N) for i, method in enumerate(methods)}


def legend_below(canvas: Canvas, handles: list) -> None:
    """One legend under the plot, outside it: many methods never hide a line."""
    canvas.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8)


def by_method(runs: list) -> dict[str, list]:
    """The runs grouped by method label, in the order given."""
    groups: dict[str, list] = {}
    for run in runs:
        groups.setdefault(run.method, []).append(run)
    return groups


def nan_mean(rows: list) -> np.ndarray:
    """Pointwise mean of 1-D rows of maybe different lengths (an incomplete run's are shorter),
    ignoring NaN; NaN where no row has a value."""
    table = np.full((len(rows), max(len(row) for row in rows)), np.nan)
    for k, row in enumerate(rows):
        table[k, : len(row)] = row
    count = np.count_nonzero(~np.isnan(table), axis=0)
    return np.where(count > 0, np.nansum(table, axis=0) / np.maximum(count, 1), np.nan)


def mark_tasks(ax: Axes, lengths: list[int], tasks: list[str]) -> None:
    """On a step axis (step 1 .. sum(lengths)): a dotted line between tasks and each task's name on a
    top axis, over the middle of its steps."""
    ends = np.cumsum(lengths)
    for end in ends[:-1]:
        ax.axvline(end + 0.5, color="grey", linestyle=":", linewidth=1)
    named = [(end - length / 2 + 0.5, task) for end, length, task in zip(ends, lengths, tasks) if length]
    top = ax.twiny()
    top.set_xlim(ax.get_xlim())
    top.set_xticks([x for x, _ in named], [task for _, task in named], fontsize=8,
                   rotation=30 if len(named) > 4 else 0, ha="left" if len(named) > 4 else "center")
    top.tick_params(length=0)
