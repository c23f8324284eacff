"""Attention over patches of 2D / 3D feature maps: the building blocks of MrPrism's ConP and DivP.

A feature map (B, C, *S) becomes a sequence of patch tokens by a patch embedding (a convolution whose
kernel and stride are the patch size ``p``, as ViT's linear projection of flattened patches): (B, N, D)
with ``N = prod(S / p)``. Positions are fixed sine / cosine encodings of the patch grid (DETR's), so a
block works at any input size divisible by its patch size. Blocks are post-norm, as MrPrism describes
them: attention, residual, layer norm, then MLP, residual, layer norm. They use PyTorch's
``nn.MultiheadAttention`` (separate query, key and value inputs, which ConP needs) and MONAI's
``MLPBlock``; everything is TorchScript-compatible.
"""

from __future__ import annotations

import math

import torch
from monai.networks.blocks import MLPBlock
from monai.networks.layers.factories import Conv

__all__ = [
    "CrossAttentionStage",
    "PatchTokens",
    "SelfAttentionBlock",
    "grid_position_encoding",
    "patch_grid",
]


def patch_grid(spatial: list[int], patch: int) -> list[int]:
    """The patch grid of a spatial shape; raises ValueError when a size is not divisible by ``patch``."""
    grid: list[int] = []
    for s in spatial:
        if s % patch != 0:
            raise ValueError(f"spatial size {spatial} is not divisible by the attention patch size {patch}.")
        grid.append(s // patch)
    return grid


def grid_position_encoding(grid: list[int], dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Sine / cosine encodings of a 2D or 3D token grid, (N, dim), row-major like the tokens.

    The ``dim`` channels are split between the axes; each axis uses half of its share for sines and half
    for cosines of its coordinate at geometric frequencies (DETR's encoding). Channels left over when
    ``dim`` is not divisible are zero.
    """
    n_axes = len(grid)
    per_axis = (dim // n_axes) // 2 * 2
    half = per_axis // 2
    n = 1
    for g in grid:
        n *= g
    out = torch.zeros(n, dim, device=device, dtype=torch.float32)
    if half == 0:
        return out.to(dtype)
    freq = torch.exp(torch.arange(half, device=device, dtype=torch.float32) * (-math.log(10000.0) / max(half, 1)))
    coords = torch.meshgrid([torch.arange(g, device=device, dtype=torch.float32) for g in grid], indexing="ij")
    for a in range(n_axes):
        angle = coords[a].reshape(-1, 1) * freq.reshape(1, -1)
        out[:, a * per_axis : a * per_axis + half] = torch.sin(angle)
        out[:, a * per_axis + half : (a + 1) * per_axis] = torch.cos(angle)
    return out.to(dtype)


class PatchTokens(torch.nn.Module):
    """Feature map (B, C, *S) <-> patch tokens (B, N, D): patch embedding and its transpose.

    Args:
        spatial_dims: 2 or 3.
        in_channels: ``C``.
        hidden_size: ``D``.
        patch_size: ``p``, the patch edge (the same along every axis).
    """

    def __init__(self, spatial_dims: int, in_channels: int, hidden_size: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = int(patch_size)
        self.embed = Conv[Conv.CONV, spatial_dims](in_channels, hidden_size, self.patch_size, self.patch_size)
        self.unembed = Conv[Conv.CONVTRANS, spatial_dims](hidden_size, in_channels, self.patch_size, self.patch_size)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) -> (B, N, D); ``S`` divisible by the patch size (see :func:`patch_grid`)."""
        return self.embed(x).flatten(2).transpose(1, 2)

    def features(self, tokens: torch.Tensor, grid: list[int]) -> torch.Tensor:
        """(B, N, D) tokens on ``grid`` -> (B, C, *S)."""
        b, _, d = tokens.shape
        return self.unembed(tokens.transpose(1, 2).reshape([b, d] + grid))


class SelfAttentionBlock(torch.nn.Module):
    """Post-norm transformer block on tokens: ``x = LN(x + MHA(x + E, x + E, x)); x = LN(x + MLP(x))``.

    Shapes: ``forward(x, pos)``: (B, N, D), (N, D) -> (B, N, D).
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden size {hidden_size} is not divisible by {num_heads} attention heads.")
        self.attn = torch.nn.MultiheadAttention(hidden_size, num_heads, dropout=dropout, batch_first=True)
        self.norm1 = torch.nn.LayerNorm(hidden_size)
        self.mlp = MLPBlock(hidden_size, mlp_dim, dropout, act="GELU")
        self.norm2 = torch.nn.LayerNorm(hidden_size)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        qk = x + pos.unsqueeze(0)
        x = self.norm1(x + self.attn(qk, qk, x, need_weights=False)[0])
        return self.norm2(x + self.mlp(x))


class CrossAttentionStage(torch.nn.Module):
    """ConP's attention at one decoder level: confidence embedding queries, segmentation features keys / values.

    ``f̄ = Attention(q = e + E_w, k = f + E_f, v = f)`` on patch tokens (eq. 7), then residual + layer norm,
    MLP, residual + layer norm; the tokens go back to a feature map, added to ``f``.

    Args:
        spatial_dims: 2 or 3.
        channels: ``C`` of the feature map and of the confidence embedding.
        hidden_size: token size ``D``.
        num_heads: attention heads.
        patch_size: patch edge ``p``.

    Shapes: ``forward(f, e)``: (B, C, *S), (B, C, *S) -> (B, C, *S); ``S`` divisible by ``p``.
    """

    def __init__(self, spatial_dims: int, channels: int, hidden_size: int, num_heads: int, patch_size: int) -> None:
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden size {hidden_size} is not divisible by {num_heads} attention heads.")
        self.features_tokens = PatchTokens(spatial_dims, channels, hidden_size, patch_size)
        self.query_tokens = Conv[Conv.CONV, spatial_dims](channels, hidden_size, patch_size, patch_size)
        self.attn = torch.nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
        self.norm1 = torch.nn.LayerNorm(hidden_size)
        self.mlp = MLPBlock(hidden_size, hidden_size, 0.0, act="GELU")
        self.norm2 = torch.nn.LayerNorm(hidden_size)
        self.patch_size = int(patch_size)
        self.hidden_size = int(hidden_size)

    def forward(self, f: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        grid = patch_grid([int(s) for s in f.shape[2:]], self.patch_size)
        pos = grid_position_encoding(grid, self.hidden_size, f.device, f.dtype).unsqueeze(0)
        tf = self.features_tokens.tokens(f)
        tq = self.query_tokens(e).flatten(2).transpose(1, 2)
        x = self.norm1(tf + self.attn(tq + pos, tf + pos, tf, need_weights=False)[0])
        x = self.norm2(x + self.mlp(x))
        return f + self.features_tokens.features(x, grid)
