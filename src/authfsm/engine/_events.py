"""
The one place authfsm emits events.

Events are structlog events with dotted names and flat fields; credentials appear only as
fingerprints. The library never configures structlog: with no logger passed and structlog left
unconfigured by the application, authfsm stays silent rather than print to its stdout.

An optional observer (``authfsm.metrics``) sees every event, whatever the log level, before the
logger does. It must not slow a flow down, and nothing it raises reaches the engine: metrics
cannot break a refresh.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeAlias

import structlog

from ..states import State
from ._credentials import Credentials
from ._lifecycle import Transition

__all__ = ["EventLog", "EventObserver", "ObservedEngine", "Observer"]

#: Called with each event's name and fields (never a token: fingerprints at most).
EventObserver: TypeAlias = Callable[[str, Mapping[str, Any]], None]


class ObservedEngine(Protocol):
    """What an observer may read from the engine it watches, besides its events."""

    @property
    def state(self) -> State: ...

    @property
    def credentials(self) -> Credentials | None: ...


class Observer(Protocol):
    """What an engine's ``metrics=`` takes (``authfsm.metrics.EngineMetrics``)."""

    def attach(
        self,
        engine: ObservedEngine,
        *,
        store: object,
        endpoint: object,
        clock: Callable[[], float],
    ) -> EventObserver:
        """Start watching ``engine``; returns what receives its events."""
        ...


class EventLog:
    """Emits ``authfsm.*`` events to a given structlog logger, or to ``structlog.get_logger``."""

    def __init__(self, logger: Any = None, observer: EventObserver | None = None) -> None:
        self._logger = logger
        self._observer = observer

    def emit(self, level: str, event: str, **fields: Any) -> None:
        observer = self._observer
        if observer is not None:
            # A broken exporter or meter must never break the flow that emitted the event.
            with contextlib.suppress(Exception):
                observer(event, fields)
        logger = self._logger
        if logger is None:
            if not structlog.is_configured():
                return
            logger = structlog.get_logger("authfsm")
        getattr(logger, level)(event, **fields)

    def transition(self, change: Transition) -> None:
        facts = change.facts
        self.emit(
            "info",
            "authfsm.transition",
            from_state=change.source.value,
            to_state=change.dest.value,
            trigger=change.trigger,
            reason=facts.reason,
            fingerprint=facts.candidate or facts.reference,
        )
