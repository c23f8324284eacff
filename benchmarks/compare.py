"""Train and evaluate methods on the same synthetic data, over several seeds, and print one table.

Each *arm* is a bundle with config overrides: a name of :data:`ARMS` (``majority``, ``cmnet_pixel``,
...) or a spec ``bundle:key=value,key=value`` (``cmnet:trace_weight=0.4``). Every (arm, seed) is
trained with ``python -m monai.bundle run`` (train.json), then evaluated on the test split
(train.json + evaluate.json), with its outputs under ``<out>/<panel>/<regime>/<arm>/seed<n>/`` (the arm's name with ``#``, ``:``, brackets... as ``_``); the
table is read back from each run's ``eval/metrics.csv`` and gives mean ± standard deviation over
the seeds (the seed of training: the data are the same for every seed).

Data: the synthetic 2D generator (200 / 40 / 40 images of 64×64, data seed 0) with a rater
*panel* (:data:`PANELS`; ``default`` is the issue's protocol: good, over, under, wrong, blank;
``lesion`` is one small lesion per image with its own readers and 40 / 100 validation / test images)
in two *regimes*: ``dense`` (every rater on every image) and ``one`` (one label per image);
``--num-train N`` sets the number of training images (results kept as panel ``<panel>-n<N>``).

The ``oracle`` arm trains the baseline U-Net on the truth itself: the ceiling of what any method can
reach with this network on this data. ``label Dice`` is the Dice of the fused training labels
themselves against the truth (what the baseline is asked to learn); ``CM error`` of the STAPLE arm
is STAPLE's own estimate of the raters' matrices against the generator's.

    python benchmarks/compare.py --arms mean majority staple oracle cmnet_pixel --regimes dense one --epochs 60
    python benchmarks/compare.py --arms cmnet:trace_weight=0.4 --seeds 0 1 2 --jobs 3
    python benchmarks/compare.py --panels lesion --num-train 16 --regimes dense --epochs 400 --arms majority cmnet_pixel

Results accumulate in ``<out>/results.json`` (a run already there is not run again unless
``--rerun``), so a long comparison can be run in parts and the table printed from all of them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from multirater_monai.bundle_utils import parse_bundle_spec
from multirater_monai.data import LESION_RATERS

ROOT = Path(__file__).resolve().parents[1]

# arm name -> (bundle, overrides); the oracle arm is fused_unet trained on the truth (see ORACLE)
ARMS: dict[str, tuple[str, dict]] = {
    "mean": ("fused_unet", {"fusion": "mean"}),
    "majority": ("fused_unet", {"fusion": "majority"}),
    "staple": ("fused_unet", {"fusion": "staple"}),
    "oracle": ("fused_unet", {"fusion": "majority"}),
    "cmnet_pixel": ("cmnet", {"cm_type": "pixel"}),
    "cmnet_pixel_notrace": ("cmnet", {"cm_type": "pixel", "trace_weight": 0.0}),
    "cmnet_global": ("cmnet", {"cm_type": "global"}),
    "cmnet_lowrank": ("cmnet", {"cm_type": "low_rank", "rank": 1}),
    "cmnet_separate": ("cmnet", {"cm_type": "pixel", "shared_trunk": False}),
    "cmnet_nowarmup": ("cmnet", {"cm_type": "pixel", "warmup_epochs": 0}),
    # cmnet 0.2.0: the class-balanced likelihood for the whole run, not annealed into the paper's
    "cmnet_pixel_constant_balance": ("cmnet", {"cm_type": "pixel", "class_balance_iterations": 10**9}),
    "cmnet_global_constant_balance": ("cmnet", {"cm_type": "global", "class_balance_iterations": 10**9}),
    "cmnet_lowrank_constant_balance": ("cmnet", {"cm_type": "low_rank", "rank": 1, "class_balance_iterations": 10**9}),
}
ORACLE = "oracle"
REGIMES = {"dense": None, "one": 1}
PANELS: dict[str, dict] = {
    # the protocol (CM-Net paper, appendix A.1): errors of opposite signs, majority vote nearly unbiased
    "default": {"raters": ["good", "over", "under", "wrong", "blank"]},
    # three of five raters over-segment: the majority vote and STAPLE inherit their bias
    "biased": {"raters": ["good", "over", "over+over", "wrong", "under"]},
    # one small lesion per image (0.2-1 % of the pixels, among bright vessels), four readers one of whom
    # misses half of the lesions: the regime of lung-nodule crops; few training images with --num-train
    "lesion": {"raters": list(LESION_RATERS), "layout": "lesion", "num_val": 40, "num_test": 100},
}
"""Synthetic data of each panel: the generator's arguments (raters, and layout and split sizes where they
differ from the default 2D set)."""
METRICS = ["dice", "miou", "soft_dice", "ged", "cm_error"]
_LOCK = threading.Lock()


def parse_arm(arm: str) -> tuple[str, dict]:
    """An arm name of :data:`ARMS`, or ``"bundle:key=value,..."`` (values read as JSON where they parse).

    ``"cmnet:network_def#channels=[32,64,128,256],trace_weight=0.1"`` -> ``("cmnet", {"network_def#channels":
    [32, 64, 128, 256], "trace_weight": 0.1})``.
    """
    if arm in ARMS:
        return ARMS[arm]
    if ":" not in arm or not (ROOT / "bundles" / arm.partition(":")[0] / "configs" / "train.json").is_file():
        raise ValueError(f"unknown arm {arm!r}: not one of {sorted(ARMS)} and not 'bundle:key=value,...'.")
    return parse_bundle_spec(arm)


def arm_folder_name(arm: str) -> str:
    """A folder name for an arm: ``#``, ``/``, brackets and the like (which MONAI's config parser or the file
    system read as syntax) become ``_``."""
    return re.sub(r"[^\w.=,+-]", "_", arm)


def _run(config_files: list[Path], overrides: dict, log: Path, threads: int) -> None:
    override_file = log.with_suffix(".override.json")
    override_file.write_text(json.dumps(overrides, indent=1))
    files = [str(f) for f in config_files] + [str(override_file)]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(files).replace('"', "'")]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed, see {log}")


def suite_name(panel: str, num_train: int | None) -> str:
    """The name a panel's runs are kept under: the panel, with its training-set size when one is given."""
    return panel if num_train is None else f"{panel}-n{num_train}"


def synthetic_arguments(panel: str, regime: str, num_train: int | None) -> dict:
    """The synthetic generator's arguments of a panel, regime and training-set size."""
    args = {**PANELS[panel], "labels_per_image": REGIMES[regime]}
    if num_train is not None:
        args["num_train"] = num_train
    return args


def dataset_dir(out: Path, suite: str, regime: str) -> Path:
    return out / "data" / f"synthetic_2d_{suite}_{regime}"


def prepare_data(out: Path, panel: str, regime: str, num_train: int | None = None) -> Path:
    """Generate the synthetic set of a panel and regime (once) and an oracle datalist whose only rater is the truth."""
    from multirater_monai.data import ensure_synthetic_dataset, read_datalist

    datalist = ensure_synthetic_dataset(
        dataset_dir(out, suite_name(panel, num_train), regime), **synthetic_arguments(panel, regime, num_train)
    )
    content = read_datalist(datalist)
    folder = datalist.parent
    oracle = dict(content, raters=["truth"], labels_per_image=None)
    for split in ("training", "validation", "test"):
        oracle[split] = [
            {"image": str(folder / item["image"]), "label": [str(folder / item["gt"])], "gt": str(folder / item["gt"])}
            for item in content[split]
        ]
    (folder.parent / f"{folder.name}_oracle.json").write_text(json.dumps(oracle, indent=1))
    return datalist


def run_arm(
    arm: str, panel: str, regime: str, seed: int, out: Path, epochs: int, threads: int, num_train: int | None = None
) -> dict:
    """Train and evaluate one (arm, seed); returns the test metrics."""
    bundle, arm_overrides = parse_arm(arm)
    suite = suite_name(panel, num_train)
    folder = out / suite / regime / arm_folder_name(arm) / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    data = dataset_dir(out, suite, regime)
    overrides = {
        **arm_overrides,
        "bundle_root": str(ROOT / "bundles" / bundle),
        "ckpt_dir": str(folder / "models"),
        "output_dir": str(folder / "runs"),
        "eval_dir": str(folder / "eval"),
        "dataset_dir": str(data),
        **{f"synthetic#{k}": v for k, v in synthetic_arguments(panel, regime, num_train).items()},
        "num_raters": len(PANELS[panel]["raters"]),
        "max_epochs": epochs,  # each bundle's stages take their lengths from it (see its train.json)
        "seed": seed,
        "mlflow_enabled": False,
        "overwrite_model": True,  # a rerun (--rerun) replaces the arm's earlier model
    }
    train_overrides = dict(overrides)
    if arm == ORACLE:
        train_overrides.update(datalist=str(data.parent / f"{data.name}_oracle.json"), num_raters=1)
    configs = ROOT / "bundles" / bundle / "configs"
    start = time.time()
    _run([configs / "train.json"], train_overrides, folder / "train.log", threads)
    train_s = time.time() - start
    _run([configs / "train.json", configs / "evaluate.json"], overrides, folder / "evaluate.log", threads)
    with open(folder / "eval" / "metrics.csv") as f:  # MetricsSaver: one "name,value" row per metric
        metrics = {row[0]: float(row[1]) for row in csv.reader(f) if len(row) == 2}
    return {"panel": suite, "regime": regime, "arm": arm, "seed": seed, "epochs": epochs, "train_s": train_s, **metrics}


def fused_label_dice(datalist: Path, fusion: str, num_classes: int = 2) -> float:
    """Mean foreground Dice (empty-vs-empty = 1) of the fused training labels against the truth."""
    import torch
    from monai.transforms import LoadImage

    from multirater_monai.data import load_multirater_datalist
    from multirater_monai.metrics import compute_hard_dice
    from multirater_monai.transforms import FuseRatersd, LoadRaterLabelsd

    load, fuse = LoadRaterLabelsd(num_classes=num_classes), FuseRatersd(method=fusion, num_classes=num_classes)
    load_gt = LoadImage(image_only=True)
    scores = []
    for item in load_multirater_datalist(datalist, "training", check=False):
        fused = fuse(load({"label": item["label"]}))["fused_label"]
        pred = torch.nn.functional.one_hot(fused.argmax(0), num_classes).movedim(-1, 0)[None]
        gt = torch.nn.functional.one_hot(torch.as_tensor(load_gt(item["gt"])).long(), num_classes).movedim(-1, 0)[None]
        scores.append(float(compute_hard_dice(pred, gt).mean()))
    return float(np.mean(scores))


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


def label_statistics(out: Path, suite: str, regime: str) -> dict[str, dict]:
    """Per fusion arm: Dice of its fused training labels vs the truth; for STAPLE, its CM error too."""
    datalist = dataset_dir(out, suite, regime) / "datalist.json"
    stats = {arm: {"label_dice": fused_label_dice(datalist, ARMS[arm][1]["fusion"])} for arm in ("mean", "majority", "staple")}
    stats["staple"]["cm_error"] = staple_cm_error(datalist)
    stats[ORACLE] = {"label_dice": 1.0}
    return stats


def _save(results_file: Path, new: list[dict]) -> None:
    """Merge ``new`` runs into the results file (a run is identified by panel, regime, arm, seed, epochs)."""
    def key(r):
        return r["panel"], r["regime"], r["arm"], r["seed"], r["epochs"]

    with _LOCK:
        previous = json.loads(results_file.read_text()) if results_file.is_file() else []
        done = {key(r) for r in new}
        merged = [r for r in previous if key(r) not in done] + new
        results_file.write_text(json.dumps(merged, indent=1))


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def print_table(results: list[dict], label_stats: dict, epochs: int) -> None:
    """Mean ± std over seeds of each (panel, regime, arm) run for ``epochs`` epochs, in order of appearance."""
    rows: dict[tuple, list[dict]] = {}
    for r in results:
        if r["epochs"] == epochs:
            rows.setdefault((r["panel"], r["regime"], r["arm"]), []).append(r)
    cols = METRICS + ["label_dice", "train_s"]
    print(f"\n{'panel':<13}{'regime':<7}{'arm':<28}{'seeds':>6}" + "".join(f"{c:>17}" for c in cols))
    for (panel, regime, arm), runs in rows.items():
        extra = label_stats.get((panel, regime), {}).get(arm, {})
        cells = []
        for c in cols:
            values = [r[c] for r in runs if isinstance(r.get(c), float) and not np.isnan(r[c])]
            if not values and c in extra:
                values = [extra[c]]
            cells.append(f"{_cell(values):>17}")
        print(f"{panel:<13}{regime:<7}{arm:<28}{len(runs):>6}" + "".join(cells))
    print(f"epochs={epochs}; test split of the synthetic 2D set; mean ± std over seeds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", default=["mean", "majority", "staple", "oracle", "cmnet_pixel"])
    parser.add_argument("--regimes", nargs="+", default=["dense", "one"], choices=sorted(REGIMES))
    parser.add_argument("--panels", nargs="+", default=["default"], choices=sorted(PANELS))
    parser.add_argument("--num-train", type=int, default=None, help="training images (default: the panel's)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--deadline", type=float, default=None, help="start no run after this many seconds")
    parser.add_argument("--rerun", action="store_true", help="run again what results.json already has")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "compare")
    args = parser.parse_args()
    for arm in args.arms:
        parse_arm(arm)  # fail on a bad arm before anything runs
    start = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "results.json"
    have = json.loads(results_file.read_text()) if results_file.is_file() else []
    have_keys = {(r["panel"], r["regime"], r["arm"], r["seed"], r["epochs"]) for r in have}
    label_stats = {}
    for panel in args.panels:
        suite = suite_name(panel, args.num_train)
        for regime in args.regimes:
            prepare_data(args.out, panel, regime, args.num_train)
            label_stats[(suite, regime)] = label_statistics(args.out, suite, regime)
    # seeds outermost, so that a deadline leaves complete tables of the first seeds
    todo = [
        (arm, panel, regime, seed)
        for seed in args.seeds
        for panel in args.panels
        for regime in args.regimes
        for arm in args.arms
        if args.rerun or (suite_name(panel, args.num_train), regime, arm, seed, args.epochs) not in have_keys
    ]
    threads = max(1, (os.cpu_count() or 1) // max(args.jobs, 1))
    failures = []

    def job(task):
        arm, panel, regime, seed = task
        if args.deadline is not None and time.time() - start > args.deadline:
            return
        print(f"[compare] {suite_name(panel, args.num_train)} / {regime} / {arm} / seed {seed} ...", flush=True)
        try:
            _save(results_file, [run_arm(arm, panel, regime, seed, args.out, args.epochs, threads, args.num_train)])
        except Exception as e:  # noqa: BLE001 - one failed run must not lose the others
            failures.append(f"{task}: {e}")

    with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        list(pool.map(job, todo))
    results = json.loads(results_file.read_text()) if results_file.is_file() else []
    print_table(results, label_stats, args.epochs)
    print(f"outputs in {args.out}; {time.time() - start:.0f} s")
    for failure in failures:
        print(f"FAILED {failure}")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
