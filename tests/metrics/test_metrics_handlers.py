from __future__ import annotations

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from monai.handlers import from_engine
from monai.networks.utils import one_hot
from monai.transforms import AsDiscreted

from monai_im.metrics import (
    CellCountErrorMetric,
    ChannelIoUMetric,
    ChannelMeanIoU,
    MeanCellCountError,
    PerImageDice,
    PerImageDiceMetric,
    PerImageIoU,
    PerImageIoUMetric,
    PresentClassMeanIoU,
    PresentClassMeanIoUMetric,
)

# three binary pairs (1, 2, 2): IoU 1/3, 1/2, 1 (empty vs empty); Dice 1/2, 2/3, 1
BIN_PRED = torch.tensor([[[1.0, 1], [0, 0]], [[1, 1], [1, 1]], [[0, 0], [0, 0]]]).unsqueeze(1)
BIN_GT = torch.tensor([[[0.0, 1], [1, 0]], [[1, 1], [0, 0]], [[0, 0], [0, 0]]]).unsqueeze(1)
MEAN_IOU = (1 / 3 + 1 / 2 + 1) / 3
MEAN_DICE = (1 / 2 + 2 / 3 + 1) / 3


def _evaluate(images: torch.Tensor, labels: torch.Tensor, key_metric, additional=None, decollate=True):
    """Run a SupervisedEvaluator whose network is the identity, so ``pred`` is the input image."""
    data = [{"image": i, "label": lab} for i, lab in zip(images, labels)]
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(data), batch_size=2),
        network=torch.nn.Identity(),
        # thresholding post-processing decollates the batch into lists of channel-first tensors
        postprocessing=AsDiscreted(keys="pred", threshold=0.5) if decollate else None,
        key_val_metric=key_metric,
        additional_metrics=additional,
        decollate=decollate,
    )
    evaluator.run()
    return evaluator


@pytest.mark.parametrize("decollate", [True, False])
def test_binary_handlers_in_supervised_evaluator(decollate):
    evaluator = _evaluate(
        BIN_PRED * 0.9,  # "probabilities" above threshold where the mask is 1
        BIN_GT,
        {"val_iou": PerImageIoU(output_transform=from_engine(["pred", "label"]))},
        {"val_dice": PerImageDice(output_transform=from_engine(["pred", "label"]))} if decollate else None,
        decollate=decollate,
    )
    assert evaluator.state.metrics["val_iou"] == pytest.approx(MEAN_IOU)
    assert evaluator.state.best_metric == pytest.approx(MEAN_IOU)
    details = evaluator.state.metric_details["val_iou"]
    torch.testing.assert_close(details.float(), torch.tensor([1 / 3, 1 / 2, 1.0]))
    if decollate:
        assert evaluator.state.metrics["val_dice"] == pytest.approx(MEAN_DICE)


def test_present_class_miou_handler_with_onehot_output():
    gt = torch.tensor([[[[0, 0, 1], [0, 0, 1]]], [[[2, 2, 2], [2, 2, 2]]]])
    pred = torch.tensor([[[[0, 0, 1], [0, 1, 2]]], [[[2, 2, 2], [2, 2, 1]]]])
    # image 0: (3/4 + 1/3) / 2; image 1: only class 2 present, 5 of 6 -> 5/6
    expected = ((3 / 4 + 1 / 3) / 2 + 5 / 6) / 2
    evaluator = _evaluate(
        one_hot(pred, 3),
        one_hot(gt, 3),
        {"val_miou": PresentClassMeanIoU(output_transform=from_engine(["pred", "label"]))},
        {"val_miou_idx": PresentClassMeanIoU(num_classes=3, output_transform=from_engine(["pred", "label"]))},
    )
    assert evaluator.state.metrics["val_miou"] == pytest.approx(expected)
    assert evaluator.state.metrics["val_miou_idx"] == pytest.approx(expected)


def _hela_pixel_image(cells: list[tuple[int, int, int]]) -> torch.Tensor:
    """(3, 16, 16) HeLa-like mask of single-pixel cells; each cell is (row, col, state 0=alive/1=dead)."""
    mask = torch.zeros(3, 16, 16)
    for r, c, state in cells:
        mask[2, r, c] = 1
        mask[state, r, c] = 1
    return mask


def test_cell_count_and_channel_iou_handlers():
    gt = torch.stack([_hela_pixel_image([(2, 2, 0), (2, 12, 0), (12, 7, 1)])] * 2)
    # image 0 misses an alive cell and calls the dead one alive (error 1); image 1 is perfect (error 0)
    pred = torch.stack([_hela_pixel_image([(2, 2, 0), (12, 7, 0)]), gt[1]])
    pick = from_engine(["pred", "label"])
    evaluator = _evaluate(
        pred,
        gt,
        {"val_mcce": MeanCellCountError(output_transform=pick)},
        {"val_iou_alive_dead": ChannelMeanIoU(channels=(0, 1), output_transform=pick)},
    )
    assert evaluator.state.metrics["val_mcce"] == pytest.approx(0.5)
    # image 0: alive IoU 1/3 (1 shared of 2 and 2), dead IoU 0; image 1: 1 and 1
    assert evaluator.state.metrics["val_iou_alive_dead"] == pytest.approx((1 / 3 + 0 + 1 + 1) / 4)


def test_metric_classes_accumulate_reset_and_accept_lists():
    metric = PerImageIoUMetric()
    out = metric(BIN_PRED[:2], BIN_GT[:2])
    torch.testing.assert_close(out, torch.tensor([1 / 3, 1 / 2]))
    metric(list(BIN_PRED[2:]), list(BIN_GT[2:]))  # a decollated list of channel-first tensors
    assert metric.aggregate().item() == pytest.approx(MEAN_IOU)
    metric.reset()
    with pytest.raises(ValueError):
        metric.aggregate()
    dice = PerImageDiceMetric(empty_score=0.0)
    dice(BIN_PRED, BIN_GT)
    assert dice.aggregate().item() == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)


def test_channel_iou_metric_selects_channels():
    pred = torch.cat([BIN_PRED, BIN_GT], dim=1)  # channel 1 is perfect
    metric = ChannelIoUMetric()
    assert metric(pred, torch.cat([BIN_GT, BIN_GT], dim=1)).shape == (3, 2)
    assert metric.aggregate().item() == pytest.approx((MEAN_IOU + 1) / 2)
    metric.channels = [0]
    assert metric.aggregate().item() == pytest.approx(MEAN_IOU)


def test_present_class_and_cell_count_metric_classes():
    metric = PresentClassMeanIoUMetric(num_classes=2)
    metric(BIN_PRED.long(), BIN_GT.long())
    # image 2 has only background, predicted perfectly; images 0 and 1 average their two classes
    expected = ((1 / 3 + 1 / 3) / 2 + (1 / 2 + 0) / 2 + 1.0) / 3
    assert metric.aggregate().item() == pytest.approx(expected)
    mcce = CellCountErrorMetric()
    mcce(torch.zeros(2, 3, 8, 8), torch.stack([_hela_pixel_image([(3, 3, 1)])[:, :8, :8]] * 2))
    assert mcce.aggregate().item() == pytest.approx(1.0)
