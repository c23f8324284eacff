"""The bundles' shared configuration comes from one source (multirater_monai/bundle_templates) and stays in sync."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from multirater_monai.bundle_sync import CONFIG_FILES, load_template, sync_bundle, sync_config
from multirater_monai.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p.name for p in (ROOT / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())


@pytest.mark.parametrize("name", BUNDLES)
def test_every_bundle_is_in_sync_with_the_templates(name):
    stale = sync_bundle(ROOT / "bundles" / name, check=True)
    assert not stale, f"{stale} differ from the shared blocks: edit multirater_monai/bundle_templates, then run `multirater sync-bundles`"


def test_shared_ids_are_written_defaults_kept_and_own_ids_untouched():
    template = {"defaults": ["lr", "train#batch"], "config": {"lr": 0.1, "train": {"batch": 2, "loader": {"_target_": "L"}}, "run": ["x"]}}
    own = {"name": "m", "lr": 0.5, "train": {"preprocessing": [1], "batch": 8, "loader": {"_target_": "Mine"}}, "run": ["y"]}
    out = sync_config(own, template)
    assert out == {"name": "m", "lr": 0.5, "train": {"preprocessing": [1], "batch": 8, "loader": {"_target_": "L"}}, "run": ["x"]}
    assert sync_config({"name": "m"}, template) == {"name": "m", "lr": 0.1, "train": {"batch": 2, "loader": {"_target_": "L"}}, "run": ["x"]}
    with pytest.raises(ValueError, match="not ids"):
        sync_config({}, {"defaults": ["nope"], "config": {}})


def test_a_new_bundle_writes_only_its_own_ids(tmp_path):
    """A bundle made of its own ids gets complete configs from the templates, and the check catches an edited copy."""
    bundle = tmp_path / "bundles" / "mine"
    (bundle / "configs").mkdir(parents=True)
    shutil.copy(ROOT / "bundles" / "fused_unet" / "configs" / "metadata.json", bundle / "configs")
    own = json.loads((ROOT / "bundles" / "fused_unet" / "configs" / "train.json").read_text())
    shared = set(load_template("train.json")["config"]) - set(load_template("train.json")["defaults"])
    (bundle / "configs" / "train.json").write_text(json.dumps({k: v for k, v in own.items() if k not in shared}))
    assert cli_main(["sync-bundles", "--root", str(tmp_path)]) == 0
    for name in CONFIG_FILES:
        assert (bundle / "configs" / name).is_file()
    assert (bundle / "configs" / "logging.conf").is_file()
    synced = json.loads((bundle / "configs" / "train.json").read_text())
    assert synced["train"]["trainer"] == own["train"]["trainer"]
    assert cli_main(["sync-bundles", "--root", str(tmp_path), "--check"]) == 0
    edited = json.loads((bundle / "configs" / "train.json").read_text())
    edited["train"]["checkpoint_saver"]["n_saved"] = 5  # a fix made in one copy only
    (bundle / "configs" / "train.json").write_text(json.dumps(edited))
    assert cli_main(["sync-bundles", "--root", str(tmp_path), "--check"]) == 1
