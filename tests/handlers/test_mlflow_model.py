"""The final model of a tracked study is an MLflow model of the study run, and the end log links to its runs."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import mlflow.pytorch
import torch
from mlflow import MlflowClient
from mlflow.models import Model

from monai_im.handlers import MLflowStudyHandler
from monai_im.selftrain import load_weights
from monai_im.selftrain.student import build_network


def test_the_final_model_is_logged_as_an_mlflow_model(make_study, tiny_data, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "study"
    handler = MLflowStudyHandler(out)
    study = make_study(tiny_data, out, num_generations=0, handlers=[handler])
    with caplog.at_level(logging.INFO, logger="monai_im"):
        study.run()
    assert not handler.pending and handler.refused == 0

    client = MlflowClient(handler.tracking_uri)
    exp_id = handler.state["experiment_id"]
    run_id = handler.run_id("study")
    models = client.search_logged_models(experiment_ids=[exp_id])
    assert [m.source_run_id for m in models] == [run_id]
    assert [o.model_id for o in client.get_run(run_id).outputs.model_outputs] == [models[0].model_id]

    logged = mlflow.pytorch.load_model(models[0].artifact_location)
    # the study's model.pt in a plain fp32 network (the study's own runs inference at its run settings' precision)
    expected = load_weights(build_network(study.network), study.layout.model_file).eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(logged.eval()(x), expected(x), atol=1e-6)
    folder = Path(url2pathname(urlparse(models[0].artifact_location).path))
    signature = Model.load(folder / "MLmodel").signature
    assert signature is not None and signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 3, 32, 32)

    assert f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs" in caplog.text
    assert "mlflow ui --backend-store-uri" in caplog.text


def test_a_model_that_cannot_be_logged_is_a_warning(make_study, tiny_data, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "study"
    handler = MLflowStudyHandler(out)
    study = make_study(tiny_data, out, num_generations=0, handlers=[handler])

    def refuse(*args, **kwargs):
        raise RuntimeError("no model today")

    monkeypatch.setattr(mlflow.pytorch, "log_model", refuse)  # the model's own failure, not the store's
    with caplog.at_level(logging.INFO, logger="monai_im"):
        study.run()
    assert "the final model is not logged as an MLflow model (no model today)" in caplog.text
    client = MlflowClient(handler.tracking_uri)
    assert not handler.pending and client.get_run(handler.run_id("study")).info.status == "FINISHED"
    assert not client.search_logged_models(experiment_ids=[handler.state["experiment_id"]])
