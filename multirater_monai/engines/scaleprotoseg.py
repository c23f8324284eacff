"""ScaleProtoSeg's schedule: stage lengths, the prototype projection, the simplex projection of the group weights
after every optimiser step, and the final thresholding of the group weights.

The bundle's ``train.json`` lists the stages (``docs/design.md``, "Stages")::

    warmup (ASPP + prototypes) -> joint (all but h_proto) -> projection (action) [-> finetune (h_proto), optional]
    -> start_grouping (action) -> group_warmup (group weights) -> group_joint (+ h_group) -> threshold (action)
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events

from multirater_monai.engines.adapters import unwrap_network
from multirater_monai.errors import UserError
from multirater_monai.losses.scaleprotoseg import pixel_classes

__all__ = ["PrototypeProjection", "GroupThreshold", "scaleprotoseg_epochs", "with_simplex_projection"]

logger = logging.getLogger(__name__)

PROTOTYPES_FILE = "prototypes.json"
PROJECTED_MODEL = "projected.pt"


def scaleprotoseg_epochs(max_epochs: int, warmup: int, group_warmup: int, group_joint: int, finetune: int = 0) -> dict[str, int]:
    """Epochs of each epoch stage: ``warmup``, ``finetune`` (of ``h_proto`` after the projection, the authors' code;
    0 by default, the paper's), ``group_warmup`` and ``group_joint`` as given, ``joint`` the rest.

    When ``max_epochs`` is too short for them all, the given stages shrink in proportion and the joint stage keeps
    at least one epoch (a one-epoch run trains the joint stage, then projects, groups and thresholds).
    """
    max_epochs = int(max_epochs)
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}.")
    fixed = {"warmup": int(warmup), "finetune": int(finetune), "group_warmup": int(group_warmup), "group_joint": int(group_joint)}
    if any(v < 0 for v in fixed.values()):
        raise ValueError(f"stage epochs must be >= 0, got {fixed}.")
    budget = max_epochs - 1
    total = sum(fixed.values())
    if total > budget:
        fixed = {k: (v * budget) // total for k, v in fixed.items()}
    return {"warmup": fixed["warmup"], "joint": max_epochs - sum(fixed.values()), "finetune": fixed["finetune"],
            "group_warmup": fixed["group_warmup"], "group_joint": fixed["group_joint"]}


def with_simplex_projection(optimizer: torch.optim.Optimizer, network: torch.nn.Module) -> torch.optim.Optimizer:
    """``optimizer``, projecting the network's group weights onto the simplex after each of its steps (stage 2)."""

    def project(*_: Any) -> None:
        unwrap_network(network).project_group_weights()

    optimizer.register_step_post_hook(project)
    return optimizer


def _is_rank_zero() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0


def _save_atomic(state: Mapping[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({k: v.detach().cpu() for k, v in state.items()}, tmp)
    os.replace(tmp, path)


def _centred_corner(location: Sequence[int], side: int, shape: Sequence[int]) -> list[int]:
    """Corner of the ``side`` cube centred on ``location``, moved inside an image of ``shape``."""
    return [min(max(int(u) - side // 2, 0), max(int(n) - side, 0)) for u, n in zip(location, shape)]


def crop_centred(image: torch.Tensor, location: Sequence[int], side: int) -> tuple[torch.Tensor, list[int]]:
    """(C, *S) -> (C, side, ...) around ``location`` (zero-padded where the image is smaller), and its corner."""
    corner = _centred_corner(location, side, image.shape[1:])
    patch = image[(slice(None),) + tuple(slice(c, c + side) for c in corner)]
    pad: list[int] = []
    for n in reversed(patch.shape[1:]):
        pad += [0, side - n]
    return F.pad(patch, pad), corner


class PrototypeProjection:
    """Stage 1's end: every prototype becomes its nearest training feature of its own class and scale (de-duplicated).

    Each training image (whole, as the training normalises it, no augmentation) goes through the network; for
    prototype ``(s, c, m)`` the candidates are the scale-``s`` features at the pixels whose training target is
    class ``c``. The nearest over all images replaces the prototype; the image (index in ``dataset``), the
    location, the distance and the image patch of side ``network.patch_side`` around it are recorded in the
    network's buffers (so ``models/model.pt`` carries them) and in ``prototypes.json``. Prototypes of one scale
    that land on the same feature are duplicates: the first is kept, the others are masked out
    (``prototype_active``; the authors delete them, which changes the network's shape).

    As a trainer handler (``method_handlers``) it checks, when training starts and the projection is still to
    come, that every class has pixels in the training targets: a class without any has nothing to project its
    prototypes onto, and the run stops before training, naming the class and the datalist.

    Args:
        network: the :class:`~multirater_monai.networks.ScaleProtoSeg` (wrappers are looked through).
        dataset: training items as dicts with ``image`` (C, *S) and ``target_key`` (L, *S), unaugmented.
        output_dir: where ``prototypes.json`` and ``projected.pt`` (the model right after projection, to measure
            stage 1) are written (rank 0 only).
        target_key: the per-class target (one-hot or soft; the class of a pixel is its arg-max, unlabelled pixels
            are all zeros and skipped).
        source: the datalist's name, for messages.
        class_names: names of the ``L`` classes, for messages and the JSON.
        patch_size: the training patch; a scale whose dilation is not smaller than its side sees nothing but zero
            padding around the centre tap, and is refused before training.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        dataset: Sequence[Mapping[str, Any]],
        output_dir: str | os.PathLike,
        target_key: str = "fused_label",
        source: str = "the training datalist",
        class_names: Sequence[str] | None = None,
        patch_size: Sequence[int] | None = None,
    ) -> None:
        self.network = network
        self.patch_size = [int(v) for v in patch_size] if patch_size is not None else None
        self.dataset = dataset
        self.output_dir = Path(output_dir)
        self.target_key = target_key
        self.source = str(source)
        self.class_names = list(class_names) if class_names is not None else None
        self.records: list[dict[str, Any]] = []

    # handler: the check before training

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.check_classes)

    def _name(self, c: int) -> str:
        return f"class {c} ('{self.class_names[c]}')" if self.class_names and c < len(self.class_names) else f"class {c}"

    def check_classes(self, engine: Engine | None = None) -> None:
        """Raise :class:`UserError` if a scale does not fit the patch, or if a class has no pixel in the training
        targets (skipped once projected)."""
        net = unwrap_network(self.network)
        if self.patch_size is not None:
            side = min(self.patch_size)
            wide = [d for d in net.dilations if d >= side]
            if wide:
                raise UserError(
                    f"dilations {net.dilations}: dilation {wide[0]} is not smaller than the {side}-pixel patch (patch_size "
                    f"{self.patch_size}), so every off-centre tap of that scale's kernel falls in the zero padding; use "
                    "smaller dilations or larger patches."
                )
        if bool(net.projected):
            return
        seen = torch.zeros(net.num_classes, dtype=torch.bool)
        for item in self._items():
            target = torch.as_tensor(item[self.target_key])
            if target.shape[0] != net.num_classes:
                raise UserError(f"{self.source}: the training target has {target.shape[0]} classes, the network {net.num_classes}.")
            seen |= (target.flatten(1) > 0).any(dim=1).cpu()
            if bool(seen.all()):
                return
        missing = [self._name(c) for c in range(net.num_classes) if not seen[c]]
        raise UserError(
            f"{self.source}: {', '.join(missing)} has no pixel in any training image, so ScaleProtoSeg has no training "
            "feature to project its prototypes onto; remove the class (num_classes) or add images that hold it."
        )

    def _items(self):
        for i in range(len(self.dataset)):
            yield self.dataset[i]

    # the action

    def project(self, engine: Engine | None = None) -> None:
        """Project, de-duplicate, record; write ``prototypes.json`` and ``projected.pt``."""
        net = unwrap_network(self.network)
        device = net.prototypes.device
        S, M = net.num_scales, net.prototypes_per_class
        D, P = net.prototype_dim, net.num_prototypes
        best = torch.full((P,), float("inf"))
        vectors = net.prototypes.detach().reshape(P, D).clone().cpu()
        case = torch.full((P,), -1, dtype=torch.long)
        location = torch.zeros((P, net.spatial_dims), dtype=torch.long)
        patches = torch.zeros_like(net.source_patches).cpu()
        owner = net.prototype_class()  # (P,)
        scale = net.prototype_scale()
        was_training = net.training
        net.eval()
        with torch.no_grad():
            for i, item in enumerate(self._items()):
                image = torch.as_tensor(item["image"]).float()
                target = torch.as_tensor(item[self.target_key]).float()
                size = list(image.shape[1:])
                pad: list[int] = []
                for n in reversed(size):
                    pad += [0, (-n) % net.stride]
                z = net.scale_features(F.pad(image, pad)[None].to(device))
                z = z[(slice(None), slice(None)) + tuple(slice(0, n) for n in size)]  # back to the image
                dist = net.distances(z)[0].flatten(1).cpu()  # (P, N)
                classes = pixel_classes(target[None])[0].flatten()
                same = classes[None] == owner[:, None]  # (P, N)
                dist = torch.where(same, dist, torch.full_like(dist, float("inf")))
                value, where = dist.min(dim=1)
                better = value < best
                if not bool(better.any()):
                    continue
                feats = z[0].reshape(S, D, -1).cpu()  # (S, D, N)
                for p in torch.nonzero(better).flatten().tolist():
                    best[p] = value[p]
                    vectors[p] = feats[scale[p], :, where[p]]
                    case[p] = i
                    loc = [int(v) for v in torch.unravel_index(where[p], tuple(size))]
                    location[p] = torch.as_tensor(loc)
                    patches[p] = crop_centred(image, loc, net.patch_side)[0]
        unplaced = [p for p in range(P) if case[p] < 0]
        if unplaced:
            names = sorted({self._name(int(owner[p])) for p in unplaced})
            raise UserError(f"{self.source}: {', '.join(names)} has no pixel in any training image: nothing to project its prototypes onto.")
        active = torch.ones(P, dtype=torch.bool)
        for s in range(S):
            seen: dict[tuple, int] = {}
            for p in torch.nonzero(scale == s).flatten().tolist():
                key = (int(case[p]),) + tuple(location[p].tolist())
                if key in seen:
                    active[p] = False
                else:
                    seen[key] = p
        with torch.no_grad():
            net.prototypes.copy_(vectors.reshape(net.prototypes.shape).to(device))
            net.prototype_active.copy_(active.reshape(net.prototype_active.shape))
            net.source_case.copy_(case)
            net.source_location.copy_(location)
            net.source_distance.copy_(best)
            net.source_patches.copy_(patches.to(net.source_patches.device))
            net.projected.fill_(True)
        net.train(was_training)
        self.records = [
            {
                "prototype": p,
                "scale": int(scale[p]),
                "dilation": net.dilations[int(scale[p])],
                "class": int(owner[p]),
                "class_name": self.class_names[int(owner[p])] if self.class_names else str(int(owner[p])),
                "index": p % M,
                "active": bool(active[p]),
                "case": int(case[p]),
                "image": str(self._image_name(int(case[p]))),
                "location": location[p].tolist(),
                "distance": float(best[p]),
            }
            for p in range(P)
        ]
        removed = int((~active).sum())
        logger.info(f"prototype projection: {P} prototypes onto training features, {removed} duplicate(s) masked")
        if _is_rank_zero():
            self.output_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.output_dir / (PROTOTYPES_FILE + ".tmp")
            tmp.write_text(json.dumps({"patch_side": net.patch_side, "duplicates": removed, "prototypes": self.records}, indent=1) + "\n")
            os.replace(tmp, self.output_dir / PROTOTYPES_FILE)
            _save_atomic(net.state_dict(), self.output_dir / PROJECTED_MODEL)

    def _image_name(self, case: int) -> Any:
        data = getattr(self.dataset, "data", None)
        if data is not None and 0 <= case < len(data):
            return data[case].get("image") if isinstance(data[case], Mapping) else case
        return case

    def start_grouping(self, engine: Engine | None = None) -> None:
        """The action that starts stage 2 (``network.start_grouping()``), refused with the reason when the network's
        prototypes were never projected (a checkpoint whose weights predate the projection)."""
        net = unwrap_network(self.network)
        if not bool(net.projected):
            raise UserError(
                "the grouping stage needs the prototypes projected, and the network's never were: the checkpoint this run "
                "resumed from predates the projection, or its schedule and its weights disagree. Resume from a checkpoint "
                "saved after the projection, or start the run again."
            )
        net.start_grouping()

    def require_projected(self, engine: Engine | None = None) -> None:
        """``on_start`` of the stage-2 stages: refuse to train groups on prototypes that were never projected."""
        net = unwrap_network(self.network)
        if not bool(net.projected) or not bool(net.grouped):
            raise UserError(
                f"stage '{getattr(getattr(engine, 'state', None), 'stage', 'grouping')}' needs the prototypes projected and "
                "the grouping head started, and the network holds neither: the checkpoint this run resumed from "
                "predates the projection, or its schedule and its weights disagree. Resume from a checkpoint saved "
                "after the projection, or start the run again."
            )


class GroupThreshold:
    """The last stage: zero the group weights below ``alpha`` (no renormalisation), in the running network and in the
    selected ``models/model.pt`` (when it is a grouped model), so that the model kept is the thresholded one.

    Args:
        network: the :class:`~multirater_monai.networks.ScaleProtoSeg`.
        alpha: the threshold (the paper's 0.05).
        model_path: ``models/model.pt``.
    """

    def __init__(self, network: torch.nn.Module, alpha: float, model_path: str | os.PathLike) -> None:
        if not 0.0 <= float(alpha) < 1.0:
            raise ValueError(f"the group threshold alpha must be in [0, 1), got {alpha}.")
        self.network = network
        self.alpha = float(alpha)
        self.model_path = Path(model_path)
        self.zeroed: dict[str, int] = {}

    def __call__(self, engine: Engine | None = None) -> None:
        net = unwrap_network(self.network)
        if not bool(net.grouped):
            raise UserError("the group threshold needs the grouping head, which this network has not started.")
        self.zeroed["network"] = net.threshold_groups(self.alpha)
        if _is_rank_zero() and self.model_path.is_file():
            state = torch.load(self.model_path, map_location="cpu", weights_only=True)
            if bool(state.get("grouped", torch.tensor(False))) and not bool(state.get("thresholded", torch.tensor(False))):
                w = state["group_weights"]
                self.zeroed["model.pt"] = int(((w > 0) & (w < self.alpha)).sum())
                state["group_weights"] = w.masked_fill(w < self.alpha, 0.0)
                state["thresholded"] = torch.tensor(True)
                _save_atomic(state, self.model_path)
        logger.info(f"group threshold {self.alpha}: {self.zeroed} weights zeroed")

    def state_dict(self) -> dict[str, Any]:
        return {"zeroed": dict(self.zeroed)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.zeroed = dict(state.get("zeroed", {}))
