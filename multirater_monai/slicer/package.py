"""A 3D Slicer review package from a bundle's inference output folder.

For every case (``<case>_seg.nii.gz`` in the folder a bundle's ``inference.json`` wrote) the package holds, in
``<out>/<case>/``:

- ``<case>_image.nrrd``: the input image;
- ``<case>.seg.nrrd``: one Slicer segmentation with a named, coloured segment per class of the consensus, of
  every rater's predicted segmentation (``<case>_rater_seg_<rater>``), and, where a datalist is given, of every
  rater's own label and of the reference (``gt``): overlapping segments go to separate layers, as Slicer's
  multi-layer segmentations store them (written by ``slicerio``);
- ``<case>_<map>.nrrd``: every other map of the folder as a scalar volume (reliability / agreement per rater,
  probabilities, who, heatmaps, prototype and group activations, one volume per channel), and
  ``<case>_disagreement.nrrd``, the number of raters predicted to differ from the consensus at each voxel;
- ``explanations/``: the figures and patch mosaics (``_why``, ``.png``, ``.json``) as they are.

``load_in_slicer.py`` loads it all (``Slicer --python-script load_in_slicer.py``, or ``exec`` it in Slicer's
Python console); ``README.md`` says what is where. Every volume and the segmentation have the input image's
geometry (origin, spacing, direction; a 2D image becomes a one-slice volume), read from its NIfTI header.

Everything is checked before anything is written: a case without its image, a map whose grid differs from the
image's, an output folder that already holds files (without ``overwrite``) are refused with the file named.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from multirater_monai.errors import UserError

__all__ = ["Case", "export_slicer_package", "find_cases"]

SEGMENTATION = "_seg"
RATER_SEGMENTATION = "_rater_seg_"
FIGURE_SUFFIXES = ("_why",)
NIFTI = (".nii.gz", ".nii")
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
# geometry agreement between a map and its image: millimetres for the affine
AFFINE_TOLERANCE = 1e-3


def _strip_nifti(name: str) -> str | None:
    for ext in NIFTI:
        if name.endswith(ext):
            return name[: -len(ext)]
    return None


@dataclass
class Case:
    """One inference case: its consensus file, image, maps and (from a datalist) the raters' labels."""

    name: str
    consensus: Path
    image: Path | None = None
    rater_predictions: dict[str, Path] = field(default_factory=dict)
    maps: dict[str, Path] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    rater_labels: dict[str, Path] = field(default_factory=dict)
    reference: Path | None = None


def find_cases(pred_dir: str | os.PathLike) -> list[Case]:
    """The cases of an inference output folder: one per ``<case>_seg.nii.gz``, with the files that share its name.

    Raises:
        UserError: the folder is missing or holds no ``*_seg.nii.gz``.
    """
    folder = Path(pred_dir)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such inference output folder")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    names = sorted(
        stem[: -len(SEGMENTATION)] for p in files if (stem := _strip_nifti(p.name)) and stem.endswith(SEGMENTATION)
    )
    if not names:
        raise UserError(f"{folder}: no <case>_seg.nii.gz (the consensus a bundle's inference writes) in this folder")
    # longest names first, so that case "a_1" does not take the files of case "a_1_2"
    cases = {n: Case(n, folder / f"{n}{SEGMENTATION}.nii.gz") for n in names}
    for path in files:
        owner = next((n for n in sorted(names, key=len, reverse=True) if path.name.startswith(n + "_")), None)
        if owner is None:
            continue
        case = cases[owner]
        stem = _strip_nifti(path.name)
        rest = (stem or path.stem)[len(owner) :]
        if stem is None or any(rest.startswith(s) for s in FIGURE_SUFFIXES):
            case.figures.append(path)
        elif rest == SEGMENTATION:
            if not case.consensus.is_file():
                case.consensus = path
        elif rest.startswith(RATER_SEGMENTATION):
            case.rater_predictions[rest[len(RATER_SEGMENTATION) :]] = path
        else:
            case.maps[rest[1:]] = path
    return [cases[n] for n in names]


def _datalist_entries(datalist: Path) -> tuple[dict[str, dict[str, Any]], list[str], dict[str, str]]:
    """Image stem -> datalist entry (paths made absolute), the rater names and the class names of a datalist."""
    try:
        content = json.loads(datalist.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{datalist}: not a readable datalist JSON ({error})") from None
    root = datalist.parent
    entries: dict[str, dict[str, Any]] = {}
    for section, items in content.items():
        if not isinstance(items, list):
            continue
        for item in items:
            if not isinstance(item, Mapping) or "image" not in item:
                continue
            image = item["image"] if isinstance(item["image"], str) else item["image"][0]
            stem = _strip_nifti(Path(image).name)
            if stem is None:
                continue
            entry: dict[str, Any] = {"image": str(root / image)}
            labels = item.get("label")
            labels = [labels] if isinstance(labels, str) else labels
            if labels:
                entry["label"] = [str(root / path) if path else None for path in labels]
            if item.get("gt"):
                entry["gt"] = str(root / item["gt"])
            entries[stem] = entry
    labels = content.get("labels") or {}
    return entries, list(content.get("raters") or []), {str(k): str(v) for k, v in labels.items()}


def _rater_name(path: str, case: str, raters: Sequence[str], index: int, count: int) -> str:
    if len(raters) == count:
        return raters[index]
    stem = _strip_nifti(Path(path).name) or Path(path).stem
    return stem[len(case) + 1 :] if stem.startswith(case + "_") else f"rater{index}"


def _load(path: Path):
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception as error:  # noqa: BLE001 - any reader failure is the file's fault
        raise UserError(f"{path}: not a readable NIfTI image ({type(error).__name__}: {error})") from None


def _grid(path: Path, image_shape: tuple[int, ...], image_affine: np.ndarray, reference: Path) -> np.ndarray:
    """The array of a map on ``reference``'s grid, (*S) or (*S, C); refused if its grid is not that one."""
    nii = _load(path)
    shape = nii.shape
    spatial = len(image_shape)
    if tuple(shape[:spatial]) != tuple(image_shape):
        raise UserError(f"{path}: shape {tuple(shape)} does not match {reference.name}'s {tuple(image_shape)}")
    if not np.allclose(nii.affine, image_affine, atol=AFFINE_TOLERANCE):
        differs = np.abs(nii.affine - image_affine).max()
        raise UserError(f"{path}: geometry (affine) differs from {reference.name}'s by up to {differs:.4g} mm")
    data = np.asarray(nii.dataobj)
    extra = data.shape[spatial:]
    channels = int(np.prod(extra)) if extra else 1
    return data.reshape(*image_shape, channels) if extra else data


def _ijk_volume(array: np.ndarray) -> np.ndarray:
    """(i, j) or (i, j, k) -> (i, j, k): a 2D image as one slice."""
    return array[..., None] if array.ndim == 2 else array


def _color(index: int) -> list[float]:
    from matplotlib import colormaps

    return [round(float(c), 4) for c in colormaps["tab20"](index % 20)[:3]]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


class _Plan:
    """Everything one case writes, built and checked before anything is written."""

    def __init__(self, case: Case, class_names: Mapping[int, str]) -> None:
        self.case = case
        if case.image is None:
            raise UserError(f"{case.consensus}: no image found for case '{case.name}'")
        if not case.image.is_file():
            raise UserError(f"{case.image}: missing (the input image of case '{case.name}')")
        # the consensus fixes the grid: its shape is the spatial shape; the image must match it (a multi-channel
        # image has its channels after the spatial axes, as NIfTI stores them)
        reference = _load(case.consensus)
        self.shape = tuple(reference.shape)
        self.affine = reference.affine
        image = self._on_grid(case.image).astype(np.float32)
        channels = [image] if image.ndim == len(self.shape) else [image[..., c] for c in range(image.shape[-1])]
        self.images = {"image" if len(channels) == 1 else f"image_{c}": a for c, a in enumerate(channels)}
        self.ijk_to_lps = RAS_TO_LPS @ self.affine
        self.class_names = dict(class_names)
        consensus = np.asarray(reference.dataobj)
        self.segment_sources: list[tuple[str, np.ndarray]] = [("consensus", consensus)]
        predictions = {r: self._on_grid(p) for r, p in sorted(case.rater_predictions.items())}
        self.segment_sources += [(f"{r} (predicted)", a) for r, a in predictions.items()]
        self.segment_sources += [(f"{r} (drawn)", self._on_grid(p)) for r, p in case.rater_labels.items()]
        if case.reference is not None:
            self.segment_sources.append(("reference", self._on_grid(case.reference)))
        for source, array in self.segment_sources:
            if array.ndim != len(self.shape) or not np.array_equal(array, np.round(array)):
                raise UserError(f"case '{case.name}': the {source} segmentation is not a label map of integers")
        # every source gets a segment per class, empty ones included (a rater who drew nothing shows as such):
        # the classes named, else every value any source has
        present = {int(v) for _, array in self.segment_sources for v in np.unique(array) if v > 0}
        named = {k for k in self.class_names if k > 0}
        if named and not present <= named:
            raise UserError(
                f"case '{case.name}': label values {sorted(present - named)} have no class name "
                f"(names: {self.class_names}); give --class-names"
            )
        self.values = sorted(named or present)
        self.volumes: dict[str, np.ndarray] = {}
        for name, path in sorted(case.maps.items()):
            array = self._on_grid(path).astype(np.float32)
            if array.ndim == len(self.shape):
                self.volumes[name] = array
            else:
                for c in range(array.shape[-1]):
                    self.volumes[f"{name}_{c}"] = array[..., c]
        if predictions:
            differ = sum((a != consensus).astype(np.uint8) for a in predictions.values())
            self.volumes["disagreement"] = differ.astype(np.float32)

    def _on_grid(self, path: Path) -> np.ndarray:
        """``path``'s array, refused unless it lies on the consensus's grid."""
        return _grid(path, self.shape, self.affine, self.case.consensus)

    def write(self, out: Path) -> dict[str, Any]:
        import slicerio

        folder = out / _safe(self.case.name)
        folder.mkdir(parents=True, exist_ok=True)
        written: dict[str, Any] = {"image": None, "segmentation": None, "volumes": [], "segments": [], "figures": []}
        written["images"] = []
        for name, array in self.images.items():
            path = folder / f"{_safe(self.case.name)}_{name}.nrrd"
            slicerio.write_volume(str(path), {"voxels": _ijk_volume(array), "ijkToLPS": self.ijk_to_lps})
            written["images"].append(path.name)
        written["image"] = written["images"][0]
        segmentation = slicerio.create_segmentation(_ijk_volume(np.zeros(self.shape, np.uint8)).shape, self.ijk_to_lps)
        index = 0
        for source, array in self.segment_sources:
            volume = _ijk_volume(array.astype(np.int64))
            for value in self.values:
                name = f"{source}: {self.class_names.get(value, f'class {value}')}"
                slicerio.add_segment(
                    segmentation, volume == value, {"id": f"segment_{index}", "name": name, "color": _color(index)}
                )
                written["segments"].append(name)
                index += 1
        seg_file = folder / f"{_safe(self.case.name)}.seg.nrrd"
        slicerio.write_segmentation(str(seg_file), segmentation)
        written["segmentation"] = seg_file.name
        for name, array in self.volumes.items():
            path = folder / f"{_safe(self.case.name)}_{_safe(name)}.nrrd"
            slicerio.write_volume(str(path), {"voxels": _ijk_volume(array), "ijkToLPS": self.ijk_to_lps})
            written["volumes"].append(path.name)
        if self.case.figures:
            figures = folder / "explanations"
            figures.mkdir(exist_ok=True)
            for path in self.case.figures:
                shutil.copy2(path, figures / path.name)
                written["figures"].append(f"explanations/{path.name}")
        return written


LOADER = '''"""Load this review package in 3D Slicer: `Slicer --python-script load_in_slicer.py`, or in Slicer's Python
console: exec(open("<this folder>/load_in_slicer.py").read())."""
import json
import os

import slicer

try:
    here = os.path.dirname(os.path.abspath(__file__))
except NameError:  # exec'd from the console: set PACKAGE to this folder first, or run from it
    here = globals().get("PACKAGE", os.getcwd())
with open(os.path.join(here, "package.json")) as f:
    package = json.load(f)
for case, files in package["cases"].items():
    folder = os.path.join(here, case)
    image = slicer.util.loadVolume(os.path.join(folder, files["image"]), {"name": case})
    for other in files["images"][1:]:
        slicer.util.loadVolume(os.path.join(folder, other), {"show": False})
    for volume in files["volumes"]:
        slicer.util.loadVolume(os.path.join(folder, volume), {"show": False})
    segmentation = slicer.util.loadSegmentation(os.path.join(folder, files["segmentation"]))
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(image)
    slicer.util.setSliceViewerLayers(background=image, fit=True)
print("loaded", len(package["cases"]), "case(s) from", here)
'''


def _readme(cases: Mapping[str, Mapping[str, Any]], source: Path) -> str:
    lines = [
        "# 3D Slicer review package",
        "",
        f"Written by `multirater export-slicer` from `{source}`.",
        "",
        "Open it: start 3D Slicer and run `load_in_slicer.py` (`Slicer --python-script load_in_slicer.py`, or drag",
        "the files of a case onto Slicer: the `.seg.nrrd` loads as a segmentation, every `.nrrd` as a volume).",
        "",
        "Per case: the image; one segmentation with a segment per class of the consensus, of each rater's",
        "predicted segmentation, of each rater's own label and of the reference where the datalist had them",
        "(overlapping segments sit in separate layers; show or hide them in the Segmentations module); every other",
        "map as a scalar volume (per-rater reliability or agreement, probabilities, disagreement = number of raters",
        "predicted to differ from the consensus); figures and patch mosaics in `explanations/`.",
        "",
    ]
    for case, files in cases.items():
        lines.append(
            f"- `{case}/`: {len(files['segments'])} segments, {len(files['volumes'])} volumes, "
            f"{len(files['figures'])} figures"
        )
    return "\n".join(lines) + "\n"


def _package_files(out: Path, names: Sequence[str]) -> list[Path]:
    return [out / n for n in ("README.md", "load_in_slicer.py", "package.json")] + [out / _safe(n) for n in names]


def export_slicer_package(
    pred_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    image_dir: str | os.PathLike | None = None,
    datalist: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the review package of ``pred_dir`` into ``out_dir``; see the module docstring.

    Args:
        pred_dir: a bundle's inference output folder.
        out_dir: the package folder (created; it must be empty unless ``overwrite``).
        image_dir: the folder of the input images (``<case>.nii.gz``), the inference's ``input_dir``.
        datalist: a datalist JSON (``multirater prepare`` / the synthetic generator's): the images, and the
            raters' labels and the reference shown beside the predictions. Its class names are used.
        class_names: names of the label values 0..L-1 (default: the datalist's, else ``class <k>``).
        overwrite: replace this package's files where ``out_dir`` already holds them.

    Returns:
        the package's ``package.json`` content: per case, the files and segment names written.

    Raises:
        UserError: before anything is written, for any case or file that cannot make a correct package.
    """
    source = Path(pred_dir)
    out = Path(out_dir)
    cases = find_cases(source)
    names: dict[int, str] = {}
    entries: dict[str, dict[str, Any]] = {}
    raters: list[str] = []
    if datalist is not None:
        entries, raters, labels = _datalist_entries(Path(datalist))
        names.update({int(k): v for k, v in labels.items()})
    if class_names:
        names = dict(enumerate(class_names))
    if image_dir is None and datalist is None:
        raise UserError("give --images (the folder inference read) or --datalist, to find each case's image")
    for case in cases:
        entry = entries.get(case.name)
        if entry is not None:
            case.image = Path(entry["image"])
            labels = entry.get("label") or []
            labels = [labels] if isinstance(labels, str) else labels
            for i, path in enumerate(labels):
                if path is not None:
                    case.rater_labels[_rater_name(path, case.name, raters, i, len(labels))] = Path(path)
            if entry.get("gt"):
                case.reference = Path(entry["gt"])
        elif image_dir is not None:
            candidates = [Path(image_dir) / f"{case.name}{ext}" for ext in NIFTI]
            case.image = next((c for c in candidates if c.is_file()), candidates[0])
        else:
            raise UserError(f"{datalist}: no entry for case '{case.name}' (its image {case.name}.nii.gz)")
        for path in [*case.rater_labels.values(), *([case.reference] if case.reference else [])]:
            if not path.is_file():
                raise UserError(f"{path}: missing (a label of case '{case.name}' in {datalist})")
    plans = [_Plan(case, names) for case in cases]

    existing = [p for p in _package_files(out, [c.name for c in cases]) if p.exists()]
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if existing and not overwrite:
        raise UserError(
            f"{existing[0]}: exists from an earlier export; pass --overwrite to replace the package's files"
        )
    out.mkdir(parents=True, exist_ok=True)
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    written = {plan.case.name: plan.write(out) for plan in plans}
    package = {"source": str(source.resolve()), "cases": {_safe(k): v for k, v in written.items()}}
    (out / "package.json").write_text(json.dumps(package, indent=2) + "\n")
    (out / "load_in_slicer.py").write_text(LOADER)
    (out / "README.md").write_text(_readme(package["cases"], source))
    return package
