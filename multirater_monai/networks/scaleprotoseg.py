"""ScaleProtoSeg (Porta et al.): segmentation explained by multi-scale prototypes, grouped sparsely per class.

A MONAI U-Net trunk (the paper's supplement puts the method on a U-Net for medical images) is followed by a
1×1 convolution and an ASPP whose ``S`` dilated branches are *concatenated* (DeepLab sums them), one
``D``-dimensional feature map per scale. Each scale has ``M`` prototypes per class; the activation of
prototype ``p`` at a feature ``z`` of its scale is ``log((d + 1) / (d + eps))``, ``d = ||z - p||²`` (eq. 1).

- **Stage 1** (``grouped`` false): the ``S·L·M`` activations go through a linear layer ``h_proto`` fixed at
  +1 for the prototype's own class and -0.5 for the others.
- **Stage 2** (``grouped`` true, after the prototypes were projected onto training features): per class,
  ``G`` groups, each a weighted geometric mean of the class's ``S·M`` prototype activations with weights on
  the probability simplex (eq. 2), then a linear layer ``h_group`` (initialised the same way by group).

Prototype ``(s, c, m)`` has the flat index ``(s·L + c)·M + m`` (scale-major, as in the authors' code).
Projection de-duplicates by masking (``prototype_active``) rather than deleting, so that the network's
shapes, its state dict and its TorchScript stay fixed; a masked prototype contributes nothing to either head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution

from multirater_monai.networks.feature_unet import FeatureUNet

__all__ = ["AtrousConv", "ConcatASPP", "ScaleProtoSeg", "project_rows_to_simplex", "proto_head_init"]


def project_rows_to_simplex(w: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Euclidean projection of each row (last axis) of ``w`` onto the probability simplex (sort-based).

    ``mask`` (broadcastable to ``w``, bool): entries outside it are 0 and the projection is over the rest.
    A row whose mask is empty is all zeros. Returns a new tensor of ``w``'s shape.
    """
    if mask is not None:
        mask = mask.expand_as(w)
        w = torch.where(mask, w, torch.full_like(w, -1e9))  # pushed below every threshold
    u, _ = torch.sort(w, dim=-1, descending=True)
    cssv = u.cumsum(dim=-1) - 1.0
    k = torch.arange(1, w.shape[-1] + 1, device=w.device, dtype=w.dtype)
    support = (u - cssv / k) > 0
    rho = support.to(w.dtype).cumsum(dim=-1).argmax(dim=-1, keepdim=True)  # last index where the condition holds
    theta = cssv.gather(-1, rho) / (rho + 1).to(w.dtype)
    out = (w - theta).clamp_min(0.0)
    if mask is not None:
        out = torch.where(mask, out, torch.zeros_like(out))
    return out


def proto_head_init(num_classes: int, per_class: int, num_scales: int = 1, wrong: float = -0.5) -> torch.Tensor:
    """(L, S·L·K) weights: +1 from an input of class ``c`` to output ``c``, ``wrong`` to the others.

    Inputs are ordered (scale, class, k), ``K = per_class`` inputs per class and scale.
    """
    owner = torch.arange(num_classes).repeat_interleave(per_class).repeat(num_scales)  # class of each input
    return torch.where(owner[None] == torch.arange(num_classes)[:, None], 1.0, float(wrong))


class AtrousConv(torch.nn.Module):
    """A 3×3 (×3) convolution dilated by ``dilation``, computed as DeepLab first did: space to batch, a plain
    convolution, batch to space.

    The image is split into its ``dilation^dims`` interleaved sub-grids (zero-padded to a multiple of ``dilation``
    first), each convolved with the undilated kernel, and put back. The result equals the dilated convolution
    with zero padding, and costs what the plain one costs: a dilated kernel on a CPU slows down with the rate
    (about 2× at rate 8 on 64×64 images with 2 CPU threads).

    Shapes: (B, in_channels, *S) -> (B, out_channels, *S).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, dilation: int) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.spatial_dims = int(spatial_dims)
        self.dilation = int(dilation)
        self.conv = Convolution(spatial_dims, in_channels, out_channels, kernel_size=3, conv_only=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.dilation
        if d == 1:
            return self.conv(x)
        b, c = x.shape[0], x.shape[1]
        size = list(x.shape[2:])
        pad: list[int] = []
        for n in size[::-1]:
            pad += [0, (-n) % d]
        x = torch.nn.functional.pad(x, pad)
        grid = [n // d for n in x.shape[2:]]
        if self.spatial_dims == 2:
            h, w = grid[0], grid[1]
            x = x.reshape(b, c, h, d, w, d).permute(0, 3, 5, 1, 2, 4).reshape(b * d * d, c, h, w)
            y = self.conv(x)
            y = y.reshape(b, d, d, -1, h, w).permute(0, 3, 4, 1, 5, 2).reshape(b, -1, h * d, w * d)
            return y[:, :, : size[0], : size[1]]
        h, w, t = grid[0], grid[1], grid[2]
        x = x.reshape(b, c, h, d, w, d, t, d).permute(0, 3, 5, 7, 1, 2, 4, 6).reshape(b * d * d * d, c, h, w, t)
        y = self.conv(x)
        y = y.reshape(b, d, d, d, -1, h, w, t).permute(0, 4, 5, 1, 6, 2, 7, 3).reshape(b, -1, h * d, w * d, t * d)
        return y[:, :, : size[0], : size[1], : size[2]]


class ConcatASPP(torch.nn.Module):
    """Atrous spatial pyramid pooling whose branches are concatenated, not summed (ScaleProtoSeg's change).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: channels per branch (the prototype dimension ``D``).
        dilations: one 3×3 (×3) branch per dilation rate (the ``S`` scales).

    Shapes: (B, in_channels, *S) -> (B, S·D, *S), scale-major.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.dilations = [int(d) for d in dilations]
        self.branches = torch.nn.ModuleList([AtrousConv(spatial_dims, in_channels, out_channels, d) for d in self.dilations])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class ScaleProtoSeg(torch.nn.Module):
    """U-Net trunk, 1×1 convolution, concatenated ASPP, multi-scale prototypes, then ``h_proto`` or the grouping head.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels ``C``.
        num_classes: ``L`` (background included).
        features: the trunk's output channels.
        channels, strides, num_res_units, norm, act, dropout: the MONAI U-Net trunk.
        aspp_channels: channels of the 1×1 convolution before the ASPP (the paper's 64).
        prototype_dim: ``D``, channels of each ASPP branch and of a prototype.
        dilations: the ASPP's rates, one scale each (``S``).
        prototypes_per_class: ``M`` per class and scale.
        groups_per_class: ``G`` (the paper's ``N_c``).
        epsilon: ``eps`` of the activation.
        group_mean_of: ``"activation"``: the group is the weighted geometric mean of the prototype activations
            (eq. 2); ``"ratio"``: of ``(d + 1) / (d + eps)`` (the authors' code: ``exp(w · activation)``).
        patch_side: side of the training patch recorded for each prototype at projection.

    Shapes: image (B, C, *S), each spatial size a multiple of the trunk's total stride. ``forward`` -> (B, L, *S).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        features: int = 16,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] = (2, 2, 2),
        num_res_units: int = 2,
        norm: tuple | str = "batch",
        act: tuple | str = "PRELU",
        dropout: float = 0.0,
        aspp_channels: int = 16,
        prototype_dim: int = 16,
        dilations: Sequence[int] = (1, 2, 4, 8),
        prototypes_per_class: int = 3,
        groups_per_class: int = 3,
        epsilon: float = 1e-4,
        group_mean_of: str = "activation",
        patch_side: int = 16,
    ) -> None:
        super().__init__()
        if not dilations:
            raise ValueError("dilations: the ASPP needs at least one scale.")
        if any(int(d) < 1 for d in dilations):
            raise ValueError(f"dilations must be >= 1, got {list(dilations)}.")
        if prototypes_per_class < 1 or groups_per_class < 1:
            raise ValueError(f"prototypes_per_class ({prototypes_per_class}) and groups_per_class ({groups_per_class}) must be >= 1.")
        if groups_per_class > len(dilations) * prototypes_per_class:
            raise ValueError(
                f"groups_per_class ({groups_per_class}) exceeds the {len(dilations) * prototypes_per_class} prototypes of a class "
                "(scales x prototypes_per_class) that the groups combine."
            )
        if group_mean_of not in ("activation", "ratio"):
            raise ValueError(f"group_mean_of must be 'activation' or 'ratio', got {group_mean_of!r}.")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background included), got {num_classes}.")
        self.spatial_dims = int(spatial_dims)
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.num_scales = len(dilations)
        self.dilations = [int(d) for d in dilations]
        self.prototypes_per_class = int(prototypes_per_class)
        self.groups_per_class = int(groups_per_class)
        self.prototype_dim = int(prototype_dim)
        self.epsilon = float(epsilon)
        self.group_mean_of = group_mean_of
        self.patch_side = int(patch_side)
        self.stride = 1
        for s in strides:
            self.stride *= int(s)
        self.trunk = FeatureUNet(spatial_dims, in_channels, features, channels, strides, num_res_units, norm, act, dropout)
        self.reduce = Convolution(spatial_dims, features, aspp_channels, kernel_size=1, conv_only=True)
        self.aspp = ConcatASPP(spatial_dims, aspp_channels, prototype_dim, dilations)
        S, L, M, G = self.num_scales, self.num_classes, self.prototypes_per_class, self.groups_per_class
        self.num_prototypes = S * L * M
        # the authors' code draws prototypes in [0, 1), the range of the sigmoid features
        self.prototypes = torch.nn.Parameter(torch.rand(S, L * M, prototype_dim))
        # h_proto: fixed at its initialisation through stage 1 (no stage lists it as trainable, except the optional
        # last-layer fine-tuning after the projection that the authors' code runs)
        self.last_layer = torch.nn.Parameter(proto_head_init(L, M, S))
        bound = 1.0 / (S * M) ** 0.5
        self.group_weights = torch.nn.Parameter(project_rows_to_simplex(torch.empty(L, G, S * M).uniform_(-bound, bound)))
        self.group_last_layer = torch.nn.Parameter(proto_head_init(L, G))
        # state of the schedule, saved with the weights
        self.register_buffer("prototype_active", torch.ones(S, L * M, dtype=torch.bool))
        self.register_buffer("projected", torch.zeros((), dtype=torch.bool))
        self.register_buffer("grouped", torch.zeros((), dtype=torch.bool))
        self.register_buffer("thresholded", torch.zeros((), dtype=torch.bool))
        # the training patch behind each prototype, recorded at projection
        self.register_buffer("source_case", torch.full((self.num_prototypes,), -1, dtype=torch.long))
        self.register_buffer("source_location", torch.zeros((self.num_prototypes, spatial_dims), dtype=torch.long))
        self.register_buffer("source_distance", torch.zeros(self.num_prototypes))
        self.register_buffer("source_patches", torch.zeros((self.num_prototypes, in_channels) + (self.patch_side,) * spatial_dims))

    # prototype indexing

    def prototype_scale(self) -> torch.Tensor:
        """(P,) scale of each prototype (flat index)."""
        return torch.arange(self.num_prototypes) // (self.num_classes * self.prototypes_per_class)

    def prototype_class(self) -> torch.Tensor:
        """(P,) class of each prototype (flat index)."""
        return (torch.arange(self.num_prototypes) // self.prototypes_per_class) % self.num_classes

    @torch.jit.unused
    def input_classes(self, head: str) -> torch.Tensor:
        """The class each input of a head belongs to: ``"last_layer"`` (P,) prototypes, ``"group_last_layer"`` (L·G,) groups."""
        if head == "last_layer":
            return self.prototype_class()
        if head == "group_last_layer":
            return torch.arange(self.num_classes * self.groups_per_class) // self.groups_per_class
        raise ValueError(f"head must be 'last_layer' or 'group_last_layer', got {head!r}.")

    # the layers

    def scale_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) image -> (B, S·D, *S) per-scale features (scale-major) in (0, 1) (the authors' sigmoid add-on)."""
        return torch.sigmoid(self.aspp(self.reduce(self.trunk(x))))

    def _conv1x1(self, x: torch.Tensor, weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
        """(B, I, *S) -> (B, O, *S) with an (O, I / groups) matrix: channel mixing without moving the channels."""
        kernel = weight.to(x.dtype).reshape(list(weight.shape) + [1] * self.spatial_dims)
        if self.spatial_dims == 2:
            return torch.nn.functional.conv2d(x, kernel, groups=groups)
        return torch.nn.functional.conv3d(x, kernel, groups=groups)

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """(B, S·D, *S) features -> (B, P, *S) squared distances of each prototype to the features of its scale."""
        b = z.shape[0]
        spatial = list(z.shape[2:])
        cross = self._conv1x1(z, self.prototypes.flatten(0, 1), groups=self.num_scales)  # (B, S·L·M, *S)
        z_sq = (z * z).reshape([b, self.num_scales, self.prototype_dim] + spatial).sum(dim=2)  # (B, S, *S)
        z_sq = z_sq.repeat_interleave(self.num_classes * self.prototypes_per_class, dim=1)
        p_sq = (self.prototypes * self.prototypes).sum(-1).flatten().reshape([1, -1] + [1] * self.spatial_dims)
        return (z_sq - 2.0 * cross + p_sq.to(z.dtype)).clamp_min(0.0)

    def activations(self, distances: torch.Tensor) -> torch.Tensor:
        """Eq. 1: (B, P, *S) distances -> ``log((d + 1) / (d + eps))``, every value > 0."""
        return torch.log1p((1.0 - self.epsilon) / (distances + self.epsilon))

    def proto_logits(self, activations: torch.Tensor) -> torch.Tensor:
        """``h_proto``: (B, P, *S) -> (B, L, *S); de-duplicated prototypes contribute nothing."""
        weight = self.last_layer * self.prototype_active.flatten().to(self.last_layer.dtype)[None]
        return self._conv1x1(activations, weight)

    def group_matrix(self) -> torch.Tensor:
        """(L·G, P): the group weights placed on the flat prototype index (0 outside each group's class)."""
        S, L, M, G = self.num_scales, self.num_classes, self.prototypes_per_class, self.groups_per_class
        w = self.group_weights.reshape(L, G, S, M)
        full = torch.zeros(L, G, S, L, M, dtype=w.dtype, device=w.device)
        index = torch.arange(L, device=w.device)
        full[index, :, :, index, :] = w
        return full.reshape(L * G, S * L * M)

    def group_activations(self, activations: torch.Tensor) -> torch.Tensor:
        """Eq. 2: (B, P, *S) -> (B, L·G, *S), group ``g`` of class ``c`` at channel ``c·G + g``: the weighted
        geometric mean of the class's prototype activations (or of the ratios, ``group_mean_of="ratio"``)."""
        if self.group_mean_of == "activation":
            log_terms = torch.log(activations.clamp_min(1e-6))
        else:
            log_terms = activations
        return torch.exp(self._conv1x1(log_terms, self.group_matrix()))

    def group_logits(self, groups: torch.Tensor) -> torch.Tensor:
        """``h_group``: (B, L·G, *S) -> (B, L, *S)."""
        return self._conv1x1(groups, self.group_last_layer)

    # methods

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.activations(self.distances(self.scale_features(x)))
        if bool(self.grouped):
            return self.group_logits(self.group_activations(act))
        return self.proto_logits(act)

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the losses read: ``logits`` (B, L, *S) of the current head and ``distances`` (B, P, *S)."""
        dist = self.distances(self.scale_features(x))
        act = self.activations(dist)
        logits = self.group_logits(self.group_activations(act)) if bool(self.grouped) else self.proto_logits(act)
        return {"logits": logits, "distances": dist}

    def forward_all(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything evaluation and explanations read.

        Returns ``logits`` (B, L, *S) of the current head; ``activations`` (B, P, *S), prototype ``(s, c, m)`` at
        channel ``(s·L + c)·M + m``; ``groups`` (B, L·G, *S) (computed whatever the head, so that a stage-1 model
        shows its initial groups).
        """
        act = self.activations(self.distances(self.scale_features(x)))
        groups = self.group_activations(act)
        logits = self.group_logits(groups) if bool(self.grouped) else self.proto_logits(act)
        return {"logits": logits, "activations": act, "groups": groups}

    # stage transitions (action stages of the schedule)

    def active_group_mask(self) -> torch.Tensor:
        """(L, 1, S·M) bool: which of each class's prototypes a group may weigh (the non-duplicates)."""
        active = self.prototype_active.reshape(self.num_scales, self.num_classes, self.prototypes_per_class)
        return active.movedim(1, 0).flatten(1)[:, None]

    @torch.jit.unused
    def project_group_weights(self) -> None:
        """Project every group's weights onto the simplex over the class's active prototypes (after each step)."""
        with torch.no_grad():
            self.group_weights.copy_(project_rows_to_simplex(self.group_weights, self.active_group_mask()))

    @torch.jit.unused
    def start_grouping(self) -> None:
        """Stage 2 begins: the grouping head replaces ``h_proto``; its weights start on the simplex of active prototypes."""
        if not bool(self.projected):
            raise RuntimeError(
                "the grouping stage needs projected prototypes, and this model's were never projected "
                "(the projection stage did not run, or the checkpoint predates it)."
            )
        self.project_group_weights()
        self.grouped.fill_(True)

    @torch.jit.unused
    def threshold_groups(self, alpha: float) -> int:
        """Zero the group weights below ``alpha`` (no renormalisation, as in the authors' code); returns how many."""
        with torch.no_grad():
            small = (self.group_weights < alpha) & (self.group_weights > 0)
            self.group_weights.masked_fill_(self.group_weights < alpha, 0.0)
        self.thresholded.fill_(True)
        return int(small.sum())

    @torch.jit.unused
    def used_prototypes(self) -> torch.Tensor:
        """(P,) bool: the prototypes the decision uses: the active ones in stage 1; after grouping, those some group weighs."""
        used = self.prototype_active.flatten()
        if bool(self.grouped):
            used = used & (self.group_matrix().detach() > 0).any(dim=0)
        return used

    @torch.jit.unused
    def prototypes_in_use(self) -> torch.Tensor:
        """(L,) the number of :meth:`used_prototypes` of each class."""
        return torch.bincount(self.prototype_class()[self.used_prototypes()], minlength=self.num_classes)
