"""MLflow tracking of a self-training study: one parent run, a nested run per generation and per student.

Layout in the MLflow UI::

    <run_name>                      parent: study params; the datalist as its training dataset;
    │                               test/val metrics with step = generation
    ├── generation 0                params generation, method; val_<key>, test_<metric>; checkpoint
    │   ├── student 0               train_loss, val_<metric> per epoch
    │   └── ...
    ├── generation 1                + pseudo_<stat> (IM fraction, images kept), IM figure
    └── ...

Metric names are the same for every method (``val_<key>``, ``test_<metric>``, ``pseudo_<stat>``),
so runs of different methods compare side by side. The store defaults to a sqlite database under
the study's output folder; ``MLFLOW_TRACKING_URI`` or ``tracking_uri`` points at a shared server.

Tracking never steers, stops or stalls the study:

- a store that cannot be used (a server nobody answers at, a file store MLflow refuses) ends the
  program with one line when the handler is attached, before any training;
- every MLflow call goes through one queue. When the store fails mid-study (server down, database
  busy), one warning is logged, the calls wait in the queue in their order, and they are sent when
  the store answers again (tried at most every ``retry_interval`` seconds); the study folder is the
  complete record all along. Calls the store refuses (a bad request) are skipped with a warning.
- a study resumed after an interruption continues the same runs, and logs the finished generations
  that had not reached the store.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import logging
import os
import time
import urllib.error
import urllib.request
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ignite.engine import Events

from monai_im.io import atomic_write_json, load_json

__all__ = ["MLflowStudyHandler", "check_tracking_uri", "datalist_dataset", "find_bundle_config"]

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
    import inspect

    from monai.bundle import ConfigParser

    frame = inspect.currentframe()
    try:
        while frame is not None:
            for value in frame.f_locals.values():
                parser = value if isinstance(value, ConfigParser) else getattr(value, "parser", None)
                if isinstance(parser, ConfigParser):
                    return parser.get()
            frame = frame.f_back
    finally:
        del frame
    return None


def _param_value(v: Any) -> str:
    s = str(v)
    return s if len(s) <= 500 else s[:497] + "..."


def _first_line(e: BaseException, limit: int = 200) -> str:
    lines = str(e).strip().splitlines()
    s = lines[0] if lines else type(e).__name__
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _server_problem(uri: str, timeout: float) -> str | None:
    """Why no HTTP server answers at ``uri`` (``None`` when one does, whatever its status)."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # a server answered (a login, a proxy path, ...)
    except urllib.error.URLError as e:
        return _first_line(e.reason) if isinstance(e.reason, BaseException) else str(e.reason)
    except (OSError, http.client.HTTPException, ValueError) as e:
        return _first_line(e)


def check_tracking_uri(uri: str, hint: str = "drop --tracking_uri", timeout: float = 5.0) -> None:
    """End the program with one line (``SystemExit``) when the tracking store at ``uri`` cannot be used.

    A server (``http``/``https``) must answer at ``<uri>/health`` within ``timeout`` seconds; a file
    store (``file:`` or a plain path) must be accepted by the installed MLflow, which refuses it from
    3.x on unless ``MLFLOW_ALLOW_FILE_STORE`` is set. Database stores (``sqlite:`` ...) are not checked.

    Args:
        uri: the tracking URI.
        hint: how the user falls back to the local sqlite store, for the message.
        timeout: seconds to wait for a server.
    """
    scheme = urlparse(uri).scheme.lower()
    if scheme in ("http", "https"):
        problem = _server_problem(uri, timeout)
        if problem is not None:
            raise SystemExit(
                f"error: MLflow tracking server {uri} is not reachable ({problem}); "
                f"start it, or {hint} to use the local sqlite store"
            )
    elif scheme in ("", "file") or len(scheme) == 1:  # a path (with a drive letter on Windows)
        import mlflow
        from mlflow import MlflowClient

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                MlflowClient(uri).search_experiments(max_results=1)
        except Exception as e:
            path = urllib.request.url2pathname(urlparse(uri).path) if scheme == "file" else uri
            db = Path(path).expanduser().resolve().with_suffix(".db").as_posix()
            reason = str(e).split(". ")[0].strip().rstrip(".")
            raise SystemExit(
                f"error: MLflow {mlflow.__version__} cannot use the file store {uri} ({reason}); "
                f"use a database store instead, e.g. --tracking_uri sqlite:///{db}"
            ) from None


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


class _NoRun(Exception):
    """A call for a run that was never created (the store refused to create it)."""


def _transient(e: Exception) -> bool:
    """Whether a failed call is worth sending again (a store that is down or busy), not one it refused.

    Refused: a request the store answers with a 4xx status (but 408/429), and bad values (``TypeError``,
    ``ValueError``, ``LookupError``, ``AttributeError``). Anything else (connection errors, timeouts, 5xx,
    a database that is locked) is the store's trouble, and the call is sent again later.
    """
    from mlflow.exceptions import MlflowException

    if isinstance(e, MlflowException):
        status = e.get_http_status_code()
        return not 400 <= status < 500 or status in (408, 429)
    return not isinstance(e, (_NoRun, TypeError, ValueError, LookupError, AttributeError))


@contextlib.contextmanager
def _http_limits() -> Iterator[None]:
    """:data:`HTTP_LIMITS` in the environment for the duration of the block, where the user set none."""
    added = [k for k in HTTP_LIMITS if k not in os.environ]
    os.environ.update({k: HTTP_LIMITS[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _never_raises(hook: Callable) -> Callable:
    """A study hook that logs a warning (the first time) instead of raising: tracking never stops a study."""

    @functools.wraps(hook)
    def guarded(self: MLflowStudyHandler, *args: Any, **kwargs: Any) -> None:
        try:
            hook(self, *args, **kwargs)
        except Exception as e:
            if not self.hook_failed:
                self.hook_failed = True
                logger.warning(
                    f"MLflow: tracking skipped a step of the study ({hook.__name__}: {_first_line(e)})"
                )

    return guarded


class MLflowStudyHandler:
    """Log a :class:`~monai_im.engines.SelfTrainingStudy` to MLflow, without ever stopping it.

    Args:
        output_dir: the study's output folder; holds the default sqlite store (``mlflow.db``), the
            artifact folder (``mlartifacts``) and the handler's resume state (``mlflow_runs.json``).
        tracking_uri: an MLflow tracking URI; default ``MLFLOW_TRACKING_URI`` if set, else the sqlite store.
        experiment_name: the MLflow experiment.
        run_name: the parent run's name (default: ``<method>``).
        tags: extra tags for the parent run.
        log_checkpoints: log the best checkpoint of every generation as an artifact.
        log_config: log the executed bundle config as an artifact.
        retry_interval: seconds between attempts to reach a store that failed; calls made meanwhile wait
            in the queue.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        tracking_uri: str | None = None,
        experiment_name: str = "monai_im",
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        log_checkpoints: bool = True,
        log_config: bool = True,
        retry_interval: float = 30.0,
    ) -> None:
        self.output_dir = Path(output_dir)
        env_uri = os.environ.get("MLFLOW_TRACKING_URI")
        self.tracking_uri = tracking_uri or env_uri or self.default_uri(self.output_dir)
        self.uri_hint = "unset MLFLOW_TRACKING_URI" if not tracking_uri and env_uri else "drop --tracking_uri"
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.tags = {k: str(v) for k, v in (tags or {}).items()}
        self.log_checkpoints = log_checkpoints
        self.log_config = log_config
        self.retry_interval = retry_interval
        self.state_file = self.output_dir / "mlflow_runs.json"
        self.state: dict[str, Any] = {}
        self.client: Any = None
        self.pending: deque[tuple] = deque()
        self.failing = False
        self.refused = 0
        self.hook_failed = False
        self._last_try = 0.0
        self._requested: set[str] = set()

    @staticmethod
    def default_uri(output_dir: Path) -> str:
        return f"sqlite:///{(Path(output_dir).resolve() / 'mlflow.db').as_posix()}"

    def attach(self, study: Any) -> None:
        """Check the tracking store (one line and exit if it cannot be used), then register with the study."""
        check_tracking_uri(self.tracking_uri, hint=self.uri_hint)
        study.add_observer(self)

    # ------------------------------------------------------------------ the queue
    def submit(self, *calls: tuple, force: bool = False) -> bool:
        """Queue MLflow calls and send all the store takes, in order; never raises.

        Args:
            calls: ``(name, *args)`` tuples, each run by the method ``_call_<name>``.
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
        with _http_limits():
            while self.pending:
                call = self.pending[0]
                try:
                    getattr(self, f"_call_{call[0]}")(*call[1:])
                except Exception as e:
                    if _transient(e):
                        if not self.failing:
                            self.failing = True
                            logger.warning(
                                f"MLflow: tracking at {self.tracking_uri} failed ({_first_line(e)}); the study goes "
                                f"on and {self.output_dir} keeps its complete record; tracking calls wait and are "
                                f"sent when the store answers again"
                            )
                        return False
                    if not isinstance(e, _NoRun):
                        self.refused += 1
                        if self.refused == 1:
                            logger.warning(
                                f"MLflow: the store refused a call ({call[0]}), skipped: {_first_line(e)}"
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

    def _save(self) -> None:
        atomic_write_json(self.state_file, self.state)

    def _client(self) -> Any:
        if self.client is None:
            from mlflow import MlflowClient

            self.client = MlflowClient(tracking_uri=self.tracking_uri)
        return self.client

    def run_id(self, key: str) -> str | None:
        """The MLflow run id of ``"study"``, ``"generation <g>"`` or ``"student <g>.<i>"``, once created."""
        return self.state.get("runs", {}).get(key)

    def _id(self, key: str) -> str:
        run_id = self.run_id(key)
        if run_id is None:
            raise _NoRun(key)
        return run_id

    def _alive(self, run_id: str | None) -> bool:
        from mlflow.exceptions import MlflowException

        if not run_id:
            return False
        try:
            return self._client().get_run(run_id).info.lifecycle_stage == "active"
        except MlflowException as e:
            if _transient(e):
                raise
            return False  # a run deleted from the store

    # ------------------------------------------------------------------ calls (run in queue order)
    def _call_setup(self) -> None:
        """Find or create the experiment (model-training kind); continue the parent run if it is alive."""
        client = self._client()
        exp = client.get_experiment_by_name(self.experiment_name)
        if exp is None:
            local = urlparse(self.tracking_uri).scheme in ("sqlite", "file", "")
            location = (self.output_dir.resolve() / "mlartifacts").as_uri() if local else None
            exp_id = client.create_experiment(
                self.experiment_name,
                artifact_location=location,
                tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND},
            )
        else:
            exp_id = exp.experiment_id
            kind = exp.tags.get(EXPERIMENT_KIND_TAG)
            if kind is None or kind.endswith("_inferred") or kind == "no_inferred_type":
                client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
        parent = self.run_id("study") if self.state.get("experiment_id") == exp_id else None
        if self._alive(parent):
            client.update_run(parent, status="RUNNING")
            for stale in self.state.get("open_students", []):
                if self._alive(stale):
                    client.set_terminated(stale, "KILLED")
            logger.info(f"MLflow: continuing run {parent} in {self.tracking_uri}")
        else:
            self.state.update(runs={}, finished=[], pseudo_logged=[])
        self.state.update(tracking_uri=self.tracking_uri, experiment_id=exp_id, open_students=[])
        self._save()

    def _call_create(
        self, key: str, parent: str | None, name: str, params: Mapping[str, Any], reuse: bool, then: Sequence
    ) -> None:
        """Create the run ``key`` (unless ``reuse`` and it is alive), then log its params and ``then``."""
        if reuse and self._alive(self.run_id(key)):
            return
        tags = {**self.tags, **({"mlflow.parentRunId": self._id(parent)} if parent else {})}
        run = self._client().create_run(self.state["experiment_id"], run_name=name, tags=tags)
        self.state["runs"][key] = run.info.run_id
        if key.startswith("student"):
            self.state["open_students"].append(run.info.run_id)
        self._save()
        for call in reversed([("log", key, None, params, 0, 0), *then]):
            self.pending.insert(1, call)  # right after this call, before anything queued later

    def _call_log(
        self,
        key: str,
        metrics: Mapping[str, float] | None,
        params: Mapping[str, Any] | None,
        step: int,
        ms: int,
    ) -> None:
        from mlflow.entities import Metric, Param

        ms = ms or int(time.time() * 1000)
        metric_list = [
            Metric(k, float(v), ms, step) for k, v in (metrics or {}).items() if v is not None and v == v
        ]
        param_list = [Param(k, _param_value(v)) for k, v in (params or {}).items()]
        if metric_list or param_list:
            self._client().log_batch(self._id(key), metrics=metric_list, params=param_list)

    def _call_artifact(self, key: str, path: str, artifact_path: str | None) -> None:
        if Path(path).is_file():
            self._client().log_artifact(self._id(key), str(path), artifact_path)

    def _call_dict(self, key: str, data: Any, artifact_file: str) -> None:
        self._client().log_dict(self._id(key), data, artifact_file)

    def _call_input(self, key: str, dataset_input: Any) -> None:
        self._client().log_inputs(self._id(key), datasets=[dataset_input])

    def _call_end(self, key: str, status: str) -> None:
        run_id = self._id(key)
        self._client().set_terminated(run_id, status)
        if run_id in self.state["open_students"]:
            self.state["open_students"].remove(run_id)
            self._save()

    def _call_mark(self, name: str, value: int) -> None:
        self.state[name].append(value)
        self._save()

    def _log(self, key: str, metrics: Mapping[str, float] | None = None, step: int = 0) -> tuple:
        return ("log", key, dict(metrics or {}), None, step, int(time.time() * 1000))

    # ------------------------------------------------------------------ study hooks
    @_never_raises
    def study_started(self, study: Any) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        old = load_json(self.state_file) if self.state_file.is_file() else {}
        if getattr(study, "started_over", False):  # --overwrite: a new study gets new runs
            old = {}
        self.state = old if old.get("tracking_uri") == self.tracking_uri and "runs" in old else {}
        self.state.setdefault("runs", {})
        self.state.setdefault("finished", [])
        self.state.setdefault("pseudo_logged", [])
        self.state.setdefault("open_students", [])
        then: list[tuple] = []
        with contextlib.suppress(Exception):  # the config and the dataset are extras: never a reason to stop
            config = find_bundle_config() if self.log_config else None
            if config is not None:
                then.append(("dict", "study", config, "config/executed_config.json"))
        datalist = getattr(study, "datalist", None)
        if datalist:
            try:
                from mlflow.entities import DatasetInput, InputTag
                from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

                name = str((getattr(study, "params", None) or {}).get("dataset") or "datalist")
                entity = datalist_dataset(datalist, name)._to_mlflow_entity()
                then.append(
                    ("input", "study", DatasetInput(entity, [InputTag(MLFLOW_DATASET_CONTEXT, "training")]))
                )
            except Exception as e:
                logger.warning(f"MLflow: the datalist is not logged as a dataset ({_first_line(e)})")
        desc = study.describe()
        name = self.run_name or str(desc.get("method"))
        self.submit(("setup",), ("create", "study", None, name, desc, True, then))

    @_never_raises
    def generation_started(self, study: Any, generation: int) -> None:
        key = f"generation {generation}"
        if key not in self._requested:
            self._requested.add(key)
            params = {"generation": generation, "method": study.strategy.name}
            self.submit(("create", key, "study", key, params, True, ()))

    @_never_raises
    def student_started(self, study: Any, generation: int, index: int, trainer: Any) -> None:
        self.generation_started(study, generation)
        key = f"student {generation}.{index}"
        params = {"generation": generation, "student": index, "method": study.strategy.name}
        self._requested.add(key)
        self.submit(("create", key, f"generation {generation}", f"student {index}", params, False, ()))

        def _log_epoch(engine: Any) -> None:
            row = dict(getattr(engine.state, "history_row", None) or {})
            epoch = int(row.pop("epoch", engine.state.epoch))
            self.submit(self._log(key, row, step=epoch))

        trainer.add_event_handler(Events.EPOCH_COMPLETED, _log_epoch)

    @_never_raises
    def student_finished(self, study: Any, result: Any, resumed: bool) -> None:
        key = f"student {result.generation}.{result.index}"
        if key not in self._requested:  # finished in an earlier process
            return
        metric = f"val_{study.key_metric_name}"
        self.submit(
            self._log(key, {f"best_{metric}": result.best_metric, "best_epoch": result.best_epoch}),
            ("end", key, "FINISHED"),
            self._log(
                f"generation {result.generation}", {f"student_{metric}": result.best_metric}, result.index
            ),
        )

    @_never_raises
    def pseudo_labels_ready(
        self, study: Any, generation: int, result: Any, figure: Path | None, resumed: bool
    ) -> None:
        if generation in self.state["pseudo_logged"]:
            return
        self.generation_started(study, generation)
        key = f"generation {generation}"
        metrics = {f"pseudo_{k}": v for k, v in result.stats.items()}
        calls = [self._log(key, metrics), self._log("study", metrics, step=generation)]
        if result.output_dir:
            calls.append(("artifact", key, str(Path(result.output_dir) / "stats.json"), "pseudo_labels"))
        if figure is not None:
            calls.append(("artifact", key, str(figure), "figures"))
            calls.append(("artifact", "study", str(figure), f"figures/generation_{generation}"))
        self.submit(*calls, ("mark", "pseudo_logged", generation))

    @_never_raises
    def generation_finished(self, study: Any, summary: Mapping[str, Any], resumed: bool) -> None:
        g = int(summary["generation"])
        if g in self.state["finished"]:
            return
        self.generation_started(study, g)
        key = f"generation {g}"
        metric = f"val_{study.key_metric_name}"
        metrics = {metric: summary[metric], **summary.get("test", {})}
        pseudo = {f"pseudo_{k}": v for k, v in (summary.get("pseudo_labels") or {}).items()}
        calls = [
            self._log(key, {**metrics, **pseudo, "training_images": summary["training_images"]}),
            self._log("study", metrics, step=g),
            ("artifact", key, str(study.generation_dir(g) / "summary.json"), None),
        ]
        if self.log_checkpoints:
            calls.append(("artifact", key, str(Path(study.output_dir) / summary["checkpoint"]), "checkpoint"))
        self.submit(*calls, ("end", key, "FINISHED"), ("mark", "finished", g))

    @_never_raises
    def study_finished(self, study: Any, summaries: list[Mapping[str, Any]]) -> None:
        calls = [("artifact", "study", str(study.output_dir / "results.json"), None)]
        test_key = f"test_{study.key_metric_name}"
        values = [s.get("test", {}).get(test_key) for s in summaries]
        if len(summaries) > 1 and all(v is not None for v in values):
            try:
                from monai_im.visualize import plot_metric_over_generations

                path = plot_metric_over_generations(
                    {study.strategy.name: values},
                    study.output_dir / f"{test_key}_over_generations.png",
                    test_key,
                    higher_is_better=study.higher_is_better,
                )
                calls.append(("artifact", "study", str(path), "figures"))
            except Exception as e:
                logger.warning(f"MLflow: no {test_key} plot ({_first_line(e)})")
        if not self.submit(*calls, ("end", "study", "FINISHED"), force=True):
            logger.warning(
                f"MLflow: {len(self.pending)} tracking calls did not reach {self.tracking_uri}; the study folder "
                f"{self.output_dir} holds the complete record, and running the same command again once the "
                "store answers logs the finished generations"
            )
            return
        if self.refused > 1:
            logger.warning(f"MLflow: the store refused {self.refused} tracking calls in all")
        logger.info(f"MLflow: run {self.run_id('study')} in {self.tracking_uri}")
        if self.tracking_uri.startswith("sqlite:"):
            logger.info(f"compare runs with: mlflow ui --backend-store-uri {self.tracking_uri}")
