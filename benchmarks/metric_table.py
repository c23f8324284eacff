"""Any metrics of finished ``multirater benchmark`` runs as a Markdown table, mean ± std over seeds.

The leaderboard shows the metrics every arm shares; a bundle's docs often need its own too (MrPrism's
Dice and soft Dice of every pass, ``dice_rec0`` …). This reads them from the benchmark's ``results.json``:

    python benchmarks/metric_table.py --results benchmarks/results/mrprism_v2/results.json --suite default \\
        --epochs 30 --arms mean majority staple cmnet_pixel mrprism mrprism_noshuffle \\
        --metrics dice soft_dice ged rater_dice
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def cell(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True, help="the benchmark's results.json")
    parser.add_argument("--suite", required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--arms", nargs="+", required=True)
    parser.add_argument("--metrics", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: every finished seed")
    args = parser.parse_args()
    if not args.results.is_file():
        sys.exit(f"{args.results}: no such file")
    runs = json.loads(args.results.read_text())["runs"].values()
    print("| arm | seeds | " + " | ".join(args.metrics) + " |")
    print("| --- | --- |" + " --- |" * len(args.metrics))
    for arm in args.arms:
        done = [r for r in runs if r.get("suite") == args.suite and r.get("arm") == arm and r.get("status") == "done"
                and r.get("epochs") == args.epochs and (args.seeds is None or r.get("seed") in args.seeds)]
        seeds = sorted(r["seed"] for r in done)
        cells = [cell([float(r[m]) for r in done if isinstance(r.get(m), (int, float))]) for m in args.metrics]
        print(f"| {arm} | {' '.join(map(str, seeds)) or '–'} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
