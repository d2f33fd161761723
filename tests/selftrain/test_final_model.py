"""The study hands back the best generation on validation, never simply the last one."""

from __future__ import annotations

import json
import logging

import pytest

import monai_im.selftrain.study as study_module
from monai_im.selftrain import StudyProtocol
from monai_im.selftrain.final import best_generation, mark_standing, patience_exhausted


def _summaries(values: list[float]) -> list[dict]:
    return [
        {"generation": g, "val_iou": v, "best_student": 0, "checkpoint": f"g{g}.pt"}
        for g, v in enumerate(values)
    ]


def test_best_generation_is_the_earliest_best_in_the_metric_direction():
    assert best_generation(_summaries([0.5, 0.7, 0.7, 0.6]), "val_iou", True) == 1
    assert best_generation(_summaries([5.0, 3.0, 4.0]), "val_iou", False) == 1
    assert best_generation(_summaries([0.5, float("nan")]), "val_iou", True) == 0
    with pytest.raises(ValueError):
        best_generation([], "val_iou", True)


def test_a_generation_below_the_best_so_far_is_marked_and_logged(caplog):
    summaries = _summaries([0.6, 0.4])
    with caplog.at_level(logging.WARNING, logger="monai_im"):
        assert mark_standing(summaries, "val_iou", True)
    assert summaries[-1]["below_best"] == 1 and summaries[-1]["best_generation_so_far"] == 0
    assert "generation 1 scored val_iou=0.4000, below the best so far (generation 0: 0.6000)" in caplog.text
    better = _summaries([0.6, 0.8])
    assert not mark_standing(better, "val_iou", True)
    assert better[-1]["below_best"] == 0 and better[-1]["best_generation_so_far"] == 1


def test_patience_counts_the_generations_since_the_best():
    assert not patience_exhausted(_summaries([0.5, 0.4]), "val_iou", True, None)
    assert not patience_exhausted(_summaries([0.5, 0.4]), "val_iou", True, 2)
    assert patience_exhausted(_summaries([0.5, 0.4, 0.45]), "val_iou", True, 2)
    assert not patience_exhausted(_summaries([0.5, 0.4, 0.55]), "val_iou", True, 2)
    with pytest.raises(ValueError, match="generation_patience"):
        StudyProtocol(generation_patience=0)


def _worse_after_generation_0(monkeypatch):
    """Make every later generation score worse on validation than generation 0 (on purpose)."""
    real = study_module.run_generation

    def run_generation(study, g, history):
        summary = real(study, g, history)
        if g > 0:
            summary["val_iou"] = -1.0 - g
            study.layout.write_summary(summary)
        return summary

    monkeypatch.setattr(study_module, "run_generation", run_generation)


def test_a_worse_later_generation_hands_back_generation_0s_model(
    tiny_data, tmp_path, make_study, monkeypatch, caplog
):
    _worse_after_generation_0(monkeypatch)
    study = make_study(tiny_data, tmp_path / "s", num_generations=2)
    with caplog.at_level(logging.WARNING, logger="monai_im"):
        summaries = study.run()
    assert [s["generation"] for s in summaries] == [0, 1, 2]
    results = json.loads((tmp_path / "s" / "results.json").read_text())
    assert results["final_model"]["generation"] == 0
    gen0 = summaries[0]
    assert results["final_model"]["student"] == gen0["best_student"]
    assert (tmp_path / "s" / "model.pt").read_bytes() == open(gen0["checkpoint"], "rb").read()
    assert open(summaries[-1]["checkpoint"], "rb").read() != (tmp_path / "s" / "model.pt").read_bytes()
    assert [g["below_best"] for g in results["generations"]] == [0, 1, 1]
    assert "below the best so far" in caplog.text


def test_generation_patience_ends_the_study_early_and_resumes_to_the_same_end(
    tiny_data, tmp_path, make_study, monkeypatch
):
    _worse_after_generation_0(monkeypatch)
    summaries = make_study(tiny_data, tmp_path / "s", num_generations=3, generation_patience=1).run()
    assert [s["generation"] for s in summaries] == [0, 1]
    assert not (tmp_path / "s" / "generation_2").exists()
    again = make_study(tiny_data, tmp_path / "s", num_generations=3, generation_patience=1).run()
    assert [s["generation"] for s in again] == [0, 1]
