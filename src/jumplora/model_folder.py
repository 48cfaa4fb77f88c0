"""A continually trained model on disk, with one owner for every path in it.

    model/
      config.json, model.safetensors, tokenizer files     a plain transformers folder
      jumplora-model.json                                  the ModelManifest (jumplora.manifest)
      updates/<t>-<task>.safetensors                       every update file its ledger names

A model folder appears whole or not at all: it is written beside its place, read back, and
renamed into place. Every command that reads one checks it first (:meth:`ModelFolder.verify`).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from jumplora.errors import JumploraError
from jumplora.files import check_new_output, follow_umask, publish_folder, sha256
from jumplora.manifest import MANIFEST_FILE, ModelManifest

UPDATES = "updates"


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

    def update_file(self, name: str) -> Path:
        from jumplora.run_folder import inside

        return inside(self.updates, name)

    def manifest(self) -> ModelManifest:
        """The manifest; a folder without one, or a damaged one, is a one-line error."""
        if not self.manifest_file.is_file():
            raise JumploraError(f"{self.path} has no {MANIFEST_FILE}: pass a model folder written by jumplora "
                                "(OUTPUT/<method>/seed<k>/model, or one from rollback/apply)")
        return ModelManifest.read_file(self.manifest_file)

    def save(self, model, tokenizer, manifest: ModelManifest, updates: dict[str, Path] | None = None,
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
            for name, source in (updates or {}).items():  # the files its ledger names, by those names
                written.updates.mkdir(exist_ok=True)
                shutil.copyfile(source, written.update_file(name))
            follow_umask(tmp)  # safetensors writes 0600; the JSON beside it gets the umask's mode
            manifest.write(written.manifest_file, weights={p.name: sha256(p) for p in written.weight_files()})
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

    def verify(self, hashes: bool = True) -> ModelManifest:
        """The manifest, after checking that the config, the weights and the update files can be read
        and (``hashes``) that every weight and update file has the SHA-256 the manifest records."""
        from safetensors import SafetensorError, safe_open

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


def load_trained(folder: Path, device: str = "cpu"):
    """(model, tokenizer, family, manifest) of a model folder written by jumplora, checked first."""
    from jumplora.families import load_model

    manifest = ModelFolder(Path(folder)).verify()
    model, tokenizer, family = load_model(str(folder), family=manifest.family, device=device,
                                          settings=manifest.settings())
    return model.eval(), tokenizer, family, manifest
