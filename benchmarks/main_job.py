"""Wall time of the README's main job, `jumplora run` with no flags, against its 300 s target.

    python benchmarks/main_job.py --json main_job.json
    python benchmarks/main_job.py --quick        # 64 training / 32 test examples per task

The job runs as a subprocess of this interpreter (`python -m jumplora.cli run`, what the `jumplora`
command runs) with a temporary folder as its working directory, so its output (runs/latest) lands
there and is deleted afterwards (--keep keeps it). The first row is the subprocess's wall time,
start-up and model loading included; then, per method, the train and eval seconds summed over the
tasks and the run's own total, from OUTPUT/<method>/seed0/results.json ("timing"); the last row
is what the per-method totals leave out (imports, loading the data, the summary).

ratio_vs_target = seconds / 300 for the wall-time row (< 1 meets the target). --device cpu|cuda
passes --device to the job; without it the job picks its own device (auto), as with no flags.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import common

TARGET_S = 300.0


def run_job(flags: list[str], workdir: Path, timeout: float | None, threads: int | None) -> tuple[float, bool]:
    """Run the job in ``workdir``; returns its wall seconds and whether it finished before ``timeout``."""
    command = [sys.executable, "-m", "jumplora.cli", "run", *flags]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    print("$", " ".join(command), f"(in {workdir}, OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', 'unset')})", flush=True)
    started = time.perf_counter()
    try:
        subprocess.run(command, cwd=workdir, env=env, check=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"the job ran past --timeout {timeout:.0f} s and was stopped: the rows below are what it finished")
        return time.perf_counter() - started, False
    return time.perf_counter() - started, True


def method_rows(output: Path) -> list[dict]:
    rows = []
    for path in sorted(output.glob("*/seed0/results.json")):
        timing = json.loads(path.read_text())["timing"]
        tasks = timing["tasks"]
        train = sum(t["train_s"] for t in tasks.values())
        evaluate = sum(t["eval_s"] for t in tasks.values())
        rows.append({"name": f"{path.parent.parent.name}: run total ({len(tasks)} tasks)", "gamma": None, "seconds": timing["total_s"],
                     "train_s": round(train, 2), "eval_s": round(evaluate, 2),
                     "steps": sum(t["steps"] for t in tasks.values()), "tasks": tasks})
    if not rows:
        raise SystemExit(f"no */seed0/results.json under {output}: did the job write its results elsewhere?")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], help="passed to the job (default: its own auto)")
    p.add_argument("--quick", action="store_true", help="subsample the tasks: a smoke test, not the figure")
    p.add_argument("--keep", action="store_true", help="keep the job's output folder")
    p.add_argument("--timeout", type=float, help="stop the job after this many seconds")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the job (on a busy shared machine 1 is the steadiest)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    flags = ["--device", args.device] if args.device else []
    if args.quick:
        flags += ["--max-train-per-task", "64", "--max-test-per-task", "32"]
    workdir = Path(tempfile.mkdtemp(prefix="jumplora-main-job-"))
    try:
        wall, finished = run_job(flags, workdir, args.timeout, args.threads)
        per_method = method_rows(workdir / "runs" / "latest")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = [common.metadata(device, None, job=" ".join(["jumplora run", *flags]), target_s=TARGET_S,
                            omp_num_threads=args.threads or os.environ.get("OMP_NUM_THREADS"),
                            peak_mib_is="not measured (a subprocess)", output=str(workdir) if args.keep else None),
            {"name": "main job: wall" + ("" if finished else " (stopped at --timeout)"), "gamma": None,
             "seconds": round(wall, 2), "ratio_vs_target": round(wall / TARGET_S, 3), "finished": finished},
            *per_method,
            {"name": "outside the runs (start-up, data, summary)", "gamma": None,
             "seconds": round(wall - sum(r["seconds"] for r in per_method), 2)}]
    for row in rows[1:]:
        row["ms"], row["peak_mib"] = round(row["seconds"] * 1e3), None
    common.report(rows, ["name", "seconds", "train_s", "eval_s", "steps", "ratio_vs_target"], args.json)


if __name__ == "__main__":
    main()
