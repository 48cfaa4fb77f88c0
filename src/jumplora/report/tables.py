"""Per-run metrics and the paper's tables: each cell is a mean ± sample std over the runs it covers.

Only complete runs (every task of the stream trained) enter a table; incomplete ones are listed in
the table of runs, with the metrics of the tasks they finished.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np

from jumplora import metrics
from jumplora.adapters.config import THRESHOLD_MODES
from jumplora.strategies.ella import ELLA_DELTA_MODES
from jumplora.report.document import Table
from jumplora.report.load import VARIANT_DEFAULTS, Run, Stream
from jumplora.strategies.registry import METHODS

MISSING = "—"
ABLATION_METHOD = "jumplora+ella"


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float
    n: int  # how many runs

    def __str__(self) -> str:
        return f"{self.mean:.1f} (n = 1)" if self.n == 1 else f"{self.mean:.1f} ± {self.std:.1f} (n = {self.n})"


def summarize(values: list[float | None]) -> Summary | None:
    """Mean and sample std s = sqrt(sum_k (x_k - mean)^2 / (n - 1)) of the values that are not None.

    ddof = 1 because the seeds are a sample of all the seeds one could run. With one value s is
    undefined: it is stored as 0 and shown as "(n = 1)". None when there is no value.
    """
    x = np.array([v for v in values if v is not None], dtype=float)
    if x.size == 0:
        return None
    return Summary(float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else 0.0, int(x.size))


def run_metrics(run: Run) -> dict[str, float | None]:
    """OA, BWT and FWT (percent) over the tasks the run finished, as the runner computes them
    (:func:`jumplora.metrics.run_metrics`); mtl has only OA."""
    return metrics.run_metrics(run.accuracy, run.finished, run.record.single_task_accuracy)


def group_summaries(runs: list[Run], metric: str, key: Callable[[Run], Hashable]) -> dict[Hashable, Summary]:
    """``metric`` ("oa", "bwt", "fwt") of the complete runs, summarized per ``key(run)``."""
    values: dict[Hashable, list] = {}
    for run in runs:
        if run.complete:
            values.setdefault(key(run), []).append(run_metrics(run)[metric])
    return {k: summary for k, v in values.items() if (summary := summarize(v)) is not None}


def oa_table(runs: list[Run]) -> Table:
    """Table 1: OA per stream (order), then over all of them; one row per method."""
    streams = sorted({run.stream for run in runs}, key=stream_sort_key)
    labels = list(dict.fromkeys(stream.label for stream in streams))
    per_stream = group_summaries(runs, "oa", lambda run: (run.method, run.stream.label))
    overall = group_summaries(runs, "oa", lambda run: run.method)
    rows = [[method, *(_cell(per_stream.get((method, label))) for label in labels), _cell(overall.get(method))]
            for method in methods(runs) if method in overall]
    caption = ("Overall accuracy OA = mean of the last row of the accuracy matrix (%), mean ± sample std over "
               "seeds (n: how many). 'Mean' pools every complete run of the method across the streams.")
    return Table(["Method", *labels, "Mean"], rows, caption)


def transfer_table(runs: list[Run]) -> Table:
    """Table 2: BWT and FWT per benchmark (SC = orders 1-3, LS = orders 4-6); one row per method."""
    suites = list(dict.fromkeys(suite(stream) for stream in sorted({r.stream for r in runs}, key=stream_sort_key)))
    cells = {metric: group_summaries(runs, metric, lambda run: (run.method, suite(run.stream)))
             for metric in ("bwt", "fwt")}
    rows = []
    for method in methods(runs):
        row = [_cell(cells[metric].get((method, s))) for s in suites for metric in ("bwt", "fwt")]
        if any(cell != MISSING for cell in row):
            rows.append([method, *row])
    header = ["Method", *(f"{metric} ({s})" for s in suites for metric in ("BWT", "FWT"))]
    caption = ("BWT = mean over i < T-1 of a[T-1,i] - a[i,i] (negative: forgetting); FWT = mean over i of "
               "a[i,i] - single-task accuracy of task i, only for runs made with --single-task-baselines. "
               "Percentage points, mean ± sample std over the complete runs of the benchmark's orders and seeds; "
               f"{MISSING}: not measured (mtl has no BWT).")
    return Table(header, rows, caption)


def ablation_table(runs: list[Run]) -> Table | None:
    """Table 3: jumplora+ella with global or per-block τ × ELLA on ΔW_jump or ΔW_interp; None without such runs."""
    ablation = [run for run in runs if run.record.method == ABLATION_METHOD and run.complete]
    if not ablation:
        return None

    def setting(run: Run) -> tuple[str, str, str]:
        config = run.record.config
        return (suite(run.stream), config.get("threshold_mode", VARIANT_DEFAULTS["threshold_mode"]),
                config.get("ella_delta", VARIANT_DEFAULTS["ella_delta"]))

    cells = {metric: group_summaries(ablation, metric, setting) for metric in ("oa", "bwt")}
    suites = dict.fromkeys(setting(run)[0] for run in ablation)
    rows = [[f"{s}: τ {mode}", *(_cell(cells[metric].get((s, mode, delta)))
                                 for metric in cells for delta in ELLA_DELTA_MODES)]
            for s in suites for mode in THRESHOLD_MODES]
    header = ["Threshold", *(f"{metric.upper()} ({delta} ΔW)" for metric in cells for delta in ELLA_DELTA_MODES)]
    caption = ("jumplora+ella ablation: one τ for the model (global) or one per block (per_block), and the ELLA "
               "penalty on the sparse update ΔW_jump or on ΔW_interp. Mean ± sample std over orders and seeds, %.")
    return Table(header, rows, caption)


def generative_table(runs: list[Run]) -> Table | None:
    """Forgetting of a generating model, two ways: the answers generated (exact match, the paper's
    protocol) and the options ranked by likelihood (what the model still knows of a task when a
    later task's labels have taken over its answers); and where the earlier tasks' generated answers
    at the end come from. None when no complete run was also ranked (``--also-rank``)."""
    ranked = [run for run in runs if run.complete and run.record.rank_accuracy_matrix]
    if not ranked:
        return None
    def cells(run: Run) -> list:
        rank = metrics.run_metrics(run.record.rank_accuracy, run.finished)
        return [run_metrics(run)["oa"], run_metrics(run)["bwt"], rank["oa"], rank["bwt"], *foreign_answers(run)]

    rows = _per_method(ranked, cells)
    header = ["Stream", "Method", "OA generated", "BWT generated", "OA ranked", "BWT ranked",
              "earlier tasks: another task's label %", "earlier tasks: no label %"]
    caption = ("Generated: the answer is generated and scored by exact match (the paper's protocol). Ranked: the "
               "option with the largest likelihood is the answer (still no task id). The last two columns: of the "
               "answers generated for the earlier tasks after the last task, the share that is a label of another "
               "task of the stream (a later task's vocabulary taking over) and the share that is no task's label. "
               "Mean ± sample std over seeds.")
    return Table(header, rows, caption, text_columns=2)


def routed_table(runs: list[Run]) -> Table | None:
    """The merged model against the routed task states (jumplora's second mode), and how often the
    router picked each input's own task. None when no complete run was routed."""
    routed = [run for run in runs if run.complete and run.record.routed_accuracy_matrix]
    if not routed:
        return None
    def cells(run: Run) -> list:
        mode = metrics.run_metrics(run.record.routed_accuracy, run.finished)
        routing = run.record.routing or {}
        share = [float(np.mean(values)) if (values := [v for v in routing.get(view) or [] if v is not None]) else None
                 for view in ("from_prompt", "from_text")]
        return [run_metrics(run)["oa"], run_metrics(run)["bwt"], mode["oa"], mode["bwt"], *share]

    rows = _per_method(routed, cells)
    header = ["Stream", "Method", "OA merged", "BWT merged", "OA routed", "BWT routed", "routed right from the prompt %",
              "routed right from the text %"]
    caption = ("Merged: the paper's single model, every update merged. Routed: each test input answered, with its "
               "task's prompt, by the weights as they were right after the task a router picks from the prompt "
               "(jumplora's second mode, not the paper's method; per-task statistics of sentence-encoder features, "
               "no examples kept). The last two columns: inputs routed to their own task, from the whole prompt "
               "(whose instruction and options nearly name the task) and from the text alone. Mean ± sample std "
               "over seeds.")
    return Table(header, rows, caption, text_columns=2)


def _per_method(runs: list[Run], cells: Callable[[Run], list]) -> list[list[str]]:
    """A row per stream and method: each column of ``cells`` summarized over the runs' seeds."""
    values: dict[tuple, list[list]] = {}
    for run in runs:
        values.setdefault((run.stream.label, run.method), []).append(cells(run))
    rows = []
    for (stream, method), columns in sorted(values.items(), key=lambda kv: (kv[0][0], method_sort_key(kv[0][1]))):
        rows.append([stream, method, *(_cell(summarize(list(column))) for column in zip(*columns))])
    return rows


def foreign_answers(run: Run) -> tuple[float | None, float | None]:
    """Percent of the generated answers for tasks 0..T-2 after the last task that are another task's
    label, and that are no task's label (None without the record)."""
    last = run.record.answer_origins[run.finished - 1][: run.finished - 1]
    counts = [c for c in last if c]
    total = sum(sum(c.values()) for c in counts)
    if not counts or not total:
        return None, None
    foreign = sum(v for c in counts for k, v in c.items() if k not in ("own", "other"))
    return 100 * foreign / total, 100 * sum(c["other"] for c in counts) / total


def gate_table(runs: list[Run]) -> Table | None:
    """Per JumpLoRA method and task: the fraction of ΔW's entries the gate keeps at S_start (k/n by
    construction), at S_final and at the end, and τ at S_start and at the end (mean over groups,
    then over seeds). None when no run recorded it."""
    values: dict[tuple, list[list[float]]] = {}
    for run in runs:
        for task, sparsity in run.record.mean_sparsity.items():
            points = run.record.gate.get(task, {})
            if "s_start" in points:
                cells = [100 * np.mean(list(points.get(p, {}).get("kept", {}).values() or [np.nan]))
                         for p in ("s_start", "s_final", "end")]
                cells += [np.mean(list(points[p]["tau"].values())) for p in ("s_start", "end")]
            else:  # a task too short to reach S_start: τ was set at the merge, the gate acted only there
                tau = list(run.record.thresholds.get(task, {}).values())
                cells = [np.nan, np.nan, 100 * (1 - sparsity), np.nan, np.mean(tau) if tau else np.nan]
            values.setdefault((run.stream.label, run.method, task), []).append(cells)
    if not values:
        return None
    order = {key: i for i, key in enumerate(values)}  # tasks in stream order
    rows = []
    for key in sorted(values, key=lambda k: (k[0], method_sort_key(k[1]), order[k])):
        columns = list(zip(*values[key]))
        kept = [_cell(summarize([v for v in c if not np.isnan(v)])) for c in columns[:3]]
        rows.append([*key, *kept, *(MISSING if np.isnan(c).all() else f"{np.nanmean(c):.2e}" for c in columns[3:])])
    header = ["Stream", "Method", "Task", "kept % at S_start", "kept % at S_final", "kept % at the end",
              "τ at S_start", "τ at the end"]
    caption = ("The gate of each task: the fraction of ΔW's entries with |ΔW| > τ (the merged update keeps those "
               "at the end; sparsity = 100 − kept). τ is initialised at S_start so that k = r·(d_in + d_out) "
               "entries per group pass; afterwards kept grows when |ΔW| grows faster than τ moves. A task with too "
               "few steps to reach S_start has τ set at the merge: only its end is shown. Mean ± sample std over "
               "seeds (τ: mean).")
    return Table(header, rows, caption, text_columns=3)


def runs_table(runs: list[Run]) -> Table:
    """Every run with its own numbers, incomplete ones included (over the tasks they finished)."""
    lambdas = any(run.record.chosen_lambda is not None for run in runs)
    rows = []
    for run in sorted(runs, key=lambda r: (stream_sort_key(r.stream), method_sort_key(r.method), r.seed)):
        m = run_metrics(run)
        sparsity = list(run.record.mean_sparsity.values())
        total = run.record.timing.get("total_s")
        row = [run.stream.label, run.method, str(run.seed), f"{run.finished}/{len(run.stream.tasks)}",
               *(MISSING if m[k] is None else f"{m[k]:.1f}" for k in ("oa", "bwt", "fwt")),
               f"{100 * np.mean(sparsity):.1f}" if sparsity else MISSING,
               MISSING if total is None else f"{total:.0f}"]
        if lambdas:
            row.append(", ".join(f"{v:g}" for v in run.record.chosen_lambda or []) or MISSING)
        rows.append(row)
    header = ["Stream", "Method", "Seed", "Tasks", "OA", "BWT", "FWT", "Sparsity %", "Time s"]
    caption = ("Each run (a results.json). Tasks: trained / in the stream; an incomplete run's metrics cover the "
               "tasks it finished and it is left out of the tables above. Sparsity: mean fraction of zeros of the "
               "merged JumpLoRA updates over tasks and layers.")
    if lambdas:
        header.append("ELLA λ")
        caption += " ELLA λ: the weight of ELLA's penalty per task as the run trained it (given, auto or searched)."
    return Table(header, rows, caption, text_columns=2)


def methods(runs: list[Run]) -> list[str]:
    """The method labels of ``runs`` in the paper's order (that of ``jumplora list``)."""
    return sorted({run.method for run in runs}, key=method_sort_key)


def method_sort_key(label: str) -> tuple:
    base = label.split(" ", 1)[0]
    return (list(METHODS).index(base) if base in METHODS else len(METHODS), label)


def stream_sort_key(stream: Stream) -> tuple:
    return (stream.order is None, stream.order or 0, stream.label)


def suite(stream: Stream) -> str:
    """The benchmark a stream belongs to: SC / LS for orders, else the stream's own label."""
    return stream.benchmark if stream.order is not None else stream.label


def _cell(summary: Summary | None) -> str:
    return MISSING if summary is None else str(summary)
