"""
The I/O requests the engine core yields.

The core (:mod:`._flows`) is written as generators that ``yield`` one of these effects and get
its result sent back (or its exception thrown in). :mod:`._drivers` runs a flow with a blocking
store and endpoint or with asyncio (performing each effect with :mod:`._perform_sync` or
:mod:`._perform_async`), so the sync and async engines share every decision.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, TypeVar

import attrs

from ._credentials import Credentials
from ._record import Record

__all__ = [
    "POLL_INTERVAL",
    "READ",
    "RELEASE",
    "RETAIN",
    "TRY_LEASE",
    "AcquireLease",
    "AwaitRelease",
    "CallEndpoint",
    "Effect",
    "Flow",
    "ReadStore",
    "ReleaseLease",
    "RetainLease",
    "RevokeAtEndpoint",
    "TryLease",
    "WriteStore",
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
class TryLease:
    """
    Take the store's refresh lease if nobody holds it (result: True), else answer at once
    (False): one look, no wait, and no ``LeaseTimeout`` thrown through the flow (every follower
    of a storm makes this look before it sleeps).
    """


@attrs.frozen
class ReleaseLease:
    """Give the lease back (the one taken in this run, else the one the engine retained)."""


@attrs.frozen
class RetainLease:
    """
    Keep the lease taken in this run past its end, held for the engine (result: None).

    An engine whose freshly minted tokens could not be written keeps the lease until a later
    call writes them: a sibling that took it meanwhile would read the older record and spend
    its refresh token, which the server has already rotated. A later run releases it.
    """


@attrs.frozen
class AwaitRelease:
    """
    Sleep until a sibling gives the lease back, at most ``timeout`` seconds.

    A store that implements :class:`~authfsm.engine.ReleaseWatch` wakes the waiter at once (the
    result: what the release carried, a :class:`~authfsm.engine.Released`, or None); any other
    store is looked at again after :data:`POLL_INTERVAL` (or ``timeout``, if shorter).
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
    | TryLease
    | ReleaseLease
    | RetainLease
    | AwaitRelease
    | CallEndpoint
    | RevokeAtEndpoint
)
Flow = Generator[Effect, Any, T]

READ = ReadStore()
RELEASE = ReleaseLease()
RETAIN = RetainLease()
TRY_LEASE = TryLease()

#: How long a waiter sleeps between looks at a store that cannot wake it (no ``ReleaseWatch``).
POLL_INTERVAL: float = 0.02
