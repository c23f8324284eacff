"""Dice metrics of the evaluation protocol: hard Dice of one-hot maps and the thresholded soft Dice."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.utils import MetricReduction

from multirater_monai.metrics.overlap import as_one_hot, binary_dice, check_pair
from multirater_monai.metrics.reduction import ReducedCumulativeMetric, as_plain_tensor

__all__ = ["DEFAULT_THRESHOLDS", "HardDiceMetric", "SoftDiceMetric", "compute_hard_dice", "compute_soft_dice"]

# Thresholds of the QUBIQ / MRNet / MrPrism soft Dice.
DEFAULT_THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)


def compute_hard_dice(y_pred: torch.Tensor, y: torch.Tensor, include_background: bool = False) -> torch.Tensor:
    """Per-class Dice of one-hot segmentations.

    Args:
        y_pred: (B, L, *S) one-hot (or binary multi-label) prediction; values > 0.5 are foreground.
        y: (B, L, *S) one-hot reference.
        include_background: keep channel 0.

    Returns:
        (B, C) float Dice, ``C = L`` or ``L - 1``; 1 where prediction and reference are both empty,
        0 where exactly one of them is.
    """
    y_pred, y = check_pair(y_pred, y)
    if not include_background:
        y_pred, y = y_pred[:, 1:], y[:, 1:]
    return binary_dice(y_pred > 0.5, y > 0.5)


def compute_soft_dice(
    y_pred: torch.Tensor, y: torch.Tensor, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> torch.Tensor:
    """Soft Dice of the QUBIQ / MRNet / MrPrism protocol.

    At each threshold ``t`` both the predicted probability and the raters' mean are binarised with
    ``>= t``; the Dice of the two masks (1 if both are empty) is averaged over the thresholds.

    Args:
        y_pred: (B, C, *S) predicted foreground probability of each class channel, in [0, 1].
        y: (B, C, *S) mean of the raters' foreground masks, in [0, 1].
        thresholds: the binarisation thresholds.

    Returns:
        (B, C) float soft Dice.
    """
    y_pred, y = check_pair(y_pred, y)
    if len(thresholds) == 0:
        raise ValueError("thresholds must not be empty.")
    scores = [binary_dice(y_pred >= t, y >= t) for t in thresholds]
    return torch.stack(scores).mean(0)


class HardDiceMetric(ReducedCumulativeMetric):
    """Cumulative :func:`compute_hard_dice` (empty-vs-empty = 1), reduced like MONAI's ``DiceMetric``.

    Args:
        include_background: keep channel 0.
        num_classes: when given, single-channel (B, 1, *S) class-index inputs are one-hot encoded.
        reduction: see :class:`~multirater_monai.metrics.reduction.ReducedCumulativeMetric`.
        get_not_nans: whether ``aggregate`` also returns the not-NaN counts.
    """

    def __init__(
        self,
        include_background: bool = False,
        num_classes: int | None = None,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, get_not_nans=get_not_nans)
        self.include_background = include_background
        self.num_classes = num_classes

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: object
    ) -> torch.Tensor:
        """(B, C) Dice of ``y_pred`` and ``y``, (B, L, *S) one-hot or (B, 1, *S) indices with ``num_classes``."""
        if y is None:
            raise ValueError("y is required.")
        y_pred, y = as_plain_tensor(y_pred), as_plain_tensor(y)
        return compute_hard_dice(
            as_one_hot(y_pred, self.num_classes), as_one_hot(y, self.num_classes), self.include_background
        )


class SoftDiceMetric(ReducedCumulativeMetric):
    """Cumulative :func:`compute_soft_dice`: ``y_pred`` the predicted probabilities, ``y`` the raters' mean.

    Args:
        thresholds: the binarisation thresholds.
        reduction: see :class:`~multirater_monai.metrics.reduction.ReducedCumulativeMetric`.
        get_not_nans: whether ``aggregate`` also returns the not-NaN counts.
    """

    def __init__(
        self,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, get_not_nans=get_not_nans)
        self.thresholds = tuple(float(t) for t in thresholds)

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: object
    ) -> torch.Tensor:
        """(B, C) soft Dice of (B, C, *S) probabilities ``y_pred`` against the (B, C, *S) rater mean ``y``."""
        if y is None:
            raise ValueError("y is required.")
        return compute_soft_dice(y_pred, y, self.thresholds)
