"""Tests of the FLARE22-like synthetic CT volumes and dataset folder (monai_im.datasets.flare_like)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_im.data.datalist import load_datalist
from monai_im.datasets.drawing import image_rng
from monai_im.datasets.flare_like import (
    FLARE22_LABELS,
    ensure_flare_like_dataset,
    flare_affine,
    flare_like_sample,
    main,
    make_flare_like_dataset,
    smooth_field_3d,
)

TINY = (16, 16, 12)
SMALL = {
    "num_train": 4,
    "num_val": 1,
    "num_test": 1,
    "shape": TINY,
    "spacing": (3.0, 3.0, 5.0),
    "labeled_fraction": 0.5,
    "progress": False,
}


@pytest.fixture(scope="module")
def default_sample() -> tuple[np.ndarray, np.ndarray]:
    return flare_like_sample((64, 64, 48), np.random.default_rng(7))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_flare_like_dataset(tmp_path_factory.mktemp("flare") / "ds", seed=3, **SMALL)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_labels_are_the_flare22_organs_in_order():
    assert len(FLARE22_LABELS) == 13
    assert (
        FLARE22_LABELS[0] == "liver" and FLARE22_LABELS[2] == "spleen" and FLARE22_LABELS[12] == "left_kidney"
    )
    assert FLARE22_LABELS.index("aorta") == 4 and FLARE22_LABELS.index("duodenum") == 11


def test_smooth_field_is_normalised_and_smooth():
    field = smooth_field_3d(np.random.default_rng(0), (20, 18, 10), 4.0)
    assert field.shape == (20, 18, 10)
    assert abs(field.mean()) < 1e-6 and abs(field.std() - 1) < 1e-3
    # neighbours are strongly correlated for a correlation length of 4 voxels (white noise: about 0)
    assert np.corrcoef(field[1:].ravel(), field[:-1].ravel())[0, 1] > 0.8


def test_same_generator_seed_gives_identical_arrays_another_differs():
    a_img, a_lab = flare_like_sample(TINY, np.random.default_rng(5))
    b_img, b_lab = flare_like_sample(TINY, np.random.default_rng(5))
    c_img, c_lab = flare_like_sample(TINY, np.random.default_rng(6))
    assert a_img.dtype == np.float32 and a_lab.dtype == np.uint8 and a_img.shape == a_lab.shape == TINY
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)


def test_every_organ_is_present_in_a_default_sample(default_sample):
    _, label = default_sample
    counts = np.bincount(label.ravel(), minlength=14)
    assert counts.size == 14  # no label above 13
    assert (counts[1:] > 0).all(), dict(zip(FLARE22_LABELS, counts[1:].tolist()))
    # the liver is the largest organ, the adrenal glands the smallest ones
    assert counts[1] == counts[1:].max()
    assert max(counts[7], counts[8]) < min(counts[[1, 2, 3, 11, 13]])


def test_every_organ_is_present_for_other_seeds():
    for seed in range(3):
        _, label = flare_like_sample((64, 64, 48), image_rng(seed, "train", 0))
        assert set(np.unique(label).tolist()) == set(range(14)), seed


def test_anatomy_is_in_place(default_sample):
    """Liver on the patient's right (high x in RAS), spleen on the left, kidneys paired at the back, the
    aorta along the whole volume and the esophagus only at the top."""
    _, label = default_sample
    nz = label.shape[2]

    def centre(organ: int) -> np.ndarray:
        idx = np.nonzero(label == organ)
        return np.array([c.mean() for c in idx])

    mid = (label.shape[0] - 1) / 2
    assert centre(1)[0] > mid + 5 and centre(3)[0] < mid - 5
    assert centre(2)[0] > mid and centre(13)[0] < mid  # right kidney on the right, left on the left
    assert centre(2)[1] < centre(1)[1] and centre(13)[1] < centre(11)[1]  # kidneys behind liver / stomach
    aorta_slices = np.nonzero((label == 5).any(axis=(0, 1)))[0]
    assert aorta_slices.size == nz
    esophagus_slices = np.nonzero((label == 10).any(axis=(0, 1)))[0]
    assert esophagus_slices.min() > nz * 0.7
    kidney_slices = np.nonzero((label == 2).any(axis=(0, 1)))[0]
    assert kidney_slices.size < nz  # organs occupy z ranges


def test_intensities_are_in_hu_ranges(default_sample):
    image, label = default_sample
    assert image.min() >= -1024 and image.max() <= 3071
    corner = image[:4, :4, :]  # outside the body
    assert corner.mean() < -950 and np.percentile(corner, 99) < -900
    mean = {organ: float(image[label == organ].mean()) for organ in range(1, 14)}
    for organ in (1, 2, 3, 13):  # large solid organs
        assert 0 < mean[organ] < 200, (FLARE22_LABELS[organ - 1], mean[organ])
    assert mean[5] > mean[1]  # contrast-filled aorta brighter than the liver
    assert mean[9] < mean[1]  # gallbladder (bile) darker than the liver
    assert image.max() > 300  # bone


def test_num_organs_keeps_the_first_labels_and_not_the_image():
    full_img, full_lab = flare_like_sample(TINY, np.random.default_rng(2))
    img, lab = flare_like_sample(TINY, np.random.default_rng(2), num_organs=3)
    assert np.array_equal(img, full_img)
    assert set(np.unique(lab).tolist()) <= {0, 1, 2, 3}
    keep = full_lab <= 3
    assert np.array_equal(lab[keep], full_lab[keep]) and not lab[~keep].any()


@pytest.mark.parametrize(
    "kwargs, message",
    [({"shape": (16, 16)}, "shape"), ({"shape": (4, 16, 16)}, "shape"), ({"num_organs": 14}, "num_organs")],
)
def test_sample_rejects_bad_arguments(kwargs, message):
    args = {"shape": TINY, "rng": np.random.default_rng(0), **kwargs}
    with pytest.raises(ValueError, match=message):
        flare_like_sample(**args)


def test_dataset_folder(dataset):
    raw = json.loads((dataset / "datalist.json").read_text())
    assert list(raw) == ["labeled", "unlabeled", "validation", "test"]
    assert [len(raw[k]) for k in raw] == [2, 2, 1, 1]
    for rows in raw.values():
        for row in rows:  # unlabeled entries keep their hidden label, as in the 2D demos
            assert row["image"].startswith("images/") and row["label"].startswith("labels/")
            assert row["image"].endswith(".nii.gz") and Path(row["image"]).name == Path(row["label"]).name
    loaded = load_datalist(dataset)
    assert all(Path(e["image"]).is_file() for e in loaded["unlabeled"])
    info = json.loads((dataset / "dataset.json").read_text())
    assert info["kind"] == "flare" and info["shape"] == list(TINY) and info["spacing"] == [3.0, 3.0, 5.0]
    assert (
        info["labels"]["0"] == "background"
        and info["labels"]["13"] == "left_kidney"
        and len(info["labels"]) == 14
    )
    assert info["counts"] == {"labeled": 2, "unlabeled": 2, "validation": 1, "test": 1}
    assert "synthetic" in info["license"] and info["orientation"] == "RAS"


def test_dataset_nifti_files(dataset):
    image = nib.load(dataset / "images" / "train_0000.nii.gz")
    label = nib.load(dataset / "labels" / "train_0000.nii.gz")
    assert image.shape == label.shape == TINY
    assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    assert np.allclose(image.affine, flare_affine(TINY, (3.0, 3.0, 5.0))) and np.allclose(
        label.affine, image.affine
    )
    assert np.allclose(image.header.get_zooms(), (3.0, 3.0, 5.0))
    assert int(image.header["sform_code"]) == 1 and int(image.header["qform_code"]) == 1
    # the stored volume is the sample of (seed, split, index), rounded to int16
    expected_img, expected_lab = flare_like_sample(TINY, image_rng(3, "train", 0))
    assert np.array_equal(np.asanyarray(image.dataobj), np.rint(expected_img).astype(np.int16))
    assert np.array_equal(np.asanyarray(label.dataobj), expected_lab)


def test_affine_centres_the_volume():
    affine = flare_affine((10, 20, 5), (2.0, 1.0, 3.0))
    centre = affine @ np.array([4.5, 9.5, 2.0, 1.0])
    assert np.allclose(np.diag(affine)[:3], (2.0, 1.0, 3.0)) and np.allclose(centre[:3], 0)


def test_same_seed_gives_identical_bytes_other_seed_differs(tmp_path, dataset):
    again = _files(make_flare_like_dataset(tmp_path / "a", seed=3, **SMALL))
    assert again == _files(dataset)
    other = _files(make_flare_like_dataset(tmp_path / "b", seed=4, **SMALL))
    assert (
        other.keys() == again.keys()
        and other["images/train_0000.nii.gz"] != again["images/train_0000.nii.gz"]
    )


def test_num_organs_in_dataset(tmp_path):
    out = make_flare_like_dataset(
        tmp_path / "ds", num_organs=3, **{**SMALL, "num_train": 1, "num_val": 0, "num_test": 0}
    )
    info = json.loads((out / "dataset.json").read_text())
    assert info["labels"] == {"0": "background", "1": "liver", "2": "right_kidney", "3": "spleen"}
    assert np.asanyarray(nib.load(out / "labels" / "train_0000.nii.gz").dataobj).max() <= 3


def test_existing_folder_is_kept_unless_overwrite(tmp_path):
    target = tmp_path / "ds"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        make_flare_like_dataset(target, **SMALL)
    assert (target / "keep.txt").is_file() and not (target / "datalist.json").exists()
    make_flare_like_dataset(target, overwrite=True, **SMALL)
    assert (target / "datalist.json").is_file() and not (target / "keep.txt").exists()


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    import monai_im.datasets.flare_like as flare_like

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(flare_like, "write_datalist", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        make_flare_like_dataset(tmp_path / "ds", **SMALL)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_train": 0}, "num_train"),
        ({"num_val": -1}, "num_val"),
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing"),
        ({"labeled_fraction": 0.0}, "labeled_fraction"),
        ({"num_organs": 0}, "num_organs"),
        ({"seed": -1}, "seed"),
    ],
)
def test_dataset_rejects_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_flare_like_dataset(tmp_path / "ds", **{**SMALL, **kwargs})
    assert not (tmp_path / "ds").exists()


def test_ensure_creates_reuses_and_refuses(tmp_path):
    root = tmp_path / "ds"
    assert ensure_flare_like_dataset(root, **SMALL) == str(root)
    before = _files(root)
    assert ensure_flare_like_dataset(root, **{**SMALL, "seed": 9, "num_train": 8}) == str(root)
    assert _files(root) == before  # reused as it is
    empty = tmp_path / "empty"
    empty.mkdir()
    ensure_flare_like_dataset(empty, **SMALL)
    assert (empty / "datalist.json").is_file()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="no datalist.json"):
        ensure_flare_like_dataset(other, **SMALL)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_command_line(tmp_path, capsys):
    out = tmp_path / "cli"
    args = [
        str(out),
        "--num-train",
        "2",
        "--num-val",
        "1",
        "--num-test",
        "0",
        "--shape",
        "12",
        "12",
        "8",
        "--quiet",
    ]
    assert main(args) == 0
    assert "3 flare_like volumes" in capsys.readouterr().out
    assert json.loads((out / "dataset.json").read_text())["shape"] == [12, 12, 8]
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
