from __future__ import annotations

import copy
import math
import re

import pytest
import torch
from ignite.engine import Engine
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from monai.handlers import from_engine
from monai.networks.utils import one_hot

from monai_im.metrics.volume import (
    FLARE22_LABELLED_SLICES_ONLY,
    FLARE22_ORGANS,
    FLARE22_TOLERANCES,
    PerClassDice,
    PerClassDiceMetric,
    PerClassSurfaceDice,
    PerClassSurfaceDiceMetric,
    macro_mean,
    per_class_dice,
    per_class_surface_dice,
    prepare_one_hot,
)

PICK = from_engine(["pred", "label"])
NAMES = ("liver", "spleen", "kidney")  # classes 1..3 of a 4-class toy problem


def _volume(*cubes: tuple[int, tuple[slice, slice, slice]], size: int = 12) -> torch.Tensor:
    """(1, 1, size, size, size) class-index map with the given (label, region) cubes."""
    vol = torch.zeros(1, 1, size, size, size)
    for label, region in cubes:
        vol[(0, 0, *region)] = label
    return vol


CUBE_1 = (1, (slice(2, 6), slice(2, 6), slice(2, 6)))  # 64 voxels
CUBE_2 = (2, (slice(7, 11), slice(7, 11), slice(7, 11)))
LABEL = _volume(CUBE_1, CUBE_2)  # class 3 absent


def _run_engine(metrics: dict, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> Engine:
    """A tiny evaluator-like engine whose output is ``{"pred", "label"}``; metrics attached by name."""
    engine = Engine(lambda e, batch: {"pred": batch[0], "label": batch[1]})
    for name, metric in metrics.items():
        metric.attach(engine, name)
    engine.run(batches, max_epochs=1)
    return engine


def test_flare22_constants_match_the_official_protocol():
    assert len(FLARE22_ORGANS) == len(FLARE22_TOLERANCES) == 13
    assert all(re.fullmatch(r"[a-z][a-z_]*", n) for n in FLARE22_ORGANS)
    tol = dict(zip(FLARE22_ORGANS, FLARE22_TOLERANCES))
    assert tol == {
        "liver": 5, "right_kidney": 3, "spleen": 3, "pancreas": 5, "aorta": 2, "ivc": 2, "right_adrenal": 2,
        "left_adrenal": 2, "gallbladder": 2, "esophagus": 3, "stomach": 5, "duodenum": 7, "left_kidney": 3,
    }  # fmt: skip
    assert [FLARE22_ORGANS[c - 1] for c in FLARE22_LABELLED_SLICES_ONLY] == ["aorta", "ivc", "esophagus"]


def test_perfect_prediction_scores_one_and_absent_class_is_nan():
    dice = per_class_dice(LABEL, LABEL, 4)
    nsd = per_class_surface_dice(LABEL, LABEL, 4, tolerances=0.0, spacing=(2.5, 2.5, 4.0))
    for values in (dice, nsd):
        assert values.shape == (1, 3)
        torch.testing.assert_close(values[0, :2], torch.ones(2))
        assert math.isnan(values[0, 2])
    with_bg = per_class_dice(LABEL, LABEL, 4, include_background=True)
    assert with_bg.shape == (1, 4) and with_bg[0, 0] == 1.0


@pytest.mark.parametrize("use_subvoxels", [False, True])
def test_nsd_tolerance_and_spacing_are_in_mm(use_subvoxels):
    # the prediction is the label shifted by one voxel along axis 0, which is 2 mm; axes 1 and 2 are 1 mm
    shifted = torch.roll(LABEL, 1, dims=2)
    spacing = (2.0, 1.0, 1.0)

    def nsd(vol, tol):
        return per_class_surface_dice(vol, LABEL, 4, tol, spacing, use_subvoxels)[0, :2]

    assert (nsd(shifted, 1.9) < 0.95).all()  # 2 mm off, tolerance below it
    torch.testing.assert_close(nsd(shifted, 2.0), torch.ones(2))
    # the same one-voxel shift along a 1 mm axis is within 1 mm
    torch.testing.assert_close(nsd(torch.roll(LABEL, 1, dims=3), 1.0), torch.ones(2))
    assert (nsd(torch.roll(LABEL, 1, dims=3), 0.9) < 0.95).all()
    # without spacing a voxel is 1 mm: the axis-0 shift is within 1 mm then
    iso = per_class_surface_dice(shifted, LABEL, 4, 1.0, None, use_subvoxels)[0, :2]
    torch.testing.assert_close(iso, torch.ones(2))


def test_absent_organ_is_left_out_and_false_positive_counts_zero():
    half = _volume((1, (slice(2, 4), slice(2, 6), slice(2, 6))), CUBE_2)  # 32 of 64 liver voxels: Dice 2/3
    dice = PerClassDice(4, NAMES, output_transform=PICK)
    nsd = PerClassSurfaceDice(4, NAMES, tolerances=1.0, output_transform=PICK)
    engine = _run_engine({"dice": dice, "nsd": nsd}, [(half, LABEL)])
    m = engine.state.metrics
    assert m["dice_liver"] == pytest.approx(2 / 3) and m["dice_spleen"] == pytest.approx(1.0)
    assert math.isnan(m["dice_kidney"]) and math.isnan(m["nsd_kidney"])
    assert m["dice"] == pytest.approx((2 / 3 + 1) / 2)  # the mean of the two present organs
    assert m["nsd"] == pytest.approx((m["nsd_liver"] + 1) / 2) and m["nsd_liver"] < 1

    # class 3 predicted where the label has none: Dice 0 and NSD 0, and it pulls the mean down
    false_positive = _volume(CUBE_1, CUBE_2, (3, (slice(0, 2), slice(0, 2), slice(8, 12))))
    engine = _run_engine(
        {
            "dice": PerClassDice(4, NAMES, output_transform=PICK),
            "nsd": PerClassSurfaceDice(4, NAMES, 1.0, output_transform=PICK),
        },
        [(false_positive, LABEL)],
    )
    m = engine.state.metrics
    assert m["dice_kidney"] == 0.0 and m["nsd_kidney"] == 0.0
    assert m["dice"] == pytest.approx(2 / 3) and m["nsd"] == pytest.approx(2 / 3)


def test_ignore_label_is_excluded_from_both_metrics():
    label = LABEL.clone()
    label[0, 0, 2:4] = 255  # half of the liver and some background are unlabelled
    pred = LABEL.clone()
    pred[0, 0, 2:4] = 0  # the prediction misses the unlabelled half of the liver...
    pred[0, 0, 2:4, 0:2] = 3  # ...has class 3 only where the label is 255...
    pred[0, 0, 2:4, 8:12, 0:2] = 2  # ...and spurious spleen only there
    dice = per_class_dice(pred, label, 4)
    nsd = per_class_surface_dice(pred, label, 4, tolerances=0.0)
    for values in (dice, nsd):
        torch.testing.assert_close(values[0, :2], torch.ones(2))
        assert math.isnan(values[0, 2])  # class 3 was only predicted on ignored voxels
    minus_one = torch.where(label == 255, -1.0, label)  # another ignore value, e.g. the IM's
    torch.testing.assert_close(per_class_dice(pred, minus_one, 4, ignore_index=-1), dice, equal_nan=True)
    with pytest.raises(ValueError, match="found 255"):
        per_class_dice(pred, label, 4, ignore_index=None)
    # a one-hot label marks left-out voxels by having no class
    onehot_label = one_hot(label.clamp(max=3), 4)
    onehot_label[:, :, 2:4] = 0
    torch.testing.assert_close(per_class_dice(pred, onehot_label, 4), dice, equal_nan=True)


def test_batch_of_two_cases_averages_per_case():
    quarter = _volume((1, (slice(2, 4), slice(2, 4), slice(2, 6))), CUBE_2)  # 16 of 64: Dice 2*16/80 = 0.4
    pred = torch.cat([LABEL, quarter])
    label = torch.cat([LABEL, LABEL])
    engine = _run_engine({"dice": PerClassDice(4, NAMES, output_transform=PICK)}, [(pred, label)])
    # per case: liver 1.0 and 0.4 -> 0.7 (pooling the voxels would give 2*80/(80+128) = 0.769)
    assert engine.state.metrics["dice_liver"] == pytest.approx(0.7)
    assert engine.state.metrics["dice"] == pytest.approx((0.7 + 1.0) / 2)
    assert engine.state.metric_details["dice"].shape == (2, 3)
    # the same cases in two iterations give the same values
    engine2 = _run_engine(
        {"dice": PerClassDice(4, NAMES, output_transform=PICK)}, [(LABEL, LABEL), (quarter, LABEL)]
    )
    assert engine2.state.metrics["dice_liver"] == pytest.approx(0.7)


def test_one_hot_and_index_inputs_agree():
    pred = _volume(
        (1, (slice(2, 5), slice(2, 6), slice(2, 6))), CUBE_2, (3, (slice(0, 2), slice(0, 2), slice(0, 2)))
    )
    idx_dice = per_class_dice(pred, LABEL, 4)
    idx_nsd = per_class_surface_dice(pred, LABEL, 4, 1.0, (2.5, 2.5, 4.0))
    for p, y in [(one_hot(pred, 4), LABEL), (pred, one_hot(LABEL, 4)), (one_hot(pred, 4), one_hot(LABEL, 4))]:
        torch.testing.assert_close(per_class_dice(p, y, 4), idx_dice)
        torch.testing.assert_close(per_class_surface_dice(p, y, 4, 1.0, (2.5, 2.5, 4.0)), idx_nsd)
    # probabilities (before the argmax) give the argmax's scores
    probs = one_hot(pred, 4) * 0.7 + 0.1
    torch.testing.assert_close(per_class_dice(probs, LABEL, 4), idx_dice)
    assert 0 < idx_dice[0, 0] < 1 and idx_dice[0, 2] == 0


def test_labelled_slices_only_ignores_prediction_beyond_the_labelled_slices():
    pred = _volume((1, (slice(2, 6), slice(2, 6), slice(2, 9))), CUBE_2)  # liver runs on along the last axis
    plain = per_class_dice(pred, LABEL, 4)
    cropped = per_class_dice(pred, LABEL, 4, labelled_slices_only=(1,))
    assert plain[0, 0] == pytest.approx(2 * 64 / (64 + 112)) and cropped[0, 0] == 1.0
    assert per_class_surface_dice(pred, LABEL, 4, 0.0, labelled_slices_only=(1,))[0, 0] == 1.0
    # along the first axis the liver's prediction is inside the labelled slices: it still counts
    assert per_class_dice(pred, LABEL, 4, labelled_slices_only=(1,), slice_axis=0)[0, 0] == plain[0, 0]
    # a class the label lacks keeps its whole (false positive) prediction
    fp = _volume(CUBE_1, CUBE_2, (3, (slice(0, 2), slice(0, 2), slice(0, 2))))
    assert per_class_dice(fp, LABEL, 4, labelled_slices_only=(3,))[0, 2] == 0.0


def test_supervised_evaluator_reports_per_organ_keys():
    labels = torch.cat([LABEL, torch.roll(LABEL, 1, dims=2)])
    images = one_hot(torch.cat([LABEL, LABEL]), 4)  # identity network: the one-hot "prediction"
    metric = PerClassDice(4, NAMES, output_transform=PICK)
    for decollate in (False, True):
        evaluator = SupervisedEvaluator(
            device=torch.device("cpu"),
            val_data_loader=DataLoader(
                Dataset([{"image": i, "label": y} for i, y in zip(images, labels)]), 2
            ),
            network=torch.nn.Identity(),
            key_val_metric={"val_dice": copy.deepcopy(metric)},
            additional_metrics={
                "val_nsd": PerClassSurfaceDice(4, NAMES, 5.0, (1, 1, 1), output_transform=PICK)
            },
            decollate=decollate,
        )
        evaluator.run()
        m = evaluator.state.metrics
        assert {f"val_{k}_{n}" for k in ("dice", "nsd") for n in NAMES} <= set(m)
        assert evaluator.state.best_metric == pytest.approx(m["val_dice"])
        # case 2 is one voxel off: Dice 0.75 for 4-voxel cubes shifted by one, NSD 1 within 5 mm
        assert m["val_dice_liver"] == pytest.approx((1 + 0.75) / 2) and m["val_nsd_liver"] == 1.0


def test_metric_classes_accumulate_and_reset():
    metric = PerClassDiceMetric(4)
    metric(LABEL, LABEL)
    metric([LABEL[0]], [LABEL[0]])  # a decollated list of channel-first tensors
    torch.testing.assert_close(metric.aggregate(), torch.tensor([1.0, 1.0, math.nan]), equal_nan=True)
    metric.reset()
    with pytest.raises(ValueError, match="nothing to aggregate"):
        metric.aggregate()
    nsd = PerClassSurfaceDiceMetric(14, spacing=(2.5, 2.5, 4.0))  # FLARE22 tolerances by default
    nsd(_volume((13, CUBE_1[1])), _volume((13, CUBE_1[1])))
    per_class = nsd.aggregate()
    assert per_class[12] == 1.0 and torch.isnan(per_class[:12]).all()
    assert macro_mean(per_class) == 1.0 and math.isnan(macro_mean(torch.full((3,), math.nan)))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: per_class_dice(_volume((20, CUBE_1[1])), LABEL, 4),
            "prediction: values must be 0..3, found 20",
        ),
        (lambda: per_class_dice(LABEL, LABEL + 0.5, 4), "whole numbers"),
        (lambda: per_class_dice(torch.zeros(1, 2, 12, 12, 12), LABEL, 4), r"one-hot \(B, 4"),
        (lambda: per_class_dice(LABEL, LABEL[..., :6], 4), "same batch and spatial size"),
        (lambda: prepare_one_hot(LABEL, LABEL, 4, labelled_slices_only=(0,)), "labelled_slices_only"),
        (lambda: PerClassSurfaceDice(4), "tolerances must be one or 3"),
        (lambda: PerClassSurfaceDice(14, spacing=(1.0, -1.0, 1.0)), "spacing must be"),
        (lambda: per_class_surface_dice(LABEL, LABEL, 4, 1.0, (1.0, 1.0)), "spacing must be 3"),
        (lambda: PerClassDice(4, class_names=("a", "b")), "class_names must be 3 distinct names"),
    ],
)
def test_bad_input_gives_a_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
