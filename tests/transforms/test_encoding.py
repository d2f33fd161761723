"""Reading rules: intensity scaling by stored bit depth, explicit foreground rule, mask channels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import LoadImage
from PIL import Image

from monai_im.transforms import (
    Image2DReader,
    ReadLabel,
    ReadLabeld,
    ScaleImageIntensity,
    ScaleImageIntensityd,
    image_segmentation_transforms,
)
from monai_im.transforms.encoding import image_value_range, label_channel_problem


def load(path):
    return LoadImage(image_only=True, dtype=None, ensure_channel_first=True, reader=Image2DReader())(
        str(path)
    )


def test_sixteen_bit_png_is_scaled_by_its_bit_depth_not_saturated(tmp_path):
    values = np.array([[0, 1000], [30000, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "a16.png")
    img = load(tmp_path / "a16.png")
    assert img.dtype == torch.int32, "torch widens uint16; the PIL mode keeps the bit depth"
    out = ScaleImageIntensity()(img)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(np.sort(out.numpy().ravel()), np.sort(values.ravel() / 65535.0), rtol=1e-6)
    assert float(out.max()) == pytest.approx(1.0) and 0 < float(out.flatten()[1:].min()) < 0.02


def test_sixteen_bit_tiff_is_read_and_scaled(tmp_path):
    values = np.full((4, 5), 4096, np.uint16)
    Image.fromarray(values).save(tmp_path / "a.tif")
    out = ScaleImageIntensity()(load(tmp_path / "a.tif"))
    assert out.shape == (1, 5, 4) and torch.allclose(out, torch.full_like(out, 4096 / 65535))


def test_eight_bit_rgb_uses_zero_to_255(tmp_path):
    Image.fromarray(np.full((3, 3, 3), 51, np.uint8)).save(tmp_path / "c.png")
    out = ScaleImageIntensity()(load(tmp_path / "c.png"))
    assert out.shape[0] == 3 and torch.allclose(out, torch.full_like(out, 0.2))


def test_float_images_are_kept_and_explicit_ranges_clip():
    x = torch.tensor([[[0.25, 0.75]]])
    assert torch.equal(ScaleImageIntensity()(x), x)
    ct = torch.tensor([[[-2000.0, -1000.0, 0.0, 1000.0, 3000.0]]])
    out = ScaleImageIntensity((-1000, 1000))(ct)
    assert out.flatten().tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    mm = ScaleImageIntensity("minmax")(torch.tensor([[[10.0, 20.0, 30.0]]]))
    assert mm.flatten().tolist() == [0.0, 0.5, 1.0]
    assert ScaleImageIntensity("minmax")(torch.ones(1, 2, 2)).abs().sum() == 0
    with pytest.raises(ValueError, match="high > low"):
        ScaleImageIntensity((5, 5))
    with pytest.raises(ValueError, match="intensity_range"):
        ScaleImageIntensity("percentile")


def test_thirty_two_bit_integers_need_an_explicit_range():
    with pytest.raises(ValueError, match="intensity_range"):
        image_value_range(torch.zeros(1, 2, 2, dtype=torch.int32))
    out = ScaleImageIntensityd("image", intensity_range=(0, 10))(
        {"image": torch.full((1, 2, 2), 5, dtype=torch.int32)}
    )
    assert torch.allclose(out["image"], torch.full((1, 2, 2), 0.5))


@pytest.mark.parametrize("foreground", [1, 255, 7])
def test_any_zero_k_mask_is_read_as_foreground(tmp_path, foreground):
    mask = np.zeros((6, 6), np.uint8)
    mask[1:3, 2:5] = foreground
    Image.fromarray(mask).save(tmp_path / "m.png")
    out = ReadLabel("binary")(load(tmp_path / "m.png"))
    assert out.shape == (1, 6, 6) and set(out.unique().tolist()) == {0.0, 1.0}
    assert int(out.sum()) == 6


def test_threshold_is_the_explicit_foreground_rule():
    lab = torch.tensor([[[1.0, 2.0, 2.0]]])
    assert ReadLabel("binary", label_threshold=1)(lab).flatten().tolist() == [0.0, 1.0, 1.0]
    assert ReadLabel("binary")(lab).flatten().tolist() == [1.0, 1.0, 1.0]


def test_rgb_copy_of_a_grey_mask_is_accepted_and_a_colour_mask_refused(tmp_path):
    grey = np.zeros((4, 4, 3), np.uint8)
    grey[0] = 255
    Image.fromarray(grey).save(tmp_path / "rgb_copy.png")
    out = ReadLabel("binary")(load(tmp_path / "rgb_copy.png"))
    assert out.shape == (1, 4, 4) and int(out.sum()) == 4
    colour = grey.copy()
    colour[1, :, 0] = 255
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(ValueError, match="colour.png.*different colour channels"):
        ReadLabel("binary")(load(tmp_path / "colour.png"))


def test_multilabel_masks_keep_their_channels_and_drop_alpha():
    rgba = torch.zeros(4, 3, 3)
    rgba[1, 0, 0] = 255
    rgba[3] = 255  # alpha
    out = ReadLabeld("label", mode="multilabel", num_channels=3)({"label": rgba})["label"]
    assert out.shape == (3, 3, 3) and out.sum() == 1 and out[1, 0, 0] == 1
    with pytest.raises(ValueError, match="has 2 channels"):
        ReadLabel("multilabel", num_channels=3)(torch.zeros(2, 3, 3))


def test_multiclass_maps_are_class_indices():
    lab = torch.tensor([[[0.0, 1.0, 2.0]]])
    assert torch.equal(ReadLabel("multiclass", num_channels=3)(lab), lab)
    with pytest.raises(ValueError, match=r"0\.\.2"):
        ReadLabel("multiclass", num_channels=3)(torch.tensor([[[0.0, 3.0]]]))
    with pytest.raises(ValueError, match="integers"):
        ReadLabel("multiclass", num_channels=3)(torch.tensor([[[0.5]]]))


def test_label_channel_rules():
    assert label_channel_problem(1, "binary", 1) is None
    assert label_channel_problem(3, "binary", 1) is None  # identical channels checked on values
    assert label_channel_problem(2, "binary", 1) is not None
    assert (
        label_channel_problem(3, "multilabel", 3) is None
        and label_channel_problem(4, "multilabel", 3) is None
    )
    assert label_channel_problem(1, "multilabel", 3) is not None


def test_preprocessing_reads_zero_one_masks_and_sixteen_bit_images(tmp_path):
    """The bundles' chain: a 0/1 mask is not empty and a 16-bit image is not saturated."""
    img = np.linspace(0, 20000, 64, dtype=np.uint16).reshape(8, 8)
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 1
    Image.fromarray(img).save(tmp_path / "i.png")
    Image.fromarray(mask).save(tmp_path / "m.png")
    chain = image_segmentation_transforms((8, 8), num_channels=1)
    out = chain({"image": str(tmp_path / "i.png"), "label": str(tmp_path / "m.png")})
    assert int(out["label"].sum()) == 16
    assert float(out["image"].max()) == pytest.approx(20000 / 65535, rel=1e-5)
