"""The summary a run prints when it ends: each run's accuracy matrix, a table of metrics per method,
a verdict per JumpLoRA method against its base method, where the outputs are and what comes next.

Beside the report's tables, but plain text and without matplotlib: `jumplora run` prints it.
"""

from __future__ import annotations

import numpy as np

from jumplora.record import RunRecord
from jumplora.strategies.registry import METHODS

DASH = "—"


def summary_table(records: list[RunRecord], output: str | None = None) -> str:
    """The text described in the module docstring (``output``: the run's folder, for the next steps)."""
    lines = []
    for record in records:
        lines += ["", *accuracy_block(record)]
        if record.routed_accuracy_matrix is not None:
            lines += [*accuracy_block(record, routed=True), routing_line(record)]
    lines += ["", *metrics_block(records)]
    verdicts = [verdict(method, records) for method in dict.fromkeys(r.method for r in records)]
    lines += [line for line in verdicts if line]
    for record in records:
        if record.collapsed:
            lines.append(f"warning: {record.method} seed {record.seed}: the gate collapsed (sparsity 0% or 100%) on "
                         f"{', '.join(record.collapsed)}")
    if output is not None:
        lines += ["", f"outputs: {output}/<method>/seed<k>/ (results.json, deltas/, model/)",
                  f"next: jumplora report {output} --output {output}/report   (tables and figures)"]
    return "\n".join(lines)


def accuracy_block(record: RunRecord, routed: bool = False) -> list[str]:
    """The accuracy matrix with full task names; row t: after training task t (``routed``: the
    routed task states' matrix)."""
    names = record.tasks
    label = max(len("after ") + len(n) for n in names)
    widths = [max(len(n), 6) for n in names]
    title = "routed task states, " if routed else ""
    lines = [f"{record.method}, seed {record.seed}: {title}test accuracy (%) after each task",
             " " * label + "  " + "  ".join(n.rjust(w) for n, w in zip(names, widths))]
    for t, row in enumerate((record.routed_accuracy_matrix if routed else record.accuracy_matrix) or []):
        if any(v is not None for v in row):
            cells = "  ".join(("" if v is None else f"{v:.1f}").rjust(w) for v, w in zip(row, widths))
            lines.append(f"after {names[t]}".ljust(label) + "  " + cells)
    return lines


def routing_line(record: RunRecord) -> str:
    """Inputs routed to their own task after the last task, from the prompt and from the text alone."""
    routing = record.routing or {}

    def cells(values) -> str:
        return ", ".join("—" if v is None else f"{v:.0f}" for v in values or [])

    return (f"routed to their own task (%), from the prompt: {cells(routing.get('from_prompt'))}; from the text "
            f"alone: {cells(routing.get('from_text'))}")


COLUMNS = [("OA (%)", "oa"), ("BWT (pp)", "bwt"), ("FWT (pp)", "fwt"), ("sparsity (%)", "sparsity"),
           ("overlap (%)", "overlap")]


# Shown only when some run has them: the options ranked by likelihood (--also-rank); the routed
# task states (--route).
RANK_COLUMNS = [("OA ranked (%)", "rank_oa"), ("BWT ranked (pp)", "rank_bwt")]
ROUTED_COLUMNS = [("OA routed (%)", "routed_oa"), ("BWT routed (pp)", "routed_bwt")]
SIGNED = ("bwt", "fwt", "rank_bwt", "routed_bwt")


def run_values(record: RunRecord) -> dict[str, float | None]:
    """OA, BWT, FWT (and ranked OA, BWT), the mean sparsity of the merged updates and their mean
    Jaccard overlap with earlier tasks (percent) of one run."""
    overlap = [v for v in record.jaccard.get("mean_with_previous", []) if v is not None]
    sparsity = list(record.mean_sparsity.values())
    ranked, routed = record.rank_metrics or {}, record.routed_metrics or {}
    return {**{k: record.metrics.get(k) for k in ("oa", "bwt", "fwt")},
            "rank_oa": ranked.get("oa"), "rank_bwt": ranked.get("bwt"),
            "routed_oa": routed.get("oa"), "routed_bwt": routed.get("bwt"),
            "sparsity": 100 * float(np.mean(sparsity)) if sparsity else None,
            "overlap": 100 * float(np.mean(overlap)) if overlap else None}


def spread(values: list[float | None], signed: bool = False) -> str:
    """``mean ± std (n = k)`` over seeds, ``value (n = 1)`` for one, ``—`` for none."""
    x = [v for v in values if v is not None]
    if not x:
        return DASH
    form = "+.1f" if signed else ".1f"
    if len(x) == 1:
        return f"{x[0]:{form}} (n = 1)"
    return f"{np.mean(x):{form}} ± {np.std(x, ddof=1):.1f} (n = {len(x)})"


def metrics_block(records: list[RunRecord]) -> list[str]:
    by_method: dict[str, list[dict]] = {}
    for record in records:
        by_method.setdefault(record.method, []).append(run_values(record))
    columns = COLUMNS[:3] + (RANK_COLUMNS if any(r.rank_metrics for r in records) else []) \
        + (ROUTED_COLUMNS if any(r.routed_metrics for r in records) else []) + COLUMNS[3:]
    rows = [[method] + [spread([v[key] for v in values], signed=key in SIGNED) for _, key in columns]
            for method, values in by_method.items()]
    header = ["method"] + [name for name, _ in columns]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def fmt(row: list) -> str:  # the method left-aligned, the numbers right-aligned under their headers
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    legend = ("OA: mean accuracy over all tasks after the last one; BWT: mean change of each earlier task's accuracy "
              "from when it was learned to the end (negative = forgetting); FWT needs --single-task-baselines; "
              "sparsity: zeros of the merged JumpLoRA updates; overlap: their Jaccard index with earlier tasks'"
              + ("; ranked: the same, answers chosen as the most likely option (--also-rank)"
                 if any(r.rank_metrics for r in records) else "")
              + ("; routed: each input answered by the weights as they were after the task a router picks from "
                 "its prompt (jumplora's second mode, not the paper's)" if any(r.routed_metrics for r in records) else ""))
    return [fmt(header), *map(fmt, rows), legend]


def verdict(method: str, records: list[RunRecord]) -> str | None:
    """One line: a JumpLoRA method against its base method on the same seeds (None when either is missing)."""
    spec = METHODS.get(method)
    base = spec.base if spec is not None else None
    if base is None:
        return None
    ours = {r.seed: run_values(r) for r in records if r.method == method}
    theirs = {r.seed: run_values(r) for r in records if r.method == base}
    seeds = sorted(set(ours) & set(theirs))
    if not seeds:
        return None
    delta = {k: [ours[s][k] - theirs[s][k] for s in seeds if ours[s][k] is not None and theirs[s][k] is not None]
             for k in ("oa", "bwt")}
    if not delta["oa"] or not delta["bwt"]:
        return None
    d_oa, d_bwt = float(np.mean(delta["oa"])), float(np.mean(delta["bwt"]))
    text = _words(d_bwt, d_oa)
    if len(seeds) > 1 and all(abs(np.mean(v)) <= np.std(v, ddof=1) for v in delta.values()):
        text += " (both within the spread over seeds)"
    return (f"verdict: {method} vs {base}: ΔOA {spread(delta['oa'], True)} pp, ΔBWT {spread(delta['bwt'], True)} pp"
            f" on the same seeds: {text}")


def _words(d_bwt: float, d_oa: float, level: float = 0.05) -> str:
    """The verdict in words; differences under ``level`` points (the printed rounding) are ties."""
    sign = {name: 0 if abs(d) < level else (1 if d > 0 else -1) for name, d in (("bwt", d_bwt), ("oa", d_oa))}
    bwt = {1: "higher BWT (keeps earlier tasks better)", 0: "the same BWT", -1: "lower BWT (keeps earlier tasks worse)"}
    oa = {1: "higher OA", 0: "the same OA", -1: "lower OA"}
    both = f"{bwt[sign['bwt']]} and {oa[sign['oa']]}"
    if sign["bwt"] >= 0 and sign["oa"] >= 0 and max(sign.values()) > 0:
        return "better: " + both
    if sign["bwt"] <= 0 and sign["oa"] <= 0 and min(sign.values()) < 0:
        return "no gain: " + both
    if sign["bwt"] == sign["oa"] == 0:
        return "level: " + both
    return f"{bwt[sign['bwt']]} but {oa[sign['oa']]}"
