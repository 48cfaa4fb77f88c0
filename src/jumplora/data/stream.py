"""The stream of tasks a run learns: the demo, a benchmark order, named tasks or a user's task file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from jumplora.data.benchmark import BENCHMARK_ORDERS, DEFAULT_ORDER, load_benchmark
from jumplora.data.user_tasks import TASK_LIST_SUFFIXES, read_task_list
from jumplora.data.demo import demo_stream
from jumplora.data.tasks import DEFAULT_PROMPT_FORMAT, PROMPT_FORMATS, Task, subsample
from jumplora.errors import JumploraError
from jumplora.settings import check, setting

BENCHMARKS = ("demo", *BENCHMARK_ORDERS)


@dataclass
class StreamConfig:
    """Which tasks a run learns, in which order, and how many examples of each."""

    TITLE: ClassVar[str] = "the stream of tasks"

    benchmark: str | None = setting(None, "demo: 3 real-text tasks from PyPI packages; sc: the Standard CL benchmark "
                                    "(4 tasks, orders 1-3); ls: Long Sequence (15 tasks, orders 4-6)",
                                    choices=BENCHMARKS, shown="demo, unless --tasks or --task-file")
    order: int | None = setting(None, "the task order of the benchmark (paper Table 6; the tasks of each are in "
                                "its tasks.json; alone it names its benchmark: 1-3 sc, 4-6 ls)",
                                shown="the benchmark's first")
    tasks: list[str] | None = setting(None, "task names of --data-dir, in training order, comma-separated",
                                      separator=",", metavar="NAMES")
    data_dir: str | None = setting(None, "a benchmark folder with tasks.json (e.g. ../shared/data/cl_benchmark)",
                                   metavar="DIR")
    task_file: str | None = setting(None, "a YAML/JSON list of your own tasks (see README: task files)",
                                    metavar="FILE")
    add_tasks: list[str] | None = setting(None, "tasks appended after the stream, in order: task names of --data-dir "
                                          "or task files (.yaml/.json); `run --resume OUTPUT --add-tasks` extends a "
                                          "run", separator=",", metavar="NAMES|FILES")
    max_train_per_task: int | None = setting(None, "keep at most this many training examples per task "
                                             "(class-stratified, the same for every method and seed)",
                                             minimum=1, shown="all")
    max_test_per_task: int | None = setting(None, "keep at most this many test (and dev) examples per task",
                                            minimum=1, shown="all")
    prompt_format: str = setting(DEFAULT_PROMPT_FORMAT, "how an input is written: olora (instruction; "
                                 "'Option: a, b'; text; 'Answer:', the O-LoRA/ELLA convention) or authors (the JumpLoRA "
                                 "authors' code: 'Task Instruction:', 'Options: a | b', 'Text:', 'Answer:')",
                                 choices=tuple(PROMPT_FORMATS))

    def __post_init__(self) -> None:
        check(self)
        if self.order is not None and (self.tasks or self.task_file):
            raise JumploraError(f"--order picks a benchmark's tasks, --{'tasks' if self.tasks else 'task-file'} names "
                                "them: give only one of them")
        if self.order is not None and self.benchmark is None:  # an order belongs to one benchmark
            self.benchmark = next((name for name, orders in BENCHMARK_ORDERS.items() if self.order in orders), None)
        if self.order is not None:
            expected = BENCHMARK_ORDERS.get(self.benchmark or "", sorted(o for v in BENCHMARK_ORDERS.values() for o in v))
            if self.order not in expected:
                raise JumploraError(
                    f"order {self.order} does not belong to benchmark {self.benchmark or '/'.join(BENCHMARK_ORDERS)}: "
                    f"use one of {', '.join(map(str, expected))}"
                )
        if self.benchmark == "demo" and (self.order or self.tasks):
            raise JumploraError("the demo benchmark has one fixed stream: drop --order/--tasks or pick --benchmark "
                                + "|".join(BENCHMARK_ORDERS))
        if self.task_file and (self.tasks or self.benchmark is not None):
            raise JumploraError("--task-file replaces --benchmark/--tasks: give only one of them")
        if self.tasks is not None and len(set(self.tasks)) != len(self.tasks):
            raise JumploraError(f"duplicate task names in the stream {self.tasks}: name each task once")

    def resolved_order(self) -> int | None:
        """The order the stream follows: the one given, else the benchmark's first; None for named tasks,
        a task file or the demo (what the paper's per-order settings, such as ELLA's λ, are read by)."""
        if self.tasks or self.task_file or self.benchmark not in BENCHMARK_ORDERS:
            return None
        return self.order or DEFAULT_ORDER[self.benchmark]


def resolve_stream(config: StreamConfig) -> list[Task]:
    """The tasks of the run, in training order, subsampled as the config asks (seed 0: the same
    examples for every method and seed, so their accuracy matrices are comparable)."""
    if config.task_file:
        tasks = read_task_list(Path(config.task_file))
    elif config.benchmark in BENCHMARK_ORDERS or config.tasks:
        if not config.data_dir:
            raise JumploraError("the sc/ls benchmarks and --tasks read a benchmark folder: pass --data-dir DIR")
        benchmark = load_benchmark(config.data_dir)
        names = config.tasks or benchmark.order(config.resolved_order())
        tasks = [benchmark.load_task(name) for name in names]
    else:
        tasks = demo_stream()
    tasks += _added(config)
    names = [task.name for task in tasks]
    if len(set(names)) != len(names):
        raise JumploraError(f"duplicate task names in the stream {names}: name each task once")
    for task in tasks:
        task.prompt_format = config.prompt_format
        separator = PROMPT_FORMATS[config.prompt_format][1].strip()
        mixed = [label for label in task.labels if separator in label]
        if mixed:  # the options line would read as more options than there are
            other = next(name for name in PROMPT_FORMATS if name != config.prompt_format)
            task.notes.append(f"note: task {task.name}'s label {mixed[0]!r} holds {separator!r}, which the "
                              f"{config.prompt_format} prompt separates its options with; --prompt-format {other} "
                              f"separates them with {PROMPT_FORMATS[other][1].strip()!r}")
        task.train = subsample(task.train, config.max_train_per_task, seed=0)
        task.test = subsample(task.test, config.max_test_per_task, seed=0)
        task.dev = subsample(task.dev, config.max_test_per_task, seed=0)
    return tasks


def _added(config: StreamConfig) -> list[Task]:
    """The tasks of ``add_tasks``: a task file's tasks, or a task of the benchmark folder by name."""
    tasks, benchmark = [], None
    for entry in config.add_tasks or []:
        if is_task_list(entry):
            tasks += read_task_list(Path(entry))
            continue
        if benchmark is None:
            if not config.data_dir:
                raise JumploraError(f"--add-tasks {entry}: a task name is read from a benchmark folder: pass "
                                    "--data-dir DIR, or give a task file (.yaml/.json)")
            benchmark = load_benchmark(config.data_dir)
        tasks.append(benchmark.load_task(entry))
    return tasks


def is_task_list(entry: str) -> bool:
    """Whether an ``add_tasks`` entry names a task file (else a task of the benchmark folder)."""
    return entry.lower().endswith(TASK_LIST_SUFFIXES)
