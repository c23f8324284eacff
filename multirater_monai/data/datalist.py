"""Multi-rater datalists: reading them and checking them before any training starts.

A datalist is MONAI's decathlon JSON (``docs/design.md``, "Data contract")::

    {"raters": ["r1", "r2"], "num_classes": 2, "spatial_dims": 2,
     "training": [{"image": "images/a.nii.gz", "label": ["labels/a_r1.nii.gz", null], "gt": "gt/a.nii.gz"}],
     "validation": [...], "test": [...]}

``label`` holds one entry per rater, in the fixed rater order of the dataset, ``null`` where that
rater did not annotate the image. ``image`` is one file, or a list of single-channel files (one per
modality) stacked as channels. Relative paths are relative to the datalist's folder. Optional entries
of an item: ``gt`` (the truth), ``class_label`` (``L`` multi-hot image-level labels, background
included), ``annotator`` (index of the one rater of a one-annotator-per-image item: only that rater's
``label`` entry is a file). An item whose ``label`` is missing or all ``null`` carries no pixel labels:
it is accepted only where the bundle declares it (``allow_unlabelled``, semi-supervised training), and
then needs ``class_label``.

:func:`load_multirater_datalist` resolves the paths and, by default, runs :func:`check_datalist`,
which reads every file once and reports every problem it finds (file and reason) in one
:class:`DatalistError`, so that a bad dataset fails before training rather than deep inside it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from multirater_monai.constants import ANNOTATOR, CLASS_LABEL, GT, IMAGE, LABEL, MISSING_LABEL
from multirater_monai.errors import UserError

__all__ = [
    "DatalistError",
    "read_datalist",
    "load_multirater_datalist",
    "check_datalist",
    "read_geometry",
    "ImageGeometry",
    "list_images",
    "dump_datalist",
    "SPLITS",
]

SPLITS = ("training", "validation", "test")

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")

_MAX_REPORTED = 25
logger = logging.getLogger(__name__)


class DatalistError(UserError, ValueError):
    """A datalist or a file it names is unusable; the message lists every problem with its file (one problem:
    one line).

    The message is also logged as an error when the exception is made, so that a user of
    ``python -m monai.bundle run`` reads it first, above the config parser's traceback.
    """

    def __init__(self, problems: Sequence[str], datalist: str | os.PathLike | None = None):
        self.problems = list(problems)
        where = f" in datalist {datalist}" if datalist is not None else ""
        shown = "\n  - ".join(self.problems[:_MAX_REPORTED])
        more = f"\n  ... and {len(self.problems) - _MAX_REPORTED} more" if len(self.problems) > _MAX_REPORTED else ""
        if len(self.problems) == 1:  # one line: the file and what is wrong with it
            super().__init__(self.problems[0] + (f" (datalist {datalist})" if datalist is not None else ""))
        else:
            super().__init__(f"{len(self.problems)} problem(s){where}:\n  - {shown}{more}")
        logger.error(str(self))


def read_datalist(datalist_file: str | os.PathLike) -> dict[str, Any]:
    """Read a datalist JSON file, with a clear error when it is missing or not valid JSON."""
    path = Path(datalist_file)
    if not path.is_file():
        raise DatalistError([f"{path}: datalist file not found"])
    try:
        with open(path) as f:
            content = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatalistError([f"{path}: not a valid JSON file ({e})"]) from e
    if not isinstance(content, dict):
        raise DatalistError([f"{path}: expected a JSON object with 'training'/'validation'/'test' lists"])
    return content


def _resolve(base_dir: Path, entry: Any) -> Any:
    if entry is None:
        return None
    if isinstance(entry, (list, tuple)):
        return [_resolve(base_dir, e) for e in entry]
    if isinstance(entry, (str, os.PathLike)):
        return str(base_dir / entry) if not os.path.isabs(entry) else str(entry)
    return entry


def load_multirater_datalist(
    datalist_file: str | os.PathLike,
    section: str = "training",
    check: bool = True,
    num_raters: int | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    spatial_dims: int | None = None,
    path_keys: Sequence[str] = (IMAGE, LABEL, GT),
    allow_unlabelled: bool = False,
) -> list[dict]:
    """Load one section of a multi-rater datalist with absolute paths, checked by default.

    Args:
        datalist_file: the datalist JSON.
        section: ``"training"``, ``"validation"`` or ``"test"``.
        check: run :func:`check_datalist` on the section (reads every file once).
        num_raters: expected number of raters ``R`` (defaults to the datalist's ``raters``).
        num_classes: expected number of classes ``L``: rater and truth values must be in ``0..L-1``.
        in_channels: expected number of image channels ``C``.
        spatial_dims: expected number of spatial dimensions (2 or 3).
        path_keys: keys whose values are paths relative to the datalist folder.
        allow_unlabelled: accept items without pixel labels (``label`` missing or all ``null``; they need
            ``class_label``): semi-supervised training. Such items get ``label`` = ``R`` nulls.

    Returns:
        the section's items, each a dict with absolute paths (``None`` kept for missing raters).
    """
    datalist_file = Path(datalist_file)
    content = read_datalist(datalist_file)
    if section not in content:
        raise DatalistError([f"{datalist_file}: no '{section}' section (has: {sorted(content)})"])
    items = content[section]
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise DatalistError([f"{datalist_file}: section '{section}' must be a list of objects"])
    base_dir = datalist_file.parent.resolve()
    resolved = [{k: (_resolve(base_dir, v) if k in path_keys else v) for k, v in item.items()} for item in items]
    if num_raters is None and isinstance(content.get("raters"), list):
        num_raters = len(content["raters"])
    if num_raters is not None and isinstance(content.get("raters"), list) and len(content["raters"]) != num_raters:
        raise DatalistError(
            [
                f"{datalist_file}: the datalist has {len(content['raters'])} raters {content['raters']}, "
                f"the configuration expects {num_raters}"
            ]
        )
    if allow_unlabelled and num_raters is not None:
        resolved = [item if item.get(LABEL) is not None else {**item, LABEL: [None] * num_raters} for item in resolved]
    if check:
        check_datalist(
            resolved,
            num_raters=num_raters,
            num_classes=num_classes,
            in_channels=in_channels,
            spatial_dims=spatial_dims,
            datalist_file=datalist_file,
            section=section,
            require_rater_coverage=section == "training",
            allow_unlabelled=allow_unlabelled,
        )
    return resolved


@dataclass
class ImageGeometry:
    """Shape and voxel-to-world affine of an image file, read from its header."""

    shape: tuple[int, ...]
    affine: np.ndarray


def read_geometry(path: str | os.PathLike) -> ImageGeometry:
    """Read an image header (NIfTI through nibabel, other formats through SimpleITK) without its data.

    Raises:
        OSError / ValueError from the readers when the file is not a readable image.
    """
    path = str(path)
    if path.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        img = nib.load(path)
        return ImageGeometry(tuple(int(s) for s in img.shape), np.asarray(img.affine, dtype=np.float64))
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    size = tuple(int(s) for s in reader.GetSize())
    ndim = len(size)
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(ndim, ndim)
    affine = np.eye(ndim + 1)
    affine[:ndim, :ndim] = direction * np.asarray(reader.GetSpacing())[None]
    affine[:ndim, ndim] = reader.GetOrigin()
    channels = reader.GetNumberOfComponents()
    return ImageGeometry(size + ((channels,) if channels > 1 else ()), affine)


def _read_array(path: str) -> np.ndarray:
    if path.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        return np.asarray(nib.load(path).dataobj)
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(path))


def _spatial_and_channels(geom: ImageGeometry, spatial_dims: int | None) -> tuple[tuple[int, ...], int]:
    """Split a header shape into (spatial shape, channels); trailing singleton axes beyond spatial_dims dropped."""
    shape = geom.shape
    if spatial_dims is None:
        spatial_dims = min(len(shape), 3)
    extra = shape[spatial_dims:]
    channels = int(np.prod(extra)) if extra else 1
    return shape[:spatial_dims], channels


def _same_geometry(a: ImageGeometry, b: ImageGeometry, spatial_dims: int) -> bool:
    n = min(spatial_dims, a.affine.shape[0] - 1, b.affine.shape[0] - 1)
    rows = list(range(n))
    cols = list(range(n)) + [-1]
    return bool(np.allclose(a.affine[np.ix_(rows, cols)], b.affine[np.ix_(rows, cols)], rtol=1e-4, atol=1e-3))


def _check_image_values(path: str, problems: list[str]) -> bool:
    """Read an image's data (a truncated or corrupt file fails here, named) and refuse NaN / inf voxels."""
    try:
        data = _read_array(path)
    except Exception as e:  # noqa: BLE001 - any reader failure is reported with its file
        problems.append(f"{path}: unreadable image data, truncated or corrupt ({type(e).__name__}: {e})")
        return False
    if np.issubdtype(data.dtype, np.floating):
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            problems.append(f"{path}: image has {bad} NaN / inf voxel(s); fix or remove them")
            return False
    return True


def _check_label_values(path: str, num_classes: int | None, problems: list[str]) -> bool:
    """Check a label file's values; return whether it holds any annotation (not all MISSING_LABEL)."""
    try:
        values = np.unique(_read_array(path))
    except Exception as e:  # noqa: BLE001 - any reader failure is reported with its file
        problems.append(f"{path}: unreadable label data, truncated or corrupt ({type(e).__name__}: {e})")
        return False
    if values.size == 0:
        problems.append(f"{path}: empty label volume")
        return False
    if np.any(np.isnan(values)) if np.issubdtype(values.dtype, np.floating) else False:
        problems.append(f"{path}: label contains NaN")
        return False
    if not np.all(np.equal(np.mod(values, 1), 0)):
        problems.append(f"{path}: label values must be integer class indices, found {values[:8].tolist()}")
        return False
    if np.all(values == MISSING_LABEL):
        return False
    annotated = values[values != MISSING_LABEL]
    if num_classes is not None and (annotated.min() < 0 or annotated.max() >= num_classes):
        bad = annotated[(annotated < 0) | (annotated >= num_classes)]
        problems.append(
            f"{path}: label values {bad[:8].astype(int).tolist()} outside 0..{num_classes - 1} "
            f"(and not the missing marker {MISSING_LABEL})"
        )
    return True


def check_datalist(
    items: Sequence[dict],
    num_raters: int | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    spatial_dims: int | None = None,
    check_values: bool = True,
    datalist_file: str | os.PathLike | None = None,
    section: str | None = None,
    require_labels: bool = True,
    require_rater_coverage: bool = True,
    allow_unlabelled: bool = False,
) -> None:
    """Check every item of a (path-resolved) multi-rater datalist section; raise one error listing all problems.

    Checks: every named file exists and is a readable image (its data too: a truncated file is caught
    here, and image voxels must be finite, no NaN / inf); the image has ``in_channels`` channels and
    ``spatial_dims`` spatial axes (a 3D NIfTI volume given to a 2D bundle is named as such); each rater file and the truth have the image's spatial shape and geometry
    (affine); the item names ``num_raters`` rater entries, at least one of which annotates the image; label
    values are class indices in ``0..num_classes-1`` (a map entirely ``-1`` counts as not annotated); every
    rater annotates at least one image of the section (a rater with no label cannot be learned).

    With ``require_labels=False`` an item may hold an image only (inference); with
    ``require_rater_coverage=False`` a rater may be absent from the whole section (validation/test
    splits of datasets whose raters annotate few cases); with ``allow_unlabelled=True`` an item may
    carry no pixel label if it has image-level labels (``class_label``).

    Optional entries are checked too: ``class_label`` is ``num_classes`` values 0/1; ``annotator`` is a
    rater index whose ``label`` entry is the item's only file.

    Raises:
        DatalistError: listing each problem as ``<file>: <what is wrong>``.
    """
    problems: list[str] = []
    where = f"{datalist_file}" + (f" [{section}]" if section else "")
    if len(items) == 0:
        raise DatalistError([f"{where}: no items"])
    rater_annotations: np.ndarray | None = np.zeros(num_raters, dtype=int) if num_raters else None
    for index, item in enumerate(items):
        tag = f"item {index}"
        if IMAGE not in item:
            problems.append(f"{where} {tag}: no '{IMAGE}' entry")
            continue
        image_files = item[IMAGE] if isinstance(item[IMAGE], (list, tuple)) else [item[IMAGE]]
        image_geom: ImageGeometry | None = None
        channels = 0
        for f in image_files:
            if not isinstance(f, str) or not os.path.isfile(f):
                problems.append(f"{f}: image file not found ({tag})")
                continue
            try:
                geom = read_geometry(f)
            except Exception as e:  # noqa: BLE001 - any reader failure is reported with its file
                problems.append(f"{f}: unreadable image ({type(e).__name__}: {e})")
                continue
            spatial, ch = _spatial_and_channels(geom, spatial_dims)
            if spatial_dims is not None and len(spatial) < spatial_dims:
                problems.append(f"{f}: image has {len(geom.shape)} axes {geom.shape}, expected {spatial_dims} spatial")
                continue
            if spatial_dims == 2 and f.endswith((".nii", ".nii.gz")) and len(geom.shape) >= 3 and geom.shape[2] > 1:
                problems.append(
                    f"{f}: a 3D volume {geom.shape[:3]}, and the bundle is 2D (spatial_dims 2): use its 3D "
                    "configuration (configs/3d.json) or 2D images"
                )
                continue
            if check_values and not _check_image_values(f, problems):
                continue
            if image_geom is None:
                image_geom = geom
            elif _spatial_and_channels(image_geom, spatial_dims)[0] != spatial:
                problems.append(f"{f}: modality shape {spatial} differs from {image_files[0]}")
            channels += ch
        if image_geom is None:
            continue
        image_spatial = _spatial_and_channels(image_geom, spatial_dims)[0]
        sd = len(image_spatial)
        if in_channels is not None and channels != in_channels:
            problems.append(
                f"{image_files[0]}: image has {channels} channel(s), the network expects {in_channels} (in_channels)"
            )

        raters = item.get(LABEL)
        if raters is None and GT not in item and require_labels and not (allow_unlabelled and CLASS_LABEL in item):
            problems.append(f"{image_files[0]}: item has neither '{LABEL}' (rater files) nor '{GT}'")
        if raters is not None:
            if not isinstance(raters, (list, tuple)):
                raters = [raters]
            if num_raters is not None and len(raters) != num_raters:
                problems.append(
                    f"{image_files[0]}: {len(raters)} rater entries in '{LABEL}', the dataset has {num_raters} raters"
                )
            annotated_any = False
            for r, f in enumerate(raters):
                if f is None:
                    continue
                if not os.path.isfile(f):
                    problems.append(f"{f}: rater file not found (rater {r} of {image_files[0]})")
                    continue
                if not _check_same_geometry(f, image_geom, image_spatial, sd, "rater label", problems):
                    continue
                annotates = _check_label_values(f, num_classes, problems) if check_values else True
                annotated_any |= annotates
                if annotates and rater_annotations is not None and r < len(rater_annotations):
                    rater_annotations[r] += 1
            if not annotated_any and not allow_unlabelled:
                problems.append(f"{image_files[0]}: no rater annotated this image (every rater entry is null or -1)")
            elif not annotated_any and CLASS_LABEL not in item:
                problems.append(
                    f"{image_files[0]}: item has no pixel labels and no '{CLASS_LABEL}' (image-level labels): "
                    "nothing to learn from"
                )
            _check_annotator(item, raters, num_raters, image_files[0], problems)
        _check_class_label(item, num_classes, image_files[0], problems)
        gt = item.get(GT)
        if gt is not None:
            if not os.path.isfile(gt):
                problems.append(f"{gt}: truth file not found ({image_files[0]})")
            elif _check_same_geometry(gt, image_geom, image_spatial, sd, "truth", problems) and check_values:
                _check_label_values(gt, num_classes, problems)
    if rater_annotations is not None and require_rater_coverage and check_values and all(LABEL in i for i in items):
        for r in np.flatnonzero(rater_annotations == 0):
            problems.append(f"{where}: rater {r} has no annotation on any image of this section")
    if problems:
        raise DatalistError(problems, datalist_file)


def _check_class_label(item: dict, num_classes: int | None, where: str, problems: list[str]) -> None:
    """``class_label``: a list of ``num_classes`` values 0/1 (multi-hot, background included)."""
    if CLASS_LABEL not in item:
        return
    value = item[CLASS_LABEL]
    ok = isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) and v in (0, 1) for v in value)
    if not ok or (num_classes is not None and len(value) != num_classes):
        size = f"{num_classes} " if num_classes is not None else ""
        problems.append(f"{where}: '{CLASS_LABEL}' must be a list of {size}values 0/1 (one per class), got {value!r}")


def _check_annotator(item: dict, raters: Sequence, num_raters: int | None, where: str, problems: list[str]) -> None:
    """``annotator``: the index of the one rater whose ``label`` entry is a file; the other entries are null."""
    if ANNOTATOR not in item:
        return
    value = item[ANNOTATOR]
    count = len(raters) if num_raters is None else num_raters
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < count:
        problems.append(f"{where}: '{ANNOTATOR}' must be a rater index in 0..{count - 1}, got {value!r}")
        return
    others = [r for r, f in enumerate(raters) if f is not None and r != value]
    if value < len(raters) and raters[value] is None and any(f is not None for f in raters):
        problems.append(f"{where}: '{ANNOTATOR}' is {value} but rater {value} has no label file in '{LABEL}'")
    elif others:
        problems.append(
            f"{where}: '{ANNOTATOR}' is {value} (one annotator per image) but raters {others} also have label files"
        )


def _check_same_geometry(
    path: str, image_geom: ImageGeometry, image_spatial: tuple[int, ...], sd: int, what: str, problems: list[str]
) -> bool:
    try:
        geom = read_geometry(path)
    except Exception as e:  # noqa: BLE001
        problems.append(f"{path}: unreadable {what} file ({type(e).__name__}: {e})")
        return False
    spatial, channels = _spatial_and_channels(geom, sd)
    if spatial != image_spatial or channels != 1:
        problems.append(f"{path}: {what} shape {geom.shape} differs from the image's spatial shape {image_spatial}")
        return False
    if not _same_geometry(geom, image_geom, sd):
        problems.append(f"{path}: {what} geometry (affine: spacing/origin/direction) differs from the image's")
        return False
    return True


def list_images(
    input_dir: str | os.PathLike, in_channels: int | None = None, spatial_dims: int | None = None
) -> list[str]:
    """Sorted image files (NIfTI, NRRD, MetaImage) of a folder, each checked readable with the expected channels.

    Raises:
        DatalistError: the folder is missing, holds no image, or an image is unreadable / has the wrong channels.
    """
    folder = Path(input_dir)
    if not folder.is_dir():
        raise DatalistError([f"{folder}: input folder not found"])
    files = sorted(str(p) for p in folder.iterdir() if p.is_file() and p.name.endswith(IMAGE_SUFFIXES))
    if not files:
        raise DatalistError([f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})"])
    check_datalist(
        [{IMAGE: f} for f in files],
        in_channels=in_channels,
        spatial_dims=spatial_dims,
        datalist_file=folder,
        require_labels=False,
    )
    return files


def dump_datalist(datalist: dict[str, Any]) -> str:
    """JSON text of a datalist: one line per top-level entry and per item of a split (diff-friendly, stable)."""
    entries = []
    for key, value in datalist.items():
        if key in SPLITS and value:
            lines = ",\n".join(f"  {json.dumps(item)}" for item in value)
            entries.append(f" {json.dumps(key)}: [\n{lines}\n ]")
        else:
            entries.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(entries) + "\n}\n"
