"""BraTS (2019, 2020, 2021, 2023+) in its release layouts, 3D volumes or 2D slices, with simulated raters.

Layouts read (any folder depth under ``src``; the case folder name decides the release)::

    2019  .../HGG|LGG/BraTS19_<inst>_<id>_1/BraTS19_<inst>_<id>_1_{flair,t1,t1ce,t2,seg}.nii.gz
    2020  .../BraTS20_Training_001/BraTS20_Training_001_{flair,t1,t1ce,t2,seg}.nii.gz
    2021  .../BraTS2021_00000/BraTS2021_00000_{flair,t1,t1ce,t2,seg}.nii.gz
    2023+ .../BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz   (also MEN, MET, PED, SSA)

Labels: 2019-2021 use 0 background, 1 necrotic / non-enhancing core, 2 edema, 4 enhancing tumour;
2023+ use 0, 1 (NETC), 2 (SNFH, edema), 3 (ET). Both are mapped to nested classes (scheme
``"regions"``): 0 background, 1 edema, 2 necrotic / non-enhancing core, 3 enhancing tumour, so that
``class >= 1`` is the whole tumour, ``>= 2`` the tumour core, ``>= 3`` the enhancing tumour (the
nesting the simulated raters assume). Schemes ``"wt"``, ``"tc"``, ``"et"`` give binary maps of one region.

Image: the four modalities stacked as channels in the order flair, t1, t1ce, t2 (2023+: t2f, t1n, t1c,
t2w), each normalised per case with a z-score over its non-zero (brain) voxels. 2D: axial slices
(last axis), centre-cropped in-plane (default 192 × 192, the CM-Net protocol), split by case.

Raters: BraTS has one reference per case; the rater labels are simulated from it with the project's
raters (default the CM-Net paper's ``good``, ``over``, ``under``, ``wrong``), optionally on one class
only, and recorded in the datalist; the reference is the item's ``gt``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from multirater_monai.data.real.arrays import (
    Problems,
    center_crop_or_pad,
    check_geometry,
    check_image,
    check_label,
    normalize_nonzero,
    read_nifti,
    select_slices,
    shift_affine,
    slice_affine,
    to_labels,
)
from multirater_monai.data.real.core import (
    CaseError,
    DatasetSpec,
    PreparedItem,
    PrepareError,
    PrepareReport,
    SourceCase,
)
from multirater_monai.data.real.raters import CMNET_RATERS, resolve_raters, simulate_raters
from multirater_monai.data.real.split import DEFAULT_FRACTIONS
from multirater_monai.data.real.writer import write_prepared
from multirater_monai.transforms.raters import RaterFn

__all__ = [
    "BratsRelease",
    "BRATS_RELEASES",
    "BRATS_CHANNELS",
    "LABEL_SCHEMES",
    "DEFAULT_CROP_2D",
    "find_brats_cases",
    "looks_like_brats",
    "prepare_brats",
]

BRATS_CHANNELS = ("flair", "t1", "t1ce", "t2")
"""Channel order of the prepared image (2023+ files t2f, t1n, t1c, t2w fill the same slots)."""

DEFAULT_CROP_2D = (192, 192)


@dataclass(frozen=True)
class BratsRelease:
    """File naming and label convention of one BraTS release.

    Attributes:
        name: release name (``"2021"``).
        pattern: regular expression of the case folder names.
        separator: between the case id and the file suffix (``"_"`` or ``"-"``).
        modalities: file suffixes filling :data:`BRATS_CHANNELS` in order.
        labels: the label values of the segmentation.
        to_regions: source label -> nested class (0 background, 1 edema, 2 core, 3 enhancing).
        label_names: source label -> its name in the release.
    """

    name: str
    pattern: str
    separator: str
    modalities: tuple[str, str, str, str]
    labels: tuple[int, ...]
    to_regions: dict[int, int]
    label_names: dict[int, str]

    def file(self, case_dir: Path, suffix: str) -> Path:
        """The case's file with ``suffix`` (``.nii.gz``, or ``.nii`` when only that exists)."""
        stem = case_dir / f"{case_dir.name}{self.separator}{suffix}"
        gz = stem.with_name(stem.name + ".nii.gz")
        plain = stem.with_name(stem.name + ".nii")
        return plain if not gz.exists() and plain.exists() else gz

    def group(self, case: str) -> str:
        """The patient of a case (2023+ ids end with a time-point number: ``BraTS-GLI-00000-000``)."""
        return case[:-4] if self.separator == "-" else case


_OLD_LABELS = {
    0: "background",
    1: "necrotic / non-enhancing tumour core",
    2: "peritumoral edema",
    4: "enhancing tumour",
}
_NEW_LABELS = {
    0: "background",
    1: "non-enhancing tumour core (NETC)",
    2: "surrounding FLAIR hyperintensity (SNFH)",
    3: "enhancing tumour (ET)",
}
_OLD = dict(
    separator="_",
    modalities=("flair", "t1", "t1ce", "t2"),
    labels=(0, 1, 2, 4),
    to_regions={0: 0, 2: 1, 1: 2, 4: 3},
    label_names=_OLD_LABELS,
)

BRATS_RELEASES: dict[str, BratsRelease] = {
    "2019": BratsRelease("2019", r"BraTS19_[A-Za-z0-9]+(_[A-Za-z0-9]+)+", **_OLD),
    "2020": BratsRelease("2020", r"BraTS20_(Training|Validation)_\d{3}", **_OLD),
    "2021": BratsRelease("2021", r"BraTS2021_\d{5}", **_OLD),
    "2023": BratsRelease(
        "2023",
        r"BraTS-[A-Z]{2,4}-\d{5}-\d{3}",
        separator="-",
        modalities=("t2f", "t1n", "t1c", "t2w"),
        labels=(0, 1, 2, 3),
        to_regions={0: 0, 2: 1, 1: 2, 3: 3},
        label_names=_NEW_LABELS,
    ),
}
"""The releases by name; ``"2023"`` covers the 2023 naming used since (GLI, MEN, MET, PED, SSA)."""

_REGION_NAMES = {0: "background", 1: "edema", 2: "necrotic / non-enhancing core", 3: "enhancing tumour"}
LABEL_SCHEMES: dict[str, tuple[int, dict[str, str]]] = {
    "regions": (4, {str(k): v for k, v in _REGION_NAMES.items()}),
    "wt": (2, {"0": "background", "1": "whole tumour"}),
    "tc": (2, {"0": "background", "1": "tumour core"}),
    "et": (2, {"0": "background", "1": "enhancing tumour"}),
}
"""Label scheme -> (num_classes, class names). ``regions``: nested classes; others: one binary region."""
_SCHEME_THRESHOLD = {"wt": 1, "tc": 2, "et": 3}
_MAX_DEPTH = 4


def _match_release(name: str) -> str | None:
    for release, spec in BRATS_RELEASES.items():
        if re.fullmatch(spec.pattern, name):
            return release
    return None


def find_brats_cases(src: str | os.PathLike) -> dict[str, list[Path]]:
    """Case folders under ``src`` (up to 4 levels deep, ``src`` itself included), by release."""
    root = Path(src)
    found: dict[str, list[Path]] = {}
    for current, dirs, _ in os.walk(root):
        path = Path(current)
        release = _match_release(path.name)
        if release is not None:
            found.setdefault(release, []).append(path)
            dirs[:] = []
            continue
        if len(path.relative_to(root).parts) >= _MAX_DEPTH:
            dirs[:] = []
        dirs.sort()
    return found


def looks_like_brats(src: str | os.PathLike) -> bool:
    """Whether ``src`` holds BraTS case folders."""
    return bool(find_brats_cases(src))


def _read_case(case_dir: Path, release: BratsRelease) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(4, X, Y, Z) float32 raw image, (X, Y, Z) source labels, (4, 4) affine of one case; CaseError on problems."""
    problems: Problems = []
    channels: list[np.ndarray | None] = []
    ref: tuple[str, tuple, np.ndarray] | None = None
    for channel, suffix in zip(BRATS_CHANNELS, release.modalities):
        path = release.file(case_dir, suffix)
        if not path.exists():
            problems.append((str(path), f"missing modality '{suffix}' ({channel})"))
            channels.append(None)
            continue
        loaded = read_nifti(path, problems)
        if loaded is None:
            channels.append(None)
            continue
        data, affine = loaded
        if data.ndim != 3:
            problems.append((str(path), f"expected a 3D volume, got shape {data.shape}"))
            channels.append(None)
            continue
        if ref is None:
            ref = (str(path), data.shape, affine)
        elif not check_geometry(data.shape, affine, ref[1], ref[2], str(path), ref[0], problems):
            channels.append(None)
            continue
        channels.append(data if check_image(data, str(path), problems) else None)
    seg_path = release.file(case_dir, "seg")
    seg = None
    if not seg_path.exists():
        others = sorted(
            p.name
            for p in case_dir.iterdir()
            if p.name.endswith((".nii", ".nii.gz"))
            and not any(p.name.startswith(f"{case_dir.name}{release.separator}{m}.") for m in release.modalities)
        )
        hint = f"; found {', '.join(others)} instead" if others else " (a validation case without labels?)"
        problems.append((str(seg_path), f"missing segmentation{hint}"))
    else:
        loaded = read_nifti(seg_path, problems, what="label")
        if loaded is not None:
            data, affine = loaded
            ok = ref is None or check_geometry(data.shape, affine, ref[1], ref[2], str(seg_path), ref[0], problems)
            if ok and check_label(data, str(seg_path), release.labels, problems):
                seg = data
    if problems or ref is None or seg is None or any(c is None for c in channels):
        raise CaseError(problems or [(str(case_dir), "unreadable case")])
    return np.stack(channels).astype(np.float32), seg, ref[2]


def _load_case(
    case_dir: Path,
    release: BratsRelease,
    spatial_dims: int,
    scheme: str,
    rater_fns: Sequence[RaterFn],
    rater_class: int | None,
    crop_size: Sequence[int] | None,
    slices: str,
    seed: int,
) -> list[PreparedItem]:
    raw, seg, affine = _read_case(case_dir, release)
    image = normalize_nonzero(raw)
    reference = to_labels(seg, release.to_regions)
    if scheme != "regions":
        reference = (reference >= _SCHEME_THRESHOLD[scheme]).astype(np.uint8)
    case = case_dir.name
    source = [str(release.file(case_dir, m)) for m in (*release.modalities, "seg")]
    if spatial_dims == 3:
        if crop_size is not None:
            image, start = center_crop_or_pad(image, crop_size)
            reference, _ = center_crop_or_pad(reference, crop_size)
            affine = shift_affine(affine, start)
        raters = simulate_raters(reference, image, rater_fns, seed, case, rater_class)
        return [PreparedItem(case, image, list(raters), affine, gt=reference, info={"source": source})]
    items = []
    for z in select_slices(image, [reference], slices, axis=2):
        img2, ref2, aff2 = image[..., z], reference[..., z], slice_affine(affine, 2, z)
        if crop_size is not None:
            img2, start = center_crop_or_pad(img2, crop_size)
            ref2, _ = center_crop_or_pad(ref2, crop_size)
            aff2 = shift_affine(aff2, start)
        name = f"{case}_z{z:03d}"
        raters = simulate_raters(ref2, img2, rater_fns, seed, name, rater_class)
        items.append(PreparedItem(name, img2, list(raters), aff2, gt=ref2, info={"slice": int(z), "source": source}))
    return items


def prepare_brats(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    release: str | None = None,
    spatial_dims: int = 3,
    label_scheme: str = "regions",
    raters: Sequence[str | RaterFn] = CMNET_RATERS,
    rater_class: int | None = None,
    crop_size: Sequence[int] | None | str = "default",
    slices: str = "foreground",
    skip_bad: bool = False,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> PrepareReport:
    """Prepare a BraTS release for the bundles (see the module docstring for layouts and conventions).

    Args:
        src: the user's copy (a release folder, or any folder holding case folders).
        dst: the output folder.
        release: ``"2019"``, ``"2020"``, ``"2021"`` or ``"2023"``; None detects it from the case names
            (an error when several releases are found).
        spatial_dims: 3 (volumes) or 2 (axial slices).
        label_scheme: ``"regions"`` (4 nested classes), ``"wt"``, ``"tc"`` or ``"et"`` (binary).
        raters: simulated raters (registry names or callables), default the CM-Net paper's four.
        rater_class: None: raters alter every class; ``c``: only class ``c``'s region (CM-Net's
            "on a chosen class"); must be in ``1..L-1``.
        crop_size: centre crop (pad) size of the in-plane axes in 2D (default 192 × 192) or of the volume
            in 3D (default none); None for no crop.
        slices: 2D slice selection: ``"foreground"`` (slices with tumour), ``"nonempty"`` (with brain),
            ``"all"``.
        skip_bad: write the good cases and report the bad ones (else any problem stops the run).
        seed: seed of the split and of the simulated raters.
        fractions: (training, validation, test) shares of the cases.

    Returns:
        the :class:`PrepareReport`.
    """
    if not Path(src).is_dir():
        raise PrepareError(f"BraTS source folder not found: {src}")
    if spatial_dims not in (2, 3):
        raise PrepareError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if label_scheme not in LABEL_SCHEMES:
        raise PrepareError(f"label_scheme must be one of {sorted(LABEL_SCHEMES)}, got {label_scheme!r}")
    num_classes, class_names = LABEL_SCHEMES[label_scheme]
    if rater_class is not None and not 1 <= rater_class < num_classes:
        raise PrepareError(
            f"rater_class must be in 1..{num_classes - 1} for scheme '{label_scheme}', got {rater_class}"
        )
    try:
        rater_names, rater_fns = resolve_raters(raters)
    except ValueError as e:
        raise PrepareError(str(e)) from e
    if crop_size == "default":
        crop_size = DEFAULT_CROP_2D if spatial_dims == 2 else None
    if crop_size is not None and len(crop_size) != spatial_dims:
        raise PrepareError(f"crop_size needs {spatial_dims} values, got {crop_size}")

    found = find_brats_cases(src)
    if release is not None:
        if release not in BRATS_RELEASES:
            raise PrepareError(f"unknown BraTS release {release!r}; known: {sorted(BRATS_RELEASES)}")
        found = {release: found.get(release, [])}
    releases = sorted(r for r, dirs in found.items() if dirs)
    if not releases:
        from multirater_monai.data.real.registry import detection_hint

        raise PrepareError(
            f"no BraTS case folder in {src} (expected e.g. BraTS2021_00000/BraTS2021_00000_flair.nii.gz or "
            f"BraTS-GLI-00000-000/BraTS-GLI-00000-000-t2f.nii.gz){detection_hint(src, 'brats')}"
        )
    if len(releases) > 1:
        counts = ", ".join(f"{r}: {len(found[r])} cases" for r in releases)
        raise PrepareError(f"{src} holds cases of several BraTS releases ({counts}); choose one with --release")
    rel = BRATS_RELEASES[releases[0]]
    cases = [
        SourceCase(
            case=d.name,
            group=rel.group(d.name),
            loader=partial(
                _load_case, d, rel, spatial_dims, label_scheme, rater_fns, rater_class, crop_size, slices, seed
            ),
            files=[str(d)],
        )
        for d in found[rel.name]
    ]
    scheme_text = "nested regions" if label_scheme == "regions" else f"binary {class_names['1']}"
    spec = DatasetSpec(
        dataset="brats",
        name=f"brats{rel.name}_{spatial_dims}d" + ("" if label_scheme == "regions" else f"_{label_scheme}"),
        description=f"BraTS {rel.name}, {spatial_dims}D, {scheme_text}, simulated raters {', '.join(rater_names)}",
        raters=rater_names,
        rater_note=(
            "simulated from each case's reference segmentation (BraTS has one per case) with the project's raters"
            + ("" if rater_class is None else f", altering class {rater_class} only")
            + "; the reference is the item's gt"
        ),
        num_classes=num_classes,
        labels=class_names,
        channels=list(BRATS_CHANNELS),
        spatial_dims=spatial_dims,
        has_gt=True,
        extra={
            "label_convention": {
                "release": rel.name,
                "source_labels": {str(k): v for k, v in rel.label_names.items()},
                "to_classes": {
                    str(k): (v if label_scheme == "regions" else int(v >= _SCHEME_THRESHOLD[label_scheme]))
                    for k, v in rel.to_regions.items()
                },
                "scheme": label_scheme,
            },
            "simulated_raters": {
                "raters": rater_names,
                "rater_class": rater_class,
                "seed": int(seed),
                "reference": "gt",
                "rng": "rater_rng(seed, stable_index(item name), rater index)",
            },
            "modalities": dict(zip(BRATS_CHANNELS, rel.modalities)),
            "normalization": "per case and modality: z-score over the non-zero voxels, background 0",
            "crop_size": None if crop_size is None else [int(c) for c in crop_size],
            "slices": slices if spatial_dims == 2 else None,
        },
    )
    options = dict(
        release=rel.name,
        spatial_dims=spatial_dims,
        label_scheme=label_scheme,
        raters=rater_names,
        rater_class=rater_class,
        crop_size=None if crop_size is None else list(crop_size),
        slices=slices,
        skip_bad=skip_bad,
        seed=seed,
        fractions=list(fractions),
    )
    return write_prepared(
        spec,
        cases,
        dst,
        src,
        f"BraTS {rel.name}",
        skip_bad=skip_bad,
        seed=seed,
        fractions=fractions,
        options=options,
    )
