"""LoRA and JumpLoRA adapters: configuration, the adapted layer, injection, merge and saved updates."""

from jumplora.adapters.config import AdapterConfig, JumpSchedule
from jumplora.adapters.layer import AdaptedLinear, ThresholdGroup
from jumplora.adapters.model import AdapterSet
from jumplora.adapters.update import TaskUpdate

__all__ = ["AdaptedLinear", "AdapterConfig", "AdapterSet", "JumpSchedule", "TaskUpdate", "ThresholdGroup"]
