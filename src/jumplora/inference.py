"""Using a trained model: predict the labels of new inputs, evaluate it on tasks' test splits.

Both read the model folder's manifest (:mod:`jumplora.manifest`) for the family, the scoring rule,
the prompt and the tasks it learned. Prediction is task-agnostic, as training was: the prompt lists
the named task's options, no task id reaches the model.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from jumplora.data import Example, Task
from jumplora.data.records import read_records
from jumplora.data.stream import StreamConfig, resolve_stream
from jumplora.errors import JumploraError
from jumplora.evaluation import evaluate
from jumplora.manifest import ModelManifest
from jumplora.model_folder import ModelFolder, load_trained

TEXT_COLUMNS = ("sentence", "text")  # an input file's text, when --text-column is not given


def task_to_ask(manifest: ModelManifest, name: str | None, instruction: str | None, labels: list[str] | None) -> Task:
    """A learned task by name, or (zero-shot) a new one from an instruction and its labels."""
    if labels:
        if instruction is None and name in {t.name for t in manifest.tasks}:  # a learned task, other options
            instruction = manifest.task(name).instruction
        return Task(name or "new task", instruction or "", tuple(labels), prompt_format=manifest.prompt_format)
    if instruction is not None:
        raise JumploraError("--instruction needs --labels (the options of the new task), comma-separated")
    if name is None:
        known = ", ".join(t.name for t in manifest.tasks)
        raise JumploraError(f"pass --task NAME (the model learned: {known}), or --instruction and --labels")
    return manifest.task(name).as_task(manifest.prompt_format)


def check_texts(texts) -> list[str]:
    """The inputs to answer: a list of non-blank strings (a blank one has nothing to route or answer)."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, (list, tuple)):
        raise JumploraError(f"the inputs must be a list of texts, got {type(texts).__name__}: wrap a single text in [ ]")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise JumploraError(f"input {index} is a {type(text).__name__}, not a text: pass strings")
        if not text.strip():
            raise JumploraError(f"input {index} is empty: give every input some text")
    return list(texts)


def read_inputs(path: Path, text_column: str | None) -> list[str]:
    """The texts of a JSONL / JSON / CSV / TSV file, one record each (see data.benchmark); a record
    without a text is an error that names it."""
    records = read_records(path)
    first = records[0] if isinstance(records[0], dict) else {}
    column = text_column or next((c for c in TEXT_COLUMNS if c in first), TEXT_COLUMNS[0])
    texts = []
    for index, record in enumerate(records):
        text = record.get(column) if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise JumploraError(f"record {index} of {path} has no text field {column!r}: give every record one "
                                "(or pass --text-column NAME)")
        texts.append(text)
    return texts


def predict(folder: Path, task: Task | None, texts: list[str], name: str | None = None, instruction: str | None = None,
            labels: list[str] | None = None, batch_size: int | None = None) -> tuple[Task, list[str]]:
    """(the task asked, the predicted label of each text)."""
    model, _, family, manifest = load_trained(folder)
    task = task or task_to_ask(manifest, name, instruction, labels)
    if not texts:
        raise JumploraError("no input given: pass TEXT arguments or --input FILE")
    examples = [Example(text, task.labels[0]) for text in texts]
    size = batch_size or manifest.run.get("eval_batch_size", 64)
    return task, family.predict(model, task, examples, batch_size=size, progress=len(examples) > size)


def write_predictions(path: Path, rows: list[dict]) -> None:
    """JSONL (one object a line: ``text``, ``prediction`` and, when routed, ``task``, ``way``,
    ``confidence``, ``learned``), or CSV / TSV with those columns, atomically."""
    from jumplora.files import write_text

    if path.suffix in (".csv", ".tsv"):
        buffer = io.StringIO()
        columns = list(rows[0]) if rows else ["text", "prediction"]
        writer = csv.writer(buffer, delimiter="," if path.suffix == ".csv" else "\t")
        writer.writerows([columns, *([row[c] for c in columns] for row in rows)])
        text = buffer.getvalue()
    else:
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    try:
        write_text(path, text)
    except OSError as error:
        raise JumploraError(f"cannot write {path} ({error.strerror}): pass another --output") from None


def evaluate_model(folder: Path, stream: dict | None, only: list[str] | None, batch_size: int | None,
                   max_test: int | None = None, force: bool = False, routed: bool = False) -> dict:
    """Accuracy (percent) per task on its test split: ``{task: {"accuracy", "examples"}}``.

    ``stream``: the data settings (StreamConfig keys); None takes the test examples the model
    folder kept, or (a folder without them) reads the tasks again as the run that wrote the model
    did (its manifest), refusing a task whose test data is not what the run measured (its SHA-256)
    unless ``force``. By default the tasks the model learned; ``only`` picks some.
    """
    model, tokenizer, family, manifest = load_trained(folder)
    size = batch_size or manifest.run.get("eval_batch_size", 64)
    loaded = (model, tokenizer, family, manifest, ModelFolder(Path(folder)))
    kept = kept_tasks(ModelFolder(Path(folder)), manifest) if stream is None and max_test is None else None
    if kept is not None:  # the test examples the model kept (its run's, as measured): no data needed
        wanted = only or [t.name for t in kept]
        by_name = {task.name: task for task in kept}
        missing = [name for name in wanted if name not in by_name]
        if missing:
            raise JumploraError(f"the model learned no task {', '.join(missing)} (its tasks: {', '.join(by_name)})")
        return {name: _scores(loaded, by_name[name], size, routed) for name in wanted}
    settings = dict(stream if stream is not None else manifest.run.get("stream") or {})
    if max_test is not None:
        settings["max_test_per_task"] = max_test
    settings["prompt_format"] = manifest.prompt_format  # asked as it learned
    tasks = resolve_stream(StreamConfig(**settings))
    wanted = only or ([t.name for t in manifest.tasks] if stream is None else [t.name for t in tasks])
    by_name = {task.name: task for task in tasks}
    missing = [name for name in wanted if name not in by_name]
    if missing:
        raise JumploraError(f"no test data for {', '.join(missing)} in the tasks given ({', '.join(by_name)}): "
                            "pass the --task-file or --data-dir they come from")
    if stream is None and max_test is None and not force:
        for learned in manifest.tasks:
            task = by_name.get(learned.name)
            if task is not None and learned.test_sha256 and task.fingerprints()["test"] != learned.test_sha256:
                raise JumploraError(f"the test data of task {task.name} (read from {task.source or '?'}) is not what the "
                                    "run measured: restore it, or add --force to evaluate on this data")
    return {name: _scores(loaded, by_name[name], size, routed) for name in wanted}


def _scores(loaded, task: Task, size: int, routed: bool) -> dict:
    """The merged model's accuracy on a task's test examples (and, ``routed``, the routed states')."""
    scores = {"accuracy": evaluate(loaded[0], loaded[2], task, size), "examples": len(task.test)}
    if routed:
        from jumplora.answering import routed_accuracy

        scores["routed_accuracy"] = routed_accuracy(loaded, task, size)
    return scores


def kept_tasks(folder: ModelFolder, manifest: ModelManifest) -> list[Task] | None:
    """The model's tasks with the test examples its folder kept, or None when it kept none of them."""
    tasks = []
    for index, learned in enumerate(manifest.tasks):
        examples = folder.eval_examples(index, learned.name)
        if not examples:
            return None
        task = learned.as_task(manifest.prompt_format)
        task.test = examples
        tasks.append(task)
    return tasks or None
