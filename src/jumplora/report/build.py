"""Assemble the report: tables over every run, figures per stream, written as report.md and report.html.

Figure files (in the output folder), with ``_<stream>`` before ``.png`` (e.g. ``loss_order-2.png``)
when the runs cover more than one stream:

    accuracy_<method>_seed<k>.png   the accuracy matrix of each run
    bwt_radial.png                  forgetting per task, one line per method (paper Fig. 2)
    jumplora_vs_base.png            OA and BWT of each JumpLoRA method beside its base method, per seed
    sparsity_overlap.png            sparsity and Jaccard overlap per task (paper Fig. 3)
    sparsity_depth.png              sparsity per block (paper Fig. 4)
    threshold_trace.png             τ over the training steps
    loss.png                        the training loss over the training steps
"""

from __future__ import annotations

import re
from pathlib import Path

from jumplora.errors import JumploraError
from jumplora.report import document
from jumplora.report.accuracy_plots import accuracy_heatmap, bwt_radial, jumplora_vs_base, routing_confusion
from jumplora.report.curve_plots import loss_curves, threshold_trace
from jumplora.report.document import Block, Heading, Paragraph
from jumplora.report.load import Run, load_runs
from jumplora.report.sparsity_plots import sparsity_depth, sparsity_overlap
from jumplora.report.style import method_colors
from jumplora.report.tables import (
    ablation_table,
    gate_table,
    generative_table,
    method_sort_key,
    methods,
    oa_table,
    routed_table,
    runs_table,
    stream_sort_key,
    transfer_table,
)

TITLE = "jumplora report"
STREAM_FIGURES = (
    ("bwt_radial", bwt_radial),
    ("jumplora_vs_base", jumplora_vs_base),
    ("sparsity_overlap", sparsity_overlap),
    ("sparsity_depth", sparsity_depth),
    ("threshold_trace", threshold_trace),
    ("loss", loss_curves),
)


def build_report(run_dirs: list[Path], output: Path) -> Path:
    """Write report.md, report.html and the figures into ``output``; return the path of report.html."""
    runs = load_runs([Path(d) for d in run_dirs])
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise JumploraError(f"report output {output} is a file: pass a folder with --output")
    output.mkdir(parents=True, exist_ok=True)
    blocks = [Heading(TITLE, 1), Paragraph(_overview(runs, run_dirs)), *_tables(runs), *_figures(runs, output)]
    (output / "report.md").write_text(document.to_markdown(blocks))
    page = output / "report.html"
    page.write_text(document.to_html(blocks, output, TITLE))
    _remove_stale_figures(output, {b.filename for b in blocks if isinstance(b, document.Figure)})
    return page


def _remove_stale_figures(output: Path, written: set[str]) -> None:
    """Delete figures of an earlier report in ``output`` that this one did not redraw (a run or a
    stream that is no longer included), so the folder holds one report. Other files are kept."""
    names = "|".join(["accuracy", "accuracy_routed", "routing", *(name for name, _ in STREAM_FIGURES)])
    ours = re.compile(rf"({names})[_.].*\.png")
    for path in output.glob("*.png"):
        if path.name not in written and ours.fullmatch(path.name):
            path.unlink()


def _overview(runs: list[Run], run_dirs: list[Path]) -> str:
    incomplete = [f"{r.method} seed {r.seed} on {r.stream.label} ({r.finished}/{len(r.stream.tasks)} tasks)"
                  for r in runs if not r.complete]
    text = (f"{len(runs)} runs from {', '.join(str(d) for d in run_dirs)}. Every table cell is a mean ± sample "
            "standard deviation (n - 1 in the denominator) over the n complete runs it covers; a single run "
            "shows (n = 1).")
    if incomplete:
        text += (" Incomplete runs, shown in the figures and the list of runs but left out of the tables: "
                 + "; ".join(incomplete) + ".")
    collapsed = [f"{r.method} seed {r.seed} ({', '.join(r.record.collapsed)})" for r in runs if r.record.collapsed]
    if collapsed:
        text += " The gate collapsed (sparsity 0% or 100% in some layer) in: " + "; ".join(collapsed) + "."
    resumed = [f"{r.method} seed {r.seed} after task {entry['after_task']} ("
               + ", ".join(f"{k} {v['was']} -> {v['now']}" for k, v in entry["changed"].items()) + ")"
               for r in runs for entry in r.record.resumes or [] if entry["changed"]]
    if resumed:
        text += " Resumed with changed settings: " + "; ".join(resumed) + "."
    return text


def _tables(runs: list[Run]) -> list[Block]:
    ablation = ablation_table(runs)
    blocks = [Heading("Table 1: overall accuracy"), oa_table(runs),
              Heading("Table 2: backward and forward transfer"), transfer_table(runs),
              Heading("Table 3: JumpLoRA + ELLA ablation")]
    blocks.append(ablation or Paragraph("No complete jumplora+ella run: the ablation table is omitted."))
    generative, gate, routed = generative_table(runs), gate_table(runs), routed_table(runs)
    if generative is not None:
        blocks += [Heading("Generated and ranked answers"), generative]
    if routed is not None:
        blocks += [Heading("The merged model and the routed task states"), routed]
    if gate is not None:
        blocks += [Heading("The gate per task"), gate]
    return [*blocks, Heading("Runs"), runs_table(runs)]


def _figures(runs: list[Run], output: Path) -> list[Block]:
    colors = method_colors(methods(runs))
    streams = sorted({run.stream for run in runs}, key=stream_sort_key)
    blocks: list[Block] = []
    for stream in streams:
        suffix = f"_{_slug(stream.label)}" if len(streams) > 1 else ""
        members = sorted((r for r in runs if r.stream == stream), key=lambda r: (method_sort_key(r.method), r.seed))
        blocks.append(Heading(f"Figures: {stream.label} ({' → '.join(stream.tasks)})"))
        blocks += [figure(members, output, f"{name}{suffix}.png", colors) for name, figure in STREAM_FIGURES]
        blocks.append(Heading("Accuracy matrices", 3))
        for run in members:
            name = f"accuracy{suffix}_{_slug(run.method)}_seed{run.seed}.png"
            blocks.append(accuracy_heatmap(run, output, name))
            if run.record.routed_accuracy_matrix is not None and run.complete:
                blocks.append(accuracy_heatmap(run, output, name.replace("accuracy", "accuracy_routed", 1), routed=True))
                blocks.append(routing_confusion(run, output, name.replace("accuracy", "routing", 1)))
    return blocks


def _slug(text: str) -> str:
    """A file-name-safe form: "jumplora+ella (per_block)" -> "jumplora+ella-per_block"."""
    return re.sub(r"[^A-Za-z0-9_.+]+", "-", text).strip("-")
