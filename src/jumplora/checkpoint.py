"""Crash-safe training state of a run: one checkpoint per finished task.

``RUN/checkpoints/<t>-<task>/`` (the place is jumplora.run_folder's) holds, after task t finished and
was evaluated:

* ``state.safetensors`` — the model's weights that training changed (the merged updates included;
  for the adapter methods only the adapted layers' weights, every weight for seqft, ewc and
  seqlora) and the method's own tensors (ELLA's W_past, O-LoRA's past A matrices, EWC's Fisher
  and anchor, seqlora's adapter);
* ``state.json`` — the results so far, the RNG states, a fingerprint of each weight left out,
  which resume checks on the base model it reloads (a different base model is refused), the
  SHA-256 of state.safetensors and the SHA-256 of the JSON itself (a changed byte is refused).

A checkpoint is written into a temporary folder that is renamed into place, so a crash (even
SIGKILL) leaves either the whole checkpoint or none. Resuming loads the newest one and restores the
RNG states, so the tasks after it run exactly as they would have without the interruption.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from jumplora.errors import JumploraError
from jumplora.files import follow_umask, json_sha256, save_tensors, sha256

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
MODEL_PREFIX = "model/"
FORMAT, VERSION = "jumplora-checkpoint", 2


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
                    info: dict, changed: set[str] | None = None) -> None:
    """Write the checkpoint ``folder`` atomically (a temporary folder renamed into place).

    ``changed``: the state_dict keys that can differ from the base model (None: all). The others
    are not stored, only their :func:`fingerprints`, for :func:`check_base` on resume. ``info``
    (the index of the task, the record so far) goes into state.json beside the RNG states; the
    tensors' SHA-256 and the SHA-256 of the JSON itself are recorded there and checked on load.
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
    save_tensors(_unshare(tensors), tmp / STATE_TENSORS)
    values = {"format": FORMAT, "version": VERSION, **info, "rng": rng_json, "base": base,
              "tensors_sha256": sha256(tmp / STATE_TENSORS)}
    (tmp / STATE_JSON).write_text(json.dumps({**values, "sha256": json_sha256(values)}))
    follow_umask(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """(model state, strategy tensors, info with RNG states). A checkpoint whose JSON or tensors do
    not match their SHA-256, or that records none, is a JumploraError that names it."""
    try:
        info = json.loads((folder / STATE_JSON).read_text())
        if not isinstance(info, dict):
            raise ValueError(f"{STATE_JSON} is not a JSON object")
        recorded = info.pop("sha256", None)
        if info.get("format") == FORMAT:
            if recorded != json_sha256(info):
                raise ValueError(f"{STATE_JSON} does not match its SHA-256 (it was edited)")
            expected = info.get("tensors_sha256")
        else:  # written before 2026-12-07: the hash covers the tensors only
            expected = recorded
        if not isinstance(expected, str):
            raise ValueError(f"{STATE_JSON} records no SHA-256 of {STATE_TENSORS}")
        if sha256(folder / STATE_TENSORS) != expected:
            raise ValueError(f"{STATE_TENSORS} does not match its SHA-256 in {STATE_JSON}")
        if not isinstance(info.get("index"), int) or not isinstance(info.get("results"), dict):
            raise ValueError(f"{STATE_JSON} lacks its task index or its results")
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
