"""The events of a self-training study, and the registry through which handlers observe them.

A handler is attached MONAI-style: its ``attach(study)`` registers a callable per event with
:meth:`StudyEventRegistry.add_event_handler` (or the :meth:`StudyEventRegistry.on` decorator), as
ignite engines do with their ``Events``. Handlers are called as ``handler(study, **kwargs)`` with the
keyword arguments listed below; they observe the study and never steer it.

=========================  ============================================================================
event                      keyword arguments
=========================  ============================================================================
``STUDY_STARTED``          (none)
``GENERATION_STARTED``     ``generation``
``STUDENT_STARTED``        ``generation``, ``index``, ``trainer`` (attach epoch-level handlers here)
``STUDENT_FINISHED``       ``result`` (:class:`StudentResult`), ``resumed``
``PSEUDO_LABELS_READY``    ``generation``, ``result`` (:class:`PseudoLabelResult`), ``figure``, ``resumed``
``GENERATION_FINISHED``    ``summary`` (the generation's ``summary.json``), ``resumed``
``STUDY_FINISHED``         ``summaries``
=========================  ============================================================================
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ignite.engine import Engine
from ignite.engine.events import EventEnum

__all__ = ["StudyEvents", "StudyEventRegistry", "replay_student"]


class StudyEvents(EventEnum):
    """What happens in a study, in order (see the module docstring for the arguments)."""

    STUDY_STARTED = "study_started"
    GENERATION_STARTED = "generation_started"
    STUDENT_STARTED = "student_started"
    STUDENT_FINISHED = "student_finished"
    PSEUDO_LABELS_READY = "pseudo_labels_ready"
    GENERATION_FINISHED = "generation_finished"
    STUDY_FINISHED = "study_finished"


class StudyEventRegistry:
    """Handlers per :class:`StudyEvents` member; firing is serialised (students may train concurrently)."""

    def __init__(self) -> None:
        self._event_handlers: dict[StudyEvents, list[Callable[..., Any]]] = {e: [] for e in StudyEvents}
        self._event_lock = threading.RLock()

    def add_event_handler(self, event: StudyEvents, handler: Callable[..., Any]) -> None:
        """Call ``handler(study, **kwargs)`` whenever ``event`` fires.

        Raises:
            TypeError: ``event`` is not a :class:`StudyEvents` member.
        """
        if not isinstance(event, StudyEvents):
            raise TypeError(f"event must be a StudyEvents member, got {event!r}")
        self._event_handlers[event].append(handler)

    def has_event_handler(self, handler: Callable[..., Any], event: StudyEvents | None = None) -> bool:
        """Whether ``handler`` is registered (for ``event``, or for any event)."""
        events = [event] if event is not None else list(StudyEvents)
        return any(handler in self._event_handlers[e] for e in events)

    def on(self, event: StudyEvents) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator form of :meth:`add_event_handler`."""

        def register(handler: Callable[..., Any]) -> Callable[..., Any]:
            self.add_event_handler(event, handler)
            return handler

        return register

    def fire_event(self, event: StudyEvents, **kwargs: Any) -> None:
        """Call every handler of ``event`` in registration order."""
        with self._event_lock:
            for handler in list(self._event_handlers[event]):
                handler(self, **kwargs)


def replay_student(study: Any, result: Any) -> None:
    """Fire, on the main process, the events of a student that another process trained.

    ``STUDENT_STARTED`` gets an ignite engine that replays the student's epoch history
    (``StudentResult.history``): each epoch sets ``engine.state.history_row`` before ``EPOCH_COMPLETED``,
    as the student's trainer does, so that the handlers' epoch-level handlers log its epochs; then
    ``STUDENT_FINISHED`` (not resumed) follows, as for a student trained in this process.

    Args:
        study: the :class:`~monai_im.selftrain.SelfTrainingStudy` whose events fire.
        result: the other process's :class:`~monai_im.selftrain.StudentResult` (read from its ``result.json``).
    """
    rows = [dict(r) for r in result.history]

    def step(engine: Engine, _: Any) -> None:
        engine.state.history_row = rows[engine.state.epoch - 1]

    engine = Engine(step)
    study.fire_event(
        StudyEvents.STUDENT_STARTED, generation=result.generation, index=result.index, trainer=engine
    )
    if rows:
        engine.run([None], max_epochs=len(rows))
    study.fire_event(StudyEvents.STUDENT_FINISHED, result=result, resumed=False)
