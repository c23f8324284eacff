"""The analysis scripts under benchmarks/ whose tables go into the bundles' docs."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _save(path: Path, array: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array.astype(np.int16), np.eye(4)), str(path))
    return path


def test_disagreement_is_zero_when_unanimous_and_half_on_an_even_split(tmp_path):
    disagreement = _load("disagreement_gain").image_disagreement
    mask = np.zeros((8, 8))
    mask[2:6, 2:6] = 1
    same = [_save(tmp_path / f"same{i}.nii.gz", mask) for i in range(3)]
    assert disagreement(same, 2) == 0.0
    split = [_save(tmp_path / "a.nii.gz", mask), _save(tmp_path / "b.nii.gz", np.zeros((8, 8)))]
    assert abs(disagreement(split, 2) - 0.5) < 1e-9
    missing = [_save(tmp_path / "m.nii.gz", np.full((8, 8), -1)), same[0]]  # a missing rater is no vote
    assert disagreement(missing, 2) == 0.0


def test_metric_table_averages_the_seeds_of_one_suite_and_epoch_count(tmp_path):
    runs = {
        "s|a|0|5": {"suite": "s", "arm": "a", "seed": 0, "epochs": 5, "status": "done", "dice": 0.5},
        "s|a|1|5": {"suite": "s", "arm": "a", "seed": 1, "epochs": 5, "status": "done", "dice": 0.7},
        "s|a|2|9": {"suite": "s", "arm": "a", "seed": 2, "epochs": 9, "status": "done", "dice": 0.0},
        "s|b|0|5": {"suite": "s", "arm": "b", "seed": 0, "epochs": 5, "status": "failed"},
    }
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"runs": runs, "costs": {}}))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "metric_table.py"), "--results", str(results),
                          "--suite", "s", "--epochs", "5", "--arms", "a", "b", "--metrics", "dice"],
                         capture_output=True, text=True, check=True).stdout
    assert "| a | 0 1 | 0.600 ± 0.141 |" in out
    assert "| b | – | – |" in out


def test_mrprism_step_breakdown_times_every_piece_of_the_bundle_network():
    breakdown = _load("mrprism_step_breakdown").breakdown
    result = breakdown(2, repeats=1, batch_size=2, patch_size=[32, 32])
    ms = result["ms"]
    levels = len(_load("mrprism_step_breakdown").build(2, 2, [32, 32])[0].conp)
    expected = {"unet step", "encoder", "divp", "loss", "loss: one ssim", "loss: shuffle", "mrprism step"}
    expected |= {f"conp {i} {piece}" for i in range(levels) for piece in ("embedding", "attention", "up")}
    assert expected <= set(ms) and all(v > 0 for v in ms.values())
    ups = sum(ms[f"conp {i} up"] for i in range(levels))
    assert abs(ms["floor: encoder + T up paths"] - (ms["encoder"] + result["passes"] * ups)) < 1e-9
    assert result["passes"] == 3 and result["patch"] == [32, 32] and result["batch"] == 2


def test_unrolled_lrp_dynamics_logs_each_term_through_both_stages(tmp_path, capsys):
    module = _load("unrolled_lrp_dynamics")
    truth = np.zeros((6, 6), dtype=int)
    truth[1:3, 1:3] = 1
    pred = truth.copy()
    pred[1, 1] = 2  # class 1: 3 of 4 pixels, class 2: predicted once, absent from the truth
    import torch

    assert abs(module.foreground_dice(torch.as_tensor(pred), torch.as_tensor(truth), 3) - (6 / 7 + 0.0) / 2) < 1e-9
    assert module.foreground_dice(torch.zeros(4, 4), torch.zeros(4, 4), 3) == 1.0
    sets = [
        "synthetic#image_size=32", "synthetic#num_train=6", "synthetic#num_val=2", "synthetic#num_test=2",
        f"dataset_dir={tmp_path / 'data'}", "patch_size=[32,32]", "batch_size=3", "pixel_labels=3",
    ]
    rows = module.main(["--pretrain", "2", "--joint", "2", "--every", "2", "--set", *sets])
    assert [(r["step"], r["stage"]) for r in rows] == [(2, "pretrain"), (4, "joint")]
    assert np.isnan(rows[0]["segmentation"]) and np.isfinite(rows[1]["segmentation"]) and rows[1]["segmentation"] > 0
    assert all(0.0 <= r["val_dice"] <= 1.0 and r["heatmap"] > 0 for r in rows)
    assert "overrides" in capsys.readouterr().out


def test_unrolled_lrp_table_scores_segmentation_and_presence():
    import torch

    module = _load("unrolled_lrp_table")
    truth = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    truth[0, 0, :2, :2] = 1  # class 1 on 4 pixels, class 2 absent
    logits = torch.zeros(1, 3, 4, 4)
    logits[0, 1, :2, :1] = 1.0  # class 1 predicted on 2 of its 4 pixels
    logits[0, 2, 3, 3] = 1.0  # class 2 predicted on 1 pixel

    class Fixed(torch.nn.Module):
        def forward_all(self, image):
            return {"logits": logits, "class_logits": torch.tensor([[0.0, 2.0, 1.0]])}  # says 1 and 2 present

    result = module.evaluate(Fixed(), [{"image": torch.zeros(1, 1, 4, 4), "gt": truth}], 3, "cpu")
    # background: 11 shared of 14 in the union; class 1: 2 of 4; class 2: 0 of 1
    assert result["iou"] == pytest.approx([11 / 14, 0.5, 0.0])
    assert result["miou"] == pytest.approx((11 / 14 + 0.5) / 3)
    assert result["dice"] == pytest.approx((2 * 2 / 6 + 0.0) / 2)
    assert result["f1"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 0))  # one true, one false positive
    assert module.labels_value("all") is None and module.labels_value("0.05") == 0.05 and module.labels_value("3") == 3
    assert "num_classes" not in module.arm_overrides("unrolled_lrp_unet")
    with pytest.raises(SystemExit, match="no benchmark arm 'nope'"):
        module.arm_overrides("nope")


@pytest.mark.slow
def test_unrolled_lrp_table_trains_and_evaluates_one_arm(tmp_path):
    module = _load("unrolled_lrp_table")
    sets = [
        "synthetic#image_size=32", "synthetic#num_train=6", "synthetic#num_val=2", "synthetic#num_test=2",
        "patch_size=[32,32]", "batch_size=3", "max_epochs=2", "pretrain_epochs=1",
    ]
    args = ["--arms", "unrolled_lrp", "--pixel-labels", "3", "--seeds", "0", "--out", str(tmp_path), "--set", *sets]
    (result,) = module.main(args)
    assert result["labelled_images"] == 3 and 0.0 <= result["miou"] <= 1.0 and len(result["iou"]) == 4
    assert result["f1_before"] is not None and 0.0 <= result["f1_after"] <= 1.0
    assert "| unrolled_lrp | 3 (3) | 1 |" in (tmp_path / "table.md").read_text()
    assert module.main(args) == [result]  # finished runs are not trained again
    report = ["--arms", "unrolled_lrp", "--pixel-labels", "3", "--seeds", "0", "1", "--report-only", "--out", str(tmp_path)]
    assert module.main(report) == [result]  # seed 1 has not run, and --report-only does not run it


def test_rater_cms_reads_a_model_of_the_current_cmnet_bundle(tmp_path):
    """The script builds the bundle's own network, so a model.pt the bundle saved loads (heads included)."""
    from monai.bundle import ConfigParser

    from multirater_monai.data import generate_synthetic_dataset, read_datalist

    datalist = generate_synthetic_dataset(tmp_path / "data", image_size=32, num_train=2, num_val=1, num_test=2,
                                          raters=["dilated", "eroded", "none"])
    info = read_datalist(str(datalist))
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / "cmnet" / "configs" / "train.json"))
    parser.update({"num_raters": len(info["raters"])})
    model = tmp_path / "model.pt"
    torch.save(parser.get_parsed_content("network_def", instantiate=True).state_dict(), model)
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "rater_cms.py"), str(model), str(datalist)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines[1:4]] == ["dilated", "eroded", "none"]
    assert lines[4].startswith("consensus:") and "2 images of 'test'" in lines[4]

    parser.update({"head_hidden": "per_rater"})  # the paper's heads (arm cmnet_paper) load when asked for
    torch.save(parser.get_parsed_content("network_def", instantiate=True).state_dict(), model)
    paper = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "rater_cms.py"), str(model), str(datalist),
                            "--head_hidden", "per_rater"], capture_output=True, text=True)
    assert paper.returncode == 0, paper.stderr[-2000:]
    assert paper.stdout.splitlines()[4].startswith("consensus:")


def test_dice_by_presence_separates_segmentation_from_false_positives_on_absent_classes(tmp_path):
    (tmp_path / "gt").mkdir()
    both, only_one = np.zeros((8, 8)), np.zeros((8, 8))
    both[1:3, 1:3], both[5:7, 5:7] = 1, 2
    only_one[1:3, 1:3] = 1
    _save(tmp_path / "gt" / "a.nii.gz", both)
    _save(tmp_path / "gt" / "b.nii.gz", only_one)
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"test": [{"image": "images/a.nii.gz", "gt": "gt/a.nii.gz"},
                                             {"image": "images/b.nii.gz", "gt": "gt/b.nii.gz"}]}))
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    # class 2 is absent from b: Dice 0 there means a false positive, whatever the present pairs score
    (run / "eval" / "dice_raw.csv").write_text(
        "filename,class0,class1,mean\n/x/images/a.nii.gz,0.5,0.7,0.6\n/x/images/b.nii.gz,0.9,0.0,0.45\n")
    module = _load("dice_by_presence")
    with open(run / "eval" / "dice_raw.csv") as f:
        rows = list(csv.DictReader(f))
    result = module.split(rows, module.present_classes(datalist, 3), run / "eval" / "dice_raw.csv")
    assert result["present"] == 3 and result["present_dice"] == pytest.approx((0.5 + 0.7 + 0.9) / 3)
    assert (result["absent"], result["false_positive"]) == (1, 1) and result["dice"] == pytest.approx(2.1 / 4)
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "dice_by_presence.py"), "--datalist", str(datalist),
                          "--runs", str(run)], capture_output=True, text=True, check=True).stdout
    assert "| 0.525 | 0.700 (3) | 1 of 1 | label 1: 0.700, 0 / 0; label 2: 0.700, 1 / 1 |" in out
    missing = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "dice_by_presence.py"), "--datalist",
                              str(datalist), "--runs", str(tmp_path / "nothing")], capture_output=True, text=True)
    assert missing.returncode != 0 and "dice_raw.csv: no such file" in missing.stderr
