"""Tracking URIs: the check that a store can be used, and the study folder's own store.

- :func:`check_tracking_uri` ends the program with one line when a store cannot be used (a scheme MLflow
  has no store for, a server nobody answers at, a file store MLflow refuses), before any training;
- the default store is the study folder's own sqlite database (``<output_dir>/mlflow.db``, artifacts in
  ``<output_dir>/mlartifacts``). A study folder is relocatable: its resume state records that store as
  :data:`OWN_STORE` (not as an absolute path), and :func:`repoint_artifacts` makes the database of a
  copied or moved folder keep its artifacts in that folder, not in the one it was copied from.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import sqlite3
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from urllib.parse import urlparse

__all__ = [
    "ARTIFACT_FOLDER",
    "OWN_STORE",
    "STORE_FILE",
    "TRACKING_SCHEMES",
    "check_tracking_uri",
    "first_line",
    "known_tracking_schemes",
    "own_store_uri",
    "repoint_artifacts",
    "resolve_stored_uri",
    "stored_uri",
    "tracking_scheme",
]

logger = logging.getLogger("monai_im")

#: The study folder's own store and artifact folder.
STORE_FILE = "mlflow.db"
ARTIFACT_FOLDER = "mlartifacts"
#: How the resume state (``mlflow_runs.json``) names the study folder's own store, wherever the folder is.
OWN_STORE = f"sqlite:///<output_dir>/{STORE_FILE}"


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of ``e``'s message (its type name if it has none), at most ``limit`` characters."""
    lines = str(e).strip().splitlines()
    s = lines[0] if lines else type(e).__name__
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _server_problem(uri: str, timeout: float) -> str | None:
    """Why no HTTP server answers at ``uri`` (``None`` when one does, whatever its status)."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # a server answered (a login, a proxy path, ...)
    except urllib.error.URLError as e:
        return first_line(e.reason) if isinstance(e.reason, BaseException) else str(e.reason)
    except (OSError, http.client.HTTPException, ValueError) as e:
        return first_line(e)


#: The tracking store schemes of MLflow itself; plugins add theirs (entry point group ``mlflow.tracking_store``).
#: Database schemes may name a driver (``postgresql+psycopg2``); a plain path (or ``C:\\...``) is a file store.
TRACKING_SCHEMES = (
    "file",
    "sqlite",
    "postgresql",
    "mysql",
    "mssql",
    "http",
    "https",
    "databricks",
    "databricks-uc",
    "uc",
)


def tracking_scheme(uri: str) -> str:
    """The store kind of a tracking URI as MLflow picks it: its scheme without a database driver, ``""``
    for a path (a Windows drive letter included), the URI itself for ``databricks``, ``databricks-uc``, ``uc``."""
    if uri in ("databricks", "databricks-uc", "uc"):
        return uri
    scheme = urlparse(uri).scheme.lower()
    return "" if len(scheme) == 1 and scheme.isalpha() else scheme.split("+", 1)[0]


def known_tracking_schemes() -> list[str]:
    """:data:`TRACKING_SCHEMES` and those MLflow plugins installed here register."""
    known = set(TRACKING_SCHEMES)
    with contextlib.suppress(Exception):  # MLflow's registry is not public API: the built-in list suffices
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry

        known.update(k for k in _tracking_store_registry._registry if k)
    return sorted(known)


def check_tracking_uri(uri: str, hint: str = "drop --tracking_uri", timeout: float = 5.0) -> None:
    """End the program with one line (``SystemExit``) when the tracking store at ``uri`` cannot be used.

    A scheme MLflow has no store for (:func:`known_tracking_schemes`, e.g. a typing error) is refused. A
    server (``http``/``https``) must answer at ``<uri>/health`` within ``timeout`` seconds; a file store
    (``file:`` or a plain path) must be accepted by the installed MLflow, which refuses it from 3.x on
    unless ``MLFLOW_ALLOW_FILE_STORE`` is set. Database stores (``sqlite:`` ...) are not checked.

    Args:
        uri: the tracking URI.
        hint: how the user falls back to the local sqlite store, for the message.
        timeout: seconds to wait for a server.
    """
    scheme, kind = urlparse(uri).scheme.lower(), tracking_scheme(uri)
    known = known_tracking_schemes()
    if kind not in ("", *known):
        raise SystemExit(
            f"error: MLflow has no tracking store for {uri} (unknown scheme '{scheme}'; known: "
            f"{', '.join(known)}, or a folder path); correct the URI, or {hint} to use the local sqlite store"
        )
    if scheme in ("http", "https"):
        problem = _server_problem(uri, timeout)
        if problem is not None:
            raise SystemExit(
                f"error: MLflow tracking server {uri} is not reachable ({problem}); "
                f"start it, or {hint} to use the local sqlite store"
            )
    elif kind in ("", "file"):  # a path (with a drive letter on Windows)
        import mlflow
        from mlflow import MlflowClient

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                MlflowClient(uri).search_experiments(max_results=1)
        except Exception as e:
            path = urllib.request.url2pathname(urlparse(uri).path) if scheme == "file" else uri
            db = Path(path).expanduser().resolve().with_suffix(".db").as_posix()
            reason = str(e).split(". ")[0].strip().rstrip(".")
            raise SystemExit(
                f"error: MLflow {mlflow.__version__} cannot use the file store {uri} ({reason}); "
                f"use a database store instead, e.g. --tracking_uri sqlite:///{db}"
            ) from None


# ---------------------------------------------------------------------- the study folder's own store
def own_store_uri(output_dir: str | os.PathLike) -> str:
    """The tracking URI of the study folder's own sqlite store (absolute, as MLflow needs it)."""
    return f"sqlite:///{(Path(output_dir).resolve() / STORE_FILE).as_posix()}"


def stored_uri(uri: str, output_dir: str | os.PathLike) -> str:
    """``uri`` as the resume state records it: :data:`OWN_STORE` for the folder's own store, else itself."""
    return OWN_STORE if uri == own_store_uri(output_dir) else uri


def resolve_stored_uri(stored: str | None, output_dir: str | os.PathLike) -> str | None:
    """The tracking URI a resume state names, for the study folder now at ``output_dir``.

    :data:`OWN_STORE` is this folder's own store. So is the absolute URI of a folder's own store
    (``sqlite:///<folder>/mlflow.db``) that older versions recorded: the state file lies in the folder it
    was written in, moved or copied since. Any other URI is returned unchanged.

    Args:
        stored: the ``tracking_uri`` entry of the resume state (None when there is none).
        output_dir: the study folder the state was read from.
    """
    if stored == OWN_STORE or (
        stored is not None and stored.startswith("sqlite:///") and stored.endswith(f"/{STORE_FILE}")
    ):
        return own_store_uri(output_dir)
    return stored


#: The columns of MLflow's database schema that hold artifact locations (``logged_models`` from MLflow 3).
_ARTIFACT_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
)


def _foreign_artifact_folder(location: str | None, own: str) -> bool:
    """Whether ``location`` is the artifact folder of another study folder (``file:...<folder>/mlartifacts``)."""
    if not location or not location.startswith("file:"):
        return False
    trimmed = location.rstrip("/")
    return trimmed != own and trimmed.endswith(f"/{ARTIFACT_FOLDER}")


def _forget_artifact_repositories(run_ids: list[str]) -> None:
    """Drop MLflow's artifact repositories of ``run_ids`` from its process-wide cache (keyed by run id alone).

    A copied study folder holds the same run ids as its original; within one process, MLflow would go on
    sending a run's artifacts wherever that run id pointed first. A new process has nothing cached.
    """
    with contextlib.suppress(Exception):  # a private cache of MLflow: where it is missing, nothing is cached
        from mlflow.tracking._tracking_service import utils

        for run_id in run_ids:
            utils._artifact_repos_cache.pop(run_id, None)


def repoint_artifacts(output_dir: str | os.PathLike) -> list[str]:
    """Make the study folder's own store keep its artifacts in the folder after the folder was copied or moved.

    MLflow records where an experiment and each of its runs keep their artifacts as absolute URIs, so
    the database of a copied study folder would go on writing into the folder it was copied from; and
    MLflow has no API that changes them. Every experiment whose artifact location is another study
    folder's artifact folder (``file:///<elsewhere>/mlartifacts``) is pointed at
    ``<output_dir>/mlartifacts`` with an SQL update of the copy's ``experiments.artifact_location``,
    ``runs.artifact_uri`` and ``logged_models.artifact_location`` columns (the location's prefix is
    replaced). The artifacts logged before were copied with the folder, at the same places under
    ``mlartifacts``, so the copied runs still find them. The database of the other folder is not opened.
    MLflow's cached artifact repositories of the folder's runs are dropped, so that a run continued in the
    same process as its original finds its artifacts here too.

    Args:
        output_dir: the study folder; nothing happens when it holds no ``mlflow.db``.

    Returns:
        the artifact locations that were replaced (empty when the folder did not move).
    """
    db = Path(output_dir) / STORE_FILE
    if not db.is_file():
        return []
    own = (Path(output_dir).resolve() / ARTIFACT_FOLDER).as_uri()
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as con, con:
        tables = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "experiments" not in tables:
            return []
        locations = con.execute("SELECT artifact_location FROM experiments").fetchall()
        old = sorted({loc for (loc,) in locations if _foreign_artifact_folder(loc, own)})
        for location in old:
            prefix = location.rstrip("/")
            for table, column in _ARTIFACT_COLUMNS:
                if table in tables:
                    con.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                        f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                        (own, len(prefix) + 1, location, len(prefix) + 1, f"{prefix}/"),
                    )
        run_ids = (
            [run_id for (run_id,) in con.execute("SELECT run_uuid FROM runs")] if "runs" in tables else []
        )
    _forget_artifact_repositories(run_ids)
    if old:
        logger.info(f"MLflow: the study folder moved; its runs keep their artifacts in {own} (was {old[0]})")
    return old
