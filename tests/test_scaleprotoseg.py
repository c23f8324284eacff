"""ScaleProtoSeg: network parts against their definitions, losses, projection, grouping, thresholding, the bundle's
stages across an interruption, explanations, interpretability measures and the refusals of bad input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from multirater_monai.engines import GroupThreshold, PrototypeProjection, scaleprotoseg_epochs, with_simplex_projection
from multirater_monai.errors import UserError
from multirater_monai.explain import SavePrototypeExplanationsd
from multirater_monai.losses import GroupEntropyLoss, OffClassWeightL1, PrototypeDiversityLoss
from multirater_monai.metrics.prototypes import (
    activation_components,
    group_overlap,
    object_parts,
    part_keypoints,
    part_presence,
    prototype_consistency,
    prototype_stability,
)
from multirater_monai.networks import AtrousConv, ScaleProtoSeg, project_rows_to_simplex

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "scaleprotoseg"


def small_net(dims: int = 2, classes: int = 3, **kw) -> ScaleProtoSeg:
    torch.manual_seed(0)
    args = dict(features=8, channels=(8, 16), strides=(2,), num_res_units=1, aspp_channels=8, prototype_dim=4,
                dilations=(1, 2), prototypes_per_class=2, groups_per_class=2, patch_side=6)
    args.update(kw)
    return ScaleProtoSeg(dims, 1, classes, **args)


@pytest.mark.parametrize("dims,shape", [(2, (2, 3, 13, 10)), (3, (1, 3, 7, 6, 9))])
@pytest.mark.parametrize("dilation", [1, 2, 3, 4])
def test_atrous_conv_equals_the_dilated_convolution(dims, shape, dilation):
    """Space-to-batch gives the dilated convolution with zero padding, also for sizes that do not divide."""
    torch.manual_seed(0)
    atrous = AtrousConv(dims, 3, 5, dilation)
    conv = (torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d)(3, 5, 3, padding=dilation, dilation=dilation)
    conv.weight.data.copy_(atrous.conv.conv.weight.data)
    conv.bias.data.copy_(atrous.conv.conv.bias.data)
    x = torch.randn(shape)
    torch.testing.assert_close(atrous(x), conv(x), atol=1e-5, rtol=1e-5)


def test_distances_activations_and_heads_follow_their_definitions():
    net = small_net()
    x = torch.randn(2, 1, 8, 8)
    z = net.scale_features(x)  # (B, S·D, H, W)
    dist = net.distances(z)
    S, L, M, D = 2, 3, 2, 4
    zz = z.reshape(2, S, D, 8, 8)
    for s in range(S):
        for k in range(L * M):
            ref = ((zz[:, s] - net.prototypes[s, k][None, :, None, None]) ** 2).sum(1)
            torch.testing.assert_close(dist[:, s * L * M + k], ref, atol=1e-5, rtol=1e-4)
    act = net.activations(dist)
    torch.testing.assert_close(act, torch.log((dist + 1) / (dist + net.epsilon)), atol=1e-4, rtol=1e-4)
    # h_proto: +1 own class, -0.5 the others, over every scale
    logits = net.proto_logits(act)
    owner = net.prototype_class()
    for c in range(L):
        ref = torch.where(owner == c, 1.0, -0.5)[None, :, None, None].mul(act).sum(1)
        torch.testing.assert_close(logits[:, c], ref, atol=1e-4, rtol=1e-4)
    # group (c, g): weighted geometric mean of class c's activations (eq. 2); "ratio": of (d + 1) / (d + eps)
    groups = net.group_activations(act)
    for c in range(L):
        idx = [s * L * M + c * M + m for s in range(S) for m in range(M)]
        for g in range(2):
            w = net.group_weights[c, g]
            ref = torch.exp((w[:, None, None, None] * torch.log(act[:, idx].movedim(1, 0))).sum(0))
            torch.testing.assert_close(groups[:, c * 2 + g], ref, atol=1e-4, rtol=1e-4)
    net.group_mean_of = "ratio"
    ratio = net.group_activations(act)
    w = net.group_weights[1, 0]
    idx = [s * L * M + 1 * M + m for s in range(S) for m in range(M)]
    torch.testing.assert_close(ratio[:, 2], torch.exp((w[:, None, None, None] * act[:, idx].movedim(1, 0)).sum(0)), atol=1e-4, rtol=1e-4)


def test_simplex_projection():
    torch.manual_seed(0)
    w = torch.randn(6, 7) * 2
    p = project_rows_to_simplex(w)
    assert torch.allclose(p.sum(-1), torch.ones(6)) and (p >= 0).all()
    torch.testing.assert_close(project_rows_to_simplex(p), p)  # a point of the simplex stays
    # the Euclidean projection: no point of the simplex is closer (checked against random simplex points)
    others = torch.distributions.Dirichlet(torch.ones(7)).sample((500,))
    for i in range(6):
        assert ((others - w[i]) ** 2).sum(-1).min() >= ((p[i] - w[i]) ** 2).sum() - 1e-6
    torch.testing.assert_close(project_rows_to_simplex(torch.tensor([[0.3, 2.0, 0.1]])), torch.tensor([[0.0, 1.0, 0.0]]))
    mask = torch.tensor([True, False, True, True, False, True, True])
    pm = project_rows_to_simplex(w, mask)
    assert torch.allclose(pm.sum(-1), torch.ones(6)) and (pm[:, ~mask] == 0).all()


def test_diversity_loss_matches_its_definition_and_uses_each_class_own_prototypes():
    torch.manual_seed(0)
    L, S, M = 3, 2, 3
    dist = torch.rand(2, S * L * M, 4, 4, requires_grad=True)
    labels = torch.randint(0, L, (2, 4, 4))
    labels[1] = 1  # the second image holds class 1 only
    target = torch.nn.functional.one_hot(labels, L).movedim(-1, 1).float()
    loss = PrototypeDiversityLoss(L, S, M)({"distances": dist}, {"fused_label": target})
    terms = []
    d = dist.detach().reshape(2, S, L, M, -1)
    for b in range(2):
        for c in labels[b].unique().tolist():
            where = labels[b].flatten() == c
            if where.sum() < 2:
                continue
            for s in range(S):
                probs = torch.softmax(d[b, s, c][:, where], dim=-1)
                for i in range(M):
                    for j in range(i + 1, M):
                        kl = lambda p, q: (p * (p / q).log()).sum()  # noqa: E731
                        terms.append(math.exp(-0.5 * float(kl(probs[i], probs[j]) + kl(probs[j], probs[i]))))
    assert float(loss) == pytest.approx(float(np.mean(terms)), rel=1e-5)
    # only class-1 pixels in image 1: its gradient reaches class 1's prototypes only (the fixed class index)
    single = PrototypeDiversityLoss(L, S, M)({"distances": dist[1:]}, {"fused_label": target[1:]})
    (grad,) = torch.autograd.grad(single, dist)
    per_proto = grad[1].abs().flatten(1).sum(1).reshape(S, L, M)
    assert (per_proto[:, 1] > 0).all() and (per_proto[:, [0, 2]] == 0).all()
    # identical prototypes are maximally similar: exp(-0) = 1
    same = torch.rand(1, 1, 1, 1, 4, 4).expand(1, S, L, M, 4, 4).reshape(1, S * L * M, 4, 4)
    assert float(PrototypeDiversityLoss(L, S, M)({"distances": same}, {"fused_label": target[:1]})) == pytest.approx(1.0)


def test_group_entropy_and_off_class_l1():
    net = small_net()
    with torch.no_grad():
        net.group_weights.zero_()
        net.group_weights[..., 0] = 1.0  # one-hot rows: no entropy
    assert float(GroupEntropyLoss(net)({}, {})) == pytest.approx(0.0, abs=1e-3)
    with torch.no_grad():
        net.group_weights.fill_(1.0 / net.group_weights.shape[-1])  # uniform rows: normalised entropy 1
    assert float(GroupEntropyLoss(net)({}, {})) == pytest.approx(1.0, abs=1e-3)
    # +1 own (not counted), -0.5 to the 2 other classes of each of the 6 groups
    assert float(OffClassWeightL1(net)({}, {})) == pytest.approx(6 * 2 * 0.5)
    # h_proto (the optional fine-tuning): 12 prototypes, -0.5 to each of the 2 other classes
    assert float(OffClassWeightL1(net, head="last_layer")({}, {})) == pytest.approx(12 * 2 * 0.5)


def test_stage_lengths():
    assert scaleprotoseg_epochs(60, 3, 2, 8) == {"warmup": 3, "joint": 47, "finetune": 0, "group_warmup": 2, "group_joint": 8}
    assert scaleprotoseg_epochs(60, 3, 2, 8, finetune=5)["joint"] == 42
    for total in (1, 2, 5, 10, 23, 24, 100):
        split = scaleprotoseg_epochs(total, 3, 5, 15, 2)
        assert sum(split.values()) == total and split["joint"] >= 1


class ListDataset(list):
    pass


def tiny_items(num: int = 3, classes: int = 3, size: int = 12, lone_class_pixel: bool = False):
    torch.manual_seed(1)
    items = []
    for i in range(num):
        labels = torch.zeros(size, size, dtype=torch.long)
        labels[2:6, 2:7] = 1
        if classes > 2:
            labels[7:11, 6:10] = 2
        if lone_class_pixel:
            labels[labels == 2] = 0
            if i == 0:
                labels[9, 9] = 2  # one pixel of class 2 in the whole set
        image = torch.randn(1, size, size) + labels[None].float()
        items.append({"image": image, "fused_label": torch.nn.functional.one_hot(labels, classes).movedim(-1, 0).float()})
    return ListDataset(items)


def test_projection_puts_each_prototype_on_its_nearest_same_class_feature(tmp_path):
    net = small_net()
    items = tiny_items()
    projection = PrototypeProjection(net, items, tmp_path, class_names=["bg", "a", "b"])
    net.eval()  # the projection reads features as inference does (batch-norm running statistics)
    with torch.no_grad():
        feats = [net.scale_features(it["image"][None])[0] for it in items]
        before = net.prototypes.detach().clone()
        dists = [net.distances(f[None])[0] for f in feats]
    projection.project()
    owner, scale = net.prototype_class(), net.prototype_scale()
    S, D = 2, 4
    for p in range(net.num_prototypes):
        case, loc = int(net.source_case[p]), net.source_location[p].tolist()
        classes = items[case]["fused_label"].argmax(0)
        assert int(classes[tuple(loc)]) == int(owner[p])  # on a pixel of its class
        z = feats[case].reshape(S, D, 12, 12)[int(scale[p])][(slice(None), *loc)]
        torch.testing.assert_close(net.prototypes.reshape(-1, D)[p], z)
        # the nearest over every image's pixels of its class, to the prototype before projection
        best = min(float(d[p][it["fused_label"].argmax(0) == owner[p]].min()) for d, it in zip(dists, items))
        assert float(net.source_distance[p]) == pytest.approx(best, rel=1e-5, abs=1e-6)
        # the recorded patch is the training image around the location
        patch = net.source_patches[p]
        corner = [min(max(u - 3, 0), 12 - 6) for u in loc]
        torch.testing.assert_close(patch, items[case]["image"][:, corner[0] : corner[0] + 6, corner[1] : corner[1] + 6])
    assert not torch.equal(before, net.prototypes) and bool(net.projected)
    record = json.loads((tmp_path / "prototypes.json").read_text())
    assert len(record["prototypes"]) == net.num_prototypes and record["prototypes"][5]["case"] == int(net.source_case[5])
    saved = torch.load(tmp_path / "projected.pt", weights_only=True)
    assert torch.equal(saved["prototypes"], net.prototypes.detach())


def test_projection_masks_duplicates_and_they_leave_the_decision(tmp_path):
    """One pixel of class 2 in the set: every class-2 prototype of a scale lands on it; one is kept per scale."""
    net = small_net()
    PrototypeProjection(net, tiny_items(lone_class_pixel=True), tmp_path).project()
    active = net.prototype_active.flatten()
    owner, scale = net.prototype_class(), net.prototype_scale()
    for s in range(2):
        assert int(active[(owner == 2) & (scale == s)].sum()) == 1  # M = 2 prototypes on one pixel: one kept
    where = [(int(net.source_case[p]), *net.source_location[p].tolist(), int(scale[p])) for p in range(net.num_prototypes)]
    for p in torch.nonzero(~active).flatten().tolist():  # every masked one duplicates a kept one of its scale
        assert any(active[q] and where[q] == where[p] for q in range(net.num_prototypes))
    x = torch.randn(1, 1, 12, 12)
    act = net.activations(net.distances(net.scale_features(x)))
    act_changed = act.clone()
    act_changed[:, ~active] += 5.0
    torch.testing.assert_close(net.proto_logits(act), net.proto_logits(act_changed))  # masked: no contribution
    net.start_grouping()
    assert (net.group_weights[2][:, ~net.active_group_mask()[2, 0]] == 0).all()
    assert torch.allclose(net.group_weights.sum(-1), torch.ones(3, 2))


def test_a_class_without_training_pixels_is_refused_before_training(tmp_path):
    net = small_net(classes=4)
    projection = PrototypeProjection(net, tiny_items(classes=4), tmp_path, source="data/datalist.json",
                                     class_names=["bg", "a", "b", "c"])
    with pytest.raises(UserError, match=r"data/datalist.json: class 3 \('c'\) has no pixel"):
        projection.check_classes()


def test_scale_and_prototype_counts_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match="at least one scale"):
        small_net(dilations=())
    with pytest.raises(ValueError, match="dilations must be >= 1"):
        small_net(dilations=(0, 2))
    with pytest.raises(ValueError, match="must be >= 1"):
        small_net(prototypes_per_class=0)
    with pytest.raises(ValueError, match="groups_per_class"):
        small_net(groups_per_class=5)  # more groups than the class's 2 scales x 2 prototypes
    net = small_net()
    projection = PrototypeProjection(net, tiny_items(), "unused", patch_size=[12, 12])
    projection.check_classes()
    wide = small_net(dilations=(1, 12))
    with pytest.raises(UserError, match="dilation 12"):
        PrototypeProjection(wide, tiny_items(), "unused", patch_size=[12, 12]).check_classes()


def test_grouping_needs_projection_and_steps_stay_on_the_simplex():
    net = small_net()
    with pytest.raises(RuntimeError, match="never projected"):
        net.start_grouping()
    net.projected.fill_(True)
    net.start_grouping()
    opt = with_simplex_projection(torch.optim.SGD([net.group_weights], lr=5.0), net)
    out = net(torch.randn(2, 1, 8, 8))
    out[:, 1].mean().backward()
    opt.step()
    assert torch.allclose(net.group_weights.sum(-1), torch.ones(3, 2)) and (net.group_weights >= 0).all()


def test_threshold_zeroes_small_weights_in_the_network_and_the_selected_model(tmp_path):
    net = small_net()
    net.projected.fill_(True)
    net.start_grouping()
    with torch.no_grad():
        net.group_weights.copy_(torch.tensor([0.02, 0.5, 0.04, 0.44]).expand_as(net.group_weights))
    torch.save(net.state_dict(), tmp_path / "model.pt")
    GroupThreshold(net, 0.05, tmp_path / "model.pt")()
    expected = torch.tensor([0.0, 0.5, 0.0, 0.44])  # not renormalised (the authors' code)
    assert torch.allclose(net.group_weights[0, 0], expected) and bool(net.thresholded)
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert torch.allclose(saved["group_weights"][1, 1], expected) and bool(saved["thresholded"])


def test_explanations_show_the_input_beside_the_training_patch(tmp_path):
    net = small_net()
    items = tiny_items()
    PrototypeProjection(net, items, tmp_path / "models").project()
    image = items[1]["image"]
    out = net.forward_all(image[None])
    pred = out["logits"].argmax(1)
    SavePrototypeExplanationsd("image", "activations", "pred", net, tmp_path / "out", ["bg", "a", "b"], num_prototypes=2)(
        {"image": image, "activations": out["activations"][0], "pred": pred}
    )
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert any(f.endswith("_why.png") for f in files) and any(f.endswith("_why.nii.gz") for f in files)
    record = json.loads(next((tmp_path / "out").glob("*_why.json")).read_text())
    assert record["prototypes"], "no prototype explained"
    for entry in record["prototypes"]:
        assert int(pred[0][tuple(entry["location"])]) == ["bg", "a", "b"].index(entry["class"])  # inside its class
        assert entry["training_case"] == int(net.source_case[entry["prototype"]])


def test_interpretability_measures_on_known_maps():
    truth = np.zeros((20, 20), dtype=np.int64)
    truth[2:5, 2:5] = 1  # small object
    truth[8:19, 8:19] = 2  # large object
    parts = object_parts(truth, rim=1, radius_split=3.0)
    assert parts[3, 3] == 1 and parts[2, 2] == 0 and parts[13, 13] == 3 and parts[8, 12] == 2 and parts[0, 0] == -1
    keypoints = part_keypoints(parts)
    assert keypoints[1] == [(3, 3)] and keypoints[3] == [(13, 13)]
    assert all(parts[pt] == 2 for pt in keypoints[2])  # the rim's keypoint lies on the rim
    act = torch.zeros(3, 20, 20)
    act[0, 12:15, 12:15] = 1.0  # prototype 0 (class 2) fires on the large core, around its keypoint
    act[1, 8:19, 8] = 1.0  # prototype 1 (class 2) on the rim's left side
    act[1][tuple(torch.tensor(keypoints[2][0]))] = 1.0
    presence = part_presence(act, torch.tensor([2, 2, 1]), torch.as_tensor(truth), parts, quantile=0.8)
    assert presence[0].tolist()[2:] == [0.0, 1.0] and np.isnan(presence[0, :2]).all()  # small parts: not in class 2
    assert presence[1, 2] == 1.0 and presence[1, 3] == 0.0
    assert np.isnan(presence[2, 2:]).all()  # class 1 holds no large object
    # consistency: prototype 0 present at the core in 3 of 3 images, prototype 1 at no part in more than 0.8
    stack = np.stack([presence, presence, presence])
    stack[1, 1, 2] = 0.0
    assert prototype_consistency(stack, np.array([True, True, False])) == 0.5
    noisy = stack.copy()
    noisy[0, 0, 3] = 0.0
    assert prototype_stability(stack, noisy, np.array([True, True, True])) == pytest.approx(8 / 9)
    comps = activation_components(act[:2], (0.9,))[0.9]
    assert comps[0].tolist() == [1, 2] and comps[1].tolist() == [9, 6]
    groups = torch.zeros(2, 20, 20)
    groups[0, :10] = 1
    groups[1, 5:15] = 1
    inter, union = group_overlap(groups, 1, [0], quantile=0.4)
    assert inter / union == pytest.approx(5 / 15)


# the bundle, end to end (tiny data)

TINY = {"num_train": 6, "num_val": 2, "num_test": 2, "image_size": 32}


def _bundle_copy(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(BUNDLE, repo / "bundles" / "scaleprotoseg", ignore=shutil.ignore_patterns("models", "runs", "eval"))
    (repo / "datasets").mkdir()
    return repo / "bundles" / "scaleprotoseg"


def _overrides(bundle: Path, **extra) -> dict:
    base = {f"synthetic#{k}": v for k, v in TINY.items()}
    base.update({"dataset_dir": str(bundle.parent.parent / "datasets" / "tiny"), "batch_size": 2, "patch_size": [32, 32],
                 "mlflow_enabled": False, "warmup_epochs": 1, "group_warmup_epochs": 1, "group_joint_epochs": 1, "finetune_epochs": 1})
    base.update(extra)
    return base


def _run(bundle: Path, overrides: dict, args: tuple = ()):
    from tests.test_bundles import _bundle_process

    return _bundle_process(bundle, ["configs/train.json"], overrides, bundle.parent.parent / "log.txt", list(args))


@pytest.mark.slow
def test_every_stage_runs_and_an_interruption_after_the_projection_resumes_to_the_same_weights(tmp_path):
    """Warm-up, joint, projection, last-layer fine-tuning, grouping warm-up, grouping, threshold in one config (6
    epochs); stopped after the projection and the fine-tuning epoch (epoch 3) and resumed, the run ends with the
    weights of the uninterrupted one; resumed from a checkpoint whose weights predate the projection, it is refused."""
    straight = _bundle_copy(tmp_path / "a")
    proc = _run(straight, _overrides(straight, max_epochs=6))
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    for stage in ("warmup", "joint", "projection", "finetune", "start_grouping", "group_warmup", "group_joint", "threshold"):
        assert f"stage '{stage}'" in log, stage
    final = torch.load(straight / "models" / "model.pt", weights_only=True)
    assert bool(final["projected"]) and bool(final["grouped"]) and bool(final["thresholded"])
    assert not ((final["group_weights"] > 0) & (final["group_weights"] < 0.05)).any()
    assert (straight / "models" / "projected.pt").is_file() and (straight / "models" / "prototypes.json").is_file()

    interrupted = _bundle_copy(tmp_path / "b")
    # the same schedule (stage lengths fixed for 6 epochs), stopped after epoch 3: projection after epoch 2, epoch 3
    # fine-tuned h_proto
    fixed = "$multirater_monai.engines.scaleprotoseg_epochs(6, 1, 1, 1, 1)"
    first = _run(interrupted, _overrides(interrupted, max_epochs=3, stage_epochs=fixed))
    assert first.returncode == 0, first.stderr[-3000:]
    # a copy of the interrupted run whose checkpoint holds weights that predate the projection (its schedule does not):
    # resumed into the grouping stages, it stops with the reason before training a step
    tampered = _bundle_copy(tmp_path / "c")
    shutil.copytree(interrupted / "models", tampered / "models")
    ckpt_file = tampered / "models" / "checkpoints" / "train_checkpoint_epoch=3.pt"
    ckpt = torch.load(ckpt_file, weights_only=False)
    ckpt["network"]["projected"] = torch.tensor(False)
    ckpt["network"]["grouped"] = torch.tensor(False)
    torch.save(ckpt, ckpt_file)
    refused = _run(tampered, _overrides(tampered, max_epochs=6, stage_epochs=fixed), ("--resume", "true"))
    from tests.test_bundles import _fails_with_one_line

    _fails_with_one_line(refused, "the prototypes projected")

    again = _run(interrupted, _overrides(interrupted, max_epochs=6, stage_epochs=fixed), ("--resume", "true"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "stage 'projection'" not in again.stdout + again.stderr  # done before the interruption, not again
    a = torch.load(straight / "models" / "checkpoints" / "train_checkpoint_epoch=6.pt", weights_only=False)["network"]
    b = torch.load(interrupted / "models" / "checkpoints" / "train_checkpoint_epoch=6.pt", weights_only=False)["network"]
    assert not torch.equal(a["last_layer"], torch.load(straight / "models" / "projected.pt", weights_only=True)["last_layer"])
    for key, value in a.items():
        assert torch.equal(b[key], value), key


@pytest.mark.slow
def test_a_class_absent_from_the_training_set_stops_the_bundle_before_training(tmp_path):
    bundle = _bundle_copy(tmp_path)
    # four classes in the data, six in the network: classes 4 and 5 have nothing to project prototypes onto
    proc = _run(bundle, _overrides(bundle, max_epochs=1, num_classes=6, **{"synthetic#num_classes": 4},
                                   class_names=[f"c{i}" for i in range(6)]))
    from tests.test_bundles import _fails_with_one_line

    line = _fails_with_one_line(proc, "has no pixel in any training image")
    assert "datalist.json" in line and "class 4 ('c4'), class 5 ('c5')" in line
    assert not (bundle / "models" / "model.pt").exists()
