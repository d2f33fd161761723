"""The real flare22_im bundle, end to end on tiny synthetic CT volumes, through the monai.bundle API."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles/flare22_im/configs"
TRAIN, DEMO = str(CONFIGS / "train.json"), str(CONFIGS / "demo.json")


def tiny(dataset_dir: Path, output_dir: Path, **extra) -> dict:
    return {
        "dataset_dir": str(dataset_dir),
        "output_dir": str(output_dir),
        "demo_num_train": 6,
        "demo_num_val": 2,
        "demo_num_test": 2,
        "demo_shape": [32, 32, 32],
        "labeled_fraction": 0.34,
        "patch_size": [32, 32, 32],
        "epochs": 2,
        "min_steps": 0,  # the demo's step floor would make this tiny run long
        "val_interval": 1,
        "num_students": 2,
        "num_teachers": 2,
        "num_generations": 1,
        "min_foreground": 0,
        "progress": False,
        **extra,
    }


def run(config_file, overrides: dict) -> None:
    from monai.bundle import run as bundle_run

    bundle_run(config_file=config_file, logging_file=False, **overrides)


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("flare")
    data, out = root / "data", root / "run"
    run([TRAIN, DEMO], tiny(data, out))
    return data, out


def test_a_tiny_3d_study_runs_from_the_bundle_with_nifti_pseudo_labels(finished_study):
    data, out = finished_study
    results = json.loads((out / "results.json").read_text())
    assert [g["generation"] for g in results["generations"]] == [0, 1]
    test = results["generations"][1]["test"]
    assert {"test_dice", "test_nsd", "test_dice_liver", "test_nsd_left_kidney"} <= set(test)
    rows = json.loads((out / "generation_1" / "pseudo_labels" / "datalist.json").read_text())[
        "pseudo_labeled"
    ]
    assert rows and all(r["label"].endswith(".nii.gz") and r["im"].endswith(".nii.gz") for r in rows)
    datalist = json.loads((data / "datalist.json").read_text())
    source = nib.load(data / datalist["unlabeled"][rows[0]["source"]]["image"])
    label = nib.load(out / "generation_1" / "pseudo_labels" / rows[0]["label"])
    # the demo is stored at the bundle's spacing: the pseudo-label lies on its CT, voxel for voxel
    assert label.shape == source.shape
    np.testing.assert_allclose(nib.as_closest_canonical(source).affine, label.affine, atol=1e-4)
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("flare22_im_demo")
    study = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags][0]
    assert {"test_dice", "test_nsd"} <= set(study.data.metrics)


def test_inference_writes_masks_on_the_grid_of_each_input_volume(finished_study, tmp_path):
    data, out = finished_study
    inputs = tmp_path / "in"
    inputs.mkdir()
    datalist = json.loads((data / "datalist.json").read_text())
    for item in datalist["test"]:
        src = data / item["image"]
        (inputs / src.name).write_bytes(src.read_bytes())
    masks = tmp_path / "masks"
    run(
        [TRAIN, str(CONFIGS / "inference.json")],
        {
            "input_dir": str(inputs),
            "output_dir": str(masks),
            "checkpoint": str(out / "model.pt"),
            "patch_size": [32, 32, 32],
            "progress": False,
        },
    )
    for src in sorted(inputs.iterdir()):
        mask = nib.load(masks / src.name.replace(".nii.gz", "_mask.nii.gz"))
        image = nib.load(src)
        assert mask.shape == image.shape
        np.testing.assert_allclose(mask.affine, image.affine, atol=1e-4)
        assert set(np.unique(np.asarray(mask.dataobj))) <= set(range(14))


def _own_volumes(root: Path, n: int, sizes: bool = False) -> None:
    """``n`` tiny CT volumes (LPS affine, 1.5 mm) with 3 box organs each, in a datalist; with ``sizes``
    the volumes differ in their number of slices, as real scans do."""
    rng = np.random.default_rng(0)
    affine = np.diag([-1.5, -1.5, 2.0, 1.0])
    (root / "ct").mkdir(parents=True)
    entries = []
    for i in range(n):
        shape = (24, 24, 16 + (2 * i if sizes else 0))
        hu = rng.normal(40, 10, size=shape).astype(np.int16)
        label = np.zeros(shape, np.uint8)
        for c in (1, 2, 3):
            x = 2 + 7 * (c - 1) + int(rng.integers(0, 2))
            label[x : x + 6, 6:18, 3:13] = c
            hu[label == c] = 100 * c
        nib.save(nib.Nifti1Image(hu, affine), root / "ct" / f"case{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "ct" / f"case{i}_seg.nii.gz")
        entries.append({"image": f"ct/case{i}.nii.gz", "label": f"ct/case{i}_seg.nii.gz"})
    datalist = {
        "labeled": entries[:2],
        "validation": entries[2:3],
        "test": entries[3:4],
        "unlabeled": [{"image": e["image"]} for e in entries[4:]],
    }
    (root / "datalist.json").write_text(json.dumps(datalist))


def test_own_volumes_with_another_class_count_run_unchanged(tmp_path):
    _own_volumes(tmp_path / "mine", 6)
    out = tmp_path / "run"
    run(
        [TRAIN],
        {
            "dataset_dir": str(tmp_path / "mine"),
            "output_dir": str(out),
            "num_classes": 4,
            "method": "im",
            "pixdim": [3.0, 3.0, 2.0],
            "patch_size": [16, 16, 16],
            "epochs": 1,
            "num_students": 2,
            "num_teachers": 2,
            "num_generations": 1,
            "min_foreground": 0,
            "progress": False,
        },
    )
    test = json.loads((out / "results.json").read_text())["generations"][-1]["test"]
    # the user's own classes: no FLARE22 organ names for a dataset that does not name its labels
    assert {"test_dice_class_1", "test_dice_class_2", "test_dice_class_3"} <= set(test)
    assert not any("liver" in k or "pancreas" in k for k in test)
    assert torch.load(out / "model.pt", weights_only=True)["head.weight"].shape[0] == 4


def test_a_label_with_an_organ_index_beyond_num_classes_stops_before_training(tmp_path, capfd):
    _own_volumes(tmp_path / "mine", 5)
    with pytest.raises(SystemExit):
        run(
            [TRAIN],
            {
                "dataset_dir": str(tmp_path / "mine"),
                "output_dir": str(tmp_path / "run"),
                "num_classes": 3,
                "progress": False,
            },
        )
    assert (
        "case0_seg.nii.gz: class map holds values {0, 1, 2, 3}; classes must be integers 0..2"
        in capfd.readouterr().err
    )
    assert not (tmp_path / "run" / "generation_0").exists()


def test_the_model_zoo_checks_pass_on_the_3d_bundle():
    from monai_im.bundle import check_bundle

    done = check_bundle(REPO / "bundles/flare22_im")
    assert done == ["verify_metadata", "verify_net_in_out", "ckpt_export", "check_properties (inference)"]


def test_evaluation_writes_per_organ_metrics_of_a_checkpoint(finished_study, tmp_path):
    data, out = finished_study
    run(
        [TRAIN, str(CONFIGS / "evaluate.json")],
        {
            "dataset_dir": str(data),
            "output_dir": str(tmp_path),
            "checkpoint": str(out / "model.pt"),
            "patch_size": [32, 32, 32],
            "progress": False,
        },
    )
    summary = (tmp_path / "eval_test" / "test_dice_summary.csv").read_text()
    assert "mean" in summary
    raw = (tmp_path / "eval_test" / "test_dice_raw.csv").read_text().strip().splitlines()
    assert len(raw) == 1 + len(json.loads((data / "datalist.json").read_text())["test"])


def test_suggestions_rank_the_unlabeled_volumes_of_a_finished_study(finished_study):
    data, out = finished_study
    run([TRAIN, DEMO, str(CONFIGS / "suggest.json")], tiny(data, out))
    rows = (out / "suggestions" / "suggestions.csv").read_text().strip().splitlines()
    unlabeled = json.loads((data / "datalist.json").read_text())["unlabeled"]
    assert len(rows) == 1 + len(unlabeled) and (out / "suggestions" / "top_k.png").is_file()


@pytest.mark.parametrize("method", ["fixmatch_im", "cps_im"])
def test_continuous_methods_train_on_patches_of_unlabeled_volumes_of_different_sizes(method, tmp_path):
    _own_volumes(tmp_path / "mine", 7, sizes=True)
    out = tmp_path / "run"
    run(
        [TRAIN],
        {
            "dataset_dir": str(tmp_path / "mine"),
            "output_dir": str(out),
            "num_classes": 4,
            "method": method,
            "pixdim": [3.0, 3.0, 2.0],
            "patch_size": [16, 16, 16],
            "epochs": 1,
            "num_students": 1,
            "num_teachers": 1,
            "progress": False,
        },
    )
    history = json.loads((out / "generation_0" / "student_0" / "result.json").read_text())["history"]
    assert "unsupervised_loss" in history[-1] and 0 <= history[-1]["used_fraction"] <= 1
