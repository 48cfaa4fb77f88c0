"""Crash-safe state of a run: one checkpoint per finished task, and the manifest of task updates.

``RUN/checkpoints/<t>-<task>/`` holds, after task t finished and was evaluated:

* ``state.safetensors`` — the model's weights that training changed (the merged updates included;
  for the adapter methods only the adapted layers' weights, every weight for seqft, ewc and
  seqlora) and the method's own tensors (ELLA's W_past, O-LoRA's past A matrices, EWC's Fisher
  and anchor, seqlora's adapter);
* ``state.json`` — the results so far, the RNG states, and a fingerprint of each weight left out,
  which resume checks on the base model it reloads (a different base model is refused).

A checkpoint is written into a temporary folder that is renamed into place, so a crash (even
SIGKILL) leaves either the whole checkpoint or none. Resuming loads the newest one and restores the
RNG states, so the tasks after it run exactly as they would have without the interruption.

``RUN/deltas/manifest.json`` lists every task's update file with its SHA-256; ``rollback`` and
``apply`` refuse a file whose hash or shapes do not match.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from jumplora.errors import JumploraError

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
MODEL_PREFIX = "model/"


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """The torch (CPU and CUDA), numpy and Python generators, as tensors and JSON."""
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda{i}"] = state
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    python = random.getstate()
    return tensors, {"numpy": [name, keys.tolist(), pos, has_gauss, gauss],
                     "python": [python[0], list(python[1]), python[2]]}


def restore_rng(tensors: dict[str, torch.Tensor], states: dict) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save_checkpoint(folder: Path, model: torch.nn.Module, strategy_tensors: dict[str, torch.Tensor],
                    info: dict, keep: int = 2, changed: set[str] | None = None) -> None:
    """Write ``folder`` atomically, then keep only the ``keep`` newest checkpoints beside it.

    ``changed``: the state_dict keys that can differ from the base model (None: all). The others
    are not stored, only their :func:`fingerprints`, for :func:`check_base` on resume.
    """
    rng_tensors, rng_json = rng_state()
    state = model.state_dict()
    kept = set(state) if changed is None else set(state) & changed
    tensors = {MODEL_PREFIX + k: v.detach().cpu().contiguous() for k, v in state.items() if k in kept}
    tensors.update({k: v.detach().cpu().contiguous() for k, v in strategy_tensors.items()})
    tensors.update(rng_tensors)
    base = fingerprints({k: v for k, v in state.items() if k not in kept})
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_unshare(tensors), str(tmp / STATE_TENSORS))
    # The tensors' SHA-256, checked on resume: a changed byte is refused, not trained on.
    digest = sha256(tmp / STATE_TENSORS)
    (tmp / STATE_JSON).write_text(json.dumps({**info, "rng": rng_json, "base": base, "sha256": digest}))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    done = sorted(p for p in folder.parent.iterdir() if p.is_dir() and not p.name.endswith(".tmp"))
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return None
    done = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.endswith(".tmp"))
    return done[-1] if done else None


def load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """(model state, strategy tensors, info with RNG states); a damaged checkpoint is a JumploraError."""
    try:
        info = json.loads((folder / STATE_JSON).read_text())
        expected = info.get("sha256")  # absent from checkpoints written before it was recorded
        if expected is not None and sha256(folder / STATE_TENSORS) != expected:
            raise ValueError(f"{STATE_TENSORS} does not match its SHA-256 in {STATE_JSON}")
        tensors = load_file(str(folder / STATE_TENSORS))
    except (OSError, SafetensorError, ValueError) as error:
        raise JumploraError(
            f"checkpoint {folder} is damaged ({str(error).splitlines()[0]}): delete it to resume from the one before"
        ) from None
    model = {k[len(MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
    rest = {k: v for k, v in tensors.items() if not k.startswith(MODEL_PREFIX)}
    return model, rest, info


@torch.no_grad()
def fingerprints(tensors: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """Per tensor [Σx, Σx²] in float64: enough to tell another model's weights (or another dtype)
    from the ones a run started with, computed on the tensors' device with one transfer at the end."""
    if not tensors:
        return {}
    sums = []
    for value in tensors.values():
        exact = value.double()  # one fp64 copy per tensor, for both sums
        sums.append(torch.stack([exact.sum(), exact.square().sum()]))
    device = sums[0].device
    return dict(zip(tensors, torch.stack([pair.to(device) for pair in sums]).tolist()))


def check_base(state: dict[str, torch.Tensor], expected: dict[str, list[float]], where: Path) -> None:
    """Refuse to resume on a base model whose weights are not the ones the checkpoint left out."""
    missing = sorted(set(expected) - set(state))
    if missing:
        raise JumploraError(f"checkpoint {where} expects weights the model lacks ({missing[0]}): resume with the "
                            "run's own model")
    found = fingerprints({k: state[k] for k in expected})
    for key, (total, squares) in expected.items():
        got = found[key]
        # The same weights give the same sums up to the summation order (another device): far
        # inside 1e-9 of the scale √(n·Σx²) that bounds |Σx|. Other weights miss by far more.
        if abs(got[0] - total) > 1e-9 * (squares * state[key].numel()) ** 0.5 or abs(got[1] - squares) > 1e-9 * squares:
            raise JumploraError(f"the model's {key} is not the one the run started from (checkpoint {where}): "
                                "resume with the run's own base model and precision")


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share memory (tied embeddings): store each one on its own.
    seen, out = set(), {}
    for key, value in tensors.items():
        pointer = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
        out[key] = value.clone() if pointer in seen else value
        seen.add(pointer)
    return out


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_delta(run_dir: Path, index: int, task: str, file: Path) -> None:
    """Add (or replace) task ``index``'s entry in ``deltas/manifest.json``, atomically."""
    manifest_path = run_dir / "deltas" / "manifest.json"
    entries = read_manifest(run_dir) if manifest_path.is_file() else []
    entries = [e for e in entries if e["index"] != index] + [
        {"index": index, "task": task, "file": file.name, "sha256": sha256(file)}]
    write_json(manifest_path, sorted(entries, key=lambda e: e["index"]))


def read_manifest(run_dir: Path) -> list[dict]:
    path = run_dir / "deltas" / "manifest.json"
    if not path.is_file():
        raise JumploraError(f"{run_dir} has no deltas/manifest.json: pass the folder of one method and seed "
                            "(OUTPUT/<method>/seed<k>) of a run that merges per-task updates")
    return load_manifest(path)


def load_manifest(path: Path) -> list[dict]:
    """The entries of a manifest.json file (index, task, file, sha256); anything else is a one-line error."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        raise JumploraError(f"{path} is not valid JSON: re-run the task or restore the file") from None
    fields = {"index": int, "task": str, "file": str, "sha256": str}
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and all(isinstance(e.get(k), kind) for k, kind in fields.items()) for e in entries):
        raise JumploraError(f"{path} must be a list of {{index, task, file, sha256}} entries: restore the file")
    return entries


def check_sha256(path: Path, expected: str) -> Path:
    """``path``, after checking that it exists and has the SHA-256 its manifest lists."""
    if not path.is_file() or sha256(path) != expected:
        raise JumploraError(f"{path} is missing or does not match its SHA-256 in the manifest: refusing to apply it")
    return path


def delta_entry(run_dir: Path, task: str) -> tuple[Path, dict]:
    """The update file of ``task`` and its manifest entry, after checking its SHA-256."""
    entries = [e for e in read_manifest(run_dir) if e["task"] == task]
    if not entries:
        known = ", ".join(e["task"] for e in read_manifest(run_dir))
        raise JumploraError(f"no update for task {task!r} in {run_dir}: its tasks are {known}")
    return check_sha256(run_dir / "deltas" / entries[0]["file"], entries[0]["sha256"]), entries[0]


class OutputLock:
    """An exclusive lock on an output folder for the length of a run: a second run into the same
    folder is refused at once, in one line, instead of the two mixing their files. The lock is
    the kernel's (flock): a killed run releases it."""

    NAME = ".jumplora.lock"

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / self.NAME
        self.handle = None

    def __enter__(self) -> OutputLock:
        import fcntl

        self.handle = open(self.path, "a")  # made once, never written: a resume of a finished run changes nothing
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise JumploraError(f"another jumplora run is writing to {self.path.parent}: wait for it to finish, or "
                                "pass another --output") from None
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()  # closing releases the lock


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=1))


def write_text(path: Path, text: str) -> None:
    """Write atomically: a reader (or a crash) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
