"""Losses of the multi-rater methods, one module per method, and the keyed adapters every bundle uses.

Every loss of a training step is called ``loss(outputs, batch)`` with the network's output dict and the
batch dict (``docs/design.md``, "Training engine").
"""

from __future__ import annotations

from multirater_monai.losses.cmnet import CMNetLoss
from multirater_monai.losses.keyed import CombinedLoss, KeyedLoss, sample_mask

__all__ = ["CMNetLoss", "CombinedLoss", "KeyedLoss", "sample_mask"]
