"""The manifest of a model folder: what a continually trained model learned, and how to ask it.

``model/jumplora-model.json`` sits beside the transformers files (which plain ``from_pretrained``
still loads) and holds::

    format, version          "jumplora-model", 1
    base_model               the model the run started from (a bundled name, a path, a hub id)
    family, scoring          seq2seq | causal | encoder; generate | rank | option-embedding
    prompt                   the template every task's input is put in (data.tasks.build_prompt)
    max_source_length, encoder_temperature   what prediction needs besides the prompt
    tasks                    every learned task, in order: name, instruction, labels, the accuracy
                             when it was learned and after the last task
    ledger                   the updates in the weights, in order: task, method, file, SHA-256,
                             sign (+1 added, -1 removed); ``exact`` is false when the weights are
                             not the base plus these updates (methods that train every weight)
    run                      the run that wrote it: method, seed, eval_batch_size, and the stream
                             settings (data_dir, task_file, ...) that `jumplora evaluate` reads again

Every command that writes a model writes its manifest; every command that reads a model checks it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from jumplora.data.tasks import PROMPT_TEMPLATE, Task
from jumplora.errors import JumploraError

MANIFEST = "jumplora-model.json"
# The settings that say where a run's tasks came from: `jumplora evaluate` reads the data again.
STREAM_KEYS = ("benchmark", "order", "tasks", "data_dir", "task_file", "add_tasks", "max_test_per_task")
FORMAT, VERSION = "jumplora-model", 1
SCORING = {"seq2seq": "generate", "encoder": "option-embedding"}  # causal: its mode (generate or rank)


@dataclass
class LearnedTask:
    name: str
    instruction: str
    labels: list[str]
    accuracy_learned: float | None = None  # a[t, t], right after it was learned
    accuracy_last: float | None = None  # a[T-1, t], after the last task

    def as_task(self) -> Task:
        return Task(self.name, self.instruction, tuple(self.labels))


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
    tasks: list[LearnedTask] = field(default_factory=list)
    ledger: list[LedgerEntry] = field(default_factory=list)
    exact: bool = True
    run: dict = field(default_factory=dict)
    format: str = FORMAT
    version: int = VERSION

    def task(self, name: str) -> LearnedTask:
        for task in self.tasks:
            if task.name == name:
                return task
        known = ", ".join(t.name for t in self.tasks) or "none"
        raise JumploraError(f"the model learned no task {name!r} (its tasks: {known}): pass one of them, or "
                            "--instruction and --labels for a new task")

    def family_options(self) -> dict:
        """The keyword options of the model's family class (see families.loading.load_model)."""
        extra = {"causal": {"mode": self.scoring}, "encoder": {"temperature": self.encoder_temperature}}
        return {"max_source_length": self.max_source_length, **extra.get(self.family, {})}

    def write(self, folder: Path) -> None:
        from jumplora.checkpoint import write_json

        write_json(Path(folder) / MANIFEST, asdict(self))

    @classmethod
    def read(cls, folder: Path) -> ModelManifest:
        """The manifest of a model folder; a folder without one, or a damaged one, is a one-line error."""
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise JumploraError(f"{folder} has no {MANIFEST}: pass a model folder written by jumplora "
                                "(OUTPUT/<method>/seed<k>/model, or one from rollback/apply)")
        try:
            values = json.loads(path.read_text())
            if values.get("format") != FORMAT:
                raise ValueError(f"format {values.get('format')!r}")
            tasks = [LearnedTask(**t) for t in values.pop("tasks")]
            ledger = [LedgerEntry(**e) for e in values.pop("ledger")]
            return cls(**values, tasks=tasks, ledger=ledger)
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            raise JumploraError(f"{path} is not a jumplora model manifest ({error}): re-save the model with "
                                "jumplora") from None


def scoring_of(family) -> str:
    """How a family object answers: generate, rank or option-embedding."""
    return getattr(family, "mode", None) or SCORING[family.name]


def save_model_folder(model, tokenizer, manifest: ModelManifest, folder: Path) -> None:
    """Write a model folder that appears whole or not at all: the transformers files, the
    tokenizer and the manifest go into ``<folder>.tmp``, are read back, and the folder is renamed
    into place (an older folder of that name is replaced). A crash at any point leaves either the
    old folder or the new one, never half of one; a full disk is a one-line error."""
    import shutil

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        manifest.write(tmp)
        verify_model_folder(tmp)
        old = folder.with_name(folder.name + ".old")
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise JumploraError(f"could not write the model to {folder} ({error.strerror or error}): free space or "
                            "pass another output; a run resumes and writes it again") from None


def verify_model_folder(folder: Path) -> None:
    """Raise a JumploraError unless the folder's config, weights and manifest can be read."""
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    try:
        json.loads((folder / "config.json").read_text())
        weights = sorted(folder.glob("*.safetensors"))
        if not weights:
            raise ValueError("no *.safetensors weights")
        for path in weights:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    handle.get_slice(key)
    except (OSError, ValueError, SafetensorError) as error:
        raise JumploraError(f"the model folder {folder} is incomplete ({str(error).splitlines()[0]}): "
                            "resume the run (or re-run the command) to write it again") from None
    ModelManifest.read(folder)
