"""Add or remove one task's update on a saved model: exact, because the merged updates add up.

    W_after_rollback = W_final − β·ΔW_final(task)

The model's ledger (its manifest) says which updates its weights hold. An update is applied only
when its file, its own metadata and the run's manifest agree (SHA-256, task, index), when it was
made for the model's base, and when the ledger allows it: adding one the weights already hold is
double counting (refused unless forced), removing one they do not hold is refused. Shapes and
names are checked before anything is written; the new model folder appears whole or not at all,
with its manifest.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from jumplora.adapters import TaskUpdate
from jumplora.checkpoint import delta_entry, load_manifest, sha256
from jumplora.errors import JumploraError
from jumplora.families import load_model
from jumplora.manifest import MANIFEST, LearnedTask, LedgerEntry, ModelManifest, save_model_folder


def run_folder(path: Path) -> Path:
    """``path`` when it holds a finished run's model/, or the one ``<method>/seed<k>`` below it."""
    if (path / "model").is_dir():
        return path
    found = sorted(p.parent for p in path.glob("*/seed*/model") if p.is_dir())
    if len(found) == 1:
        return found[0]
    if found:
        raise JumploraError(f"{path} holds {len(found)} runs: pass one of "
                            + ", ".join(str(p) for p in found))
    raise JumploraError(f"{path} has no model/ folder, nor a <method>/seed<k>/model below it: pass the folder of a "
                        "finished run saved with save_model (e.g. runs/latest/inclora/seed0)")


def rollback(path: Path, task: str, output: Path) -> str:
    """The run's final model without ``task``'s update, saved to ``output``; returns what was done."""
    run_dir = run_folder(Path(path))
    update_file, entry = delta_entry(run_dir, task)
    return _write_updated(run_dir / "model", update_file, output, sign=-1, expected=entry)


def apply_update(model_dir: Path, update_file: Path, output: Path, sign: int = 1, force: bool = False) -> str:
    """``model_dir`` plus (or minus) the update in ``update_file``, saved to ``output``."""
    manifest = update_file.parent / "manifest.json"
    if manifest.is_file():  # a file of a run's deltas/ folder: it must be the one the run wrote
        entries = {e["file"]: e for e in load_manifest(manifest)}
        if update_file.name in entries:
            _, expected = delta_entry(update_file.parent.parent, entries[update_file.name]["task"])
            return _write_updated(model_dir, update_file, output, sign, force, expected)
    return _write_updated(model_dir, update_file, output, sign, force)


def _write_updated(model_dir: Path, update_file: Path, output: Path, sign: int, force: bool = False,
                   expected: dict | None = None) -> str:
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise JumploraError(f"{output} already exists and is not an empty folder: pass a new --output folder")
    manifest = ModelManifest.read(model_dir)
    update = TaskUpdate.load(update_file)
    if expected is not None:  # the run's manifest and the file's own metadata must name the same task
        own = (update.metadata.get("task"), update.metadata.get("index"))
        if own != (expected["task"], str(expected["index"])):
            raise JumploraError(f"{update_file} holds the update of task {own[0]} (index {own[1]}) but the run's "
                                f"manifest lists it as task {expected['task']} (index {expected['index']}): the "
                                "manifest was changed; restore it")
    digest = sha256(update_file)
    _check_ledger(manifest, update, digest, sign, force, update_file)
    model, tokenizer, _ = load_model(str(model_dir), family=manifest.family, **manifest.family_options())
    update.apply(model, sign=float(sign))  # checks every name and shape before it changes anything
    task = update.metadata.get("task", update_file.stem)
    entry = LedgerEntry(task, update.metadata.get("method", "?"), update_file.name, digest, sign)
    new = replace(manifest, ledger=[*manifest.ledger, entry], tasks=_tasks_after(manifest, update, sign))
    save_model_folder(model, tokenizer, new, output)
    ledger = "; ".join(f"{'+' if e.sign > 0 else '-'}{e.task}" for e in new.ledger)
    return f"{'added' if sign > 0 else 'removed'} the update of task {task} ({update_file.name}) -> {output}; " \
           f"ledger: {ledger}"


def _held(manifest: ModelManifest, digest: str) -> int:
    """How many times the weights hold the update with this SHA-256 (+1 added, −1 removed)."""
    return sum(entry.sign for entry in manifest.ledger if entry.sha256 == digest)


def _check_ledger(manifest: ModelManifest, update: TaskUpdate, digest: str, sign: int, force: bool,
                  path: Path) -> None:
    base = update.metadata.get("base_model")
    if base is not None and base != manifest.base_model:
        raise JumploraError(f"{path} was made for the base model {base}, not {manifest.base_model} (the model's "
                            f"{MANIFEST}): apply it to a model of that base")
    held = _held(manifest, digest)
    if sign > 0 and held > 0 and not force:
        raise JumploraError(f"the model already holds the update {path.name} (task {update.metadata.get('task')}, "
                            "in its ledger): applying it again counts it twice; add --force to do so anyway")
    if sign < 0 and held <= 0:
        raise JumploraError(f"the model does not hold the update {path.name} (not in its ledger): there is nothing "
                            "to remove")


def _tasks_after(manifest: ModelManifest, update: TaskUpdate, sign: int) -> list[LearnedTask]:
    name = update.metadata.get("task")
    kept = [task for task in manifest.tasks if task.name != name]
    if sign < 0 or name is None:
        return kept if sign < 0 else manifest.tasks
    labels = update.metadata.get("labels")
    added = LearnedTask(name, update.metadata.get("instruction", ""), labels.split("\n") if labels else [])
    return [*kept, added] if name not in {t.name for t in manifest.tasks} else manifest.tasks
