"""The command line: ``jumplora run`` and ``jumplora list``.

A :class:`JumploraError` (a problem the user can fix) is printed as one line and exits with code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from jumplora.errors import JumploraError


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _lambdas(text: str) -> float | list[float]:
    values = [float(v) for v in text.split(",")]
    return values[0] if len(values) == 1 else values


def build_parser() -> argparse.ArgumentParser:
    from jumplora.config import RunConfig

    parser = argparse.ArgumentParser(prog="jumplora", description="Continual learning with sparse JumpLoRA adapters.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train a model on a stream of tasks and report forgetting",
                         description="With no flags: the bundled all-MiniLM-L6-v2 on the 3-task demo stream, "
                                     "inclora vs jumplora+inclora.")
    run.add_argument("--config", help="YAML file of run settings (unknown keys are an error)")
    run.add_argument("--preset", help="named settings, see `jumplora list`")
    run.add_argument("--resume", metavar="OUTPUT", help="continue the run in OUTPUT at its first unfinished task")
    run.add_argument("--force", action="store_true", help="with --resume: accept settings that differ from the run's")
    special = {
        "methods": dict(flag="--method", action="append", help="method (repeatable), see `jumplora list`"),
        "seeds": dict(flag="--seed", action="append", type=int, help="random seed (repeatable)"),
        "tasks": dict(type=lambda s: [t for t in s.split(",") if t], help="comma-separated task names"),
        "targets": dict(type=lambda s: [t for t in s.split(",") if t], help="comma-separated module names"),
        "log_with": dict(type=lambda s: [t for t in s.split(",") if t],
                         help="trackers to log to, comma-separated: tensorboard, wandb (default: none)"),
        "compile": dict(nargs="?", const="inductor", metavar="BACKEND",
                        help="torch.compile the model for training (default backend: inductor; `off` to "
                             "resume a compiled run without); for GPUs, where a step is bound by Python "
                             "and kernel launches"),
        "ella_lambda": dict(type=_lambdas, help="ELLA λ: one value, or one per task comma-separated"),
        "ella_lambda_grid": dict(type=lambda s: [float(v) for v in s.split(",")],
                                 help="λ candidates of --ella-lambda-search, comma-separated"),
    }
    for field in dataclasses.fields(RunConfig):
        options = dict(special.get(field.name, {}))
        flag = options.pop("flag", "--" + field.name.replace("_", "-"))
        if "type" not in options and "action" not in options:
            kind = {"int": int, "float": float, "bool": _bool}.get(str(field.type).split(" ")[0], str)
            options["type"] = kind
        options.setdefault("help", _field_help(field))
        run.add_argument(flag, dest=field.name, default=None, **options)
    sub.add_parser("list", help="benchmarks, orders, methods and presets")
    sweep = sub.add_parser("sweep", help="methods × orders × seeds from one YAML, skipping finished runs, then the report")
    sweep.add_argument("--config", required=True, help="a run config whose `order` may be a list of orders")
    sweep.add_argument("--force", action="store_true", help="continue runs whose saved settings differ")
    report = sub.add_parser("report", help="tables and figures from the results.json files of one or more runs")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    report.add_argument("--output", default="report", help="folder for report.md, report.html and the PNGs")
    rollback = sub.add_parser("rollback", help="write the final model of a run without one task's update")
    rollback.add_argument("run_dir", metavar="RUN", help="OUTPUT/<method>/seed<k> of a finished run")
    rollback.add_argument("--task", required=True, help="the task whose update to remove")
    rollback.add_argument("--output", required=True, help="new folder for the rolled-back model")
    apply = sub.add_parser("apply", help="add a task update file to a model")
    apply.add_argument("--model", required=True, help="model folder (save_pretrained layout)")
    apply.add_argument("--update", required=True, help="a deltas/<t>-<task>.safetensors file")
    apply.add_argument("--output", required=True, help="new folder for the updated model")
    apply.add_argument("--subtract", action="store_true", help="remove the update instead of adding it")
    return parser


def _field_help(field) -> str:
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    return f"default: {default}"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list":
            print(list_text())
        elif args.command == "run":
            _run(args)
        elif args.command == "sweep":
            from jumplora.runner import sweep

            print(f"report: {sweep(Path(args.config), force=args.force)}")
        elif args.command == "report":
            from jumplora.report import build_report

            print(f"report: {build_report([Path(d) for d in args.run_dirs], Path(args.output))}")
        else:
            from jumplora.surgery import apply_update, rollback

            if args.command == "rollback":
                rollback(Path(args.run_dir), args.task, Path(args.output))
            else:
                apply_update(Path(args.model), Path(args.update), Path(args.output), sign=-1.0 if args.subtract else 1.0)
        return 0
    except JumploraError as error:
        print(f"jumplora: error: {error}", file=sys.stderr)
        return 2


def _run(args) -> None:
    from jumplora.config import load_config
    from jumplora.runner import resumable_config, run

    overrides = {k: v for k, v in vars(args).items()
                 if k not in ("command", "config", "preset", "resume", "force") and v is not None}
    if args.resume:
        run(resumable_config(Path(args.resume), overrides, args.force), resume=True)
        return
    preset = args.preset or (None if args.config or _has_data_flags(overrides) else "demo")
    run(load_config(args.config, preset, overrides))


def _has_data_flags(overrides: dict) -> bool:
    return any(overrides.get(k) is not None for k in ("benchmark", "tasks", "task_file", "data_dir"))


def list_text() -> str:
    from jumplora.config import PRESETS
    from jumplora.strategies.methods import METHODS

    lines = ["benchmarks:", "  demo   3 real-text tasks from PyPI packages (BBC News, tweet sentiment, movie reviews)",
             "  sc     Standard CL benchmark, 4-task orders 1-3 (needs --data-dir)",
             "  ls     Long Sequence benchmark, 15-task orders 4-6 (needs --data-dir)",
             "orders:", "  1 dbpedia,amazon,yahoo,agnews   2 dbpedia,amazon,agnews,yahoo   3 yahoo,amazon,agnews,dbpedia",
             "  4-6: the 15-task LS orders in tasks.json", "methods:"]
    lines += [f"  {name:<18} {text}" for name, text in METHODS.items()]
    lines.append("presets:")
    lines += [f"  {name:<10} {values or '(the paper settings: the defaults)'}" for name, values in PRESETS.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
