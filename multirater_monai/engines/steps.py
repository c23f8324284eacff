"""Training steps: what one iteration of a trainer does, as objects that a bundle config chooses.

A step is the ``iteration_update`` of a MONAI trainer (``MultiRaterTrainer`` runs ``engine.train_step``,
which a stage of the schedule can swap). It keeps MONAI's engine contract, so that every handler
(stats, MLflow, checkpoints, metrics) works unchanged:

- ``engine.state.output`` holds ``image``, ``label``, ``pred`` (the consensus logits) and ``loss``;
- ``IterationEvents`` ``FORWARD_COMPLETED``, ``LOSS_COMPLETED``, ``BACKWARD_COMPLETED`` and
  ``MODEL_COMPLETED`` fire once each per iteration, in that order;
- AMP as MONAI's ``SupervisedTrainer`` does it (``engine.amp``, ``engine.amp_kwargs``, the trainer's
  gradient scaler ``engine.scaler``), with autocast on the engine's device type (bfloat16 on a CPU);
- gradient accumulation over ``engine.accumulation_steps`` mini-batches;
- a non-finite loss stops training (:class:`NonFiniteError`, naming the epoch and iteration) before it
  reaches the weights, unless the engine tolerates some (``engine.nonfinite_tolerance``: that many
  batches with a non-finite loss are skipped, no backward and no step); weights that are no longer
  finite after an optimiser step stop training too. Either way the last checkpoint and ``model.pt``
  are those of before.

The batch reaches the network and the loss *by name*: ``prepare_batch`` returns a dict (image, rater
labels, rater mask, truth, class labels, annotator, ...), the network receives the entries named by
``inputs``, and the loss is called ``loss_function(outputs, batch)`` with the network's whole output
dict (``{pred_key: logits}`` for a network returning a tensor). ``targets`` adds entries computed from the
batch under ``no_grad`` before the forward (e.g. a frozen :class:`~multirater_monai.engines.Teacher`'s
pseudo labels).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from monai.utils import ensure_tuple

from multirater_monai.constants import IMAGE, LABEL
from multirater_monai.engines.adapters import call_network, unwrap_network
from multirater_monai.errors import UserError

__all__ = ["NonFiniteError", "TrainStep", "RecurrentStep", "batch_as_dict"]

logger = logging.getLogger(__name__)


class NonFiniteError(UserError):
    """Training produced a non-finite loss or non-finite weights; the message names the epoch and iteration."""


def batch_as_dict(batch: Any) -> dict[str, Any]:
    """What ``prepare_batch`` returned, as a dict: a dict as is, MONAI's ``(inputs, targets)`` as image / label."""
    if isinstance(batch, Mapping):
        return dict(batch)
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return {IMAGE: batch[0], LABEL: batch[1]}
    raise TypeError(f"prepare_batch must return a dict or (inputs, targets), got {type(batch).__name__}.")


class TrainStep:
    """One forward, one loss, one backward and one optimiser step per iteration.

    Args:
        inputs: batch entries given to the network, in order (the first is the image).
        method: network method called (``"forward_all"`` for a dict of all outputs); None calls ``forward``.
            A network wrapped in :class:`~multirater_monai.engines.AllOutputs` (e.g. inside DDP) is called
            through its ``forward`` with the method named (:func:`~multirater_monai.engines.call_network`).
        pred_key: the output entry stored as ``engine.state.output["pred"]``; a network returning a tensor
            has its output stored under this name for the loss.
        label_key: the batch entry stored as ``engine.state.output["label"]`` (for training metrics).
        targets: ``{name: fn(batch) -> tensor}`` entries added to the batch under ``no_grad`` before the
            forward (teachers' targets).

    Shapes: whatever the network and loss take; ``batch[inputs[0]]`` is (B, C, *S).
    """

    def __init__(
        self,
        inputs: Sequence[str] | str = IMAGE,
        method: str | None = None,
        pred_key: str = "logits",
        label_key: str | None = LABEL,
        targets: Mapping[str, Callable[[dict], torch.Tensor]] | None = None,
    ) -> None:
        self.inputs = [str(k) for k in ensure_tuple(inputs)]
        if not self.inputs:
            raise ValueError("a training step needs at least one input.")
        self.method = method
        self.pred_key = pred_key
        self.label_key = label_key
        self.targets = dict(targets or {})

    # the parts of an iteration, in order; subclasses override the middle ones

    def prepare(self, engine: Any, batchdata: Any) -> dict[str, Any]:
        """The batch moved to the engine's device, as a dict; fails naming a missing input."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        batch = batch_as_dict(batch)
        missing = [k for k in self.inputs if k not in batch and k not in self.targets]  # targets are added later
        if missing:
            raise KeyError(f"the batch has no {missing} (keys: {sorted(batch)}); check prepare_batch and the transforms.")
        return batch

    def begin(self, engine: Any, batch: dict[str, Any]) -> None:
        """Train mode (frozen parts stay in eval mode), gradients zeroed, ``engine.state.output`` started."""
        engine.network.train()
        for module in getattr(engine, "frozen_modules", ()):
            module.eval()
        engine.state.output = {Keys.IMAGE: batch[self.inputs[0]], Keys.LABEL: batch.get(self.label_key)}
        zero, _ = self.accumulation(engine)
        if zero:
            engine.optimizer.zero_grad(set_to_none=getattr(engine, "optim_set_to_none", False))

    def add_targets(self, batch: dict[str, Any]) -> None:
        """Compute the ``targets`` entries of the batch, without gradients."""
        if not self.targets:
            return
        with torch.no_grad():
            for name, fn in self.targets.items():
                batch[name] = fn(batch)

    def forward(self, engine: Any, batch: dict[str, Any], *extra: Any) -> dict[str, Any]:
        """The network's outputs as a dict; ``extra`` arguments follow the batch inputs."""
        args = [batch[k] for k in self.inputs] + list(extra)

        def run(x: torch.Tensor, *rest: Any) -> Any:
            return call_network(engine.network, self.method, x, *rest)

        out = engine.inferer(args[0], run, *args[1:])
        return dict(out) if isinstance(out, Mapping) else {self.pred_key: out}

    def loss(self, engine: Any, outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> torch.Tensor:
        """``engine.loss_function(outputs, batch)``, reduced to a scalar."""
        value = engine.loss_function(outputs, batch)
        return value.mean() if value.ndim > 0 else value

    def backward(self, engine: Any, loss: torch.Tensor) -> None:
        """Backward of ``loss`` (scaled by the AMP gradient scaler, divided over accumulation steps)."""
        acc = max(int(getattr(engine, "accumulation_steps", 1)), 1)
        loss = loss / acc if acc > 1 else loss
        if engine.amp and engine.scaler is not None:
            engine.scaler.scale(loss).backward()
        else:
            loss.backward()

    def optimizer_step(self, engine: Any) -> None:
        """Step the optimiser (through the AMP scaler) at the end of an accumulation window."""
        _, step = self.accumulation(engine)
        if not step:
            return
        if engine.amp and engine.scaler is not None:
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            engine.optimizer.step()

    def autocast(self, engine: Any) -> contextlib.AbstractContextManager:
        """``torch.autocast`` on the engine's device type when AMP is on, else nothing."""
        if not engine.amp:
            return contextlib.nullcontext()
        device = engine.state.device
        device_type = device.type if isinstance(device, torch.device) else torch.device(device or "cpu").type
        return torch.autocast(device_type, **engine.amp_kwargs)

    @staticmethod
    def loss_is_usable(engine: Any, loss: torch.Tensor) -> bool:
        """Whether ``loss`` is finite; a non-finite one is skipped while tolerated, else training stops."""
        if bool(torch.isfinite(loss.detach()).all()):
            return True
        count = getattr(engine.state, "nonfinite_losses", 0) + 1
        engine.state.nonfinite_losses = count
        tolerance = int(getattr(engine, "nonfinite_tolerance", 0))
        where = f"epoch {engine.state.epoch}, iteration {engine.state.iteration}"
        value = float(loss.detach().float().mean())
        if count > tolerance:
            raise NonFiniteError(
                f"{where}: the training loss is {value} ({count} non-finite loss(es), {tolerance} tolerated): "
                "training stopped; the last checkpoint and models/model.pt are those of before. Lower the "
                "learning rate, or check the training images for NaN / inf values"
            )
        logger.warning(f"{where}: the training loss is {value}: batch skipped ({count} of {tolerance} tolerated)")
        return False

    @staticmethod
    def check_weights(engine: Any) -> None:
        """Stop training when an optimiser step left a trainable weight non-finite."""
        params = [(n, p) for n, p in unwrap_network(engine.network).named_parameters() if p.requires_grad]
        if not params or bool(torch.stack([torch.isfinite(p.detach()).all() for _, p in params]).all()):
            return
        bad = [n for n, p in params if not bool(torch.isfinite(p.detach()).all())]
        raise NonFiniteError(
            f"epoch {engine.state.epoch}, iteration {engine.state.iteration}: the weights are not finite after "
            f"the optimiser step ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}): training stopped; the "
            "last checkpoint and models/model.pt are those of before. Lower the learning rate"
        )

    @staticmethod
    def accumulation(engine: Any) -> tuple[bool, bool]:
        """(zero the gradients now, step the optimiser now) for gradient accumulation, as MONAI's trainer."""
        acc = max(int(getattr(engine, "accumulation_steps", 1)), 1)
        if acc == 1:
            return True, True
        length = engine.state.epoch_length
        index = (engine.state.iteration - 1) % length if length is not None else engine.state.iteration - 1
        last = length is not None and index + 1 == length
        return index % acc == 0, (index + 1) % acc == 0 or last

    def __call__(self, engine: Any, batchdata: Any) -> dict:
        batch = self.prepare(engine, batchdata)
        self.begin(engine, batch)
        with self.autocast(engine):
            self.add_targets(batch)
            outputs = self.forward(engine, batch)
            engine.state.output[Keys.PRED] = outputs[self.pred_key]
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            loss = self.loss(engine, outputs, batch)
        engine.state.output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        usable = self.loss_is_usable(engine, loss)
        if usable:
            self.backward(engine, loss)
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if usable:
            self.optimizer_step(engine)
            self.check_weights(engine)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class RecurrentStep(TrainStep):
    """``passes`` recurrences per iteration, each with its own loss, none back-propagating into another.

    Pass ``i`` calls ``network.<method>(*inputs, state)`` which returns a dict of outputs, among them
    ``state_key``: what the next pass receives, detached (so the gradients of pass ``i`` do not reach pass
    ``i - 1``) and the whole network runs again at every pass (MrPrism, whose encoder runs once per image,
    computes its passes inside ``forward_all`` instead). The first pass receives ``init_state(batch)`` (None by default).
    The loss is called per pass as ``loss_function(outputs, batch)`` with ``outputs["recurrence"] = i``.
    With ``backward_each`` (default) each pass's loss is back-propagated at once, which frees its graph
    (the passes share no graph); otherwise the losses are summed and back-propagated together. The
    optimiser steps once, after the last pass. ``engine.state.output`` holds the last pass's prediction,
    the summed loss and each pass's loss (``loss_0``, ``loss_1``, ...); the iteration events fire once.

    Args:
        passes: number of recurrences (>= 1).
        state_key: the output entry carried to the next pass.
        init_state: ``fn(batch)`` giving the first pass's state.
        backward_each: back-propagate after every pass, or once on the sum.
        inputs, method, pred_key, label_key, targets: as :class:`TrainStep` (``method`` defaults to
            ``"forward_step"``).
    """

    def __init__(
        self,
        passes: int = 3,
        state_key: str = "state",
        init_state: Callable[[dict], Any] | None = None,
        backward_each: bool = True,
        inputs: Sequence[str] | str = IMAGE,
        method: str | None = "forward_step",
        pred_key: str = "logits",
        label_key: str | None = LABEL,
        targets: Mapping[str, Callable[[dict], torch.Tensor]] | None = None,
    ) -> None:
        super().__init__(inputs, method, pred_key, label_key, targets)
        if int(passes) < 1:
            raise ValueError(f"passes must be >= 1, got {passes}.")
        self.passes = int(passes)
        self.state_key = state_key
        self.init_state = init_state
        self.backward_each = bool(backward_each)

    def __call__(self, engine: Any, batchdata: Any) -> dict:
        batch = self.prepare(engine, batchdata)
        self.begin(engine, batch)
        state = None
        total: torch.Tensor | None = None
        pending: list[torch.Tensor] = []
        usable = True
        for i in range(self.passes):
            with self.autocast(engine):
                if i == 0:
                    self.add_targets(batch)
                    state = self.init_state(batch) if self.init_state is not None else None
                outputs = self.forward(engine, batch, state)
                if self.state_key not in outputs:
                    raise KeyError(f"the network's '{self.method}' must return '{self.state_key}' (got {sorted(outputs)}).")
                state = _detach(outputs[self.state_key])
                outputs["recurrence"] = i
                loss = self.loss(engine, outputs, batch)
            engine.state.output[f"{Keys.LOSS}_{i}"] = loss.detach()
            total = loss.detach() if total is None else total + loss.detach()
            usable = usable and self.loss_is_usable(engine, loss)
            if i == self.passes - 1:
                engine.state.output[Keys.PRED] = outputs[self.pred_key]
                engine.fire_event(IterationEvents.FORWARD_COMPLETED)
                engine.state.output[Keys.LOSS] = total
                engine.fire_event(IterationEvents.LOSS_COMPLETED)
            if not usable:
                continue
            if self.backward_each:
                self.backward(engine, loss)
            else:
                pending.append(loss)
        if pending and usable:
            self.backward(engine, torch.stack(pending).sum())
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if usable:
            self.optimizer_step(engine)
            self.check_weights(engine)
        else:
            engine.optimizer.zero_grad(set_to_none=getattr(engine, "optim_set_to_none", False))
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, Mapping):
        return {k: _detach(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detach(v) for v in value)
    return value
