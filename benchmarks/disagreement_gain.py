"""Does a method gain most on the images where the raters disagree most? Per-image metrics binned by disagreement.

MrPrism's paper claims its lead over the fused-label baselines is largest where raters disagree most. This
script tests that claim inside one suite: it reads the per-image metric of every arm from finished
``multirater benchmark`` runs (``<runs>/<arm>/seed<S>-e<E>/eval/<metric>_raw.csv``), averages it over the
seeds, measures each test image's rater disagreement from its label files, splits the images into
equal-size bins by disagreement and prints, per bin, each arm's mean metric and the first arm's gain over
each other arm, with the rank correlation between disagreement and that gain over all images.

Disagreement of an image: the Gini impurity of the raters' votes, ``1 - Σ_k p_k²`` with ``p_k`` the fraction
of the raters who labelled the pixel that chose class ``k``, averaged over the pixels some rater marked
as foreground (0: unanimous; 0.5: an even split of two classes everywhere).

    python benchmarks/disagreement_gain.py --runs benchmarks/results/mrprism_v2/runs/default \\
        --datalist benchmarks/results/mrprism_v2/data/default/datalist.json \\
        --arms mrprism mean majority staple cmnet_pixel --seeds 0 1 2 --epochs 30
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from multirater_monai.data import load_multirater_datalist
from multirater_monai.transforms import LoadRaterLabelsd


def image_disagreement(label_files: list, num_classes: int) -> float:
    """Mean Gini impurity of the raters' votes over the pixels some rater marked foreground.

    ``label_files``: one file per rater (``None`` or -1 pixels: the rater gave no vote there), read by the
    project's rater-label loader.
    """
    labels = np.asarray(LoadRaterLabelsd("label", num_classes=num_classes)({"label": label_files})["label"])
    labels = labels.astype(np.int64)
    valid = labels >= 0
    counts = np.stack([((labels == k) & valid).sum(0) for k in range(num_classes)])  # (L, *S)
    total = valid.sum(0)
    foreground = ((labels > 0) & valid).any(0) & (total > 0)
    if not foreground.any():
        return 0.0
    p = counts[:, foreground] / total[foreground]
    return float((1.0 - (p**2).sum(0)).mean())


def read_metric(path: Path) -> dict[str, float]:
    """``filename -> mean`` from a MONAI MetricsSaver ``*_raw.csv``."""
    if not path.is_file():
        sys.exit(f"{path}: no such file (has the run been evaluated?)")
    with path.open() as f:
        return {Path(row["filename"]).name: float(row["mean"]) for row in csv.DictReader(f)}


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="a suite's runs folder: <out>/runs/<suite>")
    parser.add_argument("--datalist", type=Path, required=True, help="the suite's datalist.json")
    parser.add_argument("--arms", nargs="+", required=True, help="the first is compared with the others")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--metric", default="soft_dice", help="the *_raw.csv of each run's eval/ (default soft_dice)")
    parser.add_argument("--bins", type=int, default=3)
    args = parser.parse_args()

    num_classes = int(json.loads(args.datalist.read_text()).get("num_classes", 2))
    items = load_multirater_datalist(args.datalist, "test", num_classes=num_classes)
    names = [Path(item["image"]).name for item in items]
    disagreement = [image_disagreement(item["label"], num_classes) for item in items]
    dis = np.asarray(disagreement)

    scores = {}
    for arm in args.arms:
        per_seed = [read_metric(args.runs / arm / f"seed{s}-e{args.epochs}" / "eval" / f"{args.metric}_raw.csv")
                    for s in args.seeds]
        missing = [n for n in names if any(n not in m for m in per_seed)]
        if missing:
            sys.exit(f"{arm}: no {args.metric} for {missing[:3]} ... in its eval/{args.metric}_raw.csv")
        scores[arm] = np.asarray([np.mean([m[n] for m in per_seed]) for n in names])

    order = np.argsort(dis, kind="stable")
    bins = np.array_split(order, args.bins)
    first, others = args.arms[0], args.arms[1:]
    print(f"{args.metric} per image, mean over seeds {args.seeds}; {len(names)} test images in {args.bins} bins of "
          f"rater disagreement (Gini impurity over the raters' foreground)\n")
    header = ["disagreement"] + args.arms + [f"{first} - {o}" for o in others]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for idx in bins:
        lo, hi = dis[idx].min(), dis[idx].max()
        row = [f"{lo:.3f}-{hi:.3f} ({len(idx)})"] + [f"{scores[a][idx].mean():.3f}" for a in args.arms]
        row += [f"{(scores[first][idx] - scores[o][idx]).mean():+.3f}" for o in others]
        print("| " + " | ".join(row) + " |")
    row = ["all"] + [f"{scores[a].mean():.3f}" for a in args.arms]
    row += [f"{(scores[first] - scores[o]).mean():+.3f}" for o in others]
    print("| " + " | ".join(row) + " |")
    print()
    for o in others:
        print(f"Spearman(disagreement, {first} - {o}) = {spearman(dis, scores[first] - scores[o]):+.2f}")


if __name__ == "__main__":
    main()
