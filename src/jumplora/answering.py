"""Two ways a model folder answers: the paper's single merged model, or per-task states with a router.

* ``merged``: the model's own weights, every learned update merged in (the paper's method);
* ``states``: the input is answered by the weights as they were right after the task it belongs
  to (jumplora.states); the task is the one asked (``--task``), or the one the router picks from
  the text alone (jumplora.routing). An input that is no learned task's gets the merged model's
  answer, asked with the nearest task's prompt, and is marked so.

Without ``--task`` the router also picks the prompt (the task's instruction and options) in both
ways. The default way is the one whose accuracy the model's run measured higher (its manifest's
``answering``). Inputs are grouped by state: one switch of weights per group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from safetensors.torch import load_file

from jumplora.data import Example
from jumplora.errors import JumploraError
from jumplora.model_folder import ModelFolder
from jumplora.routing import Router
from jumplora.states import TaskStates
from jumplora.surgery import held_updates

WAYS = ("auto", "merged", "states")


@dataclass
class Answer:
    text: str
    answer: str
    task: str  # the task asked, or the one the router chose (the nearest, when no learned task's)
    way: str  # "merged" or "states"
    confidence: float | None = None  # the router's p(task | text); None when the task was given
    learned: bool = True  # False: the input is no learned task's (the merged model answered)
    distance: float | None = None  # d² to the task over its threshold (below 1: as near as its own inputs)


def default_way(manifest) -> str:
    """states when the run measured the routed answers better than the merged model's, else merged."""
    measured = manifest.answering or {}
    routed, merged = measured.get("routed_oa"), measured.get("merged_oa")
    return "states" if routed is not None and merged is not None and routed > merged else "merged"


def task_states(folder: ModelFolder, manifest) -> tuple[TaskStates, list[str]] | None:
    """The states of the model's tasks (by name, in their order), or None when the folder cannot
    make them (no state 0, updates not kept, weights not the base plus its updates)."""
    if not manifest.exact or not folder.base_state.is_file():
        return None
    held = held_updates(manifest.ledger)
    files = [folder.update_file(entry.file) for entry in held]
    if not held or not all(path.is_file() for path in files):
        return None
    return TaskStates(load_file(str(folder.base_state)), files), [entry.task for entry in held]


def router_of(folder: ModelFolder, held: list[str], view: str = "text") -> Router | None:
    """The router of the tasks whose updates the weights hold (the file keeps every task learned:
    a task rolled back is left out here, and routed to again once its update is applied back)."""
    if not folder.router_file.is_file():
        return None
    router = Router.from_state(load_file(str(folder.router_file)), f"route/{view}/")
    return Router([t for t in router.tasks if t.name in held])


def answer(loaded, texts: list[str], task: str | None = None, way: str = "auto",
           batch_size: int | None = None) -> list[Answer]:
    """Each text's answer (module docstring). ``loaded``: (model, tokenizer, family, manifest, folder)."""
    model, _, family, manifest, folder = loaded
    if way not in WAYS:
        raise JumploraError(f"unknown way to answer {way!r}: use one of {', '.join(WAYS)}")
    way = default_way(manifest) if way == "auto" else way
    states = task_states(folder, manifest) if way == "states" else None
    if way == "states" and states is None:
        raise JumploraError(f"{folder.path} cannot answer by task states (no state 0 or update files in the folder, "
                            "or weights that are not the base plus its updates): pass --merged")
    size = batch_size or manifest.run.get("eval_batch_size", 64)
    if task is not None:
        manifest.task(task)  # a learned task, or a one-line error
        routes = [(task, None, True, None)] * len(texts)
    else:
        routes = _routes(folder, [e.task for e in held_updates(manifest.ledger)], texts)
    answers: list[Answer | None] = [None] * len(texts)
    for name in dict.fromkeys(r[0] for r in routes):  # one group, one switch of weights, per task
        members = [i for i, r in enumerate(routes) if r[0] == name]
        for learned in (True, False):
            group = [i for i in members if routes[i][2] is learned]
            if not group:
                continue
            by_state = way == "states" and learned
            asked = manifest.task(name).as_task(manifest.prompt_format)
            examples = [Example(texts[i], asked.labels[0]) for i in group]
            if by_state:
                tasks_in_order = states[1]
                with states[0].use(model, len(tasks_in_order) - 1 - tasks_in_order[::-1].index(name)):
                    found = family.predict(model, asked, examples, batch_size=size)
            else:
                found = family.predict(model, asked, examples, batch_size=size)
            for i, label in zip(group, found):
                answers[i] = Answer(texts[i], label, name, "states" if by_state else "merged", routes[i][1], learned,
                                    routes[i][3])
    return answers


def _routes(folder: ModelFolder, held: list[str], texts: list[str]) -> list[tuple[str, float, bool, float]]:
    """(task, confidence, a learned task's, d² over the task's threshold) per text, from the router
    on the text alone."""
    router = router_of(folder, held)
    if router is None or not router.tasks:
        raise JumploraError(f"{folder.path} has no router (a run with --no-route, a method without task states, or "
                            "jumplora before 2026-12-07): pass --task NAME")
    from jumplora.routed import encoder

    features = encoder()(texts)
    chosen, confidence = router.route(features)
    distances = router.distances(features)
    nearest = distances.argmin(1)
    ratios = distances[np.arange(len(texts)), nearest] / router.thresholds()[nearest]
    names = router.names
    return [(names[c if c >= 0 else n], float(p), bool(c >= 0), float(r))
            for c, n, p, r in zip(chosen, nearest, confidence, ratios)]


def routed_accuracy(loaded, task, batch_size: int) -> float:
    """Accuracy (%) on ``task``'s test examples, each asked with ``task``'s prompt and answered by the
    state of the task the router picks from that prompt (the merged model when none): the last row
    of a run's ``routed_accuracy_matrix``, measured again."""
    from jumplora.data import is_correct
    from jumplora.routed import encoder

    model, _, family, manifest, folder = loaded
    states = task_states(folder, manifest)
    router = router_of(folder, states[1] if states else [], "prompt")
    if states is None or router is None or not router.tasks:
        raise JumploraError(f"{folder.path} has no task states or router: evaluate it without --routed")
    chosen, _ = router.route(encoder()([task.prompt(e.sentence) for e in task.test]))
    answers: list[str | None] = [None] * len(task.test)
    for choice in sorted(set(chosen.tolist())):
        group = [j for j, c in enumerate(chosen) if c == choice]
        examples = [task.test[j] for j in group]
        if choice < 0:
            found = family.predict(model, task, examples, batch_size=batch_size)
        else:
            name = router.names[choice]
            with states[0].use(model, len(states[1]) - 1 - states[1][::-1].index(name)):
                found = family.predict(model, task, examples, batch_size=batch_size)
        for j, label in zip(group, found):
            answers[j] = label
    return 100 * sum(is_correct(a, e.label) for a, e in zip(answers, task.test)) / len(task.test)
