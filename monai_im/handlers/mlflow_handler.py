"""MLflow tracking of a self-training study: one parent run, a nested run per generation and per student.

Layout in the MLflow UI::

    <run_name>                      parent: study params; test/val metrics with step = generation;
    ├── generation 0                params generation, method; val_<key>, test_<metric>; checkpoint
    │   ├── student 0               train_loss, val_<metric> per epoch
    │   └── ...
    ├── generation 1                + pseudo_<stat> (IM fraction, images kept), IM figure
    └── ...

Metric names are the same for every method (``val_<key>``, ``test_<metric>``, ``pseudo_<stat>``),
so runs of different methods compare side by side. The store defaults to a sqlite database under
the study's output folder; ``MLFLOW_TRACKING_URI`` or ``tracking_uri`` points at a shared server.
The handler only watches the study; a study resumed after an interruption continues the same runs.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Events

from monai_im.io import atomic_write_json, load_json

__all__ = ["MLflowStudyHandler", "find_bundle_config"]

logger = logging.getLogger("monai_im")


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


class MLflowStudyHandler:
    """Log a :class:`~monai_im.engines.SelfTrainingStudy` to MLflow.

    Args:
        output_dir: the study's output folder; holds the default sqlite store (``mlflow.db``), the
            artifact folder (``mlartifacts``) and the handler's resume state (``mlflow_runs.json``).
        tracking_uri: an MLflow tracking URI; default ``MLFLOW_TRACKING_URI`` if set, else the sqlite store.
        experiment_name: the MLflow experiment.
        run_name: the parent run's name (default: ``<method>``).
        tags: extra tags for the parent run.
        log_checkpoints: log the best checkpoint of every generation as an artifact.
        log_config: log the executed bundle config as an artifact.
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
    ) -> None:
        self.output_dir = Path(output_dir)
        self.tracking_uri = (
            tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or self.default_uri(self.output_dir)
        )
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.tags = {k: str(v) for k, v in (tags or {}).items()}
        self.log_checkpoints = log_checkpoints
        self.log_config = log_config
        self.state_file = self.output_dir / "mlflow_runs.json"
        self.state: dict[str, Any] = {}
        self.client: Any = None
        self.student_runs: dict[tuple[int, int], str] = {}

    @staticmethod
    def default_uri(output_dir: Path) -> str:
        return f"sqlite:///{(Path(output_dir).resolve() / 'mlflow.db').as_posix()}"

    def attach(self, study: Any) -> None:
        """Register with a study (MONAI handler convention)."""
        study.add_observer(self)

    # ------------------------------------------------------------------ helpers
    def _save(self) -> None:
        atomic_write_json(self.state_file, self.state)

    def _run_alive(self, run_id: str | None) -> bool:
        if not run_id:
            return False
        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except Exception:  # a run deleted from the store, or another store
            return False

    def _child(self, parent: str, name: str, params: Mapping[str, Any]) -> str:
        run = self.client.create_run(
            self.state["experiment_id"], run_name=name, tags={"mlflow.parentRunId": parent, **self.tags}
        )
        self._log(run.info.run_id, params=params)
        return run.info.run_id

    def _log(
        self,
        run_id: str,
        metrics: Mapping[str, float] | None = None,
        params: Mapping[str, Any] | None = None,
        step: int = 0,
    ) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        ms = [Metric(k, float(v), now, step) for k, v in (metrics or {}).items() if v is not None and v == v]
        ps = [Param(k, _param_value(v)) for k, v in (params or {}).items()]
        if ms or ps:
            self.client.log_batch(run_id, metrics=ms, params=ps)

    # ------------------------------------------------------------------ study hooks
    def study_started(self, study: Any) -> None:
        from mlflow import MlflowClient

        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        old = load_json(self.state_file) if self.state_file.is_file() else {}
        self.state = old if old.get("tracking_uri") == self.tracking_uri else {}
        exp = self.client.get_experiment_by_name(self.experiment_name)
        if exp is None:
            local = self.tracking_uri.startswith("sqlite:") or self.tracking_uri.startswith("file:")
            location = (self.output_dir.resolve() / "mlartifacts").as_uri() if local else None
            exp_id = self.client.create_experiment(self.experiment_name, artifact_location=location)
        else:
            exp_id = exp.experiment_id
        if self.state.get("experiment_id") != exp_id:
            self.state = {}
        self.state.update(tracking_uri=self.tracking_uri, experiment_id=exp_id)
        if self._run_alive(self.state.get("parent")):
            self.client.update_run(self.state["parent"], status="RUNNING")
            for stale in self.state.pop("open_students", []):
                if self._run_alive(stale):
                    self.client.set_terminated(stale, "KILLED")
            logger.info(f"MLflow: continuing run {self.state['parent']} in {self.tracking_uri}")
        else:
            desc = study.describe()
            run = self.client.create_run(
                exp_id, run_name=self.run_name or str(desc.get("method")), tags=self.tags
            )
            self.state = {
                "tracking_uri": self.tracking_uri,
                "experiment_id": exp_id,
                "parent": run.info.run_id,
                "generations": {},
                "finished": [],
                "pseudo_logged": [],
            }
            self._log(run.info.run_id, params=desc)
            if self.log_config:
                config = find_bundle_config()
                if config is not None:
                    self.client.log_dict(run.info.run_id, config, "config/executed_config.json")
        self.state.setdefault("open_students", [])
        self._save()

    def generation_started(self, study: Any, generation: int) -> None:
        key = str(generation)
        if not self._run_alive(self.state["generations"].get(key)):
            self.state["generations"][key] = self._child(
                self.state["parent"],
                f"generation {generation}",
                {"generation": generation, "method": study.strategy.name},
            )
            self._save()

    def student_started(self, study: Any, generation: int, index: int, trainer: Any) -> None:
        self.generation_started(study, generation)
        run_id = self._child(
            self.state["generations"][str(generation)],
            f"student {index}",
            {"generation": generation, "student": index, "method": study.strategy.name},
        )
        self.student_runs[(generation, index)] = run_id
        self.state["open_students"].append(run_id)
        self._save()

        def _log_epoch(engine: Any) -> None:
            row = dict(getattr(engine.state, "history_row", None) or {})
            epoch = int(row.pop("epoch", engine.state.epoch))
            self._log(run_id, metrics=row, step=epoch)

        trainer.add_event_handler(Events.EPOCH_COMPLETED, _log_epoch)

    def student_finished(self, study: Any, result: Any, resumed: bool) -> None:
        run_id = self.student_runs.pop((result.generation, result.index), None)
        if run_id is None:
            return
        key = f"val_{study.key_metric_name}"
        self._log(run_id, metrics={f"best_{key}": result.best_metric, "best_epoch": result.best_epoch})
        self.client.set_terminated(run_id, "FINISHED")
        self._log(
            self.state["generations"][str(result.generation)],
            metrics={f"student_{key}": result.best_metric},
            step=result.index,
        )
        self.state["open_students"] = [r for r in self.state["open_students"] if r != run_id]
        self._save()

    def pseudo_labels_ready(
        self, study: Any, generation: int, result: Any, figure: Path | None, resumed: bool
    ) -> None:
        if generation in self.state["pseudo_logged"]:
            return
        self.generation_started(study, generation)
        gen_run = self.state["generations"][str(generation)]
        metrics = {f"pseudo_{k}": v for k, v in result.stats.items()}
        self._log(gen_run, metrics=metrics)
        self._log(self.state["parent"], metrics=metrics, step=generation)
        if result.output_dir and (Path(result.output_dir) / "stats.json").is_file():
            self.client.log_artifact(gen_run, str(Path(result.output_dir) / "stats.json"), "pseudo_labels")
        if figure is not None and Path(figure).is_file():
            self.client.log_artifact(gen_run, str(figure), "figures")
            self.client.log_artifact(self.state["parent"], str(figure), f"figures/generation_{generation}")
        self.state["pseudo_logged"].append(generation)
        self._save()

    def generation_finished(self, study: Any, summary: Mapping[str, Any], resumed: bool) -> None:
        g = int(summary["generation"])
        if g in self.state["finished"]:
            return
        self.generation_started(study, g)
        gen_run = self.state["generations"][str(g)]
        key = f"val_{study.key_metric_name}"
        metrics = {key: summary[key], **summary.get("test", {})}
        pseudo = {f"pseudo_{k}": v for k, v in (summary.get("pseudo_labels") or {}).items()}
        self._log(gen_run, metrics={**metrics, **pseudo, "training_images": summary["training_images"]})
        self._log(self.state["parent"], metrics=metrics, step=g)
        gdir = study.generation_dir(g)
        if (gdir / "summary.json").is_file():
            self.client.log_artifact(gen_run, str(gdir / "summary.json"))
        if self.log_checkpoints and Path(summary["checkpoint"]).is_file():
            self.client.log_artifact(gen_run, summary["checkpoint"], "checkpoint")
        self.client.set_terminated(gen_run, "FINISHED")
        self.state["finished"].append(g)
        self._save()

    def study_finished(self, study: Any, summaries: list[Mapping[str, Any]]) -> None:
        parent = self.state["parent"]
        results = study.output_dir / "results.json"
        if results.is_file():
            self.client.log_artifact(parent, str(results))
        test_key = f"test_{study.key_metric_name}"
        values = [s.get("test", {}).get(test_key) for s in summaries]
        if len(summaries) > 1 and all(v is not None for v in values):
            from monai_im.visualize import plot_metric_over_generations

            path = plot_metric_over_generations(
                {study.strategy.name: values},
                study.output_dir / f"{test_key}_over_generations.png",
                test_key,
                higher_is_better=study.higher_is_better,
            )
            self.client.log_artifact(parent, str(path), "figures")
        self.client.set_terminated(parent, "FINISHED")
        self._save()
        logger.info(f"MLflow: run {parent} in {self.tracking_uri}")
        if self.tracking_uri.startswith("sqlite:"):
            logger.info(f"compare runs with: mlflow ui --backend-store-uri {self.tracking_uri}")
