"""The stream loop: one method, one seed, every task in order; train, evaluate, record, checkpoint.

After each task, in this order: the task's update in the run folder's ledger (``deltas/``, with
its SHA-256), ``results.json`` (the :class:`~jumplora.record.RunRecord`) and a checkpoint. With
``resume`` the newest checkpoint is loaded and the run goes on at the first unfinished task; a
finished run is left as it is. At the end the merged model is saved to ``model/``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from accelerate.utils import set_seed

from jumplora.checkpoint import save_checkpoint
from jumplora.context import RunContext
from jumplora.data.tasks import PROMPT_FORMATS
from jumplora.errors import JumploraError
from jumplora.evaluation import evaluate_seen, make_ranker
from jumplora.families.loading import load_for_run
from jumplora.families.sources import resolve_model
from jumplora.lambda_search import search_lambda, searchable
from jumplora.manifest import STREAM_KEYS, LearnedTask, LedgerEntry, ModelManifest
from jumplora.model_folder import Extras
from jumplora.record import RunRecord
from jumplora.resume import ROUTE_PREFIX, changed_settings, finished_record, restore
from jumplora.routed import VIEWS, RoutedEvaluation
from jumplora.routing import Router
from jumplora.run_folder import RunFolder
from jumplora.strategies.methods import make_strategy
from jumplora.states import TaskStates
from jumplora.strategies.registry import parse_method
from jumplora.train import TaskTraining, batches, train_task


@dataclass
class StreamJob:
    """One method and one seed of a run's settings, and where it writes."""

    config: object  # the RunConfig
    method: str
    seed: int
    folder: RunFolder
    resume: bool = False
    single_task: list[float] | None = None  # a_{0,i} of the single-task baselines (FWT), when made
    config_key: dict | None = None  # a single-task baseline's settings: the key of its cache
    force: bool = False  # resume although the data of a learned task changed
    base_label: str | None = None  # how the model it started from is named (teach: its first base, not the folder)
    base_weights: dict | None = None  # state 0 of the adapted layers, when the loaded model is not the base (teach)
    parent: dict | None = None  # the model version a teach started from: {generation, sha256, path}

    @property
    def name(self) -> str:
        return f"[{self.method} seed {self.seed}]"


def run_stream(job: StreamJob, tasks: list, accelerator, log=print, progress=None):
    """The whole stream of one job; returns its record and the final merged model (None for a run
    that was already finished). ``progress``: a bar advanced by one per task."""
    if job.resume and (done := finished_record(job.folder, [task.name for task in tasks])) is not None:
        log(f"{job.name} already finished in {job.folder.path} ({len(tasks)} tasks); to teach it more, pass "
            "--add-task-file FILE or --add-tasks NAMES")
        _advance(progress, len(tasks))
        return done, None
    run = StreamRun(job, tasks, accelerator, log)
    _advance(progress, run.first)
    for t, stage in run.stages():
        run.train_stage(t, stage)
        _advance(progress, len(stage))
    run.save_model()
    return run.record, run.ctx.model


def _advance(progress, tasks: int) -> None:
    if progress is not None:
        progress.update(tasks)


class StreamRun:
    """One job's way through the stream: its context (model, method, ...), record, masks, progress."""

    def __init__(self, job: StreamJob, tasks: list, accelerator, log) -> None:
        self.job, self.tasks, self.log = job, tasks, log
        self.spec = parse_method(job.method)
        config, folder, main = job.config, job.folder, accelerator.is_main_process
        if main and not job.resume:
            folder.remove()  # a fresh run replaces an earlier one in the same folder
        accelerator.wait_for_everyone()
        set_seed(job.seed)
        model, tokenizer, family = load_for_run(config, accelerator.device)
        # State 0 of the adapted layers, before anything is restored or trained (task states, exact rollback).
        self.base_weights = job.base_weights if job.base_weights is not None else self._base_weights(model)
        strategy = make_strategy(self.spec, model, config, len(tasks))
        self.ctx = RunContext(config, accelerator, model, tokenizer, family, strategy,
                              make_ranker(config.family_options.also_rank, family), log)
        if main:
            folder.ledger.folder.mkdir(parents=True, exist_ok=True)
        self.record = RunRecord(
            tasks=[t.name for t in tasks], method=job.method, seed=job.seed,
            model=self.base_label, dropped={t.name: t.dropped for t in tasks},
            config=config.to_dict(), config_key=job.config_key,
            data_sha256={task.name: task.fingerprints() for task in tasks})
        self.masks: list[dict[str, torch.Tensor]] = []
        self.ledger: list[dict] = []  # the entries of deltas/manifest.json, as written
        self.first, routers = 0, {}
        checkpoint = folder.latest_checkpoint() if job.resume else None
        if checkpoint is not None:
            routers = self._resume_from(checkpoint)
        self.routed = self._routed(routers) if config.route and self.base_weights is not None \
            and accelerator.num_processes == 1 else None
        # A resumed run's time goes on from what it had taken before (results.json, timing.total_s).
        self.started = time.perf_counter() - self.record.timing.get("total_s", 0.0)
        if config.log_with:
            accelerator.init_trackers(f"{job.method}-seed{job.seed}", config=_flat(config.to_dict()))
        self.steps_done = sum(v["steps"] for v in self.record.timing["tasks"].values())

    @property
    def base_label(self) -> str:
        return self.job.base_label or resolve_model(self.job.config.model).label

    def _base_weights(self, model) -> dict[str, torch.Tensor] | None:
        """The adapted layers' weights as loaded, by module name, for the methods whose updates
        add up to the model's weights (a fresh adapter per task, merged after it)."""
        if self.spec.adapter is None or not self.spec.adapter_per_task or self.spec.joint:
            return None
        from jumplora.adapters import AdapterSet

        names = AdapterSet.target_names(model, self.job.config.adapter_config(self.spec.adapter, self.spec.name))
        return {name: model.get_submodule(name).weight.detach().to("cpu", copy=True) for name in names}

    def _routed(self, tensors: dict) -> RoutedEvaluation:
        """The routed evaluation of the run: state 0 and the updates so far; the routers from the
        checkpoint (empty for a new run)."""
        states = TaskStates(self.base_weights, [self.job.folder.ledger.path(e) for e in self.ledger])
        routers = {view: Router.from_state(tensors, f"{ROUTE_PREFIX}{view}/") for view in VIEWS}
        return RoutedEvaluation(self.ctx, states, routers)

    def _resume_from(self, checkpoint) -> dict:
        job = self.job
        self.first, self.record, self.masks, self.ledger, routers = restore(checkpoint, job.folder, self.ctx, self.spec)
        self._check_data()
        names = [task.name for task in self.tasks]
        if self.record.tasks != names:  # --add-tasks: more tasks after the ones learned
            if not self.spec.adapter_per_task or self.spec.joint:
                raise JumploraError(f"{job.method} trains one adapter for the whole stream and merges it at the "
                                    "end: a finished run of it cannot take more tasks; start a new run")
            added = ", ".join(names[len(self.record.tasks):])
            if job.parent is None:
                self.log(f"{job.name} adding {added} after {self.record.tasks[-1]}")
            else:  # jumplora teach: the model folder is where the run goes on from
                self.log(f"{job.name} teaching {added} to the model of generation {job.parent['generation']} "
                         f"({', '.join(self.record.tasks)})")
            self.record.extend_to(names, {task.name: task.dropped for task in self.tasks})
        if job.parent is None:
            self.log(f"{job.name} resuming after task {self.first} of {len(self.tasks)} from {checkpoint.name}")
        # The record says which settings the rest of the run used: its config is the latest.
        settings = job.config.to_dict()
        changed = changed_settings(self.record.config, settings)
        self.record.resumes = [*(self.record.resumes or []), {"after_task": self.first, "changed": changed}]
        self.record.config = settings
        if changed and job.parent is None:
            self.log(f"{job.name} with changed settings: "
                     + ", ".join(f"{k} {v['was']!r} -> {v['now']!r}" for k, v in changed.items()))
        return routers

    def _check_data(self) -> None:
        """The tasks the run learned must be read as they were (their data's SHA-256s), unless
        forced. A split that is not read again (a taught model keeps only its tasks' test
        examples) is not compared."""
        known = dict(self.record.data_sha256 or {})  # runs written before 2026-12-07 recorded none
        for task in self.tasks[: len(self.record.tasks)]:
            now = {split: digest for split, digest in task.fingerprints().items() if task.split(split)}
            changed = [split for split, digest in known.get(task.name, {}).items() if split in now and now[split] != digest]
            if changed and not self.job.force:
                raise JumploraError(f"the {'/'.join(changed)} data of task {task.name} (read from {task.source or '?'}) "
                                    "is not what the run learned from: restore it (or run from the folder the run was "
                                    "started in), or add --force to go on with this data")
            known[task.name] = {**known.get(task.name, {}), **now}
        self.record.data_sha256 = {**known, **{t.name: t.fingerprints() for t in self.tasks if t.name not in known}}

    def stages(self):
        """(t, the tasks trained at t) not yet done: one task each, or all at once (joint, at T-1)."""
        T = len(self.tasks)
        stages = [(T - 1, self.tasks)] if self.spec.joint else [(t, [task]) for t, task in enumerate(self.tasks)]
        return [(t, stage) for t, stage in stages if t >= self.first]

    def keep_lambda(self, t: int) -> None:
        """Record task t's chosen λ. The earlier tasks' entries come from the record, not from the
        regulariser: after a resume or an extension it holds defaults for the tasks it did not train."""
        chosen = list(self.record.chosen_lambda or [])[:t]
        defaults = self.ctx.strategy.regulariser.lambdas
        chosen += [defaults[i] or 0.0 for i in range(len(chosen), t)]
        self.record.chosen_lambda = chosen + [defaults[t] or 0.0]

    def train_stage(self, t: int, stage: list) -> None:
        ctx, job, label = self.ctx, self.job, "+".join(task.name for task in stage)
        plan = batches(stage, ctx.config.optim.batch_size, ctx.config.optim.epochs, job.seed * 1000 + t, None)
        name = f"{label} ({job.method}, seed {job.seed})"
        if ctx.config.weights.ella_lambda_search and searchable(ctx.strategy):
            trained = search_lambda(ctx, t, plan, self.tasks, name)
        else:
            trained = train_task(ctx, t, plan, name, self.steps_done)
        if searchable(ctx.strategy):  # ELLA: the λ task t trained with (given, searched or auto)
            self.keep_lambda(t)
        balance = getattr(ctx.strategy.regulariser, "balance", {})
        if t in balance:  # ELLA's λ auto chose this task's λ
            self.record.lambda_balance = {**(self.record.lambda_balance or {}), label: balance[t]}
        self.steps_done += trained.steps
        if t == len(self.tasks) - 1:
            ctx.strategy.finish()
        eval_started = time.perf_counter()
        row = evaluate_seen(ctx, self.tasks, t)
        if self.routed is not None and row.answers is not None:
            self.routed.states.add(trained.update)
            for task in stage:
                self.routed.learn(task)
            for task in self.tasks[: t + 1]:  # state t is the model as it is now
                if task.name in row.answers:
                    self.routed.remember(t, task, row.answers[task.name])
            row.routed = self.routed.row(self.tasks, t, row.answers)
        self._record(t, label, trained, row, time.perf_counter() - eval_started)
        if ctx.main:
            self._write(t, label, trained)
        ctx.accelerator.wait_for_everyone()

    def _record(self, t: int, label: str, trained: TaskTraining, row, eval_seconds: float) -> None:
        record = self.record
        if trained.update is not None and self.spec.jump:
            self.masks.append({name: mask.cpu() for name, mask in trained.update.masks().items()})
            record.add_gate(label, trained, self.masks)
        record.add_training(label, trained, eval_seconds)
        record.add_row(t, row, self.job.single_task)
        record.timing["total_s"] = round(time.perf_counter() - self.started, 3)

    def _write(self, t: int, label: str, trained: TaskTraining) -> None:
        folder, update = self.job.folder, trained.update
        if update is not None:
            update.metadata = {"task": label, "method": self.job.method, "seed": str(self.job.seed), "index": str(t),
                               "base_model": self.base_label}
            if "+" not in label:  # one task (not mtl's joint stage): how to ask it, for `apply`
                task = self.tasks[t]
                update.metadata.update(instruction=task.instruction, labels=task.labels_json())
            path = folder.ledger.file_for(t, label)
            update.save(path)
            self.ledger = [e for e in self.ledger if e["index"] != t] + [folder.ledger.record(t, label, path)]
        self.record.write(folder.results)
        save_checkpoint(folder.checkpoint(t, label), self.ctx.model, self._state_tensors(),
                        {"index": t, "results": self.record.to_json()}, changed=self.ctx.strategy.changed_weights())
        folder.prune_checkpoints(self.job.config.keep_checkpoints)
        row = self.record.accuracy[t]
        self.log(f"{self.job.name} after {label}: " + ", ".join(f"{self.tasks[i].name} {row[i]:.1f}" for i in range(t + 1)))

    def _state_tensors(self) -> dict:
        """What a checkpoint keeps besides the weights: the method's state and the routers'."""
        tensors = dict(self.ctx.strategy.state())
        for view, router in (self.routed.routers.items() if self.routed is not None else []):
            tensors.update(router.state(f"{ROUTE_PREFIX}{view}/"))
        return tensors

    def save_model(self) -> None:
        """The final outputs: the merged model (whole or not at all) and, again, results.json (so a
        resume repairs either when it is missing or damaged)."""
        ctx, folder, config = self.ctx, self.job.folder, self.job.config
        if ctx.main and config.save_model:
            teachable = self.spec.adapter_per_task and not self.spec.joint
            extras = Extras(
                updates={e["file"]: folder.ledger.path(e) for e in self.ledger}, base_weights=self.base_weights,
                training=(self._state_tensors(), {"index": len(self.tasks) - 1, "results": self.record.to_json()})
                if teachable else None,
                router={k: v for k, v in self._state_tensors().items() if k.startswith(ROUTE_PREFIX)} or None,
                eval_data={f"{i:02d}-{task.name}": task.test for i, task in enumerate(self.tasks)}
                if config.keep_eval_data else None)
            folder.model.save(ctx.model, ctx.tokenizer, self.manifest(), extras)
        if ctx.main:
            self.record.write(folder.results)
        if self.job.config.log_with:
            ctx.accelerator.end_training()

    def manifest(self) -> ModelManifest:
        """What the final model learned and how to ask it (jumplora.manifest)."""
        config, family = self.job.config, self.ctx.family
        accuracy = self.record.accuracy
        last = accuracy[len(self.tasks) - 1]
        tasks = [LearnedTask(task.name, task.instruction, list(task.labels), _number(accuracy[i, i]), _number(last[i]),
                             task.fingerprints()["test"]) for i, task in enumerate(self.tasks)]
        ledger = [LedgerEntry(e["task"], self.job.method, e["file"], e["sha256"]) for e in self.ledger]
        settings = family.settings()
        return ModelManifest(
            base_model=self.base_label, family=family.name, scoring=family.scoring,
            max_source_length=settings["max_source_length"],
            encoder_temperature=config.family_options.encoder_temperature, tasks=tasks, ledger=ledger,
            exact=self.spec.adapter is not None and self.spec.adapter_per_task, family_settings=settings,
            prompt=PROMPT_FORMATS[config.data.prompt_format][0], prompt_format=config.data.prompt_format,
            run={"method": self.job.method, "seed": self.job.seed, "eval_batch_size": config.eval_batch_size,
                 "stream": {k: v for k, v in config.to_dict().items() if k in STREAM_KEYS},
                 "settings": config.to_dict()},
            generation=self.job.parent["generation"] + 1 if self.job.parent else 1, parent=self.job.parent,
            answering=self._answering())

    def _answering(self) -> dict | None:
        """The OA of the two ways to answer, as measured at the last row (jumplora.answering)."""
        record = self.record
        if record.routed_metrics is None:
            return None
        text = [v for v in (record.routing or {}).get("from_text", []) if v is not None]
        return {"merged_oa": record.metrics.get("oa"), "routed_oa": record.routed_metrics.get("oa"),
                "routing_from_text": sum(text) / len(text) if text else None}


def _number(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _flat(values: dict) -> dict:
    # Trackers take scalars and strings as hyper-parameters.
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in values.items()}
