"""The real hela_im bundle (multi-label), end to end on tiny synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
TRAIN = str(REPO / "bundles/hela_im/configs/train.json")
DEMO = str(REPO / "bundles/hela_im/configs/demo.json")


@pytest.mark.slow
def test_multilabel_study_tracks_cell_count_error(hela_tiny, tmp_path):
    from monai.bundle import run

    out = tmp_path / "run"
    run(
        config_file=[TRAIN, DEMO],
        logging_file=False,
        dataset_dir=hela_tiny,
        output_dir=str(out),
        image_size=[32, 32],
        epochs=2,
        min_steps=0,  # the demo's step floor would make this tiny run long
        batch_size=4,
        num_students=2,
        num_teachers=2,
        num_generations=1,
        progress=False,
        min_foreground=0,
        foreground_exceeds_im=False,
    )
    summaries = [json.loads((out / f"generation_{g}" / "summary.json").read_text()) for g in (0, 1)]
    for s in summaries:
        assert {"test_mcce", "test_miou", "test_position_iou"} <= set(s["test"])
        assert s["test"]["test_mcce"] >= 0
        # lower is better: the best student has the smallest validation MCCE
        assert s["val_mcce"] == min(st["best_metric"] for st in s["students"])
    base = out / "generation_1" / "pseudo_labels"
    rows = json.loads((base / "datalist.json").read_text())["pseudo_labeled"]
    assert rows
    from monai_im.transforms import image_segmentation_transforms

    load = image_segmentation_transforms((32, 32), num_channels=1, mode="multilabel", label_channels=3)
    for row in rows:
        lab = np.array(Image.open(base / row["label"]))
        im = np.array(Image.open(base / row["im"])) > 127
        assert lab.shape == (32, 32, 3) and (lab[im] == 0).all()
        pair = load({"image": row["image"], "label": str(base / row["label"]), "im": str(base / row["im"])})
        assert (pair["image"][:, im.T] == 0).all(), "the IM is cut out of the image at load"
        assert (pair["label"][:, im.T] == 0).all()
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("hela_im_demo")
    parent = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    assert len(parent) == 1 and parent[0].data.params["method"] == "im"
    assert parent[0].data.params["mode"] == "multilabel"
    assert sorted(m.step for m in client.get_metric_history(parent[0].info.run_id, "test_mcce")) == [0, 1]


def test_run_settings_come_from_the_top_level_keys():
    import torch
    from monai.bundle import ConfigParser

    from monai_im.runtime import RunSettings

    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.update({"precision": "fp32", "inference_precision": "bf16", "compile": False, "device": "$'cpu'"})
    settings = parser.get_parsed_content("run_settings")
    assert settings == RunSettings(precision="fp32", inference_precision="bf16", channels_last=True)
    assert parser["study"]["run_settings"] == "@run_settings" and "amp" not in parser["study"]
    net = parser.get_parsed_content("network").eval()
    assert net.forward.settings is settings
    assert net(torch.rand(1, 1, 32, 32)).dtype == torch.float32
    parser.update({"reuse_cpu_memory": False})
    assert parser.get_parsed_content("run_settings", lazy=False).reuse_cpu_memory is False
