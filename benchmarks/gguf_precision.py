"""How much of the tasks' update survives GGUF export, for each type the changed tensors are written in.

    python benchmarks/gguf_precision.py --json gguf-precision.json                    # ~8 min on 2 cores
    python benchmarks/gguf_precision.py --epochs 10 --json gguf-precision-e10.json     # a larger update
    python benchmarks/gguf_precision.py --model-folder runs/x/jumplora+inclora/seed0/model --json p.json
    python benchmarks/gguf_precision.py --quick                                        # no accuracy columns

Without --model-folder a small model is trained first, in a temporary folder: SmolLM2-135M (its
Q4_1 GGUF file), one sport/food task of 16 training sentences, jumplora+inclora, batch 4, one epoch
(4 steps; --epochs N for more, hence a larger update). Each
gguf_type of jumplora.export_gguf (source = Q4_1 here, q8_0, f16, f32) is then exported and read
back as transformers' GGUF loader reads it. Per type, over the adapted tensors (the keys of the
folder's states/base.safetensors):

    rel_err = ‖(W_exported − W_source) − β·ΔW‖_F / ‖β·ΔW‖_F,   β·ΔW = W_merged − W_base

with W_source the source GGUF's tensor and W_exported the exported one, both dequantised, W_merged
the folder's model.safetensors and W_base its states/base.safetensors: 0 = the update survives
exactly, 1 = as if it were dropped. Columns: rel_err_mean / rel_err_max over the tensors, the file
size (MB, and vs the source), the export's time (ms) and peak memory; unless --quick, the accuracy
(%) on the folder's kept test examples (greedy generation, exact match) of the exported file loaded
with jumplora.families.load_model, and `agree_pct`, the test inputs answered as the merged
safetensors model answers them. Two reference rows: the merged model itself and the source GGUF
file without any update.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

import common
from jumplora.export_gguf import GGUF_TYPES, base_gguf, export_gguf, gguf_weights
from jumplora.model_folder import ModelFolder

SPORT = ["The striker scored twice in the final.", "The tennis champion won in straight sets.",
         "The marathon runner broke the course record.", "The team lost the basketball game at home.",
         "The goalkeeper saved a penalty in the last minute.", "The cyclist won the mountain stage.",
         "The boxer knocked out his rival in round three.", "The swimmer took gold in the relay.",
         "The coach praised the defence after the derby.", "She hit a home run in the ninth inning.",
         "The rugby side won the league on points.", "He finished second in the ski slalom."]
FOOD = ["The soup was made with fresh tomatoes and basil.", "She baked a chocolate cake for dessert.",
        "The bakery sells warm bread every morning.", "He grilled salmon with lemon and garlic.",
        "The pasta was served with a creamy sauce.", "They ate sushi and rice for dinner.",
        "The salad had apples, nuts and cheese.", "The pancakes came with maple syrup.",
        "The curry was spicy and full of lentils.", "We roasted potatoes with rosemary.",
        "The pie was filled with cherries and cream.", "He made an omelette with mushrooms."]


def train_model(workdir: Path, epochs: int) -> Path:
    """A small SmolLM2 model folder: one sport/food task, 8 + 8 training and 4 + 4 test sentences."""
    from jumplora.cli import main

    records = [{"sentence": s, "label": label, "split": "train" if i < 8 else "test"}
               for label, sentences in (("sport", SPORT), ("food", FOOD)) for i, s in enumerate(sentences)]
    (workdir / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (workdir / "tasks.json").write_text(json.dumps([{"name": "t", "path": "t.jsonl", "instruction": "Sport or food?"}]))
    code = main(["run", "--model", "smollm2-135m", "--task-file", str(workdir / "tasks.json"), "--method",
                 "jumplora+inclora", "--output", str(workdir / "run"), "--batch-size", "4",
                 "--max-source-length", "64", "--no-route", "--epochs", str(epochs)])
    if code != 0:
        raise SystemExit(f"the training run failed (exit code {code})")
    return workdir / "run" / "jumplora+inclora" / "seed0" / "model"


def relative_errors(exported: dict, source: dict, update: dict) -> list[float]:
    return [float(torch.linalg.norm((exported[n] - source[n]) - update[n]) / torch.linalg.norm(update[n]))
            for n in update]


def answers(model_path: str, folder: ModelFolder) -> tuple[float, list[str]]:
    """Accuracy (%) over the folder's kept test examples and the answers, of the model at ``model_path``."""
    from jumplora.data import is_correct
    from jumplora.families import load_model
    from jumplora.inference import kept_tasks

    manifest = folder.manifest()
    model, _, family = load_model(model_path, family="causal", settings=manifest.settings())
    predictions, correct, total = [], 0, 0
    for task in kept_tasks(folder, manifest) or []:
        said = family.predict(model.eval(), task, task.test, batch_size=16)
        correct += sum(is_correct(p, e.label) for p, e in zip(said, task.test))
        total += len(task.test)
        predictions += said
    return (round(100 * correct / total, 1) if total else None), predictions


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], dtype=False)
    p.add_argument("--model-folder", type=Path, help="a model folder whose base is a GGUF file (default: train one)")
    p.add_argument("--epochs", type=int, default=1, help="epochs of the model trained without --model-folder")
    args = p.parse_args()
    device = common.check_device(args)  # the export and the dequantising run on the CPU; --device is recorded
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        folder = ModelFolder(args.model_folder or train_model(workdir, args.epochs))
        manifest = folder.verify()
        source = base_gguf(manifest, folder.path)
        from safetensors.torch import load_file

        if not folder.base_state.is_file():
            raise SystemExit(f"{folder.path} has no {folder.base_state.name}: the update is measured against the "
                             "state 0 that methods with a fresh adapter per task keep (inclora, jumplora+inclora)")
        base = load_file(str(folder.base_state))
        names = [f"{n}.weight" for n in base]
        merged = {}
        for path in folder.weight_files():
            merged.update({k: v for k, v in load_file(str(path)).items() if k in names})
        update = {f"{n}.weight": merged[f"{n}.weight"] - w for n, w in base.items()}
        w_source = gguf_weights(source, names)
        source_mb = source.stat().st_size / 1e6
        rows = [common.metadata(device, "fp32", model_folder=str(folder.path), source=str(source),
                                tensors=len(names), update_rel_norm=_update_size(update, w_source))]
        merged_acc, merged_said = (None, None) if args.quick else answers(str(folder.path), folder)
        rows.append({"name": "merged model (safetensors)", "gamma": None, "ms": None, "peak_mib": None,
                     "rel_err_mean": 0.0, "rel_err_max": 0.0, "size_mb": round(sum(
                         p.stat().st_size for p in folder.weight_files()) / 1e6, 1), "accuracy": merged_acc,
                     "agree_pct": None if args.quick else 100.0})
        errors = relative_errors(w_source, w_source, update)
        rows.append(_row("source GGUF, no update", None, errors, source, source_mb, folder, merged_said, args.quick))
        for gguf_type in GGUF_TYPES:
            out = workdir / f"export-{gguf_type}.gguf"
            with common.peak_memory(torch.device("cpu")) as peak:
                started = time.perf_counter()
                done = export_gguf(folder.path, out, gguf_type, log=lambda line: None)
                ms = (time.perf_counter() - started) * 1e3
            errors = relative_errors(gguf_weights(out, names), w_source, update)
            row = _row(f"export {gguf_type} ({'/'.join(done['types'])})", ms, errors, out, source_mb, folder,
                       merged_said, args.quick)
            rows.append({**row, "peak_mib": peak["mib"]})
            print(f"  {row['name']}: rel_err mean {row['rel_err_mean']:.4f} max {row['rel_err_max']:.4f}, "
                  f"{row['size_mb']} MB, accuracy {row['accuracy']}", flush=True)
            out.unlink()
    common.report(rows, ["name", "rel_err_mean", "rel_err_max", "size_mb", "size_vs_source", "accuracy", "agree_pct",
                         "ms", "peak_mib"], args.json)


def _row(name, ms, errors, path: Path, source_mb, folder, merged_said, quick) -> dict:
    size = path.stat().st_size / 1e6
    row = {"name": name, "gamma": None, "ms": None if ms is None else round(ms, 1), "peak_mib": None,
           "rel_err_mean": round(sum(errors) / len(errors), 4), "rel_err_max": round(max(errors), 4),
           "size_mb": round(size, 1), "size_vs_source": round(size / source_mb, 3), "accuracy": None, "agree_pct": None}
    if not quick:
        row["accuracy"], said = answers(str(path), folder)
        row["agree_pct"] = round(100 * sum(a == b for a, b in zip(said, merged_said)) / max(1, len(said)), 1)
    return row


def _update_size(update: dict, source: dict) -> float:
    """‖β·ΔW‖_F / ‖W_source‖_F over all adapted tensors: how small the update is next to the weights."""
    num = sum(float(torch.linalg.norm(u)) ** 2 for u in update.values()) ** 0.5
    den = sum(float(torch.linalg.norm(w)) ** 2 for w in source.values()) ** 0.5
    return round(num / den, 5)


if __name__ == "__main__":
    main()
