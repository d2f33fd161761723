"""Tests of monai_im.handlers.mlflow_store: the call queue and the store operations, with fake clients."""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_DOES_NOT_EXIST,
    TEMPORARILY_UNAVAILABLE,
)

from monai_im.handlers import mlflow_handler, mlflow_store
from monai_im.handlers.mlflow_store import (
    EXPERIMENT_KIND_TAG,
    HTTP_LIMITS,
    MODEL_TRAINING_KIND,
    CallQueue,
    NoRunError,
    ensure_experiment,
    first_line,
    is_transient,
    log_values,
    run_is_active,
)

DOWN = MlflowException("Connection refused", error_code=TEMPORARILY_UNAVAILABLE)
BAD = MlflowException("bad value", error_code=INVALID_PARAMETER_VALUE)


def test_handler_module_re_exports_the_moved_names():
    for name in ("check_tracking_uri", "datalist_dataset", "find_bundle_config", "HTTP_LIMITS"):
        assert getattr(mlflow_handler, name) is getattr(mlflow_store, name)
    assert mlflow_handler.EXPERIMENT_KIND_TAG == EXPERIMENT_KIND_TAG == "mlflow.experimentKind"


def test_first_line_and_transient_errors():
    assert first_line(ValueError("one\ntwo")) == "one"
    assert first_line(KeyError()) == "KeyError"
    assert first_line(ValueError("x" * 300), limit=10) == "xxxxxxx..."
    assert (
        is_transient(DOWN) and is_transient(ConnectionError("gone")) and is_transient(RuntimeError("locked"))
    )
    assert not is_transient(BAD) and not is_transient(NoRunError("student 0.0"))
    assert not is_transient(TypeError()) and not is_transient(KeyError("k"))


class FakeStore:
    """``send`` for a :class:`CallQueue`: records the calls, fails while ``down``, refuses ``("bad",)``."""

    def __init__(self) -> None:
        self.down = False
        self.sent: list[tuple] = []
        self.env: list[str | None] = []

    def send(self, call: tuple) -> None:
        self.env.append(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT"))
        if self.down:
            raise DOWN
        if call[0] == "bad":
            raise BAD
        if call[0] == "norun":
            raise NoRunError(call[1])
        self.sent.append(call)


def test_queue_keeps_order_through_an_outage_and_warns_once(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    store = FakeStore()
    q = CallQueue(store.send, "sqlite:///x.db", tmp_path, retry_interval=0)
    assert q.submit(("a",)) and store.sent == [("a",)]
    store.down = True
    assert not q.submit(("b",)) and not q.submit(("c",))
    assert q.failing and list(q.pending) == [("b",), ("c",)]
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert str(tmp_path) in caplog.records[0].getMessage()
    store.down = False
    assert q.submit(("d",))
    assert store.sent == [("a",), ("b",), ("c",), ("d",)] and not q.pending and not q.failing
    assert set(store.env) == {HTTP_LIMITS["MLFLOW_HTTP_REQUEST_TIMEOUT"]}, "bounded retries while sending"
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ, "the environment is restored"


def test_queue_waits_retry_interval_unless_forced(tmp_path):
    store = FakeStore()
    q = CallQueue(store.send, "sqlite:///x.db", tmp_path, retry_interval=3600)
    store.down = True
    q.submit(("a",))
    tries = len(store.env)
    store.down = False
    assert not q.submit(("b",)) and len(store.env) == tries, "within retry_interval the store is left alone"
    assert q.submit(force=True) and store.sent == [("a",), ("b",)]


def test_queue_skips_refused_calls_and_puts_follow_ups_next(tmp_path, caplog):
    store = FakeStore()
    q = CallQueue(store.send, "sqlite:///x.db", tmp_path)

    def send(call: tuple) -> None:
        store.send(call)
        if call[0] == "create":
            q.put_next([("log", 1), ("log", 2)])

    q.send = send
    assert q.submit(("bad",), ("norun", "x"), ("bad",), ("create",), ("end",))
    assert store.sent == [("create",), ("log", 1), ("log", 2), ("end",)]
    assert q.refused == 2, "a call for a missing run is not a refusal"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "refused a call (bad)" in warnings[0]


class FakeClient:
    def __init__(self, experiment=None, run_error: Exception | None = None) -> None:
        self.experiment = experiment
        self.run_error = run_error
        self.calls: list[tuple] = []

    def get_experiment_by_name(self, name):
        return self.experiment

    def create_experiment(self, name, artifact_location=None, tags=None):
        self.calls.append(("create", name, artifact_location, tags))
        return "7"

    def set_experiment_tag(self, exp_id, key, value):
        self.calls.append(("tag", exp_id, key, value))

    def get_run(self, run_id):
        if self.run_error is not None:
            raise self.run_error
        return SimpleNamespace(
            info=SimpleNamespace(lifecycle_stage="deleted" if run_id == "gone" else "active")
        )

    def log_batch(self, run_id, metrics, params):
        self.calls.append(("batch", run_id, metrics, params))


def test_ensure_experiment_creates_or_retags():
    client = FakeClient()
    assert ensure_experiment(client, "study", "file:///art") == "7"
    assert client.calls == [("create", "study", "file:///art", {EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})]
    for kind, retagged in (
        (None, True),
        ("genai_inferred", True),
        ("no_inferred_type", True),
        ("genai", False),
    ):
        tags = {} if kind is None else {EXPERIMENT_KIND_TAG: kind}
        client = FakeClient(SimpleNamespace(experiment_id="3", tags=tags))
        assert ensure_experiment(client, "study") == "3"
        assert client.calls == ([("tag", "3", EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)] if retagged else [])


def test_run_is_active():
    assert run_is_active(FakeClient(), "r1") and not run_is_active(FakeClient(), "gone")
    missing = MlflowException("no such run", error_code=RESOURCE_DOES_NOT_EXIST)
    assert not run_is_active(FakeClient(run_error=missing), "r1")
    with pytest.raises(MlflowException):
        run_is_active(FakeClient(run_error=DOWN), "r1")


def test_log_values_skips_missing_metrics_and_cuts_long_params():
    client = FakeClient()
    log_values(
        client, "r1", {"a": 1, "none": None, "nan": float("nan")}, {"p": "x" * 600, "q": 3}, step=2, ms=5
    )
    (_, run_id, metrics, params), *rest = client.calls
    assert run_id == "r1" and not rest
    assert [(m.key, m.value, m.step, m.timestamp) for m in metrics] == [("a", 1.0, 2, 5)]
    assert {p.key: p.value for p in params} == {"p": "x" * 497 + "...", "q": "3"}
    log_values(client, "r1", {"nan": float("nan")}, None)
    assert len(client.calls) == 1, "nothing to log: no request"
