"""``python -m monai_im.methods [NAME]``: the methods and their options.

Without a name: every method of :data:`~monai_im.methods.registry.METHODS` with a one-line summary, whether
it makes pseudo-labels, and its options with their defaults. With a name: that method's options, each with
its default and meaning (from the ``Args:`` sections of the class docstrings). Every option is also a key
of the bundles' ``configs/train.json`` (null there: the default shown here, or the bundle's
``method_defaults``).
"""

from __future__ import annotations

import argparse
import json
import textwrap
from collections.abc import Sequence
from typing import Any

from monai_im.methods.registry import COMMON_OPTIONS, METHODS, method_summary, option_defaults, option_help

__all__ = ["list_methods", "show_method", "main"]

WIDTH = 100
COMMON_NOTE = (
    f"Every method also gets {' and '.join(COMMON_OPTIONS)} (the bundle keys task_mode and threshold) "
    "where it uses them."
)


def _value(value: Any) -> str:
    """``value`` as a bundle's JSON writes it."""
    return json.dumps(list(value) if isinstance(value, tuple) else value, default=repr)


def _wrap(text: str, indent: str) -> str:
    return textwrap.fill(text, WIDTH, initial_indent=indent, subsequent_indent=indent)


def list_methods() -> str:
    """Every method: name, whether it makes pseudo-labels, summary, options with their defaults."""
    blocks = [f"{len(METHODS)} methods (python -m monai_im.methods NAME: the meaning of each option)\n"]
    for name, cls in METHODS.items():
        labels = "makes pseudo-labels" if cls.makes_pseudo_labels else "no pseudo-labels"
        options = ", ".join(f"{k}={_value(v)}" for k, v in option_defaults(cls).items()) or "none"
        blocks.append(
            f"{name} ({labels})\n{_wrap(method_summary(cls), '    ')}\n{_wrap('options: ' + options, '    ')}"
        )
    blocks.append(_wrap(COMMON_NOTE, ""))
    return "\n".join(blocks)


def show_method(name: str) -> str:
    """One method's summary and its options, each with its default and meaning."""
    cls = METHODS[name]
    labels = "makes pseudo-labels" if cls.makes_pseudo_labels else "makes no pseudo-labels"
    lines = [f"{name}: {method_summary(cls)}", f"It {labels}.", ""]
    defaults, meaning = option_defaults(cls), option_help(cls)
    lines.append("options (bundle key = default):" if defaults else "options: none")
    for option, default in defaults.items():
        lines += [f"  {option} = {_value(default)}", _wrap(meaning[option], "      ")]
    return "\n".join([*lines, "", _wrap(COMMON_NOTE, "")])


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m monai_im.methods", description=__doc__.split("\n")[0])
    parser.add_argument("name", nargs="?", help="one method: its options and their meaning")
    args = parser.parse_args(argv)
    if args.name is not None and args.name not in METHODS:
        parser.error(f"unknown method {args.name!r}; choose one of: {', '.join(sorted(METHODS))}")
    print(list_methods() if args.name is None else show_method(args.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
