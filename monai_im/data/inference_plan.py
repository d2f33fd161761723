"""Planning an inference run so that it never loses or overwrites data.

:func:`plan_inference` lists the images of an input folder and pairs each with its output path, as
datalist items ``{"image": input, "output": output}`` for :class:`monai_im.transforms.SaveSegmentationd`
(``output_key="output"``). Every check is done before anything is written, and all problems are
reported together, one per line, in an :class:`InferenceInputError`:

- no output is an input of the run (any input, not only its own: with ``output_dir == input_dir``
  the mask of ``x.png`` must not replace an input called ``x_mask.png``);
- no two inputs share an output. Outputs are named by
  :func:`monai_im.transforms.io.segmentation_file_name`: the input's file name minus its *last*
  extension, plus ``output_postfix``, plus ``.png`` (``.nii.gz`` for NIfTI inputs), so ``scan.v1.png``
  and ``scan.v2.png`` give ``scan.v1_mask.png`` and ``scan.v2_mask.png``. Inputs that still collide,
  such as ``scan.png`` and ``scan.jpg``, are refused, naming both, rather than renamed: a file name
  that depends on which other files are in the folder would surprise. Names are compared without
  regard to case, so that a run behaves the same on case-insensitive file systems;
- existing outputs are kept unless ``overwrite=True``;
- every input decodes fully (pixel data, not only the header) with the reader training uses: a
  truncated PNG or JPEG, a text file named ``.png`` or a broken NIfTI is named and the run is refused,
  so that a run never stops half-way with part of the masks written. A file whose header declares
  more than ``max_voxels`` values is refused from its header alone. The files are decoded once, in
  parallel threads;
- with ``in_channels`` / ``spatial_dims`` (the network's), every input has channels the network takes
  (equal, grey -> N, RGBA -> RGB, RGB -> grey; grey+alpha PNGs are read as grey) and that many
  spatial dimensions: a 2-channel volume or a 3D volume in a 2D run is named, not met after masks
  were written;
- image and volume files in ``input_dir`` that are not inputs of the run (a volume in a 2D run, a PNG
  in a 3D run: their extension is not in ``extensions``) are named, not skipped without a word.

:func:`plan_inference_or_exit` is the form for bundle JSON: the problems end the program as
``error: ...`` lines instead of a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from monai_im.data.datalist import IMAGE_EXTENSIONS
from monai_im.data.file_facts import read_facts
from monai_im.transforms.array import converts_channels
from monai_im.transforms.headers import MAX_VOXELS
from monai_im.transforms.io import segmentation_file_name
from monai_im.utils import as_bool

__all__ = [
    "InferenceInputError",
    "VOLUME_EXTENSIONS",
    "decode_error",
    "input_problem",
    "plan_inference",
    "plan_inference_or_exit",
]

#: Volume files (NIfTI, NRRD, MetaImage), for 3D bundles: ``extensions=VOLUME_EXTENSIONS``; the masks of
#: all of them are written as NIfTI. ``IMAGE_EXTENSIONS + VOLUME_EXTENSIONS`` takes both kinds.
VOLUME_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


class InferenceInputError(ValueError):
    """The inputs or outputs of an inference run are not safe to process; nothing has been written.

    Args:
        problems: one line per problem; the message is these lines joined by newlines.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def _key(path: Path) -> str:
    """A comparison key of a path: absolute, links resolved, case folded."""
    return os.path.normcase(str(path.resolve())).casefold()


def _list_inputs(input_dir: Path, extensions: Sequence[str]) -> tuple[list[Path], list[str]]:
    """The inputs (sorted by name), and one problem per image or volume file that is not an input."""
    if not input_dir.is_dir():
        raise InferenceInputError([f"input folder {input_dir} does not exist"])
    exts = tuple(sorted({e.lower() for e in extensions}))
    known = tuple({e.lower() for e in (*IMAGE_EXTENSIONS, *VOLUME_EXTENSIONS)})
    files = sorted(p for p in input_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    inputs = [p for p in files if p.name.lower().endswith(exts)]
    others = []
    for p in files:
        if p not in inputs and p.name.lower().endswith(known):
            kind = "2D image" if p.name.lower().endswith(tuple(IMAGE_EXTENSIONS)) else "volume"
            others.append(
                f"{p}: a {kind} file, but this run segments {', '.join(exts)} files; move it out of "
                f"{input_dir} (nothing was written)"
            )
    if not inputs:
        raise InferenceInputError([*others, f"no images ({', '.join(exts)}) in {input_dir}"])
    return inputs, others


def _describe(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


def input_problem(
    path: str | os.PathLike,
    in_channels: int | None = None,
    spatial_dims: int | None = None,
    max_voxels: int = MAX_VOXELS,
) -> str | None:
    """Decode one input fully with the reader training uses; one line naming it and what is wrong, or None.

    Args:
        path: the image or volume file.
        in_channels: the network's input channels; None: not checked.
        spatial_dims: the network's spatial dimensions (2 or 3); None: not checked.
        max_voxels: the largest number of values (voxels times channels) its header may declare.
    """
    facts = read_facts(path, max_voxels=max_voxels)
    if facts.error:
        return (
            f"{path}: {facts.error}"
            if facts.size_refused
            else f"{path}: cannot be decoded as an image ({facts.error})"
        )
    channels, spatial = facts.shape[0], facts.shape[1:]
    if spatial_dims is not None and len(spatial) != int(spatial_dims):
        return (
            f"{path}: has {len(spatial)} spatial dimensions (size {_describe(spatial)}); this network "
            f"segments {int(spatial_dims)}D {'volumes' if int(spatial_dims) == 3 else 'images'}: remove it "
            "from the input folder"
        )
    if in_channels is not None and not converts_channels(channels, int(in_channels)):
        return (
            f"{path}: has {channels} channels; the network takes {int(in_channels)} (grey -> N, RGBA -> RGB, "
            "RGB -> grey and grey+alpha -> grey are converted): convert the file or remove it from the input "
            "folder"
        )
    return None


def decode_error(path: str | os.PathLike, max_voxels: int = MAX_VOXELS) -> str | None:
    """Decode one image file fully; return one line naming the file and what is wrong, or None if it is fine.

    The file is read as training reads it (:func:`monai_im.data.file_facts.read_facts`: PIL for 2D
    formats, nibabel for NIfTI, SimpleITK for NRRD and MetaImage), every pixel, so that a truncated
    file is found; a header declaring more than ``max_voxels`` values is refused unread.

    Args:
        path: the image file.
        max_voxels: the largest number of values (voxels times channels) its header may declare.
    """
    return input_problem(path, max_voxels=max_voxels)


def _decode_problems(
    files: Sequence[Path],
    num_workers: int | None,
    progress: bool,
    in_channels: int | None,
    spatial_dims: int | None,
    max_voxels: int,
) -> list[str]:
    from monai_im.runtime.progress import progress_bar

    workers = max(1, num_workers if num_workers is not None else min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(
            progress_bar(
                pool.map(lambda f: input_problem(f, in_channels, spatial_dims, max_voxels), files),
                total=len(files),
                desc="checking inputs",
                unit="image",
                disable=not progress,
                leave=False,
            )
        )
    return [r for r in results if r is not None]


def _collision_problems(items: Sequence[dict[str, str]]) -> list[str]:
    by_output: dict[str, list[dict[str, str]]] = {}
    for item in items:
        by_output.setdefault(_key(Path(item["output"])), []).append(item)
    problems = []
    for group in by_output.values():
        if len(group) > 1:
            names = [Path(it["image"]).name for it in group]
            listed = " and ".join([", ".join(names[:-1]), names[-1]])
            each = "both" if len(names) == 2 else "all"
            problems.append(
                f"{listed} in {Path(group[0]['image']).parent} would {each} be written to {group[0]['output']}; "
                "rename all but one of them"
            )
    return problems


def _existing_outputs(items: Sequence[dict[str, str]], inputs: Sequence[Path]) -> tuple[list[str], list[str]]:
    """(outputs that would replace an input of the run, existing outputs that are not inputs)."""
    input_keys = {_key(p): p for p in inputs}
    input_inodes = {}
    for p in inputs:
        st = p.stat()
        input_inodes[(st.st_dev, st.st_ino)] = p
    onto_inputs: list[str] = []
    existing: list[str] = []
    for item in items:
        out = Path(item["output"])
        hit = input_keys.get(_key(out))
        if hit is None and out.exists():
            st = out.stat()
            hit = input_inodes.get((st.st_dev, st.st_ino))
        if hit is not None:
            onto_inputs.append(
                f"the output of {Path(item['image']).name}, {out}, would overwrite the input {hit}; "
                "choose another --output_dir or --output_postfix"
            )
        elif out.exists() and str(out) not in existing:
            existing.append(str(out))
    return onto_inputs, existing


def plan_inference(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    output_postfix: str = "_mask",
    overwrite: bool = False,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    check_decodes: bool = True,
    num_workers: int | None = None,
    progress: bool = True,
    in_channels: int | None = None,
    spatial_dims: int | None = None,
    max_voxels: int = MAX_VOXELS,
) -> list[dict[str, str]]:
    """Datalist items ``{"image": input, "output": output}`` for every image of ``input_dir``, checked.

    The inputs are the files directly inside ``input_dir`` whose name ends with one of ``extensions``
    (hidden files, whose name starts with ``.``, are left out), sorted by name; paths are absolute; other
    image or volume files there are refused (named), other files ignored. The output of ``<name>.<ext>``
    is ``<output_dir>/<name><output_postfix>.png`` (``.nii.gz`` for volume inputs), only the last
    extension being removed. Nothing is written here, not even ``output_dir``.

    Args:
        input_dir: the folder of images to segment.
        output_dir: the folder for the masks; may be ``input_dir`` (then no mask may replace an input).
        output_postfix: appended to each input's name without its last extension; no path separators.
        overwrite: replace existing outputs; otherwise they are kept and the run is refused.
            An output that is an input of the run is refused either way.
        extensions: the file name endings (case-insensitive) that count as images, e.g.
            ``IMAGE_EXTENSIONS + VOLUME_EXTENSIONS`` for 2D images and volumes.
        check_decodes: decode every input fully before the run (in ``num_workers`` threads) and refuse
            the run if any fails, listing every bad file.
        num_workers: threads for the decode check; None uses up to 8 (the CPU count if smaller).
        progress: show a progress bar while the inputs are decoded.
        in_channels: the network's input channels: every input must have channels it takes (checked
            with ``check_decodes``); None: not checked.
        spatial_dims: the network's spatial dimensions: every input must have as many (checked with
            ``check_decodes``); None: not checked.
        max_voxels: the largest number of values (voxels times channels) an input's header may declare.

    Raises:
        InferenceInputError: listing every problem, one per line; nothing has been written.
    """
    overwrite = as_bool(overwrite, "overwrite")
    in_root = Path(input_dir).expanduser().absolute()
    out_root = Path(output_dir).expanduser().absolute()
    if "/" in output_postfix or os.sep in output_postfix:
        raise InferenceInputError([f"output_postfix {output_postfix!r} must not contain a path separator"])
    if out_root.exists() and not out_root.is_dir():
        raise InferenceInputError([f"output folder {out_root} exists and is not a folder"])
    inputs, others = _list_inputs(in_root, extensions)
    items = [
        {"image": str(p), "output": str(out_root / segmentation_file_name(p, output_postfix))} for p in inputs
    ]
    problems = _collision_problems(items)
    onto_inputs, existing = _existing_outputs(items, inputs)
    problems += onto_inputs
    if check_decodes:
        problems += _decode_problems(inputs, num_workers, progress, in_channels, spatial_dims, max_voxels)
    problems += others
    if existing and not overwrite:
        problems.append(
            f"{len(existing)} output file(s) already exist, the first is {existing[0]}; they are kept: "
            "pass --overwrite true to replace them, or choose another --output_dir"
        )
    if problems:
        raise InferenceInputError(problems)
    return items


def plan_inference_or_exit(*args: Any, **kwargs: Any) -> list[dict[str, str]]:
    """:func:`plan_inference`, ending the program with ``error: <problem>`` lines instead of a traceback.

    For bundle JSON, e.g. ``"data": "$monai_im.data.plan_inference_or_exit(@input_dir, @output_dir,
    @output_postfix, @overwrite)"``: a ``SystemExit`` is not wrapped by the config parser, so the user
    sees only the problems, each line prefixed with ``error: ``.

    Args:
        args: positional arguments of :func:`plan_inference`.
        kwargs: keyword arguments of :func:`plan_inference`.
    """
    try:
        return plan_inference(*args, **kwargs)
    except InferenceInputError as e:
        raise SystemExit("\n".join(f"error: {p}" for p in e.problems)) from None
