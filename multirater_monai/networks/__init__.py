"""Networks of the multi-rater methods; ``forward(image)`` returns consensus logits (``docs/design.md``)."""

from __future__ import annotations

from multirater_monai.networks.cmnet import (
    CM_TYPES,
    CMNet,
    CMNetAnnotator,
    CMNetOutput,
    cm_memory_elements,
)
from multirater_monai.networks.confusion_heads import (
    GlobalConfusionMatrices,
    LowRankConfusionHead,
    PixelConfusionHead,
    RaterConvHeads,
)
from multirater_monai.networks.feature_unet import FeatureUNet

__all__ = [
    "CM_TYPES",
    "CMNet",
    "CMNetAnnotator",
    "CMNetOutput",
    "FeatureUNet",
    "GlobalConfusionMatrices",
    "LowRankConfusionHead",
    "PixelConfusionHead",
    "RaterConvHeads",
    "cm_memory_elements",
]
