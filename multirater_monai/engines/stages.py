"""Multi-stage training schedules as data: warm-ups, joint phases, projections, run by one handler.

A bundle config lists its stages; :class:`MultiStageSchedule` attached to the trainer switches the
loss, the optimiser and the trainable parameters when a stage begins, and calls the stage's hooks::

    "stages": [
        {"name": "warmup", "epochs": 2, "loss_function": "@warmup_loss"},
        {"name": "joint", "epochs": 28, "loss_function": "@loss", "trainable": ["annotator"]}
    ],
    "schedule": {"_target_": "multirater_monai.engines.MultiStageSchedule", "stages": "@stages", "network": "@network"},
    "max_epochs": "$multirater_monai.engines.total_epochs(@stages)"

The stage of an epoch depends only on the epoch number, so a resumed training continues in the right
stage. Stages that swap optimisers must put every optimiser in the training checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = ["Stage", "MultiStageSchedule", "total_epochs"]

logger = logging.getLogger(__name__)


@dataclass
class Stage:
    """One stage of a schedule.

    Args:
        name: shown in logs and stored in ``engine.state.stage``.
        epochs: number of epochs of the stage (> 0).
        loss_function: replaces ``engine.loss_function`` during the stage (``None`` keeps the current one).
        optimizer: replaces ``engine.optimizer`` during the stage (``None`` keeps the current one).
        trainable: parameter-name prefixes that are trained during the stage; every other parameter is
            frozen (``requires_grad=False``). ``None`` trains all parameters.
        on_start: called with the engine when the stage begins (also when a resumed run enters it).
        on_end: called with the engine after the stage's last epoch.
    """

    name: str
    epochs: int
    loss_function: Callable | None = None
    optimizer: torch.optim.Optimizer | None = None
    trainable: Sequence[str] | None = None
    on_start: Callable[[Engine], Any] | None = None
    on_end: Callable[[Engine], Any] | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if int(self.epochs) <= 0:
            raise ValueError(f"stage '{self.name}': epochs must be positive, got {self.epochs}.")
        if isinstance(self.trainable, str):
            self.trainable = [self.trainable]


def _as_stage(stage: Stage | Mapping) -> Stage:
    if isinstance(stage, Stage):
        return stage
    known = {"name", "epochs", "loss_function", "optimizer", "trainable", "on_start", "on_end"}
    unknown = set(stage) - known
    if "name" not in stage or "epochs" not in stage:
        raise ValueError(f"a stage needs 'name' and 'epochs', got keys {sorted(stage)}.")
    return Stage(**{k: v for k, v in stage.items() if k in known}, extra={k: stage[k] for k in unknown})


def total_epochs(stages: Sequence[Stage | Mapping]) -> int:
    """Sum of the stages' epochs: the trainer's ``max_epochs``."""
    return sum(int(_as_stage(s).epochs) for s in stages)


class MultiStageSchedule:
    """Ignite handler running a list of :class:`Stage` on a trainer (e.g. MONAI ``SupervisedTrainer``).

    Args:
        stages: the stages in order, as :class:`Stage` or dicts with the same fields.
        network: the trained network, whose parameters ``trainable`` selects by name prefix
            (a ``DistributedDataParallel`` wrapper's ``module.`` prefix is ignored).
    """

    def __init__(self, stages: Sequence[Stage | Mapping], network: torch.nn.Module | None = None) -> None:
        self.stages = [_as_stage(s) for s in stages]
        if not self.stages:
            raise ValueError("a schedule needs at least one stage.")
        self.network = network
        self.current: Stage | None = None
        bounds, end = [], 0
        for stage in self.stages:
            end += int(stage.epochs)
            bounds.append(end)
        self.last_epochs = bounds  # last (1-based) epoch of each stage

    @property
    def total_epochs(self) -> int:
        return self.last_epochs[-1]

    def stage_at(self, epoch: int) -> Stage:
        """The stage that trains (1-based) ``epoch``; epochs past the schedule stay in the last stage."""
        for stage, last in zip(self.stages, self.last_epochs):
            if epoch <= last:
                return stage
        return self.stages[-1]

    def attach(self, engine: Engine) -> None:
        if engine.state.max_epochs is not None and engine.state.max_epochs > self.total_epochs:
            logger.warning(
                f"max_epochs={engine.state.max_epochs} exceeds the schedule's {self.total_epochs} epochs: "
                f"the last stage '{self.stages[-1].name}' continues."
            )
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def epoch_started(self, engine: Engine) -> None:
        stage = self.stage_at(engine.state.epoch)
        if stage is not self.current:
            self.enter(engine, stage)

    def epoch_completed(self, engine: Engine) -> None:
        stage = self.stage_at(engine.state.epoch)
        last = self.last_epochs[self.stages.index(stage)]
        if engine.state.epoch == last and stage.on_end is not None:
            stage.on_end(engine)

    def enter(self, engine: Engine, stage: Stage) -> None:
        """Switch the engine to ``stage``: loss, optimiser, trainable parameters, then ``on_start``."""
        self.current = stage
        engine.state.stage = stage.name
        if stage.loss_function is not None:
            engine.loss_function = stage.loss_function
        if stage.optimizer is not None:
            engine.optimizer = stage.optimizer
        network = self.network if self.network is not None else getattr(engine, "network", None)
        if network is not None:
            self.set_trainable(network, stage.trainable)
        logger.info(f"stage '{stage.name}' from epoch {engine.state.epoch} ({stage.epochs} epochs)")
        if stage.on_start is not None:
            stage.on_start(engine)

    @staticmethod
    def set_trainable(network: torch.nn.Module, prefixes: Sequence[str] | None) -> None:
        """Train the parameters whose name starts with one of ``prefixes`` (all if ``None``), freeze the rest."""
        module = network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network
        names = [n for n, _ in module.named_parameters()]
        if prefixes is not None:
            unmatched = [p for p in prefixes if not any(n.startswith(p) for n in names)]
            if unmatched:
                raise ValueError(f"trainable prefixes {unmatched} match no parameter of {type(module).__name__}.")
        for name, param in module.named_parameters():
            param.requires_grad_(prefixes is None or any(name.startswith(p) for p in prefixes))
