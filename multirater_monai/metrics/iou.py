"""Intersection over union per class, background included (mIoU of the evaluation protocol)."""

from __future__ import annotations

import torch
from monai.utils import MetricReduction

from multirater_monai.metrics.overlap import as_one_hot, binary_iou, check_pair
from multirater_monai.metrics.reduction import ReducedCumulativeMetric, as_plain_tensor

__all__ = ["MeanIoUMetric", "compute_miou"]


def compute_miou(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-class IoU of one-hot segmentations, background included (mIoU is their mean over classes).

    Args:
        y_pred: (B, L, *S) one-hot prediction; values > 0.5 are foreground.
        y: (B, L, *S) one-hot reference.

    Returns:
        (B, L) float IoU; 1 where prediction and reference are both empty.
    """
    y_pred, y = check_pair(y_pred, y)
    return binary_iou(y_pred > 0.5, y > 0.5)


class MeanIoUMetric(ReducedCumulativeMetric):
    """Cumulative :func:`compute_miou` (background included, empty-vs-empty = 1).

    With the default ``"mean"`` reduction the result is the mIoU averaged over images.

    Args:
        num_classes: when given, single-channel (B, 1, *S) class-index inputs are one-hot encoded.
        reduction: see :class:`~multirater_monai.metrics.reduction.ReducedCumulativeMetric`.
        get_not_nans: whether ``aggregate`` also returns the not-NaN counts.
    """

    def __init__(
        self,
        num_classes: int | None = None,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, get_not_nans=get_not_nans)
        self.num_classes = num_classes

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: object
    ) -> torch.Tensor:
        """(B, L) IoU of ``y_pred`` and ``y``, (B, L, *S) one-hot or (B, 1, *S) indices with ``num_classes``."""
        if y is None:
            raise ValueError("y is required.")
        y_pred, y = as_plain_tensor(y_pred), as_plain_tensor(y)
        return compute_miou(as_one_hot(y_pred, self.num_classes), as_one_hot(y, self.num_classes))
