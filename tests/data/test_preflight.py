"""The dataset preflight: every bad file is named, all at once, before any training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_im.data import DatasetCheck, DatasetCheckError, load_checked_datalist, load_datalist
from monai_im.data import preflight as preflight_mod


def rgb(path: Path, size=(8, 8)) -> str:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path.name


def mask(path: Path, values=(0, 255), size=(8, 8)) -> str:
    m = np.full(size, values[0], np.uint8)
    m[2:5, 2:5] = values[-1]
    Image.fromarray(m).save(path)
    return path.name


def dataset(root: Path, n: int = 3, **bad: str) -> Path:
    """A small valid dataset; ``bad`` maps an entry name (e.g. 'lab0') to a writer of a bad file."""
    root.mkdir(parents=True, exist_ok=True)
    entries = [{"image": rgb(root / f"img{i}.png"), "label": mask(root / f"lab{i}.png")} for i in range(n)]
    (root / "datalist.json").write_text(
        json.dumps({"labeled": entries[:1], "validation": entries[1:2], "test": entries[2:]})
    )
    return root


def two_pairs(root: Path, values: tuple[int, int]) -> Path:
    """One labeled and one validation pair whose masks hold ``values``."""
    root.mkdir()
    entries = [
        {"image": rgb(root / f"i{k}.png"), "label": mask(root / f"m{k}.png", values)} for k in range(2)
    ]
    (root / "datalist.json").write_text(json.dumps({"labeled": entries[:1], "validation": entries[1:]}))
    return root


def check(root: Path, **kw) -> list[str]:
    try:
        DatasetCheck(**kw)(load_datalist(root, check_files=False))
    except DatasetCheckError as e:
        return e.problems
    return []


def test_a_valid_dataset_passes(tmp_path):
    assert check(dataset(tmp_path / "d")) == []


def test_every_bad_file_is_named_once_in_one_run(tmp_path):
    root = dataset(tmp_path / "d", n=6)
    # truncated PNG, truncated JPEG, a text file as an image, a 3-colour mask, a grey mask with many values,
    # a mask of another size
    data = (root / "img0.png").read_bytes()
    (root / "img0.png").write_bytes(data[: len(data) // 2])
    Image.fromarray(np.zeros((8, 8, 3), np.uint8) + 90).save(root / "img1.jpg")
    jpg = (root / "img1.jpg").read_bytes()
    (root / "img1.jpg").write_bytes(jpg[: len(jpg) // 2])
    (root / "img2.png").write_text("not an image\n")
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[..., 0] = 255
    Image.fromarray(colour).save(root / "lab3.png")
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(root / "lab4.png")
    mask(root / "lab5.png", size=(9, 8))
    dl = json.loads((root / "datalist.json").read_text())
    dl["validation"][0]["image"] = "img1.jpg"
    (root / "datalist.json").write_text(json.dumps(dl))
    problems = check(root)
    by_file = {Path(p.split(": ", 1)[0]).name: p for p in problems}
    assert len(problems) == len(by_file) == 6, problems
    assert "img0.png" in by_file and "img1.jpg" in by_file and "img2.png" in by_file
    assert "3 channels" in by_file["lab3.png"] or "different colour" in by_file["lab3.png"]
    assert "64 distinct values" in by_file["lab4.png"] and "binarize_labels" in by_file["lab4.png"]
    assert "differs from its image" in by_file["lab5.png"]
    assert all("\n" not in p for p in problems)


def test_missing_files_are_collected_too(tmp_path):
    root = dataset(tmp_path / "d")
    (root / "lab1.png").unlink()
    (root / "img2.png").unlink()
    problems = check(root)
    assert sorted(Path(p.split(": ")[0]).name for p in problems) == ["img2.png", "lab1.png"]
    assert all("does not exist" in p for p in problems)


def test_zero_one_masks_under_a_zero_255_rule_are_refused_not_trained_as_empty(tmp_path):
    root = two_pairs(tmp_path / "d", (0, 1))
    assert check(root) == []  # the default rule label > 0 reads them right
    problems = check(root, label_threshold=127.5)
    assert len(problems) == 1 and "every labeled and validation mask is empty" in problems[0]
    assert "{0, 1}" in problems[0]


def test_a_rule_that_makes_every_mask_full_is_refused(tmp_path):
    root = two_pairs(tmp_path / "d", (1, 2))
    problems = check(root)
    assert len(problems) == 1 and "all foreground" in problems[0]
    assert check(root, label_threshold=1) == []


def test_images_the_network_cannot_take_and_float_ranges(tmp_path):
    root = dataset(tmp_path / "d")
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(root / "img0.png")  # RGBA -> RGB is fine
    Image.fromarray(np.zeros((8, 8), np.float32) + 5.0).save(root / "img1.tif")
    dl = json.loads((root / "datalist.json").read_text())
    dl["validation"][0]["image"] = "img1.tif"
    (root / "datalist.json").write_text(json.dumps(dl))
    problems = check(root)
    assert len(problems) == 1 and "img1.tif" in problems[0] and "intensity_range" in problems[0]
    assert check(root, intensity_range=[0, 10]) == []
    problems = check(root, in_channels=2, intensity_range=[0, 10])
    assert any("the network takes 2" in p for p in problems)


def test_multilabel_masks_need_their_channels(tmp_path):
    root = dataset(tmp_path / "d")
    problems = check(root, mode="multilabel", in_channels=3, out_channels=3)
    assert len(problems) == 3 and all("needs 3" in p for p in problems)


def test_results_are_cached_by_size_and_mtime(tmp_path, monkeypatch):
    root = dataset(tmp_path / "d")
    cache = tmp_path / "out"
    calls: list[str] = []
    real = preflight_mod.read_facts

    def counting(path, *args, **kwargs):
        calls.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(preflight_mod, "read_facts", counting)
    assert check(root, cache_dir=cache) == []
    assert len(calls) == 6
    calls.clear()
    assert check(root, cache_dir=cache) == []
    assert calls == [], "a rerun decodes nothing that did not change"
    data = (root / "img0.png").read_bytes()
    (root / "img0.png").write_bytes(data[: len(data) // 2])
    problems = check(root, cache_dir=cache)
    assert calls == ["img0.png"] and len(problems) == 1
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["datalist.json"] + [f"img{i}.png" for i in range(3)] + [f"lab{i}.png" for i in range(3)]
    ), "nothing is written into the dataset folder"


def test_bundle_entry_point_prints_one_line_per_problem_and_exits(tmp_path, capsys):
    root = dataset(tmp_path / "d")
    (root / "img0.png").write_text("text")
    with pytest.raises(SystemExit) as err:
        load_checked_datalist(root, DatasetCheck(progress=False))
    message = str(err.value)
    assert message.startswith("error: dataset check failed: 1 problem(s) in 1 of 6 files")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "img0.png" in lines[0] and lines[0].startswith("error: ")


def test_bundle_entry_point_turns_malformed_datalists_into_one_line(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    (root / "datalist.json").write_text('{"labeled": [{"label": "x.png"}], "validation": []}')
    with pytest.raises(SystemExit) as err:
        load_checked_datalist(root, DatasetCheck(progress=False))
    assert "labeled[0]" in str(err.value) and "\n" not in str(err.value)


def test_one_bit_masks_pass_and_nan_images_are_refused(tmp_path):
    root = dataset(tmp_path / "d")
    bits = np.zeros((8, 8), bool)
    bits[1:4, 1:4] = True
    Image.fromarray(bits).save(root / "lab0.png")  # PIL mode "1"
    Image.fromarray(np.full((8, 8), np.nan, np.float32)).save(root / "img1.tif")
    dl = json.loads((root / "datalist.json").read_text())
    dl["validation"][0]["image"] = "img1.tif"
    (root / "datalist.json").write_text(json.dumps(dl))
    problems = check(root, intensity_range=[0, 1])
    assert len(problems) == 1 and "img1.tif" in problems[0] and "NaN" in problems[0]
