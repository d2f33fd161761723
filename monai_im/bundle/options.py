"""A bundle's options, read from its configs, each with its default and meaning.

``python -m monai_im.bundle options <bundle folder> [--config inference.json ...]`` lists the top-level keys
a user sets with ``--key value``: every key of ``train.json`` (merged with the configs named) whose value is
a setting (:func:`is_setting`), and the computed keys that have a meaning. The defaults are the configs' own
values, so the list cannot drift from them; the meanings come from, first to last:

1. the bundle's ``configs/options.json`` (its own keys: ``{"key": "meaning", ...}``),
2. :data:`SHARED_MEANINGS` (``options.json`` beside this module: the keys the bundles share),
3. the methods' own documentation, for the method options (``python -m monai_im.methods NAME``).

A setting without a meaning is an error of the bundle: :func:`undocumented` lists them, and the tests
require that list to be empty.
"""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

__all__ = [
    "OPTIONS_FILE",
    "SHARED_MEANINGS",
    "Option",
    "bundle_options",
    "format_options",
    "is_setting",
    "meanings",
    "method_option_meanings",
    "undocumented",
]

#: The file of a bundle's ``configs/`` that gives the meaning of its own keys.
OPTIONS_FILE = "options.json"
#: The meanings of the keys the bundles share.
SHARED_MEANINGS = Path(__file__).with_name("options.json")
#: Keys of the workflow itself, never options.
WORKFLOW_KEYS = ("imports", "initialize", "run", "finalize")
WIDTH = 100


@dataclass(frozen=True)
class Option:
    """One option of a bundle.

    Attributes:
        key: the top-level config key (``--key value`` on the command line).
        default: its value in the configs (a ``$`` expression or ``@`` reference as written).
        meaning: what it means; empty when undocumented.
        config: the config file whose value is the default.
    """

    key: str
    default: Any
    meaning: str
    config: str


def _scalar(value: Any) -> bool:
    if isinstance(value, str):
        return not value.startswith(("$", "@", "%"))
    return value is None or isinstance(value, (bool, int, float))


def is_setting(key: str, value: Any) -> bool:
    """Whether a top-level config entry is a user setting: a plain JSON value (a number, a string that is no
    expression or reference, true/false, null) or a list of them, under a key that is no workflow list
    (``initialize``, ...), special key (``_description_``) or nested id (``a#b``)."""
    if key in WORKFLOW_KEYS or "#" in key or (key.startswith("_") and key.endswith("_")):
        return False
    if isinstance(value, list):
        return bool(value) and all(
            _scalar(v) or (isinstance(v, list) and all(map(_scalar, v))) for v in value
        )
    return _scalar(value)


@cache
def method_option_meanings() -> dict[str, str]:
    """The meaning of every method option, from the methods' docstrings, with the methods that take it."""
    from monai_im.methods.registry import METHODS, option_help

    texts: dict[str, str] = {}
    takers: dict[str, list[str]] = {}
    for name, cls in METHODS.items():
        for option, text in option_help(cls).items():
            if text and option not in texts:
                texts[option] = text
            takers.setdefault(option, []).append(name)
    return {
        k: f"{texts.get(k, '')} (null: the method's default; methods: {', '.join(v)})".lstrip()
        for k, v in takers.items()
    }


def _read_meanings(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    found = json.loads(path.read_text())
    if not isinstance(found, dict) or not all(isinstance(v, str) for v in found.values()):
        raise ValueError(f"{path}: expected a JSON object of key: meaning strings")
    return found


def meanings(bundle_dir: str | os.PathLike) -> dict[str, str]:
    """Every key's meaning for the bundle: its own ``configs/options.json`` over the shared ones over the
    method options'."""
    own = _read_meanings(Path(bundle_dir) / "configs" / OPTIONS_FILE)
    return {**method_option_meanings(), **_read_meanings(SHARED_MEANINGS), **own}


def bundle_options(bundle_dir: str | os.PathLike, configs: Sequence[str] = ()) -> list[Option]:
    """The options of ``train.json`` merged with ``configs`` (names in the bundle's ``configs/``), in config
    order: the settings (:func:`is_setting`) and the other keys that have a meaning."""
    from monai.bundle import ConfigParser

    folder = Path(bundle_dir) / "configs"
    names = ["train.json", *(c for c in configs if c != "train.json")]
    values: dict[str, Any] = {}
    source: dict[str, str] = {}
    for name in names:
        for key, value in ConfigParser.load_config_file(str(folder / name)).items():
            values[key] = value
            source[key] = name
    known = meanings(bundle_dir)
    return [
        Option(k, v, known.get(k, ""), source[k])
        for k, v in values.items()
        if is_setting(k, v) or (k in known and "#" not in k and k not in WORKFLOW_KEYS)
    ]


def undocumented(bundle_dir: str | os.PathLike, configs: Sequence[str] = ()) -> list[str]:
    """The settings of the bundle's configs that have no meaning."""
    return [o.key for o in bundle_options(bundle_dir, configs) if not o.meaning]


def _value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, Mapping) or len(json.dumps(value)) < 60 else "{...}"


def format_options(bundle_dir: str | os.PathLike, configs: Sequence[str] = ()) -> str:
    """The listing of ``python -m monai_im.bundle options``: ``key = default`` and its meaning, per option."""
    options = bundle_options(bundle_dir, configs)
    merged = " + ".join(["train.json", *(c for c in configs if c != "train.json")])
    lines = [f"{bundle_dir}: {len(options)} options of {merged} (set one with --key value)"]
    for o in options:
        origin = f"  [{o.config}]" if o.config != "train.json" else ""
        lines.append(f"  {o.key} = {_value(o.default)}{origin}")
        meaning = o.meaning or "(undocumented)"
        lines.append(textwrap.fill(meaning, WIDTH, initial_indent="      ", subsequent_indent="      "))
    return "\n".join(lines)
