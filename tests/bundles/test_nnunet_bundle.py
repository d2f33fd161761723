"""configs/export_nnunet.json of the bundles: a finished tiny study exported as an nnU-Net v2 raw dataset."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def _configs(bundle: str, *names: str) -> list[str]:
    return [str(REPO / "bundles" / bundle / "configs" / name) for name in names]


def _run(config_file: list[str], **overrides) -> None:
    from monai.bundle import run

    run(config_file=config_file, logging_file=False, **overrides)


def _pseudo_rows(study: Path) -> list[dict]:
    return json.loads((study / "generation_1" / "pseudo_labels" / "datalist.json").read_text())[
        "pseudo_labeled"
    ]


def test_flare22_exports_a_tiny_3d_study(tmp_path):
    data, study, raw = tmp_path / "data", tmp_path / "run", tmp_path / "nnUNet_raw"
    tiny = {
        "dataset_dir": str(data),
        "output_dir": str(study),
        "demo_num_train": 6,
        "demo_num_val": 2,
        "demo_num_test": 2,
        "demo_shape": [32, 32, 32],
        "labeled_fraction": 0.34,
        "patch_size": [32, 32, 32],
        "epochs": 2,
        "min_steps": 0,
        "val_interval": 1,
        "num_students": 2,
        "num_teachers": 2,
        "num_generations": 1,
        "min_foreground": 0,
        "progress": False,
    }
    _run(_configs("flare22_im", "train.json", "demo.json"), **tiny)
    results = (study / "results.json").read_bytes()
    _run(_configs("flare22_im", "train.json", "demo.json", "export_nnunet.json"), nnunet_dir=str(raw), **tiny)
    assert (study / "results.json").read_bytes() == results, "exporting must not train"
    folder = raw / "Dataset501_FlareIM"
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["labels"]["liver"] == 1 and meta["labels"]["ignore"] == 14 and len(meta["labels"]) == 15
    assert meta["channel_names"] == {"0": "CT"} and meta["file_ending"] == ".nii.gz"
    rows = _pseudo_rows(study)
    assert rows and meta["numTraining"] == 2 + len(rows)
    pseudo = study / "generation_1" / "pseudo_labels"
    for row in rows:  # the demo lies on the training grid: the pseudo-label voxel for voxel, ignore in the IM
        label = nib.load(folder / "labelsTr" / f"pseudo_{row['source']:04d}.nii.gz")
        image = nib.load(folder / "imagesTr" / f"pseudo_{row['source']:04d}_0000.nii.gz")
        assert label.shape == image.shape
        np.testing.assert_allclose(label.affine, image.affine)
        im = np.asarray(nib.load(pseudo / row["im"]).dataobj) > 0
        got = np.asarray(label.dataobj)
        assert np.all(got[im] == 14)
        np.testing.assert_array_equal(got[~im], np.asarray(nib.load(pseudo / row["label"]).dataobj)[~im])
    with pytest.raises(SystemExit, match="already exists"):
        _run(
            _configs("flare22_im", "train.json", "demo.json", "export_nnunet.json"),
            nnunet_dir=str(raw),
            **tiny,
        )


def test_isic_exports_a_tiny_2d_study(isic_tiny, tmp_path):
    study, raw = tmp_path / "study", tmp_path / "nnUNet_raw"
    tiny = {
        "dataset_dir": isic_tiny,
        "output_dir": str(study),
        "image_size": [32, 32],
        "alpha": 0.25,
        "epochs": 1,
        "min_steps": 0,
        "batch_size": 8,
        "num_students": 2,
        "num_teachers": 2,
        "num_generations": 1,
        "min_foreground": 0,
        "foreground_exceeds_im": False,
        "progress": False,
    }
    _run(_configs("isic_im", "train.json"), **tiny)
    _run(_configs("isic_im", "train.json", "export_nnunet.json"), nnunet_dir=str(raw), **tiny)
    folder = raw / "Dataset502_IsicIM"
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "lesion": 1, "ignore": 2}
    assert meta["channel_names"] == {"0": "R", "1": "G", "2": "B"} and meta["file_ending"] == ".png"
    labeled = json.loads((Path(isic_tiny) / "datalist.json").read_text())["labeled"]
    rows = _pseudo_rows(study)
    assert rows and meta["numTraining"] == len(labeled) + len(rows)
    for label in (folder / "labelsTr").iterdir():
        with Image.open(label) as seg, Image.open(folder / "imagesTr" / f"{label.stem}_0000.png") as img:
            assert seg.size == img.size and img.mode == "RGB"
            assert set(np.unique(np.asarray(seg)).tolist()) <= {0, 1, 2}
