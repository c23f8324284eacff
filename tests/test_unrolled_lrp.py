"""Unrolled LRP: the heatmaps are input × gradient, the decoder's weights are the encoder's, the data and the
explanations of the semi-supervised bundle."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from multirater_monai.data import (
    generate_synthetic_dataset,
    keep_pixel_labels,
    load_multirater_datalist,
    mixed_sampler,
    semi_supervised_datalist,
)
from multirater_monai.explain import ClassScoresd, SaveHeatmapsd
from multirater_monai.networks import ClassifierUNet, UnrolledLRP, classifier_segmenter
from multirater_monai.transforms import FuseRatersd


def _net(dims: int, bias: bool = True, **kwargs) -> UnrolledLRP:
    torch.manual_seed(0)
    return UnrolledLRP(dims, 2, 4, channels=(4, 8, 8), convs_per_level=2, bias=bias, **kwargs).double()


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("bias", [False, True])
def test_heatmap_is_input_times_gradient_of_the_class_score(dims, bias):
    net = _net(dims, bias)
    x = torch.randn(2, 2, *([8] * dims), dtype=torch.double, requires_grad=True)
    out = net.forward_all(x)
    assert out["logits"].shape == (2, 4, *([8] * dims)) and out["class_logits"].shape == (2, 4)
    for c in range(4):
        (grad,) = torch.autograd.grad(out["class_logits"][:, c].sum(), x, retain_graph=True)
        torch.testing.assert_close(out["logits"][:, c], (x * grad).sum(1), rtol=1e-10, atol=1e-12)
        if not bias:  # LRP-0 without biases conserves relevance: the heatmap sums to the class score
            torch.testing.assert_close(out["logits"][:, c].flatten(1).sum(1), out["class_logits"][:, c])
    assert net(x).shape == out["logits"].shape


@pytest.mark.parametrize("dims", [2, 3])
def test_mean_scaled_heatmaps_average_to_the_class_score(dims):
    x = torch.randn(2, 2, *([8] * dims), dtype=torch.double)
    summed, mean = _net(dims, bias=False), _net(dims, bias=False, heatmap_scale="mean")
    out = mean.forward_all(x)
    torch.testing.assert_close(out["logits"], summed(x) * 8**dims)
    torch.testing.assert_close(out["logits"].flatten(2).mean(2), out["class_logits"])
    with pytest.raises(ValueError, match="heatmap_scale must be one of"):
        _net(2, heatmap_scale="max")


def test_without_the_input_multiplication_the_heatmap_is_the_gradient():
    net = _net(2, multiply_input=False)
    x = torch.randn(2, 2, 8, 8, dtype=torch.double, requires_grad=True)
    out = net.forward_all(x)
    (grad,) = torch.autograd.grad(out["class_logits"][:, 2].sum(), x, retain_graph=True)
    torch.testing.assert_close(out["logits"][:, 2], grad.sum(1))


def test_decoder_has_no_weights_of_its_own_and_both_losses_add_up_on_the_encoders():
    net = _net(2)
    names = [n for n, _ in net.named_parameters()]
    assert names and all(n.startswith("encoder.") for n in names)
    x = torch.randn(3, 2, 8, 8, dtype=torch.double)
    weight = net.encoder.convs[1].weight

    def grad_of(loss_fn):
        net.zero_grad()
        loss_fn(net.forward_all(x)).backward()
        return weight.grad.clone()

    seg = grad_of(lambda o: o["logits"].pow(2).mean())
    cls = grad_of(lambda o: o["class_logits"].pow(2).mean())
    both = grad_of(lambda o: o["logits"].pow(2).mean() + o["class_logits"].pow(2).mean())
    assert seg.abs().sum() > 0 and cls.abs().sum() > 0  # the heatmap loss reaches the tied weights
    torch.testing.assert_close(both, seg + cls)
    # one parameter, one optimiser update: an SGD step moves the weight by lr × the summed gradient
    before = weight.detach().clone()
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    torch.testing.assert_close(weight.detach(), before - 0.1 * both)


def test_tied_activations_gate_with_the_encoders_pre_activations():
    """The decoder's gate is the Heaviside of the encoder's pre-activation: where the first convolution's
    pre-activation of a channel is negative, no relevance goes through it; a ReLU on the decoder's own signal
    (WS-AE) does not follow the encoder, so the two heatmaps differ."""
    tied, relu = _net(2), _net(2, decoder_activation="relu")
    relu.load_state_dict(tied.state_dict())
    x = torch.randn(2, 2, 8, 8, dtype=torch.double)
    assert not torch.allclose(tied(x), relu(x))
    with pytest.raises(ValueError, match="decoder_activation"):
        UnrolledLRP(2, 1, 2, decoder_activation="sigmoid")


def test_decoding_classes_in_chunks_gives_the_same_heatmaps():
    whole, chunked = _net(3), _net(3, class_chunk=3)
    x = torch.randn(2, 2, 8, 8, 8, dtype=torch.double)
    torch.testing.assert_close(whole(x), chunked(x))


@pytest.mark.parametrize("architecture", ["unrolled_lrp", "unet"])
@pytest.mark.parametrize("dims", [2, 3])
def test_networks_script_and_share_the_encoder_names(architecture, dims):
    net = classifier_segmenter(architecture, dims, 1, 3, channels=(4, 8), convs_per_level=1).eval()
    x = torch.randn(1, 1, *([8] * dims))
    scripted = torch.jit.script(net)
    torch.testing.assert_close(scripted(x), net(x))
    encoder_keys = {k for k in net.state_dict() if k.startswith("encoder.")}
    other = classifier_segmenter("unet" if architecture == "unrolled_lrp" else "unrolled_lrp", dims, 1, 3, channels=(4, 8), convs_per_level=1)
    assert encoder_keys == {k for k in other.state_dict() if k.startswith("encoder.")}  # a pre-trained encoder fits both
    with pytest.raises(ValueError, match="multiple of 2"):
        net(torch.randn(1, 1, *([9] * dims)))


def test_unet_and_unrolled_lrp_leave_the_generator_alike_so_they_pretrain_the_same_classifier():
    states, encoders = [], []
    for architecture in ("unrolled_lrp", "unet"):
        torch.manual_seed(7)
        net = classifier_segmenter(architecture, 2, 1, 4, channels=(4, 8))
        states.append(torch.get_rng_state())
        encoders.append(net.encoder.state_dict())
    assert torch.equal(states[0], states[1])  # the data order and augmentations drawn next are the same
    assert all(torch.equal(encoders[0][k], encoders[1][k]) for k in encoders[0])


def test_unet_has_a_free_decoder():
    net = ClassifierUNet(2, 1, 3, channels=(4, 8, 16))
    decoder = [n for n, _ in net.named_parameters() if not n.startswith("encoder.")]
    assert decoder and net.forward_all(torch.randn(2, 1, 16, 16))["logits"].shape == (2, 3, 16, 16)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return generate_synthetic_dataset(
        tmp_path_factory.mktemp("scene") / "data", num_classes=4, layout="scene", raters=["good", "over"],
        image_size=32, num_train=12, num_val=2, num_test=2, seed=3,
    )


def test_semi_supervised_datalist_keeps_a_seeded_share_and_refuses_bad_requests(scene):
    items = load_multirater_datalist(scene, "training", num_classes=4, allow_unlabelled=True)
    assert semi_supervised_datalist(items, None, 4) == items
    kept = semi_supervised_datalist(items, 0.5, 4, seed=1, allow_unlabelled=True, source="dl.json")
    assert sum(i["pixel_labelled"] for i in kept) == 6
    assert kept == semi_supervised_datalist(items, 0.5, 4, seed=1, allow_unlabelled=True)  # same seed, same images
    with pytest.raises(ValueError, match=r"^dl.json: pixel_labels=0.5 drops pixel labels.*allow_unlabelled is false"):
        semi_supervised_datalist(items, 0.5, 4, source="dl.json")
    present = {c for i in kept for c in (1, 2, 3) if i["class_label"][c]}
    assert len(present) >= 2
    with pytest.raises(ValueError, match=r"^dl.json: keeping the pixel labels of 1 image\(s\) leaves class\(es\) \["):
        semi_supervised_datalist(items, 1, 4, allow_unlabelled=True, source="dl.json")


def test_image_level_labels_that_contradict_the_masks_are_named(scene):
    items = load_multirater_datalist(scene, "training", num_classes=4)
    derived = keep_pixel_labels(items, 1.0, 4)[0]["class_label"]
    wrong = [1] + [1 - v for v in derived[1:]]
    bad = [{**items[0], "class_label": wrong}] + items[1:]
    expected = f"{items[0]['image']}: 'class_label' {wrong} contradicts its rater labels, which give {derived}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        semi_supervised_datalist(bad, 1.0, 4, allow_unlabelled=True)


def test_mixed_sampler_fills_batches_with_the_requested_share_of_labelled_items(scene):
    items = semi_supervised_datalist(
        load_multirater_datalist(scene, "training", num_classes=4), 3, 4, allow_unlabelled=True
    )
    labelled = {i for i, item in enumerate(items) if item["pixel_labelled"]}
    only = list(mixed_sampler(items, 1.0, seed=0))
    assert len(only) == len(items) and set(only) <= labelled  # the U-Net's batches
    half = list(mixed_sampler(items, 0.5, num_samples=4000, seed=0))
    assert abs(sum(i in labelled for i in half) / 4000 - 0.5) < 0.03  # 3 of 12 items, half of every batch
    assert list(mixed_sampler(items, 0.5, num_samples=50, seed=0)) == list(mixed_sampler(items, 0.5, num_samples=50, seed=0))
    everything = [{**i, "pixel_labelled": True} for i in items]  # nothing to mix: every item alike, whatever the share
    assert list(mixed_sampler(everything, 0.5, num_samples=50, seed=0)) == list(mixed_sampler(everything, 1.0, num_samples=50, seed=0))
    assert set(mixed_sampler(everything, 0.5, num_samples=600, seed=0)) == set(range(len(items)))
    with pytest.raises(ValueError, match="no training item has pixel labels"):
        mixed_sampler([{**i, "pixel_labelled": False} for i in items], 0.5)
    with pytest.raises(ValueError, match="labelled_share"):
        mixed_sampler(items, 1.5)
    sampler = mixed_sampler(items, 1.0, num_samples=600, seed=0)
    sampler.set_labelled_share(None)  # classification pre-training: every image alike
    assert set(sampler) == set(range(len(items)))
    sampler.set_labelled_share(1.0)
    assert set(sampler) <= labelled


def test_the_unets_classifier_pretrains_on_every_image_and_trains_on_the_labelled_ones(scene, tmp_path):
    from pathlib import Path

    from monai.bundle import ConfigParser

    config = ConfigParser()
    config.read_config(str(Path(__file__).resolve().parents[1] / "bundles" / "unrolled_lrp" / "configs" / "train.json"))
    config.update({"datalist": str(scene), "num_raters": 2, "pixel_labels": 3, "labelled_share": 1.0, "mlflow_enabled": False,
                   "bundle_root": str(tmp_path), "max_epochs": 2, "pretrain_epochs": 1})
    sampler = config.get_parsed_content("train_sampler")
    items = config.get_parsed_content("train_datalist")
    pretrain, joint = config.get_parsed_content("stages")
    pretrain["on_start"](None)
    assert sampler.labelled_share is None and len(set(sampler)) > 3
    joint["on_start"](None)
    assert sampler.labelled_share == 1.0
    assert {items[i]["pixel_labelled"] for i in sampler} == {True}


def test_fusing_an_unlabelled_image_gives_no_target_only_where_allowed():
    labels = torch.full((2, 4, 4), -1)
    with pytest.raises(ValueError, match="no rater annotated"):
        FuseRatersd("label", num_classes=3)({"label": labels})
    fused = FuseRatersd("label", num_classes=3, allow_unlabelled=True)({"label": labels})["fused_label"]
    assert fused.shape == (3, 4, 4) and float(fused.abs().sum()) == 0.0


def test_heatmaps_of_present_classes_are_written_with_the_scores(tmp_path):
    import nibabel
    from monai.transforms import LoadImaged

    net = UnrolledLRP(2, 1, 3, channels=(4, 8), convs_per_level=1).eval()
    with torch.no_grad():
        net.encoder.classifier.bias.copy_(torch.tensor([0.0, 20.0, -20.0]))  # class 1 present, class 2 absent
    source = tmp_path / "in" / "case7.nii.gz"
    source.parent.mkdir()
    nibabel.save(nibabel.Nifti1Image(np.random.default_rng(0).normal(size=(10, 11)).astype(np.float32), np.diag([2.0, 3.0, 1.0, 1.0])), str(source))
    image = LoadImaged("image", ensure_channel_first=True, image_only=True)({"image": str(source)})["image"]
    with torch.no_grad():  # the heatmaps of the padded image, cropped back (as a sliding-window inferer gives them)
        heat = net(torch.nn.functional.pad(image.as_tensor(), (0, 1)).unsqueeze(0))[0, :, :, :11]
    d = ClassScoresd("image", net)({"image": image, "heatmaps": heat})
    assert d["class_scores"].shape == (3,) and d["class_scores"][1] > 10  # an odd size is padded, not refused
    out = tmp_path / "out"
    SaveHeatmapsd("heatmaps", "class_scores", ["bg", "kidney", "tumour"], out)(d)
    files = sorted(p.name for p in out.iterdir())
    assert files == ["case7_class_scores.json", "case7_heatmap_kidney.nii.gz", "case7_heatmaps.png"]
    report = json.loads((out / "case7_class_scores.json").read_text())
    assert report["kidney"]["present"] is True and report["tumour"]["present"] is False
    assert report["bg"]["present"] is None
    saved = nibabel.load(str(out / "case7_heatmap_kidney.nii.gz"))
    np.testing.assert_allclose(np.asarray(saved.dataobj).squeeze(), heat[1].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(saved.affine, np.diag([2.0, 3.0, 1.0, 1.0]))
