"""Training iteration for networks whose loss needs more than the consensus logits.

MONAI's ``SupervisedTrainer`` computes ``loss_function(network(image), target)``. Multi-rater methods
need the network's other outputs (confusion matrices, rater predictions, ...), which DESIGN.md puts
behind an explicit method (``forward_all``). :class:`AllOutputsIteration` is the trainer's
``iteration_update``: it calls that method, gives the whole output dict to the loss, and keeps the
engine contract (``engine.state.output`` with ``image``, ``label``, ``pred``, ``loss``; MONAI's
iteration events fired) so that every handler (stats, MLflow, checkpoints) works unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

__all__ = ["AllOutputs", "AllOutputsIteration"]


class AllOutputs(torch.nn.Module):
    """Adapter whose ``forward`` is the wrapped network's ``method`` (``forward_all`` by default).

    Wrap it in ``DistributedDataParallel`` for multi-GPU training: DDP synchronises gradients only
    for calls of ``forward``. Its state dict is the wrapped network's, prefixed ``network.``.
    """

    def __init__(self, network: torch.nn.Module, method: str = "forward_all") -> None:
        super().__init__()
        if not callable(getattr(network, method, None)):
            raise TypeError(f"{type(network).__name__} has no method '{method}'.")
        self.network = network
        self.method = method

    def forward(self, x: torch.Tensor) -> Any:
        return getattr(self.network, self.method)(x)


class AllOutputsIteration:
    """``iteration_update`` of a ``SupervisedTrainer`` whose loss takes all the network's outputs.

    ``loss_function(outputs, target)`` receives the dict returned by ``network.forward_all(image)`` (or by
    the trainer's network itself when it is an :class:`AllOutputs` adapter, possibly inside DDP) and the
    target from ``prepare_batch`` (e.g. the (B, R, *S) rater labels). AMP is not used.

    Args:
        method: the network method returning all outputs.
        pred_key: output entry stored as ``engine.state.output["pred"]`` (the consensus logits).
    """

    def __init__(self, method: str = "forward_all", pred_key: str = "logits") -> None:
        self.method = method
        self.pred_key = pred_key

    def outputs(self, network: torch.nn.Module, inputs: torch.Tensor) -> Mapping[str, torch.Tensor]:
        if isinstance(network, AllOutputs) or isinstance(
            getattr(network, "module", None), AllOutputs
        ):
            return network(inputs)
        method = getattr(network, self.method, None)
        if method is None:
            raise TypeError(f"{type(network).__name__} has no '{self.method}'; wrap it in AllOutputs.")
        return method(inputs)

    def __call__(self, engine: Any, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)
        inputs, targets = batch[0], batch[1]
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        outputs = self.outputs(engine.network, inputs)
        engine.state.output[Keys.PRED] = outputs[self.pred_key]
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        loss = engine.loss_function(outputs, targets)
        engine.state.output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        loss.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
