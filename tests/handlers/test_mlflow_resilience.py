"""MLflowStudyHandler: stores that cannot be used, outages mid-study, experiment kind and dataset input."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from ignite.engine import Engine, Events
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

from monai_im.handlers import MLflowStudyHandler, check_tracking_uri, datalist_dataset
from monai_im.handlers.mlflow_handler import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND
from monai_im.selftrain import StudentResult
from monai_im.selftrain.events import StudyEventRegistry


class FakeStudy(StudyEventRegistry):
    """The part of a study the handler reads."""

    def __init__(self, out: Path, datalist: dict | None = None, params: dict | None = None) -> None:
        super().__init__()
        self.output_dir = out
        self.method = SimpleNamespace(name="im")
        self.key_metric_name = "iou"
        self.higher_is_better = True
        self.datalist = datalist or {}
        self.params = params or {}

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
        return {"method": "im", "students": 1, "generations": 1, **self.params}

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
        "training_images": 4,
        "pseudo_labels": {},
        "checkpoint": str(ckpt),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "monai_im" and r.levelno == logging.WARNING]


# ---------------------------------------------------------------------- stores that cannot be used
@pytest.mark.parametrize("from_env", [False, True])
def test_unreachable_server_ends_the_run_at_attach_in_one_line(tmp_path, monkeypatch, from_env):
    uri = f"http://127.0.0.1:{free_port()}"
    if from_env:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    else:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    h = MLflowStudyHandler(output_dir=tmp_path, tracking_uri=None if from_env else uri)
    study = FakeStudy(tmp_path)
    start = time.monotonic()
    with pytest.raises(SystemExit) as err:
        h.attach(study)
    assert time.monotonic() - start < 15
    msg = str(err.value.code)
    assert "\n" not in msg and msg.startswith("error: MLflow tracking server") and uri in msg
    assert "not reachable" in msg and "sqlite" in msg
    assert ("unset MLFLOW_TRACKING_URI" if from_env else "drop --tracking_uri") in msg
    assert study.observers == [], "nothing registered, nothing started"


@pytest.mark.parametrize("status", [200, 401])
def test_a_server_that_answers_passes_the_check(tmp_path, status):
    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(status if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        study = FakeStudy(tmp_path)
        h = MLflowStudyHandler(output_dir=tmp_path, tracking_uri=f"http://127.0.0.1:{server.server_port}")
        h.attach(study)
        assert study.observers == [h]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("as_uri", [False, True])
def test_file_store_is_refused_in_one_line_unless_allowed(tmp_path, monkeypatch, as_uri):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    folder = tmp_path / "mlruns"
    uri = folder.as_uri() if as_uri else str(folder)
    with pytest.raises(SystemExit) as err:
        MLflowStudyHandler(output_dir=tmp_path, tracking_uri=uri).attach(FakeStudy(tmp_path))
    msg = str(err.value.code)
    assert "\n" not in msg and msg.startswith("error: MLflow") and uri in msg
    assert f"--tracking_uri sqlite:///{(tmp_path / 'mlruns.db').resolve().as_posix()}" in msg

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow's own opt-out: then the file store works
    study = FakeStudy(tmp_path)
    MLflowStudyHandler(output_dir=tmp_path, tracking_uri=uri).attach(study)
    assert len(study.observers) == 1


# ---------------------------------------------------------------------- outages mid-study
class Outage:
    """Makes the handler's MLflow client fail (store unavailable) while ``down`` is true."""

    METHODS = ("create_run", "log_batch", "log_artifact", "set_terminated", "get_run")

    def __init__(self, monkeypatch, client: MlflowClient, error_code: int = TEMPORARILY_UNAVAILABLE) -> None:
        self.down = False
        self.calls = 0
        for name in self.METHODS:
            real = getattr(client, name)

            def fake(*args, _real=real, **kwargs):
                if self.down:
                    self.calls += 1
                    raise MlflowException("Connection refused", error_code=error_code)
                return _real(*args, **kwargs)

            monkeypatch.setattr(client, name, fake)


def sqlite_handler(tmp_path: Path, **kwargs) -> MLflowStudyHandler:
    return MLflowStudyHandler(
        output_dir=tmp_path, tracking_uri=MLflowStudyHandler.default_uri(tmp_path), **kwargs
    )


def test_outage_mid_study_warns_once_and_replays_when_the_store_is_back(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="monai_im")
    study = FakeStudy(tmp_path)
    h = sqlite_handler(tmp_path, retry_interval=0)
    h.study_started(study)
    outage = Outage(monkeypatch, h.client)
    outage.down = True
    h.generation_started(study, 0)  # the generation run cannot be created ...
    trainer = Engine(lambda e, b: None)
    h.student_started(study, 0, 0, trainer)  # ... nor the student run
    for epoch in (1, 2, 3):
        trainer.state.history_row = {"epoch": epoch, "train_loss": 1.0 / epoch}
        trainer.fire_event(Events.EPOCH_COMPLETED)
    h.student_finished(study, StudentResult(0, 0, 0.3, 3, "x.pt"), resumed=False)
    h.generation_finished(study, summary(study, 0, 0.3), resumed=False)
    assert outage.calls >= 5, "every hook tried the store"
    assert len(warnings_of(caplog)) == 1, "one warning for the outage, not one per call"
    assert h.pending and h.failing

    outage.down = False  # the store is back: the next call sends everything, in order
    h.study_finished(study, [summary(study, 0, 0.3)])
    assert not h.pending and not h.failing
    assert len(warnings_of(caplog)) == 1
    assert any("answers again" in r.getMessage() for r in caplog.records)

    client = MlflowClient(h.tracking_uri)
    student = client.get_run(h.run_id("student 0.0"))
    history = client.get_metric_history(student.info.run_id, "train_loss")
    assert sorted((m.step, round(m.value, 3)) for m in history) == [(1, 1.0), (2, 0.5), (3, 0.333)]
    assert student.info.status == "FINISHED" and student.data.metrics["best_val_iou"] == pytest.approx(0.3)
    assert student.data.tags["mlflow.parentRunId"] == h.run_id("generation 0")
    gen = client.get_run(h.run_id("generation 0"))
    assert gen.info.status == "FINISHED" and gen.data.metrics["test_iou"] == pytest.approx(0.2)
    assert gen.data.tags["mlflow.parentRunId"] == h.run_id("study")
    assert [a.path for a in client.list_artifacts(gen.info.run_id, "checkpoint")] == ["checkpoint/model.pt"]
    assert client.get_run(h.run_id("study")).info.status == "FINISHED"
    assert h.state["finished"] == [0] and h.state["open_students"] == []


def test_store_still_down_at_the_end_then_a_rerun_logs_the_finished_generations(
    tmp_path, monkeypatch, caplog
):
    study = FakeStudy(tmp_path)
    h = sqlite_handler(tmp_path, retry_interval=3600)
    h.study_started(study)
    outage = Outage(monkeypatch, h.client)
    outage.down = True
    h.generation_started(study, 0)
    calls = outage.calls
    h.generation_finished(study, summary(study, 0, 0.3), resumed=False)
    assert outage.calls == calls, "within retry_interval the store is left alone: the study is not slowed"
    h.study_finished(study, [summary(study, 0, 0.3)])  # tries once more, still down: no exception
    assert outage.calls > calls and h.pending
    assert len(warnings_of(caplog)) == 2 and "did not reach" in warnings_of(caplog)[-1]

    # the same command again once the store answers: the finished generation comes from its summary
    h2 = sqlite_handler(tmp_path)
    h2.study_started(study)
    h2.generation_finished(study, summary(study, 0, 0.3), resumed=True)
    h2.study_finished(study, [summary(study, 0, 0.3)])
    client = MlflowClient(h2.tracking_uri)
    gen = client.get_run(h2.run_id("generation 0"))
    assert gen.info.status == "FINISHED" and gen.data.metrics["val_iou"] == pytest.approx(0.3)
    assert h2.run_id("study") == h.run_id("study"), "the same parent run continues"
    exp = client.get_experiment_by_name("monai_im")
    assert len(client.search_runs([exp.experiment_id])) == 2


def test_a_refused_call_is_skipped_and_tracking_goes_on(tmp_path, monkeypatch, caplog):
    study = FakeStudy(tmp_path)
    h = sqlite_handler(tmp_path)
    h.study_started(study)
    h.generation_started(study, 0)
    outage = Outage(monkeypatch, h.client, error_code=INVALID_PARAMETER_VALUE)
    outage.down = True
    h.submit(("log", "generation 0", {"bad": 1.0}, None, 0, 0))  # (call, run, metrics, params, step, ms)
    outage.down = False
    h.generation_finished(study, summary(study, 0, 0.3), resumed=False)
    assert not h.pending and not h.failing and h.refused == 1
    assert len(warnings_of(caplog)) == 1 and "refused" in warnings_of(caplog)[0]
    gen = MlflowClient(h.tracking_uri).get_run(h.run_id("generation 0"))
    assert "bad" not in gen.data.metrics and gen.data.metrics["val_iou"] == pytest.approx(0.3)


def test_a_hook_never_raises_into_the_study(tmp_path, caplog):
    study = FakeStudy(tmp_path)
    h = sqlite_handler(tmp_path)
    h.study_started(study)
    h.generation_finished(study, {"generation": 0}, resumed=False)  # a summary without metrics
    h.generation_finished(study, {"generation": 1}, resumed=False)
    assert len(warnings_of(caplog)) == 1 and "generation_finished" in warnings_of(caplog)[0]


# ---------------------------------------------------------------------- experiment kind, dataset input
def test_experiment_has_the_model_training_kind(tmp_path):
    uri = MLflowStudyHandler.default_uri(tmp_path)
    client = MlflowClient(uri)
    client.create_experiment("made_by_hand")  # an experiment made without the handler gets the kind too
    for name in ("monai_im", "made_by_hand"):
        sqlite_handler(tmp_path, experiment_name=name).study_started(FakeStudy(tmp_path))
        assert client.get_experiment_by_name(name).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    client.set_experiment_tag(
        client.get_experiment_by_name("made_by_hand").experiment_id, EXPERIMENT_KIND_TAG, "x"
    )
    sqlite_handler(tmp_path, experiment_name="made_by_hand").study_started(FakeStudy(tmp_path))
    assert client.get_experiment_by_name("made_by_hand").tags[EXPERIMENT_KIND_TAG] == "x", (
        "a chosen kind stays"
    )


def test_datalist_is_the_study_runs_training_dataset(tmp_path):
    root = tmp_path / "data"
    datalist = {
        "labeled": [{"image": str(root / "images/a.png"), "label": str(root / "labels/a.png")}],
        "validation": [{"image": str(root / "images/b.png"), "label": str(root / "labels/b.png")}],
        "test": [],
        "unlabeled": [{"image": str(root / "images/c.png")}, {"image": str(root / "images/d.png")}],
    }
    study = FakeStudy(tmp_path / "out", datalist=datalist, params={"dataset": "Toy cells"})
    h = sqlite_handler(tmp_path / "out")
    h.study_started(study)
    h2 = sqlite_handler(tmp_path / "out")  # a resumed study does not log the dataset twice
    h2.study_started(study)

    run = MlflowClient(h.tracking_uri).get_run(h.run_id("study"))
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == "Toy cells" and inp.dataset.digest
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "training"
    assert '"num_rows": 4' in inp.dataset.profile
    assert all(c in inp.dataset.schema for c in ('"split"', '"image"', '"label"'))
    assert str(root / "images") in inp.dataset.source


def test_datalist_dataset_rows_and_source():
    ds = datalist_dataset(
        {
            "labeled": [{"image": "/d/img/a.png", "label": "/d/lab/a.png"}],
            "unlabeled": [{"image": "/d/img/b.png"}],
        },
        name="toy",
    )
    assert ds.name == "toy" and ds.targets == "label"
    assert ds.df["split"].tolist() == ["labeled", "unlabeled"]
    assert ds.df["image"].tolist() == ["/d/img/a.png", "/d/img/b.png"]
    assert ds.df["label"].iloc[0] == "/d/lab/a.png" and ds.df["label"].isna().tolist() == [False, True]
    assert ds.source.uri == "/d/img"
    mixed = datalist_dataset({"labeled": [{"image": "a.png"}, {"image": "/d/b.png"}]})
    assert mixed.name == "datalist" and mixed.source._get_source_type() == "code", (
        "no common folder: no folder"
    )


def test_database_stores_are_not_probed(tmp_path):
    check_tracking_uri(f"sqlite:///{tmp_path / 'never_made.db'}")
    assert not (tmp_path / "never_made.db").exists(), "the check itself writes nothing"
