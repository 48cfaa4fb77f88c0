"""The report: exact aggregation over seeds, every figure drawn, the HTML in a real browser, bad input."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from _results import MATRIX, fake_results, write_run

from jumplora.errors import JumploraError
from jumplora.report import build_report
from jumplora.report.load import load_runs
from jumplora.report.sparsity_plots import layer_position
from jumplora.report.tables import Summary, group_summaries, run_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STREAM_FIGURES = ["bwt_radial.png", "jumplora_vs_base.png", "sparsity_overlap.png", "sparsity_depth.png",
                  "threshold_trace.png", "loss.png"]

# Three seeds of inclora on order 1, diagonal (80, 90, 75 + 2k) for seed k.
SEEDS = {
    0: ([[80, None, None], [70, 90, None], [60, 84, 75]], [79, 89, 74]),
    1: ([[80, None, None], [70, 90, None], [62, 86, 77]], [77, 87, 74]),
    2: ([[80, None, None], [70, 90, None], [64, 88, 79]], [75, 85, 74]),
}
# By hand, per seed (OA = mean of the last row, BWT = mean_{i<2} a[2,i] - a[i,i], FWT = mean_i a[i,i] - s_i):
#   seed 0: OA = (60+84+75)/3 = 73   BWT = ((60-80) + (84-90))/2 = -13   FWT = (1+1+1)/3 = 1
#   seed 1: OA = (62+86+77)/3 = 75   BWT = ((62-80) + (86-90))/2 = -11   FWT = (3+3+3)/3 = 3
#   seed 2: OA = (64+88+79)/3 = 77   BWT = ((64-80) + (88-90))/2 =  -9   FWT = (5+5+5)/3 = 5
# Each metric is m - 2, m, m + 2 over the seeds: mean m, sample std sqrt((4 + 0 + 4) / (3 - 1)) = 2.
EXPECTED = {"oa": Summary(75.0, 2.0, 3), "bwt": Summary(-11.0, 2.0, 3), "fwt": Summary(3.0, 2.0, 3)}


def _write_seeds(root: Path) -> None:
    for seed, (matrix, single_task) in SEEDS.items():
        results = fake_results("inclora", seed, matrix=matrix, order=1)
        results["single_task_accuracy"] = single_task
        write_run(root, results)


def test_mean_and_sample_std_over_seeds(tmp_path):
    _write_seeds(tmp_path / "runs")
    # An unfinished fourth seed must not count: its last row would pull every mean down.
    write_run(tmp_path / "runs", fake_results("inclora", 3, order=1, finished=2,
                                              matrix=[[10, None, None], [10, 10, None], [None] * 3]))
    runs = load_runs([tmp_path / "runs"])
    for metric, expected in EXPECTED.items():
        assert group_summaries(runs, metric, lambda run: run.method) == {"inclora": expected}
    assert [run_metrics(r)["oa"] for r in sorted(runs, key=lambda r: r.seed)] == [73.0, 75.0, 77.0, 10.0]

    report = (Path(build_report([tmp_path / "runs"], tmp_path / "report")).parent / "report.md").read_text()
    assert "| inclora | 75.0 ± 2.0 (n = 3) | 75.0 ± 2.0 (n = 3) |" in report  # Table 1: order 1, then the mean over orders
    assert "| inclora | -11.0 ± 2.0 (n = 3) | 3.0 ± 2.0 (n = 3) |" in report  # Table 2: BWT and FWT on SC
    assert "inclora seed 3 on order 1 (2/3 tasks)" in report


def test_one_seed_has_std_zero(tmp_path):
    write_run(tmp_path, fake_results("inclora", 0, order=1))
    runs = load_runs([tmp_path])
    assert group_summaries(runs, "oa", lambda run: run.method) == {"inclora": Summary(73.0, 0.0, 1)}
    assert str(Summary(73.0, 0.0, 1)) == "73.0 (n = 1)"


def _every_kind_of_run(root: Path) -> None:
    """Sequential, joint (mtl) and incomplete runs; JumpLoRA with a global and a per-block τ; ELLA ablations."""
    for seed in (0, 1):
        write_run(root, fake_results("inclora", seed))
        write_run(root, fake_results("jumplora+inclora", seed))
    write_run(root, fake_results("mtl", 0, matrix=[[None] * 3, [None] * 3, [85, 88, 80]]))
    write_run(root, fake_results("olora", 0, finished=2, matrix=[[82, None, None], [81, 88, None], [None] * 3]))
    for mode, delta in (("global", "sparse"), ("per_block", "interpolated")):
        write_run(root / f"{mode}-{delta}", fake_results("jumplora+ella", 0, threshold_mode=mode, ella_delta=delta))


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> Path:
    """report.html of every kind of run (built once: the figures take seconds)."""
    root = tmp_path_factory.mktemp("full")
    _every_kind_of_run(root / "runs")
    return build_report([root / "runs"], root / "report")


def test_every_figure_is_drawn(full_report):
    page = full_report
    heatmaps = [f"accuracy_{name}_seed{seed}.png" for name, seed in [
        ("inclora", 0), ("inclora", 1), ("jumplora+inclora", 0), ("jumplora+inclora", 1), ("mtl", 0),
        ("olora", 0), ("jumplora+ella", 0), ("jumplora+ella-per_block-interpolated", 0)]]
    produced = sorted(p.name for p in page.parent.glob("*.png"))
    assert produced == sorted(STREAM_FIGURES + heatmaps)
    markdown = (page.parent / "report.md").read_text()
    for name in produced:
        data = (page.parent / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, name
        assert f"]({name})" in markdown
    assert "skipped" not in markdown
    assert "| jumplora+ella (per_block, interpolated) |" in markdown  # a variant is its own row
    assert "Threshold | OA (sparse ΔW)" in markdown  # Table 3
    assert "30000, 100, 10" in markdown  # the chosen λ of the ELLA runs


def test_missing_data_skips_figures_with_a_note(tmp_path):
    old = fake_results("inclora", 0)
    del old["threshold_trace"]  # written before τ traces were recorded
    write_run(tmp_path / "runs", old)
    page = build_report([tmp_path / "runs"], tmp_path / "report")
    assert sorted(p.name for p in page.parent.glob("*.png")) == ["accuracy_inclora_seed0.png", "bwt_radial.png", "loss.png"]
    markdown = (page.parent / "report.md").read_text()
    assert markdown.count("figure skipped") == 4
    assert "the ablation table is omitted" in markdown


def test_several_streams_get_their_own_figures(tmp_path):
    for order in (1, 2):
        write_run(tmp_path / f"order{order}", fake_results("jumplora+inclora", 0, order=order))
    page = build_report([tmp_path / "order1", tmp_path / "order2"], tmp_path / "report")
    names = {p.name for p in page.parent.glob("*.png")}
    assert {"loss_order-1.png", "loss_order-2.png", "accuracy_order-2_jumplora+inclora_seed0.png"} <= names
    assert "| Method | order 1 | order 2 | Mean |" in (page.parent / "report.md").read_text()


def test_a_reused_folder_keeps_no_stale_figures(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path / "runs", fake_results("inclora", seed, order=1))
    report = tmp_path / "report"
    build_report([tmp_path / "runs"], report)
    assert (report / "accuracy_inclora_seed1.png").is_file()
    (report / "mine.png").write_bytes(b"not ours")  # a file the user put there stays
    shutil.rmtree(tmp_path / "runs" / "inclora" / "seed1")
    build_report([tmp_path / "runs"], report)
    assert sorted(p.name for p in report.glob("*.png")) == ["accuracy_inclora_seed0.png", "bwt_radial.png",
                                                            "loss.png", "mine.png"]


def test_resumes_with_changed_settings_are_named(tmp_path):
    changed = fake_results("inclora", 0)
    changed["resumes"] = [{"after_task": 1, "changed": {}},  # a plain resume: not worth a word
                          {"after_task": 2, "changed": {"compile": {"was": None, "now": "inductor"},
                                                        "learning_rate": {"was": 0.001, "now": 0.0005}}}]
    write_run(tmp_path / "runs", changed)
    plain = fake_results("inclora", 1)
    plain["resumes"] = [{"after_task": 1, "changed": {}}]
    write_run(tmp_path / "runs", plain)
    build_report([tmp_path / "runs"], tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert ("Resumed with changed settings: inclora seed 0 after task 2 (compile None -> inductor, "
            "learning_rate 0.001 -> 0.0005).") in text
    assert "seed 1 after" not in text and "after task 1" not in text


def test_single_task_baselines_are_not_runs(tmp_path):
    write_run(tmp_path, fake_results("inclora", 0))
    write_run(tmp_path / "inclora" / "seed0" / "single_task" / "alpha", fake_results("inclora", 0, tasks=["alpha"],
                                                                                  matrix=[[80]]))
    assert len(load_runs([tmp_path])) == 1


@pytest.mark.parametrize(("name", "position"), [
    ("encoder.layer.3.attention.self.query", ("encoder", "q", 3)),  # BERT
    ("decoder.block.2.layer.0.SelfAttention.v", ("decoder", "v", 2)),  # T5: the block, not the sub-layer
    ("model.layers.11.self_attn.q_proj", ("", "q", 11)),  # Llama
    ("transformer.h.0.attn.c_attn", ("", "c_attn", 0)),  # GPT-2
    ("vision.blocks.5.attn.qkv", ("", "qkv", 5)),  # the blocks per-block thresholds group by (jumplora.layout)
    ("classifier.dense", None),
])
def test_layer_position(name, position):
    assert layer_position(name) == position


@pytest.mark.slow
def test_html_loads_every_image_in_chromium(full_report, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium (CI installs it)")
    page = full_report
    html = page.read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert html.count("<img") == html.count('src="data:image/png;base64,') == 14

    # A copy with a checking script (the report itself has none) records what the browser loaded.
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", "<script>window.addEventListener('load', () => { const images = "
                                  "Array.from(document.images); document.title = 'loaded ' + images.filter(i => "
                                  "i.complete && i.naturalWidth > 0).length + ' of ' + images.length; });</script></body>"))
    dom = _chromium(chromium, tmp_path, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    assert "<title>loaded 14 of 14</title>" in dom

    _chromium(chromium, tmp_path, "--hide-scrollbars", "--window-size=1200,2400",
              f"--screenshot={tmp_path / 'shot.png'}", page.as_uri())
    pixels = matplotlib.image.imread(tmp_path / "shot.png")
    assert pixels.shape[:2] == (2400, 1200)
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 100  # text, tables and plots, not a blank page


def _chromium(chromium: str, tmp_path: Path, *args: str) -> str:
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'chromium-profile'}", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _break(field, value):
    def edit(results):
        results[field] = value
    return edit


@pytest.mark.parametrize(("edit", "message"), [
    (_break("accuracy_matrix", [[80, None], [70, 90]]), "'accuracy_matrix' must be a 3 x 3 list"),
    (_break("accuracy_matrix", [[80, None, None], [70, "x", None], [60, 84, 75]]), "'accuracy_matrix' must be"),
    (_break("tasks", []), "'tasks' must be a non-empty list"),
    (_break("finished_tasks", 7), "'finished_tasks' must be an integer from 1 to 3"),
    (_break("sparsity", {"alpha": [0.5]}), "'sparsity' must be an object of objects of numbers"),
    (_break("threshold_trace", {"alpha": {"model": "0.1"}}), "'threshold_trace' must be an object of objects of lists"),
    (_break("single_task_accuracy", [70.0]), "'single_task_accuracy' must be null or one accuracy per task (3)"),
    (_break("seed", "zero"), "'seed' must be an integer"),
    (_break("timing", {"total_s": "long"}), "'timing.total_s' must be a number"),
    (_break("collapsed", [1]), "'collapsed' must be a list of names"),
    (_break("resumes", [{"after_task": 1, "changed": {"compile": "inductor"}}]),
     "'resumes' must be a list of {after_task, changed: {setting: {was, now}}} records"),
])
def test_malformed_results_name_file_and_field(tmp_path, edit, message):
    results = fake_results("jumplora+inclora", 0)
    edit(results)
    path = write_run(tmp_path, results)
    with pytest.raises(JumploraError, match="^" + re.escape(str(path))) as error:
        build_report([tmp_path], tmp_path / "report")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_bad_folders_and_files(tmp_path):
    cases = [([], "no run folder given")]
    cases.append(([tmp_path / "missing"], "does not exist"))
    (tmp_path / "empty").mkdir()
    cases.append(([tmp_path / "empty"], "no results.json below"))
    (tmp_path / "broken" / "inclora" / "seed0").mkdir(parents=True)
    (tmp_path / "broken" / "inclora" / "seed0" / "results.json").write_text("{not json")
    cases.append(([tmp_path / "broken"], "is not readable JSON"))
    (tmp_path / "list" / "x").mkdir(parents=True)
    (tmp_path / "list" / "x" / "results.json").write_text(json.dumps([1, 2]))
    cases.append(([tmp_path / "list"], "the file must be a JSON object"))
    write_run(tmp_path / "a", fake_results("inclora", 0))
    write_run(tmp_path / "b", fake_results("inclora", 0))
    cases.append(([tmp_path / "a", tmp_path / "b"], "are both inclora seed 0 on demo: pass only one"))
    for run_dirs, message in cases:
        with pytest.raises(JumploraError, match=message) as error:
            build_report(run_dirs, tmp_path / "report")
        assert "\n" not in str(error.value)
    (tmp_path / "taken").write_text("")
    with pytest.raises(JumploraError, match="is a file: pass a folder"):
        build_report([tmp_path / "a"], tmp_path / "taken")


def captured_canvas(monkeypatch, module):
    """The matplotlib canvas a figure function draws, instead of its PNG."""
    drawn = []
    monkeypatch.setattr(module, "save", lambda canvas, folder, filename, caption: drawn.append(canvas) or caption)
    return drawn


def test_the_radial_figure_shows_accuracy_when_learned_and_at_the_end(tmp_path, monkeypatch):
    from jumplora.report import accuracy_plots
    from jumplora.report.load import load_runs

    write_run(tmp_path / "runs", fake_results("inclora", 0))
    drawn = captured_canvas(monkeypatch, accuracy_plots)
    accuracy_plots.bwt_radial(load_runs([tmp_path / "runs"]), tmp_path, "x.png", {"inclora": "C0"})
    ax = drawn[0].axes[0]
    assert ax.get_ylim() == (0.0, 100.0) and min(ax.get_yticks()) > 0  # no negative radii
    last, learned = (line.get_ydata() for line in ax.get_lines()[:2])
    assert list(last) == [60.0, 84.0, 75.0, 60.0] and list(learned) == [80.0, 90.0, 75.0, 80.0]  # MATRIX


def test_jumplora_is_drawn_beside_its_base_per_seed(tmp_path, monkeypatch):
    from jumplora.report import accuracy_plots
    from jumplora.report.load import load_runs

    for method, seed, last in [("inclora", 0, 60.0), ("inclora", 1, 63.0), ("jumplora+inclora", 0, 70.0)]:
        matrix = [row[:] for row in MATRIX]
        matrix[2][0] = last
        write_run(tmp_path / "runs", fake_results(method, seed, matrix=matrix))
    drawn = captured_canvas(monkeypatch, accuracy_plots)
    accuracy_plots.jumplora_vs_base(load_runs([tmp_path / "runs"]), tmp_path, "x.png",
                                    {"inclora": "C0", "jumplora+inclora": "C1"})
    oa_axis, bwt_axis = drawn[0].axes[:2]
    points = [collection.get_offsets()[:, 1].tolist() for collection in oa_axis.collections]
    oa = lambda last: (last + 84.0 + 75.0) / 3
    assert points == [[oa(60.0), oa(63.0)], [oa(70.0)]]  # the base first, one dot per seed
    bwt = [collection.get_offsets()[:, 1].tolist() for collection in bwt_axis.collections]
    assert bwt[1] == [((70.0 - 80.0) + (84.0 - 90.0)) / 2]


def test_percent_panels_start_at_zero(tmp_path, monkeypatch):
    from jumplora.report import sparsity_plots
    from jumplora.report.load import load_runs

    write_run(tmp_path / "runs", fake_results("jumplora+inclora", 0))
    drawn = captured_canvas(monkeypatch, sparsity_plots)
    sparsity_plots.sparsity_overlap(load_runs([tmp_path / "runs"]), tmp_path, "x.png", {"jumplora+inclora": "C1"})
    assert [ax.get_ylim() for ax in drawn[0].axes[:2]] == [(0.0, 100.0), (0.0, 100.0)]
