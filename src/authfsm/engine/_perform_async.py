"""
What each effect means for an asyncio store and endpoint: one call per kind of effect.

``_perform_async.py`` is the source; ``_perform_sync.py`` is generated from it by
``scripts/unasync.py`` (a test fails while it is stale). The drivers around them
(:mod:`._drivers`) are written twice on purpose: what they add is how a run is interrupted,
Ctrl-C held back by a signal handler for blocking I/O, cancellation shielded for asyncio.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ._effects import (
    POLL_INTERVAL,
    AcquireLease,
    AwaitRelease,
    CallEndpoint,
    Effect,
    ReadStore,
    ReleaseLease,
    RetainLease,
    TryLease,
    WriteStore,
)
from ._errors import LeaseTimeout
from ._perform_hooks import shielded_async, sleep_async
from ._ports_async import AsyncStore, AsyncTokenEndpoint, TransientFailure

__all__ = ["perform_async"]


async def perform_async(
    effect: Effect,
    store: AsyncStore,
    endpoint: AsyncTokenEndpoint | None,
    leases: list[contextlib.AbstractAsyncContextManager[None]],
    retained: list[contextlib.AbstractAsyncContextManager[None]],
) -> Any:
    """
    Perform ``effect``; its result is sent back into the flow (its exception thrown in).

    A lease taken is pushed on ``leases`` (this run's) and popped by the effect that releases
    it; one the flow retains moves to ``retained`` (the engine's, kept across runs), and is
    released from there once no lease of the run is left. An endpoint that raises instead of
    classifying its answer has failed for now (a transient failure).
    """
    if isinstance(effect, ReadStore):
        return await store.read()
    if isinstance(effect, WriteStore):
        return await store.write(effect.record, effect.expected_revision)
    if isinstance(effect, TryLease):
        lease = store.lease(0.0)
        try:
            await lease.__aenter__()
        except LeaseTimeout:
            return False
        leases.append(lease)
        return True
    if isinstance(effect, AcquireLease):
        lease = store.lease(effect.timeout)
        await lease.__aenter__()
        leases.append(lease)
        return None
    if isinstance(effect, ReleaseLease):
        held = leases if leases else retained
        if held:  # none: a kept lease the engine let go of already (a new event loop)
            await shielded_async(held.pop().__aexit__(None, None, None))
        return None
    if isinstance(effect, RetainLease):
        retained.append(leases.pop())
        return None
    if isinstance(effect, AwaitRelease):
        # What isinstance(store, AsyncReleaseWatch) checks, without the protocol machinery that
        # costs every follower of a storm tens of microseconds.
        wait_for_release = getattr(store, "wait_for_release", None)
        if wait_for_release is not None:
            # What the release carried (a Released), if the store says; else None.
            return await wait_for_release(effect.timeout)
        await sleep_async(max(min(effect.timeout, POLL_INTERVAL), 0.0))
        return None
    if isinstance(effect, CallEndpoint):
        assert endpoint is not None, "the core checks for an endpoint first"
        try:
            return await endpoint.refresh_async(effect.credentials)
        except Exception as error:  # noqa: BLE001 - a custom endpoint broke its contract
            return TransientFailure(reason=f"endpoint_error:{type(error).__name__}")
    return await endpoint.revoke_async(effect.credentials) if endpoint else False
