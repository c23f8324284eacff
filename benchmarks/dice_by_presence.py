"""A run's test Dice split by whether each class is present in the truth of each image.

The evaluation scores an (image, class) pair whose class is absent from both the truth and the prediction as
Dice 1, and as 0 where the prediction holds any voxel of the class. On a suite where a class is absent from half
the images (``scales``), those all-or-nothing pairs can decide the ranking. This script reads the per-image,
per-class Dice that the evaluation writes (``<run>/eval/dice_raw.csv``) and the truth named by the datalist, and
prints, per run, the Dice over the pairs where the class is present and the number of absent pairs with
false positives (each costs one pair's share of the mean):

    python benchmarks/dice_by_presence.py --datalist <out>/data/scales/datalist.json \\
        --runs <out>/runs/scales/oracle/seed0-e60 <out>/runs/scales/majority/seed0-e60
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from monai.transforms import LoadImage

from multirater_monai.data import load_multirater_datalist


def present_classes(datalist: Path, num_classes: int) -> dict[str, list[bool]]:
    """File name of each test image -> whether each foreground class (1 … num_classes-1) is in its truth."""
    load = LoadImage(image_only=True)
    present = {}
    for item in load_multirater_datalist(datalist, "test", check=False, num_classes=num_classes):
        if not item.get("gt"):
            sys.exit(f"{datalist}: test item {item['image']} has no 'gt' (the truth): nothing to split by")
        truth = np.asarray(load(item["gt"]))
        present[Path(item["image"]).name] = [bool((truth == c).any()) for c in range(1, num_classes)]
    return present


def class_columns(rows: list[dict]) -> list[str]:
    """The per-class columns of a ``dice_raw.csv``, in its order: foreground labels 1, 2, …"""
    return [k for k in rows[0] if k.startswith("class")]


def split(rows: list[dict], present: dict[str, list[bool]], csv_path: Path) -> dict:
    """Dice over every pair, over the present pairs, and the false positives on absent pairs, per class column."""
    classes = class_columns(rows)
    per_class = {c: {"present": [], "absent": 0, "false_positive": 0} for c in classes}
    every = []
    for row in rows:
        name = Path(row["filename"]).name
        if name not in present or len(present[name]) != len(classes):
            sys.exit(f"{csv_path}: image {name} is not a test image of the datalist with {len(classes)} foreground classes")
        for c, is_present in zip(classes, present[name]):
            counts, dice = per_class[c], float(row[c])
            every.append(dice)
            if is_present:
                counts["present"].append(dice)
            else:
                counts["absent"] += 1
                counts["false_positive"] += dice < 1.0
    on_present = [d for counts in per_class.values() for d in counts["present"]]
    return {"dice": float(np.mean(every)), "present_dice": float(np.mean(on_present)), "present": len(on_present),
            "false_positive": sum(c["false_positive"] for c in per_class.values()),
            "absent": len(every) - len(on_present), "per_class": per_class}


def _class_cell(label: int, counts: dict) -> str:
    dice = f"{np.mean(counts['present']):.3f}" if counts["present"] else "–"
    return f"label {label}: {dice}, {counts['false_positive']} / {counts['absent']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datalist", type=Path, required=True, help="the suite's datalist.json (with 'gt')")
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="run folders holding eval/dice_raw.csv")
    args = parser.parse_args()
    if not args.datalist.is_file():
        sys.exit(f"{args.datalist}: no such file")
    tables = {}
    for run in args.runs:
        path = run / "eval" / "dice_raw.csv"
        if not path.is_file():
            sys.exit(f"{path}: no such file (evaluate the run first)")
        with open(path) as f:
            tables[run] = (list(csv.DictReader(f)), path)
    present = present_classes(args.datalist, len(class_columns(next(iter(tables.values()))[0])) + 1)
    print("| run | Dice | Dice where present (pairs) | absent pairs with false positives | per label: Dice where present, "
          "false positives / absent |")
    print("| --- | --- | --- | --- | --- |")
    for run, (rows, path) in tables.items():
        s = split(rows, present, path)
        classes = "; ".join(_class_cell(index + 1, v) for index, v in enumerate(s["per_class"].values()))
        print(f"| {run} | {s['dice']:.3f} | {s['present_dice']:.3f} ({s['present']}) | "
              f"{s['false_positive']} of {s['absent']} | {classes} |")


if __name__ == "__main__":
    main()
