"""The project's trainer: MONAI's ``SupervisedTrainer`` running a training step object and a stage schedule."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.engines import SupervisedTrainer

from multirater_monai.engines.stages import MultiStageSchedule
from multirater_monai.engines.steps import TrainStep

__all__ = ["MultiRaterTrainer"]


class MultiRaterTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` whose iteration is ``engine.train_step`` and whose stages are ``schedule``.

    Everything else is MONAI's: data loading, ``prepare_batch``, AMP settings and gradient scaler, metrics,
    handlers, decollation, ``state_dict`` for checkpoints. The differences:

    - the iteration is ``self.train_step(engine, batchdata)`` (default :class:`TrainStep`: one forward
      with the batch inputs by name, ``loss_function(outputs, batch)``), which a stage can replace;
    - ``schedule`` is attached before any handler, so that its stage switches and action stages come
      before validation and checkpointing at the same event;
    - ``frozen_modules`` (set by the schedule) stay in eval mode while the rest trains.

    Args:
        train_step: the iteration (:class:`TrainStep`, :class:`RecurrentStep` or any ``fn(engine, batch)``).
        schedule: the stages of the training; None trains with the given loss and optimiser throughout.
        nonfinite_tolerance: batches with a non-finite loss skipped before training stops (default 0: stop at
            the first, naming its epoch and iteration).
        kwargs: the arguments of MONAI's ``SupervisedTrainer`` (``iteration_update`` is not taken: give a
            ``train_step``).
    """

    def __init__(
        self,
        device: Any,
        max_epochs: int,
        train_data_loader: Any,
        network: Any,
        optimizer: Any,
        loss_function: Any = None,
        train_step: Any = None,
        schedule: MultiStageSchedule | None = None,
        train_handlers: Sequence | None = None,
        nonfinite_tolerance: int = 0,
        **kwargs: Any,
    ) -> None:
        if "iteration_update" in kwargs:
            raise TypeError("MultiRaterTrainer takes a 'train_step', not an 'iteration_update'.")
        self.train_step = train_step if train_step is not None else TrainStep()
        self.schedule = schedule
        self.frozen_modules: list = []
        if int(nonfinite_tolerance) < 0:
            raise ValueError(f"nonfinite_tolerance must be >= 0, got {nonfinite_tolerance}.")
        self.nonfinite_tolerance = int(nonfinite_tolerance)
        self._schedule_attached = False
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            train_handlers=train_handlers,
            **kwargs,
        )
        self._attach_schedule()

    def _attach_schedule(self) -> None:
        if self.schedule is not None and not self._schedule_attached:
            self._schedule_attached = True
            self.schedule.attach(self)

    def _register_handlers(self, handlers: Sequence) -> None:
        self._attach_schedule()  # before the handlers: stage changes precede validation and checkpoints
        super()._register_handlers(handlers)

    def _iteration(self, engine: Any, batchdata: Any) -> dict:
        return engine.train_step(engine, batchdata)
