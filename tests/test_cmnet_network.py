"""CM-Net network: shapes in 2D and 3D, normalised confusion matrices, init, packed maps, TorchScript."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SlidingWindowInferer

from multirater_monai.engines import StackedOutputs
from multirater_monai.networks import CMNet, cm_memory_elements

SMALL = {"channels": (4, 8), "strides": (2,), "num_res_units": 1, "feature_channels": 4, "head_channels": 4}
L, R = 3, 2


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add synchronisation cost (large on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _net(spatial_dims: int = 2, cm_type: str = "pixel", **kwargs) -> CMNet:
    torch.manual_seed(0)
    args = {**SMALL, **kwargs}
    return CMNet(spatial_dims, 1, args.pop("num_classes", L), args.pop("num_raters", R), cm_type=cm_type, **args)


def _image(spatial_dims: int, batch: int = 2, size: int = 8) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn((batch, 1) + (size,) * spatial_dims)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("cm_type", ["pixel", "low_rank", "global"])
@pytest.mark.parametrize("shared_trunk", [True, False])
def test_shapes_and_normalisation(spatial_dims, cm_type, shared_trunk):
    net = _net(spatial_dims, cm_type, shared_trunk=shared_trunk, identity_init=0.0)
    x = _image(spatial_dims)
    spatial = x.shape[2:]
    out = net.forward_all(x)
    assert set(out) == {"logits", "probs", "cm", "rater_probs"}
    assert out["logits"].shape == (2, L) + spatial
    assert out["probs"].shape == (2, L) + spatial
    assert out["cm"].shape == (2, R, L, L) + spatial
    assert out["rater_probs"].shape == (2, R, L) + spatial
    cm = out["cm"]
    assert (cm >= 0).all()
    torch.testing.assert_close(cm.sum(2), torch.ones_like(cm.sum(2)))  # columns are distributions
    torch.testing.assert_close(out["rater_probs"].sum(2), torch.ones_like(out["rater_probs"].sum(2)))
    torch.testing.assert_close(out["probs"], torch.softmax(out["logits"], 1))
    # rater_probs = A_r · p at every pixel
    expected = (cm * out["probs"][:, None, None]).sum(3)
    torch.testing.assert_close(out["rater_probs"], expected)
    out["rater_probs"].sum().backward()  # differentiable end to end


@pytest.mark.parametrize("cm_type", ["pixel", "low_rank", "global"])
def test_identity_init_diagonally_dominant(cm_type):
    delta = 3.0
    net = _net(2, cm_type, num_classes=4, identity_init=delta)
    cm = net.forward_all(_image(2))["cm"]
    diag = torch.diagonal(cm, dim1=2, dim2=3).movedim(-1, 2)  # (B, R, L, *S)
    off = cm.masked_fill(torch.eye(4, dtype=torch.bool)[:, :, None, None], -1.0).amax(2)  # per column max off-diagonal
    assert (diag > off).all()
    # the initial matrices are exactly softmax(delta * I) everywhere
    expected = torch.softmax(delta * torch.eye(4), 0)[None, None, :, :, None, None].expand_as(cm)
    torch.testing.assert_close(cm, expected)


def test_identity_init_disabled_is_not_identity():
    cm = _net(2, "pixel", identity_init=0.0).forward_all(_image(2))["cm"]
    assert cm.std(dim=(-1, -2)).max() > 0  # varies over pixels: the default random init
    assert torch.diagonal(cm, dim1=2, dim2=3).mean() < 0.7


@pytest.mark.parametrize("cm_type", ["pixel", "low_rank", "global"])
def test_forward_returns_only_logits(cm_type):
    net = _net(2, cm_type).eval()
    x = _image(2)
    logits = net(x)
    assert isinstance(logits, torch.Tensor)
    torch.testing.assert_close(logits, net.forward_all(x)["logits"])


MAPS = ["logits", "rater_probs", "cm"]


@pytest.mark.parametrize("cm_type", ["pixel", "low_rank", "global"])
def test_stacked_outputs_round_trip(cm_type):
    net = _net(2, cm_type, shared_trunk=False).eval()
    x = _image(2)
    stacked = StackedOutputs(net, MAPS, spatial_dims=2)
    maps = stacked(x)
    assert maps.shape == (2, L + R * L + R * L * L, 8, 8)
    parts, out = stacked.split(maps), net.forward_all(x)
    for key in MAPS:
        torch.testing.assert_close(parts[key], out[key])
    with pytest.raises(ValueError, match="channels"):
        stacked.split(maps[:, 1:])


def test_stacked_outputs_with_sliding_window():
    net = _net(2, "pixel").eval()
    x = _image(2, batch=1, size=16)
    inferer = SlidingWindowInferer(roi_size=(8, 8), sw_batch_size=2, overlap=0.5, mode="gaussian")
    stacked = StackedOutputs(net, MAPS, spatial_dims=2)
    with torch.no_grad():
        parts = stacked.split(inferer(x, stacked))
    assert parts["cm"].shape == (1, R, L, L, 16, 16)
    torch.testing.assert_close(parts["cm"].sum(2), torch.ones(1, R, L, 16, 16))
    torch.testing.assert_close(parts["rater_probs"].sum(2), torch.ones(1, R, 16, 16))


@pytest.mark.parametrize("cm_type", ["pixel", "low_rank", "global"])
def test_torchscript(cm_type):
    net = _net(2, cm_type, shared_trunk=cm_type != "pixel").eval()
    x = _image(2)
    scripted = torch.jit.script(net)
    torch.testing.assert_close(scripted(x), net(x))


def test_low_rank_head_smaller_than_pixel_head():
    def head_parameters(cm_type):
        net = _net(2, cm_type, num_classes=4, rank=1)
        return sum(p.numel() for p in net.annotator.head.parameters())

    assert head_parameters("low_rank") < head_parameters("pixel")


def test_global_cm_identical_across_pixels_and_images():
    net = _net(3, "global")
    with torch.no_grad():
        net.annotator.head.scores.add_(torch.randn_like(net.annotator.head.scores))
    cm = net.forward_all(_image(3))["cm"]
    reference = net.annotator.head.matrices()
    torch.testing.assert_close(cm, reference[None, ..., None, None, None].expand_as(cm))
    assert cm.stride(0) == 0 and cm.stride(-1) == 0  # an expand, not a copy


def test_parameter_groups_and_separate_trunk():
    shared = _net(2, "pixel", shared_trunk=True)
    separate = _net(2, "pixel", shared_trunk=False)
    prefixes = {name.split(".")[0] for name, _ in separate.named_parameters()}
    assert prefixes == {"segmentation", "seg_head", "annotator"}
    assert not any(n.startswith("annotator.features") for n, _ in shared.named_parameters())
    assert any(n.startswith("annotator.features") for n, _ in separate.named_parameters())
    # global matrices use no features: no annotator network either way
    glob = _net(2, "global", shared_trunk=False)
    assert [n for n, _ in glob.named_parameters() if n.startswith("annotator")] == ["annotator.head.scores"]


def test_cm_memory_elements():
    assert cm_memory_elements("pixel", 4, 3, (10, 10)) == 3 * 100 * 16
    assert cm_memory_elements("low_rank", 4, 3, 100, rank=1) == 3 * 2 * 100 * 4
    assert cm_memory_elements("global", 4, 3, (10, 10, 10)) == 3 * 16
    with pytest.raises(ValueError):
        cm_memory_elements("dense", 4, 3, 100)


def test_bad_arguments():
    with pytest.raises(ValueError, match="cm_type"):
        _net(2, "dense")
    with pytest.raises(ValueError, match="rank"):
        _net(2, "low_rank", rank=0)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("cm_type", ["pixel", "low_rank", "global"])
@pytest.mark.parametrize("head_level, head_upsample", [(0, "nearest"), (1, "nearest"), (1, "learned")])
def test_forward_train_gives_forward_all_values_without_full_resolution_matrices(
    spatial_dims, cm_type, head_level, head_upsample
):
    net = _net(spatial_dims, cm_type, head_level=head_level, head_upsample=head_upsample, identity_init=0.0).eval()
    x = _image(spatial_dims)
    full, lean = net.forward_all(x), net.forward_train(x)
    assert "cm" not in lean
    torch.testing.assert_close(lean["logits"], full["logits"])
    torch.testing.assert_close(lean["rater_probs"], full["rater_probs"])
    torch.testing.assert_close(lean["cm_trace"], torch.diagonal(full["cm"], dim1=2, dim2=3).sum(-1))
    # the rater distribution is each pixel's own matrix applied to its own p, at every level
    torch.testing.assert_close(full["rater_probs"], torch.einsum("brij...,bj...->bri...", full["cm"], full["probs"]))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_head_level_1_is_the_unet_with_one_matrix_per_block(spatial_dims):
    from monai.networks.nets import UNet

    net = _net(spatial_dims, "pixel", head_level=1, identity_init=0.0).eval()
    assert isinstance(net.segmentation, UNet) and net.segmentation.out_channels == L
    x = _image(spatial_dims)
    out = net.forward_all(x)
    torch.testing.assert_close(out["logits"], net.segmentation(x))  # the consensus is the baseline U-Net's output
    cm = out["cm"]
    assert cm.shape == (2, R, L, L) + (8,) * spatial_dims
    torch.testing.assert_close(cm.sum(2), torch.ones_like(cm.sum(2)))
    blocks = cm.unfold(-1, 2, 2).unfold(-2 - 1, 2, 2) if spatial_dims == 2 else cm.unfold(-1, 2, 2).unfold(-3, 2, 2).unfold(-5, 2, 2)
    flat = blocks.flatten(-spatial_dims)
    assert torch.equal(flat, flat[..., :1].expand_as(flat))  # one matrix per 2^d block
    assert not torch.equal(cm[..., 0, 0] if spatial_dims == 2 else cm[..., 0, 0, 0], cm[..., 2, 2] if spatial_dims == 2 else cm[..., 2, 2, 2])


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("cm_type", ["pixel", "low_rank"])
def test_learned_upsampling_gives_each_pixel_of_a_block_its_own_matrix(spatial_dims, cm_type):
    net = _net(spatial_dims, cm_type, head_level=1, head_upsample="learned", identity_init=0.0).eval()
    x = _image(spatial_dims)
    cm = net.forward_all(x)["cm"]
    assert cm.shape == (2, R, L, L) + (8,) * spatial_dims
    torch.testing.assert_close(cm.sum(2), torch.ones_like(cm.sum(2)))
    # the four (eight) pixels of the first block differ: not one matrix repeated as with "nearest"
    block = cm[(...,) + (slice(0, 2),) * spatial_dims].flatten(-spatial_dims)
    assert (block - block[..., :1]).abs().amax(dim=(0, 1, 2, 3))[1:].min() > 1e-4
    # the output layer maps each coarse pixel's hidden features to the scores of its own block only
    out = net.annotator.head.heads.out
    hidden = torch.randn((1, out.in_channels) + (4,) * spatial_dims)
    moved = hidden.clone()
    moved[(..., 1) + (2,) * (spatial_dims - 1)] += 1.0
    with torch.no_grad():
        changed = (out(moved) - out(hidden)).abs().sum(dim=1)[0] > 0
    expected = torch.zeros((8,) * spatial_dims, dtype=torch.bool)
    expected[(slice(2, 4),) + (slice(4, 6),) * (spatial_dims - 1)] = True
    assert torch.equal(changed, expected)


def test_learned_upsampling_starts_at_the_identity_prior():
    for cm_type in ("pixel", "low_rank"):
        net = _net(2, cm_type, head_level=1, head_upsample="learned").eval()
        cm = net.forward_all(_image(2))["cm"]
        expected = torch.softmax(3.0 * torch.eye(L), 0)[None, None, :, :, None, None].expand_as(cm)
        torch.testing.assert_close(cm, expected)


def test_head_level_errors():
    from multirater_monai.errors import UserError

    with pytest.raises(UserError, match="head_level must be 0"):
        _net(2, "pixel", head_level=2)
    with pytest.raises(UserError, match="needs shared_trunk"):
        _net(2, "pixel", head_level=1, shared_trunk=False)
    _net(2, "global", head_level=1, shared_trunk=False)  # no heads: nothing to place
    with pytest.raises(UserError, match="head_upsample must be one of"):
        _net(2, "pixel", head_level=1, head_upsample="bilinear")


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("cm_type, head_level, head_upsample", [("pixel", 0, "nearest"), ("low_rank", 1, "nearest"), ("pixel", 1, "learned")])
def test_chunked_recomputed_heads_give_the_same_values_and_gradients(spatial_dims, cm_type, head_level, head_upsample):
    """head_chunks recomputes the heads' tail per batch chunk; batch norm still sees the whole batch."""
    x = _image(spatial_dims, batch=4)
    kwargs = dict(head_level=head_level, head_upsample=head_upsample, identity_init=0.0)
    torch.manual_seed(0)
    plain = _net(spatial_dims, cm_type, **kwargs).train()
    torch.manual_seed(0)
    chunked = _net(spatial_dims, cm_type, head_chunks=3, **kwargs).train()
    outputs = []
    for net in (plain, chunked):
        out = net.forward_train(x)
        (out["rater_probs"].square().sum() + out["cm_trace"].sum()).backward()
        outputs.append(out)
    for key in ("rater_probs", "cm_trace"):
        torch.testing.assert_close(outputs[1][key], outputs[0][key])
    for (name, a), (_, b) in zip(plain.named_parameters(), chunked.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)
    for (name, a), (_, b) in zip(plain.named_buffers(), chunked.named_buffers()):
        torch.testing.assert_close(b, a, msg=name)  # running statistics updated once, not per chunk or recomputation


@pytest.mark.parametrize("cm_type", ["pixel", "low_rank"])
@pytest.mark.parametrize("head_level, head_upsample", [(0, "nearest"), (1, "nearest"), (1, "learned")])
def test_shared_hidden_heads(cm_type, head_level, head_upsample):
    """head_hidden "shared": one pair of hidden blocks of head_channels for all raters, a per-rater output layer;
    the identity prior and forward_train's values hold as with per-rater heads."""
    kwargs = {"head_level": head_level, "head_upsample": head_upsample, "num_raters": 3}
    shared = _net(2, cm_type, head_hidden="shared", **kwargs).eval()
    per_rater = _net(2, cm_type, **kwargs).eval()
    hidden = [m for m in shared.annotator.head.heads.blocks.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [m.out_channels for m in hidden] == [SMALL["head_channels"]] * 2 and hidden[1].groups == 1
    per_rater_hidden = [m for m in per_rater.annotator.head.heads.blocks.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [m.out_channels for m in per_rater_hidden] == [3 * SMALL["head_channels"]] * 2
    assert shared.annotator.head.heads.out.out_channels == per_rater.annotator.head.heads.out.out_channels
    cm = shared.forward_all(_image(2))["cm"]
    assert cm.shape == (2, 3, L, L, 8, 8)
    expected = torch.softmax(3.0 * torch.eye(L), 0)[None, None, :, :, None, None].expand_as(cm)
    torch.testing.assert_close(cm, expected)  # the identity prior, exactly
    # once the output layer moves, the raters differ although they share the hidden features
    with torch.no_grad():
        for p in shared.annotator.head.heads.out.parameters():
            p.add_(torch.randn_like(p))
    out, train = shared.forward_all(_image(2)), shared.forward_train(_image(2))
    assert not torch.allclose(out["cm"][:, 0], out["cm"][:, 1])
    torch.testing.assert_close(train["rater_probs"], out["rater_probs"])
    torch.testing.assert_close(train["cm_trace"], torch.diagonal(out["cm"], dim1=2, dim2=3).sum(-1))


def test_head_hidden_errors():
    from multirater_monai.errors import UserError

    with pytest.raises(UserError, match="head_hidden must be one of"):
        _net(2, "pixel", head_hidden="grouped")
