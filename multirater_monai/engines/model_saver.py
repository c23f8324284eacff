"""Handler that keeps ``models/model.pt``: the best network so far as a plain CPU state dict."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from multirater_monai.engines.adapters import unwrap_network
from multirater_monai.engines.stages import MultiStageSchedule

__all__ = ["BestModelSaver"]

logger = logging.getLogger(__name__)


class BestModelSaver:
    """Save the network's CPU state dict whenever the evaluator's key metric improves.

    The file is written atomically (temporary file, then rename), so an interruption never leaves a
    truncated model. Attach to the evaluator (the engine whose ``state.metrics`` holds the key metric).
    With a ``schedule``, the model is chosen only while the schedule allows it (its last acting stage has
    ``select_model: true``), e.g. only after a prototype projection.

    Args:
        network: the network to save (DDP and adapter wrappers are unwrapped).
        filepath: where to write the state dict, e.g. ``models/model.pt``.
        key_metric_name: metric to maximise; defaults to the engine's ``key_metric_name``.
        greater_is_better: maximise (default) or minimise the metric.
        schedule: the training's :class:`~multirater_monai.engines.MultiStageSchedule`, for stage-limited selection.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        filepath: str | os.PathLike,
        key_metric_name: str | None = None,
        greater_is_better: bool = True,
        schedule: MultiStageSchedule | None = None,
    ) -> None:
        self.network = network
        self.filepath = Path(filepath)
        self.key_metric_name = key_metric_name
        self.sign = 1.0 if greater_is_better else -1.0
        self.schedule = schedule
        self.best: float | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        name = self.key_metric_name or getattr(engine.state, "key_metric_name", None)
        if name is None or name not in engine.state.metrics:
            raise KeyError(f"BestModelSaver: metric '{name}' not computed by the engine ({list(engine.state.metrics)}).")
        value = float(engine.state.metrics[name])
        if self.schedule is not None and not self.schedule.selectable:
            stage = self.schedule.last_acted.name if self.schedule.last_acted is not None else "?"
            logger.info(f"{name}={value:.4f} not considered for {self.filepath.name}: stage '{stage}' has select_model false")
            return
        if self.best is not None and not self.sign * value > self.sign * self.best:
            return
        self.best = value
        self.save()
        logger.info(f"saved {self.filepath} ({name}={value:.4f})")

    def state_dict(self) -> dict:
        """The best value so far, so that a resumed training keeps comparing against it."""
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")

    def save(self) -> None:
        """Write the current network weights as a CPU state dict."""
        net = unwrap_network(self.network)
        state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        self.filepath.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.filepath.with_suffix(self.filepath.suffix + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.filepath)
