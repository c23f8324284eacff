"""Train-step time, peak memory and size of a bundle variant: the cost columns of the leaderboard.

The bundle's own ``train.json`` (with ``3d.json`` merged over it for 3D) builds the trainer: its network, loss,
optimiser, training step and schedule (the step is timed in the stage the config names `cost_stage`, else the
schedule's last stage), on a batch that the
bundle's own pre-processing makes from a small synthetic set (generated once under ``data_dir``), so the figures
are those of what the bundle trains. Run one measurement per process (``python -m
multirater_monai.benchmark.cost SPEC DIMS``): peak memory is the growth of the process's peak resident set over
its size before the first step (CPU) or ``torch.cuda.max_memory_allocated`` (GPU) over the steps.

The resident-set peak moves with the allocator and with other processes on the machine; ``saved_mib`` is
a figure that does not: the bytes of the distinct tensor storages that autograd saves for the backward pass
during one step (the activations a step keeps; recomputed ones, under activation checkpointing, not counted).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import statistics
import time
from pathlib import Path
from collections.abc import Mapping
from typing import Callable

from multirater_monai.bundle_utils import bundle_config_files, check_override_ids, parse_bundle_spec

__all__ = ["measure_train_step", "saved_activation_mib"]


def _rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def saved_activation_mib(step: Callable[[], object]) -> float:
    """MiB of the distinct storages autograd saves for the backward pass while ``step()`` runs (one step)."""
    import torch

    sizes: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        sizes[storage.data_ptr()] = max(sizes.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(sizes.values()) / 2**20


def median_ms(step: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time in milliseconds of ``repeats`` calls of ``step``, after ``warmup`` calls (allocator, caches,
    and compilation where ``step`` is compiled)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def synthetic_folder_name(dims: int, num_classes: int, layout: str | None = None, synthetic: Mapping | None = None) -> str:
    """Name of the small synthetic set a cost measurement uses: ``2d_2class``, or ``2d_4class_scene`` for a
    bundle whose synthetic data has another layout than the default ``nested``; a bundle whose generator
    arguments differ otherwise from the defaults (``synthetic``: its raters, labels per image, scanners,
    assignment) gets a suffix of their hash, since a folder holds one set and refuses other parameters."""
    from multirater_monai.transforms.raters import DEFAULT_RATERS

    name = f"{dims}d_{num_classes}class"
    name = name if layout in (None, "nested") else f"{name}_{layout}"
    defaults = {"raters": list(DEFAULT_RATERS), "labels_per_image": None, "scanners": False, "assignment": "random"}
    given = {k: (list(v) if k == "raters" else v) for k, v in (synthetic or {}).items() if k in defaults}
    extra = {k: v for k, v in sorted(given.items()) if v != defaults[k]}
    if extra:
        name += "_" + hashlib.sha1(json.dumps(extra, sort_keys=True).encode()).hexdigest()[:8]
    return name


def measure_train_step(
    spec: str, dims: int, steps: int = 10, warmup: int = 2, device: str = "cpu", data_dir: str | Path = "bench_data",
    root: str | Path | None = None,
) -> dict:
    """Time ``steps`` train steps of a bundle variant in ``dims``-D: the bundle's own trainer and training step
    (forward, loss, backward, optimiser step, iteration events) on a batch from its own pre-processing, in the
    stage its config names ``cost_stage`` (default: the last stage of its schedule)."""
    bundle, overrides = parse_bundle_spec(spec)
    root = Path(root) if root is not None else _repository_root()
    data_dir = Path(data_dir)
    import torch
    from monai.bundle import ConfigParser

    configs = root / "bundles" / bundle / "configs"
    check_override_ids(configs / "train.json", overrides, f"bundle variant '{spec}'")
    parser = ConfigParser()
    parser.read_config([str(f) for f in bundle_config_files(configs, dims)])
    parser["device"] = f"$torch.device('{device}')"
    parser["mlflow_enabled"] = False
    parser["bundle_root"] = str(data_dir / "bundle_root")
    for key, value in overrides.items():
        parser[key] = value
    batch_size = parser.get_parsed_content("batch_size")
    # a small synthetic set in the bundle's own geometry, so that the batch comes from its own pre-processing
    # (one folder per geometry, classes and scene layout: a folder holds one set and refuses other parameters)
    synthetic = parser.get_parsed_content("synthetic")
    parser["dataset_dir"] = str(data_dir / synthetic_folder_name(dims, parser.get_parsed_content("num_classes"), synthetic.get("layout"), synthetic))
    parser["synthetic#num_train"], parser["synthetic#num_val"], parser["synthetic#num_test"] = batch_size, 1, 1
    torch.manual_seed(0)
    trainer = parser.get_parsed_content("train#trainer")
    batch = next(iter(trainer.data_loader))
    schedule = trainer.schedule
    stage_name = None
    if schedule is not None:
        # the main stage: the bundle's ``cost_stage`` (where most of its training goes), else the last one with
        # epochs, after the actions before it (a teacher captured)
        wanted = parser.get("cost_stage")
        stages = {s.name: s for s in schedule.epoch_stages}
        if wanted is not None and wanted not in stages:
            raise ValueError(f"{bundle}: cost_stage '{wanted}' is not an epoch stage of its schedule ({sorted(stages)}).")
        last = stages[wanted] if wanted is not None else schedule.epoch_stages[-1]
        schedule.run_actions(trainer, schedule.starts[last.name])
        schedule.enter(trainer, last)
        stage_name = last.name
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
    saved = saved_activation_mib(step)
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
        "stage": stage_name,
        "dims": dims,
        "device": device,
        "batch": int(batch["image"].shape[0]),
        "patch": list(batch["image"].shape[2:]),
        "step_ms_median": 1000 * statistics.median(times),
        "step_ms_min": 1000 * min(times),
        "peak_mib": peak,
        "peak_over_idle_mib": max(peak - base_mib, 0.0),
        "saved_mib": saved,
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in trainer.network.parameters()),
    }


def _repository_root() -> Path:
    from multirater_monai.engines.quickstart import find_repository_bundle

    return find_repository_bundle("fused_unet").parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description="one train-step measurement of a bundle variant, printed as JSON")
    parser.add_argument("spec", help="bundle or bundle:key=value,...")
    parser.add_argument("dims", type=int, choices=(2, 3))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", type=Path, required=True, help="folder of the small synthetic sets")
    parser.add_argument("--root", type=Path, default=None, help="repository root holding bundles/")
    args = parser.parse_args()
    print(json.dumps(measure_train_step(args.spec, args.dims, args.steps, args.warmup, args.device, args.data, args.root)))


if __name__ == "__main__":
    main()
