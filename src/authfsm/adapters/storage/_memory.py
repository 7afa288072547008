"""An in-process store: for tests and for single-process applications."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import attrs

from ...engine import LeaseTimeout, Record, WriteConflict
from ._wakeup import Wakeup

__all__ = ["MemoryStore"]


class MemoryStore:
    """
    Holds one record in memory; engines of one process sharing it share its lease.

    Records are immutable values, so a read returns the stored object itself.
    """

    def __init__(self, record: Record | None = None, *, name: str = "memory") -> None:
        self._record = record
        self._name = name
        self._mutex = threading.Lock()
        # Not re-entrant: tasks of one event loop share a thread and must still exclude each other.
        self._lease = threading.Lock()
        self._released = Wakeup()

    @property
    def location(self) -> str:
        return f"<{self._name}>"

    def read(self) -> Record | None:
        return self._record

    def write(self, record: Record, expected_revision: int | None) -> Record:
        with self._mutex:
            found = self._record.revision if self._record is not None else None
            if found != expected_revision:
                raise WriteConflict(self.location, expected_revision, found)
            stored = attrs.evolve(record, revision=(found or 0) + 1)
            self._record = stored
            return stored

    def delete(self, expected_revision: int | None) -> None:
        with self._mutex:
            found = self._record.revision if self._record is not None else None
            if found != expected_revision:
                raise WriteConflict(self.location, expected_revision, found)
            self._record = None

    @contextmanager
    def lease(self, timeout: float) -> Iterator[None]:
        if not self._lease.acquire(timeout=timeout if timeout >= 0 else -1):
            raise LeaseTimeout(
                f"The refresh lease of {self.location} was held for over {timeout:g} s.",
                reason="lease_timeout",
            )
        try:
            yield
        finally:
            with self._released.lock:
                self._lease.release()
                self._released.wake()

    def wait_for_release(self, timeout: float) -> None:
        """Sleep until the lease is free, at most ``timeout`` seconds (``ReleaseWatch``)."""
        self._released.wait(timeout, until_woken=self._lease.locked)

    async def wait_for_release_async(self, timeout: float) -> None:
        """:meth:`wait_for_release` for ``AsyncAuthEngine``: no thread is held while it waits."""
        await self._released.wait_async(timeout, until_woken=self._lease.locked)

    def __repr__(self) -> str:
        revision = self._record.revision if self._record is not None else None
        return f"<MemoryStore {self._name} revision={revision}>"
