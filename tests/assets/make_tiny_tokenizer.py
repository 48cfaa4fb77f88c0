"""Build tests/assets/tiny-tokenizer: a 1,000-token T5-like tokenizer, so the tests need no download
and no shared folder (python tests/assets/make_tiny_tokenizer.py rewrites it).

T5's layout: <pad> = 0, </s> = 1 (appended to every text), <unk> = 2, no BOS; words are pieces
after "▁" (Metaspace), newlines count as spaces. The BPE merges are learned from the test files'
own text; every printable ASCII character is in the alphabet, so no English text is unknown.
"""

from pathlib import Path
import string

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

HERE = Path(__file__).resolve().parent
SPECIAL = ["<pad>", "</s>", "<unk>"]


def corpus() -> list[str]:
    """The text of the test modules: the words the tests' tasks are made of."""
    return [path.read_text() for path in sorted(HERE.parent.glob("*.py"))]


def build() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Replace("\n", " "), normalizers.Replace("\t", " ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    alphabet = sorted(set(string.printable) - set(string.whitespace)) + ["▁"]
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=SPECIAL, initial_alphabet=alphabet,
                                  show_progress=False)
    tokenizer.train_from_iterator(corpus(), trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                             special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=512)


if __name__ == "__main__":
    built = build()
    assert [built.convert_tokens_to_ids(t) for t in SPECIAL] == [0, 1, 2]
    built.save_pretrained(HERE / "tiny-tokenizer")
    print(f"{len(built)} tokens -> {HERE / 'tiny-tokenizer'}")
