"""The stream loop: one method, one seed, every task in order; train, evaluate, record, checkpoint.

After each task, in this order: the task's update in ``deltas/`` (with its SHA-256 in the
manifest), ``results.json`` (the :class:`~jumplora.record.RunRecord`) and a checkpoint. With
``resume`` the newest checkpoint is loaded and the run goes on at the first unfinished task; a
finished run is left as it is. At the end the merged model is saved to ``model/``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import set_seed

from jumplora import metrics
from jumplora.checkpoint import latest_checkpoint, read_manifest, record_delta, save_checkpoint
from jumplora.errors import JumploraError
from jumplora.evaluation import evaluate_seen, make_ranker
from jumplora.families.loading import load_for_run
from jumplora.families.sources import resolve_model
from jumplora.lambda_search import search_lambda, searchable
from jumplora.manifest import STREAM_KEYS, LearnedTask, LedgerEntry, ModelManifest, save_model_folder, scoring_of
from jumplora.record import RESULTS, RunRecord
from jumplora.resume import changed_settings, finished_record, restore
from jumplora.strategies.methods import make_strategy
from jumplora.strategies.registry import parse_method
from jumplora.train import batches, train_task


def run_stream(config, method, seed, tasks, accelerator, log=print, single_task=None, output=None, resume=False,
               progress=None):
    """One method, one seed, the whole stream; returns its record and the final merged model
    (None for a run that was already finished). ``progress``: a bar advanced by one per task."""
    out = Path(output or Path(config.output) / method / f"seed{seed}")
    if resume and (done := finished_record(out, [task.name for task in tasks])) is not None:
        log(f"[{method} seed {seed}] already finished in {out}")
        _advance(progress, len(tasks))
        return done, None
    run = StreamRun(config, method, seed, tasks, accelerator, out, log)
    run.start(resume)
    _advance(progress, run.first)
    for t, stage in run.stages():
        run.train_stage(t, stage, single_task)
        _advance(progress, len(stage))
    run.save_model()
    return run.record, run.model


def _advance(progress, tasks: int) -> None:
    if progress is not None:
        progress.update(tasks)


class StreamRun:
    """The state of one run through the stream: model, strategy, record, masks, progress."""

    def __init__(self, config, method, seed, tasks, accelerator, out: Path, log) -> None:
        self.config, self.method, self.seed, self.tasks = config, method, seed, tasks
        self.accelerator, self.out, self.log = accelerator, out, log
        self.spec = parse_method(method)
        self.main = accelerator.is_main_process
        self.name = f"[{method} seed {seed}]"

    def start(self, resume: bool) -> None:
        """Load the model and the strategy; go on from the newest checkpoint when resuming."""
        config, T = self.config, len(self.tasks)
        if self.main and not resume and self.out.exists():
            shutil.rmtree(self.out)  # a fresh run replaces an earlier one in the same folder
        self.accelerator.wait_for_everyone()
        set_seed(self.seed)
        self.model, self.tokenizer, self.family = load_for_run(config, self.accelerator.device)
        self.ranker = make_ranker(config.family_options.also_rank, self.family)
        self.strategy = make_strategy(self.spec, self.model, config, T)
        if self.main:
            (self.out / "deltas").mkdir(parents=True, exist_ok=True)
        self.accuracy = np.full((T, T), np.nan)
        self.record = RunRecord(
            tasks=[t.name for t in self.tasks], method=self.method, seed=self.seed,
            model=resolve_model(config.model).label, dropped={t.name: t.dropped for t in self.tasks},
            config=config.to_dict())
        self.masks: list[dict[str, torch.Tensor]] = []
        self.first = 0
        checkpoint = latest_checkpoint(self.out) if resume else None
        if checkpoint is not None:
            self._resume_from(checkpoint)
        self.started = time.perf_counter()
        if config.log_with:
            self.accelerator.init_trackers(f"{self.method}-seed{self.seed}", config=_flat(config.to_dict()))
        self.steps_done = sum(v["steps"] for v in self.record.timing["tasks"].values())

    def _resume_from(self, checkpoint: Path) -> None:
        self.first, self.record, self.accuracy, self.masks = restore(
            checkpoint, self.out, self.model, self.strategy, self.spec.jump)
        names = [task.name for task in self.tasks]
        if self.record.tasks != names:  # --add-tasks: more tasks after the ones learned
            if not self.spec.adapter_per_task or self.spec.joint:
                raise JumploraError(f"{self.method} trains one adapter for the whole stream and merges it at the "
                                    "end: a finished run of it cannot take more tasks; start a new run")
            self.log(f"{self.name} adding {', '.join(names[len(self.record.tasks):])} after {self.record.tasks[-1]}")
            self.record.extend_to(names, {task.name: task.dropped for task in self.tasks})
            self.accuracy = self.record.accuracy
        self.log(f"{self.name} resuming after task {self.first} of {len(self.tasks)} from {checkpoint.name}")
        # The record says which settings the rest of the run used: its config is the latest.
        settings = self.config.to_dict()
        changed = changed_settings(self.record.config, settings)
        self.record.resumes = [*(self.record.resumes or []), {"after_task": self.first, "changed": changed}]
        self.record.config = settings
        if changed:
            self.log(f"{self.name} with changed settings: "
                     + ", ".join(f"{k} {v['was']!r} -> {v['now']!r}" for k, v in changed.items()))

    def stages(self):
        """(t, the tasks trained at t) not yet done: one task each, or all at once (joint, at T-1)."""
        T = len(self.tasks)
        stages = [(T - 1, self.tasks)] if self.spec.joint else [(t, [task]) for t, task in enumerate(self.tasks)]
        return [(t, stage) for t, stage in stages if t >= self.first]

    def train_stage(self, t: int, stage: list, single_task) -> None:
        config, label = self.config, "+".join(task.name for task in stage)
        plan = batches(stage, config.optim.batch_size, config.optim.epochs, self.seed * 1000 + t, None)
        name = f"{label} ({self.method}, seed {self.seed})"
        if config.weights.ella_lambda_search and searchable(self.strategy):
            info = search_lambda(self.model, self.family, self.strategy, t, plan, self.tasks, config, self.accelerator,
                                 name, self.log)
            self.record.chosen_lambda = self.strategy.regulariser.lambdas[: t + 1]
            self.record.lambda_search = {**(self.record.lambda_search or {}), label: info["search"]}
        else:
            info = train_task(self.model, self.family, self.strategy, t, plan, config, self.accelerator, name,
                              self.steps_done)
        self.steps_done += info["steps"]
        if t == len(self.tasks) - 1:
            self.strategy.finish()
        eval_started = time.perf_counter()
        evaluate_seen(self.model, self.family, self.ranker, self.tasks, t, config.eval_batch_size, self.accelerator,
                      self.accuracy, self.record)
        self._record(t, label, info, time.perf_counter() - eval_started, single_task)
        if self.main:
            self._write(t, label, info["update"])
        self.accelerator.wait_for_everyone()

    def _record(self, t: int, label: str, info: dict, eval_seconds: float, single_task) -> None:
        record, update = self.record, info["update"]
        if update is not None and self.spec.jump:
            self.masks.append({name: mask.cpu() for name, mask in update.masks().items()})
            _record_sparsity(record, label, update, info["thresholds"], self.masks)
            record.threshold_trace[label] = info["threshold_trace"]
            record.gate[label] = info["gate"]
        record.losses[label] = info["losses"]
        record.timing["tasks"][label] = {"train_s": round(info["seconds"], 3), "eval_s": round(eval_seconds, 3),
                                         "steps": info["steps"]}
        record.accuracy_matrix = metrics.accuracy_matrix_to_json(self.accuracy)
        record.metrics = metrics.run_metrics(self.accuracy, t + 1, single_task)
        record.single_task_accuracy = single_task
        record.timing["total_s"] = round(time.perf_counter() - self.started, 3)
        record.finished_tasks = t + 1

    def _write(self, t: int, label: str, update) -> None:
        if update is not None:
            update.metadata = {"task": label, "method": self.method, "seed": str(self.seed), "index": str(t),
                               "base_model": resolve_model(self.config.model).label}
            if "+" not in label:  # one task (not mtl's joint stage): how to ask it, for `apply`
                task = self.tasks[t]
                update.metadata.update(instruction=task.instruction, labels="\n".join(task.labels))
            path = self.out / "deltas" / f"{t:02d}-{label}.safetensors"
            update.save(path)
            record_delta(self.out, t, label, path)
        self.record.write(self.out / RESULTS)
        save_checkpoint(self.out / "checkpoints" / f"{t:02d}-{label}", self.model, self.strategy.state(),
                        {"index": t, "results": self.record.to_json()}, keep=self.config.keep_checkpoints,
                        changed=self.strategy.changed_weights())
        row = self.accuracy[t]
        self.log(f"{self.name} after {label}: " + ", ".join(f"{self.tasks[i].name} {row[i]:.1f}" for i in range(t + 1)))

    def save_model(self) -> None:
        """The final outputs: the merged model (whole or not at all) and, again, results.json (so a
        resume repairs either when it is missing or damaged)."""
        if self.main and self.config.save_model:
            save_model_folder(self.model, self.tokenizer, self.manifest(), self.out / "model")
        if self.main:
            self.record.write(self.out / RESULTS)
        if self.config.log_with:
            self.accelerator.end_training()

    def manifest(self) -> ModelManifest:
        """What the final model learned and how to ask it (jumplora.manifest)."""
        options, last = self.config.family_options, self.accuracy[len(self.tasks) - 1]
        tasks = [LearnedTask(task.name, task.instruction, list(task.labels),
                             _number(self.accuracy[i, i]), _number(last[i])) for i, task in enumerate(self.tasks)]
        entries = read_manifest(self.out) if (self.out / "deltas" / "manifest.json").is_file() else []
        ledger = [LedgerEntry(e["task"], self.method, e["file"], e["sha256"]) for e in entries]
        exact = self.spec.adapter is not None and self.spec.adapter_per_task
        return ModelManifest(
            base_model=resolve_model(self.config.model).label, family=self.family.name,
            scoring=scoring_of(self.family), max_source_length=self.family.max_source_length,
            encoder_temperature=options.encoder_temperature, tasks=tasks, ledger=ledger, exact=exact,
            run={"method": self.method, "seed": self.seed, "eval_batch_size": self.config.eval_batch_size,
                 "stream": {k: v for k, v in self.config.to_dict().items() if k in STREAM_KEYS}})


def _number(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _flat(values: dict) -> dict:
    # Trackers take scalars and strings as hyper-parameters.
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in values.items()}


def _record_sparsity(record: RunRecord, label: str, update, thresholds: dict, masks: list[dict]) -> None:
    sparsity = update.sparsity()
    record.sparsity[label] = sparsity
    record.mean_sparsity[label] = float(np.mean(list(sparsity.values())))
    record.thresholds[label] = thresholds
    if any(s in (0.0, 1.0) for s in sparsity.values()):
        # A gate that keeps nothing (or everything) is no longer a sparse update: say so.
        record.collapsed.append(label)
    # The matrix of the earlier tasks is already in the record (J is symmetric): only the new
    # task's row is computed.
    known = record.jaccard["per_layer"]
    per_layer = {name: metrics.jaccard_matrix([m[name] for m in masks], known.get(name)) for name in masks[-1]}
    record.jaccard["per_layer"] = per_layer
    # Entry t of the mean over layers of metrics.mean_with_previous: (1/t)·Σ_{s<t} J(t, s).
    last = [metrics.mean_with_previous(matrix)[-1] for matrix in per_layer.values()]
    record.jaccard["mean_with_previous"].append(None if len(masks) == 1 else float(np.mean(last)))
