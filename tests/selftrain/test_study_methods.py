"""The study loop with the method hooks: teachers, concurrent students, typed events."""

from __future__ import annotations

import json

import pytest
import torch

from monai_im.methods import ConsistencyLoss, InconsistencyMask, NoisyStudent
from monai_im.networks import IMUNet
from monai_im.selftrain import StudyEvents
from monai_im.selftrain.student import StudentResult


def _students(metrics_per_generation):
    return [
        [StudentResult(g, k, m, 1, f"g{g}s{k}.pt") for k, m in enumerate(ms)]
        for g, ms in enumerate(metrics_per_generation)
    ]


def test_teachers_come_from_the_last_generation_or_from_all(make_study, tiny_data, tmp_path):
    history = _students([[0.9, 0.8, 0.1], [0.5, 0.6, 0.4]])
    last = make_study(tiny_data, tmp_path / "a", num_students=3, num_teachers=2)
    assert [(t.generation, t.index) for t in last.choose_teachers(history)] == [(1, 1), (1, 0)]
    pool = make_study(tiny_data, tmp_path / "b", num_students=3, num_teachers=2, teacher_pool="all")
    assert [(t.generation, t.index) for t in pool.choose_teachers(history)] == [(0, 0), (0, 1)]
    one = make_study(tiny_data, tmp_path / "c", num_students=3, num_teachers=2, method=NoisyStudent())
    assert len(one.choose_teachers(history)) == 1
    with pytest.raises(ValueError, match="teacher_pool"):
        make_study(tiny_data, tmp_path / "d", teacher_pool="best")


def test_concurrent_students_train_exactly_as_sequential_ones(make_study, tiny_data, tmp_path):
    options = {"num_students": 3, "num_teachers": 2, "num_generations": 1, "epochs": 2}
    seq = make_study(tiny_data, tmp_path / "seq", **options).run()
    par = make_study(tiny_data, tmp_path / "par", concurrent_students=3, **options).run()
    for a, b in zip(seq, par):
        assert [s["history"] for s in a["students"]] == [s["history"] for s in b["students"]]
        assert a["test"] == b["test"]
    for k in range(3):
        wa = torch.load(tmp_path / "seq" / f"generation_1/student_{k}/model.pt", weights_only=True)
        wb = torch.load(tmp_path / "par" / f"generation_1/student_{k}/model.pt", weights_only=True)
        assert all(torch.equal(wa[n], wb[n]) for n in wa)


def test_handlers_register_typed_events_and_see_them_in_order(make_study, tiny_data, tmp_path):
    study = make_study(tiny_data, tmp_path / "s", num_generations=1)
    seen: list[str] = []
    for event in StudyEvents:
        study.add_event_handler(event, lambda s, _e=event, **kw: seen.append(_e.name))
    with pytest.raises(TypeError, match="StudyEvents"):
        study.add_event_handler("study_started", lambda s: None)
    study.run()
    assert seen[0] == "STUDY_STARTED" and seen[-1] == "STUDY_FINISHED"
    assert seen.index("PSEUDO_LABELS_READY") < seen.index(
        "GENERATION_FINISHED", seen.index("GENERATION_STARTED", 3)
    )
    assert seen.count("STUDENT_STARTED") == seen.count("STUDENT_FINISHED") == 4


def test_noisy_student_generations_train_wider_students_and_reload_them(make_study, tiny_data, tmp_path):
    method = NoisyStudent(width_end=0.75, schedule_generations=1)
    study = make_study(
        tiny_data, tmp_path / "ns", network=IMUNet(2, 3, 1, alpha=0.25), method=method, num_generations=1
    )
    summaries = study.run()
    widths = [study.load_student(StudentResult.from_dict(s["students"][0])).alpha for s in summaries]
    assert widths == [0.25, 0.75]
    assert summaries[1]["teachers"] == [summaries[0]["ranking"][0]]  # one teacher: the best


def test_consistency_loss_fine_tunes_from_the_best_model_without_pseudo_labels(
    make_study, tiny_data, tmp_path
):
    study = make_study(tiny_data, tmp_path / "cl", method=ConsistencyLoss(), num_generations=1)
    summaries = study.run()
    assert len(summaries) == 2 and summaries[1]["pseudo_labels"] == {}
    assert not (tmp_path / "cl" / "generation_1" / "pseudo_labels").exists()
    assert summaries[1]["training_images"] == len(study.datalist["labeled"])


def test_pseudo_label_sets_hold_their_figure_and_method_scores(make_study, tiny_data, tmp_path):
    study = make_study(
        tiny_data,
        tmp_path / "im",
        num_generations=1,
        method=InconsistencyMask(min_foreground=0, foreground_exceeds_im=False),
    )
    study.run()
    folder = tmp_path / "im" / "generation_1" / "pseudo_labels"
    assert (folder / "im_figure.png").is_file()
    rows = json.loads((folder / "datalist.json").read_text())["pseudo_labeled"]
    assert rows and all("score" not in r for r in rows)
