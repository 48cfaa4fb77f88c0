"""Run a stream of tasks: train each, evaluate every seen task, record the accuracy matrix.

For each method and seed: ``OUTPUT/<method>/seed<k>/results.json`` (rewritten after every task, so
a stopped run keeps what it finished), ``deltas/<t>-<task>.safetensors`` (each task's merged update)
and ``model/`` (the final merged model and tokenizer, loadable with plain transformers).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate.utils import set_seed

from jumplora import metrics
from jumplora.adapters import TaskUpdate
from jumplora.checkpoint import (
    check_base,
    latest_checkpoint,
    load_checkpoint,
    read_manifest,
    record_delta,
    restore_rng,
    rng_state,
    save_checkpoint,
    write_json,
    write_text,
)
from jumplora.config import RunConfig, load_config, load_yaml
from jumplora.data import Task, is_correct
from jumplora.data.stream import resolve_stream
from jumplora.errors import JumploraError
from jumplora.families import CausalFamily, load_model
from jumplora.families.loading import load_config
from jumplora.families.sources import resolve_model
from jumplora.strategies.methods import make_strategy, parse_method
from jumplora.train import batches, make_accelerator, train_task

CONFIG_FILE = "config.yaml"  # the resolved configuration of a run, at the top of its output folder


def evaluate(model, family, task: Task, batch_size: int, split: str = "test", accelerator=None) -> float:
    """Accuracy (percent) on one split of the task, exact match after normalisation."""
    return evaluate_answers(model, family, task, batch_size, {}, split, accelerator)[0]


def evaluate_answers(model, family, task: Task, batch_size: int, other_tasks: dict[str, tuple[str, ...]],
                     split: str = "test", accelerator=None) -> tuple[float, dict[str, int]]:
    """Accuracy (percent) on one split of the task, and where the answers come from
    (:func:`jumplora.metrics.answer_origins` against the labels of ``other_tasks``).

    With an ``accelerator`` of several processes each one predicts every n-th example and the
    counts are summed over the processes: the same numbers in 1/n of the time.
    """
    examples = task.split(split)
    if not examples:
        raise JumploraError(f"task {task.name} has no {split} examples to evaluate on")
    shards = accelerator.num_processes if accelerator is not None else 1
    if shards > 1:
        examples = examples[accelerator.process_index :: shards]
    predictions = family.predict(model, task, examples, batch_size=batch_size) if examples else []
    correct = sum(is_correct(p, e.label) for p, e in zip(predictions, examples))
    origins = metrics.answer_origins(predictions, task.labels, other_tasks)
    counts = [correct, len(examples), *origins.values()]
    if shards > 1:
        counts = accelerator.reduce(torch.tensor(counts, dtype=torch.float64, device=accelerator.device),
                                    reduction="sum").tolist()
    correct, total, *values = counts
    return 100.0 * (correct / total), dict(zip(origins, map(int, values)))


def run(config: RunConfig, log=print, resume: bool = False) -> list[dict]:
    """Every method × seed of the config; returns their results and prints a summary table."""
    accelerator = make_accelerator(config.device, config.precision, config.log_with, config.output)
    output = Path(config.output)
    if accelerator.is_main_process:
        _check_writable(output)
    tasks = resolve_stream(config)
    if accelerator.is_main_process and not resume:
        write_text(output / CONFIG_FILE, yaml.safe_dump(config.to_dict(), sort_keys=False))
    log(f"stream: {' -> '.join(t.name for t in tasks)}  ({', '.join(f'{t.name} {len(t.train)}/{len(t.test)}' for t in tasks)} train/test)")
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
    all_results = []
    for method in config.methods:
        for seed in config.seeds:
            baselines = single_task_baselines(config, method, seed, tasks, accelerator, log) if config.single_task_baselines else None
            all_results.append(run_stream(config, method, seed, tasks, accelerator, log, baselines, resume=resume)[0])
    if accelerator.is_main_process:
        log(summary_table(all_results))
    return all_results


# Settings that decide where and how fast a run goes, not what it learns: a resume may change them
# without --force (a run started on one machine can finish on another, compiled or not). Every
# change is recorded in results.json under "resumes".
EXECUTION_SETTINGS = ("compile", "device", "eval_batch_size", "keep_checkpoints", "log_with", "save_model")


def resumable_config(output: Path, overrides: dict, force: bool = False) -> RunConfig:
    """The saved configuration of the run in ``output`` with ``overrides``. A change of a setting
    outside :data:`EXECUTION_SETTINGS` is refused (naming the keys) unless ``force``; ``output`` is
    the folder given, wherever the run was first written (a moved run resumes in its new place)."""
    saved = output / CONFIG_FILE
    if not saved.is_file():
        raise JumploraError(f"no run to resume in {output} (no {CONFIG_FILE}): pass the --output of a run")
    config = load_config(saved, overrides={"output": str(output), **overrides})
    refused = [k for k in changed_settings(load_config(saved).to_dict(), config.to_dict())
               if k not in EXECUTION_SETTINGS]
    if refused and not force:
        raise JumploraError(f"the run in {output} used other settings for {', '.join(refused)}: "
                            "drop those flags, or add --force to resume with them")
    return config


def changed_settings(before: dict, after: dict) -> dict:
    """``{key: {"was": old, "now": new}}`` for each setting that differs, the output folder aside."""
    return {k: {"was": before.get(k), "now": v} for k, v in after.items() if k != "output" and before.get(k) != v}


def sweep(path: Path, force: bool = False, log=print) -> Path:
    """Every order of a sweep file (``order`` may be a list) into OUTPUT/order<k>, then the report.

    Runs already complete are skipped and stopped ones resumed (their settings must not have changed).
    """
    values = load_yaml(path)
    orders = values.pop("order", None)
    orders = orders if isinstance(orders, list) else [orders]
    output = Path(values.pop("output", "runs/sweep"))
    folders = []
    for order in orders:
        folder = output / (f"order{order}" if order is not None else "stream")
        settings = {**values, "order": order, "output": str(folder)}
        if (folder / CONFIG_FILE).is_file():
            run(resumable_config(folder, settings, force), log=log, resume=True)
        else:
            run(load_config(overrides=settings), log=log)
        folders.append(folder)
    from jumplora.report import build_report

    return build_report(folders, output / "report")


def _check_writable(output: Path) -> None:
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise JumploraError(f"output directory {output} is not writable ({error.strerror}): pass --output DIR") from None


def run_stream(config, method, seed, tasks, accelerator, log=print, single_task=None, output=None, resume=False):
    """One method, one seed, the whole stream; returns its results and the final merged model.

    After each task: the task's update in ``deltas/`` (with its SHA-256 in the manifest),
    ``results.json`` and a checkpoint, in that order. With ``resume`` the newest checkpoint is
    loaded and the run goes on at the first unfinished task; a finished run is left as it is.
    """
    spec = parse_method(method)
    out = Path(output or Path(config.output) / method / f"seed{seed}")
    main = accelerator.is_main_process
    previous = _finished_results(out, len(tasks)) if resume else None
    if previous is not None:
        log(f"[{method} seed {seed}] already finished in {out}")
        return previous, None
    if main and not resume and out.exists():
        shutil.rmtree(out)  # a fresh run replaces an earlier one in the same folder
    accelerator.wait_for_everyone()
    set_seed(seed)
    model, tokenizer, family = _load(config, accelerator)
    ranker = _ranker(config, family)
    strategy = make_strategy(spec, model, config, len(tasks))
    if main:
        (out / "deltas").mkdir(parents=True, exist_ok=True)
    T = len(tasks)
    accuracy = np.full((T, T), np.nan)
    results = _empty_results(config, method, seed, tasks)
    masks: list[dict[str, torch.Tensor]] = []
    first = 0
    checkpoint = latest_checkpoint(out) if resume else None
    if checkpoint is not None:
        first, restored, accuracy, masks = _restore(checkpoint, out, model, strategy, spec)
        results = {**results, **restored}  # fields newer than the checkpoint start empty
        log(f"[{method} seed {seed}] resuming after task {first} of {T} from {checkpoint.name}")
        # The record says which settings the rest of the run used: results["config"] is the latest.
        settings = config.to_dict()
        changed = changed_settings(results["config"], settings)
        results.setdefault("resumes", []).append({"after_task": first, "changed": changed})
        results["config"] = settings
        if changed:
            log(f"[{method} seed {seed}] with changed settings: "
                + ", ".join(f"{k} {v['was']!r} -> {v['now']!r}" for k, v in changed.items()))
    started = time.perf_counter()
    if config.log_with:
        accelerator.init_trackers(f"{method}-seed{seed}", config=_flat(config.to_dict()))
    steps_done = sum(v["steps"] for v in results["timing"]["tasks"].values())
    stages = [(T - 1, tasks)] if spec.base == "mtl" else [(t, [task]) for t, task in enumerate(tasks)]
    for t, stage_tasks in stages:
        if t < first:
            continue
        label = "+".join(task.name for task in stage_tasks)
        plan = batches(stage_tasks, config.batch_size, config.epochs, seed * 1000 + t, None)
        name = f"{label} ({method}, seed {seed})"
        if config.ella_lambda_search and spec.base == "ella":
            info = search_lambda(model, family, strategy, t, plan, tasks, config, accelerator, name, log)
            results["chosen_lambda"] = strategy.ella_lambdas[: t + 1]
            results.setdefault("lambda_search", {})[label] = info["search"]
        else:
            info = train_task(model, family, strategy, t, plan, config, accelerator, name, steps_done)
        steps_done += info["steps"]
        if t == T - 1:
            strategy.finish()
        update = info["update"]
        eval_started = time.perf_counter()
        _evaluate_seen(model, family, ranker, tasks, t, config, accelerator, accuracy, results)
        eval_seconds = time.perf_counter() - eval_started
        if update is not None and spec.jump:
            masks.append({name: mask.cpu() for name, mask in update.masks().items()})
            _record_sparsity(results, label, update, info["thresholds"], masks)
            results["threshold_trace"][label] = info["threshold_trace"]
            results["gate"][label] = info["gate"]
        results["losses"][label] = info["losses"]
        results["timing"]["tasks"][label] = {"train_s": round(info["seconds"], 3), "eval_s": round(eval_seconds, 3),
                                            "steps": info["steps"]}
        results["accuracy_matrix"] = metrics.accuracy_matrix_to_json(accuracy)
        results["metrics"] = metrics.run_metrics(accuracy, t + 1, single_task)
        results["single_task_accuracy"] = single_task
        results["timing"]["total_s"] = round(time.perf_counter() - started, 3)
        results["finished_tasks"] = t + 1
        if main:
            if update is not None:
                update.metadata = {"task": label, "method": method, "seed": str(seed), "index": str(t)}
                path = out / "deltas" / f"{t:02d}-{label}.safetensors"
                update.save(path)
                record_delta(out, t, label, path)
            write_json(out / "results.json", results)
            save_checkpoint(out / "checkpoints" / f"{t:02d}-{label}", model, strategy.state(),
                            {"index": t, "results": results}, keep=config.keep_checkpoints,
                            changed=strategy.changed_weights())
            log(f"[{method} seed {seed}] after {label}: " + ", ".join(f"{tasks[i].name} {accuracy[t, i]:.1f}" for i in range(t + 1)))
        accelerator.wait_for_everyone()
    if main and config.save_model:
        model.save_pretrained(out / "model")
        tokenizer.save_pretrained(out / "model")
    if config.log_with:
        accelerator.end_training()
    return results, model


def _evaluate_seen(model, family, ranker, tasks, t, config, accelerator, accuracy, results) -> None:
    """Row t of the accuracy matrix (and of the answer origins; with ``ranker``, of the ranked
    accuracy matrix too): every task seen so far, after training task t."""
    labels = {task.name: task.labels for task in tasks}
    for i in range(t + 1):
        others = {name: values for name, values in labels.items() if name != tasks[i].name}
        accuracy[t, i], results["answer_origins"][t][i] = evaluate_answers(
            model, family, tasks[i], config.eval_batch_size, others, accelerator=accelerator)
    if ranker is not None:
        ranked = metrics.accuracy_matrix_from_json(results.get("rank_accuracy_matrix") or
                                                   [[None] * len(tasks) for _ in tasks])
        for i in range(t + 1):
            ranked[t, i] = evaluate(model, ranker, tasks[i], config.eval_batch_size, accelerator=accelerator)
        results["rank_accuracy_matrix"] = metrics.accuracy_matrix_to_json(ranked)
        results["rank_metrics"] = metrics.run_metrics(ranked, t + 1)


def _ranker(config, family):
    """With ``also_rank``, the causal family that scores by ranking the options, else None."""
    if not config.also_rank:
        return None
    if family.name != "causal" or family.mode != "generate":
        raise JumploraError(f"--also-rank scores a generating causal model a second way, but this run's model "
                            f"is {family.name}" + (" scored by rank already" if family.name == "causal" else "")
                            + ": drop --also-rank")
    return CausalFamily(family.tokenizer, family.max_source_length, mode="rank")


def _flat(values: dict) -> dict:
    # Trackers take scalars and strings as hyper-parameters.
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in values.items()}


def _finished_results(out: Path, num_tasks: int) -> dict | None:
    """The results of a run that got through every task and saved what it had to, else None."""
    try:
        results = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return None
    complete = results.get("finished_tasks") == num_tasks
    return results if complete and (out / "model").exists() >= bool(results["config"]["save_model"]) else None


def _restore(checkpoint: Path, out: Path, model, strategy, spec):
    """Model weights, the method's state, the results so far and the RNG states of a checkpoint."""
    model_state, tensors, info = load_checkpoint(checkpoint)
    rng = {k: v for k, v in tensors.items() if k.startswith("rng/")}
    strategy.restore({k: v for k, v in tensors.items() if not k.startswith("rng/")}, set(model_state))
    # The weights the checkpoint left out must be the freshly loaded base model's.
    base = info.get("base", {})  # absent from checkpoints that kept every weight
    check_base(model.state_dict(), base, checkpoint)
    try:
        unknown = model.load_state_dict(model_state, strict=False)
        missing = sorted(set(unknown.missing_keys) - set(base))
        if unknown.unexpected_keys or missing:
            raise RuntimeError(f"unexpected keys {unknown.unexpected_keys[:3]}, missing keys {missing[:3]}")
    except RuntimeError as error:
        raise JumploraError(f"checkpoint {checkpoint} does not fit this model ({str(error).splitlines()[0]})") from None
    results = info["results"]
    accuracy = metrics.accuracy_matrix_from_json(results["accuracy_matrix"])
    masks = []
    if spec.jump:
        for entry in read_manifest(out)[: info["index"] + 1]:
            masks.append({k: m for k, m in TaskUpdate.load(out / "deltas" / entry["file"]).masks().items()})
    restore_rng(rng, info["rng"])
    return info["index"] + 1, results, accuracy, masks


def search_lambda(model, family, strategy, t, plan, tasks, config, accelerator, name, log) -> dict:
    """ELLA's λ for task t by the paper's search (App. A.2): train the task once per candidate from the
    same starting state (weights, W_past, RNG) and keep the candidate with the best dev accuracy
    averaged over the tasks seen so far."""
    start = _snapshot(model, strategy)
    best, scores = None, {}
    for lam in config.ella_lambda_grid:
        _restore_snapshot(start, model, strategy)
        strategy.ella_lambdas[t] = lam
        info = train_task(model, family, strategy, t, plan, config, accelerator, f"{name} λ={lam:g}")
        scores[f"{lam:g}"] = float(np.mean([evaluate(model, family, task, config.eval_batch_size, "dev", accelerator)
                                            for task in tasks[: t + 1]]))
        if best is None or scores[f"{lam:g}"] > best[0]:
            best = (scores[f"{lam:g}"], lam, info, _snapshot(model, strategy))
    _, lam, info, state = best
    _restore_snapshot(state, model, strategy)
    strategy.ella_lambdas[t] = lam
    log(f"  λ search for {name}: dev accuracy {scores} -> λ = {lam:g}")
    return {**info, "search": scores}


def _snapshot(model, strategy) -> tuple:
    rng_tensors, rng_json = rng_state()
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            {k: v.clone() for k, v in strategy.ella.past.items()}, rng_tensors, rng_json)


def _restore_snapshot(snapshot: tuple, model, strategy) -> None:
    weights, past, rng_tensors, rng_json = snapshot
    model.load_state_dict(weights)
    strategy.ella.past = {k: v.clone() for k, v in past.items()}
    restore_rng(rng_tensors, rng_json)


def single_task_baselines(config, method, seed, tasks, accelerator, log) -> list[float]:
    """a_{0,i}: the same method trained on task i alone from the base model (cached on disk, for FWT)."""
    values = []
    for task in tasks:
        cache = Path(config.output) / method / "single_task" / f"seed{seed}" / task.name
        cached = cache / "results.json"
        key = {k: v for k, v in config.to_dict().items() if k not in ("methods", "seeds", "output", "single_task_baselines")}
        if cached.is_file():
            previous = json.loads(cached.read_text())
            if previous.get("config_key") == key and previous.get("finished_tasks") == 1:
                values.append(previous["accuracy_matrix"][0][0])
                continue
        result, _ = run_stream(config, method, seed, [task], accelerator, log, output=cache)
        result["config_key"] = key
        if accelerator.is_main_process:
            write_json(cached, result)
        values.append(result["accuracy_matrix"][0][0])
    return values


def _load(config, accelerator):
    options = {"max_source_length": config.max_source_length,
               "dtype": torch.bfloat16 if config.precision == "bf16-base" else torch.float32}
    source = resolve_model(config.model)
    model, tokenizer, family = load_model(source, family=config.family, trust_remote_code=config.trust_remote_code,
                                          **options, **_family_options(config, source))
    return model.to(accelerator.device), tokenizer, family


def _family_options(config, source) -> dict:
    # Only the options of the model's own family: load_model checks them against it.
    from jumplora.families import detect_family

    name = config.family or detect_family(load_config(source, config.trust_remote_code))
    return {"causal": {"mode": config.causal_mode}, "encoder": {"temperature": config.encoder_temperature}}.get(name, {})


def _empty_results(config, method, seed, tasks) -> dict:
    return {
        "tasks": [t.name for t in tasks], "method": method, "model": resolve_model(config.model).label,
        "seed": seed, "accuracy_matrix": None, "metrics": {}, "single_task_accuracy": None,
        "sparsity": {}, "mean_sparsity": {}, "thresholds": {}, "threshold_trace": {}, "jaccard": {"mean_with_previous": [], "per_layer": {}},
        "gate": {}, "answer_origins": [[None] * len(tasks) for _ in tasks],
        "losses": {}, "dropped": {t.name: t.dropped for t in tasks}, "config": config.to_dict(),
        "timing": {"tasks": {}}, "finished_tasks": 0, "collapsed": [],
    }


def _record_sparsity(results, label, update, thresholds, masks) -> None:
    sparsity = update.sparsity()
    results["sparsity"][label] = sparsity
    results["mean_sparsity"][label] = float(np.mean(list(sparsity.values())))
    results["thresholds"][label] = thresholds
    if any(s in (0.0, 1.0) for s in sparsity.values()):
        # A gate that keeps nothing (or everything) is no longer a sparse update: say so.
        results["collapsed"].append(label)
    # Only the new task's row is computed: the matrix of the earlier tasks is already in the results
    # (J is symmetric), so a stream of T tasks costs O(T²) comparisons in all, not O(T³).
    previous, per_layer = results["jaccard"]["per_layer"], {}
    for name in masks[-1]:
        row = [metrics.jaccard(masks[-1][name], m[name]) for m in masks]
        known = previous.get(name, [])
        if len(known) != len(masks) - 1:  # not built task by task: all pairs
            known = [[metrics.jaccard(a[name], b[name]) for b in masks[:-1]] for a in masks[:-1]]
        per_layer[name] = [values + [row[i]] for i, values in enumerate(known)] + [row]
    results["jaccard"]["per_layer"] = per_layer
    # Entry t of metrics.mean_jaccard_with_previous: the mean over layers of (1/t)·Σ_{s<t} J(t, s).
    last = [float(np.mean(matrix[-1][:-1])) for matrix in per_layer.values()] if len(masks) > 1 else None
    results["jaccard"]["mean_with_previous"].append(None if last is None else float(np.mean(last)))


def summary_table(all_results: list[dict]) -> str:
    lines = []
    for r in all_results:
        lines.append(f"\n{r['method']} (seed {r['seed']}) accuracy matrix, % (row t: after training task t)")
        names = r["tasks"]
        lines.append("  " + " ".join(f"{n[:12]:>12}" for n in names))
        for t, row in enumerate(r["accuracy_matrix"]):
            if any(v is not None for v in row):
                lines.append("  " + " ".join(f"{'':>12}" if v is None else f"{v:12.1f}" for v in row))
    lines.append("\nmethod                 seed      OA     BWT     FWT  sparsity  jaccard")
    for r in all_results:
        m = r["metrics"]
        sparsity = np.mean(list(r["mean_sparsity"].values())) if r["mean_sparsity"] else None
        jac = [v for v in r["jaccard"]["mean_with_previous"] if v is not None]
        cells = [m.get("oa"), m.get("bwt"), m.get("fwt"), None if sparsity is None else 100 * sparsity,
                 100 * float(np.mean(jac)) if jac else None]
        lines.append(f"{r['method']:<22} {r['seed']:>4} " + " ".join("       -" if c is None else f"{c:8.2f}" for c in cells))
        if r["collapsed"]:
            lines.append(f"  warning: the gate collapsed (sparsity 0% or 100%) on {', '.join(r['collapsed'])}")
    return "\n".join(lines)
