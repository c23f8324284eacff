"""A prepared dataset trains a bundle with one documented override: its ``bundle_config.json``.

::

    python -m monai.bundle run --config_file \
        "['bundles/<bundle>/configs/train.json','datasets/<name>/bundle_config.json']"

is run as a user types it (fused_unet, one epoch, on replicas prepared in 2D and 3D); every bundle's
config resolves its datalists and network from the overlay.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from multirater_monai.data.real import prepare_brats, prepare_lidc
from multirater_monai.data.real.replicas import make_brats_replica, make_lidc_pickle_replica

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p.name for p in (ROOT / "bundles").iterdir() if (p / "configs" / "train.json").is_file())


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A scratch repository with the bundles and two prepared replicas under ``datasets/``."""
    repo = tmp_path_factory.mktemp("repo")
    for name in BUNDLES:
        shutil.copytree(
            ROOT / "bundles" / name, repo / "bundles" / name, ignore=shutil.ignore_patterns("models", "runs", "eval")
        )
    sources = repo / "sources"
    prepare_lidc(
        make_lidc_pickle_replica(sources / "lidc", num_patients=5, crops_per_patient=2, size=16),
        repo / "datasets" / "lidc",
    )
    prepare_brats(
        make_brats_replica(sources / "brats", "2021", num_cases=4, shape=(16, 16, 16)),
        repo / "datasets" / "brats_3d",
        spatial_dims=3,
    )
    return repo


@pytest.mark.slow
@pytest.mark.parametrize("dataset,spatial_dims,channels", [("lidc", 2, 1), ("brats_3d", 3, 4)])
def test_fused_unet_trains_on_prepared_dataset(repo, dataset, spatial_dims, channels):
    files = "['bundles/fused_unet/configs/train.json','datasets/" + dataset + "/bundle_config.json']"
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        files,
        "--max_epochs",
        "1",
        "--batch_size",
        "2",
        "--mlflow_enabled",
        "False",
    ]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    model = repo / "bundles" / "fused_unet" / "models" / "model.pt"
    state = torch.load(model, map_location="cpu", weights_only=True)
    first_conv = next(v for k, v in state.items() if k.endswith("weight") and v.ndim == spatial_dims + 2)
    assert first_conv.shape[1] == channels
    model.unlink()


@pytest.mark.parametrize("bundle", BUNDLES)
def test_every_bundle_reads_the_overlay(repo, bundle):
    configs = repo / "bundles" / bundle / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), str(repo / "datasets" / "brats_3d" / "bundle_config.json")])
    overlay = json.loads((repo / "datasets" / "brats_3d" / "bundle_config.json").read_text())
    for key in ("num_raters", "num_classes", "in_channels", "spatial_dims", "patch_size"):
        assert parser.get_parsed_content(key) == overlay[key]
    train = parser.get_parsed_content("train_datalist")
    assert len(train) > 0 and len(train[0]["label"]) == 4 and len(train[0]["image"]) == 4
    net = parser.get_parsed_content("network_def")
    out = net.eval()(torch.zeros(1, 4, 16, 16, 16))
    assert out.shape == (1, 4, 16, 16, 16)
