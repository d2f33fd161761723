"""Tests of the synthetic demo datasets (monai_im.datasets.synthetic and its generators)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

import monai_im.datasets.synthetic as synthetic
from monai_im.data import DATALIST_KEYS, load_datalist
from monai_im.datasets import (
    ensure_demo_dataset,
    hela_like_sample,
    isic_like_sample,
    make_demo_dataset,
    make_hela_like_dataset,
    make_isic_like_dataset,
    position_radius,
)
from monai_im.datasets.drawing import image_rng

SMALL = {"num_train": 10, "num_val": 2, "num_test": 2, "labeled_fraction": 0.2, "progress": False}
SCRIPT = Path(__file__).resolve().parents[2] / "data_scripts" / "make_demo_data.py"


@pytest.fixture(scope="module")
def isic_dir(tmp_path_factory) -> Path:
    return make_isic_like_dataset(tmp_path_factory.mktemp("isic") / "ds", size=32, seed=3, **SMALL)


@pytest.fixture(scope="module")
def hela_dir(tmp_path_factory) -> Path:
    return make_hela_like_dataset(tmp_path_factory.mktemp("hela") / "ds", size=64, seed=3, **SMALL)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


@pytest.mark.parametrize("kind", ["isic", "hela"])
def test_same_seed_gives_identical_bytes_other_seed_differs(tmp_path, kind):
    a = _files(make_demo_dataset(kind, tmp_path / "a", size=32, seed=1, **SMALL))
    b = _files(make_demo_dataset(kind, tmp_path / "b", size=32, seed=1, **SMALL))
    c = _files(make_demo_dataset(kind, tmp_path / "c", size=32, seed=2, **SMALL))
    assert a == b
    assert a.keys() == c.keys()
    images = [k for k in a if k.startswith(("images/", "labels/"))]
    assert len(images) == 2 * 14
    assert all(a[k] != c[k] for k in images if k.startswith("images/"))


def test_images_do_not_depend_on_other_split_counts(tmp_path):
    a = make_isic_like_dataset(tmp_path / "a", num_train=3, num_val=2, num_test=1, size=32, progress=False)
    b = make_isic_like_dataset(tmp_path / "b", num_train=7, num_val=2, num_test=3, size=32, progress=False)
    for name in ("images/train_0002.png", "images/val_0001.png", "labels/test_0000.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_datalist_layout(isic_dir):
    raw = json.loads((isic_dir / "datalist.json").read_text())
    assert set(raw) == set(DATALIST_KEYS)
    for key in DATALIST_KEYS:
        for entry in raw[key]:
            assert set(entry) == {"image", "label"}
            for field in ("image", "label"):
                assert not Path(entry[field]).is_absolute()
                assert (isic_dir / entry[field]).is_file()
    labeled = {e["image"] for e in raw["labeled"]}
    unlabeled = {e["image"] for e in raw["unlabeled"]}
    assert not labeled & unlabeled
    assert labeled | unlabeled == {f"images/train_{i:04d}.png" for i in range(10)}
    assert len(labeled) == 2  # 20% of 10
    assert (len(raw["validation"]), len(raw["test"])) == (2, 2)
    loaded = load_datalist(isic_dir, required=DATALIST_KEYS)  # the bundles' reader accepts it
    assert all(Path(e["image"]).is_absolute() for e in loaded["test"])


def test_labeled_fraction_default_is_ten_percent(tmp_path):
    root = make_isic_like_dataset(
        tmp_path / "d", num_train=40, num_val=1, num_test=0, size=16, progress=False
    )
    raw = json.loads((root / "datalist.json").read_text())
    assert (len(raw["labeled"]), len(raw["unlabeled"]), raw["test"]) == (4, 36, [])


def test_dataset_description(hela_dir):
    info = json.loads((hela_dir / "dataset.json").read_text())
    assert info["kind"] == "hela"
    assert info["seed"] == 3
    assert info["image_size"] == [64, 64]
    assert info["label_channels"] == ["alive", "dead", "position"]
    assert info["labeled_fraction"] == 0.2
    assert info["counts"] == {"labeled": 2, "unlabeled": 8, "validation": 2, "test": 2}
    assert "synthetic" in info["license"]


def test_isic_images_and_masks(isic_dir):
    fractions = []
    for path in sorted((isic_dir / "labels").glob("*.png")):
        with Image.open(isic_dir / "images" / path.name) as im:
            assert (im.mode, im.size) == ("RGB", (32, 32))
        mask = _read(path)
        assert mask.shape == (32, 32) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        fractions.append((mask > 0).mean())
    assert min(fractions) > 0.0 and max(fractions) < 1.0
    assert 0.03 < np.mean(fractions) < 0.7


def test_isic_lesion_differs_from_skin():
    image, mask = isic_like_sample(128, image_rng(0, "train", 5))
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    lesion = mask > 0
    around = ndimage.binary_dilation(lesion, iterations=6) & ~ndimage.binary_dilation(lesion, iterations=2)
    assert image[lesion].mean() < image[around].mean()  # lesions are darker than the skin around them


def _family_sample(monkeypatch, family, index: int, size: int = 96):
    """An image of one family: the family draw is replaced, the rest of the generator runs as it is."""
    from monai_im.datasets import isic_like

    monkeypatch.setattr(isic_like, "draw_family", lambda rng: family)
    return isic_like_sample(size, image_rng(1, "test", index), families=True)


@pytest.mark.parametrize("kind", ["isic", "hela"])
def test_families_are_drawn_with_their_weights_and_differ_from_the_classic_images(kind):
    from monai_im.datasets import hela_like, isic_like

    module, sample = {"isic": (isic_like, isic_like_sample), "hela": (hela_like, hela_like_sample)}[kind]
    rng = np.random.default_rng(0)
    names = [module.draw_family(rng).name for _ in range(4000)]
    weights = np.array([f.weight for f in module.FAMILIES]) / sum(f.weight for f in module.FAMILIES)
    seen = np.array([names.count(f.name) for f in module.FAMILIES]) / len(names)
    np.testing.assert_allclose(seen, weights, atol=0.025)
    classic, _ = sample(64, image_rng(0, "train", 1))
    again, _ = sample(64, image_rng(0, "train", 1), families=False)
    varied, mask = sample(64, image_rng(0, "train", 1), families=True)
    assert np.array_equal(classic, again) and not np.array_equal(classic, varied)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}


def test_isic_family_appearance_is_what_augmentation_cannot_make(monkeypatch):
    from monai_im.datasets.isic_like import FAMILIES

    by_name = {f.name: f for f in FAMILIES}

    def lesion_redness(family):  # red minus green inside the lesion, less the same on the skin around it
        out = []
        for i in range(6):
            image, mask = _family_sample(monkeypatch, family, i)
            lesion = mask > 0
            around = ndimage.binary_dilation(lesion, iterations=6) & ~ndimage.binary_dilation(
                lesion, iterations=2
            )
            rg = image[..., 0].astype(float) - image[..., 1]
            out.append(rg[lesion].mean() - rg[around].mean())
        return np.mean(out)

    assert lesion_redness(by_name["amelanotic"]) > lesion_redness(by_name["standard"]) + 5
    # a colour cast changes the channel balance of the whole image (brightness/contrast changes cannot)
    blue = np.mean(
        [_family_sample(monkeypatch, by_name["polarised-blue"], i)[0].mean((0, 1)) for i in range(6)], 0
    )
    green = np.mean(
        [_family_sample(monkeypatch, by_name["green-hairy"], i)[0].mean((0, 1)) for i in range(6)], 0
    )
    assert blue[2] > blue[0] and green[1] > green[2] + 20
    # satellites: the lesion mask has separate parts; elongated lesions are long and thin
    parts = [ndimage.label(_family_sample(monkeypatch, by_name["dark-skin"], i)[1] > 0)[1] for i in range(6)]
    assert max(parts) >= 2 and np.mean(parts) > 1.5

    def elongation(mask):
        ys, xs = np.nonzero(mask > 0)
        ev = np.linalg.eigvalsh(np.cov(np.stack([ys, xs])))
        return float(np.sqrt(ev[1] / max(ev[0], 1e-6)))

    long_ = [elongation(_family_sample(monkeypatch, by_name["green-hairy"], i)[1]) for i in range(6)]
    compact = [elongation(_family_sample(monkeypatch, by_name["amelanotic"], i)[1]) for i in range(6)]
    assert np.median(long_) > 1.3 * np.median(compact)


def test_variety_is_recorded_and_an_unknown_one_is_refused_before_writing(tmp_path):
    out = make_isic_like_dataset(tmp_path / "fam", size=32, seed=0, **SMALL)
    assert json.loads((out / "dataset.json").read_text())["variety"] == "classic"
    fam = make_demo_dataset("isic", tmp_path / "fam2", size=32, seed=0, variety="families", **SMALL)
    assert json.loads((fam / "dataset.json").read_text())["variety"] == "families"
    assert _files(fam / "images") != _files(out / "images")
    assert ensure_demo_dataset("isic", fam, variety="families") == str(fam)  # reused
    with pytest.raises(ValueError, match="holds the 'classic' variety of the demo data, not 'families'"):
        ensure_demo_dataset("isic", out, variety="families")
    with pytest.raises(ValueError, match="holds the 'families' variety"):
        ensure_demo_dataset("isic", fam, size=32)
    with pytest.raises(ValueError, match=r"no variety 'stained'; choose one of \['classic', 'families'\]"):
        make_demo_dataset("hela", tmp_path / "h", size=32, variety="stained", **SMALL)
    assert not (tmp_path / "h").exists()


def test_hela_images_and_masks(hela_dir):
    for path in sorted((hela_dir / "labels").glob("*.png")):
        with Image.open(hela_dir / "images" / path.name) as im:
            assert (im.mode, im.size) == ("L", (64, 64))
        with Image.open(path) as im:
            assert im.mode == "RGB"
        mask = _read(path)
        assert set(np.unique(mask)) <= {0, 255}
        alive, dead, position = (mask[..., c] > 0 for c in range(3))
        assert not (alive & dead).any()
        assert not (position & ~(alive | dead)).any()
        assert alive.any() and position.any()


def test_hela_cells_of_distinct_kinds_and_one_disc_per_cell():
    image, mask = hela_like_sample(256, image_rng(0, "train", 1))
    assert image.shape == (256, 256) and image.dtype == np.uint8
    alive, dead, position = (mask[..., c] > 0 for c in range(3))
    assert dead.any()
    _, n_discs = ndimage.label(position)
    disc_sizes = ndimage.sum(position, ndimage.label(position)[0], range(1, n_discs + 1))
    assert n_discs >= ndimage.label(alive | dead)[1]  # touching cells share a region, not a disc
    assert disc_sizes.max() <= np.pi * 8.5**2
    # dead cells are smaller than alive ones, and their cores brighter
    labels_alive, n_alive = ndimage.label(alive & ~ndimage.binary_dilation(dead))
    labels_dead, n_dead = ndimage.label(dead)
    assert np.median(np.bincount(labels_dead.ravel())[1:]) < np.median(np.bincount(labels_alive.ravel())[1:])
    assert image[dead & position].mean() > image[alive & position].mean()


def _hela_family_samples(monkeypatch, name: str, n: int = 8, size: int = 64):
    """Images of one HeLa-like family: the family draw is replaced, the rest of the generator runs as it is."""
    from monai_im.datasets import hela_like

    family = {f.name: f for f in hela_like.FAMILIES}[name]
    monkeypatch.setattr(hela_like, "draw_family", lambda rng: family)
    return [hela_like_sample(size, image_rng(2, "test", i), families=True) for i in range(n)]


def test_hela_families_are_imaged_at_twice_the_magnification():
    def dead_cell_area(families: bool) -> float:
        areas = []
        for i in range(12):
            image, mask = hela_like_sample(64, image_rng(0, "train", i), families=families)
            assert image.shape == (64, 64) and image.dtype == np.uint8
            assert set(np.unique(mask)) <= {0, 255}
            labels, n = ndimage.label(mask[..., 1] > 0)
            areas += list(np.bincount(labels.ravel())[1:])
        return float(np.median(areas))

    # cells are twice as large on each side: the IM rim (a pixel or two) no longer covers a dead cell
    assert 2.5 < dead_cell_area(True) / dead_cell_area(False) < 6.0


def test_hela_family_appearance_is_what_augmentation_cannot_make(monkeypatch):
    def contrast(
        name: str, channel: int
    ) -> float:  # mean at the centres of a kind's cells less the background
        out = []
        for image, mask in _hela_family_samples(monkeypatch, name):
            cells = (mask[..., channel] > 0) & (mask[..., 2] > 0)
            background = ~ndimage.binary_dilation(mask[..., :2].any(-1), iterations=3)
            if cells.any():
                out.append(image[cells].mean() - image[background].mean())
        return float(np.mean(out))

    # trypan blue turns the bright dead cells dark: no intensity shift or gamma swaps the two looks
    assert contrast("brightfield", 1) > 0 > contrast("trypan-blue", 1) + 10
    # dark field: light cells on a dark background, where brightfield cells are slightly darker
    assert contrast("dark-field", 0) > 10 > contrast("brightfield", 0)
    dark = np.mean([image.mean() for image, _ in _hela_family_samples(monkeypatch, "dark-field")])
    bright = np.mean([image.mean() for image, _ in _hela_family_samples(monkeypatch, "brightfield")])
    assert dark < bright - 60

    # phase contrast: a ring brighter than the background around every cell
    def halo(name: str) -> float:
        out = []
        for image, mask in _hela_family_samples(monkeypatch, name):
            cells = mask[..., :2].any(-1)
            ring = ndimage.binary_dilation(cells, iterations=2) & ~cells
            far = ~ndimage.binary_dilation(cells, iterations=6)
            out.append(image[ring].mean() - image[far].mean())
        return float(np.mean(out))

    assert halo("phase-contrast") > halo("brightfield") + 20

    # shape families: spindle-shaped alive cells are long and thin, confluent cultures hold more cells
    def elongation(name: str) -> float:
        values = []
        for _, mask in _hela_family_samples(monkeypatch, name):
            alive = mask[..., 0] > 0
            labels, n = ndimage.label(alive)
            for i in range(1, n + 1):
                ys, xs = np.nonzero(labels == i)
                if len(ys) > 20:
                    ev = np.linalg.eigvalsh(np.cov(np.stack([ys, xs])))
                    values.append(np.sqrt(ev[1] / max(ev[0], 1e-6)))
        return float(np.median(values))

    assert elongation("spindle") > 1.5 * elongation("round-granular")

    def cells(name: str) -> float:
        return float(
            np.mean([ndimage.label(m[..., 2] > 0)[1] for _, m in _hela_family_samples(monkeypatch, name)])
        )

    assert cells("confluent") > 1.5 * cells("brightfield")


def test_position_radius_follows_nearest_neighbour():
    radii = [position_radius(d) for d in (5, 12, 20, 30, 100, np.inf)]
    assert radii == sorted(radii)
    assert radii[-1] == pytest.approx(8.0) and radii[2] >= 3.0
    assert position_radius(10.0) * 2 < 10.0  # neighbouring discs never touch
    assert position_radius(1000.0, scale=0.5) == pytest.approx(4.0)


def test_monai_loader_channels(isic_dir, hela_dir):
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    load = Compose([LoadImaged(keys=["image", "label"]), EnsureChannelFirstd(keys=["image", "label"])])
    isic = load(load_datalist(isic_dir)["labeled"][0])
    hela = load(load_datalist(hela_dir)["labeled"][0])
    assert tuple(isic["image"].shape) == (3, 32, 32) and tuple(isic["label"].shape) == (1, 32, 32)
    assert tuple(hela["image"].shape) == (1, 64, 64) and tuple(hela["label"].shape) == (3, 64, 64)


def test_refuses_to_overwrite(isic_dir, tmp_path):
    before = _files(isic_dir)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        make_isic_like_dataset(isic_dir, size=32, seed=3, **SMALL)
    assert _files(isic_dir) == before
    root = make_isic_like_dataset(tmp_path / "d", num_train=2, num_val=1, num_test=0, size=16, progress=False)
    make_isic_like_dataset(root, num_train=3, num_val=1, num_test=0, size=16, overwrite=True, progress=False)
    assert len(list((root / "images").glob("*.png"))) == 4


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    calls = []
    real_save_png = synthetic.save_png

    def failing_save_png(*args, **kwargs):
        calls.append(args[0])
        if len(calls) > 5:
            raise RuntimeError("disk full")
        return real_save_png(*args, **kwargs)

    monkeypatch.setattr(synthetic, "save_png", failing_save_png)
    with pytest.raises(RuntimeError, match="disk full"):
        make_hela_like_dataset(tmp_path / "ds", size=32, **SMALL)
    assert len(calls) == 6
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_train": 0}, "num_train"),
        ({"num_val": -1}, "num_val"),
        ({"size": 8}, "size"),
        ({"labeled_fraction": 0.0}, "labeled_fraction"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_isic_like_dataset(tmp_path / "d", **{**SMALL, **kwargs})
    with pytest.raises(ValueError, match="unknown demo dataset kind"):
        make_demo_dataset("cityscapes", tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_ensure_demo_dataset_creates_once_then_reuses(tmp_path, monkeypatch):
    calls = []
    real = synthetic.make_demo_dataset
    monkeypatch.setattr(synthetic, "make_demo_dataset", lambda *a, **k: calls.append(a) or real(*a, **k))
    root = tmp_path / "demo"
    kwargs = {"num_train": 3, "num_val": 1, "num_test": 1, "size": 16, "progress": False}
    assert ensure_demo_dataset("hela", root, **kwargs) == str(root)
    assert len(calls) == 1 and (root / "datalist.json").is_file()
    before = _files(root)
    assert ensure_demo_dataset("hela", str(root), **{**kwargs, "size": 32}) == str(root)
    assert len(calls) == 1 and _files(root) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    ensure_demo_dataset("isic", empty, **kwargs)
    assert (empty / "datalist.json").is_file()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="no datalist.json"):
        ensure_demo_dataset("isic", tmp_path / "other", **kwargs)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        synthetic.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--num-train" in out and "--labeled-fraction" in out and "hela" in out


def test_cli_creates_dataset_and_refuses_overwrite(tmp_path, capsys):
    argv = ["isic", str(tmp_path / "cli"), "--num-train", "5", "--num-val", "1", "--num-test", "1"]
    argv += ["--size", "16", "--labeled-fraction", "0.4", "--seed", "7", "--quiet"]
    assert synthetic.main(argv) == 0
    assert "2 labeled, 3 unlabeled" in capsys.readouterr().out
    raw = json.loads((tmp_path / "cli" / "datalist.json").read_text())
    assert (
        len(raw["labeled"]) == 2 and json.loads((tmp_path / "cli" / "dataset.json").read_text())["seed"] == 7
    )
    assert synthetic.main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert synthetic.main([*argv, "--overwrite"]) == 0


def test_script_help():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout and "out_dir" in result.stdout


@pytest.mark.parametrize("module", ["monai_im.datasets.synthetic", "monai_im.datasets.flare_like"])
def test_dataset_commands_refuse_a_bad_option_in_one_line_and_write_nothing(module, tmp_path, capsys):
    import importlib

    main = importlib.import_module(module).main
    kind = ["isic"] if module.endswith("synthetic") else []
    out = tmp_path / "data"
    assert main([*kind, str(out), "--labeled-fraction", "1.5", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "labeled" in err, err
    assert not out.exists()
