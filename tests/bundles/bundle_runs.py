"""Helpers of the bundle tests that run a bundle until it refuses its settings."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def configs(bundle: str, *names: str) -> list[str]:
    """The paths of a bundle's config files, in the order given."""
    return [str(REPO / "bundles" / bundle / "configs" / n) for n in names]


def refusal(config_file: list[str], **overrides) -> str:
    """The one-line message with which the bundle run stops (SystemExit passes MONAI's parser unwrapped)."""
    from monai.bundle import run

    with pytest.raises(SystemExit) as err:
        run(config_file=config_file, logging_file=False, **overrides)
    message = str(err.value.code)
    assert len(message.splitlines()) == 1, message
    return message
