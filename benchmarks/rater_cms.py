"""Estimated vs true confusion matrices of each rater, averaged over the test images, for a trained CM-Net.

    python benchmarks/rater_cms.py benchmarks/results/leaderboard/runs/default/cmnet_pixel/seed0-e60/models/model.pt \
        benchmarks/results/leaderboard/data/default/datalist.json --cm_type pixel

``model`` is a bundle's ``models/model.pt`` or a training checkpoint (``models/checkpoints/*.pt``: the
network as it was at the end of an epoch, e.g. the last one, where the best model is an earlier one).

Prints, per rater, p(says foreground | background) and p(says foreground | foreground) as the
network estimates them (its pixel-wise CMs averaged over the voxels of each true class) and as the
generator recorded them, and the consensus' false positives and negatives per image.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from monai.transforms import LoadImage, NormalizeIntensity

from multirater_monai.data import load_multirater_datalist, read_datalist
from multirater_monai.networks import CMNet
from multirater_monai.transforms import ToConfusionMatrixd
from multirater_monai.transforms.confusion import image_confusion_matrix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("datalist")
    parser.add_argument("--cm_type", default="pixel")
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--section", default="test")
    args = parser.parse_args()

    info = read_datalist(args.datalist)
    raters, classes, dims = info["raters"], info["num_classes"], info["spatial_dims"]
    net = CMNet(dims, 1, classes, len(raters), cm_type=args.cm_type, rank=args.rank)
    state = torch.load(args.model, map_location="cpu", weights_only=True)
    net.load_state_dict(state.get("network", state))  # models/model.pt, or a training checkpoint
    net.eval()
    load = LoadImage(image_only=True, ensure_channel_first=True)
    normalise = NormalizeIntensity(channel_wise=True)
    estimated, true, fp, fn, size = [], [], [], [], []
    for item in load_multirater_datalist(args.datalist, args.section, check=False):
        image = torch.as_tensor(np.asarray(normalise(load(item["image"]))))[None]
        truth = torch.as_tensor(np.asarray(load(item["gt"])))[0].long()
        with torch.no_grad():
            out = net.forward_all(image)
        estimated.append(image_confusion_matrix(out["cm"][0], truth).numpy())
        true.append(ToConfusionMatrixd()({"true_cm": item["true_cm"]})["true_cm"].numpy())
        pred = out["probs"][0].argmax(0)
        fp.append(int(((pred > 0) & (truth == 0)).sum()))
        fn.append(int(((pred == 0) & (truth > 0)).sum()))
        size.append(int((truth > 0).sum()))
    est, tru = np.nanmean(estimated, 0), np.nanmean(true, 0)
    print(f"{'rater':<8}{'est p(1|0)':>12}{'true p(1|0)':>12}{'est p(1|1)':>12}{'true p(1|1)':>12}")
    for r, name in enumerate(raters):
        print(f"{name:<8}{est[r, 1, 0]:>12.3f}{tru[r, 1, 0]:>12.3f}{est[r, 1, 1]:>12.3f}{tru[r, 1, 1]:>12.3f}")
    print(f"consensus: {np.mean(fp):.1f} false positives, {np.mean(fn):.1f} false negatives per image "
          f"(objects {np.mean(size):.1f} voxels); {len(size)} images of '{args.section}'")


if __name__ == "__main__":
    main()
