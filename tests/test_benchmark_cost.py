"""The deterministic memory figure of the cost measurement: what autograd saves for the backward pass."""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from multirater_monai.benchmark.cost import saved_activation_mib


def test_saved_activations_count_each_storage_once_and_skip_recomputed_ones():
    x = torch.randn(2**18, requires_grad=True)  # 1 MiB of float32

    def exp_twice() -> None:
        y = x.exp()  # saves its output: 1 MiB
        (y * y).sum().backward()  # saves y twice: the same storage, counted once

    assert saved_activation_mib(exp_twice) == pytest.approx(1.0)

    def three_exps(a: torch.Tensor) -> torch.Tensor:
        return a.exp().exp().exp()  # each exp saves its output

    def plain() -> None:
        three_exps(x).sum().backward()

    def checkpointed() -> None:
        checkpoint(three_exps, x, use_reentrant=False).sum().backward()  # keeps its input only, recomputes the rest

    assert saved_activation_mib(plain) == pytest.approx(3.0)
    assert saved_activation_mib(checkpointed) == pytest.approx(1.0)

    def no_grad() -> None:
        with torch.no_grad():
            x.exp()

    assert saved_activation_mib(no_grad) == 0.0


def test_each_synthetic_layout_gets_its_own_small_set():
    """A bundle whose synthetic data is a scene (unrolled LRP) and one with nested objects of as many classes
    must not share a folder: the second would find a set generated with other parameters and stop."""
    from multirater_monai.benchmark.cost import synthetic_folder_name

    assert synthetic_folder_name(2, 2) == synthetic_folder_name(2, 2, "nested") == "2d_2class"
    assert synthetic_folder_name(2, 4, "scene") == "2d_4class_scene" != synthetic_folder_name(2, 4)
    assert synthetic_folder_name(3, 4, "scene") != synthetic_folder_name(2, 4, "scene")
    default = {"raters": ["good", "over", "under", "wrong", "blank"], "labels_per_image": None, "seed": 0}
    assert synthetic_folder_name(2, 2, None, default) == "2d_2class"
    tax = {"raters": ["dilated", "eroded", "simplified", "none"], "labels_per_image": 1, "scanners": True}
    assert synthetic_folder_name(2, 2, None, tax).startswith("2d_2class_") and synthetic_folder_name(2, 2, None, tax) != synthetic_folder_name(2, 2, None, {**tax, "assignment": "scanner"})


def test_the_step_is_timed_in_the_stage_the_bundle_names(tmp_path):
    """ScaleProtoSeg trains mostly in its joint stage (the grouping stages train 240 numbers on a frozen trunk): its
    cost is measured there, and any other epoch stage can be asked for; an unknown one is refused."""
    from multirater_monai.benchmark.cost import measure_train_step

    joint = measure_train_step("scaleprotoseg", 2, steps=1, warmup=0, data_dir=tmp_path)
    grouping = measure_train_step("scaleprotoseg:cost_stage=group_joint", 2, steps=1, warmup=0, data_dir=tmp_path)
    assert joint["stage"] == "joint" and grouping["stage"] == "group_joint"
    with pytest.raises(ValueError, match="cost_stage 'nope'"):
        measure_train_step("scaleprotoseg:cost_stage=nope", 2, steps=1, warmup=0, data_dir=tmp_path)
