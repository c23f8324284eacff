"""QUBIQ 2020 / 2021 (brain-growth, brain-tumor, kidney, prostate, pancreas, pancreatic-lesion).

Layout read (any depth under ``src``; e.g. ``src`` = the folder holding ``training_data_v3`` and
``validation_data_v3``, or one of them, or one dataset folder)::

    .../<dataset>/Training/caseNN/image.nii.gz                 the image
    .../<dataset>/Training/caseNN/taskTT_segRR.nii.gz          binary (0/1) mask of task TT by rater RR
    .../<dataset>/Validation/caseNN/...                        released validation cases (same files)
    .../<dataset>/caseNN/...                                   (2021 copies without Training/Validation)

One prepared dataset is one ``<dataset>`` and one task (QUBIQ scores every task as a separate binary
segmentation). Raters are the union of the ``RR`` numbers of the task; numbers with gaps (a case
without ``seg03``) are missing raters (``null`` in the datalist, ``-1`` channels in training). Singleton
axes are dropped (a (H, W, 1) prostate slice is 2D); an image with one more axis than its masks
holds channels on its last axis (brain-tumor: (240, 240, 4), four MR sequences). 2021's 3D datasets
(pancreas, pancreatic-lesion) can be prepared in 3D or as axial 2D slices. Intensities are kept (the
bundles normalise per image). There is no consensus: validation uses the fused raters, and
evaluation the QUBIQ soft Dice (prediction and rater mean binarised at 0.1, 0.2, ..., 0.9, Dice
averaged), set in the bundle config overlay (``soft_dice_thresholds``).

Splits: cases under a ``Validation`` (or ``Testing``) folder form the test split; the others are split
into training and validation by patient (``case1-2`` is patient ``case1``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np

from multirater_monai.data.real.arrays import (
    Problems,
    check_geometry,
    check_image,
    check_label,
    read_nifti,
    select_slices,
    slice_affine,
    squeeze_axes,
    to_labels,
)
from multirater_monai.data.real.core import (
    CaseError,
    CaseIssue,
    DatasetSpec,
    PreparedItem,
    PrepareError,
    PrepareReport,
    SourceCase,
)
from multirater_monai.data.real.split import DEFAULT_FRACTIONS
from multirater_monai.data.real.writer import write_prepared

__all__ = ["QUBIQ_DATASETS", "QUBIQ_THRESHOLDS", "find_qubiq_cases", "looks_like_qubiq", "prepare_qubiq"]

QUBIQ_DATASETS: dict[str, dict[str, int]] = {
    "brain-growth": {"tasks": 1, "raters": 7, "spatial_dims": 2, "channels": 1},
    "brain-tumor": {"tasks": 3, "raters": 3, "spatial_dims": 2, "channels": 4},
    "kidney": {"tasks": 1, "raters": 3, "spatial_dims": 2, "channels": 1},
    "prostate": {"tasks": 2, "raters": 6, "spatial_dims": 2, "channels": 1},
    "pancreas": {"tasks": 1, "raters": 2, "spatial_dims": 3, "channels": 1},
    "pancreatic-lesion": {"tasks": 1, "raters": 2, "spatial_dims": 3, "channels": 1},
}
"""What the QUBIQ datasets hold as published (for the docs and the replicas; the reader reads what is there)."""

QUBIQ_THRESHOLDS = [round(0.1 * k, 1) for k in range(1, 10)]
"""The QUBIQ soft Dice binarisation levels."""

_SEG = re.compile(r"task(\d+)_seg(\d+)\.nii(\.gz)?")
_ROLE_FOLDERS = {"training", "validation", "testing", "test"}
_MAX_DEPTH = 5


def _image_file(case_dir: Path) -> Path | None:
    for name in ("image.nii.gz", "image.nii"):
        if (case_dir / name).is_file():
            return case_dir / name
    return None


def find_qubiq_cases(src: str | os.PathLike) -> dict[str, list[tuple[Path, bool]]]:
    """Case folders under ``src`` by dataset name: (folder, is a validation/test case)."""
    root = Path(src)
    found: dict[str, list[tuple[Path, bool]]] = {}
    for current, dirs, _ in os.walk(root):
        path = Path(current)
        dirs.sort()
        if path.name.lower().startswith("case") and _image_file(path) is not None:
            parent = path.parent
            held_out = parent.name.lower() in {"validation", "testing", "test"} or any(
                "validation" in p.name.lower() or p.name.lower().startswith("test")
                for p in path.relative_to(root).parents
                if p.name
            )
            dataset = parent.parent.name if parent.name.lower() in _ROLE_FOLDERS else parent.name
            found.setdefault(dataset, []).append((path, held_out))
            dirs[:] = []
        elif len(path.relative_to(root).parts) >= _MAX_DEPTH:
            dirs[:] = []
    return found


def looks_like_qubiq(src: str | os.PathLike) -> bool:
    return any(
        any(_SEG.fullmatch(f.name) for f in case.iterdir())
        for cases in find_qubiq_cases(src).values()
        for case, _ in cases
    )


def _seg_files(case_dir: Path, task: int) -> dict[int, Path]:
    out = {}
    for path in sorted(case_dir.iterdir()):
        match = _SEG.fullmatch(path.name)
        if match and int(match.group(1)) == task:
            out[int(match.group(2))] = path
    return out


def _tasks(case_dir: Path) -> set[int]:
    return {int(m.group(1)) for p in case_dir.iterdir() if (m := _SEG.fullmatch(p.name))}


def _split_image(image: np.ndarray, spatial: tuple[int, ...]) -> np.ndarray | None:
    """(C, *S) from a squeezed image: (*S) or channels on the last axis (*S, C); None if it does not fit."""
    if image.shape == spatial:
        return image[None]
    if image.ndim == len(spatial) + 1 and image.shape[:-1] == spatial:
        return np.moveaxis(image, -1, 0)
    return None


def _probe(case_dir: Path, task: int) -> tuple[int, int] | None:
    """(spatial dims, channels) of a case from its headers, or None if unreadable."""
    try:
        segs = _seg_files(case_dir, task)
        image = nib.load(str(_image_file(case_dir)))
        seg = nib.load(str(next(iter(segs.values()))))
    except Exception:
        return None
    spatial = tuple(s for s in seg.shape if s != 1) or (1,)
    if len(spatial) < 2:
        return None
    shape = tuple(s for s in image.shape if s != 1)
    if shape == spatial:
        return len(spatial), 1
    if len(shape) == len(spatial) + 1 and shape[:-1] == spatial:
        return len(spatial), int(shape[-1])
    return None


def _load_case(
    case_dir: Path, name: str, task: int, raters: Sequence[int], spatial_dims: int, slices: str
) -> list[PreparedItem]:
    problems: Problems = []
    image_path = _image_file(case_dir)
    loaded = read_nifti(image_path, problems) if image_path is not None else None
    if image_path is None:
        problems.append((str(case_dir / "image.nii.gz"), "missing image"))
    segs = _seg_files(case_dir, task)
    if not segs:
        problems.append((str(case_dir / f"task{task:02d}_seg01.nii.gz"), f"no segmentation of task {task}"))
    loaded_segs = {}
    for number, path in segs.items():
        seg = read_nifti(path, problems, what="label")
        if seg is not None:
            loaded_segs[number] = (str(path), *squeeze_axes(*seg))
    ref = None
    if loaded_segs:  # the geometry most masks share is the reference; the odd ones are reported
        keys = [(d.shape, tuple(np.round(a, 3).ravel())) for _, d, a in loaded_segs.values()]
        common = max(set(keys), key=keys.count)
        ref = next((f, d.shape, a) for (f, d, a), k in zip(loaded_segs.values(), keys) if k == common)
    maps: dict[int, np.ndarray] = {}
    for number, (path, data, affine) in loaded_segs.items():
        if not check_geometry(data.shape, affine, ref[1], ref[2], path, ref[0], problems, dims=data.ndim):
            continue
        if check_label(data, path, (0, 1), problems):
            maps[number] = to_labels(data)
    image = None
    if loaded is not None and ref is not None:
        raw, affine = squeeze_axes(*loaded)
        image = _split_image(raw, ref[1])
        if image is None:
            problems.append(
                (
                    str(image_path),
                    f"image shape {loaded[0].shape} does not match the masks' {ref[1]} "
                    f"(from {os.path.basename(ref[0])})",
                )
            )
        else:
            dims = len(ref[1])
            check_geometry(ref[1], affine, ref[1], ref[2], str(image_path), ref[0], problems, dims=dims)
            for c, channel in enumerate(image):
                check_image(channel, f"{image_path}" + (f" [channel {c}]" if len(image) > 1 else ""), problems)
    if problems or image is None or ref is None:
        raise CaseError(problems or [(str(case_dir), "unreadable case")])
    if len(ref[1]) != spatial_dims and not (len(ref[1]) == 3 and spatial_dims == 2):
        raise CaseError([(ref[0], f"{len(ref[1])}D masks {ref[1]}, the dataset is prepared in {spatial_dims}D")])
    labels = [maps.get(r) for r in raters]
    affine = ref[2]
    source = [str(image_path)] + [str(p) for p in segs.values()]
    if len(ref[1]) == spatial_dims:
        return [PreparedItem(name, image.astype(np.float32), labels, affine, info={"source": source})]
    return [
        PreparedItem(
            f"{name}_z{z:03d}",
            image[..., z].astype(np.float32),
            [None if m is None else m[..., z] for m in labels],
            slice_affine(affine, 2, z),
            info={"slice": int(z), "source": source},
        )
        for z in select_slices(image, labels, slices, axis=2)
    ]


def prepare_qubiq(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    subset: str | None = None,
    task: int = 1,
    spatial_dims: int | None = None,
    slices: str = "foreground",
    skip_bad: bool = False,
    seed: int = 0,
    fractions: Sequence[float] | None = None,
) -> PrepareReport:
    """Prepare one task of one QUBIQ dataset (see the module docstring).

    Args:
        src: the user's copy.
        dst: the output folder.
        subset: the QUBIQ dataset (``"brain-growth"``, ``"brain-tumor"``, ``"kidney"``, ``"prostate"``,
            ``"pancreas"``, ``"pancreatic-lesion"``); None when ``src`` holds only one.
        task: the task number ``TT`` of ``taskTT_segRR``.
        spatial_dims: None: the data's own (2 or 3); 2 on 3D data: axial slices.
        slices: 2D slices of 3D data: ``"foreground"``, ``"nonempty"``, ``"all"``.
        skip_bad: write the good cases and report the bad ones (else any problem stops the run).
        seed: seed of the split.
        fractions: (training, validation, test) shares of the patients of the training cases; cases of
            validation / test folders always form the test split. Default: (0.8, 0.2, 0) when the
            source has such cases, else (0.7, 0.1, 0.2).
    """
    if not Path(src).is_dir():
        raise PrepareError(f"QUBIQ source folder not found: {src}")
    found = find_qubiq_cases(src)
    if not found:
        from multirater_monai.data.real.registry import detection_hint

        raise PrepareError(
            f"no QUBIQ case in {src} (expected e.g. brain-growth/Training/case01/image.nii.gz with "
            f"task01_seg01.nii.gz){detection_hint(src, 'qubiq')}"
        )
    if subset is None:
        if len(found) > 1:
            raise PrepareError(
                f"{src} holds several QUBIQ datasets ({', '.join(sorted(found))}); choose one with --subset"
            )
        subset = next(iter(found))
    if subset not in found:
        raise PrepareError(f"no QUBIQ dataset '{subset}' in {src} (found: {', '.join(sorted(found))})")
    case_dirs = sorted(found[subset], key=lambda c: (c[1], c[0].name))
    tasks = sorted(set().union(*(_tasks(d) for d, _ in case_dirs)))
    if task not in tasks:
        raise PrepareError(f"QUBIQ {subset} has no task {task} (tasks: {tasks})")
    raters = sorted(set().union(*(_seg_files(d, task) for d, _ in case_dirs)))
    probes = [p for p in (_probe(d, task) for d, _ in case_dirs) if p is not None]
    if not probes:
        raise PrepareError(f"no readable QUBIQ {subset} case with task {task} in {src}")
    native_dims, channels = max(set(probes), key=probes.count)
    dims = native_dims if spatial_dims is None else spatial_dims
    if dims not in (2, 3) or dims > native_dims:
        raise PrepareError(f"QUBIQ {subset} is {native_dims}D; it cannot be prepared in {dims}D")

    if fractions is None:
        fractions = (0.8, 0.2, 0.0) if any(held for _, held in case_dirs) else DEFAULT_FRACTIONS
    names: dict[str, int] = {}
    cases, problems = [], []
    for case_dir, held_out in case_dirs:
        name = case_dir.name if case_dir.name not in names else f"{case_dir.parent.name}_{case_dir.name}"
        names[name] = 1
        if task not in _tasks(case_dir):
            problems.append(
                CaseIssue(name, str(case_dir / f"task{task:02d}_seg01.nii.gz"), f"no segmentation of task {task}")
            )
            continue
        cases.append(
            SourceCase(
                case=name,
                group=case_dir.name.split("-")[0],
                loader=partial(_load_case, case_dir, name, task, raters, dims, slices),
                files=[str(case_dir)],
                split="test" if held_out else None,
            )
        )
    spec = DatasetSpec(
        dataset="qubiq",
        name=f"qubiq_{subset}_task{task:02d}_{dims}d",
        description=f"QUBIQ {subset}, task {task:02d}, {dims}D, {len(raters)} raters",
        raters=[f"seg{r:02d}" for r in raters],
        rater_note=(
            f"QUBIQ rater numbers RR of task{task:02d}_segRR; a case without a number leaves that rater "
            "missing (null / -1); no consensus (validation on the fused raters)"
        ),
        num_classes=2,
        labels={"0": "background", "1": f"{subset} task {task:02d}"},
        channels=[f"channel{c}" for c in range(channels)] if channels > 1 else ["image"],
        spatial_dims=dims,
        has_gt=False,
        extra={
            "subset": subset,
            "task": task,
            "evaluation": {
                "soft_dice_thresholds": QUBIQ_THRESHOLDS,
                "protocol": "QUBIQ: prediction and rater mean binarised at each threshold, Dice averaged",
            },
        },
        bundle_overrides={"soft_dice_thresholds": QUBIQ_THRESHOLDS},
    )
    options = dict(
        subset=subset,
        task=task,
        spatial_dims=dims,
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
        f"QUBIQ {subset}",
        discovery_problems=problems,
        skip_bad=skip_bad,
        seed=seed,
        fractions=fractions,
        options=options,
    )
