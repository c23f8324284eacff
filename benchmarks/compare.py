"""Train and evaluate bundles on the same synthetic data and print one comparison table.

Each *arm* is a bundle with config overrides (e.g. ``fused_unet`` with ``fusion=staple``). Every arm
is trained with ``python -m monai.bundle run`` (train.json), then evaluated on the test split
(train.json + evaluate.json), with all its outputs under ``<out>/<regime>/<arm>/``; the table is
read back from each arm's ``eval/metrics.csv``. Regimes: ``dense`` (every rater on every image) and
``one`` (one label per image), both from the default synthetic 2D generator (5 raters: good, over,
under, wrong, blank), generated once under ``<out>/data``.

    python benchmarks/compare.py --arms mean majority staple --regimes dense one --epochs 40

Besides the trained networks, the table gives the Dice of the fused training labels themselves
against the truth (``label Dice``): what the network is asked to learn.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# arm name -> (bundle, overrides)
ARMS: dict[str, tuple[str, dict]] = {
    "mean": ("fused_unet", {"fusion": "mean"}),
    "majority": ("fused_unet", {"fusion": "majority"}),
    "staple": ("fused_unet", {"fusion": "staple"}),
    "cmnet_pixel": ("cmnet", {"cm_type": "pixel"}),
    "cmnet_pixel_notrace": ("cmnet", {"cm_type": "pixel", "trace_weight": 0.0}),
    "cmnet_global": ("cmnet", {"cm_type": "global"}),
    "cmnet_lowrank": ("cmnet", {"cm_type": "low_rank", "rank": 1}),
    "cmnet_separate": ("cmnet", {"cm_type": "pixel", "shared_trunk": False}),
}
# bundles whose epochs are split into stages: the epochs given go to the last stage, less the earlier ones
STAGED_EPOCHS = {"cmnet": ("joint_epochs", "warmup_epochs")}
REGIMES = {"dense": None, "one": 1}


def _run(config_files: list[Path], overrides: dict, log: Path) -> None:
    override_file = log.with_suffix(".override.json")
    override_file.write_text(json.dumps(overrides, indent=1))
    files = [str(f) for f in config_files] + [str(override_file)]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(files).replace('"', "'")]
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed, see {log}")


def fused_label_dice(datalist: Path, fusion: str, num_classes: int = 2) -> float:
    """Mean foreground Dice (empty-vs-empty = 1) of the fused training labels against the truth."""
    import torch

    from multirater_monai.data import load_multirater_datalist
    from multirater_monai.metrics import compute_hard_dice
    from multirater_monai.transforms import FuseRatersd, LoadRaterLabelsd
    from monai.transforms import LoadImage

    load, fuse = LoadRaterLabelsd(num_classes=num_classes), FuseRatersd(method=fusion, num_classes=num_classes)
    load_gt = LoadImage(image_only=True)
    scores = []
    for item in load_multirater_datalist(datalist, "training", check=False):
        fused = fuse(load({"label": item["label"]}))["fused_label"]
        pred = torch.nn.functional.one_hot(fused.argmax(0), num_classes).movedim(-1, 0)[None]
        gt = torch.nn.functional.one_hot(torch.as_tensor(load_gt(item["gt"])).long(), num_classes).movedim(-1, 0)[None]
        scores.append(float(compute_hard_dice(pred, gt).mean()))
    return float(np.mean(scores))


def run_arm(arm: str, regime: str, out: Path, epochs: int, seed: int) -> dict:
    bundle, arm_overrides = ARMS[arm]
    folder = out / regime / arm
    folder.mkdir(parents=True, exist_ok=True)
    k = REGIMES[regime]
    overrides = {
        **arm_overrides,
        "bundle_root": str(ROOT / "bundles" / bundle),
        "ckpt_dir": str(folder / "models"),
        "output_dir": str(folder / "runs"),
        "eval_dir": str(folder / "eval"),
        "dataset_dir": str(out / "data" / f"synthetic_2d_{regime}"),
        "synthetic#labels_per_image": k,
        "max_epochs": epochs,
        "seed": seed,
    }
    if bundle in STAGED_EPOCHS:
        last, first = STAGED_EPOCHS[bundle]
        overrides[last] = f"$%d - @{first}" % epochs
    configs = ROOT / "bundles" / bundle / "configs"
    start = time.time()
    _run([configs / "train.json"], overrides, folder / "train.log")
    train_s = time.time() - start
    _run([configs / "train.json", configs / "evaluate.json"], overrides, folder / "evaluate.log")
    with open(folder / "eval" / "metrics.csv") as f:  # MetricsSaver: one "name,value" row per metric
        metrics = {row[0]: float(row[1]) for row in csv.reader(f) if len(row) == 2}
    result = {"arm": arm, "regime": regime, "train_s": train_s, **metrics}
    datalist = Path(overrides["dataset_dir"]) / "datalist.json"
    fusion = arm_overrides.get("fusion")
    if fusion is not None:
        result["label_dice"] = fused_label_dice(datalist, fusion)
    if fusion == "staple":
        result["cm_error"] = staple_cm_error(datalist)
    return result


def staple_cm_error(datalist: Path, section: str = "test", num_classes: int = 2) -> float:
    """CM estimation error of per-image STAPLE: its rater matrices vs the generator's true ones.

    Binary STAPLE's sensitivity p and specificity q give A = [[q, 1-p], [1-q, p]]; only raters who
    annotated the image can be estimated (the mean is over those).
    """
    import torch

    from multirater_monai.data import load_multirater_datalist
    from multirater_monai.fusion import multilabel_staple, staple
    from multirater_monai.metrics import compute_cm_error
    from multirater_monai.transforms import LoadRaterLabelsd, ToConfusionMatrixd

    load = LoadRaterLabelsd(num_classes=num_classes)
    errors = []
    for item in load_multirater_datalist(datalist, section, check=False):
        labels = load({"label": item["label"]})["label"].numpy()
        true_cm = ToConfusionMatrixd()({"true_cm": item["true_cm"]})["true_cm"]
        if num_classes == 2:
            est = staple(labels)
            p, q = est.sensitivity, est.specificity
            cm = np.stack([np.stack([q, 1 - p], -1), np.stack([1 - q, p], -1)], 1)  # (R, L, L)
        else:
            cm = multilabel_staple(labels, num_classes).confusion_matrices
        mask = torch.as_tensor((labels != -1).reshape(labels.shape[0], -1).any(1))[None]
        err = compute_cm_error(torch.as_tensor(cm, dtype=torch.float32)[None], true_cm[None], mask)
        errors.extend(v for v in err[0].tolist() if not np.isnan(v))
    return float(np.mean(errors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", default=["mean", "majority", "staple", "cmnet_pixel"], choices=sorted(ARMS))
    parser.add_argument("--regimes", nargs="+", default=["dense", "one"], choices=sorted(REGIMES))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "compare")
    args = parser.parse_args()
    results = []
    for regime in args.regimes:
        for arm in args.arms:
            print(f"[compare] {regime} / {arm} ...", flush=True)
            results.append(run_arm(arm, regime, args.out, args.epochs, args.seed))
    results_file = args.out / "results.json"
    previous = json.loads(results_file.read_text()) if results_file.is_file() else []
    done = {(r["regime"], r["arm"]) for r in results}
    merged = [r for r in previous if (r["regime"], r["arm"]) not in done] + results
    results_file.write_text(json.dumps(merged, indent=1))
    results = merged
    cols = ["dice", "miou", "soft_dice", "ged", "cm_error", "label_dice", "train_s"]
    print(f"\n{'regime':<8}{'arm':<12}" + "".join(f"{c:>11}" for c in cols))
    for r in results:
        cells = "".join(f"{r[c]:>11.3f}" if isinstance(r.get(c), float) else f"{'-':>11}" for c in cols)
        print(f"{r['regime']:<8}{r['arm']:<12}{cells}")
    print(f"epochs={args.epochs} seed={args.seed}; test split of the synthetic 2D set; outputs in {args.out}")


if __name__ == "__main__":
    main()
