"""LoRA and JumpLoRA adapters: configuration, the adapted layer, injection, merge and saved updates."""

from jumplora.adapters.config import AdapterConfig, JumpSchedule
from jumplora.adapters.layer import AdaptedLinear, Gamma, Kernels, ThresholdGroup
from jumplora.adapters.model import AdapterSet
from jumplora.adapters.update import TaskUpdate

__all__ = ["AdaptedLinear", "AdapterConfig", "AdapterSet", "Gamma", "JumpSchedule", "Kernels", "TaskUpdate",
           "ThresholdGroup"]
