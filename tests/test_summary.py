"""The summary `jumplora run` prints: matrices with full task names, metrics with units, a verdict."""

from jumplora.config import load_config
from jumplora.data import Example, Task
from jumplora.record import RunRecord
from jumplora.report.summary import summary_table
from jumplora.runner import step_warnings

TASKS = ["bbc_news", "tweet_sentiment", "movie_reviews"]


def record(method, seed, last_row, bwt, sparsity=None):
    matrix = [[80.0, None, None], [75.0, 50.0, None], last_row]
    r = RunRecord(tasks=TASKS, method=method, seed=seed, accuracy_matrix=matrix, finished_tasks=3,
                  metrics={"oa": sum(last_row) / 3, "bwt": bwt, "fwt": None})
    if sparsity is not None:
        r.mean_sparsity = {t: sparsity for t in TASKS}
        r.jaccard = {"mean_with_previous": [None, 0.2, 0.3], "per_layer": {}}
    return r


def test_one_seed_each_gives_a_verdict_with_n_1_and_the_next_command():
    text = summary_table([record("inclora", 0, [70.0, 50.0, 60.0], -5.0),
                          record("jumplora+inclora", 0, [75.0, 52.0, 62.0], -2.0, sparsity=0.6)], "runs/x")
    assert "after tweet_sentiment" in text and "tweet_sentiment" in text.splitlines()[2]  # full names, labelled rows
    assert "verdict: jumplora+inclora vs inclora: ΔOA +3.0 (n = 1) pp, ΔBWT +3.0 (n = 1) pp" in text
    assert "better: higher BWT (keeps earlier tasks better) and higher OA" in text
    assert "60.0 (n = 1)" in text and "25.0 (n = 1)" in text  # sparsity and overlap in percent
    assert "next: jumplora report runs/x --output runs/x/report" in text


def test_several_seeds_give_mean_and_spread_and_say_when_it_is_noise():
    records = [record("inclora", s, [70.0, 50.0, 60.0 + s], -5.0 + s) for s in (0, 1)]
    records += [record("jumplora+inclora", s, [70.0, 50.0, 61.0 - 2 * s], -4.0 - 2 * s) for s in (0, 1)]
    text = summary_table(records)
    # OA: inclora 60, 60.33; jumplora+inclora 60.33, 59.67 → ΔOA +1/3, −2/3: −0.17 ± 0.71 (sample std).
    # ΔBWT: (−4) − (−5) = +1, (−6) − (−4) = −2 → −0.5 ± 2.12.
    assert "ΔOA -0.2 ± 0.7 (n = 2) pp, ΔBWT -0.5 ± 2.1 (n = 2) pp" in text
    assert "no gain: lower BWT (keeps earlier tasks worse) and lower OA (both within the spread over seeds)" in text
    assert "-4.5 ± 0.7 (n = 2)" in text  # inclora's BWT over its two seeds


def test_a_tie_is_called_a_tie_and_ranked_metrics_are_shown():
    same = [record(method, 0, [70.0, 50.0, 60.0], -5.0) for method in ("inclora", "jumplora+inclora")]
    text = summary_table(same)
    assert "ΔOA +0.0 (n = 1) pp, ΔBWT +0.0 (n = 1) pp on the same seeds: level: the same BWT and the same OA" in text
    assert "ranked" not in text
    higher_oa_only = [record("inclora", 0, [70.0, 50.0, 60.0], -5.0), record("jumplora+inclora", 0, [73.0, 50.0, 60.0], -5.0)]
    assert "better: the same BWT and higher OA" in summary_table(higher_oa_only)
    same[1].rank_metrics = {"oa": 48.0, "bwt": -12.5}
    text = summary_table(same)
    assert "OA ranked (%)" in text and "48.0 (n = 1)" in text and "-12.5 (n = 1)" in text


def test_too_few_steps_per_task_are_warned_about_before_training():
    config = load_config(overrides={"batch_size": 32})
    small = Task("small", "?", ("a", "b"), train=[Example(str(i), "a") for i in range(32)])
    enough = Task("enough", "?", ("a", "b"), train=[Example(str(i), "a") for i in range(320)])
    warnings = step_warnings(config, [small, enough])
    assert len(warnings) == 1
    assert "task small gets 1 optimiser step(s)" in warnings[0] and "S_start = 0, S_final = 0" in warnings[0]
    assert "--max-train-per-task" in warnings[0]
