"""Batched ensemble pseudo-labelling of the unlabeled set, streamed to disk.

The teachers predict each batch once (:meth:`Method.predict`); the method turns the stacked
probabilities into pseudo-labels (and an Inconsistency Mask, and a quality score); accepted pairs
are written (:class:`monai_im.transforms.PseudoLabelFormat`: PNG for images, NIfTI on the source volume's
grid for volumes, see :mod:`monai_im.selftrain.pseudo_grid`) while the next batch is computed, and the IM
figure beside them.
Nothing of the unlabeled set is held in memory beyond one batch,
and the output folder appears only once it is complete (see :func:`monai_im.io.atomic_directory`).

The result and statistics of a set are in :mod:`monai_im.selftrain.pseudo_result`, its files in
:mod:`monai_im.selftrain.pseudo_files`, and the shards of several processes in
:mod:`monai_im.selftrain.pseudo_shards`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.utils import convert_to_tensor

from monai_im.io import atomic_directory
from monai_im.methods import Method
from monai_im.runtime.acceleration import RunSettings
from monai_im.runtime.concurrency import prefetch
from monai_im.runtime.progress import progress_bar
from monai_im.selftrain.pseudo_classes import record_classes
from monai_im.selftrain.pseudo_files import PassWriter, figure_sample, item_uid
from monai_im.selftrain.pseudo_grid import SourceGrid, batch_volumes
from monai_im.selftrain.pseudo_result import (
    FigureSample,
    LabelledRun,
    PseudoLabelResult,
    agreement,
    finish_set,
    moved_row,
)
from monai_im.selftrain.pseudo_shards import (
    SHARD_FILE,
    load_shards,
    merge_shard_files,
    shard_folder,
    write_shard_record,
)
from monai_im.transforms import PseudoLabelFormat

__all__ = ["PseudoLabelResult", "PseudoLabelSettings", "PseudoLabeler", "FigureSample"]


@dataclass(frozen=True)
class PseudoLabelSettings:
    """How a :class:`PseudoLabeler` batches, writes and reports a pass (everything but the method, where
    the teachers run and how).

    Args:
        batch_size: images per ensemble forward pass.
        num_workers: DataLoader workers.
        fill_value: value written into the input image inside the IM (the paper: 0, black).
        image_scale: factor from the preprocessed image to the 8-bit PNG written (255 for images in [0, 1]).
        label_scale: factor from 0/1 pseudo-label masks to PNG values (255 writes 0/255 masks, as the datasets
            store them); class maps and volumes are written unscaled (see :class:`PseudoLabelFormat`).
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

    Raises:
        ValueError: ``compress_level`` is not in 0..9.
    """

    batch_size: int = 32
    num_workers: int = 0
    fill_value: float = 0.0
    image_scale: float = 255.0
    label_scale: float = 255.0
    num_figure_images: int = 4
    progress: bool = True
    compress_level: int = 1
    save_masked_images: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.compress_level <= 9:
            raise ValueError(f"compress_level must be 0..9, got {self.compress_level}")
        object.__setattr__(self, "save_masked_images", bool(self.save_masked_images))


class PseudoLabeler:
    """Pseudo-label an unlabeled set with an ensemble of teachers.

    Args:
        method: the method (:class:`monai_im.methods.Method`): how teachers predict a batch and
            how their stacked probabilities become :class:`PseudoLabels`.
        inferer: how a network is applied to a batch (e.g. :class:`AdaptiveInferer`); None = direct call.
        device: where the teachers run.
        run_settings: the speed policy of the teachers' forward passes (inference precision, memory
            format, compilation); the teachers are prepared with it. Default: :class:`RunSettings` ().
        settings: batching, files and reporting (:class:`PseudoLabelSettings`); default: its defaults.
        options: fields of :class:`PseudoLabelSettings` by name (``batch_size=2, progress=False``), which
            replace those of ``settings``: how the studies and the bundles' ``pseudo_labeler`` options
            set them.

    Raises:
        TypeError: an option is no field of :class:`PseudoLabelSettings`.
        ValueError: ``compress_level`` is not in 0..9.
    """

    #: a shard's rows and raw statistics, beside its files
    SHARD_FILE = SHARD_FILE

    def __init__(
        self,
        method: Method,
        inferer: Callable | None = None,
        device: str | torch.device = "cpu",
        *,
        run_settings: RunSettings | None = None,
        settings: PseudoLabelSettings | None = None,
        **options: Any,
    ) -> None:
        self.method = method
        self.inferer = inferer
        self.device = torch.device(device)
        self.run_settings = run_settings if run_settings is not None else RunSettings()
        self.settings = dataclasses.replace(settings or PseudoLabelSettings(), **options)

    @property
    def batch_size(self) -> int:
        """Images per ensemble forward pass (shards of several processes are whole batches)."""
        return self.settings.batch_size

    @property
    def compress_level(self) -> int:
        """zlib level of the PNG files written."""
        return self.settings.compress_level

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
        self._check_method()
        output_dir = Path(output_dir)
        with atomic_directory(output_dir, overwrite=True) as tmp:
            part = self._label(teachers, items, transform, tmp, description, (0, len(items)), True)
            stats = finish_set(tmp, part, extra_stats)
        final = [moved_row(it, tmp, output_dir) for it in part.rows]
        figure_path = part.figure_path
        return PseudoLabelResult(
            items=final,
            stats=stats,
            figure=part.figure,
            output_dir=str(output_dir),
            figure_path=str(output_dir / figure_path.name) if figure_path is not None else None,
        )

    # ------------------------------------------------------------------ shards of several processes
    @staticmethod
    def shard_folder(output_dir: str | os.PathLike, rank: int) -> Path:
        """Where process ``rank`` writes its shard of the set ``output_dir``: a hidden ``.partial`` sibling,
        which a study removes as a leftover when it starts again after an interruption."""
        return shard_folder(output_dir, rank)

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
        self._check_method()
        start, stop = (int(v) for v in shard)
        if not 0 <= start <= stop <= len(items):
            raise ValueError(f"shard {start}:{stop} is not inside the {len(items)} unlabeled items")
        shard_dir = Path(shard_dir)
        with atomic_directory(shard_dir, overwrite=True) as tmp:
            part = self._label(teachers, items, transform, tmp, description, (start, stop), start == 0)
            write_shard_record(tmp, start, stop, part)
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
        shards = load_shards(shard_dirs)
        with atomic_directory(output_dir, overwrite=True) as tmp:
            part = merge_shard_files(tmp, shards, self._subfolders())
            stats = finish_set(tmp, part, extra_stats)
        for d, _ in shards:
            shutil.rmtree(d, ignore_errors=True)
        figure = output_dir / PseudoLabelResult.FIGURE
        return PseudoLabelResult(
            items=[moved_row(it, tmp, output_dir) for it in part.rows],
            stats=stats,
            output_dir=str(output_dir),
            figure_path=str(figure) if part.figure_path is not None else None,
        )

    # ------------------------------------------------------------------ the steps of a pass
    def _check_method(self) -> None:
        if not self.method.makes_pseudo_labels:
            raise ValueError(f"method {self.method.name!r} makes no pseudo-labels")

    def _subfolders(self) -> tuple[str, ...]:
        return ("images", "labels", "ims") if self.settings.save_masked_images else ("labels", "ims")

    def _label(
        self,
        teachers: Sequence[torch.nn.Module],
        items: Sequence[Mapping[str, Any]],
        transform: Callable,
        tmp: Path,
        description: str,
        span: tuple[int, int],
        draw_figure: bool,
    ) -> LabelledRun:
        """Label ``items[start:stop]`` (``span``) batch by batch into the folder ``tmp`` being written; file
        names and ``source`` indices are those of the whole list."""
        from monai.data import DataLoader, Dataset

        settings = self.settings
        start, stop = span
        items_in = list(items)
        loader = DataLoader(
            Dataset([dict(it) for it in items_in[start:stop]], transform=transform),
            batch_size=settings.batch_size,
            shuffle=False,
            num_workers=settings.num_workers,
        )
        teachers = [self.run_settings.prepare_network(t, self.device).eval() for t in teachers]
        part = LabelledRun()
        files = PseudoLabelFormat(self.method.mode, settings.label_scale, settings.compress_level)
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
            batches = map(self._ready, loader)
            if settings.num_workers == 0:
                batches = prefetch(batches)
            bar = progress_bar(
                batches,
                desc=description,
                unit="batch",
                total=len(loader),
                disable=not settings.progress,
                leave=False,
            )
            run = PassWriter(
                writers,
                files,
                tmp,
                [item_uid(it, i) for i, it in enumerate(items_in)],
                items_in,
                bar,
                draw_figure and settings.num_figure_images > 0,
                fill_value=settings.fill_value,
                image_scale=settings.image_scale,
                save_masked_images=settings.save_masked_images,
                grid=SourceGrid(),
            )
            previous: Future | None = None
            for batch, volumes, images in bar:  # volumes: each with its affine and transforms, or None
                images = images.to(self.device)
                logits = self.method.predict(teachers, images, self.inferer)
                truth = batch.get("label")
                if previous is not None:
                    previous.result()  # raises what went wrong in the previous batch
                previous = post.submit(self._post, run, part, start, images, logits, truth, volumes)
                start += images.shape[0]
            if previous is not None:
                previous.result()
            for f in run.pending:
                f.result()
            part.figure_path = run.drawn.result() if run.drawn is not None else None
        return part

    def _ready(self, batch: Mapping[str, Any]) -> tuple[Mapping[str, Any], list[Any] | None, torch.Tensor]:
        """In the reading thread: the images in the teachers' memory format, converted once for all teachers,
        so that on a CPU the main thread only runs the forward passes (the copy to an accelerator keeps the
        layout and stays in the main thread: no batch waits there)."""
        images = self.run_settings.to_memory_format(convert_to_tensor(batch["image"], track_meta=False))
        return batch, batch_volumes(batch["image"]), images

    @torch.no_grad()
    def _post(
        self,
        run: PassWriter,
        part: LabelledRun,
        start: int,
        images: torch.Tensor,
        logits: torch.Tensor,
        truth: Any,
        volumes: list[Any] | None,
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
        truth = convert_to_tensor(truth, track_meta=False).to(self.device) if truth is not None else None
        record_classes(part, probs, result, truth, self.method.mode)
        if truth is not None and self.method.mode != "multiclass":  # foreground IoU of masks
            iou = agreement(result.label > 0, truth > 0, im)
            part.quality.extend(iou.tolist())
            part.quality_kept.extend(iou[accepted].tolist())
        if part.figure is None and run.draw_figure:
            part.figure = figure_sample(
                images,
                probs,
                result,
                self.settings.num_figure_images,
                self.settings.fill_value,
                self.method.mode,
                self.method.threshold,
            )
            # drawn by a writer thread while the teachers go on (matplotlib's Agg canvas, no pyplot)
            run.drawn = run.writers.submit(part.figure.plot, run.tmp / PseudoLabelResult.FIGURE)
        # bound memory: wait for the previous batch's files before queueing this one's
        for f in run.pending:
            f.result()
        run.pending = run.queue(list(range(start, start + n)), images, result, part.rows, volumes)
        run.kept, run.seen = run.kept + part.batches[-1][1], run.seen + n
        run.bar.set_postfix(kept=f"{run.kept}/{run.seen}", refresh=False)
