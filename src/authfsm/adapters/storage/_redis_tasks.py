"""
What :class:`AsyncRedisStore` does with asyncio tasks where :class:`RedisStore` uses threads.

The asyncio store is the hand-written source the blocking one is generated from
(``scripts/unasync.py``); what truly differs between the two lives here and in its twin
``_redis_threads.py``, under the same names:

- :class:`LeaseKeeper`: each held lease is renewed by a task of its own, and a lease whose taking
  or giving back was cancelled is given back by a background task (the cancelled task must not
  wait for Redis);
- ``Interrupted``: a cancelled task, where a blocking call is interrupted by Ctrl-C;
- ``Condition``, :func:`wait_on` and ``sleep``: the waiting primitives.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, Protocol

__all__ = ["Condition", "Interrupted", "LeaseKeeper", "initialized", "sleep", "wait_on"]

Interrupted = asyncio.CancelledError
Condition = asyncio.Condition
sleep = asyncio.sleep


async def wait_on(condition: asyncio.Condition, timeout: float) -> None:
    """Wait (holding ``condition``) until notified or ``timeout`` seconds have passed."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(condition.wait(), timeout)


async def initialized(client: Any) -> None:
    """An asyncio Redis Cluster client learns its slot map at its first command: now."""
    initialize = getattr(client, "initialize", None)
    if initialize is not None:
        await initialize()


class Lessee(Protocol):
    """The store a :class:`LeaseKeeper` works for."""

    @property
    def renew_every(self) -> float: ...

    async def _renew(self, token: str) -> None: ...

    async def _release(self, token: str) -> None: ...


class LeaseKeeper:
    """Keeps the leases of one :class:`AsyncRedisStore` alive while held, a task per lease."""

    def __init__(self, store: Lessee) -> None:
        self._store = store
        self._renewals: dict[str, asyncio.Task[None]] = {}
        # Fire-and-forget tasks (a cancelled waiter's release) are kept alive until done.
        self._background: set[asyncio.Task[None]] = set()

    def hold(self, token: str) -> None:
        """Renew ``token``'s lease from now on, until :meth:`drop`."""
        loop = asyncio.get_running_loop()
        self._renewals[token] = loop.create_task(self._renew_forever(token))

    def drop(self, token: str) -> None:
        renewal = self._renewals.pop(token, None)
        if renewal is not None:
            renewal.cancel()

    def give_back(self, token: str) -> None:
        """Release ``token``'s lease in the background, if it was taken."""
        self._in_background(self._release_quietly(token))

    async def _renew_forever(self, token: str) -> None:
        while True:
            await asyncio.sleep(self._store.renew_every)
            # Retried at the next tick, whatever failed (see _redis_threads._LeaseRenewer).
            with contextlib.suppress(Exception):
                await self._store._renew(token)

    async def _release_quietly(self, token: str) -> None:
        # In the background: nobody awaits it, so nothing may escape it (the lease expires).
        with contextlib.suppress(Exception):
            await self._store._release(token)

    def _in_background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
