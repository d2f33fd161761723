"""Batched ensemble pseudo-labelling of the unlabeled set, streamed to disk.

The teachers predict each batch once (:meth:`Method.predict`); the method turns the stacked
probabilities into pseudo-labels (and an Inconsistency Mask, and a quality score); accepted pairs
are written (:class:`monai_im.transforms.PseudoLabelFormat`: PNG for images, NIfTI with the volume's
affine for volumes) while the next batch is computed, and the IM figure beside them.
Nothing of the unlabeled set is held in memory beyond one batch,
and the output folder appears only once it is complete (see :func:`monai_im.io.atomic_directory`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import convert_to_tensor

from monai_im.data.datalist import write_datalist
from monai_im.io import atomic_directory, atomic_write_json, load_json
from monai_im.methods import Method
from monai_im.metrics.functional import overlap_scores
from monai_im.runtime.acceleration import RunSettings
from monai_im.runtime.concurrency import prefetch
from monai_im.runtime.progress import progress_bar
from monai_im.transforms import PseudoLabelFormat, mask_image

__all__ = ["PseudoLabelResult", "PseudoLabeler", "FigureSample"]


@dataclass
class FigureSample:
    """The pieces of the IM figure for a few unlabeled images (CPU tensors, channel first)."""

    images: torch.Tensor
    teacher_masks: torch.Tensor
    im: torch.Tensor
    pseudo_label: torch.Tensor
    masked_images: torch.Tensor

    def plot(self, path: str | os.PathLike) -> Path:
        """Draw the IM figure (see :func:`monai_im.visualize.plot_inconsistency_mask`) to the PNG ``path``."""
        from monai_im.visualize import plot_inconsistency_mask

        return Path(
            plot_inconsistency_mask(
                self.images,
                self.teacher_masks,
                self.im,
                self.pseudo_label,
                self.masked_images,
                path,
                reverse_indexing=True,
            )
        )


@dataclass
class PseudoLabelResult:
    """What one pseudo-labelling pass produced."""

    items: list[dict[str, Any]]
    stats: dict[str, float]
    figure: FigureSample | None = None
    output_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    figure_path: str | None = None

    #: entries of a pseudo-label datalist row that are file paths (the others, e.g. ``score``, are values)
    PATH_KEYS = ("label", "im", "masked_image")
    FIGURE = "im_figure.png"

    @classmethod
    def _resolve(cls, row: Mapping[str, Any], folder: Path) -> dict[str, Any]:
        item = {k: str(folder / v) if k in cls.PATH_KEYS else v for k, v in row.items()}
        if "source" not in row:  # sets of versions <= 0.3: "image" is the masked copy inside the folder
            item["image"] = str(folder / row["image"])
        return item

    @classmethod
    def load(cls, folder: str | os.PathLike) -> PseudoLabelResult | None:
        """A finished pseudo-label set written by :class:`PseudoLabeler`, or None when ``folder`` holds none.

        The paths of its files in ``datalist.json`` are relative to ``folder`` and are resolved against it,
        so a moved or copied set refers to its own files; ``image`` is the original unlabeled image and
        ``source`` its index in the unlabeled list (see :meth:`SelfTrainingStudy.pseudo_label`).
        """
        folder = Path(folder)
        if not ((folder / "datalist.json").is_file() and (folder / "stats.json").is_file()):
            return None
        rows = load_json(folder / "datalist.json")["pseudo_labeled"]
        items = [cls._resolve(row, folder) for row in rows]
        figure = folder / cls.FIGURE
        return cls(
            items=items,
            stats=load_json(folder / "stats.json"),
            output_dir=str(folder),
            figure_path=str(figure) if figure.is_file() else None,
        )


@dataclass
class _Labelled:
    """What the teachers made of a run of batches, before the statistics of the whole set."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    #: per batch: images, accepted, sum of the IM fractions, sum of the kept images' IM fractions
    batches: list[tuple[int, int, float, float]] = field(default_factory=list)
    quality: list[float] = field(default_factory=list)
    quality_kept: list[float] = field(default_factory=list)
    scores: list[torch.Tensor] = field(default_factory=list)
    figure: FigureSample | None = None
    figure_path: Path | None = None


@dataclass
class _Pass:
    """One labelling pass as its post-processing thread sees it: where files go, and what one batch
    hands to the next (files still being written, the figure being drawn, the counts on the bar)."""

    writers: ThreadPoolExecutor
    files: PseudoLabelFormat
    tmp: Path
    uids: Sequence[str]
    items: Sequence[Mapping[str, Any]]
    bar: Any
    draw_figure: bool
    pending: list[Future] = field(default_factory=list)
    drawn: Future | None = None
    kept: int = 0
    seen: int = 0


def _affines(images: Any) -> np.ndarray | None:
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


def _uid(item: Mapping[str, Any], index: int) -> str:
    stem = Path(str(item["image"])).name.split(".")[0]
    return f"{index:06d}_{stem}"


class PseudoLabeler:
    """Pseudo-label an unlabeled set with an ensemble of teachers.

    Args:
        method: the method (:class:`monai_im.methods.Method`): how teachers predict a batch and
            how their stacked probabilities become :class:`PseudoLabels`.
        inferer: how a network is applied to a batch (e.g. :class:`AdaptiveInferer`); None = direct call.
        device: where the teachers run.
        batch_size: images per ensemble forward pass.
        num_workers: DataLoader workers.
        fill_value: value written into the input image inside the IM (the paper: 0, black).
        image_scale: factor from the preprocessed image to the 8-bit PNG written (255 for images in [0, 1]).
        label_scale: factor from 0/1 pseudo-label masks to PNG values (255 writes 0/255 masks, as the datasets
            store them); class maps and volumes are written unscaled (see :class:`PseudoLabelFormat`).
        run_settings: the speed policy of the teachers' forward passes (inference precision, memory
            format, compilation); the teachers are prepared with it. Default: :class:`RunSettings` ().
        num_figure_images: how many images to keep for the IM figure.
        progress: show a progress bar.
        compress_level: zlib level of the PNG files written (0-9, all lossless). 1 by default:
            pseudo-labels are rewritten every generation, and level 1 writes them about 5x faster
            than Pillow's default 6 for files about 20% larger.
        save_masked_images: also write each accepted image with its IM cut out (``images/``), for
            looking at. Training never reads them: a pseudo-labeled item refers to its original image,
            and the training transforms cut the IM out of it when they load it (one place for the cut,
            the original's full intensity resolution, and no image copy per generation). Writing them
            costs about 7 ms per 256 x 256 RGB image, most of the time outside the teachers' forward passes.
    """

    def __init__(
        self,
        method: Method,
        inferer: Callable | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
        num_workers: int = 0,
        fill_value: float = 0.0,
        image_scale: float = 255.0,
        label_scale: float = 255.0,
        run_settings: RunSettings | None = None,
        num_figure_images: int = 4,
        progress: bool = True,
        compress_level: int = 1,
        save_masked_images: bool = False,
    ) -> None:
        self.method = method
        self.inferer = inferer
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.fill_value = fill_value
        self.image_scale = image_scale
        self.label_scale = label_scale
        self.run_settings = run_settings if run_settings is not None else RunSettings()
        self.num_figure_images = num_figure_images
        self.progress = progress
        if not 0 <= compress_level <= 9:
            raise ValueError(f"compress_level must be 0..9, got {compress_level}")
        self.compress_level = compress_level
        self.save_masked_images = bool(save_masked_images)

    def __call__(
        self,
        teachers: Sequence[torch.nn.Module],
        items: Sequence[Mapping[str, Any]],
        transform: Callable,
        output_dir: str | os.PathLike,
        description: str = "pseudo-labelling",
        extra_stats: Mapping[str, float] | None = None,
    ) -> PseudoLabelResult:
        """Pseudo-label the unlabeled ``items`` and write the accepted pairs under ``output_dir``.

        Args:
            teachers: the ensemble (networks returning logits).
            items: datalist entries of the unlabeled images; an entry may carry a ``label`` known for
                evaluation only, which then yields the pseudo-labels' agreement with that hidden truth
                (``label_iou``, over the pixels outside the IM).
            transform: dictionary transforms giving the network input under ``image`` (and ``label``).
            output_dir: created atomically: it exists only when every batch has been written.
            description: the progress bar's label.
            extra_stats: statistics of the method's preparation (e.g. its quality estimator), stored with
                the pseudo-label statistics.

        The IM figure (:class:`FigureSample`) of the first images is drawn into the folder as
        ``im_figure.png``; a method's quality scores go into the datalist as ``score``.
        Several processes share the work with :meth:`label_shard` and :meth:`merge_shards`.
        """
        self._check_strategy()
        output_dir = Path(output_dir)
        with atomic_directory(output_dir, overwrite=True) as tmp:
            part = self._label(teachers, items, transform, tmp, description, 0, len(items), True)
            stats = self._finish(tmp, part, extra_stats)
        final = [self._move(it, tmp, output_dir) for it in part.rows]
        figure_path = part.figure_path
        return PseudoLabelResult(
            items=final,
            stats=stats,
            figure=part.figure,
            output_dir=str(output_dir),
            figure_path=str(output_dir / figure_path.name) if figure_path is not None else None,
        )

    # ------------------------------------------------------------------ shards of several processes
    #: a shard's rows and raw statistics, beside its files
    SHARD_FILE = "shard.json"

    @staticmethod
    def shard_folder(output_dir: str | os.PathLike, rank: int) -> Path:
        """Where process ``rank`` writes its shard of the set ``output_dir``: a hidden ``.partial`` sibling,
        which a study removes as a leftover when it starts again after an interruption."""
        output_dir = Path(output_dir)
        return output_dir.with_name(f".{output_dir.name}.shard-{int(rank):04d}.partial")

    def label_shard(
        self,
        teachers: Sequence[torch.nn.Module],
        items: Sequence[Mapping[str, Any]],
        transform: Callable,
        shard_dir: str | os.PathLike,
        shard: tuple[int, int],
        description: str = "pseudo-labelling",
    ) -> Path:
        """Pseudo-label ``items[start:stop]`` into ``shard_dir`` (created atomically), for :meth:`merge_shards`.

        The files and rows are those a single pass over all ``items`` writes for these images (the same
        ``source`` indices and file names); ``shard.json`` holds the rows and the raw statistics (per-batch
        totals, per-image agreements and scores), from which the merge computes the statistics of the
        whole set exactly as :meth:`__call__` does. The shard starting at 0 draws the IM figure.

        Args:
            teachers, items, transform, description: as for :meth:`__call__` (``items`` is the whole list).
            shard_dir: the shard's folder, e.g. :meth:`shard_folder`.
            shard: ``(start, stop)``; whole batches of ``batch_size`` (see
                :meth:`monai_im.runtime.distributed.DistributedContext.shard`), so that every batch, and so
                every per-image result, is the one a single pass computes.
        """
        self._check_strategy()
        start, stop = (int(v) for v in shard)
        if not 0 <= start <= stop <= len(items):
            raise ValueError(f"shard {start}:{stop} is not inside the {len(items)} unlabeled items")
        shard_dir = Path(shard_dir)
        with atomic_directory(shard_dir, overwrite=True) as tmp:
            part = self._label(teachers, items, transform, tmp, description, start, stop, start == 0)
            record = {
                "start": start,
                "stop": stop,
                "rows": [self._relative(it, tmp) for it in part.rows],
                "batches": part.batches,
                "quality": part.quality,
                "quality_kept": part.quality_kept,
                "scores": [s.tolist() for s in part.scores],
            }
            atomic_write_json(tmp / self.SHARD_FILE, record)
        return shard_dir

    def merge_shards(
        self,
        shard_dirs: Sequence[str | os.PathLike],
        output_dir: str | os.PathLike,
        extra_stats: Mapping[str, float] | None = None,
    ) -> PseudoLabelResult:
        """Merge the shards of :meth:`label_shard` into the set ``output_dir`` (created atomically) that a
        single :meth:`__call__` over all items writes: the same files, rows (in unlabeled order) and
        statistics. The shard folders are removed afterwards.

        Args:
            shard_dirs: the shards' folders, together covering the unlabeled list without gaps.
            output_dir: the final pseudo-label folder.
            extra_stats: as for :meth:`__call__`.

        Raises:
            ValueError: a shard is missing its ``shard.json``, or the shards leave a gap or overlap.
        """
        output_dir = Path(output_dir)
        shards = []
        for d in map(Path, shard_dirs):
            if not (d / self.SHARD_FILE).is_file():
                raise ValueError(f"{d}: not a finished pseudo-label shard (no {self.SHARD_FILE})")
            shards.append((d, load_json(d / self.SHARD_FILE)))
        shards.sort(key=lambda s: (s[1]["start"], s[1]["stop"]))
        expected = 0
        for d, record in shards:
            if record["start"] != expected:
                raise ValueError(
                    f"{d}: shard starts at item {record['start']}, the previous one ends at {expected}"
                )
            expected = record["stop"]
        part = _Labelled()
        with atomic_directory(output_dir, overwrite=True) as tmp:
            for sub in self._subfolders():
                (tmp / sub).mkdir()
            for d, record in shards:
                for sub in self._subfolders():
                    for f in sorted((d / sub).iterdir()) if (d / sub).is_dir() else []:
                        os.replace(f, tmp / sub / f.name)
                if (d / PseudoLabelResult.FIGURE).is_file():
                    part.figure_path = tmp / PseudoLabelResult.FIGURE
                    os.replace(d / PseudoLabelResult.FIGURE, part.figure_path)
                part.rows += [PseudoLabelResult._resolve(row, tmp) for row in record["rows"]]
                part.batches += [tuple(b) for b in record["batches"]]
                part.quality += record["quality"]
                part.quality_kept += record["quality_kept"]
                part.scores += [torch.tensor(s, dtype=torch.float32) for s in record["scores"]]
            stats = self._finish(tmp, part, extra_stats)
        for d, _ in shards:
            shutil.rmtree(d, ignore_errors=True)
        figure = output_dir / PseudoLabelResult.FIGURE
        return PseudoLabelResult(
            items=[self._move(it, tmp, output_dir) for it in part.rows],
            stats=stats,
            output_dir=str(output_dir),
            figure_path=str(figure) if part.figure_path is not None else None,
        )

    # ------------------------------------------------------------------ the steps of a pass
    def _check_strategy(self) -> None:
        if not self.method.makes_pseudo_labels:
            raise ValueError(f"method {self.method.name!r} makes no pseudo-labels")

    def _subfolders(self) -> tuple[str, ...]:
        return ("images", "labels", "ims") if self.save_masked_images else ("labels", "ims")

    def _label(
        self,
        teachers: Sequence[torch.nn.Module],
        items: Sequence[Mapping[str, Any]],
        transform: Callable,
        tmp: Path,
        description: str,
        start: int,
        stop: int,
        draw_figure: bool,
    ) -> _Labelled:
        """Label ``items[start:stop]`` batch by batch into the folder ``tmp`` being written; file names and
        ``source`` indices are those of the whole list."""
        from monai.data import DataLoader, Dataset

        uids = [_uid(it, i) for i, it in enumerate(items)]
        items_in = list(items)
        loader = DataLoader(
            Dataset([dict(it) for it in items_in[start:stop]], transform=transform),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
        )
        teachers = [self.run_settings.prepare_network(t, self.device).eval() for t in teachers]
        part = _Labelled()
        files = PseudoLabelFormat(self.method.mode, self.label_scale, self.compress_level)
        for sub in self._subfolders():
            (tmp / sub).mkdir()
        # Three stages overlap: a thread reads and preprocesses the next batches and puts them in the
        # teachers' memory format (``prefetch``; without worker processes), this thread runs the
        # teachers, and one more thread turns the previous batch's probabilities into pseudo-labels,
        # IM, statistics and queued files (``_post``), so that on a CPU the teachers' forward passes
        # are nearly all the main thread does. One batch at most waits for its post-processing: memory
        # stays that of two batches.
        with (
            ThreadPoolExecutor(max_workers=2, thread_name_prefix="pseudo-label-write") as writers,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="pseudo-label-post") as post,
        ):

            def ready(batch: Mapping[str, Any]) -> tuple[Mapping[str, Any], np.ndarray | None, torch.Tensor]:
                # in the reading thread: the images in the teachers' memory format, converted once for
                # all teachers, so that on a CPU the main thread only runs the forward passes (the copy
                # to an accelerator keeps the layout and stays in the main thread: no batch waits there)
                images = self.run_settings.to_memory_format(
                    convert_to_tensor(batch["image"], track_meta=False)
                )
                return batch, _affines(batch["image"]), images

            batches = map(ready, loader)
            if self.num_workers == 0:
                batches = prefetch(batches)
            bar = progress_bar(
                batches,
                desc=description,
                unit="batch",
                total=len(loader),
                disable=not self.progress,
                leave=False,
            )
            run = _Pass(writers, files, tmp, uids, items_in, bar, draw_figure and self.num_figure_images > 0)
            previous: Future | None = None
            for batch, affines, images in bar:  # affines: where each preprocessed volume lies
                images = images.to(self.device)
                logits = self.method.predict(teachers, images, self.inferer)
                truth = batch.get("label") if self.method.mode != "multiclass" else None
                if previous is not None:
                    previous.result()  # raises what went wrong in the previous batch
                previous = post.submit(self._post, run, part, start, images, logits, truth, affines)
                start += images.shape[0]
            if previous is not None:
                previous.result()
            for f in run.pending:
                f.result()
            part.figure_path = run.drawn.result() if run.drawn is not None else None
        return part

    @torch.no_grad()
    def _post(
        self,
        run: _Pass,
        part: _Labelled,
        start: int,
        images: torch.Tensor,
        logits: torch.Tensor,
        truth: Any,
        affines: np.ndarray | None,
    ) -> None:
        """One batch after the teachers: pseudo-labels, IM, statistics, the figure, and its files queued
        (run by one thread, batch after batch, so that rows and statistics keep the order of the set)."""
        probs = self.method.activation(logits, channel_dim=2)
        result = self.method(probs, images)
        im = result.im
        n = images.shape[0]
        im_frac = im.flatten(1).float().mean(1) if im is not None else torch.zeros(n, device=images.device)
        accepted = result.accepted
        part.batches.append((n, int(accepted.sum()), float(im_frac.sum()), float(im_frac[accepted].sum())))
        if result.score is not None:
            part.scores.append(torch.stack([result.score.float(), accepted.float()]).cpu())
        if truth is not None:
            truth = convert_to_tensor(truth, track_meta=False).to(self.device) > 0
            iou = self._agreement(result.label > 0, truth, im)
            part.quality.extend(iou.tolist())
            part.quality_kept.extend(iou[accepted].tolist())
        if part.figure is None and run.draw_figure:
            part.figure = self._figure(images, probs, result)
            # drawn by a writer thread while the teachers go on (matplotlib's Agg canvas, no pyplot)
            run.drawn = run.writers.submit(part.figure.plot, run.tmp / PseudoLabelResult.FIGURE)
        # bound memory: wait for the previous batch's files before queueing this one's
        for f in run.pending:
            f.result()
        run.pending = self._write(run, list(range(start, start + n)), images, result, part.rows, affines)
        run.kept, run.seen = run.kept + part.batches[-1][1], run.seen + n
        run.bar.set_postfix(kept=f"{run.kept}/{run.seen}", refresh=False)

    def _finish(
        self, tmp: Path, part: _Labelled, extra_stats: Mapping[str, float] | None
    ) -> dict[str, float]:
        """The statistics of a whole set from its batches; ``datalist.json`` and ``stats.json`` into ``tmp``."""
        totals: dict[str, float] = {
            "images": 0,
            "accepted": 0,
            "im_fraction_sum": 0.0,
            "im_fraction_kept_sum": 0.0,
        }
        for n, accepted, im_sum, im_kept_sum in part.batches:  # in batch order: the sums of one pass
            totals["images"] += n
            totals["accepted"] += accepted
            totals["im_fraction_sum"] += im_sum
            totals["im_fraction_kept_sum"] += im_kept_sum
        stats = {**self._stats(totals, part.quality, part.quality_kept), **self._score_stats(part.scores)}
        stats.update({k: float(v) for k, v in (extra_stats or {}).items()})
        write_datalist(
            tmp / "datalist.json", {"pseudo_labeled": [self._relative(it, tmp) for it in part.rows]}
        )
        atomic_write_json(tmp / "stats.json", stats)
        return stats

    @staticmethod
    def _score_stats(scores: list[torch.Tensor]) -> dict[str, float]:
        """Mean quality score of all and of the kept pseudo-labels (methods that score them)."""
        if not scores:
            return {}
        score, kept = torch.cat(scores, dim=1)
        out = {"score_mean": float(score.mean())}
        if kept.any():
            out["score_kept_mean"] = float(score[kept > 0].mean())
        return out

    @staticmethod
    def _agreement(pred: torch.Tensor, truth: torch.Tensor, im: torch.Tensor | None) -> torch.Tensor:
        """Per-image IoU of pseudo-label and hidden truth over the pixels outside the IM.

        Both empty outside the IM scores 1; an image entirely inside the IM has nothing to score (NaN).
        """
        valid = torch.ones_like(pred) if im is None else (im < 0.5).expand_as(pred)
        iou = overlap_scores(pred, truth, "iou", valid=valid, pool_channels=True)[:, 0]
        return torch.where(valid.flatten(1).any(1), iou, torch.full_like(iou, float("nan")))

    @staticmethod
    def _stats(
        totals: Mapping[str, float], quality: list[float], quality_kept: list[float]
    ) -> dict[str, float]:
        n = max(int(totals["images"]), 1)
        kept = int(totals["accepted"])
        stats = {
            "unlabeled_images": int(totals["images"]),
            "images_kept": kept,
            "kept_fraction": kept / n,
            "im_fraction": totals["im_fraction_sum"] / n,
            "im_fraction_kept": totals["im_fraction_kept_sum"] / max(kept, 1),
        }
        if quality and not np.isnan(quality).all():
            stats["label_iou"] = float(np.nanmean(quality))
        if quality_kept and not np.isnan(quality_kept).all():
            stats["label_iou_kept"] = float(np.nanmean(quality_kept))
        return stats

    def _masked(self, images: torch.Tensor, im: torch.Tensor | None, index: Any) -> torch.Tensor:
        """``images[index]`` with their IM (if any) set to the fill value."""
        return images[index] if im is None else mask_image(images[index], im[index], self.fill_value)

    def _figure(self, images, probs, result) -> FigureSample:
        k = min(self.num_figure_images, images.shape[0])
        masked = self._masked(images, result.im, slice(k))
        if self.method.mode == "multiclass":
            classes = probs.shape[2]
            teacher = (
                torch.nn.functional.one_hot(probs.argmax(2), classes)
                .movedim(-1, 2)[:, :k, 1:]
                .amax(2, keepdim=True)
            )
        else:
            teacher = probs[:, :k] > self.method.threshold
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

    def _write(self, run: _Pass, sources, images, result, items, affines) -> list[Future]:
        """Queue the files of the accepted images of one batch; add their datalist rows to ``items``.

        A row refers to the original image (``image``, and ``source``: its index in the unlabeled list)
        and to the written ``label`` and ``im`` (and ``masked_image`` with ``save_masked_images``).
        """
        idx = torch.nonzero(result.accepted).flatten().tolist()
        if not idx:
            return []
        spatial_dims = result.label.ndim - 2
        labels = result.label[idx].float().cpu().numpy()
        ims = result.im[idx].float().cpu().numpy() if result.im is not None else None
        # the IM cut out of the accepted images only, only when asked for
        imgs = self._masked(images, result.im, idx).float().cpu().numpy() if self.save_masked_images else None
        score = result.score[idx].float().cpu().tolist() if result.score is not None else None
        files, pool, root = run.files, run.writers, run.tmp
        futures = []
        for j, i in enumerate(idx):
            source = sources[i]
            uid = run.uids[source]
            affine = affines[i] if affines is not None else None
            entry: dict[str, Any] = {
                "image": str(run.items[source]["image"]),
                "source": source,
                "label": str(files.path(root / "labels", uid, spatial_dims)),
            }
            futures.append(pool.submit(files.write_label, entry["label"], labels[j], affine))
            if ims is not None:
                entry["im"] = str(files.path(root / "ims", uid, spatial_dims))
                futures.append(pool.submit(files.write_im, entry["im"], ims[j], affine))
            if imgs is not None:
                entry["masked_image"] = str(files.path(root / "images", uid, spatial_dims))
                futures.append(
                    pool.submit(files.write_image, entry["masked_image"], imgs[j], affine, self.image_scale)
                )
            if score is not None:
                entry["score"] = round(float(score[j]), 6)
            items.append(entry)
        return futures

    @staticmethod
    def _relative(item: Mapping[str, Any], root: Path) -> dict[str, Any]:
        keys = PseudoLabelResult.PATH_KEYS
        return {k: os.path.relpath(v, root) if k in keys else v for k, v in item.items()}

    @staticmethod
    def _move(item: Mapping[str, Any], old: Path, new: Path) -> dict[str, Any]:
        keys = PseudoLabelResult.PATH_KEYS
        return {k: str(new / os.path.relpath(v, old)) if k in keys else v for k, v in item.items()}
