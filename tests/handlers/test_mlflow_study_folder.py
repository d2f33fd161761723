"""Tracked studies in real study folders: a relative ``output_dir`` logs its checkpoints, and a copied study
folder tracks into its own store and artifact folder, never into the folder it was copied from."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from mlflow import MlflowClient

from monai_im.handlers import MLflowStudyHandler
from monai_im.handlers.mlflow_uri import OWN_STORE


def _tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _tracked_run(make_study, data: Path, output_dir: str, generations: int) -> MLflowStudyHandler:
    handler = MLflowStudyHandler(output_dir)
    make_study(data, output_dir, num_generations=generations, handlers=[handler]).run()
    assert not handler.pending and handler.refused == 0
    return handler


def _artifact_files(client: MlflowClient, run_id: str, path: str) -> list[Path]:
    """The files of a run's artifact folder ``path``, where the store keeps them."""
    root = urlparse(client.get_run(run_id).info.artifact_uri)
    assert root.scheme == "file"
    files = [Path(url2pathname(root.path)) / a.path for a in client.list_artifacts(run_id, path)]
    assert files and all(f.is_file() for f in files)
    return files


def test_a_copied_study_folder_tracks_into_itself(make_study, tiny_data, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # output_dir relative, as in every documented command
    first = _tracked_run(make_study, tiny_data, "runs/study", generations=0)
    state = json.loads(Path("runs/study/mlflow_runs.json").read_text())
    assert state["tracking_uri"] == OWN_STORE, "the own store is recorded relative to the study folder"

    client = MlflowClient(first.tracking_uri)
    gen0 = first.run_id("generation 0")
    checkpoints = [a.path for a in client.list_artifacts(gen0, "checkpoint")]
    assert checkpoints == ["checkpoint/model.pt"], "a relative output_dir logs the best checkpoint"

    original, copy = tmp_path / "runs" / "study", tmp_path / "runs" / "copy"
    shutil.copytree(original, copy)
    before = _tree(original)
    default_location = client.get_experiment("0").artifact_location

    extended = _tracked_run(make_study, tiny_data, "runs/copy", generations=1)  # one more generation
    assert _tree(original) == before, "the copy wrote into the original folder"

    client = MlflowClient(extended.tracking_uri)
    assert extended.tracking_uri.endswith("/runs/copy/mlflow.db")
    assert extended.run_id("study") == first.run_id("study"), "the copy continues its own copy of the run"
    own_artifacts = (copy / "mlartifacts").resolve()
    experiment = client.get_experiment(extended.state["experiment_id"])
    assert experiment.artifact_location == own_artifacts.as_uri()
    assert client.get_experiment("0").artifact_location == default_location, "MLflow's default untouched"
    for key in ("study", "generation 0", "generation 1"):
        assert client.get_run(extended.run_id(key)).info.artifact_uri.startswith(own_artifacts.as_uri())
    new_checkpoint = _artifact_files(client, extended.run_id("generation 1"), "checkpoint")
    assert len(new_checkpoint) == 1 and new_checkpoint[0].resolve().is_relative_to(own_artifacts)
    old_checkpoint = _artifact_files(client, gen0, "checkpoint")  # logged before the copy, copied with it
    assert old_checkpoint[0].resolve().is_relative_to(own_artifacts)
