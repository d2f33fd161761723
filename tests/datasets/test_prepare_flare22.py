"""Tests of the FLARE22 preparation (monai_im.datasets.prepare_flare22) on a tiny fake release."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import runpy
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_im.data.datalist import load_datalist
from monai_im.datasets.prepare import DataPreparationError, SizeMismatchError
from monai_im.datasets.prepare_flare22 import (
    case_id,
    find_unlabeled_folders,
    main,
    prepare_flare22,
    split_cases,
)

REPO = Path(__file__).resolve().parents[2]
SHAPE = (16, 16, 12)
AFFINE = np.array([[-0.8, 0, 0, 100.0], [0, -0.8, 0, 120.0], [0, 0, 2.5, -300.0], [0, 0, 0, 1]])
LABELLED = [f"FLARE22_Tr_{i:04d}" for i in range(1, 6)]
UNLABELED = [f"Case_{i:05d}" for i in range(1, 4)]
FAST = {"num_val": 1, "num_test": 1, "workers": 1, "progress": False}


def _save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def _volume(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(-1000, 1000, SHAPE).astype(np.int16)
    label = np.zeros(SHAPE, np.uint8)
    label[2:10, 3:12, 1:8] = 1 + seed % 13
    label[12:15, 1:4, 5:11] = 13
    return image, label


def make_release(root: Path, nested: bool = False) -> Path:
    """The FLARE22 training data: imagesTr/ + labelsTr/ and an unlabeled folder (or the release's nesting)."""
    labelled = root / "Training" / "FLARE22_LabeledCase50" if nested else root
    images, labels = ("images", "labels") if nested else ("imagesTr", "labelsTr")
    for i, case in enumerate(LABELLED):
        image, label = _volume(i)
        _save(labelled / images / f"{case}_0000.nii.gz", image)
        _save(labelled / labels / f"{case}.nii.gz", label)
    unlabeled = root / ("Training/FLARE22_UnlabeledCase1-1000" if nested else "UnlabeledCase1-1000")
    for i, case in enumerate(UNLABELED):
        _save(unlabeled / f"{case}_0000.nii.gz", _volume(10 + i)[0])
    return root


@pytest.fixture()
def release(tmp_path) -> Path:
    return make_release(tmp_path / "FLARE22")


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _ids(rows: list[dict[str, str]]) -> list[str]:
    return [Path(r["image"]).name.split(".")[0] for r in rows]


def test_case_id():
    assert case_id("imagesTr/FLARE22_Tr_0001_0000.nii.gz") == "FLARE22_Tr_0001"
    assert case_id("labelsTr/FLARE22_Tr_0001.nii.gz", image=False) == "FLARE22_Tr_0001"
    assert case_id("Case_00001_0000.nii") == "Case_00001"
    assert case_id("scan.nii.gz") == "scan"
    with pytest.raises(DataPreparationError, match="channel 0001"):
        case_id("FLARE22_Tr_0001_0001.nii.gz")


def test_split_cases_is_seeded_disjoint_and_complete():
    ids = [f"c{i}" for i in range(10)]
    a = split_cases(ids, 2, 3, labeled_fraction=0.5, seed=1)
    assert a == split_cases(list(reversed(ids)), 2, 3, labeled_fraction=0.5, seed=1)
    assert [len(a[k]) for k in ("labeled", "unlabeled", "validation", "test")] == [2, 3, 2, 3]
    assert sorted(sum(a.values(), [])) == sorted(ids)
    assert a != split_cases(ids, 2, 3, labeled_fraction=0.5, seed=2)
    with pytest.raises(ValueError, match="lower --num-val"):
        split_cases(ids, 5, 5)


def test_prepare_copies_cases_and_writes_the_datalist(tmp_path, release):
    before = _digests(release)
    summary = prepare_flare22(tmp_path / "out", release, **FAST)
    out = Path(summary["out_dir"])
    assert summary["counts"] == {"labeled": 3, "unlabeled": 3, "validation": 1, "test": 1}
    raw = json.loads((out / "datalist.json").read_text())
    assert list(raw) == ["labeled", "unlabeled", "validation", "test"]
    split_ids = _ids(raw["labeled"]) + _ids(raw["validation"]) + _ids(raw["test"])
    assert sorted(split_ids) == LABELLED
    assert _ids(raw["unlabeled"]) == UNLABELED and all("label" not in r for r in raw["unlabeled"])
    for row in raw["labeled"] + raw["validation"]:
        case = Path(row["image"]).name.split(".")[0]
        assert row == {"image": f"images/{case}.nii.gz", "label": f"labels/{case}.nii.gz"}
        assert (out / row["image"]).read_bytes() == (
            release / "imagesTr" / f"{case}_0000.nii.gz"
        ).read_bytes()
        assert (out / row["label"]).read_bytes() == (release / "labelsTr" / f"{case}.nii.gz").read_bytes()
    loaded = load_datalist(out, required=("labeled", "validation", "test", "unlabeled"))
    assert all(Path(e["image"]).is_file() for key in loaded for e in loaded[key])
    info = json.loads((out / "dataset.json").read_text())
    assert info["kind"] == "flare" and info["labels"]["13"] == "left_kidney" and info["spacing"] == "original"
    assert info["counts"] == summary["counts"] and info["split"]["seed"] == 42
    assert _digests(release) == before  # inputs untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "FLARE22",
        "out",
    ]  # no lock, partials or scratch left
    # the same seed gives the same split, another seed another one
    again = prepare_flare22(tmp_path / "again", release, **FAST)
    assert json.loads((Path(again["out_dir"]) / "datalist.json").read_text()) == raw
    other = json.loads(
        (
            Path(prepare_flare22(tmp_path / "o", release, seed=7, **FAST)["out_dir"]) / "datalist.json"
        ).read_text()
    )
    assert _ids(other["test"]) + _ids(other["validation"]) != _ids(raw["test"]) + _ids(raw["validation"])


def test_release_nesting_and_unlabeled_options(tmp_path):
    release = make_release(tmp_path / "FLARE22", nested=True)
    assert [p.name for p in find_unlabeled_folders(release)] == ["FLARE22_UnlabeledCase1-1000"]
    two = prepare_flare22(
        tmp_path / "two",
        release,
        num_unlabeled=2,
        labeled_fraction=0.5,
        workers=2,
        num_val=1,
        num_test=1,
        progress=False,
    )
    raw = json.loads((tmp_path / "two" / "datalist.json").read_text())
    hidden = [r for r in raw["unlabeled"] if "label" in r]  # labelled training cases beyond the fraction
    assert len(raw["labeled"]) == 2 and len(hidden) == 1 and two["counts"]["unlabeled"] == 3
    chosen = [r for r in raw["unlabeled"] if "label" not in r]
    prepare_flare22(tmp_path / "one", release, num_unlabeled=1, **FAST)
    one_rows = json.loads((tmp_path / "one" / "datalist.json").read_text())["unlabeled"]
    assert set(_ids(one_rows)) <= set(_ids(chosen))  # the choices are nested
    explicit = tmp_path / "validation"
    _save(explicit / "FLARE22_Ts_0001_0000.nii.gz", _volume(20)[0])
    prepare_flare22(tmp_path / "val", release, unlabeled_dirs=[explicit], **FAST)
    rows = json.loads((tmp_path / "val" / "datalist.json").read_text())["unlabeled"]
    assert _ids(rows) == ["FLARE22_Ts_0001"]


def test_hardlinks_share_the_input_files(tmp_path, release):
    prepare_flare22(tmp_path / "out", release, files="hardlink", **FAST)
    source = release / "UnlabeledCase1-1000" / "Case_00001_0000.nii.gz"
    assert os.path.samefile(tmp_path / "out" / "images" / "Case_00001.nii.gz", source)


def test_resampling_changes_spacing_and_shape_and_keeps_labels_integral(tmp_path, release):
    prepare_flare22(tmp_path / "out", release, spacing=(1.6, 1.6, 5.0), **FAST)
    out = tmp_path / "out"
    info = json.loads((out / "dataset.json").read_text())
    assert info["spacing"] == [1.6, 1.6, 5.0]
    for case in LABELLED:
        image, label = (
            nib.load(out / "images" / f"{case}.nii.gz"),
            nib.load(out / "labels" / f"{case}.nii.gz"),
        )
        assert image.shape == label.shape == (8, 8, 6)
        assert np.allclose(image.header.get_zooms(), (1.6, 1.6, 5.0)) and np.allclose(
            label.affine, image.affine
        )
        assert np.allclose(np.sign(np.diag(image.affine)[:3]), (-1, -1, 1))  # orientation kept
        assert np.allclose(image.affine[:3, 3], AFFINE[:3, 3], atol=1e-4)  # origin kept
        assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
        values = np.asanyarray(label.dataobj)
        source = np.asanyarray(nib.load(release / "labelsTr" / f"{case}.nii.gz").dataobj)
        assert set(np.unique(values).tolist()) <= set(np.unique(source).tolist())
        assert (values == 13).any()
        # nearest neighbour: voxel (i, j, k) of the output is voxel (2i, 2j, 2k) of the input
        assert np.array_equal(values, source[::2, ::2, ::2])
    unlabeled = nib.load(out / "images" / "Case_00002.nii.gz")
    assert unlabeled.shape == (8, 8, 6)


def _drop(path: Path) -> None:
    path.unlink()


def _bad_label(release: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    _save(release / "labelsTr" / "FLARE22_Tr_0002.nii.gz", array, affine)


BAD_INPUTS = {
    "no labels folder": (lambda r: shutil.rmtree(r / "labelsTr"), "no labelsTr/labels/ folder"),
    "no images folder": (lambda r: shutil.rmtree(r / "imagesTr"), "no imagesTr/images/ folder"),
    "image without label": (
        lambda r: _drop(r / "labelsTr" / "FLARE22_Tr_0003.nii.gz"),
        "FLARE22_Tr_0003_0000.nii.gz: no label",
    ),
    "label without image": (
        lambda r: _drop(r / "imagesTr" / "FLARE22_Tr_0004_0000.nii.gz"),
        "FLARE22_Tr_0004.nii.gz: no image",
    ),
    "shape differs": (
        lambda r: _bad_label(r, np.zeros((16, 16, 11), np.uint8)),
        r"shape \(16, 16, 11\) differs",
    ),
    "affine differs": (
        lambda r: _bad_label(r, np.zeros(SHAPE, np.uint8), np.diag([0.8, 0.8, 2.5, 1])),
        "affine .* differs",
    ),
    "label value 14": (
        lambda r: _bad_label(r, np.full(SHAPE, 14, np.uint8)),
        "label values 14 outside 0..13",
    ),
    "negative label": (lambda r: _bad_label(r, np.full(SHAPE, -1, np.int16)), "label values -1 outside"),
    "fractional label": (
        lambda r: _bad_label(r, np.full(SHAPE, 1.5, np.float32)),
        "label values 1.5 outside",
    ),
    "second channel": (
        lambda r: _save(r / "imagesTr" / "FLARE22_Tr_0001_0001.nii.gz", _volume(0)[0]),
        "channel 0001",
    ),
    "not nifti": (
        lambda r: (r / "UnlabeledCase1-1000" / "Case_00002_0000.nii.gz").write_bytes(b"not a volume"),
        "Case_00002_0000.nii.gz: not a readable NIfTI",
    ),
    "2d image": (
        lambda r: _save(r / "UnlabeledCase1-1000" / "Case_00009_0000.nii.gz", np.zeros((16, 16), np.int16)),
        "expected a 3D volume",
    ),
    "case twice": (
        lambda r: _save(r / "UnlabeledCase1-1000" / "FLARE22_Tr_0001_0000.nii.gz", _volume(0)[0]),
        "also in the labelled cases",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_gives_one_line_error_and_writes_nothing(tmp_path, release, name):
    breaker, message = BAD_INPUTS[name]
    breaker(release)
    before = _digests(release)
    with pytest.raises((DataPreparationError, SizeMismatchError)) as info:
        prepare_flare22(tmp_path / "out", release, **FAST)
    assert info.match(message) and "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FLARE22"]
    assert _digests(release) == before


def test_unsafe_outputs_are_refused(tmp_path, release):
    with pytest.raises(DataPreparationError, match="inside the input folder"):
        prepare_flare22(release / "out", release, **FAST)
    with pytest.raises(DataPreparationError, match="inside the input folder"):
        prepare_flare22(release / "UnlabeledCase1-1000" / "x", release, **FAST)
    with pytest.raises(DataPreparationError, match="holds the input folder"):
        prepare_flare22(tmp_path, release, overwrite=True, **FAST)
    with pytest.raises(ValueError, match="lower --num-val"):
        prepare_flare22(tmp_path / "out", release, num_val=3, num_test=2, workers=1, progress=False)
    assert not (release / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["FLARE22"]
    assert (release / "imagesTr").is_dir()


def test_existing_output_needs_overwrite(tmp_path, release):
    out = tmp_path / "out"
    out.mkdir()
    prepare_flare22(out, release, **FAST)  # an empty folder may be filled
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare_flare22(out, release, **FAST)
    assert (out / "notes.txt").is_file()
    prepare_flare22(out, release, overwrite=True, **FAST)
    assert not (out / "notes.txt").exists() and (out / "datalist.json").is_file()


def test_a_second_run_into_the_same_folder_is_refused(tmp_path, release):
    out = tmp_path / "out"
    with open(tmp_path / ".out.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(FileExistsError, match="another preparation"):
            prepare_flare22(out, release, **FAST)
    assert not out.exists()


def test_command_line(tmp_path, release, capsys):
    out = tmp_path / "out"
    args = [str(out), "--data-dir", str(release), "--num-val", "1", "--num-test", "1", "--workers", "1"]
    assert main([*args, "--no-progress", "--spacing", "1.6", "1.6", "5"]) == 0
    assert "labeled 3, unlabeled 3, validation 1, test 1" in capsys.readouterr().out
    assert json.loads((out / "dataset.json").read_text())["spacing"] == [1.6, 1.6, 5.0]
    assert main([*args, "--no-progress"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main([str(tmp_path / "alias"), "--source", str(release), *args[3:], "--no-progress"]) == 0
    assert (tmp_path / "alias" / "datalist.json").is_file()
    assert main([str(tmp_path / "d"), "--download"]) == 1
    assert "registration" in capsys.readouterr().err
    assert main([str(tmp_path / "d")]) == 1
    assert "--data-dir" in capsys.readouterr().err


def test_script_help(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["prepare_flare22.py", "--help"])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(REPO / "data_scripts" / "prepare_flare22.py"), run_name="__main__")
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--spacing" in help_text and "registration" in help_text
