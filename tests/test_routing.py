"""Task states and the router: bit-identical states, Ledoit–Wolf from statistics, a separable stream
routed completely, an input of no learned task, routing in a run, after a rollback, in predict."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from _models import save, tiny_llama
from _topics import write_topic_tasks
from jumplora.cli import main
from jumplora.data.stream import StreamConfig, resolve_stream
from jumplora.routed import encoder, view_texts
from jumplora.routing import Router

METHOD = "jumplora+inclora"


def test_the_shared_covariance_is_ledoit_wolf_of_the_pooled_centred_features():
    from sklearn.covariance import ledoit_wolf

    rng = np.random.default_rng(0)
    router, centred = Router(), []
    for i, n in enumerate((30, 50, 40)):
        x = rng.normal(size=(n, 12)) * rng.uniform(0.5, 2.0, 12) + i
        router.add(f"t{i}", x)
        centred.append(x - x.mean(0))
    expected, shrinkage = ledoit_wolf(np.concatenate(centred), assume_centered=True)
    np.testing.assert_allclose(router.covariance(), expected, rtol=0, atol=1e-12)
    assert 0 < shrinkage < 1
    router.remove("t1")  # a rollback: rebuilt from the others' statistics alone
    expected, _ = ledoit_wolf(np.concatenate([centred[0], centred[2]]), assume_centered=True)
    np.testing.assert_allclose(router.covariance(), expected, rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def topics(tmp_path_factory):
    root = tmp_path_factory.mktemp("topics")
    return resolve_stream(StreamConfig(task_file=str(write_topic_tasks(root)))), root


@pytest.mark.parametrize("view", ["prompt", "text"])
def test_a_separable_stream_is_routed_completely_and_an_unknown_input_is_no_tasks(topics, view):
    tasks, _ = topics
    router = Router()
    for task in tasks:
        router.add(task.name, encoder()(view_texts(task, task.train, view)), encoder()(view_texts(task, task.dev, view)))
    for index, task in enumerate(tasks):
        chosen, confidence = router.route(encoder()(view_texts(task, task.test, view)))
        assert chosen.tolist() == [index] * len(task.test) and (confidence > 0.5).all()
    unknown = ["lorem ipsum dolor sit amet consectetur adipiscing", "7 3 9 1 4 8 2 6"]
    texts = unknown if view == "text" else [tasks[0].prompt(u) for u in unknown]
    assert router.route(encoder()(texts))[0].tolist() == [-1, -1]
    again = Router.from_state(router.state())
    assert [t.name for t in again.tasks] == ["topic", "economy"]
    np.testing.assert_array_equal(again.distances(encoder()(texts)), router.distances(encoder()(texts)))


@pytest.fixture(scope="module")
def routed_run(topics, tmp_path_factory):
    _, root = topics
    model, tokenizer = tiny_llama()
    save(model, tokenizer, root / "model")
    out = tmp_path_factory.mktemp("routed") / "out"
    assert main(["run", "--model", str(root / "model"), "--task-file", str(root / "topics.json"), "--method", METHOD,
                 "--output", str(out), "--batch-size", "8", "--learning-rate", "1e-2", "--keep-checkpoints", "3"]) == 0
    return out / METHOD / "seed0"


def test_task_states_are_bit_identical_to_the_weights_after_each_task(routed_run):
    from jumplora.answering import task_states
    from jumplora.model_folder import ModelFolder

    folder = ModelFolder(routed_run / "model")
    states, names = task_states(folder, folder.verify())
    assert names == ["topic", "economy"]
    for t, name in enumerate(names):
        checkpoint = load_file(routed_run / "checkpoints" / f"{t:02d}-{name}" / "state.safetensors")
        weights = states.weights(t)
        assert weights and all(torch.equal(weights[module], checkpoint[f"model/{module}.weight"]) for module in weights)
    sizes = folder.manifest().sizes
    assert sizes["states_mb"] > 0 and sizes["updates_mb"] > 0 and sizes["total_mb"] >= sizes["weights_mb"]


def test_a_run_records_the_routed_matrix_and_the_routing(routed_run):
    results = json.loads((routed_run / "results.json").read_text())
    routed = results["routed_accuracy_matrix"]
    assert len(routed) == 2 and routed[0][1] is None and None not in routed[1]
    assert set(results["routed_metrics"]) == {"oa", "bwt", "fwt"}
    routing = results["routing"]
    assert routing["from_prompt"] == [100.0, 100.0] and routing["from_text"] == [100.0, 100.0]
    assert routing["confusion"] == [[16, 0], [0, 16]]  # 8 test inputs per label, 2 labels a task
    # Routed right, every input is answered by the state of its own task: the diagonal of the matrix.
    assert routed[1] == [results["accuracy_matrix"][0][0], results["accuracy_matrix"][1][1]]


def test_predict_without_a_task_routes_and_a_rollback_removes_the_state(routed_run, tmp_path, capsys):
    model = routed_run / "model"
    capsys.readouterr()
    assert main(["predict", str(model), "--states", "the bank shares market profit investors bond"]) == 0
    task, answer, confidence, text = capsys.readouterr().out.strip().split("\t")
    assert task == "economy" and float(confidence) > 0.5 and text.startswith("the bank")
    assert main(["predict", str(model), "--states", "--output", str(tmp_path / "p.jsonl"),
                 "lorem ipsum dolor sit amet consectetur adipiscing"]) == 0
    row = json.loads((tmp_path / "p.jsonl").read_text())
    assert row["learned"] is False and row["way"] == "merged"  # no learned task's: the merged model answers
    assert main(["rollback", str(model), "--task", "economy", "--output", str(tmp_path / "rolled")]) == 0
    from jumplora.answering import task_states
    from jumplora.model_folder import ModelFolder

    rolled = ModelFolder(tmp_path / "rolled")
    states, names = task_states(rolled, rolled.verify())
    assert names == ["topic"]
    original, _ = task_states(ModelFolder(model), ModelFolder(model).verify())
    assert all(torch.equal(states.weights(0)[k], original.weights(0)[k]) for k in states.base)
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "rolled"), "--states", "the bank shares market profit investors bond"]) == 0
    assert capsys.readouterr().out.split("\t")[0] != "economy"  # its router entry is gone with its state
    # Applied back, the update defines economy's state again (the same bits) and the router routes to it.
    assert main(["apply", "--model", str(tmp_path / "rolled"), "--update", str(routed_run / "deltas" / "01-economy.safetensors"),
                 "--output", str(tmp_path / "back")]) == 0
    back = ModelFolder(tmp_path / "back")
    states, names = task_states(back, back.verify())
    assert names == ["topic", "economy"]
    assert all(torch.equal(states.weights(1)[k], original.weights(1)[k]) for k in states.base)
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "back"), "--states", "the bank shares market profit investors bond"]) == 0
    assert capsys.readouterr().out.split("\t")[0] == "economy"


@pytest.mark.slow
def test_predict_without_a_task_on_the_main_jobs_model(tmp_path, capsys):
    out = tmp_path / "main"
    assert main(["run", "--max-train-per-task", "48", "--max-test-per-task", "16", "--output", str(out)]) == 0
    capsys.readouterr()
    assert main(["predict", str(out / METHOD / "seed0" / "model"), "A moving, beautifully acted film.",
                 "Dull, and far too long."]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["movie_reviews", "movie_reviews"]
    assert {line.split("\t")[1] for line in lines} <= {"Good", "Bad"}


def test_the_report_shows_the_routed_matrix_and_the_routing(routed_run, tmp_path):
    assert main(["report", str(routed_run.parent.parent), "--output", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "The merged model and the routed task states" in text and "routed right from the text %" in text
    assert (tmp_path / "report" / f"routing_{METHOD}_seed0.png").is_file()
    assert (tmp_path / "report" / f"accuracy_routed_{METHOD}_seed0.png").is_file()


def test_thresholds_follow_the_shared_covariance_and_old_routers_get_the_same():
    rng = np.random.default_rng(1)
    router = Router()
    router.add("a", rng.normal(size=(60, 8)))
    alone = router.thresholds()[0]
    router.add("b", rng.normal(size=(60, 8)) * 3 + 5)  # a wider task: the shared Σ grows
    assert router.thresholds()[0] < alone  # d² under the wider Σ shrink; "a"'s threshold follows
    ratio = router.tasks[0].ratio
    np.testing.assert_allclose(router.thresholds()[0], ratio * router.tasks[0].expected(router.inverse()))
    state = {k: v for k, v in router.state().items() if not k.endswith("/ratio")}  # saved before ratios were
    np.testing.assert_allclose(Router.from_state(state).thresholds(), router.thresholds(), rtol=1e-12)
