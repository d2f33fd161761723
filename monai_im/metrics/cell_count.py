"""Cell counting and the mean cell count error (MCCE) of the HeLa task.

A HeLa mask has three channels, by default in the order (alive, dead, position). Cells are the connected
components of the position channel; each is located at its centroid (rounded to the nearest pixel). The
alive and dead channels are summed over a ``window x window`` neighbourhood of the centroid; the cell is
alive if the alive sum is larger, dead if the dead sum is larger, and not counted on a tie (including a
window with neither). The per-image error is ``|alive_pred - alive_gt| + |dead_pred - dead_gt|``, with the
ground-truth counts obtained from the ground-truth masks in exactly the same way; MCCE is its mean over
images.

The window around a centroid ``c`` covers ``c - window // 2`` to ``c - window // 2 + window - 1`` on each
axis (for the default 6: ``c - 3 ... c + 2``), clipped at the image border.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.utils import convert_to_tensor
from scipy import ndimage

from monai_im.metrics.functional import as_bool_mask

__all__ = ["cell_count_error", "cell_counts"]

#: default channel indices of (alive, dead, position) in a HeLa mask.
HELA_CHANNELS: tuple[int, int, int] = (0, 1, 2)


def _batched(masks: torch.Tensor, spatial_dims: int, name: str) -> torch.Tensor:
    if spatial_dims not in (2, 3):
        raise ValueError(f"{name}: spatial_dims must be 2 or 3, got {spatial_dims}.")
    x = convert_to_tensor(masks, track_meta=False)
    if x.dim() == spatial_dims + 1:
        x = x.unsqueeze(0)
    if x.dim() != spatial_dims + 2:
        raise ValueError(
            f"{name}: expected (B, C, *spatial) or (C, *spatial) with {spatial_dims} spatial dims, "
            f"got shape {tuple(x.shape)}."
        )
    return x


def _window_sums(maps: torch.Tensor, window: int) -> torch.Tensor:
    """Sum of each channel over the window anchored at every pixel, zero outside the image.

    ``maps`` is (B, K, *spatial); the result has the same shape, in float64 so integer-valued masks give
    exact sums (ties stay ties). Computed with running sums along each spatial axis (a summed-area
    table), which costs a few passes over the data whatever the window size.
    """
    spatial_dims = maps.dim() - 2
    before = window // 2
    after = window - 1 - before
    x = maps.double()
    for axis in range(2, 2 + spatial_dims):
        pad = [0, 0] * spatial_dims  # F.pad lists the last axis first
        k = 2 * (spatial_dims - 1 - (axis - 2))
        pad[k], pad[k + 1] = before + 1, after  # one extra leading zero for the differences
        c = F.pad(x, pad).cumsum(dim=axis)
        n = c.shape[axis] - window
        x = c.narrow(axis, window, n) - c.narrow(axis, 0, n)
    return x


def cell_counts(
    masks: torch.Tensor,
    window: int = 6,
    channels: Sequence[int] = HELA_CHANNELS,
    connectivity: int | None = None,
    spatial_dims: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Count alive and dead cells in each image of a batch of HeLa masks.

    Args:
        masks: discretised masks ``(B, C, *spatial)`` or one image ``(C, *spatial)``, torch or numpy.
            The position channel is binarised (``> 0.5``); the alive and dead channels are summed as given.
        window: side of the neighbourhood compared around each centroid (6 in the paper).
        channels: indices of the (alive, dead, position) channels.
        connectivity: neighbourhood of the connected-component labelling, as in
            ``scipy.ndimage.generate_binary_structure`` (1 = faces only); ``None`` means full
            connectivity (8-connected in 2D, 26-connected in 3D).
        spatial_dims: 2 or 3.

    Returns:
        ``(alive, dead)``, two ``(B,)`` int64 tensors on the CPU.
    """
    if window < 1:
        raise ValueError(f"cell_counts: window must be >= 1, got {window}.")
    x = _batched(masks, spatial_dims, "cell_counts")
    if len(channels) != 3:
        raise ValueError(f"cell_counts: channels must name (alive, dead, position), got {channels}.")
    alive_ch, dead_ch, pos_ch = (int(c) for c in channels)
    if max(alive_ch, dead_ch, pos_ch) >= x.shape[1]:
        raise ValueError(f"cell_counts: channels {tuple(channels)} out of range for {x.shape[1]} channels.")

    sums = _window_sums(x[:, [alive_ch, dead_ch]].float(), window).cpu().numpy()  # (B, 2, *spatial)
    positions = as_bool_mask(x[:, pos_ch]).cpu().numpy()  # (B, *spatial)
    structure = ndimage.generate_binary_structure(
        spatial_dims, spatial_dims if connectivity is None else connectivity
    )
    upper = np.asarray(positions.shape[1:]) - 1

    alive = np.zeros(x.shape[0], dtype=np.int64)
    dead = np.zeros(x.shape[0], dtype=np.int64)
    for b in range(x.shape[0]):  # connected components are per image
        labels, n_cells = ndimage.label(positions[b], structure=structure)
        if n_cells == 0:
            continue
        centroids = np.asarray(ndimage.center_of_mass(positions[b], labels, index=np.arange(1, n_cells + 1)))
        idx = np.clip(np.floor(centroids + 0.5).astype(np.int64), 0, upper)
        at = (slice(None), *idx.T)
        a_sum, d_sum = sums[b][at]
        alive[b] = int(np.count_nonzero(a_sum > d_sum))
        dead[b] = int(np.count_nonzero(d_sum > a_sum))
    return torch.from_numpy(alive), torch.from_numpy(dead)


def cell_count_error(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    window: int = 6,
    channels: Sequence[int] = HELA_CHANNELS,
    connectivity: int | None = None,
    spatial_dims: int = 2,
) -> torch.Tensor:
    """
    Per-image cell count error ``|alive_pred - alive_gt| + |dead_pred - dead_gt|``; MCCE is its mean.

    Args:
        y_pred: discretised prediction ``(B, 3, *spatial)`` or ``(3, *spatial)``.
        y: ground truth of the same shape.
        window, channels, connectivity, spatial_dims: as in :func:`cell_counts`.

    Returns:
        ``(B,)`` float tensor on the CPU.
    """
    p = _batched(y_pred, spatial_dims, "cell_count_error")
    g = _batched(y, spatial_dims, "cell_count_error")
    if p.shape != g.shape:
        raise ValueError(
            f"cell_count_error: y_pred and y must have the same shape, got {tuple(p.shape)} and {tuple(g.shape)}."
        )
    kwargs = {
        "window": window,
        "channels": channels,
        "connectivity": connectivity,
        "spatial_dims": spatial_dims,
    }
    alive_p, dead_p = cell_counts(p, **kwargs)
    alive_g, dead_g = cell_counts(g, **kwargs)
    return ((alive_p - alive_g).abs() + (dead_p - dead_g).abs()).float()
