"""The MLflow tracking store behind :class:`~monai_im.handlers.MLflowStudyHandler`.

- :func:`check_tracking_uri` (from :mod:`monai_im.handlers.mlflow_uri`) ends the program with one line
  when a store cannot be used, before any training;
- :class:`CallQueue` sends tracking calls in their order and rides out a store that is down or
  busy: the calls wait and are sent when it answers again, with MLflow's HTTP retries bounded by
  :data:`HTTP_LIMITS` so that a server that went away costs seconds, not minutes;
- :func:`ensure_experiment`, :func:`run_is_active` and :func:`log_values` are the store operations
  the handler's calls are made of; :func:`is_transient` tells a store in trouble (send again later)
  from a call it refused (skip it);
- :func:`datalist_dataset`, :func:`study_params` and :func:`find_bundle_config` give the study's datalist,
  parameters and executed bundle config in the form they are logged in.

:mod:`monai_im.handlers.mlflow_handler` re-exports the public names of this module.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

from monai_im.handlers.mlflow_uri import _server_problem, check_tracking_uri, first_line

__all__ = [
    "http_limits",
    "EXPERIMENT_KIND_TAG",
    "HTTP_LIMITS",
    "MODEL_TRAINING_KIND",
    "CallQueue",
    "NoRunError",
    "check_tracking_uri",
    "datalist_dataset",
    "ensure_experiment",
    "find_bundle_config",
    "first_line",
    "is_transient",
    "log_values",
    "run_is_active",
    "study_params",
]

logger = logging.getLogger("monai_im")

#: The experiment tag that tells the MLflow 3 UI what an experiment holds; with the model-training value
#: the UI opens the experiment on its runs table.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"

#: MLflow's HTTP retry settings for the handler's calls, unless set in the environment: a server that
#: went away costs a few seconds, not MLflow's default minutes of retries.
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def find_bundle_config() -> dict | None:
    """The merged configuration of the MONAI bundle run that is executing this code, if any.

    Looks for the bundle's ``ConfigParser`` up the call stack (``python -m monai.bundle run`` and
    ``ConfigWorkflow`` both hold one), so that the executed config can be logged as it ran.
    """
    from monai.bundle import ConfigParser

    from monai_im.utils import find_on_stack

    def parser_config(value: object) -> dict | None:
        parser = value if isinstance(value, ConfigParser) else getattr(value, "parser", None)
        return parser.get() if isinstance(parser, ConfigParser) else None

    return find_on_stack(parser_config)


def datalist_dataset(datalist: Mapping[str, Sequence[Mapping[str, Any]]], name: str = "datalist") -> Any:
    """The datalist as an MLflow dataset (``mlflow.data.from_pandas``): one row per entry.

    Args:
        datalist: split name (``labeled``, ``validation``, ``test``, ``unlabeled``) -> entries with
            ``image`` and optionally ``label``.
        name: the dataset's name in MLflow.

    Returns:
        a ``PandasDataset`` with columns ``split``, ``image``, ``label`` (missing for unlabeled images),
        target ``label``, its digest computed from the table and its source the images' common folder.
    """
    import mlflow.data
    import pandas as pd

    def text(v: Any) -> str | None:
        return None if v is None else str(v)

    rows = [
        {"split": split, "image": text(e.get("image")), "label": text(e.get("label"))}
        for split, entries in datalist.items()
        for e in entries
    ]
    folders = [os.path.dirname(r["image"]) for r in rows if r["image"]]
    try:
        source = os.path.commonpath(folders) if folders else None
    except ValueError:  # relative and absolute paths, or several drives
        source = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a local folder matches several equivalent MLflow source types
        return mlflow.data.from_pandas(
            pd.DataFrame(rows, columns=["split", "image", "label"]), source=source, name=name, targets="label"
        )


def study_params(params: Mapping[str, Any], datalist: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
    """The study's parameters as they are logged, with ``labeled_fraction`` measured on the datalist.

    ``labeled_fraction`` is the share of labeled images among the training images, ``labeled / (labeled
    + unlabeled)``: a configured value describes the datalist only when the dataset was split with it. The
    configured value is kept as ``requested_labeled_fraction`` when the datalist's split is the one it
    gives (:func:`monai_im.data.split_labeled`'s count of labeled images), and is left out otherwise.

    Args:
        params: the study's parameters (``study.describe()``), maybe with a configured ``labeled_fraction``.
        datalist: the study's datalist.
    """
    out = dict(params)
    labeled, unlabeled = len(datalist.get("labeled", ())), len(datalist.get("unlabeled", ()))
    total = labeled + unlabeled
    if total == 0:
        return out
    requested = out.pop("labeled_fraction", None)
    out["labeled_fraction"] = round(labeled / total, 4)
    try:
        split_with_it = min(total, max(1, round(float(requested) * total))) == labeled
    except (TypeError, ValueError):
        split_with_it = False
    if split_with_it:
        out["requested_labeled_fraction"] = requested
    elif requested is not None:
        logger.info(
            f"MLflow: labeled_fraction {requested} of the config does not describe the datalist ({labeled} of "
            f"{total} training images labeled); labeled_fraction {out['labeled_fraction']} is logged"
        )
    return out


class NoRunError(Exception):
    """A call for a run that was never created (the store refused to create it)."""


def is_transient(e: Exception) -> bool:
    """Whether a failed call is worth sending again (a store that is down or busy), not one it refused.

    Refused: a request the store answers with a 4xx status (but 408/429), and bad values (``TypeError``,
    ``ValueError``, ``LookupError``, ``AttributeError``). Anything else (connection errors, timeouts, 5xx,
    a database that is locked) is the store's trouble, and the call is sent again later.
    """
    from mlflow.exceptions import MlflowException

    if isinstance(e, MlflowException):
        status = e.get_http_status_code()
        return not 400 <= status < 500 or status in (408, 429)
    return not isinstance(e, (NoRunError, TypeError, ValueError, LookupError, AttributeError))


def ensure_experiment(client: Any, name: str, artifact_location: str | None = None) -> str:
    """The id of the experiment ``name``, created when missing, tagged as a model-training experiment.

    An existing experiment whose kind is unset or was only inferred by MLflow gets the model-training
    kind, so that the MLflow UI opens it on its runs table.

    Args:
        client: an ``MlflowClient``.
        name: the experiment's name.
        artifact_location: where a new experiment keeps its artifacts (default: the store's choice).
    """
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(
            name, artifact_location=artifact_location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND}
        )
    kind = exp.tags.get(EXPERIMENT_KIND_TAG)
    if kind is None or kind.endswith("_inferred") or kind == "no_inferred_type":
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    return exp.experiment_id


def run_is_active(client: Any, run_id: str) -> bool:
    """Whether the run ``run_id`` exists and is not deleted; a store that fails (:func:`is_transient`) raises.

    Args:
        client: an ``MlflowClient``.
        run_id: the MLflow run id.
    """
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException as e:
        if is_transient(e):
            raise
        return False  # a run deleted from the store


def _param_value(v: Any) -> str:
    s = str(v)
    return s if len(s) <= 500 else s[:497] + "..."


def log_values(
    client: Any,
    run_id: str,
    metrics: Mapping[str, float] | None,
    params: Mapping[str, Any] | None,
    step: int = 0,
    ms: int = 0,
) -> None:
    """Log ``metrics`` and ``params`` to a run in one request (none when both are empty).

    Metrics that are ``None`` or NaN are left out; parameter values are logged as text of at most 500
    characters.

    Args:
        client: an ``MlflowClient``.
        run_id: the MLflow run id.
        metrics: metric name -> value, logged at ``step``.
        params: parameter name -> value.
        step: the metrics' step.
        ms: the metrics' time stamp in milliseconds since the epoch (0: now).
    """
    from mlflow.entities import Metric, Param

    ms = ms or int(time.time() * 1000)
    metric_list = [
        Metric(k, float(v), ms, step) for k, v in (metrics or {}).items() if v is not None and v == v
    ]
    param_list = [Param(k, _param_value(v)) for k, v in (params or {}).items()]
    if metric_list or param_list:
        client.log_batch(run_id, metrics=metric_list, params=param_list)


@contextlib.contextmanager
def http_limits() -> Iterator[None]:
    """:data:`HTTP_LIMITS` in the environment for the duration of the block, where the user set none."""
    added = [k for k in HTTP_LIMITS if k not in os.environ]
    os.environ.update({k: HTTP_LIMITS[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


class CallQueue:
    """Tracking calls sent to the store in order; a store that is down or busy delays them, never the caller.

    A call is a tuple ``(name, *args)`` that ``send`` runs. When the store fails (:func:`is_transient`),
    one warning is logged, and that call and all after it wait in :attr:`pending`, in their order, until
    the store answers again (tried at most every ``retry_interval`` seconds, a server only once it
    answers at all). A call the store refuses is skipped, with a warning the first time, and counted in
    :attr:`refused`; a call for a run that was never created (:class:`NoRunError`) is skipped silently.

    Args:
        send: runs one call; raises when the store fails or refuses it.
        tracking_uri: the store, for the messages and the cheap check whether a server answers.
        record: the folder that keeps the complete record while the store fails, for the message.
        retry_interval: seconds between attempts to reach a store that failed.
    """

    def __init__(
        self,
        send: Callable[[tuple], Any],
        tracking_uri: str,
        record: str | os.PathLike,
        retry_interval: float = 30.0,
    ) -> None:
        self.send = send
        self.tracking_uri = tracking_uri
        self.record = record
        self.retry_interval = retry_interval
        self.pending: deque[tuple] = deque()
        self.failing = False
        self.refused = 0
        self._last_try = 0.0

    def submit(self, *calls: tuple, force: bool = False) -> bool:
        """Queue calls and send all the store takes, in order; never raises.

        Args:
            calls: ``(name, *args)`` tuples, each run by ``send``.
            force: try now even if the store failed less than ``retry_interval`` seconds ago.

        Returns:
            whether the queue is empty afterwards.
        """
        self.pending.extend(calls)
        if not self.pending:
            return True
        if self.failing and not force and not self._store_may_answer():
            return False
        self._last_try = time.monotonic()
        sent = 0
        with http_limits():
            while self.pending:
                call = self.pending[0]
                try:
                    self.send(call)
                except Exception as e:
                    if is_transient(e):
                        if not self.failing:
                            self.failing = True
                            logger.warning(
                                f"MLflow: tracking at {self.tracking_uri} failed ({first_line(e)}); the study goes "
                                f"on and {self.record} keeps its complete record; tracking calls wait and are "
                                f"sent when the store answers again"
                            )
                        return False
                    if not isinstance(e, NoRunError):
                        self.refused += 1
                        if self.refused == 1:
                            logger.warning(
                                f"MLflow: the store refused a call ({call[0]}), skipped: {first_line(e)}"
                            )
                self.pending.popleft()
                sent += 1
        if self.failing:
            self.failing = False
            logger.info(f"MLflow: {self.tracking_uri} answers again; {sent} waiting tracking calls sent")
        return True

    def _store_may_answer(self) -> bool:
        """After a failure: whether to try the store now (every ``retry_interval`` s, if a server answers)."""
        if time.monotonic() - self._last_try < self.retry_interval:
            return False
        self._last_try = time.monotonic()
        server = urlparse(self.tracking_uri).scheme in ("http", "https")
        return not server or _server_problem(self.tracking_uri, timeout=2.0) is None  # cheaper than MLflow

    def put_next(self, calls: Sequence[tuple]) -> None:
        """Queue ``calls`` right after the call being sent, before anything queued later."""
        for call in reversed(calls):
            self.pending.insert(1, call)
