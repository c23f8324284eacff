"""Per-rater Dice: how well a method's predicted segmentation of each rater matches what that rater drew."""

from __future__ import annotations

import torch
from monai.utils import MetricReduction

from multirater_monai.constants import MISSING_LABEL
from multirater_monai.metrics.overlap import binary_dice
from multirater_monai.metrics.reduction import ReducedCumulativeMetric, as_plain_tensor

__all__ = ["RaterDiceMetric", "annotated_raters", "compute_rater_dice"]


def annotated_raters(y: torch.Tensor) -> torch.Tensor:
    """(B, R, *S) rater labels -> (B, R) bool: the raters who annotated each image (a channel not all ``-1``)."""
    return ~torch.all(y.flatten(2) == MISSING_LABEL, dim=-1)


def compute_rater_dice(y_pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dice of each rater's predicted segmentation against that rater's label, averaged over the foreground classes.

    Args:
        y_pred: (B, R, *S) predicted class indices of each rater.
        y: (B, R, *S) the raters' class indices, a channel entirely ``-1`` where a rater did not annotate.
        num_classes: ``L``, background included; classes ``1..L-1`` are scored (empty vs empty = 1).

    Returns:
        (B, R) float Dice, NaN for raters who did not annotate the image.
    """
    y_pred, y = as_plain_tensor(y_pred), as_plain_tensor(y)
    if y_pred.shape != y.shape or y.ndim < 3:
        raise ValueError(f"y_pred and y must both be (B, R, *S), got {tuple(y_pred.shape)} and {tuple(y.shape)}.")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
    scores = torch.stack([binary_dice(y_pred == c, y == c) for c in range(1, num_classes)]).mean(0)
    annotated = annotated_raters(y)
    return torch.where(annotated, scores.float(), torch.full_like(scores.float(), float("nan")))


class RaterDiceMetric(ReducedCumulativeMetric):
    """Cumulative :func:`compute_rater_dice`, (B, R) per iteration; the reduction ignores missing raters (NaN).

    Args:
        num_classes: ``L``, background included.
        reduction: see :class:`~multirater_monai.metrics.reduction.ReducedCumulativeMetric` (``"mean_batch"``
            gives one value per rater).
        get_not_nans: whether ``aggregate`` also returns the not-NaN counts.
    """

    def __init__(
        self, num_classes: int = 2, reduction: MetricReduction | str = MetricReduction.MEAN, get_not_nans: bool = False
    ) -> None:
        super().__init__(reduction=reduction, get_not_nans=get_not_nans)
        self.num_classes = num_classes

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: object
    ) -> torch.Tensor:
        """(B, R) Dice of the (B, R, *S) predicted rater segmentations against the (B, R, *S) rater labels."""
        if y is None:
            raise ValueError("y is required.")
        return compute_rater_dice(y_pred, y, self.num_classes)
