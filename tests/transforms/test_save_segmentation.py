"""SaveSegmentationd: output names, output paths from the item, refusals, NIfTI output, a real evaluator run."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, Invertd, LoadImaged, Spacingd
from PIL import Image

from monai_im.transforms import SaveSegmentationd, segmentation_file_name
from monai_im.transforms.io import split_extension


@pytest.mark.parametrize(
    "source, postfix, expected",
    [
        ("scan.v1.png", "_mask", "scan.v1_mask.png"),
        ("/data/scan.jpg", "_mask", "scan_mask.png"),
        ("ct.nii.gz", "_seg", "ct_seg.nii.gz"),
        ("CT.v2.NII.GZ", "", "CT.v2.nii.gz"),
        ("mr.nii", "_mask", "mr_mask.nii.gz"),
        ("ct.nrrd", "_mask", "ct_mask.nii.gz"),
        ("CT.MHA", "_mask", "CT_mask.nii.gz"),
        ("mr.mhd", "_mask", "mr_mask.nii.gz"),
        ("noext", "_mask", "noext_mask.png"),
    ],
)
def test_segmentation_file_name(source, postfix, expected):
    assert segmentation_file_name(source, postfix) == expected


def test_split_extension():
    assert split_extension("a/b/scan.v1.png") == ("scan.v1", ".png")
    assert split_extension("ct.nii.gz") == ("ct", ".nii.gz")
    assert split_extension("archive.tar.gz") == ("archive.tar", ".gz")


def mask_item(source: str, **extra) -> dict:
    pred = MetaTensor(torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]]]), meta={"filename_or_obj": source})
    return {"pred": pred, **extra}


def test_output_path_from_the_item(tmp_path):
    target = tmp_path / "sub" / "planned.png"
    SaveSegmentationd(keys="pred", output_key="output")(
        mask_item(str(tmp_path / "in.png"), output=str(target))
    )
    written = np.array(Image.open(target))
    assert written.shape == (2, 3)  # (W, H) in MONAI order becomes (H, W) in the file
    assert written.tolist() == [[0, 255, 0], [255, 0, 0]]
    assert [p.name for p in target.parent.iterdir()] == ["planned.png"], "no temporary file left"


def test_names_from_the_input_keep_all_but_the_last_extension(tmp_path):
    save = SaveSegmentationd(keys="pred", output_dir=tmp_path / "out")
    for name in ("scan.v1.png", "scan.v2.png"):
        save(mask_item(str(tmp_path / name)))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["scan.v1_mask.png", "scan.v2_mask.png"]


@pytest.mark.parametrize("output_key", [None, "output"])
def test_refuses_to_write_onto_its_input(tmp_path, output_key):
    source = tmp_path / "a.png"
    Image.fromarray(np.full((3, 2), 7, np.uint8)).save(source)
    before = source.read_bytes()
    save = SaveSegmentationd(keys="pred", output_dir=tmp_path, output_postfix="", output_key=output_key)
    with pytest.raises(ValueError, match=f"refusing to overwrite the input image {source}"):
        save(mask_item(str(source), output=str(tmp_path / "." / "a.png")))
    assert source.read_bytes() == before


def test_missing_or_collated_output_path_is_named(tmp_path):
    save = SaveSegmentationd(keys="pred", output_key="output")
    with pytest.raises(ValueError, match="the item of .*x.png has no 'output' output path"):
        save(mask_item(str(tmp_path / "x.png")))
    with pytest.raises(ValueError, match="must be a file path, got list"):
        save(mask_item(str(tmp_path / "x.png"), output=["a.png", "b.png"]))


def test_nifti_output_keeps_the_input_affine(tmp_path):
    affine = np.array([[-2.0, 0, 0, 10], [0, 3, 0, -5], [0, 0, 1.5, 7], [0, 0, 0, 1]])
    volume = np.zeros((4, 5, 6), np.float32)
    volume[1:3, 2:4, 3:5] = 100
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "ct.v1.nii.gz")
    pre = Compose(
        [
            LoadImaged("image", image_only=True),
            EnsureChannelFirstd("image"),
            Spacingd("image", pixdim=(1, 1, 1)),
        ]
    )
    d = pre({"image": str(tmp_path / "ct.v1.nii.gz"), "output": str(tmp_path / "out" / "ct.v1_mask.nii.gz")})
    d["pred"] = (d["image"] > 50).float()
    d = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=True)(d)
    SaveSegmentationd(keys="pred", output_key="output")(d)
    written = nib.load(tmp_path / "out" / "ct.v1_mask.nii.gz")
    np.testing.assert_allclose(written.affine, affine)
    data = np.asarray(written.dataobj)
    assert data.dtype == np.uint8 and data.shape == (4, 5, 6)
    np.testing.assert_array_equal(data, (volume > 50).astype(np.uint8))


def test_end_to_end_evaluator_writes_one_mask_per_input_at_its_planned_path(tmp_path):
    """A real SupervisedEvaluator run: the item's 'output' string survives collation and decollation."""
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedEvaluator
    from monai.transforms import Activationsd, AsDiscreted, Resized, ScaleIntensityRanged

    from monai_im.data import plan_inference
    from monai_im.transforms import EnsureNumChannelsd

    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    sizes = {"scan.v1.png": (12, 20), "scan.v2.png": (9, 14), "gray.png": (16, 10)}
    for name, (h, w) in sizes.items():
        image = np.zeros((h, w, 3), np.uint8)
        image[:, : w // 2] = 255  # bright left half: the mask's foreground
        Image.fromarray(image[..., 0] if name == "gray.png" else image).save(inputs / name)
    items = plan_inference(inputs, out, progress=False)

    preprocessing = Compose(
        [
            LoadImaged("image", image_only=True),
            EnsureChannelFirstd("image"),
            EnsureNumChannelsd("image", num_channels=3),
            Resized("image", spatial_size=(16, 16), mode="bilinear"),
            ScaleIntensityRanged("image", a_min=0, a_max=255, b_min=0, b_max=1, clip=True),
        ]
    )
    network = torch.nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        network.weight.fill_(1.0 / 3.0)
        network.bias.fill_(-0.5)
    postprocessing = Compose(
        [
            Activationsd("pred", sigmoid=True),
            AsDiscreted("pred", threshold=0.5),
            Invertd("pred", transform=preprocessing, orig_keys="image", nearest_interp=True, to_tensor=True),
            SaveSegmentationd(keys="pred", output_key="output"),
        ]
    )
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(items, transform=preprocessing), batch_size=2, num_workers=0),
        network=network,
        postprocessing=postprocessing,
    )
    evaluator.run()

    assert sorted(p.name for p in out.iterdir()) == sorted(Path(it["output"]).name for it in items)
    for item in items:
        mask = np.array(Image.open(item["output"]))
        h, w = sizes[Path(item["image"]).name]
        assert mask.shape == (h, w)
        assert (mask[:, :2] == 255).all() and (mask[:, -2:] == 0).all()
    assert sorted(p.name for p in inputs.iterdir()) == sorted(sizes), "inputs untouched"


@pytest.mark.parametrize("ext", ["nrrd", "mha"])
def test_nrrd_and_mha_inputs_get_nifti_masks_on_their_own_grid(tmp_path, ext):
    """The 3D bundle's inference path for a NRRD / MHA volume: its mask is a NIfTI with the input's affine."""
    import SimpleITK as sitk

    from monai_im.transforms import VolumeReader, volume_segmentation_transforms

    volume = np.zeros((12, 10, 8), np.int16)
    volume[2:6, 3:7, 2:5] = 200
    image = sitk.GetImageFromArray(volume.T.copy())
    image.SetSpacing((1.5, 2.0, 3.0))
    image.SetOrigin((10.0, -4.0, 7.0))
    image.SetDirection((-1.0, 0, 0, 0, 1, 0, 0, 0, 1))
    sitk.WriteImage(image, str(tmp_path / f"ct.{ext}"))
    pre = volume_segmentation_transforms(
        pixdim=(2.5, 2.5, 4.0),
        intensity_window=(-160, 240),
        num_classes=2,
        reader=VolumeReader(),
        keep_keys=["output"],
    )
    output = tmp_path / "out" / segmentation_file_name(tmp_path / f"ct.{ext}")
    d = pre({"image": str(tmp_path / f"ct.{ext}"), "output": str(output)})
    d["pred"] = (d["image"] > 0.5).float()
    d = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=True)(d)
    SaveSegmentationd(keys="pred", output_key="output")(d)
    written = nib.load(output)
    assert output.name == "ct_mask.nii.gz" and written.shape == (12, 10, 8)
    ras = np.array([[1.5, 0, 0, -10.0], [0, -2.0, 0, 4.0], [0, 0, 3.0, 7.0], [0, 0, 0, 1]])  # LPS -> RAS
    np.testing.assert_allclose(written.affine, ras, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(written.dataobj)[2:6, 3:7, 2:5], 1)
