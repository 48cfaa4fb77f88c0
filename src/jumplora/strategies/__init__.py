"""Continual-learning strategies that plug into the training loop; the math lives in plain objects."""

from jumplora.strategies.ella import EllaPenalty

__all__ = ["EllaPenalty"]
