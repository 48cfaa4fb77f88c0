"""Continual-learning methods: a registry of rows, two strategies that wire them into the training
loop, and the penalties (ELLA, O-LoRA, EWC) as plain objects with their math."""

from jumplora.strategies.ella import EllaPenalty
from jumplora.strategies.ewc import EwcPenalty
from jumplora.strategies.olora import OLoraPenalty
from jumplora.strategies.penalty import Penalty, TaskEnd
from jumplora.strategies.registry import METHODS, MethodSpec, parse_method, register

__all__ = ["METHODS", "EllaPenalty", "EwcPenalty", "MethodSpec", "OLoraPenalty", "Penalty", "TaskEnd",
           "parse_method", "register"]
