"""Figures: the Inconsistency Mask figure and metric-over-generations plots.

Both functions draw with matplotlib's Agg canvas (no window, no global pyplot state, safe in
worker threads) and write the PNG atomically, so a reader or an MLflow artifact upload never
sees a half-written file.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from monai_im.io import atomic_write_bytes

__all__ = ["plot_inconsistency_mask", "plot_metric_over_generations", "to_display"]

_PANEL_INCHES = 1.9
_DPI = 100


def _as_numpy(name: str, x: Any, ndim: int) -> np.ndarray:
    """Convert a numpy array or (Meta)Tensor to float numpy and check its number of dims."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dims, got shape {arr.shape}")
    return arr


def to_display(x: np.ndarray, kind: str = "image") -> tuple[np.ndarray, dict[str, Any]]:
    """Turn a channel-first 2D array ``(C, H, W)`` into what ``imshow`` takes, with its options.

    Args:
        x: the array.
        kind: ``"image"`` (values in [0, 1]) or ``"mask"`` (binary, multi-label or class indices).

    Rules: one channel is shown in grey (a mask with values above 1 is taken as class
    indices and shown with a qualitative colour map); 2 or 3 channels as RGB (channels
    padded with zeros; for multi-label masks each label is one colour); a mask with more than
    3 channels is taken as one-hot and shown by its argmax.
    """
    c = x.shape[0]
    one_hot = kind == "mask" and c > 3
    if one_hot:
        x = np.argmax(x, axis=0)[None].astype(np.float32)
        c = 1
    if c == 1:
        img = x[0]
        if one_hot or (kind == "mask" and img.max() > 1):
            return img, {"cmap": "tab20", "vmin": 0, "vmax": 19, "interpolation": "nearest"}
        return np.clip(img, 0, 1), {"cmap": "gray", "vmin": 0, "vmax": 1, "interpolation": "nearest"}
    if c > 3:
        raise ValueError(f"cannot show an image with {c} channels (1 to 3 supported)")
    rgb = np.zeros((3, *x.shape[1:]), dtype=np.float32)
    rgb[:c] = x
    return np.clip(np.moveaxis(rgb, 0, -1), 0, 1), {"interpolation": "nearest"}


def _agreement(masks: np.ndarray) -> tuple[np.ndarray, str]:
    """Per-pixel summary of E teacher masks ``(E, Cm, H, W)``: the sum for binary and
    multi-label masks (``(Cm, H, W)``, values 0..E); for class-index masks (values above 1)
    the number of teachers voting for the most voted class."""
    if masks.shape[1] == 1 and masks.max() > 1:
        labels = np.rint(masks[:, 0]).astype(np.int64)
        votes = np.max([(labels == k).sum(axis=0) for k in np.unique(labels)], axis=0)
        return votes[None].astype(np.float32), "teacher votes"
    return masks.sum(axis=0), "teacher sum"


def _save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return atomic_write_bytes(path, buf.getvalue())


def _panel_display(arr: np.ndarray, kind: str, n_teachers: int) -> tuple[np.ndarray, dict[str, Any]]:
    """What ``imshow`` draws for one panel of the IM figure: the teachers' agreement count (``kind``
    ``"count"``) on a fixed 0..n_teachers scale, the other panels by :func:`to_display`."""
    if kind != "count":
        return to_display(arr, kind)
    if arr.shape[0] == 1:
        return arr[0], {"cmap": "viridis", "vmin": 0, "vmax": n_teachers, "interpolation": "nearest"}
    return to_display(arr / max(n_teachers, 1), "image")


def plot_inconsistency_mask(
    images: Any,
    teacher_masks: Any,
    im: Any,
    pseudo_label: Any,
    masked_images: Any,
    path: str | os.PathLike,
    titles: Sequence[str] | None = None,
    max_images: int = 4,
    reverse_indexing: bool = False,
) -> Path:
    """Draw the paper's IM figure: one row per unlabeled image with the input, each teacher's
    mask, the sum of the teacher masks, the Inconsistency Mask, the final pseudo-label and the
    input with the IM cut out.

    Args:
        images: ``(N, C, H, W)``, C 1 or 3, values in [0, 1]; numpy or torch.
        teacher_masks: ``(N, E, Cm, H, W)`` binary masks of the E teachers (Cm = 1 binary,
            Cm = 3 multi-label shown as RGB; class-index maps with Cm = 1 are shown in colour).
        im: ``(N, 1, H, W)`` the Inconsistency Mask.
        pseudo_label: ``(N, Cm, H, W)`` the final pseudo-label.
        masked_images: like ``images``, with the IM pixels blacked out.
        path: PNG file to write (folders are created; written atomically).
        titles: optional row labels, one per image (e.g. file names).
        max_images: draw at most this many rows.
        reverse_indexing: the arrays are in MONAI ``PILReader`` order ``(C, W, H)``; swap the
            last two axes so that the figure shows the images upright.

    Returns:
        the path of the written PNG.

    Raises:
        ValueError: when a shape does not fit the others (the argument and its shape are named).
    """
    img = _as_numpy("images", images, 4)
    tm = _as_numpy("teacher_masks", teacher_masks, 5)
    imk = _as_numpy("im", im, 4)
    pl = _as_numpy("pseudo_label", pseudo_label, 4)
    mimg = _as_numpy("masked_images", masked_images, 4)
    n, spatial = img.shape[0], img.shape[2:]
    for name, arr in (("teacher_masks", tm), ("im", imk), ("pseudo_label", pl), ("masked_images", mimg)):
        if arr.shape[0] != n or arr.shape[-2:] != spatial:
            raise ValueError(
                f"{name}: shape {arr.shape} does not match images {img.shape} (same N and spatial size needed)"
            )
    if n == 0:
        raise ValueError("plot_inconsistency_mask: no images to draw")
    if titles is not None and len(titles) < min(n, max_images):
        raise ValueError(f"titles: {len(titles)} given for {min(n, max_images)} rows")
    if reverse_indexing:
        img, tm, imk, pl, mimg = (np.swapaxes(a, -1, -2) for a in (img, tm, imk, pl, mimg))
    rows, n_teachers = min(n, max_images), tm.shape[1]
    cols = n_teachers + 5
    fig = Figure(figsize=(cols * _PANEL_INCHES, rows * _PANEL_INCHES + 0.3))
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        agree, agree_title = _agreement(tm[r])
        panels: list[tuple[str, np.ndarray, str]] = [("input", img[r], "image")]
        panels += [(f"teacher {e + 1}", tm[r, e], "mask") for e in range(n_teachers)]
        panels += [
            (agree_title, agree, "count"),
            ("inconsistency mask", imk[r], "mask"),
            ("pseudo-label", pl[r], "mask"),
            ("masked input", mimg[r], "image"),
        ]
        for c, (title, arr, kind) in enumerate(panels):
            ax = axes[r, c]
            data, opts = _panel_display(arr, kind, n_teachers)
            ax.imshow(data, **opts)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
        if titles is not None:
            axes[r, 0].set_ylabel(str(titles[r]), fontsize=8)
    fig.tight_layout()
    return _save_figure(fig, path)


def _series(name: str, values: Sequence[Any]) -> np.ndarray:
    """One method's values as ``(S, G)`` (S seeds, G generations), missing entries as NaN."""
    if len(values) == 0:
        raise ValueError(f"results[{name!r}] is empty")
    per_seed = [v for v in values if hasattr(v, "__len__")]
    if per_seed and len(per_seed) != len(values):
        raise ValueError(f"results[{name!r}]: mix of numbers and per-seed lists")
    runs = values if per_seed else [values]
    length = max(len(run) for run in runs)
    out = np.full((len(runs), length), np.nan)
    for i, run in enumerate(runs):
        out[i, : len(run)] = [np.nan if v is None else float(v) for v in run]
    return out


def plot_metric_over_generations(
    results: Mapping[str, Sequence[Any]],
    path: str | os.PathLike,
    metric_name: str,
    higher_is_better: bool = True,
    title: str | None = None,
    references: Mapping[str, float] | None = None,
    band: str = "minmax",
) -> Path:
    """Plot a metric over generations, one line per method, as in the paper's result charts.

    Args:
        results: method name -> per-generation values (generation 0 first), or method name ->
            list of such lists, one per seed: then the mean is drawn with a shaded band.
            ``None`` or missing trailing generations are gaps.
        path: PNG file to write (folders are created; written atomically).
        metric_name: y-axis label, e.g. ``"IoU"`` or ``"MCCE"``.
        higher_is_better: marks the best point of every method (max or min) and notes the
            direction on the y-axis.
        title: figure title.
        references: name -> value drawn as horizontal dashed lines (e.g. ``{"LDT": 0.671,
            "FDT": 0.751}``).
        band: ``"minmax"`` (shaded min..max over seeds) or ``"std"`` (mean +- one std).

    Returns:
        the path of the written PNG.
    """
    if not results:
        raise ValueError("plot_metric_over_generations: results is empty")
    if band not in ("minmax", "std"):
        raise ValueError(f"band must be 'minmax' or 'std', got {band!r}")
    fig = Figure(figsize=(7.0, 4.5))
    ax = fig.subplots()
    best = np.nanargmax if higher_is_better else np.nanargmin
    max_gen = 0
    for i, (method, values) in enumerate(results.items()):
        data = _series(method, values)
        color = f"C{i % 10}"
        gens = np.arange(data.shape[1])
        max_gen = max(max_gen, data.shape[1] - 1)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN generations
            mean = np.nanmean(data, axis=0)
            if data.shape[0] > 1:
                if band == "std":
                    sd = np.nanstd(data, axis=0)
                    lo, hi = mean - sd, mean + sd
                else:
                    lo, hi = np.nanmin(data, axis=0), np.nanmax(data, axis=0)
                ax.fill_between(gens, lo, hi, color=color, alpha=0.2, linewidth=0)
        ax.plot(gens, mean, marker="o", markersize=4, color=color, label=method)
        if np.isfinite(mean).any():
            b = int(best(mean))
            ax.plot([gens[b]], [mean[b]], marker="*", markersize=12, color=color, linestyle="none")
    for j, (name, value) in enumerate((references or {}).items()):
        ax.axhline(
            float(value), linestyle="--", linewidth=1.2, color=f"C{(len(results) + j) % 10}", label=name
        )
    ax.set_xlabel("generation")
    ax.set_ylabel(f"{metric_name} ({'higher' if higher_is_better else 'lower'} is better)")
    ax.set_xticks(range(0, max_gen + 1, max(1, math.ceil((max_gen + 1) / 12))))
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _save_figure(fig, path)
