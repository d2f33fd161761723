"""Continuous semi-supervised methods (FixMatch, Mean Teacher, CPS, with and without IM)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from monai.engines import SupervisedTrainer

from monai_im.methods import (
    METHODS,
    CrossPseudoSupervision,
    FixMatch,
    FixMatchIM,
    MeanTeacher,
    build_method,
)
from monai_im.methods.ssl_iterations import (
    CrossPseudoSupervisionIteration,
    FixMatchIteration,
    MeanTeacherIteration,
)
from monai_im.methods.ssl_steps import (
    LOGGED_KEYS,
    confidence,
    ema_update,
    ensemble_im,
    hard_labels,
    masked_mean,
    pseudo_label_loss,
    sigmoid_ramp_up,
)
from monai_im.selftrain import StudyEvents

ROOT = Path(__file__).resolve().parents[2]
CONTINUOUS = ("fixmatch", "fixmatch_im", "mean_teacher", "mean_teacher_im", "cps", "cps_im")
IDENTITY = lambda x: x  # noqa: E731  (a strong view that changes nothing)


def _conv(in_ch: int = 1, out_ch: int = 1, dims: int = 2, seed: int = 0) -> torch.nn.Module:
    """A 1x1 convolution (equivariant to flips and quarter turns: every view predicts the same)."""
    torch.manual_seed(seed)
    return (torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d)(in_ch, out_ch, 1)


def _engine(network: torch.nn.Module) -> SimpleNamespace:
    return SimpleNamespace(network=network, inferer=lambda x, net: net(x))


def _bundle_options(bundle: str = "isic_im") -> dict:
    """The bundle's ``method_options`` with its ``@key`` references resolved."""
    config = json.loads((ROOT / "bundles" / bundle / "configs" / "train.json").read_text())
    return {k: config[v[1:]] for k, v in config["method_options"].items()}


# ------------------------------------------------------------------------------------- functions
@pytest.mark.parametrize("mode", ["binary", "multilabel", "multiclass"])
def test_masked_elements_get_exactly_zero_gradient_and_the_loss_is_the_hand_restricted_one(mode):
    torch.manual_seed(0)
    channels = 1 if mode == "binary" else 3
    logits = torch.randn(2, channels, 6, 6, requires_grad=True)
    target = hard_labels(
        torch.rand(2, channels, 6, 6).softmax(1) if mode == "multiclass" else torch.rand(2, channels, 6, 6),
        mode,
    )
    keep_shape = (2, 1, 6, 6) if mode == "multiclass" else (2, channels, 6, 6)
    keep = torch.rand(keep_shape) > 0.4
    loss = masked_mean(pseudo_label_loss(logits, target, mode), keep)
    loss.backward()
    by_hand = logits.detach().clone().requires_grad_(True)
    if mode == "multiclass":
        per = F.cross_entropy(by_hand, target[:, 0], reduction="none")[keep[:, 0]]
    else:
        per = F.binary_cross_entropy_with_logits(by_hand, target, reduction="none")[keep]
    expected = per.sum() / keep.expand(2, channels if mode != "multiclass" else 1, 6, 6).numel()
    expected.backward()
    assert torch.allclose(loss, expected) and torch.allclose(logits.grad, by_hand.grad, atol=1e-7)
    dropped = ~keep.expand_as(logits)
    assert dropped.any() and bool((logits.grad[dropped] == 0).all())
    assert bool((logits.grad[~dropped] != 0).any())


def test_confidence_hard_labels_and_ramp_up():
    p = torch.tensor([0.97, 0.5, 0.02, 0.6]).reshape(1, 1, 2, 2)
    assert confidence(p, "binary").flatten().tolist() == pytest.approx([0.97, 0.5, 0.98, 0.6])
    assert hard_labels(p, "binary").flatten().tolist() == [1, 0, 0, 1]
    q = torch.tensor([[0.1, 0.3], [0.7, 0.3], [0.2, 0.4]]).reshape(1, 3, 1, 2)  # classes x pixels
    assert confidence(q, "multiclass").flatten().tolist() == pytest.approx([0.7, 0.4])
    assert hard_labels(q, "multiclass").flatten().tolist() == [1, 2]
    assert sigmoid_ramp_up(0, 10) == pytest.approx(math.exp(-5))
    assert sigmoid_ramp_up(5, 10) == pytest.approx(math.exp(-1.25))
    assert sigmoid_ramp_up(10, 10) == sigmoid_ramp_up(3, 0) == 1.0


def test_ensemble_im_follows_the_package_rule():
    a = torch.tensor([0.9, 0.9, 0.1, 0.4]).reshape(1, 1, 2, 2)
    b = torch.tensor([0.8, 0.2, 0.3, 0.6]).reshape(1, 1, 2, 2)
    assert ensemble_im([a, b], "binary").flatten().tolist() == [False, True, False, True]
    c = torch.tensor([[0.6, 0.2], [0.4, 0.8]]).reshape(1, 2, 1, 2)
    d = torch.tensor([[0.7, 0.6], [0.3, 0.4]]).reshape(1, 2, 1, 2)
    assert ensemble_im([c, d], "multiclass").flatten().tolist() == [False, True]


def test_ema_update_is_the_formula():
    teacher, student = _conv(2, 3, seed=0), _conv(2, 3, seed=1)
    before = [p.detach().clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.9)
    for t, t0, s in zip(teacher.parameters(), before, student.parameters()):
        assert torch.allclose(t, 0.9 * t0 + 0.1 * s)


# ------------------------------------------------------------------------------------- FixMatch
def test_fixmatch_keeps_only_confident_pixels():
    net = _conv()
    with torch.no_grad():
        net.weight.fill_(1.0), net.bias.zero_()
    x = torch.tensor([4.0, -3.5, 0.5, -1.0, 2.0, 3.0, -0.1, 6.0]).reshape(2, 1, 2, 2).requires_grad_(True)
    step = FixMatchIteration([x], confidence_threshold=0.95, strong_view=IDENTITY, seed=3)
    term = step.unsupervised(_engine(net), x)
    keep = x.detach().abs() >= math.log(0.95 / 0.05)  # sigmoid(logit) confidence >= 0.95
    expected = F.binary_cross_entropy_with_logits(x.detach(), (x.detach() > 0).float(), reduction="none")
    assert term.loss.item() == pytest.approx((expected * keep).sum().item() / x.numel(), rel=1e-5)
    assert term.used_fraction.item() == pytest.approx(keep.float().mean().item()) and term.im_fraction == 0
    term.loss.backward()
    assert bool((x.grad[~keep] == 0).all()) and bool((x.grad[keep] != 0).all())


def test_fixmatch_multiclass_and_3d():
    net = _conv(1, 3, dims=3)
    x = torch.rand(2, 1, 4, 4, 4) * 8
    step = FixMatchIteration(
        [x], confidence_threshold=0.6, num_views=2, use_im=True, mode="multiclass", seed=0
    )
    term = step.unsupervised(_engine(net), x)
    conf = confidence(torch.softmax(net(x), 1), "multiclass")
    # a 1x1 conv predicts the same on every view: no IM, only the confidence decides
    assert term.im_fraction.item() == 0 and term.used_fraction.item() == pytest.approx(
        (conf >= 0.6).float().mean().item()
    )
    assert torch.isfinite(term.loss) and term.loss.requires_grad


def test_fixmatch_im_leaves_out_where_the_weak_views_disagree():
    class Shifted(torch.nn.Module):  # not flip-equivariant: the views disagree somewhere
        def forward(self, x):
            return 20 * (x - x.roll(1, dims=-1))

    x = torch.rand(2, 1, 8, 8)
    step = FixMatchIteration(
        [x], confidence_threshold=0.0, num_views=3, use_im=True, strong_view=IDENTITY, seed=1
    )
    state = step.generator.get_state()
    term = step.unsupervised(_engine(Shifted()), x)
    step.generator.set_state(state)
    views = step.random_views(x, 3)
    probs = torch.stack([torch.sigmoid(v.invert(Shifted()(v.apply(x)))) for v in views])
    im = ensemble_im(probs, "binary")
    assert im.any() and term.im_fraction.item() == pytest.approx(im.float().mean().item())
    assert term.used_fraction.item() == pytest.approx(1 - im.float().mean().item())


# ------------------------------------------------------------------------------------- Mean Teacher
def test_mean_teacher_im_pixels_get_zero_gradient():
    student, teacher = _conv(seed=0), _conv(seed=5)
    with torch.no_grad():  # they disagree where -0.5 < x < 0
        student.weight.fill_(2.0), student.bias.zero_(), teacher.weight.fill_(2.0), teacher.bias.fill_(1.0)
    x = (torch.rand(2, 1, 8, 8) * 2 - 1).requires_grad_(True)
    step = MeanTeacherIteration([x], teacher=teacher, use_im=True, strong_view=IDENTITY, seed=0)
    step._started = True
    term = step.unsupervised(_engine(student), x)
    p_s, p_t = torch.sigmoid(student(x.detach())), torch.sigmoid(teacher(x.detach()))
    im = (p_s > 0.5) != (p_t > 0.5)
    assert im.any() and (~im).any()
    expected = ((p_s - p_t).square() * ~im).sum() / x.numel()
    assert term.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert term.im_fraction.item() == pytest.approx(im.float().mean().item())
    term.loss.backward()
    assert bool((x.grad[im] == 0).all()) and bool((x.grad[~im] != 0).all())


def _trainer(net: torch.nn.Module, step, lr: float = 0.1, steps: int = 2) -> SupervisedTrainer:
    data = [{"image": torch.rand(2, 1, 8, 8), "label": (torch.rand(2, 1, 8, 8) > 0.5).float()}] * steps
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=lr),
        loss_function=torch.nn.BCEWithLogitsLoss(),
        iteration_update=step,
        decollate=False,
    )


def test_mean_teacher_step_updates_the_teacher_by_ema_and_logs():
    student = _conv(seed=0)
    first = [p.detach().clone() for p in student.parameters()]
    step = MeanTeacherIteration([torch.rand(3, 1, 8, 8)], decay=0.9, ramp_up_steps=0, seed=0)
    trainer = _trainer(student, step)
    trainer.run()
    out = trainer.state.output
    assert set(LOGGED_KEYS) <= set(out) and set(LOGGED_KEYS) <= set(trainer.state.metrics)
    assert torch.allclose(out["loss"], out["supervised_loss"] + out["unsupervised_loss"])
    assert out["used_fraction"] == 1 and out["im_fraction"] == 0
    assert not any(torch.equal(a, b) for a, b in zip(first, student.parameters()))


def test_mean_teacher_first_step_teacher_equals_the_formula():
    student = _conv(seed=0)
    s0 = [p.detach().clone() for p in student.parameters()]
    step = MeanTeacherIteration([torch.rand(3, 1, 8, 8)], decay=0.9, seed=0)
    trainer = _trainer(student, step, steps=1)
    trainer.run()
    assert trainer.state.iteration == 1
    for t, a, b in zip(step.teacher.parameters(), s0, student.parameters()):
        assert torch.allclose(t, 0.9 * a + 0.1 * b.detach())
    assert not any(p.requires_grad for p in step.teacher.parameters())


# ------------------------------------------------------------------------------------- CPS
@pytest.mark.parametrize("mode", ["binary", "multiclass"])
@pytest.mark.parametrize("use_im", [False, True])
def test_cps_each_network_learns_the_others_hard_labels(mode, use_im):
    out_ch = 1 if mode == "binary" else 3
    net_a, net_b = _conv(1, out_ch, seed=0), _conv(1, out_ch, seed=1)
    x = torch.rand(2, 1, 8, 8) * 4 - 2
    step = CrossPseudoSupervisionIteration([x], second=net_b, mode=mode, use_im=use_im)
    term = step.unsupervised(_engine(net_a), x)
    la, lb = net_a(x), net_b(x)
    act = (lambda t: torch.softmax(t, 1)) if mode == "multiclass" else torch.sigmoid
    ya, yb = hard_labels(act(la), mode), hard_labels(act(lb), mode)  # argmax / threshold 0.5
    im = (ya != yb).any(dim=1, keepdim=True) if use_im else torch.zeros_like(ya[:, :1], dtype=torch.bool)
    assert not use_im or im.any()

    def part(logits, target):
        if mode == "multiclass":
            per = F.cross_entropy(logits, target[:, 0], reduction="none").unsqueeze(1)
        else:
            per = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return (per * ~im).sum() / per.numel()

    expected = part(la, yb) + part(lb, ya)
    assert term.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    own = part(la, ya) + part(lb, yb)
    # not their own labels (outside the IM the two agree, so only the plain variant can tell)
    assert use_im or abs(term.loss.item() - own.item()) > 1e-3
    assert term.im_fraction.item() == pytest.approx(im.float().mean().item())
    assert term.used_fraction.item() == pytest.approx(1 - im.float().mean().item())
    term.loss.backward()
    expected_grads = torch.autograd.grad(expected, [net_a.weight, net_b.weight])
    assert torch.allclose(net_a.weight.grad, expected_grads[0], atol=1e-6)
    assert torch.allclose(net_b.weight.grad, expected_grads[1], atol=1e-6)


def test_cps_step_trains_both_networks_with_their_own_optimizer():
    net_a, net_b = _conv(seed=0), _conv(seed=1)
    b0 = net_b.weight.detach().clone()
    step = CrossPseudoSupervisionIteration([torch.rand(2, 1, 8, 8)], second=net_b, use_im=True)
    trainer = _trainer(net_a, step)
    trainer.run()
    assert isinstance(step.second_optimizer, torch.optim.AdamW)
    assert step.second_optimizer.param_groups[0]["lr"] == 0.1
    assert not torch.equal(b0, net_b.weight)
    assert 0 <= trainer.state.metrics["im_fraction"] <= 1


@pytest.mark.parametrize("kind", ["mean_teacher", "cps"])
def test_3d_and_non_square_batches(kind):
    x = torch.rand(2, 1, 4, 6, 3)
    net, other = _conv(1, 2, dims=3, seed=0), _conv(1, 2, dims=3, seed=0)
    with torch.no_grad():  # they disagree on the first channel where 0.3 < x < 0.5
        for n, b in ((net, -0.5), (other, -0.3)):
            n.weight.fill_(1.0), n.bias.fill_(-0.5), n.bias[0].fill_(b)
    options = {"mode": "multilabel", "use_im": True, "seed": 0}
    if kind == "cps":
        step = CrossPseudoSupervisionIteration([x], second=other, **options)
    else:
        step = MeanTeacherIteration([x], teacher=other, **options)
        step._started = True
    term = step.unsupervised(_engine(net), x)
    term.loss.backward()
    assert net.weight.grad.abs().sum() > 0 and 0 < term.used_fraction.item() < 1
    assert term.used_fraction.item() == pytest.approx(1 - term.im_fraction.item())
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        step.random_views(torch.rand(2, 1, 5))


# ------------------------------------------------------------------------------------- methods
def test_continuous_methods_have_no_generations_and_validate_options():
    for name in CONTINUOUS:
        method = METHODS[name]()
        assert not method.has_generations and not method.makes_pseudo_labels
    assert FixMatchIM().num_views == 3 and FixMatch().num_views == 1
    with pytest.raises(ValueError, match="im_views"):
        build_method("fixmatch_im", im_views=1)
    with pytest.raises(ValueError, match="ssl_threshold"):
        FixMatch(ssl_threshold=1.5)
    with pytest.raises(ValueError, match="ema_decay"):
        MeanTeacher(ema_decay=2)
    assert "view_noise" not in CrossPseudoSupervision().describe()


@pytest.mark.parametrize("name", CONTINUOUS)
def test_every_continuous_method_runs_generation_zero_of_a_study(name, tiny_data, tmp_path, make_study):
    method = build_method(name, **_bundle_options())
    assert method.name == name and method.describe()["method"] == name
    study = make_study(tiny_data, tmp_path / name, method=method, num_students=1, num_generations=2)
    trainers = []
    study.add_event_handler(StudyEvents.STUDENT_STARTED, lambda s, trainer, **kw: trainers.append(trainer))
    assert method.iteration(study.student_context(1, 0)) is None
    summaries = study.run()
    assert len(summaries) == 1 and Path(summaries[0]["checkpoint"]).is_file()
    metrics = trainers[0].state.metrics
    assert set(LOGGED_KEYS) <= set(metrics) and 0 <= metrics["used_fraction"] <= 1
    assert ("_im" in name) or metrics["im_fraction"] == 0


def test_a_students_step_is_seeded_by_that_students_seed(tiny_data, tmp_path, make_study):
    study = make_study(tiny_data, tmp_path / "s", method=FixMatch())

    def state(index):
        return study.method.iteration(study.student_context(0, index)).generator.get_state()

    assert torch.equal(state(0), state(0)) and not torch.equal(state(0), state(1))
