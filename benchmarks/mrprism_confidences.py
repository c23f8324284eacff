"""What a trained MrPrism does at each pass: the weight each rater gets in the fusion, and Dice per pass.

    python benchmarks/mrprism_confidences.py --model RUN/models/model.pt --datalist DATA/datalist.json

For every test image and every pass i (Rec0 .. Rec3), with DivP's rater maps z̃ of the pass before
(pass 0: the equal initial confidence): the mean fusion weight of each rater over the image's foreground
(truth or rater union), DivP's Dice against each rater, and ConP's Dice against the truth. Prints one
table per quantity; it is how ``bundles/mrprism/docs/README.md`` diagnoses its recurrence.
"""

from __future__ import annotations

import argparse

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser

from multirater_monai.data import load_multirater_datalist
from multirater_monai.losses import rater_one_hot
from multirater_monai.transforms import LoadRaterLabelsd


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    inter, total = float((a & b).sum()), float(a.sum() + b.sum())
    return 1.0 if total == 0 else 2 * inter / total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--datalist", required=True)
    p.add_argument("--bundle", default="bundles/mrprism")
    p.add_argument("--passes", type=int, default=4)
    p.add_argument("--figure", default=None, help="also write a PNG: DivP's Dice per rater, fusion weights per pass")
    args = p.parse_args()
    parser = ConfigParser()
    parser.read_config(f"{args.bundle}/configs/inference.json")
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(args.model, map_location="cpu", weights_only=True))
    net.eval()
    items = load_multirater_datalist(args.datalist, "test", num_raters=net.num_raters, num_classes=net.num_classes)
    load = LoadRaterLabelsd("label", num_classes=net.num_classes)
    weights, rater_dice, seg_dice = [], [], []
    for item in items:
        image = torch.as_tensor(nib.load(item["image"]).get_fdata(), dtype=torch.float32)[None, None]
        image = (image - image.mean()) / image.std().clamp_min(1e-6)
        labels = torch.as_tensor(np.asarray(load({"label": item["label"]})["label"]))[None].long()
        truth = torch.as_tensor(nib.load(item["gt"]).get_fdata()).long() > 0
        with torch.no_grad():
            out = net.forward_all(image, recurrences=args.passes)
        z, valid = rater_one_hot(labels, net.num_classes)
        fg = truth | (labels[0] > 0).any(0)
        w_rows, d_rows, s_rows = [], [], []
        for i in range(args.passes):
            conf = out["initial_confidence"].exp() if i == 0 else torch.softmax(out["rater_logits"][:, i - 1], 2)
            q = (conf * z).sum(2) * valid  # (1, R, *S): each rater's fusion weight before normalisation
            q = q / q.sum(1, keepdim=True).clamp_min(1e-6)
            w_rows.append([float(q[0, r][fg].mean()) for r in range(q.shape[1])])
            raters_pred = torch.softmax(out["rater_logits"][:, i], 2).argmax(2)[0] > 0
            d_rows.append([_dice(raters_pred[r], labels[0, r] > 0) for r in range(labels.shape[1])])
            s_rows.append(_dice(out["recurrence_logits"][0, i].argmax(0) > 0, truth))
        weights.append(w_rows)
        rater_dice.append(d_rows)
        seg_dice.append(s_rows)
    names = ConfigParser.load_config_file(args.datalist).get("raters") or [f"rater{r}" for r in range(net.num_raters)]
    w, d, s = np.mean(weights, 0), np.mean(rater_dice, 0), np.mean(seg_dice, 0)
    print("fusion weight of each rater over the foreground, by the pass whose target it makes")
    print("pass  " + "  ".join(f"{n:>7}" for n in names) + "   ConP Dice vs truth")
    for i in range(args.passes):
        print(f"Rec{i}  " + "  ".join(f"{v:7.3f}" for v in w[i]) + f"   {s[i]:.3f}")
    print("DivP's Dice against each rater, by pass")
    for i in range(args.passes):
        print(f"Rec{i}  " + "  ".join(f"{v:7.3f}" for v in d[i]))
    if args.figure:
        _figure(args.figure, names, w, d, s)


def _figure(path: str, names: list[str], w: np.ndarray, d: np.ndarray, s: np.ndarray) -> None:
    """Left: DivP's Dice against each rater at the last pass (the paper's Figure 4); right: each rater's
    fusion weight by pass, with ConP's Dice against the truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.bar(range(len(names)), d[-1], color="tab:blue")
    left.set_xticks(range(len(names)), names)
    left.set_ylim(0, 1)
    left.set_ylabel("Dice")
    left.set_title(f"DivP's head vs its rater (Rec{len(d) - 1})")
    passes = [f"Rec{i}" for i in range(len(w))]
    for r, name in enumerate(names):
        right.plot(passes, w[:, r], marker="o", label=name)
    right.set_ylabel("fusion weight over the foreground")
    twin = right.twinx()
    twin.plot(passes, s, color="black", linestyle="--", marker="s", label="ConP Dice vs truth")
    twin.set_ylabel("ConP Dice vs truth")
    right.legend(fontsize=7, loc="upper left")
    twin.legend(fontsize=7, loc="lower left")
    right.set_title("the recurrence")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
