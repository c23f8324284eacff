"""The bundle harness: every bundle under ``bundles/`` (present and future) must pass these checks.

- ``verify_metadata`` against the 20240725 schema shipped in ``tests/data`` (nothing is downloaded);
- ``verify_net_in_out`` of ``network_def`` with the shapes of ``metadata.json``;
- the ``ConfigWorkflow`` required properties of the train, evaluate and inference workflows;
- a one-epoch train (run from inside the bundle folder), a resumed second epoch, evaluate and inference
  (run from a repository root) on a tiny synthetic set, as a user runs them (``python -m monai.bundle run``);
- ``ckpt_export`` of the trained ``models/model.pt`` to TorchScript, which then runs.

Every bundle follows the same conventions so that the harness can drive it: configs ``train.json``,
``evaluate.json`` (merged over ``train.json``), ``inference.json``, ``multi_gpu_train.json``; ids
``dataset_dir``, ``synthetic`` (the generator's arguments), ``max_epochs``, ``resume``,
``checkpoint_dir``, ``ckpt_dir`` (holding ``model.pt``), ``output_dir`` (MLflow store for training,
outputs for evaluate/inference), ``input_dir`` (inference input).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out

from multirater_monai.bundle_utils import bundle_config_files

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "tests" / "data" / "meta_schema_20240725.json"
BUNDLES = sorted(p.name for p in (ROOT / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())
TINY_SYNTHETIC = {"image_size": 32, "num_train": 4, "num_val": 2, "num_test": 2}


def configs(name: str) -> Path:
    return ROOT / "bundles" / name / "configs"


def test_bundles_found():
    assert "fused_unet" in BUNDLES


@pytest.mark.parametrize("name", BUNDLES)
def test_required_files(name):
    bundle = ROOT / "bundles" / name
    for rel in [
        "configs/metadata.json",
        "configs/train.json",
        "configs/evaluate.json",
        "configs/inference.json",
        "configs/multi_gpu_train.json",
        "configs/logging.conf",
        "docs/README.md",
        "LICENSE",
    ]:
        assert (bundle / rel).is_file(), f"{name} lacks {rel}"


@pytest.mark.parametrize("name", BUNDLES)
def test_verify_metadata(name, tmp_path):
    schema = tmp_path / "schema.json"
    shutil.copy(SCHEMA, schema)  # an existing schema file is used as is: nothing is downloaded
    verify_metadata(meta_file=str(configs(name) / "metadata.json"), filepath=str(schema))


@pytest.mark.parametrize("name", BUNDLES)
def test_metadata_matches_config(name):
    meta = json.loads((configs(name) / "metadata.json").read_text())
    parser = ConfigParser()
    parser.read_config(str(configs(name) / "inference.json"))
    image = meta["network_data_format"]["inputs"]["image"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert image["num_channels"] == parser["in_channels"]
    assert pred["num_channels"] == parser["num_classes"] == len(pred["channel_def"])
    assert "multirater-monai" in meta["required_packages_version"]


@pytest.mark.parametrize("name", BUNDLES)
def test_verify_net_in_out(name):
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(configs(name) / "metadata.json"),
        config_file=str(configs(name) / "inference.json"),
        device="cpu",
    )


@pytest.mark.parametrize("config", ["train.json", "inference.json"])
def test_cmnet_default_heads_share_their_hidden_blocks(config):
    """Bundle 0.7.0: one pair of hidden blocks for all raters by default; ``--head_hidden per_rater`` is the paper's."""
    parser = ConfigParser()
    parser.read_config(str(configs("cmnet") / config))
    parser["bundle_root"] = str(configs("cmnet").parent)
    blocks = parser.get_parsed_content("network_def").annotator.head.heads.blocks
    assert blocks[1].conv.groups == 1 and blocks[1].conv.out_channels == 16
    parser["head_hidden"] = "per_rater"
    blocks = parser.get_parsed_content("network_def", lazy=False).annotator.head.heads.blocks
    assert blocks[1].conv.groups == 5 and blocks[1].conv.out_channels == 5 * 16


@pytest.mark.parametrize("config", ["train.json", "inference.json"])
def test_cmnet_3d_keeps_the_papers_per_rater_heads(config):
    """In 3D the shared blocks lost 3-6 Dice points to the paper's heads on 4 of 5 paired runs (docs: "Cheaper
    layouts of the heads"), so ``3d.json`` keeps the per-rater heads, for training and for serving alike."""
    parser = ConfigParser()
    parser.read_config([str(configs("cmnet") / config), str(configs("cmnet") / "3d.json")])
    parser["bundle_root"] = str(configs("cmnet").parent)
    network = parser.get_parsed_content("network_def")
    assert network.spatial_dims == 3 and network.annotator.head.heads.blocks[1].conv.groups == 5


@pytest.mark.parametrize("name", BUNDLES)
def test_bundle_config_files_give_the_bundle_in_its_dimension(name):
    """The benchmark, its cost measurement and ``rater_cms.py`` read a bundle's configs through one helper: in 3D
    its ``3d.json`` comes last, over the files asked for, so the merged config is 3D; in 2D it is left out."""
    for dims in (2, 3):
        files = bundle_config_files(configs(name), dims, ("train.json", "evaluate.json"))
        assert [f.name for f in files] == ["train.json", "evaluate.json"] + (["3d.json"] if dims == 3 else [])
        parser = ConfigParser()
        parser.read_config([str(f) for f in files])
        assert parser.get_parsed_content("spatial_dims") == dims


@pytest.mark.parametrize("name", BUNDLES)
@pytest.mark.parametrize(
    "files,workflow_type",
    [(["train.json"], "train"), (["train.json", "evaluate.json"], "eval"), (["inference.json"], "infer")],
)
def test_config_workflow_properties(name, files, workflow_type, tmp_path):
    synthetic = {f"synthetic#{k}": v for k, v in TINY_SYNTHETIC.items()}
    workflow = ConfigWorkflow(
        config_file=[str(configs(name) / f) for f in files],
        meta_file=str(configs(name) / "metadata.json"),
        logging_file=False,
        workflow_type=workflow_type,
        bundle_root=str(tmp_path / "bundle"),
        dataset_dir=str(tmp_path / "data"),
        **synthetic,
    )
    workflow.initialize()
    assert workflow.check_properties() in (None, [])


@pytest.mark.parametrize("num_train,batch_size,warmup_epochs", [(16, 16, 30), (200, 16, 3), (20, 4, 6)])
def test_cmnet_warmup_lasts_its_iterations_whatever_the_dataset_size(num_train, batch_size, warmup_epochs, tmp_path):
    """The warm-up is 30 optimiser steps: 3 epochs on the default 200 images, not 3 iterations on 16 images."""
    parser = ConfigParser()
    parser.read_config(str(configs("cmnet") / "train.json"))
    parser.update({"bundle_root": str(tmp_path / "bundle"), "dataset_dir": str(tmp_path / "data"), "batch_size": batch_size,
                   "synthetic#image_size": 16, "synthetic#num_train": num_train, "synthetic#num_val": 1, "synthetic#num_test": 1})
    assert parser.get_parsed_content("warmup_epochs") == warmup_epochs
    stages = parser.get_parsed_content("stages")
    assert [s["epochs"] for s in stages] == [warmup_epochs, parser["max_epochs"] - warmup_epochs]
    # the class-balanced likelihood is annealed into the paper's over the whole run, counted in steps
    steps = parser["max_epochs"] * -(-num_train // batch_size)
    trainer = parser.get_parsed_content("train#trainer")
    (schedule,) = parser.get_parsed_content("method_handlers")
    assert schedule.iterations == steps and schedule.attribute == "class_balance"
    assert {id(t) for t in schedule.targets} == {id(parser.get_parsed_content(k)) for k in ("loss", "warmup_loss")}
    assert schedule.value(0) == 1.0 and schedule.value(steps) == 0.0
    assert trainer.has_event_handler(schedule, Events.ITERATION_STARTED)


def _failure_report(output: str, tail: int = 4000) -> str:
    """The error lines of a failed run (every rank's, under torchrun) followed by the end of its output: a
    plain tail shows only the rank that failed last, not the root cause."""
    errors = [line for line in output.splitlines() if "Error" in line or "Exception" in line]
    return "error lines:\n" + "\n".join(dict.fromkeys(errors))[:6000] + "\n\nend of output:\n" + output[-tail:]


def _bundle_process(
    cwd: Path, config_files: list[str], overrides: dict, log: Path, args: list[str] = ()
) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` as a user types it, with overrides given as one more config file and
    ``args`` as command-line options."""
    override_file = log.with_suffix(".override.json")
    override_file.write_text(json.dumps(overrides))
    files = [*config_files, str(override_file)]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(files).replace('"', "'"), *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1", MLFLOW_TRACKING_URI="")
    env.pop("MLFLOW_TRACKING_URI")
    env.pop("MULTIRATER_TRACEBACK", None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    log.write_text(proc.stdout + proc.stderr)
    return proc


def _run_bundle(cwd: Path, config_files: list[str], overrides: dict, log: Path, args: list[str] = ()) -> str:
    proc = _bundle_process(cwd, config_files, overrides, log, args)
    assert proc.returncode == 0, f"{proc.args} failed in {cwd}:\n{_failure_report(proc.stdout + proc.stderr)}"
    return proc.stdout + proc.stderr


def _fails_with_one_line(proc: subprocess.CompletedProcess, expected: str) -> str:
    """The run stopped (exit 1) with ``ERROR: ...expected...`` and no traceback; returns that line."""
    assert proc.returncode == 1, f"exit {proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR: ")]
    assert errors and expected in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return errors[0]


@pytest.fixture(scope="module", params=BUNDLES)
def trained_bundle(request, tmp_path_factory):
    """A copy of the bundle in a scratch repository, trained for one epoch and resumed for a second."""
    name = request.param
    repo = tmp_path_factory.mktemp(f"repo_{name}")
    bundle = repo / "bundles" / name
    shutil.copytree(ROOT / "bundles" / name, bundle, ignore=shutil.ignore_patterns("models", "runs", "eval"))
    (repo / "datasets").mkdir()
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    synthetic = {f"synthetic#{k}": v for k, v in TINY_SYNTHETIC.items()}
    overrides = {**synthetic, "dataset_dir": str(repo / "datasets" / "tiny"), "max_epochs": 1, "batch_size": 2}
    if "class_balance_iterations" in parser.config:
        # a schedule over the whole run (CM-Net's class balance) follows max_epochs, which this fixture raises
        # from 1 to 2 to stand for an interruption: give every run the ramp of the two-epoch run, as a run
        # really interrupted (same command) has
        overrides["class_balance_iterations"] = "$2 * len(@train#dataloader)"
    if "stage_epochs" in parser.config:
        # stage lengths derived from max_epochs (ScaleProtoSeg's) would differ between the one- and the two-epoch
        # runs: give both the schedule of the two-epoch run (joint, projection and grouping, a grouping epoch)
        overrides["stage_epochs"] = "$multirater_monai.engines.scaleprotoseg_epochs(2, 0, 0, 1)"
    # from inside the bundle folder, as `cd bundles/<name>; python -m monai.bundle run --config_file configs/train.json`
    train_log = _run_bundle(bundle, ["configs/train.json"], overrides, repo / "train.log")
    first_epoch_model = (bundle / "models" / "model.pt").read_bytes()
    resumed = {**overrides, "max_epochs": 2}
    resume_log = _run_bundle(bundle, ["configs/train.json"], resumed, repo / "resume.log", ["--resume", "true"])
    # the same two epochs without interruption, in another copy of the bundle
    straight = tmp_path_factory.mktemp(f"straight_{name}")
    straight_bundle = straight / "bundles" / name
    shutil.copytree(ROOT / "bundles" / name, straight_bundle, ignore=shutil.ignore_patterns("models", "runs", "eval"))
    _run_bundle(straight_bundle, ["configs/train.json"], {**overrides, "max_epochs": 2}, straight / "train.log")
    return {
        "name": name,
        "repo": repo,
        "bundle": bundle,
        "overrides": overrides,
        "train_log": train_log,
        "resume_log": resume_log,
        "first_epoch_model": first_epoch_model,
        "straight_bundle": straight_bundle,
    }


@pytest.mark.slow
def test_train_writes_model_checkpoint_and_mlflow(trained_bundle):
    bundle = trained_bundle["bundle"]
    state = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    assert all(v.device.type == "cpu" for v in state.values())
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(state)  # model.pt is a plain state dict of the inference network
    assert (bundle / "runs" / "mlflow.db").is_file()
    assert "mlflow_run_id" in trained_bundle["train_log"]


@pytest.mark.slow
def test_console_shows_one_line_per_epoch(trained_bundle):
    """A progress bar and one metrics line per epoch; no per-iteration loss lines or engine chatter."""
    lines = trained_bundle["train_log"].splitlines()
    epoch_lines = [line for line in lines if " - multirater - INFO - epoch " in line]
    assert len(epoch_lines) == 1 and "train_loss" in epoch_lines[0] and "val_dice" in epoch_lines[0]
    assert not any("Loss:" in line or "ignite.engine" in line for line in lines)


@pytest.mark.slow
def test_resume_continues_from_checkpoint(trained_bundle):
    bundle = trained_bundle["bundle"]
    checkpoints = sorted((bundle / "models" / "checkpoints").glob("*.pt"))
    assert checkpoints, "training wrote no checkpoint to resume from"
    ckpt = torch.load(checkpoints[-1], map_location="cpu", weights_only=False)
    trainer_state = ckpt["trainer"]
    epochs_done = trainer_state["iteration"] // trainer_state["epoch_length"]
    assert epochs_done == 2, "the resumed run did not continue to the second epoch"
    log = trained_bundle["resume_log"]
    assert re.search(r"resumed from .*train_checkpoint_epoch=1.pt \(epoch 1\)", log)
    assert "epoch 2/2" in log and "epoch 1/2" not in log, "the resumed run trained epoch 1 again"


@pytest.mark.slow
def test_interrupted_and_resumed_training_gives_the_uninterrupted_weights(trained_bundle):
    """One epoch, then --resume true for the second, gives the weights of two epochs in one run."""
    resumed = torch.load(trained_bundle["bundle"] / "models" / "checkpoints" / "train_checkpoint_epoch=2.pt", weights_only=False)
    straight = torch.load(trained_bundle["straight_bundle"] / "models" / "checkpoints" / "train_checkpoint_epoch=2.pt", weights_only=False)
    assert set(resumed["network"]) == set(straight["network"])
    for key, value in straight["network"].items():
        assert torch.equal(resumed["network"][key], value), key
    assert not (trained_bundle["bundle"] / "models" / "checkpoints" / "train_checkpoint_epoch=1.pt").exists()  # no stale one


# Failure modes handled by the shared blocks (multirater_monai/bundle_templates, which test_bundle_sync.py
# checks every bundle holds) and the shared engine: run end to end on one bundle, the cheapest.
SHARED_BEHAVIOUR = pytest.mark.parametrize("trained_bundle", ["fused_unet"], indirect=True)


@pytest.mark.slow
@SHARED_BEHAVIOUR
def test_nan_training_stops_and_keeps_the_model(trained_bundle):
    """A diverging run stops at its first non-finite loss, naming epoch and iteration; model.pt and the
    checkpoint of the earlier run are untouched."""
    bundle = trained_bundle["bundle"]
    model = (bundle / "models" / "model.pt").read_bytes()
    checkpoints = {p.name: p.read_bytes() for p in (bundle / "models" / "checkpoints").iterdir()}
    overrides = {**trained_bundle["overrides"], "max_epochs": 3, "warmup_epochs": 0}
    proc = _bundle_process(bundle, ["configs/train.json"], overrides, trained_bundle["repo"] / "nan.log", ["--learning_rate", "1e6"])
    _fails_with_one_line(proc, "the training loss is nan")
    assert re.search(r"ERROR: epoch \d+, iteration \d+: the training loss is nan", proc.stderr)
    assert (bundle / "models" / "model.pt").read_bytes() == model
    assert {p.name: p.read_bytes() for p in (bundle / "models" / "checkpoints").iterdir()} == checkpoints


@pytest.mark.slow
@SHARED_BEHAVIOUR
def test_unreachable_tracking_server_stops_the_run_at_once(trained_bundle):
    bundle = trained_bundle["bundle"]
    proc = _bundle_process(bundle, ["configs/train.json"], trained_bundle["overrides"], trained_bundle["repo"] / "uri.log",
                           ["--tracking_uri", "http://127.0.0.1:9"])
    _fails_with_one_line(proc, "MLflow tracking server http://127.0.0.1:9 does not answer")
    # named before training starts, by one request: not after MLflow's 256 s of retries at the first epoch
    # (checked on the output, not on the clock, which a loaded machine stretches)
    output = proc.stdout + proc.stderr
    assert "Retrying" not in output and not re.search(r"epoch 1/\d+", output)


@pytest.mark.slow
def test_evaluate_from_repository_root(trained_bundle):
    repo, name = trained_bundle["repo"], trained_bundle["name"]
    files = [f"bundles/{name}/configs/train.json", f"bundles/{name}/configs/evaluate.json"]
    overrides = {k: v for k, v in trained_bundle["overrides"].items() if k != "max_epochs"}
    log = _run_bundle(repo, files, overrides, repo / "evaluate.log")
    metrics_files = list((trained_bundle["bundle"] / "eval").glob("*.csv"))
    assert metrics_files, f"evaluate wrote no metrics file:\n{log[-3000:]}"
    summary = (trained_bundle["bundle"] / "eval" / "metrics.csv").read_text()
    assert "dice" in summary.lower()


@pytest.mark.slow
def test_inference_writes_segmentations_in_input_geometry(trained_bundle, tmp_path):
    repo, bundle, name = trained_bundle["repo"], trained_bundle["bundle"], trained_bundle["name"]
    input_dir = repo / "datasets" / "tiny" / "images"
    out_dir = tmp_path / "pred"
    _run_bundle(
        repo,
        [f"bundles/{name}/configs/inference.json"],
        {"input_dir": str(input_dir), "output_dir": str(out_dir)},
        repo / "inference.log",
    )
    inputs = sorted(input_dir.glob("*.nii.gz"))
    outputs = sorted(out_dir.glob("*_seg.nii.gz"))
    # a second run refuses to replace them, naming a file, unless asked
    written = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    files = [f"bundles/{name}/configs/inference.json"]
    overrides = {"input_dir": str(input_dir), "output_dir": str(out_dir)}
    proc = _bundle_process(repo, files, overrides, repo / "inference2.log")
    _fails_with_one_line(proc, "exists from an earlier inference of")
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == written
    _run_bundle(repo, files, overrides, repo / "inference3.log", ["--overwrite", "true"])
    assert len(outputs) == len(inputs) > 0
    for src, seg in zip(inputs, outputs):
        a, b = nib.load(src), nib.load(seg)
        assert seg.name.startswith(src.name.replace(".nii.gz", ""))
        assert a.shape == b.shape
        np.testing.assert_allclose(a.affine, b.affine, atol=1e-5)
        values = np.unique(np.asarray(b.dataobj))
        assert set(values.tolist()) <= set(range(ConfigParser.load_config_file(str(configs(name) / "inference.json"))["num_classes"]))


@pytest.mark.slow
def test_trained_model_serves_as_monailabel_loads_it(trained_bundle):
    """The trained ``models/model.pt`` is a plain state dict that MONAI Label's bundle infer task loads strictly
    (``weights_only=True``) into ``network_def``, and the consensus and every label view run on an input image."""
    from multirater_monai.serving import BundleInference

    inference = BundleInference(trained_bundle["bundle"])
    image = sorted((trained_bundle["repo"] / "datasets" / "tiny" / "images").glob("*.nii.gz"))[0]
    shape = nib.load(image).shape
    for view in [None, *(v.name for v in inference.views())]:
        pred = inference.run(image, view)["pred"]
        assert tuple(pred.shape) == shape, view


@pytest.mark.slow
def test_ckpt_export_torchscript(trained_bundle, tmp_path):
    bundle = trained_bundle["bundle"]
    ts_file = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(ts_file),
        ckpt_file=str(bundle / "models" / "model.pt"),
        meta_file=str(bundle / "configs" / "metadata.json"),
        config_file=str(bundle / "configs" / "inference.json"),
        bundle_root=str(bundle),
    )
    scripted = torch.jit.load(str(ts_file))
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    image = meta["network_data_format"]["inputs"]["image"]
    x = torch.rand(1, image["num_channels"], *image["spatial_shape"])
    y = scripted(x)
    assert y.shape == (1, meta["network_data_format"]["outputs"]["pred"]["num_channels"], *image["spatial_shape"])


def _scratch_repo(name: str, root: Path) -> Path:
    bundle = root / "bundles" / name
    shutil.copytree(ROOT / "bundles" / name, bundle, ignore=shutil.ignore_patterns("models", "runs", "eval"))
    (root / "datasets").mkdir(exist_ok=True)
    return bundle


@pytest.mark.slow
@pytest.mark.parametrize("name", BUNDLES)
def test_train_3d_one_epoch(name, tmp_path):
    bundle = _scratch_repo(name, tmp_path)
    if not (bundle / "configs" / "3d.json").is_file():
        pytest.fail(f"{name} has no configs/3d.json: every bundle trains in 2D and 3D")
    overrides = {
        "synthetic#image_size": 16,
        "synthetic#num_train": 4,  # one image per rater at least, for a one-annotator-per-image bundle (TAX: 4 raters)
        "synthetic#num_val": 1,
        "synthetic#num_test": 1,
        "patch_size": [16, 16, 16],
        "dataset_dir": str(tmp_path / "datasets" / "tiny3d"),
        "max_epochs": 1,
        "batch_size": 2,
    }
    files = [f"bundles/{name}/configs/train.json", f"bundles/{name}/configs/3d.json"]
    _run_bundle(tmp_path, files, overrides, tmp_path / "train3d.log")
    state = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert any(v.ndim == 5 for v in state.values()), "the 3D run did not train a 3D network"


@pytest.mark.slow
@pytest.mark.parametrize("name", BUNDLES)
def test_multi_gpu_config_runs_ddp_on_cpu(name, tmp_path):
    """multi_gpu_train.json under torchrun with two processes (gloo on CPU, NCCL on GPUs)."""
    bundle = _scratch_repo(name, tmp_path)
    synthetic = {f"synthetic#{k}": v for k, v in TINY_SYNTHETIC.items()}
    overrides = {**synthetic, "dataset_dir": str(tmp_path / "datasets" / "tiny"), "max_epochs": 1, "batch_size": 2}
    (tmp_path / "override.json").write_text(json.dumps(overrides))
    files = [f"bundles/{name}/configs/train.json", f"bundles/{name}/configs/multi_gpu_train.json", "override.json"]
    # --standalone: a local rendezvous on a free port, so nothing else on the machine can hold it
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run"]
    cmd += ["--config_file", json.dumps(files).replace('"', "'")]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    (tmp_path / "torchrun.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, _failure_report(proc.stdout + proc.stderr)
    assert (bundle / "models" / "model.pt").is_file()


@pytest.mark.slow
def test_quickstart_trains_and_evaluates(tmp_path):
    """The README's main job, `multirater quickstart` (CM-Net by default), on a scratch copy of the repository."""
    bundle = _scratch_repo("cmnet", tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, "-m", "multirater_monai.cli", "quickstart", "--max-epochs", "1"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert (tmp_path / "datasets" / "synthetic_2d" / "datalist.json").is_file()  # generated on first use
    assert (bundle / "models" / "model.pt").is_file() and (bundle / "eval" / "metrics.csv").is_file()
    assert "mlflow_run_id" in out and str(bundle / "runs" / "mlflow.db") in out


@pytest.mark.parametrize("name", BUNDLES)
def test_bad_datalist_fails_before_training(name, tmp_path):
    """A datalist with another rater count than the config's stops the run with a clear error, naming the file."""
    from multirater_monai.data import DatalistError, generate_synthetic_dataset

    datalist = generate_synthetic_dataset(
        tmp_path / "three_raters", image_size=16, num_train=3, num_val=1, num_test=1, raters=["good", "over", "under"]
    )
    parser = ConfigParser()
    parser.read_config(str(configs(name) / "train.json"))
    parser.update({"datalist": str(datalist), "bundle_root": str(tmp_path / "bundle")})
    with pytest.raises(Exception) as err:  # MONAI's config parser wraps it in a RuntimeError
        parser.get_parsed_content("train#trainer")
    cause = err.value
    while cause is not None and not isinstance(cause, DatalistError):
        cause = cause.__cause__
    assert cause is not None, f"not a DatalistError: {err.value!r}"
    assert str(datalist) in str(cause) and "the datalist has 3 raters ['good', 'over', 'under']" in str(cause)
    assert f"expects {parser['num_raters']}" in str(cause)


@pytest.mark.slow
@SHARED_BEHAVIOUR
def test_inference_refuses_a_bad_image_in_one_line(trained_bundle, tmp_path):
    """A NaN voxel or a truncated file in the input folder: one line naming the file, before any output."""
    repo, name = trained_bundle["repo"], trained_bundle["name"]
    source = sorted((repo / "datasets" / "tiny" / "images").glob("*.nii.gz"))[0]
    inputs = tmp_path / "in"
    inputs.mkdir()
    image = nib.load(source)
    data = np.asarray(image.dataobj, dtype=np.float32).copy()
    data.flat[5] = np.nan
    nib.save(nib.Nifti1Image(data, image.affine), str(inputs / "nan.nii.gz"))
    overrides = {"input_dir": str(inputs), "output_dir": str(tmp_path / "out")}
    proc = _bundle_process(repo, [f"bundles/{name}/configs/inference.json"], overrides, tmp_path / "nan.log")
    _fails_with_one_line(proc, f"{inputs / 'nan.nii.gz'}: image has 1 NaN / inf voxel(s)")
    (inputs / "nan.nii.gz").unlink()
    raw = source.read_bytes()
    (inputs / "cut.nii.gz").write_bytes(raw[: len(raw) * 2 // 3])
    proc = _bundle_process(repo, [f"bundles/{name}/configs/inference.json"], overrides, tmp_path / "cut.log")
    _fails_with_one_line(proc, f"{inputs / 'cut.nii.gz'}: unreadable image")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _boolean_options(config: dict) -> list[str]:
    return [k for k, v in config.items() if isinstance(v, bool)]


@pytest.mark.parametrize("name", BUNDLES)
@pytest.mark.parametrize("files", [["train.json"], ["train.json", "evaluate.json"], ["inference.json"]])
def test_every_boolean_option_goes_through_flag(name, files):
    """``--option false`` on MONAI's command line is the string "false": every boolean option is read through
    ``flag()`` (its ``flags#option`` entry), and nowhere raw."""
    parser = ConfigParser()
    parser.read_config([str(configs(name) / f) for f in files])
    config = parser.get()
    options = _boolean_options(config)
    assert options, "no boolean option found"
    text = json.dumps({k: v for k, v in config.items() if k != "flags"})
    for option in options:
        assert config["flags"].get(option) == f"$multirater_monai.bundle_utils.flag(@{option}, '{option}')", option
        assert not re.search(rf"@{option}\b", text), f"@{option} used without flag()"


def test_false_on_the_command_line_means_false(tmp_path):
    """The case of the issue: --shared_trunk false built the shared-trunk network."""
    from multirater_monai.errors import find_user_error

    counts = {}
    for value in (False, "false", "False", "0", True, "true"):
        parser = ConfigParser()
        parser.read_config(str(configs("cmnet") / "train.json"))
        parser.update({"shared_trunk": value, "bundle_root": str(tmp_path)})
        counts[value] = sum(p.numel() for p in parser.get_parsed_content("network_def").parameters())
    assert counts[False] == counts["false"] == counts["False"] == counts["0"] != counts[True] == counts["true"]
    parser = ConfigParser()
    parser.read_config(str(configs("cmnet") / "train.json"))
    parser.update({"shared_trunk": "maybe", "bundle_root": str(tmp_path)})
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("network_def")
    assert "option --shared_trunk: expected true or false" in str(find_user_error(err.value))
