"""``multirater benchmark``: train and evaluate every arm on every suite, write the leaderboard."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from multirater_monai.errors import UserError

__all__ = ["add_benchmark_parser", "run_benchmark", "DEFAULT_EPOCHS", "FULL_EPOCHS"]

DEFAULT_EPOCHS = 30
"""Epochs of the default protocol (sized to finish within 20 minutes on a 2-core CPU)."""
FULL_EPOCHS = 60
"""Epochs of the full protocol (the bundles' docs)."""

DESCRIPTION = """\
Train and evaluate every arm on every selected suite and write one leaderboard.

Arms are declared by the bundles (benchmark_arms in bundles/<name>/configs/metadata.json): the fused-label
baselines (mean, majority, STAPLE), the oracle (the U-Net trained on the truth: the ceiling) and each method's
default and variants; any variant is an arm as 'bundle:key=value,...'. An arm that does not fit a suite's
setting is reported n/a. Suites are synthetic (generated with a fixed data seed) or a prepared dataset
(--dataset datasets/lidc).

Protocols: with no option, the default protocol (suites default and lesion, the default arms, seed 0,
{default} epochs; about 20 minutes on a 2-core CPU); --full, the complete protocol of the docs (every
synthetic suite, every default and full arm, seeds 0 1 2, {full} epochs). Any option below narrows or
widens either.

Outputs under --out: leaderboard.md / .csv / .json, PNG plots, index.md, results.json (every run), runs/
(each run's logs, model and metrics) and mlflow.db (experiment benchmark/<suite>, one run per arm and seed).
Resumable: a finished (suite, arm, seed, epochs) is never trained again unless --rerun; a run interrupted
during training continues from its last checkpoint; failed runs are tried again. Exit code 1 if a run failed.
""".format(default=DEFAULT_EPOCHS, full=FULL_EPOCHS)


def add_benchmark_parser(sub: argparse._SubParsersAction) -> None:
    from multirater_monai.benchmark.suites import SYNTHETIC_SUITES

    p = sub.add_parser("benchmark", help="train and evaluate every method and baseline on the same data: the leaderboard",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="the complete protocol (every suite, 3 seeds, 60 epochs)")
    p.add_argument("--suites", nargs="+", metavar="SUITE",
                   help=f"synthetic suites: {', '.join(SYNTHETIC_SUITES)}; 'noise' = the whole noise ladder")
    p.add_argument("--dataset", nargs="+", default=[], metavar="FOLDER",
                   help="prepared dataset folder(s) (multirater prepare --dst FOLDER) as suites; alone, only these run")
    p.add_argument("--arms", nargs="+", metavar="ARM", help="declared arm names or 'bundle:key=value,...'")
    p.add_argument("--list", action="store_true", help="list the suites and the arms the bundles declare, and exit")
    p.add_argument("--seeds", nargs="+", type=int, help="training seeds (default 0; --full 0 1 2)")
    p.add_argument("--epochs", type=int, help=f"epochs of every run (default {DEFAULT_EPOCHS}; --full {FULL_EPOCHS})")
    p.add_argument("--num-train", type=int, help="training images of the synthetic suites (suite named <suite>-n<N>)")
    p.add_argument("--jobs", type=int, default=None, help="trainings at a time (default: the usable CPU cores, at most 4, a taskset narrowing them; each gets cores / jobs threads)")
    p.add_argument("--rerun", action="store_true", help="train again the runs already finished")
    p.add_argument("--report-only", action="store_true", help="write the leaderboard from results.json, train nothing")
    p.add_argument("--no-cost", action="store_true", help="skip the train-step time / memory measurement")
    p.add_argument("--costs-only", action="store_true",
                   help="measure the cost columns of the selected arms again, all in this call (run it on an idle "
                        "machine so that the ratios compare), train nothing, and write the leaderboard")
    p.add_argument("--cost-steps", type=int, default=10, help="train steps timed per arm (median; default 10)")
    p.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                   help="start no run after this many seconds (the rest is left for the next call)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default benchmarks/results/leaderboard in the repository)")
    p.add_argument("--root", type=Path, default=None, help="repository root holding bundles/ (default: found)")
    p.set_defaults(func=run_benchmark, argv=["benchmark"])


def _repository_root(given: Path | None) -> Path:
    if given is not None:
        if not (given / "bundles").is_dir():
            raise UserError(f"{given}: no bundles/ folder here; --root must be the repository root.")
        return given.resolve()
    from multirater_monai.engines.quickstart import find_repository_bundle

    try:
        return find_repository_bundle("fused_unet").parent.parent
    except FileNotFoundError as e:
        raise UserError(str(e)) from None


def _select_suites(args: argparse.Namespace) -> list:
    from multirater_monai.benchmark.suites import SYNTHETIC_SUITES, dataset_suite, suite_protocol, with_num_train

    if args.suites:
        suites = []
        for name in args.suites:
            if name == "noise":
                suites += [s for s in SYNTHETIC_SUITES.values() if s.noise is not None]
            elif name in SYNTHETIC_SUITES:
                suites.append(SYNTHETIC_SUITES[name])
            else:
                raise UserError(f"unknown suite '{name}': one of {', '.join(SYNTHETIC_SUITES)}, noise.")
    elif args.dataset:
        suites = []
    else:
        suites = suite_protocol("full" if args.full else "default")
    if args.num_train is not None:
        suites = [with_num_train(s, args.num_train) for s in suites]
    suites += [dataset_suite(folder) for folder in args.dataset]
    names = [s.name for s in suites]
    if len(set(names)) != len(names):
        raise UserError(f"suites named twice: {names}.")
    return suites


def _list(root: Path) -> int:
    from multirater_monai.benchmark.arms import discover_arms
    from multirater_monai.benchmark.suites import SYNTHETIC_SUITES

    print("suites (protocol: default = run with no option; full = --full):")
    for s in SYNTHETIC_SUITES.values():
        print(f"  {s.name:<12} [{s.protocol}] {s.description}")
    print("arms (declared in bundles/<bundle>/configs/metadata.json, benchmark_arms):")
    for a in discover_arms(root).values():
        print(f"  {a.name:<32} [{a.protocol}] {a.bundle}: {a.description}")
    return 0


def _usable_cores() -> int:
    """The CPU cores this process may run on: a ``taskset`` or a container's CPU set narrows ``os.cpu_count()``."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def run_benchmark(args: argparse.Namespace) -> int:
    """Run the benchmark that ``args`` select (see :data:`DESCRIPTION`); 0 when every run finished, 1 otherwise."""
    from multirater_monai.benchmark.arms import resolve_arms
    from multirater_monai.benchmark.report import leaderboard_rows, log_missing_mlflow_runs, log_mlflow_run, write_reports
    from multirater_monai.benchmark.runner import ResultStore, RunSpec, measure_cost, run_one, training_configuration
    from multirater_monai.benchmark.suites import label_statistics, prepare_suite
    from multirater_monai.bundle_utils import sqlite_tracking_uri

    start = time.time()
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its database set-up messages between progress lines
    root = _repository_root(args.root)
    if args.list:
        return _list(root)
    protocol = "full" if args.full else "default"
    suites = _select_suites(args)
    arms = resolve_arms(root, args.arms, protocol)
    seeds = args.seeds if args.seeds else ([0, 1, 2] if args.full else [0])
    epochs = args.epochs if args.epochs is not None else (FULL_EPOCHS if args.full else DEFAULT_EPOCHS)
    cores = _usable_cores()
    jobs = args.jobs if args.jobs else min(cores, 4)
    if epochs < 1 or jobs < 1:
        raise UserError("--epochs and --jobs must be at least 1.")
    if args.costs_only and (args.no_cost or args.report_only):
        raise UserError("--costs-only measures the costs and trains nothing: not with --no-cost or --report-only.")
    out = (args.out if args.out is not None else root / "benchmarks" / "results" / "leaderboard").resolve()
    store = ResultStore(out / "results.json")
    tracking_uri = sqlite_tracking_uri(str(out))
    threads = max(1, cores // jobs)
    say_lock = threading.Lock()

    def say(text: str) -> None:
        with say_lock:
            print(f"[benchmark {_fmt_time(time.time() - start)}] {text}", flush=True)

    say(f"{len(suites)} suite(s) x {len(arms)} arm(s) x {len(seeds)} seed(s), {epochs} epochs, {jobs} job(s); out {out}")
    datas, label_stats = {}, {}
    for suite in suites:
        datas[suite.name] = prepare_suite(suite, out)
        label_stats[suite.name] = label_statistics(datas[suite.name])
    # arms that train the same configuration on a suite (the same bundle, merged config and labels) share one run
    groups: dict[str, list[list]] = {}
    for suite in suites:
        by_config: dict[str, list] = {}
        for arm in arms:
            if arm.runs_on(suite.settings, datas[suite.name].oracle_datalist is not None):
                by_config.setdefault(training_configuration(arm, datas[suite.name], root), []).append(arm)
        groups[suite.name] = list(by_config.values())
    arms_by_name = {a.name: a for a in arms}

    def take_run(spec: RunSpec, arm, record: dict, trained_by: str) -> None:
        """Store (and log to MLflow) ``record``, trained by the arm ``trained_by``, as ``arm``'s run ``spec``."""
        copy = {**record, "arm": arm.name, "bundle": arm.bundle, "role": arm.role, "same_as": trained_by}
        try:
            copy["mlflow_run_id"] = log_mlflow_run(tracking_uri, spec, arm, copy)
        except Exception as e:  # noqa: BLE001 - a tracking problem must not lose the run
            say(f"MLflow logging of {spec} failed: {e}")
        store.put_run(spec, copy)

    todo, skipped, shared = [], 0, 0
    followers: dict[str, list] = {}  # a run's key -> the (spec, arm) of the arms that take its record
    def trained_itself(spec: RunSpec) -> bool:
        return store.done(spec) and not store.run(spec).get("same_as")

    for seed in seeds:  # seeds outermost: a deadline leaves whole tables of the first seeds
        for suite in suites:
            for group in groups[suite.name]:
                # one arm of the group trains on every seed (the one that trained most runs itself, else the
                # first), so that its row holds the runs and the others' rows say whose they are
                owner = max(group, key=lambda a: sum(trained_itself(RunSpec(suite.name, a.name, k, epochs)) for k in seeds))
                group = [owner, *(a for a in group if a is not owner)]
                specs = [(RunSpec(suite.name, arm.name, seed, epochs), arm) for arm in group]
                primary = specs[0]
                adopted = next((s for s, _ in specs[1:] if trained_itself(s)), None)
                if not args.rerun and not trained_itself(primary[0]) and adopted is not None:
                    # this seed was trained under another arm of the group: the owner takes it as its own run
                    record = {**store.run(adopted), "arm": owner.name, "bundle": owner.bundle, "role": owner.role}
                    store.data["runs"][adopted.key]["same_as"] = owner.name
                    store.put_run(primary[0], record)
                others = [(s, a) for s, a in specs[1:] if args.rerun or not store.done(s)]
                if store.done(primary[0]) and not args.rerun:
                    skipped += len(specs) - len(others)
                    for spec, arm in others:
                        take_run(spec, arm, store.run(primary[0]), primary[1].name)
                else:
                    todo.append(primary)
                    followers[primary[0].key] = others
                    skipped += len(specs) - 1 - len(others)
                shared += len(others)
    if args.report_only or args.costs_only:
        todo = []
    say(f"{len(todo)} run(s) to do, {skipped} already finished (kept; --rerun trains them again)"
        + (f"; {shared} run(s) of arms whose configuration on the suite is another arm's take that arm's run"
           if shared else ""))

    if not args.no_cost and not args.report_only:
        # --rerun and --costs-only measure every cost again, once per configuration in this call: the costs of one
        # call were taken under one load, so their ratios compare
        measured: set[str] = set()

        def current_cost(key: str) -> bool:
            done = store.data["costs"].get(key, {}).get("status") == "done"
            return done and (key in measured or not (args.rerun or args.costs_only))

        for arm in arms:
            # the dimensions of the selected suites the arm runs on (none: an arm n/a everywhere costs nothing)
            for dims in sorted({s.spatial_dims for s in suites
                                if arm.runs_on(s.settings, datas[s.name].oracle_datalist is not None)}):
                key = f"{arm.name}|{dims}"
                if current_cost(key):
                    continue
                same = next((f"{a.name}|{dims}" for a in arms if a is not arm and (a.bundle, a.overrides) ==
                             (arm.bundle, arm.overrides) and current_cost(f"{a.name}|{dims}")), None)
                if same is not None:  # the same bundle and overrides: the same network and step
                    store.put_cost(key, store.data["costs"][same])
                    measured.add(key)
                    continue
                say(f"cost of {arm.name} ({dims}D): {args.cost_steps} train steps ...")
                record = measure_cost(arm, dims, out, root, args.cost_steps, 2, cores)
                store.put_cost(key, record)
                measured.add(key)
                if record["status"] != "done":
                    say(f"cost of {arm.name} ({dims}D) FAILED, see {record['log']}")

    finished = failed = 0
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        pending, queue = set(), list(todo)
        running = {}

        def submit() -> None:
            while queue and len(pending) < jobs:
                if args.deadline is not None and time.time() - start > args.deadline:
                    say(f"deadline reached: {len(queue)} run(s) left for the next call")
                    queue.clear()
                    return
                spec, arm = queue.pop(0)
                say(f"start {spec} ({len(running) + 1} running, {len(queue)} waiting)")
                future = pool.submit(run_one, spec, arm, datas[spec.suite], out, root, threads, args.rerun)
                pending.add(future)
                running[future] = spec

        submit()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                pending.discard(future)
                spec = running.pop(future)
                record = future.result()
                try:
                    record["mlflow_run_id"] = log_mlflow_run(tracking_uri, spec, arms_by_name[spec.arm], record)
                except Exception as e:  # noqa: BLE001 - a tracking problem must not lose the run
                    say(f"MLflow logging of {spec} failed: {e}")
                store.put_run(spec, record)
                for follower, follower_arm in followers.get(spec.key, []):
                    take_run(follower, follower_arm, record, spec.arm)
                if record["status"] == "done":
                    finished += 1
                    say(f"done {spec}: Dice {record.get('dice', float('nan')):.3f}, trained in {record['train_s']:.0f} s "
                        f"({finished + failed}/{len(todo)})")
                else:
                    failed += 1
                    say(f"FAILED {spec}: {record['error']} ({finished + failed}/{len(todo)})")
            submit()

    # every selected run of results.json has its MLflow run here, also when results.json came from another machine
    # or the tracking store was lost (results.json is what a published leaderboard keeps; mlflow.db is not)
    try:
        specs = [RunSpec(suite, arm, seed, epochs) for suite in datas for arm in arms_by_name for seed in seeds]
        logged = log_missing_mlflow_runs(tracking_uri, store, specs, arms_by_name)
        if logged:
            say(f"{logged} run(s) of results.json had no MLflow run in {tracking_uri}: logged")
    except Exception as e:  # noqa: BLE001 - a tracking problem must not lose the leaderboard
        say(f"MLflow logging of the stored runs failed: {e}")

    tables = leaderboard_rows(suites, arms, seeds, epochs, store.data, label_stats)
    # the command that selects these runs (a --report-only call reports what the same command trained)
    command = "multirater " + shlex.join(a for a in args.argv if a != "--report-only")
    machine = f"{platform.machine()}, {cores} CPU cores" + _gpu_text()
    files = write_reports(out, tables, suites, seeds, epochs, label_stats, command, time.strftime("%Y-%m-%d"),
                          machine, tracking_uri)
    print(files["markdown"].read_text())
    say(f"leaderboard: {files['markdown']}; index: {files['index']}; MLflow: mlflow ui --backend-store-uri {tracking_uri}")
    failures = [r for r in store.data["runs"].values()
                if r.get("status") != "done" and r["suite"] in datas and r["arm"] in arms_by_name
                and r["seed"] in seeds and r["epochs"] == epochs]
    for r in failures:
        say(f"FAILED {r['suite']} / {r['arm']} / seed {r['seed']}: {r.get('error')} (log {r.get('log')})")
    return 1 if failures else 0


def _gpu_text() -> str:
    try:
        import torch

        return f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    except Exception:  # noqa: BLE001
        return ""
