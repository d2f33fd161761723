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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from monai_im.constants import IM_MODES
from monai_im.io import atomic_write_json, load_json
from monai_im.transforms.array import converts_channels
from monai_im.transforms.encoding import (
    Image2DReader,
    IntensityRange,
    distinct_values,
    image_value_range,
    label_channel_problem,
)
from monai_im.utils import as_bool

__all__ = ["FileFacts", "DatasetCheck", "DatasetCheckError", "read_facts", "load_checked_datalist"]

logger = logging.getLogger("monai_im")

CACHE_NAME = ".dataset_check_cache.json"
#: distinct values kept per mask (enough to show what a mask holds).
MAX_VALUES = 16
#: tolerance of the [0, 1] check of floating-point images.
FLOAT_TOLERANCE = 1e-3


class DatasetCheckError(ValueError):
    """Some files of a dataset cannot be used; ``problems`` holds one line per file."""

    def __init__(self, problems: Sequence[str], summary: str) -> None:
        super().__init__("\n".join([*problems, summary]))
        self.problems = list(problems)
        self.summary = summary


@dataclass
class FileFacts:
    """What decoding one file found (cached between runs)."""

    size: int
    mtime_ns: int
    error: str | None = None
    shape: list[int] = field(default_factory=list)
    dtype: str = ""
    mode: str | None = None
    value_range: list[float] | None = None  # the stored type's range; None for float data
    range_error: str | None = None
    minimum: float = 0.0
    maximum: float = 0.0
    finite: bool = True
    values: list[float] = field(default_factory=list)  # up to MAX_VALUES distinct values
    num_values: int = 0
    channels_identical: bool = True


def _reader_for(path: str | os.PathLike) -> Any:
    """The reader training uses for ``path``: volumes (NIfTI, NRRD, MHA, DICOM) or 2D images."""
    from monai_im.transforms.readers import VolumeReader

    volume = VolumeReader()
    return volume if volume.verify_suffix(str(path)) or Path(path).is_dir() else Image2DReader()


def read_facts(path: str | os.PathLike, with_values: bool = False) -> FileFacts:
    """Decode ``path`` completely (MONAI ``LoadImage`` with the reader training uses) and describe it.

    Args:
        path: the file.
        with_values: also count the distinct values and compare the channels (masks).
    """
    import torch
    from monai.transforms import LoadImage

    st = os.stat(path)
    facts = FileFacts(size=st.st_size, mtime_ns=st.st_mtime_ns)
    try:
        img = LoadImage(image_only=True, dtype=None, ensure_channel_first=True, reader=_reader_for(path))(
            str(path)
        )
    except Exception as e:  # any decoder failure: truncated, not an image, unknown format
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "cannot find a suitable reader" in reason:
            reason = "not a readable image (truncated, corrupt or of an unsupported format)"
        facts.error = reason
        return facts
    t = img.as_tensor()
    facts.shape = [int(s) for s in t.shape]
    facts.mode = img.meta.get("mode") if isinstance(img.meta.get("mode"), str) else None
    facts.dtype = str(t.dtype).replace("torch.", "")
    try:
        bounds = image_value_range(img)
        facts.value_range = list(bounds) if bounds is not None else None
    except ValueError as e:
        facts.range_error = str(e).split(": ", 1)[-1]
    values = t.to(torch.uint8) if t.dtype == torch.bool else t  # integer min/max without a float copy
    if t.is_floating_point():
        facts.finite = bool(torch.isfinite(t).all())
        if not facts.finite:
            values = t[torch.isfinite(t)]
    if values.numel():
        facts.minimum, facts.maximum = float(values.min()), float(values.max())
    if with_values:
        facts.values, facts.num_values = distinct_values(t, MAX_VALUES)
        if t.shape[0] in (3, 4):
            colour = t[:3]
            facts.channels_identical = bool((colour == colour[:1]).all())
    return facts


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.4g}"


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
                and hit.get("size") == st.st_size
                and hit.get("mtime_ns") == st.st_mtime_ns
                and (not is_mask or hit.get("num_values", 0) > 0 or hit.get("error"))
            ):
                out[path] = FileFacts(**hit)
            else:
                todo.append((path, is_mask))
        if todo:
            from monai_im.runtime.progress import progress_bar

            with ThreadPoolExecutor(max_workers=self.num_workers) as pool:
                results = pool.map(lambda a: read_facts(a[0], a[1]), todo)
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
        values = ", ".join(_fmt(v) for v in f.values) + (" ..." if f.num_values > len(f.values) else "")
        if self.mode == "multiclass":
            ok = all(float(v).is_integer() and 0 <= v < self.out_channels for v in f.values)
            if not ok or f.num_values > len(f.values):
                return f"class map holds values {{{values}}}; classes must be integers 0..{self.out_channels - 1}"
        elif f.num_values > 2 and not self.binarize_labels:
            return (
                f"mask holds {f.num_values} distinct values {{{values}}}; a {self.mode} mask holds two "
                f"(e.g. 0/1 or 0/255); fix the masks or set binarize_labels to read them as "
                f"label > {_fmt(self.label_threshold)}"
            )
        return None

    # ------------------------------------------------------------------ the check
    def problems(self, datalist: Mapping[str, Sequence[Mapping[str, Any]]]) -> tuple[list[str], int]:
        """Every problem (one line per file) and the number of files checked."""
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
                report(path, f.error if "image" in f.error else f"cannot be decoded ({f.error})")
            else:
                problem = self.label_problem(f) if files[path] else self.image_problem(f)
                if problem:
                    report(path, problem)
        for entries in datalist.values():
            for item in entries:
                img, lab = facts.get(str(item["image"])), facts.get(str(item.get("label", "")))
                if img is None or lab is None or img.error or lab.error:
                    continue
                if img.shape[1:] != lab.shape[1:]:
                    report(
                        str(item["label"]),
                        f"mask size {'x'.join(map(str, lab.shape[1:]))} differs from its image "
                        f"{item['image']} ({'x'.join(map(str, img.shape[1:]))})",
                    )
        problems_list = list(problems.values())
        if not problems_list and self.mode != "multiclass":
            problems_list += self._rule_problems(datalist, facts)
        return problems_list, len(files)

    def _rule_problems(
        self, datalist: Mapping[str, Sequence[Mapping[str, Any]]], facts: Mapping[str, FileFacts | None]
    ) -> list[str]:
        """A foreground rule that makes every labeled/validation mask empty, or every one full."""
        masks = [
            facts[str(item["label"])]
            for key in ("labeled", "validation")
            for item in datalist.get(key, [])
            if "label" in item
        ]
        masks = [m for m in masks if m is not None]
        if not masks:
            return []
        t = self.label_threshold
        values = sorted({v for m in masks for v in m.values})
        shown = ", ".join(_fmt(v) for v in values[:MAX_VALUES])
        if all(m.maximum <= t for m in masks):
            return [
                f"every labeled and validation mask is empty under the foreground rule label > {_fmt(t)} "
                f"(mask values found: {{{shown}}}); set label_threshold below the foreground value"
            ]
        if all(m.minimum > t for m in masks):
            return [
                f"every labeled and validation mask is all foreground under the rule label > {_fmt(t)} "
                f"(mask values found: {{{shown}}}); set label_threshold to the background value"
            ]
        return []

    def __call__(self, datalist: Mapping[str, Sequence[Mapping[str, Any]]]) -> Mapping[str, Any]:
        """Check ``datalist`` (absolute paths, as from ``load_datalist``); return it unchanged.

        Raises:
            DatasetCheckError: with one line per problem and a summary line.
        """
        problems, n = self.problems(datalist)
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
