"""
The asyncio contracts the engine drives: :class:`~authfsm.engine.Store`,
:class:`~authfsm.engine.ReleaseWatch` and :class:`~authfsm.engine.TokenEndpoint` with coroutine
methods (for ``AsyncAuthEngine``).

``TransientFailure`` is re-exported for :mod:`._perform_async`, so that the module generated from
it imports the blocking contracts and ``TransientFailure`` from :mod:`._ports` in one line.
"""

from __future__ import annotations

import contextlib
from typing import Protocol, runtime_checkable

from ._credentials import Credentials
from ._ports import RefreshOutcome, Released, TransientFailure
from ._record import Record

__all__ = ["AsyncReleaseWatch", "AsyncStore", "AsyncTokenEndpoint", "TransientFailure"]


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

    async def wait_for_release(self, timeout: float) -> Released | None: ...


class AsyncTokenEndpoint(Protocol):
    """A token endpoint with coroutine methods."""

    async def refresh_async(self, credentials: Credentials) -> RefreshOutcome: ...

    async def revoke_async(self, credentials: Credentials) -> bool: ...
