"""Applications on a finished study: what to annotate next (suggestions) and simulated annotation rounds.

They read a study through :mod:`monai_im.selftrain` and may use every lower wing; nothing imports them
but the bundles and the benchmarks.
"""

from __future__ import annotations

from monai_im.apps.suggest import SCORES, Suggester, SuggestionError, disagreement_scores

__all__ = ["SCORES", "Suggester", "SuggestionError", "disagreement_scores"]
