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
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from monai.networks.nets import UNet
from torch.utils.checkpoint import checkpoint

from multirater_monai.errors import UserError
from multirater_monai.networks.confusion_heads import (
    GlobalConfusionMatrices,
    LowRankConfusionHead,
    PixelConfusionHead,
)
from multirater_monai.networks.feature_unet import FeatureUNet

__all__ = ["CM_TYPES", "HEAD_HIDDEN", "HEAD_UPSAMPLES", "CMNet", "CMNetAnnotator", "CMNetOutput", "cm_memory_elements"]

CM_TYPES = ("pixel", "low_rank", "global")
HEAD_UPSAMPLES = ("nearest", "learned")
HEAD_HIDDEN = ("per_rater", "shared")


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
        return self.head(self.head_input(image, trunk_features))

    def head_input(self, image: torch.Tensor, trunk_features: torch.Tensor) -> torch.Tensor:
        """The features the head reads: the trunk's (shared trunk) or the annotator network's on the image."""
        return trunk_features if self.shared_trunk else self.features(image)


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

    Where the pixel / low-rank heads sit, ``head_level``:

    - ``0``: on the trunk's ``feature_channels`` output features at full resolution (the paper's and the
      authors' layout); the trunk is a U-Net with ``feature_channels`` outputs, norm and activation
      (:class:`~multirater_monai.networks.feature_unet.FeatureUNet`), then a 1×1 convolution to the logits;
    - ``1``: on the input of the U-Net's last up-step (``2 · channels[0]`` channels with three levels or
      more, at ``strides[0]`` times coarser resolution): one matrix per block of ``strides[0]^d`` pixels,
      applied to each pixel's own ``p``. The segmentation part is then MONAI's U-Net itself with ``L``
      outputs, the ``fused_unet`` baseline's network, and the heads work on ``strides[0]^d`` times fewer
      pixels; ``forward_all`` repeats each matrix over its block (nearest-neighbour up-sampling) and
      :meth:`CMNet.forward_train` never forms the full-resolution matrices at all. With
      ``head_upsample="learned"`` the heads' last layer is instead a transposed convolution of kernel and
      stride ``strides[0]`` (the same up-step as the U-Net's last layer): every pixel gets its own matrix,
      the pixels of a block from their own weights on the block's features.

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
        head_level: ``0`` heads at full resolution on the trunk's output features, ``1`` heads on the
            U-Net's last decoder input, one matrix per block of pixels (see above); ``1`` needs ``shared_trunk``.
        head_kernel_size: kernel size of the heads' two conv blocks (1: a per-pixel MLP).
        head_upsample: at ``head_level`` 1, ``"nearest"`` (one matrix per block) or ``"learned"`` (one matrix
            per pixel from a transposed convolution); ignored at ``head_level`` 0.
        head_chunks: :meth:`forward_train` runs the heads' output layer, the matrices and ``A_r · p`` in this many
            batch chunks and recomputes them in the backward pass (activation checkpointing), so the
            (B, R, L, L, *S) matrices are never all in memory; ``0``: one pass, kept for the backward pass.
            Values and gradients are the same either way.
        head_hidden: ``"per_rater"`` (the paper's: each rater's head has its own ``head_channels`` hidden
            channels) or ``"shared"``: one pair of hidden blocks for all raters, only the output layer per rater
            (``R`` times fewer hidden channels at the heads' resolution, where their cost lies).

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
        head_level: int = 0,
        head_kernel_size: int = 3,
        head_upsample: str = "nearest",
        head_chunks: int = 0,
        head_hidden: str = "per_rater",
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
        if head_level not in (0, 1):
            raise UserError(f"CM-Net: head_level must be 0 (full resolution) or 1 (last decoder input), got {head_level}.")
        if head_level == 1 and not shared_trunk and cm_type != "global":
            raise UserError("CM-Net: head_level 1 puts the heads inside the segmentation U-Net; it needs shared_trunk true.")
        if head_upsample not in HEAD_UPSAMPLES:
            raise UserError(f"CM-Net: head_upsample must be one of {HEAD_UPSAMPLES}, got {head_upsample!r}.")
        if head_hidden not in HEAD_HIDDEN:
            raise UserError(f"CM-Net: head_hidden must be one of {HEAD_HIDDEN}, got {head_hidden!r}.")
        if int(head_chunks) < 0:
            raise UserError(f"CM-Net: head_chunks must be 0 (no recomputation) or positive, got {head_chunks}.")
        self.head_chunks = int(head_chunks)
        self.head_level = int(head_level)
        # head_scale: how much coarser the matrices are than the image; out_stride: the heads' own up-sampling
        out_stride = int(strides[0]) if self.head_level == 1 and head_upsample == "learned" else 1
        self.head_scale = int(strides[0]) // out_stride if self.head_level == 1 else 1
        head_in = feature_channels
        if self.head_level == 0:
            self.segmentation = FeatureUNet(
                spatial_dims, in_channels, feature_channels, channels, strides, num_res_units, norm, act
            )
            self.seg_head = Conv[Conv.CONV, spatial_dims](feature_channels, num_classes, kernel_size=1)
        else:
            self.segmentation = UNet(
                spatial_dims, in_channels, num_classes, channels, strides, num_res_units=num_res_units, norm=norm, act=act
            )
            self.seg_head = torch.nn.Identity()
            # what MONAI's U-Net concatenates before its last up-step: the first level's features and the level below's
            head_in = int(channels[0]) + int(channels[0] if len(channels) > 2 else channels[1])

        head: torch.nn.Module
        if cm_type == "pixel":
            head = PixelConfusionHead(
                spatial_dims, head_in, num_classes, num_raters, head_channels, norm, act, identity_init, head_kernel_size,
                out_stride, head_hidden == "shared",
            )
        elif cm_type == "low_rank":
            head = LowRankConfusionHead(
                spatial_dims, head_in, num_classes, num_raters, rank, head_channels, norm, act, identity_init,
                head_kernel_size, out_stride, head_hidden == "shared",
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

    def state_dict_hint(self, state: dict[str, torch.Tensor]) -> str | None:
        """Why ``state`` (a saved state dict) does not fit this network, when it is the other ``head_hidden`` layout:
        the option to give (the cmnet bundle's default changed from ``"per_rater"`` to ``"shared"`` in 0.7.0)."""
        weight = state.get("annotator.head.heads.blocks.1.conv.weight")
        head = self.annotator.head
        if weight is None or not hasattr(head, "heads"):
            return None
        saved_groups = weight.shape[0] // weight.shape[1]  # grouped conv: (out, out / groups, *k)
        if saved_groups == head.heads.groups:
            return None
        layout = "per_rater" if saved_groups > 1 else "shared"
        return f"the model was trained with head_hidden {layout!r}: give --head_hidden {layout}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) image -> (B, L, *S) consensus logits."""
        return self.seg_head(self.segmentation(x))

    def _logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Consensus logits (B, L, *S) and the heads' features: (B, F, *S), or at ``head_level`` 1 the U-Net's
        last decoder input (B, 2·channels[0], *S / strides[0]) (three levels or more)."""
        if self.head_level == 0:
            features = self.segmentation(x)
            return self.seg_head(features), features
        # MONAI's U-Net is Sequential(first down-step, SkipConnection(the levels below), last up-step)
        down, below, up = self.segmentation.model
        features = below(down(x))
        return up(features), features

    def _matrices(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits (B, L, *S), probabilities (B, L, *S) and the matrices at the heads' resolution
        (B, R, L, L, *S / head_scale); global matrices are an ``expand`` to (B, R, L, L, *S)."""
        logits, features = self._logits_and_features(x)
        probs = torch.softmax(logits, dim=1)
        if isinstance(self.annotator.head, GlobalConfusionMatrices):
            return logits, probs, self.annotator.head(logits)
        return logits, probs, self.annotator(x, features)

    def _rater_probs(self, cm: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """``A_r · p`` per pixel, (B, R, L, *S), from the matrices at the heads' resolution.

        At ``head_level`` 1 each matrix multiplies the ``f^d`` probability vectors of its block: one batched
        matrix product per block, so no full-resolution (B, R, L, L, *S) tensor is formed.
        """
        if isinstance(self.annotator.head, GlobalConfusionMatrices):
            return torch.einsum("rij,bj...->bri...", self.annotator.head.matrices(), probs)
        if self.head_scale == 1:
            return (cm * probs[:, None, None]).sum(3)  # 3× faster than einsum on CPU
        f, coarse = self.head_scale, list(cm.shape[4:])
        b, l = probs.shape[:2]
        blocks = [b, l]
        for size in coarse:
            blocks += [size, f]
        p = probs.reshape(blocks)  # (B, L, s1, f, s2, f[, s3, f])
        if self.spatial_dims == 2:
            out = torch.einsum("nrijhw,njhawc->nrihawc", cm, p)
        else:
            out = torch.einsum("nrijdhw,njdahewc->nridahewc", cm, p)
        return out.reshape(list(probs.shape[:1]) + [self.num_raters] + list(probs.shape[1:]))

    def _full_resolution(self, maps: torch.Tensor, dims: int) -> torch.Tensor:
        """Repeat the last ``spatial_dims`` axes of ``maps`` ``head_scale`` times (nearest-neighbour up-sampling)."""
        if self.head_scale == 1:
            return maps
        lead = list(maps.shape[: maps.ndim - dims])
        up = F.interpolate(maps.reshape([-1, 1] + list(maps.shape[-dims:])), scale_factor=self.head_scale, mode="nearest")
        return up.reshape(lead + list(up.shape[2:]))

    def forward_all(self, x: torch.Tensor) -> CMNetOutput:
        """(B, C, *S) image -> :class:`CMNetOutput` (logits, probs, cm, rater_probs), matrices at full resolution."""
        logits, probs, cm = self._matrices(x)
        rater_probs = self._rater_probs(cm, probs)
        if not isinstance(self.annotator.head, GlobalConfusionMatrices):
            cm = self._full_resolution(cm, self.spatial_dims)
        return CMNetOutput(logits=logits, probs=probs, cm=cm, rater_probs=rater_probs)

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What :class:`~multirater_monai.losses.CMNetLoss` needs, without full-resolution matrices.

        (B, C, *S) image -> ``logits``, ``probs`` (B, L, *S), ``rater_probs`` (B, R, L, *S) as :meth:`forward_all`,
        and ``cm_trace`` (B, R, *S), the trace of each pixel's matrix, instead of ``cm``. Equal to
        :meth:`forward_all`'s values; at ``head_level`` 1 with ``"nearest"`` it saves the (B, R, L, L, *S) tensor and
        its gradient, and with ``head_chunks`` the heads' last layer, matrices and products are recomputed per
        chunk in the backward pass instead of kept.
        """
        head = self.annotator.head
        if isinstance(head, GlobalConfusionMatrices):
            logits, probs, cm = self._matrices(x)
            trace = torch.diagonal(cm, dim1=2, dim2=3).sum(-1)
            return {"logits": logits, "probs": probs, "rater_probs": self._rater_probs(cm, probs), "cm_trace": trace}
        logits, features = self._logits_and_features(x)
        probs = torch.softmax(logits, dim=1)
        hidden = head.hidden(self.annotator.head_input(x, features))  # batch statistics over the whole batch
        if self.head_chunks == 0 or not torch.is_grad_enabled():
            rater_probs, trace = self._rater_probs_and_trace(hidden, probs)
        else:
            parts = [
                checkpoint(self._rater_probs_and_trace, h, p, use_reentrant=False)
                for h, p in zip(hidden.chunk(self.head_chunks), probs.chunk(self.head_chunks))
            ]
            rater_probs, trace = torch.cat([r for r, _ in parts]), torch.cat([t for _, t in parts])
        return {"logits": logits, "probs": probs, "rater_probs": rater_probs, "cm_trace": trace}

    def _rater_probs_and_trace(self, hidden: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The heads' hidden features and ``p`` -> ``A_r · p`` (B, R, L, *S) and the matrices' trace (B, R, *S)."""
        cm = self.annotator.head.matrices(hidden)
        trace = torch.diagonal(cm, dim1=2, dim2=3).sum(-1)
        return self._rater_probs(cm, probs), self._full_resolution(trace, self.spatial_dims)


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
