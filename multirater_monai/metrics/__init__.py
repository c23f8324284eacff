"""Metrics of the evaluation protocol (``docs/design.md``, "Evaluation protocol"): hard Dice, mIoU,
thresholded soft Dice, generalized energy distance, confusion-matrix estimation error and per-rater Dice.

``compute_*`` functions take batch-first torch tensors; ``*Metric`` classes are MONAI cumulative
metrics; the classes without suffix (``HardDice``, ``SoftDice``, ...) are Ignite handlers.
"""

from __future__ import annotations

from multirater_monai.metrics.annotator import (
    AssignmentAccuracyMetric,
    RaterMeanIoUMetric,
    compute_assignment_accuracy,
    compute_rater_miou,
)
from multirater_monai.metrics.cm_error import ConfusionMatrixErrorMetric, compute_cm_error, pixelwise_to_image_cm
from multirater_monai.metrics.confusion import empirical_confusion_matrix
from multirater_monai.metrics.dice import (
    DEFAULT_THRESHOLDS,
    HardDiceMetric,
    SoftDiceMetric,
    compute_hard_dice,
    compute_soft_dice,
)
from multirater_monai.metrics.ged import (
    GeneralizedEnergyDistanceMetric,
    compute_generalized_energy_distance,
    labels_to_foreground_masks,
    pairwise_iou_distance,
)
from multirater_monai.metrics.handlers import (
    ConfusionMatrixError,
    GeneralizedEnergyDistance,
    HardDice,
    MeanIoU,
    AssignmentAccuracy,
    RaterDice,
    RaterMeanIoU,
    SoftDice,
)
from multirater_monai.metrics.iou import MeanIoUMetric, compute_miou
from multirater_monai.metrics.rater_dice import RaterDiceMetric, compute_rater_dice
from multirater_monai.metrics.recurrence import recurrence_metrics
from multirater_monai.metrics.reduction import ReducedCumulativeMetric

__all__ = [
    "AssignmentAccuracy",
    "AssignmentAccuracyMetric",
    "RaterMeanIoU",
    "RaterMeanIoUMetric",
    "compute_assignment_accuracy",
    "compute_rater_miou",
    "DEFAULT_THRESHOLDS",
    "ConfusionMatrixError",
    "ConfusionMatrixErrorMetric",
    "GeneralizedEnergyDistance",
    "GeneralizedEnergyDistanceMetric",
    "HardDice",
    "HardDiceMetric",
    "MeanIoU",
    "MeanIoUMetric",
    "RaterDice",
    "RaterDiceMetric",
    "ReducedCumulativeMetric",
    "SoftDice",
    "SoftDiceMetric",
    "compute_cm_error",
    "compute_generalized_energy_distance",
    "compute_hard_dice",
    "compute_miou",
    "compute_rater_dice",
    "compute_soft_dice",
    "empirical_confusion_matrix",
    "labels_to_foreground_masks",
    "pairwise_iou_distance",
    "pixelwise_to_image_cm",
    "recurrence_metrics",
]
