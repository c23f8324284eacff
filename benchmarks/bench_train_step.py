"""Train-step time and peak memory of bundles, in 2D and 3D, relative to the fused_unet baseline.

Each bundle's own ``train.json`` (with ``3d.json`` merged over it for 3D) builds the trainer: its
network, loss, optimiser, training step and schedule (the step is timed in the schedule's last stage),
on a batch that the bundle's own pre-processing makes from a small synthetic set (generated once under
``--data``), so the figures are those of what the bundle trains. Each (bundle, dims) pair runs in a fresh process: peak memory is the growth of the
process's peak resident set over its size before the first step (CPU) or ``torch.cuda.max_memory_allocated`` (GPU) over the steps.
Ratios are against ``fused_unet`` of the same dimensionality and number of classes, measured in the
same run.

    python benchmarks/bench_train_step.py                      # fused_unet, 2D and 3D, CPU
    python benchmarks/bench_train_step.py --bundles fused_unet --dims 3 --steps 20 --device cuda
    python benchmarks/bench_train_step.py --bundles cmnet cmnet:cm_type=global cmnet:cm_type=low_rank,rank=1
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from multirater_monai.bundle_utils import parse_bundle_spec

ROOT = Path(__file__).resolve().parents[1]


def _rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def measure(spec: str, dims: int, steps: int, warmup: int, device: str, data_dir: Path) -> dict:
    """Time ``steps`` train steps of a bundle variant in ``dims``-D: the bundle's own trainer and training step
    (forward, loss, backward, optimiser step, iteration events) on a batch from its own pre-processing, in the
    last stage of its schedule."""
    bundle, overrides = parse_bundle_spec(spec)
    import torch
    from monai.bundle import ConfigParser

    configs = ROOT / "bundles" / bundle / "configs"
    files = [str(configs / "train.json")] + ([str(configs / "3d.json")] if dims == 3 else [])
    parser = ConfigParser()
    parser.read_config(files)
    parser["device"] = f"$torch.device('{device}')"
    parser["mlflow_enabled"] = False
    parser["bundle_root"] = str(data_dir / "bundle_root")
    for key, value in overrides.items():
        parser[key] = value
    batch_size = parser.get_parsed_content("batch_size")
    # a small synthetic set in the bundle's own geometry, so that the batch comes from its own pre-processing
    parser["dataset_dir"] = str(data_dir / f"{dims}d_{parser.get_parsed_content('num_classes')}class")
    parser["synthetic#num_train"], parser["synthetic#num_val"], parser["synthetic#num_test"] = batch_size, 1, 1
    torch.manual_seed(0)
    trainer = parser.get_parsed_content("train#trainer")
    batch = next(iter(trainer.data_loader))
    schedule = trainer.schedule
    if schedule is not None:  # the main stage: the last one with epochs
        schedule.enter(trainer, schedule.epoch_stages[-1])
    trainer.state.iteration, trainer.state.epoch = 1, 1

    def step() -> None:
        trainer.train_step(trainer, batch)

    # the baseline is taken before the first step, so the peak includes activations, gradients and
    # optimiser state created by the steps
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _current_rss_mib()
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
        base_mib = base / 2**20
    else:
        peak, base_mib = _rss_peak_mib(), base
    return {
        "bundle": spec,
        "dims": dims,
        "device": device,
        "batch": int(batch["image"].shape[0]),
        "patch": list(batch["image"].shape[2:]),
        "step_ms_median": 1000 * statistics.median(times),
        "step_ms_min": 1000 * min(times),
        "peak_mib": peak,
        "peak_over_idle_mib": max(peak - base_mib, 0.0),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", nargs="+", default=["fused_unet"])
    parser.add_argument("--dims", nargs="+", type=int, default=[2, 3])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", type=Path, default=ROOT / "benchmarks" / "results" / "bench_data", help="synthetic sets")
    parser.add_argument("--single", nargs=2, metavar=("BUNDLE", "DIMS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        print(json.dumps(measure(args.single[0], int(args.single[1]), args.steps, args.warmup, args.device, args.data)))
        return

    # every variant is compared with the baseline of the same number of classes
    classes = {parse_bundle_spec(b)[1].get("num_classes") for b in args.bundles}
    baselines = ["fused_unet" if c is None else f"fused_unet:num_classes={c}" for c in sorted(classes, key=str)]
    bundles = baselines + [b for b in args.bundles if b not in baselines]
    results = []
    for dims in args.dims:
        for bundle in bundles:
            cmd = [sys.executable, __file__, "--single", bundle, str(dims), "--steps", str(args.steps)]
            cmd += ["--warmup", str(args.warmup), "--device", args.device, "--data", str(args.data)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{bundle} ({dims}D) failed:\n{proc.stderr[-3000:]}")
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    header = f"{'bundle':<34}{'dims':>5}{'batch x patch':>22}{'step ms':>10}{'peak MiB':>10}{'x time':>8}{'x mem':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        c = parse_bundle_spec(r["bundle"])[1].get("num_classes")
        base_spec = "fused_unet" if c is None else f"fused_unet:num_classes={c}"
        base = next(b for b in results if b["bundle"] == base_spec and b["dims"] == r["dims"])
        shape = f"{r['batch']} x {'x'.join(map(str, r['patch']))}"
        ratio_t = r["step_ms_median"] / base["step_ms_median"]
        ratio_m = r["peak_over_idle_mib"] / max(base["peak_over_idle_mib"], 1e-9)
        print(
            f"{r['bundle']:<34}{r['dims']:>5}{shape:>22}{r['step_ms_median']:>10.1f}"
            f"{r['peak_over_idle_mib']:>10.1f}{ratio_t:>8.2f}{ratio_m:>8.2f}"
        )
    print(f"device={results[0]['device']} threads={results[0]['threads']} steps={args.steps} (median step time)")


if __name__ == "__main__":
    main()
