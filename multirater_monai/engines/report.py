"""One line on the console per epoch: stage, training loss, validation metrics, best so far, time."""

from __future__ import annotations

import logging
import time
from typing import Any

from ignite.engine import Engine, Events

__all__ = ["EpochReport"]


class EpochReport:
    """Log one line per training epoch, after validation, e.g.::

        epoch 12/40 [joint] train_loss 0.3121 | val_dice 0.8123 (best 0.8200 at epoch 9) | 6.1 s

    Attach to the trainer after the ``ValidationHandler`` (handlers run in the order they are listed).

    Args:
        evaluator: the validation engine whose metrics are reported (None: training metrics only).
        logger_name: the logger written to (the bundle's ``logging.conf`` sends it to the console).
    """

    def __init__(self, evaluator: Engine | None = None, logger_name: str = "multirater") -> None:
        self.evaluator = evaluator
        self.logger = logging.getLogger(logger_name)
        self._start = time.perf_counter()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def epoch_started(self, engine: Engine) -> None:
        self._start = time.perf_counter()

    def line(self, engine: Engine) -> str:
        state = engine.state
        stage = getattr(state, "stage", None)
        parts = [f"epoch {state.epoch}/{state.max_epochs}" + (f" [{stage}]" if stage else "")]
        train = " ".join(f"{k} {_fmt(v)}" for k, v in state.metrics.items())
        if train:
            parts[0] += " " + train
        if self.evaluator is not None and self.evaluator.state.epoch == state.epoch and self.evaluator.state.metrics:
            ev = self.evaluator.state
            text = " ".join(f"{k} {_fmt(v)}" for k, v in ev.metrics.items())
            key = getattr(ev, "key_metric_name", None)
            if key is not None and getattr(ev, "best_metric_epoch", -1) > 0:
                text += f" (best {_fmt(ev.best_metric)} at epoch {ev.best_metric_epoch})"
            parts.append(text)
        parts.append(f"{time.perf_counter() - self._start:.1f} s")
        return " | ".join(parts)

    def __call__(self, engine: Engine) -> None:
        self.logger.info(self.line(engine))


def _fmt(value: Any) -> str:
    try:
        return f"{float(value):.4f}"
    except (TypeError, ValueError):
        return str(value)
