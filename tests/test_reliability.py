"""Nothing lost, nothing silently wrong: NaN guard, atomic checkpoints, exact resume, strict options and inputs.

Each test here failed on the code before these fixes (see the README's "Reliability" section).
"""

from __future__ import annotations

import gzip
import json
import os
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import CacheDataset, DataLoader
from monai.transforms import Compose, RandFlipd, RandSpatialCropd
from monai.utils import set_determinism

from multirater_monai.bundle_utils import check_outputs_free, flag, tracking_enabled
from multirater_monai.data import DatalistError, MixedSampler, check_datalist, list_images
from multirater_monai.engines import (
    BestModelSaver,
    CheckpointError,
    CheckpointResumer,
    ModelExistsError,
    MultiRaterTrainer,
    MultiStageSchedule,
    NonFiniteError,
    PrepareBatchDict,
    RandomStates,
    StateDictLoader,
    TrainingCheckpointer,
    TrainStep,
    checkpoint_files,
)
from multirater_monai.errors import UserError, find_user_error, install_concise_errors
from multirater_monai.losses import KeyedLoss


def _mse(outputs, batch):
    return torch.nn.functional.mse_loss(outputs["logits"], batch["target"])


def _trainer(net, loader, max_epochs, lr=0.1, tolerance=0, handlers=None, schedule=None):
    return MultiRaterTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=lr),
        loss_function=_mse,
        prepare_batch=PrepareBatchDict(),
        train_step=TrainStep(),
        nonfinite_tolerance=tolerance,
        train_handlers=handlers,
        schedule=schedule,
    )


def _loader(n=4, nan_at=None):
    items = []
    for i in range(n):
        image = torch.randn(1, 4, 4)
        if i == nan_at:
            image[0, 0, 0] = float("nan")
        items.append({"image": image, "target": torch.randn(1, 4, 4)})
    return torch.utils.data.DataLoader(items, batch_size=2)


# 1. a non-finite loss or non-finite weights stop training, naming the epoch and iteration


def test_nan_loss_stops_training_before_the_weights_move():
    net = torch.nn.Conv2d(1, 1, 1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    trainer = _trainer(net, _loader(4, nan_at=2), 2)
    with pytest.raises(NonFiniteError, match=r"epoch 1, iteration 2: the training loss is nan"):
        trainer.run()
    # the first batch trained, the NaN batch did not reach the weights
    assert all(torch.isfinite(v).all() for v in net.state_dict().values())
    assert not torch.equal(before["weight"], net.weight)


def test_nan_batches_skipped_within_the_tolerance():
    net = torch.nn.Conv2d(1, 1, 1)
    trainer = _trainer(net, _loader(4, nan_at=2), 2, tolerance=2)
    trainer.run()  # one NaN batch per epoch: two in all, tolerated
    assert trainer.state.nonfinite_losses == 2 and all(torch.isfinite(p).all() for p in net.parameters())
    trainer = _trainer(torch.nn.Conv2d(1, 1, 1), _loader(4, nan_at=2), 3, tolerance=2)
    with pytest.raises(NonFiniteError, match=r"epoch 3, iteration 6: .* \(3 non-finite loss\(es\), 2 tolerated\)"):
        trainer.run()


def test_exploding_weights_stop_training():
    net = torch.nn.Conv2d(1, 1, 1)
    trainer = _trainer(net, _loader(4), 5, lr=1e38)
    with pytest.raises(NonFiniteError, match=r"epoch \d+, iteration \d+: the (weights are not finite|training loss is)"):
        trainer.run()


class _Validation:
    """Stands in for the evaluator: its metric is the epoch's value of ``values``."""

    def __init__(self, values):
        self.values = values
        self.state = type("S", (), {"metrics": {}, "epoch": 0, "key_metric_name": "dice"})()


def test_best_model_never_replaced_by_a_worse_or_broken_one(tmp_path):
    path = tmp_path / "models" / "model.pt"
    info = {"datalist": "/data/a.json", "val_target": "gt", "run_name": "first"}
    net = torch.nn.Linear(2, 1)
    first = BestModelSaver(net, path, key_metric_name="dice", run_info=info)
    ev = _Validation([])
    ev.state.metrics, ev.state.epoch = {"dice": 0.8}, 3
    first(ev)
    good = path.read_bytes()
    record = json.loads((tmp_path / "models" / "model.json").read_text())
    assert record["value"] == 0.8 and record["datalist"] == "/data/a.json" and record["epoch"] == 3
    # a new run on the same data starts from the existing model's value
    second = BestModelSaver(net, path, key_metric_name="dice", run_info={**info, "run_name": "second"})
    second.start_from_existing("dice")
    torch.nn.init.constant_(net.weight, float("nan"))
    ev.state.metrics = {"dice": 0.9}
    second(ev)  # better metric, but NaN weights: not saved
    torch.nn.init.constant_(net.weight, 1.0)
    ev.state.metrics = {"dice": float("nan")}
    second(ev)
    ev.state.metrics = {"dice": 0.5}
    second(ev)  # worse than the earlier run's model
    assert path.read_bytes() == good
    ev.state.metrics = {"dice": 0.85}
    second(ev)
    assert path.read_bytes() != good and json.loads((tmp_path / "models" / "model.json").read_text())["run_name"] == "second"
    # another dataset: refused before training, unless the user asks
    with pytest.raises(ModelExistsError, match=r"model.pt: was trained with another datalist '/data/a.json'.*--overwrite_model true"):
        BestModelSaver(net, path, key_metric_name="dice", run_info={**info, "datalist": "/data/b.json"}).start_from_existing("dice")
    BestModelSaver(net, path, "dice", run_info={**info, "datalist": "/data/b.json"}, overwrite=True).start_from_existing("dice")
    (tmp_path / "models" / "model.json").unlink()
    with pytest.raises(ModelExistsError, match="without a record"):
        BestModelSaver(net, path, key_metric_name="dice", run_info=info).start_from_existing("dice")


# 2. atomic checkpoints, and a resume that survives a bad one


class _Counter:
    def __init__(self):
        self.value = 0

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def test_a_kill_during_a_checkpoint_save_leaves_the_previous_one(tmp_path, monkeypatch):
    counter = _Counter()
    saver = TrainingCheckpointer(tmp_path, {"counter": counter}, n_saved=1)
    saver.save(1)
    real_save = torch.save

    def killed(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process is killed in the middle of the write

    monkeypatch.setattr(torch, "save", killed)
    counter.value = 2
    with pytest.raises(KeyboardInterrupt):
        saver.save(2)
    monkeypatch.setattr(torch, "save", real_save)
    assert [p.name for p in tmp_path.iterdir()] == ["train_checkpoint_epoch=1.pt"]
    restored = _Counter()
    CheckpointResumer(tmp_path, {"counter": restored})(Engine(lambda e, b: None))
    assert restored.value == 0


def test_stale_checkpoints_are_removed_once_a_new_one_is_written(tmp_path):
    (tmp_path / "train_checkpoint_epoch=40.pt").write_bytes(b"an earlier run's")
    saver = TrainingCheckpointer(tmp_path, {"counter": _Counter()}, n_saved=2)
    saver.save(1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train_checkpoint_epoch=1.pt"]
    saver.save(2)
    saver.save(3)
    assert [p.name for p in checkpoint_files(tmp_path)] == ["train_checkpoint_epoch=3.pt", "train_checkpoint_epoch=2.pt"]


def test_resume_skips_a_corrupt_checkpoint_naming_it(tmp_path, caplog):
    counter = _Counter()
    saver = TrainingCheckpointer(tmp_path, {"counter": counter}, n_saved=3)
    for epoch in (1, 2):
        counter.value = epoch
        saver.save(epoch)
    newest = tmp_path / "train_checkpoint_epoch=2.pt"
    newest.write_bytes(newest.read_bytes()[:50])  # truncated
    restored = _Counter()
    resumer = CheckpointResumer(tmp_path, {"counter": restored})
    resumer(Engine(lambda e, b: None))
    assert restored.value == 1 and resumer.loaded.name == "train_checkpoint_epoch=1.pt"
    assert f"{newest}: unreadable checkpoint" in caplog.text
    (tmp_path / "train_checkpoint_epoch=1.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"(?s)no readable training checkpoint.*epoch=2.pt: unreadable.*epoch=1.pt: unreadable"):
        CheckpointResumer(tmp_path, {"counter": restored})(Engine(lambda e, b: None))
    with pytest.raises(CheckpointError, match="no training checkpoint to resume from"):
        CheckpointResumer(tmp_path / "none", {"counter": restored}).attach(Engine(lambda e, b: None))


def test_a_model_file_that_is_missing_truncated_or_of_another_network_is_named(tmp_path):
    net = torch.nn.Linear(2, 1)
    with pytest.raises(CheckpointError, match=r"model.pt: no trained model"):
        StateDictLoader(tmp_path / "model.pt", net)()
    torch.save(torch.nn.Linear(3, 1).state_dict(), tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=r"model.pt: not the weights of this network"):
        StateDictLoader(tmp_path / "model.pt", net)()
    (tmp_path / "model.pt").write_bytes((tmp_path / "model.pt").read_bytes()[:40])
    with pytest.raises(CheckpointError, match=r"model.pt: unreadable model file"):
        StateDictLoader(tmp_path / "model.pt", net)()



@pytest.mark.parametrize("saved,loaded", [("per_rater", "shared"), ("shared", "per_rater")])
def test_a_cmnet_model_of_the_other_head_layout_names_the_option_to_give(saved, loaded, tmp_path):
    """A model.pt trained before cmnet 0.7.0 (per-rater heads) under the new default says which option loads it."""
    from multirater_monai.networks import CMNet

    def net(head_hidden):
        return CMNet(2, 1, 2, 3, channels=(4, 8, 16), strides=(2, 2), head_channels=4, head_hidden=head_hidden)

    torch.save(net(saved).state_dict(), tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=rf"model.pt: not the weights of this network .*give --head_hidden {saved}\)"):
        StateDictLoader(tmp_path / "model.pt", net(loaded))()
    StateDictLoader(tmp_path / "model.pt", net(saved))()  # the same layout loads

# 9. an interrupted and resumed run gives the weights of the uninterrupted one


def _exact_run(tmp_path, max_epochs, resume=False, stop=None, mixed=False):
    """A fresh 'process': seeded, random crops and flips, shuffled loader (or the semi-supervised sampler with a
    generator of its own, ``mixed``), two stages, checkpoint every epoch."""
    set_determinism(seed=0)
    data = [{"image": np.random.RandomState(i).rand(1, 8, 8).astype(np.float32), "target": np.full((1, 4, 4), i, np.float32)} for i in range(6)]
    transform = Compose([RandSpatialCropd(["image"], roi_size=(4, 4), random_size=False), RandFlipd(["image"], prob=0.5, spatial_axis=0)])
    sampler = MixedSampler([i % 3 == 0 for i in range(6)], 0.5, 6, seed=0) if mixed else None
    loader = DataLoader(CacheDataset(data, transform, progress=False), batch_size=2, shuffle=not mixed, sampler=sampler)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 1, 1))
    schedule = MultiStageSchedule([{"name": "a", "epochs": 2}, {"name": "b", "epochs": max_epochs - 2, "trainable": ["2."]}], net)
    trainer = _trainer(net, loader, max_epochs, lr=0.05, schedule=schedule)
    state = {"network": net, "optimizer": trainer.optimizer, "trainer": trainer, "schedule": schedule, "rng": RandomStates(transform, sampler)}
    if resume:
        CheckpointResumer(tmp_path, state).attach(trainer)
    TrainingCheckpointer(tmp_path, state).attach(trainer)
    if stop is not None:
        epoch, iteration = stop

        def interrupt(engine):
            if engine.state.epoch == epoch and (engine.state.iteration - 1) % engine.state.epoch_length + 1 == iteration:
                raise KeyboardInterrupt

        trainer.add_event_handler(Events.ITERATION_COMPLETED, interrupt)
    try:
        trainer.run()
    except KeyboardInterrupt:
        pass
    return {k: v.clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("mixed", [False, True], ids=["shuffled", "mixed-sampler"])
@pytest.mark.parametrize("stop", [(2, 3), (3, 2)], ids=["epoch-boundary", "mid-epoch"])
def test_interrupted_and_resumed_run_gives_the_same_weights(tmp_path, stop, mixed):
    reference = _exact_run(tmp_path / "reference", 5, mixed=mixed)
    _exact_run(tmp_path / "run", 5, stop=stop, mixed=mixed)  # interrupted after the last iteration of epoch 2, or within epoch 3
    resumed = _exact_run(tmp_path / "run", 5, resume=True, mixed=mixed)
    for key in reference:
        assert torch.equal(reference[key], resumed[key]), key


# 5. booleans on the command line


@pytest.mark.parametrize("value,expected", [(True, True), (False, False), ("true", True), ("false", False),
                                            ("True", True), ("False", False), ("1", True), ("0", False), (1, True), (0, False)])
def test_flag_values(value, expected):
    assert flag(value, "resume") is expected


@pytest.mark.parametrize("value", ["maybe", "yes!", 2, None, "", 0.5])
def test_flag_refuses_other_values_naming_the_option(value):
    with pytest.raises(UserError, match=r"option --shared_trunk: expected true or false"):
        flag(value, "shared_trunk")


# 4. inference never replaces earlier outputs silently


def test_inference_outputs_are_not_overwritten(tmp_path):
    inputs = [str(tmp_path / "in" / "case1.nii.gz"), str(tmp_path / "in" / "case10.nii.gz")]
    out = tmp_path / "out"
    check_outputs_free(inputs, out)  # no folder yet
    out.mkdir()
    (out / "case10_seg.nii.gz").write_bytes(b"earlier")
    (out / "other_seg.nii.gz").write_bytes(b"another case")
    with pytest.raises(UserError, match=r"case10_seg.nii.gz: exists from an earlier inference of .*case10.nii.gz.*--overwrite true"):
        check_outputs_free(inputs, out)
    check_outputs_free(inputs, out, overwrite="true")
    check_outputs_free(inputs[:1], out)  # case1 is not case10


# 6, 7. bad images named before anything runs


def _image(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return str(path)


def test_nan_voxels_and_truncated_images_are_refused_with_the_file(tmp_path):
    good = _image(tmp_path / "good.nii.gz", np.random.rand(64, 64).astype(np.float32))
    nan = np.random.rand(64, 64).astype(np.float32)
    nan[3, 4] = np.nan
    bad = _image(tmp_path / "nan.nii.gz", nan)
    truncated = tmp_path / "cut.nii.gz"
    raw = gzip.compress(nib.Nifti1Image(np.random.rand(64, 64).astype(np.float32), np.eye(4)).to_bytes())
    truncated.write_bytes(raw[: len(raw) // 2])
    assert nib.load(truncated).shape == (64, 64)  # the header reads, the data does not
    with pytest.raises(DatalistError) as err:
        list_images(tmp_path, in_channels=1, spatial_dims=2)
    message = str(err.value)
    assert f"{bad}: image has 1 NaN / inf voxel(s)" in message
    assert f"{truncated}: unreadable image data, truncated or corrupt" in message
    assert good not in message
    label = _image(tmp_path / "labels" / "l.nii.gz", np.zeros((64, 64), np.uint8))
    with pytest.raises(DatalistError, match="NaN / inf"):
        check_datalist([{"image": bad, "label": [label]}], num_raters=1, num_classes=2, spatial_dims=2)


def test_a_3d_volume_given_to_a_2d_bundle_is_named_as_such(tmp_path):
    volume = _image(tmp_path / "vol.nii.gz", np.random.rand(16, 16, 20).astype(np.float32))
    with pytest.raises(DatalistError, match=r"vol.nii.gz: a 3D volume \(16, 16, 20\), and the bundle is 2D"):
        list_images(tmp_path, in_channels=1, spatial_dims=2)


# 8. an unreachable tracking server fails at once, naming it


def test_unreachable_tracking_server_is_named_within_seconds(caplog):
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"MLflow tracking server http://127.0.0.1:9 does not answer"):
        tracking_enabled(True, "http://127.0.0.1:9")
    assert not tracking_enabled(True, "http://127.0.0.1:9", fallback="true") and "training without tracking" in caplog.text
    assert time.perf_counter() - start < 30  # not MLflow's minutes of retries
    assert not tracking_enabled("false", "http://127.0.0.1:9") and tracking_enabled(True, "sqlite:////tmp/x.db")


# the concise error display


def test_user_errors_are_shown_without_traceback(capsys, monkeypatch):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    install_concise_errors()
    try:
        try:
            raise DatalistError(["/data/x.nii.gz: image file not found", "/data/y.nii.gz: image file not found"])
        except DatalistError as e:
            raise RuntimeError("Failed to instantiate component 'CacheDataset'") from e
    except RuntimeError as wrapped:
        assert isinstance(find_user_error(wrapped), DatalistError)
        sys.excepthook(type(wrapped), wrapped, wrapped.__traceback__)
    err = capsys.readouterr().err
    assert err.startswith("\nERROR: 2 problem(s):\n  - /data/x.nii.gz: image file not found") and "Traceback" not in err
    monkeypatch.setenv("MULTIRATER_TRACEBACK", "1")
    try:
        raise UserError("shown with its traceback")
    except UserError as e:
        sys.excepthook(type(e), e, e.__traceback__)
    assert "Traceback" in capsys.readouterr().err
