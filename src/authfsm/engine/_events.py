"""
The one place authfsm emits log events.

Events are structlog events with dotted names and flat fields; credentials appear only as
fingerprints. The library never configures structlog: with no logger passed and structlog left
unconfigured by the application, authfsm stays silent rather than print to its stdout.
"""

from __future__ import annotations

from typing import Any

import structlog

from ._lifecycle import Transition

__all__ = ["EventLog"]


class EventLog:
    """Emits ``authfsm.*`` events to a given structlog logger, or to ``structlog.get_logger``."""

    def __init__(self, logger: Any = None) -> None:
        self._logger = logger

    def emit(self, level: str, event: str, **fields: Any) -> None:
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
