from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from monai_im.metrics import cell_count_error, cell_counts

SIZE = 32
Point = tuple[int, int]


def _disc(center: tuple[int, int], radius: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    return ((yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2).float()


def _hela(
    alive: Sequence[Point] = (), dead: Sequence[Point] = (), unmarked: Sequence[Point] = ()
) -> torch.Tensor:
    """(3, H, W) mask (alive, dead, position): a radius-3 state disc and a radius-2 position disc per cell;
    ``unmarked`` cells have a position disc only."""
    mask = torch.zeros(3, SIZE, SIZE)
    for channel, centers in ((0, alive), (1, dead)):
        for c in centers:
            mask[channel] = torch.maximum(mask[channel], _disc(c, 3))
    for c in (*alive, *dead, *unmarked):
        mask[2] = torch.maximum(mask[2], _disc(c, 2))
    return mask


# ground truth: 2 alive, 1 dead
GT = _hela(alive=[(6, 6), (6, 22)], dead=[(22, 12)])
# prediction misses the alive cell at (6, 22) and calls the dead cell alive: 2 alive, 0 dead
PRED = _hela(alive=[(6, 6), (22, 12)])


def test_counts_of_hand_made_images():
    alive, dead = cell_counts(GT)
    assert alive.tolist() == [2] and dead.tolist() == [1]
    alive, dead = cell_counts(PRED)
    assert alive.tolist() == [2] and dead.tolist() == [0]


def test_cell_count_error_known_value():
    # |2 - 2| + |0 - 1| = 1; the missed cell and the wrong call cancel in the alive count
    assert cell_count_error(PRED, GT).tolist() == [1.0]
    assert cell_count_error(GT, GT).tolist() == [0.0]


def test_batched_unbatched_and_numpy_agree():
    batch_pred = torch.stack([PRED, GT, _hela()])
    batch_gt = torch.stack([GT, GT, GT])
    # third image has no cells at all: |0 - 2| + |0 - 1| = 3
    assert cell_count_error(batch_pred, batch_gt).tolist() == [1.0, 0.0, 3.0]
    assert cell_count_error(batch_pred.numpy(), batch_gt.numpy()).tolist() == [1.0, 0.0, 3.0]
    alive, dead = cell_counts(batch_pred)
    assert alive.tolist() == [2, 2, 0] and dead.tolist() == [0, 1, 0]


def test_ties_and_empty_windows_are_not_counted():
    tie = _hela(alive=[(6, 6)], dead=[(6, 6)])  # identical alive and dead discs
    assert [t.item() for t in cell_counts(tie)] == [0, 0]
    nothing = _hela(unmarked=[(16, 16)])  # a position blob with neither state
    assert [t.item() for t in cell_counts(nothing)] == [0, 0]
    # a tie beside a real cell does not change that cell's call
    mixed = _hela(alive=[(6, 6), (20, 20)], dead=[(20, 20)])
    assert [t.item() for t in cell_counts(mixed)] == [1, 0]


def test_window_extent_around_the_centroid():
    def one_cell(state_pixel: tuple[int, int], channel: int) -> torch.Tensor:
        mask = torch.zeros(3, SIZE, SIZE)
        mask[2, 10, 10] = 1  # single-pixel cell at (10, 10)
        mask[channel][state_pixel] = 1
        return mask

    # window 6 covers rows/cols 7 ... 12 around 10
    assert [t.item() for t in cell_counts(one_cell((7, 12), 0))] == [1, 0]
    assert [t.item() for t in cell_counts(one_cell((12, 7), 1))] == [0, 1]
    assert [t.item() for t in cell_counts(one_cell((13, 10), 0))] == [0, 0]
    assert [t.item() for t in cell_counts(one_cell((10, 6), 0))] == [0, 0]
    assert [t.item() for t in cell_counts(one_cell((13, 10), 0), window=8)] == [1, 0]


def test_window_is_clipped_at_the_border():
    corner = torch.zeros(3, SIZE, SIZE)
    corner[2, 0, 0] = 1
    corner[1, 0:2, 0:2] = 1
    assert [t.item() for t in cell_counts(corner)] == [0, 1]


def test_connectivity_and_channel_order():
    diagonal = torch.zeros(3, SIZE, SIZE)
    diagonal[2, 10, 10] = diagonal[2, 11, 11] = 1
    diagonal[0, 8:14, 8:14] = 1
    assert cell_counts(diagonal)[0].item() == 1  # full connectivity: one cell
    assert cell_counts(diagonal, connectivity=1)[0].item() == 2
    # (position, dead, alive) order
    reordered = GT[[2, 1, 0]]
    alive, dead = cell_counts(reordered, channels=(2, 1, 0))
    assert alive.item() == 2 and dead.item() == 1


def test_3d_volume():
    vol = torch.zeros(1, 3, 12, 12, 12)
    vol[0, 2, 3:5, 3:5, 3:5] = 1  # alive cell
    vol[0, 0, 2:6, 2:6, 2:6] = 1
    vol[0, 2, 8:10, 8:10, 8:10] = 1  # dead cell
    vol[0, 1, 7:11, 7:11, 7:11] = 1
    alive, dead = cell_counts(vol, spatial_dims=3)
    assert alive.item() == 1 and dead.item() == 1


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="same shape"):
        cell_count_error(GT, GT[:, :16])
    with pytest.raises(ValueError, match="spatial dims"):
        cell_counts(GT[0])
    with pytest.raises(ValueError, match="out of range"):
        cell_counts(GT[:2])


def test_window_sums_match_a_brute_force_convolution():
    import torch.nn.functional as F

    from monai_im.metrics.cell_count import _window_sums

    torch.manual_seed(0)
    maps = (torch.rand(2, 2, 13, 11) > 0.5).float()
    for window in (1, 2, 5, 6):
        before, after = window // 2, window - 1 - window // 2
        padded = F.pad(maps.double(), [before, after, before, after])
        kernel = torch.ones(2, 1, window, window, dtype=torch.float64)
        expected = F.conv2d(padded, kernel, groups=2)
        assert torch.equal(_window_sums(maps, window), expected)
    maps3 = (torch.rand(1, 1, 5, 6, 7) > 0.5).float()
    expected3 = F.conv3d(F.pad(maps3.double(), [3, 2] * 3), torch.ones(1, 1, 6, 6, 6, dtype=torch.float64))
    assert torch.equal(_window_sums(maps3, 6), expected3)
