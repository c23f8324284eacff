"""Explanation outputs: confusion-matrix maps, reliability and agreement maps, per-rater files and figures."""

from .confusion_maps import (
    ReliabilityMapd,
    SaveConfusionFigured,
    SaveRaterMapsd,
    plot_confusion_matrices,
    reliability_map,
)
from .recurrence import RaterAgreementd, SaveRecurrenceFigured, plot_recurrence

__all__ = [
    "RaterAgreementd",
    "ReliabilityMapd",
    "SaveConfusionFigured",
    "SaveRaterMapsd",
    "SaveRecurrenceFigured",
    "plot_confusion_matrices",
    "plot_recurrence",
    "reliability_map",
]
