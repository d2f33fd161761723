"""An ignite handler with a progress bar over the epochs of a trainer (quiet in log files).

The bar comes from :func:`monai_im.runtime.progress.progress_bar`, the package's one bar factory, which is
re-exported here.
"""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine, Events
from tqdm.auto import tqdm

from monai_im.runtime.progress import NON_TTY_INTERVAL, PROGRESS_ENV, progress_bar, progress_mode

__all__ = ["NON_TTY_INTERVAL", "PROGRESS_ENV", "EpochProgressBar", "progress_bar", "progress_mode"]


class EpochProgressBar:
    """One bar per training run that advances once per epoch.

    Shows the mean training loss of the last epoch (``engine.state.epoch_loss`` when a handler
    sets it, else the last iteration's loss) and the validator's latest and best key metric.
    The bar comes from :func:`progress_bar`, so it is quiet in log files.

    Args:
        desc: the bar's label.
        metric_name: the validator's key metric to show.
        validator: the evaluator that computes it, or None.
        disable: switch the bar off (e.g. in tests or batch jobs).
    """

    def __init__(
        self,
        desc: str = "training",
        metric_name: str | None = None,
        validator: Any = None,
        disable: bool = False,
    ) -> None:
        self.desc = desc
        self.metric_name = metric_name
        self.validator = validator
        self.disable = disable
        self.bar: tqdm | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self._close)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._close_on_error)

    def _start(self, engine: Engine) -> None:
        self.bar = progress_bar(
            total=engine.state.max_epochs, desc=self.desc, unit="epoch", disable=self.disable, leave=False
        )

    def __call__(self, engine: Engine) -> None:
        if self.bar is None:
            return
        postfix = {}
        loss = getattr(engine.state, "epoch_loss", None)
        if loss is None and isinstance(engine.state.output, dict) and "loss" in engine.state.output:
            loss = float(engine.state.output["loss"])
        if loss is not None:
            postfix["loss"] = f"{loss:.4f}"
        if self.validator is not None and self.metric_name in getattr(self.validator.state, "metrics", {}):
            postfix[self.metric_name] = f"{float(self.validator.state.metrics[self.metric_name]):.4f}"
            postfix["best"] = f"{float(self.validator.state.best_metric):.4f}"
        # no forced redraw here: update() redraws, subject to the bar's minimum interval
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def _close(self, engine: Engine) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _close_on_error(self, engine: Engine, e: BaseException) -> None:
        self._close(engine)
        raise e
