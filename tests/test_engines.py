"""The training engine on toy methods: steps, stages, action stages, teachers, semi-supervised batches, AMP."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointLoader, CheckpointSaver

from multirater_monai.engines import (
    AllOutputs,
    BestModelSaver,
    MultiRaterTrainer,
    MultiStageSchedule,
    PrepareBatchDict,
    RecurrentStep,
    StackedOutputs,
    Stage,
    Teacher,
    TrainStep,
    epochs_for_iterations,
    frozen_modules,
    total_epochs,
)
from multirater_monai.losses import CombinedLoss, KeyedLoss

EVENTS = [
    IterationEvents.FORWARD_COMPLETED,
    IterationEvents.LOSS_COMPLETED,
    IterationEvents.BACKWARD_COMPLETED,
    IterationEvents.MODEL_COMPLETED,
]


class TwoPartNet(torch.nn.Module):
    """A toy network with a 'trunk' (conv + batch norm) and a 'head'; forward_all returns a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
        self.head = torch.nn.Conv2d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def forward_all(self, x: torch.Tensor, annotator: torch.Tensor | None = None) -> dict:
        logits = self.trunk(x)
        extra = self.head(logits)
        if annotator is not None:  # an extra input from the batch
            extra = extra + annotator.float().view(-1, 1, 1, 1)
        return {"logits": logits, "extra": extra}


def _data(n: int = 4, labelled: list[bool] | None = None) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(n):
        label = torch.randint(0, 2, (1, 4, 4), generator=g)
        has = True if labelled is None else labelled[i]
        items.append(
            {
                "image": torch.randn(1, 4, 4, generator=g),
                "label": label if has else torch.full_like(label, -1),
                "rater_mask": torch.tensor([has]),
                "class_label": torch.tensor([1.0, float(label.any())]),
                "annotator": torch.tensor(i % 2),
            }
        )
    return items


def _loader(n: int = 4, batch_size: int = 2, **kw) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(_data(n, **kw), batch_size=batch_size)


def _ce(outputs, batch):
    return torch.nn.functional.cross_entropy(outputs["logits"], batch["label"][:, 0].long(), ignore_index=-1)


def _head_loss(outputs, batch):
    return outputs["extra"].pow(2).mean()


def _trainer(net, loss, max_epochs, step=None, schedule=None, loader=None, **kwargs):
    return MultiRaterTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=loader if loader is not None else _loader(),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=loss,
        prepare_batch=PrepareBatchDict(),
        train_step=step if step is not None else TrainStep(method="forward_all"),
        schedule=schedule,
        **kwargs,
    )


def _record_events(trainer) -> list:
    fired = []
    for event in EVENTS:
        trainer.add_event_handler(event, lambda e, ev=event: fired.append(ev))
    return fired


def test_step_gives_outputs_and_batch_by_name_and_keeps_the_engine_contract():
    net = TwoPartNet()
    seen = []

    def loss(outputs, batch):
        seen.append((sorted(outputs), sorted(batch), batch["annotator"].tolist()))
        return _ce(outputs, batch) + _head_loss(outputs, batch)

    step = TrainStep(inputs=["image", "annotator"], method="forward_all")
    trainer = _trainer(net, loss, max_epochs=1, step=step)
    fired = _record_events(trainer)
    head_before = net.head.weight.detach().clone()
    trainer.run()
    assert seen[0][0] == ["extra", "logits"]
    assert {"image", "label", "rater_mask", "class_label", "annotator"} <= set(seen[0][1])
    assert seen[0][2] == [0, 1]  # the network and the loss received the batch's annotator indices
    assert fired == EVENTS * 2  # once each per iteration, in order
    out = trainer.state.output  # decollated by MONAI: one dict per sample
    assert len(out) == 2 and {"image", "label", "pred", "loss"} <= set(out[0]) and out[0]["pred"].shape == (2, 4, 4)
    assert not torch.equal(head_before, net.head.weight)  # the head trained through forward_all


def test_step_through_an_all_outputs_adapter_and_a_plain_network():
    net = TwoPartNet()
    trainer = _trainer(AllOutputs(net), lambda o, b: _ce(o, b) + _head_loss(o, b), 1)
    trainer.run()  # the adapter's forward is forward_all (as under DDP)
    plain = _trainer(torch.nn.Conv2d(1, 2, 1), KeyedLoss(torch.nn.functional.mse_loss, "logits", "class_label_map"), 1,
                     step=TrainStep(), loader=torch.utils.data.DataLoader(
                         [{"image": torch.randn(1, 4, 4), "class_label_map": torch.randn(2, 4, 4)} for _ in range(2)], batch_size=2))
    plain.run()  # a network returning a tensor: its output is "logits" for the loss
    assert set(AllOutputs(net)(torch.randn(1, 1, 4, 4))) == {"logits", "extra"}
    with pytest.raises(TypeError, match="has no method 'forward_maps'"):
        AllOutputs(net, "forward_maps")


class Recurrent(torch.nn.Module):
    """y_i = w * x + 10 * y_{i-1}: without detaching, pass i's loss would reach w through pass i - 1."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return self.w * x

    def forward_step(self, x, state):
        y = self.w * x + (0 if state is None else 10 * state)
        return {"logits": y, "state": y}


@pytest.mark.parametrize("backward_each", [True, False])
def test_recurrent_step_keeps_each_recurrence_out_of_the_previous_one(backward_each):
    net = Recurrent()
    x = torch.ones(2, 1, 4, 4)
    loader = torch.utils.data.DataLoader([{"image": x[0], "label": torch.zeros(1, 4, 4)} for _ in range(2)], batch_size=2)
    passes_seen = []

    def loss(outputs, batch):
        passes_seen.append(outputs["recurrence"])
        return outputs["logits"].sum()

    step = RecurrentStep(passes=2, backward_each=backward_each)
    trainer = _trainer(net, loss, 1, step=step, loader=loader)
    fired = _record_events(trainer)
    grads = []
    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, lambda e: grads.append(net.w.grad.clone()))
    trainer.run()
    # d/dw of (w·x).sum() per pass, twice; with gradients through the state it would be 1 + 11 = 12 times
    assert grads[0].item() == pytest.approx(2 * x.sum().item())
    assert passes_seen == [0, 1] and fired == EVENTS
    out = trainer.state.output[0]
    assert {"loss_0", "loss_1", "loss", "pred"} <= set(out)


def test_amp_keeps_the_iteration_events_and_trains():
    net = TwoPartNet()
    dtypes = []
    net.head.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    trainer = _trainer(net, lambda o, b: _ce(o, b) + _head_loss(o, b), 1, amp=True)
    fired = _record_events(trainer)
    before = net.head.weight.detach().clone()
    trainer.run()
    assert fired == EVENTS * 2
    assert dtypes[0] in (torch.bfloat16, torch.float16)  # the forward ran under autocast
    assert torch.isfinite(net.head.weight).all() and not torch.equal(before, net.head.weight)


def test_semi_supervised_batch_each_term_on_the_images_that_have_its_target():
    """Images without pixel labels take no part in the pixel loss but do in the image-level loss."""
    data = _data(4, labelled=[True, False, True, False])
    batch = torch.utils.data.default_collate(data)
    logits = torch.randn(4, 2, 4, 4, requires_grad=True)
    scores = torch.randn(4, 2, requires_grad=True)
    pixel = KeyedLoss(lambda p, t: torch.nn.functional.cross_entropy(p, t[:, 0].long()), "logits", "label", mask_key="rater_mask")
    image = KeyedLoss(torch.nn.functional.binary_cross_entropy_with_logits, "scores", "class_label")
    loss = CombinedLoss({"pixel": pixel, "image": image}, weights={"image": 0.5})
    value = loss({"logits": logits, "scores": scores}, batch)
    value.backward()
    assert logits.grad[[1, 3]].abs().sum() == 0 and logits.grad[[0, 2]].abs().sum() > 0
    assert scores.grad.abs().sum(1).gt(0).all()  # every image has image-level labels
    expected_pixel = torch.nn.functional.cross_entropy(logits[[0, 2]], batch["label"][[0, 2], 0].long())
    assert loss.last_terms["pixel"] == pytest.approx(expected_pixel.item())
    none = pixel({"logits": logits}, {**batch, "rater_mask": torch.zeros(4, 1, dtype=torch.bool)})
    assert none.item() == 0 and none.requires_grad  # a batch without any pixel label still back-propagates


def test_schedule_switches_loss_step_and_trainable_parameters():
    net = TwoPartNet()
    calls = []
    joint_step = TrainStep(inputs=["image", "annotator"], method="forward_all")
    stages = [
        {"name": "warmup", "epochs": 2, "loss_function": _head_loss, "trainable": ["head"], "on_end": lambda e: calls.append(("end", e.state.epoch))},
        {"name": "joint", "epochs": 1, "loss_function": lambda o, b: _ce(o, b) + _head_loss(o, b), "step": joint_step, "on_start": lambda e: calls.append(("start", e.state.epoch))},
    ]
    assert total_epochs(stages) == 3
    schedule = MultiStageSchedule(stages, network=net)
    trainer = _trainer(net, loss=None, max_epochs=3, schedule=schedule)
    trunk_before = {k: v.clone() for k, v in net.trunk.state_dict().items()}
    after_warmup = {}
    modes = []
    trainer.add_event_handler(IterationEvents.FORWARD_COMPLETED, lambda e: modes.append(net.trunk.training))
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda e: after_warmup.update({k: v.clone() for k, v in net.trunk.state_dict().items()}))
    stages_seen = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: stages_seen.append((e.state.stage, e.train_step is joint_step)))
    trainer.run()
    assert stages_seen == [("warmup", False), ("warmup", False), ("joint", True)]
    # frozen during the warm-up: weights and batch-norm statistics (the frozen trunk runs in eval mode)
    assert all(torch.equal(after_warmup[k], trunk_before[k]) for k in trunk_before)
    assert modes == [False] * 4 + [True] * 2
    assert not torch.equal(net.trunk[0].weight, trunk_before["0.weight"])  # trained in the joint stage
    assert all(p.requires_grad for p in net.parameters())
    assert calls == [("end", 2), ("start", 3)]


def test_a_parameter_frozen_after_training_does_not_move_under_a_momentum_optimiser():
    """Joint first, then the head alone with the same Adam: the trunk's zero gradients from the joint stage would
    let Adam's momentum keep moving it (found by ScaleProtoSeg's projected prototypes drifting); frozen, it stays."""
    net = TwoPartNet()
    stages = [
        {"name": "joint", "epochs": 1, "loss_function": lambda o, b: _ce(o, b) + _head_loss(o, b)},
        {"name": "head", "epochs": 2, "loss_function": _head_loss, "trainable": ["head"]},
    ]
    trainer = MultiRaterTrainer(
        device=torch.device("cpu"), max_epochs=3, train_data_loader=_loader(), network=net,
        optimizer=torch.optim.Adam(net.parameters(), lr=0.1), loss_function=None, prepare_batch=PrepareBatchDict(),
        train_step=TrainStep(method="forward_all"), schedule=MultiStageSchedule(stages, network=net),
    )
    after_joint = {}
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda e: after_joint.update({k: v.clone() for k, v in net.trunk.named_parameters()}))
    head_before = net.head.weight.detach().clone()
    trainer.run()
    assert all(torch.equal(p, after_joint[k]) for k, p in net.trunk.named_parameters())
    assert not torch.equal(net.head.weight, head_before)


def test_zero_epoch_stage_is_skipped_and_bad_stages_are_refused():
    schedule = MultiStageSchedule([Stage("a", 0), Stage("b", 3)])
    assert [schedule.stage_at(e).name for e in (1, 2, 3, 4)] == ["b"] * 4 and schedule.total_epochs == 3
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['epoch'\]"):
        MultiStageSchedule([{"name": "warmup", "epoch": 3}])  # a typo is not silently ignored
    with pytest.raises(ValueError, match="give 'epochs'"):
        MultiStageSchedule([{"name": "x"}])
    with pytest.raises(ValueError, match="epochs must be >= 0"):
        Stage("x", -1)
    with pytest.raises(ValueError, match="an action stage has no epochs"):
        Stage("x", 2, action=print)
    with pytest.raises(ValueError, match="at least one stage with epochs"):
        MultiStageSchedule([Stage("x", 0)])
    with pytest.raises(ValueError, match="unique"):
        MultiStageSchedule([Stage("x", 1), Stage("x", 1)])
    with pytest.raises(ValueError, match="match no parameter"):
        MultiStageSchedule.set_trainable(TwoPartNet(), ["decoder"])


class Projector:
    """A toy action with a state of its own: counts its runs and records the weight it saw."""

    def __init__(self, net):
        self.net, self.runs, self.seen = net, 0, None

    def project(self, engine):
        assert not torch.is_grad_enabled() and not self.net.training
        self.runs += 1
        self.seen = float(self.net.head.weight.sum())
        self.net.head.bias.fill_(7.0)  # an action may change the network

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = state["seen"]


def _staged_run(tmp_path, max_epochs, resume=False, stop_at=None):
    """A fresh 'process': network, stage optimisers, schedule with an action between two epoch stages,
    validation-like and checkpoint handlers, as a bundle config builds them."""
    torch.manual_seed(0)
    net = TwoPartNet()
    projector = Projector(net)
    second_opt = torch.optim.Adam(net.parameters(), lr=0.01)
    stages = [
        {"name": "first", "epochs": 2, "loss_function": _head_loss, "select_model": False},
        {"name": "project", "action": "placeholder"},
        {"name": "second", "epochs": 2, "loss_function": _head_loss, "optimizer": second_opt},
    ]
    stages[1]["action"] = projector.project
    schedule = MultiStageSchedule(stages, network=net)
    order = []

    class Validation:  # a train handler given to the trainer, as a ValidationHandler is
        def attach(self, engine):
            engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: order.append((e.state.epoch, projector.runs)))

    trainer = _trainer(net, None, max_epochs, schedule=schedule, train_handlers=[Validation()])
    state = {"trainer": trainer, "network": net, "schedule": schedule}
    CheckpointSaver(str(tmp_path), state, save_interval=1, n_saved=None, epoch_level=True, file_prefix="t").attach(trainer)
    if resume:
        path = sorted(tmp_path.glob("*.pt"), key=lambda p: int(p.stem.split("=")[1]))[-1]
        CheckpointLoader(str(path), state).attach(trainer)
    if stop_at is not None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_at), lambda e: e.terminate())
    trainer.run()
    return trainer, net, projector, schedule, second_opt, order


def test_a_stage_in_iterations_keeps_its_length_whatever_the_dataset_size():
    # 200 images in batches of 16 are 13 iterations an epoch, 16 images one: the same 30 iterations of warm-up
    assert epochs_for_iterations(30, 13) == 3 and epochs_for_iterations(30, 1) == 30
    assert epochs_for_iterations(39, 13) == 3 and epochs_for_iterations(40, 13) == 4  # at least that many steps
    assert epochs_for_iterations(0, 5) == 0
    loader = torch.utils.data.DataLoader(list(range(16)), batch_size=6, drop_last=True)  # what the epoch runs
    assert epochs_for_iterations(5, len(loader)) == 3
    with pytest.raises(ValueError, match="at least one iteration"):
        epochs_for_iterations(30, 0)


def test_action_stage_runs_once_before_validation_and_checkpoint(tmp_path):
    _, net, projector, schedule, _, order = _staged_run(tmp_path, 4)
    assert projector.runs == 1 and schedule.actions_done == {"project"}
    # the handler after the schedule already sees the action at the end of epoch 2
    assert order == [(1, 0), (2, 1), (3, 1), (4, 1)]
    saved = torch.load(tmp_path / "t_checkpoint_epoch=2.pt", weights_only=False)
    assert saved["schedule"]["actions_done"] == ["project"]
    assert "second" in saved["schedule"]["optimizers"]  # every stage optimiser is in the checkpoint


def test_resume_after_an_action_does_not_run_it_again(tmp_path):
    _, _, first, _, first_opt, _ = _staged_run(tmp_path, 4, stop_at=3)  # interrupted after epoch 3
    _, net, projector, schedule, second_opt, order = _staged_run(tmp_path, 4, resume=True)
    assert projector.runs == 0 and schedule.actions_done == {"project"}
    assert projector.seen == first.seen  # the action's owner got its state back
    assert [e for e, _ in order] == [4]
    assert second_opt.state_dict()["state"]  # the stage optimiser's state was restored, then stepped


def test_resume_before_an_action_does_not_skip_it(tmp_path):
    _staged_run(tmp_path, 4, stop_at=1)  # interrupted after epoch 1: the checkpoint predates the action
    _, net, projector, schedule, _, order = _staged_run(tmp_path, 4, resume=True)
    assert projector.runs == 1 and order == [(2, 1), (3, 1), (4, 1)]


def test_best_model_only_from_selectable_stages(tmp_path):
    """select_model false: model.pt is not written while that stage is the last one that acted."""
    net = TwoPartNet()
    schedule = MultiStageSchedule([Stage("early", 2, select_model=False), Stage("late", 1)], network=net)
    saver = BestModelSaver(net, tmp_path / "model.pt", key_metric_name="m", schedule=schedule)

    class Evaluator:
        state = type("S", (), {"metrics": {}})()

    trainer = _trainer(net, _head_loss, 3, schedule=schedule)
    writes = []

    def validate(engine):
        ev = Evaluator()
        ev.state.metrics = {"m": 1.0 / engine.state.epoch}  # the best value comes first
        saver(ev)
        writes.append((engine.state.epoch, (tmp_path / "model.pt").exists()))

    trainer.add_event_handler(Events.EPOCH_COMPLETED, validate)
    trainer.run()
    assert writes == [(1, False), (2, False), (3, True)] and saver.best == pytest.approx(1 / 3)


def test_teacher_is_frozen_and_its_batch_norm_statistics_do_not_move(tmp_path):
    """A teacher captured by an action stage feeds the next stage's targets; training goes on without it moving."""
    torch.manual_seed(0)
    net = TwoPartNet()
    teacher = Teacher(source=net, method="forward")
    targets = []

    def pseudo(batch):
        out = teacher(batch["image"]).argmax(1, keepdim=True)
        targets.append(out)
        return out

    distill = TrainStep(method="forward_all", targets={"pseudo": pseudo})
    stages = [
        {"name": "vanilla", "epochs": 2, "loss_function": _ce},
        {"name": "freeze", "action": teacher.capture},
        {"name": "student", "epochs": 2, "step": distill,
         "loss_function": lambda o, b: torch.nn.functional.cross_entropy(o["logits"], b["pseudo"][:, 0])},
    ]
    schedule = MultiStageSchedule(stages, network=net)
    trainer = _trainer(net, None, 4, schedule=schedule)
    frozen = {}
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda e: frozen.update(
        {k: v.clone() for k, v in teacher.module.state_dict().items()}))
    trainer.run()
    assert len(targets) == 4  # two epochs of two batches
    teacher_state = teacher.module.state_dict()
    assert all(torch.equal(frozen[k], teacher_state[k]) for k in frozen)  # weights and BN statistics
    assert not torch.equal(teacher_state["trunk.1.running_mean"], net.trunk[1].running_mean)  # the student's moved
    assert not any(p.requires_grad for p in teacher.module.parameters()) and not teacher.module.training
    # the teacher's state is in the schedule's (so in a training checkpoint) and comes back
    restored = Teacher(source=TwoPartNet(), method="forward")
    schedule2 = MultiStageSchedule([dict(s, action=restored.capture) if s["name"] == "freeze" else s for s in stages])
    schedule2.load_state_dict(schedule.state_dict())
    x = torch.randn(2, 1, 4, 4)
    assert torch.equal(restored(x), teacher(x))


def test_teacher_from_a_checkpoint_and_before_capture(tmp_path):
    net = TwoPartNet()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    teacher = Teacher(source=TwoPartNet(), checkpoint=tmp_path / "model.pt", method="forward_all")
    x = torch.randn(1, 1, 4, 4)
    assert torch.allclose(teacher(x)["logits"], net.eval()(x))
    with pytest.raises(RuntimeError, match="no network yet"):
        Teacher(source=net)(x)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt: cannot read"):
        Teacher(source=net, checkpoint=tmp_path / "bad.pt")


def test_frozen_modules_are_the_parts_without_trainable_parameters():
    net = TwoPartNet()
    MultiStageSchedule.set_trainable(net, ["head"])
    frozen = frozen_modules(net)
    assert net.trunk in frozen and net.trunk[1] in frozen and net.head not in frozen and net not in frozen


class Recurrences(torch.nn.Module):
    def forward(self, x):
        return x

    def forward_all(self, x):
        return {f"rec{i}": x * (i + 1) for i in range(4)} | {"raters": x[:, None].expand(-1, 3, -1, -1, -1)}


def test_stacked_outputs_evaluate_every_recurrence_from_one_forward():
    from monai.inferers import SlidingWindowInferer

    net = StackedOutputs(Recurrences(), ["rec0", "rec1", "rec2", "rec3", "raters"], spatial_dims=2)
    x = torch.randn(1, 2, 8, 8)
    maps = SlidingWindowInferer(roi_size=(4, 4), overlap=0.5)(x, net)
    assert maps.shape == (1, 4 * 2 + 3 * 2, 8, 8)
    parts = net.split(maps)
    for i in range(4):
        torch.testing.assert_close(parts[f"rec{i}"], x * (i + 1))
    assert parts["raters"].shape == (1, 3, 2, 8, 8)


def test_an_action_before_any_epoch_runs_before_the_first_iteration():
    net = TwoPartNet()
    seen = []
    schedule = MultiStageSchedule([Stage("init", action=lambda e: seen.append(e.state.iteration)), Stage("train", 1)])
    trainer = _trainer(net, _head_loss, 1, schedule=schedule)
    trainer.run()
    assert seen == [0] and schedule.actions_done == {"init"}


def test_linear_attribute_schedule_follows_the_iteration_and_resumes_where_it_stopped():
    from multirater_monai.engines import LinearAttributeSchedule

    class Holder:
        class_balance = 1.0

    a, b = Holder(), Holder()
    schedule = LinearAttributeSchedule([a, b], "class_balance", start=1.0, end=0.0, iterations=10)
    seen = []
    engine = Engine(lambda e, batch: seen.append(a.class_balance))
    schedule.attach(engine)
    engine.run(range(4), max_epochs=3)  # 12 iterations: the ramp ends at the 11th
    assert seen == pytest.approx([1.0 - i / 10 for i in range(10)] + [0.0, 0.0])
    assert b.class_balance == 0.0
    # a resumed engine (iteration already 6) continues the ramp, it does not restart it
    resumed = Engine(lambda e, batch: seen.append(a.class_balance))
    schedule.attach(resumed)
    resumed.load_state_dict({"iteration": 6, "epoch_length": 6, "max_epochs": 2})
    seen.clear()
    resumed.run(range(6))
    assert seen == pytest.approx([0.4, 0.3, 0.2, 0.1, 0.0, 0.0])
    assert LinearAttributeSchedule(a, "class_balance", 1.0, 0.0, 0).value(0) == 0.0
    with pytest.raises(AttributeError, match="no attribute 'balance'"):
        LinearAttributeSchedule(a, "balance", 1.0, 0.0, 5)
