"""The stream of tasks a run learns: the demo, a benchmark order, named tasks or a user's task file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from jumplora.config import read_yaml
from jumplora.data.benchmark import load_benchmark, load_hub_task, load_task_file
from jumplora.data.demo import demo_stream
from jumplora.data.tasks import Task, subsample
from jumplora.errors import JumploraError

if TYPE_CHECKING:
    from jumplora.config import RunConfig

DEFAULT_ORDER = {"sc": 1, "ls": 4}


def resolve_stream(config: RunConfig) -> list[Task]:
    """The tasks of the run, in training order, subsampled as the config asks (seed 0: the same
    examples for every method and seed, so their accuracy matrices are comparable)."""
    if config.task_file:
        tasks = _tasks_from_file(Path(config.task_file))
    elif config.benchmark in ("sc", "ls") or config.tasks:
        if not config.data_dir:
            raise JumploraError("the sc/ls benchmarks and --tasks read a benchmark folder: pass --data-dir DIR")
        benchmark = load_benchmark(config.data_dir)
        names = config.tasks or benchmark.order(config.order or DEFAULT_ORDER[config.benchmark])
        tasks = [benchmark.load_task(name) for name in names]
    else:
        tasks = demo_stream()
    names = [task.name for task in tasks]
    if len(set(names)) != len(names):
        raise JumploraError(f"duplicate task names in the stream {names}: name each task once")
    for task in tasks:
        task.train = subsample(task.train, config.max_train_per_task, seed=0)
        task.test = subsample(task.test, config.max_test_per_task, seed=0)
        task.dev = subsample(task.dev, config.max_test_per_task, seed=0)
    return tasks


def _tasks_from_file(path: Path) -> list[Task]:
    """A YAML/JSON list of tasks: {name, instruction, path, labels?, text_column?, label_column?,
    test_path?} for a local file, or {name, instruction, hub, config?, labels?, text_column?,
    label_column?, train_split?, dev_split?, test_split?} for a dataset on the Hugging Face hub."""
    entries = read_yaml(path, "task file")
    if not isinstance(entries, list) or not entries:
        raise JumploraError(f"task file {path} must be a non-empty list of tasks (name, path, instruction, ...)")
    tasks = []
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or not {"name", "instruction"} <= set(entry) or ("path" in entry) == ("hub" in entry):
            raise JumploraError(f"task {number} of {path} needs name, instruction and one of path (a file) or hub (a dataset id)")
        entry = dict(entry)
        for key in ("path", "test_path"):
            if entry.get(key):
                entry[key] = (path.parent / entry[key]) if not Path(entry[key]).is_absolute() else entry[key]
        try:
            if "hub" in entry:
                tasks.append(load_hub_task(entry.pop("hub"), **entry))
            else:
                tasks.append(load_task_file(**entry))
        except TypeError as error:
            raise JumploraError(f"task {number} of {path}: {error}") from None
    return tasks
