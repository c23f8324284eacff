"""Explanation outputs: confusion-matrix maps, reliability and agreement maps, per-rater files and figures."""

from .confusion_maps import (
    ReliabilityMapd,
    SaveConfusionFigured,
    SaveRaterMapsd,
    plot_confusion_matrices,
    reliability_map,
)
from .heatmaps import ClassScoresd, SaveHeatmapsd, plot_heatmaps
from .prototype_explanations import SavePrototypeExplanationsd, prototype_contributions
from .prototype_patches import PrototypePatchIndex, SaveTAXExplanationsd
from .recurrence import RaterAgreementd, SaveRecurrenceFigured, plot_recurrence

__all__ = [
    "ClassScoresd",
    "SaveHeatmapsd",
    "plot_heatmaps",
    "PrototypePatchIndex",
    "SavePrototypeExplanationsd",
    "prototype_contributions",
    "RaterAgreementd",
    "ReliabilityMapd",
    "SaveConfusionFigured",
    "SaveRaterMapsd",
    "SaveRecurrenceFigured",
    "SaveTAXExplanationsd",
    "plot_confusion_matrices",
    "plot_recurrence",
    "reliability_map",
]
