"""Finding and checking the FLARE22 cases for :mod:`monai_im.datasets.prepare_flare22`: the labelled and
unlabeled folders, the case ids, the headers and label values, the output folder's safety, and the
seeded splits; every check runs before any file is written and fails naming the file."""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monai_im.data.datalist import split_labeled
from monai_im.datasets.flare_like import FLARE22_LABELS
from monai_im.datasets.prepare_images import DataPreparationError, SizeMismatchError, parallel_map
from monai_im.runtime.progress import progress_bar

__all__ = [
    "MAX_LABEL",
    "NIFTI_SUFFIXES",
    "Flare22Case",
    "case_id",
    "check_headers",
    "check_label_values",
    "check_output_dir",
    "find_labeled_folders",
    "find_unlabeled_folders",
    "list_labeled_cases",
    "list_unlabeled_cases",
    "split_cases",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
CHANNEL = re.compile(r"_(\d{4})$")
MAX_LABEL = len(FLARE22_LABELS)


@dataclass(frozen=True)
class Flare22Case:
    """One case: its id, CT image and (for the labelled cases) label file."""

    case_id: str
    image: Path
    label: Path | None = None


# --------------------------------------------------------------------------- finding the cases


def case_id(path: str | os.PathLike, image: bool = True) -> str:
    """The case id of a NIfTI file name: without ``.nii.gz``/``.nii`` and, for an image, without ``_0000``.

    Raises:
        DataPreparationError: an image of another channel (``_0001`` ...): FLARE22 CT has one channel.
    """
    name = Path(path).name
    stem = next((name[: -len(s)] for s in NIFTI_SUFFIXES if name.lower().endswith(s)), name)
    match = CHANNEL.search(stem) if image else None
    if match:
        if match.group(1) != "0000":
            raise DataPreparationError(
                f"{path}: channel {match.group(1)}, but FLARE22 CT has only channel 0000"
            )
        stem = stem[: match.start()]
    return stem


def _nifti_files(folder: Path, image: bool) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(NIFTI_SUFFIXES):
            key = case_id(path, image)
            if key in out:
                raise DataPreparationError(
                    f"{folder}: case {key} is there twice: {out[key].name} and {path.name}"
                )
            out[key] = path
    return out


def _subfolders(root: Path, depth: int) -> list[Path]:
    """``root`` and its visible subfolders down to ``depth`` levels, breadth first, sorted per level."""
    levels, level = [root], [root]
    for _ in range(depth):
        level = sorted(
            p for f in level for p in f.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))
        )
        levels += level
    return levels


def find_labeled_folders(
    data_dir: str | os.PathLike,
    images: Sequence[str] = ("imagesTr", "images"),
    labels: Sequence[str] = ("labelsTr", "labels"),
    depth: int = 3,
) -> tuple[Path, Path]:
    """The ``(images, labels)`` folders of the labelled cases: in ``data_dir`` or a subfolder of it.

    Raises:
        DataPreparationError: neither is found, or one of the pair is missing.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data folder not found")
    half = None
    for folder in _subfolders(root, depth):
        found = [
            next((folder / n for n in names if (folder / n).is_dir()), None) for names in (images, labels)
        ]
        if all(found):
            return found[0], found[1]  # type: ignore[return-value]
        if any(found) and half is None:
            half = (folder, found)
    if half is not None:
        folder, (image_dir, label_dir) = half
        missing = "/".join(labels) if label_dir is None else "/".join(images)
        raise DataPreparationError(
            f"{folder}: found {(image_dir or label_dir).name}/ but no {missing}/ folder"
        )
    raise DataPreparationError(
        f"{root}: no {'/'.join(images)}/ and {'/'.join(labels)}/ folders (looked {depth} levels deep); "
        "point --data-dir at the FLARE22 training data"
    )


def list_labeled_cases(images_dir: Path, labels_dir: Path) -> list[Flare22Case]:
    """The labelled cases, sorted by id; every image needs its label and every label its image."""
    images, labels = _nifti_files(images_dir, image=True), _nifti_files(labels_dir, image=False)
    for key, path in images.items():
        if key not in labels:
            raise DataPreparationError(f"{path}: no label {labels_dir / (key + '.nii.gz')} for this image")
    for key, path in labels.items():
        if key not in images:
            raise DataPreparationError(
                f"{path}: no image {images_dir / (key + '_0000.nii.gz')} for this label"
            )
    if not images:
        raise DataPreparationError(f"{images_dir}: no NIfTI images (.nii.gz, .nii)")
    return [Flare22Case(key, images[key], labels[key]) for key in sorted(images)]


def find_unlabeled_folders(data_dir: str | os.PathLike, depth: int = 2) -> list[Path]:
    """Folders under ``data_dir`` (``depth`` levels) whose name holds "unlabeled" (any case), outermost only."""
    found: list[Path] = []
    for folder in _subfolders(Path(data_dir), depth)[1:]:
        if "unlabeled" in folder.name.lower() and not any(f in folder.parents for f in found):
            found.append(folder)
    return sorted(found)


def list_unlabeled_cases(folders: Sequence[Path], exclude: Collection[str] = ()) -> list[Flare22Case]:
    """The images directly inside ``folders`` (and in an ``images``/``imagesTr`` folder of them), sorted by id."""
    out: dict[str, Path] = {}
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: unlabeled folder not found")
        for sub in (folder, *(folder / n for n in ("images", "imagesTr") if (folder / n).is_dir())):
            for key, path in _nifti_files(sub, image=True).items():
                if key in out or key in exclude:
                    other = out.get(key, "the labelled cases")
                    raise DataPreparationError(f"{path}: case {key} is also in {other}")
                out[key] = path
    return [Flare22Case(key, out[key]) for key in sorted(out)]


# --------------------------------------------------------------------------- checks


def _header(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine of a 3D NIfTI file, from its header only."""
    import nibabel as nib

    try:
        img = nib.load(path)
    except Exception as e:  # nibabel raises several types for bad files
        raise DataPreparationError(f"{path}: not a readable NIfTI file ({e})") from e
    shape = tuple(int(n) for n in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise DataPreparationError(f"{path}: expected a 3D volume, found shape {shape}")
    return shape, np.asarray(img.affine, dtype=np.float64)


def check_headers(cases: Sequence[Flare22Case], progress: bool = True, atol: float = 1e-3) -> None:
    """Every image is 3D NIfTI; every label has its image's shape and affine (within ``atol`` mm)."""
    for case in progress_bar(cases, desc="check headers", disable=not progress, leave=False):
        shape, affine = _header(case.image)
        if case.label is None:
            continue
        label_shape, label_affine = _header(case.label)
        if label_shape != shape:
            raise SizeMismatchError(
                f"{case.label}: shape {label_shape} differs from its image's {shape} ({case.image})"
            )
        if not np.allclose(label_affine, affine, rtol=0.0, atol=atol):
            raise DataPreparationError(
                f"{case.label}: affine {np.round(label_affine, 3).tolist()} differs from its image's "
                f"{np.round(affine, 3).tolist()} ({case.image})"
            )


def _bad_label_values(path: Path) -> list[float]:
    """Up to five values of a label file that are not integers in 0..13 (worker function)."""
    import nibabel as nib

    data = np.asanyarray(nib.load(path).dataobj)
    if (
        data.min() >= 0
        and data.max() <= MAX_LABEL
        and (np.issubdtype(data.dtype, np.integer) or np.all(data == np.rint(data)))
    ):
        return []
    values = np.unique(data)
    bad = values[(values < 0) | (values > MAX_LABEL) | (values != np.rint(values))]
    return [float(v) for v in bad[:5]]


def check_label_values(
    cases: Sequence[Flare22Case], workers: int | None = None, progress: bool = True
) -> None:
    """Every label holds only the integers 0..13 (the voxel data of each label is read)."""
    labelled = [c.label for c in cases if c.label is not None]
    found = parallel_map(_bad_label_values, labelled, workers=workers, desc="check labels", progress=progress)
    for path, bad in zip(labelled, found):
        if bad:
            shown = ", ".join(f"{v:g}" for v in bad)
            raise DataPreparationError(
                f"{path}: label values {shown} outside 0..{MAX_LABEL} (FLARE22 has 13 organs)"
            )


def check_output_dir(out_dir: str | os.PathLike, inputs: Sequence[Path], overwrite: bool = False) -> bool:
    """Refuse an unsafe output folder; return whether an existing (empty) ``out_dir`` is to be replaced.

    Unsafe: inside an input folder, holding an input folder, a file, or a non-empty folder without
    ``overwrite``.
    """
    out = Path(out_dir).resolve()
    for folder in inputs:
        inp = Path(folder).resolve()
        if out == inp or inp in out.parents:
            raise DataPreparationError(
                f"output {out_dir} is inside the input folder {folder}; choose a folder outside it"
            )
        if out in inp.parents:
            raise DataPreparationError(
                f"output {out_dir} holds the input folder {folder}; replacing it would delete the input"
            )
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} already exists and is not empty; pass --overwrite to replace it")
    return path.exists()


def split_cases(
    ids: Sequence[str], num_val: int, num_test: int, labeled_fraction: float = 1.0, seed: int = 42
) -> dict[str, list[str]]:
    """Seeded split of the labelled case ids into labeled / unlabeled / validation / test (each sorted).

    Validation and test come first from one permutation; ``labeled_fraction`` of the rest stay
    labelled (at least one), the others are ``unlabeled`` (with their hidden label).
    """
    if num_val < 0 or num_test < 0:
        raise ValueError(f"num_val and num_test must not be negative, got {num_val} and {num_test}")
    if num_val + num_test >= len(ids):
        raise ValueError(
            f"{len(ids)} labelled cases cannot give {num_val} validation and {num_test} test cases and keep one "
            "to train on; lower --num-val/--num-test"
        )
    order = [sorted(ids)[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    val, test, rest = (
        order[:num_val],
        order[num_val : num_val + num_test],
        sorted(order[num_val + num_test :]),
    )
    labeled, unlabeled = split_labeled(rest, labeled_fraction=labeled_fraction, seed=seed)
    return {"labeled": labeled, "unlabeled": unlabeled, "validation": sorted(val), "test": sorted(test)}
