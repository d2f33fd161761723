"""A 3D study on NRRD and MHA volumes (mixed with NIfTI) runs through every generation."""

from __future__ import annotations

import json
from pathlib import Path

import SimpleITK as sitk

from monai_im.datasets import make_flare_like_dataset

REPO = Path(__file__).resolve().parents[2]
TRAIN = str(REPO / "bundles/flare22_im/configs/train.json")


def _convert(root: Path, relative: str, suffix: str) -> str:
    """Write ``relative`` (a NIfTI file under ``root``) as ``suffix`` beside it; the new relative path."""
    source = root / relative
    target = source.with_name(source.name.replace(".nii.gz", suffix))
    sitk.WriteImage(sitk.ReadImage(str(source)), str(target))
    source.unlink()
    return str(target.relative_to(root))


def test_a_study_of_nrrd_mha_and_nifti_volumes_runs_through_generation_1(tmp_path):
    from monai.bundle import run as bundle_run

    data, out = tmp_path / "data", tmp_path / "run"
    make_flare_like_dataset(
        data,
        num_train=6,
        num_val=2,
        num_test=2,
        shape=(32, 32, 32),
        labeled_fraction=0.34,
        seed=0,
        progress=False,
    )
    datalist = json.loads((data / "datalist.json").read_text())
    suffixes = [".nrrd", ".mha"]
    for split, items in datalist.items():
        for i, item in enumerate(items):
            suffix = suffixes[i % 2]
            for key in ("image", "label"):
                if key in item and (split != "unlabeled" or i != 0):  # one unlabeled volume stays NIfTI
                    item[key] = _convert(data, item[key], suffix)
    (data / "datalist.json").write_text(json.dumps(datalist))
    bundle_run(
        config_file=TRAIN,
        logging_file=False,
        dataset_dir=str(data),
        output_dir=str(out),
        method="im",
        patch_size=[32, 32, 32],
        epochs=1,
        min_steps=0,
        val_interval=1,
        num_students=2,
        num_teachers=2,
        num_generations=1,
        min_foreground=0,
        foreground_exceeds_im=False,
        progress=False,
    )
    results = json.loads((out / "results.json").read_text())
    assert [g["generation"] for g in results["generations"]] == [0, 1]
    assert "test_dice" in results["generations"][1]["test"]
    rows = json.loads((out / "generation_1" / "pseudo_labels" / "datalist.json").read_text())[
        "pseudo_labeled"
    ]
    assert {Path(r["image"]).suffix for r in rows} >= {".nrrd", ".mha"}
