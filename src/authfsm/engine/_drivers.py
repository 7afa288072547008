"""
The drivers that run a flow (:mod:`._flows`) to its end: with blocking I/O, or with asyncio.

Each effect is performed by :func:`._perform_sync.perform` or
:func:`._perform_async.perform_async` (one generated from the other). What a driver adds is the
one thing that cannot be shared: how a run is interrupted. Once a flow has sent a token call,
its answer must be written and the lease released before anything else happens: the blocking
driver holds Ctrl-C back with a signal handler, the asyncio driver shields the rest of the run
from cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Awaitable
from contextlib import AbstractContextManager
from types import FrameType
from typing import Any, TypeVar

from ._effects import CallEndpoint, Flow
from ._errors import LeaseTimeout
from ._perform_async import perform_async
from ._perform_sync import perform
from ._ports import Store, TokenEndpoint
from ._ports_async import AsyncStore, AsyncTokenEndpoint

__all__ = ["Commitment", "drive", "drive_async", "poll_lease"]

T = TypeVar("T")


class Commitment:
    """
    Whether a flow has sent a token call (after which it must run to its end).

    Once the endpoint has been asked to spend a refresh token, the server may have rotated it:
    the answer must be written to the store, and the lease released only after that, whatever
    the caller does meanwhile (Ctrl-C, a cancelled task, a closing event loop).
    """

    __slots__ = ("committed",)

    def __init__(self) -> None:
        self.committed = False


class _DeferredInterrupts(AbstractContextManager[None]):
    """
    Holds back Ctrl-C (SIGINT) in the main thread until the block ends, then delivers it.

    A third Ctrl-C is not held back: a user who insists gets the interrupt at once.
    """

    _PATIENCE = 2

    def __init__(self) -> None:
        self._previous: Any = None
        self._held = 0
        self._active = False

    def __enter__(self) -> None:
        if self._active or threading.current_thread() is not threading.main_thread():
            return  # signals are delivered to the main thread only: nothing to hold back
        previous = signal.getsignal(signal.SIGINT)
        if previous is None:
            return  # a handler installed outside Python: it cannot be put back, leave it alone
        self._previous = previous
        signal.signal(signal.SIGINT, self._hold)
        self._active = True

    def _hold(self, signum: int, frame: FrameType | None) -> None:
        self._held += 1
        if self._held > self._PATIENCE:
            self._restore()
            raise KeyboardInterrupt

    def _restore(self) -> None:
        if self._active:
            self._active = False
            signal.signal(signal.SIGINT, self._previous)

    def __exit__(self, *exc_info: object) -> None:
        self._restore()
        if self._held and self._held <= self._PATIENCE:
            self._held = 0
            signal.raise_signal(signal.SIGINT)  # delivered now, to whatever handler was there


def _rebind(retained: list[Any]) -> None:
    """A lease retained by an earlier run, taken over by this thread (a lock file's lease)."""
    for lease in retained:
        rebind = getattr(lease, "rebind", None)
        if rebind is not None:
            rebind()


def drive(
    flow: Flow[T],
    store: Store,
    endpoint: TokenEndpoint | None,
    retained: list[AbstractContextManager[None]] | None = None,
) -> T:
    """
    Run ``flow`` to completion with blocking I/O.

    Every exception (KeyboardInterrupt included) is handed to the flow, whose ``finally`` blocks
    leave REFRESHING and give the lease back. Once the flow has sent a token call, Ctrl-C is
    held back until the answer is written and the lease released, then delivered. ``retained``:
    the engine's leases kept across runs (:class:`RetainLease`); this run may release them.
    """
    leases: list[AbstractContextManager[None]] = []
    retained = [] if retained is None else retained
    _rebind(retained)
    value: Any = None
    error: BaseException | None = None
    interrupts = _DeferredInterrupts()
    try:
        while True:
            try:
                effect = flow.send(value) if error is None else flow.throw(error)
            except StopIteration as stop:
                result: T = stop.value
                return result
            value, error = None, None
            if isinstance(effect, CallEndpoint):
                interrupts.__enter__()
            try:
                value = perform(effect, store, endpoint, leases, retained)
            except BaseException as caught:  # noqa: BLE001 - handed to the flow, which decides
                error = caught
    finally:
        try:
            while leases:  # only if the flow itself failed mid-lease
                leases.pop().__exit__(None, None, None)
        finally:
            interrupts.__exit__(None, None, None)


async def _despite_cancellation(operation: Awaitable[T], held: list[bool]) -> T:
    """Await ``operation`` to its end even if this task is cancelled meanwhile (noted in held)."""
    future = asyncio.ensure_future(operation)
    while True:
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if future.done():
                raise  # the operation itself was cancelled: nothing left to wait for
            held.append(True)
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()


async def drive_async(
    flow: Flow[T],
    store: AsyncStore,
    endpoint: AsyncTokenEndpoint | None,
    commitment: Commitment | None = None,
    retained: list[contextlib.AbstractAsyncContextManager[None]] | None = None,
) -> T:
    """
    Run ``flow`` to completion with asyncio I/O.

    Before the token call, cancellation is thrown into the flow like any error, so its
    ``finally`` blocks release the lease and leave REFRESHING. From the token call on (noted in
    ``commitment``), a cancellation of this task is held back until the answer is written and
    the lease released, then raised; the lease exits are always shielded. ``retained``: as for
    :func:`drive`.
    """
    leases: list[contextlib.AbstractAsyncContextManager[None]] = []
    retained = [] if retained is None else retained
    value: Any = None
    error: BaseException | None = None
    held: list[bool] = []
    committed = False
    try:
        while True:
            try:
                effect = flow.send(value) if error is None else flow.throw(error)
            except StopIteration as stop:
                if held:
                    raise asyncio.CancelledError from None
                result: T = stop.value
                return result
            value, error = None, None
            if isinstance(effect, CallEndpoint):
                committed = True
                if commitment is not None:
                    commitment.committed = True
            try:
                operation = perform_async(effect, store, endpoint, leases, retained)
                value = await (_despite_cancellation(operation, held) if committed else operation)
            except BaseException as caught:  # noqa: BLE001 - cancellation included
                error = caught
    finally:
        while leases:
            await asyncio.shield(leases.pop().__aexit__(None, None, None))


class poll_lease(contextlib.AbstractAsyncContextManager[None]):  # noqa: N801 - used as a function
    """
    Take a blocking store's lease from asyncio without blocking the loop.

    Tries ``store.lease(0)`` (a non-blocking attempt) and sleeps between tries, so a cancelled
    waiter never ends up holding the lease. A class, not an async generator: an event loop that
    closes finalizes its async generators, and a lease the engine keeps across calls
    (:class:`RetainLease`) must outlive ``asyncio.run``.
    """

    def __init__(self, store: Store, timeout: float, interval: float = 0.002) -> None:
        self._store = store
        self._timeout = timeout
        self._interval = interval
        self._held: AbstractContextManager[None] | None = None

    async def __aenter__(self) -> None:
        deadline = time.monotonic() + max(self._timeout, 0.0)
        interval = self._interval
        while True:
            lease = self._store.lease(0)
            try:
                lease.__enter__()
            except LeaseTimeout:
                if time.monotonic() >= deadline:
                    raise LeaseTimeout(
                        f"The refresh lease of {self._store.location} was held for over "
                        f"{self._timeout:g} s.",
                        reason="lease_timeout",
                    ) from None
                await asyncio.sleep(interval)
                interval = min(interval * 2, 0.05)
                continue
            self._held = lease
            return

    async def __aexit__(self, *exc_info: object) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.__exit__(None, None, None)

    def rebind(self) -> None:
        """See :meth:`authfsm.adapters.storage._file.LeaseHold.rebind`."""
        rebind = getattr(self._held, "rebind", None)
        if rebind is not None:
            rebind()
