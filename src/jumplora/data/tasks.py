"""A classification task as the continual learner sees it: labelled sentences, an instruction, a prompt.

Every task in a stream, the benchmark's, the demo's or a user's own, is turned into text-to-text
form by one of two prompt formats (``PROMPT_FORMATS``: O-LoRA's, or the JumpLoRA authors' code's)
and scored by exact match of the generated answer against the label string, after
:func:`normalize_answer` on both sides.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from jumplora.errors import JumploraError

SPLITS = ("train", "dev", "test")
# A task's name becomes part of file names (its update, its checkpoint): it must be one entry of a
# folder, short enough for any filesystem (with the index and suffix around it).
MAX_NAME = 100
# The options are spelled out in every prompt: past a few hundred a prompt is mostly options (and
# 10,000 labels exhausted 22 GB of memory in one try). Labels are single lines of text.
MAX_LABELS = 500
# The prompt formats (build_prompt): (template, how the options are joined). A model's manifest
# records the format and its template.
#   olora    O-LoRA's and ELLA's: the instruction, "Option: a, b, c", the text, "Answer:"
#   authors  the JumpLoRA authors' code (utils.py make_base_prompt): "Task Instruction: ...",
#            "Options: a | b | c", "Text: ...", "Answer:" (label sets with commas read unambiguously)
PROMPT_FORMATS = {
    "olora": ("{instruction}\nOption: {options}\n{sentence}\nAnswer:", ", "),
    "authors": ("Task Instruction: {instruction}\nOptions: {options}\nText: {sentence}\nAnswer:", " | "),
}
DEFAULT_PROMPT_FORMAT = "olora"
PROMPT_TEMPLATE = PROMPT_FORMATS[DEFAULT_PROMPT_FORMAT][0]


@dataclass(frozen=True)
class Example:
    """One labelled input: the text shown in the prompt and the gold label string."""

    sentence: str
    label: str


@dataclass
class Task:
    """A named classification task with its three splits.

    ``labels`` is ordered: that order is the option order of the prompt. ``dropped`` counts, per
    split, the records that were left out because their label is not one of ``labels`` (e.g. the
    131 unlabelled ``-`` records of the MNLI test split); a split that was not loaded is absent.
    """

    name: str
    instruction: str
    labels: tuple[str, ...]
    train: list[Example] = field(default_factory=list)
    dev: list[Example] = field(default_factory=list)
    test: list[Example] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    source: str = field(default="", compare=False)  # where the examples were read (for messages)
    prompt_format: str = DEFAULT_PROMPT_FORMAT  # how an input is written (PROMPT_FORMATS)
    notes: list[str] = field(default_factory=list, compare=False)  # warnings for the user (a rare label, ...)

    def __post_init__(self) -> None:
        self.labels = tuple(self.labels)
        check_task_name(self.name)
        if not self.labels:
            raise JumploraError(f"task {self.name} has an empty label list: give it at least one label")
        if len(self.labels) > MAX_LABELS:
            raise JumploraError(f"task {self.name} has {len(self.labels)} labels; at most {MAX_LABELS} fit in a prompt: "
                                "check its label column (a text column read as labels?), or split the task")
        if any(not isinstance(label, str) or not label.strip() for label in self.labels):
            raise JumploraError(
                f"label list of task {self.name} has an empty or non-string label: {_shown(self.labels)}"
            )
        control = [label for label in self.labels if any(ord(c) < 32 or ord(c) == 127 for c in label)]
        if control:
            raise JumploraError(f"label {control[0]!r} of task {self.name} holds a control character (a line break, "
                                "a tab): a label is one line of text; fix it in the data")
        # Answers are compared after normalisation, so "Good" and "good " are the same answer.
        normalized = [normalize_answer(label) for label in self.labels]
        clashes = [[label for label in self.labels if normalize_answer(label) == n]
                   for n in dict.fromkeys(n for n in normalized if normalized.count(n) > 1)]
        if clashes:
            same = "; ".join(" and ".join(repr(label) for label in group) for group in clashes)
            raise JumploraError(
                f"label list of task {self.name} has duplicates: {same} are the same answer (answers are compared "
                "lower-cased, with spaces trimmed and collapsed): make them distinct"
            )
        known = set(self.labels)
        for split in SPLITS:
            for example in self.split(split):
                if example.label not in known:
                    raise JumploraError(
                        f"task {self.name} has a {split} example labelled {example.label[:60]!r}, "
                        f"which is not one of its labels {_shown(self.labels)}"
                    )

    def split(self, name: str) -> list[Example]:
        """The examples of split ``name`` ("train", "dev" or "test")."""
        if name not in SPLITS:
            raise JumploraError(f"unknown split {name!r}: use one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def fingerprints(self) -> dict[str, str]:
        """Per split, the SHA-256 of what a model learns or is measured on: the instruction, the
        labels and the split's examples in order. A resume or an evaluation that reads the data
        again compares them, so changed data is refused instead of silently used."""
        import hashlib

        def digest(examples: list[Example]) -> str:
            text = json.dumps([self.instruction, list(self.labels), [[e.sentence, e.label] for e in examples]])
            return hashlib.sha256(text.encode()).hexdigest()

        return {split: digest(self.split(split)) for split in SPLITS}

    def labels_json(self) -> str:
        """The labels as a JSON list (how an update file's metadata records them)."""
        return json.dumps(list(self.labels), ensure_ascii=False)

    def prompt(self, sentence: str) -> str:
        """The model input for ``sentence`` in this task (see :func:`build_prompt`)."""
        return build_prompt(self.instruction, self.labels, sentence, self.prompt_format)


def check_task_name(name: str) -> None:
    """A task name a file name can be made of: not empty, at most :data:`MAX_NAME` characters, no
    path separator, no ``..``, no control character (a NUL included)."""
    if not isinstance(name, str) or not name.strip():
        raise JumploraError("a task has an empty name: give every task a non-empty name")
    problem = None
    if len(name) > MAX_NAME:
        problem = f"is {len(name)} characters long (at most {MAX_NAME})"
    elif "/" in name or "\\" in name:
        problem = "holds a path separator ('/' or '\\')"
    elif name in (".", "..") or name.startswith("."):
        problem = "starts with '.'"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "holds a control character"
    if problem:
        raise JumploraError(f"the task name {name[:60]!r} {problem}: names become file names; rename the task")


def _shown(labels: Sequence[str], most: int = 12) -> str:
    """A label list for a message, cut after ``most`` labels."""
    shown = ", ".join(repr(label[:40]) for label in labels[:most])
    return f"[{shown}{f', ... ({len(labels)} in all)' if len(labels) > most else ''}]"


def build_prompt(instruction: str, labels: Sequence[str], sentence: str, prompt_format: str = DEFAULT_PROMPT_FORMAT) -> str:
    """The prompt of one input: four lines, the task instruction, the options, the input text and an
    answer cue. ``olora`` (the O-LoRA / ELLA convention, the default)::

        {instruction}
        Option: {label_1}, {label_2}, ..., {label_K}
        {sentence}
        Answer:

    ``authors`` (the JumpLoRA authors' code)::

        Task Instruction: {instruction}
        Options: {label_1} | {label_2} | ... | {label_K}
        Text: {sentence}
        Answer:

    The target the model must produce is the label string itself. When the instruction is empty
    (COPA, whose options ``A``/``B`` are spelled out inside the sentence) its line is left out.
    """
    if prompt_format not in PROMPT_FORMATS:
        raise JumploraError(f"unknown prompt format {prompt_format!r}: use one of {', '.join(PROMPT_FORMATS)}")
    template, joiner = PROMPT_FORMATS[prompt_format]
    text = template.format(instruction=instruction, options=joiner.join(labels), sentence=sentence)
    return text if instruction else text.split("\n", 1)[1]  # no instruction: no instruction line


def normalize_answer(text: str) -> str:
    """Lower-case, strip and collapse every run of whitespace to one space."""
    return " ".join(text.lower().split())


def is_correct(prediction: str, gold: str) -> bool:
    """Exact match after :func:`normalize_answer` on both sides."""
    return normalize_answer(prediction) == normalize_answer(gold)


def stratified_split(examples: Sequence[Example], sizes: Sequence[int], seed: int) -> list[list[Example]]:
    """Cut ``examples`` into disjoint parts of ``sizes[j]`` examples, each as class-balanced as possible.

    Within a class the order is a shuffle seeded by ``seed``; each part takes, per class, a quota
    from what the earlier parts left (water-filling: every class gets the same count, classes too
    small to reach it give all they have, and the rest is shared among the others). When fewer
    examples remain than asked for, a part gets all that remain. Each part is then shuffled, so it
    does not come sorted by class. Deterministic: the same input, sizes and seed give the same parts.
    """
    rng = random.Random(seed)
    by_class: dict[str, list[Example]] = {}
    for example in examples:
        by_class.setdefault(example.label, []).append(example)
    pools = list(by_class.values())
    for pool in pools:
        rng.shuffle(pool)
    parts = []
    for size in sizes:
        quotas = _balanced_quotas([len(pool) for pool in pools], size)
        part = [example for pool, quota in zip(pools, quotas, strict=True) for example in pool[:quota]]
        pools = [pool[quota:] for pool, quota in zip(pools, quotas, strict=True)]
        rng.shuffle(part)
        parts.append(part)
    return parts


def subsample(examples: Sequence[Example], n: int | None, seed: int = 0) -> list[Example]:
    """At most ``n`` examples, class-stratified (see :func:`stratified_split`); ``n=None`` keeps all.

    Used for ``--max-train-per-task`` / ``--max-test-per-task``. A list that already fits is
    returned unchanged, in its order.
    """
    if n is None or n >= len(examples):
        return list(examples)
    if n < 0:
        raise JumploraError(f"cannot keep {n} examples: pass a count >= 0, or none to keep all")
    return stratified_split(examples, [n], seed)[0]


def _balanced_quotas(available: list[int], n: int) -> list[int]:
    """Per-class counts summing to min(n, sum(available)), as equal as the class sizes allow.

    A remainder that cannot be shared equally goes one each to the first classes still open.
    """
    quotas = [0] * len(available)
    remaining = min(n, sum(available))
    while remaining:
        open_classes = [k for k, count in enumerate(available) if quotas[k] < count]
        share = max(1, remaining // len(open_classes))
        for k in open_classes:
            take = min(share, available[k] - quotas[k], remaining)
            quotas[k] += take
            remaining -= take
    return quotas
