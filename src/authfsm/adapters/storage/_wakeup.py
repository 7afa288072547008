"""
One event that threads and asyncio tasks (of any event loop) wait for together.

The blocking stores (files, the keyring, memory) wake the engines waiting for their lease with
it: a thread waits on a condition variable; an asyncio task registers a future that ``wake()``
resolves from whatever thread it runs in, so an ``AsyncAuthEngine`` waits without holding a
worker thread (hundreds of engines may wait in one process).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable

__all__ = ["Wakeup"]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Wakeup:
    """Waiters of one event, all woken by :meth:`wake`; a waiter also ends at its timeout."""

    def __init__(self) -> None:
        # Re-entrant: a holder may wake the waiters while it holds the lock (MemoryStore does).
        self.lock = threading.RLock()
        self._changed = threading.Condition(self.lock)
        self._wakes = 0
        self._futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def wait(self, timeout: float, *, until_woken: Callable[[], bool]) -> None:
        """
        Block until the next :meth:`wake` or ``timeout``, if ``until_woken()`` (called with
        :attr:`lock` held, so a wake cannot slip in between) says to wait at all.
        """
        with self._changed:
            if not until_woken():
                return
            seen = self._wakes
            self._changed.wait_for(lambda: self._wakes != seen, max(timeout, 0.0))

    async def wait_async(self, timeout: float, *, until_woken: Callable[[], bool]) -> None:
        """:meth:`wait` for asyncio: the task sleeps on a future, no thread is held."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (asyncio.get_running_loop(), future)
        with self.lock:
            if not until_woken():
                return
            self._futures.append(entry)
        try:
            await asyncio.wait({future}, timeout=max(timeout, 0.0))
        finally:
            with self.lock, contextlib.suppress(ValueError):
                self._futures.remove(entry)

    def wake(self) -> None:
        """Wake every waiting thread and task."""
        with self._changed:
            self._wakes += 1
            futures, self._futures = self._futures, []
            self._changed.notify_all()
        for loop, future in futures:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody is waiting
                loop.call_soon_threadsafe(_resolve, future)
