"""Tracking URIs: unknown schemes refused in one line, the own store recorded relative to the study folder,
and what the handler logs: the measured labeled fraction, a warning for a promised artifact that is missing."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from monai_im.handlers import MLflowStudyHandler, check_tracking_uri
from monai_im.handlers.mlflow_store import study_params
from monai_im.handlers.mlflow_uri import (
    OWN_STORE,
    known_tracking_schemes,
    own_store_uri,
    resolve_stored_uri,
    stored_uri,
    tracking_scheme,
)
from monai_im.selftrain.events import StudyEventRegistry


class FakeStudy(StudyEventRegistry):
    """The part of a study the handler reads."""

    def __init__(self, out: Path) -> None:
        super().__init__()
        self.output_dir = out
        self.method = SimpleNamespace(name="im")
        self.key_metric_name = "iou"
        self.datalist: dict = {}

    def describe(self) -> dict:
        return {"method": "im"}

    def generation_dir(self, g: int) -> Path:
        return self.output_dir / f"generation_{g}"


@pytest.mark.parametrize("uri", ["foo://host/db", "sqlitex:///x.db", "postgres://u@h/db", "mlflow:/x"])
def test_an_unknown_scheme_is_refused_in_one_line_before_any_work(tmp_path, uri):
    study = FakeStudy(tmp_path)
    with pytest.raises(SystemExit) as err:
        MLflowStudyHandler(output_dir=tmp_path, tracking_uri=uri).attach(study)
    msg = str(err.value.code)
    assert "\n" not in msg and msg.startswith(
        f"error: MLflow has no tracking store for {uri} (unknown scheme"
    )
    assert "sqlite, " in msg and "postgresql" in msg and "drop --tracking_uri" in msg
    assert not study._event_handlers or not any(study._event_handlers.values()), "nothing registered"
    assert list(tmp_path.iterdir()) == [], "nothing written"


@pytest.mark.parametrize(
    ("uri", "scheme"),
    [
        ("sqlite:///x.db", "sqlite"),
        ("postgresql+psycopg2://u@h/db", "postgresql"),
        ("mysql+pymysql://u@h/db", "mysql"),
        ("mssql+pyodbc://u@h/db", "mssql"),
        ("databricks", "databricks"),
        ("databricks://profile", "databricks"),
        ("C:\\runs\\mlruns", ""),
        ("runs/mlruns", ""),
        ("HTTPS://host", "https"),
    ],
)
def test_known_schemes_pass_the_scheme_check(uri, scheme):
    assert tracking_scheme(uri) == scheme
    assert scheme == "" or scheme in known_tracking_schemes()


def test_database_stores_with_a_driver_are_not_probed():
    check_tracking_uri("postgresql+psycopg2://nobody@127.0.0.1:1/none")  # no connection is tried


def test_the_own_store_is_recorded_relative_to_the_study_folder(tmp_path):
    here, there = tmp_path / "a" / "study", tmp_path / "b" / "copy"
    assert stored_uri(own_store_uri(here), here) == OWN_STORE
    assert resolve_stored_uri(OWN_STORE, there) == own_store_uri(there)
    legacy = f"sqlite:///{(here / 'mlflow.db').as_posix()}"  # what older versions recorded
    assert resolve_stored_uri(legacy, there) == own_store_uri(there)
    for other in ("http://server:5000", f"sqlite:///{(tmp_path / 'shared.db').as_posix()}"):
        assert stored_uri(other, here) == other and resolve_stored_uri(other, there) == other
    assert resolve_stored_uri(None, there) is None


def _datalist(labeled: int, unlabeled: int) -> dict:
    return {"labeled": [{}] * labeled, "unlabeled": [{}] * unlabeled, "validation": [{}]}


def test_labeled_fraction_is_measured_on_the_datalist(caplog):
    caplog.set_level(logging.INFO, logger="monai_im")
    # the user's datalist: 6 of 16 labeled, whatever the config says
    logged = study_params({"method": "im", "labeled_fraction": 0.1}, _datalist(6, 10))
    assert logged == {"method": "im", "labeled_fraction": 0.375}
    assert any(
        "labeled_fraction 0.1 of the config does not describe" in r.getMessage() for r in caplog.records
    )
    # a dataset split with the configured fraction (split_labeled's count: round(0.25 * 30) = 8)
    logged = study_params({"labeled_fraction": 0.25}, _datalist(8, 22))
    assert logged == {"labeled_fraction": 0.2667, "requested_labeled_fraction": 0.25}
    assert study_params({}, _datalist(1, 3)) == {"labeled_fraction": 0.25}
    assert study_params({"labeled_fraction": 0.1}, {}) == {"labeled_fraction": 0.1}, "no datalist: as given"


def test_a_missing_promised_artifact_is_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    study = FakeStudy(tmp_path)
    h = MLflowStudyHandler(output_dir=tmp_path)
    h.study_started(study)
    (tmp_path / "generation_0").mkdir()
    (tmp_path / "generation_0" / "summary.json").write_text(json.dumps({"generation": 0}))
    missing = tmp_path / "generation_0" / "student_1" / "model.pt"
    summary = {"generation": 0, "val_iou": 0.5, "training_images": 4, "checkpoint": str(missing)}
    h.generation_finished(study, summary, resumed=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"MLflow: {missing} does not exist; it is missing from the artifacts of the generation 0 run"
    ]
    assert not h.pending and h.refused == 0, "the rest of the generation is logged"
