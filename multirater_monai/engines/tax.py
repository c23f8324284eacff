"""TAX's training: pseudo annotator masks (a frozen vanilla model's uncertain pixels get the image's annotator, the
rest the shared index), the inputs of its training step and the length of its vanilla stage."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from multirater_monai.constants import ANNOTATOR, IMAGE

__all__ = ["TRAIN_MASKS", "UNCERTAINTIES", "PseudoAnnotatorMasks", "tax_step_inputs", "tax_vanilla_epochs", "uncertain_region"]

TRAIN_MASKS = ("pseudo", "assigner")
"""Which annotator mask drives F in training: the pseudo mask (the image's own annotator on its uncertain region,
so that subset ``k`` learns only from images labelled by ``k``, eq. 2-3) or G's prediction (the ablation)."""

UNCERTAINTIES = ("boundary", "probability")
"""How the vanilla model's uncertain region is defined (:func:`uncertain_region`)."""


def _max_pool(x: torch.Tensor, radius: int) -> torch.Tensor:
    pool = (F.max_pool2d, F.max_pool3d)[x.ndim - 4]
    return pool(x, kernel_size=2 * radius + 1, stride=1, padding=radius)


def uncertain_region(logits: torch.Tensor, kind: str = "boundary", band: int = 2, threshold: float = 0.9) -> torch.Tensor:
    """Where a segmentation is uncertain: (B, L, *S) logits -> (B, 1, *S) bool.

    - ``"boundary"``: within ``band`` pixels (Chebyshev distance) of a change of the arg-max class, i.e. where
      the predicted label map is not constant over the (2·band + 1)-wide neighbourhood; every class boundary
      counts (multi-class included).
    - ``"probability"``: where the highest class probability is below ``threshold``.
    """
    if kind == "boundary":
        if band < 1:
            raise ValueError(f"band must be >= 1 pixel, got {band}.")
        seg = logits.argmax(dim=1, keepdim=True).float()
        return _max_pool(seg, band) != -_max_pool(-seg, band)
    if kind == "probability":
        return torch.softmax(logits.float(), dim=1).amax(dim=1, keepdim=True) < threshold
    raise ValueError(f"uncertainty must be one of {UNCERTAINTIES}, got {kind!r}.")


class PseudoAnnotatorMasks:
    """M^pseu at full resolution for a batch: the image's annotator on the teacher's uncertain region, shared elsewhere.

    Used as a training step's target (``TrainStep(targets={"pseudo_annotator": ...})``), computed without
    gradients from the frozen vanilla model (a :class:`~multirater_monai.engines.Teacher`).

    Args:
        teacher: ``teacher(image) -> (B, L, *S)`` logits.
        num_annotators: ``N``; the shared index is ``N``.
        uncertainty, band, threshold: see :func:`uncertain_region`.
        image_key, annotator_key: batch entries (image (B, C, *S); annotator (B,) int).

    Returns (call): (B, 1, *S) int64 in ``0..N``.
    """

    def __init__(
        self,
        teacher: Callable[[torch.Tensor], torch.Tensor],
        num_annotators: int,
        uncertainty: str = "boundary",
        band: int = 2,
        threshold: float = 0.9,
        image_key: str = IMAGE,
        annotator_key: str = ANNOTATOR,
    ) -> None:
        if uncertainty not in UNCERTAINTIES:
            raise ValueError(f"uncertainty must be one of {UNCERTAINTIES}, got {uncertainty!r}.")
        self.teacher = teacher
        self.num_annotators = int(num_annotators)
        self.uncertainty = uncertainty
        self.band = int(band)
        self.threshold = float(threshold)
        self.image_key = image_key
        self.annotator_key = annotator_key

    def __call__(self, batch: Mapping[str, Any]) -> torch.Tensor:
        image = batch[self.image_key]
        annotator = torch.as_tensor(batch[self.annotator_key], device=image.device).long().reshape(-1)
        if annotator.numel() != image.shape[0]:
            raise ValueError(f"{annotator.numel()} annotator indices for a batch of {image.shape[0]} images.")
        bad = annotator[(annotator < 0) | (annotator >= self.num_annotators)]
        if bad.numel():
            raise ValueError(f"annotator index {int(bad[0])} outside 0..{self.num_annotators - 1} (num_raters).")
        uncertain = uncertain_region(self.teacher(image), self.uncertainty, self.band, self.threshold)
        who = annotator.reshape(-1, *([1] * (image.ndim - 1))).expand_as(uncertain)
        return torch.where(uncertain, who, torch.full_like(who, self.num_annotators))


def tax_step_inputs(train_mask: str) -> list[str]:
    """The network inputs of TAX's training step (``forward_train``) for a ``train_mask`` of :data:`TRAIN_MASKS`."""
    if train_mask == "pseudo":
        return [IMAGE, "pseudo_annotator"]
    if train_mask == "assigner":
        return [IMAGE]
    raise ValueError(f"train_mask must be one of {TRAIN_MASKS}, got {train_mask!r}.")


def tax_vanilla_epochs(vanilla_epochs: int, max_epochs: int, vanilla_only: bool = False) -> int:
    """Epochs of the vanilla stage: ``vanilla_epochs``, at most half the run (at least one epoch), so that the
    tendency stage always gets the rest; all of them with ``vanilla_only`` (the vanilla U-Net baseline)."""
    if int(vanilla_epochs) < 0:
        raise ValueError(f"vanilla_epochs must be >= 0, got {vanilla_epochs}.")
    if vanilla_only:
        return int(max_epochs)
    return min(int(vanilla_epochs), max(int(max_epochs) // 2, 1))
