"""The dataset preflight: every file a datalist names is decoded and checked before any training.

A study can run for hours; a truncated JPEG, a three-channel mask, a 0/1 mask read with the wrong
foreground rule or a text file listed as an image must stop it at the start, not after generation 0.
:class:`DatasetCheck` decodes every file once (in parallel threads, with the same reader and rules that
training uses, :mod:`monai_im.transforms.encoding`), checks it against the task and reports every
problem, one line per file, then a one-line summary.

The facts of each file (shape, type, value range, distinct values of masks) are cached by path, size
and modification time in a JSON file outside the dataset folder (the study's output folder), so a
rerun over thousands of images only decodes what changed. The dataset folder itself is never written.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from monai_im.constants import IM_MODES
from monai_im.data.datalist import entry_problems
from monai_im.data.file_facts import FACTS_VERSION, FileFacts, read_facts
from monai_im.data.preflight_rules import (
    dataset_warnings,
    fmt,
    foreground_rule_problems,
    geometry_difference,
)
from monai_im.io import atomic_write_json, load_json
from monai_im.transforms.array import converts_channels
from monai_im.transforms.encoding import IntensityRange, label_channel_problem
from monai_im.transforms.readers import MAX_VOXELS
from monai_im.utils import as_bool

__all__ = ["FileFacts", "DatasetCheck", "DatasetCheckError", "read_facts", "load_checked_datalist"]

logger = logging.getLogger("monai_im")

CACHE_NAME = ".dataset_check_cache.json"
#: tolerance of the [0, 1] check of floating-point images.
FLOAT_TOLERANCE = 1e-3


class DatasetCheckError(ValueError):
    """Some files of a dataset cannot be used; ``problems`` holds one line per file."""

    def __init__(self, problems: Sequence[str], summary: str) -> None:
        super().__init__("\n".join([*problems, summary]))
        self.problems = list(problems)
        self.summary = summary


class DatasetCheck:
    """Check a datalist's files against a task before any training (see the module docstring).

    Checked for every file: it exists and decodes fully; images have a channel count the network can
    take (equal, 1 -> N, RGBA -> RGB, RGB -> grey), ``spatial_dims`` spatial axes, finite values, and,
    with ``intensity_range=None``, a stored type with a known range (floating-point images within
    [0, 1]). Masks have channels the task can use, at most two values per mask for binary and
    multi-label tasks (unless ``binarize_labels``), integer classes ``0..out_channels - 1`` for
    multi-class tasks, and the spatial size of their image. Across the labeled and validation masks,
    a foreground rule under which every mask is empty (or every mask is all foreground) is refused:
    that is the silent failure of 0/1 masks read with a 0/255 threshold.

    Args:
        mode: "binary", "multilabel" or "multiclass".
        in_channels: the network's input channels.
        out_channels: the network's output channels (mask channels / classes).
        spatial_dims: 2 for images, 3 for volumes.
        label_threshold: the foreground rule ``label > label_threshold`` (binary, multi-label).
        binarize_labels: accept masks with more than two values (binarised by the rule).
        intensity_range: the image scaling rule of training (see ``ScaleImageIntensity``).
        cache_dir: folder for the cache file (never the dataset folder); None: no cache.
        num_workers: decoding threads (default: the CPU count, at most 8).
        progress: show a progress bar while decoding.
        allow_misaligned_labels: accept volume labels whose header places them elsewhere than their
            image (spacing, axis directions or origin differ beyond the tolerances of
            :func:`~monai_im.data.preflight_rules.geometry_difference`). Training reads each file by its
            own header: both are reoriented and resampled to ``pixdim`` alone, then paired voxel by
            voxel from their first voxel; an origin offset is not corrected.
        max_voxels: the largest number of values (voxels times channels) a file's header may declare;
            a larger file is refused from its header alone, before any memory is taken.
    """

    def __init__(
        self,
        mode: str = "binary",
        in_channels: int = 3,
        out_channels: int = 1,
        spatial_dims: int = 2,
        label_threshold: float = 0.0,
        binarize_labels: bool = False,
        intensity_range: IntensityRange = None,
        cache_dir: str | os.PathLike | None = None,
        num_workers: int | None = None,
        progress: bool = True,
        allow_misaligned_labels: bool = False,
        max_voxels: int = MAX_VOXELS,
    ) -> None:
        if mode not in IM_MODES:
            raise ValueError(f"Unknown mode {mode!r}; expected one of {', '.join(IM_MODES)}.")
        self.mode = mode
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.spatial_dims = int(spatial_dims)
        self.label_threshold = float(label_threshold)
        self.binarize_labels = as_bool(binarize_labels, "binarize_labels")
        self.intensity_range = intensity_range
        self.cache_file = Path(cache_dir) / CACHE_NAME if cache_dir is not None else None
        self.num_workers = num_workers or min(8, os.cpu_count() or 1)
        self.progress = as_bool(progress, "progress")
        self.allow_misaligned_labels = as_bool(allow_misaligned_labels, "allow_misaligned_labels")
        self.max_voxels = int(max_voxels)
        self.warnings: list[str] = []

    # ------------------------------------------------------------------ decoding
    def _load_cache(self) -> dict[str, Any]:
        if self.cache_file is None or not self.cache_file.is_file():
            return {}
        try:
            raw = load_json(self.cache_file)
            return raw if isinstance(raw, dict) else {}
        except (ValueError, OSError):
            return {}

    def facts(self, files: Mapping[str, bool]) -> dict[str, FileFacts | None]:
        """Facts of every file (``{path: is_mask}``); None for a file that does not exist."""
        cache = self._load_cache()
        out: dict[str, FileFacts | None] = {}
        todo: list[tuple[str, bool]] = []
        for path, is_mask in files.items():
            try:
                st = os.stat(path)
            except OSError:
                out[path] = None
                continue
            hit = cache.get(path)
            if (
                isinstance(hit, dict)
                and hit.get("version") == FACTS_VERSION
                and hit.get("size") == st.st_size
                and hit.get("mtime_ns") == st.st_mtime_ns
                and not hit.get("size_refused")  # re-checked under the current max_voxels
                and hit.get("declared_values", 0) <= self.max_voxels
                and (not is_mask or hit.get("num_values", 0) > 0 or hit.get("error"))
            ):
                out[path] = FileFacts(**hit)
            else:
                todo.append((path, is_mask))
        if todo:
            from monai_im.runtime.progress import progress_bar

            with ThreadPoolExecutor(max_workers=self.num_workers) as pool:
                results = pool.map(lambda a: read_facts(a[0], a[1], self.max_voxels), todo)
                bar = progress_bar(
                    results,
                    total=len(todo),
                    desc="checking dataset files",
                    unit="file",
                    disable=not self.progress or len(todo) < 50,
                    leave=False,
                )
                for (path, _), facts in zip(todo, bar):
                    out[path] = facts
        if self.cache_file is not None and todo:
            merged = {**cache, **{p: asdict(f) for p, f in out.items() if f is not None}}
            try:
                atomic_write_json(self.cache_file, merged, indent=0)
            except OSError as e:  # a read-only output folder must not stop the check
                logger.warning(f"could not write the dataset check cache {self.cache_file}: {e}")
        return out

    # ------------------------------------------------------------------ rules
    def image_problem(self, f: FileFacts) -> str | None:
        if len(f.shape) != self.spatial_dims + 1:
            return (
                f"has {len(f.shape) - 1} spatial dimensions (shape {f.shape[1:]}); "
                f"this task takes {self.spatial_dims}D images"
            )
        c, want = f.shape[0], self.in_channels
        if not converts_channels(c, want):
            return f"image has {c} channels; the network takes {want}"
        if not f.finite:
            return "image holds NaN or infinite values"
        if self.intensity_range is None:
            if f.range_error:
                return f"image: {f.range_error}"
            if f.value_range is None and (f.minimum < -FLOAT_TOLERANCE or f.maximum > 1 + FLOAT_TOLERANCE):
                return (
                    f"floating-point image with values in [{f.minimum:.4g}, {f.maximum:.4g}], not [0, 1]; "
                    "set intensity_range to [low, high] or 'minmax'"
                )
        return None

    def label_problem(self, f: FileFacts) -> str | None:
        if len(f.shape) != self.spatial_dims + 1:
            return (
                f"mask has {len(f.shape) - 1} spatial dimensions; this task takes {self.spatial_dims}D masks"
            )
        problem = label_channel_problem(f.shape[0], self.mode, self.out_channels)
        if problem is not None:
            return f"mask {problem}"
        want = self.out_channels if self.mode == "multilabel" else 1
        if want == 1 and f.shape[0] in (3, 4) and not f.channels_identical:
            return f"mask has {f.shape[0]} different colour channels; a {self.mode} mask needs 1"
        values = ", ".join(fmt(v) for v in f.values) + (" ..." if f.num_values > len(f.values) else "")
        if self.mode == "multiclass":
            ok = all(float(v).is_integer() and 0 <= v < self.out_channels for v in f.values)
            if not ok or f.num_values > len(f.values):
                return f"class map holds values {{{values}}}; classes must be integers 0..{self.out_channels - 1}"
        elif f.num_values > 2 and not self.binarize_labels:
            return (
                f"mask holds {f.num_values} distinct values {{{values}}}; a {self.mode} mask holds two "
                f"(e.g. 0/1 or 0/255); fix the masks or set binarize_labels to read them as "
                f"label > {fmt(self.label_threshold)}"
            )
        return None

    # ------------------------------------------------------------------ the check
    def problems(self, datalist: Mapping[str, Sequence[Mapping[str, Any]]]) -> tuple[list[str], int]:
        """Every problem (one line each) and the number of files checked; warnings go to ``warnings``."""
        files: dict[str, bool] = {}
        for entries in datalist.values():
            for item in entries:
                files.setdefault(str(item["image"]), False)
                if "label" in item:
                    files[str(item["label"])] = True
        facts = self.facts(files)
        problems: dict[str, str] = {}

        def report(path: str, message: str) -> None:
            problems.setdefault(path, f"{path}: {message}")

        for path, f in facts.items():
            if f is None:
                report(path, "file does not exist")
            elif f.error:
                report(
                    path,
                    f.error if f.size_refused or "image" in f.error else f"cannot be decoded ({f.error})",
                )
            else:
                problem = self.label_problem(f) if files[path] else self.image_problem(f)
                if problem:
                    report(path, problem)
        for entries in datalist.values():
            for item in entries:
                img, lab = facts.get(str(item["image"])), facts.get(str(item.get("label", "")))
                if img is not None and lab is not None and not img.error and not lab.error:
                    problem = self.pair_problem(img, lab, str(item["image"]))
                    if problem:
                        report(str(item["label"]), problem)
        problems_list = entry_problems(datalist) + list(problems.values())
        if not problems_list:
            masks = [
                facts[str(item["label"])]
                for key in ("labeled", "validation")
                for item in datalist.get(key, [])
                if "label" in item and facts.get(str(item["label"])) is not None
            ]
            problems_list += foreground_rule_problems(self.mode, self.label_threshold, masks)
        images = {p: f for p, f in facts.items() if f is not None and not files[p] and not f.error}
        self.warnings = dataset_warnings(images, self.intensity_range)
        return problems_list, len(files)

    def pair_problem(self, img: FileFacts, lab: FileFacts, image_path: str) -> str | None:
        """Why a label does not lie on its image (size; geometry of volumes), or None.

        Args:
            img: the image's facts.
            lab: the label's facts.
            image_path: the image file, named in the message.
        """
        if img.shape[1:] != lab.shape[1:]:
            return (
                f"mask size {'x'.join(map(str, lab.shape[1:]))} differs from its image "
                f"{image_path} ({'x'.join(map(str, img.shape[1:]))})"
            )
        if self.allow_misaligned_labels or img.affine is None or lab.affine is None:
            return None
        difference = geometry_difference(lab.affine, img.affine)
        if difference is None:
            return None
        return (
            f"label does not lie on its image {image_path}: {difference} (label vs image); fix the "
            "label's header, or set allow_misaligned_labels to use each file by its own header"
        )

    def __call__(self, datalist: Mapping[str, Sequence[Mapping[str, Any]]]) -> Mapping[str, Any]:
        """Check ``datalist`` (absolute paths, as from ``load_datalist``); return it unchanged.

        Warnings (training runs, but the data may not be what it seems) are logged and kept in
        ``warnings``.

        Raises:
            DatasetCheckError: with one line per problem and a summary line.
        """
        problems, n = self.problems(datalist)
        for warning in self.warnings:
            logger.warning(f"dataset check: {warning}")
        if problems:
            bad = len({p.split(": ", 1)[0] for p in problems})
            raise DatasetCheckError(
                problems,
                f"dataset check failed: {len(problems)} problem(s) in {bad} of {n} files; nothing was trained",
            )
        logger.info(f"dataset check: {n} files decoded and checked, no problems")
        return datalist


def load_checked_datalist(
    dataset_dir: str | os.PathLike,
    check: DatasetCheck | None = None,
    hint: str = "",
    filename: str = "datalist.json",
) -> dict[str, list[dict[str, Any]]]:
    """Read ``<dataset_dir>/datalist.json`` and run the preflight; bad input ends the program in plain lines.

    This is the bundles' entry point: a missing folder, a malformed datalist or any bad file prints the
    problems (one line each) and a summary to stderr and exits with status 1, without a traceback,
    before any training starts.

    Args:
        dataset_dir: the dataset folder.
        check: the preflight (None: only the datalist's structure and file existence are checked).
        hint: how to make a dataset, appended when the folder or datalist is missing.
        filename: the datalist inside the folder.
    """
    from monai_im.data.datalist import load_datalist

    try:
        datalist = load_datalist(
            dataset_dir, filename=filename, hint=hint, exit_on_missing=True, check_files=check is None
        )
        if check is not None:
            check(datalist)
    except DatasetCheckError as e:
        for line in e.problems:
            print(f"error: {line}", file=sys.stderr)
        raise SystemExit(f"error: {e.summary}") from None
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    return datalist
