"""The contract of a student's training: what a method's step gets (a StudentContext, never the study),
and the extra handlers and learning-rate scheduler of every student's engines."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from ignite.engine import Events

import monai_im
from monai_im.methods import InconsistencyMask, LabeledOnly, StudentContext


class _ContextRecorder(InconsistencyMask):
    """IM, recording the context of every student's step (and asking for the standard step)."""

    def __init__(self) -> None:
        super().__init__(min_foreground=0, foreground_exceeds_im=False)
        self.contexts: list[StudentContext] = []

    def iteration(self, context: StudentContext):
        self.contexts.append(context)
        return None


def test_every_student_step_gets_its_own_context_and_seed(tiny_data, tmp_path, make_study):
    method = _ContextRecorder()
    study = make_study(tiny_data, tmp_path / "s", method=method, num_generations=1, seed=3)
    study.run()
    got = [(c.generation, c.index, c.seed) for c in method.contexts]
    assert got == [(g, k, study.student_seed(g, k)) for g in (0, 1) for k in (0, 1)]
    assert got[3][2] == 300_000 + 1_000 + 1
    context = method.contexts[0]
    assert not hasattr(context, "study") and "study" not in vars(context)
    net = context.new_network()
    assert isinstance(net, torch.nn.Module) and net is not context.new_network()
    loader = context.unlabeled_loader(5)
    assert len(loader.dataset) == len(study.datalist["unlabeled"]) and loader.generator.initial_seed() == 5


def test_no_method_or_loop_reads_the_global_seed():
    root = Path(monai_im.__file__).parent
    readers = [p.relative_to(root) for p in root.rglob("*.py") if "initial_seed" in p.read_text()]
    assert readers == []


class _LearningRates:
    """A student handler recording the learning rate of each epoch it trains, and each copy attached."""

    def __init__(self, record) -> None:
        self.record = record  # a bound ``list.append``: shared by the copies of the handler

    def attach(self, trainer) -> None:
        self.record(("attached", id(self)))
        trainer.add_event_handler(Events.EPOCH_STARTED, self._epoch)

    def _epoch(self, engine) -> None:
        self.record((engine.state.epoch, engine.optimizer.param_groups[0]["lr"]))


class _Validations:
    """A handler of the validation evaluator recording the epochs validated."""

    def __init__(self, record) -> None:
        self.record = record

    def attach(self, evaluator) -> None:
        evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda e: self.record(e.state.epoch))


def test_student_handlers_and_lr_scheduler_run_in_every_student(tiny_data, tmp_path, make_study):
    rates: list = []
    validations: list = []
    handler = _LearningRates(rates.append)
    study = make_study(
        tiny_data,
        tmp_path / "s",
        method=LabeledOnly(),
        epochs=3,
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.1),
        student_handlers=[handler],
        student_val_handlers=[_Validations(validations.append)],
    )
    study.run()
    attached = [r[1] for r in rates if r[0] == "attached"]
    assert len(attached) == 2 and len(set(attached)) == 2 and id(handler) not in attached  # a copy each
    epochs = [r for r in rates if r[0] != "attached"]
    assert [e for e, _ in epochs] == [1, 2, 3] * 2
    for (_, first), (_, second), (_, third) in (epochs[:3], epochs[3:]):
        assert first == 1e-3
        assert abs(second - first / 10) < 1e-12 and abs(third - first / 100) < 1e-12
    assert validations == [1, 2, 3] * 2


def test_without_a_scheduler_the_learning_rate_stays(tiny_data, tmp_path, make_study):
    rates: list = []
    study = make_study(
        tiny_data,
        tmp_path / "s",
        method=LabeledOnly(),
        num_students=1,
        epochs=2,
        student_handlers=[_LearningRates(rates.append)],
    )
    study.run()
    assert [r for r in rates if r[0] != "attached"] == [(1, 1e-3), (2, 1e-3)]
