"""Teacher models: a frozen copy of a network whose outputs feed later stages' targets."""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

import torch

from multirater_monai.engines.adapters import call_network, unwrap_network

__all__ = ["Teacher"]

logger = logging.getLogger(__name__)


class Teacher:
    """A frozen network run in eval mode under ``no_grad``, e.g. to make pseudo labels for a later stage.

    The network is either captured from the run (:meth:`capture`, typically as an action stage right
    after the stage that trained it: ``{"name": "freeze_vanilla", "action": "$@teacher.capture"}``) or
    loaded from a checkpoint given at construction. The captured copy is independent of the trained
    network: training continues on the original, and the copy's weights and batch-norm statistics never
    move (its parameters do not require gradients and it is always run in eval mode). Its weights are in
    :meth:`state_dict`, so a training checkpoint holds them and a resumed run uses the same teacher
    (the schedule saves the state of its action stages' owners).

    Args:
        source: the module to copy at :meth:`capture` (e.g. ``@network`` or a part of it); None copies the
            trainer's network (unwrapped from DDP and adapters). Also the architecture a checkpoint or a
            saved state is loaded into.
        checkpoint: a state dict file (e.g. another run's ``models/model.pt``) to load into a copy of
            ``source`` now.
        method: network method to call (None: ``forward``).

    Shapes: those of the network's ``method``.
    """

    def __init__(
        self, source: torch.nn.Module | None = None, checkpoint: str | os.PathLike | None = None, method: str | None = None
    ) -> None:
        self.source = source
        self.method = method
        self.module: torch.nn.Module | None = None
        if checkpoint is not None:
            if source is None:
                raise ValueError("a Teacher loaded from a checkpoint needs its architecture ('source').")
            self.load_weights(_read_state(checkpoint))

    @property
    def ready(self) -> bool:
        """Whether the teacher holds a network (captured or loaded)."""
        return self.module is not None

    def capture(self, engine: Any = None) -> None:
        """Freeze a copy of ``source`` (or of ``engine.network``) as it is now; usable as an action stage."""
        source = self.source if self.source is not None else unwrap_network(getattr(engine, "network", None))
        if source is None:
            raise ValueError("Teacher.capture needs a 'source' module or an engine with a network.")
        self.module = _frozen_copy(source)
        logger.info(f"teacher: froze a copy of {type(source).__name__}")

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Freeze a copy of ``source`` holding the weights ``state``."""
        module = _frozen_copy(self.source)
        module.load_state_dict(state)
        self.module = module

    def __call__(self, *inputs: Any) -> Any:
        """The teacher's outputs, in eval mode and without gradients."""
        if self.module is None:
            raise RuntimeError(
                "the teacher has no network yet: capture it (an action stage before the stage that uses it) "
                "or give a checkpoint."
            )
        self.module.eval()
        device = _device_of(inputs)
        if device is not None and _device_of(list(self.module.parameters())) != device:
            self.module.to(device)
        with torch.no_grad():
            return call_network(self.module, self.method, *inputs)

    def state_dict(self) -> dict[str, Any]:
        return {"weights": None if self.module is None else {k: v.detach().cpu() for k, v in self.module.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        weights = state.get("weights")
        if weights is None:
            self.module = None
            return
        if self.source is None:
            raise ValueError("restoring a captured teacher needs its architecture: give the Teacher a 'source'.")
        self.load_weights(weights)


def _frozen_copy(module: torch.nn.Module) -> torch.nn.Module:
    copied = copy.deepcopy(unwrap_network(module))
    copied.eval()
    for param in copied.parameters():
        param.requires_grad_(False)
    return copied


def _device_of(tensors: Any) -> torch.device | None:
    for value in tensors:
        if isinstance(value, torch.Tensor):
            return value.device
    return None


def _read_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - the reader's error is re-raised with the file named
        raise ValueError(f"{path}: cannot read the teacher's weights ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state
