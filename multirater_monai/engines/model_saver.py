"""Handler that keeps ``models/model.pt``: the best network so far as a plain CPU state dict.

``model.pt`` is what evaluation, inference and MONAI Label use, so a run must never replace a good one
by a worse or broken one without the user asking. Each save writes, next to the model, a record
``model.json`` (metric, value, epoch, datalist, validation target, run name). A new run into the same
folder starts from that record: it replaces the model only with a better one on the same data and
validation target, and stops before training if the data or the target differ; ``overwrite`` (the
bundles' ``--overwrite_model true``) lets this run's best replace the model whatever came before. A
non-finite metric or non-finite weights are never saved.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from multirater_monai.engines.adapters import unwrap_network
from multirater_monai.engines.stages import MultiStageSchedule
from multirater_monai.errors import UserError

__all__ = ["BestModelSaver", "ModelExistsError", "model_record_path"]

logger = logging.getLogger(__name__)

# what must agree for two runs' validation metrics to be comparable
_COMPARABLE = ("metric", "datalist", "val_target")


class ModelExistsError(UserError):
    """``model.pt`` exists from a run that this one cannot be compared with."""


def model_record_path(filepath: str | os.PathLike) -> Path:
    """The record written beside a saved model: ``models/model.pt`` -> ``models/model.json``."""
    path = Path(filepath)
    return path.with_suffix(".json")


class BestModelSaver:
    """Save the network's CPU state dict whenever the evaluator's key metric improves.

    The model and its record are written atomically (temporary file, then rename), so an interruption
    never leaves a truncated model. Attach to the evaluator (the engine whose ``state.metrics`` holds the
    key metric). With a ``schedule``, the model is chosen only while the schedule allows it (its last
    acting stage has ``select_model: true``), e.g. only after a prototype projection.

    Args:
        network: the network to save (DDP and adapter wrappers are unwrapped).
        filepath: where to write the state dict, e.g. ``models/model.pt``.
        key_metric_name: metric to maximise; defaults to the engine's ``key_metric_name``.
        greater_is_better: maximise (default) or minimise the metric.
        schedule: the training's :class:`~multirater_monai.engines.MultiStageSchedule`, for stage-limited selection.
        run_info: what makes runs comparable and identifies this one: ``datalist``, ``val_target``, ``run_name``.
        overwrite: let this run's best replace an existing model whatever its record says.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        filepath: str | os.PathLike,
        key_metric_name: str | None = None,
        greater_is_better: bool = True,
        schedule: MultiStageSchedule | None = None,
        run_info: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        self.network = network
        self.filepath = Path(filepath)
        self.key_metric_name = key_metric_name
        self.sign = 1.0 if greater_is_better else -1.0
        self.schedule = schedule
        self.run_info = {k: (str(v) if k == "datalist" and v is not None else v) for k, v in (run_info or {}).items()}
        self.overwrite = bool(overwrite)
        self.best: float | None = None

    def attach(self, engine: Engine) -> None:
        self.start_from_existing(getattr(engine.state, "key_metric_name", None))
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def start_from_existing(self, metric: str | None) -> None:
        """Take the best value of an existing model from an earlier run, or refuse to replace it.

        Raises:
            ModelExistsError: the existing model was trained on other data or validated against another
                target (or has no record), and ``overwrite`` is off.
        """
        if self.overwrite or not self.filepath.is_file():
            return
        name = self.key_metric_name or metric
        record = self.read_record()
        hint = "give --overwrite_model true to let this run's best replace it, or another --ckpt_dir to keep both"
        if record is None:
            raise ModelExistsError(f"{self.filepath}: exists from an earlier run without a record of its metric; {hint}")
        current = {"metric": name, **{k: self.run_info.get(k) for k in _COMPARABLE[1:]}}
        differ = [k for k in _COMPARABLE if current.get(k) is not None and record.get(k) != current[k]]
        if differ:
            detail = ", ".join(f"{k} {record.get(k)!r} (this run: {current[k]!r})" for k in differ)
            raise ModelExistsError(f"{self.filepath}: was trained with another {detail}; {hint}")
        self.best = float(record["value"])
        logger.info(
            f"{self.filepath} exists ({record['metric']} {self.best:.4f}, run {record.get('run_name')}): "
            "this run replaces it only with a better model"
        )

    def read_record(self) -> dict[str, Any] | None:
        try:
            record = json.loads(model_record_path(self.filepath).read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and "value" in record else None

    def __call__(self, engine: Engine) -> None:
        name = self.key_metric_name or getattr(engine.state, "key_metric_name", None)
        if name is None or name not in engine.state.metrics:
            raise KeyError(f"BestModelSaver: metric '{name}' not computed by the engine ({list(engine.state.metrics)}).")
        value = float(engine.state.metrics[name])
        if self.schedule is not None and not self.schedule.selectable:
            stage = self.schedule.last_acted.name if self.schedule.last_acted is not None else "?"
            logger.info(f"{name}={value:.4f} not considered for {self.filepath.name}: stage '{stage}' has select_model false")
            return
        if not math.isfinite(value):
            logger.warning(f"{name} is {value}: {self.filepath} is not replaced")
            return
        if self.best is not None and not self.sign * value > self.sign * self.best:
            return
        if not self.save(record={"metric": name, "value": value, "epoch": getattr(engine.state, "epoch", None)}):
            return
        self.best = value
        logger.info(f"saved {self.filepath} ({name}={value:.4f})")

    def state_dict(self) -> dict:
        """The best value so far, so that a resumed training keeps comparing against it."""
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("best")
        if saved is None or self.best is None:
            self.best = saved if saved is not None else self.best
        else:  # an existing model better than the checkpoint's best stays the bar
            self.best = saved if self.sign * saved > self.sign * self.best else self.best

    def save(self, record: dict[str, Any] | None = None) -> bool:
        """Write the current network weights as a CPU state dict (and its record); False if they are not finite."""
        net = unwrap_network(self.network)
        state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if broken:
            logger.warning(f"non-finite weights ({broken[0]}): {self.filepath} is not replaced")
            return False
        self.filepath.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.filepath.with_suffix(self.filepath.suffix + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.filepath)
        if record is not None:
            full = {**record, **self.run_info, "saved": time.strftime("%Y-%m-%dT%H:%M:%S")}
            record_path = model_record_path(self.filepath)
            tmp_record = record_path.with_suffix(".json.tmp")
            tmp_record.write_text(json.dumps(full, indent=1, default=str) + "\n")
            os.replace(tmp_record, record_path)
        return True
