"""TAX (Tendency-and-Assignment Explainer): annotator-specific kernels chosen per pixel by a prototype assigner.

Paper: ``../shared/papers/000_…`` (Cheng et al.). Two parts:

- **F**, the tendency-preserving segmentation model (:class:`TendencySegmenter`): a MONAI U-Net trunk whose
  last 3×3 convolutions are *tendency layers* (:class:`TendencyConv`) holding ``N + 1`` kernel subsets
  (``N`` annotators and one shared, index ``N``); at each pixel an annotator mask picks the subset (eq. 1).
  The subsets are one convolution with ``(N + 1) · D`` outputs, then a gather by the mask: no loop over
  annotators, and a subset receives gradients only from the pixels that selected it (eq. 2-6 follow from
  the mask given in training, ``docs``). No normalisation sits between the tendency layers: batch
  statistics would let one image's annotator kernels move another image's loss.
- **G**, the annotator assigner (:class:`AnnotatorAssigner`): a prototype encoder E (strided MONAI
  convolutions, ``(B, d, *S / r)``) and a prototype bank P of ``N + 1`` groups of ``Q`` prototypes; the
  cosine similarity of every location to every prototype, the maximum within each group (eq. 9-10), the
  arg-max over groups upsampled ``r`` times is the annotator mask M^A (eq. 11).

:class:`TAX` holds both. Before :meth:`TAX.start_tendencies` (an action stage after the vanilla stage) the
network is the vanilla U-Net: every pixel uses the shared subset. That call copies the shared subset into
every annotator's and records it (buffer ``tendencies_started``), so a model saved before it is a plain
U-Net and one saved after it uses G's mask.

The *patch bank* buffers hold, for every prototype, the ``K`` training patches most similar to it (their
pixels, training-case index, corner and similarity), filled after training
(:class:`~multirater_monai.explain.PrototypePatchIndex`); they travel in ``model.pt``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import ADN, Convolution

from multirater_monai.networks.feature_unet import FeatureUNet

__all__ = ["TendencyConv", "TendencySegmenter", "AnnotatorAssigner", "TAX"]


def _upsample_nearest(x: torch.Tensor, factor: int, spatial_dims: int) -> torch.Tensor:
    """(B, C, *s) -> (B, C, *s·factor), each value repeated ``factor`` times along every spatial axis."""
    for axis in range(2, 2 + spatial_dims):
        x = x.repeat_interleave(factor, dim=axis)
    return x


def _pick(out: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, K, D, *S) outputs of K subsets and (B, *S) subset indices -> (B, D, *S), each pixel's own subset."""
    index = index.unsqueeze(1).unsqueeze(1).expand([out.shape[0], 1, out.shape[2]] + list(out.shape[3:]))
    return out.gather(1, index).squeeze(1)


class TendencyConv(torch.nn.Module):
    """A convolution holding ``num_subsets`` kernel subsets; each pixel takes the output of the subset its mask names.

    Subset ``k``'s weights are output channels ``k·D .. (k+1)·D - 1`` of one convolution (:meth:`subset_weight`).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: ``D``, output channels of one subset.
        num_subsets: ``N + 1``.
        kernel_size: the paper's 3.

    Shapes:
        x (B, C_in, *S), mask (B, *S) int64 in ``0..num_subsets-1`` -> (B, D, *S);
        :meth:`all_subsets`: (B, C_in, *S) -> (B, num_subsets, D, *S).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, num_subsets: int, kernel_size: int = 3) -> None:
        super().__init__()
        if num_subsets < 1:
            raise ValueError(f"num_subsets must be >= 1, got {num_subsets}.")
        self.out_channels = int(out_channels)
        self.num_subsets = int(num_subsets)
        self.conv = Convolution(
            spatial_dims, in_channels, self.out_channels * self.num_subsets, kernel_size=kernel_size, conv_only=True
        )

    def all_subsets(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return out.reshape([out.shape[0], self.num_subsets, self.out_channels] + list(out.shape[2:]))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            return self.grouped(x, mask)
        return self.dense(x, mask)

    def dense(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Every subset at every pixel, then the mask's: ``(N + 1) · D`` output channels computed."""
        return _pick(self.all_subsets(x), mask)

    @torch.jit.unused
    def grouped(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The same values as :meth:`dense`, computing only the subsets the batch's mask uses.

        One convolution with the kernels of the subsets present (the vanilla stage and the frozen teacher use
        the shared one only: ``D`` outputs instead of ``(N + 1) · D``); every subset present is the dense path.
        (Grouping the images by their own subsets would compute less but runs small-batch convolutions, which
        are slower than the dense one on a CPU in 3D.)
        """
        k, d = self.num_subsets, self.out_channels
        subsets = torch.unique(mask)
        if subsets.numel() == k:
            return self.dense(x, mask)
        conv = self.conv.conv
        weight = conv.weight.view(k, d, *conv.weight.shape[1:])[subsets].flatten(0, 1)
        bias = None if conv.bias is None else conv.bias.view(k, d)[subsets].flatten()
        out = conv._conv_forward(x, weight, bias)
        remap = torch.zeros(k, dtype=torch.long, device=mask.device)
        remap[subsets] = torch.arange(subsets.numel(), device=mask.device)
        return _pick(out.unflatten(1, (subsets.numel(), d)), remap[mask])

    def subset_weight(self, k: int) -> torch.Tensor:
        """The kernel subset ``k`` (a view of the convolution's weight): (D, C_in, *kernel)."""
        return self.conv.conv.weight[k * self.out_channels : (k + 1) * self.out_channels]

    def copy_subset(self, source: int) -> None:
        """Set every subset's weights and biases to those of subset ``source``."""
        with torch.no_grad():
            for param in (self.conv.conv.weight, self.conv.conv.bias):
                if param is not None:
                    per_subset = param.view(self.num_subsets, self.out_channels, *param.shape[1:])
                    per_subset.copy_(per_subset[source].expand_as(per_subset).clone())


class TendencySegmenter(torch.nn.Module):
    """F: a MONAI U-Net trunk, then two 3×3 tendency layers (hidden ``features`` channels, then the ``L`` logits).

    Args:
        spatial_dims, in_channels, channels, strides, num_res_units, norm, act, dropout: the U-Net trunk's.
        num_classes: ``L``.
        num_annotators: ``N``; subset ``N`` is the shared one.
        features: channels of the trunk's output and of the hidden tendency layer.

    Shapes:
        ``forward(x, mask)``: x (B, C, *S), mask (B, *S) int64 or None (shared everywhere) -> (B, L, *S);
        :meth:`each_subset`: (B, C, *S) -> (B, N + 1, L, *S), every subset applied at every pixel.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        num_annotators: int,
        features: int = 16,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] = (2, 2, 2),
        num_res_units: int = 2,
        norm: tuple | str = "batch",
        act: tuple | str = "PRELU",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_subsets = int(num_annotators) + 1
        self.shared = int(num_annotators)
        self.trunk = FeatureUNet(spatial_dims, in_channels, features, channels, strides, num_res_units, norm, act, dropout)
        self.hidden = TendencyConv(spatial_dims, features, features, self.num_subsets)
        self.act = ADN(ordering="A", act=act, in_channels=features)
        self.out = TendencyConv(spatial_dims, features, num_classes, self.num_subsets)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.trunk(x), mask)

    def head(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The tendency layers on the trunk's (B, F, *S) features under ``mask`` (None: shared everywhere)."""
        if mask is None:
            mask = torch.full(
                [features.shape[0]] + list(features.shape[2:]), self.shared, dtype=torch.long, device=features.device
            )
        return self.out(self.act(self.hidden(features, mask)), mask)

    def each_subset(self, x: torch.Tensor) -> torch.Tensor:
        return self.each_subset_head(self.trunk(x))

    def each_subset_head(self, features: torch.Tensor) -> torch.Tensor:
        """Every subset at every pixel on the trunk's (B, F, *S) features: (B, N + 1, L, *S)."""
        hidden = self.act(self.hidden.all_subsets(features).flatten(0, 1))  # (B·(N+1), D, *S)
        out = self.out.all_subsets(hidden)  # (B·(N+1), N+1, L, *S): subset j of the second layer on subset i's hidden
        b, k = features.shape[0], self.num_subsets
        out = out.reshape([b, k, k] + list(out.shape[2:]))
        return torch.diagonal(out, dim1=1, dim2=2).movedim(-1, 1)

    def tendency_layers(self) -> list[TendencyConv]:
        return [self.hidden, self.out]


class AnnotatorAssigner(torch.nn.Module):
    """G: prototype encoder E and prototype bank P; the soft annotator mask M (eq. 9-10).

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_annotators: ``N``; group ``N`` is the shared one.
        prototypes_per_group: ``Q``.
        prototype_dim: ``d``.
        channels: E's channels per level; every level but the first halves the resolution, so a location
            of M covers ``r = 2^(len(channels) - 1)`` pixels per axis (the paper's patch H/h).
        norm, act: E's normalisation and activation.

    Shapes:
        :meth:`similarities`: (B, C, *S) -> (B, N + 1, Q, *S / r), cosine in [-1, 1];
        ``forward``: (B, C, *S) -> M (B, N + 1, *S / r), the best similarity of each group.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_annotators: int,
        prototypes_per_group: int = 10,
        prototype_dim: int = 64,
        channels: Sequence[int] = (16, 32, 64),
        norm: tuple | str = "batch",
        act: tuple | str = "PRELU",
    ) -> None:
        super().__init__()
        if prototypes_per_group < 1:
            raise ValueError(f"prototypes_per_group must be >= 1, got {prototypes_per_group}.")
        if len(channels) < 1:
            raise ValueError("the prototype encoder needs at least one level of channels.")
        layers: list[torch.nn.Module] = []
        previous = in_channels
        for level, c in enumerate(channels):
            stride = 1 if level == 0 else 2
            layers.append(Convolution(spatial_dims, previous, c, strides=stride, kernel_size=3, norm=norm, act=act))
            layers.append(Convolution(spatial_dims, c, c, kernel_size=3, norm=norm, act=act))
            previous = c
        layers.append(Convolution(spatial_dims, previous, prototype_dim, kernel_size=1, conv_only=True))
        self.encoder = torch.nn.Sequential(*layers)
        self.num_groups = int(num_annotators) + 1
        self.prototypes_per_group = int(prototypes_per_group)
        self.prototype_dim = int(prototype_dim)
        self.patch_size = 2 ** (len(channels) - 1)
        self.prototypes = torch.nn.Parameter(torch.randn(self.num_groups, self.prototypes_per_group, self.prototype_dim))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """E(x), unit length per location: (B, d, *S / r)."""
        return F.normalize(self.encoder(x), dim=1)

    def similarities(self, x: torch.Tensor) -> torch.Tensor:
        z = self.embed(x)
        p = F.normalize(self.prototypes, dim=-1).reshape(-1, self.prototype_dim)  # ((N+1)·Q, d)
        sim = torch.einsum("pd,bd...->bp...", p, z)
        return sim.reshape([sim.shape[0], self.num_groups, self.prototypes_per_group] + list(sim.shape[2:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.similarities(x).amax(dim=2)


class TAX(torch.nn.Module):
    """F and G together: ``forward(image)`` is F's segmentation under G's annotator mask.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels ``C``.
        num_classes: ``L``.
        num_annotators: ``N`` (the datalist's raters).
        features: F's trunk output and hidden tendency channels.
        channels, strides, num_res_units, norm, act, dropout: F's U-Net trunk.
        prototypes_per_group: ``Q``.
        prototype_dim: ``d``.
        assigner_channels: E's channels per level (patch side ``2^(levels - 1)``).
        similarity_scale: the assignment logits are ``scale · M`` (cosines in [-1, 1] cannot make a confident
            softmax otherwise; a choice the paper leaves open).
        patches_per_prototype: ``K`` training patches kept per prototype in the patch bank.
        patch_context: side of a bank patch (pixels): the prototype's location with context around it.

    Shapes: image (B, C, *S), each spatial size a multiple of the trunk's total stride and of the patch side.
        ``forward`` -> (B, L, *S) logits.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        num_annotators: int,
        features: int = 16,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] = (2, 2, 2),
        num_res_units: int = 2,
        norm: tuple | str = "batch",
        act: tuple | str = "PRELU",
        dropout: float = 0.0,
        prototypes_per_group: int = 10,
        prototype_dim: int = 64,
        assigner_channels: Sequence[int] = (16, 32, 64),
        similarity_scale: float = 10.0,
        patches_per_prototype: int = 3,
        patch_context: int = 16,
    ) -> None:
        super().__init__()
        if num_annotators < 1:
            raise ValueError(f"num_annotators must be >= 1, got {num_annotators}.")
        self.spatial_dims = int(spatial_dims)
        self.num_classes = int(num_classes)
        self.num_annotators = int(num_annotators)
        self.shared = int(num_annotators)
        self.similarity_scale = float(similarity_scale)
        self.segmenter = TendencySegmenter(
            spatial_dims, in_channels, num_classes, num_annotators, features, channels, strides, num_res_units, norm, act, dropout
        )
        self.assigner = AnnotatorAssigner(
            spatial_dims, in_channels, num_annotators, prototypes_per_group, prototype_dim, assigner_channels, norm, act
        )
        self.patch_size = self.assigner.patch_size
        if patch_context < self.patch_size:
            raise ValueError(f"patch_context ({patch_context}) must be at least the prototype patch side ({self.patch_size}).")
        self.patch_context = int(patch_context)
        num_prototypes = (num_annotators + 1) * prototypes_per_group
        k = int(patches_per_prototype)
        self.register_buffer("tendencies_started", torch.zeros((), dtype=torch.bool))
        self.register_buffer("bank_built", torch.zeros((), dtype=torch.bool))
        self.register_buffer("bank_patches", torch.zeros((num_prototypes, k, in_channels) + (self.patch_context,) * spatial_dims))
        self.register_buffer("bank_cases", torch.full((num_prototypes, k), -1, dtype=torch.long))
        self.register_buffer("bank_corners", torch.zeros((num_prototypes, k, spatial_dims), dtype=torch.long))
        self.register_buffer("bank_similarity", torch.zeros((num_prototypes, k)))

    # training stages

    def start_tendencies(self) -> None:
        """End of the vanilla stage: every annotator's kernel subset starts as a copy of the shared one."""
        for layer in self.segmenter.tendency_layers():
            layer.copy_subset(self.shared)
        self.tendencies_started.fill_(True)

    # the annotator mask

    def assign_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``scale · M``: (B, N + 1, *S / r), the logits of the assignment loss (eq. 12)."""
        return self.assigner(x) * self.similarity_scale

    def annotator_mask(self, assign_logits: torch.Tensor) -> torch.Tensor:
        """M^A (eq. 11): (B, N + 1, *S / r) -> (B, *S) int64, the shared index everywhere before the tendencies start."""
        mask = _upsample_nearest(assign_logits.argmax(dim=1, keepdim=True), self.patch_size, self.spatial_dims)[:, 0]
        if not bool(self.tendencies_started):
            mask = torch.full_like(mask, self.shared)
        return mask

    # methods

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmenter(x, self.annotator_mask(self.assign_logits(x)))

    def forward_vanilla(self, x: torch.Tensor) -> torch.Tensor:
        """F with the shared subset at every pixel (the vanilla U-Net of the first stage): (B, L, *S)."""
        return self.segmenter(x, None)

    def forward_train(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """F under ``mask`` (B, 1, *S) or (B, *S) (None: G's mask, detached) and G's assignment logits.

        Returns ``{"logits": (B, L, *S), "assign_logits": (B, N + 1, *S / r)}``.
        """
        assign = self.assign_logits(x)
        if mask is None:
            mask = self.annotator_mask(assign.detach())
        elif mask.ndim == x.ndim:
            mask = mask[:, 0]
        return {"logits": self.segmenter(x, mask.long()), "assign_logits": assign}

    def forward_all(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything evaluation and inference read.

        Returns:
            ``logits`` (B, L, *S) under M^A; ``assign_probs`` (B, N + 1, *S): softmax of the assignment
            logits upsampled (nearest), whose arg-max is M^A (averaging windows keeps them probabilities);
            ``rater_logits`` (B, N, L, *S): F with only ``C_k`` at every pixel, for each annotator ``k``
            (the shared subset for all before the tendencies start).
        """
        assign = self.assign_logits(x)
        mask = self.annotator_mask(assign)
        features = self.segmenter.trunk(x)
        each = self.segmenter.each_subset_head(features)  # (B, N + 1, L, *S)
        if bool(self.tendencies_started):
            probs = _upsample_nearest(torch.softmax(assign, dim=1), self.patch_size, self.spatial_dims)
            raters = each[:, : self.num_annotators]
        else:
            probs = F.one_hot(mask, self.num_annotators + 1).movedim(-1, 1).to(assign.dtype)  # the shared index
            raters = each[:, self.shared :].expand_as(each[:, : self.num_annotators])
        return {"logits": self.segmenter.head(features, mask), "assign_probs": probs, "rater_logits": raters}

    def prototype_match(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """For each location of M: the group G chose, its best prototype there and their cosine.

        Returns ``group``, ``prototype`` (index into the bank, ``group · Q + q``) (B, *S / r) int64 and
        ``similarity`` (B, *S / r).
        """
        sim = self.assigner.similarities(x)  # (B, N + 1, Q, *s)
        best, q = sim.max(dim=2)
        group = best.argmax(dim=1, keepdim=True)
        return {
            "group": group[:, 0],
            "prototype": group[:, 0] * self.assigner.prototypes_per_group + q.gather(1, group)[:, 0],
            "similarity": best.gather(1, group)[:, 0],
        }
