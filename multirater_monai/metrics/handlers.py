"""Ignite handlers of the project's metrics, for ``SupervisedEvaluator`` ``key_val_metric`` /
``additional_metrics`` (e.g. from a bundle config), as MONAI's ``monai.handlers.MeanDice`` wraps
``DiceMetric``.

Example bundle config entry::

    "SoftDice": {
        "_target_": "multirater_monai.metrics.SoftDice",
        "output_transform": "$monai.handlers.from_engine(['pred_prob', 'rater_mean'])"
    }
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from monai.handlers.ignite_metric import IgniteMetricHandler
from monai.utils import MetricReduction

from multirater_monai.metrics.annotator import AssignmentAccuracyMetric, RaterMeanIoUMetric
from multirater_monai.metrics.cm_error import ConfusionMatrixErrorMetric
from multirater_monai.metrics.dice import DEFAULT_THRESHOLDS, HardDiceMetric, SoftDiceMetric
from multirater_monai.metrics.ged import GeneralizedEnergyDistanceMetric
from multirater_monai.metrics.iou import MeanIoUMetric
from multirater_monai.metrics.rater_dice import RaterDiceMetric

__all__ = ["ConfusionMatrixError", "GeneralizedEnergyDistance", "HardDice", "MeanIoU", "RaterDice", "SoftDice"]



class HardDice(IgniteMetricHandler):
    """Mean hard Dice (:class:`~multirater_monai.metrics.HardDiceMetric`, empty-vs-empty = 1).

    ``y_pred`` and ``y``: (B, L, *S) one-hot, or (B, 1, *S) class indices with ``num_classes``.

    Args:
        include_background: keep channel 0.
        num_classes: one-hot encode single-channel class-index inputs.
        reduction: reduction of the (B, C) scores (MONAI ``MetricReduction``).
        output_transform: callable extracting ``(y_pred, y)`` from ``engine.state.output``.
        save_details: save the per-image values to ``engine.state.metric_details[name]``.
    """

    def __init__(
        self,
        include_background: bool = False,
        num_classes: int | None = None,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = HardDiceMetric(include_background=include_background, num_classes=num_classes, reduction=reduction)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


class MeanIoU(IgniteMetricHandler):
    """mIoU, background included (:class:`~multirater_monai.metrics.MeanIoUMetric`, empty-vs-empty = 1).

    ``y_pred`` and ``y``: (B, L, *S) one-hot, or (B, 1, *S) class indices with ``num_classes``.

    Args:
        num_classes: one-hot encode single-channel class-index inputs.
        reduction: reduction of the (B, L) scores (MONAI ``MetricReduction``).
        output_transform: callable extracting ``(y_pred, y)`` from ``engine.state.output``.
        save_details: save the per-image values to ``engine.state.metric_details[name]``.
    """

    def __init__(
        self,
        num_classes: int | None = None,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = MeanIoUMetric(num_classes=num_classes, reduction=reduction)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


class SoftDice(IgniteMetricHandler):
    """Thresholded soft Dice (:class:`~multirater_monai.metrics.SoftDiceMetric`).

    ``y_pred``: (B, C, *S) predicted foreground probabilities; ``y``: (B, C, *S) mean of the raters.

    Args:
        thresholds: the binarisation thresholds (``>=``).
        reduction: reduction of the (B, C) scores (MONAI ``MetricReduction``).
        output_transform: callable extracting ``(y_pred, y)`` from ``engine.state.output``.
        save_details: save the per-image values to ``engine.state.metric_details[name]``.
    """

    def __init__(
        self,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = SoftDiceMetric(thresholds=thresholds, reduction=reduction)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


class GeneralizedEnergyDistance(IgniteMetricHandler):
    """Mean squared GED ``D²_GED`` (or ``D_GED``), :class:`~multirater_monai.metrics.GeneralizedEnergyDistanceMetric`.

    ``y_pred``: (B, N, *S) predicted masks or label maps (e.g. per-rater predictions); ``y``:
    (B, M, *S) rater label maps, channels entirely -1 ignored.

    Args:
        foreground: class index or indices counted as foreground; None: every class > 0.
        squared: ``D²_GED`` (default, PHiSeg) or ``D_GED``.
        reduction: reduction of the (B, 1) values (MONAI ``MetricReduction``).
        output_transform: callable extracting ``(y_pred, y)`` from ``engine.state.output``.
        save_details: save the per-image values to ``engine.state.metric_details[name]``.
    """

    def __init__(
        self,
        foreground: int | Sequence[int] | None = None,
        squared: bool = True,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = GeneralizedEnergyDistanceMetric(foreground=foreground, squared=squared, reduction=reduction)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


class ConfusionMatrixError(IgniteMetricHandler):
    """Mean confusion-matrix estimation error (:class:`~multirater_monai.metrics.ConfusionMatrixErrorMetric`).

    ``y_pred``: (B, R, L, L) estimated matrices; ``y``: (B, R, L, L) true matrices (NaN columns and
    all-NaN matrices of missing raters ignored).

    Args:
        reduction: reduction of the (B, R) errors (MONAI ``MetricReduction``).
        output_transform: callable extracting ``(y_pred, y)`` from ``engine.state.output``.
        save_details: save the per-image values to ``engine.state.metric_details[name]``.
    """

    def __init__(
        self,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = ConfusionMatrixErrorMetric(reduction=reduction)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


class RaterDice(IgniteMetricHandler):
    """Mean per-rater Dice (:class:`~multirater_monai.metrics.RaterDiceMetric`) of a method that predicts each rater.

    ``y_pred``: (B, R, *S) predicted class indices of each rater; ``y``: (B, R, *S) rater labels, channels
    entirely -1 (raters who did not annotate) ignored.

    Args:
        num_classes: ``L``, background included.
        reduction: reduction of the (B, R) values (MONAI ``MetricReduction``).
        output_transform: callable extracting ``(y_pred, y)`` from ``engine.state.output``.
        save_details: save the per-image, per-rater values to ``engine.state.metric_details[name]``.
    """

    def __init__(
        self,
        num_classes: int = 2,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = RaterDiceMetric(num_classes=num_classes, reduction=reduction)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


class RaterMeanIoU(IgniteMetricHandler):
    """Mean per-rater mIoU (:class:`~multirater_monai.metrics.RaterMeanIoUMetric`).

    ``y_pred``: (B, R, *S) predicted class indices per rater, or (B, 1, *S) (the consensus for every rater);
    ``y``: (B, R, *S) rater labels, channels entirely -1 ignored.

    Args:
        num_classes: ``L``, background included.
        reduction: reduction of the (B, R) values (MONAI ``MetricReduction``).
        output_transform: callable extracting ``(y_pred, y)`` from ``engine.state.output``.
        save_details: save the per-image, per-rater values to ``engine.state.metric_details[name]``.
    """

    def __init__(
        self,
        num_classes: int = 2,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = RaterMeanIoUMetric(num_classes=num_classes, reduction=reduction)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


class AssignmentAccuracy(IgniteMetricHandler):
    """Share of images whose annotator mask's majority annotator is the image's own
    (:class:`~multirater_monai.metrics.AssignmentAccuracyMetric`).

    ``y_pred``: (B, 1, *S) annotator mask (``R`` = shared, not voted); ``y``: (B, R, *S) rater labels, one
    annotating rater per image.
    """

    def __init__(
        self,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        super().__init__(metric_fn=AssignmentAccuracyMetric(reduction=reduction), output_transform=output_transform, save_details=save_details)
