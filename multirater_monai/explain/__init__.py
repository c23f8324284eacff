"""Explanation outputs: confusion-matrix maps, reliability and agreement maps, per-rater files and figures."""

from .confusion_maps import (
    ReliabilityMapd,
    SaveConfusionFigured,
    SaveRaterMapsd,
    plot_confusion_matrices,
    reliability_map,
)
from .heatmaps import ClassScoresd, SaveHeatmapsd, plot_heatmaps
from .recurrence import RaterAgreementd, SaveRecurrenceFigured, plot_recurrence

__all__ = [
    "ClassScoresd",
    "SaveHeatmapsd",
    "plot_heatmaps",
    "RaterAgreementd",
    "ReliabilityMapd",
    "SaveConfusionFigured",
    "SaveRaterMapsd",
    "SaveRecurrenceFigured",
    "plot_confusion_matrices",
    "plot_recurrence",
    "reliability_map",
]
