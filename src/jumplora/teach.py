"""Teach a model folder more tasks: the folder alone is enough, and nothing it knew is lost unasked.

    jumplora teach MODEL --task-file new.yaml [--max-forgetting P] [--output NEW]

A model folder written by a run carries what its next task needs (jumplora.model_folder): the
method's state and the RNG states after its last task (``training/``), its update files, the
adapted layers' weights before any task, and its tasks' test examples. Teaching goes on from
there exactly as ``jumplora run --resume RUN --add-task-file new.yaml`` on the run that made it
(the same weights, bit for bit, and the same accuracy matrix): a run folder is made from the
model folder beside the destination (``<dest>.teach/``, which also lets a stopped teach go on when
the same command is given again), the new tasks are trained with the model's own method and
settings, every earlier task is evaluated again on its kept examples, and the new version of the
model names its parent (generation, SHA-256 of its manifest).

The forgetting check: per earlier task its accuracy when learned, before this teach and after it.
With ``max_forgetting`` a drop of more than that many points keeps the current model where it is
and writes the new version beside it as ``<dest>.candidate``.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import load_file

from jumplora.config import RunConfig, absolute_paths
from jumplora.data.stream import StreamConfig, resolve_stream
from jumplora.data.tasks import Task
from jumplora.errors import JumploraError
from jumplora.files import check_new_output, check_outside, publish_folder, write_json
from jumplora.families.loading import check_for_run
from jumplora.loop import StreamJob, run_stream
from jumplora.manifest import MANIFEST_FILE
from jumplora.model_folder import ModelFolder
from jumplora.record import RunRecord
from jumplora.run_folder import OutputLock, RunFolder, read_ledger_file
from jumplora.strategies.methods import check_penalties
from jumplora.train import make_accelerator

WARN_DROP = 5.0  # points: a drop a teach warns about when no --max-forgetting is given
TEACH_KEY = "teach.json"  # in <dest>.teach: which model and tasks the work there belongs to


@dataclass
class Forgetting:
    """One earlier task in the forgetting check (accuracy in percent; None where not measured)."""

    task: str
    learned: float | None
    before: float | None
    after: float | None

    @property
    def drop(self) -> float | None:
        return None if self.before is None or self.after is None else self.before - self.after


@dataclass
class TeachOutcome:
    model: Path  # where the new version is: the destination, or the candidate beside it
    accepted: bool
    record: RunRecord
    forgetting: list[Forgetting] = field(default_factory=list)
    new_tasks: list[str] = field(default_factory=list)


def teach(model_dir: Path, new: dict, output: Path | None = None, max_forgetting: float | None = None,
          force: bool = False, log=print) -> TeachOutcome:
    """Teach the model in ``model_dir`` the tasks of ``new`` (StreamConfig keys: ``task_file``, or
    ``tasks`` with ``data_dir``); the new version goes to ``output`` (default: in place of the model)."""
    source = ModelFolder(Path(model_dir))
    manifest = source.verify()
    settings = manifest.run.get("settings")
    if not source.teachable() or settings is None:
        raise JumploraError(f"{source.path} carries no training state (written by rollback/apply, by a method that "
                            "merges once, or by jumplora before 2026-12-07): teach the model its run wrote, or extend "
                            "the run with `jumplora run --resume RUN --add-task-file FILE`")
    if max_forgetting is not None and (isinstance(max_forgetting, bool) or not isinstance(max_forgetting, (int, float))
                                       or not (math.isfinite(max_forgetting) and max_forgetting >= 0)):
        raise JumploraError(f"--max-forgetting must be a number of points >= 0, got {max_forgetting}")
    dest = Path(output) if output is not None else source.path
    _check_destination(source, dest)
    _check_updates(source, manifest)
    parent_record = RunRecord.from_json(json.loads((source.training / "state.json").read_text())["results"])
    earlier = _earlier_tasks(source, manifest)
    added = _new_tasks(new, settings, manifest.prompt_format, [t.name for t in earlier])
    config = RunConfig.from_dict({**absolute_paths(settings), "model": str(source.path.absolute()),
                                  "output": str(dest.with_name(dest.name + ".teach")), "save_model": True,
                                  "add_tasks": [*(settings.get("add_tasks") or []), *_described(new)]})
    tasks = [*earlier, *added]
    check_for_run(config, added)
    check_penalties(config, len(tasks))
    accelerator = make_accelerator(config.device, config.precision)  # a precision this machine lacks: before any write
    work = RunFolder(Path(config.output))
    with OutputLock(_locked(work.path)):
        _prepare(work, source, manifest, {"parent": manifest.digest(), "new": _described(new)}, log)
        job = StreamJob(config, manifest.run["method"], manifest.run["seed"], work, resume=True, force=force,
                        base_label=manifest.base_model, base_weights=_base_weights(source),
                        parent={"generation": manifest.generation, "sha256": manifest.digest(),
                                "path": str(source.path.absolute())})
        record, _ = run_stream(job, tasks, accelerator, log)
        table = forgetting(record, parent_record, len(earlier))
        accepted = max_forgetting is None or all(f.drop is None or f.drop <= max_forgetting for f in table)
        target = dest if accepted else _candidate(dest)
        if not accepted and target.exists():  # an earlier teach's candidate (checked before training)
            shutil.rmtree(target)
        publish_folder(work.model.path, target, replace=True)
    shutil.rmtree(work.path, ignore_errors=True)
    return TeachOutcome(target, accepted, record, table, [t.name for t in added])


def forgetting(record: RunRecord, parent: RunRecord, earlier: int) -> list[Forgetting]:
    """Each earlier task: its accuracy when learned, after the parent's last task and now."""
    accuracy, before = record.accuracy, parent.accuracy[parent.finished_tasks - 1]

    def number(value) -> float | None:
        return None if math.isnan(value) else float(value)

    return [Forgetting(record.tasks[i], number(accuracy[i, i]), number(before[i]), number(accuracy[-1, i]))
            for i in range(earlier)]


def forgetting_table(outcome: TeachOutcome, max_forgetting: float | None) -> list[str]:
    """The check as printed: a row per earlier task, then a warning per drop over the limit."""
    rows = outcome.forgetting
    width = max([len("task"), *(len(f.task) for f in rows)])

    def cell(value) -> str:
        return "—" if value is None else f"{value:.1f}"

    lines = [f"{'task':<{width}}  learned  before  after  change (points)"]
    for f in rows:
        change = "not kept" if f.drop is None else f"{0.0 - f.drop:+.1f}"
        lines.append(f"{f.task:<{width}}  {cell(f.learned):>7}  {cell(f.before):>6}  {cell(f.after):>5}  {change:>6}")
    limit = WARN_DROP if max_forgetting is None else max_forgetting
    for f in rows:
        if f.drop is not None and f.drop > limit:
            lines.append(f"warning: {f.task} dropped by {f.drop:.1f} points (more than {limit:g})")
    if any(f.drop is None for f in rows):
        lines.append("note: the tasks marked 'not kept' have no test examples in the model folder (a run with "
                     "--no-keep-eval-data): the check cannot measure them")
    return lines


def _earlier_tasks(source: ModelFolder, manifest) -> list[Task]:
    """The tasks the model learned, with the test examples it kept (none when it kept none)."""
    tasks = []
    for index, learned in enumerate(manifest.tasks):
        task = learned.as_task(manifest.prompt_format)
        task.test = source.eval_examples(index, learned.name) or []
        task.source = str(source.eval_folder)
        tasks.append(task)
    return tasks


def _new_tasks(new: dict, settings: dict, prompt_format: str, known: list[str]) -> list[Task]:
    """The tasks to teach, read and cut to the sizes of the model's run, written in its prompt format."""
    if not new.get("task_file") and not new.get("tasks"):
        raise JumploraError("nothing to teach: pass --task-file FILE, or --add-tasks NAMES with --data-dir DIR")
    sizes = {k: settings.get(k) for k in ("max_train_per_task", "max_test_per_task")}
    tasks = resolve_stream(StreamConfig(**new, **sizes, prompt_format=prompt_format))
    again = [task.name for task in tasks if task.name in known]
    if again:
        raise JumploraError(f"the model already learned {', '.join(again)}: give the new tasks other names")
    return tasks


def _described(new: dict) -> list[str]:
    """The new tasks as a run's add_tasks entries: a task file's absolute path, or task names."""
    if new.get("task_file"):
        return [str(Path(new["task_file"]).absolute())]
    return list(new.get("tasks") or [])


def _candidate(dest: Path) -> Path:
    return dest.with_name(dest.name + ".candidate")


def _check_destination(source: ModelFolder, dest: Path) -> None:
    """Before any work: the teach writes ``dest`` (the model itself, or a new folder), ``<dest>.teach``
    and maybe ``<dest>.candidate``, and replaces none of a user's files with them."""
    if dest.resolve() != source.path.resolve():  # in place is the default; anything else must be new
        check_new_output(dest)
        check_outside(dest, source.path)
    work = dest.with_name(dest.name + ".teach")
    if work.exists() and not (work / TEACH_KEY).is_file() and (not work.is_dir() or any(work.iterdir())):
        raise JumploraError(f"{work} exists and was not written by jumplora teach (it keeps a stopped teach's work "
                            "there): move it, or give another --output")
    candidate = _candidate(dest)
    if candidate.exists() and not (candidate / MANIFEST_FILE).is_file():
        raise JumploraError(f"{candidate} exists and is not a model folder (a refused teach writes its candidate "
                            "there): move it, or give another --output")


def _check_updates(source: ModelFolder, manifest) -> None:
    """Every update the ledger names must be in the folder (a changed one is refused by its hash)."""
    for entry in manifest.ledger:
        if not source.update_file(entry.file).is_file():
            raise JumploraError(f"{source.update_file(entry.file)} is missing (the ledger of {source.path} names it): "
                                "restore the model folder's updates/")


def _locked(folder: Path) -> Path:
    """The work folder, made with its key file at once, so that it is recognised as a teach's."""
    if not folder.is_dir() or not any(folder.iterdir()):
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / TEACH_KEY, {})
    return folder


def _prepare(work: RunFolder, source: ModelFolder, manifest, key: dict, log) -> None:
    """The run folder a teach goes on in: the model's training state as the checkpoint of its last
    task and its updates as the run's ledger. A folder left by a stopped teach of the same model and
    tasks is kept (the run resumes it); anything else there is replaced."""
    key_file = work.path / TEACH_KEY
    if key_file.is_file() and json.loads(key_file.read_text()) == key:
        log(f"going on with the teach stopped in {work.path}")
        return
    for child in work.path.iterdir():
        if child.name != ".jumplora.lock":
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    last = len(manifest.tasks) - 1
    shutil.copytree(source.training, work.checkpoint(last, manifest.tasks[last].name))
    entries = []
    for index, entry in enumerate(e for e in manifest.ledger if e.sign > 0):
        work.ledger.folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source.update_file(entry.file), work.ledger.folder / entry.file)
        entries.append({"index": index, "task": entry.task, "file": entry.file, "sha256": entry.sha256})
    if entries:
        write_json(work.ledger.index_file, entries)
        read_ledger_file(work.ledger.index_file)
    write_json(key_file, key)


def _base_weights(source: ModelFolder) -> dict | None:
    return dict(load_file(str(source.base_state))) if source.base_state.is_file() else None
