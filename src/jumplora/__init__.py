"""jumplora: continual learning of language models with sparse JumpLoRA adapters."""

from jumplora.adapters import AdaptedLinear, AdapterConfig, AdapterSet, JumpSchedule, TaskUpdate
from jumplora.errors import JumploraError
from jumplora.gate import jump_gate
from jumplora.strategies import EllaPenalty

__version__ = "0.1.0"

__all__ = [
    "AdaptedLinear",
    "AdapterConfig",
    "AdapterSet",
    "EllaPenalty",
    "JumpSchedule",
    "JumploraError",
    "TaskUpdate",
    "__version__",
    "jump_gate",
]
