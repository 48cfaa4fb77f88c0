"""Encoder-decoder models (T5, BART): the prompt goes to the encoder, the label is decoded."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from jumplora.data.tasks import Example, Task
from jumplora.families.base import Family, match_label, pad, padded_inputs, to_device


class Seq2SeqFamily(Family):
    """Text-to-text training and greedy decoding (the O-LoRA / JumpLoRA T5 setting).

    Loss: token cross-entropy of the label string (and the tokenizer's end token) given the prompt,

        L = -1/N Σ_i Σ_t log p(y_{i,t} | y_{i,<t}, x_i),   N = number of label tokens in the batch,

    with the padding of the labels set to -100 so it does not count. Prediction: greedy decoding of
    at most as many tokens as the longest target (label + end token), mapped to a label by :func:`match_label`.
    """

    name = "seq2seq"
    scoring = "generate"

    def label_ids(self, labels: Sequence[str]) -> list[list[int]]:
        """Token ids of each label as a decoder target, with the tokenizer's end token."""
        return self.tokenizer(text_target=list(labels))["input_ids"]

    def collate(self, task: Task, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """``input_ids``/``attention_mask`` of the prompts (right-padded) and ``labels`` (pad = -100)."""
        inputs = padded_inputs(self.prompt_ids(task, examples), self.tokenizer.pad_token_id)
        labels = pad(self.label_ids([example.label for example in examples]), -100)
        return {**inputs, "labels": labels}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's own label loss (it builds the decoder inputs by shifting ``labels`` right)."""
        return model(**to_device(batch, model)).loss

    def prepare(self, model: nn.Module, task: Task) -> int:
        """The decoding budget: the longest label's token count + 1 (its end token; the target
        ids already hold it)."""
        return max(len(ids) for ids in self.label_ids(task.labels))

    def predict_batch(
        self, model: nn.Module, task: Task, prompt_ids: list[list[int]], max_new_tokens: int
    ) -> list[str]:
        inputs = to_device(padded_inputs(prompt_ids, self.tokenizer.pad_token_id), model)
        output = model.generate(
            **inputs,
            do_sample=False,
            num_beams=1,
            max_new_tokens=max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        texts = self.tokenizer.batch_decode(output, skip_special_tokens=True)
        return [match_label(text, task.labels) for text in texts]
