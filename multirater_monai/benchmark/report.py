"""The leaderboard: tables (Markdown, CSV, JSON), plots (PNG), a one-page index, and MLflow runs.

Every figure is read from the run records of ``results.json``; a table cell is the mean ± standard deviation
over the seeds that finished (their number is a column), the best arm of each accuracy column is in bold (the
oracle, trained on the truth, is the ceiling and is not ranked), an arm that does not fit a suite is "n/a" and
a failed run names its log.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from multirater_monai.benchmark.arms import Arm
from multirater_monai.benchmark.runner import RunSpec
from multirater_monai.benchmark.suites import Suite
from multirater_monai.bundle_utils import sqlite_tracking_uri

__all__ = ["METRICS", "Row", "leaderboard_rows", "protocol_runs", "write_reports", "log_mlflow_run", "log_missing_mlflow_runs"]

# metric -> (column title, higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "dice": ("Dice", True),
    "miou": ("mIoU", True),
    "soft_dice": ("soft Dice", True),
    "ged": ("GED", False),
    "cm_error": ("CM error", False),
    "rater_dice": ("rater Dice", True),
}
_ROLE_ORDER = {"oracle": 0, "baseline": 1, "method": 2}


@dataclass
class Row:
    """One arm on one suite: its status and the values of every finished seed."""

    suite: str
    arm: Arm
    status: str  # "done", "partial", "failed", "n/a", "missing"
    seeds: list[int] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    label: dict = field(default_factory=dict)  # fused-label statistics of a fusion arm
    cost: dict = field(default_factory=dict)
    same_as: list[str] = field(default_factory=list)  # arms whose runs these are (the same configuration here)

    @property
    def title(self) -> str:
        """The arm's name in a table, with what it is when that is not plain."""
        name = f"{self.arm.name} (oracle)" if self.arm.oracle else self.arm.name
        return name + (f" (= {', '.join(self.same_as)}: the same configuration)" if self.same_as else "")

    def mean(self, key: str) -> float | None:
        values = self.values.get(key, [])
        return statistics.mean(values) if values else None

    def std(self, key: str) -> float | None:
        values = self.values.get(key, [])
        return statistics.stdev(values) if len(values) > 1 else None


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def leaderboard_rows(
    suites: list[Suite], arms: list[Arm], seeds: list[int], epochs: int, store: dict, label_stats: dict
) -> dict[str, list[Row]]:
    """Per suite, one :class:`Row` per arm (oracle, baselines, then methods), from the store's records."""
    reference = next((a for a in arms if a.reference), None)
    tables: dict[str, list[Row]] = {}
    for suite in suites:
        rows = []
        for arm in sorted(arms, key=lambda a: _ROLE_ORDER[a.role]):
            row = Row(suite.name, arm, "missing")
            # label statistics exist exactly where the suite has the truth (see suites.label_statistics)
            if not arm.runs_on(suite.settings, bool(label_stats.get(suite.name))):
                row.status = "n/a"
                rows.append(row)
                continue
            for seed in seeds:
                record = store["runs"].get(RunSpec(suite.name, arm.name, seed, epochs).key)
                if record is None:
                    continue
                if record.get("status") != "done":
                    row.failures.append(record)
                    continue
                row.seeds.append(seed)
                if record.get("same_as") and record["same_as"] not in row.same_as:
                    row.same_as.append(record["same_as"])
                for key, value in record.items():
                    if key == "train_s" and record.get("resumed"):
                        continue  # the wall time of a resumed training is that of its last part only
                    if key in METRICS or key == "train_s":
                        if _finite(value):
                            row.values.setdefault(key, []).append(float(value))
            fusion = arm.overrides.get("fusion") if arm.bundle == "fused_unet" else None
            stats = label_stats.get(suite.name, {})
            if arm.oracle and stats:
                row.label = {"label_dice": 1.0}
            elif fusion in stats:
                row.label = dict(stats[fusion])
                if "cm_error" in row.label and "cm_error" not in row.values and row.seeds:
                    row.values["cm_error"] = [row.label["cm_error"]]  # STAPLE's own estimate of the raters' matrices
            dims = suite.spatial_dims
            cost = store["costs"].get(f"{arm.name}|{dims}", {})
            ref_cost = store["costs"].get(f"{reference.name}|{dims}", {}) if reference else {}
            if cost.get("status") == "done":
                row.cost = {"step_ms": cost["step_ms_median"], "peak_mib": cost["peak_over_idle_mib"],
                            "parameters": cost["parameters"]}
                if ref_cost.get("status") == "done":
                    row.cost["step_ratio"] = cost["step_ms_median"] / ref_cost["step_ms_median"]
                    row.cost["memory_ratio"] = cost["peak_over_idle_mib"] / max(ref_cost["peak_over_idle_mib"], 1e-9)
            row.status = "done" if len(row.seeds) == len(seeds) else ("partial" if row.seeds else
                                                                        ("failed" if row.failures else "missing"))
            rows.append(row)
        if reference is not None:
            ref_row = next((r for r in rows if r.arm.name == reference.name), None)
            ref_train = ref_row.mean("train_s") if ref_row else None
            for row in rows:
                if ref_train and row.mean("train_s") is not None:
                    row.cost["train_ratio"] = row.mean("train_s") / ref_train
        tables[suite.name] = rows
    return tables


def _best(rows: list[Row], key: str) -> float | None:
    higher = METRICS[key][1]
    values = [r.mean(key) for r in rows if r.arm.role != "oracle" and r.mean(key) is not None]
    if not values:
        return None
    return max(values) if higher else min(values)


def _cell(row: Row, key: str, best: float | None) -> str:
    mean = row.mean(key)
    if mean is None:
        return "–"
    std = row.std(key)
    text = f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")
    if best is not None and row.arm.role != "oracle" and round(mean, 3) == round(best, 3):
        text = f"**{text}**"
    return text


def _ratio(value: float | None, ratio: float | None, fmt: str) -> str:
    if value is None:
        return "–"
    return fmt.format(value) + (f" ({ratio:.2f}×)" if ratio is not None else "")


def markdown_table(rows: list[Row], seeds: list[int]) -> str:
    """The leaderboard of one suite as a Markdown table."""
    metrics = [k for k in METRICS if any(r.mean(k) is not None for r in rows)] or ["dice"]
    header = ["arm", "bundle", "seeds", *(METRICS[k][0] + (" ↑" if METRICS[k][1] else " ↓") for k in metrics),
              "label Dice", "train s (× U-Net)", "step ms (× U-Net)", "peak MiB (× U-Net)", "parameters"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    best = {k: _best(rows, k) for k in metrics}
    for row in rows:
        name = row.title
        if row.status in ("n/a", "missing") or (row.status == "failed" and not row.seeds):
            what = {"n/a": "n/a: the arm does not fit this suite's setting", "missing": "not run"}.get(row.status)
            if row.status == "failed":
                what = "failed: " + "; ".join(f"seed {f['seed']}: log {f.get('log', '?')}" for f in row.failures)
            lines.append(f"| {name} | {row.arm.bundle} | 0/{len(seeds)} | {what} |" + " |" * (len(header) - 4))
            continue
        cells = [name, row.arm.bundle, f"{len(row.seeds)}/{len(seeds)}", *(_cell(row, k, best[k]) for k in metrics)]
        cells.append(f"{row.label['label_dice']:.3f}" if "label_dice" in row.label else "–")
        cells.append(_ratio(row.mean("train_s"), row.cost.get("train_ratio"), "{:.0f}"))
        cells.append(_ratio(row.cost.get("step_ms"), row.cost.get("step_ratio"), "{:.1f}"))
        cells.append(_ratio(row.cost.get("peak_mib"), row.cost.get("memory_ratio"), "{:.0f}"))
        cells.append(f"{row.cost['parameters']:,}" if "parameters" in row.cost else "–")
        lines.append("| " + " | ".join(cells) + " |")
        for failure in row.failures:
            lines.append(f"| ↳ seed {failure['seed']} failed | | | log: `{failure.get('log', '?')}` |" + " |" * (len(header) - 4))
    return "\n".join(lines)


def protocol_runs(rows: list[Row], seeds: list[int]) -> tuple[int, int]:
    """(finished, planned) runs of a suite's table: every seed of every arm that fits the suite."""
    fitting = [r for r in rows if r.status != "n/a"]
    return sum(len(r.seeds) for r in fitting), len(fitting) * len(seeds)


def runs_finished_line(finished: int, planned: int) -> str:
    """The index's sentence on how much of the protocol finished, and what the next call of the command does."""
    line = f"{finished} of the {planned} runs of this command finished (every arm that fits a suite, on every seed"
    if finished == planned:
        return line + "): the protocol is complete."
    return line + "; the rest: `not run` or `failed` in the tables, trained by the next call of the command)."


def _csv_rows(tables: dict[str, list[Row]]) -> list[dict]:
    out = []
    for suite, rows in tables.items():
        for row in rows:
            entry = {"suite": suite, "arm": row.arm.name, "bundle": row.arm.bundle, "role": row.arm.role,
                     "status": row.status, "seeds": len(row.seeds), "same_as": " ".join(row.same_as)}
            for key in [*METRICS, "train_s"]:
                entry[f"{key}_mean"], entry[f"{key}_std"] = row.mean(key), row.std(key)
            entry["label_dice"] = row.label.get("label_dice")
            for key in ("train_ratio", "step_ms", "step_ratio", "peak_mib", "memory_ratio", "parameters"):
                entry[key] = row.cost.get(key)
            entry["failed_logs"] = " ".join(f.get("log", "") for f in row.failures)
            out.append(entry)
    return out


def _plot_noise_ladder(tables: dict[str, list[Row]], suites: list[Suite], label_stats: dict, path: Path) -> bool:
    """Dice against the truth vs the fused labels' Dice (majority vote), one line per arm, over the noise ladder."""
    ladder = [s for s in suites if s.noise is not None and label_stats.get(s.name, {}).get("majority")]
    if len(ladder) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    arms = {row.arm.name: row.arm for s in ladder for row in tables[s.name]}
    for name, arm in arms.items():
        points = []
        for s in ladder:
            row = next(r for r in tables[s.name] if r.arm.name == name)
            if row.mean("dice") is not None:
                points.append((label_stats[s.name]["majority"]["label_dice"], row.mean("dice"), row.std("dice") or 0.0))
        if points:
            points.sort()
            x, y, e = zip(*points)
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=name, linestyle="--" if arm.oracle else "-")
    ax.set_xlabel("Dice of the majority-vote training labels vs truth (less noise →)")
    ax.set_ylabel("test Dice vs truth")
    ax.set_title("Noise ladder")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_cost(rows: list[Row], suite: str, path: Path) -> bool:
    """Test Dice vs train-step time relative to the U-Net, one point per arm."""
    points = [(r.cost["step_ratio"], r.mean("dice"), r.std("dice") or 0.0, r.arm.name) for r in rows
              if r.mean("dice") is not None and "step_ratio" in r.cost]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for x, y, e, name in points:
        ax.errorbar([x], [y], yerr=[e], marker="o", capsize=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter

    for axis in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
        axis(FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.set_xlabel("train-step time (× U-Net)")
    ax.set_ylabel("test Dice")
    ax.set_title(f"Accuracy vs cost: {suite}")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_reports(
    out: Path, tables: dict[str, list[Row]], suites: list[Suite], seeds: list[int], epochs: int,
    label_stats: dict, command: str, date: str, machine: str, tracking_uri: str,
) -> dict[str, Path]:
    """Write ``leaderboard.md``, ``leaderboard.csv``, ``leaderboard.json``, the plots and ``index.md`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    by_name = {s.name: s for s in suites}
    sections = [f"# Leaderboard\n\n`{command}` · {date} · {machine} · {epochs} epochs · seeds {seeds}\n",
                "Test split; mean ± std over the seeds that finished (their number in `seeds`); **bold**: best arm per "
                "column (the oracle, trained on the truth, is the ceiling and is not ranked). ↑ higher is better, ↓ "
                "lower. `label Dice`: the fused training labels vs truth. Cost: training wall time (of runs not resumed), "
                "train-step time and "
                "peak memory of a step, with ratios to the U-Net (`majority`) of the same run. The CM error of `staple` "
                "is STAPLE's own estimate of the raters' matrices.\n"]
    for suite, rows in tables.items():
        finished, planned = protocol_runs(rows, seeds)
        sections.append(f"## {suite}\n\n{by_name[suite].description}\n\n{finished} of {planned} runs finished.\n\n"
                        f"{markdown_table(rows, seeds)}\n")
        plot = out / f"cost_{suite}.png"
        if _plot_cost(rows, suite, plot):
            files[f"cost_{suite}"] = plot
            sections.append(f"![accuracy vs cost, {suite}]({plot.name})\n")
    files["markdown"] = out / "leaderboard.md"
    files["markdown"].write_text("\n".join(sections))
    entries = _csv_rows(tables)
    files["csv"] = out / "leaderboard.csv"
    with open(files["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(entries[0]) if entries else ["suite"])
        writer.writeheader()
        writer.writerows(entries)
    files["json"] = out / "leaderboard.json"
    files["json"].write_text(json.dumps({"command": command, "date": date, "machine": machine, "epochs": epochs,
                                         "seeds": seeds, "label_statistics": label_stats, "rows": entries}, indent=1))
    ladder = out / "noise_ladder.png"
    if _plot_noise_ladder(tables, suites, label_stats, ladder):
        files["noise_ladder"] = ladder
    finished, planned = map(sum, zip(*(protocol_runs(rows, seeds) for rows in tables.values()))) if tables else (0, 0)
    index = [f"# Benchmark\n\n`{command}` · {date} · {machine}\n",
             runs_finished_line(finished, planned) + "\n",
             f"- [Leaderboard]({files['markdown'].name}) (also [CSV]({files['csv'].name}), [JSON]({files['json'].name}))",
             f"- Every run: `results.json`; logs and outputs: `runs/<suite>/<arm>/seed<k>-e{epochs}/`"]
    if "noise_ladder" in files:
        index.append(f"- [Dice vs annotation noise]({ladder.name})")
    index += [f"- [Accuracy vs cost: {k[5:]}]({p.name})" for k, p in files.items() if k.startswith("cost_")]
    # the store beside this index is named relative to it, so that a copied or committed folder stays right
    local = tracking_uri == sqlite_tracking_uri(out)
    ui = "mlflow ui --backend-store-uri sqlite:///mlflow.db` (from this folder" if local else (
        f"mlflow ui --backend-store-uri {tracking_uri}` (")
    index.append(f"- MLflow: `{ui}; experiment `benchmark/<suite>`, one run per arm and seed; where the store is "
                 f"missing, e.g. in a clone, `{command} --report-only` logs the runs of `results.json` into it again)")
    files["index"] = out / "index.md"
    files["index"].write_text("\n".join(index) + "\n")
    return files


def _mlflow_run_ids(tracking_uri: str, suites: list[str]) -> set[str]:
    """The ids of the runs in the experiments ``benchmark/<suite>`` of the tracking store."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    ids: set[str] = set()
    for suite in suites:
        experiment = client.get_experiment_by_name(f"benchmark/{suite}")
        if experiment is None:
            continue
        token = None
        while True:
            page = client.search_runs([experiment.experiment_id], max_results=1000, page_token=token)
            ids.update(run.info.run_id for run in page)
            token = page.token
            if not token:
                break
    return ids


def log_missing_mlflow_runs(tracking_uri: str, store, specs: list[RunSpec], arms: dict[str, Arm]) -> int:
    """Log each stored run of ``specs`` whose ``mlflow_run_id`` the tracking store lacks (``results.json`` copied
    or committed without ``mlflow.db``), record the new ids in ``store`` with one write; returns how many."""
    known = _mlflow_run_ids(tracking_uri, sorted({spec.suite for spec in specs}))
    records = {spec: store.run(spec) for spec in specs}
    missing = {spec: r for spec, r in records.items() if r is not None and r.get("mlflow_run_id") not in known}
    if missing:
        store.put_runs({spec: {**r, "mlflow_run_id": log_mlflow_run(tracking_uri, spec, arms[spec.arm], r)}
                        for spec, r in missing.items()})
    return len(missing)


def log_mlflow_run(tracking_uri: str, spec: RunSpec, arm: Arm, record: dict) -> str:
    """One MLflow run for one (suite, arm, seed) in experiment ``benchmark/<suite>``; returns its id."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    name = f"benchmark/{spec.suite}"
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    tags = {"suite": spec.suite, "arm": arm.name, "bundle": arm.bundle, "role": arm.role, "seed": str(spec.seed),
            "epochs": str(spec.epochs), "status": record["status"]}
    if "threads" in record:
        tags["threads"] = str(record["threads"])
    if record["status"] != "done":
        tags["log"] = record.get("log", "")
    if record.get("same_as"):
        tags["same_as"] = record["same_as"]  # the arm that trained this configuration
    run = client.create_run(experiment_id, run_name=f"{arm.name} seed {spec.seed}", tags=tags)
    run_id = run.info.run_id
    params = [mlflow.entities.Param(k, json.dumps(v)[:500]) for k, v in arm.overrides.items()]
    now = int(time.time() * 1000)
    metrics = [mlflow.entities.Metric(k, float(v), now, 0) for k, v in record.items()
               if (k in METRICS or k in ("train_s", "train_peak_mib", "kept_epoch")) and _finite(v)]
    client.log_batch(run_id, metrics=metrics, params=params)
    client.set_terminated(run_id, status="FINISHED" if record["status"] == "done" else "FAILED")
    return run_id
