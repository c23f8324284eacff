"""Data contract, second version: image-level class labels, items without pixel labels, one annotator per image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Compose, LoadImaged, SelectItemsd

from multirater_monai.data import DatalistError, generate_synthetic_dataset, keep_pixel_labels, load_multirater_datalist
from multirater_monai.data.datalist import check_datalist
from multirater_monai.transforms import (
    AnnotatorIndexd,
    ClassLabelsd,
    LoadRaterLabelsd,
    class_labels_from_raters,
)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    """A 4-class "scene" set, two raters."""
    root = tmp_path_factory.mktemp("scene")
    return generate_synthetic_dataset(
        root / "data", num_classes=4, raters=["good", "over"], layout="scene", image_size=32, num_train=8,
        num_val=2, num_test=2, seed=3,
    )


def test_class_labels_from_raters_majority_and_any():
    label = torch.tensor([[[0, 1], [1, 1]], [[0, 2], [0, 0]], [[-1, -1], [-1, -1]]])  # R=3, the third did not annotate
    assert class_labels_from_raters(label, 3, "majority").tolist() == [1, 1, 1]
    assert class_labels_from_raters(label[:1], 3, "majority").tolist() == [1, 1, 0]
    two = torch.stack([label[0], label[1], label[1]])
    assert class_labels_from_raters(two, 3, "majority").tolist() == [1, 0, 1]  # class 1 drawn by one of three
    assert class_labels_from_raters(two, 3, "any").tolist() == [1, 1, 1]
    assert class_labels_from_raters(label[2:], 3).tolist() == [0, 0, 0]


def test_semi_supervised_datalist_batches_labelled_and_unlabelled_items(scene):
    items = load_multirater_datalist(scene, "training", num_classes=4)
    semi = keep_pixel_labels(items, keep=2, num_classes=4, seed=0)
    kept = [i for i in semi if i["pixel_labelled"]]
    assert len(kept) == 2 and all(len(i["class_label"]) == 4 for i in semi)
    present = np.array([i["class_label"] for i in semi])
    assert all(np.array([i["class_label"] for i in kept])[:, c].any() or not present[:, c].any() for c in (1, 2))
    folder = scene.parent
    content = json.loads(scene.read_text())
    content["training"] = [{**i, "image": str(Path(i["image"]).relative_to(folder))} for i in semi]
    semi_file = folder / "semi.json"
    semi_file.write_text(json.dumps(content))
    with pytest.raises(DatalistError, match="no rater annotated this image"):
        load_multirater_datalist(semi_file, "training", num_classes=4)  # only where a bundle declares it
    loaded = load_multirater_datalist(semi_file, "training", num_classes=4, allow_unlabelled=True)
    pipeline = Compose([
        LoadImaged("image", ensure_channel_first=True, image_only=True),
        LoadRaterLabelsd("label", num_classes=4, allow_unlabelled=True),
        ClassLabelsd("label", num_classes=4),
        SelectItemsd(["image", "label", "class_label"]),
    ])
    batch = torch.utils.data.default_collate([pipeline(i) for i in loaded])
    assert batch["label"].shape == (8, 2, 32, 32) and batch["class_label"].shape == (8, 4)
    labelled = (batch["label"] != -1).flatten(1).any(1)
    assert labelled.sum() == 2 and labelled.tolist() == [i["pixel_labelled"] for i in semi]
    # image-level labels of the items without pixel labels come from the datalist, those of the others agree
    assert batch["class_label"].tolist() == [i["class_label"] for i in semi]


def test_unlabelled_item_without_class_label_is_refused(scene):
    items = load_multirater_datalist(scene, "training", num_classes=4)
    bare = [{**items[0], "label": [None, None]}] + items[1:]
    with pytest.raises(DatalistError, match="no pixel labels and no 'class_label'"):
        check_datalist(bare, num_raters=2, num_classes=4, allow_unlabelled=True)
    with pytest.raises(ValueError, match="no pixel label and no 'class_label'"):
        ClassLabelsd("label", num_classes=4)(LoadRaterLabelsd("label", allow_unlabelled=True)(
            LoadImaged("image", ensure_channel_first=True, image_only=True)({"image": items[0]["image"], "label": [None, None]})))


def test_bad_class_label_and_annotator_are_named(scene):
    items = load_multirater_datalist(scene, "training", num_classes=4)
    first = items[0]["image"]
    bad = [{**items[0], "class_label": [1, 0, 2, 0]}, {**items[1], "class_label": [1, 0]}] + items[2:]
    message = str(pytest.raises(DatalistError, check_datalist, bad, num_raters=2, num_classes=4).value)
    assert f"{first}: 'class_label' must be a list of 4 values 0/1" in message
    assert "got [1, 0]" in message
    one = [{**items[0], "annotator": 1, "label": [None, items[0]["label"][1]]}]
    check_datalist(one, num_raters=2, num_classes=4, require_rater_coverage=False)  # a valid one-annotator item
    cases = {
        "'annotator' must be a rater index in 0..1, got 2": {**one[0], "annotator": 2},
        "'annotator' is 0 but rater 0 has no label file": {**one[0], "annotator": 0},
        "'annotator' is 1 (one annotator per image) but raters [0] also have label files": {**items[0], "annotator": 1},
    }
    for expected, item in cases.items():
        with pytest.raises(DatalistError, match=expected.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
            check_datalist([item], num_raters=2, num_classes=4, require_rater_coverage=False)


def test_one_annotator_per_image_with_the_tax_tendencies(tmp_path):
    path = generate_synthetic_dataset(
        tmp_path / "tax", raters=["dilated", "eroded", "simplified", "none"], labels_per_image=1, image_size=32,
        num_train=8, num_val=2, num_test=2,
    )
    content = json.loads(path.read_text())
    for item in content["training"]:
        assert [r for r, f in enumerate(item["label"]) if f] == [item["annotator"]]
    items = load_multirater_datalist(path, "training", num_raters=4, num_classes=2)
    assert sorted({i["annotator"] for i in items}) == [0, 1, 2, 3]  # every tendency labels some image
    load = Compose([LoadRaterLabelsd("label", num_classes=2), AnnotatorIndexd("label")])
    for item in items[:3]:
        derived = load({"label": item["label"]})["annotator"]  # derived from the labels
        given = load({"label": item["label"], "annotator": item["annotator"]})["annotator"]
        assert derived.item() == given.item() == item["annotator"] and derived.dtype == torch.int64
    with pytest.raises(ValueError, match="one annotator per image expected, found 0"):
        AnnotatorIndexd("label")({"label": torch.full((4, 8, 8), -1)})


def test_scene_layout_classes_present_or_absent_and_several_scales(scene):
    content = json.loads(scene.read_text())
    assert content["generator"]["layout"] == "scene" and content["labels"]["3"] == "kind3"
    import nibabel as nib

    presence, sizes = [], []
    for item in content["training"]:
        truth = np.asarray(nib.load(scene.parent / item["gt"]).dataobj)
        presence.append([(truth == c).any() for c in range(1, 4)])
        from scipy import ndimage

        for c in range(1, 4):
            components, num = ndimage.label(truth == c)
            sizes += np.bincount(components.ravel())[1:].tolist()
    presence = np.array(presence)
    assert presence.any(0).all() and not presence.all(0).any()  # every class in some images, absent from others
    assert max(sizes) >= 4 * min(sizes)  # small and large objects


def test_older_datasets_are_reused_with_the_new_parameters(tmp_path):
    """A dataset written before the 'layout' parameter existed is the nested layout: it is kept, not refused."""
    from multirater_monai.data import ensure_synthetic_dataset

    path = generate_synthetic_dataset(tmp_path / "old", image_size=16, num_train=2, num_val=1, num_test=1)
    content = json.loads(path.read_text())
    del content["generator"]["layout"]
    path.write_text(json.dumps(content))
    assert ensure_synthetic_dataset(tmp_path / "old", image_size=16, num_train=2, num_val=1, num_test=1) == path
    with pytest.raises(ValueError, match="differing: \\['layout'\\]"):
        ensure_synthetic_dataset(tmp_path / "old", image_size=16, num_train=2, num_val=1, num_test=1, layout="scene")


def test_lesion_layout_one_small_lesion_and_some_empty_masks(tmp_path):
    from multirater_monai.data import LESION_RATERS

    path = generate_synthetic_dataset(tmp_path / "lesion", layout="lesion", raters=list(LESION_RATERS), num_train=24,
                                      num_val=2, num_test=2)
    content = json.loads(path.read_text())
    import nibabel as nib
    from scipy import ndimage

    fractions, empty = [], 0
    for item in content["training"]:
        truth = np.asarray(nib.load(path.parent / item["gt"]).dataobj)
        assert ndimage.label(truth)[1] == 1  # one lesion
        fractions.append(truth.mean())
        empty += sum(not np.asarray(nib.load(path.parent / f).dataobj).any() for f in item["label"])
    assert 0.001 <= min(fractions) and max(fractions) <= 0.02 and 0.002 <= np.mean(fractions) <= 0.01
    assert 0 < empty < len(content["training"]) * len(LESION_RATERS) / 2  # some raters' masks are empty
    with pytest.raises(ValueError, match="binary"):
        generate_synthetic_dataset(tmp_path / "x", layout="lesion", num_classes=3)


def test_rater_parameters_in_the_name():
    from multirater_monai.transforms import MissRater, OverRater, make_rater

    assert isinstance(make_rater("over-1"), OverRater) and make_rater("over-1").radius == 1.0
    assert make_rater("miss-0.25").probability == 0.25 and isinstance(make_rater("miss"), MissRater)
    with pytest.raises(ValueError, match="takes no parameter"):
        make_rater("blank-1")
    with pytest.raises(ValueError, match="not a number"):
        make_rater("over-wide")
    label = np.zeros((16, 16), np.uint8)
    label[5:9, 5:9] = 1
    draws = [make_rater("miss-0.5")(label, rng=i).any() for i in range(40)]
    assert 5 < sum(draws) < 35  # misses about half of the time
