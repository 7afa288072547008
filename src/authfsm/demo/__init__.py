"""
``authfsm demo``: real worker processes sharing one credential file, a naive client against
authfsm, in three scenarios (a refresh race, a revoked refresh token, another user's login).

:func:`run_demo` runs it and returns a :class:`DemoReport`; :func:`format_report` draws the table.
The worker processes are ``python -m authfsm.demo.worker``.
"""

from __future__ import annotations

from ._pool import DemoError
from ._report import StreamProgress, format_report
from ._runner import CLIENTS, SCENARIOS, DemoReport, Progress, RunResult, run_demo

__all__ = [
    "CLIENTS",
    "SCENARIOS",
    "DemoError",
    "DemoReport",
    "Progress",
    "RunResult",
    "StreamProgress",
    "format_report",
    "run_demo",
]
