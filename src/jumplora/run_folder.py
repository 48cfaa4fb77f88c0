"""The output of a run on disk, with one owner for every path in it.

    OUTPUT/                               OutputFolder
      config.yaml                         the run's resolved settings (flat keys, as the flags)
      .jumplora.lock                      held (flock) while a run writes here
      report/                             `jumplora report`'s default place for this output
      <method>/seed<k>/                   RunFolder: one method, one seed
        results.json                      the RunRecord (jumplora.record)
        deltas/<t>-<task>.safetensors     UpdateLedger: each task's merged update (TaskUpdate)
        deltas/manifest.json              its list: index, task, file, SHA-256
        checkpoints/<t>-<task>/           the training state after task t (jumplora.checkpoint)
        model/                            ModelFolder (jumplora.model_folder)
      <method>/single_task/seed<k>/<task>/   a single-task baseline (a RunFolder; for FWT)

A file name made from a task's name is checked to stay inside its folder (:func:`inside`), and task
names are checked where tasks are made (jumplora.data.tasks); no other module builds these paths.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from jumplora.errors import JumploraError
from jumplora.files import sha256, write_json, write_text
from jumplora.model_folder import ModelFolder

CONFIG_FILE = "config.yaml"
LOCK_FILE = ".jumplora.lock"
RESULTS_FILE = "results.json"
DELTAS, LEDGER_FILE, CHECKPOINTS, MODEL, REPORT = "deltas", "manifest.json", "checkpoints", "model", "report"
SINGLE_TASK = "single_task"  # FWT baselines: one task each, not a stream (the report skips them)


def inside(folder: Path, name: str) -> Path:
    """``folder / name`` after checking that it is one entry of ``folder`` (no separator, no ``..``)."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise JumploraError(f"{name!r} cannot be a file name in {folder}: rename the task (no '/', '\\', '..')")
    if len(name.encode()) > 255:
        raise JumploraError(f"the file name {name[:40]!r}... is longer than a filesystem takes (255 bytes): "
                            "give the task a shorter name")
    return Path(folder) / name


class OutputLock:
    """An exclusive lock on an output folder for the length of a command: a second run into the same
    folder (or into a folder inside it, or around it) is refused at once, in one line, instead of
    the two mixing their files. The lock is the kernel's (flock): a killed run releases it."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.handle = None

    def __enter__(self) -> OutputLock:
        self.handle = open(self.path, "a")  # made once, never written: a resume of a finished run changes nothing
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise JumploraError(f"another jumplora run is writing to {self.path.parent}: wait for it to finish, or "
                                "pass another --output") from None
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()  # closing releases the lock

    @staticmethod
    def held(path: Path) -> bool:
        """Whether the lock file ``path`` is held by a running command now."""
        try:
            with open(path, "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return False  # taken and released at close
        except BlockingIOError:
            return True
        except OSError:
            return False


class OutputFolder:
    """``OUTPUT``: the settings of the run, its lock, its method/seed folders and its report."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._config_text: str | None = None

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def report(self) -> Path:
        return self.path / REPORT

    def has_run(self) -> bool:
        return self.config_file.is_file() or bool(self.run_folders())

    def lock(self) -> OutputLock:
        return OutputLock(self.path)

    def run(self, method: str, seed: int) -> RunFolder:
        return RunFolder(inside(inside(self.path, method), f"seed{seed}"))

    def single_task(self, method: str, seed: int, task: str) -> RunFolder:
        return RunFolder(inside(self.path / method / SINGLE_TASK / f"seed{seed}", task))

    def run_folders(self) -> list[Path]:
        """Every ``<method>/seed<k>`` folder of a run here."""
        if not self.path.is_dir():
            return []
        return sorted(seed for method in self.path.iterdir() if method.is_dir() for seed in method.glob("seed*")
                      if seed.is_dir())

    # -- config.yaml -------------------------------------------------------------------------------

    def saved_settings(self) -> dict:
        """The flat settings in config.yaml (read once per command); a missing file is an error."""
        if self._config_text is None:
            if not self.config_file.is_file():
                raise JumploraError(f"no run to resume in {self.path} (no {CONFIG_FILE}): pass the --output of a run")
            from jumplora.settings import read_yaml

            values = read_yaml(self.config_file, "run settings")
            if not isinstance(values, dict):
                raise JumploraError(f"{self.config_file} must hold a mapping of settings: restore it or start a new run")
            self._config_text = yaml.safe_dump(values, sort_keys=False)
        return yaml.safe_load(self._config_text)

    def write_settings(self, settings: dict) -> None:
        text = yaml.safe_dump(settings, sort_keys=False)
        write_text(self.config_file, text)
        self._config_text = text

    # -- replacing an earlier run --------------------------------------------------------------------

    def check_no_live_run(self) -> None:
        """Refuse when a running command holds a lock in this folder, below it or above it."""
        locks = [p for p in self.path.rglob(LOCK_FILE)] if self.path.is_dir() else []
        locks += [parent / LOCK_FILE for parent in self.path.resolve().parents]
        for lock in locks:
            if lock.is_file() and OutputLock.held(lock):
                if lock.parent.resolve() == self.path.resolve():
                    raise JumploraError(f"another jumplora run is writing to {self.path}: wait for it to finish, or "
                                        "pass another --output")
                where = "inside" if is_inside(lock.parent, self.path) else "around"
                raise JumploraError(f"a jumplora command is writing to {lock.parent}, {where} {self.path}: wait for "
                                    "it to finish, or pass another --output")

    def clear(self) -> list[str]:
        """Remove the earlier run here: its config.yaml, its report and every ``<method>/seed<k>``
        folder (a method folder left empty goes too). The single-task baselines stay (each is keyed
        by its settings); files that are not a run's are left alone. Returns what was removed."""
        earlier = self.run_folders()
        for folder in earlier:
            shutil.rmtree(folder)
            if not any(folder.parent.iterdir()):
                folder.parent.rmdir()
        self.config_file.unlink(missing_ok=True)
        self._config_text = None
        self.drop_report()
        return [f"{d.parent.name}/{d.name}" for d in earlier]

    def drop_report(self) -> None:
        """A report describes the run it was made from: once the run changes, it goes."""
        if (self.report / "report.md").is_file():
            shutil.rmtree(self.report, ignore_errors=True)


@dataclass(frozen=True)
class RunFolder:
    """``OUTPUT/<method>/seed<k>``: the record, the update ledger, the checkpoints and the model."""

    path: Path

    @property
    def results(self) -> Path:
        return self.path / RESULTS_FILE

    @property
    def ledger(self) -> UpdateLedger:
        return UpdateLedger(self.path / DELTAS)

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def model(self) -> ModelFolder:
        return ModelFolder(self.path / MODEL)

    def exists(self) -> bool:
        return self.path.exists()

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def checkpoint(self, index: int, label: str) -> Path:
        return inside(self.checkpoints, f"{index:02d}-{label}")

    def finished_checkpoints(self) -> list[Path]:
        """The checkpoint folders, oldest first (a ``.tmp`` one is a checkpoint being written)."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(p for p in self.checkpoints.iterdir() if p.is_dir() and not p.name.endswith(".tmp"))

    def latest_checkpoint(self) -> Path | None:
        done = self.finished_checkpoints()
        return done[-1] if done else None

    def prune_checkpoints(self, keep: int) -> None:
        """Keep the ``keep`` newest checkpoints; only checkpoint folders of this run are removed."""
        for old in self.finished_checkpoints()[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def of(path: Path) -> RunFolder:
        """The run folder at ``path`` when it holds a finished run's model, or the one
        ``<method>/seed<k>`` below it."""
        path = Path(path)
        if (path / MODEL).is_dir():
            return RunFolder(path)
        found = sorted(p.parent for p in path.glob(f"*/seed*/{MODEL}") if p.is_dir())
        if len(found) == 1:
            return RunFolder(found[0])
        if found:
            raise JumploraError(f"{path} holds {len(found)} runs: pass one of " + ", ".join(str(p) for p in found))
        raise JumploraError(f"{path} has no {MODEL}/ folder, nor a <method>/seed<k>/{MODEL} below it: pass the folder of "
                            "a finished run saved with save_model (e.g. runs/latest/inclora/seed0)")


class UpdateLedger:
    """``deltas/``: each task's merged update file and ``manifest.json``, their list with SHA-256s.

    ``rollback`` and ``apply`` refuse a file whose hash does not match; resume checks every entry
    against its file (hash, index, task) before it trusts the run's updates.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @property
    def index_file(self) -> Path:
        return self.folder / LEDGER_FILE

    def exists(self) -> bool:
        return self.index_file.is_file()

    def file_for(self, index: int, label: str) -> Path:
        return inside(self.folder, f"{index:02d}-{label}.safetensors")

    def record(self, index: int, task: str, file: Path) -> dict:
        """Add (or replace) task ``index``'s entry, atomically; returns it."""
        entries = self.entries() if self.exists() else []
        entry = {"index": index, "task": task, "file": file.name, "sha256": sha256(file)}
        entries = [e for e in entries if e["index"] != index] + [entry]
        write_json(self.index_file, sorted(entries, key=lambda e: e["index"]))
        return entry

    def entries(self) -> list[dict]:
        if not self.exists():
            raise JumploraError(f"{self.folder.parent} has no {DELTAS}/{LEDGER_FILE}: pass the folder of one method and "
                                "seed (OUTPUT/<method>/seed<k>) of a run that merges per-task updates")
        return read_ledger_file(self.index_file)

    def path(self, entry: dict) -> Path:
        return inside(self.folder, entry["file"])

    def entry(self, task: str) -> tuple[Path, dict]:
        """The update file of ``task`` and its entry, after checking its SHA-256."""
        entries = self.entries()
        found = [e for e in entries if e["task"] == task]
        if not found:
            known = ", ".join(e["task"] for e in entries)
            raise JumploraError(f"no update for task {task!r} in {self.folder.parent}: its tasks are {known}")
        return check_sha256(self.path(found[0]), found[0]["sha256"]), found[0]


def read_ledger_file(path: Path) -> list[dict]:
    """The entries of a ``deltas/manifest.json`` (index, task, file, sha256); anything else is a one-line error."""
    import json

    try:
        entries = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        raise JumploraError(f"{path} is not valid JSON: re-run the task or restore the file") from None
    fields = {"index": int, "task": str, "file": str, "sha256": str}
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and all(isinstance(e.get(k), kind) for k, kind in fields.items()) for e in entries):
        raise JumploraError(f"{path} must be a list of {{index, task, file, sha256}} entries: restore the file")
    return entries


def check_sha256(path: Path, expected: str) -> Path:
    """``path``, after checking that it exists and has the SHA-256 its list gives."""
    if not path.is_file() or sha256(path) != expected:
        raise JumploraError(f"{path} is missing or does not match its SHA-256 in the manifest: refusing to apply it")
    return path


def probe_writable(folder: Path) -> None:
    """Create ``folder`` and write a file in it, or say in one line why that fails."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise JumploraError(f"output directory {folder} is not writable ({error.strerror}): pass --output DIR") from None


def is_inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` resolves to ``folder`` or a path below it."""
    path, folder = Path(os.path.abspath(path)), Path(os.path.abspath(folder))
    return path == folder or folder in path.parents
