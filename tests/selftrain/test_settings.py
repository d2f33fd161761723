"""The settings records refuse bad values with one line naming the option."""

from __future__ import annotations

import pytest
import torch

from monai_im.methods import FixMatch
from monai_im.selftrain import Evaluation, StudentTraining, StudyData, StudyProtocol


def _scheduler() -> torch.optim.lr_scheduler.StepLR:
    """A scheduler object: what a JSON block without ``_mode_: "callable"`` gives."""
    return torch.optim.lr_scheduler.StepLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)], 0.1), 1)


DATALIST = {"labeled": [{"image": "a", "label": "b"}], "validation": [{"image": "c", "label": "d"}]}


def _refused(record, match: str, **options) -> None:
    with pytest.raises(ValueError, match=match) as error:
        record(**options)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "option, value",
    [
        ("num_students", 0),
        ("epochs", 0),
        ("batch_size", 0),
        ("eval_batch_size", 0),
        ("val_interval", 0),
        ("concurrent_students", 0),
        ("num_generations", -1),
        ("min_steps", -1),
        ("epochs", 2.5),
        ("num_students", True),
        ("batch_size", "8"),
    ],
)
def test_protocol_refuses_bad_counts(option, value):
    _refused(StudyProtocol, f"^{option} must be an integer >= ", **{option: value})


def test_protocol_defaults_and_checks():
    protocol = StudyProtocol(batch_size=8)
    assert (
        protocol.eval_batch_size == 8 and StudyProtocol(batch_size=8, eval_batch_size=1).eval_batch_size == 1
    )
    _refused(StudyProtocol, "^teacher_pool must be one of", teacher_pool="best")
    with pytest.raises(ValueError, match=r"^num_teachers must be in 1\.\.num_students \(2\), got 3$"):
        StudyProtocol(num_students=2, num_teachers=3).check_teachers()
    StudyProtocol(num_students=2, num_teachers=2).check_teachers()
    assert StudyProtocol(seed=3).student_seed(2, 4) == 300_000 + 2_000 + 4


def test_data_and_evaluation_refuse_bad_values():
    pre = lambda d: d  # noqa: E731
    _refused(
        StudyData,
        "'labeled' and 'validation'",
        datalist={"labeled": DATALIST["labeled"]},
        train_transforms=pre,
        eval_transforms=pre,
        infer_transforms=pre,
    )
    _refused(
        StudyData,
        r"^cache_rate must be in \[0, 1\]",
        datalist=DATALIST,
        train_transforms=pre,
        eval_transforms=pre,
        infer_transforms=pre,
        cache_rate=1.5,
    )
    _refused(
        StudyData,
        "^num_workers must be an integer >= 0",
        datalist=DATALIST,
        train_transforms=pre,
        eval_transforms=pre,
        infer_transforms=pre,
        num_workers=-1,
    )
    data = StudyData(DATALIST, pre, pre, infer_transforms=print)
    assert data.unlabeled_transforms is print
    _refused(Evaluation, "^key_metric must hold exactly one metric", key_metric={"a": 1, "b": 2})
    evaluation = Evaluation({"iou": 1})
    assert evaluation.key_metric_name == "iou" and evaluation.additional_metrics == {}
    _refused(
        StudentTraining,
        "^lr_scheduler must be a factory",
        epochs=1,
        evaluation=evaluation,
        lr_scheduler=_scheduler(),
    )
    _refused(StudentTraining, "^epochs must be an integer >= 1", epochs=0, evaluation=evaluation)


def test_the_study_checks_teachers_only_for_methods_with_generations(tiny_data, tmp_path, make_study):
    with pytest.raises(ValueError, match=r"^num_teachers must be in 1\.\.num_students \(1\), got 2$"):
        make_study(tiny_data, tmp_path / "im", num_students=1, num_teachers=2)
    study = make_study(tiny_data, tmp_path / "fm", method=FixMatch(), num_students=1, num_teachers=2)
    assert study.num_generations == 0
    with pytest.raises(ValueError, match="^lr_scheduler must be a factory"):
        make_study(tiny_data, tmp_path / "lr", lr_scheduler=_scheduler())


def test_the_study_shows_its_settings_as_attributes(tiny_data, tmp_path, make_study):
    study = make_study(tiny_data, tmp_path / "s", batch_size=3, seed=7)
    assert (study.batch_size, study.eval_batch_size, study.seed) == (3, 3, 7)
    assert study.key_metric_name == "iou" and study.higher_is_better and study.inferer is None
    assert study.datalist is study.data.datalist and study.infer_transforms is study.data.infer_transforms
    study.datalist = {**study.datalist, "unlabeled": []}
    assert study.data.datalist["unlabeled"] == []
    assert study.student_seed(1, 2) == study.protocol.student_seed(1, 2) == 701_002
