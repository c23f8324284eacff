"""Where a CM-Net train step goes, and what channels-last memory and ``torch.compile`` change, beside the U-Net.

The network and loss are built from the bundle's own ``train.json`` (``3d.json`` merged over it for 3D) with the
given overrides; the batch is random at the bundle's batch and patch size, the rater labels random. In one
process, with ``--threads`` threads, every figure is the median of ``--repeats`` forward + backward passes:

- ``unet step``: MONAI's U-Net of the same channels, strides and residual units with Dice + CE on one label
  (what ``fused_unet`` trains; the reference of the ratios);
- ``trunk``: the segmentation network alone (its logits' sum);
- ``heads: hidden blocks``: the annotator heads' conv blocks on fixed trunk features;
- ``heads: matrices and A_r p``: the output layer, the column softmax and the product, on fixed hidden features
  and probabilities (what has no counterpart in a U-Net: ``R · L²`` values per pixel);
- ``cmnet step``: ``forward_train`` + ``CMNetLoss`` + backward, eager; then with the network and batch in
  channels-last memory, and with ``forward_train`` compiled by ``torch.compile`` (the U-Net compiled too, for
  the ratio: ``unet step, compiled``). Compilation itself (tens of seconds, once) is not counted.

``saved MiB`` (``cmnet step`` and ``unet step``): what autograd keeps for the backward pass of one step.

    python benchmarks/cmnet_step_breakdown.py --dims 2 3 --classes 2 4
    python benchmarks/cmnet_step_breakdown.py --dims 3 --override head_hidden=per_rater     # the paper's heads
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from multirater_monai.benchmark.cost import median_ms

ROOT = Path(__file__).resolve().parents[1]


def _saved_mib(fn) -> float:
    from multirater_monai.benchmark.cost import saved_activation_mib

    return saved_activation_mib(fn)


def build(dims: int, classes: int, overrides: dict):
    """The bundle's network, loss, batch size and patch size (``3d.json`` merged for 3D), overrides applied."""
    from monai.bundle import ConfigParser

    configs = ROOT / "bundles" / "cmnet" / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json")] + ([str(configs / "3d.json")] if dims == 3 else []))
    parser["num_classes"] = classes
    for key, value in overrides.items():
        parser[key] = value
    network = parser.get_parsed_content("network_def")
    loss = parser.get_parsed_content("loss")
    return network, loss, int(parser.get_parsed_content("batch_size")), list(parser.get_parsed_content("patch_size"))


def breakdown(dims: int, classes: int, overrides: dict, repeats: int = 5, compile_step: bool = True) -> dict:
    """Milliseconds of each piece (forward + backward) and of the whole step, as listed in the module's docstring."""
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net, loss, b, size = build(dims, classes, overrides)
    net.train()
    raters = net.num_raters
    image = torch.randn(b, 1, *size)
    labels = torch.randint(0, classes, (b, raters, *size))
    ms: dict[str, float] = {}
    saved: dict[str, float] = {}

    unet = UNet(dims, 1, classes, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2, norm="batch")
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)

    def unet_step(model=unet, x=image):
        dice_ce(model(x), labels[:, :1]).backward()

    ms["unet step"] = median_ms(unet_step, repeats, warmup=2)
    saved["unet step"] = _saved_mib(unet_step)
    ms["trunk"] = median_ms(lambda: net(image).sum().backward(), repeats, warmup=2)
    head = net.annotator.head
    if hasattr(head, "hidden"):
        with torch.no_grad():
            features = net._logits_and_features(image)[1]
            hidden = head.hidden(features)
            probs = torch.softmax(net(image), 1)
        ms["heads: hidden blocks"] = median_ms(lambda: head.hidden(features).sum().backward(), repeats, warmup=2)
        h = hidden.detach().requires_grad_(True)
        p = probs.detach().requires_grad_(True)
        ms["heads: matrices and A_r p"] = median_ms(lambda: net._rater_probs_and_trace(h, p)[0].sum().backward(), repeats, warmup=2)

    def cmnet_step(model=net, x=image):
        loss(model.forward_train(x), labels).backward()

    ms["cmnet step"] = median_ms(cmnet_step, repeats, warmup=2)
    saved["cmnet step"] = _saved_mib(cmnet_step)

    channels_last = torch.channels_last if dims == 2 else torch.channels_last_3d
    net.to(memory_format=channels_last)
    image_cl = image.contiguous(memory_format=channels_last)
    ms["cmnet step, channels-last"] = median_ms(lambda: cmnet_step(net, image_cl), repeats, warmup=2)
    net.to(memory_format=torch.contiguous_format)

    if compile_step:
        # a fresh cache and static shapes per configuration: after a 2D graph, dynamo would otherwise retrace the
        # 3D one with symbolic sizes, which inductor fails to lower on CPU (torch 2.13)
        torch._dynamo.reset()
        compiled_unet = torch.compile(unet, dynamic=False)
        ms["unet step, compiled"] = median_ms(lambda: unet_step(compiled_unet), repeats, warmup=2)
        forward_train = torch.compile(net.forward_train, dynamic=False)
        ms["cmnet step, compiled"] = median_ms(lambda: loss(forward_train(image), labels).backward(), repeats, warmup=2)
    return {"dims": dims, "classes": classes, "batch": b, "patch": size, "threads": torch.get_num_threads(),
            "overrides": overrides, "ms": ms, "saved_mib": saved}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", nargs="+", type=int, default=[2, 3])
    parser.add_argument("--classes", nargs="+", type=int, default=[2, 4])
    parser.add_argument("--override", nargs="*", default=[], help="train.json keys, key=value (JSON values)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile figures")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {}
    for item in args.override:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    for dims in args.dims:
        for classes in args.classes:
            result = breakdown(dims, classes, overrides, args.repeats, not args.no_compile)
            ms, unet = result["ms"], result["ms"]["unet step"]
            print(f"{dims}D, L = {classes}: batch {result['batch']} x {result['patch']}, {result['threads']} threads, "
                  f"overrides {overrides or 'none'}")
            print(f"{'piece (forward + backward)':<34}{'ms':>9}{'x U-Net':>9}")
            for name, value in ms.items():
                reference = ms["unet step, compiled"] if name == "cmnet step, compiled" else unet
                print(f"{name:<34}{value:>9.1f}{value / reference:>9.2f}")
            s = result["saved_mib"]
            print(f"{'saved MiB: unet / cmnet step':<34}{s['unet step']:>9.1f}{s['cmnet step'] / s['unet step']:>9.2f}"
                  f"  ({s['cmnet step']:.1f})")
            print()


if __name__ == "__main__":
    main()
