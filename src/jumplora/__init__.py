"""jumplora: continual learning of language models with sparse JumpLoRA adapters."""

from jumplora.adapters import AdaptedLinear, AdapterConfig, AdapterSet, JumpSchedule, TaskUpdate
from jumplora.errors import JumploraError
from jumplora.gate import jump_gate
from jumplora.strategies import EllaPenalty

__version__ = "0.1.0"


def __getattr__(name: str):
    # The continual model (jumplora.api) loads transformers: imported when first asked for.
    if name == "ContinualModel":
        from jumplora.api import ContinualModel

        return ContinualModel
    raise AttributeError(f"module 'jumplora' has no attribute {name!r}")


__all__ = [
    "AdaptedLinear",
    "AdapterConfig",
    "AdapterSet",
    "ContinualModel",
    "EllaPenalty",
    "JumpSchedule",
    "JumploraError",
    "TaskUpdate",
    "__version__",
    "jump_gate",
]
