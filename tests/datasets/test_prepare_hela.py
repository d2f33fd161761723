"""Tests of the HeLa preparation (monai_im.datasets.prepare_hela) on a tiny fake release archive."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_im.data.datalist import load_datalist
from monai_im.datasets.archives import (
    ChecksumError,
    UnsafeArchiveError,
    sha256sum,
)
from monai_im.datasets.prepare import CorruptImageError, DataPreparationError, SizeMismatchError
from monai_im.datasets.prepare_hela import (
    HelaLayout,
    crop_starts,
    disc_radii,
    draw_position_discs,
    main,
    position_points,
    prepare_hela,
)

REPO = Path(__file__).resolve().parents[2]
H, W = 50, 70  # source image size; crops of 32 with overlap 0.5 -> 3 x 4 = 12 crops per image
CROPS = 12
SOURCES = {"train_full": 10, "val": 2, "test": 2}
POINTS = [(10, 10), (10, 18), (40, 60)]  # two close cells and a far one


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _channels(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    alive = np.zeros((H, W), np.uint8)
    alive[5:15, 5:25] = 200
    alive[0, 0] = 10  # not above the threshold of 10
    dead = np.zeros((H, W), np.uint8)
    dead[35:45, 55:65] = 11  # just above it
    pos = np.zeros((H, W), np.uint8)
    for y, x in POINTS:
        pos[y, x] = 255
    return {
        "brightfield": rng.integers(0, 256, (H, W), dtype=np.uint8),
        "alive": alive,
        "dead": dead,
        "position": pos,
    }


def make_release(
    path: Path,
    broken: dict | None = None,
    top: str = "original_data",
    train: str = "train_full",
    position: str = "position",
) -> Path:
    """A zip laid out like the authors' release: <top>/<split>/{brightfield,alive,dead,position}/<name>.png."""
    broken = broken or {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for split, n in SOURCES.items():
            folder = train if split == "train_full" else split
            for i in range(n):
                name = f"{split}_{i:02d}"
                for channel, arr in _channels(i).items():
                    rel = f"{folder}/{position if channel == 'position' else channel}/{name}.png"
                    zf.writestr(
                        f"{top}/{rel}" if top else rel, broken.get(f"{split}/{channel}/{name}", _png(arr))
                    )
    return path


@pytest.fixture()
def release(tmp_path):
    return make_release(tmp_path / "downloads" / "hela.zip")


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _run(out: Path, archive: Path, **kw):
    kw = {"crop_size": 32, "overlap": 0.5, "workers": 1, "progress": False, **kw}
    return prepare_hela(out, archive, **kw)


# --------------------------------------------------------------------------- geometry


def test_crop_starts():
    assert crop_starts(50, 32, 0.5) == [0, 9, 18]
    assert crop_starts(70, 32, 0.5) == [0, 13, 25, 38]
    assert crop_starts(32, 32, 0.6) == [0] and crop_starts(20, 32, 0.6) == [0]
    for length in (257, 700, 1024, 2048):
        starts = crop_starts(length, 256, 0.6)
        assert starts[0] == 0 and starts[-1] == length - 256
        assert max(np.diff(starts)) <= 256 * 0.4 + 0.5  # overlap at least 60%
    with pytest.raises(ValueError):
        crop_starts(100, 32, 1.0)


def test_disc_radius_rule():
    pts = np.array([[0, 0], [0, 8], [100, 100], [100, 130], [300, 300]])
    # distances to the nearest neighbour: 8, 8, 30, 30, ~240 -> floor(d/4) = 2, 2, 7, 7, 60
    assert disc_radii(pts).tolist() == [3, 3, 7, 7, 8]
    assert disc_radii(np.array([[5, 5]])).tolist() == [8]  # no neighbour: largest disc
    assert disc_radii(np.zeros((0, 2))).tolist() == []


def test_position_points_and_discs():
    mask = np.zeros((40, 40), bool)
    mask[10:12, 10:12] = True  # a 2x2 blob: centroid 10.5 -> rounded
    mask[30, 30] = True
    pts = position_points(mask)
    assert sorted(map(tuple, pts.tolist())) == [(10, 10), (30, 30)]
    discs = draw_position_discs(mask)
    radius = disc_radii(pts)[0]  # distance ~28.3 -> 7
    assert radius == 7
    yy, xx = np.ogrid[:40, :40]
    expected = ((yy - 10) ** 2 + (xx - 10) ** 2 <= 49) | ((yy - 30) ** 2 + (xx - 30) ** 2 <= 49)
    np.testing.assert_array_equal(discs, expected)
    assert not draw_position_discs(np.zeros((5, 5), bool)).any()


# --------------------------------------------------------------------------- full runs


def test_full_preparation(release, tmp_path):
    out = tmp_path / "hela"
    summary = _run(out, release)
    assert summary["source_images"] == {"labeled": 1, "unlabeled": 9, "validation": 2, "test": 2}
    assert summary["counts"] == {
        "labeled": CROPS,
        "unlabeled": 9 * CROPS,
        "validation": 2 * CROPS,
        "test": 2 * CROPS,
    }

    raw = json.loads((out / "datalist.json").read_text())
    sources = {key: {e["source"] for e in rows} for key, rows in raw.items()}
    assert not sources["labeled"] & sources["unlabeled"]
    assert all(s.startswith("train/") for s in sources["labeled"] | sources["unlabeled"])
    assert sources["validation"] == {"val/val_00", "val/val_01"} and sources["test"] == {
        "test/test_00",
        "test/test_01",
    }
    assert all("label" in e for e in raw["unlabeled"])
    assert raw["validation"][0]["image"] == "images/val/val_00_y0000_x0000.png"

    datalist = load_datalist(out)
    entry = datalist["validation"][0]
    img, lab = Image.open(entry["image"]), Image.open(entry["label"])
    assert img.mode == "L" and img.size == (32, 32)
    assert lab.mode == "RGB" and lab.size == (32, 32)
    label = np.asarray(lab)
    assert set(np.unique(label).tolist()) <= {0, 255}
    # source 0 cropped at (0, 0): alive block, no stray pixel at (0, 0), discs of radius 3 at the close pair
    assert label[10, 10, 0] == 255 and label[0, 0, 0] == 0
    pos = label[..., 2] > 0
    assert pos[10, 10] and pos[10, 18] and pos[10, 13] and pos[10, 15] and not pos[10, 14]
    assert pos.sum() == 2 * 29  # two discs of radius 3 (29 pixels each)
    # the dead block (values 11 > 10) appears in the bottom-right crop
    last = np.asarray(Image.open(out / "labels" / "val" / "val_00_y0018_x0038.png"))
    assert last[35 - 18, 55 - 38, 1] == 255
    assert last[40 - 18, 60 - 38, 2] == 255  # the far cell's disc (radius 8)
    np.testing.assert_array_equal(np.asarray(img), _channels(0)["brightfield"][:32, :32])

    info = json.loads((out / "dataset.json").read_text())
    assert info["licence"].startswith("ODC-BY") and "2401.14387" in info["citation"]
    assert info["channels"] == ["alive", "dead", "position"] and info["seed"] == 42
    assert info["archive"]["sha256"] == sha256sum(release)
    assert _leftovers(tmp_path) == []


def test_data_dir_custom_layout_and_pool(tmp_path):
    archive = make_release(tmp_path / "r.zip", top="", train="train", position="mod_position")
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp_path / "extracted" / "HeLa")
    summary = prepare_hela(
        tmp_path / "hela",
        data_dir=tmp_path / "extracted",
        crop_size=32,
        overlap=0.5,
        labeled_fraction=0.3,
        seed=7,
        workers=2,
        progress=False,
    )
    assert summary["source_images"]["labeled"] == 3 and summary["counts"]["labeled"] == 3 * CROPS

    custom = make_release(tmp_path / "c.zip", train="training", position="cells")
    layout = HelaLayout(train=("training",), position=("cells",))
    assert _run(tmp_path / "hela2", custom, layout=layout)["counts"]["test"] == 2 * CROPS
    with pytest.raises(DataPreparationError, match="cannot find the HeLa split folders"):
        _run(tmp_path / "hela3", custom)
    assert not (tmp_path / "hela3").exists()


def test_small_images_are_padded(release, tmp_path):
    summary = _run(tmp_path / "hela", release, crop_size=64, overlap=0.6)
    assert summary["counts"]["test"] == 2 * 2  # height 50 < 64 (padded), width 70 -> 2 crops
    img = np.asarray(Image.open(tmp_path / "hela" / "images" / "test" / "test_00_y0000_x0006.png"))
    assert img.shape == (64, 64) and not img[50:].any()


# --------------------------------------------------------------------------- errors leave nothing behind


def _assert_clean_failure(out: Path) -> None:
    assert not out.exists()
    assert _leftovers(out.parent) == []


def test_missing_archive(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.zip"):
        _run(tmp_path / "hela", tmp_path / "nope.zip")
    _assert_clean_failure(tmp_path / "hela")


def test_wrong_checksum(release, tmp_path):
    with pytest.raises(ChecksumError) as e:
        _run(tmp_path / "hela", release, sha256={"hela.zip": "b" * 64})
    assert "hela.zip" in str(e.value) and "b" * 64 in str(e.value) and sha256sum(release) in str(e.value)
    assert release.exists()
    _assert_clean_failure(tmp_path / "hela")


def test_corrupt_image(tmp_path):
    release = make_release(
        tmp_path / "hela.zip", broken={"train_full/brightfield/train_full_03": b"\x89PNG broken"}
    )
    with pytest.raises(CorruptImageError, match="train_full_03.png"):
        _run(tmp_path / "hela", release)
    _assert_clean_failure(tmp_path / "hela")


def test_truncated_mask_in_worker(tmp_path):
    good = _png(np.random.default_rng(0).integers(0, 256, (H, W), dtype=np.uint8))
    release = make_release(
        tmp_path / "hela.zip", broken={"train_full/dead/train_full_00": good[: len(good) // 2]}
    )
    with pytest.raises(CorruptImageError, match="dead/train_full_00.png"):
        _run(tmp_path / "hela", release, workers=2)
    _assert_clean_failure(tmp_path / "hela")


def test_mask_of_another_size(tmp_path):
    small = _png(np.zeros((H, W - 1), np.uint8))
    release = make_release(tmp_path / "hela.zip", broken={"test/position/test_01": small})
    with pytest.raises(SizeMismatchError) as e:
        _run(tmp_path / "hela", release)
    assert "position/test_01.png" in str(e.value) and "brightfield/test_01.png" in str(e.value)
    _assert_clean_failure(tmp_path / "hela")


def test_missing_mask(release, tmp_path):
    with zipfile.ZipFile(release) as zf:
        members = {n: zf.read(n) for n in zf.namelist() if n != "original_data/val/alive/val_00.png"}
    with zipfile.ZipFile(release, "w") as zf:
        for n, d in members.items():
            zf.writestr(n, d)
    with pytest.raises(DataPreparationError, match="alive/val_00.png is missing"):
        _run(tmp_path / "hela", release)
    _assert_clean_failure(tmp_path / "hela")


@pytest.mark.parametrize("bad", ["../evil.txt", "/abs.txt"])
def test_unsafe_archive_member(release, tmp_path, bad):
    with zipfile.ZipFile(release, "a") as zf:
        zf.writestr(bad, "evil")
    out = tmp_path / "out" / "hela"
    with pytest.raises(UnsafeArchiveError) as e:
        _run(out, release)
    assert "hela.zip" in str(e.value) and bad in str(e.value)
    _assert_clean_failure(out)
    assert not list(tmp_path.rglob("evil.txt")) and not list(tmp_path.rglob("abs.txt"))


def test_needs_exactly_one_source(release, tmp_path):
    with pytest.raises(ValueError, match="exactly one source"):
        prepare_hela(tmp_path / "hela", release, data_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="exactly one source"):
        prepare_hela(tmp_path / "hela", progress=False)


def test_cli(release, tmp_path, capsys):
    out = tmp_path / "hela"
    argv = [
        str(out),
        "--archive",
        str(release),
        "--crop-size",
        "32",
        "--overlap",
        "0.5",
        "--workers",
        "1",
        "--no-progress",
        "--sha256",
        f"hela.zip={sha256sum(release)}",
    ]
    assert main(argv) == 0
    assert "datalist.json" in capsys.readouterr().out
    assert json.loads((out / "dataset.json").read_text())["counts"]["validation"] == 2 * CROPS
    assert main(argv) == 1 and "already exists" in capsys.readouterr().err
    assert (
        main(
            [
                str(tmp_path / "h2"),
                "--data-dir",
                str(tmp_path),
                "--position-folder",
                "nothing,here",
                "--no-progress",
            ]
        )
        == 1
    )
    assert "nothing/here" in capsys.readouterr().err


def test_help_exits_zero():
    result = subprocess.run(
        [sys.executable, str(REPO / "data_scripts" / "prepare_hela.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "--crop-size" in result.stdout and "--position-folder" in result.stdout


def test_cli_extraction_limit_and_leftovers_of_an_interrupted_run(release, tmp_path, capsys):
    out = tmp_path / "hela"
    stale = tmp_path / ".hela.a1b2c3d4.partial"
    (stale / "images").mkdir(parents=True)
    argv = [str(out), "--archive", str(release), "--crop-size", "32", "--overlap", "0.5", "--workers", "1"]
    assert main([*argv, "--no-progress", "--max-extract-size", "1K"]) == 1
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("prepare_hela.py: error:") and "hela.zip" in last and "1.0 KiB" in last
    assert not stale.exists()  # removed by the next run into the same folder, even one that fails later
    _assert_clean_failure(out)
    assert main([*argv, "--no-progress", "--max-extract-size", "1G", "--max-compression-ratio", "50"]) == 0
    assert (out / "datalist.json").is_file() and _leftovers(tmp_path) == []
