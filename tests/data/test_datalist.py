"""Tests of monai_im.data.datalist: reading, checking, splitting and writing datalists."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from monai_im.data import DATALIST_KEYS, DatasetNotFoundError, load_datalist, split_labeled, write_datalist


def _dataset(root: Path, datalist: dict) -> Path:
    """A dataset folder with every file the datalist names (4x4 PNGs, or empty files) and the datalist itself."""
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for entries in datalist.values():
        for entry in entries:
            for value in [entry] if isinstance(entry, str) else entry.values():
                path = Path(value) if Path(value).is_absolute() else root / value
                path.parent.mkdir(parents=True, exist_ok=True)
                if path.suffix == ".png":
                    Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)
                else:
                    path.touch()
    (root / "datalist.json").write_text(json.dumps(datalist))
    return root


def _entry(name: str) -> dict[str, str]:
    return {"image": f"images/{name}.png", "label": f"labels/{name}.png"}


def test_missing_folder_and_datalist_are_named(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="nowhere.*does not exist.*make one"):
        load_datalist(tmp_path / "nowhere", hint="make one")
    with pytest.raises(FileNotFoundError, match=r"datalist\.json does not exist"):
        load_datalist(tmp_path)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not a valid JSON file"),
        ("[1, 2]", "expected a JSON object"),
        ('{"labeled": [], "training": []}', r"unknown keys \['training'\]"),
        ('{"labeled": {"image": "a.png"}}', "'labeled' must be a list"),
        ('{"labeled": [{"label": "a.png"}]}', r"labeled\[0\] must be an object with an 'image'"),
        ('{"labeled": [{"image": "a.png"}]}', r"labeled\[0\] \(a.png\) has no 'label'"),
        ('{"labeled": [], "validation": []}', "'labeled' must hold at least one entry"),
    ],
)
def test_load_errors_name_the_file(tmp_path, content, message):
    (tmp_path / "datalist.json").write_text(content)
    with pytest.raises(ValueError, match=message) as exc:
        load_datalist(tmp_path, check_files=False)
    assert str(tmp_path / "datalist.json") in str(exc.value)


def test_missing_image_file_is_named(tmp_path):
    root = _dataset(tmp_path / "ds", {"labeled": [_entry("a")], "validation": [_entry("b")]})
    (root / "labels" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"validation\[0\] refers to a missing file") as exc:
        load_datalist(root)
    assert str(root / "datalist.json") in str(exc.value) and "b.png" in str(exc.value)
    assert load_datalist(root, check_files=False)["validation"][0]["label"] == str(root / "labels" / "b.png")


def test_relative_paths_are_resolved(tmp_path):
    outside = tmp_path / "elsewhere" / "x.png"
    datalist = {
        "labeled": [_entry("a")],
        "unlabeled": [{"image": "images/u.png"}, "images/v.png"],
        "validation": [{"image": str(outside), "label": "labels/b.png", "case": "b"}],
    }
    root = _dataset(tmp_path / "ds", datalist)
    loaded = load_datalist(root)
    assert set(loaded) == set(DATALIST_KEYS) and loaded["test"] == []
    assert loaded["labeled"] == [{"image": str(root / "images/a.png"), "label": str(root / "labels/a.png")}]
    assert loaded["unlabeled"] == [
        {"image": str(root / "images/u.png")},
        {"image": str(root / "images/v.png")},
    ]
    assert loaded["validation"][0] == {
        "image": str(outside),
        "label": str(root / "labels/b.png"),
        "case": "b",
    }


def test_split_is_seeded_disjoint_and_ordered():
    items = [f"case{i}" for i in range(50)]
    labeled, unlabeled = split_labeled(items, labeled_fraction=0.1, seed=4)
    assert len(labeled) == 5 and len(unlabeled) == 45
    assert not set(labeled) & set(unlabeled) and set(labeled) | set(unlabeled) == set(items)
    assert labeled == sorted(labeled, key=items.index) and unlabeled == sorted(unlabeled, key=items.index)
    assert split_labeled(items, labeled_fraction=0.1, seed=4) == (labeled, unlabeled)
    assert split_labeled(items, labeled_fraction=0.1, seed=5)[0] != labeled


def test_split_bounds():
    assert len(split_labeled(list(range(5)), labeled_fraction=0.01)[0]) == 1  # min_labeled
    assert split_labeled(list(range(5)), labeled_fraction=1.0) == (list(range(5)), [])
    assert len(split_labeled(list(range(5)), labeled_fraction=0.01, min_labeled=3)[0]) == 3
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="labeled_fraction"):
            split_labeled([1, 2, 3], labeled_fraction=bad)


def test_write_datalist_round_trips(tmp_path):
    root = _dataset(tmp_path / "ds", {"labeled": [_entry("a"), _entry("b")], "validation": [_entry("c")]})
    loaded = load_datalist(root)
    outside = tmp_path / "elsewhere" / "x.png"
    outside.parent.mkdir()
    shutil.copy(root / "labels" / "c.png", outside)
    loaded["test"] = [{"image": str(outside), "label": str(root / "labels" / "c.png")}]
    path = write_datalist(root / "datalist.json", loaded)
    raw = json.loads(path.read_text())
    assert raw["labeled"] == [_entry("a"), _entry("b")]  # relative to the folder again
    assert raw["test"][0]["image"] == str(outside)  # outside the folder: stays absolute
    assert load_datalist(root) == loaded
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_load_datalist_names_a_corrupt_image_and_a_mask_of_another_size(tmp_path):
    import json

    import numpy as np
    import pytest
    from PIL import Image

    from monai_im.data import load_datalist

    (tmp_path / "a.png").write_bytes(b"not a png at all")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a_mask.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "b.png")
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(tmp_path / "b_mask.png")
    entries = {
        "labeled": [{"image": "a.png", "label": "a_mask.png"}],
        "validation": [{"image": "b.png", "label": "b_mask.png"}],
    }
    (tmp_path / "datalist.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"a\.png is not a readable image"):
        load_datalist(tmp_path)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"b_mask\.png is 9x8 but its image .*b\.png is 8x8"):
        load_datalist(tmp_path)
    entries["validation"][0]["label"] = "a_mask.png"
    (tmp_path / "datalist.json").write_text(json.dumps(entries))
    assert len(load_datalist(tmp_path)["labeled"]) == 1
