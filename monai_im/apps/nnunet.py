"""Export a study's labeled cases and IM-filtered pseudo-labels as an nnU-Net v2 raw dataset.

::

    python -m monai_im.apps.nnunet runs/flare22_im nnUNet_raw --datalist data/flare22 --dataset-id 501 \\
        --name FlareIM --class-names liver right_kidney ...

writes ``nnUNet_raw/Dataset501_FlareIM/`` (built under a temporary name, renamed when complete)::

    imagesTr/labeled_<i>_0000.nii.gz    the labeled images, copied
    imagesTr/pseudo_<s>_0000.nii.gz     the pseudo-labeled images (``s``: index in the unlabeled list)
    labelsTr/<case>.nii.gz              class maps 0..N; pseudo-labels carry N + 1 ("ignore") in the IM
    dataset.json                        channel_names, labels (with "ignore"), numTraining, file_ending
    cases.json                          where every case comes from (not read by nnU-Net)

Only accepted pseudo-labels are written by a study (rejected images have no files), so exactly the rows
of ``generation_<g>/pseudo_labels/datalist.json`` are exported. Where the teachers disagreed (the IM)
the label is nnU-Net's ignore label: its partial loss skips those voxels, as the IM students do.

The grid: every case keeps its source image's own grid. A volume's pseudo-label and IM lie on it (sets of
earlier versions: on the resampled training grid, the bundle's ``pixdim``, RAS); they are mapped onto the
source image, nearest neighbour, in scanner coordinates, and voxels outside their grid are ignored. The image
is copied unchanged (NIfTI) or converted as read (NRRD, MHA, DICOM, 4D NIfTI: one file per channel), so
nnU-Net sees native intensities and spacings and plans the same target spacing as for the labeled
cases. 2D images (PNG output, RGB or grayscale) get their pseudo-label resized back to the image size.
Multi-label studies (several masks per image) have no single label map and are refused.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_im.apps.nnunet_cases import (
    GRAY_MODES,
    IGNORE,
    ExportCase,
    ExportLabels,
    fail,
    write_image_case,
    write_volume_case,
)
from monai_im.data.datalist import PATH_FIELDS, load_datalist
from monai_im.io import atomic_directory, atomic_write_json, load_json
from monai_im.runtime.progress import progress_bar
from monai_im.selftrain.layout import StudyLayout, dataset_fingerprint
from monai_im.selftrain.pseudo_label import PseudoLabelResult
from monai_im.transforms.io import VOLUME_FILE_EXTENSIONS

__all__ = ["CASES_FILE", "IGNORE", "export_nnunet", "main"]

logger = logging.getLogger("monai_im")

#: the export's record of each case's origin, beside ``dataset.json``.
CASES_FILE = "cases.json"
_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _is_volume(path: str) -> bool:
    return Path(path).is_dir() or str(path).lower().endswith(VOLUME_FILE_EXTENSIONS)


def _identity(layout: StudyLayout) -> dict[str, Any]:
    if not layout.identity_file.is_file():
        fail(f"no such study: {layout.root} holds no {StudyLayout.IDENTITY}")
    return load_json(layout.identity_file)


def _pseudo_labels(layout: StudyLayout, generation: int | None) -> tuple[int, PseudoLabelResult]:
    """The pseudo-label set of ``generation`` (default: the last generation that has one)."""
    if generation is not None:
        found = PseudoLabelResult.load(layout.pseudo_label_dir(int(generation)))
        if found is None:
            fail(
                f"generation {generation} of {layout.root} has no pseudo-labels (no finished pseudo_labels/)"
            )
        return int(generation), found
    for folder in reversed(layout.generation_dirs()):
        g = int(folder.name.rsplit("_", 1)[1])
        if (found := PseudoLabelResult.load(layout.pseudo_label_dir(g))) is not None:
            return g, found
    fail(f"no generation of {layout.root} has pseudo-labels (the method makes none, or none was finished)")


def _datalist(
    datalist: str | os.PathLike | Mapping[str, Any] | None, identity: Mapping[str, Any]
) -> tuple[dict[str, list[dict[str, Any]]], Path | None]:
    """The study's datalist (absolute paths) and its folder, checked against the study's fingerprint."""
    if datalist is None:
        fail("a study folder does not record its dataset: give the datalist (--datalist DATASET_DIR)")
    if isinstance(datalist, Mapping):
        data = {k: [dict(it) for it in v] for k, v in datalist.items()}
        files = [os.path.abspath(it[k]) for v in data.values() for it in v for k in PATH_FIELDS if k in it]
        common = Path(os.path.commonpath([os.path.dirname(f) for f in files])) if files else None
        folder = common if common is not None and common.parent != common else None  # not a filesystem root
    else:
        path = Path(datalist).expanduser().resolve()
        folder, name = (path.parent, path.name) if path.is_file() else (path, "datalist.json")
        try:
            data = load_datalist(folder, filename=name, required=("labeled",), check_images=False)
        except (OSError, ValueError) as e:
            fail(str(e).splitlines()[0])
    expected = identity.get("dataset", {}).get("fingerprint")
    if expected and dataset_fingerprint(data) != expected:
        fail("the datalist is not the dataset the study trained on (its fingerprint differs from study.json)")
    return data, folder


def _cases(
    data: Mapping[str, Sequence[Mapping[str, Any]]], pseudo: PseudoLabelResult, g: int
) -> list[ExportCase]:
    cases = [
        ExportCase(f"labeled_{i:04d}", str(it["image"]), str(it["label"]), False, info={"kind": "labeled"})
        for i, it in enumerate(data.get("labeled", []))
    ]
    unlabeled = data.get("unlabeled", [])
    for row in pseudo.items:
        if "source" not in row:
            fail(f"{pseudo.output_dir}: a pseudo-label set of an older version (rows without 'source')")
        s = int(row["source"])
        if not 0 <= s < len(unlabeled) or Path(unlabeled[s]["image"]).name != Path(row["image"]).name:
            fail(f"pseudo-label of {row['image']}: not unlabeled image {s} of the datalist")
        info = {
            "kind": "pseudo",
            "generation": g,
            "source": s,
            **({"score": row["score"]} if "score" in row else {}),
        }
        cases.append(
            ExportCase(f"pseudo_{s:04d}", str(unlabeled[s]["image"]), row["label"], True, row.get("im"), info)
        )
    return cases


def _labels(
    mode: str, class_names: Sequence[str] | None, num_classes: int | None, threshold: float
) -> ExportLabels:
    if mode == "multilabel":
        fail("a multi-label study (several masks per image) has no single nnU-Net label map; not exported")
    if mode not in ("binary", "multiclass"):
        fail(f"the study's task mode {mode!r} is not binary or multiclass")
    if class_names is not None:
        names = tuple(str(n) for n in class_names)
    elif mode == "binary":
        names = ("foreground",)
    elif num_classes is None:
        fail("a multiclass study needs its class names (--class-names) or --num-classes")
    else:
        names = tuple(f"class_{c}" for c in range(1, int(num_classes)))
    expected = 1 if mode == "binary" else (None if num_classes is None else int(num_classes) - 1)
    if not names or (expected is not None and len(names) != expected):
        fail(f"{len(names)} class names for {mode} labels with {expected} foreground classes")
    if len(set(names)) != len(names) or {"background", IGNORE} & set(names):
        fail(f"class names must be unique and not 'background' or '{IGNORE}': {list(names)}")
    return ExportLabels(mode, names, float(threshold))


def _target(
    out_dir: str | os.PathLike, dataset_id: int, name: str, inside: Sequence[Path], overwrite: bool
) -> Path:
    """The dataset folder ``<out_dir>/Dataset<id>_<name>``, checked before any work."""
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        fail(f"the dataset id must be an integer 1..999, got {dataset_id!r}")
    if not _NAME.fullmatch(str(name)):
        fail(f"the dataset name may hold letters, digits, '_' and '-' only, got {name!r}")
    folder = Path(out_dir).expanduser().resolve() / f"Dataset{dataset_id:03d}_{name}"
    for root in inside:
        if folder == root or root in folder.parents:
            fail(f"the output {folder} lies inside {root}; choose a folder outside the study and the dataset")
    taken = sorted(
        p.name for p in folder.parent.glob(f"Dataset{dataset_id:03d}_*") if p != folder and p.is_dir()
    )
    if taken:
        fail(f"dataset id {dataset_id} is taken by {folder.parent / taken[0]}; choose another --dataset-id")
    if folder.exists() and not overwrite:
        fail(f"{folder} already exists; pass --overwrite to replace it")
    return folder


def _channel_names(
    names: Sequence[str] | None, channels: int, volumes: bool, identity: Mapping[str, Any]
) -> list[str]:
    if names is not None:
        if len(names) != channels:
            fail(f"{len(names)} channel names for images of {channels} channel(s)")
        return [str(n) for n in names]
    if not volumes:
        return ["R", "G", "B"] if channels == 3 else ["gray"]
    windowed = identity.get("protocol", {}).get("params", {}).get("intensity_window") is not None
    # Hounsfield units (a CT window in training): nnU-Net's CT normalisation; otherwise z-scoring
    return ["CT"] if channels == 1 and windowed else ["zscore"] * channels


def _is_rgb(first_image: str, channel_names: Sequence[str] | None) -> bool:
    """Whether a 2D export writes RGB images: three channel names, or else a first image that is not gray."""
    from PIL import Image

    if channel_names is not None:
        return len(channel_names) == 3
    with Image.open(first_image) as first:
        return first.mode not in GRAY_MODES


def _write_cases(
    cases: Sequence[ExportCase], folder: Path, labels: ExportLabels, volumes: bool, rgb: bool, progress: bool
) -> tuple[list[dict[str, Any]], int]:
    """Write every case into ``folder/imagesTr`` and ``folder/labelsTr``; their records and channel count."""
    (folder / "imagesTr").mkdir()
    (folder / "labelsTr").mkdir()
    rows = []
    for case in progress_bar(cases, desc="nnU-Net export", unit="case", disable=not progress):
        done = (
            write_volume_case(case, folder, labels)
            if volumes
            else write_image_case(case, folder, labels, rgb)
        )
        rows.append({"case": case.name, "image": case.image, "label": case.label, **case.info, **done})
    counts = sorted({r["channels"] for r in rows})
    if len(counts) > 1:
        fail(f"the images have different channel counts {counts}; nnU-Net needs the same for all")
    return rows, counts[0]


def export_nnunet(
    study_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    generation: int | None = None,
    dataset_id: int = 501,
    dataset_name: str = "IM",
    channel_names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    overwrite: bool = False,
    datalist: str | os.PathLike | Mapping[str, Any] | None = None,
    num_classes: int | None = None,
    label_threshold: float = 0.0,
    progress: bool = True,
) -> Path:
    """Write a study's labeled cases and one generation's pseudo-labels as the nnU-Net v2 raw dataset
    ``<out_dir>/Dataset<dataset_id>_<dataset_name>`` (see the module docstring); returns that folder.

    Args:
        study_dir: the study folder (``output_dir`` of the run).
        out_dir: the folder receiving the dataset folder (nnU-Net's ``nnUNet_raw``); not inside the study
            or the dataset.
        generation: whose pseudo-labels (``generation_<g>/pseudo_labels``); None: the last generation with some.
        dataset_id: nnU-Net's dataset id, 1..999 (500 and above are free for own datasets).
        dataset_name: letters, digits, ``_`` and ``-``.
        channel_names: one per image channel (``["CT"]``, ``["R", "G", "B"]``...); None: ``CT`` for a volume
            study trained with an intensity window, ``zscore`` otherwise, ``R, G, B`` or ``gray`` for 2D.
        class_names: the foreground classes, label values 1..N (binary: one name, default ``foreground``).
        overwrite: replace an existing dataset folder of the same id and name.
        datalist: the dataset folder (or its datalist file) the study trained on, or the datalist itself;
            the study folder does not record it. Checked against the study's fingerprint.
        num_classes: classes including background (multiclass studies without ``class_names``).
        label_threshold: binary ground-truth masks are foreground where ``label > label_threshold``.
        progress: show a progress bar over the cases.

    Raises:
        SystemExit: one line, before anything is written, for a missing study, a generation without
            pseudo-labels, a multi-label study, a wrong datalist or option, an existing output; while
            writing, for label values outside the classes or a label whose shape is not its image's.
    """
    layout = StudyLayout(Path(study_dir).expanduser().resolve())
    identity = _identity(layout)
    labels = _labels(
        identity.get("strategy", {}).get("mode", "binary"), class_names, num_classes, label_threshold
    )
    data, data_folder = _datalist(datalist, identity)
    g, pseudo = _pseudo_labels(layout, generation)
    cases = _cases(data, pseudo, g)
    volumes = _is_volume(pseudo.items[0]["label"] if pseudo.items else cases[0].image)
    inside = [layout.root, *([data_folder] if data_folder is not None else [])]
    folder = _target(out_dir, dataset_id, dataset_name, inside, bool(overwrite))
    rgb = not volumes and _is_rgb(cases[0].image, channel_names)
    with atomic_directory(folder, overwrite=bool(overwrite)) as tmp:
        rows, channels = _write_cases(cases, tmp, labels, volumes, rgb, progress)
        names = _channel_names(channel_names, channels, volumes, identity)
        description = f"{len(pseudo.items)} IM pseudo-labels of generation {g} of {layout.root.name}"
        atomic_write_json(
            tmp / "dataset.json",
            {
                "name": folder.name,
                "description": f"{sum(not c.pseudo for c in cases)} labeled cases and {description}",
                "channel_names": {str(i): n for i, n in enumerate(names)},
                "labels": labels.as_dict(),
                "numTraining": len(cases),
                "file_ending": ".nii.gz" if volumes else ".png",
            },
        )
        atomic_write_json(tmp / CASES_FILE, {"study": str(layout.root), "generation": g, "cases": rows})
    logger.info(f"nnU-Net dataset written: {folder} ({len(cases)} cases)")
    return folder


def main(argv: Sequence[str] | None = None) -> Path:
    """The command line: ``python -m monai_im.apps.nnunet STUDY_DIR OUT_DIR --datalist DATASET [options]``."""
    parser = argparse.ArgumentParser(
        prog="python -m monai_im.apps.nnunet",
        description="Export a finished study's labeled cases and IM-filtered pseudo-labels as an nnU-Net v2 raw "
        "dataset OUT_DIR/Dataset<id>_<name> (IM voxels get nnU-Net's 'ignore' label). Then: "
        "nnUNetv2_plan_and_preprocess -d <id> --verify_dataset_integrity; nnUNetv2_train <id> 3d_fullres 0.",
    )
    parser.add_argument("study_dir", help="the study folder (output_dir of the bundle run)")
    parser.add_argument("out_dir", help="where the dataset folder goes, e.g. your nnUNet_raw folder")
    parser.add_argument(
        "--datalist", required=True, help="the dataset folder (or datalist.json) of the study"
    )
    parser.add_argument(
        "--generation", type=int, help="whose pseudo-labels (default: the last generation with some)"
    )
    parser.add_argument("--dataset-id", type=int, default=501, help="nnU-Net dataset id 1..999 (default 501)")
    parser.add_argument("--name", default="IM", help="dataset name: letters, digits, _ and - (default IM)")
    parser.add_argument("--channel-names", nargs="+", help="one per image channel, e.g. CT, or R G B")
    parser.add_argument("--class-names", nargs="+", help="the foreground classes, label values 1..N")
    parser.add_argument(
        "--num-classes", type=int, help="classes including background (without --class-names)"
    )
    parser.add_argument(
        "--label-threshold", type=float, default=0.0, help="binary masks: label > this (default 0)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = parser.parse_args(argv)
    return export_nnunet(
        a.study_dir,
        a.out_dir,
        generation=a.generation,
        dataset_id=a.dataset_id,
        dataset_name=a.name,
        channel_names=a.channel_names,
        class_names=a.class_names,
        overwrite=a.overwrite,
        datalist=a.datalist,
        num_classes=a.num_classes,
        label_threshold=a.label_threshold,
        progress=not a.no_progress,
    )


if __name__ == "__main__":
    print(main())
