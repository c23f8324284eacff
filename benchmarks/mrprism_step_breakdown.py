"""Where a MrPrism train step goes: forward + backward of each piece, beside the U-Net of the same encoder.

The network and loss are built from the bundle's own ``train.json`` (``3d.json`` merged over it for 3D), the
batch is random at the bundle's batch and patch size. Every piece is timed alone (forward and backward of
its output's sum, median of ``--repeats``), in one process, with ``--threads`` threads:

- ``unet step``: MONAI's U-Net of the same channels, strides and residual units with Dice + CE on one label
  (what ``fused_unet`` trains; the reference of the ratios);
- ``encoder``, and per ConP level (coarsest first) the confidence ``embedding``, the ``attention`` and the
  ``up`` path, then ``divp``: one pass;
- ``loss``: the whole MrPrism loss on fixed outputs, and inside it one ``ssim`` call and the ``shuffle`` loss;
- ``mrprism step``: ``forward_all`` + loss + backward;
- ``floor``: encoder + ``T`` up paths, the convolutions the recurrence cannot avoid.

    python benchmarks/mrprism_step_breakdown.py --dims 2 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from multirater_monai.benchmark.cost import median_ms

ROOT = Path(__file__).resolve().parents[1]


def _backward(fn):
    def run() -> None:
        out = fn()
        out = out if isinstance(out, torch.Tensor) else sum(v.sum() for v in out)
        out.sum().backward()

    return run


def build(dims: int, batch_size: int | None = None, patch_size: list[int] | None = None):
    """The bundle's network, loss, batch size and patch size (``3d.json`` merged for 3D), overrides applied."""
    from monai.bundle import ConfigParser

    configs = ROOT / "bundles" / "mrprism" / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json")] + ([str(configs / "3d.json")] if dims == 3 else []))
    if batch_size is not None:
        parser["batch_size"] = batch_size
    if patch_size is not None:
        parser["patch_size"] = patch_size
    network = parser.get_parsed_content("network_def")
    loss = parser.get_parsed_content("loss")
    return network, loss, int(parser.get_parsed_content("batch_size")), list(parser.get_parsed_content("patch_size"))


def breakdown(dims: int, repeats: int = 5, batch_size: int | None = None, patch_size: list[int] | None = None) -> dict:
    """Milliseconds of each piece (forward + backward), as listed in the module's docstring."""
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net, loss, b, size = build(dims, batch_size, patch_size)
    net.train()
    raters, classes = net.num_raters, net.num_classes
    image = torch.randn(b, 1, *size)
    labels = torch.randint(0, classes, (b, raters, *size))
    times: dict[str, float] = {}

    unet = UNet(dims, 1, classes, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2, norm="batch")
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
    times["unet step"] = median_ms(lambda: dice_ce(unet(image), labels[:, :1]).backward(), repeats)

    def encode():
        skips, x = [], image
        for level in net.encoder:
            x = level(x)
            skips.append(x)
        return skips, net.bottom(x)

    times["encoder"] = median_ms(_backward(lambda: _flat(encode())), repeats)
    with torch.no_grad():
        skips, bottom = encode()
    w = net.initial_confidence(image).flatten(1, 2)
    x = bottom
    for i, stage in enumerate(net.conp):
        skip = skips[len(skips) - 1 - i]
        feature = x.clone().requires_grad_(True)
        embedding = stage.embedding(w).detach()
        attended = stage.attention(feature, embedding).detach().requires_grad_(True)
        times[f"conp {i} embedding"] = median_ms(_backward(lambda s=stage: s.embedding(w)), repeats)
        times[f"conp {i} attention"] = median_ms(_backward(lambda s=stage, f=feature, e=embedding: s.attention(f, e)), repeats)
        times[f"conp {i} up"] = median_ms(_backward(lambda s=stage, a=attended, k=skip: s.up(torch.cat([a, k], 1))), repeats)
        with torch.no_grad():
            x = stage(x, skip, w)
    y_log = torch.log_softmax(x, 1)
    times["divp"] = median_ms(_backward(lambda: net.divp(y_log)), repeats)

    with torch.no_grad():
        outputs = net.forward_all(image)
    outputs = {k: v.detach().requires_grad_(True) for k, v in outputs.items()}
    batch = {"label": labels}
    times["loss"] = median_ms(lambda: loss(outputs, batch).backward(), repeats)
    t = outputs["recurrence_logits"].shape[1]
    probs = torch.rand(b * t, classes, *size, requires_grad=True)
    times["loss: one ssim"] = median_ms(lambda: loss.ssim(probs, probs.detach().flip(0)).backward(), repeats)
    zt = torch.softmax(outputs["rater_logits"].detach(), 3).flatten(0, 1).requires_grad_(True)
    lt = labels.unsqueeze(1).expand(-1, t, *labels.shape[1:]).flatten(0, 1)
    times["loss: shuffle"] = median_ms(lambda: loss.shuffle_loss(zt, lt, lt >= 0).backward(), repeats)
    times["mrprism step"] = median_ms(lambda: loss(net.forward_all(image), batch).backward(), repeats)
    ups = sum(v for k, v in times.items() if k.endswith(" up"))
    times["floor: encoder + T up paths"] = times["encoder"] + t * ups
    return {"dims": dims, "batch": b, "patch": size, "passes": t, "threads": torch.get_num_threads(), "ms": times}


def _flat(encoded):
    skips, bottom = encoded
    return [*skips, bottom]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", nargs="+", type=int, default=[2, 3])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None, help="override the bundle's batch size")
    parser.add_argument("--patch-size", type=int, nargs="+", default=None, help="override the bundle's patch size")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for dims in args.dims:
        result = breakdown(dims, args.repeats, args.batch_size, args.patch_size)
        ms = result["ms"]
        unet = ms["unet step"]
        print(f"{dims}D: batch {result['batch']} x {result['patch']}, {result['passes']} passes, {result['threads']} threads")
        print(f"{'piece (forward + backward)':<34}{'ms':>9}{'x U-Net':>9}")
        for name, value in ms.items():
            print(f"{name:<34}{value:>9.1f}{value / unet:>9.2f}")
        print()


if __name__ == "__main__":
    main()
