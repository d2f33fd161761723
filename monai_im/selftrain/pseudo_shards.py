"""Shards of a pseudo-label set written by several processes, and their merge into the one set a single
pass writes (see :meth:`PseudoLabeler.label_shard` and :meth:`PseudoLabeler.merge_shards`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from monai_im.io import atomic_write_json, load_json
from monai_im.selftrain.pseudo_result import LabelledRun, PseudoLabelResult, relative_row

__all__ = ["SHARD_FILE", "load_shards", "merge_shard_files", "shard_folder", "write_shard_record"]

#: a shard's rows and raw statistics, beside its files
SHARD_FILE = "shard.json"


def shard_folder(output_dir: str | os.PathLike, rank: int) -> Path:
    """Where process ``rank`` writes its shard of the set ``output_dir``: a hidden ``.partial`` sibling,
    which a study removes as a leftover when it starts again after an interruption."""
    output_dir = Path(output_dir)
    return output_dir.with_name(f".{output_dir.name}.shard-{int(rank):04d}.partial")


def write_shard_record(tmp: Path, start: int, stop: int, part: LabelledRun) -> None:
    """``shard.json`` of the shard ``items[start:stop]`` being written in ``tmp``: its rows (paths relative
    to the shard) and raw statistics (per-batch totals, per-image agreements, scores and certainties, the
    per-class counts and Dice)."""
    record = {
        "start": start,
        "stop": stop,
        "rows": [relative_row(it, tmp) for it in part.rows],
        "batches": part.batches,
        "quality": part.quality,
        "quality_kept": part.quality_kept,
        "scores": [s.tolist() for s in part.scores],
        "certainty": [c.tolist() for c in part.certainty],
        "class_voxels": part.class_voxels,
        "class_dice": part.class_dice,
        "class_dice_kept": part.class_dice_kept,
    }
    atomic_write_json(tmp / SHARD_FILE, record)


def load_shards(shard_dirs: Sequence[str | os.PathLike]) -> list[tuple[Path, dict[str, Any]]]:
    """The finished shards' folders and records, in unlabeled order.

    Raises:
        ValueError: a shard is missing its ``shard.json``, or the shards leave a gap or overlap.
    """
    shards = []
    for d in map(Path, shard_dirs):
        if not (d / SHARD_FILE).is_file():
            raise ValueError(f"{d}: not a finished pseudo-label shard (no {SHARD_FILE})")
        shards.append((d, load_json(d / SHARD_FILE)))
    shards.sort(key=lambda s: (s[1]["start"], s[1]["stop"]))
    expected = 0
    for d, record in shards:
        if record["start"] != expected:
            raise ValueError(
                f"{d}: shard starts at item {record['start']}, the previous one ends at {expected}"
            )
        expected = record["stop"]
    return shards


def merge_shard_files(
    tmp: Path, shards: Sequence[tuple[Path, dict[str, Any]]], subfolders: Sequence[str]
) -> LabelledRun:
    """Move the shards' files (and the IM figure) into the set ``tmp`` being written; their rows and raw
    statistics, concatenated in unlabeled order.

    Args:
        tmp: the set's folder being written.
        shards: as :func:`load_shards` returns them.
        subfolders: the file folders of a set (``labels``, ``ims``, and ``images`` when masked images are kept).
    """
    part = LabelledRun()
    for sub in subfolders:
        (tmp / sub).mkdir()
    for d, record in shards:
        for sub in subfolders:
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
        part.certainty += [torch.tensor(c, dtype=torch.float32) for c in record.get("certainty", [])]
        part.class_voxels += record.get("class_voxels", [])
        part.class_dice += record.get("class_dice", [])
        part.class_dice_kept += record.get("class_dice_kept", [])
    return part
