"""Simulated raters: label maps with a known, controllable annotation tendency.

A simulated rater turns a reference label map (the truth, or any dataset's label) into the label
map that an annotator with a given tendency would have drawn. Every rater is a callable

    ``rater(label, image=None, rng=None) -> np.ndarray``

with ``label`` (*S) integer class indices in ``0..L-1`` (2D or 3D), ``image`` (C, *S) or (*S) the
image (only image-dependent raters need it) and ``rng`` a ``np.random.Generator``; it returns a
(*S) label map of the same integer dtype. A rater's result depends only on its parameters, its
inputs and ``rng``: a generator derived from (seed, image index, rater index), see
:func:`rater_rng`, reproduces it exactly.

Multi-class labels (``L > 2``) are treated as nested regions, as in BraTS (whole tumour ⊇ core):
the region of class ``c >= 1`` is ``label >= c``. A rater applies its mask operation to every
region independently and the result takes, per voxel, the largest ``c`` whose transformed region
holds the voxel. For classes that are disjoint objects this is the same as operating on each
class's mask, the larger class index winning overlaps; for a core nested inside an object, the
core is dilated into / eroded towards its enclosing object and never leaves a background gap.

Distances (radii, lengths) are in voxels, Euclidean (Euclidean balls as structuring elements).
Voxels outside the field of view count neither as object nor as background: objects touching the
image border are not eroded from it.

Raters (registry :data:`RATERS`, :func:`make_rater`):
    ``perfect`` the reference itself; ``good`` near-truth with ±``radius`` boundary jitter in random
    patches; ``over`` dilation; ``under`` erosion; ``fracture`` random small holes and cuts;
    ``wrong`` over-segmentation followed by fractures (CM-Net's "wrong segmentation");
    ``blank`` all background; ``miss`` all background on some images (a reader who missed the lesion);
    ``contrast`` image dependent: per connected object, dilates objects
    that contrast with their surroundings and erodes faint ones; ``simplify`` straight outlines: each
    object replaced by the few-sided polygon / polyhedron circumscribing it.
    The TAX paper's tendencies (``dilated``, ``eroded``, ``simplified``, ``none``) are aliases of
    ``over``, ``under``, ``simplify`` and ``perfect`` (:data:`TAX_RATERS`).
:class:`ComposeRaters` applies raters in sequence (also by name: ``make_rater("over+fracture")``).
:class:`SimulateRatersd` is the MONAI dictionary transform that simulates (R, *S) rater labels.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Protocol, Union

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_numpy, ensure_tuple_rep
from scipy import ndimage

from multirater_monai.constants import LABEL, MISSING_LABEL

__all__ = [
    "RaterFn",
    "Rater",
    "MaskRater",
    "PerfectRater",
    "GoodRater",
    "OverRater",
    "UnderRater",
    "FractureRater",
    "BlankRater",
    "MissRater",
    "ContrastRater",
    "SimplifyRater",
    "ComposeRaters",
    "WrongRater",
    "RATERS",
    "DEFAULT_RATERS",
    "TAX_RATERS",
    "make_rater",
    "rater_rng",
    "dilate_mask",
    "erode_mask",
    "SimulateRatersd",
    "SimulateRatersD",
    "SimulateRatersDict",
]

DEFAULT_RATERS: tuple[str, ...] = ("good", "over", "under", "wrong", "blank")
"""The rater set of the synthetic data and of :class:`SimulateRatersd` by default."""

TAX_RATERS: tuple[str, ...] = ("dilated", "eroded", "simplified", "none")
"""The TAX paper's four labelling tendencies (its section 4.1.1), one annotator per image."""

RngLike = Union[np.random.Generator, int, None]


class RaterFn(Protocol):
    """What a rater is: ``(label (*S) int, image (C, *S) | None, rng) -> (*S) int``."""

    def __call__(
        self, label: np.ndarray, image: np.ndarray | None = None, rng: np.random.Generator | None = None
    ) -> np.ndarray: ...


def rater_rng(seed: int, image_index: int, rater_index: int) -> np.random.Generator:
    """The random generator of rater ``rater_index`` on image ``image_index`` of a seeded run.

    The synthetic data generator uses it, so that any one rater label can be reproduced alone.
    (The stream tag ``2`` keeps it apart from other streams of the same seed: numpy pads short
    seed sequences with zeros, so ``[seed, i]`` and ``[seed, i, 0]`` would collide.)
    """
    return np.random.default_rng([int(seed), 2, int(image_index), int(rater_index)])


def _as_rng(rng: RngLike) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _as_label(label: np.ndarray | torch.Tensor) -> np.ndarray:
    """(*S) integer label map as numpy; float maps (e.g. loaded NIfTI) are rounded."""
    arr = np.asarray(convert_to_numpy(label))
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        arr = np.rint(arr).astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"a rater needs a label map in 0..L-1, got values down to {arr.min()}.")
    return arr


def _as_image(image: np.ndarray | torch.Tensor | None, spatial_shape: tuple[int, ...]) -> np.ndarray | None:
    """(C, *S) float image as numpy; a (*S) image gets a channel axis."""
    if image is None:
        return None
    arr = np.asarray(convert_to_numpy(image), dtype=np.float64)
    if arr.shape == spatial_shape:
        arr = arr[None]
    if arr.shape[1:] != spatial_shape:
        raise ValueError(f"image shape {arr.shape} does not match the label's spatial shape {spatial_shape}.")
    return arr


def dilate_mask(mask: np.ndarray, radius: float) -> np.ndarray:
    """Binary dilation of a (*S) bool mask by a Euclidean ball of ``radius`` voxels."""
    if radius <= 0 or not mask.any():
        return mask.copy()
    return ndimage.distance_transform_edt(~mask) <= radius


def erode_mask(mask: np.ndarray, radius: float) -> np.ndarray:
    """Binary erosion of a (*S) bool mask by a Euclidean ball of ``radius`` voxels."""
    if radius <= 0 or mask.all():
        return mask.copy()
    return ndimage.distance_transform_edt(mask) > radius


class Rater(ABC):
    """Base class of simulated raters.

    Subclasses implement :meth:`apply` on a validated (*S) integer label map; ``__call__`` handles
    conversion (numpy or torch input, float maps are rounded) and returns the input's integer dtype
    (int64 for float or bool input).
    """

    name: str = "rater"

    def __call__(
        self,
        label: np.ndarray | torch.Tensor,
        image: np.ndarray | torch.Tensor | None = None,
        rng: RngLike = None,
    ) -> np.ndarray:
        """
        Args:
            label: (*S) reference class indices in ``0..L-1``.
            image: (C, *S) or (*S) image, or None (only image-dependent raters need it).
            rng: the generator of all randomness; an int seeds one; None draws fresh entropy.

        Returns:
            (*S) the rater's class indices.
        """
        lab = _as_label(label)
        img = _as_image(image, lab.shape)
        out = self.apply(lab, img, _as_rng(rng))
        return out.astype(lab.dtype, copy=False)

    @abstractmethod
    def apply(self, label: np.ndarray, image: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        """(*S) int label, (C, *S) float image or None, rng -> (*S) int label."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


class MaskRater(Rater):
    """A rater defined by an operation on one binary region, applied to every class region.

    The region of class ``c`` is ``label >= c`` (nested classes); regions are processed for
    ``c = 1..L-1`` in order, and the result takes the largest ``c`` whose transformed region holds a
    voxel (see the module docstring).
    """

    def apply(self, label: np.ndarray, image: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        out = np.zeros_like(label)
        for c in range(1, int(label.max(initial=0)) + 1):
            region = label >= c
            out[self.transform_mask(region, image, rng)] = c
        return out

    @abstractmethod
    def transform_mask(self, mask: np.ndarray, image: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        """(*S) bool region, (C, *S) image or None, rng -> (*S) bool region."""


class PerfectRater(Rater):
    """The reference label map itself."""

    name = "perfect"

    def apply(self, label: np.ndarray, image: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        return label.copy()


class MissRater(Rater):
    """A rater who misses the whole image with probability ``probability`` (draws nothing), else draws the
    reference: the readers of LIDC-IDRI who did not mark a nodule that others marked.

    Args:
        probability: chance of an empty label map, in [0, 1].
    """

    name = "miss"

    def __init__(self, probability: float = 0.5) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {probability}.")
        self.probability = float(probability)

    def apply(self, label: np.ndarray, image: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        return np.zeros_like(label) if rng.random() < self.probability else label.copy()


class BlankRater(Rater):
    """All background (a rater who missed everything)."""

    name = "blank"

    def apply(self, label: np.ndarray, image: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        return np.zeros_like(label)


class OverRater(MaskRater):
    """Over-segmentation: every region dilated by ``radius`` voxels.

    Args:
        radius: Euclidean radius of the dilation, in voxels.
    """

    name = "over"

    def __init__(self, radius: float = 2.0) -> None:
        self.radius = float(radius)

    def transform_mask(self, mask: np.ndarray, image: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        return dilate_mask(mask, self.radius)


class UnderRater(MaskRater):
    """Under-segmentation: every region eroded by ``radius`` voxels (small objects may vanish).

    Args:
        radius: Euclidean radius of the erosion, in voxels.
    """

    name = "under"

    def __init__(self, radius: float = 2.0) -> None:
        self.radius = float(radius)

    def transform_mask(self, mask: np.ndarray, image: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        return erode_mask(mask, self.radius)


class GoodRater(MaskRater):
    """Near-truth: the boundary moves by ±``radius`` voxels in random patches.

    A smooth random field (Gaussian noise smoothed with ``patch_sigma``) picks patches: where it is
    in its top ``fraction / 2`` the region is dilated, where it is in its bottom ``fraction / 2`` it is
    eroded, elsewhere it is kept. So roughly ``fraction`` of the boundary is moved.

    Args:
        radius: boundary displacement in voxels.
        patch_sigma: smoothing of the random field, i.e. the patch size, in voxels.
        fraction: share of the boundary that moves, in [0, 1].
    """

    name = "good"

    def __init__(self, radius: float = 1.0, patch_sigma: float = 2.0, fraction: float = 0.5) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}.")
        self.radius = float(radius)
        self.patch_sigma = float(patch_sigma)
        self.fraction = float(fraction)

    def transform_mask(self, mask: np.ndarray, image: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        field = ndimage.gaussian_filter(rng.standard_normal(mask.shape), self.patch_sigma)
        if not mask.any() or self.fraction == 0.0:
            return mask.copy()
        lo, hi = np.quantile(field, [self.fraction / 2.0, 1.0 - self.fraction / 2.0])
        grow = dilate_mask(mask, self.radius) & (field > hi)
        shrink = ~erode_mask(mask, self.radius) & (field < lo)
        return (mask | grow) & ~shrink


class FractureRater(MaskRater):
    """Fractures: random small holes and thin cuts inside every region.

    Hole centres are the region's voxels with probability ``hole_density`` (at least
    ``min_holes`` per non-empty region); each removes a ball of ``hole_radius``. The number of cuts
    is Poisson with mean ``cut_density`` × region size; a cut is a slab of thickness ``cut_width``
    and extent ``cut_length`` (a segment in 2D, a disc in 3D) centred on a random region voxel with
    a random orientation.

    Args:
        hole_density: expected hole centres per region voxel.
        hole_radius: radius of a hole in voxels.
        cut_density: expected cuts per region voxel.
        cut_length: length (2D) / diameter (3D) of a cut in voxels.
        cut_width: thickness of a cut in voxels.
        min_holes: holes placed at least, per non-empty region.
    """

    name = "fracture"

    def __init__(
        self,
        hole_density: float = 0.01,
        hole_radius: float = 1.0,
        cut_density: float = 0.003,
        cut_length: float = 7.0,
        cut_width: float = 1.5,
        min_holes: int = 1,
    ) -> None:
        self.hole_density = float(hole_density)
        self.hole_radius = float(hole_radius)
        self.cut_density = float(cut_density)
        self.cut_length = float(cut_length)
        self.cut_width = float(cut_width)
        self.min_holes = int(min_holes)

    def transform_mask(self, mask: np.ndarray, image: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        inside = np.flatnonzero(mask)
        if inside.size == 0:
            return mask.copy()
        seeds = np.zeros(mask.shape, dtype=bool)
        seeds[mask] = rng.random(inside.size) < self.hole_density
        if seeds.sum() < self.min_holes:
            extra = rng.choice(inside, size=min(self.min_holes, inside.size), replace=False)
            seeds.flat[extra] = True
        broken = dilate_mask(seeds, self.hole_radius)
        num_cuts = int(rng.poisson(self.cut_density * inside.size))
        if num_cuts > 0:
            centres = np.stack(np.unravel_index(rng.choice(inside, size=num_cuts), mask.shape), axis=1)
            normals = rng.standard_normal((num_cuts, mask.ndim))
            normals /= np.linalg.norm(normals, axis=1, keepdims=True)
            broken |= _slabs(mask.shape, centres, normals, self.cut_length / 2.0, self.cut_width / 2.0)
        return mask & ~broken


def _slabs(
    shape: tuple[int, ...], centres: np.ndarray, normals: np.ndarray, half_length: float, half_width: float
) -> np.ndarray:
    """(*S) bool union of flat slabs: |(x - c)·n| <= half_width and in-plane distance <= half_length."""
    out = np.zeros(shape, dtype=bool)
    reach = int(np.ceil(max(half_length, half_width)))
    for centre, normal in zip(centres, normals):
        lo = np.maximum(centre - reach, 0)
        hi = np.minimum(centre + reach + 1, shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        offsets = np.stack(np.meshgrid(*[np.arange(a, b) - c for a, b, c in zip(lo, hi, centre)], indexing="ij"))
        along = np.tensordot(normal, offsets, axes=1)
        in_plane_sq = (offsets**2).sum(axis=0) - along**2
        out[box] |= (np.abs(along) <= half_width) & (in_plane_sq <= half_length**2)
    return out


class ContrastRater(MaskRater):
    """Image-dependent tendency: over-segments conspicuous objects, under-segments faint ones.

    Per connected component of every region (full connectivity), the contrast is the absolute
    difference between the mean image intensity inside the component and in a ring of ``ring_width``
    voxels around it (background voxels nearest to that component), divided by the image's standard
    deviation, averaged over channels. Components with contrast >= ``threshold`` are dilated by
    ``over_radius``, the others (and components without surroundings) are eroded by ``under_radius``.
    For nested classes the ring of a core lies inside its enclosing object, so a core is judged
    against the object around it.

    Args:
        threshold: contrast, in image standard deviations, from which an object counts as conspicuous
            (the default separates the faint from the bright objects of the synthetic data).
        over_radius: dilation radius of conspicuous objects in voxels.
        under_radius: erosion radius of faint objects in voxels.
        ring_width: width of the surrounding ring in voxels.
    """

    name = "contrast"

    def __init__(
        self, threshold: float = 1.25, over_radius: float = 2.0, under_radius: float = 2.0, ring_width: float = 3.0
    ) -> None:
        self.threshold = float(threshold)
        self.over_radius = float(over_radius)
        self.under_radius = float(under_radius)
        self.ring_width = float(ring_width)

    def object_contrast(self, mask: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Connected components of ``mask`` (*S) and their contrast (N,) in ``image`` (C, *S)."""
        components, num = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, mask.ndim))
        if num == 0:
            return components, np.zeros(0)
        dist, nearest = ndimage.distance_transform_edt(components == 0, return_indices=True)
        ring = np.where((dist > 0) & (dist <= self.ring_width), components[tuple(nearest)], 0)
        index = np.arange(1, num + 1)
        contrast = np.zeros(num)
        for channel in image:
            inside = np.asarray(ndimage.mean(channel, components, index))
            around = np.asarray(ndimage.mean(channel, ring, index))
            contrast += np.abs(inside - around) / (channel.std() + 1e-8)
        return components, np.nan_to_num(contrast / len(image), nan=0.0)

    def transform_mask(self, mask: np.ndarray, image: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        if image is None:
            raise ValueError("the 'contrast' rater needs the image.")
        components, contrast = self.object_contrast(mask, image)
        if contrast.size == 0:
            return mask.copy()
        conspicuous = np.concatenate([[False], contrast >= self.threshold])[components]
        return dilate_mask(conspicuous, self.over_radius) | erode_mask(mask & ~conspicuous, self.under_radius)


def _facet_normals(spatial_dims: int, facets: int, rng: np.random.Generator) -> np.ndarray:
    """(K, D) unit normals spread evenly around the circle (2D) or the sphere (3D, Fibonacci points), randomly rotated."""
    if spatial_dims == 2:
        angles = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(facets) / facets
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)
    index = np.arange(facets) + 0.5
    polar = np.arccos(1 - 2 * index / facets)
    azimuth = np.pi * (1 + 5**0.5) * index
    points = np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], axis=1)
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return points @ (q * np.sign(np.diag(r))).T


class SimplifyRater(MaskRater):
    """Simplified outlines (the TAX paper's "simplified" tendency: straighter contours).

    Each connected component of every region (full connectivity) is replaced by the convex polygon
    (2D) / polyhedron (3D) with ``facets`` sides that circumscribes it: for ``facets`` directions
    ``n_k`` evenly spread and randomly rotated, the half-space ``n_k · x <= max over the component of
    n_k · x``. Concavities are filled and curved boundaries become straight segments, slightly
    over-segmenting; components under 3 voxels are kept as they are.

    Args:
        facets: number of sides (2D) or faces (3D) of the circumscribing polytope (>= 3 in 2D, >= 4 in 3D).
    """

    name = "simplify"

    def __init__(self, facets: int | None = None) -> None:
        if facets is not None and facets < 3:
            raise ValueError(f"facets must be >= 3, got {facets}.")
        self.facets = facets

    def transform_mask(self, mask: np.ndarray, image: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        dims = mask.ndim
        facets = self.facets or (6 if dims == 2 else 20)
        out = mask.copy()
        components, num = ndimage.label(mask, structure=ndimage.generate_binary_structure(dims, dims))
        for index, box in enumerate(ndimage.find_objects(components), start=1):
            points = np.argwhere(components[box] == index).astype(np.float64)  # (N, D) in box coordinates
            if len(points) < 3:
                continue
            normals = _facet_normals(dims, facets, rng)
            support = (points @ normals.T).max(axis=0) + 0.5  # half a voxel: the polytope holds the voxels
            pad = [(max(s.start - 2, 0), min(s.stop + 2, n)) for s, n in zip(box, mask.shape)]
            grid = np.stack(
                np.meshgrid(*[np.arange(a, b) - s.start for (a, b), s in zip(pad, box)], indexing="ij"), axis=-1
            )
            inside = (grid @ normals.T <= support).all(axis=-1)
            out[tuple(slice(a, b) for a, b in pad)] |= inside
        return out


class ComposeRaters(Rater):
    """Raters applied in sequence: each one's output is the next one's reference label.

    Args:
        raters: rater callables or registry names, applied in order; they share ``rng``.
        name: name of the composition (default: the names joined by ``"+"``).
    """

    def __init__(self, raters: Sequence[RaterFn | str], name: str | None = None) -> None:
        if not raters:
            raise ValueError("ComposeRaters needs at least one rater.")
        self.raters = [make_rater(r) if isinstance(r, str) else r for r in raters]
        self.name = name or "+".join(getattr(r, "name", type(r).__name__) for r in self.raters)

    def apply(self, label: np.ndarray, image: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        for rater in self.raters:
            label = _as_label(rater(label, image, rng))
        return label


class WrongRater(ComposeRaters):
    """CM-Net's "wrong segmentation": over-segmentation by ``radius``, then fractures.

    Args:
        radius: dilation radius in voxels.
        fracture_kwargs: arguments of :class:`FractureRater` (hole_density, hole_radius, ...).
    """

    def __init__(self, radius: float = 1.0, **fracture_kwargs: Any) -> None:
        super().__init__([OverRater(radius), FractureRater(**fracture_kwargs)], name="wrong")


RATERS: dict[str, Callable[..., Rater]] = {
    "perfect": PerfectRater,
    "good": GoodRater,
    "over": OverRater,
    "under": UnderRater,
    "fracture": FractureRater,
    "wrong": WrongRater,
    "blank": BlankRater,
    "miss": MissRater,
    "contrast": ContrastRater,
    "simplify": SimplifyRater,
    # the TAX paper's names of its tendencies
    "dilated": OverRater,
    "eroded": UnderRater,
    "simplified": SimplifyRater,
    "none": PerfectRater,
}
"""Registry of rater classes by name."""


def make_rater(name: str, **params: Any) -> Rater:
    """A rater from its registry name and parameters, e.g. ``make_rater("over", radius=3)``.

    ``"a+b"`` composes registry raters with default parameters (``ComposeRaters``), e.g.
    ``make_rater("over+fracture")``; ``"name-value"`` sets the rater's first parameter, e.g. ``"over-1"`` is
    ``OverRater(radius=1)`` and ``"miss-0.3"`` is ``MissRater(probability=0.3)`` (usable in a synthetic
    dataset's rater list, which holds names).
    """
    if "+" in name:
        if params:
            raise ValueError(f"parameters cannot be given for a composed rater name '{name}'.")
        return ComposeRaters([make_rater(part) for part in name.split("+")], name=name)
    base, _, value = name.partition("-")
    if base not in RATERS:
        raise ValueError(f"unknown rater '{base}'; known: {sorted(RATERS)}.")
    if value:
        first = next(iter(inspect.signature(RATERS[base]).parameters), None)
        if first is None or first in params:
            raise ValueError(f"rater '{name}': '{base}' takes no parameter in its name.")
        try:
            params = {first: float(value), **params}
        except ValueError:
            raise ValueError(f"rater '{name}': '{value}' is not a number.") from None
    rater = RATERS[base](**params)
    if value:
        rater.name = name
    return rater


class SimulateRatersd(MapTransform, Randomizable):
    """Simulate several raters from the truth, on the fly.

    From the truth at each of ``keys`` ((1, *S) class indices, numpy or torch/MetaTensor, float
    maps are rounded) and optionally the image at ``image_key`` ((C, *S)), writes ``output_key``:
    (R, *S) integer label maps, one channel per rater, in the order of ``raters``. With
    ``labels_per_image=k``, only ``k`` random raters are kept per call and the other channels are
    ``MISSING_LABEL`` (-1) (the hidden raters are not computed). The output has the truth's type
    (numpy / torch / MetaTensor with the truth's meta) and ``dtype``. If ``rater_mask_key`` is
    given, an (R,) bool array of the kept raters is written there too.

    Randomness comes from ``self.R`` (``set_random_state``): each call draws a seed, and rater
    ``r`` uses ``np.random.default_rng([seed, r])``.

    Args:
        keys: key(s) of the truth.
        raters: rater names (see :data:`RATERS`, ``"a+b"`` composes) or rater callables.
        image_key: key of the image, for image-dependent raters; None gives them no image.
        output_key: key(s) of the output, one per key in ``keys``.
        labels_per_image: keep ``k`` raters per image; None keeps all.
        rater_mask_key: key(s) of the (R,) bool mask of kept raters; None writes none.
        dtype: integer dtype of the output (signed, to hold -1).
        allow_missing_keys: don't raise if a key is missing.
    """

    backend = [TransformBackends.NUMPY]

    def __init__(
        self,
        keys: KeysCollection,
        raters: Sequence[str | RaterFn] = DEFAULT_RATERS,
        image_key: str | None = None,
        output_key: KeysCollection = LABEL,
        labels_per_image: int | None = None,
        rater_mask_key: KeysCollection | None = None,
        dtype: np.dtype | type | torch.dtype = np.int64,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if not raters:
            raise ValueError("SimulateRatersd needs at least one rater.")
        self.raters = [make_rater(r) if isinstance(r, str) else r for r in raters]
        self.rater_names = [getattr(r, "name", type(r).__name__) for r in self.raters]
        if labels_per_image is not None and not 1 <= labels_per_image <= len(self.raters):
            raise ValueError(f"labels_per_image must be in 1..{len(self.raters)}, got {labels_per_image}.")
        self.image_key = image_key
        self.output_keys = ensure_tuple_rep(output_key, len(self.keys))
        self.rater_mask_keys = ensure_tuple_rep(rater_mask_key, len(self.keys))
        self.labels_per_image = labels_per_image
        self.dtype = dtype
        self._seed = 0
        self._kept = np.ones(len(self.raters), dtype=bool)

    def randomize(self, data: Any = None) -> None:
        self._seed = int(self.R.randint(0, 2**31 - 1))
        num = len(self.raters)
        self._kept = np.ones(num, dtype=bool)
        if self.labels_per_image is not None:
            self._kept[:] = False
            self._kept[self.R.choice(num, self.labels_per_image, replace=False)] = True

    def simulate(self, truth: np.ndarray | torch.Tensor, image: np.ndarray | torch.Tensor | None) -> np.ndarray:
        """(1, *S) truth, (C, *S) image or None -> (R, *S) int64 labels with the current randomisation."""
        label = _as_label(truth)
        if label.shape[0] != 1:
            raise ValueError(f"the truth must have one channel (1, *S), got shape {tuple(label.shape)}.")
        label = label[0]
        img = _as_image(image, label.shape)
        out = np.full((len(self.raters), *label.shape), MISSING_LABEL, dtype=np.int64)
        for r, rater in enumerate(self.raters):
            if self._kept[r]:
                out[r] = rater(label, img, np.random.default_rng([self._seed, r]))
        return out

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        image = d.get(self.image_key) if self.image_key is not None else None
        for key, out_key, mask_key in self.key_iterator(d, self.output_keys, self.rater_mask_keys):
            labels = self.simulate(d[key], image)
            d[out_key] = convert_to_dst_type(labels, dst=d[key], dtype=self.dtype)[0]
            if mask_key is not None:
                d[mask_key] = self._kept.copy()
        return d


SimulateRatersD = SimulateRatersDict = SimulateRatersd
