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
from jumplora.adapters.update import update_labels
from jumplora.errors import JumploraError
from jumplora.families import load_model
from jumplora.files import check_new_output, sha256
from jumplora.manifest import MANIFEST_FILE, LearnedTask, LedgerEntry, ModelManifest
from jumplora.model_folder import ModelFolder
from jumplora.run_folder import RunFolder, UpdateLedger


def rollback(path: Path, task: str, output: Path) -> str:
    """The run's final model without ``task``'s update, saved to ``output``; returns what was done."""
    run = RunFolder.of(Path(path))
    update_file, entry = run.ledger.entry(task)
    return _write_updated(run.model, update_file, output, sign=-1, expected=entry)


def apply_update(model_dir: Path, update_file: Path, output: Path, sign: int = 1, force: bool = False) -> str:
    """``model_dir`` plus (or minus) the update in ``update_file``, saved to ``output``."""
    ledger = UpdateLedger(update_file.parent)
    if ledger.exists():  # a file of a run's deltas/ folder: it must be the one the run wrote
        entries = {e["file"]: e for e in ledger.entries()}
        if update_file.name in entries:
            _, expected = ledger.entry(entries[update_file.name]["task"])
            return _write_updated(ModelFolder(model_dir), update_file, output, sign, force, expected)
    return _write_updated(ModelFolder(model_dir), update_file, output, sign, force)


def _write_updated(source: ModelFolder, update_file: Path, output: Path, sign: int, force: bool = False,
                   expected: dict | None = None) -> str:
    check_new_output(output)
    manifest = source.verify()
    update = TaskUpdate.load(update_file)
    if expected is not None:  # the run's manifest and the file's own metadata must name the same task
        own = (update.metadata.get("task"), update.metadata.get("index"))
        if own != (expected["task"], str(expected["index"])):
            raise JumploraError(f"{update_file} holds the update of task {own[0]} (index {own[1]}) but the run's "
                                f"manifest lists it as task {expected['task']} (index {expected['index']}): the "
                                "manifest was changed; restore it")
    digest = sha256(update_file)
    _check_ledger(manifest, update, digest, sign, force, update_file)
    model, tokenizer, _ = load_model(str(source.path), family=manifest.family, settings=manifest.settings())
    update.apply(model, sign=float(sign))  # checks every name and shape before it changes anything
    task = update.metadata.get("task", update_file.stem)
    updates = {e.file: source.update_file(e.file) for e in manifest.ledger if source.update_file(e.file).is_file()}
    name = update_file.name
    if name in updates and sha256(updates[name]) != digest:
        name = f"{update_file.stem}-{digest[:8]}{update_file.suffix}"  # another update of the same file name
    updates[name] = update_file
    entry = LedgerEntry(task, update.metadata.get("method", "?"), name, digest, sign)
    new = replace(manifest, ledger=[*manifest.ledger, entry], tasks=_tasks_after(manifest, update, sign))
    ModelFolder(output).save(model, tokenizer, new, updates=updates, replace=False)
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
                            f"{MANIFEST_FILE}): apply it to a model of that base")
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
    added = LearnedTask(name, update.metadata.get("instruction", ""), update_labels(update.metadata))
    return [*kept, added] if name not in {t.name for t in manifest.tasks} else manifest.tasks

