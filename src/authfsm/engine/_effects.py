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
import time
from collections.abc import AsyncIterator, Generator
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar, runtime_checkable

import attrs

from ._credentials import Credentials
from ._errors import LeaseTimeout
from ._ports import RefreshOutcome, Store, TokenEndpoint
from ._record import Record

__all__ = [
    "AcquireLease",
    "AsyncStore",
    "AsyncTokenEndpoint",
    "CallEndpoint",
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
class CallEndpoint:
    """Spend the credential's refresh token (result: a ``RefreshOutcome``)."""

    credentials: Credentials = attrs.field(repr=False)


@attrs.frozen
class RevokeAtEndpoint:
    """Revoke the credential, best effort (result: bool)."""

    credentials: Credentials = attrs.field(repr=False)


Effect = ReadStore | WriteStore | AcquireLease | ReleaseLease | CallEndpoint | RevokeAtEndpoint
Flow = Generator[Effect, Any, T]

READ = ReadStore()
RELEASE = ReleaseLease()


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
class AsyncTokenEndpoint(Protocol):
    """A token endpoint with coroutine methods."""

    async def refresh_async(self, credentials: Credentials) -> RefreshOutcome: ...

    async def revoke_async(self, credentials: Credentials) -> bool: ...


def drive(flow: Flow[T], store: Store, endpoint: TokenEndpoint | None) -> T:
    """Run ``flow`` to completion with blocking I/O."""
    leases: list[AbstractContextManager[None]] = []
    value: Any = None
    error: BaseException | None = None
    try:
        while True:
            try:
                effect = flow.send(value) if error is None else flow.throw(error)
            except StopIteration as stop:
                result: T = stop.value
                return result
            value, error = None, None
            try:
                if isinstance(effect, ReadStore):
                    value = store.read()
                elif isinstance(effect, WriteStore):
                    value = store.write(effect.record, effect.expected_revision)
                elif isinstance(effect, AcquireLease):
                    lease = store.lease(effect.timeout)
                    lease.__enter__()
                    leases.append(lease)
                elif isinstance(effect, ReleaseLease):
                    leases.pop().__exit__(None, None, None)
                elif isinstance(effect, CallEndpoint):
                    assert endpoint is not None, "the core checks for an endpoint first"
                    value = endpoint.refresh(effect.credentials)
                else:
                    value = endpoint.revoke(effect.credentials) if endpoint else False
            except BaseException as caught:  # noqa: BLE001 - handed to the flow, which decides
                # KeyboardInterrupt included: the flow's finally blocks must leave REFRESHING.
                error = caught
    finally:
        while leases:  # only if the flow itself failed mid-lease
            leases.pop().__exit__(None, None, None)


async def drive_async(flow: Flow[T], store: AsyncStore, endpoint: AsyncTokenEndpoint | None) -> T:
    """
    Run ``flow`` to completion with asyncio I/O.

    Cancellation is thrown into the flow like any error, so its ``finally`` blocks release the
    lease and leave REFRESHING; the lease exits are shielded from a second cancellation.
    """
    leases: list[contextlib.AbstractAsyncContextManager[None]] = []
    value: Any = None
    error: BaseException | None = None
    try:
        while True:
            try:
                effect = flow.send(value) if error is None else flow.throw(error)
            except StopIteration as stop:
                result: T = stop.value
                return result
            value, error = None, None
            try:
                if isinstance(effect, ReadStore):
                    value = await store.read()
                elif isinstance(effect, WriteStore):
                    value = await store.write(effect.record, effect.expected_revision)
                elif isinstance(effect, AcquireLease):
                    lease = store.lease(effect.timeout)
                    await lease.__aenter__()
                    leases.append(lease)
                elif isinstance(effect, ReleaseLease):
                    await asyncio.shield(leases.pop().__aexit__(None, None, None))
                elif isinstance(effect, CallEndpoint):
                    assert endpoint is not None, "the core checks for an endpoint first"
                    value = await endpoint.refresh_async(effect.credentials)
                else:
                    value = await endpoint.revoke_async(effect.credentials) if endpoint else False
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
