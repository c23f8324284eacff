"""The multi-stage schedule and the all-outputs training iteration on a real MONAI SupervisedTrainer."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents

from multirater_monai.engines import AllOutputs, AllOutputsIteration, MultiStageSchedule, Stage, total_epochs


class TwoPartNet(torch.nn.Module):
    """A toy network with a 'trunk' and a 'head' and a forward_all returning a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = torch.nn.Conv2d(1, 2, 1)
        self.head = torch.nn.Conv2d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def forward_all(self, x: torch.Tensor) -> dict:
        logits = self.trunk(x)
        return {"logits": logits, "extra": self.head(logits)}


def _loader(n: int = 4):
    data = [{"image": torch.randn(1, 4, 4), "label": torch.randint(0, 2, (1, 4, 4))} for _ in range(n)]
    return torch.utils.data.DataLoader(data, batch_size=2)


def _trainer(net, loss, max_epochs, **kwargs):
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=_loader(),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=loss,
        iteration_update=AllOutputsIteration(),
        **kwargs,
    )


def _ce(outputs, target):
    return torch.nn.functional.cross_entropy(outputs["logits"], target[:, 0].long())


def _head_loss(outputs, target):
    return outputs["extra"].pow(2).mean()


def test_all_outputs_iteration_feeds_the_dict_to_the_loss_and_fires_events():
    net = TwoPartNet()
    seen = []

    def loss(outputs, target):
        seen.append(sorted(outputs))
        return _ce(outputs, target) + _head_loss(outputs, target)

    trainer = _trainer(net, loss, max_epochs=1)
    fired = []
    trainer.add_event_handler(IterationEvents.MODEL_COMPLETED, lambda e: fired.append("model"))
    head_before = net.head.weight.detach().clone()
    trainer.run()
    assert seen[0] == ["extra", "logits"] and len(fired) == 2
    out = trainer.state.output  # decollated by MONAI: one dict per sample
    assert len(out) == 2 and set(out[0]) >= {"image", "label", "pred", "loss"} and out[0]["pred"].shape == (2, 4, 4)
    assert not torch.equal(head_before, net.head.weight)  # the head trained through forward_all


def test_all_outputs_adapter():
    net = TwoPartNet()
    adapter = AllOutputs(net)
    assert set(adapter(torch.randn(1, 1, 4, 4))) == {"logits", "extra"}
    assert set(adapter.state_dict()) == {"network." + k for k in net.state_dict()}
    assert set(AllOutputsIteration().outputs(adapter, torch.randn(1, 1, 4, 4))) == {"logits", "extra"}
    with pytest.raises(TypeError, match="has no method 'forward_maps'"):
        AllOutputs(net, "forward_maps")


def test_schedule_switches_loss_and_trainable_parameters():
    net = TwoPartNet()
    calls = []
    stages = [
        {"name": "warmup", "epochs": 2, "loss_function": _head_loss, "trainable": ["head"], "on_end": lambda e: calls.append(("end", e.state.epoch))},
        {"name": "joint", "epochs": 1, "loss_function": lambda o, t: _ce(o, t) + _head_loss(o, t), "on_start": lambda e: calls.append(("start", e.state.epoch))},
    ]
    assert total_epochs(stages) == 3
    trainer = _trainer(net, loss=None, max_epochs=total_epochs(stages))
    schedule = MultiStageSchedule(stages, network=net)
    schedule.attach(trainer)
    trunk_before = net.trunk.weight.detach().clone()
    trunk_after_warmup = {}
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda e: trunk_after_warmup.update(w=net.trunk.weight.detach().clone()))
    stages_seen = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: stages_seen.append(e.state.stage))
    trainer.run()
    assert stages_seen == ["warmup", "warmup", "joint"]
    assert torch.equal(trunk_after_warmup["w"], trunk_before)  # frozen during the warm-up
    assert not torch.equal(net.trunk.weight, trunk_before)  # trained in the joint stage
    assert all(p.requires_grad for p in net.parameters())
    assert calls == [("end", 2), ("start", 3)]


def test_schedule_stage_of_an_epoch_for_resume():
    schedule = MultiStageSchedule([Stage("a", 2), Stage("b", 3)])
    assert [schedule.stage_at(e).name for e in range(1, 7)] == ["a", "a", "b", "b", "b", "b"]
    assert schedule.total_epochs == 5


def test_schedule_rejects_bad_stages():
    with pytest.raises(ValueError, match="epochs must be positive"):
        Stage("x", 0)
    with pytest.raises(ValueError, match="needs 'name' and 'epochs'"):
        MultiStageSchedule([{"epochs": 1}])
    with pytest.raises(ValueError, match="match no parameter"):
        MultiStageSchedule.set_trainable(TwoPartNet(), ["decoder"])
