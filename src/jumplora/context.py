"""What training and evaluating a run need, held in one place (as torchtune's recipe holds its state).

A :class:`RunContext` is made once per method and seed by the stream loop and handed to
``train.train_task``, ``evaluation.evaluate_seen`` and ``lambda_search.search_lambda``, so none of
them takes the settings, the device, the model, its family and the method one by one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass
class RunContext:
    config: Any  # the RunConfig of the run
    accelerator: Any  # accelerate.Accelerator: the device, autocast, data parallelism
    model: nn.Module
    tokenizer: Any
    family: Any  # families.Family: batches, loss, prediction
    strategy: Any  # strategies.methods.Strategy: the adapter and the penalty of the method
    ranker: Any = None  # a second, ranking causal family (--also-rank), or None
    log: Callable[[str], None] = print

    @property
    def main(self) -> bool:
        """Whether this is the process that writes files (the only one, without data parallelism)."""
        return self.accelerator.is_main_process
