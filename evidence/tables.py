"""The README's evidence tables, rebuilt from the results.json files kept in this folder.

    python evidence/tables.py                 # print every table (markdown)
    python evidence/tables.py --check         # exit 1 when README.md's tables differ from these
    python evidence/tables.py --write         # put them into README.md, between their markers
    python evidence/tables.py --collect RUN NAME   # keep a run's results.json as evidence/NAME/ (paths
                                              # of this machine made relative, SHA-256 written again)

Each table stands in README.md between ``<!-- evidence:<table> -->`` and ``<!-- /evidence -->``.
A run folder does not outlive its machine; these records (no weights) do, and the tables come from
them only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
sys.path.insert(0, str(HERE.parent / "src"))

from jumplora.record import RunRecord  # noqa: E402


# -- keeping a run -------------------------------------------------------------------------------------

def collect(run: Path, name: str) -> Path:
    """``run``'s results.json as ``evidence/<name>/results.json``, with every absolute path of this
    machine replaced by one relative to the repository (or its parent: ../shared/...)."""
    record = RunRecord.read(run / "results.json")
    root = HERE.parent.resolve()

    def relative(value):
        if isinstance(value, str) and value.startswith("/"):
            try:
                return os.path.relpath(value, root)
            except ValueError:
                return value
        if isinstance(value, list):
            return [relative(v) for v in value]
        return value

    record.config = {k: relative(v) for k, v in record.config.items()}
    for entry in record.resumes or []:
        entry["changed"] = {k: {"was": relative(v["was"]), "now": relative(v["now"])} for k, v in entry["changed"].items()}
    target = HERE / name / "results.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    record.write(target)
    return target


# -- reading ---------------------------------------------------------------------------------------------

def records(prefix: str) -> dict[str, RunRecord]:
    """Every kept record whose folder name starts with ``prefix``, by folder name."""
    return {path.parent.name: RunRecord.read(path) for path in sorted(HERE.glob(f"{prefix}*/results.json"))}


def mean_std(values: list[float | None], signed: bool = False) -> str:
    x = [v for v in values if v is not None]
    if not x:
        return "—"
    form = "+.1f" if signed else ".1f"
    if len(x) == 1:
        return f"{x[0]:{form}}"
    return f"{np.mean(x):{form}} ± {np.std(x, ddof=1):.1f}"


def foreign(record: RunRecord) -> float | None:
    """Of the answers to the earlier tasks after the last one: % that are another task's label."""
    counts = [c for c in record.answer_origins[-1][:-1] if c]
    total = sum(sum(c.values()) for c in counts)
    return None if not total else 100 * sum(v for c in counts for k, v in c.items() if k not in ("own", "other")) / total


def sparsity(record: RunRecord) -> float | None:
    values = list(record.mean_sparsity.values())
    return 100 * float(np.mean(values)) if values else None


def jaccard(record: RunRecord) -> float | None:
    values = [v for v in record.jaccard.get("mean_with_previous", []) if v is not None]
    return 100 * float(np.mean(values)) if values else None


def routing(record: RunRecord, view: str) -> float | None:
    values = [v for v in (record.routing or {}).get(view, []) if v is not None]
    return float(np.mean(values)) if values else None


COLUMNS = [  # (header, value of a record, signed)
    ("OA", lambda r: r.metrics.get("oa"), False),
    ("BWT", lambda r: r.metrics.get("bwt"), True),
    ("OA ranked", lambda r: (r.rank_metrics or {}).get("oa"), False),
    ("BWT ranked", lambda r: (r.rank_metrics or {}).get("bwt"), True),
    ("OA routed", lambda r: (r.routed_metrics or {}).get("oa"), False),
    ("BWT routed", lambda r: (r.routed_metrics or {}).get("bwt"), True),
    ("routed right, prompt / text", None, False),
    ("another task's label", foreign, False),
    ("sparsity", sparsity, False),
    ("Jaccard", jaccard, False),
    ("min per run", lambda r: r.timing.get("total_s", 0) / 60, False),
]


def method_rows(groups: dict[str, list[RunRecord]]) -> list[str]:
    header = ["method", "seeds", *(name for name, _, _ in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for label, runs in groups.items():
        cells = [label, ", ".join(str(r.seed) for r in runs)]
        for name, value, signed in COLUMNS:
            if value is None:
                cells.append(f"{mean_std([routing(r, 'from_prompt') for r in runs])} / "
                             f"{mean_std([routing(r, 'from_text') for r in runs])}")
            else:
                cells.append(mean_std([value(r) for r in runs], signed))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def label_of(name: str, record: RunRecord) -> str:
    """The row a run belongs to: its method and what distinguishes it (threshold, λ, precision)."""
    config = record.config
    label = record.method
    if record.method.startswith("jumplora"):
        from jumplora.adapters.config import paper_threshold_mode

        mode = config.get("threshold_mode", "global")
        mode = paper_threshold_mode(record.method, config.get("benchmark")) if mode == "paper" else mode
        label += f" ({mode})"
    if record.method.endswith("ella"):
        lam = config.get("ella_lambda")
        label += " λ auto" if lam == "auto" else f" λ = {power_of_ten(lam)}" if isinstance(lam, (int, float)) \
            else " λ paper (3×10⁴)"
    return label


def power_of_ten(value: float) -> str:
    """30000 -> '3×10⁴' (as the README writes the paper's λ); values below 1000 as they are."""
    if abs(value) < 1000:
        return f"{value:g}"
    mantissa, exponent = f"{value:.1e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}×10" + str(int(exponent)).translate(str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻"))


METHOD_ORDER = ["inclora", "jumplora+inclora", "ella", "jumplora+ella"]  # the paper's Table 1 rows, base first


def smollm2_table(prefix: str = "smollm2-sc1-") -> list[str]:
    runs = records(prefix)
    groups: dict[str, list[RunRecord]] = {}
    for name, record in sorted(runs.items(), key=lambda item: (METHOD_ORDER.index(item[1].method), item[0])):
        groups.setdefault(label_of(name, record), []).append(record)
    return method_rows(groups)


def matrices(prefix: str, seed: int) -> list[str]:
    """Each run's matrices (generated; ranked and routed in brackets) of one seed."""
    lines = []
    runs = sorted(records(prefix).items(), key=lambda item: (METHOD_ORDER.index(item[1].method), item[0]))
    for name, record in runs:
        if record.seed != seed:
            continue
        ranked, routed = record.rank_accuracy, record.routed_accuracy
        lines += [f"| {label_of(name, record)} | " + " | ".join(record.tasks) + " |",
                  "|" + " --- |" * (len(record.tasks) + 1)]
        for t, row in enumerate(record.accuracy):
            cells = []
            for i in range(len(record.tasks)):
                if np.isnan(row[i]):
                    cells.append("")
                    continue
                extra = [f"{m[t, i]:.0f}" for m in (ranked, routed) if m is not None and not np.isnan(m[t, i])]
                cells.append(f"{row[i]:.0f}" + (f" ({' / '.join(extra)})" if extra else ""))
            lines.append(f"| after {record.tasks[t]} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines[:-1]


def bf16_table() -> list[str]:
    runs = records("precision-")
    lines = ["| precision | matrix (generated), rows after each task | OA | BWT | OA ranked | min |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, record in runs.items():
        rows = " \\| ".join(" ".join(f"{v:.0f}" for v in row[: t + 1]) for t, row in enumerate(record.accuracy))
        lines.append(f"| {record.config.get('precision', 'fp32')} | {rows} | {record.metrics['oa']:.1f} | "
                     f"{record.metrics['bwt']:+.1f} | {record.rank_metrics['oa']:.1f} | "
                     f"{record.timing['total_s'] / 60:.0f} |")
    return lines


TABLES = {"smollm2": smollm2_table, "smollm2-seed0": lambda: matrices("smollm2-sc1-", 0), "precision": bf16_table,
          "smollm2-order2": lambda: smollm2_table("smollm2-sc2-"),
          "smollm2-order3": lambda: smollm2_table("smollm2-sc3-"),
          "smollm2-order3-seed0": lambda: matrices("smollm2-sc3-", 0)}


def render() -> dict[str, str]:
    return {name: "\n".join(make()) for name, make in TABLES.items()}


def readme_with(tables: dict[str, str], text: str) -> str:
    for name, table in tables.items():
        # The first closing marker after the opening one (an empty block is two adjacent lines).
        pattern = re.compile(rf"(<!-- evidence:{re.escape(name)} -->\n).*?(<!-- /evidence -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no <!-- evidence:{name} --> ... <!-- /evidence --> block")
        text = pattern.sub(lambda m: m.group(1) + table + "\n" + m.group(2), text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--collect", nargs=2, metavar=("RUN", "NAME"))
    args = parser.parse_args()
    if args.collect:
        print(collect(Path(args.collect[0]), args.collect[1]))
        return 0
    tables = render()
    if args.write or args.check:
        text = README.read_text()
        new = readme_with(tables, text)
        if args.check:
            return 0 if new == text else 1
        README.write_text(new)
        return 0
    for name, table in tables.items():
        print(f"<!-- evidence:{name} -->\n{table}\n<!-- /evidence -->\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
