"""Training checkpoints that survive interruptions and resume the run exactly.

- :class:`TrainingCheckpointer` writes ``<prefix>_checkpoint_epoch=<n>.pt`` atomically (a temporary file,
  flushed to disk, then renamed) and only then removes older checkpoints (keeping ``n_saved``), so a kill
  at any moment leaves a complete checkpoint to resume from. Checkpoints of an earlier run in the same
  folder are removed once this run has written its first one (a resumed run continues the earlier one).
- :class:`CheckpointResumer` loads the newest readable checkpoint when training starts; a truncated or
  corrupt file is reported by name and the next older one is used; with none readable the run stops
  with the files and reasons named.
- :class:`RandomStates` puts the random number generators in the checkpoint (torch, CUDA, NumPy, Python
  and every random transform of the training pre-processing), so that a run interrupted and resumed
  gives the same weights as the uninterrupted one (on the same device and software).

A checkpoint is a dict of the ``state_dict()`` of each object of ``save_dict`` (network, optimiser,
trainer, schedule, best-model saver, random states), the format MONAI's ``CheckpointLoader`` also reads.
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from multirater_monai.errors import UserError

__all__ = [
    "CheckpointError",
    "CheckpointResumer",
    "StateDictLoader",
    "RandomStates",
    "TrainingCheckpointer",
    "checkpoint_files",
    "latest_checkpoint",
]

logger = logging.getLogger(__name__)


class CheckpointError(UserError):
    """No usable training checkpoint: the message names the files and what is wrong with each."""


def checkpoint_files(checkpoint_dir: str | os.PathLike, prefix: str = "train") -> list[Path]:
    """The training checkpoints ``<prefix>_checkpoint_epoch=<n>.pt`` of a folder, newest epoch first."""
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return []
    pattern = re.compile(rf"^{re.escape(prefix)}_checkpoint_epoch=(\d+)\.pt$")
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found, key=lambda x: x[0], reverse=True)]


def latest_checkpoint(checkpoint_dir: str | os.PathLike, required: bool = True, prefix: str = "train") -> str | None:
    """Path of the newest-epoch training checkpoint in ``checkpoint_dir`` (without reading it).

    Args:
        checkpoint_dir: folder written by :class:`TrainingCheckpointer`.
        required: raise a clear error when there is none (``resume=true`` with nothing to resume).
        prefix: the checkpoints' file prefix.
    """
    found = checkpoint_files(checkpoint_dir, prefix)
    if not found:
        if required:
            raise CheckpointError(f"{checkpoint_dir}: no training checkpoint to resume from (train once without resume).")
        return None
    return str(found[0])


def _reason(error: BaseException) -> str:
    """A short reason: the error's type and the first sentence of its message."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = text.split(". ")[0]
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


def state_dict_hint(network: torch.nn.Module, state: Any) -> str | None:
    """The network's own explanation of why ``state`` does not fit it (``network.state_dict_hint``), if it has one."""
    hint = getattr(network, "state_dict_hint", None)
    if not callable(hint) or not isinstance(state, Mapping):
        return None
    try:
        return hint(state)
    except Exception:  # noqa: BLE001 - a hint must never hide the real error
        return None


def _state(save_dict: Mapping[str, Any]) -> dict[str, Any]:
    state = {}
    for key, obj in save_dict.items():
        module = obj.module if isinstance(obj, torch.nn.parallel.DistributedDataParallel) else obj
        state[key] = module.state_dict()
    return state


class TrainingCheckpointer:
    """Save the training state every ``save_interval`` epochs, atomically, keeping the last ``n_saved``.

    Args:
        save_dir: the checkpoint folder.
        save_dict: ``{name: object with state_dict()}`` (network, optimiser, trainer, schedule, ...).
        n_saved: checkpoints kept (the newest); older ones, and those of an earlier run, are removed after
            a new one is complete.
        save_interval: save every this many epochs (the last epoch of the run is always saved).
        file_prefix: files are ``<file_prefix>_checkpoint_epoch=<n>.pt``.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        n_saved: int = 1,
        save_interval: int = 1,
        file_prefix: str = "train",
    ) -> None:
        if int(n_saved) < 1:
            raise ValueError(f"n_saved must be >= 1, got {n_saved}.")
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.n_saved = int(n_saved)
        self.save_interval = max(int(save_interval), 1)
        self.file_prefix = file_prefix
        self.written: list[Path] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        if epoch % self.save_interval and epoch != engine.state.max_epochs:
            return
        self.save(epoch)

    def save(self, epoch: int) -> Path:
        """Write the checkpoint of ``epoch``, then remove the ones it replaces."""
        self.save_dir.mkdir(parents=True, exist_ok=True)
        path = self.save_dir / f"{self.file_prefix}_checkpoint_epoch={epoch}.pt"
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(_state(self.save_dict), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        self.written = [p for p in self.written if p != path] + [path]
        keep = set(self.written[-self.n_saved :])
        for old in checkpoint_files(self.save_dir, self.file_prefix):
            if old not in keep:
                old.unlink(missing_ok=True)
        logger.debug(f"saved {path}")
        return path


class CheckpointResumer:
    """Load the newest readable training checkpoint of ``checkpoint_dir`` when the trainer starts.

    A checkpoint that cannot be read (truncated, corrupt) is named in a warning and the next older one is
    tried; a checkpoint whose content does not fit the objects (another network, a missing entry) stops
    the run naming the file. Attach it only when resuming.

    Args:
        checkpoint_dir: the checkpoint folder.
        load_dict: ``{name: object with load_state_dict()}``, as the checkpointer's ``save_dict``.
        map_location: where tensors are loaded.
        file_prefix: the checkpoints' file prefix.
    """

    def __init__(
        self,
        checkpoint_dir: str | os.PathLike,
        load_dict: Mapping[str, Any],
        map_location: Any = "cpu",
        file_prefix: str = "train",
    ) -> None:
        self.checkpoint_dir = Path(checkpoint_dir)
        self.load_dict = dict(load_dict)
        self.map_location = map_location
        self.file_prefix = file_prefix
        self.loaded: Path | None = None

    def attach(self, engine: Engine) -> None:
        # checked now, so that a missing checkpoint stops the run before anything starts
        if not checkpoint_files(self.checkpoint_dir, self.file_prefix):
            latest_checkpoint(self.checkpoint_dir, prefix=self.file_prefix)
        engine.add_event_handler(Events.STARTED, self)

    def read(self) -> tuple[Path, dict]:
        """The newest checkpoint that can be read, and its content."""
        files = checkpoint_files(self.checkpoint_dir, self.file_prefix)
        if not files:
            latest_checkpoint(self.checkpoint_dir, prefix=self.file_prefix)
        problems = []
        for path in files:
            try:
                # the project's own training state (optimiser, engine and RNG states are not plain tensors)
                return path, torch.load(path, map_location=self.map_location, weights_only=False)
            except Exception as e:  # noqa: BLE001 - any reader failure is reported with its file
                problems.append(f"{path}: unreadable ({_reason(e)})")
                logger.warning(f"{path}: unreadable checkpoint ({_reason(e)}); trying an older one")
        raise CheckpointError("no readable training checkpoint to resume from:\n  - " + "\n  - ".join(problems))

    def __call__(self, engine: Engine) -> None:
        path, checkpoint = self.read()
        missing = sorted(set(self.load_dict) - set(checkpoint)) if isinstance(checkpoint, Mapping) else ["all"]
        if missing:
            raise CheckpointError(f"{path}: not a training checkpoint of this run (no {missing})")
        max_epochs = engine.state.max_epochs  # this run's, not the checkpoint's: --max_epochs extends a run
        try:
            Checkpoint.load_objects(to_load=self.load_dict, checkpoint=checkpoint)
        except Exception as e:  # noqa: BLE001 - a checkpoint that does not fit is reported with its file
            raise CheckpointError(f"{path}: does not fit this configuration ({_reason(e)})") from None
        if max_epochs is not None and engine.state.epoch > max_epochs:
            raise CheckpointError(
                f"{path}: the checkpoint is at epoch {engine.state.epoch}, beyond max_epochs {max_epochs}: "
                "nothing to resume (give a larger --max_epochs)"
            )
        if max_epochs is not None:
            engine.state.max_epochs = max_epochs
        self.loaded = path
        logger.info(f"resumed from {path} (epoch {engine.state.epoch})")


class RandomStates:
    """The random number generators, as a checkpointable object (``state_dict`` / ``load_state_dict``).

    Holds the global torch (and CUDA) generator, NumPy's and Python's global generators, and the generator
    of every random MONAI transform in ``transform`` (e.g. the training pre-processing), found through
    ``Compose.transforms`` recursively, and that of a sampler with its own generator (``state_dict``, e.g.
    :class:`~multirater_monai.data.MixedSampler`). Restored at resume, they make the data order, the
    augmentations and the initialisation of the following epochs those of the uninterrupted run.

    Args:
        transform: a transform or ``Compose`` whose random transforms are included; None for the globals only.
        sampler: the training loader's sampler when it has a state of its own (None: the loader shuffles
            with the global generator).
    """

    def __init__(self, transform: Any = None, sampler: Any = None) -> None:
        self.transforms = _random_transforms(transform)
        self.sampler = sampler if hasattr(sampler, "state_dict") else None

    def state_dict(self) -> dict[str, Any]:
        state = {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
            "transforms": [t.R.get_state() for t in self.transforms],
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        if self.sampler is not None:
            state["sampler"] = self.sampler.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = state.get("transforms", [])
        if len(saved) != len(self.transforms):
            raise ValueError(f"the checkpoint has {len(saved)} random transforms, this pre-processing {len(self.transforms)}")
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
        np.random.set_state(state["numpy"])
        random.setstate(state["python"])
        for t, s in zip(self.transforms, saved):
            t.R.set_state(s)
        if self.sampler is not None:
            if "sampler" not in state:
                raise ValueError("the checkpoint holds no state of the training sampler, which this run draws with")
            self.sampler.load_state_dict(state["sampler"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8).cpu() for s in state["cuda"]])


def _random_transforms(root: Any) -> list[Any]:
    """Every random MONAI transform reachable from ``root``: through ``Compose.transforms`` and through the
    attributes of transforms (a dictionary transform keeps its own random array transform, e.g.
    ``RandSpatialCropd.cropper``, whose generator is the one it draws from)."""
    from monai.transforms import Randomizable, Transform

    found: list[Any] = []
    seen: set[int] = set()

    def visit(obj: Any) -> None:
        if isinstance(obj, (list, tuple)):
            for item in obj:
                visit(item)
            return
        if isinstance(obj, dict):
            for item in obj.values():
                visit(item)
            return
        if not isinstance(obj, (Transform, Randomizable)) or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, Randomizable):
            found.append(obj)
        for value in vars(obj).values():
            visit(value)

    visit(root)
    return found


class StateDictLoader:
    """Load a plain state dict (``models/model.pt``) into a network when an evaluator or inference starts.

    Errors name the file: missing (train the bundle first), unreadable (truncated, corrupt), or not this
    network's weights (another configuration).

    Args:
        load_path: the state dict file.
        network: the network (DDP and adapter wrappers are looked through).
        map_location: where tensors are loaded.
    """

    def __init__(self, load_path: str | os.PathLike, network: torch.nn.Module, map_location: Any = "cpu") -> None:
        self.load_path = Path(load_path)
        self.network = network
        self.map_location = map_location

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        from multirater_monai.engines.adapters import unwrap_network

        if not self.load_path.is_file():
            raise CheckpointError(f"{self.load_path}: no trained model (train the bundle first, or give --ckpt_path)")
        try:
            state = torch.load(self.load_path, map_location=self.map_location, weights_only=True)
        except Exception as e:  # noqa: BLE001 - any reader failure is reported with its file
            raise CheckpointError(f"{self.load_path}: unreadable model file ({_reason(e)})") from None
        network = unwrap_network(self.network)
        try:
            network.load_state_dict(state)
        except Exception as e:  # noqa: BLE001 - weights of another network are reported with the file
            hint = state_dict_hint(network, state)
            reason = hint if hint else _reason(e)
            raise CheckpointError(f"{self.load_path}: not the weights of this network ({reason})") from None
        logger.info(f"loaded {self.load_path}")
