"""The name and class names a study logs for a dataset folder: the bundle's documented ones only for the
bundle's documented data folder, otherwise the folder's own description, otherwise generic names."""

from __future__ import annotations

import json
import logging

import pytest

from monai_im.datasets import FLARE22_LABELS, dataset_class_names, dataset_label
from monai_im.metrics.volume import FLARE22_ORGANS


def _folder(root, description=None, raw: str | None = None):
    root.mkdir(parents=True, exist_ok=True)
    if description is not None:
        (root / "dataset.json").write_text(json.dumps(description))
    elif raw is not None:
        (root / "dataset.json").write_text(raw)
    return root


def test_dataset_label(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    documented = _folder(tmp_path / "data" / "isic2018", {"name": "ISIC 2018 Task 1: lesions"})
    mine = _folder(tmp_path / "my_lesions")
    described = _folder(tmp_path / "d", {"name": " Dermoscopy 2024 "})
    defaults = {"default_dir": "data/isic2018", "default_name": "ISIC 2018 Task 1"}
    assert dataset_label("data/isic2018", **defaults) == "ISIC 2018 Task 1"
    assert dataset_label(documented, **defaults) == "ISIC 2018 Task 1", "the same folder, spelt otherwise"
    assert dataset_label(mine, **defaults) == "my_lesions", "the user's data: not the bundle's dataset"
    assert dataset_label(described, **defaults) == "Dermoscopy 2024"
    assert dataset_label(mine, name="lesions v2", **defaults) == "lesions v2", "--dataset_name wins"
    damaged = _folder(tmp_path / "damaged", raw='{"name": "x"')
    assert dataset_label(damaged, **defaults) == "damaged"
    assert any("damaged/dataset.json is not read" in r.getMessage() for r in caplog.records)
    assert dataset_label(_folder(tmp_path / "list", raw="[1]")) == "list"


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"0": "background", "1": "Tumour", "2": "cyst wall"}, ["tumour", "cyst_wall", "class_3"]),
        ({"background": 0, "liver": 1, "kidney": 2, "spleen": 3}, ["liver", "kidney", "spleen"]),
        (["background", "liver", "liver", "vessel"], ["liver", "class_2", "vessel"]),
        ({"1": "!!", "3": "vessel"}, ["class_1", "class_2", "vessel"]),
    ],
)
def test_class_names_of_a_described_dataset(tmp_path, labels, expected):
    folder = _folder(tmp_path / "mine", {"name": "mine", "labels": labels})
    names = dataset_class_names(folder, 4, default=FLARE22_ORGANS, default_dir=tmp_path / "data" / "flare22")
    assert names == expected


def test_class_names_of_flare_and_of_undescribed_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flare = {"default": FLARE22_ORGANS, "default_dir": "data/flare22"}
    bundle_names = list(FLARE22_ORGANS) + ["class_14", "class_15"]  # the bundle's names for 16 classes
    # the documented folder, described (as prepared here) or not: FLARE22's metric names
    _folder(tmp_path / "data" / "flare22")
    assert dataset_class_names("data/flare22", 16, **flare) == bundle_names
    labels = {"0": "background", **{str(i + 1): n for i, n in enumerate(FLARE22_LABELS)}}
    _folder(tmp_path / "data" / "flare22", {"name": "FLARE22", "labels": labels})
    assert dataset_class_names("data/flare22", 16, **flare) == bundle_names
    # FLARE-like data elsewhere (the demo) keeps the same metric keys
    demo = _folder(
        tmp_path / "demo", {"labels": {"0": "background", "1": "liver", "6": "inferior_vena_cava"}}
    )
    assert dataset_class_names(demo, 7, **flare)[5] == "ivc"
    # the user's own volumes without a description: generic names, never organ names
    assert dataset_class_names(_folder(tmp_path / "mine"), 4, **flare) == ["class_1", "class_2", "class_3"]
    assert dataset_class_names(tmp_path / "mine", 1, **flare) == []


def test_a_damaged_description_is_a_warning_and_generic_names(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="monai_im")
    folder = _folder(tmp_path / "mine", raw='{"labels": {"1": "liver"')
    assert dataset_class_names(folder, 3) == ["class_1", "class_2"]
    assert [r.getMessage().split(" is not read")[0] for r in caplog.records] == [str(folder / "dataset.json")]
