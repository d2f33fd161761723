"""Epoch checkpoints: a training interrupted between epochs resumes to exactly the uninterrupted result."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import CacheDataset, DataLoader
from monai.handlers import CheckpointLoader, from_engine
from monai.transforms import Compose, RandFlipd, RandGaussianNoised
from monai.utils import set_determinism

from monai_im.methods.ssl_iterations import CrossPseudoSupervisionIteration, MeanTeacherIteration
from monai_im.methods.steps import ConsistencyIteration
from monai_im.metrics import PerImageIoU
from monai_im.networks import IMUNet
from monai_im.selftrain import Evaluation, StudentTraining, train_student
from monai_im.selftrain.checkpoint import (
    FORMAT_VERSION,
    LAST_CHECKPOINT,
    EpochShuffleSampler,
    load_checkpoint,
)


class Interrupted(RuntimeError):
    pass


class _StopAt:
    """Raises when epoch ``epoch`` starts (as a kill between epochs would stop the training)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED(once=self.epoch), self._stop)

    def _stop(self, engine) -> None:
        raise Interrupted(f"stopped at epoch {self.epoch}")


def _items(n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 16, 16, generator=g)
    return [{"image": im, "label": (im > 0.5).float()} for im in images]


def _setup(step_kind: str | None, seed: int = 0):
    """Network, optimizer, loaders (own generators, random transforms) and the step, all seeded."""
    set_determinism(seed=seed)
    net = IMUNet(2, 1, 1, alpha=0.25, dropout=0.2)
    optimizer = torch.optim.AdamW(net.parameters(), 1e-2)
    transforms = Compose(
        [
            RandFlipd(["image", "label"], prob=0.5, spatial_axis=0),
            RandGaussianNoised("image", prob=0.5, std=0.05),
        ]
    )
    train = CacheDataset(_items(6, 1), transform=transforms, progress=False)
    loader = DataLoader(
        train,
        batch_size=2,
        sampler=EpochShuffleSampler(train, seed),
        generator=torch.Generator().manual_seed(seed),
    )
    val = DataLoader(CacheDataset(_items(2, 2), progress=False), batch_size=2)
    unlabeled = DataLoader(
        CacheDataset([{"image": it["image"]} for it in _items(5, 3)], progress=False),
        batch_size=2,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed + 7),
        drop_last=True,  # 2 batches per pass: the passes do not line up with the 3 batches of an epoch
    )
    step = None
    if step_kind == "mean_teacher_im":
        step = MeanTeacherIteration(unlabeled, use_im=True, seed=seed)
    elif step_kind == "cps":
        torch.manual_seed(seed + 11)
        step = CrossPseudoSupervisionIteration(unlabeled, second=IMUNet(2, 1, 1, alpha=0.25), seed=seed)
    elif step_kind == "consistency":
        step = ConsistencyIteration(unlabeled, seed=seed)
    return net, optimizer, loader, val, step


def _train(save_dir: Path, step_kind: str | None, epochs: int = 4, handlers=(), lr_scheduler=None):
    net, optimizer, loader, val, step = _setup(step_kind)
    training = StudentTraining(
        epochs=epochs,
        evaluation=Evaluation(
            key_metric={"iou": PerImageIoU(output_transform=from_engine(["pred", "label"]))},
            postprocessing=lambda d: {**d, "pred": (d["pred"] > 0).float()},
        ),
        handlers=handlers,
        progress=False,
        lr_scheduler=lr_scheduler,
    )
    result = train_student(
        generation=0,
        index=0,
        network=net,
        optimizer=optimizer,
        loss_function=torch.nn.BCEWithLogitsLoss(),
        train_loader=loader,
        val_loader=val,
        device=torch.device("cpu"),
        save_dir=save_dir,
        training=training,
        iteration_update=step,
    )
    return result, net, step


def test_the_learning_rate_schedule_resumes_where_it_stopped(tmp_path):
    # the rate falls after every second epoch: a schedule restarted after epoch 1 would fall an epoch late
    schedule = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=2, gamma=0.1)
    rates: dict[str, list[float]] = {"whole": [], "cut": []}

    class _Rates:
        def __init__(self, name: str) -> None:
            self.name = name

        def attach(self, engine) -> None:
            engine.add_event_handler(
                Events.EPOCH_STARTED, lambda e: rates[self.name].append(e.optimizer.param_groups[0]["lr"])
            )

    whole, whole_net, _ = _train(tmp_path / "whole", None, handlers=[_Rates("whole")], lr_scheduler=schedule)
    with pytest.raises(Interrupted):
        _train(tmp_path / "cut", None, handlers=[_Rates("cut"), _StopAt(2)], lr_scheduler=schedule)
    assert load_checkpoint(tmp_path / "cut" / LAST_CHECKPOINT)["lr_scheduler"]["last_epoch"] == 1
    resumed, resumed_net, _ = _train(tmp_path / "cut", None, handlers=[_Rates("cut")], lr_scheduler=schedule)
    assert rates["whole"] == pytest.approx([1e-2, 1e-2, 1e-3, 1e-3])
    # the interrupted run saw epoch 2 start, the resumed one trains epochs 2 to 4
    assert rates["cut"] == pytest.approx(rates["whole"][:2] + rates["whole"][1:])
    _same_weights(resumed_net, whole_net)
    assert resumed.history == whole.history


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("step_kind", [None, "mean_teacher_im", "cps", "consistency"])
def test_interrupted_training_resumes_to_the_uninterrupted_result(tmp_path, step_kind):
    whole, whole_net, whole_step = _train(tmp_path / "whole", step_kind)

    with pytest.raises(Interrupted):
        _train(tmp_path / "cut", step_kind, handlers=[_StopAt(3)])
    state = load_checkpoint(tmp_path / "cut" / LAST_CHECKPOINT)
    assert state["trainer"]["iteration"] == 2 * 3  # two epochs of 3 batches were done
    assert [row["epoch"] for row in state["training"]["history"]] == [1, 2]
    assert ("step" in state) == (step_kind is not None)  # MONAI's save_dict layout: one entry per object

    resumed, resumed_net, resumed_step = _train(tmp_path / "cut", step_kind)
    _same_weights(resumed_net, whole_net)
    if step_kind == "mean_teacher_im":
        _same_weights(resumed_step.teacher, whole_step.teacher)
    if step_kind == "cps":
        _same_weights(resumed_step.second, whole_step.second)
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3, 4]
    assert resumed.history == whole.history
    assert (resumed.best_metric, resumed.best_epoch) == (whole.best_metric, whole.best_epoch)
    best_whole = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    best_cut = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    for k in best_whole:
        assert torch.equal(best_whole[k], best_cut[k]), k


def test_a_finished_checkpoint_is_not_trained_again_and_a_changed_schedule_starts_over(tmp_path):
    first, _, _ = _train(tmp_path / "s", None, epochs=2)
    assert (tmp_path / "s" / LAST_CHECKPOINT).is_file()
    again, net, _ = _train(tmp_path / "s", None, epochs=2)  # finished: nothing is trained
    assert again.history == first.history and again.best_metric == first.best_metric
    saved = load_checkpoint(tmp_path / "s" / LAST_CHECKPOINT)
    _same_weights(net, _load_model(saved["model"]))
    with pytest.warns(UserWarning, match="another schedule"):
        longer, _, _ = _train(tmp_path / "s", None, epochs=3)
    assert [row["epoch"] for row in longer.history] == [1, 2, 3]


def _load_model(state: dict) -> torch.nn.Module:
    net = IMUNet(2, 1, 1, alpha=0.25, dropout=0.2)
    net.load_state_dict(state)
    return net


def test_a_damaged_checkpoint_is_ignored_with_a_warning(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / LAST_CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="training from the start"):
        result, _, _ = _train(tmp_path / "s", None, epochs=2)
    assert [row["epoch"] for row in result.history] == [1, 2]


@pytest.mark.parametrize("name", ["cps_im", "im"])
def test_a_study_killed_inside_a_student_resumes_it_from_its_epoch_checkpoint(
    name, tiny_data, tmp_path, make_study
):
    from monai_im.methods import build_method
    from monai_im.selftrain import StudyEvents

    teachers = 2 if name == "im" else 1  # an IM needs two teachers to disagree

    def study(folder: Path):
        return make_study(
            tiny_data,
            folder,
            method=build_method(name),
            num_students=teachers,
            num_teachers=teachers,
            epochs=3,
            num_generations=1 if name == "im" else 0,
        )

    whole = study(tmp_path / "whole").run()

    cut = study(tmp_path / "cut")
    cut.add_event_handler(
        StudyEvents.STUDENT_STARTED,
        lambda s, trainer, generation, index, **kw: generation == 0 and _StopAt(3).attach(trainer),
    )
    with pytest.raises(Interrupted):
        cut.run()
    student = tmp_path / "cut" / "generation_0" / "student_0"
    assert (student / LAST_CHECKPOINT).is_file() and not (student / "result.json").exists()

    resumed = study(tmp_path / "cut").run()
    assert not (student / LAST_CHECKPOINT).exists()  # removed once the result is stored
    assert [s["test"] for s in resumed] == [s["test"] for s in whole] and len(resumed) == len(whole)
    a = torch.load(student / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "whole" / "generation_0" / "student_0" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_checkpoint_is_monais_save_dict_layout_and_a_format_1_file_starts_over(tmp_path):
    first, net, _ = _train(tmp_path / "s", None, epochs=2)
    path = tmp_path / "s" / LAST_CHECKPOINT
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {"model", "optimizer", "trainer", "training"}
    assert saved["training"]["format"] == FORMAT_VERSION == 2
    # MONAI's CheckpointLoader restores the objects from it
    fresh = IMUNet(2, 1, 1, alpha=0.25, dropout=0.2)
    CheckpointLoader(str(path), {"model": fresh})(Engine(lambda e, b: None))
    _same_weights(fresh, net)

    # a file of the previous format (one flat dict) is refused in one line and the student starts over
    flat = {"format": 1, **{k: v for k, v in saved.items() if k != "training"}, **saved["training"]}
    flat["format"] = 1
    torch.save(flat, path)
    with pytest.warns(UserWarning) as caught:
        again, again_net, _ = _train(tmp_path / "s", None, epochs=2)
    message = str(caught[0].message)
    assert "an epoch checkpoint of format 1; this version reads format 2" in message
    assert "training from the start" in message and "\n" not in message
    assert again.history == first.history  # trained from the start: the same result
    _same_weights(again_net, net)
    assert torch.load(path, weights_only=True)["training"]["format"] == 2
