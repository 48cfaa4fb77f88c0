"""When a run may be resumed, with which settings, and its state back from a checkpoint.

A run resumes at its first unfinished task from its newest checkpoint, after checking it (its
hashes, its index) and the update ledger it continues (every file against its entry). Settings that decide where
and how fast it goes (:data:`EXECUTION_SETTINGS`) may change on a resume; any other change is
refused unless forced, and every change is recorded in the run's ``resumes``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from jumplora.adapters import TaskUpdate
from jumplora.checkpoint import check_base, load_checkpoint, restore_rng
from jumplora.config import RunConfig, absolute_paths
from jumplora.errors import JumploraError
from jumplora.record import RunRecord
from jumplora.run_folder import OutputFolder, RunFolder

ROUTE_PREFIX = "route/"  # the routers' statistics in a checkpoint: route/<view>/<task>/...

# Settings that decide where and how fast a run goes, not what it learns: a resume may change them
# without --force (a run started on one machine can finish on another, compiled or not). Every
# change is recorded in results.json under "resumes".
EXECUTION_SETTINGS = ("compile", "device", "eval_batch_size", "keep_checkpoints", "log_with", "save_model",
                      "keep_eval_data")
# A resume may append tasks (--add-tasks): the run then goes on with them after its own.
EXTENSION_SETTINGS = ("add_tasks",)


def resumable_config(output: OutputFolder, overrides: dict, force: bool = False) -> RunConfig:
    """The saved configuration of the run in ``output`` with ``overrides``. A change of a setting
    outside :data:`EXECUTION_SETTINGS` is refused (naming the keys) unless ``force``; the output is
    the folder given, wherever the run was first written (a moved run resumes in its new place)."""
    saved = absolute_paths(output.saved_settings())  # a run of before 2026-12-07 saved them as given
    config = RunConfig.from_dict(absolute_paths({**saved, "output": str(output.path), **overrides}))
    before = RunConfig.from_dict(saved).to_dict()
    refused = [k for k in changed_settings(before, config.to_dict()) if k not in EXECUTION_SETTINGS + EXTENSION_SETTINGS]
    added = config.data.add_tasks or []
    if added[: len(before.get("add_tasks") or [])] != (before.get("add_tasks") or []):
        refused.append("add_tasks")  # tasks already learned cannot be taken back by a resume
    if refused and not force:
        raise JumploraError(f"the run in {output.path} used other settings for {', '.join(refused)}: "
                            "drop those flags, or add --force to resume with them")
    return config


def changed_settings(before: dict, after: dict) -> dict:
    """``{key: {"was": old, "now": new}}`` for each setting that differs, the output folder aside."""
    return {k: {"was": before.get(k), "now": v} for k, v in after.items() if k != "output" and before.get(k) != v}


def finished_record(folder: RunFolder, tasks: list[str]) -> RunRecord | None:
    """The record of a run that got through every task of ``tasks`` and whose every output reads
    back whole: results.json, and (when the run saves one) the model folder, whose weights match
    their hashes and whose manifest lists the same tasks. Else None: resume then repairs what is
    missing or stale from the newest checkpoint."""
    try:
        record = RunRecord.read(folder.results)
        if record.finished_tasks != len(tasks) or record.tasks != tasks:
            return None
        if record.config.get("save_model", True):
            manifest = folder.model.verify()
            if [task.name for task in manifest.tasks] != tasks:
                return None  # the model of an extension that stopped before its new model was written
    except JumploraError:
        return None
    return record


def restore(checkpoint: Path, folder: RunFolder, ctx, spec) -> tuple[int, RunRecord, list, list[dict], dict]:
    """(first unfinished task, the record so far, the JumpLoRA masks so far, the update ledger's
    entries, the routers' tensors) from a checkpoint: the model's weights, the method's state and
    the RNG states are restored. The checkpoint must be the one its folder name says, and every update the run has
    made so far must be in the ledger with its own hash, task and index."""
    model_state, tensors, info = load_checkpoint(checkpoint)
    index, record = info["index"], RunRecord.from_json(info["results"], checkpoint)
    if not checkpoint.name.startswith(f"{index:02d}-") or record.finished_tasks != index + 1:
        raise JumploraError(f"checkpoint {checkpoint} says task {index} with {record.finished_tasks} finished, which its "
                            "name does not: it was edited or moved; delete it to resume from the one before")
    rng = {k: v for k, v in tensors.items() if k.startswith("rng/")}
    routers = {k: v for k, v in tensors.items() if k.startswith(ROUTE_PREFIX)}
    ctx.strategy.restore({k: v for k, v in tensors.items() if k not in rng and k not in routers}, set(model_state))
    # The weights the checkpoint left out must be the freshly loaded base model's.
    base = info.get("base", {})  # absent from checkpoints that kept every weight
    check_base(ctx.model.state_dict(), base, checkpoint)
    try:
        unknown = ctx.model.load_state_dict(model_state, strict=False)
        missing = sorted(set(unknown.missing_keys) - set(base))
        if unknown.unexpected_keys or missing:
            raise RuntimeError(f"unexpected keys {unknown.unexpected_keys[:3]}, missing keys {missing[:3]}")
    except RuntimeError as error:
        raise JumploraError(f"checkpoint {checkpoint} does not fit this model ({str(error).splitlines()[0]})") from None
    # The updates merged so far: one per task (adapter methods), the joint stage's (mtl), or none.
    merged = [index] if spec.joint else list(range(index + 1)) if spec.adapter and spec.adapter_per_task else []
    entries = checked_ledger(folder, record, merged)
    masks: list[dict[str, torch.Tensor]] = []
    if spec.jump:
        masks = [TaskUpdate.load(folder.ledger.path(entry)).masks() for entry in entries]
    restore_rng(rng, info["rng"])
    return index + 1, record, masks, entries, routers


def checked_ledger(folder: RunFolder, record: RunRecord, merged: list[int]) -> list[dict]:
    """The ledger's entries of the tasks ``merged`` so far, each checked against its file: present,
    with its SHA-256, and its own metadata naming the same task and index (a removed or swapped
    entry is refused: resuming on it would lose a task from the model's ledger)."""
    from jumplora.files import sha256

    if not merged:
        return []
    entries = [e for e in folder.ledger.entries() if e["index"] <= merged[-1]]
    indices = [e["index"] for e in entries]
    if indices != merged:
        raise JumploraError(f"{folder.ledger.index_file} lists the updates of tasks {indices}, not of tasks {merged}: "
                            "restore it (or start the run again)")
    for entry in entries:
        path = folder.ledger.path(entry)
        if not path.is_file() or sha256(path) != entry["sha256"]:
            raise JumploraError(f"{path} is missing or does not match its SHA-256 in {folder.ledger.index_file}: "
                                "restore it (or start the run again)")
        own = TaskUpdate.load(path).metadata
        learned = record.tasks[entry["index"]] if entry["index"] < len(record.tasks) else None
        named = entry["task"] in (learned, "+".join(record.tasks))  # one task, or mtl's joint stage
        if (own.get("task"), own.get("index")) != (entry["task"], str(entry["index"])) or not named:
            raise JumploraError(f"{path} holds the update of task {own.get('task')} (index {own.get('index')}) but "
                                f"{folder.ledger.index_file} lists it as {entry['task']} (index {entry['index']}): "
                                "the files were swapped or renamed; restore them")
    return entries
