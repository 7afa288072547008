"""
A clock that moves only when a test tells it to.

:class:`FakeClock` stands in for :func:`time.time` wherever authfsm takes a ``clock`` parameter (the
engines, :class:`~authfsm.testing.TokenServer`), so expiry, refresh points and backoff can be tested
without sleeping. It owns nothing but the current time, and it never reads the real clock.
"""

from __future__ import annotations

import math
import threading

__all__ = ["FakeClock"]


class FakeClock:
    """
    POSIX seconds that change only through :meth:`advance` and :meth:`set`.

    Calling the clock returns the current fake time. It is safe to share between threads: engines
    read it from worker threads while the test advances it.
    """

    __slots__ = ("_lock", "_now")

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._lock = threading.Lock()
        self._now = _finite(start, "start")

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds`` and return the new time; :meth:`set` goes back."""
        seconds = _finite(seconds, "seconds")
        if seconds < 0:
            raise ValueError("advance() moves forward only; use set() to put the clock back")
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, t: float) -> None:
        """Put the clock at ``t`` POSIX seconds, forward or back (a stepped system clock)."""
        t = _finite(t, "t")
        with self._lock:
            self._now = t

    def __repr__(self) -> str:
        return f"FakeClock({self():.3f})"


def _finite(value: float, name: str) -> float:
    # bool is an int; a clock set to True is a bug, not one second past the epoch.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite")
    return float(value)
