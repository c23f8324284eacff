"""Evaluation metrics of every recurrence of a recurrent method (MrPrism's Table 1: Rec0 .. Rec3)."""

from __future__ import annotations

from collections.abc import Sequence

from monai.handlers import from_engine

from multirater_monai.metrics.dice import DEFAULT_THRESHOLDS
from multirater_monai.metrics.handlers import HardDice, SoftDice

__all__ = ["recurrence_metrics"]


def recurrence_metrics(
    recurrences: int, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, prefix: str = "rec", label_key: str = "label"
) -> dict:
    """``{"soft_dice_rec<i>", "dice_rec<i>"}`` metric handlers for ``i < recurrences``.

    They read the entries written by :class:`~multirater_monai.transforms.RecurrenceOutputsd`: soft Dice of
    ``<prefix><i>_prob`` against the rater mean (``rater_mean_fg``), hard foreground Dice of ``<prefix><i>_pred``
    against the evaluation target (``label``, one-hot), as the evaluation protocol does for the final mask.
    """
    metrics = {}
    for i in range(int(recurrences)):
        metrics[f"soft_dice_{prefix}{i}"] = SoftDice(
            thresholds=thresholds, output_transform=from_engine([f"{prefix}{i}_prob", "rater_mean_fg"])
        )
        metrics[f"dice_{prefix}{i}"] = HardDice(
            include_background=False, output_transform=from_engine([f"{prefix}{i}_pred", label_key])
        )
    return metrics
