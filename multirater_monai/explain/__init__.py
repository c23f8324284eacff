"""Explanation outputs: confusion-matrix maps, reliability maps, per-rater files and figures."""

from .confusion_maps import (
    ReliabilityMapd,
    SaveConfusionFigured,
    SaveRaterMapsd,
    plot_confusion_matrices,
    reliability_map,
)

__all__ = ["ReliabilityMapd", "SaveConfusionFigured", "SaveRaterMapsd", "plot_confusion_matrices", "reliability_map"]
