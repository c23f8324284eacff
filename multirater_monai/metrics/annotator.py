"""Per-annotator metrics of one-annotator-per-image data: each rater's mIoU, and which annotator was assigned.

- :func:`compute_rater_miou`: mIoU (background included) of a method's prediction for each rater against
  that rater's label, on the images the rater annotated (TAX's Table 3: F with only ``C_k`` on the test
  images labelled by ``k``; a method without per-rater outputs is scored by its consensus for every rater).
- :func:`compute_assignment_accuracy`: whether the majority annotator of an annotator mask (TAX's M^A, over the
  pixels assigned to an annotator, not to the shared index) is the image's annotator.
"""

from __future__ import annotations

import torch
from monai.utils import MetricReduction

from multirater_monai.metrics.overlap import binary_iou
from multirater_monai.metrics.rater_dice import annotated_raters
from multirater_monai.metrics.reduction import ReducedCumulativeMetric, as_plain_tensor

__all__ = ["AssignmentAccuracyMetric", "RaterMeanIoUMetric", "compute_assignment_accuracy", "compute_rater_miou"]


def compute_rater_miou(y_pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """mIoU of each rater's predicted segmentation against that rater's label, over the classes ``0..L-1``.

    Args:
        y_pred: (B, R, *S) predicted class indices per rater, or (B, 1, *S) one prediction for every rater.
        y: (B, R, *S) the raters' class indices, a channel entirely ``-1`` where a rater did not annotate.
        num_classes: ``L``, background included (empty vs empty = 1).

    Returns:
        (B, R) float, NaN for raters who did not annotate the image.
    """
    y_pred, y = as_plain_tensor(y_pred), as_plain_tensor(y)
    if y_pred.shape[1] == 1 and y.shape[1] > 1:
        y_pred = y_pred.expand_as(y)
    if y_pred.shape != y.shape or y.ndim < 3:
        raise ValueError(f"y_pred must be (B, R, *S) or (B, 1, *S) and y (B, R, *S), got {tuple(y_pred.shape)} and {tuple(y.shape)}.")
    scores = torch.stack([binary_iou(y_pred == c, y == c) for c in range(num_classes)]).mean(0).float()
    annotated = annotated_raters(y)
    return torch.where(annotated, scores, torch.full_like(scores, float("nan")))


def compute_assignment_accuracy(mask: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 where the majority annotator of ``mask`` is the image's annotator, else 0.

    Args:
        mask: (B, 1, *S) annotator indices ``0..R`` (``R``, the shared index, is not counted in the vote;
            an image with no annotator pixel scores 0).
        y: (B, R, *S) rater labels with exactly one annotating rater per image (others all ``-1``).

    Returns:
        (B, 1) float; NaN for an image annotated by several raters or none.
    """
    mask, y = as_plain_tensor(mask).long(), as_plain_tensor(y)
    num_raters = y.shape[1]
    annotated = annotated_raters(y)  # (B, R)
    votes = torch.stack([(mask.flatten(1) == r).sum(-1) for r in range(num_raters)], dim=1)  # (B, R)
    chosen = votes.argmax(dim=1)
    truth = annotated.float().argmax(dim=1)
    correct = ((chosen == truth) & (votes.sum(1) > 0)).float()
    single = annotated.sum(1) == 1
    return torch.where(single, correct, torch.full_like(correct, float("nan"))).unsqueeze(1)


class RaterMeanIoUMetric(ReducedCumulativeMetric):
    """Cumulative :func:`compute_rater_miou`, (B, R) per iteration; NaN (raters who did not annotate) ignored."""

    def __init__(self, num_classes: int = 2, reduction: MetricReduction | str = MetricReduction.MEAN, get_not_nans: bool = False) -> None:
        super().__init__(reduction=reduction, get_not_nans=get_not_nans)
        self.num_classes = num_classes

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: object) -> torch.Tensor:  # type: ignore[override]
        if y is None:
            raise ValueError("y is required.")
        return compute_rater_miou(y_pred, y, self.num_classes)


class AssignmentAccuracyMetric(ReducedCumulativeMetric):
    """Cumulative :func:`compute_assignment_accuracy`, (B, 1) per iteration."""

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: object) -> torch.Tensor:  # type: ignore[override]
        if y is None:
            raise ValueError("y is required.")
        return compute_assignment_accuracy(y_pred, y)
