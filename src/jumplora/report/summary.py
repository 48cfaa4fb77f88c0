"""The summary a run prints when it ends: each run's accuracy matrix, then one line of metrics per run.

Beside the report's tables, but plain text and without matplotlib: `jumplora run` prints it.
"""

from __future__ import annotations

import numpy as np

from jumplora.record import RunRecord


def summary_table(records: list[RunRecord]) -> str:
    lines = []
    for r in records:
        lines.append(f"\n{r.method} (seed {r.seed}) accuracy matrix, % (row t: after training task t)")
        lines.append("  " + " ".join(f"{n[:12]:>12}" for n in r.tasks))
        for row in r.accuracy_matrix:
            if any(v is not None for v in row):
                lines.append("  " + " ".join(f"{'':>12}" if v is None else f"{v:12.1f}" for v in row))
    lines.append("\nmethod                 seed      OA     BWT     FWT  sparsity  jaccard")
    for r in records:
        m = r.metrics
        sparsity = np.mean(list(r.mean_sparsity.values())) if r.mean_sparsity else None
        jac = [v for v in r.jaccard["mean_with_previous"] if v is not None]
        cells = [m.get("oa"), m.get("bwt"), m.get("fwt"), None if sparsity is None else 100 * sparsity,
                 100 * float(np.mean(jac)) if jac else None]
        lines.append(f"{r.method:<22} {r.seed:>4} " + " ".join("       -" if c is None else f"{c:8.2f}" for c in cells))
        if r.collapsed:
            lines.append(f"  warning: the gate collapsed (sparsity 0% or 100%) on {', '.join(r.collapsed)}")
    return "\n".join(lines)
