"""Tasks, prompts and the loaders of the benchmark, of a user's own files and of the demo stream."""

from jumplora.data.benchmark import (
    Benchmark,
    TaskSpec,
    benchmark_of_order,
    examples_from_records,
    load_benchmark,
    load_hub_task,
    load_task_file,
)
from jumplora.data.demo import demo_stream
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
    "stratified_split",
    "subsample",
]
