"""When a run may be resumed, with which settings, and its state back from a checkpoint.

A run resumes at its first unfinished task from its newest checkpoint. Settings that decide where
and how fast it goes (:data:`EXECUTION_SETTINGS`) may change on a resume; any other change is
refused unless forced, and every change is recorded in the run's ``resumes``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from jumplora.adapters import TaskUpdate
from jumplora.checkpoint import check_base, load_checkpoint, read_manifest, restore_rng
from jumplora.config import RunConfig, load_config
from jumplora.errors import JumploraError
from jumplora.manifest import verify_model_folder
from jumplora.record import RESULTS, RunRecord

CONFIG_FILE = "config.yaml"  # the resolved configuration of a run, at the top of its output folder
# Settings that decide where and how fast a run goes, not what it learns: a resume may change them
# without --force (a run started on one machine can finish on another, compiled or not). Every
# change is recorded in results.json under "resumes".
EXECUTION_SETTINGS = ("compile", "device", "eval_batch_size", "keep_checkpoints", "log_with", "save_model")
# A resume may append tasks (--add-tasks): the run then goes on with them after its own.
EXTENSION_SETTINGS = ("add_tasks",)


def saved_config(output: Path) -> RunConfig:
    """The settings saved with the run in ``output``."""
    saved = output / CONFIG_FILE
    if not saved.is_file():
        raise JumploraError(f"no run to resume in {output} (no {CONFIG_FILE}): pass the --output of a run")
    return load_config(saved)


def resumable_config(output: Path, overrides: dict, force: bool = False) -> RunConfig:
    """The saved configuration of the run in ``output`` with ``overrides``. A change of a setting
    outside :data:`EXECUTION_SETTINGS` is refused (naming the keys) unless ``force``; ``output`` is
    the folder given, wherever the run was first written (a moved run resumes in its new place)."""
    saved = output / CONFIG_FILE
    if not saved.is_file():
        raise JumploraError(f"no run to resume in {output} (no {CONFIG_FILE}): pass the --output of a run")
    config = load_config(saved, overrides={"output": str(output), **overrides})
    before = load_config(saved).to_dict()
    refused = [k for k in changed_settings(before, config.to_dict()) if k not in EXECUTION_SETTINGS + EXTENSION_SETTINGS]
    added = config.data.add_tasks or []
    if added[: len(before.get("add_tasks") or [])] != (before.get("add_tasks") or []):
        refused.append("add_tasks")  # tasks already learned cannot be taken back by a resume
    if refused and not force:
        raise JumploraError(f"the run in {output} used other settings for {', '.join(refused)}: "
                            "drop those flags, or add --force to resume with them")
    return config


def changed_settings(before: dict, after: dict) -> dict:
    """``{key: {"was": old, "now": new}}`` for each setting that differs, the output folder aside."""
    return {k: {"was": before.get(k), "now": v} for k, v in after.items() if k != "output" and before.get(k) != v}


def finished_record(out: Path, tasks: list[str]) -> RunRecord | None:
    """The record of a run that got through every task of ``tasks`` and whose every output can be
    read (results.json, and the model folder when it saves one), else None: resume then repairs
    what is missing from the newest checkpoint."""
    try:
        record = RunRecord.read(out / RESULTS)
        if record.finished_tasks != len(tasks) or record.tasks != tasks:
            return None
        if record.config.get("save_model", True):
            verify_model_folder(out / "model")
    except JumploraError:
        return None
    return record


def restore(checkpoint: Path, out: Path, model, strategy, jump: bool) -> tuple[int, RunRecord, np.ndarray, list]:
    """(first unfinished task, the record so far, the accuracy matrix, the JumpLoRA masks so far)
    from a checkpoint: the model's weights, the method's state and the RNG states are restored."""
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
    record = RunRecord.from_json(info["results"], checkpoint)
    masks: list[dict[str, torch.Tensor]] = []
    if jump:
        for entry in read_manifest(out)[: info["index"] + 1]:
            masks.append(TaskUpdate.load(out / "deltas" / entry["file"]).masks())
    restore_rng(rng, info["rng"])
    return info["index"] + 1, record, record.accuracy, masks
