"""The MLflow calls of :class:`monai_im.handlers.MLflowStudyHandler`, run in queue order: each queued
``(name, *args)`` tuple is sent by the method ``_call_<name>`` of :class:`MLflowRunCalls`, which also keeps
the run ids and the resume state (``mlflow_runs.json``)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from monai_im.handlers.mlflow_store import (
    CallQueue,
    NoRunError,
    ensure_experiment,
    first_line,
    log_values,
    run_is_active,
)
from monai_im.handlers.mlflow_uri import ARTIFACT_FOLDER, repoint_artifacts
from monai_im.io import atomic_write_json

__all__ = ["MLflowRunCalls", "model_signature"]

logger = logging.getLogger("monai_im")


def model_signature(network: Any) -> Any:
    """The MLflow signature of a segmentation network: one input batch of its first convolution's channels,
    with side 32 in 2D and 16 in 3D (sizes IMUNet accepts), and the output it gives on a random one."""
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    conv = next(m for m in network.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)))
    dims = conv.weight.dim() - 2
    sample = torch.rand(1, conv.in_channels, *([32 if dims == 2 else 16] * dims), generator=torch.Generator())
    with torch.no_grad():
        output = network.eval()(sample)
    return infer_signature(sample.numpy().astype(np.float32), output.float().numpy())


class MLflowRunCalls:
    """The runs of a tracked study in an MLflow store, and the calls that create and fill them.

    Attributes a subclass sets: ``tracking_uri``, ``stored_tracking_uri`` (as the resume state records it),
    ``own_store`` (whether the store is the study folder's own), ``experiment_name``, ``output_dir`` (a Path), ``tags``,
    ``state`` (the resume state), ``state_file``, ``client`` (None until first used) and ``queue`` (the
    :class:`~monai_im.handlers.mlflow_store.CallQueue` that sends the calls).
    """

    tracking_uri: str
    stored_tracking_uri: str
    own_store: bool
    experiment_name: str
    output_dir: Path
    tags: dict[str, str]
    state: dict[str, Any]
    state_file: Path
    client: Any
    queue: CallQueue

    def _send(self, call: tuple) -> None:
        getattr(self, f"_call_{call[0]}")(*call[1:])

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
            raise NoRunError(key)
        return run_id

    def _alive(self, run_id: str | None) -> bool:
        return bool(run_id) and run_is_active(self._client(), run_id)

    # ------------------------------------------------------------------ calls (run in queue order)
    def _call_setup(self) -> None:
        """Find or create the experiment (model-training kind); continue the parent run if it is alive.

        The study folder's own store, copied or moved with the folder, first gets its artifact locations
        pointed into the folder (:func:`~monai_im.handlers.mlflow_uri.repoint_artifacts`)."""
        if self.own_store:
            repoint_artifacts(self.output_dir)
        client = self._client()
        local = urlparse(self.tracking_uri).scheme in ("sqlite", "file", "")
        location = (self.output_dir.resolve() / ARTIFACT_FOLDER).as_uri() if local else None
        exp_id = ensure_experiment(client, self.experiment_name, artifact_location=location)
        parent = self.run_id("study") if self.state.get("experiment_id") == exp_id else None
        if self._alive(parent):
            client.update_run(parent, status="RUNNING")
            for stale in self.state.get("open_students", []):
                if self._alive(stale):
                    client.set_terminated(stale, "KILLED")
            logger.info(f"MLflow: continuing run {parent} in {self.tracking_uri}")
        else:
            self.state.update(runs={}, finished=[], pseudo_logged=[])
        self.state.update(tracking_uri=self.stored_tracking_uri, experiment_id=exp_id, open_students=[])
        self._save()

    def _call_create(
        self, key: str, parent: str | None, name: str, params: Mapping[str, Any], reuse: bool, then: Sequence
    ) -> None:
        """Create the run ``key`` (unless ``reuse`` and it is alive), then log its params and ``then``."""
        if reuse and self._alive(self.run_id(key)):
            if key.startswith("student"):  # a student resumed from its epoch checkpoint goes on in its run
                self._client().update_run(self._id(key), status="RUNNING")
                self.state["open_students"].append(self._id(key))
                self._save()
            return
        tags = {**self.tags, **({"mlflow.parentRunId": self._id(parent)} if parent else {})}
        run = self._client().create_run(self.state["experiment_id"], run_name=name, tags=tags)
        self.state["runs"][key] = run.info.run_id
        if key.startswith("student"):
            self.state["open_students"].append(run.info.run_id)
        self._save()
        self.queue.put_next([("log", key, None, params, 0, 0), *then])

    def _call_log(
        self,
        key: str,
        metrics: Mapping[str, float] | None,
        params: Mapping[str, Any] | None,
        step: int,
        ms: int,
    ) -> None:
        log_values(self._client(), self._id(key), metrics, params, step, ms)

    def _call_artifact(self, key: str, path: str, artifact_path: str | None) -> None:
        if not Path(path).is_file():
            logger.warning(
                f"MLflow: {path} does not exist; it is missing from the artifacts of the {key} run"
            )
            return
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

    def _call_model(self, key: str, network: Any, signature: Any, name: str) -> None:
        """Log ``network`` as an MLflow model (pytorch flavour, pickled) of the run ``key``.

        A store that cannot be reached (a connection error, a server busy or down) makes the call wait in
        the queue; any other failure is a warning, and the model stays in the study folder."""
        import inspect

        import mlflow.pytorch
        import monai
        import torch
        from mlflow.exceptions import MlflowException
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri  # log_model takes no client

        accepted = inspect.signature(mlflow.pytorch.log_model).parameters
        kwargs: dict[str, Any] = {"name" if "name" in accepted else "artifact_path": name}
        if (
            "serialization_format" in accepted
        ):  # the module itself: loads as a network, needs no example input
            kwargs["serialization_format"] = "pickle"
        try:
            if (
                "model_id" in accepted
            ):  # MLflow 3: the model belongs to the run's experiment, not the default one
                run = self._client().get_run(self._id(key))
                created = self._client().create_logged_model(run.info.experiment_id, name, run.info.run_id)
                kwargs["model_id"] = created.model_id
            with _use_tracking_uri(self.tracking_uri):
                info = mlflow.pytorch.log_model(
                    network,
                    signature=signature,
                    run_id=self._id(key),
                    # given, not inferred: inferring loads the model in a new process
                    pip_requirements=[
                        f"torch=={torch.__version__.split('+')[0]}",
                        f"monai=={monai.__version__}",
                    ],
                    **kwargs,
                )
        except NoRunError:
            raise
        except Exception as e:
            unreachable = isinstance(e, MlflowException) and e.get_http_status_code() in (
                408,
                429,
                502,
                503,
                504,
            )
            if unreachable or isinstance(e, OSError):
                raise
            logger.warning(f"MLflow: the final model is not logged as an MLflow model ({first_line(e)})")
            if "model_id" in kwargs:
                with contextlib.suppress(Exception):
                    self._client().finalize_logged_model(kwargs["model_id"], "FAILED")
            return
        logger.info(f"MLflow: final model logged as {info.model_uri}")
