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
