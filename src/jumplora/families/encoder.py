"""Encoder-only models (BERT, MiniLM): the prompt is matched against each option's embedding."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from jumplora.data.tasks import Example, Task
from jumplora.errors import JumploraError
from jumplora.families.base import Family, padded_inputs, to_device


class EncoderFamily(Family):
    """Option matching by embedding similarity, with no new classification head.

    A text's embedding is the mean of its last hidden states over the non-padding tokens, L2-
    normalised (the sentence-transformers pooling of all-MiniLM-L6-v2):

        e(x) = m / ||m||,   m = Σ_t a_t h_t / Σ_t a_t   (a = attention mask).

    The score of option j for prompt x is s_j = cos(e(x), e(o_j)) / τ with o_j the label string and
    τ the ``temperature`` (0.05 by default); the loss is the cross-entropy of the softmax over the
    task's options, L = -log softmax(s)_{gold}, and the prediction is argmax_j s_j. In training the
    options are embedded with gradient in every batch (they are few); in :meth:`predict` once.
    """

    name = "encoder"
    SETTINGS = {**Family.SETTINGS, "encoder_temperature": "temperature"}
    scoring = "option-embedding"

    def __init__(self, tokenizer, max_source_length: int = 512, temperature: float = 0.05):
        # Position embeddings are learned up to the tokenizer's limit: longer inputs would not fit.
        super().__init__(tokenizer, min(max_source_length, tokenizer.model_max_length))
        if temperature <= 0:
            raise JumploraError(f"temperature is {temperature}: pass a positive number (e.g. 0.05)")
        self.temperature = temperature

    def option_inputs(self, task: Task) -> dict[str, torch.Tensor]:
        """``input_ids``/``attention_mask`` of the task's option texts (its label strings)."""
        ids = self.tokenizer(list(task.labels), truncation=True, max_length=self.max_source_length)["input_ids"]
        return padded_inputs(ids, self.tokenizer.pad_token_id)

    def collate(self, task: Task, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """The prompts, the task's options (``option_*``) and each example's option index (``targets``)."""
        unknown = sorted({example.label for example in examples} - set(task.labels))
        if unknown:
            raise JumploraError(
                f"labels {unknown} are not options of task {task.name} {list(task.labels)}: fix the examples"
            )
        options = self.option_inputs(task)
        return {
            **padded_inputs(self.prompt_ids(task, examples), self.tokenizer.pad_token_id),
            "option_input_ids": options["input_ids"],
            "option_attention_mask": options["attention_mask"],
            "targets": torch.tensor([task.labels.index(example.label) for example in examples]),
        }

    def embed(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[batch, hidden]`` L2-normalised mean of the last hidden states over the real tokens."""
        # Pooled and normalised in fp32 even from a bf16 model: cos/τ with τ = 0.05 magnifies rounding.
        hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return F.normalize(mean, dim=-1)

    def scores(self, model: nn.Module, inputs: dict[str, torch.Tensor], options: torch.Tensor) -> torch.Tensor:
        """``[batch, options]`` cosine similarity / temperature (``options`` already embedded)."""
        return self.embed(model, inputs["input_ids"], inputs["attention_mask"]) @ options.T / self.temperature

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = to_device(batch, model)
        # Prompts and options go through the encoder as one batch: one forward per step, which is
        # what data-parallel training (DDP) requires, and one set of kernel launches instead of two.
        n = batch["input_ids"].shape[0]
        ids = _stack(batch["input_ids"], batch["option_input_ids"], self.tokenizer.pad_token_id)
        mask = _stack(batch["attention_mask"], batch["option_attention_mask"], 0)
        embedded = self.embed(model, ids, mask)
        scores = embedded[:n] @ embedded[n:].T / self.temperature
        return F.cross_entropy(scores, batch["targets"])

    def prepare(self, model: nn.Module, task: Task) -> torch.Tensor:
        """The options' embeddings, shared by every batch of the task."""
        options = to_device(self.option_inputs(task), model)
        return self.embed(model, options["input_ids"], options["attention_mask"])

    def predict_batch(
        self, model: nn.Module, task: Task, prompt_ids: list[list[int]], options: torch.Tensor
    ) -> list[str]:
        inputs = to_device(padded_inputs(prompt_ids, self.tokenizer.pad_token_id), model)
        return [task.labels[j] for j in self.scores(model, inputs, options).argmax(-1).tolist()]


def _stack(first: torch.Tensor, second: torch.Tensor, pad_value: int) -> torch.Tensor:
    """Rows of two right-padded ``[rows, length]`` tensors in one, padded to the longer length."""
    width = max(first.shape[1], second.shape[1])
    return torch.cat([F.pad(t, (0, width - t.shape[1]), value=pad_value) for t in (first, second)])
