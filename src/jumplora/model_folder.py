"""A continually trained model on disk, with one owner for every path in it.

    model/
      config.json, model.safetensors, tokenizer files     a plain transformers folder
      jumplora-model.json                                  the ModelManifest (jumplora.manifest)
      updates/<t>-<task>.safetensors                       every update file its ledger names
      states/base.safetensors                              the adapted layers' weights before any
                                                           task: with the updates, the weights as
                                                           they were after each task (task states)
      states/router.safetensors                            the router's statistics per task (routing)
      training/state.safetensors, state.json              what the next task needs: the method's
                                                           state (ELLA's W_past, ...), the RNG
                                                           states, the run's record (a checkpoint)
      eval/<t>-<task>.jsonl                                each learned task's test examples (kept
                                                           to check earlier tasks again; never trained on)

The folder alone is enough to use the model (predict, evaluate) and to teach it more tasks
(``jumplora teach``). A model folder appears whole or not at all: it is written beside its place,
read back, and renamed into place. Every command that reads one checks it first
(:meth:`ModelFolder.verify`): the weights, the updates and the training state against the
SHA-256s they were written with.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from jumplora.errors import JumploraError
from jumplora.files import check_new_output, follow_umask, publish_folder, sha256
from jumplora.manifest import MANIFEST_FILE, ModelManifest

UPDATES, STATES, TRAINING, EVAL = "updates", "states", "training", "eval"
BASE_STATE, ROUTER = "base.safetensors", "router.safetensors"


@dataclass
class Extras:
    """What a model folder carries besides the transformers files and the manifest."""

    updates: dict[str, Path] = field(default_factory=dict)  # file name -> the file (the ledger's)
    base_weights: dict[str, torch.Tensor] | None = None  # state 0 of the adapted layers
    training: tuple | None = None  # (strategy tensors, info) of the last task: written as a checkpoint
    eval_data: dict[str, list] | None = None  # "<t>-<task>" -> its test examples
    router: dict[str, torch.Tensor] | None = None  # the routers' statistics (jumplora.routing)
    like: ModelFolder | None = None  # a folder whose states, eval data and router are carried over

@dataclass(frozen=True)
class ModelFolder:
    path: Path

    @property
    def manifest_file(self) -> Path:
        return self.path / MANIFEST_FILE

    @property
    def updates(self) -> Path:
        return self.path / UPDATES

    def exists(self) -> bool:
        return self.path.is_dir()

    def weight_files(self) -> list[Path]:
        return sorted(self.path.glob("*.safetensors"))

    @property
    def base_state(self) -> Path:
        return self.path / STATES / BASE_STATE

    @property
    def router_file(self) -> Path:
        return self.path / STATES / ROUTER

    @property
    def training(self) -> Path:
        return self.path / TRAINING

    @property
    def eval_folder(self) -> Path:
        return self.path / EVAL

    def update_file(self, name: str) -> Path:
        from jumplora.run_folder import inside

        return inside(self.updates, name)

    def eval_file(self, key: str) -> Path:
        from jumplora.run_folder import inside

        return inside(self.eval_folder, f"{key}.jsonl")

    def teachable(self) -> bool:
        return (self.training / "state.json").is_file()

    def eval_examples(self, index: int, task: str) -> list | None:
        """The kept test examples of learned task ``index`` (None when the folder has none)."""
        import json

        from jumplora.data.tasks import Example

        path = self.eval_file(f"{index:02d}-{task}")
        if not path.is_file():
            return None
        try:
            return [Example(**json.loads(line)) for line in path.read_text().splitlines() if line]
        except (ValueError, TypeError) as error:
            raise JumploraError(f"{path} is damaged ({str(error)[:80]}): restore the model folder") from None

    def manifest(self) -> ModelManifest:
        """The manifest; a folder without one, or a damaged one, is a one-line error."""
        if not self.manifest_file.is_file():
            raise JumploraError(f"{self.path} has no {MANIFEST_FILE}: pass a model folder written by jumplora "
                                "(OUTPUT/<method>/seed<k>/model, or one from rollback/apply)")
        return ModelManifest.read_file(self.manifest_file)

    def save(self, model, tokenizer, manifest: ModelManifest, extras: Extras | None = None,
             replace: bool = True) -> None:
        """Write the folder whole or not at all: the transformers files, the tokenizer, the update
        files and the manifest go into ``<folder>.tmp``, are read back, and the folder is renamed
        into place (replacing an older one when ``replace``; otherwise the place must be free). A
        crash at any point leaves either the old folder or the new one; a full disk is one line."""
        if not replace:
            check_new_output(self.path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Its own temporary folder: two commands writing the same new output do not meet there.
            tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-", dir=self.path.parent))
        else:
            tmp = self.path.with_name(self.path.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            written = ModelFolder(tmp)
            written._write_extras(model, extras or Extras())
            follow_umask(tmp)  # safetensors writes 0600; the JSON beside it gets the umask's mode
            manifest.sizes = written.sizes()
            manifest.write(written.manifest_file, weights={p.name: sha256(p) for p in written.weight_files()},
                           files=written.hashed_files())
            written.verify()
            publish_folder(tmp, self.path, replace)
        except (OSError, JumploraError) as error:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(error, JumploraError):
                raise
            raise JumploraError(f"could not write the model to {self.path} ({error.strerror or error}): free some space "
                                "or pass another output, then run the command again (a run: `jumplora run --resume "
                                "OUTPUT`)") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _write_extras(self, model, extras: Extras) -> None:
        import json

        from jumplora.checkpoint import save_checkpoint
        from jumplora.files import save_tensors

        for name, source in extras.updates.items():  # the files its ledger names, by those names
            self.updates.mkdir(exist_ok=True)
            shutil.copyfile(source, self.update_file(name))
        like = extras.like
        if extras.base_weights is not None:
            self.base_state.parent.mkdir(exist_ok=True)
            save_tensors({k: v.detach().cpu().contiguous() for k, v in extras.base_weights.items()}, self.base_state)
        elif like is not None and like.base_state.is_file():
            self.base_state.parent.mkdir(exist_ok=True)
            shutil.copyfile(like.base_state, self.base_state)
        if extras.router is not None:
            self.router_file.parent.mkdir(exist_ok=True)
            save_tensors({k: v.contiguous() for k, v in extras.router.items()}, self.router_file)
        elif like is not None and like.router_file.is_file():
            self.router_file.parent.mkdir(exist_ok=True)
            shutil.copyfile(like.router_file, self.router_file)
        if extras.training is not None:
            tensors, info = extras.training
            # The model's own weights are the base of this checkpoint: none is stored, every one is
            # fingerprinted, so a training state is refused on any other weights.
            save_checkpoint(self.training, model, tensors, info, changed=set())
        if extras.eval_data is not None:
            self.eval_folder.mkdir(exist_ok=True)
            for key, examples in extras.eval_data.items():
                lines = "".join(json.dumps({"sentence": e.sentence, "label": e.label}, ensure_ascii=False) + "\n"
                                for e in examples)
                self.eval_file(key).write_text(lines)
        elif like is not None and like.eval_folder.is_dir():
            shutil.copytree(like.eval_folder, self.eval_folder)

    def hashed_files(self) -> dict[str, str]:
        """SHA-256 of the files besides the weights that a later command trusts: the base state,
        the training state, the kept test examples (the updates are in the ledger)."""
        paths = [self.base_state, self.router_file, *sorted(self.training.glob("*")),
                 *sorted(self.eval_folder.glob("*.jsonl"))]
        return {str(p.relative_to(self.path)): sha256(p) for p in paths if p.is_file()}

    def sizes(self) -> dict[str, float]:
        """MB on disk of the weights, the updates, the task states, the training state, the test examples."""
        def mb(paths) -> float:
            return round(sum(p.stat().st_size for p in paths if p.is_file()) / 1e6, 3)

        parts = {"weights_mb": mb(self.weight_files()), "updates_mb": mb(self.updates.glob("*")),
                 "states_mb": mb([self.base_state, self.router_file]), "training_mb": mb(self.training.glob("*")),
                 "eval_mb": mb(self.eval_folder.glob("*"))}
        return {**parts, "total_mb": mb(p for p in self.path.rglob("*"))}

    def verify(self, hashes: bool = True) -> ModelManifest:
        """The manifest, after checking that the config, the weights and the update files can be read
        and (``hashes``) that every weight and update file has the SHA-256 the manifest records."""
        from safetensors import SafetensorError, safe_open

        if not self.path.is_dir():
            raise JumploraError(f"{self.path} is not a folder: pass a model folder written by jumplora "
                                "(OUTPUT/<method>/seed<k>/model)")
        try:
            json_config = (self.path / "config.json").read_text()
            if not json_config.strip().startswith("{"):
                raise ValueError("config.json is not a JSON object")
            weights = self.weight_files()
            if not weights:
                raise ValueError("no *.safetensors weights")
            for path in weights:
                with safe_open(str(path), framework="pt") as handle:
                    for key in handle.keys():
                        handle.get_slice(key)
        except (OSError, ValueError, SafetensorError) as error:
            raise JumploraError(f"the model folder {self.path} is incomplete ({str(error).splitlines()[0]}): "
                                "resume the run (or re-run the command) to write it again") from None
        manifest = self.manifest()
        if hashes:
            self._check_hashes(manifest, weights)
        return manifest

    def _check_hashes(self, manifest: ModelManifest, weights: list[Path]) -> None:
        recorded = manifest.weights or {}
        for path in weights if recorded else []:  # a manifest of version 1 recorded none
            if recorded.get(path.name) != sha256(path):
                raise JumploraError(f"{path} does not match its SHA-256 in {MANIFEST_FILE}: the weights were changed "
                                    "or damaged; write the model again (resume the run, or re-run the command)")
        for entry in manifest.ledger:
            update = self.updates / entry.file
            if update.is_file() and sha256(update) != entry.sha256:
                raise JumploraError(f"{update} does not match its SHA-256 in {MANIFEST_FILE}: restore it")
        for name, digest in (manifest.files or {}).items():
            path = self.path / name
            if not path.is_file() or sha256(path) != digest:
                raise JumploraError(f"{path} is missing or does not match its SHA-256 in {MANIFEST_FILE}: restore the "
                                    "model folder")


def load_trained(folder: Path, device: str = "cpu"):
    """(model, tokenizer, family, manifest) of a model folder written by jumplora, checked first."""
    from jumplora.families import load_model

    manifest = ModelFolder(Path(folder)).verify()
    model, tokenizer, family = load_model(str(folder), family=manifest.family, device=device,
                                          settings=manifest.settings())
    return model.eval(), tokenizer, family, manifest
