"""Running the benchmark: one (suite, arm, seed) is a training then an evaluation of the arm's bundle, each
``python -m monai.bundle run`` in its own process, with its log and outputs in its own folder.

Results accumulate in ``<out>/results.json`` (:class:`ResultStore`): a finished run is never trained again
unless asked (``rerun``); a run interrupted during training continues from its last checkpoint (the bundle's
``--resume true``), one interrupted after training is only evaluated; a failed run is recorded with its log
and tried again by the next call.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from multirater_monai.benchmark.arms import Arm
from multirater_monai.benchmark.suites import SuiteData
from multirater_monai.bundle_utils import bundle_config_files
from multirater_monai.engines.model_saver import model_record_path

__all__ = ["RunSpec", "ResultStore", "run_one", "measure_cost", "run_folder", "training_configuration"]


@dataclass(frozen=True)
class RunSpec:
    """One run of the leaderboard."""

    suite: str
    arm: str
    seed: int
    epochs: int

    @property
    def key(self) -> str:
        return f"{self.suite}|{self.arm}|{self.seed}|{self.epochs}"

    def __str__(self) -> str:
        return f"{self.suite} / {self.arm} / seed {self.seed}"


class ResultStore:
    """``results.json``: ``{"runs": {key: record}, "costs": {"arm|dims": record}}``, written atomically under a lock."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.data = {"runs": {}, "costs": {}}
        if self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text())
            except json.JSONDecodeError as e:
                from multirater_monai.errors import UserError

                raise UserError(f"{self.path}: not valid JSON ({e}); move it away to start a new benchmark.") from None
            self.data["runs"].update(loaded.get("runs", {}))
            self.data["costs"].update(loaded.get("costs", {}))

    def run(self, spec: RunSpec) -> dict | None:
        return self.data["runs"].get(spec.key)

    def done(self, spec: RunSpec) -> bool:
        record = self.run(spec)
        return record is not None and record.get("status") == "done"

    def put_run(self, spec: RunSpec, record: dict) -> None:
        with self._lock:
            self.data["runs"][spec.key] = record
            self._write()

    def put_runs(self, records: dict[RunSpec, dict]) -> None:
        """Store several runs with one write."""
        with self._lock:
            self.data["runs"].update({spec.key: record for spec, record in records.items()})
            self._write()

    def put_cost(self, key: str, record: dict) -> None:
        with self._lock:
            self.data["costs"][key] = record
            self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


def folder_name(text: str) -> str:
    """A folder name for an arm or suite: characters that MONAI's config parser or a file system read as syntax
    (``#``, ``/``, ``:``, brackets, ...) become ``_``."""
    return re.sub(r"[^\w.=,+-]", "_", text)


def run_folder(out: Path, spec: RunSpec) -> Path:
    return out / "runs" / folder_name(spec.suite) / folder_name(spec.arm) / f"seed{spec.seed}-e{spec.epochs}"


def _bundle_run(config_files: list[Path], overrides: dict, log: Path, threads: int, root: Path) -> dict:
    """``python -m monai.bundle run`` with ``config_files`` and ``overrides`` (written next to ``log`` and merged
    last); returns its wall time and peak resident memory; raises ``RuntimeError`` naming the log on failure."""
    override_file = log.with_suffix(".override.json")
    override_file.write_text(json.dumps(overrides, indent=1))
    files = [str(f) for f in config_files] + [str(override_file)]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(files).replace('"', "'")]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    start = time.time()
    with open(log, "w") as f:
        f.write(f"# {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=root, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"exit code {proc.returncode}, see {log}")
    return {"seconds": time.time() - start, "peak_mib": usage.ru_maxrss / 1024.0}


def _read_metrics(eval_dir: Path) -> dict[str, float]:
    """The ``name,value`` rows of MONAI's ``MetricsSaver`` ``metrics.csv``."""
    with open(eval_dir / "metrics.csv") as f:
        return {row[0]: float(row[1]) for row in csv.reader(f) if len(row) == 2}


def _config_files(arm: Arm, data: SuiteData, root: Path, names: tuple[str, ...] = ("train.json",)) -> list[Path]:
    """The config files a run of ``arm`` on this suite merges: its bundle's ``names`` (with ``3d.json`` on a 3D
    suite), then the suite's own files."""
    configs = root / "bundles" / arm.bundle / "configs"
    return bundle_config_files(configs, data.suite.spatial_dims, names) + list(data.config_files)


def training_configuration(arm: Arm, data: SuiteData, root: Path) -> str:
    """What a run of ``arm`` on this suite trains, as canonical JSON: its bundle's ``train.json`` merged as
    ``monai.bundle run`` merges it with the suite's files and overrides and the arm's overrides (before the
    per-run folders and seed), and whether it trains on the truth. Two arms with the same text train the same
    network on the same data and labels: the benchmark trains them once (``same_as`` in the other's records),
    e.g. ``cmnet_pixel`` and ``cmnet_paper`` in 3D, where the bundle's default is the paper's heads."""
    from monai.bundle import ConfigParser
    from monai.bundle.utils import merge_kv

    parser = ConfigParser(ConfigParser.load_config_files([str(f) for f in _config_files(arm, data, root)]))
    for key, value in {**data.overrides, **arm.overrides}.items():
        merge_kv(parser, key, value)
    return json.dumps({"bundle": arm.bundle, "on_truth": arm.oracle, "config": parser.get()}, sort_keys=True, default=str)


def run_one(
    spec: RunSpec, arm: Arm, data: SuiteData, out: Path, root: Path, threads: int, rerun: bool = False
) -> dict:
    """Train and evaluate one (suite, arm, seed); returns its record (``status`` ``"done"`` with the test metrics,
    or ``"failed"`` with the error and the log)."""
    folder = run_folder(out, spec)
    if rerun and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    overrides = {
        **data.overrides,
        **arm.overrides,
        "bundle_root": str(root / "bundles" / arm.bundle),
        "ckpt_dir": str(folder / "models"),
        "output_dir": str(folder / "runs"),
        "eval_dir": str(folder / "eval"),
        "max_epochs": spec.epochs,  # each bundle's stages take their lengths from it
        "seed": spec.seed,
        "mlflow_enabled": False,  # the benchmark logs one MLflow run per (arm, seed) itself
        "overwrite_model": True,
    }
    # a run is reproducible bit for bit from its seed and its thread count (the count changes the order of CPU
    # sums: another count drifts by about 2 Dice points over 60 epochs), so the record keeps both
    record = {"suite": spec.suite, "arm": arm.name, "bundle": arm.bundle, "role": arm.role, "seed": spec.seed,
              "epochs": spec.epochs, "threads": threads, "folder": str(folder)}
    train_overrides = dict(overrides)
    if arm.oracle:
        train_overrides.update(datalist=str(data.oracle_datalist), num_raters=1)
    done_file = folder / "train_done.json"
    log = folder / "train.log"
    try:
        if done_file.is_file():
            train = json.loads(done_file.read_text())
        else:
            checkpoints = folder / "models" / "checkpoints"
            if checkpoints.is_dir() and any(checkpoints.glob("*.pt")):
                train_overrides["resume"] = True  # an interrupted training continues where it stopped
                record["resumed"] = True
            train = _bundle_run(_config_files(arm, data, root), train_overrides, log, threads, root)
            done_file.write_text(json.dumps(train))
        log = folder / "evaluate.log"
        # every arm is scored against the truth where the suite has it, whatever its bundle selects models by
        # (TAX validates against each image's own annotator)
        eval_overrides = {**overrides, "val_target": "gt"} if data.oracle_datalist is not None else overrides
        _bundle_run(_config_files(arm, data, root, ("train.json", "evaluate.json")), eval_overrides, log, threads, root)
        metrics = _read_metrics(folder / "eval")
    except Exception as e:  # noqa: BLE001 - one failed run is reported; the others go on
        return {**record, "status": "failed", "error": str(e), "log": str(log)}
    # the epoch model selection kept (the best validation metric): an early one means the rest of the training
    # moved away from the validation target, e.g. on the heavy-noise rungs, where epoch 1 can win
    kept = model_record_path(folder / "models" / "model.pt")
    if kept.is_file():
        record["kept_epoch"] = json.loads(kept.read_text()).get("epoch")
    return {**record, "status": "done", "train_s": train["seconds"], "train_peak_mib": train["peak_mib"], **metrics}


def measure_cost(arm: Arm, dims: int, out: Path, root: Path, steps: int, warmup: int, threads: int) -> dict:
    """Train-step time, peak memory and parameters of an arm's bundle in ``dims``-D, in a fresh process
    (:mod:`multirater_monai.benchmark.cost`); ``{"status": "failed", ...}`` with the log when it fails."""
    spec = arm.bundle + (":" + ",".join(f"{k}={json.dumps(v)}" for k, v in arm.overrides.items()) if arm.overrides else "")
    log = out / "costs" / f"{folder_name(arm.name)}-{dims}d.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "multirater_monai.benchmark.cost", spec, str(dims), "--steps", str(steps),
           "--warmup", str(warmup), "--data", str(out / "data" / "cost"), "--root", str(root)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env)
    log.write_text(f"# {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    if proc.returncode != 0:
        return {"status": "failed", "error": f"exit code {proc.returncode}", "log": str(log)}
    return {"status": "done", **json.loads(proc.stdout.strip().splitlines()[-1])}
