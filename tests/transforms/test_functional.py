"""Tests of the batched functional core: inconsistency_mask, dilate_mask, mask_image/label, accept_pseudo_labels."""

from __future__ import annotations

import itertools

import pytest
import torch

from monai_im.constants import IGNORE_INDEX
from monai_im.transforms import (
    accept_pseudo_labels,
    dilate_mask,
    inconsistency_mask,
    mask_image,
    mask_label,
)


def binary_truth_table(
    num_teachers: int, high: float = 0.9, low: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """All 2^E teacher votes laid along W: preds (E, 1, 1, 1, 2^E) and the vote matrix (2^E, E)."""
    votes = torch.tensor(list(itertools.product([0, 1], repeat=num_teachers)), dtype=torch.bool)
    probs = torch.where(votes, torch.tensor(high), torch.tensor(low))  # (2^E, E)
    return probs.T.reshape(num_teachers, 1, 1, 1, -1), votes


@pytest.mark.parametrize("num_teachers", [1, 2, 3, 4])
def test_binary_truth_table(num_teachers):
    preds, votes = binary_truth_table(num_teachers)
    pseudo_label, im = inconsistency_mask(preds, mode="binary")
    count = votes.sum(dim=1)
    assert pseudo_label.shape == im.shape == (1, 1, 1, 2**num_teachers)
    assert pseudo_label.dtype == im.dtype == torch.float32
    torch.testing.assert_close(pseudo_label.flatten(), (count == num_teachers).float())
    torch.testing.assert_close(im.flatten(), ((count > 0) & (count < num_teachers)).float())


def test_binary_truth_table_e3_explicit():
    preds, _ = binary_truth_table(3)  # votes 000, 001, 010, 011, 100, 101, 110, 111
    pseudo_label, im = inconsistency_mask(preds)
    assert pseudo_label.flatten().tolist() == [0, 0, 0, 0, 0, 0, 0, 1]
    assert im.flatten().tolist() == [0, 1, 1, 1, 1, 1, 1, 0]


def test_single_teacher_has_empty_im():
    preds = torch.rand(1, 2, 1, 6, 6)
    pseudo_label, im = inconsistency_mask(preds)
    assert im.sum() == 0
    torch.testing.assert_close(pseudo_label, (preds[0] > 0.5).float())


def test_threshold_is_strict():
    preds = torch.tensor([0.5, 0.5, 0.50001, 0.3]).view(1, 1, 1, 1, 4).repeat(2, 1, 1, 1, 1)
    pseudo_label, im = inconsistency_mask(preds, threshold=0.5)
    assert pseudo_label.flatten().tolist() == [0, 0, 1, 0]
    pseudo_label, _ = inconsistency_mask(preds, threshold=0.25)
    assert pseudo_label.flatten().tolist() == [1, 1, 1, 1]
    mixed = torch.tensor([0.5, 0.6]).view(2, 1, 1, 1, 1)  # one teacher exactly at the threshold
    pseudo_label, im = inconsistency_mask(mixed)
    assert pseudo_label.item() == 0 and im.item() == 1


def test_multiclass_all_vote_patterns():
    num_teachers, num_classes = 3, 3
    votes = torch.tensor(list(itertools.product(range(num_classes), repeat=num_teachers)))  # (27, 3)
    probs = torch.nn.functional.one_hot(votes, num_classes).float() * 0.8 + 0.1  # (27, E, C)
    preds = probs.permute(1, 2, 0).reshape(num_teachers, 1, num_classes, 1, -1)
    pseudo_label, im = inconsistency_mask(preds, mode="multiclass")
    agree = (votes == votes[:, :1]).all(dim=1)
    assert pseudo_label.shape == im.shape == (1, 1, 1, 27)
    torch.testing.assert_close(im.flatten(), (~agree).float())
    torch.testing.assert_close(pseudo_label.flatten(), torch.where(agree, votes[:, 0], 0).float())
    assert set(pseudo_label.unique().tolist()) == {0.0, 1.0, 2.0}


def test_multiclass_pairwise_disagreement_and_ties():
    # 4 teachers, 2 pixels: the first agree on class 2; in the second only teacher 3 differs
    preds = torch.zeros(4, 1, 3, 1, 2)
    preds[:, 0, 2, 0, 0] = 1.0
    preds[:3, 0, 1, 0, 1] = 1.0
    preds[3, 0, 0, 0, 1] = 1.0
    pseudo_label, im = inconsistency_mask(preds, mode="multiclass")
    assert pseudo_label.flatten().tolist() == [2, 0]
    assert im.flatten().tolist() == [0, 1]
    ties = torch.full((2, 1, 3, 2, 2), 1 / 3)  # argmax ties resolve to the first class for every teacher
    pseudo_label, im = inconsistency_mask(ties, mode="multiclass")
    assert im.sum() == 0 and pseudo_label.sum() == 0


def test_multilabel_union():
    # E=2, C=3, W=4; per-channel votes (teacher0, teacher1)
    votes = torch.tensor(
        [
            [[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]],  # teacher 0
            [[1, 1, 0, 1], [1, 1, 0, 0], [0, 0, 0, 0]],  # teacher 1
        ]
    ).float()
    preds = (votes * 0.8 + 0.1).view(2, 1, 3, 1, 4)
    pseudo_label, im = inconsistency_mask(preds, mode="multilabel")
    assert pseudo_label.shape == (1, 3, 1, 4) and im.shape == (1, 1, 1, 4)
    # per-channel IMs: ch0 at 3, ch1 at 1, ch2 at 3 -> union at 1 and 3
    assert im.flatten().tolist() == [0, 1, 0, 1]
    expected = torch.tensor([[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]).float()
    torch.testing.assert_close(pseudo_label[0, :, 0], expected)


def test_multilabel_pseudo_label_zero_inside_union_im():
    preds = torch.tensor([[0.9, 0.9], [0.9, 0.1]]).view(2, 1, 2, 1, 1)  # ch0 agreed, ch1 disputed
    pseudo_label, im = inconsistency_mask(preds, mode="multilabel")
    assert im.item() == 1
    assert pseudo_label.sum() == 0


@pytest.mark.parametrize("mode,channels", [("binary", 1), ("multiclass", 3), ("multilabel", 2)])
def test_3d_shapes_and_batch(mode, channels):
    preds = torch.rand(3, 2, channels, 4, 5, 6)
    pseudo_label, im = inconsistency_mask(preds, mode=mode)
    assert pseudo_label.shape == (2, channels if mode == "multilabel" else 1, 4, 5, 6)
    assert im.shape == (2, 1, 4, 5, 6)
    assert set(im.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_float_dtype_follows_preds(dtype):
    pseudo_label, im = inconsistency_mask(torch.rand(2, 1, 1, 4, 4).to(dtype), dilation=3)
    assert pseudo_label.dtype == im.dtype == dtype


def test_integer_and_bool_preds_give_float32():
    preds = torch.randint(0, 2, (3, 1, 1, 4, 4))
    for p in (preds, preds.bool()):
        pseudo_label, im = inconsistency_mask(p)
        assert pseudo_label.dtype == im.dtype == torch.float32
        torch.testing.assert_close(pseudo_label, (preds.sum(0) == 3).float())


def test_dilation_odd_2d_and_3d():
    mask = torch.zeros(1, 1, 7, 7)
    mask[0, 0, 3, 3] = 1
    expected = torch.zeros(1, 1, 7, 7)
    expected[0, 0, 2:5, 2:5] = 1
    torch.testing.assert_close(dilate_mask(mask, 3), expected)
    mask3 = torch.zeros(1, 1, 5, 5, 5)
    mask3[0, 0, 2, 2, 2] = 1
    out = dilate_mask(mask3, 3)
    assert out.shape == mask3.shape and out.sum() == 27 and out[0, 0, 1:4, 1:4, 1:4].all()


@pytest.mark.parametrize("k,lo,hi", [(2, 0, 1), (4, 1, 2), (5, 2, 2)])
def test_dilation_even_kernel_anchor(k, lo, hi):
    mask = torch.zeros(1, 1, 1, 9)
    mask[..., 4] = 1
    out = dilate_mask(mask, k)
    expected = torch.zeros(9)
    expected[4 - lo : 4 + hi + 1] = 1
    torch.testing.assert_close(out.flatten(), expected)


@pytest.mark.parametrize("k", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("shape", [(2, 1, 6, 7), (1, 1, 3, 4, 5)])
def test_dilation_keeps_shape_and_dtype(k, shape):
    mask = (torch.rand(shape) > 0.8).to(torch.float16)
    out = dilate_mask(mask, k)
    assert out.shape == mask.shape and out.dtype == mask.dtype
    assert bool(((out > 0) | (mask == 0)).all())  # dilation never removes a pixel
    if k <= 1:
        assert out is mask


def test_dilation_in_inconsistency_mask():
    preds = torch.full((2, 1, 1, 5, 7), 0.9)  # both teachers agree on foreground everywhere ...
    preds[1, 0, 0, 2, 3] = 0.1  # ... except one pixel
    pseudo_label, im = inconsistency_mask(preds, dilation=3)
    assert im.sum() == 9 and im[0, 0, 1:4, 2:5].all()
    torch.testing.assert_close(pseudo_label, 1 - im)  # zero inside the dilated IM, unchanged outside
    pl0, im0 = inconsistency_mask(preds, dilation=0)
    pl1, im1 = inconsistency_mask(preds, dilation=1)
    torch.testing.assert_close(pl0, pl1)
    torch.testing.assert_close(im0, im1)
    assert im0.sum() == 1


def test_metatensor_input_gives_plain_tensors():
    from monai.data import MetaTensor

    pseudo_label, im = inconsistency_mask(MetaTensor(torch.rand(2, 1, 1, 4, 4)))
    assert type(pseudo_label) is torch.Tensor and type(im) is torch.Tensor


@pytest.mark.parametrize(
    "kwargs,shape",
    [
        ({"mode": "softmax"}, (2, 1, 1, 4, 4)),
        ({"threshold": 0.0}, (2, 1, 1, 4, 4)),
        ({"threshold": 1.0}, (2, 1, 1, 4, 4)),
        ({"threshold": 1.5}, (2, 1, 1, 4, 4)),
        ({"dilation": -1}, (2, 1, 1, 4, 4)),
        ({}, (2, 1, 4, 4)),  # missing batch dim
        ({}, (2, 1, 1, 2, 2, 2, 2)),  # 4 spatial dims
        ({"mode": "binary"}, (2, 1, 2, 4, 4)),  # binary with 2 channels
        ({"mode": "multiclass"}, (2, 1, 1, 4, 4)),  # multiclass with 1 channel
    ],
)
def test_inconsistency_mask_errors(kwargs, shape):
    with pytest.raises(ValueError):
        inconsistency_mask(torch.rand(shape), **kwargs)


def test_mask_image_and_label_batched():
    img = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 1, 4) + 1
    im = torch.tensor([[1, 0, 0, 0], [0, 0, 1, 1]]).view(2, 1, 1, 4).float()
    out = mask_image(img, im, fill_value=-5.0)
    assert bool((out[0, :, 0, 0] == -5).all()) and bool((out[1, :, 0, 2:] == -5).all())
    torch.testing.assert_close(out[im.expand_as(img) == 0], img[im.expand_as(img) == 0])
    label = torch.ones(2, 1, 1, 4, dtype=torch.int64)
    for policy, value in (("ignore", IGNORE_INDEX), ("background", 0), ("im_class", 7)):
        masked = mask_label(label, im, policy=policy, im_class=7)
        assert masked.dtype == torch.int64
        assert masked[im > 0].unique().tolist() == [value] and masked[im == 0].unique().tolist() == [1]


def test_mask_errors():
    with pytest.raises(ValueError, match="broadcast"):
        mask_image(torch.zeros(3, 4, 4), torch.zeros(1, 5, 4))
    with pytest.raises(ValueError, match="policy"):
        mask_label(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4), policy="drop")
    with pytest.raises(ValueError, match="ignore_index"):
        mask_label(torch.zeros(1, 4, 4, dtype=torch.uint8), torch.zeros(1, 4, 4), policy="ignore")
    with pytest.raises(ValueError, match="one-channel"):
        mask_label(torch.zeros(2, 4, 4), torch.zeros(1, 4, 4), policy="im_class")


def _case(fg: int, im: int, size: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """A (1, 1, 1, size) pseudo-label with ``fg`` foreground pixels and a disjoint IM of ``im`` pixels."""
    pseudo_label = torch.zeros(1, 1, 1, size)
    mask = torch.zeros(1, 1, 1, size)
    pseudo_label[..., :fg] = 1
    mask[..., size - im :] = 1 if im else 0
    return pseudo_label, mask


def test_accept_paper_rule():
    cases = [(0, 0, False), (0, 3, False), (2, 3, False), (3, 3, False), (4, 3, True), (1, 0, True)]
    pls, ims = zip(*[_case(fg, im) for fg, im, _ in cases])
    accepted = accept_pseudo_labels(torch.cat(pls), torch.cat(ims))
    assert accepted.dtype == torch.bool and accepted.shape == (len(cases),)
    assert accepted.tolist() == [ok for *_, ok in cases]


def test_accept_switches():
    pls, ims = zip(*[_case(0, 0), _case(2, 3), _case(3, 1), _case(6, 4)])
    pl, im = torch.cat(pls), torch.cat(ims)
    assert accept_pseudo_labels(pl, im, min_foreground=0, foreground_exceeds_im=False).tolist() == [True] * 4
    assert accept_pseudo_labels(pl, im, min_foreground=3, foreground_exceeds_im=False).tolist() == [
        False,
        False,
        True,
        True,
    ]
    assert accept_pseudo_labels(pl, im, min_foreground=0).tolist() == [False, False, True, True]
    # IM fractions 0.0, 0.3, 0.1, 0.4: more than 0.3 of the pixels is rejected, exactly 0.3 is kept
    assert accept_pseudo_labels(
        pl, im, min_foreground=0, foreground_exceeds_im=False, max_im_fraction=0.3
    ).tolist() == [True, True, True, False]
    assert accept_pseudo_labels(pl, im, max_im_fraction=0.3).tolist() == [False, False, True, False]


def test_accept_multiclass_and_multilabel_foreground():
    im = torch.tensor([0, 0, 1, 1, 1]).view(1, 1, 1, 5).float()
    multiclass = torch.tensor([2, 1, 3, 3, 0]).view(1, 1, 1, 5).float()  # classes inside the IM do not count
    assert accept_pseudo_labels(multiclass, im, mode="multiclass").tolist() == [False]
    assert accept_pseudo_labels(multiclass, im, mode="multiclass", foreground_exceeds_im=False).tolist() == [
        True
    ]
    multilabel = torch.zeros(1, 3, 1, 5)
    multilabel[0, 0, 0, 0] = 1
    multilabel[0, 2, 0, 1] = 1
    multilabel[0, 1, 0, 3] = 1  # inside IM, still 0 after inconsistency_mask; here counted as given
    assert accept_pseudo_labels(multilabel, im, mode="multilabel").tolist() == [False]
    multilabel[0, 1, 0, 4] = 1
    multilabel[0, 0, 0, 2] = 1
    assert accept_pseudo_labels(multilabel, im, mode="multilabel").tolist() == [True]


def test_accept_errors():
    pl, im = _case(1, 1)
    with pytest.raises(ValueError):
        accept_pseudo_labels(pl, im, min_foreground=-1)
    with pytest.raises(ValueError):
        accept_pseudo_labels(pl, im, max_im_fraction=1.5)
    with pytest.raises(ValueError):
        accept_pseudo_labels(pl, im[0])
    with pytest.raises(ValueError):
        accept_pseudo_labels(torch.zeros(1, 2, 1, 10), im, mode="binary")
    with pytest.raises(ValueError):
        accept_pseudo_labels(pl, im, mode="other")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_follows_input_cuda():
    preds = torch.rand(3, 2, 3, 8, 8, device="cuda")
    for mode in ("binary", "multiclass", "multilabel"):
        p = preds[:, :, :1] if mode == "binary" else preds
        pseudo_label, im = inconsistency_mask(p, mode=mode, dilation=3)
        assert pseudo_label.device == im.device == preds.device
        cpu_pl, cpu_im = inconsistency_mask(p.cpu(), mode=mode, dilation=3)
        torch.testing.assert_close(pseudo_label.cpu(), cpu_pl)
        torch.testing.assert_close(im.cpu(), cpu_im)
        assert accept_pseudo_labels(pseudo_label, im, mode=mode).device == preds.device
