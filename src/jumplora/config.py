"""The configuration of a run: sections owned by their modules, one flat set of keys outside.

    RunConfig
      model, trust_remote_code               what is trained
      family_options  FamilyOptions          families/config.py: the family and how it is asked
      data            StreamConfig           data/stream.py: which tasks, how many examples
      methods, seeds, output
      optim           OptimConfig            train.py: AdamW, batch, epochs
      adapter         AdapterConfig          adapters/config.py: r, α, targets, the JumpLoRA schedule
      weights         MethodWeights          strategies/config.py: λ of ELLA, O-LoRA, EWC
      eval_batch_size ... log_with           evaluation, outputs, hardware

Every setting is a :func:`jumplora.settings.setting` field with its help, allowed values and
bounds. Outside the code a run's settings are flat: each has one key, the same as its flag
(``--learning-rate`` is ``learning_rate``), in YAML files, ``config.yaml`` and ``results.json``.
A preset fills keys first, the YAML file overrides it, flags override both; unknown keys are an
error that names the closest known one. The defaults are the paper's hyper-parameters (r, α, lr,
batch, epochs, the schedule) with three exceptions that preset ``paper`` changes: the global τ for
every method (the paper: per block for some), O-LoRA's prompt (the authors' code: its own) and the
model and data, which default to the bundled demo: all-MiniLM-L6-v2 on three real text tasks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from jumplora.adapters.config import AdapterConfig, paper_threshold_mode
from jumplora.data.stream import StreamConfig
from jumplora.errors import JumploraError
from jumplora.families.config import FamilyOptions
from jumplora.settings import FALSE, TRUE, check, default_of, did_you_mean, key_of, read_yaml, setting
from jumplora.settings import fields as settings_of
from jumplora.strategies.config import MethodWeights
from jumplora.strategies.registry import METHODS, parse_method
from jumplora.train import OptimConfig

PRECISIONS = ("fp32", "bf16", "fp16", "bf16-base")
TRACKERS = ("tensorboard", "wandb")
ALIASES = {"method": "methods", "seed": "seeds"}  # YAML keys in the singular, as the flags are


def section(cls) -> Any:
    return dataclasses.field(default_factory=cls, metadata={"section": True})


@dataclass
class RunConfig:
    """Every setting of a run (see the module docstring)."""

    TITLE: ClassVar[str] = "the run"

    model: str | None = setting(None, "a bundled model (all-minilm-l6-v2, smollm2-135m), a .gguf file, a local "
                                "model folder or a hub id", shown="all-minilm-l6-v2", metavar="MODEL")
    trust_remote_code: bool = setting(False, "run Python code that comes with the model (off: never)")
    family_options: FamilyOptions = section(FamilyOptions)
    data: StreamConfig = section(StreamConfig)
    methods: list[str] = setting(factory=lambda: ["inclora", "jumplora+inclora"], choices=lambda: tuple(METHODS),
                                 help="a continual-learning method, repeatable (see `jumplora list`)",
                                 flag="--method", action="append", metavar="METHOD", label="method")
    seeds: list[int] = setting(factory=lambda: [0], help="a random seed, repeatable", flag="--seed",
                               action="append", metavar="N")
    output: str | None = setting(None, "the output folder: OUTPUT/<method>/seed<k>/ per run. Without it each run "
                                 "gets a new folder runs/<date>_<time> and runs/latest points at the newest; a "
                                 "folder that holds a run is refused unless --resume or --overwrite",
                                 shown="runs/<date>_<time>", metavar="DIR")
    optim: OptimConfig = section(OptimConfig)
    adapter: AdapterConfig = section(AdapterConfig)
    weights: MethodWeights = section(MethodWeights)
    eval_batch_size: int = setting(64, "prompts per forward in evaluation (halved when memory runs out)", minimum=1)
    single_task_baselines: bool = setting(False, "also train each task alone (cached), for FWT")
    save_model: bool = setting(True, "save the final merged model to OUTPUT/<method>/seed<k>/model")
    route: bool = setting(True, "also answer each test input with the state of the task a router picks from the "
                          "input (jumplora's second mode: routed_accuracy_matrix, routing in results.json; methods "
                          "that merge a fresh adapter per task)")
    keep_eval_data: bool = setting(True, "keep each task's test examples in the model folder, so that `jumplora teach` "
                                   "can check earlier tasks again (never trained on)")
    keep_checkpoints: int = setting(2, "per-task checkpoints kept, the newest (resume needs 1)", minimum=1)
    device: str = setting("auto", "where to train (several GPUs: `accelerate launch`)", choices=("auto", "cpu", "cuda"))
    precision: str = setting("fp32", "fp32; bf16 autocast (adapters stay fp32; faster on GPUs and on CPUs with bf16 "
                             "instructions); fp16 autocast (GPUs only); bf16-base: frozen weights stored in bf16, "
                             "adapters and optimiser state fp32 (for GPUs)", choices=PRECISIONS)
    compile: str | bool | None = setting(None, "torch.compile training with this backend (the flag alone: "
                                         "inductor; off: not, e.g. to resume a compiled run); pays on GPUs",
                                         metavar="BACKEND", nargs="?", const="inductor", shown="off")
    log_with: list[str] | None = setting(None, "trackers to log the loss, learning rate and τ to, comma-separated",
                                         choices=TRACKERS, separator=",", label="tracker", metavar="TRACKERS")

    def __post_init__(self) -> None:
        check(self)
        if not self.methods:
            raise JumploraError("no method given: pass --method (see `jumplora list`)")
        if len(set(self.methods)) != len(self.methods):
            raise JumploraError(f"a method is repeated in {self.methods}: name each once")
        if not self.seeds:
            raise JumploraError("no seed given: pass --seed N")
        bad = [seed for seed in self.seeds if not 0 <= seed < 2**32]
        if bad:  # numpy's generator takes 32-bit seeds
            raise JumploraError(f"seed {bad[0]} is out of range: pass seeds from 0 to {2**32 - 1}")
        full = [m for m in self.methods if parse_method(m).adapter is None]
        if self.precision == "bf16-base" and full:
            raise JumploraError(
                f"precision bf16-base stores the weights in bf16, but {', '.join(full)} trains them all: "
                "use --precision bf16 (autocast) for it, or an adapter method"
            )
        self.compile = _compile_backend(self.compile)
        if self.family_options.also_rank and self.family_options.causal_mode == "rank":
            raise JumploraError("--also-rank adds rank scoring to --causal-mode generate: drop one of the two")

    def adapter_config(self, kind: str, method: str | None = None) -> AdapterConfig:
        """The adapters of ``method`` (of adapter ``kind``): dropout is plain LoRA's only, and the
        threshold mode ``paper`` becomes the paper's choice for the method and benchmark."""
        mode = self.adapter.threshold_mode
        if mode == "paper":
            mode = paper_threshold_mode(method or "", self.data.benchmark)
        return dataclasses.replace(self.adapter, kind=kind, dropout=self.adapter.dropout if kind == "lora" else 0.0,
                                   threshold_mode=mode)

    def to_dict(self) -> dict:
        """The flat settings, key -> value (lists, not tuples: YAML and JSON)."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, owner, field in flat_fields() for value in [getattr(self._owner(owner), field.name)]}

    @classmethod
    def from_dict(cls, values: dict) -> RunConfig:
        """From flat settings (keys as in :meth:`to_dict`; dashes and the singular method/seed too)."""
        values = normalise_keys(values)
        grouped: dict[str | None, dict] = {}
        for key, owner, field in flat_fields():
            if key in values:
                grouped.setdefault(owner, {})[field.name] = values[key]
        sections = {name: kind(**grouped.get(name, {})) for name, kind in section_types().items()}
        return cls(**grouped.get(None, {}), **sections)

    def _owner(self, name: str | None):
        return self if name is None else getattr(self, name)


def section_types() -> dict[str, type]:
    """The section attributes of RunConfig and their classes."""
    return {f.name: f.default_factory for f in dataclasses.fields(RunConfig) if f.metadata.get("section")}


def flat_fields() -> Iterator[tuple[str, str | None, dataclasses.Field]]:
    """(key, the section's attribute or None for RunConfig's own, field) of every setting, in order."""
    for field in dataclasses.fields(RunConfig):
        if field.metadata.get("section"):
            yield from ((key_of(f), field.name, f) for f in settings_of(field.default_factory))
        elif not field.metadata.get("hidden"):
            yield key_of(field), None, field


def known_keys() -> list[str]:
    return [key for key, _, _ in flat_fields()]


def defaults() -> dict:
    """The default of every flat setting (what a results.json without the key ran with)."""
    return {key: default_of(field) for key, _, field in flat_fields()}


def normalise_keys(values: dict) -> dict:
    """Keys with dashes as underscores and ``method``/``seed`` as ``methods``/``seeds``; an unknown
    key is an error naming the closest known one."""
    known, out = known_keys(), {}
    for key, value in values.items():
        name = ALIASES.get(str(key).replace("-", "_"), str(key).replace("-", "_"))
        if name not in known and name != "preset":  # a file's preset: see with_preset
            raise JumploraError(f"unknown configuration key(s) {key}{did_you_mean(name, known)}: "
                                "see `jumplora run --help`")
        out[name] = value
    return out


def _compile_backend(value: str | bool | None) -> str | None:
    # `compile: true` in a YAML file, `--compile off` on a resume: a switch, not a backend name.
    switch = value.lower() if isinstance(value, str) else value
    if switch in (True, *TRUE):
        return "inductor"
    if switch in (False, None, *FALSE):
        return None
    from jumplora._compat import compile_backends

    known = compile_backends()
    if value not in known:
        raise JumploraError(f"unknown torch.compile backend {value[:60]!r}: use one of {', '.join(known)} "
                            "(--compile alone picks inductor)")
    return value


def absolute_paths(settings: dict) -> dict:
    """Flat settings with every local path made absolute (the model when it is a local path, the
    data folder, the task file, added task files): a run records where its data is, so that a
    resume or an evaluation from another directory reads the same files."""
    from jumplora.data.stream import is_task_list
    from jumplora.families.sources import BUNDLED

    def absolute(value):
        return str(Path(value).expanduser().absolute()) if isinstance(value, str) and value else value

    out = dict(settings)
    for key in ("data_dir", "task_file"):
        out[key] = absolute(out.get(key))
    model = out.get("model")
    if isinstance(model, str) and model.lower() not in BUNDLED and Path(model).expanduser().exists():
        out["model"] = absolute(model)
    if out.get("add_tasks"):
        out["add_tasks"] = [absolute(entry) if is_task_list(entry) else entry for entry in out["add_tasks"]]
    return out


PRESETS: dict[str, dict] = {
    # What the paper's Table 1 used (with --benchmark sc or ls): r 8, α 32 on q/v, AdamW lr 1e-3,
    # batch 32, one epoch, S_start/S_final at 0.2/0.8, the threshold per method and benchmark, the
    # sparse ELLA penalty, λ of Table 7 per order, the authors' prompt.
    "paper": {"r": 8, "alpha": 32.0, "learning_rate": 1e-3, "batch_size": 32, "epochs": 1, "start_fraction": 0.2,
              "final_fraction": 0.8, "threshold_mode": "paper", "ella_delta": "sparse", "prompt_format": "authors"},
    # The README's main job: the bundled MiniLM on the demo stream, inclora vs jumplora+inclora.
    "demo": {"benchmark": "demo", "methods": ["inclora", "jumplora+inclora"], "batch_size": 16,
             "max_source_length": 128},
    # A few minutes on a laptop: order 1 of the SC benchmark, subsampled.
    "quick-sc": {"benchmark": "sc", "order": 1, "max_train_per_task": 400, "max_test_per_task": 200,
                 "max_source_length": 128, "batch_size": 16},
}


def load_config(path: str | Path | None = None, preset: str | None = None, overrides: dict | None = None) -> RunConfig:
    """preset < YAML file < overrides; any unknown key is an error that names it."""
    values: dict = {}
    if preset is not None:
        values.update(with_preset({"preset": preset}))
    if path is not None:  # its own `preset:` fills the keys it does not set
        values.update(with_preset(inputs_relative_to(normalise_keys(load_yaml(Path(path))), Path(path).parent)))
    values.update({k: v for k, v in normalise_keys(overrides or {}).items() if v is not None})
    return RunConfig.from_dict(values)


def with_preset(values: dict) -> dict:
    """``values`` with its ``preset`` key (a settings file's, a sweep's) replaced by the preset's settings,
    which ``values`` override."""
    values = dict(values)
    preset = values.pop("preset", None)
    if preset is None:
        return values
    if not isinstance(preset, str) or preset not in PRESETS:
        raise JumploraError(f"unknown preset {str(preset)[:40]!r}: use one of {', '.join(PRESETS)}"
                            + did_you_mean(str(preset), list(PRESETS)))
    return {**PRESETS[preset], **values}


def inputs_relative_to(values: dict, folder: Path) -> dict:
    """A settings file's input paths (task_file, data_dir, added task files, a model folder) are
    relative to the file, as a task file's data paths are to the task file; the output folder, like
    a flag, to the working directory."""
    from jumplora.data.stream import is_task_list

    def near(value):
        if not isinstance(value, str) or not value or Path(value).expanduser().is_absolute():
            return value
        return str(folder / value)

    out = dict(values)
    for key in ("task_file", "data_dir"):
        out[key] = near(out.get(key)) if key in out else None
    if isinstance(out.get("add_tasks"), list):
        out["add_tasks"] = [near(entry) if isinstance(entry, str) and is_task_list(entry) else entry
                            for entry in out["add_tasks"]]
    model = out.get("model")
    if isinstance(model, str) and (folder / model).exists() and not Path(model).is_absolute():
        out["model"] = str(folder / model)
    return {k: v for k, v in out.items() if k in values}


def load_yaml(path: Path) -> dict:
    values = read_yaml(path, "config file")
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise JumploraError(f"config file {path} must hold a mapping of keys to values")
    return values
