"""The manifest of a model folder: what a continually trained model learned, and how to ask it.

``model/jumplora-model.json`` sits beside the transformers files (which plain ``from_pretrained``
still loads) and holds::

    format, version          "jumplora-model", 2 (1: written before the weights' hashes)
    base_model               the model the run started from (a bundled name, a path, a hub id)
    family, scoring          seq2seq | causal | encoder; generate | rank | option-embedding
    family_settings          the family's run settings by flat key (max_source_length, causal_mode, ...)
    prompt, prompt_format    the template every task's input is put in and its name (data.tasks.build_prompt)
    max_source_length, encoder_temperature   the same settings, as version 1 recorded them
    tasks                    every learned task, in order: name, instruction, labels, the accuracy
                             when it was learned and after the last task, the SHA-256 of its test data
    ledger                   the updates in the weights, in order: task, method, file (in updates/),
                             SHA-256, sign (+1 added, -1 removed); ``exact`` is false when the weights
                             are not the base plus these updates (methods that train every weight)
    run                      the run that wrote it: method, seed, eval_batch_size, and the stream
                             settings (data_dir, task_file, ...) that `jumplora evaluate` reads again
    weights, files           the SHA-256 of each weight file, and of the task states, the training
                             state and the kept test examples (model_folder)
    sizes                    MB on disk of each part
    generation, parent       1 for a run's model; a taught model names the version it was taught from
    answering                OA of the merged model and of the routed states, as the run measured them
                             (the default way `predict` answers: jumplora.answering)
    sha256                   the SHA-256 of everything above (a hand edit is refused, not believed)

Every command that writes a model writes its manifest; every command that reads a model checks it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from jumplora.data.tasks import DEFAULT_PROMPT_FORMAT, PROMPT_FORMATS, PROMPT_TEMPLATE, Task
from jumplora.errors import JumploraError
from jumplora.files import json_sha256, write_json

MANIFEST_FILE = "jumplora-model.json"
# The settings that say where a run's tasks came from: `jumplora evaluate` reads the data again.
STREAM_KEYS = ("benchmark", "order", "tasks", "data_dir", "task_file", "add_tasks", "max_test_per_task",
               "prompt_format")
FORMAT, VERSION = "jumplora-model", 2


@dataclass
class LearnedTask:
    name: str
    instruction: str
    labels: list[str]
    accuracy_learned: float | None = None  # a[t, t], right after it was learned
    accuracy_last: float | None = None  # a[T-1, t], after the last task
    test_sha256: str | None = None  # the SHA-256 of its test data (Task.fingerprints), checked by evaluate

    def as_task(self, prompt_format: str = DEFAULT_PROMPT_FORMAT) -> Task:
        return Task(self.name, self.instruction, tuple(self.labels), prompt_format=prompt_format)


@dataclass
class LedgerEntry:
    task: str
    method: str
    file: str
    sha256: str
    sign: int = 1


@dataclass
class ModelManifest:
    base_model: str
    family: str
    scoring: str
    max_source_length: int
    encoder_temperature: float = 0.05
    prompt: str = PROMPT_TEMPLATE
    prompt_format: str = DEFAULT_PROMPT_FORMAT
    tasks: list[LearnedTask] = field(default_factory=list)
    ledger: list[LedgerEntry] = field(default_factory=list)
    exact: bool = True
    run: dict = field(default_factory=dict)
    family_settings: dict | None = None
    weights: dict[str, str] | None = None
    files: dict[str, str] | None = None  # SHA-256 of its states, training state and test examples
    sizes: dict[str, float] | None = None  # MB on disk per part (ModelFolder.sizes)
    generation: int = 1  # 1 for a run's model; its parent's + 1 for a model taught more tasks
    parent: dict | None = None  # the model it was taught from: {generation, sha256 (of its manifest), path}
    answering: dict | None = None  # what the run measured: {merged_oa, routed_oa, routing_from_text}
    format: str = FORMAT
    version: int = VERSION

    def task(self, name: str) -> LearnedTask:
        for task in self.tasks:
            if task.name == name:
                return task
        known = ", ".join(t.name for t in self.tasks) or "none"
        raise JumploraError(f"the model learned no task {name!r} (its tasks: {known}): pass one of them, or "
                            "--instruction and --labels for a new task")

    def settings(self) -> dict:
        """The family's run settings by flat key (``Family.from_settings``); a manifest of version 1
        recorded them as its scoring rule and two fields."""
        if self.family_settings is not None:
            return dict(self.family_settings)
        legacy = {"max_source_length": self.max_source_length, "encoder_temperature": self.encoder_temperature}
        return {**legacy, "causal_mode": self.scoring} if self.family == "causal" else legacy

    def write(self, path: Path, weights: dict[str, str] | None = None, files: dict[str, str] | None = None) -> None:
        """Write the manifest (with the weight files' and other files' hashes, when given) and its
        own SHA-256."""
        if weights is not None:
            self.weights = dict(weights)
        if files is not None:
            self.files = dict(files)
        values = asdict(self)
        write_json(Path(path), {**values, "sha256": json_sha256(values)})

    def digest(self) -> str:
        """The SHA-256 of the manifest's content, as written (it names a version of a model)."""
        return json_sha256(asdict(self))

    @classmethod
    def read_file(cls, path: Path) -> ModelManifest:
        """A manifest file, every field checked; a damaged or hand-edited one is a one-line error."""
        try:
            values = json.loads(Path(path).read_text())
            if not isinstance(values, dict) or values.get("format") != FORMAT:
                raise ValueError(f"format {values.get('format') if isinstance(values, dict) else None!r}")
        except (OSError, ValueError, UnicodeDecodeError) as error:
            raise JumploraError(f"{path} is not a jumplora model manifest ({error}): re-save the model with "
                                "jumplora") from None
        recorded = values.pop("sha256", None)
        if values.get("version", 1) >= 2 and recorded != json_sha256(values):
            raise JumploraError(f"{path} does not match its own SHA-256: it was edited or damaged; restore it (the "
                                "manifest is written by jumplora, not by hand)")
        return cls.from_values(values, path)

    @classmethod
    def from_values(cls, values: dict, path) -> ModelManifest:
        problem = _problem(values)
        if problem:
            raise JumploraError(f"{path} is not a valid jumplora model manifest ({problem}): restore it or re-save "
                                "the model with jumplora")
        values = dict(values)
        tasks = [LearnedTask(**t) for t in values.pop("tasks")]
        ledger = [LedgerEntry(**e) for e in values.pop("ledger")]
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known}, tasks=tasks, ledger=ledger)


def _problem(values: dict) -> str | None:
    """The first field of a manifest that is not as :class:`ModelManifest` writes it, in words."""
    def number(v, whole=False):
        return isinstance(v, int if whole else (int, float)) and not isinstance(v, bool)

    def text_list(v):
        return isinstance(v, list) and all(isinstance(x, str) for x in v)

    checks = {
        "base_model": lambda v: isinstance(v, str), "family": lambda v: v in ("seq2seq", "causal", "encoder"),
        "scoring": lambda v: v in ("generate", "rank", "option-embedding"),
        "max_source_length": lambda v: number(v, True) and v > 0, "encoder_temperature": lambda v: number(v) and v > 0,
        "prompt": lambda v: isinstance(v, str), "prompt_format": lambda v: v in PROMPT_FORMATS, "exact": lambda v: isinstance(v, bool), "run": lambda v: isinstance(v, dict),
        "family_settings": lambda v: v is None or isinstance(v, dict),
        "weights": lambda v: v is None or (isinstance(v, dict) and all(isinstance(x, str) for x in v.values())),
        "files": lambda v: v is None or (isinstance(v, dict) and all(isinstance(x, str) for x in v.values())),
        "sizes": lambda v: v is None or (isinstance(v, dict) and all(number(x) for x in v.values())),
        "generation": lambda v: number(v, True) and v >= 1, "parent": lambda v: v is None or isinstance(v, dict),
        "answering": lambda v: v is None or isinstance(v, dict),
        "tasks": lambda v: isinstance(v, list), "ledger": lambda v: isinstance(v, list),
    }
    for key, good in checks.items():
        if key in values or key in ("base_model", "family", "scoring", "max_source_length", "tasks", "ledger"):
            if not good(values.get(key)):
                return f"field {key!r} is {str(values.get(key))[:60]!r}"
    for task in values["tasks"]:
        if not (isinstance(task, dict) and isinstance(task.get("name"), str) and isinstance(task.get("instruction"), str)
                and text_list(task.get("labels")) and task["labels"]
                and all(task.get(k) is None or number(task[k]) for k in ("accuracy_learned", "accuracy_last"))
                and (task.get("test_sha256") is None or isinstance(task.get("test_sha256"), str))
                and set(task) <= {"name", "instruction", "labels", "accuracy_learned", "accuracy_last", "test_sha256"}):
            return f"task {str(task)[:80]} needs name, instruction (text) and labels (a list of texts)"
    for entry in values["ledger"]:
        if not (isinstance(entry, dict) and all(isinstance(entry.get(k), str) for k in ("task", "method", "file", "sha256"))
                and entry.get("sign", 1) in (1, -1) and set(entry) <= {"task", "method", "file", "sha256", "sign"}):
            return f"ledger entry {str(entry)[:80]} needs task, method, file, sha256 (texts) and sign (+1 or -1)"
    return None
