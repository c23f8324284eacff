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
from multirater_monai.networks.attention import CrossAttentionStage, SelfAttentionBlock
from multirater_monai.networks.feature_unet import FeatureUNet
from multirater_monai.networks.mrprism import DivP, MrPrism, MrPrismOutput
from multirater_monai.networks.scaleprotoseg import AtrousConv, ConcatASPP, ScaleProtoSeg, project_rows_to_simplex
from multirater_monai.networks.tax import TAX, AnnotatorAssigner, TendencyConv, TendencySegmenter
from multirater_monai.networks.unrolled_lrp import (
    ARCHITECTURES,
    DECODER_ACTIVATIONS,
    ClassifierEncoder,
    ClassifierUNet,
    UnrolledLRP,
    classifier_segmenter,
)

__all__ = [
    "AtrousConv",
    "ConcatASPP",
    "ScaleProtoSeg",
    "project_rows_to_simplex",
    "AnnotatorAssigner",
    "TAX",
    "TendencyConv",
    "TendencySegmenter",
    "ARCHITECTURES",
    "ClassifierEncoder",
    "ClassifierUNet",
    "DECODER_ACTIVATIONS",
    "UnrolledLRP",
    "classifier_segmenter",
    "CM_TYPES",
    "CMNet",
    "CMNetAnnotator",
    "CMNetOutput",
    "CrossAttentionStage",
    "DivP",
    "FeatureUNet",
    "MrPrism",
    "MrPrismOutput",
    "SelfAttentionBlock",
    "GlobalConfusionMatrices",
    "LowRankConfusionHead",
    "PixelConfusionHead",
    "RaterConvHeads",
    "cm_memory_elements",
]
