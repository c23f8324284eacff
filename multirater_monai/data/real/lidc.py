"""LIDC-IDRI lesion crops with up to four annotations, from the preprocessed formats people use, or pylidc.

Formats read (``fmt``; ``"auto"`` recognises them):

``pickle``  the Probabilistic U-Net (PyTorch port) file ``data_lidc.pickle`` (or every ``*.pickle`` of a
    folder): a dict keyed by crop id, each value ``{"image": (128, 128) float in [0, 1], "masks": list of
    4 (128, 128) 0/1 arrays, "series_uid": str}``. Split by patient (``patient_id`` when present, else the
    ``LIDC-IDRI-NNNN`` prefix of the key, else the series UID: one CT series per patient in LIDC).
    Only numpy arrays and plain containers are unpickled (no code from the file is run).
``hdf5``    PHiSeg's ``data_lidc.hdf5``: groups ``train``, ``val``, ``test``, each with ``images`` (N, 128, 128)
    float (the pickle's images minus 0.5), ``labels`` (N, 128, 128, 4) uint8 and ``uids`` (N,) int (hash of
    the series UID, the patient). The file's splits are kept (``keep_splits``), else split by ``uids``.
``png``     the Hierarchical Probabilistic U-Net crops (180 × 180 PNG): ``[<split>/]images/<patient>/z-<z>_c<n>.png``
    with ``[<split>/]gt/<patient>/z-<z>_c<n>_l{0..3}.png`` (masks 0/255 or 0/1). Split folders ``train``,
    ``val``, ``test`` are kept (``keep_splits``); without them, split by patient folder.
``pylidc``  the raw TCIA DICOM + XML through ``pylidc`` (``pip install multirater-monai[lidc]``; pylidc finds
    the DICOM through its own configuration, ``~/.pylidcrc``): every annotated nodule's axial slices,
    cropped around the nodule (default 128 × 128), HU intensities, one channel per annotation of the
    nodule cluster (``pylidc``'s ``cluster_annotations``), ``null`` where the cluster has fewer than four.

Rater channels: the k-th annotation of the lesion in the order the source stores them. LIDC's readers
are anonymous and differ between scans, so channel k is NOT the same radiologist across images; an
empty mask is a reader who did not mark the lesion on that crop (in the pickle, HDF5 and PNG formats
also a missing reader: those formats pad to four masks). Orientation: NIfTI axis 0 is the image
column (x), axis 1 the row (y), as MONAI's PIL reader loads a PNG; identity affine (the crops carry no
spacing).
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from multirater_monai.data.real.arrays import Problems, check_image, check_label, to_labels
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

__all__ = [
    "LIDC_FORMATS",
    "LIDC_RATERS",
    "LIDC_RATER_NOTE",
    "load_lidc_pickle",
    "detect_lidc_format",
    "looks_like_lidc",
    "prepare_lidc",
]

LIDC_FORMATS = ("pickle", "hdf5", "png", "pylidc")
LIDC_RATERS = ("annotation1", "annotation2", "annotation3", "annotation4")
LIDC_RATER_NOTE = (
    "channel k = the k-th annotation of the lesion as the source stores it, not a fixed radiologist (LIDC readers "
    "are anonymous and differ between scans); an empty mask = that reader did not mark the lesion on this crop"
)
_SPLIT_FOLDERS = {"train": "training", "val": "validation", "test": "test"}
_PNG_IMAGE = re.compile(r"(z-.+_c\d+)\.png")
_PATIENT = re.compile(r"LIDC-IDRI-\d{4}")
_IDENTITY = np.eye(4)


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds numpy arrays, dtypes, scalars and plain containers.

    ``find_class`` accepts exactly the (module, name) pairs that NumPy array pickles of NumPy 1 and 2 name
    (protocols 0-5), and refuses everything else *before* importing anything: a pickle naming another
    module never gets it imported (an import alone can run code).
    """

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("collections", "OrderedDict"),
            ("builtins", "set"),
            ("builtins", "frozenset"),
            ("builtins", "bytes"),
            ("__builtin__", "set"),
            ("__builtin__", "frozenset"),
            ("__builtin__", "bytes"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to unpickle {module}.{name}: only numpy arrays and containers are read"
            )
        return super().find_class(module, name)


def load_lidc_pickle(path: str | os.PathLike) -> dict:
    """Read a Probabilistic U-Net LIDC pickle (only arrays and containers are rebuilt).

    Raises:
        PrepareError: not a readable pickle of a dict.
    """
    try:
        with open(path, "rb") as f:
            data = _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as e:
        raise PrepareError(f"{path}: cannot read the LIDC pickle ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict):
        raise PrepareError(f"{path}: expected a dict of crops, got {type(data).__name__}")
    return data


def _pickle_files(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    return sorted(p for p in src.iterdir() if p.is_file() and p.suffix in (".pickle", ".pkl"))


def _hdf5_files(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    return sorted(p for p in src.iterdir() if p.is_file() and p.suffix in (".hdf5", ".h5"))


def _png_roots(src: Path) -> dict[str | None, Path]:
    """Split (or None) -> folder holding ``images/`` and ``gt/``."""
    roots: dict[str | None, Path] = {}
    for folder, split in _SPLIT_FOLDERS.items():
        if (src / folder / "images").is_dir():
            roots[split] = src / folder
    if not roots and (src / "images").is_dir():
        roots[None] = src
    return roots


def detect_lidc_format(src: str | os.PathLike) -> str | None:
    """The LIDC format of ``src`` (a file or folder), or None."""
    path = Path(src)
    if path.is_file():
        return "pickle" if path.suffix in (".pickle", ".pkl") else "hdf5" if path.suffix in (".hdf5", ".h5") else None
    if not path.is_dir():
        return None
    if _png_roots(path) and any((root / "gt").is_dir() for root in _png_roots(path).values()):
        return "png"
    if _pickle_files(path):
        return "pickle"
    if _hdf5_files(path):
        return "hdf5"
    return None


def looks_like_lidc(src: str | os.PathLike) -> bool:
    return detect_lidc_format(src) is not None


def _item(name: str, image: np.ndarray, masks: Sequence[np.ndarray | None], where: str, info: dict) -> PreparedItem:
    """A 2D crop item from an (H, W) image and masks (rows, columns), written with axis 0 = column.

    Raises:
        CaseError: the problems of the crop, with ``where`` as the file.
    """
    problems: Problems = []
    image = np.asarray(image)
    if image.ndim != 2:
        raise CaseError([(where, f"image is not 2D: shape {image.shape}")])
    check_image(image.astype(np.float32), where, problems)
    if len(masks) > len(LIDC_RATERS):
        problems.append((where, f"{len(masks)} masks, at most {len(LIDC_RATERS)} expected"))
    labels: list[np.ndarray | None] = []
    for k, mask in enumerate(masks[: len(LIDC_RATERS)]):
        tag = f"{where} [mask {k}]"
        if mask is None:
            labels.append(None)
            continue
        mask = np.asarray(mask)
        if mask.shape != image.shape:
            problems.append((tag, f"mask shape {mask.shape} differs from the image's {image.shape}"))
            continue
        if mask.dtype == bool:
            mask = mask.astype(np.uint8)
        if check_label(mask, tag, (0, 1), problems):
            labels.append(to_labels(mask).T)
    if problems:
        raise CaseError(problems)
    labels += [None] * (len(LIDC_RATERS) - len(labels))
    return PreparedItem(name, image.astype(np.float32).T[None], labels, _IDENTITY, info=info)


def _patient_of(key: str, record: dict) -> str:
    if record.get("patient_id"):
        return str(record["patient_id"])
    match = _PATIENT.match(str(key))
    return match.group(0) if match else str(record.get("series_uid"))


def _pickle_record(key: str, record: Any, where: str) -> list[PreparedItem]:
    if not isinstance(record, dict) or "image" not in record or "masks" not in record:
        raise CaseError([(where, "record is not a dict with 'image' and 'masks'")])
    masks = record["masks"]
    masks = list(masks) if isinstance(masks, (list, tuple)) or np.ndim(masks) == 3 else [masks]
    return [_item(key, record["image"], masks, where, {"series_uid": str(record.get("series_uid"))})]


def _pickle_cases(src: Path) -> tuple[list[SourceCase], list[CaseIssue]]:
    cases, problems, origin = [], [], {}
    for path in _pickle_files(src):
        for key, record in load_lidc_pickle(path).items():
            name = str(key)
            where = f"{path}[{name!r}]"
            if name in origin:
                problems.append(CaseIssue(name, where, f"duplicated crop id (also in {origin[name]})"))
                continue
            origin[name] = path
            if not isinstance(record, dict) or not record.get("series_uid") and not record.get("patient_id"):
                problems.append(CaseIssue(name, where, "record without 'series_uid' (needed to split by patient)"))
                continue
            cases.append(
                SourceCase(name, _patient_of(name, record), partial(_pickle_record, name, record, where), files=[where])
            )
    return cases, problems


def _hdf5_cases(file: Any, path: Path, keep_splits: bool) -> tuple[list[SourceCase], list[CaseIssue]]:
    cases, problems = [], []
    groups = [g for g in _SPLIT_FOLDERS if g in file and hasattr(file[g], "keys")]
    if not groups:
        raise PrepareError(
            f"{path}: not a PHiSeg LIDC HDF5 file (no 'train' / 'val' / 'test' group; has {sorted(file.keys())})"
        )
    for group in groups:
        g = file[group]
        if "images" not in g or "labels" not in g:
            problems.append(
                CaseIssue(group, f"{path}:/{group}", f"group without 'images' and 'labels' (has {sorted(g.keys())})")
            )
            continue
        images, labels = g["images"], g["labels"]
        uids = np.asarray(g["uids"]) if "uids" in g else None
        n = images.shape[0]
        if labels.shape[0] != n or (uids is not None and uids.shape[0] != n):
            problems.append(CaseIssue(group, f"{path}:/{group}/labels", f"{labels.shape[0]} labels for {n} images"))
            continue
        for i in range(n):
            name = f"{group}_{i:05d}"
            where = f"{path}:/{group}[{i}]"
            patient = f"uid{int(uids[i])}" if uids is not None else name
            cases.append(
                SourceCase(
                    name,
                    patient,
                    partial(_hdf5_record, images, labels, i, name, where, patient),
                    files=[where],
                    split=_SPLIT_FOLDERS[group] if keep_splits else None,
                )
            )
    return cases, problems


def _hdf5_record(images: Any, labels: Any, index: int, name: str, where: str, patient: str) -> list[PreparedItem]:
    image, label = np.asarray(images[index]), np.asarray(labels[index])
    if label.ndim == 3 and label.shape[:2] == image.shape:
        masks = list(np.moveaxis(label, -1, 0))
    elif label.ndim == 3 and label.shape[1:] == image.shape:
        masks = list(label)
    else:
        raise CaseError([(where, f"labels shape {label.shape} does not fit the image's {image.shape}")])
    return [_item(name, image, masks, where, {"uid": patient})]


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        if img.mode not in ("L", "I;16", "I", "1", "P"):
            img = img.convert("L")
        return np.asarray(img)


def _png_record(image_path: Path, mask_paths: list[Path], name: str, patient: str) -> list[PreparedItem]:
    problems: Problems = []
    try:
        image = _read_png(image_path)
    except Exception as e:
        raise CaseError([(str(image_path), f"cannot read the PNG ({type(e).__name__}: {e})")]) from e
    masks: list[np.ndarray | None] = []
    for path in mask_paths:
        if not path.is_file():
            problems.append((str(path), "missing annotation mask"))
            continue
        try:
            mask = _read_png(path)
        except Exception as e:
            problems.append((str(path), f"cannot read the PNG ({type(e).__name__}: {e})"))
            continue
        if mask.shape != image.shape:
            problems.append((str(path), f"mask shape {mask.shape} differs from the image's {image.shape}"))
            continue
        values = set(np.unique(mask).tolist())
        if not values <= {0, 1} and not values <= {0, 255}:
            problems.append(
                (
                    str(path),
                    f"unexpected mask value(s) {sorted(values - {0, 1, 255})[:8] or sorted(values)[:8]} "
                    "(expected 0/255 or 0/1)",
                )
            )
            continue
        masks.append((mask > 0).astype(np.uint8))
    if problems:
        raise CaseError(problems)
    return [_item(name, image, masks, str(image_path), {"patient": patient})]


def _png_cases(src: Path, keep_splits: bool) -> tuple[list[SourceCase], list[CaseIssue]]:
    cases, problems = [], []
    for split, root in _png_roots(src).items():
        for patient_dir in sorted(p for p in (root / "images").iterdir() if p.is_dir()):
            for image_path in sorted(patient_dir.iterdir()):
                match = _PNG_IMAGE.fullmatch(image_path.name)
                if not match:
                    continue
                stem = match.group(1)
                name = f"{patient_dir.name}_{stem}"
                masks = [root / "gt" / patient_dir.name / f"{stem}_l{k}.png" for k in range(len(LIDC_RATERS))]
                cases.append(
                    SourceCase(
                        name,
                        patient_dir.name,
                        partial(_png_record, image_path, masks, name, patient_dir.name),
                        files=[str(image_path)],
                        split=split if keep_splits else None,
                    )
                )
    return cases, problems


def _require_pylidc() -> Any:
    try:
        import pylidc
    except ImportError as e:
        raise PrepareError(
            "the LIDC-IDRI DICOM converter needs pylidc, which is not installed: pip install 'multirater-monai[lidc]' "
            "(then point pylidc at the TCIA download in ~/.pylidcrc, see https://pylidc.github.io/install.html)"
        ) from e
    return pylidc


def _pylidc_scan(scan: Any, crop_size: int) -> list[PreparedItem]:
    """Every annotated nodule of one scan: one item per axial slice of the nodule, cropped around it."""
    volume = np.asarray(scan.to_volume(verbose=False), dtype=np.float32)  # (rows, columns, slices), HU
    half = crop_size // 2
    items = []
    for n, cluster in enumerate(scan.cluster_annotations()):
        readers = list(cluster)[: len(LIDC_RATERS)]
        boxes = [a.bbox() for a in readers]
        masks = [a.boolean_mask() for a in readers]
        lo = np.min([[b.start for b in box] for box in boxes], axis=0)
        hi = np.max([[b.stop for b in box] for box in boxes], axis=0)
        centre = (lo[:2] + hi[:2]) // 2
        r0, c0 = int(centre[0]) - half, int(centre[1]) - half
        for z in range(int(lo[2]), int(hi[2])):
            image = np.full((crop_size, crop_size), -1024.0, dtype=np.float32)
            rs, re_ = max(r0, 0), min(r0 + crop_size, volume.shape[0])
            cs, ce = max(c0, 0), min(c0 + crop_size, volume.shape[1])
            image[rs - r0 : re_ - r0, cs - c0 : ce - c0] = volume[rs:re_, cs:ce, z]
            layers: list[np.ndarray | None] = []
            for box, mask in zip(boxes, masks):
                layer = np.zeros((crop_size, crop_size), dtype=np.uint8)
                if box[2].start <= z < box[2].stop:
                    full = np.zeros(volume.shape[:2], dtype=bool)
                    full[box[0], box[1]] = mask[:, :, z - box[2].start]
                    layer[rs - r0 : re_ - r0, cs - c0 : ce - c0] = full[rs:re_, cs:ce]
                layers.append(layer)
            layers += [None] * (len(LIDC_RATERS) - len(layers))
            name = f"{scan.patient_id}_s{scan.id}_n{n}_z{z:03d}"
            items.append(
                _item(
                    name,
                    image,
                    layers,
                    f"{scan.patient_id} scan {scan.id} nodule {n} slice {z}",
                    {"series_uid": str(scan.series_instance_uid), "nodule": n, "slice": z},
                )
            )
    return items


def _pylidc_cases(crop_size: int) -> list[SourceCase]:
    pl = _require_pylidc()
    scans = pl.query(pl.Scan).order_by(pl.Scan.patient_id, pl.Scan.id).all()
    return [
        SourceCase(
            f"{s.patient_id}_s{s.id}",
            str(s.patient_id),
            partial(_pylidc_scan, s, crop_size),
            files=[str(s.series_instance_uid)],
        )
        for s in scans
    ]


def prepare_lidc(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    fmt: str = "auto",
    keep_splits: bool = True,
    crop_size: int = 128,
    skip_bad: bool = False,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> PrepareReport:
    """Prepare LIDC-IDRI 2D lesion crops with four annotation channels (see the module docstring).

    Args:
        src: the pickle / HDF5 file or a folder holding it, the PNG crops folder, or (``fmt="pylidc"``) the
            TCIA LIDC-IDRI folder.
        dst: the output folder.
        fmt: ``"auto"``, ``"pickle"``, ``"hdf5"``, ``"png"`` or ``"pylidc"``.
        keep_splits: keep the splits a source defines (HDF5 groups, PNG split folders); else split by patient.
        crop_size: crop side of the pylidc converter.
        skip_bad: write the good crops and report the bad ones (else any problem stops the run).
        seed: seed of the split by patient.
        fractions: (training, validation, test) shares of the patients.
    """
    path = Path(src)
    if fmt == "auto":
        found = detect_lidc_format(path)
        if found is None:
            from multirater_monai.data.real.registry import detection_hint

            raise PrepareError(
                f"no LIDC crops in {src}: expected data_lidc.pickle, data_lidc.hdf5, or "
                "images/<patient>/z-<z>_c<n>.png with gt/<patient>/z-<z>_c<n>_l0.png (or pass --format pylidc for "
                f"the DICOM){detection_hint(src, 'lidc')}"
            )
        fmt = found
    if fmt not in LIDC_FORMATS:
        raise PrepareError(f"unknown LIDC format {fmt!r}; known: {', '.join(LIDC_FORMATS)}")
    if fmt != "pylidc" and not path.exists():
        raise PrepareError(f"LIDC source not found: {src}")
    spec = DatasetSpec(
        dataset="lidc",
        name=f"lidc_{fmt}_2d",
        description=f"LIDC-IDRI lesion crops ({fmt}), 2D, up to four annotations per lesion",
        raters=list(LIDC_RATERS),
        rater_note=LIDC_RATER_NOTE,
        num_classes=2,
        labels={"0": "background", "1": "lesion"},
        channels=["ct"],
        spatial_dims=2,
        has_gt=False,
        extra={"orientation": "NIfTI axis 0 = image column (x), axis 1 = row (y); identity affine"},
    )
    options = dict(
        fmt=fmt, keep_splits=keep_splits, crop_size=crop_size, skip_bad=skip_bad, seed=seed, fractions=list(fractions)
    )
    titles = {
        "pickle": "Probabilistic U-Net pickle",
        "hdf5": "PHiSeg HDF5",
        "png": "Hierarchical Prob. U-Net PNG crops",
        "pylidc": "TCIA DICOM + XML via pylidc",
    }
    run = partial(
        write_prepared,
        spec,
        dst=dst,
        src=src,
        source_format=titles[fmt],
        skip_bad=skip_bad,
        seed=seed,
        fractions=fractions,
        options=options,
    )
    if fmt == "pickle":
        files = _pickle_files(path)
        if not files:
            raise PrepareError(f"no *.pickle file in {src}")
        cases, problems = _pickle_cases(path)
        return run(cases=cases, discovery_problems=problems)
    if fmt == "hdf5":
        import h5py

        files = _hdf5_files(path)
        if not files:
            raise PrepareError(f"no *.hdf5 file in {src}")
        if len(files) > 1:
            raise PrepareError(f"several HDF5 files in {src} ({', '.join(f.name for f in files)}): pass one of them")
        try:
            handle = h5py.File(files[0], "r")
        except OSError as e:
            raise PrepareError(f"{files[0]}: cannot read the HDF5 file ({e})") from e
        with handle:
            cases, problems = _hdf5_cases(handle, files[0], keep_splits)
            return run(cases=cases, discovery_problems=problems)
    if fmt == "png":
        cases, problems = _png_cases(path, keep_splits)
        if not cases:
            raise PrepareError(f"no LIDC PNG crop (images/<patient>/z-<z>_c<n>.png) in {src}")
        return run(cases=cases, discovery_problems=problems)
    return run(cases=_pylidc_cases(crop_size))
