"""MrPrism (paper ``004_…``): self-calibrated segmentation by a ConP / DivP recurrence.

An encoder embeds the image once (``f0`` and the skip features). Each recurrence runs

- **ConP** (``ỹ_i = ConP(f, w_{i-1})``): a U-Net-style decoder whose every level lets the embedded rater
  confidences query the segmentation features (eq. 7, :class:`~multirater_monai.networks.attention.CrossAttentionStage`),
  then concatenates the encoder's skip feature and up-samples; the confidences are embedded to each
  level's size by a separable convolution (point-wise, then depth-wise strided);
- **DivP** (``z̃_i = DivP(ỹ_i)``): stacked self-attention blocks over patches of ConP's mask, the last
  with one head per rater, each head giving that rater's map; the confidences are ``w_i = log z̃_i``
  (Proposition 1).

The confidences handed to the next recurrence are detached (eq. 13: no recurrence's gradients reach
the one before), and DivP reads ConP's mask without back-propagating into it (each sub-model solves its
own sub-problem of eq. 6; Algorithm 1 trains DivP alone with the shuffle loss). The first confidences
follow eq. 14: ``w_0 = log clip(ψ + ε, floor, 1)`` with ``ψ ~ U(a, b)`` per rater (one draw per batch)
and ``ε ~ N(0, σ²)`` per element while training, and the equal confidence ``(a + b) / 2`` in eval mode,
so that inference is deterministic.

``forward(image)`` returns the last recurrence's calibrated logits only; :meth:`MrPrism.forward_all`
returns every recurrence (see :class:`MrPrismOutput`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypedDict

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.layers.factories import Conv

from multirater_monai.errors import UserError
from multirater_monai.networks.attention import (
    CrossAttentionStage,
    SelfAttentionBlock,
    grid_position_encoding,
    patch_grid,
)

__all__ = ["ConfidenceEmbedding", "ConPStage", "DivP", "MrPrism", "MrPrismOutput"]


class MrPrismOutput(TypedDict):
    """All outputs of :meth:`MrPrism.forward_all` (a plain dict at run time); ``T`` recurrences.

    - ``logits``: (B, L, *S) the last recurrence's calibrated logits (what ``forward`` returns).
    - ``recurrence_logits``: (B, T, L, *S) ConP's logits of every recurrence, Rec0 .. Rec(T-1).
    - ``rater_logits``: (B, T, R, L, *S) DivP's per-rater logits of every recurrence.
    - ``rater_probs``: (B, R, L, *S) the last recurrence's per-rater probabilities ``z̃``.
    - ``confidence``: (B, R, L, *S) the last confidences ``w = log z̃`` (what a next recurrence would get).
    - ``initial_confidence``: (B, R, L, *S) ``w_0`` (eq. 14), which the loss fuses the labels with first.
    """

    logits: torch.Tensor
    recurrence_logits: torch.Tensor
    rater_logits: torch.Tensor
    rater_probs: torch.Tensor
    confidence: torch.Tensor
    initial_confidence: torch.Tensor


class ConfidenceEmbedding(torch.nn.Module):
    """Separable convolution embedding the confidence maps to one decoder level.

    A depth-wise convolution with kernel and stride ``factor`` brings each of the ``R·L`` confidence maps to
    the level's size (a 3×3 depth-wise convolution at full resolution), then a point-wise convolution deepens
    them to ``C`` channels (norm, activation). The paper names the two convolutions point-wise first; the
    depth-wise one goes first here so that no ``C``-channel map is computed at full resolution (the order of
    a standard separable convolution; ``bundles/mrprism/docs/README.md``).

    Shapes: (B, R·L, *S) -> (B, C, *S / factor).
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: int, factor: int, norm, act) -> None:
        super().__init__()
        kernel, padding = (factor, 0) if factor > 1 else (3, 1)
        self.depthwise = Conv[Conv.CONV, spatial_dims](
            in_channels, in_channels, kernel, stride=factor, padding=padding, groups=in_channels
        )
        self.pointwise = Convolution(spatial_dims, in_channels, channels, kernel_size=1, norm=norm, act=act)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(w))


class ConPStage(torch.nn.Module):
    """One ConP level: confidence-queried attention, concatenation of the skip feature, up-step.

    Shapes: ``forward(x, skip, w)``: (B, C, *S_l), (B, C, *S_l), (B, R·L, *S) -> ``up`` of (B, 2C, *S_l).
    """

    def __init__(self, embedding: ConfidenceEmbedding, attention: CrossAttentionStage, up: torch.nn.Module) -> None:
        super().__init__()
        self.embedding = embedding
        self.attention = attention
        self.up = up

    def forward(self, x: torch.Tensor, skip: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, self.embedding(w))
        return self.up(torch.cat([x, skip], dim=1))


class DivP(torch.nn.Module):
    """DivP: self-attention over patches of the calibrated mask, one head per rater in the last block.

    The mask's patches are embedded to ``hidden_size`` tokens with sine / cosine positions; ``blocks - 1``
    post-norm multi-head self-attention blocks follow; the last block has ``R`` heads of ``head_dim``
    each (residual with the head's value, layer norm, MLP, residual, layer norm), and each head's tokens
    are projected to its rater's patch of ``L`` logits. A rater's logits are ``log ỹ`` plus its head's
    output: a head learns how its rater departs from the calibrated mask.

    Shapes: ``forward(y_log)``: (B, L, *S) log-probabilities -> (B, R, L, *S) rater logits.
    """

    def __init__(
        self,
        spatial_dims: int,
        num_classes: int,
        num_raters: int,
        patch_size: int,
        hidden_size: int,
        num_heads: int,
        blocks: int,
        head_dim: int,
    ) -> None:
        super().__init__()
        if blocks < 1:
            raise ValueError(f"DivP needs at least one block, got {blocks}.")
        self.spatial_dims = int(spatial_dims)
        self.num_classes = int(num_classes)
        self.num_raters = int(num_raters)
        self.patch_size = int(patch_size)
        self.hidden_size = int(hidden_size)
        self.head_dim = int(head_dim)
        self.tokens = Conv[Conv.CONV, spatial_dims](num_classes, hidden_size, patch_size, patch_size)
        self.blocks = torch.nn.ModuleList(
            [SelfAttentionBlock(hidden_size, num_heads, hidden_size) for _ in range(blocks - 1)]
        )
        inner = num_raters * head_dim
        self.qk = torch.nn.Linear(hidden_size, 2 * inner)
        self.v = torch.nn.Linear(hidden_size, inner)
        self.norm1 = torch.nn.LayerNorm(head_dim)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(head_dim, head_dim), torch.nn.GELU(), torch.nn.Linear(head_dim, head_dim)
        )
        self.norm2 = torch.nn.LayerNorm(head_dim)
        out = num_classes * patch_size**spatial_dims
        self.out_weight = torch.nn.Parameter(torch.randn(num_raters, head_dim, out) * head_dim**-0.5 * 0.1)
        self.out_bias = torch.nn.Parameter(torch.zeros(num_raters, out))

    def forward(self, y_log: torch.Tensor) -> torch.Tensor:
        b = y_log.shape[0]
        spatial = [int(s) for s in y_log.shape[2:]]
        grid = patch_grid(spatial, self.patch_size)
        pos = grid_position_encoding(grid, self.hidden_size, y_log.device, y_log.dtype)
        x = self.tokens(y_log.exp()).flatten(2).transpose(1, 2)
        for block in self.blocks:
            x = block(x, pos)
        n = x.shape[1]
        qk = self.qk(x + pos.unsqueeze(0)).reshape(b, n, 2, self.num_raters, self.head_dim).permute(2, 0, 3, 1, 4)
        v = self.v(x).reshape(b, n, self.num_raters, self.head_dim).transpose(1, 2)  # values without positions
        h = F.scaled_dot_product_attention(qk[0], qk[1], v)  # (B, R, N, Dh)
        h = self.norm1(h + v)
        h = self.norm2(h + self.mlp(h))
        patches = torch.einsum("brnd,rdo->brno", h, self.out_weight) + self.out_bias[None, :, None, :]
        delta = self._fold(patches, grid)
        return y_log.unsqueeze(1) + delta

    def _fold(self, patches: torch.Tensor, grid: list[int]) -> torch.Tensor:
        """(B, R, N, L·p^d) patch logits -> (B, R, L, *S)."""
        b, r = patches.shape[0], patches.shape[1]
        p, c = self.patch_size, self.num_classes
        if self.spatial_dims == 2:
            x = patches.reshape(b, r, grid[0], grid[1], c, p, p).permute(0, 1, 4, 2, 5, 3, 6)
            return x.reshape(b, r, c, grid[0] * p, grid[1] * p)
        x = patches.reshape(b, r, grid[0], grid[1], grid[2], c, p, p, p).permute(0, 1, 5, 2, 6, 3, 7, 4, 8)
        return x.reshape(b, r, c, grid[0] * p, grid[1] * p, grid[2] * p)


class MrPrism(torch.nn.Module):
    """MrPrism: encoder, ConP and DivP run as a recurrence; 2D or 3D, any rater and class count.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels ``C``.
        num_classes: classes ``L`` (background included).
        num_raters: raters ``R`` (at least 2).
        channels: channels per level, as MONAI's U-Net (the last is the bottom's); ConP mirrors them.
        strides: the encoder's down-sampling strides, one per level but the bottom (``len(channels) - 1``).
        num_res_units: residual sub-units of each encoder level (MONAI's U-Net's down path).
        norm, act: normalisation and activation of the convolutional blocks.
        conp_patch_sizes: attention patch edge at each decoder level, finest first (one per stride).
        conp_hidden_size, conp_heads: ConP's attention token size and heads.
        divp_patch_size, divp_hidden_size, divp_heads, divp_blocks, divp_head_dim: DivP's attention
            patch edge, token size, heads of the first blocks, number of blocks (the paper: 4) and size of
            each rater head.
        recurrences: ConP / DivP passes ``T`` per forward (Algorithm 1's τ: 3).
        confidence_range: ``(a, b)`` of ``ψ ~ U(a, b)`` (eq. 14; eval mode uses ``(a + b) / 2``).
        confidence_noise: ``σ`` of ``ε ~ N(0, σ²)`` (eq. 14).
        confidence_floor: lower clip of the confidence probabilities, so that ``log`` stays finite.
        spatial_size: the training patch size, checked at construction (divisible by every level's
            stride product times its attention patch, and DivP's patch); None skips the check.

    Shapes: ``forward(image)``: (B, C, *S) -> (B, L, *S).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        num_raters: int,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] = (2, 2, 2),
        num_res_units: int = 2,
        norm: tuple | str = "batch",
        act: tuple | str = "PRELU",
        conp_patch_sizes: Sequence[int] | None = None,
        conp_hidden_size: int = 64,
        conp_heads: int = 4,
        divp_patch_size: int = 8,
        divp_hidden_size: int = 64,
        divp_heads: int = 4,
        divp_blocks: int = 4,
        divp_head_dim: int = 32,
        recurrences: int = 3,
        confidence_range: Sequence[float] = (0.1, 0.9),
        confidence_noise: float = 0.2,
        confidence_floor: float = 1e-3,
        spatial_size: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise UserError(f"MrPrism: spatial_dims must be 2 or 3, got {spatial_dims}.")
        if num_raters < 2:
            raise UserError(f"MrPrism needs at least two raters (num_raters = {num_raters}): it calibrates between raters.")
        if num_classes < 2:
            raise UserError(f"MrPrism: num_classes must be at least 2 (background included), got {num_classes}.")
        if len(strides) != len(channels) - 1:
            raise UserError(f"MrPrism: {len(channels)} channels need {len(channels) - 1} strides, got {len(strides)}.")
        if int(recurrences) < 1:
            raise UserError(f"MrPrism: recurrences must be at least 1, got {recurrences}.")
        a, b = float(confidence_range[0]), float(confidence_range[1])
        if not 0.0 < a <= b <= 1.0:
            raise UserError(f"MrPrism: confidence_range must satisfy 0 < a <= b <= 1, got {confidence_range}.")
        levels = len(strides)  # attention levels: the resolutions of the encoder's down-steps
        patches = list(conp_patch_sizes) if conp_patch_sizes is not None else [1] * levels
        if len(patches) != levels:
            raise UserError(f"MrPrism: conp_patch_sizes needs one patch size per decoder level ({levels}), got {patches}.")
        self.spatial_dims = int(spatial_dims)
        self.num_classes = int(num_classes)
        self.num_raters = int(num_raters)
        self.recurrences = int(recurrences)
        self.confidence_low, self.confidence_high = a, b
        self.confidence_noise = float(confidence_noise)
        self.confidence_floor = float(confidence_floor)
        factors = []  # down-sampling factor of each level's resolution
        for s in strides:
            factors.append((factors[-1] if factors else 1) * int(s))
        self.required_multiples = [factors[i] * int(patches[i]) for i in range(levels)] + [int(divp_patch_size)]
        if spatial_size is not None:
            self.check_spatial_size(spatial_size)

        # encoder: MONAI U-Net's down path (a strided residual unit per level, then the bottom unit at stride 1)
        units = max(int(num_res_units), 1)
        self.encoder = torch.nn.ModuleList()
        for i in range(levels):
            self.encoder.append(ResidualUnit(spatial_dims, in_channels if i == 0 else channels[i - 1], channels[i],
                                             strides=strides[i], subunits=units, act=act, norm=norm))
        self.bottom = ResidualUnit(spatial_dims, channels[levels - 1], channels[levels], strides=1, subunits=units,
                                   act=act, norm=norm)
        conf_channels = num_raters * num_classes
        stages = []
        for i in reversed(range(levels)):  # coarsest first: the decoding order
            x_channels = channels[levels] if i == levels - 1 else channels[i]
            top = i == 0
            out_channels = num_classes if top else channels[i - 1]
            # MONAI U-Net's up path: transposed strided convolution, then a one-unit residual unit
            up = torch.nn.Sequential(
                Convolution(spatial_dims, x_channels + channels[i], out_channels, strides=strides[i], kernel_size=3,
                            act=act, norm=norm, is_transposed=True),
                ResidualUnit(spatial_dims, out_channels, out_channels, strides=1, subunits=1, act=act, norm=norm,
                             last_conv_only=top),
            )
            stages.append(
                ConPStage(
                    ConfidenceEmbedding(spatial_dims, conf_channels, x_channels, factors[i], norm, act),
                    CrossAttentionStage(spatial_dims, x_channels, conp_hidden_size, conp_heads, int(patches[i])),
                    up,
                )
            )
        self.conp = torch.nn.ModuleList(stages)
        self.divp = DivP(spatial_dims, num_classes, num_raters, divp_patch_size, divp_hidden_size, divp_heads,
                         divp_blocks, divp_head_dim)

    def check_spatial_size(self, spatial_size: Sequence[int]) -> None:
        """Raise :class:`UserError` unless every axis of ``spatial_size`` fits the strides and attention patches."""
        size = [int(s) for s in spatial_size]
        if len(size) != self.spatial_dims:
            raise UserError(f"MrPrism: patch size {size} is not {self.spatial_dims}D.")
        multiple = math.lcm(*self.required_multiples)
        if any(s % multiple for s in size):
            raise UserError(
                f"MrPrism: patch size {size} must be divisible by {multiple} along every axis (the strides times "
                f"each level's attention patch, and DivP's patch {self.required_multiples[-1]}); choose a larger "
                "or rounder patch_size, or smaller conp_patch_sizes / divp_patch_size."
            )

    def initial_confidence(self, like: torch.Tensor) -> torch.Tensor:
        """``w_0`` (eq. 14) for a batch shaped like ``like`` (B, *, *S): (B, R, L, *S)."""
        shape = [like.shape[0], self.num_raters, self.num_classes] + [int(s) for s in like.shape[2:]]
        if self.training:
            psi_shape = [1, self.num_raters] + [1] * (len(shape) - 2)
            psi = torch.rand(psi_shape, device=like.device) * (self.confidence_high - self.confidence_low)
            psi = psi + self.confidence_low
            q = psi + torch.randn(shape, device=like.device) * self.confidence_noise
        else:
            q = torch.full(shape, 0.5 * (self.confidence_low + self.confidence_high), device=like.device)
        return torch.log(q.clamp(self.confidence_floor, 1.0)).to(like.dtype)

    def conp_pass(self, skips: list[torch.Tensor], bottom: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """ConP: encoder skip features (finest first), bottom feature and confidences (B, R, L, *S) -> logits (B, L, *S)."""
        w_flat = w.flatten(1, 2)
        x = bottom
        n = len(skips)
        for i, stage in enumerate(self.conp):
            x = stage(x, skips[n - 1 - i], w_flat)
        return x

    def forward_all(self, image: torch.Tensor, recurrences: int | None = None) -> dict[str, torch.Tensor]:
        """Every recurrence's outputs (:class:`MrPrismOutput`); ``recurrences`` overrides ``T``."""
        steps = self.recurrences if recurrences is None else int(recurrences)
        skips: list[torch.Tensor] = []
        x = image
        for level in self.encoder:
            x = level(x)
            skips.append(x)
        bottom = self.bottom(x)
        w0 = self.initial_confidence(image)
        w = w0
        seg: list[torch.Tensor] = []
        raters: list[torch.Tensor] = []
        for _ in range(steps):
            logits = self.conp_pass(skips, bottom, w.detach())
            rater_logits = self.divp(torch.log_softmax(logits.detach(), dim=1))
            seg.append(logits)
            raters.append(rater_logits)
            w = torch.log_softmax(rater_logits, dim=2).clamp_min(math.log(self.confidence_floor))
        rater_probs = torch.softmax(raters[-1], dim=2)
        return {
            "logits": seg[-1],
            "recurrence_logits": torch.stack(seg, dim=1),
            "rater_logits": torch.stack(raters, dim=1),
            "rater_probs": rater_probs,
            "confidence": w,
            "initial_confidence": w0,
        }

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) -> (B, L, *S): the calibrated logits of the last recurrence."""
        return self.forward_all(image)["logits"]
