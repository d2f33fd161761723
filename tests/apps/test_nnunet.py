"""The nnU-Net export of a study: the dataset nnU-Net's integrity check expects, each case on its image's
grid, the IM as the ignore label, labeled cases with their ground truth, and one-line refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from monai.transforms import LoadImage, SpatialResample
from PIL import Image

from monai_im.apps.nnunet import CASES_FILE, export_nnunet, main
from monai_im.data import load_datalist
from monai_im.data.datalist import write_datalist
from monai_im.io import atomic_write_json
from monai_im.selftrain.layout import study_identity
from monai_im.transforms import PseudoLabelFormat, VolumeReader, volume_segmentation_transforms

# LPS-like source affine (x and y flipped), 1.5 x 1.5 x 3 mm: training reorients to RAS and resamples
SOURCE_AFFINE = np.array([[-1.5, 0, 0, 40.0], [0, -1.5, 0, 30.0], [0, 0, 3.0, -20.0], [0, 0, 0, 1]])
PIXDIM = (2.5, 2.5, 3.5)
CLASSES = ["liver", "spleen"]


def _nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)
    return str(path)


def _ct(data: Path, name: str, shape: tuple[int, int, int], seed: int) -> tuple[str, str]:
    rng = np.random.default_rng(seed)
    hu = rng.integers(-200, 200, size=shape).astype(np.int16)
    label = np.zeros(shape, np.uint8)
    label[2:8, 3:9, 1:5] = 1
    label[10:15, 4:12, 5:9] = 2
    return (
        _nifti(data / "images" / f"{name}.nii.gz", hu, SOURCE_AFFINE),
        _nifti(data / "labels" / f"{name}.nii.gz", label, SOURCE_AFFINE),
    )


def _study(root: Path, mode: str = "multiclass", edit=None) -> tuple[Path, Path]:
    """A finished 3D study written by hand: 2 labeled and 3 unlabeled CTs; generation 1 pseudo-labels
    of unlabeled images 0 and 2 (1 rejected), on the resampled RAS training grid as a study writes them."""
    data, study = root / "data", root / "study"
    shapes = [(20, 18, 10), (20, 18, 10), (20, 18, 10), (20, 18, 10), (22, 16, 12)]
    pairs = [_ct(data, f"ct{i}", s, i) for i, s in enumerate(shapes)]
    datalist = {
        "labeled": [{"image": im, "label": lab} for im, lab in pairs[:2]],
        "unlabeled": [{"image": im} for im, _ in pairs[2:]],
        "validation": [{"image": pairs[0][0], "label": pairs[0][1]}],
    }
    if edit is not None:
        edit(datalist)
    write_datalist(data / "datalist.json", datalist)
    strategy = {"method": "im", "mode": mode, "threshold": 0.5}
    protocol = {"params": {"intensity_window": [-160, 240]}}
    atomic_write_json(
        study / "study.json",
        study_identity("im", strategy, 0, protocol, load_datalist(data, check_files=False)),
    )
    (study / "generation_0").mkdir()
    folder = study / "generation_1" / "pseudo_labels"
    grid = volume_segmentation_transforms(pixdim=PIXDIM, num_classes=3, reader=VolumeReader())
    files, rows = PseudoLabelFormat("multiclass"), []
    for source in (0, 2):
        image = grid({"image": datalist["unlabeled"][source]["image"]})["image"]
        shape = image.shape[1:]
        label = np.zeros(shape, np.float32)
        label[1:5, 2:6, 1:3] = 1
        label[5:9, 3:7, 3:6] = 2
        im = np.zeros(shape, np.float32)
        im[4:7, :, 2:4] = 1
        uid = f"{source:06d}_ct{source + 2}"
        files.write_label(folder / "labels" / f"{uid}.nii.gz", label[None], image.affine.numpy())
        files.write_im(folder / "ims" / f"{uid}.nii.gz", im[None], image.affine.numpy())
        rows.append(
            {"image": datalist["unlabeled"][source]["image"], "source": source, "score": 0.5}
            | {"label": f"labels/{uid}.nii.gz", "im": f"ims/{uid}.nii.gz"}
        )
    atomic_write_json(folder / "datalist.json", {"pseudo_labeled": rows})
    atomic_write_json(folder / "stats.json", {"images_kept": 2})
    return study, data


@pytest.fixture
def study3d(tmp_path) -> tuple[Path, Path]:
    return _study(tmp_path)


def check_like_nnunet(folder: Path) -> dict:
    """What nnU-Net's dataset integrity check asserts: the dataset.json keys, consecutive labels with
    'ignore' the highest, every case's channels and label present, numTraining, and per case the same
    shape, spacing, origin and direction for image and label, and label values among the labels."""
    meta = json.loads((folder / "dataset.json").read_text())
    assert {"labels", "channel_names", "numTraining", "file_ending"} <= set(meta)
    values = list(meta["labels"].values())
    assert values == list(range(len(values))) and meta["labels"]["background"] == 0
    assert max(values) == meta["labels"]["ignore"]
    ending, channels = meta["file_ending"], len(meta["channel_names"])
    files = channels if ending == ".nii.gz" else 1  # a PNG holds its RGB channels in one file
    names = sorted(p.name for p in (folder / "imagesTr").iterdir())
    cases = sorted({n[: -len(f"_0000{ending}")] for n in names})
    assert names == sorted(f"{c}_{k:04d}{ending}" for c in cases for k in range(files))
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == [f"{c}{ending}" for c in cases]
    assert meta["numTraining"] == len(cases)
    for case in cases:
        label_file = folder / "labelsTr" / f"{case}{ending}"
        for k in range(files):
            image_file = folder / "imagesTr" / f"{case}_{k:04d}{ending}"
            if ending == ".nii.gz":
                img, seg = sitk.ReadImage(str(image_file)), sitk.ReadImage(str(label_file))
                assert img.GetSize() == seg.GetSize()
                for get in ("GetSpacing", "GetOrigin", "GetDirection"):
                    np.testing.assert_allclose(getattr(img, get)(), getattr(seg, get)(), atol=1e-6)
                found = np.unique(sitk.GetArrayFromImage(seg))
            else:
                with Image.open(image_file) as img, Image.open(label_file) as seg:
                    assert img.size == seg.size and seg.mode == "L" and len(img.getbands()) == channels
                    found = np.unique(np.asarray(seg))
            assert set(found.tolist()) <= set(values)
    return meta


def _reference(label_file: str, im_file: str, image_file: str, ignore: int) -> np.ndarray:
    """The pseudo-label and IM on the source image's grid by MONAI's own resampling (nearest), outside = ignore."""
    load = LoadImage(reader=VolumeReader(), image_only=True, ensure_channel_first=True)
    image, label, im = load(image_file), load(label_file), load(im_file)
    resample = SpatialResample(mode="nearest", padding_mode="zeros")
    shape = image.shape[1:]
    lab = resample(label + 1, dst_affine=image.affine, spatial_size=shape)[0].numpy()
    cut = resample(im + 1, dst_affine=image.affine, spatial_size=shape)[0].numpy()
    return np.where((lab == 0) | (cut != 1), ignore, lab - 1).astype(np.uint8)


def _as_nrrd(datalist):
    """The unlabeled CTs as NRRD files (read through SimpleITK, LPS on disk)."""
    for item in datalist["unlabeled"]:
        nrrd = item["image"].replace(".nii.gz", ".nrrd")
        sitk.WriteImage(sitk.ReadImage(item["image"]), nrrd)
        item["image"] = nrrd


@pytest.mark.parametrize("sources", ["nifti", "nrrd"])
def test_a_3d_study_exports_a_valid_nnunet_dataset_on_each_images_grid(sources, tmp_path):
    study, data = _study(tmp_path, edit=_as_nrrd if sources == "nrrd" else None)
    folder = export_nnunet(
        study, tmp_path / "raw", datalist=data, dataset_name="FlareIM", class_names=CLASSES, progress=False
    )
    assert folder == (tmp_path / "raw" / "Dataset501_FlareIM").resolve()
    meta = check_like_nnunet(folder)
    assert meta["labels"] == {"background": 0, "liver": 1, "spleen": 2, "ignore": 3}
    assert meta["channel_names"] == {"0": "CT"} and meta["file_ending"] == ".nii.gz"
    # 2 labeled + the 2 accepted pseudo-labels; the rejected image is left out
    assert meta["numTraining"] == 4
    datalist = load_datalist(data)
    for i, item in enumerate(datalist["labeled"]):  # labeled: the image copied, the ground truth as it is
        assert (folder / "imagesTr" / f"labeled_{i:04d}_0000.nii.gz").read_bytes() == Path(
            item["image"]
        ).read_bytes()
        out = nib.load(folder / "labelsTr" / f"labeled_{i:04d}.nii.gz")
        np.testing.assert_array_equal(np.asarray(out.dataobj), np.asarray(nib.load(item["label"]).dataobj))
        assert out.get_data_dtype() == np.uint8
    rows = json.loads((study / "generation_1" / "pseudo_labels" / "datalist.json").read_text())[
        "pseudo_labeled"
    ]
    for row in rows:
        source = datalist["unlabeled"][row["source"]]["image"]
        case = f"pseudo_{row['source']:04d}"
        image, label = (
            nib.load(folder / "imagesTr" / f"{case}_0000.nii.gz"),
            nib.load(folder / "labelsTr" / f"{case}.nii.gz"),
        )
        ct = LoadImage(reader=VolumeReader(), image_only=True)(source)
        assert image.shape == label.shape == ct.shape
        np.testing.assert_array_equal(np.asarray(image.dataobj), ct.numpy())  # the intensities as stored
        np.testing.assert_allclose(label.affine, image.affine)
        np.testing.assert_allclose(image.affine, SOURCE_AFFINE)  # the source grid, not the training grid
        pseudo = study / "generation_1" / "pseudo_labels"
        expected = _reference(str(pseudo / row["label"]), str(pseudo / row["im"]), source, ignore=3)
        got = np.asarray(label.dataobj)
        np.testing.assert_array_equal(got, expected)
        assert 0 < np.mean(got == 3) < 1 and {1, 2} <= set(np.unique(got).tolist())
    cases = json.loads((folder / CASES_FILE).read_text())
    assert [c["case"] for c in cases["cases"]] == [
        "labeled_0000",
        "labeled_0001",
        "pseudo_0000",
        "pseudo_0002",
    ]
    assert cases["generation"] == 1 and cases["cases"][2]["score"] == 0.5
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "no partial folder left"


def test_on_the_training_grid_the_ignore_label_is_exactly_the_im(tmp_path):
    """When the source image lies on the training grid (RAS, the bundle's spacing, as the demo data):
    the exported label is the pseudo-label voxel for voxel, and 'ignore' exactly where the IM is."""
    ras = np.diag([*PIXDIM, 1.0])

    def on_grid(datalist):
        for item in datalist["unlabeled"]:
            img = nib.load(item["image"])
            nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:8, :7, :5], ras), item["image"])

    study, data = _study(tmp_path, edit=on_grid)
    folder = export_nnunet(study, tmp_path / "raw", datalist=data, class_names=CLASSES, progress=False)
    pseudo = study / "generation_1" / "pseudo_labels"
    for row in json.loads((pseudo / "datalist.json").read_text())["pseudo_labeled"]:
        label = np.asarray(nib.load(pseudo / row["label"]).dataobj)
        im = np.asarray(nib.load(pseudo / row["im"]).dataobj) > 0
        got = np.asarray(nib.load(folder / "labelsTr" / f"pseudo_{row['source']:04d}.nii.gz").dataobj)
        assert got.shape == label.shape and im.any() and (~im).any()
        assert np.all(got[im] == 3)
        np.testing.assert_array_equal(got[~im], label[~im])


def test_an_existing_dataset_is_refused_unless_overwrite(study3d, tmp_path):
    study, data = study3d
    first = export_nnunet(study, tmp_path, datalist=data, class_names=CLASSES, progress=False)
    (first / "marker").write_text("kept")
    with pytest.raises(SystemExit, match="already exists; pass --overwrite") as e:
        export_nnunet(study, tmp_path, datalist=data, class_names=CLASSES, progress=False)
    assert "\n" not in str(e.value) and (first / "marker").is_file()
    again = export_nnunet(study, tmp_path, datalist=data, class_names=CLASSES, overwrite=True, progress=False)
    assert again == first and not (first / "marker").exists()
    check_like_nnunet(again)
    with pytest.raises(SystemExit, match="dataset id 501 is taken"):  # nnU-Net needs unique ids
        export_nnunet(
            study, tmp_path, datalist=data, class_names=CLASSES, dataset_name="Other", progress=False
        )


def _bad_label_shape(datalist):
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), SOURCE_AFFINE), datalist["labeled"][1]["label"])


def _bad_label_values(datalist):
    nib.save(
        nib.Nifti1Image(np.full((20, 18, 10), 7, np.uint8), SOURCE_AFFINE), datalist["labeled"][0]["label"]
    )


@pytest.mark.parametrize(
    "case, message",
    [
        ("no_study", "no such study"),
        ("generation", "generation 0 of .* has no pseudo-labels"),
        ("inside", "lies inside .*study; choose a folder outside"),
        ("inside_data", "lies inside .*data; choose a folder outside"),
        ("datalist", "not the dataset the study trained on"),
        ("shape", "mismatched shapes"),
        ("values", r"label values outside the class range 0..2: \[7\]"),
        ("multilabel", "multi-label study"),
        ("classes", "needs its class names"),
    ],
)
def test_refusals_are_one_line_and_leave_nothing(case, message, tmp_path):
    edits = {"shape": _bad_label_shape, "values": _bad_label_values}
    study, data = _study(
        tmp_path, mode="multilabel" if case == "multilabel" else "multiclass", edit=edits.get(case)
    )
    out = tmp_path / "raw"
    options = {"datalist": data, "class_names": CLASSES, "progress": False}
    if case == "no_study":
        study = tmp_path / "missing"
    elif case == "generation":
        options["generation"] = 0
    elif case.startswith("inside"):
        out = (study if case == "inside" else data) / "nnunet"
    elif case == "datalist":
        other = tmp_path / "other"
        shutil.copytree(data, other)
        (other / "images" / "ct2.nii.gz").write_bytes(b"changed")
        options["datalist"] = other
    elif case == "classes":
        options["class_names"] = None
    with pytest.raises(SystemExit, match=f"^error: .*{message}") as e:
        export_nnunet(study, out, **options)
    assert "\n" not in str(e.value)
    assert not out.exists() or not list(out.iterdir()), "nothing written"


def test_a_2d_binary_png_study_exports_on_the_image_size(tmp_path):
    """2D: RGB PNG inputs of 40 x 30; pseudo-labels and IM on the 16 x 16 training grid are resized back."""
    data, study = tmp_path / "data", tmp_path / "study"
    (data / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    items = []
    for i in range(4):
        image = data / "images" / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(image)
        mask = np.zeros((30, 40), np.uint8)
        mask[5:20, 10:30] = 255
        Image.fromarray(mask).save(data / "images" / f"img{i}_mask.png")
        items.append({"image": str(image), "label": str(data / "images" / f"img{i}_mask.png")})
    write_datalist(
        data / "datalist.json",
        {"labeled": items[:2], "unlabeled": [{"image": it["image"]} for it in items[2:]]},
    )
    strategy = {"method": "im", "mode": "binary", "threshold": 0.5}
    atomic_write_json(
        study / "study.json",
        study_identity("im", strategy, 0, {}, load_datalist(data, required=("labeled",))),
    )
    folder = study / "generation_1" / "pseudo_labels"
    (folder / "labels").mkdir(parents=True)
    (folder / "ims").mkdir()
    label, im = np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8)
    label[:8, :] = 255  # the top half
    im[:, :8] = 255  # the left half
    Image.fromarray(label).save(folder / "labels" / "000001_img3.png")
    Image.fromarray(im).save(folder / "ims" / "000001_img3.png")
    row = {
        "image": items[3]["image"],
        "source": 1,
        "label": "labels/000001_img3.png",
        "im": "ims/000001_img3.png",
    }
    atomic_write_json(folder / "datalist.json", {"pseudo_labeled": [row]})
    atomic_write_json(folder / "stats.json", {})

    out = export_nnunet(
        study, tmp_path / "raw", dataset_id=502, dataset_name="IsicIM", datalist=data, progress=False
    )
    meta = check_like_nnunet(out)
    assert meta["file_ending"] == ".png" and meta["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert meta["labels"] == {"background": 0, "foreground": 1, "ignore": 2} and meta["numTraining"] == 3
    with Image.open(out / "imagesTr" / "pseudo_0001_0000.png") as img, Image.open(items[3]["image"]) as src:
        assert img.mode == "RGB" and np.array_equal(np.asarray(img), np.asarray(src))
    got = np.asarray(Image.open(out / "labelsTr" / "pseudo_0001.png"))
    expected = np.zeros((30, 40), np.uint8)
    expected[:15, :] = 1  # rows 0..14 of 30 are the top half of 16 (pixel centres, nearest)
    expected[:, :20] = 2  # columns 0..19 of 40 are the left half: ignored
    np.testing.assert_array_equal(got, expected)
    labeled = np.asarray(Image.open(out / "labelsTr" / "labeled_0000.png"))
    assert set(np.unique(labeled).tolist()) == {0, 1} and labeled[10, 20] == 1 and labeled[0, 0] == 0


def test_a_real_2d_study_exports_through_the_command_line(make_study, tiny_data, tmp_path):
    study = make_study(tiny_data, tmp_path / "study", num_generations=1)
    study.run()
    pseudo = json.loads((tmp_path / "study" / "generation_1" / "pseudo_labels" / "datalist.json").read_text())
    folder = main(
        [str(tmp_path / "study"), str(tmp_path / "raw"), "--datalist", str(tiny_data), "--no-progress"]
    )
    meta = check_like_nnunet(folder)
    assert meta["numTraining"] == len(load_datalist(tiny_data)["labeled"]) + len(pseudo["pseudo_labeled"])
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    with pytest.raises(SystemExit, match="already exists"):
        main([str(tmp_path / "study"), str(tmp_path / "raw"), "--datalist", str(tiny_data), "--no-progress"])
