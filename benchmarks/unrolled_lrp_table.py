"""Unrolled LRP against the U-Nets on its encoder at few pixel labels: mIoU, Dice and classification F1.

For each arm, each ``--pixel-labels`` value (a count, a fraction, or ``all``) and each seed, a fresh process
builds the bundle's own trainer from ``bundles/unrolled_lrp/configs/train.json`` (data, semi-supervised
datalist and sampler, the pre-training and joint stages, the best model by validation Dice) with the arm's
overrides, trains it, and evaluates the saved ``model.pt`` on the test split of the bundle's synthetic scenes:

- ``miou``: IoU per class with intersections and unions summed over the test images (PASCAL VOC's mIoU, the
  paper's metric), background included, averaged over the classes;
- ``dice``: foreground Dice per image and class present in the prediction or the truth, averaged;
- ``f1_before`` / ``f1_after``: micro F1 of class presence (foreground classes; present when the sigmoid of
  the class score is at least 0.5) against the classes of the truth, after the classification pre-training
  and for ``model.pt``. The plain U-Net's classifier head is not trained after pre-training, so its
  ``f1_after`` is the pre-trained classifier's.

The arms are the bundle's benchmark arms (``configs/metadata.json``) without their ``num_classes`` override,
so they run on the bundle's own four-class scenes. Every result is a JSON file under ``--out``
(``<arm>_<labels>_s<seed>.json``); a finished one is not trained again. The table (mean ± std over seeds) is
printed and written to ``--out/table.md``. The measurement behind ``bundles/unrolled_lrp/docs/README.md``:

    python benchmarks/unrolled_lrp_table.py --jobs 2
    python benchmarks/unrolled_lrp_table.py --arms unrolled_lrp unrolled_lrp_ws_ae --pixel-labels 3 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from multirater_monai.bundle_utils import parse_overrides

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "unrolled_lrp"
DEFAULT_ARMS = ["unrolled_lrp", "unrolled_lrp_unet", "unrolled_lrp_multitask_unet"]


def arm_overrides(arm: str) -> dict:
    """The overrides of a benchmark arm of the bundle's metadata, without its ``num_classes``."""
    arms = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["benchmark_arms"]
    if arm not in arms:
        raise SystemExit(f"{BUNDLE / 'configs' / 'metadata.json'}: no benchmark arm {arm!r}; arms: {sorted(arms)}")
    return {k: v for k, v in arms[arm]["overrides"].items() if k != "num_classes"}


def labels_value(text: str):
    """``all`` -> None (every image keeps its pixel labels), else the count or fraction."""
    return None if text == "all" else json.loads(text)


def evaluate(network, loader, num_classes: int, device) -> dict:
    """Dataset mIoU, mean foreground Dice and micro F1 of class presence of ``network`` on ``loader``."""
    import torch

    inter = torch.zeros(num_classes, dtype=torch.float64)
    union = torch.zeros(num_classes, dtype=torch.float64)
    dice, tp, fp, fn = [], 0, 0, 0
    network.eval()
    with torch.no_grad():
        for batch in loader:
            out = network.forward_all(batch["image"].to(device))
            pred = out["logits"].argmax(1).cpu()
            truth = batch["gt"][:, 0].long()
            present = torch.sigmoid(out["class_logits"]).cpu()[:, 1:] >= 0.5
            for p, t, guess in zip(pred, truth, present):
                actual = torch.tensor([bool((t == c).any()) for c in range(1, num_classes)])
                tp += int((guess & actual).sum())
                fp += int((guess & ~actual).sum())
                fn += int((~guess & actual).sum())
                for c in range(num_classes):
                    a, g = p == c, t == c
                    inter[c] += float((a & g).sum())
                    union[c] += float((a | g).sum())
                    if c and int(a.sum() + g.sum()):
                        dice.append(2.0 * float((a & g).sum()) / float(a.sum() + g.sum()))
    network.train()
    iou = inter / union.clamp(min=1)
    return {
        "miou": float(iou.mean()),
        "iou": [float(v) for v in iou],
        "dice": sum(dice) / len(dice) if dice else 1.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
    }


def run_job(arm: str, labels: str, seed: int, out: Path, data: Path, overrides: list[str]) -> dict:
    """Train one (arm, pixel labels, seed) with the bundle's trainer and evaluate it (in this process)."""
    import torch
    from ignite.engine import Events
    from monai.bundle import ConfigParser

    workdir = out / "runs" / f"{arm}_{labels}_s{seed}"
    settings = {
        **arm_overrides(arm),
        "bundle_root": str(workdir),
        "dataset_dir": str(data),
        "mlflow_enabled": False,
        "seed": seed,
        "pixel_labels": labels_value(labels),
        "overwrite_model": True,
        **parse_overrides(overrides),
    }

    def parser(files: list[Path]) -> ConfigParser:
        config = ConfigParser()
        config.read_config([str(f) for f in files])
        config.update(settings)
        return config

    train = parser([BUNDLE / "configs" / "train.json"])
    test = parser([BUNDLE / "configs" / "train.json", BUNDLE / "configs" / "evaluate.json"])
    for i in range(len(train.get("initialize"))):
        train.get_parsed_content(f"initialize#{i}")
    trainer = train.get_parsed_content("train#trainer")
    network = train.get_parsed_content("network")
    device = train.get_parsed_content("device")
    num_classes = int(train.get_parsed_content("num_classes"))
    loader = test.get_parsed_content("validate#dataloader")
    pretrain_epochs = int(train.get_parsed_content("stages#0#epochs"))
    before: dict = {}
    if pretrain_epochs:
        trainer.add_event_handler(
            Events.EPOCH_COMPLETED(once=pretrain_epochs), lambda _: before.update(evaluate(network, loader, num_classes, device))
        )
    start = time.time()
    trainer.run()
    seconds = time.time() - start
    network.load_state_dict(torch.load(Path(workdir) / "models" / "model.pt", map_location=device, weights_only=True))
    after = evaluate(network, loader, num_classes, device)
    return {
        "arm": arm, "pixel_labels": labels, "seed": seed, "overrides": overrides,
        "labelled_images": sum(bool(i.get("pixel_labelled", True)) for i in train.get_parsed_content("train_datalist")),
        "miou": after["miou"], "iou": after["iou"], "dice": after["dice"],
        "f1_before": before.get("f1"), "f1_after": after["f1"], "train_seconds": round(seconds, 1),
    }


def prepare_data(data: Path, overrides: list[str]) -> None:
    """Generate the bundle's synthetic scenes under ``data`` with the ``--set`` overrides (nothing when they are there)."""
    from monai.bundle import ConfigParser

    config = ConfigParser()
    config.read_config(str(BUNDLE / "configs" / "train.json"))
    config.update({"dataset_dir": str(data), "bundle_root": str(BUNDLE), **parse_overrides(overrides)})
    config.get_parsed_content("datalist")


def table(results: list[dict], arms: list[str], labels: list[str]) -> str:
    def cell(values: list[float]) -> str:
        values = [v for v in values if v is not None]
        if not values:
            return "n/a"
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.3f} ± {std:.3f}"

    lines = [
        "| arm | pixel labels (images) | seeds | mIoU | Dice | F1 before | F1 after |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label in labels:
        for arm in arms:
            rows = [r for r in results if r["arm"] == arm and r["pixel_labels"] == label]
            if not rows:
                continue
            count = rows[0]["labelled_images"]
            lines.append(
                f"| {arm} | {label} ({count}) | {len(rows)} | {cell([r['miou'] for r in rows])} | {cell([r['dice'] for r in rows])} "
                f"| {cell([r['f1_before'] for r in rows])} | {cell([r['f1_after'] for r in rows])} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", default=DEFAULT_ARMS)
    parser.add_argument("--pixel-labels", nargs="+", default=["3", "10", "50", "all"], help="counts, fractions or 'all'")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="trainings at once (threads are shared out)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "unrolled_lrp_table")
    parser.add_argument("--data", type=Path, default=None, help="the synthetic scenes (default: under --out)")
    parser.add_argument("--set", nargs="*", default=[], metavar="ID=VALUE", help="config overrides for every arm")
    parser.add_argument("--report-only", action="store_true", help="print the table of the finished runs, train nothing")
    parser.add_argument("--job", nargs=3, metavar=("ARM", "LABELS", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    data = args.data or args.out / "data"
    args.out.mkdir(parents=True, exist_ok=True)
    if args.job:
        arm, labels, seed = args.job
        result = run_job(arm, labels, int(seed), args.out, data, args.set)
        (args.out / f"{arm}_{labels}_s{seed}.json").write_text(json.dumps(result, indent=1))
        return [result]
    for arm in args.arms:
        arm_overrides(arm)
    jobs = [(a, lab, s) for lab in args.pixel_labels for s in args.seeds for a in args.arms]
    todo = [] if args.report_only else [j for j in jobs if not (args.out / f"{j[0]}_{j[1]}_s{j[2]}.json").exists()]
    threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    start = time.time()
    if not args.report_only:
        print(f"{len(jobs)} runs, {len(jobs) - len(todo)} done before, {args.jobs} at once, {threads} thread(s) each", flush=True)

    def launch(job: tuple[str, str, int]) -> None:
        arm, labels, seed = job
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        command = [sys.executable, __file__, "--job", arm, labels, str(seed), "--out", str(args.out), "--data", str(data)]
        if args.set:
            command += ["--set", *args.set]
        log = args.out / f"{arm}_{labels}_s{seed}.log"
        with open(log, "w") as handle:
            code = subprocess.call(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
        state = "done" if code == 0 else f"FAILED (exit {code}, see {log})"
        print(f"[{time.time() - start:6.0f} s] {arm} pixel_labels={labels} seed={seed}: {state}", flush=True)

    if todo:
        prepare_data(data, args.set)  # once, before the parallel jobs read it
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            list(pool.map(launch, todo))
    results = [json.loads((args.out / f"{a}_{lab}_s{s}.json").read_text()) for a, lab, s in jobs if (args.out / f"{a}_{lab}_s{s}.json").exists()]
    text = table(results, args.arms, args.pixel_labels)
    (args.out / "table.md").write_text(text + "\n")
    print(text)
    return results


if __name__ == "__main__":
    main()
