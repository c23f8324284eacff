"""Train-step time and peak memory of bundles, in 2D and 3D, relative to the fused_unet baseline.

Each bundle's own ``train.json`` (with ``3d.json`` merged over it for 3D) builds the trainer: its
network, loss, optimiser, training step and schedule (the step is timed in the schedule's last stage),
on a batch that the bundle's own pre-processing makes from a small synthetic set (generated once under
``--data``), so the figures are those of what the bundle trains (``multirater_monai.benchmark.cost``, which the
leaderboard's cost columns use too). Each (bundle, dims) pair runs in a fresh process: peak memory is the growth of
the process's peak resident set over its size before the first step (CPU) or ``torch.cuda.max_memory_allocated``
(GPU) over the steps; ``saved MiB`` is what autograd keeps for the backward pass of one step, a memory figure
that other processes and the allocator do not move.
With ``--rounds`` *n* > 1 the whole set of processes runs *n* times, interleaved (every bundle once per round),
and each figure is the median over the rounds: a slow spell of a shared machine then moves one round of every
bundle, not every step of one (the U-Net's own step varies by ±30 % between single runs on a 2-core CPU; the
``range`` column shows the spread of the step time over the rounds).
Ratios are against ``fused_unet`` of the same dimensionality and number of classes, measured in the
same run, or against ``--reference`` (any bundle spec, e.g. the U-Net with the classifier's encoder of the
unrolled-LRP comparison).

    python benchmarks/bench_train_step.py                      # fused_unet, 2D and 3D, CPU
    python benchmarks/bench_train_step.py --bundles fused_unet --dims 3 --steps 20 --device cuda
    python benchmarks/bench_train_step.py --bundles cmnet cmnet:cm_type=global cmnet:cm_type=low_rank,rank=1
    python benchmarks/bench_train_step.py --bundles cmnet cmnet:head_hidden=per_rater --rounds 3
    python benchmarks/bench_train_step.py --bundles unrolled_lrp --reference unrolled_lrp:architecture=unet
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from multirater_monai.bundle_utils import parse_bundle_spec

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", nargs="+", default=["fused_unet"])
    parser.add_argument("--dims", nargs="+", type=int, default=[2, 3])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", type=Path, default=ROOT / "benchmarks" / "results" / "bench_data", help="synthetic sets")
    parser.add_argument("--reference", default=None, help="bundle spec the ratios are against (default: fused_unet)")
    parser.add_argument("--rounds", type=int, default=1, help="run every bundle this many times, interleaved; medians")
    args = parser.parse_args()

    def reference_of(spec: str) -> str:
        """Every variant is compared with --reference, or with the baseline of its number of classes."""
        if args.reference:
            return args.reference
        c = parse_bundle_spec(spec)[1].get("num_classes")
        return "fused_unet" if c is None else f"fused_unet:num_classes={c}"

    baselines = list(dict.fromkeys(reference_of(b) for b in args.bundles))
    bundles = baselines + [b for b in args.bundles if b not in baselines]
    runs: dict[tuple[int, str], list[dict]] = {}
    for _ in range(max(args.rounds, 1)):
        for dims in args.dims:
            for bundle in bundles:
                cmd = [sys.executable, "-m", "multirater_monai.benchmark.cost", bundle, str(dims), "--steps", str(args.steps)]
                cmd += ["--warmup", str(args.warmup), "--device", args.device, "--data", str(args.data), "--root", str(ROOT)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.exit(f"{bundle} ({dims}D) failed:\n{proc.stderr[-3000:]}")
                runs.setdefault((dims, bundle), []).append(json.loads(proc.stdout.strip().splitlines()[-1]))
    results = [_median_record(records) for records in runs.values()]
    header = (
        f"{'bundle':<34}{'dims':>5}{'batch x patch':>22}{'step ms':>10}{'peak MiB':>10}{'saved MiB':>10}"
        f"{'x time':>8}{'x mem':>8}{'x saved':>8}{'range ms':>14}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        base_spec = reference_of(r["bundle"]) if r["bundle"] not in baselines else r["bundle"]
        base = next(b for b in results if b["bundle"] == base_spec and b["dims"] == r["dims"])
        shape = f"{r['batch']} x {'x'.join(map(str, r['patch']))}"
        ratio_t = r["step_ms_median"] / base["step_ms_median"]
        ratio_m = r["peak_over_idle_mib"] / max(base["peak_over_idle_mib"], 1e-9)
        ratio_s = r["saved_mib"] / max(base["saved_mib"], 1e-9)
        print(
            f"{r['bundle']:<34}{r['dims']:>5}{shape:>22}{r['step_ms_median']:>10.1f}"
            f"{r['peak_over_idle_mib']:>10.1f}{r['saved_mib']:>10.1f}{ratio_t:>8.2f}{ratio_m:>8.2f}{ratio_s:>8.2f}"
            f"{r['step_ms_range'][0]:>7.0f}-{r['step_ms_range'][1]:<6.0f}"
        )
    print(f"device={results[0]['device']} threads={results[0]['threads']} steps={args.steps} rounds={args.rounds} "
          "(median step time of each process; median over the rounds)")


def _median_record(records: list[dict]) -> dict:
    """One record of a (bundle, dims) pair: its step time, peak and saved memory are the medians over the rounds."""
    record = dict(records[0])
    for key in ("step_ms_median", "peak_over_idle_mib", "saved_mib"):
        record[key] = statistics.median(r[key] for r in records)
    times = [r["step_ms_median"] for r in records]
    record["step_ms_range"] = (min(times), max(times))
    return record


if __name__ == "__main__":
    main()
