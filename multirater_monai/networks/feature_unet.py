"""A MONAI U-Net used as a feature extractor: its output channels are features, not logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import ADN
from monai.networks.nets import UNet

__all__ = ["FeatureUNet"]


class FeatureUNet(torch.nn.Module):
    """MONAI :class:`~monai.networks.nets.UNet` giving ``out_channels`` feature maps, then norm + activation.

    MONAI's U-Net ends with a plain convolution (its output is meant to be logits). Used as a trunk
    whose output feeds further heads, it is followed here by an :class:`~monai.networks.blocks.ADN`
    block (norm, then activation) so that the heads receive non-linear features.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels ``C``.
        out_channels: feature channels ``F``.
        channels: U-Net channels per level, as in MONAI.
        strides: U-Net strides between levels, as in MONAI.
        num_res_units: residual units per block, as in MONAI.
        norm: normalisation of the U-Net and of the feature block.
        act: activation of the U-Net and of the feature block.
        dropout: dropout of the U-Net.

    Shapes:
        input (B, C, *S) -> output (B, F, *S); every spatial size must be divisible by the product of
        ``strides``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] = (2, 2, 2),
        num_res_units: int = 2,
        norm: tuple | str = "batch",
        act: tuple | str = "PRELU",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.unet = UNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            channels=channels,
            strides=strides,
            num_res_units=num_res_units,
            norm=norm,
            act=act,
            dropout=dropout,
        )
        self.adn = ADN(ordering="NA", in_channels=out_channels, act=act, norm=norm, norm_dim=spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) image -> (B, F, *S) features."""
        return self.adn(self.unet(x))
