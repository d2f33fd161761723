"""Degenerate pseudo-labels are reported: a generation that keeps none, an IM over most of the unlabeled
pixels (warnings and flags in the statistics), and an IM ensemble of one teacher (refused at the start)."""

from __future__ import annotations

import logging

import pytest

from monai_im.methods import InconsistencyMask, ModelEnsemble, build_method
from monai_im.selftrain import StudyProtocol
from monai_im.selftrain.degeneration import (
    IM_FRACTION,
    NO_KEPT,
    check_ensemble,
    degeneration_flags,
    report_degeneration,
)

HEALTHY = {"unlabeled_images": 10, "images_kept": 4, "im_fraction": 0.12}


def test_flags_are_raised_only_by_degenerate_statistics():
    assert degeneration_flags(HEALTHY, 0.5) == {}
    assert degeneration_flags({**HEALTHY, "images_kept": 0}, 0.5) == {NO_KEPT: 1.0}
    assert degeneration_flags({**HEALTHY, "im_fraction": 0.51}, 0.5) == {IM_FRACTION: 1.0}
    assert degeneration_flags({**HEALTHY, "im_fraction": 0.5}, 0.5) == {}  # at the limit: not above it
    assert degeneration_flags({**HEALTHY, "im_fraction": 0.9}, None) == {}  # no IM check
    assert degeneration_flags({"unlabeled_images": 0, "images_kept": 0, "im_fraction": 0.0}, 0.5) == {}


def test_report_adds_the_flags_to_the_statistics_and_warns(caplog):
    stats = {"unlabeled_images": 8, "images_kept": 0, "im_fraction": 0.62}
    with caplog.at_level(logging.WARNING, logger="monai_im"):
        flags = report_degeneration(stats, 2, 0.5)
    assert flags == {NO_KEPT: 1.0, IM_FRACTION: 1.0}
    assert stats[NO_KEPT] == 1.0 and stats[IM_FRACTION] == 1.0 and stats["images_kept"] == 0
    messages = [r.getMessage() for r in caplog.records if r.name == "monai_im"]
    assert any(m.startswith("generation 2: no pseudo-label was kept of 8 unlabeled images") for m in messages)
    assert any("covers 62% of the unlabeled pixels, more than max_im_warning 50%" in m for m in messages)
    healthy = dict(HEALTHY)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="monai_im"):
        assert report_degeneration(healthy, 1, 0.5) == {}
    assert healthy == HEALTHY and not caplog.records
    quiet = {**HEALTHY, "images_kept": 0}
    with caplog.at_level(logging.WARNING, logger="monai_im"):
        report_degeneration(quiet, 1, 0.5, log=False)  # another process of a distributed study
    assert quiet[NO_KEPT] == 1.0 and not caplog.records


def test_an_im_of_one_teacher_is_refused_and_other_ensembles_are_not():
    message = r"^--method im needs at least 2 teachers, got num_teachers 1: a single teacher agrees"
    with pytest.raises(ValueError, match=message):
        check_ensemble(InconsistencyMask(), 1, 1)
    with pytest.raises(ValueError, match=r"^--method aim_plus needs at least 2 teachers"):
        check_ensemble(build_method("aim_plus"), 1, 3)
    check_ensemble(InconsistencyMask(), 2, 1)
    check_ensemble(InconsistencyMask(), 1, 0)  # generation 0 alone makes no IM
    check_ensemble(ModelEnsemble(), 1, 1)  # no IM: one teacher's labels are what it asks for
    check_ensemble(build_method("noisy_student"), 1, 1)


def test_a_study_refuses_an_im_of_one_teacher_before_any_work(make_study, tiny_data, tmp_path):
    study = make_study(tiny_data, tmp_path / "s", num_teachers=1, num_generations=1)
    with pytest.raises(SystemExit) as e:
        study.run()
    assert str(e.value.code).startswith("error: --method im needs at least 2 teachers, got num_teachers 1")
    assert "\n" not in str(e.value.code)
    assert not (tmp_path / "s").exists(), "refused before any work"


def test_max_im_warning_is_checked():
    assert StudyProtocol().max_im_warning == 0.5
    assert StudyProtocol(max_im_warning=None).max_im_warning is None
    assert StudyProtocol(max_im_warning=1).max_im_warning == 1.0
    for bad in (1.5, -0.1, True, "0.5"):
        with pytest.raises(ValueError, match=r"^max_im_warning must be in \[0, 1\] or None"):
            StudyProtocol(max_im_warning=bad)


def test_a_generation_that_keeps_nothing_is_flagged_in_its_summary(make_study, tiny_data, tmp_path, caplog):
    study = make_study(
        tiny_data,
        tmp_path / "s",
        method=InconsistencyMask(min_foreground=10**6),  # no image has that much agreed lesion
        num_generations=1,
        max_im_warning=None,
    )
    with caplog.at_level(logging.WARNING, logger="monai_im"):
        summaries = study.run()
    stats = summaries[1]["pseudo_labels"]
    assert stats["images_kept"] == 0 and stats[NO_KEPT] == 1.0 and IM_FRACTION not in stats
    assert any(m.startswith("generation 1: no pseudo-label was kept") for m in caplog.messages)
    assert NO_KEPT not in summaries[0].get("pseudo_labels", {})
