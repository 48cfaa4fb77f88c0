"""Train one task: an explicit loop over batches, no callbacks.

Data parallelism goes through ``accelerate``: under ``accelerate launch`` each process takes its
share of every global batch (rank r gets examples r, r+W, r+2W, ...), the model is wrapped for
gradient averaging, and the schedule, the τ initialisation and the merge see identical weights on
every rank, so every rank ends with the same merged model.
"""

from __future__ import annotations

import importlib.util
import math
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from tqdm.auto import tqdm

from jumplora import _compat
from jumplora.adapters import TaskUpdate
from jumplora.context import RunContext
from jumplora.data.tasks import Example, Task
from jumplora.errors import JumploraError
from jumplora.settings import check, setting

Batch = tuple[Task, list[Example]]


@dataclass
class OptimConfig:
    """AdamW over the trainable parameters, one pass over each task (the paper: lr 1e-3, no weight
    decay, a constant learning rate, batch 32, one epoch)."""

    TITLE: ClassVar[str] = "optimisation (the paper: AdamW, lr 1e-3, no weight decay, constant, batch 32, 1 epoch)"

    learning_rate: float = setting(1e-3, "AdamW's learning rate", above=0)
    weight_decay: float = setting(0.0, "AdamW's decoupled weight decay", minimum=0)
    warmup_steps: int = setting(0, "optimiser steps of linear warm-up at the start of each task", minimum=0)
    batch_size: int = setting(32, "training examples per optimiser step", minimum=1)
    epochs: int = setting(1, "passes over each task's training examples", minimum=1)

    def __post_init__(self) -> None:
        check(self)


def make_accelerator(device: str, precision: str, log_with: list[str] | None = None,
                     project_dir: str | None = None) -> Accelerator:
    """One per run. Unused parameters are allowed: log τ takes part only from S_start on.

    Trackers (TensorBoard, Weights & Biases) start only when ``log_with`` names them."""
    # bf16-base needs no autocast: the weights themselves are bf16 (runner._load).
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16", "bf16-base": "no"}[precision]
    kwargs = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    if device == "cuda" and not torch.cuda.is_available():
        raise JumploraError("--device cuda asked for but no CUDA device is visible: use --device cpu or auto")
    if precision == "fp16" and (device == "cpu" or not torch.cuda.is_available()):
        # accelerate turns fp16 autocast off on a CPU: the run would be fp32 while its record says fp16.
        raise JumploraError("--precision fp16 is a GPU setting (a CPU would train in fp32): use fp32, or bf16 on a CPU "
                            "with bf16 instructions")
    for tracker in log_with or []:
        if importlib.util.find_spec(tracker) is None:
            raise JumploraError(f"--log-with {tracker} needs the {tracker} package: pip install {tracker}")
    try:
        accelerator = Accelerator(cpu=device == "cpu", mixed_precision=mixed, kwargs_handlers=kwargs,
                                  log_with=log_with or None, project_dir=project_dir)
    except ValueError as error:  # e.g. bf16 on a GPU without bf16 ("requires a supported device")
        raise JumploraError(f"--precision {precision} cannot run here ({error}): use --precision fp32") from None
    distributed = getattr(accelerator.state, "distributed_type", None)
    if distributed is not None and "FSDP" in str(distributed):
        # τ's initialisation and the sparsity statistics need the whole ΔW of every layer.
        raise JumploraError("FSDP shards ΔW across ranks, which the threshold initialisation cannot see: use DDP")
    return accelerator


def batches(tasks: Sequence[Task], batch_size: int, epochs: int, seed: int, limit: int | None) -> list[Batch]:
    """Shuffled single-task batches; with several tasks (mtl) their batches are interleaved."""
    rng = random.Random(seed)
    out: list[Batch] = []
    for _ in range(epochs):
        epoch: list[Batch] = []
        for task in tasks:
            examples = list(task.train if limit is None else task.train[:limit])
            rng.shuffle(examples)
            epoch += [(task, examples[i:i + batch_size]) for i in range(0, len(examples), batch_size)]
        if len(tasks) > 1:
            rng.shuffle(epoch)
        out += epoch
    return out


@dataclass
class TaskTraining:
    """What training one task gives: its merged update and how the training went."""

    update: TaskUpdate | None  # None when nothing was merged (seqlora before its last task)
    losses: list[float]  # the task loss per optimiser step
    thresholds: dict[str, float]  # τ per group at the end (JumpLoRA)
    threshold_trace: dict[str, list[float]]  # τ per group per step
    gate: dict  # the kept fraction and τ at S_start, S_final and the end
    steps: int
    seconds: float
    search: dict[str, float] | None = None  # ELLA's λ search: the dev accuracy of each λ


def train_task(ctx: RunContext, index: int, plan: list[Batch], label: str, first_step: int = 0) -> TaskTraining:
    """Train ``plan`` (one task's batches) with the context's method, then merge."""
    if not plan:
        raise JumploraError(f"task {label} has no training examples")
    config, accelerator, strategy = ctx.config, ctx.accelerator, ctx.strategy
    started = time.perf_counter()
    params = strategy.start_task(index, len(plan))
    optimizer = torch.optim.AdamW(params, lr=config.optim.learning_rate, weight_decay=config.optim.weight_decay)
    warmup = config.optim.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    wrapped, optimizer = accelerator.prepare(ctx.model, optimizer)
    if config.compile:
        # The forward and backward as a few compiled graphs instead of ~20,000 Python-dispatched
        # operations per step (T5-large), which bound an eager step on a GPU. A new task's adapters
        # and each step's γ reuse the graphs already built (AdaptedLinear keeps γ in a tensor).
        wrapped = torch.compile(wrapped, backend=config.compile)
    step_of = _Stepper(ctx, wrapped, optimizer, scheduler, label)
    losses, trace = [], []
    bar = tqdm(plan, desc=f"train {label}", unit="step", disable=not accelerator.is_local_main_process, leave=False)
    for step, batch in enumerate(bar):
        losses.append(step_of(batch, step))
        tau = strategy.threshold_tensor()
        if tau is not None:
            trace.append(tau)
        if accelerator.trackers:  # only with --log-with; step numbers run on across the stream's tasks
            scalars = {"train/loss": losses[-1], "train/lr": scheduler.get_last_lr()[0]}
            if tau is not None:
                scalars["train/tau_mean"] = float(tau.mean())
            accelerator.log(scalars, step=first_step + step)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    thresholds = strategy.thresholds()
    gate = strategy.gate_trace()
    # τ per group per step, e.g. {"model": [...]}: one transfer at the end of the task.
    threshold_trace = dict(zip(thresholds, torch.stack(trace).t().tolist())) if trace else {}
    accelerator.free_memory()
    update = strategy.end_task(_fisher_losses(ctx, plan))
    return TaskTraining(update, losses, thresholds, threshold_trace, gate, len(plan), time.perf_counter() - started)


class _Stepper:
    """One optimiser step on this process's share of a batch; returns the task loss (not the penalty)."""

    def __init__(self, ctx: RunContext, wrapped, optimizer, scheduler, label: str) -> None:
        self.ctx, self.wrapped, self.optimizer, self.scheduler, self.label = ctx, wrapped, optimizer, scheduler, label

    def __call__(self, batch: Batch, step: int) -> float:
        ctx, backend = self.ctx, self.ctx.config.compile
        accelerator, strategy = ctx.accelerator, ctx.strategy
        task, examples = batch
        strategy.set_step(step)
        rank, world = accelerator.process_index, accelerator.num_processes
        inputs = ctx.family.collate(task, examples[rank::world] or examples[:1])
        inputs = {k: v.to(accelerator.device) for k, v in inputs.items()}
        with accelerator.autocast(), _compile_errors(backend):
            loss = ctx.family.loss(self.wrapped, inputs)
            penalty = strategy.penalty()
            total = loss if penalty is None else loss + penalty
        # One device-to-host read per step for both numbers (each read waits for the queued work).
        loss_value, total_value = torch.stack([loss.detach().float(), total.detach().float()]).tolist()
        if not math.isfinite(total_value):
            raise JumploraError(
                f"the loss became {total_value} at step {step} of task {self.label}: lower the learning rate "
                "or use --precision fp32"
            )
        strategy.observe(loss_value, total_value)
        with _compile_errors(backend):  # the backward graph is compiled at its first use
            accelerator.backward(total)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value


@contextmanager
def _compile_errors(backend: str | None):
    """A failure of torch.compile (not of the run) as one line that says how to go on without it."""
    try:
        yield
    except Exception as error:
        if backend is None or not isinstance(error, _compat.dynamo_error_types()):
            raise
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        raise JumploraError(f"--compile {backend}: torch.compile failed on this model ({type(error).__name__}: "
                            f"{reason}); run without --compile") from None


def _fisher_losses(ctx: RunContext, plan: list[Batch], max_batches: int = 8) -> Iterator[torch.Tensor]:
    """Losses of a few of the task's batches at the trained weights (EWC's empirical Fisher)."""
    for task, examples in plan[: max_batches]:
        batch = {k: v.to(ctx.accelerator.device) for k, v in ctx.family.collate(task, examples).items()}
        yield ctx.family.loss(ctx.model, batch)
