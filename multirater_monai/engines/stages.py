"""Multi-stage training schedules as data: warm-ups, joint phases, projections, run by one handler.

A bundle config lists its stages; :class:`MultiStageSchedule` (given to
:class:`~multirater_monai.engines.MultiRaterTrainer`) switches the loss, the optimiser, the training step
and the trainable parameters when an *epoch stage* begins, and runs each *action stage* once, between
the epochs around it::

    "stages": [
        {"name": "warmup", "epochs": "@warmup_epochs", "loss_function": "@warmup_loss"},
        {"name": "joint", "epochs": "$@max_epochs - @warmup_epochs", "loss_function": "@loss"},
        {"name": "projection", "action": "$@projector.project"}
    ]

- An epoch stage trains ``epochs`` epochs; 0 skips it (an ablation without a warm-up sets its epochs
  to 0). ``trainable`` freezes every parameter outside the listed name prefixes, and the modules whose
  parameters are all frozen are put in eval mode (their batch-norm statistics do not move).
- An action stage is a callable ``action(engine)`` run once, with the network in eval mode and under
  ``no_grad`` (a pass over the training set that projects prototypes, a teacher captured from the
  network, group weights thresholded). It runs at the end of the epoch before it, before validation and
  checkpointing, or at the start of training if no epoch precedes it.
- ``select_model: false`` keeps ``models/model.pt`` from being chosen while the stage (or, for an action,
  what follows it until the next stage) is the last one that acted: see
  :class:`~multirater_monai.engines.BestModelSaver`.
- An unknown key in a stage is an error, so a typo in a config is not silently ignored.

The stage of an epoch depends only on the epoch number, and the schedule's state (which actions are
done, every stage optimiser, the state of each action's owner, e.g. a teacher) is in the training
checkpoint (``training_state`` holds the schedule): a resumed run continues in the right stage, does
not run again an action done before the checkpoint and does not skip one that was not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from ignite.engine import Engine, Events

from multirater_monai.engines.adapters import unwrap_network

__all__ = ["Stage", "MultiStageSchedule", "epochs_for_iterations", "total_epochs", "frozen_modules"]

logger = logging.getLogger(__name__)


@dataclass
class Stage:
    """One stage of a schedule: an epoch stage (``epochs`` >= 0) or an action stage (``action``).

    Args:
        name: shown in logs and stored in ``engine.state.stage``; unique in a schedule.
        epochs: number of epochs of an epoch stage (0 skips it); 0 for an action stage.
        loss_function: replaces ``engine.loss_function`` during the stage (``None`` keeps the current one).
        optimizer: replaces ``engine.optimizer`` during the stage (``None`` keeps the current one).
        trainable: parameter-name prefixes trained during the stage; every other parameter is frozen and
            modules without trainable parameters run in eval mode. ``None`` trains all parameters.
        step: replaces ``engine.train_step`` during the stage (``None`` keeps the current one).
        action: ``action(engine)``, run once (action stage).
        select_model: whether the best model may be chosen while this stage is the last that acted.
        on_start: called with the engine when an epoch stage begins (also when a resumed run enters it).
        on_end: called with the engine after the epoch stage's last epoch.
    """

    name: str
    epochs: int = 0
    loss_function: Callable | None = None
    optimizer: torch.optim.Optimizer | None = None
    trainable: Sequence[str] | None = None
    step: Callable | None = None
    action: Callable[[Engine], Any] | None = None
    select_model: bool = True
    on_start: Callable[[Engine], Any] | None = None
    on_end: Callable[[Engine], Any] | None = None

    def __post_init__(self) -> None:
        self.epochs = int(self.epochs)
        if self.epochs < 0:
            raise ValueError(f"stage '{self.name}': epochs must be >= 0, got {self.epochs}.")
        if self.action is not None:
            if self.epochs:
                raise ValueError(f"stage '{self.name}': an action stage has no epochs (got {self.epochs}).")
            if not callable(self.action):
                raise TypeError(f"stage '{self.name}': action must be callable, got {type(self.action).__name__}.")
            extra = [f for f in ("loss_function", "optimizer", "trainable", "step", "on_start", "on_end") if getattr(self, f) is not None]
            if extra:
                raise ValueError(f"stage '{self.name}': an action stage takes no {extra}.")
        if isinstance(self.trainable, str):
            self.trainable = [self.trainable]
        if not isinstance(self.select_model, bool):
            raise TypeError(f"stage '{self.name}': select_model must be true or false, got {self.select_model!r}.")

    @property
    def is_action(self) -> bool:
        return self.action is not None


STAGE_KEYS = tuple(f.name for f in fields(Stage))


def _as_stage(stage: Stage | Mapping) -> Stage:
    if isinstance(stage, Stage):
        return stage
    if not isinstance(stage, Mapping):
        raise TypeError(f"a stage is a dict or a Stage, got {type(stage).__name__}.")
    unknown = sorted(set(stage) - set(STAGE_KEYS))
    name = stage.get("name", "?")
    if unknown:
        raise ValueError(f"stage '{name}': unknown key(s) {unknown}; a stage takes {list(STAGE_KEYS)}.")
    if "name" not in stage:
        raise ValueError(f"a stage needs a 'name', got keys {sorted(stage)}.")
    if "epochs" not in stage and "action" not in stage:
        raise ValueError(f"stage '{name}': give 'epochs' (an epoch stage) or 'action' (an action stage).")
    return Stage(**stage)


def total_epochs(stages: Sequence[Stage | Mapping]) -> int:
    """Sum of the stages' epochs: the trainer's ``max_epochs``."""
    return sum(_as_stage(s).epochs for s in stages)


def epochs_for_iterations(iterations: int, epoch_length: int) -> int:
    """The fewest epochs of ``epoch_length`` iterations that give at least ``iterations`` optimiser steps.

    A stage whose length the method defines in iterations (a warm-up "for sufficient iterations") keeps that
    length whatever the dataset size: ``"epochs": "$epochs_for_iterations(@warmup_iterations,
    len(@train#dataloader))"`` is 3 epochs of 13 batches on 200 images and 30 epochs on 16 images (batch 16).
    The data loader's length counts what the epoch really runs (``drop_last``, a distributed sampler's share).
    0 iterations is 0 epochs (no stage).
    """
    iterations, epoch_length = int(iterations), int(epoch_length)
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}.")
    if epoch_length < 1:
        raise ValueError(f"an epoch must have at least one iteration, got {epoch_length} (is the training data empty?).")
    return -(-iterations // epoch_length)


def frozen_modules(network: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules of ``network`` that hold parameters, none of which requires gradients (to run in eval mode)."""
    out = []
    for module in unwrap_network(network).modules():
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            out.append(module)
    return out


class MultiStageSchedule:
    """Runs a list of :class:`Stage` on a trainer (``MultiRaterTrainer(schedule=...)`` attaches it first).

    Args:
        stages: the stages in order, as :class:`Stage` or dicts with the same fields.
        network: the trained network, whose parameters ``trainable`` selects by name prefix
            (DDP and adapter wrappers are looked through).
    """

    def __init__(self, stages: Sequence[Stage | Mapping], network: torch.nn.Module | None = None) -> None:
        self.stages = [_as_stage(s) for s in stages]
        if not any(s.epochs > 0 for s in self.stages):
            raise ValueError("a schedule needs at least one stage with epochs > 0.")
        names = [s.name for s in self.stages]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"stage names must be unique, {duplicated} repeat.")
        self.network = network
        self.current: Stage | None = None  # the epoch stage being trained
        self.last_acted: Stage | None = None  # the stage (epoch or action) that last changed the network
        self.actions_done: set[str] = set()
        self.starts: dict[str, int] = {}  # epochs before each stage
        end = 0
        for stage in self.stages:
            self.starts[stage.name] = end
            end += stage.epochs
        self.total_epochs = end

    @property
    def epoch_stages(self) -> list[Stage]:
        return [s for s in self.stages if s.epochs > 0]

    @property
    def action_stages(self) -> list[Stage]:
        return [s for s in self.stages if s.is_action]

    @property
    def selectable(self) -> bool:
        """Whether the best model may be chosen now (the last stage that acted allows it)."""
        return self.last_acted is None or self.last_acted.select_model

    def last_epoch(self, stage: Stage) -> int:
        return self.starts[stage.name] + stage.epochs

    def stage_at(self, epoch: int) -> Stage:
        """The epoch stage that trains (1-based) ``epoch``; epochs past the schedule stay in the last one."""
        for stage in self.epoch_stages:
            if epoch <= self.last_epoch(stage):
                return stage
        return self.epoch_stages[-1]

    def attach(self, engine: Engine) -> None:
        max_epochs = engine.state.max_epochs
        if max_epochs is not None and max_epochs != self.total_epochs:
            logger.warning(
                f"max_epochs={max_epochs} differs from the schedule's {self.total_epochs} epochs "
                f"({', '.join(f'{s.name}: {s.epochs}' for s in self.epoch_stages)}): "
                + ("the last stage continues." if max_epochs > self.total_epochs else "the later stages are cut.")
            )
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def epoch_started(self, engine: Engine) -> None:
        self.run_actions(engine, engine.state.epoch - 1)
        stage = self.stage_at(engine.state.epoch)
        if stage is not self.current:
            self.enter(engine, stage)

    def epoch_completed(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        stage = self.stage_at(epoch)
        if epoch == self.last_epoch(stage) and stage.on_end is not None:
            stage.on_end(engine)
        self.run_actions(engine, epoch)

    def run_actions(self, engine: Engine, epochs_done: int) -> None:
        """Run, in order, the action stages not done yet that come after at most ``epochs_done`` epochs."""
        for stage in self.action_stages:
            if stage.name in self.actions_done or self.starts[stage.name] > epochs_done:
                continue
            logger.info(f"stage '{stage.name}' (action) after epoch {epochs_done}")
            network = engine.network
            was_training = network.training
            network.eval()
            try:
                with torch.no_grad():
                    stage.action(engine)
            finally:
                network.train(was_training)
            self.actions_done.add(stage.name)
            self.last_acted = stage
            engine.state.stage = stage.name

    def enter(self, engine: Engine, stage: Stage) -> None:
        """Switch the engine to ``stage``: loss, optimiser, step, trainable parameters, then ``on_start``."""
        self.current = stage
        self.last_acted = stage
        engine.state.stage = stage.name
        if stage.loss_function is not None:
            engine.loss_function = stage.loss_function
        if stage.optimizer is not None:
            engine.optimizer = stage.optimizer
        if stage.step is not None:
            engine.train_step = stage.step
        network = self.network if self.network is not None else getattr(engine, "network", None)
        if network is not None:
            self.set_trainable(network, stage.trainable)
            engine.frozen_modules = frozen_modules(network)
        logger.info(f"stage '{stage.name}' from epoch {engine.state.epoch} ({stage.epochs} epochs)")
        if stage.on_start is not None:
            stage.on_start(engine)

    @staticmethod
    def set_trainable(network: torch.nn.Module, prefixes: Sequence[str] | None) -> None:
        """Train the parameters whose name starts with one of ``prefixes`` (all if ``None``), freeze the rest (their
        gradients dropped, so that no optimiser moves them)."""
        module = unwrap_network(network)
        names = [n for n, _ in module.named_parameters()]
        if prefixes is not None:
            unmatched = [p for p in prefixes if not any(n.startswith(p) for n in names)]
            if unmatched:
                raise ValueError(f"trainable prefixes {unmatched} match no parameter of {type(module).__name__}.")
        for name, param in module.named_parameters():
            trainable = prefixes is None or any(name.startswith(p) for p in prefixes)
            param.requires_grad_(trainable)
            if not trainable:
                # a zero gradient left by an earlier stage (MONAI zeroes gradients rather than dropping them) would
                # let a momentum optimiser keep moving a frozen parameter; without one, optimisers skip it
                param.grad = None

    # the schedule's part of the training checkpoint

    def state_dict(self) -> dict[str, Any]:
        """Actions done, every stage optimiser's state, and the state of each action's owner (e.g. a teacher)."""
        optimizers = {s.name: s.optimizer.state_dict() for s in self.stages if s.optimizer is not None}
        owners = {}
        for stage in self.action_stages:
            owner = getattr(stage.action, "__self__", stage.action)
            if callable(getattr(owner, "state_dict", None)):
                owners[stage.name] = owner.state_dict()
        return {"actions_done": sorted(self.actions_done), "optimizers": optimizers, "actions": owners}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        names = {s.name for s in self.stages}
        unknown = sorted((set(state.get("actions_done", [])) | set(state.get("optimizers", {}))) - names)
        if unknown:
            raise ValueError(f"the checkpoint's schedule has stages {unknown} that this schedule does not have.")
        self.actions_done = set(state.get("actions_done", []))
        for stage in self.stages:
            if stage.optimizer is not None and stage.name in state.get("optimizers", {}):
                stage.optimizer.load_state_dict(state["optimizers"][stage.name])
            owner = getattr(stage.action, "__self__", stage.action) if stage.is_action else None
            saved = state.get("actions", {}).get(stage.name)
            if owner is not None and saved is not None and callable(getattr(owner, "load_state_dict", None)):
                owner.load_state_dict(saved)
        done = [s for s in self.action_stages if s.name in self.actions_done]
        if done:
            self.last_acted = done[-1]
