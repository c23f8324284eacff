"""Losses of the multi-rater methods, one module per method, and the keyed adapters every bundle uses.

Every loss of a training step is called ``loss(outputs, batch)`` with the network's output dict and the
batch dict (``docs/design.md``, "Training engine").
"""

from __future__ import annotations

from multirater_monai.losses.cmnet import CMNetLoss
from multirater_monai.losses.keyed import CombinedLoss, KeyedLoss, sample_mask
from multirater_monai.losses.mrprism import MrPrismLoss, confidence_fusion, label_fusion, rater_one_hot, shuffle_cross_entropy
from multirater_monai.losses.ssim import SeparableSSIMLoss
from multirater_monai.losses.scaleprotoseg import GroupEntropyLoss, OffClassWeightL1, PrototypeDiversityLoss
from multirater_monai.losses.tax import AnnotatorAssignmentLoss, pooled_one_hot

__all__ = ["AnnotatorAssignmentLoss", "CMNetLoss", "CombinedLoss", "GroupEntropyLoss", "OffClassWeightL1", "PrototypeDiversityLoss", "KeyedLoss", "MrPrismLoss", "SeparableSSIMLoss", "confidence_fusion", "label_fusion", "pooled_one_hot", "rater_one_hot", "sample_mask", "shuffle_cross_entropy"]
