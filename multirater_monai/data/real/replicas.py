"""Tiny replicas of the real datasets' on-disk layouts, to test the readers and try the commands.

Each builder writes small synthetic arrays (a blob "lesion" on a smooth background) under ``root``
with the release's folder and file names, formats, dtypes and label conventions; nothing is
downloaded and no real data is reproduced. ``multirater prepare replica <dataset> <root>`` calls them.

Builders (:data:`REPLICAS`) and what they write under ``root``:

- ``lidc_pickle``: ``data_lidc.pickle``, ``{crop id: {"image": float32 [0, 1], "masks": 4 uint8 0/1 maps,
  "series_uid": str}}``;
- ``lidc_hdf5``: ``data_lidc.hdf5``, groups ``train|val|test`` with ``images`` (N, H, W) float64,
  ``labels`` (N, H, W, 4) uint8, ``uids`` (N,) int64;
- ``lidc_png``: ``train|val|test/images/<patient>/z-<z>_c<n>.png`` (8-bit) and
  ``train|val|test/gt/<patient>/z-<z>_c<n>_l{0..3}.png`` (0/255);
- ``brats``: 2019 ``MICCAI_BraTS_2019_Data_Training/HGG/BraTS19_CBICA_AAA_1/BraTS19_CBICA_AAA_1_flair.nii.gz``,
  2020 ``MICCAI_BraTS2020_TrainingData/BraTS20_Training_001/BraTS20_Training_001_t1ce.nii.gz``,
  2021 ``BraTS2021_Training_Data/BraTS2021_00000/BraTS2021_00000_seg.nii.gz`` (int16 images, uint8 labels
  0/1/2/4), 2023 ``ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData/BraTS-GLI-00000-000/BraTS-GLI-00000-000-t2f.nii.gz``
  (labels 0/1/2/3);
- ``qubiq``: ``training_data_v3/<dataset>/Training/caseNN/{image,taskTT_segRR}.nii.gz`` and
  ``validation_data_v3/<dataset>/Validation/caseNN/...``;
- ``mslsc``: ``training/trainingXX/preprocessed/trainingXX_TT_{flair,mprage,pd,t2}_pp.nii`` and
  ``training/trainingXX/masks/trainingXX_TT_mask{1,2}.nii``.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from multirater_monai.data.real.qubiq import QUBIQ_DATASETS

__all__ = [
    "REPLICAS",
    "lidc_records",
    "make_lidc_pickle_replica",
    "make_lidc_hdf5_replica",
    "make_lidc_png_replica",
    "make_brats_replica",
    "make_qubiq_replica",
    "make_mslsc_replica",
    "make_replica",
]

_BRATS_AFFINE_SIGN = np.diag([-1.0, -1.0, 1.0, 1.0])


def _ball(shape: Sequence[int], centre: Sequence[float], radius: float) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))
    offsets = grid - np.asarray(centre, dtype=np.float64).reshape(-1, *([1] * len(shape)))
    return (offsets**2).sum(0) <= radius**2


def _background(rng: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
    """Smooth noise in [0, 1]."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    return (field - field.min()) / (np.ptp(field) + 1e-8)


def lidc_records(num_patients: int = 6, crops_per_patient: int = 2, size: int = 32, seed: int = 0) -> dict[str, dict]:
    """The crops shared by the LIDC replicas: ``{crop id: {"image", "masks", "series_uid", "patient", "z"}}``.

    Images are (size, size) float32 in [0, 1]; masks four (size, size) uint8 0/1 maps (the fourth reader
    marks nothing on every other crop, as LIDC's padded readers do).
    """
    records = {}
    for p in range(num_patients):
        patient = f"LIDC-IDRI-{p + 1:04d}"
        series = f"1.3.6.1.4.1.14519.5.2.1.6279.6001.{100000 + p}"
        for c in range(crops_per_patient):
            rng = np.random.default_rng([seed, p, c])
            centre = rng.uniform(size * 0.4, size * 0.6, size=2)
            radius = rng.uniform(size * 0.12, size * 0.2)
            image = 0.3 * _background(rng, (size, size))
            image[_ball((size, size), centre, radius)] += 0.6
            masks = [
                _ball((size, size), centre + rng.normal(0, 0.5, 2), radius * rng.uniform(0.8, 1.2)).astype(np.uint8)
                for _ in range(4)
            ]
            if c % 2 == 1:
                masks[3][:] = 0
            z = 100.0 + 2.5 * c
            records[f"{patient}_z-{z:.1f}_c{c}"] = {
                "image": np.clip(image, 0, 1).astype(np.float32),
                "masks": masks,
                "series_uid": series,
                "patient": patient,
                "z": z,
                "crop": c,
            }
    return records


def make_lidc_pickle_replica(root: str | os.PathLike, **kwargs) -> Path:
    """``root/data_lidc.pickle`` as the Probabilistic U-Net repository distributes it; returns the file."""
    path = Path(root) / "data_lidc.pickle"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        k: {"image": r["image"], "masks": r["masks"], "series_uid": r["series_uid"]}
        for k, r in lidc_records(**kwargs).items()
    }
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=4)
    return path


def _patient_splits(records: dict[str, dict]) -> dict[str, str]:
    patients = sorted({r["patient"] for r in records.values()})
    n_test = max(1, len(patients) // 5)
    n_val = max(1, len(patients) // 5)
    return {p: "test" if i < n_test else "val" if i < n_test + n_val else "train" for i, p in enumerate(patients)}


def make_lidc_hdf5_replica(root: str | os.PathLike, **kwargs) -> Path:
    """``root/data_lidc.hdf5`` as PHiSeg's ``lidc_data_loader`` writes it; returns the file."""
    import h5py

    records = lidc_records(**kwargs)
    splits = _patient_splits(records)
    path = Path(root) / "data_lidc.hdf5"
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for group in ("train", "val", "test"):
            chosen = [r for r in records.values() if splits[r["patient"]] == group]
            g = f.create_group(group)
            g.create_dataset(
                "uids", data=np.asarray([int(r["series_uid"].rsplit(".", 1)[1]) for r in chosen], dtype=np.int64)
            )
            g.create_dataset("labels", data=np.asarray([np.stack(r["masks"], -1) for r in chosen], dtype=np.uint8))
            g.create_dataset("images", data=np.asarray([r["image"].astype(np.float64) - 0.5 for r in chosen]))
    return path


def make_lidc_png_replica(root: str | os.PathLike, split_folders: bool = True, **kwargs) -> Path:
    """The Hierarchical Prob. U-Net PNG crops under ``root`` (with ``train``/``val``/``test`` folders by default)."""
    from PIL import Image

    records = lidc_records(**kwargs)
    splits = _patient_splits(records)
    root = Path(root)
    for r in records.values():
        base = root / splits[r["patient"]] if split_folders else root
        stem = f"z-{r['z']:.1f}_c{r['crop']}"
        (base / "images" / r["patient"]).mkdir(parents=True, exist_ok=True)
        (base / "gt" / r["patient"]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(r["image"] * 255).astype(np.uint8)).save(
            base / "images" / r["patient"] / f"{stem}.png"
        )
        for k, mask in enumerate(r["masks"]):
            Image.fromarray((mask * 255).astype(np.uint8)).save(base / "gt" / r["patient"] / f"{stem}_l{k}.png")
    return root


_BRATS_LAYOUT = {
    "2019": ("MICCAI_BraTS_2019_Data_Training", "_", ("flair", "t1", "t1ce", "t2"), 4),
    "2020": ("MICCAI_BraTS2020_TrainingData", "_", ("flair", "t1", "t1ce", "t2"), 4),
    "2021": ("BraTS2021_Training_Data", "_", ("flair", "t1", "t1ce", "t2"), 4),
    "2023": ("ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData", "-", ("t1n", "t1c", "t2w", "t2f"), 3),
}


def _brats_case_name(release: str, i: int) -> str:
    if release == "2019":
        return f"BraTS19_CBICA_A{chr(65 + i // 26)}{chr(65 + i % 26)}_1"
    if release == "2020":
        return f"BraTS20_Training_{i + 1:03d}"
    if release == "2021":
        return f"BraTS2021_{i:05d}"
    return f"BraTS-GLI-{i:05d}-000"


def make_brats_replica(
    root: str | os.PathLike,
    release: str = "2021",
    num_cases: int = 5,
    shape: Sequence[int] = (24, 24, 16),
    seed: int = 0,
) -> Path:
    """A BraTS release folder under ``root`` with ``num_cases`` cases; returns the release folder.

    Each case: a brain ellipsoid (zero outside, as the skull-stripped releases), four int16 modalities
    and a uint8 segmentation with edema around a core holding necrosis and an enhancing rim
    (labels 1, 2, 4; 2023: 1, 2, 3). Affine with negative x / y axes as the releases.
    """
    folder, sep, modalities, enhancing = _BRATS_LAYOUT[release]
    base = Path(root) / folder / ("HGG" if release == "2019" else "")
    shape = tuple(int(s) for s in shape)
    affine = _BRATS_AFFINE_SIGN.copy()
    affine[1, 3] = shape[1] - 1
    for i in range(num_cases):
        rng = np.random.default_rng([seed, i])
        case = _brats_case_name(release, i)
        (base / case).mkdir(parents=True, exist_ok=True)
        centre = np.asarray(shape) / 2.0
        brain = (
            (np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")) - centre.reshape(3, 1, 1, 1)) ** 2
            / (np.asarray(shape).reshape(3, 1, 1, 1) * 0.45) ** 2
        ).sum(0) <= 1
        t = centre + rng.uniform(-2, 2, 3)
        side = min(shape)
        edema, core = _ball(shape, t, side * 0.3), _ball(shape, t, side * 0.18)
        necrosis = _ball(shape, t, side * 0.09)
        seg = np.zeros(shape, dtype=np.uint8)
        seg[edema & brain] = 2
        seg[core & brain] = enhancing
        seg[necrosis & brain] = 1
        for m, modality in enumerate(modalities):
            image = 400 + 300 * _background(rng, shape) + 150 * (m + 1) * (seg > 0) + 80 * (seg == enhancing)
            image = np.where(brain, image, 0).astype(np.int16)
            nib.save(nib.Nifti1Image(image, affine), str(base / case / f"{case}{sep}{modality}.nii.gz"))
        nib.save(nib.Nifti1Image(seg, affine), str(base / case / f"{case}{sep}seg.nii.gz"))
    return Path(root) / folder


def _qubiq_case(folder: Path, rng: np.random.Generator, dataset: str, size: int, gap: bool) -> None:
    facts = QUBIQ_DATASETS[dataset]
    shape = (size, size) if facts["spatial_dims"] == 2 else (size, size, max(size // 2, 8))
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    folder.mkdir(parents=True, exist_ok=True)
    centre = np.asarray(shape) / 2.0 + rng.uniform(-2, 2, len(shape))
    image = 100 * _background(rng, shape)
    image[_ball(shape, centre, size * 0.25)] += 80
    singleton = dataset == "prostate"  # stored as (H, W, 1)
    if facts["channels"] > 1:
        image = np.stack([image * (1 + 0.2 * c) for c in range(facts["channels"])], axis=-1)
    elif singleton:
        image = image[..., None]
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), str(folder / "image.nii.gz"))
    for task in range(1, facts["tasks"] + 1):
        for rater in range(1, facts["raters"] + 1):
            if gap and task == 1 and rater == min(3, facts["raters"]):
                continue
            radius = size * 0.25 / task * rng.uniform(0.8, 1.2)
            mask = _ball(shape, centre + rng.normal(0, 0.5, len(shape)), radius).astype(np.uint8)
            if singleton:
                mask = mask[..., None]
            nib.save(nib.Nifti1Image(mask, affine), str(folder / f"task{task:02d}_seg{rater:02d}.nii.gz"))


def make_qubiq_replica(
    root: str | os.PathLike,
    datasets: Sequence[str] = tuple(QUBIQ_DATASETS),
    num_cases: int = 5,
    num_validation: int = 1,
    size: int = 24,
    seed: int = 0,
) -> Path:
    """QUBIQ training and validation folders under ``root``; returns ``root``.

    Per dataset as published (:data:`~multirater_monai.data.real.qubiq.QUBIQ_DATASETS`): number of tasks and
    raters, 2D or 3D, brain-tumor's four channels on the last image axis, prostate's (H, W, 1) singleton
    axis, and a rater gap (case02 lacks task01's ``seg03``, or ``seg02`` with two raters).
    """
    root = Path(root)
    for d, dataset in enumerate(datasets):
        for i in range(num_cases + num_validation):
            held_out = i >= num_cases
            top = root / ("validation_data_v3" if held_out else "training_data_v3") / dataset
            folder = top / ("Validation" if held_out else "Training") / f"case{i + 1:02d}"
            _qubiq_case(folder, np.random.default_rng([seed, d, i]), dataset, size, gap=(i == 1))
    return root


def make_mslsc_replica(
    root: str | os.PathLike,
    num_subjects: int = 3,
    time_points: int = 2,
    shape: Sequence[int] = (20, 24, 20),
    seed: int = 0,
) -> Path:
    """``root/training/trainingXX/{preprocessed,masks}`` of the ISBI 2015 challenge; returns ``root/training``."""
    shape = tuple(int(s) for s in shape)
    affine = np.array([[-1.0, 0, 0, 90], [0, 1.0, 0, -126], [0, 0, 1.0, -72], [0, 0, 0, 1]])
    base = Path(root) / "training"
    for s in range(1, num_subjects + 1):
        subject = f"training{s:02d}"
        for folder in ("preprocessed", "masks", "orig"):
            (base / subject / folder).mkdir(parents=True, exist_ok=True)
        for t in range(1, time_points + 1):
            rng = np.random.default_rng([seed, s, t])
            prefix = f"{subject}_{t:02d}"
            brain = _ball(shape, np.asarray(shape) / 2, min(shape) * 0.45)
            lesion_centre = np.asarray(shape) / 2 + rng.uniform(-3, 3, 3)
            lesion = _ball(shape, lesion_centre, 3.0)
            for m, modality in enumerate(("flair", "mprage", "pd", "t2")):
                image = np.where(brain, 0.5 + 0.3 * _background(rng, shape) + 0.4 * lesion * (1 if m != 1 else -1), 0)
                nib.save(
                    nib.Nifti1Image(image.astype(np.float32), affine),
                    str(base / subject / "preprocessed" / f"{prefix}_{modality}_pp.nii"),
                )
            for r in (1, 2):
                mask = _ball(shape, lesion_centre + rng.normal(0, 0.4, 3), 3.0 * rng.uniform(0.8, 1.2)).astype(np.uint8)
                nib.save(nib.Nifti1Image(mask, affine), str(base / subject / "masks" / f"{prefix}_mask{r}.nii"))
    return base


REPLICAS = {
    "lidc": make_lidc_pickle_replica,
    "lidc_pickle": make_lidc_pickle_replica,
    "lidc_hdf5": make_lidc_hdf5_replica,
    "lidc_png": make_lidc_png_replica,
    "brats": make_brats_replica,
    "qubiq": make_qubiq_replica,
    "mslsc": make_mslsc_replica,
}
"""Replica builders by name (``lidc`` is the pickle)."""


def make_replica(name: str, root: str | os.PathLike, **kwargs) -> Path:
    """Build replica ``name`` (see :data:`REPLICAS`) under ``root``; returns the path to pass as ``--src``."""
    if name not in REPLICAS:
        raise ValueError(f"unknown replica {name!r}; known: {sorted(REPLICAS)}")
    return REPLICAS[name](root, **kwargs)
