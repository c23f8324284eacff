"""Interpretability measures of a prototype segmenter (ScaleProtoSeg): sparsity, group overlap, per-scale
activation statistics, and consistency / stability on object parts derived from the truth.

The paper's consistency and stability (after Huang et al. 2023) need part annotations (Pascal-Part,
Cityscapes-Panoptic-Parts). Synthetic data and most medical datasets have none; what they have is a truth of
objects, from which :func:`object_parts` derives parts every object has: its *rim* (the pixels within
``rim`` pixels of its outline) and its *core* (the rest), each for *small* and *large* objects (equivalent
radius below or above ``radius_split``). A prototype is *consistent* when the part it activates on is the same
in at least ``0.8`` of the images holding its class; an activation is *stable* when that part does not change
under Gaussian noise (σ = 0.2 on the normalised image, as in the authors' code).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

__all__ = [
    "PART_NAMES",
    "activation_components",
    "group_overlap",
    "object_parts",
    "part_hits",
    "prototype_consistency",
    "prototype_stability",
    "prototypes_in_use",
]

PART_NAMES = ("small rim", "small core", "large rim", "large core")


def prototypes_in_use(network: torch.nn.Module) -> list[int]:
    """Prototypes per class that the decision uses (stage 1: the non-duplicates; grouped: those a group weighs)."""
    return [int(v) for v in network.prototypes_in_use().tolist()]


def _above(values: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """``values > threshold``, or ``>=`` where nothing is above (a constant map keeps all its pixels)."""
    strict = values > threshold
    empty = ~strict.flatten(1).any(dim=1).reshape((-1,) + (1,) * (values.ndim - 1))
    return torch.where(empty, values >= threshold, strict)


def _binarise(maps: torch.Tensor, quantile: float) -> torch.Tensor:
    """(K, *S) -> (K, *S) bool: each map above its own ``quantile`` (a map mostly at its minimum keeps what is
    above the minimum, not every pixel)."""
    flat = maps.flatten(1).float()
    threshold = torch.quantile(flat, quantile, dim=1)
    return _above(maps.float(), threshold.reshape((-1,) + (1,) * (maps.ndim - 1)))


def group_overlap(groups: torch.Tensor, num_classes: int, classes_present: Sequence[int], quantile: float = 0.95) -> tuple[float, float]:
    """The paper's Table 9 on one image: pooled intersection and union of the binarised activations of every pair
    of groups of the same class, over the classes present.

    ``groups`` (L·G, *S); each map is binarised at its own ``quantile`` over the whole image (the authors' code).
    Returns (intersection, union) pixel counts, to be summed over images (IoU = sum / sum).
    """
    g = groups.shape[0] // num_classes
    binary = _binarise(groups, quantile)
    inter = union = 0.0
    for c in classes_present:
        maps = binary[c * g : (c + 1) * g]
        for i in range(g):
            for j in range(i + 1, g):
                inter += float((maps[i] & maps[j]).sum())
                union += float((maps[i] | maps[j]).sum())
    return inter, union


def activation_components(activations: torch.Tensor, quantiles: Sequence[float] = (0.8, 0.9, 0.99)) -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """The paper's Figure 3 on one image: for each ``quantile``, each map's number of connected components
    (8-connectivity in 2D, 26 in 3D) and their mean area (pixels) once binarised at its own quantile.

    ``activations`` (P, *S). Returns ``{quantile: (components (P,), mean area (P,))}``.
    """
    structure = np.ones((3,) * (activations.ndim - 1), dtype=bool)
    out = {}
    for q in quantiles:
        binary = _binarise(activations, q).cpu().numpy()
        counts = np.zeros(len(binary))
        areas = np.zeros(len(binary))
        for k, mask in enumerate(binary):
            labels, n = ndimage.label(mask, structure=structure)
            counts[k] = n
            areas[k] = mask.sum() / max(n, 1)
        out[float(q)] = (counts, areas)
    return out


def object_parts(truth: np.ndarray, rim: int = 2, radius_split: float = 6.3) -> np.ndarray:
    """(*S) class map -> (*S) part index in ``0..3`` (:data:`PART_NAMES`), -1 on the background.

    Each connected object (any foreground class) is split into its rim (within ``rim`` pixels of its outline)
    and its core; objects whose equivalent radius (of a disc / ball of their size) is below ``radius_split``
    pixels are small. The default split is the geometric middle of the synthetic scenes' radii on 64-pixel images.
    """
    truth = np.asarray(truth)
    dims = truth.ndim
    parts = np.full(truth.shape, -1, dtype=np.int64)
    structure = ndimage.generate_binary_structure(dims, 1)
    for c in np.unique(truth):
        if c == 0:
            continue
        labels, n = ndimage.label(truth == c, structure=structure)
        for k in range(1, n + 1):
            obj = labels == k
            size = obj.sum()
            radius = (size / np.pi) ** 0.5 if dims == 2 else (3 * size / (4 * np.pi)) ** (1 / 3)
            core = ndimage.binary_erosion(obj, structure=structure, iterations=rim, border_value=0)
            base = 0 if radius < radius_split else 2
            parts[obj & ~core] = base
            parts[core] = base + 1
    return parts


def part_hits(activations: torch.Tensor, owner: torch.Tensor, truth: torch.Tensor, parts: np.ndarray, quantile: float = 0.8) -> np.ndarray:
    """For each prototype, the part its strongest activations on its own class fall on: (P,) part index, -1 where
    its class is absent from the image.

    Within the pixels of the prototype's class, the activation is binarised at its ``quantile`` (the top 20 %
    by default, the authors' first threshold); the part holding most of those pixels is the hit.
    """
    truth = torch.as_tensor(truth).reshape(activations.shape[1:])
    parts_t = torch.as_tensor(parts).reshape(activations.shape[1:])
    hits = np.full(activations.shape[0], -1, dtype=np.int64)
    for p in range(activations.shape[0]):
        region = truth == int(owner[p])
        if int(owner[p]) == 0 or int(region.sum()) == 0:
            continue
        values = activations[p][region].float()
        top = _above(values[None], torch.quantile(values, quantile).reshape(1, 1))[0]
        counts = torch.bincount(parts_t[region][top].clamp_min(0), minlength=len(PART_NAMES))
        hits[p] = int(counts.argmax())
    return hits


def prototype_consistency(hits: np.ndarray, active: np.ndarray, threshold: float = 0.8) -> float:
    """Share of the (active, foreground) prototypes whose most frequent part, over the images holding their class,
    is hit in at least ``threshold`` of them. ``hits`` (images, P) from :func:`part_hits`."""
    scores = []
    for p in range(hits.shape[1]):
        column = hits[:, p]
        column = column[column >= 0]
        if not active[p] or len(column) == 0:
            continue
        scores.append(np.bincount(column).max() / len(column) >= threshold)
    return float(np.mean(scores)) if scores else float("nan")


def prototype_stability(clean: np.ndarray, noisy: np.ndarray, active: np.ndarray) -> float:
    """Share of the (image, active prototype) pairs whose hit part is the same with and without noise."""
    valid = (clean >= 0) & active[None]
    if not valid.any():
        return float("nan")
    return float((clean[valid] == noisy[valid]).mean())
