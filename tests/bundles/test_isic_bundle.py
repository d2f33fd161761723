"""The real isic_im bundle, end to end on tiny synthetic data, through the monai.bundle API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
TRAIN = str(REPO / "bundles/isic_im/configs/train.json")
DEMO = str(REPO / "bundles/isic_im/configs/demo.json")


def tiny_overrides(dataset_dir: str, output_dir: Path, **extra) -> dict:
    return {
        "dataset_dir": dataset_dir,
        "output_dir": str(output_dir),
        "image_size": [32, 32],
        "epochs": 3,
        "min_steps": 0,  # the demo's step floor would make these tiny runs long
        "batch_size": 4,
        "num_students": 2,
        "num_teachers": 2,
        "num_generations": 2,
        "progress": False,
        # accept every pseudo-label, so that the IM cut-outs of every image can be checked (as the bundle's
        # method defaults: methods without an acceptance rule, such as ldt, do not take them)
        "method_defaults#min_foreground": 0,
        "method_defaults#foreground_exceeds_im": False,
        **extra,
    }


def run_bundle(overrides: dict) -> None:
    from monai.bundle import run

    run(config_file=[TRAIN, DEMO], logging_file=False, **overrides)


def mlflow_runs(output_dir: Path, experiment: str = "isic_im_demo"):
    client = MlflowClient(f"sqlite:///{output_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], max_results=1000)


@pytest.mark.slow
def test_study_end_to_end_then_resume_after_interruption(isic_tiny, tmp_path, monkeypatch):
    import monai_im.selftrain.generation as generation_mod
    import monai_im.selftrain.pseudo_label as pl_mod

    out = tmp_path / "run"
    real_train = generation_mod.train_student
    trained: list[tuple[int, int]] = []

    def interrupted_train(**kwargs):
        if len(trained) == 3:  # the second student of generation 1
            raise KeyboardInterrupt
        trained.append((kwargs["generation"], kwargs["index"]))
        return real_train(**kwargs)

    monkeypatch.setattr(generation_mod, "train_student", interrupted_train)
    with pytest.raises(KeyboardInterrupt):
        run_bundle(tiny_overrides(isic_tiny, out))
    assert trained == [(0, 0), (0, 1), (1, 0)]
    pseudo_dir = out / "generation_1" / "pseudo_labels"
    assert (pseudo_dir / "datalist.json").is_file()
    first_pseudo_mtime = (pseudo_dir / "datalist.json").stat().st_mtime_ns

    # the same command again continues: finished students and pseudo-labels are reused
    resumed: list[tuple[int, int]] = []

    def counting_train(**kwargs):
        resumed.append((kwargs["generation"], kwargs["index"]))
        return real_train(**kwargs)

    labelling_calls = []
    real_call = pl_mod.PseudoLabeler.__call__

    def counting_call(self, teachers, items, transform, output_dir, **kw):
        labelling_calls.append(Path(output_dir).parent.name)
        return real_call(self, teachers, items, transform, output_dir, **kw)

    monkeypatch.setattr(generation_mod, "train_student", counting_train)
    monkeypatch.setattr(pl_mod.PseudoLabeler, "__call__", counting_call)
    run_bundle(tiny_overrides(isic_tiny, out))
    assert resumed == [(1, 1), (2, 0), (2, 1)]
    assert labelling_calls == ["generation_2"]
    assert (pseudo_dir / "datalist.json").stat().st_mtime_ns == first_pseudo_mtime

    # results on disk
    results = json.loads((out / "results.json").read_text())
    assert [g["generation"] for g in results["generations"]] == [0, 1, 2]
    assert all("test_iou" in g["test"] and "test_dice" in g["test"] for g in results["generations"])
    assert (out / "model.pt").is_file()

    # pseudo-labels carry the IM cut-outs: the label is 0 wherever the IM is set, and the training
    # transforms cut the IM out of the original image the row refers to
    from monai_im.transforms import image_segmentation_transforms

    unlabeled = json.loads((Path(isic_tiny) / "datalist.json").read_text())["unlabeled"]
    load = image_segmentation_transforms((32, 32), num_channels=3)
    cut_pixels = 0
    for gen in (1, 2):
        rows = json.loads((out / f"generation_{gen}" / "pseudo_labels" / "datalist.json").read_text())[
            "pseudo_labeled"
        ]
        assert rows, "every pseudo-label is accepted with the relaxed rule"
        for row in rows:
            base = out / f"generation_{gen}" / "pseudo_labels"
            im = np.array(Image.open(base / row["im"])) > 127
            lab = np.array(Image.open(base / row["label"]))
            assert lab.shape == im.shape == (32, 32)
            assert (lab[im] == 0).all() and set(np.unique(lab)) <= {0, 255}
            assert Path(row["image"]).name == Path(unlabeled[row["source"]]["image"]).name
            pair = load(
                {"image": row["image"], "label": str(base / row["label"]), "im": str(base / row["im"])}
            )
            assert (pair["image"][:, im.T] == 0).all(), "the IM is cut out of the image at load"
            cut_pixels += int(im.sum())
    assert cut_pixels > 0, "undertrained teachers disagree somewhere"

    # MLflow: one parent run (resumed, not duplicated), one run per generation, students nested
    client, runs = mlflow_runs(out)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    for key in (
        "method",
        "dataset",
        "labeled_fraction",
        "students",
        "teachers",
        "generations",
        "seed",
        "network_width",
        "epochs",
        "image_size",
    ):
        assert key in parent.data.params, key
    assert parent.data.params["method"] == "im" and parent.data.params["generations"] == "2"
    history = client.get_metric_history(parent.info.run_id, "test_iou")
    assert sorted(m.step for m in history) == [0, 1, 2]
    gens = {
        r.data.params["generation"]: r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert sorted(gens) == ["0", "1", "2"]
    for g, r in gens.items():
        assert {"val_iou", "test_iou", "test_dice"} <= set(r.data.metrics)
        assert r.info.status == "FINISHED"
        if g != "0":
            assert "pseudo_im_fraction" in r.data.metrics and "pseudo_images_kept" in r.data.metrics
            arts = {a.path for a in client.list_artifacts(r.info.run_id, "figures")}
            assert "figures/im_figure.png" in arts
        assert [a.path for a in client.list_artifacts(r.info.run_id, "checkpoint")] == ["checkpoint/model.pt"]
    students = [
        r for r in runs if r.data.tags.get("mlflow.parentRunId") in {x.info.run_id for x in gens.values()}
    ]
    finished = [r for r in students if r.info.status == "FINISHED"]
    assert len(finished) == 6 and all(
        "train_loss" in r.data.metrics and "val_iou" in r.data.metrics for r in finished
    )
    killed = [r for r in students if r.info.status != "FINISHED"]
    assert len(killed) <= 1  # the interrupted student's run is closed as KILLED on resume
    assert all(r.info.status == "KILLED" for r in killed)
    config = [a.path for a in client.list_artifacts(parent.info.run_id, "config")]
    assert config == ["config/executed_config.json"]


@pytest.mark.slow
def test_labeled_only_method_runs_generation_zero_only(isic_tiny, tmp_path):
    out = tmp_path / "ldt"
    run_bundle(tiny_overrides(isic_tiny, out, method="ldt", epochs=1, num_students=1, num_teachers=1))
    results = json.loads((out / "results.json").read_text())
    assert [g["generation"] for g in results["generations"]] == [0]
    assert results["study"]["method"] == "ldt"
    assert not (out / "generation_1").exists()


@pytest.mark.slow
def test_augmented_labeled_method_trains_on_ten_views_per_labeled_image(isic_tiny, tmp_path):
    out = tmp_path / "aldt"
    run_bundle(tiny_overrides(isic_tiny, out, method="aldt", epochs=1, num_students=1, num_teachers=1))
    results = json.loads((out / "results.json").read_text())
    labeled = len(json.loads((Path(isic_tiny) / "datalist.json").read_text())["labeled"])
    assert results["study"]["method"] == "aldt" and results["study"]["augmented_copies"] == 9
    assert results["generations"][0]["training_images"] == 10 * labeled


@pytest.mark.slow
def test_augmented_im_method_starts_from_ten_views_then_pseudo_labels(isic_tiny, tmp_path):
    out = tmp_path / "aim"
    run_bundle(tiny_overrides(isic_tiny, out, method="aim", epochs=1, num_generations=1))
    results = json.loads((out / "results.json").read_text())
    datalist = json.loads((Path(isic_tiny) / "datalist.json").read_text())
    labeled = len(datalist["labeled"])
    gen0, gen1 = results["generations"]
    assert results["study"]["method"] == "aim" and results["study"]["augmented_copies"] == 9
    assert gen0["training_images"] == 10 * labeled
    kept = gen1["pseudo_labels"]["images_kept"]
    assert kept == len(datalist["unlabeled"])  # the tiny overrides accept every pseudo-label
    assert gen1["training_images"] == labeled + kept


@pytest.mark.slow
def test_min_steps_gives_small_training_sets_more_epochs(isic_tiny, tmp_path):
    out = tmp_path / "ldt_min_steps"
    run_bundle(
        tiny_overrides(isic_tiny, out, method="ldt", epochs=1, min_steps=9, num_students=1, num_teachers=1)
    )
    labeled = len(json.loads((Path(isic_tiny) / "datalist.json").read_text())["labeled"])
    batches = labeled // 4 if labeled > 4 else 1  # batch 4, the last partial batch dropped
    expected_epochs = -(-9 // batches)
    assert expected_epochs > 1, "the floor must matter for this check"
    result = json.loads((out / "generation_0" / "student_0" / "result.json").read_text())
    assert len(result["history"]) == expected_epochs
    # validated about as often as with 1 epoch: at the last epoch only
    assert [row["epoch"] for row in result["history"] if "val_iou" in row] == [expected_epochs]
    results = json.loads((out / "results.json").read_text())
    assert results["study"]["min_steps"] == 9


def test_missing_dataset_stops_at_once_with_instructions(tmp_path):
    from monai.bundle import run

    with pytest.raises(SystemExit) as err:
        run(
            config_file=TRAIN,
            logging_file=False,
            dataset_dir=str(tmp_path / "nowhere"),
            output_dir=str(tmp_path / "o"),
        )
    message = str(err.value)
    assert "nowhere" in message and "python -m monai_im.datasets.prepare_isic2018 " in message
    assert "demo.json" in message and "data_scripts/" not in message  # a copied bundle has no data_scripts
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("inference_precision", ["auto", "fp32"])
def test_bundle_inference_runs_the_network_with_run_settings(tmp_path, monkeypatch, inference_precision):
    """inference.json's evaluator runs the network prepared by train.json's run_settings."""
    import torch
    from monai.bundle import run

    from monai_im.networks import IMUNet
    from monai_im.runtime import RunSettings

    seen: list[tuple] = []
    real_forward = IMUNet.forward

    def spy(self, x):
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        seen.append((self.training, dtype, x.is_contiguous(memory_format=torch.channels_last)))
        return real_forward(self, x)

    monkeypatch.setattr(IMUNet, "forward", spy)
    torch.manual_seed(0)
    checkpoint = tmp_path / "model.pt"
    torch.save(IMUNet(2, 3, 1, alpha=0.5).state_dict(), checkpoint)
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
        inputs / "a.png"
    )
    run(
        config_file=[TRAIN, str(REPO / "bundles/isic_im/configs/inference.json")],
        logging_file=False,
        input_dir=str(inputs),
        output_dir=str(tmp_path / "out"),
        checkpoint=str(checkpoint),
        image_size=[32, 32],
        inference_precision=inference_precision,
    )
    assert (tmp_path / "out" / "a_mask.png").is_file()
    expected = RunSettings(inference_precision=inference_precision).dtype("cpu", training=False)
    assert seen and all(s == (False, expected, True) for s in seen), seen
