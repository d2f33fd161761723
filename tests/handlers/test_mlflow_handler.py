"""MLflowStudyHandler driven by hand through the study hooks (no training)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from ignite.engine import Engine, Events
from mlflow import MlflowClient

from monai_im.handlers import MLflowStudyHandler
from monai_im.selftrain import StudentResult
from monai_im.selftrain.events import StudyEventRegistry


class FakeStudy(StudyEventRegistry):
    def __init__(self, out: Path) -> None:
        super().__init__()
        self.output_dir = out
        self.method = SimpleNamespace(name="im")
        self.key_metric_name = "iou"
        self.higher_is_better = True

    @property
    def observers(self) -> list:
        """The handler objects registered for any event, in registration order."""
        seen: list = []
        for handlers in self._event_handlers.values():
            for fn in handlers:
                owner = getattr(fn, "__self__", fn)
                if owner not in seen:
                    seen.append(owner)
        return seen

    def describe(self) -> dict:
        return {
            "method": "im",
            "students": 2,
            "teachers": 2,
            "generations": 1,
            "seed": 42,
            "max_im_fraction": None,
        }

    def generation_dir(self, g: int) -> Path:
        return self.output_dir / f"generation_{g}"


def summary(study: FakeStudy, g: int, iou: float) -> dict:
    ckpt = study.generation_dir(g) / "student_0" / "model.pt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"w": torch.zeros(1)}, ckpt)
    # the files a study has written when it reports a finished generation (and, later, the whole study)
    (study.generation_dir(g) / "summary.json").write_text(json.dumps({"generation": g}))
    (study.output_dir / "results.json").write_text(json.dumps({"generations": g + 1}))
    return {
        "generation": g,
        "val_iou": iou,
        "test": {"test_iou": iou - 0.1},
        "training_images": 10,
        "pseudo_labels": {"im_fraction": 0.1} if g else {},
        "checkpoint": str(ckpt),
    }


def runs(uri: str, experiment: str = "monai_im"):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id])


def test_default_store_is_sqlite_under_output_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    h = MLflowStudyHandler(output_dir=tmp_path)
    assert h.tracking_uri == f"sqlite:///{(tmp_path / 'mlflow.db').resolve().as_posix()}"


def test_environment_and_explicit_uri_take_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert MLflowStudyHandler(output_dir=tmp_path).tracking_uri == "http://127.0.0.1:5999"
    assert (
        MLflowStudyHandler(output_dir=tmp_path, tracking_uri="sqlite:///x.db").tracking_uri
        == "sqlite:///x.db"
    )


def test_runs_nest_log_per_generation_and_resume(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    study = FakeStudy(tmp_path)
    h = MLflowStudyHandler(output_dir=tmp_path, run_name="my study")
    h.attach(study)
    assert study.observers == [h]
    h.study_started(study)
    h.generation_started(study, 0)
    trainer = Engine(lambda e, b: None)
    h.student_started(study, 0, 0, trainer)
    trainer.state.history_row = {"epoch": 1, "train_loss": 0.5, "val_iou": 0.3}
    trainer.fire_event(Events.EPOCH_COMPLETED)
    h.student_finished(study, StudentResult(0, 0, 0.3, 1, "x.pt"), resumed=False)
    h.generation_finished(study, summary(study, 0, 0.3), resumed=False)
    h.generation_started(study, 1)
    h.student_started(study, 1, 0, Engine(lambda e, b: None))  # interrupted here: never finished

    # a second process resumes: same parent run, the open student closed as KILLED, gen 0 not logged twice
    h2 = MLflowStudyHandler(output_dir=tmp_path, run_name="my study")
    h2.study_started(study)
    h2.generation_finished(study, summary(study, 0, 0.3), resumed=True)
    h2.generation_started(study, 1)
    h2.generation_finished(study, summary(study, 1, 0.5), resumed=False)
    h2.study_finished(study, [summary(study, 0, 0.3), summary(study, 1, 0.5)])

    client, all_runs = runs(h.tracking_uri)
    parents = [r for r in all_runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.run_name == "my study"
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.params["max_im_fraction"] == "None"
    hist = client.get_metric_history(parents[0].info.run_id, "test_iou")
    assert sorted((m.step, round(m.value, 3)) for m in hist) == [(0, 0.2), (1, 0.4)]
    gens = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.params["generation"] for r in gens) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in gens)
    g0 = next(r for r in gens if r.data.params["generation"] == "0")
    assert len(client.get_metric_history(g0.info.run_id, "test_iou")) == 1, "not logged twice on resume"
    students = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") in {g.info.run_id for g in gens}]
    assert sorted(r.info.status for r in students) == ["FINISHED", "KILLED"]
    done = next(r for r in students if r.info.status == "FINISHED")
    assert done.data.metrics["train_loss"] == pytest.approx(0.5) and done.data.metrics[
        "best_val_iou"
    ] == pytest.approx(0.3)
    state = json.loads((tmp_path / "mlflow_runs.json").read_text())
    assert state["runs"]["study"] == parents[0].info.run_id and state["finished"] == [0, 1]
    arts = {a.path for a in client.list_artifacts(parents[0].info.run_id, "figures")}
    assert "figures/test_iou_over_generations.png" in arts


def test_a_student_resumed_from_its_epoch_checkpoint_goes_on_in_its_run(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    study = FakeStudy(tmp_path)
    h = MLflowStudyHandler(output_dir=tmp_path)
    h.study_started(study)
    trainer = Engine(lambda e, b: None)
    h.student_started(study, 0, 0, trainer)
    trainer.state.history_row = {"epoch": 1, "train_loss": 0.5}
    trainer.fire_event(Events.EPOCH_COMPLETED)

    # a second process: the trainer continues after epoch 1 (restored from last.pt)
    h2 = MLflowStudyHandler(output_dir=tmp_path)
    h2.study_started(study)
    resumed = Engine(lambda e, b: None)
    resumed.state.epoch = 1
    h2.student_started(study, 0, 0, resumed)
    resumed.state.history_row = {"epoch": 2, "train_loss": 0.25}
    resumed.fire_event(Events.EPOCH_COMPLETED)
    h2.student_finished(study, StudentResult(0, 0, 0.3, 2, "x.pt"), resumed=False)
    h2.study_finished(study, [summary(study, 0, 0.3)])

    client, all_runs = runs(h.tracking_uri)
    students = [r for r in all_runs if r.data.params.get("student") == "0"]
    assert len(students) == 1 and students[0].info.status == "FINISHED"
    hist = client.get_metric_history(students[0].info.run_id, "train_loss")
    assert sorted((m.step, m.value) for m in hist) == [(1, 0.5), (2, 0.25)]
