"""What every model family shares: the interface, batched prediction, padding.

Inference is task-agnostic: no task id reaches the model, the options are spelled out in the
prompt (:func:`jumplora.data.tasks.build_prompt`). A family turns a task's examples into a training
batch, a batch into a scalar loss, and examples into predicted label strings.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from jumplora.data.tasks import Example, Task, normalize_answer
from jumplora.errors import JumploraError


class Family(abc.ABC):
    """One model family (``seq2seq``, ``causal`` or ``encoder``): batches, loss and prediction.

    Subclasses implement :meth:`collate`, :meth:`loss`, :meth:`predict_batch` and :attr:`scoring`
    (a family that lacks one cannot be built: it fails when the model loads, not after training);
    they may override :meth:`prompt_ids` (how a prompt is tokenised and truncated), :meth:`prepare`
    (per-task state computed once per :meth:`predict` call) and :meth:`rows_per_example`.

    :attr:`SETTINGS` declares the family's options once: each run setting it takes (by its flat
    key, a field of ``FamilyOptions``) and the constructor keyword (and attribute) it sets. A run
    builds the family from its settings and a model's manifest records them by the same keys
    (:meth:`from_settings`, :meth:`settings`).
    """

    name: ClassVar[str]
    SETTINGS: ClassVar[dict[str, str]] = {"max_source_length": "max_source_length"}

    @classmethod
    def from_settings(cls, tokenizer: Any, settings: Mapping[str, Any]) -> Family:
        """The family built from run settings (flat keys; those of other families are ignored)."""
        return cls(tokenizer, **cls.keywords(settings))

    @classmethod
    def keywords(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The constructor keywords of the settings this family takes."""
        return {keyword: settings[key] for key, keyword in cls.SETTINGS.items() if key in settings}

    def settings(self) -> dict[str, Any]:
        """The run settings this family object was built with (what a manifest records)."""
        return {key: getattr(self, keyword) for key, keyword in self.SETTINGS.items()}

    @property
    @abc.abstractmethod
    def scoring(self) -> str:
        """How an answer is chosen: generate, rank or option-embedding (recorded in the manifest)."""

    def __init__(self, tokenizer: Any, max_source_length: int = 512):
        if max_source_length < 1:
            raise JumploraError(f"max_source_length is {max_source_length}: pass a positive token count")
        # The tokenizer cannot cut a prompt below its own special tokens (it would return it whole).
        floor = len(tokenizer("")["input_ids"]) + 1
        if max_source_length < floor:
            raise JumploraError(f"max_source_length {max_source_length} is too short for this tokenizer: its special "
                                f"tokens and one token of text need {floor}; raise --max-source-length")
        self.tokenizer = tokenizer
        self.max_source_length = max_source_length

    def prompt_ids(self, task: Task, examples: Sequence[Example]) -> list[list[int]]:
        """Token ids of each example's prompt with the tokenizer's special tokens, cut at the right
        to ``max_source_length`` tokens."""
        prompts = [task.prompt(example.sentence) for example in examples]
        return self.tokenizer(prompts, truncation=True, max_length=self.max_source_length)["input_ids"]

    @abc.abstractmethod
    def collate(self, task: Task, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """A training batch of CPU tensors for ``examples`` of ``task``."""

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The scalar mean loss of ``model`` on a batch made by :meth:`collate`."""

    def prepare(self, model: nn.Module, task: Task) -> Any:
        """State that :meth:`predict_batch` needs for every batch of ``task``, computed once."""
        return None

    def rows_per_example(self, task: Task) -> int:
        """Model input rows one example takes in :meth:`predict_batch`."""
        return 1

    @abc.abstractmethod
    def predict_batch(self, model: nn.Module, task: Task, prompt_ids: list[list[int]], state: Any) -> list[str]:
        """Predicted label strings for a batch of tokenised prompts (called in inference mode)."""

    def predict(self, model: nn.Module, task: Task, examples: Sequence[Example], batch_size: int = 64,
                progress: bool = False) -> list[str]:
        """The predicted label string of each example, in the order of ``examples``.

        Examples are batched in order of prompt length, so a batch holds little padding; a
        forward holds about ``batch_size`` rows, halved whenever one runs out of device memory,
        so a large ``batch_size`` is safe: the largest batch that fits is used. The model runs in
        eval mode under ``torch.inference_mode()`` and gets its previous train/eval mode back.
        ``progress`` shows a progress bar over the examples.
        """
        if batch_size < 1:
            raise JumploraError(f"batch_size is {batch_size}: pass a positive number of examples")
        ids = self.prompt_ids(task, examples)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        step = max(1, batch_size // self.rows_per_example(task))
        predictions = [""] * len(ids)
        bar = tqdm(total=len(ids), desc=f"predict {task.name}", unit="example", disable=not progress, leave=False)
        with evaluating(model), torch.inference_mode(), bar:
            state = self.prepare(model, task) if ids else None
            start = 0
            while start < len(order):
                chunk = order[start : start + step]
                try:
                    batch_predictions = self.predict_batch(model, task, [ids[i] for i in chunk], state)
                except torch.OutOfMemoryError:
                    # The largest batch that fits: halve it and go on from the same example.
                    if step == 1:
                        raise JumploraError(
                            "a single example does not fit in device memory for prediction: lower "
                            "--max-source-length or use a larger device"
                        ) from None
                    step = max(1, step // 2)
                    torch.cuda.empty_cache()
                    continue
                for i, prediction in zip(chunk, batch_predictions):
                    predictions[i] = prediction
                start += len(chunk)
                bar.update(len(chunk))
        return predictions


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode (no dropout) for the block, then restore its train/eval mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's (first) parameters, where its inputs must go."""
    return next(model.parameters()).device


def to_device(batch: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``batch`` with every tensor moved to the model's device."""
    device = model_device(model)
    return {key: value.to(device) for key, value in batch.items()}


def pad(rows: Sequence[Sequence[int]], value: int, left: bool = False) -> torch.Tensor:
    """A ``[len(rows), longest]`` long tensor: each row filled with ``value`` on the right (or left)."""
    width = max(len(row) for row in rows)
    fills = [[value] * (width - len(row)) for row in rows]
    filled = [fill + list(row) if left else list(row) + fill for row, fill in zip(rows, fills)]
    return torch.tensor(filled, dtype=torch.long)


def padded_inputs(rows: Sequence[Sequence[int]], pad_id: int, left: bool = False) -> dict[str, torch.Tensor]:
    """``input_ids`` padded with ``pad_id`` and the ``attention_mask`` that marks the real tokens."""
    return {"input_ids": pad(rows, pad_id, left), "attention_mask": pad([[1] * len(row) for row in rows], 0, left)}


def match_label(text: str, labels: Sequence[str]) -> str:
    """The label equal to ``text`` after :func:`normalize_answer`, else ``text`` stripped.

    Generated text is scored by exact match, so an answer that differs from a label only in case or
    spacing is reported as that label.
    """
    by_normal_form = {normalize_answer(label): label for label in labels}
    return by_normal_form.get(normalize_answer(text), text.strip())
