from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.transforms import Compose, LoadImaged, Orientationd, Spacingd
from monai.utils import MetaKeys, SpaceKeys

from monai_im.transforms.readers import SimpleITKReader

SPACING = np.array([0.7, 1.2, 2.5])
ORIGIN_RAS = np.array([10.0, -20.0, 30.0])
# a 90 degree rotation about z and a flipped z axis
ROTATION_RAS = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _volume() -> np.ndarray:
    """A (x, y, z) = (4, 5, 6) int16 volume with distinct values (any axis mix-up changes it)."""
    return np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)


def _ras_affine() -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = ROTATION_RAS @ np.diag(SPACING)
    affine[:3, 3] = ORIGIN_RAS
    return affine


def _sitk_image(array: np.ndarray, is_vector: bool = False) -> sitk.Image:
    """The same geometry as :func:`_ras_affine`, stated in ITK's LPS: direction, spacing, origin."""
    data = np.moveaxis(array, -1, 0).T if is_vector else array.T  # (z, y, x[, c])
    image = sitk.GetImageFromArray(np.ascontiguousarray(data), isVector=is_vector)
    image.SetSpacing(SPACING.tolist())
    image.SetOrigin((RAS_TO_LPS @ ORIGIN_RAS).tolist())
    image.SetDirection((RAS_TO_LPS @ ROTATION_RAS).ravel().tolist())
    return image


def _write_dicom_series(
    folder: Path, array: np.ndarray, spacing: tuple[float, float, float], series_uid: str
) -> None:
    """One DICOM file per z slice of the (x, y, z) ``array``, all of series ``series_uid``."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(array.shape[2]):
        slice_ = sitk.GetImageFromArray(np.ascontiguousarray(array[:, :, k].T))
        slice_.SetSpacing(spacing[:2])
        tags = {
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.9",
            "0020|000e": series_uid,
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|0013": str(k + 1),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0020|0032": f"0\\0\\{k * spacing[2]}",
            "0018|0050": str(spacing[2]),
        }
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{series_uid}_{k}.dcm"))
        writer.Execute(slice_)


def _load(path: Path | list[Path], **kwargs) -> torch.Tensor:
    loader = LoadImaged(
        keys="image", reader=SimpleITKReader(), ensure_channel_first=True, image_only=True, **kwargs
    )
    return loader({"image": path})["image"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.nrrd", True),
        ("a.nhdr", True),
        ("a.mha", True),
        ("A.MHD", True),
        ("a.dcm", True),
        ("a.nii", False),
        ("a.nii.gz", False),
        ("a.png", False),
        ("a.jpg", False),
    ],
)
def test_verify_suffix(name: str, expected: bool) -> None:
    assert SimpleITKReader().verify_suffix(name) is expected


def test_verify_suffix_directory_and_sequences(tmp_path: Path) -> None:
    reader = SimpleITKReader()
    assert reader.verify_suffix(tmp_path)
    assert reader.verify_suffix(["a.mha", "b.nrrd"])
    assert not reader.verify_suffix(["a.mha", "b.nii.gz"])


def test_same_volume_as_nifti_nrrd_mha_gives_same_array_affine_and_resampling(tmp_path: Path) -> None:
    array = _volume()
    nib.save(nib.Nifti1Image(array, _ras_affine()), tmp_path / "v.nii.gz")
    for suffix in ("nrrd", "mha", "mhd"):
        sitk.WriteImage(_sitk_image(array), str(tmp_path / f"v.{suffix}"))
    loaded = {suffix: _load(tmp_path / f"v.{suffix}") for suffix in ("nii.gz", "nrrd", "mha", "mhd")}

    assert "sizeof_hdr" in loaded["nii.gz"].meta  # NIfTI went to MONAI's NibabelReader
    for suffix, img in loaded.items():
        assert "sizeof_hdr" not in img.meta or suffix == "nii.gz"
        assert img.shape == (1, 4, 5, 6), suffix
        np.testing.assert_array_equal(img[0].numpy(), array.astype(np.float32), err_msg=suffix)
        np.testing.assert_allclose(img.affine.numpy(), _ras_affine(), atol=1e-6, err_msg=suffix)
        assert img.meta[MetaKeys.SPACE] == SpaceKeys.RAS

    resample = Compose(
        [Orientationd(keys="image", axcodes="RAS"), Spacingd(keys="image", pixdim=(1.0, 1.0, 2.0))]
    )
    out = {suffix: resample({"image": img})["image"] for suffix, img in loaded.items()}
    ref = out["nii.gz"]
    np.testing.assert_allclose(np.diag(ref.affine.numpy())[:3], [1.0, 1.0, 2.0], atol=1e-6)  # RAS, resampled
    assert ref.shape != (1, 4, 5, 6)
    for suffix in ("nrrd", "mha", "mhd"):
        assert out[suffix].shape == ref.shape, suffix
        np.testing.assert_allclose(out[suffix].numpy(), ref.numpy(), atol=1e-5, err_msg=suffix)
        np.testing.assert_allclose(out[suffix].affine.numpy(), ref.affine.numpy(), atol=1e-6, err_msg=suffix)


def test_nifti_is_refused_so_load_image_uses_nibabel(tmp_path: Path) -> None:
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(_volume(), _ras_affine()), path)
    with pytest.raises(ValueError, match="v.nii.gz: not a format of SimpleITKReader"):
        SimpleITKReader().read(path)
    img = _load(path, dtype=None)
    assert "sizeof_hdr" in img.meta and img.dtype == torch.int16


def test_lps_affine_when_not_converted(tmp_path: Path) -> None:
    sitk.WriteImage(_sitk_image(_volume()), str(tmp_path / "v.mha"))
    reader = SimpleITKReader(affine_lps_to_ras=False)
    array, meta = reader.get_data(reader.read(tmp_path / "v.mha"))
    expected = np.diag([-1.0, -1.0, 1.0, 1.0]) @ _ras_affine()
    np.testing.assert_allclose(meta[MetaKeys.AFFINE], expected, atol=1e-6)
    np.testing.assert_allclose(meta[MetaKeys.ORIGINAL_AFFINE], expected, atol=1e-6)
    assert meta[MetaKeys.SPACE] == SpaceKeys.LPS
    np.testing.assert_array_equal(meta[MetaKeys.SPATIAL_SHAPE], [4, 5, 6])
    np.testing.assert_allclose(meta["spacing"], SPACING)
    assert np.isnan(meta[MetaKeys.ORIGINAL_CHANNEL_DIM])  # "no_channel"


def test_stored_dtype_kept_unless_given(tmp_path: Path) -> None:
    sitk.WriteImage(_sitk_image(_volume()), str(tmp_path / "v.nrrd"))
    array, _ = SimpleITKReader().get_data(SimpleITKReader().read(tmp_path / "v.nrrd"))
    assert array.dtype == np.int16
    np.testing.assert_array_equal(array, _volume())
    array, _ = SimpleITKReader(dtype=np.float64).get_data(SimpleITKReader().read(tmp_path / "v.nrrd"))
    assert array.dtype == np.float64
    assert _load(tmp_path / "v.nrrd", dtype=None).dtype == torch.int16


def test_vector_pixels_become_the_channel_axis(tmp_path: Path) -> None:
    vector = np.stack([_volume(), -_volume()], axis=-1)  # (x, y, z, 2)
    sitk.WriteImage(_sitk_image(vector, is_vector=True), str(tmp_path / "v.mha"))
    reader = SimpleITKReader()
    array, meta = reader.get_data(reader.read(tmp_path / "v.mha"))
    assert array.shape == (4, 5, 6, 2)
    assert meta[MetaKeys.ORIGINAL_CHANNEL_DIM] == -1
    np.testing.assert_array_equal(meta[MetaKeys.SPATIAL_SHAPE], [4, 5, 6])
    img = _load(tmp_path / "v.mha")
    assert img.shape == (2, 4, 5, 6)
    np.testing.assert_array_equal(img[1].numpy(), -_volume())


def test_several_files_are_stacked_as_channels(tmp_path: Path) -> None:
    sitk.WriteImage(_sitk_image(_volume()), str(tmp_path / "a.mha"))
    sitk.WriteImage(_sitk_image(2 * _volume()), str(tmp_path / "b.nrrd"))
    img = _load([tmp_path / "a.mha", tmp_path / "b.nrrd"])
    assert img.shape == (2, 4, 5, 6)
    np.testing.assert_array_equal(img[1].numpy(), 2 * _volume())
    np.testing.assert_allclose(img.affine.numpy(), _ras_affine(), atol=1e-6)
    other = _sitk_image(_volume())
    other.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(other, str(tmp_path / "c.mha"))
    reader = SimpleITKReader()
    with pytest.raises(RuntimeError, match="affine matrix of all images should be the same"):
        reader.get_data(reader.read([tmp_path / "a.mha", tmp_path / "c.mha"]))


def test_dicom_series_folder(tmp_path: Path) -> None:
    array = np.arange(8 * 8 * 4, dtype=np.int16).reshape(8, 8, 4)
    _write_dicom_series(tmp_path / "ct", array, (0.5, 0.75, 2.0), "1.2.826.0.1.3680043.2.1125.1")
    reader = SimpleITKReader()
    data, meta = reader.get_data(reader.read(tmp_path / "ct"))
    np.testing.assert_array_equal(data, array)
    np.testing.assert_allclose(meta["spacing"], [0.5, 0.75, 2.0])
    np.testing.assert_allclose(np.diag(meta[MetaKeys.AFFINE]), [-0.5, -0.75, 2.0, 1.0])  # LPS -> RAS
    img = _load(tmp_path / "ct")
    assert img.shape == (1, 8, 8, 4)
    assert img.pixdim.tolist() == [0.5, 0.75, 2.0]


def test_dicom_folder_with_several_series(tmp_path: Path) -> None:
    first, second = "1.2.826.0.1.3680043.2.1125.1", "1.2.826.0.1.3680043.2.1125.2"
    array = np.arange(8 * 8 * 4, dtype=np.int16).reshape(8, 8, 4)
    _write_dicom_series(tmp_path / "ct", array, (0.5, 0.5, 1.0), first)
    _write_dicom_series(tmp_path / "ct", array[:, :, :3] + 1, (0.5, 0.5, 3.0), second)
    with pytest.raises(ValueError, match=r"ct: holds 2 DICOM series .*series_id"):
        SimpleITKReader().read(tmp_path / "ct")
    reader = SimpleITKReader(series_id=second)
    data, meta = reader.get_data(reader.read(tmp_path / "ct"))
    np.testing.assert_array_equal(data, array[:, :, :3] + 1)
    np.testing.assert_allclose(meta["spacing"], [0.5, 0.5, 3.0])
    with pytest.raises(ValueError, match="ct: no DICOM series '1.2.3'"):
        SimpleITKReader(series_id="1.2.3").read(tmp_path / "ct")


def test_folder_without_dicom_and_missing_or_bad_files(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match="empty: no DICOM series in this folder"):
        SimpleITKReader().read(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="missing.nrrd: no such file"):
        SimpleITKReader().read(tmp_path / "missing.nrrd")
    (tmp_path / "bad.mha").write_text("garbage")
    with pytest.raises(RuntimeError, match="bad.mha: SimpleITK cannot read it"):
        SimpleITKReader().read(tmp_path / "bad.mha")


# ---------------------------------------------------------------------- one metadata layout for every format
def _converted_study(folder: Path) -> dict[str, dict[str, str]]:
    """Image / class-map pairs of 16^3 volumes as NIfTI, and as NRRD and MHA converted from that NIfTI by
    SimpleITK, the way datasets are converted (NIfTI's header fields travel along as strings)."""
    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    labels = np.zeros((16, 16, 16), np.uint8)
    labels[4:12, 4:12, 4:12] = 1
    labels[6:9, 6:9, 6:9] = 2
    items = {}
    for ext in ("nii.gz", "nrrd", "mha"):
        pair = {}
        for key, array in (
            ("image", rng.integers(-100, 200, (16, 16, 16)).astype(np.int16)),
            ("label", labels),
        ):
            nifti = folder / f"{key}_{ext.replace('.', '_')}.nii.gz"
            nib.save(nib.Nifti1Image(array, affine), nifti)
            path = nifti if ext == "nii.gz" else folder / f"{key}.{ext}"
            if ext != "nii.gz":
                sitk.WriteImage(sitk.ReadImage(str(nifti)), str(path))
            pair[key] = str(path)
        items[ext] = pair
    return items


def _preprocessing(**kwargs):
    from monai_im.transforms import VolumeReader, volume_segmentation_transforms

    # the arguments of bundles/flare22_im/configs/train.json, at a spacing that suits 16^3 volumes
    return volume_segmentation_transforms(
        pixdim=(2.0, 2.0, 2.0),
        orientation="RAS",
        intensity_window=(-160, 240),
        num_classes=3,
        mode="multiclass",
        label_policy="ignore",
        reader=VolumeReader(),
        **kwargs,
    )


def test_nrrd_mha_and_nifti_items_collate_in_one_batch_for_training_and_pseudo_labelling(
    tmp_path: Path,
) -> None:
    from monai.data import DataLoader, Dataset

    from monai_im.transforms import PseudoLabelFormat, volume_patch_transforms
    from monai_im.transforms.readers import VOLUME_META_KEYS

    items = _converted_study(tmp_path)
    preprocessing = _preprocessing()
    unlabeled = DataLoader(
        Dataset([{"image": items[e]["image"]} for e in items], preprocessing), batch_size=3
    )
    batch = next(iter(unlabeled))  # the pseudo-labeller's loader: every format in one batch
    assert set(batch["image"].meta) == {*VOLUME_META_KEYS, "filename_or_obj"}
    # generation 1's pseudo-labels of the NRRD and MHA volumes, written with the batch's affines
    files, affines = PseudoLabelFormat("multiclass"), np.asarray(batch["image"].meta["affine"])
    pseudo = []
    for i, ext in enumerate(items):
        if ext != "nii.gz":
            label = (batch["image"][i] > 0.5).numpy().astype(np.float32)
            lab = files.write_label(tmp_path / f"pl_{ext}.nii.gz", label, affines[i])
            im = files.write_im(tmp_path / f"im_{ext}.nii.gz", np.zeros_like(label), affines[i])
            pseudo.append({"image": items[ext]["image"], "label": str(lab), "im": str(im)})
            back = preprocessing({"image": items[ext]["image"], "label": str(lab)})
            np.testing.assert_array_equal(back["label"].numpy(), label)  # lies on its volume, voxel for voxel
    train = volume_patch_transforms(preprocessing, patch_size=(8, 8, 8), num_classes=3, num_samples=1)
    labeled = list(items.values())
    for pair in (
        [labeled[1], labeled[2]],
        [labeled[0], labeled[1]],
        [labeled[2], pseudo[0]],
        [pseudo[1], labeled[0]],
    ):
        out = next(iter(DataLoader(Dataset(pair, train), batch_size=2)))
        assert out["image"].shape == (2, 1, 8, 8, 8) and out["label"].shape == (2, 1, 8, 8, 8)


def test_volume_metadata_is_numeric_and_the_same_for_every_format(tmp_path: Path) -> None:
    from monai_im.transforms.readers import VOLUME_META_KEYS

    items = _converted_study(tmp_path)
    loaded = {ext: _preprocessing(keep_keys=())({"image": it["image"]})["image"] for ext, it in items.items()}
    for ext, img in loaded.items():
        assert set(img.meta) == {*VOLUME_META_KEYS, "filename_or_obj"}, ext
        for key in ("original_affine", "spatial_shape", "spacing"):
            assert np.asarray(img.meta[key]).dtype.kind in "if", (ext, key)
        np.testing.assert_allclose(img.meta["spacing"], [2.0, 2.0, 2.0])
        np.testing.assert_allclose(
            np.asarray(img.meta["affine"]), np.asarray(loaded["nii.gz"].meta["affine"]), atol=1e-5
        )


# ---------------------------------------------------------------------- 2D images: LA, CMYK, large images
def _load_2d(path: Path, **kwargs) -> torch.Tensor:
    from monai.transforms import LoadImage

    from monai_im.transforms.readers import Image2DReader

    return LoadImage(image_only=True, dtype=None, ensure_channel_first=True, reader=Image2DReader(**kwargs))(
        path
    )


def test_grey_alpha_is_read_as_grey_and_cmyk_as_rgb(tmp_path: Path) -> None:
    from PIL import Image

    grey = np.arange(48, dtype=np.uint8).reshape(6, 8)
    Image.fromarray(np.stack([grey, np.full_like(grey, 7)], -1), mode="LA").save(tmp_path / "la.png")
    la = _load_2d(tmp_path / "la.png")
    assert la.shape == (1, 8, 6) and la.meta["mode"] == "L"  # the alpha dropped, as for RGBA
    np.testing.assert_array_equal(la[0].numpy(), grey.T)

    cmyk = Image.new("CMYK", (8, 6), (0, 255, 255, 0))  # pure red in print colours
    cmyk.save(tmp_path / "print.jpg", quality=100)
    rgb = _load_2d(tmp_path / "print.jpg")
    assert rgb.shape == (3, 8, 6) and rgb.meta["mode"] == "RGB" and rgb.meta["format"] == "JPEG"
    expected = np.asarray(Image.open(tmp_path / "print.jpg").convert("RGB")).transpose(2, 1, 0)
    np.testing.assert_array_equal(rgb.numpy(), expected)
    assert rgb[0].float().mean() > 200 and rgb[1:].float().mean() < 50  # red, not its inverted ink


def test_images_over_pils_bomb_limit_are_read_and_max_voxels_bounds_them(tmp_path: Path, monkeypatch) -> None:
    from PIL import Image

    Image.fromarray(np.full((16, 16), 9, np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # 256 pixels is a "decompression bomb" to PIL now
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "big.png")
    img = _load_2d(tmp_path / "big.png")
    assert img.shape == (1, 16, 16) and float(img.max()) == 9
    assert Image.MAX_IMAGE_PIXELS == 50, "PIL's setting is restored"
    with pytest.raises(RuntimeError, match="big.png: its header declares 16x16 .*max_voxels = 100"):
        _load_2d(tmp_path / "big.png", max_voxels=100)


def test_header_only_reading_of_every_format(tmp_path: Path) -> None:
    from PIL import Image

    from monai_im.transforms.readers import declared_size_problem, read_header

    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 2), np.float32), np.eye(4)), tmp_path / "v.nii.gz")
    sitk.WriteImage(_sitk_image(_volume()), str(tmp_path / "v.nrrd"))
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(tmp_path / "i.png")
    assert (
        read_header(tmp_path / "v.nii.gz").shape == (4, 5, 6)
        and read_header(tmp_path / "v.nii.gz").channels == 2
    )
    assert read_header(tmp_path / "v.nrrd").shape == (4, 5, 6)
    header = read_header(tmp_path / "i.png")
    assert (header.shape, header.channels, header.mode) == ((7, 5), 3, "RGB")
    assert read_header(tmp_path / "notes.txt") is None
    assert declared_size_problem(tmp_path / "v.nii.gz", max_voxels=240) is None
    message = declared_size_problem(tmp_path / "v.nii.gz", max_voxels=239)
    assert message is not None and "4x5x6 x 2 channels (240 values)" in message and "\n" not in message
