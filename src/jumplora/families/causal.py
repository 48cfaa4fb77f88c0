"""Decoder-only models (Llama, Qwen, GPT-2): the label continues the prompt."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from jumplora.data.tasks import Example, Task
from jumplora.errors import JumploraError
from jumplora.families.base import Family, match_label, pad, padded_inputs, to_device

MODES = ("generate", "rank")


class CausalFamily(Family):
    """Prompt-continuation training; prediction by greedy generation or by ranking the options.

    A training sequence is ``prompt + " " + label + eos``. Only the label tokens are targets:

        L = -1/N Σ_i Σ_{t ∈ label_i} log p(s_{i,t} | s_{i,<t}),   N = number of label tokens in the batch.

    The whole sequence fits in ``max_source_length`` tokens: a long prompt loses tokens on the
    left, so the options, the sentence's end and the ``Answer:`` cue survive and the label always fits.

    ``mode="generate"`` (default) decodes greedily from the left-padded prompts (KV cache on) and
    maps the text to a label by :func:`match_label`. ``mode="rank"`` returns the option ``j`` with
    the largest log-likelihood Σ_t log p(o_{j,t} | prompt, o_{j,<t}) of its target tokens.
    """

    name = "causal"

    def __init__(self, tokenizer, max_source_length: int = 512, mode: str = "generate"):
        super().__init__(tokenizer, max_source_length)
        if mode not in MODES:
            raise JumploraError(f"unknown causal prediction mode {mode!r}: use one of {', '.join(MODES)}")
        self.mode = mode
        if tokenizer.pad_token is None:
            # Padding is masked out everywhere, so any token serves; EOS is what decoder-only models use.
            tokenizer.pad_token = tokenizer.eos_token
        # A prompt is continued, so it keeps the BOS the tokenizer puts first but never an end token
        # it may append (T5-style tokenizers do).
        bos = tokenizer.bos_token_id
        self.prefix = [bos] if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else []

    def label_ids(self, labels: Sequence[str]) -> list[list[int]]:
        """Target ids of each label: its tokens after a space, then EOS."""
        ids = self.tokenizer([" " + label for label in labels], add_special_tokens=False)["input_ids"]
        return [row + [self.tokenizer.eos_token_id] for row in ids]

    def prompt_ids(self, task: Task, examples: Sequence[Example]) -> list[list[int]]:
        """BOS (if the tokenizer uses one) + the prompt's last tokens, leaving room for any label."""
        room = self.max_source_length - len(self.prefix) - max(map(len, self.label_ids(task.labels)))
        if room < 1:
            raise JumploraError(
                f"max_source_length {self.max_source_length} leaves no room for a prompt next to the "
                f"labels of task {task.name}: raise max_source_length"
            )
        prompts = [task.prompt(example.sentence) for example in examples]
        ids = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        return [self.prefix + row[-room:] for row in ids]

    def collate(self, task: Task, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """Right-padded ``prompt + label`` ids; ``labels`` = -100 on the prompt and the padding."""
        prompts = self.prompt_ids(task, examples)
        targets = self.label_ids([example.label for example in examples])
        sequences = [prompt + target for prompt, target in zip(prompts, targets)]
        labels = [[-100] * len(prompt) + target for prompt, target in zip(prompts, targets)]
        return {**padded_inputs(sequences, self.tokenizer.pad_token_id), "labels": pad(labels, -100)}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's own shifted next-token loss over the non -100 labels."""
        return model(**to_device(batch, model)).loss

    def prepare(self, model: nn.Module, task: Task) -> list[list[int]]:
        """The target ids of the task's options (the generation budget is the longest of them)."""
        return self.label_ids(task.labels)

    def rows_per_example(self, task: Task) -> int:
        return len(task.labels) if self.mode == "rank" else 1

    def predict_batch(
        self, model: nn.Module, task: Task, prompt_ids: list[list[int]], options: list[list[int]]
    ) -> list[str]:
        if self.mode == "rank":
            scores = self.option_log_likelihoods(model, prompt_ids, options)
            return [task.labels[j] for j in scores.argmax(-1).tolist()]
        inputs = to_device(padded_inputs(prompt_ids, self.tokenizer.pad_token_id, left=True), model)
        output = model.generate(
            **inputs,
            do_sample=False,
            num_beams=1,
            max_new_tokens=max(map(len, options)),
            use_cache=True,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        # Left padding puts every prompt's end at the same column: what follows is the continuation.
        texts = self.tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return [match_label(text, task.labels) for text in texts]

    def option_log_likelihoods(
        self, model: nn.Module, prompt_ids: list[list[int]], options: list[list[int]]
    ) -> torch.Tensor:
        """``[len(prompt_ids), len(options)]``: Σ_t log p(o_{j,t} | prompt_i, o_{j,<t}).

        One forward over every (prompt, option) pair. The rows are left-padded so every option ends
        in the last column; only the last ``longest option + 1`` positions get logits, which keeps the
        vocabulary-sized output small. Position ids count real tokens only, so padding does not shift
        them.
        """
        rows = [prompt + option for prompt in prompt_ids for option in options]
        inputs = to_device(padded_inputs(rows, self.tokenizer.pad_token_id, left=True), model)
        mask = inputs["attention_mask"]
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        width = max(map(len, options))
        logits = model(**inputs, position_ids=position_ids, logits_to_keep=width + 1).logits[:, :-1]
        targets = inputs["input_ids"][:, -width:]
        log_probs = logits.float().log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        # Option j fills the last len(o_j) of the `width` target columns.
        lengths = torch.tensor([len(option) for option in options], device=mask.device).repeat(len(prompt_ids))
        is_option = torch.arange(width, device=mask.device) >= (width - lengths).unsqueeze(-1)
        return log_probs.masked_fill(~is_option, 0.0).sum(-1).view(len(prompt_ids), len(options))
