"""Tests of the ISIC 2018 preparation (monai_im.datasets.prepare_isic2018) on tiny fake official archives."""

from __future__ import annotations

import functools
import http.server
import io
import json
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_im.data.datalist import load_datalist, split_labeled
from monai_im.datasets import extract as extract_module
from monai_im.datasets.archives import (
    ArchiveLimitError,
    ChecksumError,
    ExtractionLimits,
    NotEnoughSpaceError,
    UnsafeArchiveError,
    read_checksums,
    sha256sum,
)
from monai_im.datasets.prepare import (
    CorruptImageError,
    DataPreparationError,
    SizeMismatchError,
    binarize,
    find_files,
    load_image,
    output_folder,
    parallel_map,
    remove_stale_partials,
    resize,
)
from monai_im.datasets.prepare_isic2018 import ARCHIVES, main, prepare_isic2018

REPO = Path(__file__).resolve().parents[2]
COUNTS = {"train": 10, "validation": 2, "test": 3}
FIRST_ID = {"train": 0, "validation": 100, "test": 200}


def _jpg(h: int = 30, w: int = 40, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _mask_png(h: int = 30, w: int = 40) -> bytes:
    m = np.zeros((h, w), np.uint8)
    m[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 255
    m[0, 0] = 3  # a stray low value: thresholded to 0
    buf = io.BytesIO()
    Image.fromarray(m).save(buf, format="PNG")
    return buf.getvalue()


def make_archives(folder: Path, broken: dict | None = None) -> Path:
    """The six official archives with a few 40x30 images, each with its top folder as in the release.

    ``broken`` maps an archive member name (e.g. ``ISIC_0000003.jpg``) to replacement bytes.
    """
    broken = broken or {}
    folder.mkdir(parents=True, exist_ok=True)
    for split, (image_zip, mask_zip) in ARCHIVES.items():
        ids = [f"ISIC_{FIRST_ID[split] + i:07d}" for i in range(COUNTS[split])]
        for zip_name, kind in ((image_zip, "image"), (mask_zip, "mask")):
            top = zip_name[:-4]
            with zipfile.ZipFile(folder / zip_name, "w") as zf:
                zf.writestr(f"{top}/LICENSE.txt", "licence text")
                zf.writestr(f"{top}/ATTRIBUTION.txt", "attribution text")
                for k, key in enumerate(ids):
                    name = f"{key}.jpg" if kind == "image" else f"{key}_segmentation.png"
                    data = _jpg(seed=k) if kind == "image" else _mask_png()
                    zf.writestr(f"{top}/{name}", broken.get(name, data))
    return folder


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture()
def archives(tmp_path):
    return make_archives(tmp_path / "archives")


def test_full_preparation(archives, tmp_path):
    out = tmp_path / "isic"
    summary = prepare_isic2018(out, archives, size=16, workers=1, progress=False)
    assert summary["counts"] == {"labeled": 1, "unlabeled": 9, "validation": 2, "test": 3}

    raw = json.loads((out / "datalist.json").read_text())
    assert set(raw) == {"labeled", "unlabeled", "validation", "test"}
    train = [f"images/train/ISIC_{i:07d}.png" for i in range(10)]
    expected_labeled, _ = split_labeled(train, labeled_fraction=0.1, seed=42)
    assert [e["image"] for e in raw["labeled"]] == expected_labeled
    assert all("label" in e for e in raw["unlabeled"])  # kept for evaluation / full-data training
    assert {e["image"] for e in raw["labeled"] + raw["unlabeled"]} == set(train)
    assert raw["validation"][0] == {
        "image": "images/validation/ISIC_0000100.png",
        "label": "labels/validation/ISIC_0000100.png",
    }

    datalist = load_datalist(out)  # every referenced file exists
    for entry in datalist["labeled"] + datalist["test"]:
        img, lab = Image.open(entry["image"]), Image.open(entry["label"])
        assert img.size == (16, 16) and img.mode == "RGB"
        assert lab.size == (16, 16) and lab.mode == "L"
        assert set(np.unique(np.asarray(lab)).tolist()) == {0, 255}

    info = json.loads((out / "dataset.json").read_text())
    assert (
        info["licence"] == "CC BY-NC 4.0"
        and "1902.03368" in info["citation"]
        and "HAM10000" in info["citation"]
    )
    assert info["size"] == [16, 16] and info["seed"] == 42 and info["counts"] == summary["counts"]
    assert info["archives"]["ISIC2018_Task1_Test_GroundTruth.zip"]["sha256"] == sha256sum(
        archives / "ISIC2018_Task1_Test_GroundTruth.zip"
    )
    assert _leftovers(tmp_path) == []  # no staging or scratch folder left behind
    assert not (archives / "SHA256SUMS").exists()  # nothing written into the user's folder


def test_process_pool_split_and_seed(archives, tmp_path):
    prepare_isic2018(
        tmp_path / "a", archives, size=8, labeled_fraction=0.3, seed=1, workers=2, progress=False
    )
    raw = json.loads((tmp_path / "a" / "datalist.json").read_text())
    assert len(raw["labeled"]) == 3 and len(raw["unlabeled"]) == 7
    assert Image.open(tmp_path / "a" / "images" / "test" / "ISIC_0000202.png").size == (8, 8)


def test_existing_output_and_overwrite(archives, tmp_path):
    out = tmp_path / "isic"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare_isic2018(out, archives, size=8, workers=1, progress=False)
    assert (out / "keep.txt").exists()
    prepare_isic2018(out, archives, size=8, workers=1, progress=False, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "datalist.json").exists()


def test_extracted_folders_are_accepted(archives, tmp_path):
    extracted = tmp_path / "extracted"
    for zip_path in archives.glob("*.zip"):
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(extracted)
    summary = prepare_isic2018(tmp_path / "isic", extracted, size=8, workers=1, progress=False)
    assert summary["counts"]["test"] == 3


def _assert_clean_failure(tmp_path: Path, out: Path) -> None:
    assert not out.exists()
    assert _leftovers(out.parent) == []


def test_missing_archive(archives, tmp_path):
    (archives / "ISIC2018_Task1_Validation_GroundTruth.zip").unlink()
    out = tmp_path / "isic"
    with pytest.raises(FileNotFoundError, match="ISIC2018_Task1_Validation_GroundTruth.zip"):
        prepare_isic2018(out, archives, size=8, workers=1, progress=False)
    _assert_clean_failure(tmp_path, out)


def test_wrong_checksum(archives, tmp_path):
    out = tmp_path / "isic"
    name = "ISIC2018_Task1-2_Test_Input.zip"
    actual = sha256sum(archives / name)
    with pytest.raises(ChecksumError) as e:
        prepare_isic2018(out, archives, sha256={name: "a" * 64}, size=8, workers=1, progress=False)
    assert name in str(e.value) and "a" * 64 in str(e.value) and actual in str(e.value)
    assert (archives / name).exists()  # the user's archive is not deleted
    _assert_clean_failure(tmp_path, out)


def test_checksum_file_is_used(archives, tmp_path):
    sums = tmp_path / "sums.txt"
    sums.write_text("".join(f"{sha256sum(p)}  {p.name}\n" for p in sorted(archives.glob("*.zip"))))
    prepare_isic2018(tmp_path / "ok", archives, checksum_file=sums, size=8, workers=1, progress=False)
    sums.write_text(f"{'0' * 64}  ISIC2018_Task1_Training_GroundTruth.zip\n")
    with pytest.raises(ChecksumError, match="ISIC2018_Task1_Training_GroundTruth.zip"):
        prepare_isic2018(tmp_path / "bad", archives, checksum_file=sums, size=8, workers=1, progress=False)
    _assert_clean_failure(tmp_path, tmp_path / "bad")


@pytest.mark.parametrize("workers", [1, 2])
def test_corrupt_image(tmp_path, workers):
    good = _jpg(seed=3)
    archives = make_archives(tmp_path / "archives", broken={"ISIC_0000003.jpg": good[: len(good) // 2]})
    out = tmp_path / "isic"
    with pytest.raises(CorruptImageError, match="ISIC_0000003.jpg"):
        prepare_isic2018(out, archives, size=8, workers=workers, progress=False)
    _assert_clean_failure(tmp_path, out)


def test_unreadable_image_header(tmp_path):
    archives = make_archives(tmp_path / "archives", broken={"ISIC_0000201.jpg": b"garbage, not a JPEG"})
    with pytest.raises(CorruptImageError, match="ISIC_0000201.jpg"):
        prepare_isic2018(tmp_path / "isic", archives, size=8, workers=1, progress=False)
    _assert_clean_failure(tmp_path, tmp_path / "isic")


def test_mask_of_another_size(tmp_path):
    archives = make_archives(
        tmp_path / "archives", broken={"ISIC_0000101_segmentation.png": _mask_png(31, 40)}
    )
    with pytest.raises(SizeMismatchError) as e:
        prepare_isic2018(tmp_path / "isic", archives, size=8, workers=1, progress=False)
    assert "ISIC_0000101_segmentation.png" in str(e.value) and "ISIC_0000101.jpg" in str(e.value)
    _assert_clean_failure(tmp_path, tmp_path / "isic")


def test_image_without_mask(archives, tmp_path):
    path = archives / "ISIC2018_Task1_Test_GroundTruth.zip"
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist() if "ISIC_0000202" not in n}
    with zipfile.ZipFile(path, "w") as zf:
        for n, d in members.items():
            zf.writestr(n, d)
    with pytest.raises(DataPreparationError, match="ISIC_0000202.jpg has no mask"):
        prepare_isic2018(tmp_path / "isic", archives, size=8, workers=1, progress=False)
    _assert_clean_failure(tmp_path, tmp_path / "isic")


@pytest.mark.parametrize("bad", ["../evil.txt", "/abs.txt"])
def test_unsafe_archive_member(archives, tmp_path, bad):
    with zipfile.ZipFile(archives / "ISIC2018_Task1-2_Validation_Input.zip", "a") as zf:
        zf.writestr(bad, "evil")
    out = tmp_path / "work" / "isic"
    with pytest.raises(UnsafeArchiveError) as e:
        prepare_isic2018(out, archives, size=8, workers=1, progress=False)
    assert "ISIC2018_Task1-2_Validation_Input.zip" in str(e.value) and bad in str(e.value)
    _assert_clean_failure(tmp_path, out)
    assert not list(tmp_path.rglob("evil.txt")) and not list(tmp_path.rglob("abs.txt"))


def _serve(folder: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return httpd


def test_download_records_and_then_verifies_checksums(tmp_path):
    mirror = make_archives(tmp_path / "mirror" / "2018")
    httpd = _serve(tmp_path / "mirror")
    try:
        base_url = f"http://127.0.0.1:{httpd.server_address[1]}/2018/"
        downloads = tmp_path / "downloads"
        prepare_isic2018(
            tmp_path / "isic", downloads, download=True, base_url=base_url, size=8, workers=1, progress=False
        )
        recorded = read_checksums(downloads / "SHA256SUMS")
        assert recorded == {p.name: sha256sum(p) for p in mirror.glob("*.zip")}
        # a later run verifies the downloaded files against the record
        name = "ISIC2018_Task1-2_Test_Input.zip"
        (downloads / name).write_bytes(b"tampered")
        with pytest.raises(ChecksumError, match=name):
            prepare_isic2018(
                tmp_path / "isic2",
                downloads,
                download=True,
                base_url=base_url,
                size=8,
                workers=1,
                progress=False,
            )
        assert (downloads / name).read_bytes() == b"tampered"
    finally:
        httpd.shutdown()
        httpd.server_close()
    _assert_clean_failure(tmp_path, tmp_path / "isic2")


def test_cli(archives, tmp_path, capsys):
    out = tmp_path / "isic"
    assert (
        main([str(out), "--archives-dir", str(archives), "--size", "8", "--workers", "1", "--no-progress"])
        == 0
    )
    assert "datalist.json" in capsys.readouterr().out
    assert main([str(out), "--archives-dir", str(archives), "--no-progress"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main([str(tmp_path / "x"), "--archives-dir", str(archives), "--sha256", "nonsense"]) == 1
    assert "NAME=SHA256HEX" in capsys.readouterr().err
    assert main([str(tmp_path / "y"), "--no-progress"]) == 1
    assert "--archives-dir" in capsys.readouterr().err


def test_help_exits_zero():
    result = subprocess.run(
        [sys.executable, str(REPO / "data_scripts" / "prepare_isic2018.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "--archives-dir" in result.stdout and "SHA256SUMS" in result.stdout


# --------------------------------------------------------------------------- shared helpers of monai_im.datasets.prepare


def test_image_helpers(tmp_path):
    deep = np.array([[0, 256, 65535]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    arr, shape = load_image(tmp_path / "d.png", "L")
    assert shape == (1, 3) and arr.tolist() == [[0, 1, 255]]  # 16 bit scaled to 8 bit
    big = tmp_path / "big.jpg"
    big.write_bytes(_jpg(400, 600))
    arr, shape = load_image(big, "RGB", draft=100)
    assert shape == (400, 600) and 100 <= arr.shape[0] < 400  # decoded at a reduced scale
    mask = np.array([[0, 255], [255, 0]], np.uint8)
    assert set(np.unique(resize(mask, (7, 5), "nearest")).tolist()) == {0, 255}
    assert resize(mask, (2, 2)) is mask
    assert binarize(np.array([10, 11, 200]), 10).tolist() == [0, 255, 255]
    with pytest.raises(ValueError, match="resample"):
        resize(mask, (3, 3), "cubic")


def test_find_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "__MACOSX").mkdir()
    (tmp_path / "a" / "ISIC_1.jpg").write_bytes(b"")
    (tmp_path / "__MACOSX" / "ISIC_2.jpg").write_bytes(b"")
    (tmp_path / ".ISIC_3.jpg").write_bytes(b"")
    assert list(find_files(tmp_path, r"(ISIC_\d+)\.jpg")) == ["ISIC_1"]
    (tmp_path / "ISIC_1.jpg").write_bytes(b"")
    with pytest.raises(DataPreparationError, match="twice"):
        find_files(tmp_path, r"(ISIC_\d+)\.jpg")


def test_parallel_map():
    assert parallel_map(abs, [-1, 2, -3, 4], workers=2, progress=False) == [1, 2, 3, 4]
    assert parallel_map(abs, [-5], workers=1, progress=False) == [5]
    with pytest.raises(ValueError):
        parallel_map(int, ["1", "x", "3"], workers=2, progress=False)


# --------------------------------------------------------------------------- bounded extraction, leftovers


def test_extraction_limits_reach_the_archives(archives, tmp_path, capsys):
    out = tmp_path / "isic"
    with pytest.raises(ArchiveLimitError) as e:
        prepare_isic2018(
            out, archives, size=8, workers=1, progress=False, limits=ExtractionLimits(max_total_size=2000)
        )
    assert "ISIC2018_Task1-2_Training_Input.zip" in str(e.value) and "limit" in str(e.value)
    _assert_clean_failure(tmp_path, out)
    argv = [str(out), "--archives-dir", str(archives), "--workers", "1", "--no-progress"]
    assert main([*argv, "--max-extract-size", "2K"]) == 1
    last = capsys.readouterr().err.splitlines()[-1]  # the error, one line after the checksum notes
    assert last.startswith("prepare_isic2018.py: error:")
    assert "ISIC2018_Task1-2_Training_Input.zip" in last and "2.0 KiB" in last
    _assert_clean_failure(tmp_path, out)
    with pytest.raises(SystemExit):
        main([*argv, "--max-extract-size", "lots"])
    assert "positive size such as 64G" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*argv, "--max-compression-ratio", "0.5"])
    assert "ratio of at least 1" in capsys.readouterr().err


def test_free_space_of_all_archives_is_checked_before_extracting(archives, tmp_path, monkeypatch):
    sizes = []
    for path in archives.glob("*.zip"):
        with zipfile.ZipFile(path) as zf:
            sizes.append(sum(i.file_size for i in zf.infolist()))
    needed, one = sum(sizes), max(sizes)
    usage = shutil.disk_usage(tmp_path)
    # enough for any single archive, not for all six together
    monkeypatch.setattr(extract_module.shutil, "disk_usage", lambda path: usage._replace(free=needed - 1))
    assert one < needed - 1
    out = tmp_path / "isic"
    with pytest.raises(NotEnoughSpaceError) as e:
        prepare_isic2018(out, archives, size=8, workers=1, progress=False)
    assert "ISIC2018_Task1_Test_GroundTruth.zip" in str(e.value) and "free" in str(e.value)
    _assert_clean_failure(tmp_path, out)


def _plant_leftovers(parent: Path, name: str) -> dict[str, Path]:
    paths = {
        "partial": parent / f".{name}.k3x_9a2b.partial",
        "work": parent / f".{name}.q81zzm0c.work",
        "other_target": parent / f".{name}2018.k3x_9a2b.partial",
        "old": parent / f".{name}.old",
        "user": parent / f".{name}.notes",
    }
    for path in paths.values():
        (path / "images").mkdir(parents=True)
        (path / "images" / "x.png").write_bytes(b"half written")
    paths["file"] = parent / f".{name}.abc.partial.txt"
    paths["file"].write_text("not a folder")
    return paths


def test_remove_stale_partials(tmp_path):
    paths = _plant_leftovers(tmp_path, "isic")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / ".isic.zz.work").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / ".isic.ln.partial").symlink_to(tmp_path / "elsewhere")
    removed = remove_stale_partials(tmp_path / "isic", scratch)
    assert sorted(p.name for p in removed) == [".isic.k3x_9a2b.partial", ".isic.zz.work"]
    assert not paths["partial"].exists() and not (scratch / ".isic.zz.work").exists()
    # the scratch folder of a run with a work dir is only looked for in that work dir
    assert paths["work"].exists()
    assert remove_stale_partials(tmp_path / "isic") == [paths["work"]]
    for key in ("other_target", "old", "user", "file"):
        assert paths[key].exists(), key
    assert (tmp_path / "elsewhere").is_dir() and (tmp_path / ".isic.ln.partial").is_symlink()
    assert remove_stale_partials(tmp_path / "missing" / "isic") == []


def test_next_run_removes_leftovers_of_an_interrupted_one(archives, tmp_path, capsys):
    paths = _plant_leftovers(tmp_path, "isic")
    prepare_isic2018(tmp_path / "isic", archives, size=8, workers=1, progress=False)
    assert not paths["partial"].exists() and not paths["work"].exists()
    assert "left over from an interrupted preparation" in capsys.readouterr().err
    assert _leftovers(tmp_path) == sorted(p.name for k, p in paths.items() if k not in ("partial", "work"))


def test_a_second_run_into_the_same_folder_is_refused_while_one_runs(tmp_path):
    out = tmp_path / "isic"
    with output_folder(out) as (staging, scratch):
        with pytest.raises(FileExistsError, match="another preparation"):
            with output_folder(out):
                pass
        assert staging.is_dir() and scratch.is_dir()  # the running one is left alone
        (staging / "ok.txt").write_text("done")
    assert (out / "ok.txt").read_text() == "done" and _leftovers(tmp_path) == []
