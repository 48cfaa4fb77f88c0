"""The commands that use a model folder: ``predict``, ``evaluate``, ``teach``, ``export``, ``rollback``, ``apply``.

Their parsers and what each runs; ``jumplora.cli`` owns the rest of the command line (``run``,
``list``, ``sweep``, ``report``), the one-line errors and the exit codes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from jumplora.errors import JumploraError


def add_model_commands(sub) -> None:
    add_use_commands(sub)
    add_teach_command(sub)
    export = sub.add_parser("export", help="write a model whose base is a GGUF file as a GGUF file (llama.cpp, Ollama)",
                            description="The tensors no task changed are the source file's own bytes; the changed "
                                        "ones carry the merged weights in --gguf-type; the metadata gains jumplora.* "
                                        "keys (tasks, ledger, prompt).")
    export.add_argument("model", metavar="MODEL", help="a model folder written by jumplora from a .gguf base")
    export.add_argument("--gguf", required=True, type=Path, metavar="OUT.gguf", help="the file to write")
    from jumplora.export_gguf import GGUF_TYPES

    export.add_argument("--gguf-type", default=None, choices=GGUF_TYPES,
                        help="how the changed tensors are stored (default: f16: keeps the update within a few "
                             "percent; source requantises to the base's type, e.g. Q4_1, and loses most of it)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing OUT.gguf")
    rollback = sub.add_parser("rollback", help="write a model without one task's update (exact)")
    rollback.add_argument("run_dir", metavar="MODEL|RUN", help="a model folder, or OUTPUT/<method>/seed<k> of a "
                                                               "finished run (or OUTPUT when it holds one method and seed)")
    rollback.add_argument("--task", required=True, help="the task whose update to remove")
    rollback.add_argument("--output", required=True, help="new folder for the rolled-back model")
    apply = sub.add_parser("apply", help="add (or remove) a task update file on a model, keeping its ledger")
    apply.add_argument("--model", required=True, help="a model folder written by jumplora (with its manifest)")
    apply.add_argument("--update", required=True, help="a deltas/<t>-<task>.safetensors file")
    apply.add_argument("--output", required=True, help="new folder for the updated model")
    apply.add_argument("--subtract", action="store_true", help="remove the update instead of adding it")
    apply.add_argument("--force", action="store_true", help="add an update the model's ledger already holds")


def run_model_command(args) -> int:
    """Run one of this module's commands; returns its exit code."""
    if args.command == "predict":
        _predict(args)
    elif args.command == "evaluate":
        _evaluate(args)
    elif args.command == "teach":
        return _teach(args)
    elif args.command == "export":
        from jumplora.export_gguf import DEFAULT_GGUF_TYPE, export_gguf

        export_gguf(Path(args.model), args.gguf, args.gguf_type or DEFAULT_GGUF_TYPE, args.overwrite)
    else:
        from jumplora.surgery import apply_update, rollback

        if args.command == "rollback":
            print(rollback(Path(args.run_dir), args.task, Path(args.output)))
        else:
            print(apply_update(Path(args.model), Path(args.update), Path(args.output),
                               sign=-1 if args.subtract else 1, force=args.force))
    return 0


def add_use_commands(sub) -> None:
    """`predict` and `evaluate`: using a trained model folder."""
    predict = sub.add_parser("predict", help="the predicted label of each input, by a trained model",
                             description="The prompt lists the options of a task: the one named (--task), or, "
                                         "without it, the one a router picks from the text alone (printed with its "
                                         "confidence), or a new one (--instruction, --labels). Two ways to answer: "
                                         "the merged model (--merged, the paper's) or the weights as they were "
                                         "right after that task (--states); the default is the one the model's run "
                                         "measured more accurate.")
    predict.add_argument("model", metavar="MODEL", help="a model folder written by jumplora (OUTPUT/<method>/seed<k>/model)")
    predict.add_argument("texts", nargs="*", metavar="TEXT", help="inputs to label")
    predict.add_argument("--task", help="a task the model learned (see its jumplora-model.json)")
    predict.add_argument("--instruction", help="zero-shot: the instruction of a task the model never learned")
    predict.add_argument("--labels", type=lambda s: [t.strip() for t in s.split(",") if t.strip()],
                         help="zero-shot: its options, comma-separated")
    predict.add_argument("--input", type=Path, help="a JSONL, JSON, CSV or TSV file, one input per record")
    predict.add_argument("--text-column", help="the text field of --input (default: sentence, else text)")
    predict.add_argument("--output", type=Path, help="write {text, prediction} records (.jsonl, .csv or .tsv)")
    predict.add_argument("--batch-size", type=int, help="inputs per forward (default: the run's eval batch size)")
    predict.add_argument("--merged", action="store_true",
                         help="answer with the merged model (the paper's); without --task the router picks the prompt")
    predict.add_argument("--states", action="store_true",
                         help="answer with the state of the task (given, or picked by the router from the text); "
                              "default: whichever of the two the model's run measured more accurate (its manifest)")
    evaluate = sub.add_parser("evaluate", help="accuracy per task of a trained model on test splits",
                              description="By default the tasks the model learned, read again as its run read "
                                          "them; or pass the data (--task-file, --benchmark/--order, --tasks, "
                                          "with --data-dir).")
    evaluate.add_argument("model", metavar="MODEL", help="a model folder written by jumplora")
    for flag, what in (("--task-file", "a task file"), ("--benchmark", "demo, sc or ls"),
                            ("--order", "a benchmark order"), ("--data-dir", "a benchmark folder"),
                            ("--tasks", "task names of --data-dir, comma-separated (also: which tasks to report)")):
        evaluate.add_argument(flag, help=what)
    evaluate.add_argument("--max-test-per-task", type=int, help="at most this many test examples per task")
    evaluate.add_argument("--batch-size", type=int, help="prompts per forward (default: the run's eval batch size)")
    evaluate.add_argument("--output", type=Path, help="the JSON written (default: evaluation.json beside the model folder)")
    evaluate.add_argument("--force", action="store_true", help="evaluate although the run's data changed since it ran")
    evaluate.add_argument("--routed", action="store_true", help="also answer each input by the state of the task the "
                                                                "router picks from its prompt (routed accuracy)")


def add_teach_command(sub) -> None:
    teach = sub.add_parser(
        "teach", help="teach a model folder more tasks, with its own method and settings, and check what it forgot",
        description="Trains the new tasks on top of MODEL exactly as `run --resume RUN --add-task-file` would on the "
                    "run that made it, evaluates every earlier task again on the test examples the model kept, prints "
                    "each one's accuracy when learned, before and after, and writes the next version of the model "
                    "(in place of MODEL unless --output). With --max-forgetting P, a drop of more than P points keeps "
                    "MODEL as it is, writes the new version beside it as <dest>.candidate and exits with code 3.")
    teach.add_argument("model", metavar="MODEL", help="a model folder written by `jumplora run` or `jumplora teach`")
    teach.add_argument("--task-file", help="a task file of the new tasks (see README: task files)")
    teach.add_argument("--add-tasks", type=lambda s: [t for t in s.split(",") if t], metavar="NAMES",
                       help="new tasks by name from --data-dir, comma-separated")
    teach.add_argument("--data-dir", help="the benchmark folder of --add-tasks")
    teach.add_argument("--output", type=Path, help="a new folder for the new version, beside MODEL (default: in place "
                       "of MODEL)")
    teach.add_argument("--max-forgetting", type=float, metavar="P",
                       help="refuse the new version (exit 3, MODEL kept) when an earlier task drops by more than P "
                            "points; without it each drop over 5 points is a warning")
    teach.add_argument("--force", action="store_true", help="go on with a stopped teach although its data changed")


def _predict(args) -> None:
    from jumplora.files import check_outside
    from jumplora.inference import check_texts, predict, read_inputs, write_predictions

    if args.input and args.texts:
        raise JumploraError("pass the inputs as TEXT arguments or as --input FILE, not both")
    if args.merged and args.states:
        raise JumploraError("--merged and --states are two ways to answer: pass one of them")
    texts = read_inputs(args.input, args.text_column) if args.input else list(args.texts)
    if texts:
        check_texts(texts)
    if args.output:
        check_outside(args.output, Path(args.model))
    if args.batch_size is not None and args.batch_size < 1:
        raise JumploraError(f"--batch-size must be at least 1, got {args.batch_size}")
    if (args.instruction is not None or args.labels) and args.states:
        raise JumploraError("--instruction/--labels ask a task no state learned, which the merged model answers: "
                            "leave out --states")
    if args.instruction is not None or args.labels:  # zero-shot: a task no state learned
        task, labels = predict(Path(args.model), None, texts, args.task, args.instruction, args.labels, args.batch_size)
        rows = [{"text": text, "prediction": label} for text, label in zip(texts, labels)]
        lines = [f"{label}\t{_one_line(text)}" for text, label in zip(texts, labels)]
    else:
        from jumplora.answering import answer
        from jumplora.model_folder import ModelFolder, load_trained

        if not texts:
            raise JumploraError("no input given: pass TEXT arguments or --input FILE")
        way = "merged" if args.merged else "states" if args.states else "auto"
        found = answer((*load_trained(Path(args.model)), ModelFolder(Path(args.model))), texts, args.task, way,
                       args.batch_size)
        rows = [{"text": a.text, "prediction": a.answer, "task": a.task, "way": a.way, "confidence": a.confidence,
                 "learned": a.learned, "distance": a.distance} for a in found]
        lines = [f"{a.answer}\t{_one_line(a.text)}" if args.task else
                 f"{a.task if a.learned else f'no learned task (nearest: {a.task})'}\t{a.answer}\t"
                 f"{a.confidence:.2f}\t{_one_line(a.text)}" for a in found]
    if args.output:
        write_predictions(args.output, rows)
        print(f"{len(rows)} predictions -> {args.output}")
        return
    print("\n".join(lines))


def _one_line(text: str) -> str:
    """A text as printed in predict's one line per input (its line breaks and tabs escaped)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def _evaluate(args) -> None:
    import json

    from jumplora.files import check_outside, write_text
    from jumplora.inference import evaluate_model

    if args.output:  # checked before the evaluation, which can take long
        check_outside(args.output, Path(args.model))
        if args.output.is_dir():
            raise JumploraError(f"--output {args.output} is a folder: name the JSON file to write")
    given = {"task_file": args.task_file, "benchmark": args.benchmark, "order": args.order, "data_dir": args.data_dir}
    only = [t for t in (args.tasks or "").split(",") if t] or None
    stream = None  # the data of the run that wrote the model
    if any(v is not None for v in given.values()):
        stream = {**given, "tasks": only if args.data_dir and not (args.task_file or args.benchmark) else None}
    results = evaluate_model(Path(args.model), stream, only, args.batch_size, args.max_test_per_task, args.force,
                             args.routed)
    output = args.output or Path(args.model).resolve().parent / "evaluation.json"
    width = max(len(name) for name in results)
    routed = " routed %" if args.routed else ""
    print(f"{'task':<{width}}  accuracy %{routed}  examples")
    for name, row in results.items():
        extra = f"  {row['routed_accuracy']:8.2f}" if args.routed else ""
        print(f"{name:<{width}}  {row['accuracy']:10.2f}{extra}  {row['examples']:8d}")
    mean = sum(row["accuracy"] for row in results.values()) / len(results)
    extra = f"  {sum(r['routed_accuracy'] for r in results.values()) / len(results):8.2f}" if args.routed else ""
    print(f"{'mean':<{width}}  {mean:10.2f}{extra}")
    try:
        write_text(output, json.dumps({"model": args.model, "tasks": results, "mean": mean}, indent=1))
    except OSError as error:
        raise JumploraError(f"cannot write {output} ({error.strerror}): pass another --output") from None
    print(f"wrote {output}")


def _teach(args) -> int:
    from jumplora.teach import forgetting_table, teach

    if args.task_file and args.add_tasks:
        raise JumploraError("pass the new tasks as --task-file FILE or as --add-tasks NAMES (with --data-dir), not both")
    if args.add_tasks and not args.data_dir:
        raise JumploraError("--add-tasks names tasks of a benchmark folder: pass --data-dir DIR")
    new = {"task_file": args.task_file} if args.task_file else {"tasks": args.add_tasks, "data_dir": args.data_dir}
    outcome = teach(Path(args.model), new, args.output, args.max_forgetting, args.force)
    print("\n".join(["", "earlier tasks, test accuracy (%):", *forgetting_table(outcome, args.max_forgetting)]))
    if outcome.accepted:
        print(f"taught {', '.join(outcome.new_tasks)}: the new version is in {outcome.model}")
        return 0
    print(f"jumplora: an earlier task dropped by more than {args.max_forgetting:g} points: {args.model} is unchanged; "
          f"the new version is in {outcome.model} (a candidate)", file=sys.stderr)
    return 3
