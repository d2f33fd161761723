"""Tests of the array transforms: InconsistencyMask, ApplyInconsistencyMask, AcceptPseudoLabel, EnsureNumChannels."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_im.constants import IGNORE_INDEX
from monai_im.transforms import (
    AcceptPseudoLabel,
    ApplyInconsistencyMask,
    EnsureNumChannels,
    InconsistencyMask,
    inconsistency_mask,
)


def binary_votes_2d(num_teachers: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Teacher probabilities (E, 1, 1, 2^E) holding all vote combinations, and the vote counts."""
    votes = np.array(list(itertools.product([0, 1], repeat=num_teachers)), dtype=np.float32)  # (2^E, E)
    probs = np.where(votes > 0, 0.7, 0.2).astype(np.float32)
    return probs.T.reshape(num_teachers, 1, 1, -1), votes.sum(axis=1)


@pytest.mark.parametrize("as_type", [np.asarray, torch.as_tensor])
def test_binary_truth_table_types(as_type):
    probs, count = binary_votes_2d(3)
    pseudo_label, im = InconsistencyMask("binary")(as_type(probs))
    assert type(pseudo_label) is type(as_type(probs)) and type(im) is type(as_type(probs))
    assert pseudo_label.shape == im.shape == (1, 1, 8)
    np.testing.assert_array_equal(np.asarray(pseudo_label).ravel(), (count == 3).astype(np.float32))
    np.testing.assert_array_equal(np.asarray(im).ravel(), ((count > 0) & (count < 3)).astype(np.float32))


def test_numpy_dtypes():
    probs, _ = binary_votes_2d(2)
    pseudo_label, im = InconsistencyMask()(probs.astype(np.float64))
    assert pseudo_label.dtype == im.dtype == np.float64
    pseudo_label, im = InconsistencyMask()((probs > 0.5).astype(np.uint8))
    assert pseudo_label.dtype == im.dtype == np.float32


def test_threshold_strict_array():
    preds = np.full((3, 1, 2, 2), 0.3, dtype=np.float32)
    pseudo_label, im = InconsistencyMask(threshold=0.3)(preds)
    assert pseudo_label.sum() == 0 and im.sum() == 0
    pseudo_label, _ = InconsistencyMask(threshold=0.29)(preds)
    assert pseudo_label.sum() == 4


def test_metatensor_meta_kept():
    meta = {"filename_or_obj": "case_001.png", "affine": torch.diag(torch.tensor([2.0, 2.0, 1.0, 1.0]))}
    preds = MetaTensor(torch.rand(3, 2, 5, 6, 4), meta=meta)
    pseudo_label, im = InconsistencyMask("multilabel", dilation=2)(preds)
    for out, channels in ((pseudo_label, 2), (im, 1)):
        assert isinstance(out, MetaTensor)
        assert out.shape == (channels, 5, 6, 4)
        assert out.meta["filename_or_obj"] == "case_001.png"
        torch.testing.assert_close(out.affine, preds.affine)


@pytest.mark.parametrize(
    "mode,channels,spatial,dilation",
    [
        ("binary", 1, (6, 7), 0),
        ("binary", 1, (4, 5, 6), 2),
        ("multiclass", 4, (6, 7), 3),
        ("multiclass", 3, (4, 5, 6), 0),
        ("multilabel", 3, (6, 7), 4),
        ("multilabel", 2, (4, 5, 6), 3),
    ],
)
def test_batched_functional_equals_stacked_array(mode, channels, spatial, dilation):
    torch.manual_seed(0)
    preds = torch.rand(3, 4, channels, *spatial)  # (E, B, C, *spatial)
    pl_batch, im_batch = inconsistency_mask(preds, mode=mode, dilation=dilation)
    transform = InconsistencyMask(mode=mode, dilation=dilation)
    per_image = [transform(preds[:, b]) for b in range(preds.shape[1])]
    torch.testing.assert_close(pl_batch, torch.stack([p for p, _ in per_image]))
    torch.testing.assert_close(im_batch, torch.stack([i for _, i in per_image]))
    assert im_batch.sum() > 0  # the comparison is not vacuous


def test_multiclass_array_values():
    votes = np.array([[0, 1, 2, 2], [0, 1, 2, 1]])  # (E, W)
    preds = np.eye(3, dtype=np.float32)[votes].transpose(0, 2, 1)[:, :, None, :]  # (E, C, 1, W)
    pseudo_label, im = InconsistencyMask("multiclass")(preds)
    assert pseudo_label.ravel().tolist() == [0, 1, 2, 0]
    assert im.ravel().tolist() == [0, 0, 0, 1]


def test_inconsistency_mask_validation():
    with pytest.raises(ValueError, match="mode"):
        InconsistencyMask("semantic")
    with pytest.raises(ValueError, match="threshold"):
        InconsistencyMask(threshold=1.0)
    with pytest.raises(ValueError, match="dilation"):
        InconsistencyMask(dilation=-2)
    with pytest.raises(ValueError, match=r"\(E, C, \*spatial\)"):
        InconsistencyMask()(np.zeros((2, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="C = 1"):
        InconsistencyMask("binary")(np.zeros((2, 3, 4, 4), dtype=np.float32))


def _masking_inputs():
    img = np.arange(1, 2 * 3 * 4 + 1, dtype=np.float32).reshape(2, 3, 4)
    im = np.zeros((1, 3, 4), dtype=np.float32)
    im[0, 1, 1:3] = 1
    label = np.ones((2, 3, 4), dtype=np.int64)
    return img, im, label


@pytest.mark.parametrize("as_type", [np.asarray, torch.as_tensor])
@pytest.mark.parametrize("policy,value", [("ignore", IGNORE_INDEX), ("background", 0)])
def test_apply_policies(as_type, policy, value):
    img, im, label = _masking_inputs()
    out_img, out_label = ApplyInconsistencyMask(policy=policy, fill_value=-3.0)(
        as_type(img), as_type(im), as_type(label)
    )
    assert type(out_img) is type(as_type(img)) and type(out_label) is type(as_type(label))
    out_img, out_label = np.asarray(out_img), np.asarray(out_label)
    assert out_img.dtype == np.float32 and out_label.dtype == np.int64
    inside = np.broadcast_to(im > 0, img.shape)
    assert (out_img[inside] == -3).all() and (out_img[~inside] == img[~inside]).all()
    assert (out_label[inside] == value).all() and (out_label[~inside] == 1).all()


def test_apply_im_class_policy_and_image_only():
    img, im, _ = _masking_inputs()
    label = torch.full((1, 3, 4), 2, dtype=torch.uint8)
    masker = ApplyInconsistencyMask(policy="im_class", im_class=0)
    out_img, out_label = masker(torch.as_tensor(img), torch.as_tensor(im), label)
    assert out_label.dtype == torch.uint8
    assert out_label[0, 1, 1:3].tolist() == [0, 0] and int(out_label.sum()) == 2 * (12 - 2)
    only = masker(img, im)
    assert isinstance(only, np.ndarray) and only.shape == img.shape
    with pytest.raises(ValueError, match="one-channel"):
        masker(img, im, np.ones((2, 3, 4)))


@pytest.mark.parametrize("policy", ["ignore", "background", "im_class"])
def test_apply_idempotent(policy):
    img, im, label = _masking_inputs()
    label = label[:1] * 3
    masker = ApplyInconsistencyMask(policy=policy, fill_value=0.5, im_class=5)
    once = masker(img, im, label)
    twice = masker(*once[:1], im, once[1])
    for a, b in zip(once, twice):
        np.testing.assert_array_equal(a, b)


def test_apply_keeps_meta_and_validates():
    img = MetaTensor(torch.rand(3, 4, 4), meta={"filename_or_obj": "x.png"})
    out = ApplyInconsistencyMask().apply_image(img, torch.ones(1, 4, 4))
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "x.png" and out.sum() == 0
    with pytest.raises(ValueError, match="policy"):
        ApplyInconsistencyMask(policy="mask")
    with pytest.raises(ValueError, match="ignore_index"):
        ApplyInconsistencyMask(policy="ignore").apply_label(np.zeros((1, 4, 4), np.uint8), np.ones((1, 4, 4)))
    with pytest.raises(ValueError, match="broadcast"):
        ApplyInconsistencyMask()(np.zeros((3, 4, 4)), np.zeros((1, 4, 5)))


@pytest.mark.parametrize("as_type", [np.asarray, torch.as_tensor])
def test_accept_pseudo_label(as_type):
    accept = AcceptPseudoLabel()
    empty = np.zeros((1, 4, 4), dtype=np.float32)
    pl = empty.copy()
    pl[0, 0, :3] = 1
    im = empty.copy()
    im[0, 3, :3] = 1
    assert accept(as_type(empty), as_type(empty)) is False  # empty foreground
    assert accept(as_type(pl), as_type(im)) is False  # foreground == IM
    im[0, 3, 2] = 0
    assert accept(as_type(pl), as_type(im)) is True  # foreground > IM
    assert AcceptPseudoLabel(max_im_fraction=0.1)(as_type(pl), as_type(im)) is False  # 2/16 > 0.1
    assert (
        AcceptPseudoLabel(min_foreground=0, foreground_exceeds_im=False)(as_type(empty), as_type(empty))
        is True
    )
    with pytest.raises(ValueError):
        AcceptPseudoLabel(min_foreground=-1)
    with pytest.raises(ValueError):
        AcceptPseudoLabel(max_im_fraction=2.0)


@pytest.mark.parametrize("as_type", [np.asarray, torch.as_tensor])
def test_ensure_num_channels(as_type):
    gray = np.random.default_rng(0).random((1, 4, 5)).astype(np.float32)
    out = EnsureNumChannels(3)(as_type(gray))
    assert type(out) is type(as_type(gray)) and out.shape == (3, 4, 5)
    for c in range(3):
        np.testing.assert_array_equal(np.asarray(out)[c], gray[0])
    rgba = np.random.default_rng(1).random((4, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(EnsureNumChannels(3)(as_type(rgba))), rgba[:3])
    rgb = np.stack([np.full((2, 2), 100.0), np.full((2, 2), 50.0), np.full((2, 2), 10.0)]).astype(np.float32)
    lum = np.asarray(EnsureNumChannels(1)(as_type(rgb)))
    assert lum.shape == (1, 2, 2)
    np.testing.assert_allclose(lum, 0.299 * 100 + 0.587 * 50 + 0.114 * 10, rtol=1e-6)
    same = as_type(rgb)
    assert EnsureNumChannels(3)(same) is same


def test_ensure_num_channels_integer_3d_and_meta():
    rgb = np.zeros((3, 2, 2, 2), dtype=np.uint8)
    rgb[0], rgb[1], rgb[2] = 255, 128, 1
    lum = EnsureNumChannels(1)(rgb)
    assert lum.dtype == np.uint8 and lum.shape == (1, 2, 2, 2)
    assert int(lum.max()) == round(0.299 * 255 + 0.587 * 128 + 0.114 * 1)
    img = MetaTensor(torch.rand(1, 3, 3), meta={"filename_or_obj": "gray.png"})
    out = EnsureNumChannels(3)(img)
    assert (
        isinstance(out, MetaTensor) and out.shape == (3, 3, 3) and out.meta["filename_or_obj"] == "gray.png"
    )


def test_ensure_num_channels_errors():
    img = MetaTensor(torch.rand(2, 3, 3), meta={"filename_or_obj": "two_channels.png"})
    with pytest.raises(ValueError, match=r"\(2, 3, 3\).*two_channels\.png.*3 channel"):
        EnsureNumChannels(3)(img)
    with pytest.raises(ValueError, match=r"\(4, 3, 3\)"):
        EnsureNumChannels(1)(np.zeros((4, 3, 3)))
    with pytest.raises(ValueError):
        EnsureNumChannels(0)
