"""Run every method × seed of a configuration over its stream of tasks, then print the summary.

For each method and seed: ``OUTPUT/<method>/seed<k>/results.json`` (rewritten after every task, so
a stopped run keeps what it finished), ``deltas/<t>-<task>.safetensors`` (each task's merged update)
and ``model/`` (the final merged model and tokenizer, loadable with plain transformers). The loop
over one stream is :mod:`jumplora.loop`; resuming is :mod:`jumplora.resume`.
"""

from __future__ import annotations

import contextlib
import math
import shutil
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from jumplora.adapters import JumpSchedule
from jumplora.checkpoint import OutputLock, write_text
from jumplora.config import RunConfig, load_config
from jumplora.data.stream import resolve_stream
from jumplora.errors import JumploraError
from jumplora.families.loading import check_for_run
from jumplora.loop import run_stream
from jumplora.record import RESULTS, RunRecord
from jumplora.report.summary import summary_table
from jumplora.resume import CONFIG_FILE
from jumplora.train import make_accelerator


def run(config: RunConfig, log=print, resume: bool = False) -> list[RunRecord]:
    """Every method × seed of the config; returns their records and prints a summary table.

    Everything a user can get wrong (settings, data, the model, its adapters) is checked before the
    first byte is written; the output folder is then locked for the run, and a new run replaces
    the earlier run in it whole (its method folders and config.yaml) before it writes.
    """
    accelerator = make_accelerator(config.device, config.precision, config.log_with, config.output)
    output, main = Path(config.output), accelerator.is_main_process
    tasks = resolve_stream(config.data)
    check_for_run(config, tasks)
    if main:
        _check_writable(output)
    with OutputLock(output) if main else contextlib.nullcontext():
        if main and not resume:
            _clear_previous(output, log)
        if main and (not resume or _extends(output, config)):
            # A new run's settings; or, when a resume adds tasks, the stream the run now has.
            write_text(output / CONFIG_FILE, yaml.safe_dump(config.to_dict(), sort_keys=False))
        log(f"stream: {' -> '.join(t.name for t in tasks)}  "
            f"({', '.join(f'{t.name} {len(t.train)}/{len(t.test)}' for t in tasks)} train/test)")
        _notes(config, accelerator, tasks, log)
        records = _run_all(config, tasks, accelerator, log, resume)
    if main:
        log(summary_table(records, config.output))
    return records


def _run_all(config: RunConfig, tasks, accelerator, log, resume: bool) -> list[RunRecord]:
    records = []
    total = len(config.methods) * len(config.seeds) * len(tasks)
    with tqdm(total=total, desc="all runs", unit="task", disable=not accelerator.is_local_main_process) as progress:
        for method in config.methods:
            for seed in config.seeds:
                baselines = single_task_baselines(config, method, seed, tasks, accelerator, log) \
                    if config.single_task_baselines else None
                records.append(run_stream(config, method, seed, tasks, accelerator, log, baselines, resume=resume,
                                          progress=progress)[0])
    return records


def _clear_previous(output: Path, log) -> None:
    """Remove an earlier run in ``output``: its config.yaml and every ``<method>/seed<k>`` folder
    (a method folder left empty goes too). The single-task baselines (``<method>/single_task``)
    stay: each is keyed by its settings and reused only by a run of the same ones. Files that are
    not a run's are left alone."""
    earlier = sorted(seed for method in output.iterdir() if method.is_dir() for seed in method.glob("seed*")
                     if seed.is_dir())
    for folder in earlier:
        shutil.rmtree(folder)
        if not any(folder.parent.iterdir()):
            folder.parent.rmdir()
    (output / CONFIG_FILE).unlink(missing_ok=True)
    if earlier:
        log(f"replaced the earlier run in {output} ({', '.join(f'{d.parent.name}/{d.name}' for d in earlier)})")


def _extends(output: Path, config: RunConfig) -> bool:
    saved = load_config(output / CONFIG_FILE)
    return (saved.data.add_tasks or []) != (config.data.add_tasks or [])


def _notes(config: RunConfig, accelerator, tasks, log) -> None:
    if accelerator.device.type == "cpu" and config.precision != "fp32":
        # Measured: the demo's training steps ran ~30x slower in bf16-base than in fp32 on an AVX2 CPU.
        log(f"note: precision {config.precision} on a CPU is usually much slower than fp32 (no bf16/fp16 "
            "matrix units); it is meant for GPUs")
    if accelerator.device.type == "cpu" and config.compile:
        log(f"note: --compile {config.compile} on a CPU spends minutes compiling before the first step; "
            "it is meant for GPUs, where an eager step waits on Python")
    for task in tasks:
        if any(task.dropped.values()):
            log(f"  {task.name}: dropped {task.dropped} records whose label is not one of {list(task.labels)}")
    for warning in step_warnings(config, tasks):
        log(warning)


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
    return warnings


def _check_writable(output: Path) -> None:
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise JumploraError(f"output directory {output} is not writable ({error.strerror}): pass --output DIR") from None


def single_task_baselines(config, method, seed, tasks, accelerator, log) -> list[float]:
    """a_{0,i}: the same method trained on task i alone from the base model (cached on disk, for FWT)."""
    values = []
    key = {k: v for k, v in config.to_dict().items() if k not in ("methods", "seeds", "output", "single_task_baselines")}
    for task in tasks:
        cache = Path(config.output) / method / "single_task" / f"seed{seed}" / task.name
        cached = cache / RESULTS
        if cached.is_file():
            try:
                previous = RunRecord.read(cached)
            except JumploraError:
                previous = None
            if previous is not None and previous.config_key == key and previous.finished_tasks == 1:
                values.append(previous.accuracy_matrix[0][0])
                continue
        record, _ = run_stream(config, method, seed, [task], accelerator, log, output=cache)
        record.config_key = key
        if accelerator.is_main_process:
            record.write(cached)
        values.append(record.accuracy_matrix[0][0])
    return values
