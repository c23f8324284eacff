"""Estimated vs true confusion matrices of each rater, averaged over the test images, for a trained CM-Net.

    python benchmarks/rater_cms.py benchmarks/results/leaderboard/runs/default/cmnet_pixel/seed0-e60/models/model.pt \
        benchmarks/results/leaderboard/data/default/datalist.json --cm_type pixel

``model`` is a bundle's ``models/model.pt`` or a training checkpoint (``models/checkpoints/*.pt``: the
network as it was at the end of an epoch, e.g. the last one, where the best model is an earlier one). The
network is built from the CM-Net bundle's own ``network_def`` (``--bundle``; with its ``3d.json`` for 3D data),
so that its heads match the bundle's version that trained the model; the datalist sets the dimensions, classes
and raters. A model trained with other heads than the bundle's default (arm ``cmnet_paper``, or a 2D model of a
bundle before 0.7.0) needs ``--head_hidden per_rater``.

Prints, per rater, p(says foreground | background) and p(says foreground | foreground) as the
network estimates them (its pixel-wise CMs averaged over the voxels of each true class) and as the
generator recorded them, and the consensus' false positives and negatives per image.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import LoadImage, NormalizeIntensity

from multirater_monai.bundle_utils import bundle_config_files
from multirater_monai.data import load_multirater_datalist, read_datalist
from multirater_monai.transforms import ToConfusionMatrixd
from multirater_monai.transforms.confusion import image_confusion_matrix


def bundle_network(bundle: str, info: dict, cm_type: str, rank: int, head_hidden: str | None = None) -> torch.nn.Module:
    """The bundle's ``network_def`` for the dataset ``info`` (:func:`read_datalist`), on the CPU."""
    configs = Path(bundle) / "configs"
    parser = ConfigParser()
    parser.read_config([str(f) for f in bundle_config_files(configs, info["spatial_dims"])])
    parser.update({"spatial_dims": info["spatial_dims"], "num_classes": info["num_classes"],
                   "num_raters": len(info["raters"]), "cm_type": cm_type, "rank": rank})
    if head_hidden is not None:
        parser["head_hidden"] = head_hidden
    return parser.get_parsed_content("network_def", instantiate=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("datalist")
    parser.add_argument("--cm_type", default="pixel")
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--section", default="test")
    parser.add_argument("--bundle", default=str(Path(__file__).resolve().parents[1] / "bundles" / "cmnet"))
    parser.add_argument("--head_hidden", choices=["shared", "per_rater"], help="default: the bundle's")
    args = parser.parse_args()

    info = read_datalist(args.datalist)
    raters = info["raters"]
    net = bundle_network(args.bundle, info, args.cm_type, args.rank, args.head_hidden)
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
