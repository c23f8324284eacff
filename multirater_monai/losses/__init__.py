"""Losses of the multi-rater methods, one module per method."""

from __future__ import annotations

from multirater_monai.losses.cmnet import CMNetLoss

__all__ = ["CMNetLoss"]
