"""Change an attribute of training objects (a loss's weight, say) linearly with the trainer's iteration."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ignite.engine import Engine, Events

__all__ = ["LinearAttributeSchedule"]


class LinearAttributeSchedule:
    """Set ``attribute`` of every object in ``targets`` before each iteration, going linearly from ``start``
    at iteration 0 to ``end`` at ``iterations`` and staying at ``end`` after.

    The value is computed from ``engine.state.iteration`` alone, so a resumed run continues the schedule
    exactly where it stopped. CM-Net anneals its class-balanced likelihood into the paper's one with it::

        {"_target_": "multirater_monai.engines.LinearAttributeSchedule", "targets": ["@loss", "@warmup_loss"],
         "attribute": "class_balance", "start": 1.0, "end": 0.0, "iterations": "$@max_epochs * len(@train#dataloader)"}

    Args:
        targets: the objects whose attribute is set (each must already have it).
        attribute: the attribute's name.
        start: value at the first iteration.
        end: value from iteration ``iterations`` on.
        iterations: length of the ramp in optimiser steps (0: ``end`` from the start).
    """

    def __init__(
        self, targets: Sequence[Any] | Any, attribute: str, start: float, end: float, iterations: int
    ) -> None:
        self.targets = list(targets) if isinstance(targets, (list, tuple)) else [targets]
        for target in self.targets:
            if not hasattr(target, attribute):
                raise AttributeError(f"{type(target).__name__} has no attribute {attribute!r} to schedule.")
        if int(iterations) < 0:
            raise ValueError(f"iterations must be >= 0, got {iterations}.")
        self.attribute = attribute
        self.start, self.end, self.iterations = float(start), float(end), int(iterations)

    def value(self, iteration: int) -> float:
        """The value at ``iteration`` (0-based: the number of optimiser steps already taken)."""
        if self.iterations == 0 or iteration >= self.iterations:
            return self.end
        return self.start + (self.end - self.start) * iteration / self.iterations

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        value = self.value(engine.state.iteration - 1)  # Ignite counts the starting iteration already
        for target in self.targets:
            setattr(target, self.attribute, value)
