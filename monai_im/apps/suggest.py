"""What to annotate next: rank the unlabeled images of a finished study by the disagreement of its teachers.

The teachers the study would use for its next generation (or the top students of a chosen finished
generation) predict every unlabeled image, batch-wise; every image gets the scores of
:func:`disagreement_scores`, and the ranking on one of them is written to ``<output_dir>/suggestions/``::

    suggestions.csv     rank, index (in the unlabeled list), image, every score; the whole unlabeled set
    suggestions.json    the same rows, the teachers used and the settings
    top_k.png           the top-k images: input, each teacher's mask, their sum, the IM, ...

The folder appears only once it is complete (:func:`monai_im.io.atomic_directory`). When the study was
tracked (``mlflow_runs.json`` in the study folder), the three files are logged as artifacts of the
study's parent MLflow run; a store that cannot be reached only costs a warning.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.utils import convert_to_tensor

from monai_im.apps.scores import SCORES, disagreement_scores
from monai_im.io import atomic_directory, atomic_write_bytes, atomic_write_json, load_json
from monai_im.runtime.progress import progress_bar
from monai_im.selftrain.student import StudentResult
from monai_im.transforms.functional import inconsistency_mask, mask_image

if TYPE_CHECKING:  # the study's type only: importing the loop is not needed to read one
    from monai_im.selftrain.study import SelfTrainingStudy

__all__ = ["SCORES", "Suggester", "SuggestionError", "disagreement_scores", "suggest"]

logger = logging.getLogger("monai_im")

#: Decimals of the scores written; the ranking uses the written values, so that it matches the files.
DECIMALS = 6


class SuggestionError(ValueError):
    """A study folder, datalist or option that suggestions cannot be made from (one line)."""


class Suggester:
    """Rank the unlabeled images of a finished study by the disagreement of its teachers.

    Args:
        study: the :class:`monai_im.selftrain.SelfTrainingStudy` whose ``output_dir`` holds at least one
            finished generation (built with the settings the study ran with; it is not run).
        top_k: how many of the best-ranked images the montage ``top_k.png`` shows (the CSV and JSON
            files rank the whole unlabeled set).
        generation: None: the teachers the study would use for its next generation
            (:meth:`SelfTrainingStudy.choose_teachers` over the finished generations); a number: the top
            students of that finished generation instead.
        score: the score ranked on (descending; ties broken by image path), one of :data:`SCORES`.
        progress: show a progress bar.
    """

    FOLDER = "suggestions"
    CSV = "suggestions.csv"
    JSON = "suggestions.json"
    MONTAGE = "top_k.png"

    def __init__(
        self,
        study: SelfTrainingStudy,
        top_k: int = 20,
        generation: int | None = None,
        score: str = "im_fraction",
        progress: bool = True,
    ) -> None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise SuggestionError(f"suggest_top_k must be an integer >= 1, got {top_k!r}")
        if score not in SCORES:
            raise SuggestionError(f"suggest_score {score!r} is not one of {', '.join(SCORES)}")
        if generation is not None and (
            isinstance(generation, bool) or not isinstance(generation, int) or generation < 0
        ):
            raise SuggestionError(f"suggest_generation must be null or an integer >= 0, got {generation!r}")
        self.study = study
        self.top_k = top_k
        self.generation = generation
        self.score = score
        self.progress = progress
        self.output_dir = Path(study.output_dir) / self.FOLDER

    # ------------------------------------------------------------------ checks
    def finished_generations(self) -> list[list[StudentResult]]:
        """The students of every finished generation (0, 1, ... up to the first unfinished one)."""
        history: list[list[StudentResult]] = []
        while (summary := self.study.layout.read_summary(len(history))) is not None:
            history.append([StudentResult.from_dict(d) for d in summary["students"]])
        return history

    def teachers(self) -> list[StudentResult]:
        """The teachers whose disagreement is scored; checks the folder and the datalist first.

        Raises:
            SuggestionError: no finished generation, ``generation`` not finished, or no unlabeled images.
        """
        root = self.study.layout.root
        history = self.finished_generations()
        if not history:
            raise SuggestionError(
                f"{root} holds no finished generation (no generation_0/summary.json): run the study first"
            )
        if self.generation is not None and self.generation >= len(history):
            raise SuggestionError(
                f"generation {self.generation} of {root} is not finished (finished: 0..{len(history) - 1})"
            )
        if not self.study.datalist.get("unlabeled"):
            raise SuggestionError("the datalist has no 'unlabeled' images to rank")
        pool = history if self.generation is None else [history[self.generation]]
        teachers = self.study.choose_teachers(pool)
        if len(teachers) < 2:
            logger.warning(
                f"only {len(teachers)} teacher: im_fraction, pairwise_disagreement and im_per_foreground are 0; "
                "rank on entropy or raise num_teachers"
            )
        return teachers

    def _load(self, result: StudentResult) -> torch.nn.Module:
        try:
            return self.study.load_student(result)
        except (RuntimeError, OSError, ValueError) as e:
            raise SuggestionError(
                f"{result.checkpoint} does not load into the network of these settings "
                f"({str(e).splitlines()[0][:160]}); pass the options the study was run with"
            ) from e

    # ------------------------------------------------------------------ the pass over the unlabeled set
    def _loader(self, items: Sequence[Mapping[str, Any]]) -> Any:
        from monai.data import DataLoader, Dataset

        return DataLoader(
            Dataset([{"image": it["image"]} for it in items], transform=self.study.infer_transforms),
            batch_size=self.study.batch_size,
            shuffle=False,
            num_workers=getattr(self.study, "num_workers", 0),
        )

    def _key(self, value: float, path: str, index: int) -> tuple[float, str, int]:
        return (-round(float(value), DECIMALS), path, index)

    def score_all(self, teachers: Sequence[StudentResult]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Score every unlabeled image; returns the ranked rows and the top-k panels of the montage."""
        method, study = self.study.method, self.study
        nets = [self._load(t) for t in teachers]
        unlabeled = study.datalist["unlabeled"]
        paths = [str(it["image"]) for it in unlabeled]
        rows: list[dict[str, Any]] = []
        top: list[tuple[tuple[float, str, int], dict[str, torch.Tensor]]] = []  # the best k so far
        bar = progress_bar(
            self._loader(unlabeled), desc="scoring unlabeled images", unit="batch", disable=not self.progress
        )
        start = 0
        for batch in bar:
            images = convert_to_tensor(batch["image"], track_meta=False).to(study.device)
            probs = method.activation(method.predict(nets, images, study.inferer), channel_dim=2)
            scores = {
                k: v.cpu().tolist()
                for k, v in disagreement_scores(probs, method.mode, method.threshold).items()
            }
            n = images.shape[0]
            keys = []
            for j in range(n):
                i = start + j
                rows.append(
                    {
                        "index": i,
                        "image": paths[i],
                        **{k: round(scores[k][j], DECIMALS) + 0.0 for k in SCORES},
                    }
                )
                keys.append(self._key(scores[self.score][j], paths[i], i))
            # keep the panels of the best k images so far; only images entering them leave the device
            candidates = sorted([(k, None) for k in keys] + top, key=lambda c: c[0])[: self.top_k]
            new = {k: j for j, k in enumerate(keys)}
            entering = [new[k] for k, panels in candidates if panels is None]
            fresh: dict[tuple[float, str, int], dict[str, torch.Tensor]] = {}
            if entering:
                pieces = self._panels(images[entering], probs[:, entering])
                fresh = {keys[j]: {name: v[m] for name, v in pieces.items()} for m, j in enumerate(entering)}
            top = [(k, fresh[k] if panels is None else panels) for k, panels in candidates]
            start += n
        rows.sort(key=lambda r: self._key(r[self.score], r["image"], r["index"]))
        for rank, row in enumerate(rows, start=1):
            row["rank"] = rank
        montage = {name: torch.stack([p[name] for _, p in top]) for name in top[0][1]}
        return [{"rank": r.pop("rank"), **r} for r in rows], montage

    def _panels(self, images: torch.Tensor, probs: torch.Tensor) -> dict[str, torch.Tensor]:
        """The montage's pieces of a few images (CPU tensors; 3D volumes: their middle slice)."""
        method = self.study.method
        label, im = inconsistency_mask(probs, mode=method.mode, threshold=method.threshold)
        if method.mode == "multiclass":
            masks = probs.argmax(dim=2, keepdim=True).float()
        else:
            masks = (probs > method.threshold).float()
        panels = {
            "images": images.float(),
            "teacher_masks": masks.transpose(0, 1),
            "im": im,
            "pseudo_label": label,
            "masked_images": mask_image(images.float(), im),
        }
        if images.ndim == 5:
            panels = {k: v[..., v.shape[-1] // 2] for k, v in panels.items()}
        return {k: v.detach().cpu() for k, v in panels.items()}

    # ------------------------------------------------------------------ outputs
    def _csv(self, rows: Sequence[Mapping[str, Any]]) -> bytes:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["rank", "index", "image", *SCORES], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue().encode("utf-8")

    def _describe_teachers(self, teachers: Sequence[StudentResult]) -> list[dict[str, Any]]:
        metric = f"val_{getattr(self.study, 'key_metric_name', 'metric')}"
        return [
            {
                "generation": t.generation,
                "student": t.index,
                metric: t.best_metric,
                "checkpoint": self.study.layout.relative(t.checkpoint),
            }
            for t in teachers
        ]

    def _montage(
        self, rows: Sequence[Mapping[str, Any]], panels: Mapping[str, torch.Tensor], path: Path
    ) -> Path:
        from monai_im.visualize import plot_inconsistency_mask

        titles = [f"#{r['rank']} {Path(r['image']).name}\n{self.score} {r[self.score]:.3f}" for r in rows]
        return plot_inconsistency_mask(
            **panels, path=path, titles=titles, max_images=len(titles), reverse_indexing=True
        )

    def log_to_mlflow(self, files: Sequence[Path]) -> bool:
        """Log ``files`` as artifacts (``suggestions/``) of the study's parent MLflow run, when the study was
        tracked; a store that cannot be used costs a warning. Returns whether they were logged."""
        state_file = Path(self.study.output_dir) / "mlflow_runs.json"
        if not state_file.is_file():
            return False
        try:
            state = load_json(state_file)
            run_id, uri = state.get("runs", {}).get("study"), state.get("tracking_uri")
            if not run_id or not uri:
                logger.warning(f"MLflow: {state_file} names no study run; the suggestions are not logged")
                return False
            from mlflow import MlflowClient

            from monai_im.handlers.mlflow_store import http_limits

            with http_limits():
                client = MlflowClient(tracking_uri=uri)
                for f in files:
                    client.log_artifact(run_id, str(f), self.FOLDER)
        except Exception as e:
            from monai_im.handlers.mlflow_store import first_line

            logger.warning(
                f"MLflow: the suggestions are not logged ({first_line(e)}); they are in {self.output_dir}"
            )
            return False
        logger.info(f"MLflow: suggestions logged to run {run_id} in {uri}")
        return True

    def run(self) -> dict[str, Any]:
        """Score, rank and write the suggestions; returns the content of ``suggestions.json`` (plus ``files``).

        Raises:
            SystemExit: one line, before any work, when the folder or the datalist cannot give
                suggestions (its ``__cause__`` is the :class:`SuggestionError`).
        """
        try:
            teachers = self.teachers()
            rows, panels = self.score_all(teachers)
        except SuggestionError as e:
            raise SystemExit(f"error: {e}") from e
        report = {
            "score": self.score,
            "top_k": self.top_k,
            "mode": self.study.method.mode,
            "threshold": self.study.method.threshold,
            "unlabeled_images": len(rows),
            "teachers": self._describe_teachers(teachers),
            "suggestions": rows,
        }
        with atomic_directory(self.output_dir, overwrite=True) as tmp:
            atomic_write_bytes(tmp / self.CSV, self._csv(rows))
            atomic_write_json(tmp / self.JSON, report)
            self._montage(rows[: self.top_k], panels, tmp / self.MONTAGE)
        files = [self.output_dir / name for name in (self.CSV, self.JSON, self.MONTAGE)]
        self.log_to_mlflow(files)
        by_generation: dict[int, list[str]] = {}
        for t in teachers:
            by_generation.setdefault(t.generation, []).append(str(t.index))
        source = "; ".join(f"generation {g} students {', '.join(k)}" for g, k in by_generation.items())
        if rows and all(r[self.score] == 0 for r in rows):
            logger.warning(
                f"every image scores 0 on {self.score}: the teachers agree everywhere, so the order is by path "
                "(rank on another score with --suggest_score, e.g. entropy)"
            )
        best = ", ".join(Path(r["image"]).name for r in rows[: min(self.top_k, 5)])
        logger.info(
            f"suggestions: {len(rows)} unlabeled images ranked on {self.score} by the teachers of {source}; "
            f"first: {best}; written to {self.output_dir.resolve()}"
        )
        return {**report, "files": [str(f) for f in files]}


def suggest(
    study: SelfTrainingStudy,
    top_k: int = 20,
    score: str = "im_fraction",
    generation: int | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Rank the unlabeled images of a finished study (see :class:`Suggester`); the bundles' ``suggest.json``.

    Args:
        study: the study, built (not run) with the settings it ran with.
        top_k: images shown in ``top_k.png``.
        score: the score ranked on, one of :data:`SCORES`.
        generation: None (the next generation's teachers) or a finished generation whose top students are used.
        progress: show a progress bar; default: as the study.

    Raises:
        SystemExit: one line for a bad option, a folder without a finished generation or a datalist without
            unlabeled images, before any work.
    """
    try:
        suggester = Suggester(
            study,
            top_k=top_k,
            generation=generation,
            score=score,
            progress=getattr(study, "progress", True) if progress is None else progress,
        )
    except SuggestionError as e:
        raise SystemExit(f"error: {e}") from e
    return suggester.run()
