"""Input Ensemble views, Noisy Student schedules and augmentation, IM++ replication counts."""

from __future__ import annotations

import math

import pytest
import torch
from monai.transforms import RandGaussianNoised

from monai_im.methods.blocks import (
    View,
    input_views,
    noise_schedule,
    noisy_student_augmentation,
    predict_views,
    replication_counts,
    width_schedule,
)

MAX_VIEWS = {(2, True): 8, (2, False): 4, (3, True): 16, (3, False): 8}


# ----------------------------------------------------------------------------------------- views
@pytest.mark.parametrize("spatial_dims, square", list(MAX_VIEWS))
def test_views_invert_exactly_and_are_distinct(spatial_dims, square):
    n = MAX_VIEWS[(spatial_dims, square)]
    views = input_views(n, spatial_dims, square)
    assert len(views) == n
    assert views[0].name == "identity" and views[0].flips == () and views[0].rot90 == 0
    shape = (2, 3, 6, 6, 4)[: 2 + spatial_dims] if square else (2, 3, 6, 5, 4)[: 2 + spatial_dims]
    x = torch.randn(shape)
    results = []
    for view in views:
        y = view.apply(x)
        assert torch.equal(view.invert(y), x), view.name
        results.append(y)
    for i in range(n):
        for j in range(i + 1, n):
            assert not torch.equal(results[i], results[j]), (views[i].name, views[j].name)
    assert len({v.name for v in views}) == n
    if not square:
        assert all(v.rot90 == 0 for v in views)


def test_views_order_2d():
    names = [v.name for v in input_views(8)]
    assert names == ["identity", "flip0", "flip1", "rot90", "rot180", "rot270", "flip0+rot90", "flip1+rot90"]
    assert [v.name for v in input_views(3, square=False)] == ["identity", "flip0", "flip1"]
    assert [v.name for v in input_views(2, 3)] == ["identity", "flip0"]


def test_view_semantics():
    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    assert torch.equal(View("f0", (0,)).apply(x), x.flip(2))
    assert torch.equal(View("f1", (1,)).apply(x), x.flip(3))
    sq = torch.arange(9.0).reshape(1, 1, 3, 3)
    assert torch.equal(View("r", (0,), 1).apply(sq), torch.rot90(sq.flip(2), 1, (2, 3)))


@pytest.mark.parametrize("spatial_dims, square", list(MAX_VIEWS))
def test_input_views_too_many(spatial_dims, square):
    top = MAX_VIEWS[(spatial_dims, square)]
    with pytest.raises(ValueError, match=f"at most {top} distinct views"):
        input_views(top + 1, spatial_dims, square)
    with pytest.raises(ValueError, match="out of range"):
        input_views(0, spatial_dims, square)


def test_bad_views_refused():
    with pytest.raises(ValueError, match="spatial_dims"):
        input_views(2, spatial_dims=1)
    with pytest.raises(ValueError, match="rot90"):
        View("bad", (), 4)
    with pytest.raises(ValueError, match="flips"):
        View("bad", (1, 0))
    rot = View("rot90", (), 1)
    with pytest.raises(ValueError, match="square"):
        rot.apply(torch.zeros(1, 1, 4, 6))
    with pytest.raises(ValueError, match="spatial dims"):
        View("flip2", (2,)).apply(torch.zeros(1, 1, 4, 4))
    # a half turn keeps the shape, so it works on non-square images
    x = torch.randn(1, 1, 4, 6)
    half = View("rot180", (), 2)
    assert torch.equal(half.invert(half.apply(x)), x)


class _Counting(torch.nn.Module):
    """Wraps a network and counts its calls and their batch sizes."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return self.net(x)


class _Ramp(torch.nn.Module):
    """A 1x1 conv plus a ramp over the first spatial axis and a smaller ramp over the second."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        ramp = torch.arange(h).view(h, 1) * 10.0 + torch.arange(w).view(1, w)
        return self.conv(x) + ramp


def test_predict_views_equivariant_network():
    torch.manual_seed(0)
    net = _Counting(torch.nn.Conv2d(2, 3, 1))
    images = torch.rand(4, 2, 6, 6)
    views = input_views(8)
    out = predict_views(net, images, views)
    assert out.shape == (8, 4, 3, 6, 6) and out.dtype == torch.float32
    assert not out.requires_grad
    assert net.batches == [4] * 8  # one call per view on the whole batch
    for v in range(1, 8):
        torch.testing.assert_close(out[v], out[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[0], net.net(images).detach())


def test_predict_views_position_dependent_network():
    torch.manual_seed(0)
    net = _Counting(_Ramp())
    images = torch.rand(3, 2, 5, 5)
    views = input_views(6)
    calls = []
    out = predict_views(net, images, views, inferer=lambda x, n: (calls.append(1), n(x))[1])
    assert len(calls) == 6 and net.batches == [3] * 6
    for v, view in enumerate(views):
        with torch.no_grad():
            manual = view.invert(net.net(view.apply(images)))
        torch.testing.assert_close(out[v], manual, rtol=0, atol=0)
    for v in range(1, 6):
        assert not torch.allclose(out[v], out[0]), views[v].name


def test_predict_views_3d_non_square():
    net = torch.nn.Conv3d(1, 2, 1)
    images = torch.rand(2, 1, 4, 3, 2)
    views = input_views(8, spatial_dims=3, square=False)
    out = predict_views(net, images, views)
    assert out.shape == (8, 2, 2, 4, 3, 2)
    for v in range(8):
        torch.testing.assert_close(out[v], out[0], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="empty"):
        predict_views(net, images, [])


# ------------------------------------------------------------------------------------- schedules
def test_width_schedule():
    assert width_schedule(0, 4, 0.5, 1.5) == 0.5
    assert width_schedule(4, 4, 0.5, 1.5) == 1.5
    assert width_schedule(2, 4, 0.5, 1.5) == pytest.approx(1.0)
    assert width_schedule(1, 3, 1.0, 2.0) == pytest.approx(4 / 3)
    widths = [width_schedule(g, 5, 1.0, 2.0) for g in range(6)]
    assert all(a < b for a, b in zip(widths, widths[1:]))
    assert width_schedule(0, 0, 0.5, 1.5) == 0.5
    with pytest.raises(ValueError, match="generation 5"):
        width_schedule(5, 4, 0.5, 1.5)
    with pytest.raises(ValueError, match="generation -1"):
        width_schedule(-1, 4, 0.5, 1.5)
    with pytest.raises(ValueError, match="> 0"):
        width_schedule(0, 4, 0.0, 1.5)


def test_noise_schedule():
    assert noise_schedule(0, 3) == 0.0
    assert noise_schedule(3, 3) == pytest.approx(0.1)
    stds = [noise_schedule(g, 3, 0.01, 0.2) for g in range(4)]
    assert stds[0] == 0.01 and stds[-1] == pytest.approx(0.2)
    assert all(a < b for a, b in zip(stds, stds[1:]))
    assert noise_schedule(0, 0, 0.05) == 0.05
    with pytest.raises(ValueError, match=">= 0"):
        noise_schedule(0, 3, -0.1)
    with pytest.raises(ValueError, match="outside"):
        noise_schedule(4, 3)


# ---------------------------------------------------------------------------------- augmentation
def _item(seed: int = 0, size: int = 8) -> dict:
    g = torch.Generator().manual_seed(seed)
    pattern = torch.rand(1, size, size, generator=g) > 0.5
    image = torch.where(pattern, 0.9, 0.1).repeat(3, 1, 1)  # two grey levels, no symmetry
    label = (image[:1] > 0.5).float()
    return {"image": image, "label": label, "im": label.clone()}


def test_augmentation_keeps_image_label_and_im_aligned():
    aug = noisy_student_augmentation(0.0)
    assert not any(isinstance(t, RandGaussianNoised) for t in aug.transforms)
    item = _item()
    changed = 0
    for seed in range(12):
        aug.set_random_state(seed=seed)
        out = aug({k: v.clone() for k, v in item.items()})
        image, label = torch.as_tensor(out["image"]), torch.as_tensor(out["label"])
        assert torch.equal(label, (image[:1] > 0.5).float()), seed
        assert torch.equal(torch.as_tensor(out["im"]), label)
        assert image.min() >= 0 and image.max() <= 1
        changed += not torch.equal(label, item["label"])
    assert changed >= 6  # the geometry really changes


def test_augmentation_without_im_and_seeding():
    aug = noisy_student_augmentation(0.05)
    assert sum(isinstance(t, RandGaussianNoised) for t in aug.transforms) == 1
    item = _item(1)
    del item["im"]

    def run(seed: int) -> torch.Tensor:
        aug.set_random_state(seed=seed)
        out = aug({k: v.clone() for k, v in item.items()})
        assert "im" not in out
        return torch.as_tensor(out["image"])

    first, again, other = run(3), run(3), run(4)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert first.min() >= 0 and first.max() <= 1
    # noise makes grey levels that the two-level input does not have
    assert torch.unique(first).numel() > 10


def test_augmentation_prob_zero_is_identity_and_bad_args():
    item = _item(2)
    out = noisy_student_augmentation(0.1, prob=0.0)({k: v.clone() for k, v in item.items()})
    for key in item:
        assert torch.equal(torch.as_tensor(out[key]), item[key])
    with pytest.raises(ValueError, match="noise_std"):
        noisy_student_augmentation(-0.1)
    with pytest.raises(ValueError, match="prob"):
        noisy_student_augmentation(0.1, prob=1.5)


def test_augmentation_3d():
    aug = noisy_student_augmentation(0.0, spatial_dims=3)
    g = torch.Generator().manual_seed(0)
    image = torch.where(torch.rand(1, 4, 4, 3, generator=g) > 0.5, 0.9, 0.1)
    item = {"image": image, "label": (image > 0.5).float()}
    for seed in range(4):
        aug.set_random_state(seed=seed)
        out = aug({k: v.clone() for k, v in item.items()})
        assert torch.equal(torch.as_tensor(out["label"]), (torch.as_tensor(out["image"]) > 0.5).float())


# ---------------------------------------------------------------------------------- replication
def test_replication_counts_hand_cases():
    values = [0.0, 0.6, 0.61, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0, math.nan]
    scores = torch.tensor(values)
    expected = torch.tensor([1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 1])
    counts = replication_counts(scores)
    assert counts.dtype == torch.int64
    assert torch.equal(counts, expected)
    assert torch.equal(replication_counts(torch.tensor(values, dtype=torch.float64)), expected)
    grid = replication_counts(torch.tensor([[0.1, 0.95], [math.nan, 0.65]]))
    assert torch.equal(grid, torch.tensor([[1, 5], [1, 2]]))
    assert torch.equal(
        replication_counts(torch.tensor([0.2, 0.5]), bins=(0.3,), max_copies=2), torch.tensor([1, 2])
    )
    assert torch.equal(
        replication_counts(torch.tensor([0.9, math.nan]), bins=(), max_copies=1), torch.tensor([1, 1])
    )
    assert torch.equal(
        replication_counts(torch.tensor([0, 1, 2]), bins=(0.5, 1.5), max_copies=3), torch.tensor([1, 2, 3])
    )


def test_replication_counts_bad_bins():
    scores = torch.tensor([0.5])
    with pytest.raises(ValueError, match="increasing"):
        replication_counts(scores, bins=(0.6, 0.8, 0.7, 0.9))
    with pytest.raises(ValueError, match="increasing"):
        replication_counts(scores, bins=(0.6, 0.6, 0.8, 0.9))
    with pytest.raises(ValueError, match="max_copies - 1 = 4"):
        replication_counts(scores, bins=(0.6, 0.7, 0.8))
    with pytest.raises(ValueError, match="max_copies - 1 = 2"):
        replication_counts(scores, bins=(0.6, 0.7, 0.8, 0.9), max_copies=3)
    with pytest.raises(ValueError, match="max_copies must be"):
        replication_counts(scores, bins=(), max_copies=0)
