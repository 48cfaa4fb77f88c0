"""jumplora's second way to answer, measured in a run: each input answered by the state of the task
the router chose from the input alone (jumplora.routing, jumplora.states).

After task t is learned, the router takes its statistics (features of its training inputs, its dev
inputs for the threshold), for two views of an input: the whole prompt (instruction, options, text:
what the merged model also sees) and the text alone. Then every test input of the tasks seen so far
is routed among them, and answered, with the prompt of the task it comes from, by the state of the
task chosen from the prompt; an input that is no learned task's gets the merged model's answer.
That is row t of ``routed_accuracy_matrix``. Answers are cached by (state, task): a state's weights
never change, so an input routed where it was routed before is not asked again, and the answers of
state t on task t are the merged model's at row t.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from jumplora.data import is_correct
from jumplora.routing import FeatureEncoder, Router
from jumplora.states import TaskStates

VIEWS = ("prompt", "text")


@lru_cache(maxsize=2)
def encoder(name: str = "all-minilm-l6-v2") -> FeatureEncoder:
    """The router's feature encoder, loaded once per process."""
    return FeatureEncoder(name)


def view_texts(task, examples, view: str) -> list[str]:
    return [task.prompt(e.sentence) if view == "prompt" else e.sentence for e in examples]


@dataclass
class RoutedRow:
    """Row t of the routed evaluation."""

    accuracy: list[float]  # per task i ≤ t: answers by the state chosen from the prompt (%)
    routing: dict[str, list[float]]  # per view, per task i ≤ t: inputs routed to their own task (%)
    outside: list[float]  # per task i ≤ t: inputs that are no learned task's, from the prompt (%)
    confusion: list[list[int]]  # [true task][chosen task], from the prompt (no learned task left out)


class RoutedEvaluation:
    def __init__(self, ctx, states: TaskStates, routers: dict[str, Router] | None = None) -> None:
        self.ctx, self.states = ctx, states
        self.routers = routers or {view: Router() for view in VIEWS}
        self.features: dict[tuple[str, str], np.ndarray] = {}
        self.answers: dict[tuple[int, str], dict[int, str]] = {}

    def learn(self, task) -> None:
        """Add a task to both routers (its training inputs; its dev inputs for the threshold)."""
        for view, router in self.routers.items():
            held_out = encoder()(view_texts(task, task.dev, view)) if task.dev else None
            router.add(task.name, encoder()(view_texts(task, task.train, view)), held_out)

    def remember(self, t: int, task, answers: list[str]) -> None:
        """The merged model's answers to task ``task`` at row t: state t's when ``task`` is task t."""
        self.answers.setdefault((t, task.name), {}).update(enumerate(answers))

    def row(self, tasks, t: int, merged: dict[str, list[str]]) -> RoutedRow:
        """Row t (``merged``: the merged model's answers of row t per task)."""
        names = self.routers["prompt"].names
        routing = {view: [] for view in VIEWS}
        accuracy, outside, confusion = [], [], []
        for i, task in enumerate(tasks[: t + 1]):
            if not task.test:
                accuracy.append(float("nan"))
                outside.append(float("nan"))
                confusion.append([0] * (t + 1))
                for view in VIEWS:
                    routing[view].append(float("nan"))
                continue
            chosen = {}
            for view, router in self.routers.items():
                chosen[view], _ = router.route(self._features(task, view))
                routing[view].append(100 * float(np.mean([_index(names, c) == i for c in chosen[view]])))
            answers = self._answers(task, chosen["prompt"], names, merged[task.name])
            accuracy.append(100 * float(np.mean([is_correct(a, e.label) for a, e in zip(answers, task.test)])))
            outside.append(100 * float(np.mean(chosen["prompt"] == -1)))
            confusion.append([int(np.sum(chosen["prompt"] == names.index(n))) if n in names else 0
                              for n in (x.name for x in tasks[: t + 1])])
        return RoutedRow(accuracy, routing, outside, confusion)

    def _features(self, task, view: str) -> np.ndarray:
        key = (task.name, view)
        if key not in self.features:
            self.features[key] = encoder()(view_texts(task, task.test, view))
        return self.features[key]

    def _answers(self, task, chosen: np.ndarray, names: list[str], merged: list[str]) -> list[str]:
        """Each input's answer by its chosen state (the merged model's when it is no task's); the
        states are switched once each, for the inputs not answered by them before."""
        states = {s for s in (_index(names, c) for c in chosen) if s is not None}
        for state in sorted(states):
            cache = self.answers.setdefault((state, task.name), {})
            missing = [j for j, c in enumerate(chosen) if _index(names, c) == state and j not in cache]
            if missing:
                with self.states.use(self.ctx.model, state):
                    found = self.ctx.family.predict(self.ctx.model, task, [task.test[j] for j in missing],
                                                    batch_size=self.ctx.config.eval_batch_size)
                cache.update(zip(missing, found))
        return [merged[j] if _index(names, c) is None else self.answers[(_index(names, c), task.name)][j]
                for j, c in enumerate(chosen)]


def _index(names: list[str], chosen: int) -> int | None:
    """The state (task index in the stream) of a router's choice; None for no learned task."""
    return None if chosen < 0 else chosen
