"""Decoder-only models (Llama, Qwen, GPT-2): the label continues the prompt."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from jumplora import _compat
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

    Only the label tokens are targets, so by default (``label_only_loss``) the language-model head
    runs only at the positions that predict them: a few per example instead of every position of
    the sequence times the vocabulary (16×128 positions × 49,152 entries per step for SmolLM2). The
    loss is the same; models whose forward cannot keep given positions get the full-logit loss.

    ``mode="generate"`` (default) decodes greedily from the left-padded prompts (KV cache on) and
    maps the text to a label by :func:`match_label`. ``mode="rank"`` returns the option ``j`` with
    the largest log-likelihood Σ_t log p(o_{j,t} | prompt, o_{j,<t}) of its target tokens.
    """

    name = "causal"
    SETTINGS = {**Family.SETTINGS, "causal_mode": "mode"}

    def __init__(self, tokenizer, max_source_length: int = 512, mode: str = "generate", label_only_loss: bool = True):
        super().__init__(tokenizer, max_source_length)
        if mode not in MODES:
            raise JumploraError(f"unknown causal prediction mode {mode!r}: use one of {', '.join(MODES)}")
        self.mode = mode
        self.label_only_loss = label_only_loss
        if tokenizer.pad_token is None:
            # Padding is masked out everywhere, so any token serves; EOS is what decoder-only models use.
            tokenizer.pad_token = tokenizer.eos_token
        # A prompt is continued, so it keeps the BOS the tokenizer puts first but never an end token
        # it may append (T5-style tokenizers do).
        bos = tokenizer.bos_token_id
        self.prefix = [bos] if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else []

    @property
    def scoring(self) -> str:
        return self.mode

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
        """Right-padded ``prompt + label`` ids; ``labels`` = -100 on the prompt and the padding.

        For the label-only loss also ``target_positions`` (batch, W), W the longest target: row i,
        column j is the position whose logits predict target token j (prompt length − 1 + j), and
        ``targets`` those tokens, -100 where a row's target is shorter (its last position repeated).
        """
        prompts = self.prompt_ids(task, examples)
        targets = self.label_ids([example.label for example in examples])
        sequences = [prompt + target for prompt, target in zip(prompts, targets)]
        labels = [[-100] * len(prompt) + target for prompt, target in zip(prompts, targets)]
        width = max(map(len, targets))
        positions = [[len(prompt) - 1 + min(j, len(target) - 1) for j in range(width)]
                     for prompt, target in zip(prompts, targets)]
        return {**padded_inputs(sequences, self.tokenizer.pad_token_id), "labels": pad(labels, -100),
                "target_positions": torch.tensor(positions), "targets": pad(targets, -100)}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy of the label tokens: from logits at the target positions only, or
        (``label_only_loss=False``, or a model that cannot keep positions) the model's own
        shifted next-token loss over the non -100 labels, which computes every position's logits."""
        batch = to_device(batch, model)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if not (self.label_only_loss and _compat.takes_logit_positions(model)):
            return model(**inputs, labels=batch["labels"]).loss
        logits = model(**inputs, logits_to_keep=batch["target_positions"]).logits  # (batch, W, vocab)
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten(), ignore_index=-100)

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

        The prompts go through the model once, left-padded so that they all end in the last column,
        keeping their KV cache and only the last position's logits (which score each option's first
        token). The cache is then repeated once per option and every option continues every prompt
        in a second forward over a few tokens (options right-padded; the padding comes after the real
        tokens, so nothing real attends to it). Position ids count real tokens only.
        """
        pad_id = self.tokenizer.pad_token_id
        inputs = to_device(padded_inputs(prompt_ids, pad_id, left=True), model)
        mask = inputs["attention_mask"]
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        prompted = model(**inputs, position_ids=position_ids, use_cache=True, logits_to_keep=1)
        first = prompted.logits[:, -1].float().log_softmax(-1)  # (prompts, vocab): the next token's
        n, k, width = len(prompt_ids), len(options), max(map(len, options))
        cache = _compat.output_cache(prompted)
        cache.batch_repeat_interleave(k)  # row i·k + j: prompt i, option j
        option_inputs = to_device(padded_inputs(options, pad_id), model)
        ids = option_inputs["input_ids"].repeat(n, 1)  # (n·k, width)
        real = option_inputs["attention_mask"].repeat(n, 1)
        continued = model(
            input_ids=ids,
            attention_mask=torch.cat([mask.repeat_interleave(k, 0), real], 1),
            position_ids=position_ids[:, -1:].repeat_interleave(k, 0) + 1 + torch.arange(width, device=ids.device),
            use_cache=True,
            **{_compat.cache_keyword(model): cache},
        )
        log_probs = continued.logits[:, :-1].float().log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        total = first.repeat_interleave(k, 0).gather(-1, ids[:, :1]).squeeze(-1)
        total = total + log_probs.masked_fill(real[:, 1:] == 0, 0.0).sum(-1)
        return total.view(n, k)
