"""Binary overlap primitives shared by the Dice and IoU metrics.

Both scores give two empty masks the perfect score 1, and an empty mask against a non-empty one 0.
"""

from __future__ import annotations

import torch
from monai.networks.utils import one_hot

from multirater_monai.metrics.reduction import as_plain_tensor

__all__ = ["as_one_hot", "binary_dice", "binary_iou", "check_pair"]


def check_pair(y_pred: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain tensors of the same (B, C, *S) shape, with at least one spatial dimension."""
    y_pred, y = as_plain_tensor(y_pred), as_plain_tensor(y)
    if y_pred.shape != y.shape:
        raise ValueError(f"y_pred and y must have the same shape, got {tuple(y_pred.shape)} and {tuple(y.shape)}.")
    if y_pred.ndim < 3:
        raise ValueError(f"inputs must be (B, C, *S) with at least one spatial dimension, got {tuple(y_pred.shape)}.")
    return y_pred, y


def binary_dice(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, C) Dice of binary (B, C, *S) inputs, 1 where both are empty."""
    a, b = a.flatten(2).float(), b.flatten(2).float()
    intersection = (a * b).sum(-1)
    denominator = a.sum(-1) + b.sum(-1)
    return torch.where(denominator > 0, 2.0 * intersection / denominator.clamp_min(1e-12), torch.ones_like(denominator))


def binary_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, C) IoU of binary (B, C, *S) inputs, 1 where both are empty."""
    a, b = a.flatten(2).float(), b.flatten(2).float()
    intersection = (a * b).sum(-1)
    union = a.sum(-1) + b.sum(-1) - intersection
    return torch.where(union > 0, intersection / union.clamp_min(1e-12), torch.ones_like(union))


def as_one_hot(x: torch.Tensor, num_classes: int | None) -> torch.Tensor:
    """A single-channel (B, 1, *S) class-index map becomes (B, L, *S) one-hot when ``num_classes`` is given."""
    if num_classes is not None and x.shape[1] == 1 and num_classes > 1:
        return one_hot(x, num_classes=num_classes, dim=1)
    return x


