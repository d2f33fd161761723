"""The preflight's checks across files: geometry, empty class maps, header sizes, duplicates, warnings."""

from __future__ import annotations

import json
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from monai_im.data import DatasetCheck, DatasetCheckError, load_datalist

VOLUME_CHECK = {"mode": "multiclass", "in_channels": 1, "out_channels": 3, "spatial_dims": 3}


def volume(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> str:
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
    return path.name


def class_map(classes: bool = True) -> np.ndarray:
    m = np.zeros((16, 16, 16), np.uint8)
    if classes:
        m[4:10, 4:10, 4:10] = 1
        m[6:8, 6:8, 6:8] = 2
    return m


def write_datalist(root: Path, **lists: list) -> Path:
    (root / "datalist.json").write_text(json.dumps(lists))
    return root


def volume_study(root: Path, label_affine: np.ndarray | None = None, empty: tuple[int, ...] = ()) -> Path:
    """Two labeled volumes and one validation volume (16^3 NIfTI, 1 mm)."""
    root.mkdir(parents=True, exist_ok=True)
    ct = np.random.default_rng(0).integers(-100, 200, (16, 16, 16)).astype(np.int16)
    entries = []
    for i in range(3):
        entries.append(
            {
                "image": volume(root / f"ct{i}.nii.gz", ct),
                "label": volume(
                    root / f"lab{i}.nii.gz", class_map(i not in empty), label_affine if i == 0 else None
                ),
            }
        )
    return write_datalist(root, labeled=entries[:2], validation=entries[2:])


def check(root: Path, **kw) -> tuple[list[str], list[str]]:
    """(problems, warnings)."""
    run = DatasetCheck(progress=False, **kw)
    try:
        run(load_datalist(root, check_files=False))
    except DatasetCheckError as e:
        return e.problems, run.warnings
    return [], run.warnings


def test_a_label_whose_header_places_it_elsewhere_is_named_with_its_image(tmp_path):
    flipped_and_shifted = np.diag([-1.0, 1.0, 1.0, 1.0])
    flipped_and_shifted[:3, 3] = [15.0, 100.0, 0.0]
    root = volume_study(tmp_path / "d", label_affine=flipped_and_shifted)
    problems, _ = check(root, **VOLUME_CHECK)
    assert len(problems) == 1
    line = problems[0]
    assert line.startswith(f"{root / 'lab0.nii.gz'}: label does not lie on its image {root / 'ct0.nii.gz'}")
    assert "orientation LAS vs RAS" in line and "origin (15, 100, 0) vs (0, 0, 0) mm" in line
    assert "allow_misaligned_labels" in line and "\n" not in line
    assert check(root, allow_misaligned_labels=True, **VOLUME_CHECK) == ([], [])


def test_header_rounding_is_within_the_tolerances(tmp_path):
    nearly = np.diag([1.0 + 1e-5, 1.0, 1.0, 1.0])
    nearly[:3, 3] = [0.004, -0.004, 0.0]  # under 1 % of a 1 mm voxel
    assert check(volume_study(tmp_path / "a", label_affine=nearly), **VOLUME_CHECK) == ([], [])
    coarse = np.diag([1.01, 1.0, 1.0, 1.0])  # 1 % larger voxels: another grid
    problems, _ = check(volume_study(tmp_path / "b", label_affine=coarse), **VOLUME_CHECK)
    assert len(problems) == 1 and "spacing (1.01, 1, 1) vs (1, 1, 1) mm" in problems[0]


def test_all_empty_class_volumes_are_refused_one_empty_volume_is_fine(tmp_path):
    problems, _ = check(volume_study(tmp_path / "a", empty=(0, 1, 2)), **VOLUME_CHECK)
    assert (
        len(problems) == 1 and "every labeled and validation class map holds only background" in problems[0]
    )
    assert check(volume_study(tmp_path / "b", empty=(1,)), **VOLUME_CHECK) == ([], [])


def _nifti_header_bomb(path: Path, shape: tuple[int, ...]) -> None:
    """A NIfTI header declaring ``shape`` int16 voxels, followed by a few bytes of data."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    path.write_bytes(header.binaryblock + b"\0" * 4 + b"\1" * 1000)


def _png_header(path: Path, width: int, height: int) -> None:
    """A PNG whose header declares ``width`` x ``height`` RGB pixels, with almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_a_header_declaring_a_huge_volume_is_refused_before_any_memory_is_taken(tmp_path):
    root = volume_study(tmp_path / "d")
    _nifti_header_bomb(root / "ct1.nii", (2000, 2000, 2000))
    dl = json.loads((root / "datalist.json").read_text())
    dl["labeled"][1]["image"] = "ct1.nii"
    write_datalist(root, **dl)
    assert (root / "ct1.nii").stat().st_size < 1400
    tracemalloc.start()
    start = time.perf_counter()
    problems, _ = check(root, **VOLUME_CHECK)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.perf_counter() - start < 10 and peak < 100 * 2**20
    assert problems == [
        f"{root / 'ct1.nii'}: its header declares 2000x2000x2000 (8e+09 values), more than max_voxels = "
        f"{2**31}; if the file really is that large raise max_voxels, otherwise the file is corrupt: replace it"
    ]


def test_a_large_png_is_read_or_refused_for_its_size_never_called_corrupt(tmp_path, monkeypatch):
    root = tmp_path / "d"
    root.mkdir()
    rng = np.random.default_rng(0)
    entries = []
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / f"i{i}.png")
        m = np.zeros((16, 16), np.uint8)
        m[4:9, 4:9] = 255
        Image.fromarray(m).save(root / f"m{i}.png")
        entries.append({"image": f"i{i}.png", "label": f"m{i}.png"})
    write_datalist(root, labeled=entries[:1], validation=entries[1:])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # every 16x16 image is a "bomb" to PIL now
    assert check(root) == ([], []), "read despite PIL's decompression-bomb limit"
    _png_header(root / "i1.png", 30000, 30000)
    problems, _ = check(root, max_voxels=10**8)
    assert len(problems) == 1 and problems[0].startswith(
        f"{root / 'i1.png'}: its header declares 30000x30000 x 3"
    )


def test_duplicate_and_overlapping_entries_are_named(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    names = []
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / f"i{i}.png")
        m = np.zeros((8, 8), np.uint8)
        m[2:5, 2:5] = 255
        Image.fromarray(m).save(root / f"m{i}.png")
        names.append({"image": f"i{i}.png", "label": f"m{i}.png"})
    write_datalist(
        root,
        labeled=[names[0], names[1], names[0]],
        unlabeled=[{"image": "i1.png"}, {"image": "i3.png"}],
        validation=[names[2]],
        test=[{"image": "./i2.png", "label": "m2.png"}, names[3]],
    )
    problems, _ = check(root)
    assert problems == [
        f"{root / 'i0.png'}: listed 2 times in labeled (entries 0, 2); list each image once",
        f"{root / 'i1.png'}: listed in labeled (entry 1) and unlabeled (entry 0); remove it from unlabeled",
        f"{root / 'i2.png'}: listed in validation (entry 0) and test (entry 0); an image belongs to one of "
        "labeled, validation and test, or the metrics measure images the network was trained or selected on",
    ]


def test_cmyk_jpegs_and_twelve_bit_pngs_are_warnings_not_problems(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(root / "print.jpg")
    twelve = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 15).astype(np.uint16)  # up to 3825
    Image.fromarray(twelve).save(root / "scan.png")
    m = np.zeros((16, 16), np.uint8)
    m[3:9, 3:9] = 1
    Image.fromarray(m).save(root / "m.png")
    write_datalist(
        root,
        labeled=[{"image": "print.jpg", "label": "m.png"}],
        validation=[{"image": "scan.png", "label": "m.png"}],
    )
    problems, warnings = check(root)
    assert problems == [] and len(warnings) == 2
    assert warnings[0].startswith(f"1 CMYK image(s), the first {root / 'print.jpg'}: read as RGB")
    assert "all 1 16-bit image(s) hold values below 4096 (largest 3825)" in warnings[1]
    assert "set intensity_range to [0, 4095]" in warnings[1]
    assert check(root, intensity_range=[0, 4095])[1] == warnings[:1]


def test_warnings_are_logged_by_the_check(tmp_path, caplog):
    root = tmp_path / "d"
    root.mkdir()
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(root / "a.jpg")
    m = np.zeros((8, 8), np.uint8)
    m[1:3, 1:3] = 255
    Image.fromarray(m).save(root / "m.png")
    write_datalist(
        root,
        labeled=[{"image": "a.jpg", "label": "m.png"}],
        validation=[{"image": "a.jpg", "label": "m.png"}],
    )
    with caplog.at_level("WARNING", logger="monai_im"), pytest.raises(DatasetCheckError):
        DatasetCheck(progress=False)(
            load_datalist(root, check_files=False)
        )  # a.jpg in labeled and validation
    assert any("CMYK" in r.getMessage() for r in caplog.records)
