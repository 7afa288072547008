# Generated from _perform_async.py by scripts/unasync.py: do not edit.
# Edit the source, then run `python scripts/unasync.py` (a test fails while this is stale).
"""
What each effect means for a blocking store and endpoint: one call per kind of effect.

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
from ._perform_hooks import shielded, sleep
from ._ports import Store, TokenEndpoint, TransientFailure

__all__ = ["perform"]


def perform(
    effect: Effect,
    store: Store,
    endpoint: TokenEndpoint | None,
    leases: list[contextlib.AbstractContextManager[None]],
    retained: list[contextlib.AbstractContextManager[None]],
) -> Any:
    """
    Perform ``effect``; its result is sent back into the flow (its exception thrown in).

    A lease taken is pushed on ``leases`` (this run's) and popped by the effect that releases
    it; one the flow retains moves to ``retained`` (the engine's, kept across runs), and is
    released from there once no lease of the run is left. An endpoint that raises instead of
    classifying its answer has failed for now (a transient failure).
    """
    if isinstance(effect, ReadStore):
        return store.read()
    if isinstance(effect, WriteStore):
        return store.write(effect.record, effect.expected_revision)
    if isinstance(effect, TryLease):
        lease = store.lease(0.0)
        try:
            lease.__enter__()
        except LeaseTimeout:
            return False
        leases.append(lease)
        return True
    if isinstance(effect, AcquireLease):
        lease = store.lease(effect.timeout)
        lease.__enter__()
        leases.append(lease)
        return None
    if isinstance(effect, ReleaseLease):
        held = leases if leases else retained
        if held:  # none: a kept lease the engine let go of already (a new event loop)
            shielded(held.pop().__exit__(None, None, None))
        return None
    if isinstance(effect, RetainLease):
        retained.append(leases.pop())
        return None
    if isinstance(effect, AwaitRelease):
        # What isinstance(store, ReleaseWatch) checks, without the protocol machinery that
        # costs every follower of a storm tens of microseconds.
        wait_for_release = getattr(store, "wait_for_release", None)
        if wait_for_release is not None:
            # What the release carried (a Released), if the store says; else None.
            return wait_for_release(effect.timeout)
        sleep(max(min(effect.timeout, POLL_INTERVAL), 0.0))
        return None
    if isinstance(effect, CallEndpoint):
        assert endpoint is not None, "the core checks for an endpoint first"
        try:
            return endpoint.refresh(effect.credentials)
        except Exception as error:  # noqa: BLE001 - a custom endpoint broke its contract
            return TransientFailure(reason=f"endpoint_error:{type(error).__name__}")
    return endpoint.revoke(effect.credentials) if endpoint else False
