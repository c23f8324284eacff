"""TAX: tendency layers, the assigner, pseudo masks, the assignment loss, the patch index and explanations, metrics,
one-annotator data (scanner assignment, rater draw) and the bundle's bad-input checks."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from multirater_monai.data import DatalistError, generate_synthetic_dataset, keep_raters, load_multirater_datalist
from multirater_monai.data.synthetic import STRIPE_PERIODS, scanner_stripes
from multirater_monai.engines import PseudoAnnotatorMasks, TrainStep, tax_step_inputs, tax_vanilla_epochs, uncertain_region
from multirater_monai.explain import PrototypePatchIndex, SaveTAXExplanationsd
from multirater_monai.explain.prototype_patches import _default_loader, crop_patch, pad_to_multiple
from multirater_monai.losses import AnnotatorAssignmentLoss, pooled_one_hot
from multirater_monai.metrics import compute_assignment_accuracy, compute_rater_miou
from multirater_monai.networks import TAX, TendencyConv
from multirater_monai.transforms.raters import TAX_RATERS

from test_bundles import ROOT, configs


def _net(dims: int = 2, annotators: int = 4, **kwargs) -> TAX:
    torch.manual_seed(0)
    return TAX(dims, 1, 2, annotators, channels=(8, 16, 32), strides=(2, 2), num_res_units=1, features=8,
               prototypes_per_group=3, prototype_dim=8, assigner_channels=(8, 8, 8), patch_context=8, **kwargs)


def test_tendency_conv_is_each_pixels_own_subset():
    torch.manual_seed(0)
    layer = TendencyConv(2, 3, 4, num_subsets=3)
    x = torch.randn(2, 3, 8, 8)
    mask = torch.randint(0, 3, (2, 8, 8))
    out = layer(x, mask)
    for k in range(3):
        bias = layer.conv.conv.bias[k * 4 : (k + 1) * 4]
        alone = F.conv2d(x, layer.subset_weight(k), bias, padding=1)
        assert torch.allclose(out.movedim(1, -1)[mask == k], alone.movedim(1, -1)[mask == k], atol=1e-6)
    assert out.shape == (2, 4, 8, 8) and layer.all_subsets(x).shape == (2, 3, 4, 8, 8)


@pytest.mark.parametrize("dims", [2, 3])
def test_tendency_conv_computes_only_the_subsets_used_with_the_dense_values(dims):
    torch.manual_seed(0)
    layer = TendencyConv(dims, 3, 4, num_subsets=5)
    shared_only = torch.full((3,) + (6,) * dims, 4)
    two = torch.where(torch.rand((3,) + (6,) * dims) < 0.3, torch.tensor(1), torch.tensor(4))
    for mask in (shared_only, two, torch.randint(0, 5, (3,) + (6,) * dims)):
        x = torch.randn(3, 3, *(6,) * dims, requires_grad=True)
        params = [x, layer.conv.conv.weight, layer.conv.conv.bias]
        fast, dense = layer(x, mask), layer.dense(x, mask)
        assert torch.allclose(fast, dense, atol=1e-5)
        for a, b in zip(torch.autograd.grad(fast.square().sum(), params), torch.autograd.grad(dense.square().sum(), params)):
            assert torch.allclose(a, b, atol=1e-4)


def _band_masks(annotators: list[int], size: int = 16, shared: int = 4) -> torch.Tensor:
    """Pseudo masks: a ring around a square gets the image's annotator, the rest the shared index."""
    mask = torch.full((len(annotators), size, size), shared, dtype=torch.long)
    for i, a in enumerate(annotators):
        mask[i, 4:12, 4:12] = a
        mask[i, 6:10, 6:10] = shared
    return mask


def _subset_grads(net: TAX) -> list[list[float]]:
    """|grad| of each kernel subset (weights and biases), per tendency layer."""
    out = []
    for layer in net.segmenter.tendency_layers():
        conv, d = layer.conv.conv, layer.out_channels
        out.append([float(conv.weight.grad[k * d : (k + 1) * d].abs().sum() + conv.bias.grad[k * d : (k + 1) * d].abs().sum())
                    for k in range(layer.num_subsets)])
    return out


def test_subset_k_learns_only_from_images_of_annotator_k():
    """Eq. 2-6: under the pseudo masks, C_k receives gradients only from images labelled by k; the shared subset and
    the rest of F from every image. No batch statistics couple the images between the tendency layers."""
    net = _net()
    net.start_tendencies()
    net.train()
    x, target = torch.randn(2, 1, 16, 16), torch.randint(0, 2, (2, 16, 16))
    mask = _band_masks([0, 2])
    for image, annotator in ((0, 0), (1, 2)):
        net.zero_grad()
        logits = net.forward_train(x, mask)["logits"]
        F.cross_entropy(logits[image : image + 1], target[image : image + 1]).backward()
        for per_subset in _subset_grads(net):
            for k, g in enumerate(per_subset):
                assert (g > 0) == (k in (annotator, 4)), (image, k, per_subset)
        trunk = next(net.segmenter.trunk.parameters()).grad
        assert trunk is not None and trunk.abs().sum() > 0
        assert all(p.grad is None or p.grad.abs().sum() == 0 for p in net.assigner.parameters())


def test_vanilla_until_tendencies_start_then_copies_of_the_shared_subset():
    net = _net().eval()
    x = torch.randn(2, 1, 16, 16)
    vanilla = net.forward_vanilla(x)
    assert torch.equal(net(x), vanilla)  # before start_tendencies every pixel uses the shared subset
    out = net.forward_all(x)
    assert torch.equal(out["assign_probs"].argmax(1), torch.full((2, 16, 16), 4))
    net.start_tendencies()
    assert bool(net.tendencies_started)
    assert torch.allclose(net(x), vanilla, atol=1e-6)  # every subset is a copy of the shared one
    each = net.segmenter.each_subset(x)
    for k in range(5):
        assert torch.allclose(net.segmenter(x, torch.full((2, 16, 16), k)), each[:, k], atol=1e-6)
    assert "tendencies_started" in net.state_dict() and "bank_patches" in net.state_dict()


@pytest.mark.parametrize("dims", [2, 3])
def test_shapes_assigner_and_torchscript(dims):
    net = _net(dims).eval()
    net.start_tendencies()
    x = torch.randn(2, 1, *(16,) * dims)
    out = net.forward_all(x)
    assert out["logits"].shape == (2, 2, *(16,) * dims)
    assert out["assign_probs"].shape == (2, 5, *(16,) * dims)
    assert out["rater_logits"].shape == (2, 4, 2, *(16,) * dims)
    sim = net.assigner.similarities(x)
    assert sim.shape == (2, 5, 3, *(4,) * dims) and sim.abs().max() <= 1 + 1e-5
    assert torch.allclose(net.assigner(x), sim.amax(2))
    m = net.annotator_mask(net.assign_logits(x))
    assert torch.equal(m[(slice(None),) + (slice(0, 4),) * dims], net.assign_logits(x).argmax(1)[(slice(None),) + (slice(0, 1),) * dims].expand_as(m[(slice(None),) + (slice(0, 4),) * dims]))
    scripted = torch.jit.script(net)
    assert torch.allclose(scripted(x), net(x), atol=1e-5)


def test_uncertain_region_and_pseudo_masks():
    logits = torch.zeros(2, 2, 16, 16)
    logits[:, 1, 4:12, 4:12] = 5.0
    band = uncertain_region(logits, "boundary", band=1)[:, 0]
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[3:13, 3:13] = True
    expected[5:11, 5:11] = False
    assert torch.equal(band[0], expected)
    prob = uncertain_region(logits * 0.1, "probability", threshold=0.9)
    assert prob[0, 0, 8, 8] and prob[0, 0, 0, 0]  # sigmoid(0.5) and 0.5 are both below 0.9
    masks = PseudoAnnotatorMasks(lambda image: logits, num_annotators=4, band=1)
    out = masks({"image": torch.zeros(2, 1, 16, 16), "annotator": torch.tensor([3, 1])})
    assert out.shape == (2, 1, 16, 16)
    assert torch.equal(out[0, 0][expected], torch.full((int(expected.sum()),), 3))
    assert torch.equal(out[1, 0][~expected], torch.full((int((~expected).sum()),), 4))
    with pytest.raises(ValueError, match="annotator index 4 outside 0..3"):
        masks({"image": torch.zeros(2, 1, 16, 16), "annotator": torch.tensor([4, 0])})


def test_assignment_loss_is_the_soft_cross_entropy_of_pooled_masks():
    target = torch.full((1, 1, 8, 8), 2)
    target[0, 0, :4, :4] = 0  # the top-left cell of 4x4 is all annotator 0
    target[0, 0, 4:6, 4:8] = 1  # half of the bottom-right cell is annotator 1
    pooled = pooled_one_hot(target, 3, (2, 2))
    assert torch.allclose(pooled[0, :, 0, 0], torch.tensor([1.0, 0, 0]))
    assert torch.allclose(pooled[0, :, 1, 1], torch.tensor([0, 0.5, 0.5]))
    logits = torch.randn(1, 3, 2, 2)
    loss = AnnotatorAssignmentLoss()({"assign_logits": logits}, {"pseudo_annotator": target})
    manual = -(pooled * torch.log_softmax(logits, 1)).sum(1).mean()
    assert torch.allclose(loss, manual)
    confident = AnnotatorAssignmentLoss()({"assign_logits": 20 * pooled.log().clamp_min(-5)}, {"pseudo_annotator": target})
    assert confident < loss


def test_rater_miou_and_assignment_accuracy():
    y = torch.full((2, 3, 4, 4), -1)
    y[0, 1] = 0
    y[0, 1, :2] = 1
    y[1, 0] = 0
    pred = torch.zeros(2, 3, 4, 4, dtype=torch.long)
    pred[0, 1, :1] = 1  # half of rater 1's foreground: IoU fg 0.5, bg 8/12
    scores = compute_rater_miou(pred, y, 2)
    assert torch.isnan(scores[0, 0]) and torch.isnan(scores[0, 2])
    assert torch.isclose(scores[0, 1], torch.tensor((0.5 + 8 / 12) / 2))
    assert scores[1, 0] == 1.0  # empty vs empty foreground counts 1
    consensus = compute_rater_miou(pred[:, 1:2], y, 2)  # one prediction for every rater
    assert torch.isclose(consensus[0, 1], scores[0, 1])
    mask = torch.full((2, 1, 4, 4), 3)  # 3 = shared
    mask[0, 0, 0, :3] = 1
    mask[0, 0, 1, :2] = 2  # majority among annotator pixels: 1 (3 votes to 2), the shared pixels do not vote
    acc = compute_assignment_accuracy(mask, y)
    assert acc[0, 0] == 1.0 and acc[1, 0] == 0.0  # image 1: no annotator pixel at all
    y[1, 2] = 0
    assert torch.isnan(compute_assignment_accuracy(mask, y)[1, 0])  # two annotators: not one-annotator data


def _write_images(folder, count: int = 4, size: int = 16) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    items = []
    for i in range(count):
        path = folder / f"img{i}.nii.gz"
        nib.save(nib.Nifti1Image(rng.normal(size=(size, size + 4)).astype(np.float32), np.eye(4)), str(path))
        items.append({"image": str(path)})
    return items


def test_patch_index_records_real_training_patches(tmp_path):
    net = _net()
    net.start_tendencies()
    items = _write_images(tmp_path / "images")
    model = tmp_path / "models" / "model.pt"
    model.parent.mkdir()
    torch.save(net.state_dict(), model)
    index = PrototypePatchIndex(net, items, model)
    index.completed(engine=None)
    state = torch.load(model, weights_only=True)
    assert bool(state["bank_built"])
    trained = _net().eval()
    trained.load_state_dict(state)
    records = json.loads((tmp_path / "models" / "prototype_patches.json").read_text())["prototypes"]
    assert len(records) == 15 and records[-1]["shared"] and not records[0]["shared"]
    loader = _default_loader()
    for p in range(15):
        cases = trained.bank_cases[p].tolist()
        assert len(set(cases)) == 3  # distinct training images
        for j, case in enumerate(cases):
            image = pad_to_multiple(torch.as_tensor(loader(dict(items[case]))["image"]).float(), 4, 8)
            corner = trained.bank_corners[p, j].tolist()
            assert torch.allclose(crop_patch(image, corner, 8), trained.bank_patches[p, j])  # a real training patch
            assert records[p]["patches"][j]["image"] == items[case]["image"] and records[p]["patches"][j]["corner"] == corner
            sim = trained.assigner.similarities(image[None]).flatten(1, 2)[0, p]
            assert torch.isclose(sim.max(), trained.bank_similarity[p, j], atol=1e-5)  # the image's best location
        assert trained.bank_similarity[p, 0] >= trained.bank_similarity[p, 1] >= trained.bank_similarity[p, 2]


def test_explanations_in_3d(tmp_path):
    net = _net(3).eval()
    net.start_tendencies()
    folder = tmp_path / "images"
    folder.mkdir()
    items = []
    for i in range(3):
        nib.save(nib.Nifti1Image(np.random.default_rng(i).normal(size=(16, 16, 12)).astype(np.float32), np.eye(4)), str(folder / f"v{i}.nii.gz"))
        items.append({"image": str(folder / f"v{i}.nii.gz")})
    PrototypePatchIndex(net, items, tmp_path / "none.pt").build(net)
    assert net.bank_patches.shape[-3:] == (8, 8, 8) and int(net.bank_cases.max()) == 2
    SaveTAXExplanationsd("image", net, tmp_path / "out", TAX_RATERS, num_locations=2)(
        {"image": MetaTensor(torch.randn(1, 16, 16, 16), meta={"filename_or_obj": "vol.nii.gz"})})
    assert nib.load(str(tmp_path / "out" / "vol_why.nii.gz")).shape == (16, 32, 8)
    assert (tmp_path / "out" / "vol_why.png").is_file()


def test_explanations_are_written_from_the_bank(tmp_path):
    net = _net().eval()
    net.start_tendencies()
    save = SaveTAXExplanationsd("image", net, tmp_path / "out", TAX_RATERS, num_locations=2)
    image = MetaTensor(torch.randn(1, 16, 16), meta={"filename_or_obj": "case7.nii.gz"})
    with pytest.raises(ValueError, match="no prototype patch index"):
        save({"image": image})
    items = _write_images(tmp_path / "images")
    PrototypePatchIndex(net, items, tmp_path / "missing.pt").build(net)
    save({"image": image})
    found = save.explain(image)
    assert found["inputs"].shape == (2, 1, 8, 8) and found["patches"].shape == (2, 3, 1, 8, 8)
    for rec, patches in zip(found["records"], found["patches"]):
        assert torch.equal(patches, net.bank_patches[rec["prototype"]])
        assert rec["annotator"] in (*TAX_RATERS, "shared")
    report = json.loads((tmp_path / "out" / "case7_why.json").read_text())
    assert len(report["locations"]) == 2 and len(report["locations"][0]["training_patches"]) == 3
    mosaic = nib.load(str(tmp_path / "out" / "case7_why.nii.gz")).get_fdata()
    assert mosaic.shape == (16, 32)  # 2 rows of (input + 3 training patches) of 8 pixels
    assert (tmp_path / "out" / "case7_why.png").is_file()


def test_a_step_input_may_come_from_its_targets():
    """TrainStep(inputs=[..., "pseudo_annotator"], targets={"pseudo_annotator": ...}): the input is computed, not missing."""
    step = TrainStep(inputs=["image", "extra"], targets={"extra": lambda batch: batch["image"] * 0})

    class Engine:
        state = type("S", (), {"device": torch.device("cpu")})()
        non_blocking, to_kwargs = False, {}

        @staticmethod
        def prepare_batch(batch, device, non_blocking, **kwargs):
            return batch

    batch = step.prepare(Engine(), {"image": torch.ones(1, 1, 4, 4)})
    step.add_targets(batch)
    assert torch.equal(batch["extra"], torch.zeros(1, 1, 4, 4))
    with pytest.raises(KeyError, match="the batch has no"):
        TrainStep(inputs=["image", "other"]).prepare(Engine(), {"image": torch.ones(1)})


def test_step_inputs_and_vanilla_stage_length():
    assert tax_step_inputs("pseudo") == ["image", "pseudo_annotator"] and tax_step_inputs("assigner") == ["image"]
    with pytest.raises(ValueError, match="train_mask must be one of"):
        tax_step_inputs("gt")
    assert tax_vanilla_epochs(20, 60) == 20 and tax_vanilla_epochs(20, 10) == 5 and tax_vanilla_epochs(20, 1) == 1
    assert tax_vanilla_epochs(20, 2) == 1 and tax_vanilla_epochs(20, 60, vanilla_only=True) == 60


def test_scanner_assignment_is_visible_and_the_random_one_is_not(tmp_path):
    common = dict(raters=TAX_RATERS, labels_per_image=1, scanners=True, num_train=12, num_val=4, num_test=4, image_size=32)
    visible = json.loads(generate_synthetic_dataset(tmp_path / "v", assignment="scanner", **common).read_text())
    random_ = json.loads(generate_synthetic_dataset(tmp_path / "r", assignment="random", **common).read_text())
    assert all(i["annotator"] == i["scanner"] for i in visible["training"])
    assert any(i["annotator"] != i["scanner"] for i in random_["training"])
    assert sorted({i["scanner"] for i in visible["training"]}) == [0, 1, 2, 3]
    for a, b in zip(visible["training"], random_["training"]):
        assert a["scanner"] == b["scanner"]
        va = nib.load(str(tmp_path / "v" / a["image"])).get_fdata()
        assert np.array_equal(va, nib.load(str(tmp_path / "r" / b["image"])).get_fdata())  # same images
    stripes = scanner_stripes(2, (32, 8), 0.0)
    period = STRIPE_PERIODS[0] + 2 * STRIPE_PERIODS[1]
    assert np.allclose(stripes[: 32 - int(period)], stripes[int(period) :]) and np.allclose(stripes[:, 0], stripes[:, 5])
    with pytest.raises(ValueError, match="needs scanners=True and labels_per_image=1"):
        generate_synthetic_dataset(tmp_path / "bad", raters=TAX_RATERS, assignment="scanner")


def test_dense_data_becomes_one_annotator_per_image(tmp_path):
    datalist = generate_synthetic_dataset(tmp_path / "dense", image_size=16, num_train=20, num_val=1, num_test=1)
    items = load_multirater_datalist(datalist, "training")
    one = keep_raters(items, 1, seed=3)
    assert one == keep_raters(items, 1, seed=3) and one != keep_raters(items, 1, seed=4)
    for item in one:
        files = [f for f in item["label"] if f is not None]
        assert len(files) == 1 and item["label"][item["annotator"]] == files[0]
    assert len({i["annotator"] for i in one}) > 1
    assert keep_raters(one, 1, seed=9) == one  # one-annotator data stays as it is
    two = keep_raters(items, 2)
    assert all(sum(f is not None for f in i["label"]) == 2 and "annotator" not in i for i in two)
    assert keep_raters(items, None) == items
    with pytest.raises(ValueError, match="raters_per_image must be >= 1"):
        keep_raters(items, 0, source="x.json")


def _tax_parser(tmp_path, datalist) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(configs("tax") / "train.json"))
    parser.update({"datalist": str(datalist), "bundle_root": str(tmp_path / "bundle")})
    return parser


def _cause(err, kind):
    cause = err
    while cause is not None and not isinstance(cause, kind):
        cause = cause.__cause__
    return cause


def test_tax_bundle_refuses_an_annotator_outside_the_kernel_subsets(tmp_path):
    datalist = generate_synthetic_dataset(tmp_path / "d", image_size=16, num_train=4, num_val=1, num_test=1,
                                          raters=TAX_RATERS, labels_per_image=1)
    content = json.loads(datalist.read_text())
    content["training"][1]["annotator"] = 6
    datalist.write_text(json.dumps(content))
    with pytest.raises(Exception) as err:
        _tax_parser(tmp_path, datalist).get_parsed_content("train#trainer")
    cause = _cause(err.value, DatalistError)
    assert cause is not None and str(datalist) in str(cause) and "annotator" in str(cause)


def test_tax_bundle_refuses_more_annotators_than_its_config(tmp_path):
    datalist = generate_synthetic_dataset(tmp_path / "d", image_size=16, num_train=5, num_val=1, num_test=1,
                                          raters=["good", "over", "under", "wrong", "blank"], labels_per_image=1)
    with pytest.raises(Exception) as err:
        _tax_parser(tmp_path, datalist).get_parsed_content("train#trainer")
    cause = _cause(err.value, DatalistError)
    assert cause is not None and "the datalist has 5 raters" in str(cause) and "expects 4" in str(cause)


def test_tax_bundle_refuses_an_image_without_its_annotator(tmp_path):
    """An item with no label file (and no image-level labels) has no annotator: refused naming its image."""
    datalist = generate_synthetic_dataset(tmp_path / "d", image_size=16, num_train=4, num_val=1, num_test=1,
                                          raters=TAX_RATERS, labels_per_image=1)
    content = json.loads(datalist.read_text())
    bad = content["training"][2]
    bad["label"] = [None] * 4
    bad.pop("annotator")
    datalist.write_text(json.dumps(content))
    with pytest.raises(Exception) as err:
        _tax_parser(tmp_path, datalist).get_parsed_content("train#trainer")
    message = str(_cause(err.value, ValueError) or err.value)
    assert bad["image"].split("/")[-1] in message, message


def test_tax_bundle_draws_one_rater_per_image_from_dense_data(tmp_path):
    datalist = generate_synthetic_dataset(tmp_path / "d", image_size=16, num_train=6, num_val=1, num_test=1,
                                          raters=["good", "over", "under", "wrong"])
    items = _tax_parser(tmp_path, datalist).get_parsed_content("train_datalist")
    assert all(sum(f is not None for f in i["label"]) == 1 and isinstance(i["annotator"], int) for i in items)


def test_tax_metadata_declares_its_arms_for_one_annotator_suites():
    meta = json.loads((configs("tax") / "metadata.json").read_text())
    arms = meta["benchmark_arms"]
    assert {"tax", "tax_vanilla", "tax_assigner_mask"} <= set(arms)
    assert all(a["settings"] == ["one_annotator"] for a in arms.values())
    assert (ROOT / "bundles" / "tax" / "docs" / "README.md").is_file()
