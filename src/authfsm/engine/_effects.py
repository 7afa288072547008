"""
The I/O requests the engine core yields, and the drivers that perform them.

The core (:mod:`._flows`) is written as generators that ``yield`` one of these effects and get
its result sent back (or its exception thrown in). :func:`drive` performs them with a blocking
store and endpoint; :func:`drive_async` with asyncio, so the sync and async engines share every
decision and differ only here.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from contextlib import AbstractContextManager
from types import FrameType
from typing import Any, Protocol, TypeVar, runtime_checkable

import attrs

from ._credentials import Credentials
from ._errors import LeaseTimeout
from ._ports import RefreshOutcome, ReleaseWatch, Store, TokenEndpoint, TransientFailure
from ._record import Record

__all__ = [
    "POLL_INTERVAL",
    "AcquireLease",
    "AsyncReleaseWatch",
    "AsyncStore",
    "AsyncTokenEndpoint",
    "AwaitRelease",
    "CallEndpoint",
    "Commitment",
    "Effect",
    "Flow",
    "ReadStore",
    "ReleaseLease",
    "RevokeAtEndpoint",
    "WriteStore",
    "drive",
    "drive_async",
]

T = TypeVar("T")


@attrs.frozen
class ReadStore:
    """Read the store's record (result: ``Record | None``)."""


@attrs.frozen
class WriteStore:
    """Compare-and-swap a record (result: the stored ``Record``)."""

    record: Record
    expected_revision: int | None


@attrs.frozen
class AcquireLease:
    """Take the store's refresh lease (result: None; ``LeaseTimeout`` thrown in)."""

    timeout: float


@attrs.frozen
class ReleaseLease:
    """Give the lease back."""


@attrs.frozen
class AwaitRelease:
    """
    Sleep until a sibling gives the lease back, at most ``timeout`` seconds (result: None).

    A store that implements :class:`~authfsm.engine.ReleaseWatch` wakes the waiter at once; any
    other store is looked at again after :data:`POLL_INTERVAL` (or ``timeout``, if shorter).
    """

    timeout: float


@attrs.frozen
class CallEndpoint:
    """Spend the credential's refresh token (result: a ``RefreshOutcome``)."""

    credentials: Credentials = attrs.field(repr=False)


@attrs.frozen
class RevokeAtEndpoint:
    """Revoke the credential, best effort (result: bool)."""

    credentials: Credentials = attrs.field(repr=False)


Effect = (
    ReadStore
    | WriteStore
    | AcquireLease
    | ReleaseLease
    | AwaitRelease
    | CallEndpoint
    | RevokeAtEndpoint
)
Flow = Generator[Effect, Any, T]

READ = ReadStore()
RELEASE = ReleaseLease()

#: How long a waiter sleeps between looks at a store that cannot wake it (no ``ReleaseWatch``).
POLL_INTERVAL: float = 0.02


@runtime_checkable
class AsyncStore(Protocol):
    """A store with coroutine methods (for ``AsyncAuthEngine``)."""

    @property
    def location(self) -> str: ...

    async def read(self) -> Record | None: ...

    async def write(self, record: Record, expected_revision: int | None) -> Record: ...

    async def delete(self, expected_revision: int | None) -> None: ...

    def lease(self, timeout: float) -> contextlib.AbstractAsyncContextManager[None]: ...


@runtime_checkable
class AsyncReleaseWatch(Protocol):
    """:class:`~authfsm.engine.ReleaseWatch` for asyncio stores."""

    async def wait_for_release(self, timeout: float) -> None: ...


class AsyncTokenEndpoint(Protocol):
    """A token endpoint with coroutine methods."""

    async def refresh_async(self, credentials: Credentials) -> RefreshOutcome: ...

    async def revoke_async(self, credentials: Credentials) -> bool: ...


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


def _perform(
    effect: Effect,
    store: Store,
    endpoint: TokenEndpoint | None,
    leases: list[AbstractContextManager[None]],
) -> Any:
    if isinstance(effect, ReadStore):
        return store.read()
    if isinstance(effect, WriteStore):
        return store.write(effect.record, effect.expected_revision)
    if isinstance(effect, AcquireLease):
        lease = store.lease(effect.timeout)
        lease.__enter__()
        leases.append(lease)
        return None
    if isinstance(effect, ReleaseLease):
        leases.pop().__exit__(None, None, None)
        return None
    if isinstance(effect, AwaitRelease):
        if isinstance(store, ReleaseWatch):
            store.wait_for_release(effect.timeout)
        else:
            time.sleep(max(min(effect.timeout, POLL_INTERVAL), 0.0))
        return None
    if isinstance(effect, CallEndpoint):
        assert endpoint is not None, "the core checks for an endpoint first"
        return _outcome(lambda: endpoint.refresh(effect.credentials))
    return endpoint.revoke(effect.credentials) if endpoint else False


def _outcome(call: Callable[[], RefreshOutcome]) -> RefreshOutcome:
    """A token endpoint's answer; an endpoint that raises instead of classifying fails for now."""
    try:
        return call()
    except Exception as error:  # noqa: BLE001 - a custom endpoint broke its contract
        return TransientFailure(reason=f"endpoint_error:{type(error).__name__}")


def drive(flow: Flow[T], store: Store, endpoint: TokenEndpoint | None) -> T:
    """
    Run ``flow`` to completion with blocking I/O.

    Every exception (KeyboardInterrupt included) is handed to the flow, whose ``finally`` blocks
    leave REFRESHING and give the lease back. Once the flow has sent a token call, Ctrl-C is
    held back until the answer is written and the lease released, then delivered.
    """
    leases: list[AbstractContextManager[None]] = []
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
                value = _perform(effect, store, endpoint, leases)
            except BaseException as caught:  # noqa: BLE001 - handed to the flow, which decides
                error = caught
    finally:
        try:
            while leases:  # only if the flow itself failed mid-lease
                leases.pop().__exit__(None, None, None)
        finally:
            interrupts.__exit__(None, None, None)


async def _perform_async(
    effect: Effect,
    store: AsyncStore,
    endpoint: AsyncTokenEndpoint | None,
    leases: list[contextlib.AbstractAsyncContextManager[None]],
) -> Any:
    if isinstance(effect, ReadStore):
        return await store.read()
    if isinstance(effect, WriteStore):
        return await store.write(effect.record, effect.expected_revision)
    if isinstance(effect, AcquireLease):
        lease = store.lease(effect.timeout)
        await lease.__aenter__()
        leases.append(lease)
        return None
    if isinstance(effect, ReleaseLease):
        await asyncio.shield(leases.pop().__aexit__(None, None, None))
        return None
    if isinstance(effect, AwaitRelease):
        if isinstance(store, AsyncReleaseWatch):
            await store.wait_for_release(effect.timeout)
        else:
            await asyncio.sleep(max(min(effect.timeout, POLL_INTERVAL), 0.0))
        return None
    if isinstance(effect, CallEndpoint):
        assert endpoint is not None, "the core checks for an endpoint first"
        try:
            return await endpoint.refresh_async(effect.credentials)
        except Exception as error:  # noqa: BLE001 - a custom endpoint broke its contract
            return TransientFailure(reason=f"endpoint_error:{type(error).__name__}")
    return await endpoint.revoke_async(effect.credentials) if endpoint else False


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
) -> T:
    """
    Run ``flow`` to completion with asyncio I/O.

    Before the token call, cancellation is thrown into the flow like any error, so its
    ``finally`` blocks release the lease and leave REFRESHING. From the token call on (noted in
    ``commitment``), a cancellation of this task is held back until the answer is written and
    the lease released, then raised; the lease exits are always shielded.
    """
    leases: list[contextlib.AbstractAsyncContextManager[None]] = []
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
                operation = _perform_async(effect, store, endpoint, leases)
                value = await (_despite_cancellation(operation, held) if committed else operation)
            except BaseException as caught:  # noqa: BLE001 - cancellation included
                error = caught
    finally:
        while leases:
            await asyncio.shield(leases.pop().__aexit__(None, None, None))


@contextlib.asynccontextmanager
async def poll_lease(store: Store, timeout: float, interval: float = 0.002) -> AsyncIterator[None]:
    """
    Take a blocking store's lease from asyncio without blocking the loop.

    Tries ``store.lease(0)`` (a non-blocking attempt) and sleeps between tries, so a cancelled
    waiter never ends up holding the lease.
    """
    deadline = time.monotonic() + max(timeout, 0.0)
    while True:
        lease = store.lease(0)
        try:
            lease.__enter__()
        except LeaseTimeout:
            if time.monotonic() >= deadline:
                raise LeaseTimeout(
                    f"The refresh lease of {store.location} was held for over {timeout:g} s.",
                    reason="lease_timeout",
                ) from None
            await asyncio.sleep(interval)
            interval = min(interval * 2, 0.05)
            continue
        try:
            yield
        finally:
            lease.__exit__(None, None, None)
        return
