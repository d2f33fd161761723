from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss, DiceLoss

from monai_im.constants import IGNORE_INDEX
from monai_im.losses import MaskedDiceCELoss, MaskedMSELoss

SHAPES = [(2, 5, 6), (2, 4, 5, 3)]  # (B, *spatial): 2D and 3D


def _case(mode: str, shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits and a target without ignored elements."""
    g = torch.Generator().manual_seed(seed)
    b, spatial = shape[0], shape[1:]
    if mode == "multiclass":
        logits = torch.randn(b, 4, *spatial, generator=g)
        target = torch.randint(0, 4, (b, 1, *spatial), generator=g)
    else:
        n_ch = 1 if mode == "binary" else 3
        logits = torch.randn(b, n_ch, *spatial, generator=g)
        target = (torch.rand(b, n_ch, *spatial, generator=g) > 0.5).float()
    return logits, target


def _ignore_some(target: torch.Tensor, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ignored = torch.rand(target.shape, generator=g) < 0.3
    return torch.where(ignored, torch.full_like(target, IGNORE_INDEX), target)


def _grad(
    loss_fn: MaskedDiceCELoss, logits: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    x = logits.clone().requires_grad_(True)
    loss = loss_fn(x, target)
    loss.backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("batch", [False, True])
def test_equals_monai_dicece_binary_and_multiclass(shape, batch):
    for mode, reference in [
        ("binary", DiceCELoss(sigmoid=True, batch=batch)),
        ("multiclass", DiceCELoss(softmax=True, to_onehot_y=True, batch=batch)),
    ]:
        logits, target = _case(mode, shape)
        ours = MaskedDiceCELoss(mode=mode, batch=batch)(logits, target)
        torch.testing.assert_close(ours, reference(logits, target))


@pytest.mark.parametrize("shape", SHAPES)
def test_equals_monai_dice_plus_bce_multilabel(shape):
    logits, target = _case("multilabel", shape)
    reference = DiceLoss(sigmoid=True)(logits, target) + torch.nn.BCEWithLogitsLoss()(logits, target)
    torch.testing.assert_close(MaskedDiceCELoss(mode="multilabel")(logits, target), reference)


def test_lambdas_and_smoothing_match_monai():
    logits, target = _case("multiclass", SHAPES[0])
    kwargs = {"lambda_dice": 0.3, "lambda_ce": 2.0, "smooth_nr": 0.5, "smooth_dr": 1.0}
    ours = MaskedDiceCELoss(mode="multiclass", **kwargs)(logits, target)
    torch.testing.assert_close(ours, DiceCELoss(softmax=True, to_onehot_y=True, **kwargs)(logits, target))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["binary", "multiclass", "multilabel"])
def test_zero_gradient_exactly_at_ignored_elements(mode, shape):
    logits, target = _case(mode, shape)
    target = _ignore_some(target)
    _, grad = _grad(MaskedDiceCELoss(mode=mode), logits, target)
    ignored = (target == IGNORE_INDEX).expand_as(grad)  # multiclass: a pixel is ignored in every channel
    assert ignored.any() and (~ignored).any()
    assert torch.all(grad[ignored] == 0)
    assert torch.all(grad[~ignored] != 0)


def test_multilabel_ignores_per_channel_element():
    logits, target = _case("multilabel", SHAPES[0])
    target[:, 0] = IGNORE_INDEX  # ignore channel 0 only
    _, grad = _grad(MaskedDiceCELoss(mode="multilabel"), logits, target)
    assert torch.all(grad[:, 0] == 0)
    assert torch.all(grad[:, 1:] != 0)


@pytest.mark.parametrize("mode", ["binary", "multiclass", "multilabel"])
def test_logits_at_ignored_elements_do_not_change_the_loss(mode):
    logits, target = _case(mode, SHAPES[1])
    target = _ignore_some(target)
    ignored = (target == IGNORE_INDEX).expand_as(logits)
    changed = torch.where(ignored, torch.randn_like(logits) * 50.0, logits)
    loss_fn = MaskedDiceCELoss(mode=mode)
    torch.testing.assert_close(loss_fn(changed, target), loss_fn(logits, target))


@pytest.mark.parametrize("mode", ["binary", "multiclass"])
def test_ignored_half_equals_loss_on_the_kept_half(mode):
    logits, target = _case(mode, (2, 6, 8))
    target[..., 4:] = IGNORE_INDEX
    reference = MaskedDiceCELoss(mode=mode)(logits[..., :4], target[..., :4])
    torch.testing.assert_close(MaskedDiceCELoss(mode=mode)(logits, target), reference)
    # and the kept half alone is plain MONAI DiceCE
    monai_kwargs = {"sigmoid": True} if mode == "binary" else {"softmax": True, "to_onehot_y": True}
    torch.testing.assert_close(reference, DiceCELoss(**monai_kwargs)(logits[..., :4], target[..., :4]))


def test_fully_ignored_channel_is_left_out_of_the_dice_mean():
    logits, target = _case("multilabel", SHAPES[0])
    target[:, 1] = IGNORE_INDEX
    keep = [0, 2]
    loss_fn = MaskedDiceCELoss(mode="multilabel")
    torch.testing.assert_close(loss_fn(logits, target), loss_fn(logits[:, keep], target[:, keep]))


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("mode", ["binary", "multiclass", "multilabel"])
def test_all_ignored_is_zero_with_zero_gradient(mode, batch):
    logits, target = _case(mode, SHAPES[0])
    target = torch.full_like(target, IGNORE_INDEX)
    loss, grad = _grad(MaskedDiceCELoss(mode=mode, batch=batch), logits, target)
    assert torch.isfinite(loss) and loss.item() == 0.0
    assert torch.all(grad == 0)


def test_half_precision_counts_do_not_overflow():
    logits, target = _case("binary", (1, 300, 300))  # 90000 elements, more than float16 can count
    expected = MaskedDiceCELoss()(logits, target)
    half = MaskedDiceCELoss()(logits.half(), target.half())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, expected, atol=1e-2, rtol=1e-2)


def test_ignore_index_none_and_custom_value():
    logits, target = _case("multiclass", SHAPES[0])
    plain = DiceCELoss(softmax=True, to_onehot_y=True)(logits, target)
    torch.testing.assert_close(MaskedDiceCELoss(mode="multiclass", ignore_index=None)(logits, target), plain)
    # 255 as the ignore value (a common label convention)
    marked = target.clone()
    marked[:, :, :2] = 255
    _, grad = _grad(MaskedDiceCELoss(mode="multiclass", ignore_index=255), logits, marked)
    assert torch.all(grad[..., :2, :] == 0)


def test_bad_inputs_raise():
    logits, target = _case("multiclass", SHAPES[0])
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        MaskedDiceCELoss(mode="multiclass")(logits, target + 4)
    with pytest.raises(ValueError, match="class-index target"):
        MaskedDiceCELoss(mode="multiclass")(logits, torch.zeros_like(logits))
    with pytest.raises(ValueError, match="same shape"):
        MaskedDiceCELoss(mode="multilabel")(logits, target.float())
    with pytest.raises(ValueError):
        MaskedDiceCELoss(mode="semantic")
    with pytest.raises(ValueError):
        MaskedDiceCELoss(lambda_ce=-1.0)


# ---------------------------------------------------------------- MaskedMSELoss (the paper's loss)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_mse_equals_torch_mse_of_sigmoid_when_nothing_ignored(mode, shape):
    logits, target = _case(mode, shape)
    expected = torch.nn.functional.mse_loss(torch.sigmoid(logits), target)
    torch.testing.assert_close(MaskedMSELoss(mode=mode)(logits, target), expected)
    torch.testing.assert_close(MaskedMSELoss(mode=mode, ignore_index=None)(logits, target), expected)
    # soft targets (e.g. averaged teachers) are regressed as they are
    soft = torch.rand_like(logits)
    torch.testing.assert_close(
        MaskedMSELoss(mode=mode)(logits, soft), torch.nn.functional.mse_loss(torch.sigmoid(logits), soft)
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_mse_multiclass_uses_softmax_against_one_hot(shape):
    logits, target = _case("multiclass", shape)
    onehot = torch.nn.functional.one_hot(target[:, 0], 4).movedim(-1, 1).float()
    expected = torch.nn.functional.mse_loss(torch.softmax(logits, dim=1), onehot)
    torch.testing.assert_close(MaskedMSELoss(mode="multiclass")(logits, target), expected)


@pytest.mark.parametrize("mode", ["binary", "multiclass", "multilabel"])
def test_mse_ignored_elements_change_nothing(mode):
    logits, target = _case(mode, SHAPES[1])
    target = _ignore_some(target)
    ignored = (target == IGNORE_INDEX).expand_as(logits)
    loss_fn = MaskedMSELoss(mode=mode)
    reference = loss_fn(logits, target)
    changed = torch.where(ignored, torch.randn_like(logits) * 50.0, logits)
    torch.testing.assert_close(loss_fn(changed, target), reference)
    # the value equals the mean squared error over the kept elements
    probs = torch.softmax(logits, 1) if mode == "multiclass" else torch.sigmoid(logits)
    if mode == "multiclass":
        dense = torch.nn.functional.one_hot(target.clamp_min(0)[:, 0].long(), 4).movedim(-1, 1).float()
    else:
        dense = target
    kept = ~ignored
    torch.testing.assert_close(reference, ((probs - dense)[kept] ** 2).mean())


@pytest.mark.parametrize("mode", ["binary", "multiclass", "multilabel"])
def test_mse_gradients_finite_and_zero_exactly_at_ignored(mode):
    logits, target = _case(mode, SHAPES[0])
    target = _ignore_some(target)
    loss, grad = _grad(MaskedMSELoss(mode=mode), logits * 30.0, target)  # saturated logits too
    ignored = (target == IGNORE_INDEX).expand_as(grad)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert torch.all(grad[ignored] == 0)
    assert grad[~ignored].abs().sum() > 0


@pytest.mark.parametrize("mode", ["binary", "multiclass", "multilabel"])
def test_mse_all_ignored_is_zero_with_a_gradient_path(mode):
    logits, target = _case(mode, SHAPES[0])
    loss, grad = _grad(MaskedMSELoss(mode=mode), logits, torch.full_like(target, IGNORE_INDEX))
    assert loss.item() == 0.0 and not torch.isnan(loss)
    assert grad is not None and torch.all(grad == 0)


def test_mse_reductions_and_half_precision():
    logits, target = _case("binary", SHAPES[0])
    target = _ignore_some(target)
    kept = target != IGNORE_INDEX
    squared = MaskedMSELoss(reduction="none")(logits, target)
    assert squared.shape == logits.shape
    assert torch.all(squared[~kept] == 0)
    torch.testing.assert_close(MaskedMSELoss(reduction="sum")(logits, target), squared.sum())
    torch.testing.assert_close(MaskedMSELoss()(logits, target), squared.sum() / kept.sum())
    big_logits, big_target = _case("binary", (1, 300, 300))  # more elements than float16 can count
    half = MaskedMSELoss()(big_logits.half(), big_target.half())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, MaskedMSELoss()(big_logits, big_target), atol=1e-3, rtol=1e-3)


def test_mse_bad_inputs_raise_one_line():
    logits, target = _case("multiclass", SHAPES[0])
    cases = [
        (MaskedMSELoss(mode="binary"), logits[:, :1], target[:, :, :3].float(), "same shape"),
        (MaskedMSELoss(mode="multilabel"), logits, target.float(), "same shape"),
        (MaskedMSELoss(mode="multiclass"), logits, torch.zeros_like(logits), "class-index target"),
        (MaskedMSELoss(mode="multiclass"), logits, target + 4, r"\[0, 4\)"),
        (MaskedMSELoss(mode="multiclass"), logits[:, :1], target, "at least 2 input channels"),
        (MaskedMSELoss(mode="binary"), logits[:, :1], target[:, 0].float(), r"\(B, C, \*spatial\)"),
    ]
    for loss_fn, x, y, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            loss_fn(x, y)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="reduction"):
        MaskedMSELoss(reduction="avg")
    with pytest.raises(ValueError):
        MaskedMSELoss(mode="semantic")


def test_build_loss_by_name_or_object():
    from monai_im.losses import MaskedDiceCELoss, MaskedMSELoss, build_loss

    assert isinstance(build_loss("mse", mode="multilabel"), MaskedMSELoss)
    assert build_loss("dice_ce", mode="multiclass").mode == "multiclass"
    given = MaskedDiceCELoss(mode="binary")
    assert build_loss(given) is given
    with pytest.raises(SystemExit, match="unknown loss 'hinge'; choose one of: dice_ce, mse"):
        build_loss("hinge")
