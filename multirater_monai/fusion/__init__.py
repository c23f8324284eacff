"""Label fusion of multi-rater label maps: mean label, majority vote, STAPLE and multi-label STAPLE.

Every function takes the (R, *S) rater labels of one image (numpy or torch, -1 channels for raters
who did not annotate it) and returns numpy arrays.
"""

from __future__ import annotations

from multirater_monai.fusion.fuse import FUSION_METHODS, fuse
from multirater_monai.fusion.multilabel_staple import MultiLabelStapleResult, multilabel_staple
from multirater_monai.fusion.staple import StapleResult, staple
from multirater_monai.fusion.utils import as_rater_labels, one_hot_numpy
from multirater_monai.fusion.voting import majority_vote, mean_label

__all__ = [
    "FUSION_METHODS",
    "MultiLabelStapleResult",
    "StapleResult",
    "as_rater_labels",
    "fuse",
    "majority_vote",
    "mean_label",
    "multilabel_staple",
    "one_hot_numpy",
    "staple",
]
