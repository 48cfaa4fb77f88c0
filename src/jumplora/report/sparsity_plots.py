"""Figures of the JumpLoRA masks: sparsity and overlap per task (paper Fig. 3), sparsity per layer (Fig. 4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.lines import Line2D

from jumplora.layout import PROJECTIONS, block_index
from jumplora.report.document import Figure, Paragraph
from jumplora.report.load import Run
from jumplora.report.style import by_method, legend_below, nan_mean, new_figure, save

LINE_STYLES = ("-", "--", ":", "-.")  # one per projection
MARKERS = "os^v"  # one per stack (encoder, decoder)


def _jumplora_runs(runs: list[Run]) -> list[Run]:
    return [run for run in runs if run.record.mean_sparsity]


def sparsity_overlap(runs: list[Run], folder: Path, filename: str, colors: dict) -> Figure | Paragraph:
    """Per task: the mean sparsity of its merged update and its mean Jaccard overlap with earlier tasks."""
    jump = _jumplora_runs(runs)
    if not jump:
        return Paragraph("Sparsity and overlap per task: no JumpLoRA run on this stream; figure skipped.")
    tasks = jump[0].stream.tasks
    x = np.arange(1, len(tasks) + 1)
    canvas, (left, right) = new_figure((10.0, 4.2), ncols=2)
    for method, group in by_method(jump).items():
        sparsity = nan_mean([[r.record.mean_sparsity.get(t, np.nan) for t in tasks] for r in group])
        overlap = nan_mean([[np.nan if v is None else v for v in _overlaps(r)] for r in group])
        left.plot(x, 100 * sparsity, "-o", color=colors[method], label=method)
        right.plot(x[: len(overlap)], 100 * overlap, "-o", color=colors[method], label=method)
    for ax, title, ylabel in ((left, "Sparsity of each task's update", "zeros in merged ΔW (%), mean over layers"),
                              (right, "Overlap with earlier tasks", "mean Jaccard index with earlier tasks (%)")):
        ax.set_xticks(x, tasks, rotation=30 if len(tasks) > 4 else 0, ha="right" if len(tasks) > 4 else "center")
        ax.set(title=title, xlabel="task (training order)", ylabel=ylabel)
        ax.set_ylim(0, 100)  # both are percentages: a change of 0.3 points should look like one
        ax.grid(alpha=0.3)
    legend_below(canvas, left.get_lines())
    caption = (f"Left: mean sparsity (fraction of exact zeros) of each task's merged JumpLoRA update on "
               f"{jump[0].stream.label}. Right: the Jaccard index |A∩B|/|A∪B| of its non-zero entries with those "
               "of each earlier task, averaged over earlier tasks and layers (none for the first task). Mean over seeds "
               "(paper Fig. 3).")
    return save(canvas, folder, filename, caption)


def _overlaps(run: Run) -> list:
    """The run's mean Jaccard overlap with earlier tasks, per task (None for the first)."""
    return run.record.jaccard.get("mean_with_previous") or []


def layer_position(name: str) -> tuple[str, str, int] | None:
    """(stack, projection, block index) of an adapted module, e.g.
    "encoder.block.3.layer.0.SelfAttention.q" -> ("encoder", "q", 3); None without a block index.

    The block is the one per-block thresholds group by (jumplora.layout), so the figure and τ agree.
    """
    depth = block_index(name)
    if depth is None:
        return None
    parts = name.split(".")
    stack = next((part for part in ("encoder", "decoder") if part in parts), "")
    return stack, PROJECTIONS.get(parts[-1].lower(), parts[-1]), depth


def sparsity_depth(runs: list[Run], folder: Path, filename: str, colors: dict) -> Figure | Paragraph:
    """Paper Fig. 4: sparsity of the merged update per block, mean over tasks and seeds; one line per
    method and projection (and stack, for encoder-decoder models)."""
    values = _sparsity_by_block(_jumplora_runs(runs))
    if not values:
        return Paragraph("Sparsity per layer: no JumpLoRA run with per-layer sparsity and block indices "
                         "(layer.N, block.N, layers.N, h.N in the module names) on this stream; figure skipped.")
    stacks = sorted({stack for _, stack, _ in values})
    projections = sorted({projection for _, _, projection in values})
    canvas, ax = new_figure((6.0, 5.0))
    for (method, stack, projection), by_depth in values.items():
        depths = sorted(by_depth)
        ax.plot(depths, [100 * np.mean(by_depth[d]) for d in depths], color=colors[method],
                linestyle=LINE_STYLES[projections.index(projection) % len(LINE_STYLES)],
                marker=MARKERS[stacks.index(stack) % len(MARKERS)])
    keys = [Line2D([], [], color=colors[m], label=m) for m in dict.fromkeys(method for method, _, _ in values)]
    if len(projections) > 1:
        keys += [Line2D([], [], color="black", linestyle=LINE_STYLES[k % len(LINE_STYLES)], label=p)
                 for k, p in enumerate(projections)]
    if len(stacks) > 1:
        keys += [Line2D([], [], color="black", linestyle="", marker=MARKERS[k % len(MARKERS)], label=s)
                 for k, s in enumerate(stacks)]
    legend_below(canvas, keys)
    ax.set(title="Sparsity against depth", xlabel="block index (0 = nearest the input)",
           ylabel="zeros in merged ΔW (%)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    caption = (f"Sparsity of the merged JumpLoRA update per transformer block on {runs[0].stream.label}, mean over "
               "tasks and seeds (paper Fig. 4). Colour: the method; line style: the projection (q, v, ...); "
               "marker: the encoder or decoder stack.")
    return save(canvas, folder, filename, caption)


def _sparsity_by_block(runs: list[Run]) -> dict[tuple[str, str, str], dict[int, list[float]]]:
    """{(method, stack, projection): {block index: the sparsities of every task and seed}}."""
    values: dict[tuple[str, str, str], dict[int, list[float]]] = {}
    for run in runs:
        for per_layer in run.record.sparsity.values():
            for name, value in per_layer.items():
                if (position := layer_position(name)) is not None:
                    stack, projection, depth = position
                    values.setdefault((run.method, stack, projection), {}).setdefault(depth, []).append(value)
    return values
