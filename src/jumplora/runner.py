"""Run every method × seed of a configuration over its stream of tasks, then print the summary.

For each method and seed: ``OUTPUT/<method>/seed<k>/results.json`` (rewritten after every task, so
a stopped run keeps what it finished), ``deltas/<t>-<task>.safetensors`` (each task's merged update)
and ``model/`` (the final merged model and tokenizer, loadable with plain transformers). The loop
over one stream is :mod:`jumplora.loop`; resuming is :mod:`jumplora.resume`.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

from tqdm.auto import tqdm

from jumplora.adapters import JumpSchedule
from jumplora.config import RunConfig, absolute_paths
from jumplora.data.stream import resolve_stream
from jumplora.errors import JumploraError
from jumplora.families.loading import check_for_run
from jumplora.loop import StreamJob, run_stream
from jumplora.manifest import MANIFEST_FILE
from jumplora.record import RunRecord
from jumplora.report.summary import summary_table
from jumplora.run_folder import OutputFolder, probe_writable
from jumplora.strategies.methods import check_penalties
from jumplora.train import make_accelerator

LATEST = Path("runs") / "latest"  # the newest run without --output


def run(config: RunConfig, log=print, resume: bool = False, overwrite: bool = False,
        force: bool = False) -> list[RunRecord]:
    """Every method × seed of the config; returns their records and prints a summary table.

    Everything a user can get wrong (settings, data, the model, its weights, its adapters) is
    checked before the first byte is written. ``force``: a resume goes on although the data of a task
    the run learned changed. A new run goes into a new folder: without an output
    folder, ``runs/<date>-<time>`` (``runs/latest`` then points at it); into one that holds a run
    only with ``overwrite`` (the earlier run is then replaced whole) or ``resume``. The output is
    locked for the run, and so is refused while a command writes in it, inside it or around it.
    """
    config = RunConfig.from_dict({**absolute_paths(config.to_dict()), "output": config.output})
    if config.model and Path(config.model, MANIFEST_FILE).is_file() and not resume:
        raise JumploraError(f"{config.model} is a model folder written by jumplora: a run would start its history over "
                            f"(its tasks and ledger dropped); teach it more with `jumplora teach {config.model} "
                            "--task-file FILE`")
    tasks = resolve_stream(config.data)
    check_for_run(config, tasks)
    check_penalties(config, len(tasks))
    automatic = config.output is None
    if automatic:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every process must name the same folder
            raise JumploraError("a run of several processes needs its folder named: pass --output DIR")
        config.output = str(fresh_output())
    accelerator = make_accelerator(config.device, config.precision, config.log_with, config.output)
    main = accelerator.is_main_process
    output = OutputFolder(config.output)
    if main:
        probe_writable(output.path)
        output.check_no_live_run()
        if not resume and output.has_run() and not overwrite:
            raise JumploraError(f"{output.path} holds a run already: pass --resume {output.path} to continue it, "
                                "--overwrite to replace it, or another --output")
    with output.lock() if main else contextlib.nullcontext():
        if main and not resume:
            removed = output.clear()
            if removed:
                log(f"replaced the earlier run in {output.path} ({', '.join(removed)})")
        if main and (not resume or _extends(output, config)):
            # A new run's settings; or, when a resume adds tasks, the stream the run now has.
            output.write_settings(config.to_dict())
            output.drop_report()
        if main and automatic:
            point_latest(Path(config.output), log)
        log(f"stream: {' -> '.join(t.name for t in tasks)}  "
            f"({', '.join(f'{t.name} {len(t.train)}/{len(t.test)}' for t in tasks)} train/test)")
        _notes(config, accelerator, tasks, log)
        records = _run_all(config, output, tasks, accelerator, log, resume, force)
    if main:
        log(summary_table(records, config.output))
    return records


def _run_all(config: RunConfig, output: OutputFolder, tasks, accelerator, log, resume: bool,
             force: bool) -> list[RunRecord]:
    records = []
    total = len(config.methods) * len(config.seeds) * len(tasks)
    with tqdm(total=total, desc="all runs", unit="task", disable=not accelerator.is_local_main_process) as progress:
        for method in config.methods:
            for seed in config.seeds:
                baselines = single_task_baselines(config, output, method, seed, tasks, accelerator, log) \
                    if config.single_task_baselines else None
                job = StreamJob(config, method, seed, output.run(method, seed), resume, baselines, force=force)
                records.append(run_stream(job, tasks, accelerator, log, progress)[0])
    return records


def fresh_output() -> Path:
    """A new folder under ``runs/`` named by the date and time (a number added when it is taken)."""
    stem = LATEST.parent / time.strftime("%Y-%m-%d_%H-%M-%S")
    candidate, number = stem, 1
    while candidate.exists() or candidate.is_symlink():
        number += 1
        candidate = stem.with_name(f"{stem.name}-{number}")
    return candidate


def point_latest(folder: Path, log) -> None:
    """``runs/latest`` -> ``folder`` (a symbolic link, replaced atomically). A real folder of that
    name (written by jumplora before 2026-12-07) is left as it is."""
    if LATEST.exists() and not LATEST.is_symlink():
        log(f"note: {LATEST} is a folder of an earlier run, not a link: it is kept, and this run is in {folder}")
        return
    tmp = LATEST.with_name(LATEST.name + ".tmp-link")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(folder.name)
    tmp.replace(LATEST)


def _extends(output: OutputFolder, config: RunConfig) -> bool:
    saved = output.saved_settings()
    return (saved.get("add_tasks") or []) != (config.data.add_tasks or [])


def _notes(config: RunConfig, accelerator, tasks, log) -> None:
    if accelerator.device.type == "cpu" and config.precision != "fp32" and not (
            config.precision == "bf16" and cpu_has_bf16()):
        # Measured: the demo's training steps ran ~30x slower in bf16-base than in fp32 on an AVX2 CPU;
        # bf16 autocast on a CPU with bf16 instructions is faster than fp32 (benchmarks/causal_step.py).
        why = "it stores the weights in bf16" if config.precision == "bf16-base" else "no bf16 matrix instructions"
        log(f"note: precision {config.precision} on this CPU is usually slower than fp32 ({why}); it is meant for "
            "GPUs, and --precision bf16 for CPUs with AVX-512 BF16 or AMX")
    if accelerator.device.type == "cpu" and config.compile:
        log(f"note: --compile {config.compile} on a CPU spends minutes compiling before the first step; "
            "it is meant for GPUs, where an eager step waits on Python")
    if (config.weights.ella_lambda is not None or config.weights.ella_lambda_search) and not any(
            m.endswith("ella") for m in config.methods):
        log(f"note: ELLA's λ settings do not apply to {', '.join(config.methods)} (only to ella and jumplora+ella)")
    for task in tasks:
        for note in task.notes:
            log(note)
        if any(task.dropped.values()):
            log(f"  {task.name}: dropped {task.dropped} records whose label is not one of {list(task.labels)}")
    for warning in step_warnings(config, tasks):
        log(warning)


def cpu_has_bf16() -> bool:
    """Whether the CPU has bf16 matrix instructions (AVX-512 BF16 or AMX), by its Linux flags."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


def step_warnings(config: RunConfig, tasks) -> list[str]:
    """A warning per task with too few optimiser steps to mean much: under 10, or so few that the
    JumpLoRA schedule has no room (S_start = S_final: τ is never learned, the gate keeps its k
    entries)."""
    warnings = []
    for task in tasks:
        steps = math.ceil(len(task.train) / config.optim.batch_size) * config.optim.epochs
        schedule = JumpSchedule(max(steps, 1), config.adapter.start_fraction, config.adapter.final_fraction)
        if steps < 10 or schedule.start == schedule.final:
            warnings.append(
                f"warning: task {task.name} gets {steps} optimiser step(s) ({len(task.train)} examples, batch "
                f"{config.optim.batch_size}, {config.optim.epochs} epoch(s)); S_start = {schedule.start}, S_final = "
                f"{schedule.final}: the gate and τ need more. Give it more examples (--max-train-per-task), a "
                "smaller --batch-size or more --epochs")
    if config.weights.ella_lambda == "auto" and any(m.endswith("ella") for m in config.methods):
        from jumplora.strategies.ella import BALANCE_STEPS

        unweighted = BALANCE_STEPS + 1  # the first step (ΔW = 0, no penalty to measure), then the measured ones
        for task in tasks[1:]:
            steps = math.ceil(len(task.train) / config.optim.batch_size) * config.optim.epochs
            if steps <= 2 * unweighted:
                warnings.append(
                    f"warning: task {task.name} gets {steps} optimiser step(s); --ella-lambda auto trains its first "
                    f"{min(steps, unweighted)} without the ELLA penalty (it measures it there), so the penalty acts on "
                    f"{max(steps - unweighted, 0)} of them. Give it more steps or a numeric --ella-lambda")
    return warnings


def single_task_baselines(config, output: OutputFolder, method, seed, tasks, accelerator, log) -> list[float]:
    """a_{0,i}: the same method trained on task i alone from the base model (cached on disk, for FWT)."""
    values = []
    key = {k: v for k, v in config.to_dict().items() if k not in ("methods", "seeds", "output", "single_task_baselines")}
    for task in tasks:
        folder = output.single_task(method, seed, task.name)
        previous = None
        if folder.results.is_file():
            try:
                previous = RunRecord.read(folder.results)
            except JumploraError:
                previous = None
        if previous is not None and previous.config_key == key and previous.finished_tasks == 1:
            values.append(previous.accuracy_matrix[0][0])
            continue
        record, _ = run_stream(StreamJob(config, method, seed, folder, config_key=key), [task], accelerator, log)
        values.append(record.accuracy_matrix[0][0])
    return values
