"""Add or remove one task's update on a saved model: exact, because the merged updates add up.

    W_after_rollback = W_final − β·ΔW_final(task)

A file listed in its folder's ``manifest.json`` must match its SHA-256; shapes and module names
are checked against the model before anything is written; the new model folder appears whole or
not at all.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from jumplora.adapters import TaskUpdate
from jumplora.checkpoint import check_sha256, load_manifest, verified_delta
from jumplora.errors import JumploraError
from jumplora.families import load_model


def rollback(run_dir: Path, task: str, output: Path) -> None:
    """The run's final model without ``task``'s update, saved to ``output``."""
    if not (run_dir / "model").is_dir():
        raise JumploraError(f"{run_dir} has no final model/ folder: roll back a finished run saved with save_model")
    _write_updated(run_dir / "model", verified_delta(run_dir, task), output, sign=-1.0)


def apply_update(model_dir: Path, update_file: Path, output: Path, sign: float = 1.0) -> None:
    """``model_dir`` plus (or minus) the update in ``update_file``, saved to ``output``."""
    manifest = update_file.parent / "manifest.json"
    if manifest.is_file():  # a file of a run's deltas/ folder: it must be the one the run wrote
        entries = {e["file"]: e["sha256"] for e in load_manifest(manifest)}
        if update_file.name in entries:
            check_sha256(update_file, entries[update_file.name])
    _write_updated(model_dir, update_file, output, sign)


def _write_updated(model_dir: Path, update_file: Path, output: Path, sign: float) -> None:
    if output.exists() and any(output.iterdir()):
        raise JumploraError(f"{output} already exists and is not empty: pass a new --output folder")
    update = TaskUpdate.load(update_file)
    model, tokenizer, _ = load_model(str(model_dir))
    update.apply(model, sign=sign)  # checks every name and shape before it changes anything
    tmp = output.with_name(output.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if output.exists():
        output.rmdir()
    tmp.rename(output)
