"""``multirater benchmark``: arms read from the bundles, suites, the results store and resume, the leaderboard
tables, and one tiny benchmark end to end (table, plots, MLflow runs, a broken arm, resuming)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from multirater_monai.benchmark import runner
from multirater_monai.benchmark.arms import Arm, discover_arms, reference_arm, resolve_arms
from multirater_monai.benchmark.report import leaderboard_rows, markdown_table, protocol_runs, runs_finished_line
from multirater_monai.benchmark.runner import ResultStore, RunSpec, run_one
from multirater_monai.benchmark.suites import (
    SYNTHETIC_SUITES,
    SuiteData,
    dataset_suite,
    label_statistics,
    prepare_suite,
    with_num_train,
)
from multirater_monai.errors import UserError
from multirater_monai.metrics import compute_rater_dice

ROOT = Path(__file__).resolve().parents[1]


def _write_bundle(root: Path, name: str, arms: object) -> Path:
    configs = root / "bundles" / name / "configs"
    configs.mkdir(parents=True)
    (configs / "train.json").write_text(json.dumps({"k": 0, "net": {"_target_": "torch.nn.Identity"}}))
    (configs / "metadata.json").write_text(json.dumps({"name": name, "benchmark_arms": arms}))
    return configs / "metadata.json"


# ---------------------------------------------------------------- arms


def test_every_bundle_declares_its_arms():
    arms = discover_arms(ROOT)
    bundles = sorted(p.name for p in (ROOT / "bundles").iterdir() if (p / "configs" / "train.json").is_file())
    for bundle in bundles:  # each bundle contributes its default to the default protocol, or to the full one when
        # one run costs more than the default protocol's 20-minute budget allows
        assert any(a.bundle == bundle and a.protocol in ("default", "full") for a in arms.values()), bundle
    assert all(a.protocol == "default" for a in arms.values() if a.bundle in ("fused_unet", "cmnet") and
               a.name in ("oracle", "mean", "majority", "staple", "cmnet_pixel"))
    assert reference_arm(arms).name == "majority"
    assert {"oracle", "mean", "majority", "staple", "cmnet_pixel", "cmnet_paper", "cmnet_global", "cmnet_lowrank"} <= set(arms)
    assert arms["oracle"].oracle
    # the paper's forms pin the paper's per-rater heads, so that their results stay those of the paper's layout
    assert arms["cmnet_lowrank"].overrides == {"cm_type": "low_rank", "rank": 1, "head_hidden": "per_rater"}
    assert arms["cmnet_paper"].overrides == {"cm_type": "pixel", "head_hidden": "per_rater"}


def test_a_new_bundle_appears_without_editing_the_command(tmp_path):
    _write_bundle(tmp_path, "newmethod", {"newmethod": {"overrides": {"k": 1}, "settings": ["one_annotator"]},
                                          "newmethod_big": {"overrides": {"k": 2}, "protocol": "full"}})
    _write_bundle(tmp_path, "base", {"majority": {"overrides": {}, "role": "baseline", "reference": True}})
    assert [a.name for a in resolve_arms(tmp_path, None, "default")] == ["majority", "newmethod"]
    assert [a.name for a in resolve_arms(tmp_path, None, "full")] == ["majority", "newmethod", "newmethod_big"]
    # a variant spec of a present bundle is an arm too, with the settings its bundle declares
    spec = resolve_arms(tmp_path, ["newmethod:k=3"], "default")[0]
    assert (spec.bundle, spec.overrides, spec.settings) == ("newmethod", {"k": 3}, ("one_annotator",))
    with pytest.raises(UserError, match="unknown arm 'nope'"):
        resolve_arms(tmp_path, ["nope"], "default")
    with pytest.raises(UserError, match="unknown arm 'absent:k=1'"):
        resolve_arms(tmp_path, ["absent:k=1"], "default")


def test_an_arm_whose_override_names_no_config_id_is_refused(tmp_path):
    """`cmnet:head_channels=32` set an unused top-level id and trained the default network under the variant's
    name; an override must name a config id of the bundle's train.json (a section's new key is an argument)."""
    _write_bundle(tmp_path, "newmethod", {"newmethod": {"overrides": {"k": 1}}})
    assert resolve_arms(tmp_path, ["newmethod:net#width=3,k=2"], "default")[0].overrides == {"net#width": 3, "k": 2}
    with pytest.raises(UserError, match=r"arm 'newmethod:width=3': 'width' is not a config id of .*train.json"):
        resolve_arms(tmp_path, ["newmethod:width=3"], "default")
    with pytest.raises(UserError, match="'nosection#k' is not a config id"):
        resolve_arms(tmp_path, ["newmethod:nosection#k=1"], "default")
    _write_bundle(tmp_path, "typo", {"typo": {"overrides": {"kk": 1}}})
    with pytest.raises(UserError, match="arm 'typo': 'kk' is not a config id"):
        resolve_arms(tmp_path, None, "default")
    # the real bundle: the hint names the network's argument
    with pytest.raises(UserError, match="did you mean network_def#head_channels"):
        resolve_arms(ROOT, ["cmnet:head_channels=32"], "default")


@pytest.mark.parametrize(
    "arms,message",
    [
        ({"a": {"overrides": [], "role": "method"}}, "must be an object with an 'overrides' object"),
        ({"a": {"overrides": {}, "protocol": "sometimes"}}, "protocol must be one of"),
        ({"a": {"overrides": {}, "colour": "red"}}, "unknown field"),
        ({"a": {"overrides": {}, "settings": []}}, "settings must be a non-empty list"),
        (["a"], "must be an object of arm name"),
    ],
)
def test_a_malformed_declaration_names_the_file(tmp_path, arms, message):
    metadata = _write_bundle(tmp_path, "broken", arms)
    with pytest.raises(UserError, match=message) as info:
        discover_arms(tmp_path)
    assert str(metadata) in str(info.value)


def test_an_arm_declared_twice_is_refused(tmp_path):
    _write_bundle(tmp_path, "one", {"same": {"overrides": {}}})
    _write_bundle(tmp_path, "two", {"same": {"overrides": {}}})
    with pytest.raises(UserError, match="also declared by bundle 'one'"):
        discover_arms(tmp_path)


def test_an_arm_runs_only_on_suites_of_its_setting():
    one_annotator = Arm("tax", "tax", settings=("one_annotator",))
    assert not one_annotator.fits(SYNTHETIC_SUITES["default"].settings)
    assert one_annotator.fits(SYNTHETIC_SUITES["one-label"].settings)
    assert Arm("m", "cmnet").fits(SYNTHETIC_SUITES["default"].settings)


# ---------------------------------------------------------------- suites


def test_suites_cover_the_protocol():
    suites = SYNTHETIC_SUITES
    assert suites["one-label"].synthetic["labels_per_image"] == 1
    assert suites["3d"].spatial_dims == 3 and suites["default"].spatial_dims == 2
    assert suites["lesion"].synthetic["layout"] == "lesion" and suites["lesion"].synthetic["num_train"] == 64
    ladder = sorted((s for s in suites.values() if s.noise is not None), key=lambda s: s.noise)
    assert len(ladder) >= 4 and all(len(set(s.synthetic["raters"])) == 5 for s in ladder)
    visible, hidden = suites["tendency"], suites["tendency-random"]
    assert "one_annotator" in visible.settings and visible.synthetic["assignment"] == "scanner"
    assert {k: v for k, v in visible.synthetic.items() if k != "assignment"} == {k: v for k, v in hidden.synthetic.items() if k != "assignment"}
    small = with_num_train(suites["lesion"], 16)
    assert small.name == "lesion-n16" and small.synthetic["num_train"] == 16 and small.synthetic["layout"] == "lesion"


def test_noise_ladder_degrades_the_fused_labels(tmp_path):
    """The ladder's two ends: fused labels equal to the truth at the low end, Dice near 0.5 at the high end."""
    ends = [SYNTHETIC_SUITES["noise-0.5"], SYNTHETIC_SUITES["noise-6"]]
    dice = []
    for suite in ends:
        suite = replace(suite, synthetic={**suite.synthetic, "num_train": 12, "num_val": 1, "num_test": 1})
        stats = label_statistics(prepare_suite(suite, tmp_path))
        dice.append(stats["majority"]["label_dice"])
        assert set(stats) == {"mean", "majority", "staple"} and "cm_error" in stats["staple"]
    assert dice[0] > 0.97 and 0.4 < dice[1] < 0.62, dice  # the clean end (sub-pixel radii) and the noisy end


def test_prepare_suite_writes_the_oracle_datalist(tmp_path):
    suite = replace(SYNTHETIC_SUITES["default"], synthetic={**SYNTHETIC_SUITES["default"].synthetic, "num_train": 3,
                                                           "num_val": 1, "num_test": 1})
    data = prepare_suite(suite, tmp_path)
    oracle = json.loads(data.oracle_datalist.read_text())
    item = oracle["training"][0]
    assert oracle["raters"] == ["truth"] and item["label"] == [item["gt"]] and Path(item["gt"]).is_file()
    assert data.overrides == {"datalist": str(data.datalist), "num_raters": 5}


def test_a_multi_class_suite_gives_its_class_count_to_every_run(tmp_path):
    """`scales` holds four classes: every arm is run with num_classes 4 (the two-class suites keep each bundle's own),
    and only arms declaring the multi_class setting run there."""
    suite = SYNTHETIC_SUITES["scales"]
    small = replace(suite, synthetic={**suite.synthetic, "num_train": 4, "num_val": 1, "num_test": 1})
    data = prepare_suite(small, tmp_path)
    assert data.overrides["num_classes"] == 4
    content = json.loads(data.datalist.read_text())
    assert content["num_classes"] == 4
    assert Arm("s", "scaleprotoseg", settings=("multi_class",)).fits(suite.settings)
    assert not Arm("m", "mrprism").fits(suite.settings)


def test_the_3d_lesion_suite_holds_small_lesions_in_volumes(tmp_path):
    """`lesion-3d`: 3D volumes with one lesion of 0.2-1 % of the voxels each (the regime of MS lesions)."""
    import nibabel as nib
    import numpy as np

    suite = SYNTHETIC_SUITES["lesion-3d"]
    assert suite.spatial_dims == 3
    small = replace(suite, synthetic={**suite.synthetic, "num_train": 4, "num_val": 1, "num_test": 1})
    data = prepare_suite(small, tmp_path)
    assert data.overrides["num_raters"] == 4
    oracle = json.loads(data.oracle_datalist.read_text())
    for item in oracle["training"]:
        truth = np.asarray(nib.load(item["gt"]).dataobj)
        assert truth.ndim == 3 and 0.001 < (truth == 1).mean() < 0.015


def test_dataset_suite_without_a_reference_has_no_oracle(tmp_path):
    from multirater_monai.data.real import prepare_lidc
    from multirater_monai.data.real.replicas import make_lidc_pickle_replica

    folder = tmp_path / "lidc"
    prepare_lidc(make_lidc_pickle_replica(tmp_path / "src", num_patients=4, crops_per_patient=1, size=16), folder)
    suite = dataset_suite(folder)
    assert suite.name == "lidc" and suite.spatial_dims == 2 and "fused raters" in suite.description
    data = prepare_suite(suite, tmp_path / "out")
    assert data.config_files == [folder / "bundle_config.json"] and data.oracle_datalist is None
    assert label_statistics(data) == {}
    with pytest.raises(UserError, match="bundle_config.json: missing"):
        dataset_suite(tmp_path / "src")


# ---------------------------------------------------------------- per-rater Dice


def test_rater_dice_by_hand():
    truth = torch.tensor([[[0, 1, 1, 0]], [[1, 1, 0, 0]], [[-1, -1, -1, -1]]])[None]  # (1, R=3, 1, 4)
    pred = torch.tensor([[[0, 1, 0, 0]], [[1, 1, 0, 0]], [[1, 1, 1, 1]]])[None]
    scores = compute_rater_dice(pred, truth, num_classes=2)
    assert scores.shape == (1, 3)
    assert scores[0, 0] == pytest.approx(2 * 1 / (1 + 2)) and scores[0, 1] == 1.0 and torch.isnan(scores[0, 2])
    three = compute_rater_dice(torch.tensor([[[[2, 1]]]]), torch.tensor([[[[2, 2]]]]), num_classes=3)
    assert three[0, 0] == pytest.approx((0.0 + 2 / 3) / 2)  # class 1: empty vs one pixel; class 2: 1 of 2


# ---------------------------------------------------------------- results store, resume, tables


def test_store_is_resumable_and_keyed_by_run(tmp_path):
    store = ResultStore(tmp_path / "results.json")
    spec = RunSpec("default", "majority", 0, 60)
    store.put_run(spec, {"status": "failed"})
    assert not store.done(spec)
    store.put_run(spec, {"status": "done", "dice": 0.8})
    store.put_run(RunSpec("default", "majority", 0, 5), {"status": "done", "dice": 0.1})
    again = ResultStore(tmp_path / "results.json")
    assert again.done(spec) and again.run(spec)["dice"] == 0.8 and len(again.data["runs"]) == 2
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserError, match="bad.json: not valid JSON"):
        ResultStore(tmp_path / "bad.json")


def test_an_interrupted_training_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    calls = []

    def fake_run(config_files, overrides, log, threads, root):
        calls.append((Path(config_files[-1]).name, dict(overrides)))
        if "evaluate.json" in [Path(f).name for f in config_files]:
            (Path(overrides["eval_dir"])).mkdir(parents=True, exist_ok=True)
            (Path(overrides["eval_dir"]) / "metrics.csv").write_text("dice,0.5\n")
        return {"seconds": 1.0, "peak_mib": 10.0}

    monkeypatch.setattr(runner, "_bundle_run", fake_run)
    data = SuiteData(SYNTHETIC_SUITES["default"], tmp_path / "datalist.json", overrides={"num_raters": 5},
                     oracle_datalist=tmp_path / "oracle.json")
    spec, arm = RunSpec("default", "oracle", 0, 3), Arm("oracle", "fused_unet", {"fusion": "majority"}, role="oracle")
    checkpoints = runner.run_folder(tmp_path, spec) / "models" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "checkpoint_epoch=1.pt").write_bytes(b"x")
    record = run_one(spec, arm, data, tmp_path, ROOT, threads=1)
    (train_file, train), (eval_file, evaluate) = calls
    assert (train_file, eval_file) == ("train.json", "evaluate.json")
    assert train["resume"] is True and record["resumed"] and record["status"] == "done" and record["dice"] == 0.5
    assert record["threads"] == 1  # with the seed, what makes a run reproducible bit for bit on a CPU
    # the oracle trains on the truth and is evaluated on the suite's raters
    assert train["datalist"] == str(tmp_path / "oracle.json") and train["num_raters"] == 1
    assert "datalist" not in evaluate and evaluate["num_raters"] == 5 and "resume" not in evaluate
    assert train["max_epochs"] == 3 and train["seed"] == 0 and train["mlflow_enabled"] is False
    # a run interrupted after training is only evaluated
    calls.clear()
    run_one(spec, arm, data, tmp_path, ROOT, threads=1)
    assert [name for name, _ in calls] == ["evaluate.json"]


def _record(suite, arm, seed, dice, status="done", **extra):
    return {"suite": suite, "arm": arm, "seed": seed, "epochs": 5, "status": status, "dice": dice, **extra}


def test_leaderboard_means_best_na_and_failures():
    arms = [Arm("oracle", "fused_unet", {"fusion": "majority"}, role="oracle"),
            Arm("majority", "fused_unet", {"fusion": "majority"}, role="baseline", reference=True),
            Arm("cmnet_pixel", "cmnet"),
            Arm("tax", "tax", settings=("one_annotator",)),
            Arm("broken", "cmnet")]
    runs = [_record("default", "oracle", 0, 0.95), _record("default", "majority", 0, 0.80, train_s=100.0),
            _record("default", "majority", 1, 0.70, train_s=120.0), _record("default", "cmnet_pixel", 0, 0.90, train_s=330.0),
            _record("default", "oracle", 1, 0.93, train_s=5.0, resumed=True),
            _record("default", "broken", 0, None, status="failed", log="/x/train.log", error="exit code 1")]
    store = {"runs": {RunSpec(r["suite"], r["arm"], r["seed"], 5).key: r for r in runs},
             "costs": {"majority|2": {"status": "done", "step_ms_median": 10.0, "peak_over_idle_mib": 50.0, "parameters": 7},
                       "cmnet_pixel|2": {"status": "done", "step_ms_median": 30.0, "peak_over_idle_mib": 100.0,
                                         "parameters": 9}}}
    stats = {"default": {"majority": {"label_dice": 0.93}}}
    rows = {r.arm.name: r for r in leaderboard_rows([SYNTHETIC_SUITES["default"]], arms, [0, 1], 5, store, stats)["default"]}
    assert rows["majority"].mean("dice") == pytest.approx(0.75) and rows["majority"].status == "done"
    # a resumed run's Dice counts; its wall time (of the last part only) does not
    assert rows["oracle"].values["dice"] == [0.95, 0.93] and "train_s" not in rows["oracle"].values
    assert rows["cmnet_pixel"].status == "partial" and rows["tax"].status == "n/a" and rows["broken"].status == "failed"
    assert rows["cmnet_pixel"].cost["step_ratio"] == 3.0 and rows["cmnet_pixel"].cost["memory_ratio"] == 2.0
    assert rows["cmnet_pixel"].cost["train_ratio"] == pytest.approx(3.0)
    table = markdown_table(list(rows.values()), [0, 1])
    lines = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    assert "0.750 ± 0.071" in lines["majority"] and "2/2" in lines["majority"] and "0.930" in lines["majority"]
    assert "**0.900**" in lines["cmnet_pixel"] and "1/2" in lines["cmnet_pixel"] and "3.00×" in lines["cmnet_pixel"]
    assert "**" not in lines["oracle (oracle)"]  # the ceiling is not ranked, though its Dice is the highest
    assert "n/a" in lines["tax"] and "/x/train.log" in lines["broken"]
    # what is left of the protocol: 2 seeds of the 4 arms that fit (tax does not), 5 runs finished
    assert protocol_runs(list(rows.values()), [0, 1]) == (5, 8)


def test_the_index_says_whether_the_protocol_is_complete():
    assert "trained by the next call" in runs_finished_line(5, 8) and "complete" not in runs_finished_line(5, 8)
    complete = runs_finished_line(8, 8)
    assert complete.startswith("8 of the 8 runs") and "complete" in complete and "next call" not in complete


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_tiny_benchmark_end_to_end(tmp_path):
    """Two arms and a broken one, one epoch, four training images: table, CSV, plots and MLflow runs hold the runs'
    numbers; the broken arm is reported failed with its log while the others run; a second call trains nothing
    that finished."""
    repo = tmp_path / "repo"
    for name in ("cmnet", "fused_unet"):
        shutil.copytree(ROOT / "bundles" / name, repo / "bundles" / name,
                        ignore=shutil.ignore_patterns("models", "runs", "eval", "datasets"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "multirater_monai.cli", "benchmark", "--root", str(repo), "--out", str(out),
           "--suites", "default", "--num-train", "4", "--epochs", "1", "--jobs", "2", "--cost-steps", "1",
           "--arms", "majority", "cmnet_pixel", "fused_unet:fusion=no_such_fusion"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert first.returncode == 1, (first.stdout + first.stderr)[-4000:]  # one arm failed
    results = json.loads((out / "results.json").read_text())["runs"]
    done = {r["arm"]: r for r in results.values() if r["status"] == "done"}
    failed = [r for r in results.values() if r["status"] == "failed"]
    assert set(done) == {"majority", "cmnet_pixel"}
    assert all(r["kept_epoch"] == 1 for r in done.values())  # the epoch model selection kept (of one)
    assert len(failed) == 1 and Path(failed[0]["log"]).is_file() and "no_such_fusion" in Path(failed[0]["log"]).read_text()
    table = (out / "leaderboard.md").read_text()
    for arm, record in done.items():
        line = next(line for line in table.splitlines() if line.startswith(f"| {arm} |"))
        assert f"{record['dice']:.3f}" in line and "1/1" in line
    assert failed[0]["log"] in table and "rater Dice" in table
    with open(out / "leaderboard.csv") as f:
        rows = {r["arm"]: r for r in csv.DictReader(f)}
    assert float(rows["cmnet_pixel"]["dice_mean"]) == pytest.approx(done["cmnet_pixel"]["dice"])
    assert float(rows["cmnet_pixel"]["step_ratio"]) > 0 and int(rows["majority"]["parameters"]) > 0
    assert (out / "cost_default-n4.png").stat().st_size > 1000 and (out / "index.md").is_file()
    assert "2 of the 3 runs of this command finished" in (out / "index.md").read_text() and "2 of 3 runs finished." in table
    # the index names the MLflow store relative to its folder: no path of this machine in a committed leaderboard
    assert "`mlflow ui --backend-store-uri sqlite:///mlflow.db` (from this folder" in (out / "index.md").read_text()
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("benchmark/default-n4")
    runs = {r.data.tags["arm"]: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"majority", "cmnet_pixel", "fused_unet:fusion=no_such_fusion"}
    assert runs["cmnet_pixel"].data.metrics["dice"] == pytest.approx(done["cmnet_pixel"]["dice"])
    assert runs["majority"].data.metrics["kept_epoch"] == 1
    assert runs["majority"].data.tags["seed"] == "0" and runs["fused_unet:fusion=no_such_fusion"].data.tags["status"] == "failed"

    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert second.returncode == 1
    started = [line for line in second.stdout.splitlines() if "] start " in line]
    assert len(started) == 1 and "no_such_fusion" in started[0], second.stdout[-3000:]  # finished runs are kept
    assert "2 already finished" in second.stdout


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity is a Linux call")
def test_jobs_and_threads_follow_the_cpu_set_not_the_machine():
    """Under `taskset -c 0` a 2-core machine gives the benchmark one core: one job of one thread, not two."""
    from multirater_monai.benchmark.command import _usable_cores

    allowed = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(allowed)})
        assert _usable_cores() == 1
    finally:
        os.sched_setaffinity(0, allowed)
    assert _usable_cores() == len(allowed)


def test_median_ms_warms_up_then_times_each_repeat():
    from multirater_monai.benchmark.cost import median_ms

    calls = []
    assert median_ms(lambda: calls.append(1), repeats=3, warmup=2) >= 0
    assert len(calls) == 5


def test_arms_of_one_configuration_share_a_run_and_unfit_arms_cost_nothing(tmp_path, monkeypatch):
    """In 3D the CM-Net bundle's default is the paper's heads, so cmnet_pixel and cmnet_paper train the same
    configuration there: the benchmark trains it once and both rows hold that run; in 2D they differ and both
    train. A finished run of either is taken rather than trained again. An arm that fits none of the selected
    suites (TAX: one annotator per image) gets no train-step measurement."""
    from multirater_monai.cli import main

    trained, costed = [], []

    def fake_run_one(spec, arm, data, out, root, threads, rerun=False):
        trained.append((spec.suite, spec.arm, spec.seed))
        return {"suite": spec.suite, "arm": arm.name, "bundle": arm.bundle, "role": arm.role, "seed": spec.seed,
                "epochs": spec.epochs, "status": "done", "dice": 0.1 * len(trained), "train_s": 1.0}

    def fake_cost(arm, dims, *args):
        costed.append((arm.name, dims))
        return {"status": "failed", "error": "not measured here", "log": "cost.log"}

    monkeypatch.setattr(runner, "run_one", fake_run_one)
    monkeypatch.setattr(runner, "measure_cost", fake_cost)
    out = tmp_path / "out"
    argv = ["benchmark", "--root", str(ROOT), "--out", str(out), "--suites", "default", "3d", "--num-train", "2",
            "--epochs", "1", "--jobs", "1", "--arms", "cmnet_pixel", "cmnet_paper", "tax", "--seeds", "0"]
    assert main(argv) == 0
    assert sorted(trained) == [("3d-n2", "cmnet_pixel", 0), ("default-n2", "cmnet_paper", 0), ("default-n2", "cmnet_pixel", 0)]
    assert sorted(costed) == [("cmnet_paper", 2), ("cmnet_paper", 3), ("cmnet_pixel", 2), ("cmnet_pixel", 3)]
    runs = ResultStore(out / "results.json").data["runs"]
    pixel, paper = runs["3d-n2|cmnet_pixel|0|1"], runs["3d-n2|cmnet_paper|0|1"]
    assert paper["same_as"] == "cmnet_pixel" and paper["dice"] == pixel["dice"] and "same_as" not in pixel
    assert paper["arm"] == "cmnet_paper" and "same_as" not in runs["default-n2|cmnet_paper|0|1"]
    table = (out / "leaderboard.md").read_text().split("## 3d-n2")[1]
    assert "| cmnet_paper (= cmnet_pixel: the same configuration) |" in table
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("benchmark/3d-n2")
    tags = {r.data.tags["arm"]: r.data.tags for r in client.search_runs([experiment.experiment_id])}
    assert tags["cmnet_paper"]["same_as"] == "cmnet_pixel" and "same_as" not in tags["cmnet_pixel"]

    # seed 1 was trained under cmnet_paper (before the two were known to be one): it is not trained again, and
    # cmnet_pixel, which holds the group's runs, takes it, so that one row holds every seed and the other says whose
    store = ResultStore(out / "results.json")
    store.put_run(RunSpec("3d-n2", "cmnet_paper", 1, 1), {**pixel, "arm": "cmnet_paper", "seed": 1, "dice": 0.77})
    store.put_run(RunSpec("3d-n2", "cmnet_pixel", 1, 1), {**pixel, "seed": 1, "dice": 0.77, "same_as": "cmnet_paper"})
    trained.clear()
    assert main([*argv[:-1], "0", "1"]) == 0
    assert sorted(trained) == [("default-n2", "cmnet_paper", 1), ("default-n2", "cmnet_pixel", 1)]
    runs = ResultStore(out / "results.json").data["runs"]
    assert runs["3d-n2|cmnet_pixel|1|1"]["dice"] == 0.77 and "same_as" not in runs["3d-n2|cmnet_pixel|1|1"]
    assert runs["3d-n2|cmnet_paper|1|1"]["same_as"] == "cmnet_pixel"
    table = (out / "leaderboard.md").read_text().split("## 3d-n2")[1]
    assert "| cmnet_pixel | cmnet | 2/2 |" in table and "| cmnet_paper (= cmnet_pixel: the same configuration) | cmnet | 2/2 |" in table


def test_a_results_file_without_its_mlflow_store_gets_its_runs_logged_again(tmp_path, monkeypatch):
    """A published leaderboard keeps results.json but not mlflow.db: a later call (here --report-only) logs every
    stored run that the tracking store lacks, with its numbers and tags, and records the new run ids; a further
    call logs nothing twice."""
    import mlflow

    from multirater_monai.cli import main

    def fake_run_one(spec, arm, data, out, root, threads, rerun=False):
        return {"suite": spec.suite, "arm": arm.name, "bundle": arm.bundle, "role": arm.role, "seed": spec.seed,
                "epochs": spec.epochs, "threads": threads, "status": "done", "dice": 0.5 + spec.seed / 10,
                "train_s": 1.0}

    monkeypatch.setattr(runner, "run_one", fake_run_one)
    out = tmp_path / "out"
    argv = ["benchmark", "--root", str(ROOT), "--out", str(out), "--suites", "default", "--num-train", "2",
            "--epochs", "1", "--jobs", "1", "--no-cost", "--arms", "majority", "--seeds", "0", "1"]
    assert main(argv) == 0
    old_ids = {k: r["mlflow_run_id"] for k, r in ResultStore(out / "results.json").data["runs"].items()}
    copy = tmp_path / "copy"  # results.json alone, as committed or copied to another machine
    copy.mkdir()
    shutil.copy(out / "results.json", copy / "results.json")
    out = copy
    argv[argv.index("--out") + 1] = str(copy)

    def logged_runs() -> dict:
        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("benchmark/default-n2")
        return {r.info.run_id: r for r in client.search_runs([experiment.experiment_id])}

    assert main([*argv, "--report-only"]) == 0
    runs = ResultStore(out / "results.json").data["runs"]
    logged = logged_runs()
    assert set(logged) == {r["mlflow_run_id"] for r in runs.values()} and len(logged) == 2
    assert not set(logged) & set(old_ids.values())
    for record in runs.values():
        run = logged[record["mlflow_run_id"]]
        assert run.data.metrics["dice"] == pytest.approx(record["dice"])
        assert run.data.tags["seed"] == str(record["seed"]) and run.data.tags["arm"] == "majority"
    assert main([*argv, "--report-only"]) == 0
    assert set(logged_runs()) == set(logged)


def test_costs_only_measures_every_cost_again_in_one_call_and_trains_nothing(tmp_path, monkeypatch, capsys):
    """The cost columns compare only when measured under one load: --costs-only measures every selected arm's
    cost again (once per bundle and overrides), keeps every run, trains nothing and writes the leaderboard with
    the new costs; a plain call keeps the costs it finds."""
    from multirater_monai.cli import main

    trained, costed = [], []

    def fake_run_one(spec, arm, data, out, root, threads, rerun=False):
        trained.append(spec.arm)
        return {"suite": spec.suite, "arm": arm.name, "bundle": arm.bundle, "role": arm.role, "seed": spec.seed,
                "epochs": spec.epochs, "status": "done", "dice": 0.5, "train_s": 1.0}

    def fake_cost(arm, dims, *args):
        costed.append(arm.name)
        return {"status": "done", "step_ms_median": 10.0 * len(costed), "peak_over_idle_mib": 1.0, "parameters": 3}

    monkeypatch.setattr(runner, "run_one", fake_run_one)
    monkeypatch.setattr(runner, "measure_cost", fake_cost)
    out = tmp_path / "out"
    same = "fused_unet:fusion=majority"  # the majority arm's bundle and overrides under another name
    argv = ["benchmark", "--root", str(ROOT), "--out", str(out), "--suites", "default", "--num-train", "2",
            "--epochs", "1", "--jobs", "1", "--arms", "majority", same, "cmnet_pixel", "--seeds", "0"]
    assert main(argv) == 0
    assert sorted(trained) == ["cmnet_pixel", "majority"] and sorted(costed) == ["cmnet_pixel", "majority"]
    runs = ResultStore(out / "results.json").data["runs"]

    trained.clear(), costed.clear()
    assert main(argv) == 0  # a plain call keeps the costs it finds
    assert trained == [] and costed == []
    assert main([*argv, "--costs-only"]) == 0
    assert trained == [] and sorted(costed) == ["cmnet_pixel", "majority"]
    data = ResultStore(out / "results.json").data
    assert {k: r["dice"] for k, r in data["runs"].items()} == {k: r["dice"] for k, r in runs.items()}
    costs = {k.split("|")[0]: c["step_ms_median"] for k, c in data["costs"].items()}
    assert costs[same] == costs["majority"] and sorted({costs["majority"], costs["cmnet_pixel"]}) == [10.0, 20.0]
    rows = {r["arm"]: r for r in json.loads((out / "leaderboard.json").read_text())["rows"]}
    assert rows["cmnet_pixel"]["step_ms"] == costs["cmnet_pixel"]
    assert main([*argv, "--costs-only", "--report-only"]) == 2
    assert "ERROR: --costs-only measures the costs and trains nothing" in capsys.readouterr().err
