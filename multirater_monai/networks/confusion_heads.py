"""Annotator heads of CM-Net: per-rater confusion matrices, pixel-wise, low-rank pixel-wise or global.

Convention (:mod:`multirater_monai.metrics.confusion`): a confusion matrix ``A`` of ``L``
classes is column-stochastic, ``A[i, j] = p(rater says i | truth is j)``. Every head here produces
unnormalised scores ``M`` and normalises them with a softmax over the first ("noisy") axis ``i``::

    A[i, j] = exp(M[i, j]) / sum_k exp(M[k, j])

so every entry is in (0, 1) and every column sums to 1. Near-identity initialisation adds ``delta``
to the diagonal scores: with no other contribution the initial matrix is ``softmax(delta * I)``, whose
diagonal is ``e^delta / (e^delta + L - 1)`` (``delta = 3``: 0.95 for ``L = 2``, 0.87 for ``L = 4``).
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv

__all__ = ["RaterConvHeads", "PixelConfusionHead", "LowRankConfusionHead", "GlobalConfusionMatrices"]


class RaterConvHeads(torch.nn.Module):
    """``R`` small convolutional heads on one shared feature map, computed together.

    Each head is two conv blocks (``kernel_size`` conv, norm, activation) and a 1×1 convolution (with
    ``out_stride`` > 1 a transposed convolution of kernel and stride ``out_stride`` instead: every pixel of
    an ``out_stride^d`` output block gets its own linear map of the block's features). The
    first block maps the shared features to ``R * hidden_channels`` channels (each rater's slice has
    its own filters), the next layers are grouped convolutions with ``groups=R``, so rater ``r`` only
    sees its own hidden channels: the result is ``R`` independent heads (up to normalisation layers
    that mix channels, e.g. group norm, and a PReLU whose single slope is shared).

    With ``shared_hidden`` the two conv blocks are one ``hidden_channels`` block pair for all raters and
    only the output layer is per rater (``R * K`` outputs of the same hidden features): ``R`` times fewer
    hidden channels, which is where the heads' cost lies at full resolution (not the paper's layout).

    Args:
        spatial_dims: 2 or 3.
        in_channels: feature channels ``F``.
        num_raters: ``R``.
        out_channels: output channels per rater ``K``.
        hidden_channels: hidden channels per rater ``H``.
        norm: normalisation of the conv blocks.
        act: activation of the conv blocks.
        kernel_size: kernel size of the conv blocks.
        out_stride: up-sampling factor of the output layer (1: a 1×1 convolution).
        shared_hidden: one pair of conv blocks for all raters (see above).

    Shapes:
        input (B, F, *S) -> output (B, R, K, *(S · out_stride)).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_raters: int,
        out_channels: int,
        hidden_channels: int = 16,
        norm: tuple | str = "batch",
        act: tuple | str = "PRELU",
        kernel_size: int = 3,
        out_stride: int = 1,
        shared_hidden: bool = False,
    ) -> None:
        super().__init__()
        if num_raters < 1 or out_channels < 1 or hidden_channels < 1 or out_stride < 1:
            raise ValueError("num_raters, out_channels, hidden_channels and out_stride must be positive.")
        self.num_raters = num_raters
        self.out_channels = out_channels
        # the hidden blocks' groups: one per rater, or one for all (shared_hidden)
        self.groups = 1 if shared_hidden else num_raters
        hidden = hidden_channels if shared_hidden else num_raters * hidden_channels
        self.blocks = torch.nn.Sequential(
            Convolution(spatial_dims, in_channels, hidden, kernel_size=kernel_size, norm=norm, act=act),
            Convolution(
                spatial_dims, hidden, hidden, kernel_size=kernel_size, norm=norm, act=act, groups=self.groups
            ),
        )
        self.out: torch.nn.Module
        if out_stride == 1:
            self.out = Conv[Conv.CONV, spatial_dims](hidden, num_raters * out_channels, kernel_size=1, groups=self.groups)
        else:
            self.out = Conv[Conv.CONVTRANS, spatial_dims](
                hidden, num_raters * out_channels, kernel_size=out_stride, stride=out_stride, groups=self.groups
            )

    def zero_outputs(self, start: int, stop: int) -> None:
        """Zero the output layer's weights and bias for each rater's output channels ``[start, stop)``."""
        k = self.out_channels
        with torch.no_grad():
            for r in range(self.num_raters):
                self.out.bias[r * k + start : r * k + stop].zero_()
                if self.out.transposed and self.groups == 1:
                    # (in, out, *kernel): every input feeds rater r's outputs r·k + [start, stop)
                    self.out.weight[:, r * k + start : r * k + stop].zero_()
                elif self.out.transposed:
                    # (in, out / groups, *kernel): rater r's inputs are its group's rows
                    rows = self.out.weight.shape[0] // self.num_raters
                    self.out.weight[r * rows : (r + 1) * rows, start:stop].zero_()
                else:
                    self.out.weight[r * k + start : r * k + stop].zero_()

    def scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, R·H, *S) hidden features (``blocks``' output) -> (B, R, K, *(S · out_stride)), the output layer."""
        y = self.out(hidden)
        return y.view([y.shape[0], self.num_raters, self.out_channels] + list(y.shape[2:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F, *S) features -> (B, R, K, *(S · out_stride))."""
        return self.scores(self.blocks(x))


class _ConvConfusionHead(torch.nn.Module):
    """What the pixel-wise and low-rank heads share: :class:`RaterConvHeads` in ``heads``, split into the conv blocks
    (:meth:`hidden`, batch statistics over the whole batch) and the per-pixel rest (``matrices``, which
    :meth:`~multirater_monai.networks.CMNet.forward_train` may run and recompute in batch chunks). Subclasses set ``heads`` and define ``matrices``."""

    def hidden(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F, *S) features -> (B, R·H, *S), the heads' conv blocks (normalisation included)."""
        return self.heads.blocks(features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F, *S) features -> (B, R, L, L, *S) column-stochastic matrices."""
        return self.matrices(self.hidden(features))

    def matrices(self, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class PixelConfusionHead(_ConvConfusionHead):
    """Pixel-wise confusion matrices: per rater a conv head with ``L²`` outputs, column softmax.

    Channel ``i * L + j`` of rater ``r`` is the score ``M[i, j]``. With ``identity_init = delta != 0``
    the last 1×1 layer starts with zero weights and bias ``delta`` on the diagonal scores, so every
    initial matrix is exactly ``softmax(delta * I)`` (its weights receive gradients from the first
    step since the features are non-zero); ``identity_init = 0`` keeps PyTorch's default init.

    Args:
        spatial_dims: 2 or 3.
        in_channels: feature channels ``F``.
        num_classes: ``L``.
        num_raters: ``R``.
        hidden_channels: hidden channels per rater.
        norm: normalisation of the conv blocks.
        act: activation of the conv blocks.
        identity_init: diagonal score offset ``delta`` of the initial matrices.
        kernel_size: kernel size of the heads' two conv blocks.
        out_stride: up-sampling factor of the heads' output layer (see :class:`RaterConvHeads`).
        shared_hidden: one pair of hidden conv blocks for all raters (see :class:`RaterConvHeads`).

    Shapes:
        input (B, F, *S) -> output (B, R, L, L, *(S · out_stride)), columns (axis 2) summing to 1.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        num_raters: int,
        hidden_channels: int = 16,
        norm: tuple | str = "batch",
        act: tuple | str = "PRELU",
        identity_init: float = 3.0,
        kernel_size: int = 3,
        out_stride: int = 1,
        shared_hidden: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_raters = num_raters
        self.heads = RaterConvHeads(
            spatial_dims, in_channels, num_raters, num_classes * num_classes, hidden_channels, norm, act, kernel_size,
            out_stride, shared_hidden,
        )
        if identity_init != 0:
            self.heads.zero_outputs(0, num_classes * num_classes)
            with torch.no_grad():
                diagonal = torch.eye(num_classes).flatten() * float(identity_init)
                self.heads.out.bias.copy_(diagonal.repeat(num_raters))

    def matrices(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, R·H, *S) hidden features -> (B, R, L, L, *(S · out_stride)) column-stochastic matrices: the output
        layer and the softmax, per pixel (no normalisation across the batch)."""
        scores = self.heads.scores(hidden)
        scores = scores.view(
            [scores.shape[0], self.num_raters, self.num_classes, self.num_classes] + list(scores.shape[3:])
        )
        return torch.softmax(scores, dim=2)


class LowRankConfusionHead(_ConvConfusionHead):
    """Low-rank pixel-wise confusion matrices (CM-Net paper, appendix A.4), with an identity residual.

    Per rater and pixel the head outputs two ``L × k`` factors ``B1``, ``B2`` (``k = rank``) and::

        M = B1 · B2ᵀ + c_r · I,        A = softmax over i of M  (column-stochastic)

    ``c_r`` is a learned per-rater scalar (the identity residual), initialised to ``identity_init``.
    The head's last layer has ``2 · L · k`` outputs per rater instead of ``L²``: its parameters, its
    FLOPs and its output maps scale with ``L · k``. The scores ``M`` and the normalised matrix ``A`` are
    then formed per pixel (``L²`` per rater, ``L² · k`` multiply-adds, transiently) because the softmax
    of a low-rank matrix is not low-rank.

    With ``identity_init != 0`` the ``B2`` outputs start at zero (weights and bias) while ``B1`` keeps a
    random init, so the initial matrices are exactly ``softmax(c · I)`` and both factors receive
    gradients (``B2`` at once, ``B1`` once ``B2`` moved: both factors at zero would be a saddle).
    Channels ``[0, L·k)`` of rater ``r`` are ``B1`` (row-major ``L × k``), ``[L·k, 2·L·k)`` are ``B2``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: feature channels ``F``.
        num_classes: ``L``.
        num_raters: ``R``.
        rank: ``k >= 1``.
        hidden_channels: hidden channels per rater.
        norm: normalisation of the conv blocks.
        act: activation of the conv blocks.
        identity_init: initial identity residual ``c``.
        kernel_size: kernel size of the heads' two conv blocks.
        out_stride: up-sampling factor of the heads' output layer (see :class:`RaterConvHeads`).
        shared_hidden: one pair of hidden conv blocks for all raters (see :class:`RaterConvHeads`).

    Shapes:
        input (B, F, *S) -> output (B, R, L, L, *(S · out_stride)), columns (axis 2) summing to 1.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        num_raters: int,
        rank: int = 1,
        hidden_channels: int = 16,
        norm: tuple | str = "batch",
        act: tuple | str = "PRELU",
        identity_init: float = 3.0,
        kernel_size: int = 3,
        out_stride: int = 1,
        shared_hidden: bool = False,
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}.")
        self.num_classes = num_classes
        self.num_raters = num_raters
        self.rank = rank
        per_rater = 2 * num_classes * rank
        self.heads = RaterConvHeads(
            spatial_dims, in_channels, num_raters, per_rater, hidden_channels, norm, act, kernel_size, out_stride,
            shared_hidden,
        )
        self.residual = torch.nn.Parameter(torch.full((num_raters,), float(identity_init)))
        if identity_init != 0:
            self.heads.zero_outputs(num_classes * rank, per_rater)

    def factors(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, R·H, *S) hidden features -> ``B1``, ``B2``, each (B, R, L, k, *(S · out_stride))."""
        f = self.heads.scores(hidden)
        f = f.view([f.shape[0], self.num_raters, 2, self.num_classes, self.rank] + list(f.shape[3:]))
        return f[:, :, 0], f[:, :, 1]

    def matrices(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, R·H, *S) hidden features -> (B, R, L, L, *(S · out_stride)) column-stochastic matrices: the output
        layer, the low-rank product and the softmax, per pixel (no normalisation across the batch)."""
        b1, b2 = self.factors(hidden)
        scores = torch.einsum("brik...,brjk...->brij...", b1, b2)
        ones = [1] * (scores.ndim - 4)
        eye = torch.eye(self.num_classes, dtype=scores.dtype, device=scores.device)
        residual = self.residual.to(scores.dtype).view([1, self.num_raters, 1, 1] + ones)
        scores = scores + residual * eye.view([1, 1, self.num_classes, self.num_classes] + ones)
        return torch.softmax(scores, dim=2)


class GlobalConfusionMatrices(torch.nn.Module):
    """One image-independent confusion matrix per rater (Tanno et al. 2019): a (R, L, L) score parameter.

    The scores start at ``identity_init * I``; the matrices are their softmax over the noisy axis.

    Args:
        num_classes: ``L``.
        num_raters: ``R``.
        identity_init: diagonal score offset ``delta`` of the initial matrices.

    Shapes:
        :meth:`matrices`: (R, L, L). ``forward``: input (B, F, *S) features (only their batch and
        spatial sizes are used) -> (B, R, L, L, *S), an ``expand`` of :meth:`matrices` (no copy).
    """

    def __init__(self, num_classes: int, num_raters: int, identity_init: float = 3.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_raters = num_raters
        self.scores = torch.nn.Parameter(float(identity_init) * torch.eye(num_classes).repeat(num_raters, 1, 1))

    def matrices(self) -> torch.Tensor:
        """(R, L, L) column-stochastic matrices."""
        return torch.softmax(self.scores, dim=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F, *S) -> (B, R, L, L, *S) expanded view of the global matrices."""
        spatial = list(features.shape[2:])
        shape = [self.num_raters, self.num_classes, self.num_classes]
        cm = self.matrices().view([1] + shape + [1] * len(spatial))
        return cm.expand([features.shape[0]] + shape + spatial)
