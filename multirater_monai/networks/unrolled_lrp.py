"""Unrolled LRP (Yu et al., "Model guidance via explanations turns image classifiers into segmentation
models"): a CNN classifier whose LRP-0 heatmaps, one per class, are the segmentation logits.

:class:`ClassifierEncoder` is a plain convolutional classifier (convolution + ReLU blocks, max-pooling
between levels, global average pooling, one linear layer). It records what its decoders need: the
pre-activation of every convolution and the indices of every max-pool.

:class:`UnrolledLRP` runs LRP-0 back through the same layers (the paper's section 2.2): the bottleneck is
the Heaviside of the last pre-activation times the class row of the linear layer divided by the number of
pixels (Algorithm 2), each convolution is undone by a transposed convolution that calls the encoder's own
weight tensor (one parameter, so the encoder's and the decoder's gradients add up on it and the optimiser
steps it once), every ReLU becomes the Heaviside of the encoder's pre-activation ("tied activations"),
every max-pool an unpooling with the encoder's indices, and the input multiplies the result (summed over
the input channels). All classes go through the decoder at once, stacked along the batch axis. With LRP-0
this is input × gradient of the class score (a test checks it against autograd).

:class:`ClassifierUNet` is the comparable U-Net of the paper: the same encoder, a decoder of its own
(transposed convolution up-sampling, concatenated skip connections, free weights), the classifier head kept
for pre-training and for the multi-task variant.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, UpSample
from monai.networks.layers.factories import Conv
from torch import nn

__all__ = [
    "ARCHITECTURES",
    "ClassifierEncoder",
    "ClassifierUNet",
    "DECODER_ACTIVATIONS",
    "HEATMAP_SCALES",
    "UnrolledLRP",
    "classifier_segmenter",
]

DECODER_ACTIVATIONS = ("tied", "relu")
"""Activations of the unrolled decoder: ``"tied"`` (Heaviside of the encoder's pre-activations, the
paper's method) or ``"relu"`` (a standard ReLU on the decoder's own signal: the paper's WS-AE ablation)."""

HEATMAP_SCALES = ("sum", "mean")
"""How the heatmaps relate to the class scores: ``"sum"`` (LRP-0 as in the paper: without biases a class's
heatmap sums to its score) or ``"mean"`` (the same heatmap times the number of input pixels: its mean is the
score, so heatmap logits are of the order of the scores whatever the image size)."""


class ClassifierEncoder(nn.Module):
    """A convolutional image classifier that records its pre-activations and pooling indices.

    ``len(channels)`` levels of ``convs_per_level`` 3×3(×3) convolutions (padding 1) each followed by a
    ReLU; a 2×2(×2) max-pool between levels; global average pooling of the last level; a linear layer to
    ``num_classes`` scores (background included, as in the data contract's ``class_label``).

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels ``C``.
        num_classes: class scores ``L``.
        channels: output channels of each level.
        convs_per_level: convolutions per level.
        bias: biases in the convolutions and the linear layer. Without them LRP-0 conserves relevance:
            the heatmap of class ``c`` sums to its score.

    There is no normalisation layer: LRP-0 through batch norm needs it folded into the convolution (the
    paper's rule), which holds only with fixed statistics; a plain ReLU stack with He initialisation trains
    from scratch at this depth.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        channels: Sequence[int] = (16, 32, 64, 128),
        convs_per_level: int = 2,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if len(channels) < 1 or convs_per_level < 1:
            raise ValueError("the encoder needs at least one level of at least one convolution.")
        self.spatial_dims = spatial_dims
        self.num_classes = num_classes
        self.channels = [int(c) for c in channels]
        self.convs_per_level = int(convs_per_level)
        self.downsampling = 2 ** (len(self.channels) - 1)
        conv_type = Conv[Conv.CONV, spatial_dims]
        layers = []
        c_in = in_channels
        for c_out in self.channels:
            for _ in range(self.convs_per_level):
                layers.append(conv_type(c_in, c_out, kernel_size=3, padding=1, bias=bias))
                c_in = c_out
        self.convs = nn.ModuleList(layers)
        self.classifier = nn.Linear(self.channels[-1], num_classes, bias=bias)
        for conv in self.convs:  # He initialisation as for VGG: a plain ReLU stack keeps its signal's scale
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def pooled_after(self, index: int) -> bool:
        """Whether a max-pool follows convolution ``index`` (the last of every level but the last)."""
        return (index + 1) % self.convs_per_level == 0 and index + 1 < len(self.convs)

    def encode(self, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """(B, C, *S) image -> the pass: ``(scores, pre, skips, indices)``.

        ``scores`` (B, L); ``pre`` the pre-activation of every convolution; ``skips`` the activation of
        every level (before its pool; the last level's is the input of the average pooling); ``indices``
        the indices of every max-pool (its input is the ``skips`` entry of the same level).
        """
        for size in image.shape[2:]:
            if size % self.downsampling != 0:
                raise ValueError(
                    "every spatial size must be a multiple of {} (the encoder's max-pools), got {}.".format(
                        self.downsampling, image.shape[2:]
                    )
                )
        pre: list[torch.Tensor] = []
        skips: list[torch.Tensor] = []
        indices: list[torch.Tensor] = []
        x = image
        i = 0
        for conv in self.convs:
            z = conv(x)
            pre.append(z)
            x = F.relu(z)
            if self.pooled_after(i):
                skips.append(x)
                if self.spatial_dims == 2:
                    x, idx = F.max_pool2d_with_indices(x, 2, 2)
                else:
                    x, idx = F.max_pool3d_with_indices(x, 2, 2)
                indices.append(idx)
            i += 1
        skips.append(x)
        scores = self.classifier(x.flatten(2).mean(2))
        return scores, pre, skips, indices

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) -> (B, L) class scores."""
        return self.encode(image)[0]


class UnrolledLRP(nn.Module):
    """A classifier and its LRP-0 heatmaps as segmentation logits, with weights tied between the two.

    ``forward(image)`` returns the heatmaps (B, L, *S), the segmentation logits; ``forward_all(image)`` the
    dict ``{"logits": heatmaps, "class_logits": (B, L) scores}``. The decoder has no parameter of its own.

    Args:
        spatial_dims, in_channels, num_classes, channels, convs_per_level, bias: of the encoder
            (:class:`ClassifierEncoder`).
        decoder_activation: ``"tied"`` (the paper) or ``"relu"`` (WS-AE ablation), :data:`DECODER_ACTIVATIONS`.
        class_chunk: classes decoded together (memory: the decoder's activations are ``class_chunk`` times
            the encoder's); None decodes all classes in one pass.
        multiply_input: end with the multiplication by the input (LRP-0 = input × gradient, the paper's
            section 2.2.5); False stops one step earlier, at the gradient of the class score with respect to
            the input (summed over the input channels), as the authors' code does by default.
        heatmap_scale: ``"sum"`` (the paper's LRP-0) or ``"mean"`` (× the number of input pixels), see
            :data:`HEATMAP_SCALES`. A constant factor: the arg-max, the sign and the shape of every heatmap are
            unchanged; only the softmax's temperature during training differs.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        channels: Sequence[int] = (16, 32, 64, 128),
        convs_per_level: int = 2,
        bias: bool = True,
        decoder_activation: str = "tied",
        class_chunk: int | None = None,
        multiply_input: bool = True,
        heatmap_scale: str = "sum",
    ) -> None:
        super().__init__()
        if heatmap_scale not in HEATMAP_SCALES:
            raise ValueError(f"heatmap_scale must be one of {HEATMAP_SCALES}, got {heatmap_scale!r}.")
        if decoder_activation not in DECODER_ACTIVATIONS:
            raise ValueError(f"decoder_activation must be one of {DECODER_ACTIVATIONS}, got {decoder_activation!r}.")
        if class_chunk is not None and class_chunk < 1:
            raise ValueError(f"class_chunk must be >= 1 or None, got {class_chunk}.")
        self.encoder = ClassifierEncoder(spatial_dims, in_channels, num_classes, channels, convs_per_level, bias)
        self.spatial_dims = spatial_dims
        self.num_classes = num_classes
        self.tied = decoder_activation == "tied"
        self.class_chunk = num_classes if class_chunk is None else int(class_chunk)
        self.multiply_input = bool(multiply_input)
        self.mean_scaled = heatmap_scale == "mean"

    def _gate(self, signal: torch.Tensor, pre: torch.Tensor, k: int) -> torch.Tensor:
        """The unrolled activation: Heaviside of the encoder's pre-activation, broadcast over the ``k`` classes
        of the (B·k, ...) signal (the mask is kept once for the backward pass, not once per class), or a ReLU
        of the signal."""
        if self.tied:
            per_class = signal.reshape([pre.shape[0], k] + list(signal.shape[1:]))
            return (per_class * (pre > 0).to(signal.dtype).unsqueeze(1)).reshape(signal.shape)
        return F.relu(signal)

    def decode(
        self, image: torch.Tensor, pre: list[torch.Tensor], skips: list[torch.Tensor], indices: list[torch.Tensor], classes: torch.Tensor
    ) -> torch.Tensor:
        """Heatmaps (B, K, *S) of the ``K`` classes ``classes`` from the encoder's pass (:meth:`ClassifierEncoder.encode`)."""
        batch = image.shape[0]
        k = classes.shape[0]
        weights: list[torch.Tensor] = []
        for conv in self.encoder.convs:
            weights.append(conv.weight)
        last = pre[-1]
        # bottleneck (Algorithm 2): the class row of the linear layer, spread evenly over the last level
        rows = self.encoder.classifier.weight[classes] / float(last[0, 0].numel())  # (K, C_last)
        signal = rows.unsqueeze(0).expand(batch, -1, -1).reshape(batch * k, rows.shape[1])
        for _ in range(self.spatial_dims):
            signal = signal.unsqueeze(-1)
        signal = self._gate(signal.expand([batch * k] + list(last.shape[1:])), last, k)
        pool = len(indices) - 1
        for i in range(len(weights) - 1, -1, -1):
            if self.spatial_dims == 2:
                signal = F.conv_transpose2d(signal, weights[i], padding=1)
            else:
                signal = F.conv_transpose3d(signal, weights[i], padding=1)
            if i > 0:
                if self.encoder.pooled_after(i - 1):
                    idx = indices[pool].repeat_interleave(k, dim=0)
                    size = skips[pool].shape[2:]
                    if self.spatial_dims == 2:
                        signal = F.max_unpool2d(signal, idx, 2, 2, output_size=list(size))
                    else:
                        signal = F.max_unpool3d(signal, idx, 2, 2, output_size=list(size))
                    pool -= 1
                signal = self._gate(signal, pre[i - 1], k)
        signal = signal.reshape([batch, k] + list(signal.shape[1:]))
        if self.multiply_input:
            signal = signal * image.unsqueeze(1)
        if self.mean_scaled:
            signal = signal * float(image[0, 0].numel())
        return signal.sum(2)

    def forward_all(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, C, *S) -> ``{"logits": (B, L, *S) heatmaps, "class_logits": (B, L) class scores}``."""
        scores, pre, skips, indices = self.encoder.encode(image)
        classes = torch.arange(self.num_classes, device=image.device)
        maps: list[torch.Tensor] = []
        for start in range(0, self.num_classes, self.class_chunk):
            maps.append(self.decode(image, pre, skips, indices, classes[start : start + self.class_chunk]))
        return {"logits": torch.cat(maps, 1), "class_logits": scores}

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) -> (B, L, *S) heatmaps, the segmentation logits."""
        return self.forward_all(image)["logits"]


class ClassifierUNet(nn.Module):
    """The U-Net of the paper's comparison: the classifier's encoder, a free decoder with concatenated skips.

    Each level of the decoder up-samples by a transposed convolution, concatenates the encoder's activation of
    that level and applies ``convs_per_level`` convolutions with batch norm and ReLU (MONAI's
    ``Convolution``); a 1×1 convolution gives the logits. The classifier head stays: it is trained in the
    classification pre-training stage and, in the multi-task variant, with the segmentation.

    ``forward(image)`` returns the segmentation logits (B, L, *S); ``forward_all(image)`` the dict
    ``{"logits", "class_logits"}``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        channels: Sequence[int] = (16, 32, 64, 128),
        convs_per_level: int = 2,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = ClassifierEncoder(spatial_dims, in_channels, num_classes, channels, convs_per_level, bias)
        chans = self.encoder.channels
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        # the decoder's initialisation leaves the global generator where the encoder's left it: with one seed,
        # everything drawn after the network (data order, augmentations) is that of UnrolledLRP, so both
        # pre-train the same classifier, as the paper's comparison requires
        with torch.random.fork_rng(devices=[]):
            for level in range(len(chans) - 1, 0, -1):
                c_deep, c_skip = chans[level], chans[level - 1]
                self.ups.append(UpSample(spatial_dims, c_deep, c_skip, scale_factor=2, mode="deconv"))
                convs = [
                    Convolution(spatial_dims, 2 * c_skip if j == 0 else c_skip, c_skip, kernel_size=3, norm="batch", act="relu")
                    for j in range(convs_per_level)
                ]
                self.blocks.append(nn.Sequential(*convs))
            self.head = Conv[Conv.CONV, spatial_dims](chans[0], num_classes, kernel_size=1)

    def forward_all(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, C, *S) -> ``{"logits": (B, L, *S), "class_logits": (B, L)}``."""
        scores, _, skips, _ = self.encoder.encode(image)
        x = skips[-1]
        j = 0
        for up, block in zip(self.ups, self.blocks):
            x = block(torch.cat([up(x), skips[-2 - j]], 1))
            j += 1
        return {"logits": self.head(x), "class_logits": scores}

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) -> (B, L, *S) segmentation logits."""
        return self.forward_all(image)["logits"]


ARCHITECTURES = ("unrolled_lrp", "unet")
"""What :func:`classifier_segmenter` builds on the classifier: its unrolled LRP, or the comparable U-Net."""


def classifier_segmenter(
    architecture: str,
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    channels: Sequence[int] = (16, 32, 64, 128),
    convs_per_level: int = 2,
    bias: bool = True,
    decoder_activation: str = "tied",
    class_chunk: int | None = None,
    multiply_input: bool = True,
    heatmap_scale: str = "sum",
) -> nn.Module:
    """The network of the unrolled-LRP bundle: ``"unrolled_lrp"`` (:class:`UnrolledLRP`, with
    ``decoder_activation``, ``class_chunk``, ``multiply_input`` and ``heatmap_scale``) or ``"unet"`` (:class:`ClassifierUNet`, same encoder and
    classifier head; the decoder options do not apply to it). Both keep the encoder under ``encoder.``,
    so a pre-trained classifier loads into either."""
    if architecture == "unrolled_lrp":
        return UnrolledLRP(
            spatial_dims, in_channels, num_classes, channels, convs_per_level, bias, decoder_activation, class_chunk,
            multiply_input, heatmap_scale,
        )
    if architecture == "unet":
        return ClassifierUNet(spatial_dims, in_channels, num_classes, channels, convs_per_level, bias)
    raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}.")
