"""How a model is trained and asked: the family and its options, one section of a run's settings."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from jumplora.families.causal import MODES
from jumplora.settings import check, key_of, setting


def _family_names() -> tuple[str, ...]:
    from jumplora.families.loading import FAMILIES  # the families and their names are defined there

    return tuple(FAMILIES)


@dataclass
class FamilyOptions:
    """The model family (detected from the model unless given) and what each family is asked with."""

    TITLE: ClassVar[str] = "model family"

    family: str | None = setting(None, "seq2seq (T5, BART), causal (Llama, Qwen, GPT-2) or encoder (BERT, MiniLM)",
                                 choices=_family_names, shown="detected from the model's config",
                                 label="model family")
    max_source_length: int = setting(512, "the most tokens of a prompt (causal models: prompt and answer); longer "
                                     "prompts lose their start", minimum=1)
    causal_mode: str = setting("generate", "how a causal model answers: generate (greedy, scored by exact match: the "
                               "paper's protocol) or rank (the most likely of the task's options)", choices=MODES)
    also_rank: bool = setting(False, "a causal model scored by generate is also scored by rank "
                              "(rank_accuracy_matrix in results.json): forgetting a task vs a later task's labels "
                              "taking over the answers")
    encoder_temperature: float = setting(0.05, "encoder models: τ of the softmax over cos(prompt, option)", above=0)

    def __post_init__(self) -> None:
        check(self)

    def as_settings(self) -> dict:
        """The options by their flat keys, as ``Family.from_settings`` takes them."""
        return {key_of(f): getattr(self, f.name) for f in dataclasses.fields(self)}
