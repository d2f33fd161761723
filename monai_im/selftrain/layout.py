"""The files of a study folder: where they live, what the folder holds, and how it is checked.

A study folder (``output_dir``) looks like::

    study.json                      what the folder holds: method, seed, protocol, dataset fingerprint
    generation_<g>/
        student_<k>/model.pt        the student's best checkpoint
        student_<k>/result.json     the finished student (a :class:`StudentResult`)
        pseudo_labels/              the finished pseudo-label set of generation g (g >= 1)
        im_figure.png
        summary.json                the finished generation
    model.pt                        the best student of the last generation
    results.json                    the whole study

Every path stored in these JSON files is relative to the study folder and is resolved against
the folder the files are read from, so a study folder that is moved or copied resumes from its
own files. Files written by older versions hold absolute paths; they still load (see
:meth:`StudyLayout.absolute`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_im.data.datalist import PATH_FIELDS
from monai_im.io import atomic_write_json, load_json
from monai_im.selftrain.student import StudentResult
from monai_im.utils import as_bool

__all__ = ["StudyLayout", "StudyMismatchError", "dataset_fingerprint", "study_identity"]

logger = logging.getLogger("monai_im")

_GENERATION = re.compile(r"generation_(\d+)")
#: identity entries that describe the study but do not decide whether two studies are the same (the
#: dataset's display name: the dataset itself is its fingerprint)
_INFORMATIVE = ("dataset.images", "protocol.params.dataset")


class StudyMismatchError(ValueError):
    """The output folder holds another study (a different method, seed, protocol or dataset)."""


def _file_size(path: str | os.PathLike) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


def _common_folder(files: Sequence[str]) -> str | None:
    """The deepest folder holding every file, or None when that is a filesystem root (or a drive)."""
    if not files:
        return None
    try:
        root = os.path.commonpath([os.path.dirname(f) for f in files])
    except ValueError:  # different drives
        return None
    return None if os.path.dirname(root) == root else root


def dataset_fingerprint(datalist: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """A sha256 of a datalist that survives moving the dataset folder but not changing a file.

    Every entry contributes its split, its non-path fields, and for each path field (image, label,
    im) the path relative to the dataset folder (the deepest folder holding every file of the
    datalist; the file name alone when the files share no folder below the filesystem root) and
    the file size (-1 for a missing file). Entries are sorted, so their order does not matter.
    Sizes, not contents, are hashed: cheap for tens of thousands of files, and an edited image
    almost always changes size, but a change that keeps every size is not noticed.

    Args:
        datalist: ``{split: [entry, ...]}`` as returned by :func:`monai_im.data.load_datalist`.
    """
    files = [
        os.path.abspath(entry[f])
        for entries in datalist.values()
        for entry in entries
        for f in PATH_FIELDS
        if f in entry
    ]
    root = _common_folder(files)
    rows = []
    for split, entries in datalist.items():
        for entry in entries:
            row: dict[str, Any] = {"split": split}
            for key, value in entry.items():
                if key in PATH_FIELDS:
                    path = os.path.abspath(value)
                    name = Path(os.path.relpath(path, root)).as_posix() if root else Path(path).name
                    row[key] = [name, _file_size(path)]
                else:
                    row[key] = value
            rows.append(json.dumps(row, sort_keys=True, default=str))
    return hashlib.sha256("\n".join(sorted(rows)).encode("utf-8")).hexdigest()


def study_identity(
    method: str,
    strategy: Mapping[str, Any],
    seed: int,
    protocol: Mapping[str, Any],
    datalist: Mapping[str, Sequence[Mapping[str, Any]]],
) -> dict[str, Any]:
    """What makes a study the study it is, as written to ``study.json``.

    Args:
        method: the strategy's name.
        strategy: the strategy's parameters (``strategy.describe()``).
        seed: the study's base seed.
        protocol: students, teachers, epochs, ... (not the number of generations: a study may be
            continued with more of them).
        datalist: the dataset; only its :func:`dataset_fingerprint` and split sizes are kept.
    """
    identity = {
        "method": method,
        "strategy": dict(strategy),
        "seed": seed,
        "protocol": dict(protocol),
        "dataset": {
            "fingerprint": dataset_fingerprint(datalist),
            "images": {split: len(entries) for split, entries in datalist.items()},
        },
    }
    return json.loads(json.dumps(identity, default=str))  # the form it has once read back


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def _shown(key: str) -> str:
    """The name of an identity entry in messages: ``epochs``, ``params.image_size``, ``dataset``."""
    if key == "dataset.fingerprint":
        return "dataset"
    return key.removeprefix("protocol.")


def identity_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(name, old value, new value)`` for every entry in which two study identities differ.

    When the methods differ, their strategy parameters are not listed one by one.
    """
    a, b = _flatten(old), _flatten(new)
    method_differs = a.get("method") != b.get("method")
    out = []
    for key in list(a) + [k for k in b if k not in a]:
        if (
            key in _INFORMATIVE
            or key == "strategy.method"
            or (method_differs and key.startswith("strategy."))
        ):
            continue
        if a.get(key, "<none>") != b.get(key, "<none>"):
            out.append((_shown(key), a.get(key, "<none>"), b.get(key, "<none>")))
    return out


def _value(key: str, v: Any) -> str:
    if key == "dataset" and isinstance(v, str):
        return v[:12]
    return v if isinstance(v, str) else json.dumps(v)


class StudyLayout:
    """The paths of a study folder and the reading and writing of its summaries.

    Args:
        root: the study folder (``output_dir``).
    """

    IDENTITY = "study.json"
    RESULTS = "results.json"
    MODEL = "model.pt"

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------ paths
    @property
    def identity_file(self) -> Path:
        return self.root / self.IDENTITY

    @property
    def results_file(self) -> Path:
        return self.root / self.RESULTS

    @property
    def model_file(self) -> Path:
        return self.root / self.MODEL

    def generation_dir(self, generation: int) -> Path:
        return self.root / f"generation_{generation}"

    def student_dir(self, generation: int, index: int) -> Path:
        return self.generation_dir(generation) / f"student_{index}"

    def summary_file(self, generation: int) -> Path:
        return self.generation_dir(generation) / "summary.json"

    def pseudo_label_dir(self, generation: int) -> Path:
        return self.generation_dir(generation) / "pseudo_labels"

    def figure_file(self, generation: int) -> Path:
        return self.generation_dir(generation) / "im_figure.png"

    def generation_dirs(self) -> list[Path]:
        """The ``generation_<g>`` folders present, in generation order."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir() if (m := _GENERATION.fullmatch(p.name))]
        return [p for _, p in sorted(found) if p.is_dir()]

    def relative(self, path: str | os.PathLike) -> str:
        """``path`` relative to the study folder (POSIX separators); unchanged when it lies outside it."""
        try:
            return Path(os.path.abspath(path)).relative_to(os.path.abspath(self.root)).as_posix()
        except ValueError:
            return str(path)

    def absolute(self, stored: str | os.PathLike) -> Path:
        """A path read from one of the study's files, resolved against the study folder.

        A relative path is joined to the folder. An absolute path (files of older versions) is
        taken from its last ``generation_<g>`` part on (its file name if it has none) inside this
        folder when that file exists, so a moved or copied folder uses its own files; otherwise the
        absolute path itself.
        """
        path = Path(stored)
        if not path.is_absolute():
            return self.root / path
        parts = path.parts
        starts = [i for i, part in enumerate(parts) if _GENERATION.fullmatch(part)]
        own = self.root.joinpath(*parts[starts[-1] :]) if starts else self.root / path.name
        return own if own.exists() or not path.exists() else path

    # ------------------------------------------------------------------ students and summaries
    def write_student(self, result: StudentResult) -> Path:
        """Write ``student_<k>/result.json`` (checkpoint path relative to the folder)."""
        d = result.to_dict()
        d["checkpoint"] = self.relative(d["checkpoint"])
        return atomic_write_json(self.student_dir(result.generation, result.index) / "result.json", d)

    def _student(self, d: Mapping[str, Any]) -> StudentResult:
        return StudentResult.from_dict({**d, "checkpoint": str(self.absolute(d["checkpoint"]))})

    def read_student(self, generation: int, index: int) -> StudentResult | None:
        """The finished student, or None when it has no ``result.json`` or its checkpoint is missing."""
        f = self.student_dir(generation, index) / "result.json"
        if not f.is_file():
            return None
        result = self._student(load_json(f))
        return result if Path(result.checkpoint).is_file() else None

    def _stored_summary(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        out = {**summary, "checkpoint": self.relative(summary["checkpoint"])}
        if "students" in summary:
            out["students"] = [
                {**s, "checkpoint": self.relative(s["checkpoint"])} for s in summary["students"]
            ]
        return out

    def write_summary(self, summary: Mapping[str, Any]) -> Path:
        """Write ``generation_<g>/summary.json`` with paths relative to the folder."""
        return atomic_write_json(self.summary_file(int(summary["generation"])), self._stored_summary(summary))

    def read_summary(self, generation: int) -> dict[str, Any] | None:
        """The finished generation's summary with absolute paths, or None when it is not finished."""
        f = self.summary_file(generation)
        if not f.is_file():
            return None
        summary = load_json(f)
        summary["checkpoint"] = str(self.absolute(summary["checkpoint"]))
        summary["students"] = [self._student(s).to_dict() for s in summary.get("students", [])]
        return summary

    def write_results(
        self,
        study: Mapping[str, Any],
        summaries: Iterable[Mapping[str, Any]],
        final_model: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write ``results.json``: the study's parameters, the final model (``model``, and in
        ``final_model`` the generation and student it came from) and every generation."""
        generations = [
            {k: v for k, v in self._stored_summary(s).items() if k != "students"} for s in summaries
        ]
        results = {"study": dict(study), "model": self.MODEL, "generations": generations}
        if final_model is not None:
            results["final_model"] = dict(final_model)
        return atomic_write_json(self.results_file, results)

    # ------------------------------------------------------------------ the folder as a whole
    def clean_partials(self) -> list[Path]:
        """Remove what interrupted writes left behind: ``.<name>.*.partial`` folders of pseudo-label
        sets (see :func:`monai_im.io.atomic_directory`) and ``.<name>.*.tmp`` files of atomic writes,
        in the study folder and its generation and student folders. Returns what was removed."""
        folders = [self.root, *self.generation_dirs()]
        folders += [s for g in folders[1:] for s in g.glob("student_*") if s.is_dir()]
        removed = []
        for folder in folders:
            for p in [*folder.glob(".*.partial"), *folder.glob(".*.tmp")]:
                if p.is_dir() and p.name.endswith(".partial"):
                    shutil.rmtree(p, ignore_errors=True)
                elif p.is_file() and p.name.endswith(".tmp"):
                    p.unlink(missing_ok=True)
                else:
                    continue
                removed.append(p)
        if removed:
            logger.info(f"removed {len(removed)} leftover(s) of interrupted writes in {self.root}")
        return removed

    def remove_study(self) -> list[Path]:
        """Delete the files a study writes (``generation_*``, ``model.pt``, ``results.json``,
        ``study.json``), and nothing else of the folder. Returns what was removed."""
        removed = []
        for p in [*self.generation_dirs(), self.model_file, self.results_file, self.identity_file]:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
            else:
                continue
            removed.append(p)
        return removed

    def _read_identity(self) -> Mapping[str, Any]:
        """``study.json``; a file that is not a JSON object (cut short by a crash or an edit) raises a
        :class:`StudyMismatchError` that says what to do."""
        try:
            old = load_json(self.identity_file)
            if isinstance(old, Mapping):
                return old
            problem = f"a JSON {type(old).__name__}, not an object"
        except (OSError, ValueError) as e:  # not JSON (load_json names the file: keep the reason only)
            problem = str(e.__cause__ or e).splitlines()[0]
        raise StudyMismatchError(
            f"{self.identity_file} is damaged ({problem}), so the study this folder holds is unknown. Use "
            "--overwrite true to start over (deletes generation_*, model.pt, results.json and study.json in "
            "that folder), or another --output_dir"
        )

    def check_identity(self, identity: Mapping[str, Any]) -> None:
        """Raise :class:`StudyMismatchError` when ``study.json`` describes another study, or is damaged.

        A folder without ``study.json`` (new, or written by an older version) passes.
        """
        if not self.identity_file.is_file():
            return
        old = self._read_identity()
        diff = identity_differences(old, identity)
        if not diff:
            return
        was = " ".join(f"{k}={_value(k, a)}" for k, a, _ in diff)
        now = " ".join(f"{k}={_value(k, b)}" for k, _, b in diff)
        raise StudyMismatchError(
            f"{self.root} holds a study with {was}; this run has {now}. Use another --output_dir, or "
            "--overwrite true to start over (deletes generation_*, model.pt, results.json and study.json "
            "in that folder)"
        )

    def prepare(self, identity: Mapping[str, Any], overwrite: bool = False) -> list[Path]:
        """Make the folder ready for the study ``identity``, before any work starts.

        Removes the previous study's files when ``overwrite``, otherwise checks that the folder holds
        this study (:meth:`check_identity`); then removes leftovers of interrupted writes and writes
        ``study.json`` when it is missing. Returns what ``overwrite`` removed.

        Raises:
            StudyMismatchError: the folder holds another study and ``overwrite`` is False.
        """
        removed = self.remove_study() if as_bool(overwrite, "overwrite") else []
        if removed:
            logger.info(f"overwrite: removed the previous study in {self.root} ({len(removed)} entries)")
        self.check_identity(identity)
        self.root.mkdir(parents=True, exist_ok=True)
        self.clean_partials()
        if not self.identity_file.is_file():
            atomic_write_json(self.identity_file, dict(identity))
        return removed
