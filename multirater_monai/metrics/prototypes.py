"""Interpretability measures of a prototype segmenter (ScaleProtoSeg): sparsity, group overlap, per-scale
activation statistics, and consistency / stability on object parts derived from the truth.

The paper's consistency and stability (after Huang et al. 2023) need part annotations (Pascal-Part,
Cityscapes-Panoptic-Parts). Synthetic data and most medical datasets have none; what they have is a truth of
objects, from which :func:`object_parts` derives parts every object has: its *rim* (the pixels within
``rim`` pixels of its outline) and its *core* (the rest), each for *small* and *large* objects (equivalent
radius below or above ``radius_split``), each part component marked by one keypoint. As in Huang et al. and the
authors' code, a part is *present* for a prototype on an image when one of its keypoints lies in the prototype's
active region (its activation above the 80th percentile within its class); a prototype is *consistent* when some
part is present in more than 0.8 of the images where that part exists; a (prototype, image) is *stable* when the
presence of every part is unchanged under Gaussian noise (σ = 0.2 on the normalised image).
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
    "part_keypoints",
    "part_presence",
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


def part_keypoints(parts: np.ndarray) -> list[list[tuple[int, ...]]]:
    """For each part (0..3), one keypoint per connected component: the component's pixel nearest its centroid (a
    rim's centroid lies outside the rim; the authors' centroids can fall off their part)."""
    structure = np.ones((3,) * parts.ndim, dtype=bool)
    out: list[list[tuple[int, ...]]] = []
    for k in range(len(PART_NAMES)):
        labels, n = ndimage.label(parts == k, structure=structure)
        points = []
        for j in range(1, n + 1):
            coords = np.argwhere(labels == j)
            centre = coords.mean(axis=0)
            points.append(tuple(int(v) for v in coords[np.argmin(((coords - centre) ** 2).sum(axis=1))]))
        out.append(points)
    return out


def part_presence(activations: torch.Tensor, owner: torch.Tensor, truth: torch.Tensor, parts: np.ndarray, quantile: float = 0.8) -> np.ndarray:
    """Huang et al.'s presence on one image: (P, 4) with 1 where a keypoint of the part lies in the prototype's active
    region, 0 where none does, NaN where the part is absent from the prototype's class in this image.

    The active region: within the pixels of the prototype's class, its activation above its ``quantile`` (the
    authors' first threshold, 0.8). Background prototypes and classes absent from the image give NaN rows.
    """
    truth = torch.as_tensor(truth).reshape(activations.shape[1:])
    out = np.full((activations.shape[0], len(PART_NAMES)), np.nan)
    for c in torch.unique(owner).tolist():
        region = truth == c
        if c == 0 or int(region.sum()) == 0:
            continue
        class_parts = np.where(region.numpy(), parts, -1)
        keypoints = part_keypoints(class_parts)
        for p in torch.nonzero(owner == c).flatten().tolist():
            values = activations[p].float()
            threshold = torch.quantile(values[region], quantile)
            active = (_above(values[region][None], threshold.reshape(1, 1))[0])
            mask = torch.zeros_like(region)
            mask[region] = active
            for k, points in enumerate(keypoints):
                if points:
                    out[p, k] = float(any(bool(mask[pt]) for pt in points))
    return out


def prototype_consistency(presence: np.ndarray, active: np.ndarray, threshold: float = 0.8) -> float:
    """Share of the (active, foreground) prototypes consistent on some part: present at it in more than ``threshold``
    of the images where that part exists in the prototype's class. ``presence`` (images, P, 4) from
    :func:`part_presence`."""
    with np.errstate(invalid="ignore"):
        rate = np.nanmean(presence, axis=0) if len(presence) else np.full(presence.shape[1:], np.nan)  # (P, 4)
    scores = []
    for p in range(presence.shape[1]):
        if not active[p] or np.all(np.isnan(rate[p])):
            continue
        scores.append(np.nanmax(rate[p]) > threshold)
    return float(np.mean(scores)) if scores else float("nan")


def prototype_stability(clean: np.ndarray, noisy: np.ndarray, active: np.ndarray) -> float:
    """Share of the (image, active prototype) pairs whose part presence is the same with and without noise (absent
    parts count as 0, as in the authors' code). ``clean``, ``noisy`` (images, P, 4)."""
    defined = ~np.all(np.isnan(clean), axis=2) & active[None]  # the prototype's class is in the image
    if not defined.any():
        return float("nan")
    same = np.all(np.nan_to_num(clean) == np.nan_to_num(noisy), axis=2)
    return float(same[defined].mean())
