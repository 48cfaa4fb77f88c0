"""Add or remove one task's update on a saved model: exact, because the merged updates add up.

    W_after_rollback = W_0 + Σ_{s ≠ task} β·ΔW_final(s)      (in the order the updates were merged)

A model folder keeps W_0, the adapted layers before any task (states/base.safetensors), and the
files of its updates: the new weights are W_0 plus the updates held, added in their order, so
removing an update and adding it back gives the same bits. A folder written before 2026-12-07 has
no W_0: there the update is subtracted (exact up to the rounding of one subtraction).

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
from jumplora.files import check_new_output, check_outside, sha256
from jumplora.manifest import MANIFEST_FILE, LearnedTask, LedgerEntry, ModelManifest
from jumplora.model_folder import Extras, ModelFolder
from jumplora.run_folder import RunFolder, UpdateLedger


def rollback(path: Path, task: str, output: Path) -> str:
    """The model without ``task``'s update, saved to ``output``; returns what was done. ``path``: a
    model folder (its updates/ hold the file) or a run's folder (its deltas/ do)."""
    model = ModelFolder(Path(path))
    if model.manifest_file.is_file():
        manifest = model.verify()
        learned = [t.name for t in manifest.tasks]
        if task not in learned and task not in {e.task for e in manifest.ledger}:
            raise JumploraError(f"{path} learned no task {task!r} (its tasks: {', '.join(learned) or 'none'})")
        held = [e for e in held_updates(manifest.ledger) if e.task == task]
        if not held or not model.update_file(held[-1].file).is_file():
            raise JumploraError(f"{path} holds no update of task {task!r} that its folder keeps: pass the run's folder "
                                "(OUTPUT/<method>/seed<k>), whose deltas/ has it")
        return _write_updated(model, model.update_file(held[-1].file), output, sign=-1)
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
    check_outside(output, source.path)
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
    task = update.metadata.get("task", update_file.stem)
    updates = {e.file: source.update_file(e.file) for e in manifest.ledger if source.update_file(e.file).is_file()}
    missing = [e.file for e in manifest.ledger if e.file not in updates]
    if manifest.exact and source.base_state.is_file() and missing:  # exact needs every update it holds
        raise JumploraError(f"{source.update_file(missing[0])} is missing (the ledger of {source.path} names it): "
                            "restore the model folder's updates/")
    name = update_file.name
    if name in updates and sha256(updates[name]) != digest:
        name = f"{update_file.stem}-{digest[:8]}{update_file.suffix}"  # another update of the same file name
    updates[name] = update_file
    entry = LedgerEntry(task, update.metadata.get("method", "?"), name, digest, sign)
    new = replace(manifest, ledger=[*manifest.ledger, entry], tasks=_tasks_after(manifest, update, sign),
                  generation=manifest.generation, parent=None, files=None, sizes=None)
    if manifest.exact and source.base_state.is_file() and all(e.file in updates for e in new.ledger):
        replay(model, source.base_state, new.ledger, updates)  # exact: state 0 plus the updates held
    else:  # a folder written before 2026-12-07 (no state 0): up to the rounding of the subtraction
        update.apply(model, sign=float(sign))  # checks every name and shape before it changes anything
    # Not teachable: its training state described the weights before this change.
    ModelFolder(output).save(model, tokenizer, new, Extras(updates=updates, like=source), replace=False)
    ledger = "; ".join(f"{'+' if e.sign > 0 else '-'}{e.task}" for e in new.ledger)
    return f"{'added' if sign > 0 else 'removed'} the update of task {task} ({update_file.name}) -> {output}; " \
           f"ledger: {ledger}"


def held_updates(ledger: list[LedgerEntry]) -> list[LedgerEntry]:
    """The updates the weights hold after ``ledger``, in the order each was first added (an update
    added twice, with --force, is listed twice): removing one and adding it back gives the same list."""
    first: dict[str, LedgerEntry] = {}
    count: dict[str, int] = {}
    for entry in ledger:
        first.setdefault(entry.sha256, entry)
        count[entry.sha256] = count.get(entry.sha256, 0) + entry.sign
    return [first[digest] for digest in first for _ in range(max(count[digest], 0))]


def replay(model, base_state: Path, ledger: list[LedgerEntry], files: dict[str, Path]) -> None:
    """Set the adapted layers to state 0 and add the held updates in their order, as training merged
    them (W ← W + β·ΔW_final, in fp32): the weights are bit-identical to a model that learned
    exactly those updates, and removing an update then adding it back changes no bit."""
    import torch
    from safetensors.torch import load_file

    base = load_file(str(base_state))
    updates = [TaskUpdate.load(files[entry.file]) for entry in held_updates(ledger)]
    with torch.no_grad():
        for name, weight in base.items():
            try:
                target = model.get_submodule(name).weight
            except AttributeError:
                raise JumploraError(f"{base_state} names module {name!r}, which the model does not have: restore the "
                                    "model folder") from None
            target.copy_(weight.to(target.dtype))
    for update in updates:
        update.apply(model)


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

