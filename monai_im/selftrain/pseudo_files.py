"""The files of a pseudo-labelling pass: each accepted image's pseudo-label, IM (and optionally the image
with its IM cut out), queued to writer threads in the format of :class:`monai_im.transforms.PseudoLabelFormat`,
and the pieces of the IM figure."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import convert_to_tensor

from monai_im.methods.context import PseudoLabels
from monai_im.selftrain.pseudo_result import FigureSample
from monai_im.transforms import PseudoLabelFormat, mask_image

__all__ = ["PassWriter", "batch_affines", "figure_sample", "item_uid", "masked_images"]


def batch_affines(images: Any) -> np.ndarray | None:
    """The ``(B, 4, 4)`` affines of a batch of MONAI MetaTensors, or None (2D chains drop the metadata)."""
    affine = getattr(images, "meta", {}).get("affine") if hasattr(images, "meta") else None
    if affine is None:
        return None
    affine = np.asarray(convert_to_tensor(affine, track_meta=False).cpu(), dtype=np.float64)
    return affine if affine.ndim == 3 else affine[None]


def _axial(t: torch.Tensor, z: torch.Tensor, batch_dim: int = 0) -> torch.Tensor:
    """Slice ``z[b]`` of the last axis of every volume ``b`` (along ``batch_dim``) of ``t``."""
    index = z.to(t.device).view(*([1] * batch_dim), -1, *([1] * (t.ndim - batch_dim - 2)), 1)
    index = index.expand(*t.shape[:-1], 1)
    return t.gather(-1, index).squeeze(-1)


def item_uid(item: Mapping[str, Any], index: int) -> str:
    """The file stem of the pseudo-label files of unlabeled item number ``index``."""
    stem = Path(str(item["image"])).name.split(".")[0]
    return f"{index:06d}_{stem}"


def masked_images(
    images: torch.Tensor, im: torch.Tensor | None, index: Any, fill_value: float
) -> torch.Tensor:
    """``images[index]`` with their IM (if any) set to ``fill_value``."""
    return images[index] if im is None else mask_image(images[index], im[index], fill_value)


def figure_sample(
    images: torch.Tensor,
    probs: torch.Tensor,
    result: PseudoLabels,
    count: int,
    fill_value: float,
    mode: str,
    threshold: float,
) -> FigureSample:
    """The IM figure's pieces for the first ``count`` images of a batch.

    Args:
        images: the batch ``(B, C, *spatial)``.
        probs: the teachers' stacked probabilities ``(T, B, C, *spatial)``.
        result: the method's pseudo-labels of the batch.
        count: how many images (at most the batch).
        fill_value: value of the input image inside the IM.
        mode: the method's mode (``"multiclass"`` shows each teacher's foreground).
        threshold: the binary teachers' mask threshold.
    """
    k = min(count, images.shape[0])
    masked = masked_images(images, result.im, slice(k), fill_value)
    if mode == "multiclass":
        classes = probs.shape[2]
        teacher = (
            torch.nn.functional.one_hot(probs.argmax(2), classes)
            .movedim(-1, 2)[:, :k, 1:]
            .amax(2, keepdim=True)
        )
    else:
        teacher = probs[:, :k] > threshold
    im = result.im[:k] if result.im is not None else torch.zeros_like(images[:k, :1])
    parts = [images[:k], teacher.transpose(0, 1), im, result.label[:k], masked[:k]]
    if images.ndim == 5:  # volumes: the axial slice of each with the most pseudo-label and IM
        busy = ((result.label[:k] > 0).float().sum(1) + im.float().sum(1)).sum((1, 2))  # (k, Z)
        z = busy.argmax(dim=1)
        parts = [_axial(t, z, batch_dim=1 if i == 1 else 0) for i, t in enumerate(parts)]
    images_k, teacher_k, im_k, label_k, masked_k = parts
    return FigureSample(
        images=images_k.detach().float().cpu(),
        teacher_masks=teacher_k.float().cpu(),
        im=im_k.float().cpu(),
        pseudo_label=label_k.float().cpu(),
        masked_images=masked_k.detach().float().cpu(),
    )


@dataclass
class PassWriter:
    """One labelling pass as its post-processing thread sees it: where files go and how, and what one batch
    hands to the next (files still being written, the figure being drawn, the counts on the bar).

    ``grid`` maps a volume's arrays onto its source image's grid (:class:`monai_im.selftrain.pseudo_grid.
    SourceGrid`); None writes volumes on their preprocessed grid."""

    writers: ThreadPoolExecutor
    files: PseudoLabelFormat
    tmp: Path
    uids: Sequence[str]
    items: Sequence[Mapping[str, Any]]
    bar: Any
    draw_figure: bool
    fill_value: float = 0.0
    image_scale: float = 255.0
    save_masked_images: bool = False
    grid: Callable[..., tuple[list[np.ndarray], np.ndarray]] | None = None
    pending: list[Future] = field(default_factory=list)
    drawn: Future | None = None
    kept: int = 0
    seen: int = 0

    def queue(
        self,
        sources: Sequence[int],
        images: torch.Tensor,
        result: PseudoLabels,
        rows: list[dict[str, Any]],
        volumes: Sequence[Any] | None,
    ) -> list[Future]:
        """Queue the files of the accepted images of one batch; add their datalist rows to ``rows``.

        A row refers to the original image (``image``, and ``source``: its index in the unlabeled list)
        and to the written ``label`` and ``im`` (and ``masked_image`` with ``save_masked_images``).

        Args:
            sources: the unlabeled list's index of each image of the batch.
            images: the batch.
            result: the method's pseudo-labels of the batch.
            rows: the datalist rows of the pass so far.
            volumes: the batch's preprocessed volumes with their metadata (``batch_volumes`` of
                :mod:`monai_im.selftrain.pseudo_grid`), whose files go onto their source images' grids
                (``grid``); None for images.
        """
        idx = torch.nonzero(result.accepted).flatten().tolist()
        if not idx:
            return []
        spatial_dims = result.label.ndim - 2
        labels = result.label[idx].float().cpu().numpy()
        ims = result.im[idx].float().cpu().numpy() if result.im is not None else None
        # the IM cut out of the accepted images only, only when asked for
        imgs = None
        if self.save_masked_images:
            imgs = masked_images(images, result.im, idx, self.fill_value).float().cpu().numpy()
        score = result.score[idx].float().cpu().tolist() if result.score is not None else None
        certainty = result.certainty[idx].float().cpu().tolist() if result.certainty is not None else None
        files, pool, root = self.files, self.writers, self.tmp
        futures = []
        for j, i in enumerate(idx):
            source = sources[i]
            uid = self.uids[source]
            label, im, img, affine = self._on_source(
                volumes[i] if volumes is not None else None, j, labels, ims, imgs
            )
            entry: dict[str, Any] = {
                "image": str(self.items[source]["image"]),
                "source": source,
                "label": str(files.path(root / "labels", uid, spatial_dims)),
            }
            futures.append(pool.submit(files.write_label, entry["label"], label, affine))
            if im is not None:
                entry["im"] = str(files.path(root / "ims", uid, spatial_dims))
                futures.append(pool.submit(files.write_im, entry["im"], im, affine))
            if img is not None:
                entry["masked_image"] = str(files.path(root / "images", uid, spatial_dims))
                futures.append(
                    pool.submit(files.write_image, entry["masked_image"], img, affine, self.image_scale)
                )
            if score is not None:
                entry["score"] = round(float(score[j]), 6)
            if certainty is not None:
                entry["certainty"] = round(float(certainty[j]), 6)
            rows.append(entry)
        return futures

    def _on_source(
        self,
        volume: Any,
        j: int,
        labels: np.ndarray,
        ims: np.ndarray | None,
        imgs: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """Accepted image ``j``'s label, IM and masked image, and the affine to write them with: a volume's on
        its source image's grid (labels and IM by nearest neighbour; source voxels the teachers never saw are
        background in the label and inside the IM); an image's as they are, without one."""
        label = labels[j]
        im = ims[j] if ims is not None else None
        img = imgs[j] if imgs is not None else None
        if volume is None:
            return label, im, img, None
        if self.grid is None:  # on the preprocessed grid, where they align in world coordinates
            return label, im, img, np.asarray(volume.affine, dtype=np.float64)
        (label,), affine = self.grid(volume, [label])
        if im is not None:  # voxels the teachers never saw are inside the IM
            im = self.grid(volume, [im], outside=1.0)[0][0]
        if img is not None:
            img = self.grid(volume, [img], nearest=False)[0][0]
        return label, im, img, affine
