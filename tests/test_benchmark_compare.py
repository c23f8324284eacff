"""benchmarks/compare.py: arm specs, the results store shared by several calls, the mean ± std table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("compare", ROOT / "benchmarks" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parse_arm_names_and_specs(compare):
    assert compare.parse_arm("staple") == ("fused_unet", {"fusion": "staple"})
    assert compare.parse_arm("cmnet:trace_weight=0.4,cm_type=global") == (
        "cmnet",
        {"trace_weight": 0.4, "cm_type": "global"},
    )
    # a JSON list value keeps its commas; a value that is not JSON stays a string
    bundle, overrides = compare.parse_arm("cmnet:network_def#channels=[32,64,128,256],norm=instance")
    assert overrides == {"network_def#channels": [32, 64, 128, 256], "norm": "instance"}
    for bad in ("no_such_arm", "no_such_bundle:x=1"):
        with pytest.raises(ValueError, match="unknown arm"):
            compare.parse_arm(bad)


def test_sparse_lesion_suite_by_training_set_size(compare):
    """--panels lesion --num-train 16: the lesion layout with its four readers, 16 training images, its own suite name."""
    args = compare.synthetic_arguments("lesion", "dense", 16)
    assert args["layout"] == "lesion" and args["num_train"] == 16 and args["labels_per_image"] is None
    assert len(args["raters"]) == 4 and "miss" in args["raters"]
    assert compare.suite_name("lesion", 16) == "lesion-n16" and compare.suite_name("lesion", None) == "lesion"
    assert compare.synthetic_arguments("default", "one", None)["labels_per_image"] == 1
    assert "num_train" not in compare.synthetic_arguments("default", "dense", None)
    # override values are read as JSON: null turns an option off (the paper's unweighted likelihood)
    assert compare.parse_arm("cmnet:warmup_epochs=3,class_weights=null") == ("cmnet", {"warmup_epochs": 3, "class_weights": None})


def _run(arm, seed, dice, epochs=60, regime="dense"):
    return {"panel": "default", "regime": regime, "arm": arm, "seed": seed, "epochs": epochs, "dice": dice}


def test_results_merge_replaces_the_same_run_only(compare, tmp_path):
    store = tmp_path / "results.json"
    compare._save(store, [_run("majority", 0, 0.8), _run("majority", 1, 0.7)])
    compare._save(store, [_run("majority", 0, 0.9), _run("majority", 0, 0.5, epochs=5)])
    runs = json.loads(store.read_text())
    assert sorted((r["seed"], r["epochs"], r["dice"]) for r in runs) == [(0, 5, 0.5), (0, 60, 0.9), (1, 60, 0.7)]


def test_table_mean_and_std_over_seeds(compare, capsys):
    results = [_run("majority", 0, 0.8), _run("majority", 1, 0.6), _run("cmnet_pixel", 0, 0.75), _run("oracle", 0, 0.1, 5)]
    compare.print_table(results, {("default", "dense"): {"majority": {"label_dice": 0.926}}}, epochs=60)
    lines = {line.split()[2]: line for line in capsys.readouterr().out.splitlines() if line.startswith("default")}
    assert set(lines) == {"majority", "cmnet_pixel"}  # the 5-epoch run is another table
    assert "0.700 ± 0.141" in lines["majority"] and "0.926" in lines["majority"]
    assert lines["majority"].split()[3] == "2"
    assert "0.750" in lines["cmnet_pixel"] and "±" not in lines["cmnet_pixel"]
