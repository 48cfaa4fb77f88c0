"""The continual model from Python: the same code as `jumplora predict | evaluate | teach | rollback`.

    from jumplora import ContinualModel

    model = ContinualModel.load("runs/latest/jumplora+inclora/seed0/model")
    model.tasks                                      # ['bbc_news', 'tweet_sentiment', 'movie_reviews']
    model.predict(["Dull, and far too long."], task="movie_reviews")       # ['Bad']
    model.answer(["Dull, and far too long."])        # the router picks the task: [Answer(task=..., confidence=...)]
    model.evaluate()                                 # {'bbc_news': {'accuracy': 87.0, 'examples': 100}, ...}
    outcome = model.teach(task_file="new.yaml", max_forgetting=5)         # a new version, or a candidate
    model = ContinualModel.load(outcome.model)
    model.rollback("tweet_sentiment", "runs/no-tweets")

A :class:`ContinualModel` holds the loaded weights for :meth:`predict`; the other methods work on
its folder, as the commands do, and return what the commands print.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from jumplora.answering import Answer, answer
from jumplora.data import Example
from jumplora.errors import JumploraError
from jumplora.inference import check_texts, evaluate_model, task_to_ask
from jumplora.manifest import LearnedTask, ModelManifest
from jumplora.model_folder import ModelFolder, load_trained


class ContinualModel:
    """A model folder written by jumplora, loaded."""

    def __init__(self, path: Path, model, tokenizer, family, manifest: ModelManifest, device: str = "cpu") -> None:
        self.path, self.model, self.tokenizer, self.family, self.manifest = path, model, tokenizer, family, manifest
        self.device = device

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> ContinualModel:
        """The model folder at ``path``, checked (weights, manifest, files against their SHA-256s)."""
        return cls(_path(path, "path"), *load_trained(_path(path, "path"), _device(device)), device=device)

    @property
    def tasks(self) -> list[str]:
        """The tasks the model learned, in order."""
        return [task.name for task in self.manifest.tasks]

    @property
    def learned(self) -> list[LearnedTask]:
        """Each learned task: name, instruction, labels, accuracy when learned and after the last task."""
        return list(self.manifest.tasks)

    def predict(self, texts: list[str], task: str | None = None, instruction: str | None = None,
                labels: list[str] | None = None, way: str = "auto", batch_size: int | None = None) -> list[str]:
        """The answer to each text for a learned ``task`` (without one, the task a router picks from
        the text), or, zero-shot, for a new one (``instruction`` and ``labels``); the prompt lists the
        task's options. ``way``: "merged", "states" or "auto" (jumplora.answering)."""
        return [a.answer for a in self.answer(texts, task, instruction, labels, way, batch_size)]

    def answer(self, texts: list[str], task: str | None = None, instruction: str | None = None,
               labels: list[str] | None = None, way: str = "auto", batch_size: int | None = None) -> list[Answer]:
        """As :meth:`predict`, with each answer's task, way, router confidence and whether the input is a
        learned task's."""
        texts = check_texts(texts)
        if not texts:
            return []
        if labels is not None and (isinstance(labels, str) or not all(isinstance(x, str) for x in labels)):
            raise JumploraError("labels must be a list of strings, e.g. ['yes', 'no']")
        size = _batch_size(batch_size) or self.manifest.run.get("eval_batch_size", 64)
        if instruction is not None or labels:
            asked = task_to_ask(self.manifest, task, instruction, labels)
            found = self.family.predict(self.model, asked, [Example(t, asked.labels[0]) for t in texts], batch_size=size)
            return [Answer(text, label, asked.name, "merged") for text, label in zip(texts, found)]
        loaded = (self.model, self.tokenizer, self.family, self.manifest, ModelFolder(self.path))
        return answer(loaded, texts, task, way, size)

    def evaluate(self, tasks: list[str] | None = None, batch_size: int | None = None, **data) -> dict:
        """Accuracy (%) per task: on the test examples the folder kept, or on ``data`` (the keys of
        `jumplora evaluate`: task_file, benchmark, order, data_dir)."""
        unknown = sorted(set(data) - {"task_file", "benchmark", "order", "data_dir"})
        if unknown:
            raise JumploraError(f"evaluate takes no {', '.join(unknown)}: the data keys are task_file, benchmark, "
                                "order and data_dir")
        if tasks is not None and (isinstance(tasks, str) or not all(isinstance(t, str) for t in tasks)):
            raise JumploraError("tasks must be a list of task names, e.g. ['bbc_news']")
        return evaluate_model(self.path, data or None, tasks, _batch_size(batch_size))

    def teach(self, task_file: str | Path | None = None, add_tasks: list[str] | None = None,
              data_dir: str | Path | None = None, max_forgetting: float | None = None,
              output: str | Path | None = None, log=print):
        """Teach the model more tasks (jumplora.teach): returns a ``TeachOutcome`` (``accepted``,
        ``model``: where the new version is, ``forgetting``: the check per earlier task). Load the
        new version with ``ContinualModel.load(outcome.model)``."""
        from jumplora.teach import teach

        new = {"task_file": str(task_file)} if task_file else {"tasks": add_tasks,
                                                               "data_dir": str(data_dir) if data_dir else None}
        outcome = teach(self.path, new, _path(output, "output") if output else None, max_forgetting, log=log)
        if outcome.accepted and outcome.model.resolve() == self.path.resolve():  # taught in place: this is it now
            self.__init__(self.path, *load_trained(self.path, _device(self.device)), device=self.device)
        return outcome

    def rollback(self, task: str, output: str | Path) -> ContinualModel:
        """The model without ``task``'s update (exact: state 0 plus the other updates), saved to
        ``output`` and loaded."""
        from jumplora.surgery import rollback

        rollback(self.path, task, _path(output, "output"))
        return ContinualModel.load(output, self.device)

    def save(self, path: str | Path) -> ContinualModel:
        """A copy of the model folder at ``path`` (a new folder), loaded."""
        from jumplora.files import check_new_output, check_outside

        check_new_output(_path(path, "path"))
        check_outside(Path(path), self.path, "path")
        shutil.copytree(self.path, path, dirs_exist_ok=True)
        return ContinualModel.load(path, self.device)


def _path(value, name: str) -> Path:
    if not isinstance(value, (str, Path)) or not str(value):
        raise JumploraError(f"{name} must be a path (str or pathlib.Path), got {value!r:.80}")
    return Path(value)


def _device(device) -> str:
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise JumploraError(f"device {device!r:.80} is not a torch device: pass 'cpu', 'cuda' or 'cuda:N'") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise JumploraError(f"device {device!r} asked, but this torch sees no CUDA GPU: pass 'cpu'")
    return device


def _batch_size(size):
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise JumploraError(f"batch_size must be a whole number of at least 1, got {size!r:.80}")
    return size
