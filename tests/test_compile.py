"""--compile: a compiled model trains exactly as the eager one, and γ's schedule and a new task's
adapters reuse the compiled graphs instead of rebuilding them at every step.

The checks use torch.compile's ``aot_eager`` backend: it runs the capture (TorchDynamo) and the
joint forward/backward tracing (AOTAutograd) that our adapters must survive, without generating
kernels, so the results must be bit-identical to eager and a test takes seconds, not minutes.
"""

import pytest
import torch
from torch._dynamo.utils import counters

from _models import save, tiny_t5
from _results import read_run
from jumplora import AdapterConfig, AdapterSet
from jumplora.cli import main

pytestmark = pytest.mark.slow


def train_stream(model, compiled: bool, tasks: int = 2, steps: int = 10):
    """Train ``tasks`` tasks of ``steps`` steps each (γ rises from 0 to 1 in each), merging after
    each; batches of varying length. Returns every step's loss and each task's update."""
    step_of = torch.compile(model, backend="aot_eager") if compiled else model
    generator = torch.Generator().manual_seed(1)
    losses, updates = [], []
    for _ in range(tasks):
        adapters = AdapterSet(model, AdapterConfig(kind="jumplora", r=4, alpha=8))
        adapters.begin_task(steps)
        optimizer = torch.optim.AdamW(adapters.parameters(), lr=1e-2)
        for step in range(steps):
            adapters.set_step(step)
            length = int(torch.randint(6, 14, (1,), generator=generator))
            ids = torch.randint(2, 100, (2, length), generator=generator)
            labels = torch.randint(2, 100, (2, 3), generator=generator)
            loss = step_of(input_ids=ids, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        assert adapters.thresholds_ready and next(iter(adapters.layers.values())).gamma == 1.0
        updates.append(adapters.merge_and_unload().deltas)
    return losses, updates


def test_compiled_training_equals_eager_and_reuses_its_graphs():
    eager_losses, eager_updates = train_stream(tiny_t5()[0].train(), compiled=False)
    torch._dynamo.reset()
    counters.clear()
    losses, updates = train_stream(tiny_t5()[0].train(), compiled=True)
    assert losses == eager_losses  # 20 steps, γ from 0 to 1 twice
    for eager, compiled in zip(eager_updates, updates):
        assert eager.keys() == compiled.keys() and all(torch.equal(eager[k], compiled[k]) for k in eager)
    # Built: γ = 0 (low-rank path) at the first length, again with the length dynamic, and once for
    # the folded path at S_start. Not one per γ value (10 per task) nor per task's new adapters.
    assert counters["stats"]["unique_graphs"] <= 3, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    from test_runner import write_stream

    return write_stream(tmp_path_factory.mktemp("stream"))


def test_run_with_compile_gives_the_results_of_eager(stream, tmp_path):
    model, tokenizer = tiny_t5()
    save(model, tokenizer, tmp_path / "model")
    args = ["run", "--model", str(tmp_path / "model"), "--task-file", str(stream), "--method", "jumplora+inclora",
            "--batch-size", "8", "--learning-rate", "5e-3", "--save-model", "false"]
    assert main([*args, "--output", str(tmp_path / "eager")]) == 0
    torch._dynamo.reset()
    assert main([*args, "--output", str(tmp_path / "compiled"), "--compile", "aot_eager"]) == 0
    eager, compiled = (read_run(tmp_path / name / "jumplora+inclora" / "seed0") for name in ("eager", "compiled"))
    assert compiled["config"]["compile"] == "aot_eager"
    for key in ("accuracy_matrix", "losses", "sparsity"):
        assert compiled[key] == eager[key], key


def test_a_failing_compiler_is_one_line_that_names_the_way_out(stream, tmp_path, capsys):
    @torch._dynamo.register_backend(name="jumplora_test_broken")
    def broken(graph_module, example_inputs):
        raise RuntimeError("no compiler here")

    model, tokenizer = tiny_t5()
    save(model, tokenizer, tmp_path / "model")
    code = main(["run", "--model", str(tmp_path / "model"), "--task-file", str(stream), "--method", "inclora",
                 "--output", str(tmp_path / "out"), "--compile", "jumplora_test_broken"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("jumplora: error: --compile jumplora_test_broken: torch.compile failed")
    assert lines[-1].endswith("run without --compile") and "Traceback" not in "\n".join(lines)
    assert not (tmp_path / "out" / "inclora" / "seed0" / "results.json").exists()
    # The way out the README gives: resume the same run without compiling.
    assert main(["run", "--resume", str(tmp_path / "out"), "--compile", "off"]) == 0
    results = read_run(tmp_path / "out" / "inclora" / "seed0")
    assert results["finished_tasks"] == len(results["tasks"]) and results["config"]["compile"] is None
