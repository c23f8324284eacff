"""CM-Net (paper ``001_…``): a segmentation network with per-rater confusion matrices.

The segmentation part estimates the true label distribution ``p(y | x)`` (consensus logits, ``L``
channels). The annotator part gives, per rater ``r``, a column-stochastic confusion matrix
``A_r[i, j] = p(rater r says i | truth j)`` (pixel-wise, low-rank pixel-wise or global, see
:mod:`multirater_monai.networks.confusion_heads`); the rater's predicted distribution is ``A_r · p``
per pixel. ``forward`` returns the consensus logits only (``docs/design.md``); :meth:`CMNet.forward_all`
returns everything the loss and the explanations need (stacked as one tensor for sliding-window
inference by :class:`multirater_monai.engines.StackedOutputs`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypedDict

import torch
from monai.networks.layers.factories import Conv

from multirater_monai.networks.confusion_heads import (
    GlobalConfusionMatrices,
    LowRankConfusionHead,
    PixelConfusionHead,
)
from multirater_monai.networks.feature_unet import FeatureUNet

__all__ = ["CM_TYPES", "CMNet", "CMNetAnnotator", "CMNetOutput", "cm_memory_elements"]

CM_TYPES = ("pixel", "low_rank", "global")


class CMNetOutput(TypedDict):
    """All outputs of :meth:`CMNet.forward_all` (a plain dict at run time).

    - ``logits``: (B, L, *S) consensus logits.
    - ``probs``: (B, L, *S) their softmax over classes, the estimate of ``p(y | x)``.
    - ``cm``: (B, R, L, L, *S) column-stochastic matrices, ``cm[b, r, i, j] = p(r says i | truth j)``
      (for global matrices an ``expand`` of the (R, L, L) parameter, no copy).
    - ``rater_probs``: (B, R, L, *S) each rater's predicted distribution ``A_r · p`` per pixel.
    """

    logits: torch.Tensor
    probs: torch.Tensor
    cm: torch.Tensor
    rater_probs: torch.Tensor


class CMNetAnnotator(torch.nn.Module):
    """The annotator part of CM-Net: optional own feature network + confusion-matrix head.

    Args:
        head: maps (B, F, *S) features to (B, R, L, L, *S) matrices.
        features: the annotator's own feature network, image (B, C, *S) -> (B, F, *S); ``None`` to use
            the segmentation trunk's features (shared trunk).

    Shapes:
        ``forward(image, trunk_features)``: (B, C, *S), (B, F, *S) -> (B, R, L, L, *S).
    """

    def __init__(self, head: torch.nn.Module, features: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.shared_trunk = features is None
        self.features = torch.nn.Identity() if features is None else features
        self.head = head

    def forward(self, image: torch.Tensor, trunk_features: torch.Tensor) -> torch.Tensor:
        if self.shared_trunk:
            return self.head(trunk_features)
        return self.head(self.features(image))


class CMNet(torch.nn.Module):
    """CM-Net: consensus segmentation + per-rater confusion matrices, 2D or 3D.

    Segmentation part (``segmentation``, ``seg_head``): the project's baseline MONAI U-Net (same
    ``channels``, ``strides``, ``num_res_units``, ``norm``) with ``feature_channels`` outputs, followed by
    norm + activation (:class:`~multirater_monai.networks.feature_unet.FeatureUNet`) and a 1×1
    convolution to the ``L`` consensus logits.

    Annotator part (``annotator``), ``cm_type``:

    - ``"pixel"``: per rater two conv blocks + 1×1 conv to ``L²`` scores per pixel
      (:class:`~multirater_monai.networks.confusion_heads.PixelConfusionHead`);
    - ``"low_rank"``: per rater and pixel ``A = softmax_i(B1 · B2ᵀ + c_r · I)``, ``B1``, ``B2`` of size
      ``L × rank``, so the head outputs ``2 · L · rank`` channels per rater instead of ``L²``
      (:class:`~multirater_monai.networks.confusion_heads.LowRankConfusionHead`);
    - ``"global"``: one learned image-independent matrix per rater (Tanno et al. 2019),
      (:class:`~multirater_monai.networks.confusion_heads.GlobalConfusionMatrices`).

    All matrices are column-stochastic via a softmax over the noisy axis ``i``. ``shared_trunk=True``
    puts the pixel / low-rank heads on the segmentation trunk's features (the authors' code);
    ``False`` gives the annotator its own smaller U-Net on the image (two coupled networks, the
    paper's figure 1). Global matrices use no features, so ``shared_trunk`` does not apply to them.

    Initialisation: the matrices start near identity, ``softmax(identity_init · I)`` exactly (see the
    heads); ``identity_init=0`` disables this (default init, as in the authors' code). The paper's
    trace-maximising warm-up is a training stage, see :meth:`multirater_monai.losses.CMNetLoss.warmup`.

    Parameter groups for multi-stage training: names starting with ``segmentation`` / ``seg_head``
    (segmentation network) and ``annotator`` (annotator network; with a shared trunk only the heads).

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels ``C``.
        num_classes: ``L`` (background included).
        num_raters: ``R``.
        cm_type: ``"pixel"``, ``"low_rank"`` or ``"global"``.
        rank: rank of the low-rank factors (``cm_type="low_rank"`` only).
        shared_trunk: annotator heads on the segmentation trunk's features, or on their own U-Net.
        channels: U-Net channels per level.
        strides: U-Net strides.
        num_res_units: U-Net residual units.
        norm: normalisation (U-Nets, feature blocks, heads).
        feature_channels: ``F``, feature maps of the trunk(s).
        head_channels: hidden channels per rater of the annotator heads.
        identity_init: diagonal score offset of the initial matrices; 0 disables.
        annotator_channels: channels of the annotator's own U-Net (``shared_trunk=False``); default:
            ``channels`` halved (at least 4).
        act: activation (U-Nets, feature blocks, heads).

    Shapes:
        ``forward``: (B, C, *S) -> (B, L, *S) logits. Spatial sizes must be divisible by ``prod(strides)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        num_raters: int,
        cm_type: str = "pixel",
        rank: int = 1,
        shared_trunk: bool = True,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] = (2, 2, 2),
        num_res_units: int = 2,
        norm: tuple | str = "batch",
        feature_channels: int = 16,
        head_channels: int = 16,
        identity_init: float = 3.0,
        annotator_channels: Sequence[int] | None = None,
        act: tuple | str = "PRELU",
    ) -> None:
        super().__init__()
        if cm_type not in CM_TYPES:
            raise ValueError(f"cm_type must be one of {CM_TYPES}, got {cm_type!r}.")
        if num_classes < 2 or num_raters < 1:
            raise ValueError(f"need num_classes >= 2 and num_raters >= 1, got {num_classes} and {num_raters}.")
        self.spatial_dims = spatial_dims
        self.num_classes = num_classes
        self.num_raters = num_raters
        self.cm_type = cm_type
        self.shared_trunk = shared_trunk
        self.segmentation = FeatureUNet(
            spatial_dims, in_channels, feature_channels, channels, strides, num_res_units, norm, act
        )
        self.seg_head = Conv[Conv.CONV, spatial_dims](feature_channels, num_classes, kernel_size=1)

        head: torch.nn.Module
        if cm_type == "pixel":
            head = PixelConfusionHead(
                spatial_dims, feature_channels, num_classes, num_raters, head_channels, norm, act, identity_init
            )
        elif cm_type == "low_rank":
            head = LowRankConfusionHead(
                spatial_dims, feature_channels, num_classes, num_raters, rank, head_channels, norm, act, identity_init
            )
        else:
            head = GlobalConfusionMatrices(num_classes, num_raters, identity_init)
        features: torch.nn.Module | None = None
        if not shared_trunk and cm_type != "global":
            if annotator_channels is None:
                annotator_channels = tuple(max(c // 2, 4) for c in channels)
            features = FeatureUNet(
                spatial_dims, in_channels, feature_channels, annotator_channels, strides, num_res_units, norm, act
            )
        self.annotator = CMNetAnnotator(head, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) image -> (B, L, *S) consensus logits."""
        return self.seg_head(self.segmentation(x))

    def forward_all(self, x: torch.Tensor) -> CMNetOutput:
        """(B, C, *S) image -> :class:`CMNetOutput` (logits, probs, cm, rater_probs)."""
        features = self.segmentation(x)
        logits = self.seg_head(features)
        probs = torch.softmax(logits, dim=1)
        cm = self.annotator(x, features)
        if isinstance(self.annotator.head, GlobalConfusionMatrices):
            rater_probs = torch.einsum("rij,bj...->bri...", self.annotator.head.matrices(), probs)
        else:
            rater_probs = torch.einsum("brij...,bj...->bri...", cm, probs)
        return CMNetOutput(logits=logits, probs=probs, cm=cm, rater_probs=rater_probs)


def cm_memory_elements(
    cm_type: str, num_classes: int, num_raters: int, spatial_size: int | Sequence[int], rank: int = 1
) -> int:
    """Number of values the annotator head produces per image for its confusion matrices.

    Per rater: ``S · L²`` for ``"pixel"`` (one matrix per pixel), ``2 · S · L · rank`` for ``"low_rank"``
    (two ``L × rank`` factors per pixel), ``L²`` for ``"global"`` (one matrix, whatever the image),
    with ``S`` the number of pixels / voxels. Multiply by the batch size and the element size (4 bytes
    in float32) for memory; activations of the heads' hidden layers and autograd buffers come on top.
    For ``"pixel"`` and ``"low_rank"``, forming the normalised matrices (``forward_all``'s ``cm``) still
    takes ``S · L²`` per rater transiently: the low-rank saving is in the head's output and parameters.

    Args:
        cm_type: ``"pixel"``, ``"low_rank"`` or ``"global"``.
        num_classes: ``L``.
        num_raters: ``R``.
        spatial_size: the image's spatial shape, or its number of pixels ``S``.
        rank: rank of the low-rank factors.
    """
    pixels = spatial_size if isinstance(spatial_size, int) else math.prod(int(s) for s in spatial_size)
    if cm_type == "pixel":
        per_rater = pixels * num_classes**2
    elif cm_type == "low_rank":
        per_rater = 2 * pixels * num_classes * rank
    elif cm_type == "global":
        per_rater = num_classes**2
    else:
        raise ValueError(f"cm_type must be one of {CM_TYPES}, got {cm_type!r}.")
    return int(num_raters * per_rater)
