"""Suites of the benchmark: the data every arm is trained and evaluated on.

Synthetic suites (:data:`SYNTHETIC_SUITES`) are generated with a fixed data seed, so every arm and every
training seed sees the same images and the same rater labels; a prepared real dataset
(``multirater prepare``) is a suite too (:func:`dataset_suite`). A suite *offers settings*
(``multi_rater``: several raters' labels per image or across images; ``one_annotator``: one rater per image,
with its identity); an arm runs on the suites offering a setting it fits (:meth:`Arm.fits`).

The noise ladder (``noise-0.5`` ... ``noise-6``) sweeps annotation noise as the CM-Net paper's Figure 4:
three of the five raters over-segment by ``r`` to ``r + 1`` pixels (one with holes) and one under-segments by
``r``, so the fused labels (majority vote, mean, STAPLE) inherit the bias and their Dice against the truth
falls from 1.00 (``r = 0.5``: a half-pixel dilation or erosion changes nothing on the pixel grid, so only the
holes and the 1.5-pixel rater differ from the truth, and the vote removes both) through 0.89, 0.79 and 0.63
to 0.52 (``r = 6``) on the 2D set (majority vote).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from multirater_monai.errors import UserError

__all__ = [
    "Suite",
    "SuiteData",
    "SYNTHETIC_SUITES",
    "NOISE_LEVELS",
    "suite_protocol",
    "dataset_suite",
    "with_num_train",
    "prepare_suite",
    "label_statistics",
]

NOISE_LEVELS = (0.5, 1, 2, 4, 6)
"""Radii ``r`` (pixels) of the noise ladder's over-segmenting raters."""


@dataclass(frozen=True)
class Suite:
    """One data setting of the leaderboard.

    Attributes:
        name: the suite's name (folder, MLflow experiment ``benchmark/<name>``).
        description: one line for the leaderboard.
        synthetic: the synthetic generator's arguments (None for a prepared dataset).
        dataset: a prepared dataset's folder (holding ``datalist.json`` and ``bundle_config.json``).
        settings: the settings it offers to arms.
        protocol: ``"default"`` (run by ``multirater benchmark`` with no options, and by ``--full``) or ``"full"``.
        noise: the noise ladder's radius, for the Dice-vs-noise plot.
    """

    name: str
    description: str
    synthetic: dict | None = None
    dataset: Path | None = None
    settings: tuple[str, ...] = ("multi_rater",)
    protocol: str = "full"
    noise: float | None = None

    @property
    def spatial_dims(self) -> int:
        if self.synthetic is not None:
            return int(self.synthetic.get("spatial_dims", 2))
        return int(_bundle_overlay(self.dataset).get("spatial_dims", 2))


def _ladder(r: float) -> Suite:
    raters = ["good", f"over-{r:g}", f"over-{r + 1:g}", f"wrong-{r:g}", f"under-{r:g}"]
    clean = " (below one pixel: no change on the grid)" if r < 1 else ""
    return Suite(
        name=f"noise-{r:g}",
        description=f"noise ladder: three raters over-segment by {r:g}-{r + 1:g} px (one with holes), one under by "
        f"{r:g}{clean}; the fused labels inherit the over-segmentation",
        synthetic={"raters": raters},
        noise=float(r),
    )


TENDENCY_PANEL = {"raters": ["dilated", "eroded", "simplified", "none"], "labels_per_image": 1, "scanners": True}
"""The TAX paper's four tendencies, one annotator per image, each image from one of four scanners (a visible
stripe artefact): the suites ``tendency`` (scanner k read by rater k) and ``tendency-random``."""

SYNTHETIC_SUITES: dict[str, Suite] = {
    s.name: s
    for s in [
        Suite(
            "default",
            "2D, 64x64, 200/40/40 images; raters good, over, under, wrong, blank (errors of both signs); every rater on every image",
            synthetic={"raters": ["good", "over", "under", "wrong", "blank"]},
            protocol="default",
        ),
        Suite(
            "one-label",
            "the default panel with one label per image (the rater drawn at random)",
            synthetic={"raters": ["good", "over", "under", "wrong", "blank"], "labels_per_image": 1},
            settings=("multi_rater", "one_annotator"),
        ),
        Suite(
            "biased",
            "three of five raters over-segment: the fused labels inherit their bias",
            synthetic={"raters": ["good", "over", "over+over", "wrong", "under"]},
        ),
        *[_ladder(r) for r in NOISE_LEVELS],
        Suite(
            "lesion",
            "one small lesion per 64x64 image (0.2-1 % of the pixels), four readers (one misses half), 64/40/100 images",
            synthetic={"raters": ["good", "over-1", "under-1", "miss"], "layout": "lesion", "num_train": 64,
                       "num_val": 40, "num_test": 100},
            protocol="default",
        ),
        Suite(
            "tendency",
            "one annotator per image with the TAX paper's tendencies (dilated, eroded, simplified, none), each reading "
            "one scanner's images (a faint stripe artefact of its own period): who annotated is visible",
            synthetic={**TENDENCY_PANEL, "assignment": "scanner"},
            settings=("multi_rater", "one_annotator"),
        ),
        Suite(
            "tendency-random",
            "the images of 'tendency', each labelled by a rater drawn at random: who annotated is not visible",
            synthetic={**TENDENCY_PANEL, "assignment": "random"},
            settings=("multi_rater", "one_annotator"),
        ),
        Suite(
            "scales",
            "multi-class, multi-scale: three kinds of objects (each present in half the images, radii 3-15 px, "
            "four classes with background); the default rater panel",
            synthetic={"raters": ["good", "over", "under", "wrong", "blank"], "layout": "scene", "num_classes": 4},
            settings=("multi_class",),
        ),
        Suite(
            "3d",
            "3D, 32^3, 48/12/12 volumes; the default panel",
            synthetic={"raters": ["good", "over", "under", "wrong", "blank"], "spatial_dims": 3},
        ),
        Suite(
            "lesion-3d",
            "3D: one small lesion per 32^3 volume (0.2-1 % of the voxels, MS-lesion scale), the lesion readers, "
            "48/12/40 volumes",
            synthetic={"raters": ["good", "over-1", "under-1", "miss"], "layout": "lesion", "spatial_dims": 3,
                       "num_train": 48, "num_val": 12, "num_test": 40},
        ),
    ]
}


def suite_protocol(protocol: str) -> list[Suite]:
    """The synthetic suites of a protocol: ``"default"`` or ``"full"`` (every synthetic suite)."""
    return [s for s in SYNTHETIC_SUITES.values() if protocol == "full" or s.protocol == "default"]


def with_num_train(suite: Suite, num_train: int) -> Suite:
    """A synthetic suite with ``num_train`` training images, named ``<suite>-n<num_train>``."""
    if suite.synthetic is None:
        raise UserError(f"--num-train applies to synthetic suites, not to the prepared dataset '{suite.name}'.")
    return replace(suite, name=f"{suite.name}-n{num_train}", synthetic={**suite.synthetic, "num_train": num_train},
                   description=f"{suite.description}; {num_train} training images")


def _bundle_overlay(folder: Path) -> dict:
    path = Path(folder) / "bundle_config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: missing; a benchmark dataset is a folder written by 'multirater prepare'.") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e}).") from None


def dataset_suite(folder: str | Path) -> Suite:
    """A prepared dataset (``multirater prepare ... --dst folder``) as a suite named after its folder.

    Raises:
        UserError: the folder lacks ``bundle_config.json`` or ``datalist.json``, naming the file.
    """
    folder = Path(folder).expanduser().resolve()
    overlay = _bundle_overlay(folder)
    datalist = folder / "datalist.json"
    if not datalist.is_file():
        raise UserError(f"{datalist}: missing; run 'multirater prepare' for {folder} again.")
    content = json.loads(datalist.read_text())
    settings = ("multi_rater", "one_annotator") if content.get("labels_per_image") == 1 else ("multi_rater",)
    has_truth = overlay.get("val_target", "gt") == "gt"
    return Suite(
        name=folder.name,
        description=f"prepared dataset {content.get('name', folder.name)} ({folder}); "
        + ("evaluated against its reference" if has_truth else "no reference: evaluated against the fused raters"),
        dataset=folder,
        settings=settings,
    )


@dataclass
class SuiteData:
    """What the runs of a suite are given: config overlays and overrides, and the oracle's datalist (or None)."""

    suite: Suite
    datalist: Path
    config_files: list[Path] = field(default_factory=list)
    overrides: dict = field(default_factory=dict)
    oracle_datalist: Path | None = None
    num_raters: int = 0


def _resolve(folder: Path, path: str | list | None) -> str | list | None:
    if path is None:
        return None
    if isinstance(path, list):
        return [_resolve(folder, p) for p in path]
    return str(folder / path)


def _write_oracle_datalist(datalist: Path, target: Path) -> Path | None:
    """A datalist whose one rater is the truth (absolute paths), or None when some item has no truth."""
    content = json.loads(datalist.read_text())
    folder = datalist.parent
    sections = {}
    for split in ("training", "validation", "test"):
        items = content.get(split, [])
        if not items or any(not item.get("gt") for item in items):
            return None
        sections[split] = [
            {"image": _resolve(folder, item["image"]), "label": [_resolve(folder, item["gt"])], "gt": _resolve(folder, item["gt"])}
            for item in items
        ]
    oracle = {k: v for k, v in content.items() if k not in ("training", "validation", "test", "generator")}
    oracle.update(raters=["truth"], labels_per_image=None, **sections)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(oracle, indent=1))
    return target


def prepare_suite(suite: Suite, out: Path) -> SuiteData:
    """Generate a synthetic suite's data under ``out/data/<suite>`` (once), or read a prepared dataset's overlay;
    write the oracle's datalist where the truth is known."""
    from multirater_monai.data import ensure_synthetic_dataset

    if suite.synthetic is not None:
        datalist = ensure_synthetic_dataset(out / "data" / suite.name, **suite.synthetic)
        num_raters = len(suite.synthetic["raters"])
        overrides = {"datalist": str(datalist), "num_raters": num_raters}
        if "num_classes" in suite.synthetic:  # a multi-class suite; the others keep each bundle's own
            overrides["num_classes"] = int(suite.synthetic["num_classes"])
        data = SuiteData(suite, datalist, overrides=overrides, num_raters=num_raters)
    else:
        overlay_file = suite.dataset / "bundle_config.json"
        overlay = _bundle_overlay(suite.dataset)
        datalist = suite.dataset / "datalist.json"
        # the overlay holds the folder where it was prepared: the folder as found now wins (a moved dataset)
        data = SuiteData(suite, datalist, config_files=[overlay_file], overrides={"dataset_dir": str(suite.dataset)},
                         num_raters=int(overlay.get("num_raters", 1)))
    data.oracle_datalist = _write_oracle_datalist(datalist, out / "data" / f"{suite.name}_oracle.json")
    return data


def label_statistics(data: SuiteData, num_classes: int = 2) -> dict[str, dict]:
    """Dice against the truth of each fusion's training labels (mean, majority, STAPLE), and STAPLE's own
    estimate of the raters' confusion matrices against the generator's (CM error), where the truth is known.

    Returns ``{"mean": {"label_dice": ...}, "majority": {...}, "staple": {"label_dice": ..., "cm_error": ...}}``,
    empty when the suite has no truth.
    """
    import torch
    from monai.transforms import LoadImage

    from multirater_monai.data import load_multirater_datalist
    from multirater_monai.metrics import compute_hard_dice
    from multirater_monai.transforms import FuseRatersd, LoadRaterLabelsd

    if data.oracle_datalist is None:
        return {}
    content = json.loads(data.datalist.read_text())
    num_classes = int(content.get("num_classes", num_classes))
    items = load_multirater_datalist(data.datalist, "training", check=False)
    load, load_gt = LoadRaterLabelsd(num_classes=num_classes), LoadImage(image_only=True)
    scores: dict[str, list[float]] = {"mean": [], "majority": [], "staple": []}
    for item in items:
        labels = load({"label": item["label"]})
        gt = torch.nn.functional.one_hot(torch.as_tensor(load_gt(item["gt"])).long(), num_classes).movedim(-1, 0)[None]
        for fusion, values in scores.items():
            fused = FuseRatersd(method=fusion, num_classes=num_classes)(dict(labels))["fused_label"]
            pred = torch.nn.functional.one_hot(fused.argmax(0), num_classes).movedim(-1, 0)[None]
            values.append(float(compute_hard_dice(pred, gt).mean()))
    stats = {fusion: {"label_dice": float(np.mean(v))} for fusion, v in scores.items()}
    if num_classes == 2 and all("true_cm" in item for item in items):
        stats["staple"]["cm_error"] = _staple_cm_error(data.datalist)
    return stats


def _staple_cm_error(datalist: Path) -> float:
    """CM error of per-image binary STAPLE on the test split: A = [[q, 1-p], [1-q, p]] from its sensitivity p and
    specificity q, against the generator's matrices, over the raters who annotated each image."""
    import torch

    from multirater_monai.data import load_multirater_datalist
    from multirater_monai.fusion import staple
    from multirater_monai.metrics import compute_cm_error
    from multirater_monai.transforms import LoadRaterLabelsd, ToConfusionMatrixd

    load = LoadRaterLabelsd(num_classes=2)
    errors = []
    for item in load_multirater_datalist(datalist, "test", check=False):
        labels = load({"label": item["label"]})["label"].numpy()
        true_cm = ToConfusionMatrixd()({"true_cm": item["true_cm"]})["true_cm"]
        est = staple(labels)
        p, q = est.sensitivity, est.specificity
        cm = np.stack([np.stack([q, 1 - p], -1), np.stack([1 - q, p], -1)], 1)  # (R, L, L)
        mask = torch.as_tensor((labels != -1).reshape(labels.shape[0], -1).any(1))[None]
        err = compute_cm_error(torch.as_tensor(cm, dtype=torch.float32)[None], true_cm[None], mask)
        errors.extend(v for v in err[0].tolist() if not np.isnan(v))
    return float(np.mean(errors))
