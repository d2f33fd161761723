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
  that had not reached the store;
- a study folder copied or moved with its own store goes on tracking into the copy: the resume state
  names that store relative to the folder, and its artifact locations are pointed into the folder
  (:mod:`monai_im.handlers.mlflow_uri`).

The store checks, the call queue and the MLflow forms of the datalist and the bundle config live in
:mod:`monai_im.handlers.mlflow_store`; their public names are re-exported here.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ignite.engine import Events

from monai_im.handlers.mlflow_calls import MLflowRunCalls, model_signature
from monai_im.handlers.mlflow_store import (
    EXPERIMENT_KIND_TAG,
    HTTP_LIMITS,
    MODEL_TRAINING_KIND,
    CallQueue,
    check_tracking_uri,
    datalist_dataset,
    find_bundle_config,
    first_line,
    study_params,
)
from monai_im.handlers.mlflow_uri import own_store_uri, resolve_stored_uri, stored_uri
from monai_im.io import load_json

if TYPE_CHECKING:  # the study's type only: importing the loop is not needed to read one
    from monai_im.methods.context import StudentResult
    from monai_im.selftrain.pseudo_result import PseudoLabelResult
    from monai_im.selftrain.study import SelfTrainingStudy

__all__ = [
    "EXPERIMENT_KIND_TAG",
    "HTTP_LIMITS",
    "MODEL_TRAINING_KIND",
    "MLflowStudyHandler",
    "check_tracking_uri",
    "datalist_dataset",
    "find_bundle_config",
]

logger = logging.getLogger("monai_im")


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
                    f"MLflow: tracking skipped a step of the study ({hook.__name__}: {first_line(e)})"
                )

    return guarded


def _study_file(study: SelfTrainingStudy, path: str | os.PathLike) -> Path:
    """A file named in a summary: the path itself when it is absolute or names a file (summaries in memory
    hold paths that work from the current folder, also under a relative ``output_dir``), else relative to
    the study folder (as the summary files store them)."""
    p = Path(path)
    return p if p.is_absolute() or p.exists() else Path(study.output_dir) / p


def _final_model_call(study: SelfTrainingStudy) -> tuple | None:
    """The call that logs the study's final ``model.pt`` as an MLflow model of the study run: the network of
    its generation (on the CPU, without the run settings' forward policy) with the weights loaded, and its
    signature; None when the study wrote no final model, and (with a warning) when it cannot be rebuilt."""
    layout = getattr(study, "layout", None)
    if layout is None or not layout.model_file.is_file():
        return None
    try:
        from monai_im.selftrain.student import build_network, load_weights

        final = load_json(study.layout.results_file).get("final_model") or {}
        generation = int(final.get("generation", 0))
        network = build_network(study.method.student_network(generation, study.network))
        network = load_weights(network, study.layout.model_file).eval()
        return ("model", "study", network, model_signature(network), "model")
    except Exception as e:
        logger.warning(f"MLflow: the final model is not logged as an MLflow model ({first_line(e)})")
        return None


class MLflowStudyHandler(MLflowRunCalls):
    """Log a :class:`~monai_im.selftrain.SelfTrainingStudy` to MLflow, without ever stopping it.

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
        self.own_store = self.tracking_uri == self.default_uri(self.output_dir)
        self.stored_tracking_uri = stored_uri(self.tracking_uri, self.output_dir)
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
        self.queue = CallQueue(self._send, self.tracking_uri, self.output_dir, retry_interval)
        self.hook_failed = False
        self._requested: set[str] = set()
        self._lock = threading.RLock()

    @staticmethod
    def default_uri(output_dir: Path) -> str:
        """The study folder's own sqlite store (see :func:`monai_im.handlers.mlflow_uri.own_store_uri`)."""
        return own_store_uri(output_dir)

    def attach(self, study: SelfTrainingStudy) -> None:
        """Check the tracking store (one line and exit if it cannot be used), then register with the study's
        events (:class:`monai_im.selftrain.events.StudyEvents`)."""
        from monai_im.selftrain.events import StudyEvents

        check_tracking_uri(self.tracking_uri, hint=self.uri_hint)
        for event, handler in (
            (StudyEvents.STUDY_STARTED, self.study_started),
            (StudyEvents.GENERATION_STARTED, self.generation_started),
            (StudyEvents.STUDENT_STARTED, self.student_started),
            (StudyEvents.STUDENT_FINISHED, self.student_finished),
            (StudyEvents.PSEUDO_LABELS_READY, self.pseudo_labels_ready),
            (StudyEvents.GENERATION_FINISHED, self.generation_finished),
            (StudyEvents.STUDY_FINISHED, self.study_finished),
        ):
            study.add_event_handler(event, handler)

    # ------------------------------------------------------------------ the queue
    @property
    def pending(self) -> deque[tuple]:
        """The tracking calls waiting for the store, oldest first."""
        return self.queue.pending

    @property
    def failing(self) -> bool:
        """Whether the store failed and has not answered since."""
        return self.queue.failing

    @property
    def refused(self) -> int:
        """How many calls the store refused (skipped)."""
        return self.queue.refused

    def submit(self, *calls: tuple, force: bool = False) -> bool:
        """Queue MLflow calls and send all the store takes, in order; never raises.

        Args:
            calls: ``(name, *args)`` tuples, each run by the method ``_call_<name>``.
            force: try now even if the store failed less than ``retry_interval`` seconds ago.

        Returns:
            whether the queue is empty afterwards.
        """
        with self._lock:  # epoch handlers of students trained concurrently call from several threads
            return self.queue.submit(*calls, force=force)

    def _log(self, key: str, metrics: Mapping[str, float] | None = None, step: int = 0) -> tuple:
        return ("log", key, dict(metrics or {}), None, step, int(time.time() * 1000))

    # ------------------------------------------------------------------ study hooks
    @_never_raises
    def study_started(self, study: SelfTrainingStudy) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        old = load_json(self.state_file) if self.state_file.is_file() else {}
        if getattr(study, "started_over", False):  # --overwrite: a new study gets new runs
            old = {}
        same_store = resolve_stored_uri(old.get("tracking_uri"), self.output_dir) == self.tracking_uri
        self.state = old if same_store and "runs" in old else {}
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
                logger.warning(f"MLflow: the datalist is not logged as a dataset ({first_line(e)})")
        desc = study_params(study.describe(), datalist or {})
        name = self.run_name or str(desc.get("method"))
        self.submit(("setup",), ("create", "study", None, name, desc, True, then))

    @_never_raises
    def generation_started(self, study: SelfTrainingStudy, generation: int) -> None:
        key = f"generation {generation}"
        if key not in self._requested:
            self._requested.add(key)
            params = {"generation": generation, "method": study.method.name}
            self.submit(("create", key, "study", key, params, True, ()))

    @_never_raises
    def student_started(self, study: SelfTrainingStudy, generation: int, index: int, trainer: Any) -> None:
        self.generation_started(study, generation)
        key = f"student {generation}.{index}"
        params = {"generation": generation, "student": index, "method": study.method.name}
        self._requested.add(key)
        resumed = int(getattr(trainer.state, "epoch", 0) or 0) > 0  # continues after an epoch checkpoint
        self.submit(("create", key, f"generation {generation}", f"student {index}", params, resumed, ()))

        def _log_epoch(engine: Any) -> None:
            row = dict(getattr(engine.state, "history_row", None) or {})
            epoch = int(row.pop("epoch", engine.state.epoch))
            self.submit(self._log(key, row, step=epoch))

        trainer.add_event_handler(Events.EPOCH_COMPLETED, _log_epoch)

    @_never_raises
    def student_finished(self, study: SelfTrainingStudy, result: StudentResult, resumed: bool) -> None:
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
        self,
        study: SelfTrainingStudy,
        generation: int,
        result: PseudoLabelResult,
        figure: Path | None,
        resumed: bool,
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
    def generation_finished(
        self, study: SelfTrainingStudy, summary: Mapping[str, Any], resumed: bool
    ) -> None:
        g = int(summary["generation"])
        if g in self.state["finished"]:
            return
        self.generation_started(study, g)
        key = f"generation {g}"
        metric = f"val_{study.key_metric_name}"
        metrics = {metric: summary[metric], **summary.get("test", {})}
        # how it stands: 1 when it scored below an earlier generation on validation (the final model
        # is the best generation's)
        metrics.update({k: summary[k] for k in ("below_best", "best_generation_so_far") if k in summary})
        pseudo = {f"pseudo_{k}": v for k, v in (summary.get("pseudo_labels") or {}).items()}
        calls = [
            self._log(key, {**metrics, **pseudo, "training_images": summary["training_images"]}),
            self._log("study", metrics, step=g),
            ("artifact", key, str(study.generation_dir(g) / "summary.json"), None),
        ]
        if self.log_checkpoints:
            calls.append(("artifact", key, str(_study_file(study, summary["checkpoint"])), "checkpoint"))
        self.submit(*calls, ("end", key, "FINISHED"), ("mark", "finished", g))

    @_never_raises
    def study_finished(self, study: SelfTrainingStudy, summaries: list[Mapping[str, Any]]) -> None:
        calls = [("artifact", "study", str(study.output_dir / "results.json"), None)]
        model = _final_model_call(study)
        calls += [model] if model is not None else []
        test_key = f"test_{study.key_metric_name}"
        values = [s.get("test", {}).get(test_key) for s in summaries]
        if len(summaries) > 1 and all(v is not None for v in values):
            try:
                from monai_im.visualize import plot_metric_over_generations

                path = plot_metric_over_generations(
                    {study.method.name: values},
                    study.output_dir / f"{test_key}_over_generations.png",
                    test_key,
                    higher_is_better=study.higher_is_better,
                )
                calls.append(("artifact", "study", str(path), "figures"))
            except Exception as e:
                logger.warning(f"MLflow: no {test_key} plot ({first_line(e)})")
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
            logger.info(f"the study's runs: {self.experiment_url()}")
        elif self.tracking_uri.startswith(("http:", "https:")):
            logger.info(f"the study's runs: {self.experiment_url(self.tracking_uri.rstrip('/'))}")

    def experiment_url(self, ui: str = "http://127.0.0.1:5000") -> str:
        """The runs of the study's experiment in the MLflow UI at ``ui`` (``mlflow ui``'s default address)."""
        return f"{ui}/#/experiments/{self.state.get('experiment_id')}/runs"
