"""The command line of a bundle run, checked before any work: unknown ``--key`` overrides and incomplete configs.

``python -m monai.bundle run --config_file ... --key value`` merges every ``--key`` into the parsed config,
a typo included: ``--num_generation 1`` silently adds a key nobody reads and the study runs with the default.
:func:`check_overrides`, the first expression of a bundle's ``initialize``, refuses such a key in one line,
naming the closest known keys.

MONAI does not hand the overrides to the config, so they are read from the running ``monai.bundle`` call:
:func:`monai.bundle.scripts.create_workflow` (behind ``python -m monai.bundle run``, ``monai.bundle.run`` and
``run_workflow``) holds them, with ``--args_file``'s, while it initializes the workflow.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai_im.utils import find_on_stack

__all__ = ["Launch", "check_overrides", "current_launch", "launch_arguments"]

#: Files beside a bundle's configs that are not configs to merge.
NOT_CONFIGS = ("metadata.json", "options.json")
#: The config that the others of a bundle folder are merged on.
BASE_CONFIG = "train.json"
_SEP = "#"


@dataclass(frozen=True)
class Launch:
    """How the running bundle was started.

    Attributes:
        config_files: the config files, in merge order, as given.
        overrides: the ``--key value`` pairs merged into the config (the ``run`` arguments left out).
    """

    config_files: tuple[str, ...]
    overrides: dict[str, Any]

    @property
    def config_dir(self) -> Path:
        """The folder of the first config file."""
        return Path(self.config_files[0]).parent


def launch_arguments() -> frozenset[str]:
    """The arguments of ``monai.bundle run`` and the workflows it creates: never config overrides."""
    from monai.bundle import ConfigWorkflow, scripts

    names = set()
    for fn in (scripts.run, scripts.run_workflow, scripts.create_workflow, ConfigWorkflow.__init__):
        params = inspect.signature(fn).parameters.values()
        names.update(p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
    return frozenset(names - {"self"})


def _split_files(config_file: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(config_file, str):
        return (
            tuple(config_file.split(","))
            if "," in config_file and not Path(config_file).is_file()
            else (config_file,)
        )
    return tuple(str(f) for f in config_file)


def current_launch() -> Launch | None:
    """The config files and overrides of the ``monai.bundle`` run on the call stack; None outside one
    (e.g. a ``ConfigWorkflow`` built and initialized directly)."""
    from monai.bundle import scripts

    code = scripts.create_workflow.__code__
    frame = inspect.currentframe()
    try:
        while frame is not None and frame.f_code is not code:
            frame = frame.f_back
        if frame is None or frame.f_locals.get("config_file") is None:
            return None
        args: Mapping[str, Any] = frame.f_locals.get("_args") or {}
        files = _split_files(frame.f_locals["config_file"])
    finally:
        del frame
    reserved = launch_arguments()
    return Launch(files, {k: v for k, v in args.items() if k not in reserved})


def _top(key: str) -> str:
    """The top-level key of a config id (``a#b`` or ``a::b``)."""
    return key.replace("::", _SEP).split(_SEP)[0]


def _running_parser() -> Any:
    from monai.bundle import ConfigParser, ConfigWorkflow

    def pick(value: object) -> ConfigParser | None:
        if isinstance(value, ConfigParser):
            return value
        return value.parser if isinstance(value, ConfigWorkflow) else None

    return find_on_stack(pick)


def _missing_references(parser: Any) -> list[str]:
    """The top-level keys that the parsed config refers to (``@key``) but does not define."""
    from monai.bundle.reference_resolver import ReferenceResolver

    refs = ReferenceResolver.find_refs_in_config(parser.get(), id="")
    return sorted({_top(r) for r in refs if r not in parser})


def _base_config(launch: Launch, missing: Sequence[str]) -> Path | None:
    """The config beside the given ones that defines every key of ``missing`` (``train.json`` first)."""
    from monai.bundle import ConfigParser

    given = {Path(f).name for f in launch.config_files}
    names = sorted(p.name for p in launch.config_dir.glob("*.json"))
    names = sorted(
        (n for n in names if n not in given and n not in NOT_CONFIGS), key=lambda n: n != BASE_CONFIG
    )
    for name in names:
        keys = ConfigParser.load_config_file(str(launch.config_dir / name))
        if all(k in keys for k in missing):
            return launch.config_dir / name
    return None


def _refuse_incomplete(missing: Sequence[str], launch: Launch | None) -> None:
    shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
    what = ", ".join(Path(f).name for f in launch.config_files) if launch else "the config"
    base = _base_config(launch, missing) if launch else None
    if base is None:
        raise SystemExit(
            f"error: {what} refers to {shown}, defined in no config given: add the config it is merged on"
        )
    files = ",".join(repr(str(f)) for f in (str(base), *launch.config_files))
    raise SystemExit(
        f"error: {what} refers to {shown}, which {base.name} defines: run it merged on top of {base.name}, "
        f'python -m monai.bundle run --config_file "[{files}]" ...'
    )


def _unknown(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(_top(key), known, n=3)
    return f"--{key} (did you mean {' or '.join('--' + c for c in close)}?)" if close else f"--{key}"


def check_overrides() -> None:
    """Refuse, in one line, a run whose configs are incomplete or whose ``--key`` overrides name no config key.

    The first expression of a bundle's ``initialize`` (``"$monai_im.bundle.check_overrides()"``), so that it
    runs before any work:

    - a config that refers to keys it does not define (``inference.json`` run without the ``train.json`` it
      is merged on) is refused with the command that merges them;
    - every override of the command line (``--key value``, ``--key#sub value``) must name a top-level key of
      the config files given (or ``_meta_``); the error names the closest known keys.

    Outside a ``monai.bundle`` run (a ``ConfigWorkflow`` initialized directly) only the first check is made.

    Raises:
        SystemExit: ``error: ...``, one line.
    """
    from monai.bundle import ConfigParser

    launch = current_launch()
    parser = _running_parser()
    if parser is not None:
        missing = _missing_references(parser)
        if missing:
            _refuse_incomplete(missing, launch)
    if launch is None:
        return
    known = sorted(ConfigParser.load_config_files(list(launch.config_files)))
    unknown = [k for k in launch.overrides if _top(k) not in {*known, "_meta_"}]
    if unknown:
        names = ", ".join(Path(f).name for f in launch.config_files)
        bundle = launch.config_dir.parent if launch.config_dir.name == "configs" else launch.config_dir
        raise SystemExit(
            f"error: unknown option {', '.join(_unknown(k, known) for k in unknown)}: no such key in {names} "
            f"(python -m monai_im.bundle options {bundle} lists them)"
        )
