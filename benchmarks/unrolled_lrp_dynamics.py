"""Training dynamics of unrolled LRP: each loss term, the heatmaps' magnitude and validation Dice, every few steps.

Builds everything from the bundle's own ``train.json`` (network, data, losses, semi-supervised datalist and
sampler) with ``--set id=value`` overrides, then runs ``--pretrain`` optimiser steps of the classification loss
and ``--joint`` steps of the bundle's combined loss, printing one line every ``--every`` steps:

    step  stage  loss  segmentation  classification  |heatmap|  |score|  val_dice

``|heatmap|`` is the mean absolute heatmap logit of the last batch (the softmax needs magnitudes of order 1
to separate classes), ``|score|`` the mean absolute class score, ``val_dice`` the mean foreground Dice of the
arg-max on the validation split against the truth. It is the measurement behind "Training dynamics" in
``bundles/unrolled_lrp/docs/README.md``:

    python benchmarks/unrolled_lrp_dynamics.py --pretrain 150 --joint 2850 --every 250 --set heatmap_scale=sum
    python benchmarks/unrolled_lrp_dynamics.py --pretrain 130 --joint 520 --every 65
    python benchmarks/unrolled_lrp_dynamics.py --pretrain 130 --joint 520 --every 65 --set multiply_input=False
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from multirater_monai.bundle_utils import parse_overrides

ROOT = Path(__file__).resolve().parents[1]


def foreground_dice(pred: torch.Tensor, truth: torch.Tensor, num_classes: int) -> float:
    """Mean Dice over the foreground classes present in the prediction or the truth ((*S) label maps); 1 if none."""
    scores = []
    for c in range(1, num_classes):
        a, g = pred == c, truth == c
        total = int(a.sum() + g.sum())
        if total:
            scores.append(2.0 * float((a & g).sum()) / total)
    return sum(scores) / len(scores) if scores else 1.0


def main(argv: list[str] | None = None) -> list[dict]:
    from monai.bundle import ConfigParser

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "bundles" / "unrolled_lrp" / "configs" / "train.json"))
    parser.add_argument("--pretrain", type=int, default=150, help="optimiser steps of the classification loss")
    parser.add_argument("--joint", type=int, default=400, help="optimiser steps of the combined loss")
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="ID=VALUE", help="config overrides")
    args = parser.parse_args(argv)

    config = ConfigParser()
    config.read_config(args.config)
    config["mlflow_enabled"] = False
    config["bundle_root"] = str(Path(args.config).resolve().parents[1])
    config.update(parse_overrides(args.set))
    torch.manual_seed(args.seed)
    loader = config.get_parsed_content("train#dataloader")
    val_loader = config.get_parsed_content("validate#dataloader")
    network = config.get_parsed_content("network")
    combined = config.get_parsed_content("loss")
    classification = config.get_parsed_content("classification_loss")
    optimizer = config.get_parsed_content("optimizer")
    device = config.get_parsed_content("device")
    num_classes = int(config.get_parsed_content("num_classes"))

    def validate() -> float:
        network.eval()
        scores = []
        with torch.no_grad():
            for batch in val_loader:
                pred = network(batch["image"].to(device)).argmax(1).cpu()
                truth = batch["gt"][:, 0].long()
                scores += [foreground_dice(p, t, num_classes) for p, t in zip(pred, truth)]
        network.train()
        return sum(scores) / len(scores)

    print(f"{'step':>6} {'stage':>8} {'loss':>8} {'segment.':>9} {'classif.':>9} {'|heatmap|':>10} {'|score|':>9} {'val_dice':>9}")
    rows, step, start = [], 0, time.time()
    network.train()
    while step < args.pretrain + args.joint:
        for batch in loader:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            outputs = network.forward_all(batch["image"])
            pretraining = step < args.pretrain
            loss = classification(outputs, batch) if pretraining else combined(outputs, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step % args.every == 0 or step == args.pretrain + args.joint:
                terms = {} if pretraining else {k: float(v) for k, v in combined.last_terms.items()}
                row = {
                    "step": step,
                    "stage": "pretrain" if pretraining else "joint",
                    "loss": loss.item(),
                    "segmentation": terms.get("segmentation", float("nan")),
                    "classification": terms.get("classification", loss.item() if pretraining else float("nan")),
                    "heatmap": float(outputs["logits"].detach().abs().mean()),
                    "score": float(outputs["class_logits"].detach().abs().mean()),
                    "val_dice": validate(),
                }
                rows.append(row)
                print(
                    f"{row['step']:>6} {row['stage']:>8} {row['loss']:>8.4f} {row['segmentation']:>9.4f} "
                    f"{row['classification']:>9.4f} {row['heatmap']:>10.2e} {row['score']:>9.2e} {row['val_dice']:>9.3f}",
                    flush=True,
                )
            if step >= args.pretrain + args.joint:
                break
    print(f"{time.time() - start:.0f} s, {step} steps, overrides {args.set or 'none'}")
    return rows


if __name__ == "__main__":
    main()
