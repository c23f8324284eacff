"""MS lesions of the ISBI 2015 longitudinal lesion segmentation challenge: two raters, 3D or 2D, split by subject.

Layout read (``src`` is the ``training`` folder, a folder above it, or one subject folder)::

    trainingXX/preprocessed/trainingXX_TT_{flair,mprage,pd,t2}_pp.nii    float, 181 x 217 x 181, 1 mm MNI
    trainingXX/masks/trainingXX_TT_mask{1,2}.nii                        lesion masks 0/1 of rater 1 and 2

``XX`` is the subject, ``TT`` the time point; every (subject, time point) is a case and every subject a
split group (time points of a subject never cross splits). Test subjects (``testXX``, no masks) are
not read. The preprocessed images (skull-stripped, registered) are used, normalised per case and
modality with a z-score over their non-zero voxels, stacked as channels flair, mprage, pd, t2.
The raters are the challenge's two raters (``mask1``, ``mask2``), the same two people for every case;
there is no consensus (no ``gt``). 2D: axial slices (last axis), by default those with a lesion.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from multirater_monai.data.real.arrays import (
    Problems,
    check_geometry,
    check_image,
    check_label,
    normalize_nonzero,
    read_nifti,
    select_slices,
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
from multirater_monai.data.real.split import DEFAULT_FRACTIONS
from multirater_monai.data.real.writer import write_prepared

__all__ = ["MS_CHANNELS", "MS_RATERS", "find_ms_subjects", "looks_like_mslsc", "prepare_mslsc"]

MS_CHANNELS = ("flair", "mprage", "pd", "t2")
MS_RATERS = ("rater1", "rater2")
_SUBJECT = re.compile(r"training\d{2}")
_IMAGE = re.compile(r"(training\d{2})_(\d{2})_(flair|mprage|pd|t2)_pp\.nii(\.gz)?")
_MASK = re.compile(r"(training\d{2})_(\d{2})_mask([12])\.nii(\.gz)?")


def find_ms_subjects(src: str | os.PathLike) -> list[Path]:
    """Subject folders (``trainingXX``) at ``src``, below it, or below ``src/training``."""
    root = Path(src)
    if _SUBJECT.fullmatch(root.name):
        return [root]
    found = []
    for folder in (root, root / "training"):
        if folder.is_dir():
            found += [p for p in sorted(folder.iterdir()) if p.is_dir() and _SUBJECT.fullmatch(p.name)]
    return found


def looks_like_mslsc(src: str | os.PathLike) -> bool:
    return any((s / "preprocessed").is_dir() or (s / "masks").is_dir() for s in find_ms_subjects(src))


def _time_points(subject: Path) -> dict[str, dict[str, Path]]:
    """time point -> {modality or 'mask1'/'mask2': file} of one subject."""
    points: dict[str, dict[str, Path]] = {}
    for folder, pattern in ((subject / "preprocessed", _IMAGE), (subject / "masks", _MASK)):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            match = pattern.fullmatch(path.name)
            if match and match.group(1) == subject.name:
                key = match.group(3) if pattern is _IMAGE else f"mask{match.group(3)}"
                points.setdefault(match.group(2), {})[key] = path
    return points


def _load_case(subject: Path, point: str, files: dict[str, Path], spatial_dims: int, slices: str) -> list[PreparedItem]:
    problems: Problems = []
    prefix = f"{subject.name}_{point}"
    channels = []
    ref = None
    for modality in MS_CHANNELS:
        path = files.get(modality, subject / "preprocessed" / f"{prefix}_{modality}_pp.nii")
        if modality not in files:
            problems.append((str(path), f"missing modality '{modality}'"))
            continue
        loaded = read_nifti(path, problems)
        if loaded is None:
            continue
        data, affine = loaded
        if data.ndim != 3:
            problems.append((str(path), f"expected a 3D volume, got shape {data.shape}"))
            continue
        if ref is None:
            ref = (str(path), data.shape, affine)
        elif not check_geometry(data.shape, affine, ref[1], ref[2], str(path), ref[0], problems):
            continue
        if check_image(data, str(path), problems):
            channels.append(data)
    masks = []
    for r in (1, 2):
        path = files.get(f"mask{r}", subject / "masks" / f"{prefix}_mask{r}.nii")
        if f"mask{r}" not in files:
            problems.append((str(path), f"missing lesion mask of rater {r}"))
            continue
        loaded = read_nifti(path, problems, what="label")
        if loaded is None:
            continue
        data, affine = loaded
        if ref is not None and not check_geometry(data.shape, affine, ref[1], ref[2], str(path), ref[0], problems):
            continue
        if check_label(data, str(path), (0, 1), problems):
            masks.append(to_labels(data))
    if problems or ref is None:
        raise CaseError(problems or [(str(subject), "unreadable case")])
    image = normalize_nonzero(np.stack(channels))
    affine = ref[2]
    source = [str(files[k]) for k in (*MS_CHANNELS, "mask1", "mask2")]
    if spatial_dims == 3:
        return [PreparedItem(prefix, image, masks, affine, info={"time_point": int(point), "source": source})]
    return [
        PreparedItem(
            f"{prefix}_z{z:03d}",
            image[..., z],
            [m[..., z] for m in masks],
            slice_affine(affine, 2, z),
            info={"time_point": int(point), "slice": int(z), "source": source},
        )
        for z in select_slices(image, masks, slices, axis=2)
    ]


def prepare_mslsc(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    spatial_dims: int = 3,
    slices: str = "foreground",
    skip_bad: bool = False,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> PrepareReport:
    """Prepare the ISBI 2015 MS lesion training data (see the module docstring).

    Args:
        src: the user's copy (the ``training`` folder or a folder holding it).
        dst: the output folder.
        spatial_dims: 3 (volumes) or 2 (axial slices).
        slices: 2D slice selection: ``"foreground"`` (a rater marks a lesion), ``"nonempty"``, ``"all"``.
        skip_bad: write the good cases and report the bad ones (else any problem stops the run).
        seed: seed of the split (by subject).
        fractions: (training, validation, test) shares of the subjects.
    """
    if not Path(src).is_dir():
        raise PrepareError(f"MS lesion source folder not found: {src}")
    if spatial_dims not in (2, 3):
        raise PrepareError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    subjects = find_ms_subjects(src)
    cases = []
    for subject in subjects:
        for point, files in sorted(_time_points(subject).items()):
            cases.append(
                SourceCase(
                    case=f"{subject.name}_{point}",
                    group=subject.name,
                    loader=partial(_load_case, subject, point, files, spatial_dims, slices),
                    files=[str(p) for p in files.values()],
                )
            )
    if not cases:
        from multirater_monai.data.real.registry import detection_hint

        raise PrepareError(
            f"no ISBI 2015 MS lesion case in {src} (expected training01/preprocessed/training01_01_flair_pp.nii and "
            f"training01/masks/training01_01_mask1.nii){detection_hint(src, 'mslsc')}"
        )
    spec = DatasetSpec(
        dataset="mslsc",
        name=f"isbi2015_ms_{spatial_dims}d",
        description=f"ISBI 2015 longitudinal MS lesion challenge, training data, {spatial_dims}D, two raters",
        raters=list(MS_RATERS),
        rater_note="the challenge's two raters (mask1, mask2), the same two people on every case; no consensus",
        num_classes=2,
        labels={"0": "background", "1": "lesion"},
        channels=list(MS_CHANNELS),
        spatial_dims=spatial_dims,
        has_gt=False,
        extra={
            "normalization": "per case and modality: z-score over the non-zero voxels, background 0",
            "slices": slices if spatial_dims == 2 else None,
        },
    )
    options = dict(spatial_dims=spatial_dims, slices=slices, skip_bad=skip_bad, seed=seed, fractions=list(fractions))
    return write_prepared(
        spec,
        cases,
        dst,
        src,
        "ISBI 2015 MS lesions (preprocessed)",
        skip_bad=skip_bad,
        seed=seed,
        fractions=fractions,
        options=options,
    )
