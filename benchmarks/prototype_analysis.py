"""Interpretability figures of trained ScaleProtoSeg runs, on the test split: prototypes in use per class after the
projection (stage 1) and after grouping and thresholding (stage 2), group overlap, per-scale activation statistics
(the paper's Figure 3) and consistency / stability on object parts (``multirater_monai.metrics.prototypes``).

    python benchmarks/prototype_analysis.py --runs <run folder> [<run folder> ...] [--out analysis.json]

A run folder holds ``models/model.pt`` and ``models/projected.pt`` (``multirater benchmark`` run folders do, under
``runs/<suite>/scaleprotoseg/seed<k>-e<epochs>``); ``--datalist`` is the suite's (its test split is analysed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, NormalizeIntensityd

from multirater_monai.data import load_multirater_datalist
from multirater_monai.metrics.prototypes import (
    PART_NAMES,
    activation_components,
    group_overlap,
    object_parts,
    part_presence,
    prototype_consistency,
    prototype_stability,
    prototypes_in_use,
)

ROOT = Path(__file__).resolve().parents[1]
QUANTILES = (0.8, 0.9, 0.99)


def build_network(config: Path, overrides: dict) -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config(str(config))
    parser.update(overrides)
    return parser.get_parsed_content("network_def")


def analyse(net: torch.nn.Module, items: list[dict], noise: float = 0.2, seed: int = 0) -> dict:
    """The figures of one model on ``items`` (dicts with ``image`` (C, *S) and ``gt`` (1, *S))."""
    net.eval()
    owner = net.prototype_class()
    scale = net.prototype_scale()
    active = net.used_prototypes().numpy() & (owner.numpy() > 0)
    generator = torch.Generator().manual_seed(seed)
    inter = union = 0.0
    comps = {q: [[] for _ in range(net.num_scales)] for q in QUANTILES}
    areas = {q: [[] for _ in range(net.num_scales)] for q in QUANTILES}
    clean_hits, noisy_hits = [], []
    with torch.no_grad():
        for item in items:
            image, truth = item["image"][None].float(), item["gt"][0].long()
            out = net.forward_all(image)
            act, groups = out["activations"][0], out["groups"][0]
            present = [c for c in torch.unique(truth).tolist() if c > 0]
            i, u = group_overlap(groups, net.num_classes, present)
            inter, union = inter + i, union + u
            for q, (count, area) in activation_components(act[torch.from_numpy(active)], QUANTILES).items():
                for s in range(net.num_scales):
                    sel = (scale[torch.from_numpy(active)] == s).numpy()
                    comps[q][s] += count[sel].tolist()
                    areas[q][s] += area[sel].tolist()
            parts = object_parts(truth.numpy())
            clean_hits.append(part_presence(act, owner, truth, parts))
            noisy = image + noise * torch.randn(image.shape, generator=generator)
            noisy_hits.append(part_presence(net.forward_all(noisy)["activations"][0], owner, truth, parts))
    clean, noisy_arr = np.stack(clean_hits), np.stack(noisy_hits)
    return {
        "prototypes_in_use": prototypes_in_use(net),
        "group_overlap_iou": inter / union if union else float("nan"),
        "components": {str(q): [float(np.mean(v)) if v else float("nan") for v in comps[q]] for q in QUANTILES},
        "component_area": {str(q): [float(np.mean(v)) if v else float("nan") for v in areas[q]] for q in QUANTILES},
        "consistency": prototype_consistency(clean, active),
        "stability": prototype_stability(clean, noisy_arr, active),
        "part_presence": {name: float(np.nanmean(clean[:, active, k])) for k, name in enumerate(PART_NAMES)},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", type=Path, required=True, help="run folders holding models/model.pt and models/projected.pt")
    p.add_argument("--datalist", type=Path, required=True, help="the suite's datalist (its test split is analysed)")
    p.add_argument("--config", type=Path, default=ROOT / "bundles" / "scaleprotoseg" / "configs" / "train.json")
    p.add_argument("--num-classes", type=int, default=4)
    p.add_argument("--num-raters", type=int, default=5)
    p.add_argument("--out", type=Path, help="JSON file for every figure")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    loader = Compose([LoadImaged(keys=["image", "gt"], image_only=True), EnsureChannelFirstd(keys=["image", "gt"]),
                      NormalizeIntensityd(keys="image", channel_wise=True)])
    test = load_multirater_datalist(str(args.datalist), "test", num_raters=args.num_raters, num_classes=args.num_classes)
    items = [loader({"image": it["image"], "gt": it["gt"]}) for it in test]
    overrides = {"num_classes": args.num_classes, "num_raters": args.num_raters}
    results: dict = {}
    for run in args.runs:
        for stage, file in (("stage 1 (projected)", "projected.pt"), ("stage 2 (grouped, thresholded)", "model.pt")):
            net = build_network(args.config, overrides)
            net.load_state_dict(torch.load(run / "models" / file, map_location="cpu", weights_only=True))
            results.setdefault(stage, []).append(analyse(net, items))
    print(f"{len(args.runs)} run(s), {len(items)} test images; mean ± std over runs")
    print("| model | prototypes in use (fg classes) | group overlap IoU | consistency | stability |")
    print("| --- | --- | --- | --- | --- |")
    for stage, rows in results.items():
        used = [sum(r["prototypes_in_use"][1:]) for r in rows]
        def ms(values):
            return f"{np.nanmean(values):.3f} ± {np.nanstd(values):.3f}"
        print(f"| {stage} | {np.mean(used):.1f} ± {np.std(used):.1f} | {ms([r['group_overlap_iou'] for r in rows])} | "
              f"{ms([r['consistency'] for r in rows])} | {ms([r['stability'] for r in rows])} |")
    print("\nper-scale activation components (stage 1, mean over runs): count / mean area (pixels)")
    rows = results["stage 1 (projected)"]
    print("| quantile | " + " | ".join(f"scale {s}" for s in range(len(rows[0]["components"]["0.8"]))) + " |")
    print("| --- |" + " --- |" * len(rows[0]["components"]["0.8"]))
    for q in QUANTILES:
        cells = []
        for s in range(len(rows[0]["components"][str(q)])):
            cells.append(f"{np.mean([r['components'][str(q)][s] for r in rows]):.1f} / {np.mean([r['component_area'][str(q)][s] for r in rows]):.0f}")
        print(f"| {q} | " + " | ".join(cells) + " |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
