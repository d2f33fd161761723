from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.networks.utils import one_hot

from monai_im.metrics import (
    binary_dice,
    binary_iou,
    channel_dice,
    channel_iou,
    overlap_scores,
    present_class_miou,
)


def _masks(*rows_per_image: list[list[int]]) -> torch.Tensor:
    """(B, 1, H, W) float mask from nested lists, one per image."""
    return torch.tensor(rows_per_image, dtype=torch.float32).unsqueeze(1)


# image 0: 1 of 2+2 pixels shared -> IoU 1/3, Dice 1/2; image 1: 2 of 4 and 2 -> IoU 1/2, Dice 2/3
PRED = _masks([[1, 1], [0, 0]], [[1, 1], [1, 1]])
GT = _masks([[0, 1], [1, 0]], [[1, 1], [0, 0]])


def test_binary_iou_and_dice_hand_computed():
    torch.testing.assert_close(binary_iou(PRED, GT), torch.tensor([1 / 3, 1 / 2]))
    torch.testing.assert_close(binary_dice(PRED, GT), torch.tensor([1 / 2, 2 / 3]))


def test_binary_scores_are_symmetric_and_perfect_on_identity():
    torch.testing.assert_close(binary_iou(GT, PRED), binary_iou(PRED, GT))
    torch.testing.assert_close(binary_dice(GT, GT), torch.ones(2))


def test_empty_mask_convention():
    empty = torch.zeros(1, 1, 2, 2)
    full = torch.ones(1, 1, 2, 2)
    # empty vs empty: a correct "nothing here" scores empty_score (default 1)
    assert binary_iou(empty, empty).item() == 1.0
    assert binary_dice(empty, empty).item() == 1.0
    assert binary_iou(empty, empty, empty_score=0.0).item() == 0.0  # the reference code's IoU
    # empty vs non-empty, either way round: 0
    for p, g in [(empty, full), (full, empty)]:
        assert binary_iou(p, g).item() == 0.0
        assert binary_dice(p, g).item() == 0.0
    scores = binary_iou(torch.cat([empty, full]), torch.cat([empty, empty]))
    assert not torch.isnan(scores).any()


def test_input_types_and_3d():
    expected = torch.tensor([1 / 3, 1 / 2])
    torch.testing.assert_close(binary_iou(PRED.bool(), GT.bool()), expected)
    torch.testing.assert_close(binary_iou(PRED * 255, GT * 255), expected)
    torch.testing.assert_close(binary_iou(PRED.numpy(), GT.numpy()), expected)
    out = binary_iou(MetaTensor(PRED), MetaTensor(GT))
    assert type(out) is torch.Tensor
    torch.testing.assert_close(out, expected)
    # 3D: stack the 2D pair along depth -> same per-image ratios
    torch.testing.assert_close(binary_iou(torch.stack([PRED] * 3, -1), torch.stack([GT] * 3, -1)), expected)


def test_binary_rejects_multi_channel_and_mismatched_shapes():
    with pytest.raises(ValueError, match="one-channel"):
        binary_iou(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2))
    with pytest.raises(ValueError, match="same shape"):
        binary_dice(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3))


def test_channel_iou_and_dice():
    pred = torch.cat([PRED, torch.zeros_like(PRED), GT], dim=1)  # (2, 3, 2, 2)
    gt = torch.cat([GT, torch.zeros_like(GT), GT], dim=1)
    expected_iou = torch.tensor([[1 / 3, 1.0, 1.0], [1 / 2, 1.0, 1.0]])  # empty channel 1 -> empty_score
    torch.testing.assert_close(channel_iou(pred, gt), expected_iou)
    torch.testing.assert_close(channel_iou(pred, gt, empty_score=0.0)[:, 1], torch.zeros(2))
    torch.testing.assert_close(channel_dice(pred, gt)[:, 0], torch.tensor([1 / 2, 2 / 3]))


# one 2x3 image with classes {0, 1} in the ground truth; class 2 is predicted but absent
GT_CLS = torch.tensor([[[[0, 0, 1], [0, 0, 1]]]])
PRED_CLS = torch.tensor([[[[0, 0, 1], [0, 1, 2]]]])
# class 0: 3 shared of 4 -> 3/4; class 1: 1 shared, union 3 -> 1/3; class 2 left out
EXPECTED_MIOU = (3 / 4 + 1 / 3) / 2


def test_present_class_miou_ignores_absent_classes():
    out = present_class_miou(PRED_CLS, GT_CLS, num_classes=3)
    torch.testing.assert_close(out, torch.tensor([EXPECTED_MIOU]))
    # a mean over all classes would count class 2 as 0
    all_classes = channel_iou(one_hot(PRED_CLS, 3), one_hot(GT_CLS, 3), empty_score=0.0).mean()
    assert all_classes.item() < EXPECTED_MIOU


def test_present_class_miou_onehot_and_class_index_agree():
    onehot = present_class_miou(one_hot(PRED_CLS, 3), one_hot(GT_CLS, 3))
    mixed = present_class_miou(one_hot(PRED_CLS, 3), GT_CLS)  # num_classes taken from the one-hot input
    torch.testing.assert_close(onehot, torch.tensor([EXPECTED_MIOU]))
    torch.testing.assert_close(mixed, onehot)


def test_present_class_miou_batch_background_and_empty():
    pred = torch.cat([PRED_CLS, torch.full_like(PRED_CLS, 2)])
    gt = torch.cat([GT_CLS, torch.full_like(GT_CLS, 2)])
    torch.testing.assert_close(
        present_class_miou(pred, gt, num_classes=3), torch.tensor([EXPECTED_MIOU, 1.0])
    )
    no_bg = present_class_miou(PRED_CLS, GT_CLS, num_classes=3, include_background=False)
    torch.testing.assert_close(no_bg, torch.tensor([1 / 3]))
    # only background in the ground truth and excluded: the empty convention applies
    bg = torch.zeros_like(GT_CLS)
    assert present_class_miou(bg, bg, num_classes=3, include_background=False).item() == 1.0
    assert present_class_miou(PRED_CLS, bg, num_classes=3, include_background=False).item() == 0.0


def test_present_class_miou_bad_inputs():
    with pytest.raises(ValueError, match="num_classes"):
        present_class_miou(PRED_CLS, GT_CLS)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        present_class_miou(PRED_CLS, GT_CLS, num_classes=2)
    with pytest.raises(ValueError, match="one-hot channels"):
        present_class_miou(one_hot(PRED_CLS, 3), GT_CLS, num_classes=4)


def test_vectorised_matches_per_image_loop():
    rng = np.random.default_rng(0)
    pred = torch.from_numpy(rng.random((5, 1, 8, 8)) > 0.5)
    gt = torch.from_numpy(rng.random((5, 1, 8, 8)) > 0.5)
    looped = torch.cat([binary_iou(pred[i : i + 1], gt[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(binary_iou(pred, gt), looped)


# ----------------------------------------------------------------------------- one implementation, MONAI's
@pytest.mark.parametrize("shape", [(5, 1, 12, 10), (3, 4, 9, 9), (2, 3, 5, 6, 7)])
def test_matches_monai_metrics_where_the_conventions_agree(shape):
    """Non-empty ground truth everywhere: MONAI's MeanIoU / DiceMetric (default ignore_empty) agree exactly."""
    from monai.metrics import DiceMetric, MeanIoU

    g = torch.Generator().manual_seed(sum(shape))
    pred = (torch.rand(shape, generator=g) < 0.4).float()
    truth = (torch.rand(shape, generator=g) < 0.3).float()
    truth[..., 0] = 1.0  # every (image, channel) has foreground
    pred[0, 0] = 0.0  # an empty prediction against a non-empty truth scores 0 in both
    iou = MeanIoU(include_background=True, reduction="none")(pred, truth)
    dice = DiceMetric(include_background=True, reduction="none")(pred, truth)
    assert torch.equal(channel_iou(pred, truth), iou) and torch.equal(channel_dice(pred, truth), dice)
    assert channel_iou(pred, truth)[0, 0] == 0 and 0 < float(iou.mean()) < 1
    if shape[1] == 1:
        assert torch.equal(binary_iou(pred, truth), iou[:, 0]) and torch.equal(
            binary_dice(pred, truth), dice[:, 0]
        )


def test_empty_prediction_and_truth_score_empty_score_where_monai_gives_nan():
    from monai.metrics import compute_dice, compute_iou

    pred = torch.zeros(2, 2, 4, 4)
    truth = torch.zeros(2, 2, 4, 4)
    pred[1, 1, 0, 0] = truth[1, 1, 0, 0] = 1.0  # image 1, channel 1: both non-empty and equal
    assert torch.equal(channel_iou(pred, truth), torch.ones(2, 2))
    assert torch.equal(channel_dice(pred, truth), torch.ones(2, 2))
    assert torch.equal(channel_iou(pred, truth, empty_score=0.25), torch.tensor([[0.25, 0.25], [0.25, 1.0]]))
    assert torch.equal(channel_dice(pred, truth, empty_score=0.0), torch.tensor([[0.0, 0.0], [0.0, 1.0]]))
    # MONAI: NaN by default, 1.0 with ignore_empty=False (our default)
    assert torch.isnan(compute_iou(pred, truth)[0]).all() and torch.isnan(compute_dice(pred, truth)[0]).all()
    assert torch.equal(compute_iou(pred, truth, ignore_empty=False), channel_iou(pred, truth))
    assert torch.equal(compute_dice(pred, truth, ignore_empty=False), channel_dice(pred, truth))


def test_overlap_scores_valid_region_and_pooled_channels():
    g = torch.Generator().manual_seed(3)
    pred = torch.rand(4, 2, 6, 6, generator=g) > 0.5
    truth = torch.rand(4, 2, 6, 6, generator=g) > 0.5
    valid = torch.rand(4, 1, 6, 6, generator=g) > 0.3
    pooled = overlap_scores(pred, truth, valid=valid, pool_channels=True)
    v = valid.expand_as(pred)
    inter = (pred & truth & v).flatten(1).sum(1).float()
    union = ((pred | truth) & v).flatten(1).sum(1).float()
    assert pooled.shape == (4, 1) and torch.equal(pooled[:, 0], inter / union)
    dice = overlap_scores(pred, truth, "dice", valid=valid)
    hand = (
        2
        * (pred & truth & v).sum((2, 3)).float()
        / ((pred & v).sum((2, 3)) + (truth & v).sum((2, 3))).float()
    )
    torch.testing.assert_close(dice, hand)
    nothing = torch.zeros(4, 1, 6, 6, dtype=torch.bool)
    assert torch.equal(overlap_scores(pred, truth, valid=nothing, empty_score=0.5), torch.full((4, 2), 0.5))
    with pytest.raises(ValueError, match="metric must be 'iou' or 'dice'"):
        overlap_scores(pred, truth, "f1")
