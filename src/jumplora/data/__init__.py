"""Tasks and prompts; the benchmark folder, a user's own files and hub datasets, the demo stream."""

from jumplora.data.benchmark import Benchmark, TaskSpec, benchmark_of_order, load_benchmark
from jumplora.data.demo import demo_stream
from jumplora.data.records import examples_from_records, read_records
from jumplora.data.tasks import (
    SPLITS,
    Example,
    Task,
    build_prompt,
    is_correct,
    normalize_answer,
    stratified_split,
    subsample,
)
from jumplora.data.user_tasks import load_hub_task, load_task_file, read_task_list

__all__ = [
    "SPLITS",
    "Benchmark",
    "Example",
    "Task",
    "TaskSpec",
    "benchmark_of_order",
    "build_prompt",
    "demo_stream",
    "examples_from_records",
    "is_correct",
    "load_benchmark",
    "load_hub_task",
    "load_task_file",
    "normalize_answer",
    "read_records",
    "read_task_list",
    "stratified_split",
    "subsample",
]
