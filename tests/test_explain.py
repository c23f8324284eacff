"""Explanation outputs of confusion-matrix methods and the transforms around confusion matrices."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage

from multirater_monai.explain import ReliabilityMapd, SaveConfusionFigured, SaveRaterMapsd, reliability_map
from multirater_monai.transforms import SplitOutputsd, ToConfusionMatrixd


def _cms() -> torch.Tensor:
    """(R=2, L=2, L, 2, 3): rater 0 perfect; rater 1 says 1 for true 0 with prob 0.3, 0 for true 1 with 0.4."""
    cm = torch.zeros(2, 2, 2, 2, 3)
    cm[0, 0, 0] = cm[0, 1, 1] = 1.0
    cm[1, 0, 0], cm[1, 1, 0] = 0.7, 0.3
    cm[1, 0, 1], cm[1, 1, 1] = 0.4, 0.6
    return cm


def test_reliability_map_reads_the_diagonal_of_the_voxel_class():
    label = torch.tensor([[0, 1, 1], [0, 0, 1]])
    rel = reliability_map(_cms(), label)
    assert rel.shape == (2, 2, 3)
    assert torch.all(rel[0] == 1.0)
    expected = torch.where(label == 0, torch.tensor(0.7), torch.tensor(0.6))
    torch.testing.assert_close(rel[1], expected)
    # from logits (L, *S): the argmax class is used
    logits = torch.stack([(label == 0).float(), (label == 1).float()])
    out = ReliabilityMapd(keys="cm", label_key="pred")({"cm": _cms(), "pred": logits})["reliability"]
    torch.testing.assert_close(out, rel)


def test_to_confusion_matrix_turns_null_into_nan():
    out = ToConfusionMatrixd()({"true_cm": [[[0.9, None], [0.1, None]], [[1.0, 0.5], [0.0, 0.5]]]})["true_cm"]
    assert out.shape == (2, 2, 2) and out.dtype == torch.float32
    assert math.isnan(out[0, 0, 1]) and float(out[1, 0, 1]) == 0.5


def test_split_outputs_unpacks_maps_and_keeps_meta():
    maps = MetaTensor(torch.arange(5 * 3 * 2, dtype=torch.float32).reshape(5, 3, 2), meta={"filename_or_obj": "a.nii.gz"})

    def split(batch):
        return {"logits": batch[:, :2], "extra": batch[:, 2:]}

    out = SplitOutputsd(keys="pred", split=split)({"pred": maps})
    assert out["pred"].shape == (2, 3, 2) and out["extra"].shape == (3, 3, 2)
    assert out["extra"].meta["filename_or_obj"] == "a.nii.gz"
    torch.testing.assert_close(out["extra"].as_tensor(), maps.as_tensor()[2:])


def test_save_rater_maps_and_figure(tmp_path):
    affine = np.diag([0.7, 0.7, 1.0, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((2, 3), np.float32), affine), str(tmp_path / "case_7.nii.gz"))
    image = LoadImage(image_only=True, ensure_channel_first=True)(str(tmp_path / "case_7.nii.gz"))
    tmp_path = tmp_path / "out"
    seg = torch.tensor([[[0, 1, 1], [0, 0, 1]], [[1, 1, 1], [0, 0, 0]]])
    SaveRaterMapsd(keys="rater_seg", output_dir=tmp_path, rater_names=["alice", "bob"], dtypes=np.uint8)(
        {"image": image, "rater_seg": seg}
    )
    files = sorted(p.name for p in tmp_path.glob("*.nii.gz"))
    assert files == ["case_7_rater_seg_alice.nii.gz", "case_7_rater_seg_bob.nii.gz"]
    bob = nib.load(tmp_path / "case_7_rater_seg_bob.nii.gz")
    np.testing.assert_array_equal(np.squeeze(np.asarray(bob.dataobj)), seg[1].numpy())
    np.testing.assert_allclose(bob.affine[0, 0], 0.7)
    with pytest.raises(ValueError, match="1 rater names for 2 maps"):
        SaveRaterMapsd(keys="rater_seg", output_dir=tmp_path, rater_names=["solo"])({"image": image, "rater_seg": seg})
    label = torch.tensor([[0, 1, 1], [0, 0, 1]])
    SaveConfusionFigured(keys="cm", output_dir=tmp_path, rater_names=["alice", "bob"], label_key="pred")(
        {"image": image, "cm": _cms(), "pred": label[None]}
    )
    png = tmp_path / "case_7_cm.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_image_confusion_matrix_from_pixelwise():
    from multirater_monai.transforms import ImageConfusionMatrixd

    gt = torch.tensor([[[0, 1, 1], [0, 0, 1]]])
    out = ImageConfusionMatrixd(keys="cm", label_key="gt")({"cm": _cms(), "gt": gt})["cm_image"]
    assert out.shape == (2, 2, 2)
    torch.testing.assert_close(out[1], torch.tensor([[0.7, 0.4], [0.3, 0.6]]))
    torch.testing.assert_close(out[0], torch.eye(2))
