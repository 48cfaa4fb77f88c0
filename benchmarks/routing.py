"""What answering by task states costs against the merged model: a switch of state, predict throughput, disk.

    python benchmarks/routing.py --model runs/latest/jumplora+inclora/seed0/model --json routing.json
    python benchmarks/routing.py --model MODEL_FOLDER --inputs 64 --threads 2

``--model``: a model folder written by a run with task states and a router (repeatable). For each:

* ``switch``: one switch of state (TaskStates.use: the adapted layers set to a state, then back), ms;
* ``predict merged``: the merged model answering ``--inputs`` test inputs of its tasks with the
  task given (the baseline), inputs/s;
* ``predict states, task given``: each input answered by its task's state (one switch per task);
* ``predict routed``: no task given: the router picks it from the text (features of a sentence
  encoder), then its state answers (jumplora.answering), inputs/s; ``ratio_vs_merged`` = its time
  over the merged row's;
* ``disk``: MB per task of what the states need (state 0 once, the updates) and of the router.
"""

from __future__ import annotations

import time
from pathlib import Path

import common
from jumplora.answering import answer, task_states
from jumplora.inference import kept_tasks
from jumplora.model_folder import ModelFolder, load_trained


def inputs_of(folder: ModelFolder, manifest, count: int) -> list[tuple[str, str]]:
    """(task, text) pairs, round-robin over the tasks' kept test examples."""
    tasks = kept_tasks(folder, manifest) or []
    pairs, index = [], 0
    while len(pairs) < count and tasks:
        for task in tasks:
            if index < len(task.test):
                pairs.append((task.name, task.test[index].sentence))
        index += 1
        if index > max(len(t.test) for t in tasks):
            break
    return pairs[:count]


def seconds(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], dtype=False)
    p.add_argument("--model", action="append", required=True, help="a model folder with task states and a router")
    p.add_argument("--inputs", type=int, default=64, help="test inputs answered per row")
    args = p.parse_args()
    device = common.check_device(args)
    rows = [common.metadata(device, "fp32", inputs=args.inputs)]
    for path in args.model:
        folder = ModelFolder(Path(path))
        loaded = (*load_trained(folder.path, device), folder)
        model, _, _, manifest, _ = loaded
        states, names = task_states(folder, manifest)
        pairs = inputs_of(folder, manifest, args.inputs)
        label = f"{manifest.base_model} ({len(names)} tasks)"

        def by_task(way: str) -> None:
            for name in dict.fromkeys(task for task, _ in pairs):
                answer(loaded, [text for task, text in pairs if task == name], name, way)

        def switch() -> None:
            with states.use(model, 0):
                pass

        switch()  # builds state 0 once (cached as TaskStates would in a long-running service)
        switch_ms = 1000 * common.median([seconds(switch) for _ in range(5)])
        answer(loaded, [pairs[0][1]], None, "states")  # loads the router's encoder
        merged = seconds(lambda: by_task("merged"))
        given = seconds(lambda: by_task("states"))
        routed = seconds(lambda: answer(loaded, [text for _, text in pairs], None, "states"))
        sizes = manifest.sizes or {}
        per_task = (sizes.get("updates_mb", 0) + sizes.get("states_mb", 0)) / max(len(names), 1)
        for name, took, ms in (("predict merged, task given", merged, None), ("predict states, task given", given, None),
                               ("predict routed (no task given)", routed, None), ("switch of state", None, switch_ms)):
            row = {"name": f"{label}: {name}", "gamma": None, "peak_mib": None}
            if took is not None:
                row.update(ms=round(1000 * took, 1), inputs_per_s=round(len(pairs) / took, 2),
                           ratio_vs_merged=round(took / merged, 3))
            else:
                row.update(ms=round(ms, 2))
            rows.append(row)
            print(f"  {row}", flush=True)
        rows.append({"name": f"{label}: disk", "gamma": None, "ms": None, "peak_mib": None,
                     "mb_per_task": round(per_task, 2),
                     "weights_mb": sizes.get("weights_mb"), "states_mb": sizes.get("states_mb"),
                     "updates_mb": sizes.get("updates_mb")})
    common.report(rows, ["name", "ms", "inputs_per_s", "ratio_vs_merged", "mb_per_task", "weights_mb", "states_mb",
                         "updates_mb"], args.json)


if __name__ == "__main__":
    main()
