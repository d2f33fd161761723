"""The Consistency Loss training iteration and its photometric views."""

from __future__ import annotations

import copy

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from monai_im.methods.steps import ConsistencyIteration, TrainingStep, photometric_views


def _labeled(n: int, seed: int = 0, channels: int = 1) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        image = torch.rand(2, 1, 8, 8, generator=g)
        label = (image > 0.5).float().repeat(1, channels, 1, 1)
        out.append({Keys.IMAGE: image, Keys.LABEL: label})
    return out


class _Unlabeled:
    """Unlabeled dict batches; batch ``i`` is filled with the value ``i / 10``; counts ``iter`` calls."""

    def __init__(self, n: int) -> None:
        self.batches = [{"image": torch.full((2, 1, 8, 8), i / 10)} for i in range(n)]
        self.iterations = 0

    def __iter__(self):
        self.iterations += 1
        return iter(self.batches)


def _network(channels: int = 1) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Conv2d(1, channels, 1)


def _trainer(network, data, iteration=None, loss=None, sgd: bool = False, **kwargs) -> SupervisedTrainer:
    optimizer = torch.optim.SGD if sgd else torch.optim.Adam
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=network,
        optimizer=optimizer(network.parameters(), 0.1 if sgd else 1e-2),
        loss_function=loss if loss is not None else torch.nn.BCEWithLogitsLoss(),
        iteration_update=iteration,
        **kwargs,
    )


def _record(trainer: SupervisedTrainer) -> list[dict]:
    outputs: list[dict] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(e.state.output))
    return outputs


def test_loss_parts_add_up_and_events():
    net = _network()
    iteration = ConsistencyIteration(_Unlabeled(3), weight=0.5, seed=1)
    trainer = _trainer(net, _labeled(2), iteration, decollate=False)
    outputs = _record(trainer)
    fired: list[str] = []
    for event in (
        IterationEvents.FORWARD_COMPLETED,
        IterationEvents.LOSS_COMPLETED,
        IterationEvents.BACKWARD_COMPLETED,
        IterationEvents.MODEL_COMPLETED,
    ):
        trainer.add_event_handler(event, lambda e, name=event.name: fired.append(name))
    trainer.run()
    assert trainer.state.iteration == 2 and len(outputs) == 2
    assert fired == ["FORWARD_COMPLETED", "LOSS_COMPLETED", "BACKWARD_COMPLETED", "MODEL_COMPLETED"] * 2
    for out in outputs:
        assert {Keys.IMAGE, Keys.LABEL, Keys.PRED, Keys.LOSS, "supervised_loss", "consistency_loss"} <= set(
            out
        )
        assert out[Keys.PRED].shape == (2, 1, 8, 8)
        assert out["consistency_loss"] > 0 and out["supervised_loss"] > 0
        assert not out["consistency_loss"].requires_grad
        torch.testing.assert_close(out[Keys.LOSS], out["supervised_loss"] + 0.5 * out["consistency_loss"])


def test_consistency_loss_matches_manual_computation():
    net = _network(channels=2)
    start = copy.deepcopy(net)
    made: list[torch.Tensor] = []

    def views(x: torch.Tensor) -> torch.Tensor:  # first view: x, second: a darker x
        made.append(x)
        return x if len(made) % 2 else 0.5 * x

    unlabeled = [torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(5))]  # plain tensor batches
    iteration = ConsistencyIteration(unlabeled, views=views, weight=2.0, activation="softmax")
    loss = torch.nn.BCEWithLogitsLoss()
    trainer = _trainer(net, _labeled(1, channels=2), iteration, loss=loss, decollate=False)
    outputs = _record(trainer)
    trainer.run()
    with torch.no_grad():
        u = unlabeled[0]
        expected = torch.nn.functional.mse_loss(
            torch.softmax(start(u), dim=1), torch.softmax(start(0.5 * u), dim=1)
        )
        batch = _labeled(1, channels=2)[0]
        supervised = loss(start(batch[Keys.IMAGE]), batch[Keys.LABEL])
    assert len(made) == 2 and torch.equal(made[0], unlabeled[0])
    torch.testing.assert_close(outputs[0]["consistency_loss"], expected)
    torch.testing.assert_close(outputs[0]["supervised_loss"], supervised)
    torch.testing.assert_close(outputs[0][Keys.LOSS], supervised + 2.0 * expected)


@pytest.mark.parametrize("accumulation_steps", [1, 2])
def test_weight_zero_equals_plain_supervised_step(accumulation_steps):
    plain_net, zero_net, full_net = _network(), _network(), _network()
    data = _labeled(2)
    # plain SGD: Adam's first step is about lr * sign(gradient) and would hide a changed gradient
    _trainer(plain_net, data, sgd=True, accumulation_steps=accumulation_steps).run()
    zero = ConsistencyIteration(_Unlabeled(2), weight=0.0)
    _trainer(zero_net, data, zero, sgd=True, accumulation_steps=accumulation_steps).run()
    full = ConsistencyIteration(_Unlabeled(2), weight=1.0)
    _trainer(full_net, data, full, sgd=True, accumulation_steps=accumulation_steps).run()
    for a, b in zip(plain_net.parameters(), zero_net.parameters()):
        assert torch.equal(a, b)
    assert any(not torch.allclose(a, b) for a, b in zip(plain_net.parameters(), full_net.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(plain_net.parameters(), _network().parameters()))


class _ZeroExtraTerm(TrainingStep):
    """The skeleton with an extra loss term that is exactly zero (and still in the graph)."""

    def loss(self, engine, pred, inputs, targets):
        supervised, _ = super().loss(engine, pred, inputs, targets)
        extra = pred.square().mean()
        return supervised + 0.0 * extra, {"extra": extra.detach()}


def _batch_norm_network() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 1, 1),
    )


@pytest.mark.parametrize("step", [TrainingStep, _ZeroExtraTerm])
@pytest.mark.parametrize("accumulation_steps", [1, 2])
def test_skeleton_step_is_monais_supervised_step(step, accumulation_steps):
    """The skeleton without (or with a zero) extra term gives exactly the parameters, batch-norm statistics,
    optimizer state and losses of MONAI's own SupervisedTrainer step, on the same batches and seed."""
    data = _labeled(3, seed=4)
    runs = []
    for iteration in (None, step()):
        net = _batch_norm_network()
        trainer = _trainer(net, data, iteration, decollate=False, accumulation_steps=accumulation_steps)
        outputs = _record(trainer)
        trainer.run()
        losses = [out[Keys.LOSS] for out in outputs]
        runs.append((net.state_dict(), trainer.optimizer.state_dict()["state"], losses))
    (monai_weights, monai_optim, monai_losses), (weights, optim, losses) = runs
    assert monai_weights.keys() == weights.keys()
    for name in monai_weights:
        assert torch.equal(monai_weights[name], weights[name]), name
    assert monai_optim.keys() == optim.keys()
    for index in monai_optim:
        for key in monai_optim[index]:
            assert torch.equal(monai_optim[index][key], optim[index][key]), (index, key)
    assert all(torch.equal(a, b) for a, b in zip(monai_losses, losses)) and len(losses) == 3
    assert not torch.equal(monai_weights["0.weight"], _batch_norm_network().state_dict()["0.weight"])


def test_unlabeled_loader_is_cycled():
    unlabeled = _Unlabeled(2)
    seen: list[float] = []

    def views(x: torch.Tensor) -> torch.Tensor:
        seen.append(float(x.flatten()[0]))
        return x

    trainer = _trainer(_network(), _labeled(5), ConsistencyIteration(unlabeled, views=views))
    outputs = _record(trainer)  # default decollate: a list of per-image dicts
    trainer.run()
    assert trainer.state.iteration == 5
    assert seen[::2] == pytest.approx([0.0, 0.1, 0.0, 0.1, 0.0]) and seen[1::2] == seen[::2]
    assert unlabeled.iterations == 3
    assert all(isinstance(out, list) and len(out) == 2 for out in outputs)
    assert {"consistency_loss", "supervised_loss", Keys.LOSS} <= set(outputs[-1][0])


def test_bad_inputs():
    with pytest.raises(ValueError, match="activation 'relu'"):
        ConsistencyIteration([], activation="relu")
    with pytest.raises(ValueError, match="weight"):
        ConsistencyIteration([], weight=-1)
    empty = ConsistencyIteration([])
    with pytest.raises(ValueError, match="no batches"):
        empty.next_unlabeled()
    wrong_key = ConsistencyIteration([{"img": torch.zeros(1, 1, 4, 4)}])
    with pytest.raises(KeyError, match="no key 'image'"):
        wrong_key.next_unlabeled()
    pairs = ConsistencyIteration([(torch.ones(1, 1, 4, 4), "meta")])
    assert torch.equal(pairs.next_unlabeled(), torch.ones(1, 1, 4, 4))


# ----------------------------------------------------------------------------- photometric views
def test_photometric_views_reproducible_and_random():
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.3 + 0.35
    first = photometric_views(torch.Generator().manual_seed(7))
    again = photometric_views(torch.Generator().manual_seed(7))
    a1, a2 = first(images), first(images)
    assert torch.equal(a1, again(images)) and torch.equal(a2, again(images))
    assert not torch.equal(a1, a2)
    assert a1.shape == images.shape and a1.min() >= 0 and a1.max() <= 1
    # without noise (and no clipping here) each image goes through its own affine map:
    # contrast factor in [0.8, 1.2] around the image mean, then a shift in [-0.2, 0.2]
    smooth = photometric_views(torch.Generator().manual_seed(1), noise=0.0)(images)
    flat_x, flat_y = images.flatten(1), smooth.flatten(1)
    factor = (flat_y[:, 0] - flat_y[:, 1]) / (flat_x[:, 0] - flat_x[:, 1])
    shift = flat_y.mean(1) - flat_x.mean(1)
    torch.testing.assert_close(
        flat_y,
        (flat_x - flat_x.mean(1, keepdim=True)) * factor[:, None]
        + flat_x.mean(1, keepdim=True)
        + shift[:, None],
    )
    assert ((factor >= 0.8) & (factor <= 1.2)).all() and (shift.abs() <= 0.2).all()
    assert factor.unique().numel() == 4 and shift.unique().numel() == 4


def test_photometric_views_identity_and_clipping_and_bad_args():
    images = torch.rand(2, 1, 4, 4)
    same = photometric_views(torch.Generator().manual_seed(0), brightness=0.0, contrast=0.0, noise=0.0)
    torch.testing.assert_close(same(images), images)
    loud = photometric_views(torch.Generator().manual_seed(0), brightness=1.0, contrast=1.0, noise=1.0)
    out = loud(images)
    assert out.min() >= 0 and out.max() <= 1 and ((out == 0) | (out == 1)).any()
    with pytest.raises(ValueError, match="contrast=1.5"):
        photometric_views(torch.Generator(), contrast=1.5)
    with pytest.raises(ValueError, match="noise=-0.1"):
        photometric_views(torch.Generator(), noise=-0.1)
