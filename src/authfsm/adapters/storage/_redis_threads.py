"""
What :class:`RedisStore` does with threads where :class:`AsyncRedisStore` uses tasks.

The blocking store is generated from the asyncio one (``scripts/unasync.py``); what truly
differs between the two lives here and in its hand-written twin ``_redis_tasks.py``, under the
same names:

- :class:`LeaseKeeper`: held leases are renewed by ONE daemon thread per process (not a thread
  per lease), and a lease whose taking or giving back was interrupted is given back at once;
- ``Interrupted``: what interrupts a blocking call (Ctrl-C), where asyncio cancels a task;
- ``Condition``, :func:`wait_on` and ``sleep``: the waiting primitives.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from typing import Any, Final, Protocol

from ...engine import AuthError

__all__ = ["Condition", "Interrupted", "LeaseKeeper", "initialized", "sleep", "wait_on"]

Interrupted = KeyboardInterrupt
Condition = threading.Condition
sleep = time.sleep


def wait_on(condition: threading.Condition, timeout: float) -> None:
    """Wait (holding ``condition``) until notified or ``timeout`` seconds have passed."""
    condition.wait(timeout)


def initialized(client: Any) -> None:
    """A blocking Redis Cluster client learns its slot map when made: nothing to do."""


class Lessee(Protocol):
    """The store a :class:`LeaseKeeper` works for."""

    @property
    def renew_every(self) -> float: ...

    def _renew(self, token: str) -> None: ...

    def _release(self, token: str) -> None: ...


class _LeaseRenewer:
    """
    One daemon thread per process that renews every lease held through a :class:`RedisStore`.

    Stores register (weakly) when made, which starts the thread, so taking a lease costs a dict
    insert and no thread start (a storm's waiters each take the lease once, in series). The
    thread ticks every ``renew_every`` of the store with the shortest TTL and renews all held
    leases; a lease taken just after a tick is renewed within one tick, a third of its TTL.
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._stores: weakref.WeakSet[Lessee] = weakref.WeakSet()
        self._held: dict[str, Lessee] = {}
        self._period = 60.0
        self._thread: threading.Thread | None = None

    def watch(self, store: Lessee) -> None:
        with self._lock:
            self._stores.add(store)
            if store.renew_every < self._period:
                self._period = store.renew_every
                self._lock.notify_all()  # tick at the new, shorter period from now on
            self._ensure_thread()

    def hold(self, store: Lessee, token: str) -> None:
        with self._lock:
            self._held[token] = store
            self._ensure_thread()  # a no-op unless this process was forked since

    def drop(self, token: str) -> None:
        with self._lock:
            self._held.pop(token, None)

    def after_fork_in_child(self) -> None:
        # The parent's thread and leases are not ours; its lock may have been held mid-tick.
        self._lock = threading.Condition()
        self._held = {}
        self._thread = None

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name="authfsm-redis-lease-renewer", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                self._lock.wait(self._period)
                periods = [store.renew_every for store in self._stores]
                self._period = min(periods, default=60.0)
                held = list(self._held.items())
            for token, store in held:
                # A failed renewal is retried at the next tick; if the lease lapses, the CAS on
                # the revision still keeps this holder from overwriting what a successor wrote.
                # Whatever fails (also inside redis-py: a connection the store's close() took
                # away mid-read), this thread renews every store's leases: it must not end.
                with contextlib.suppress(Exception):
                    store._renew(token)


_RENEWER: Final = _LeaseRenewer()
os.register_at_fork(after_in_child=_RENEWER.after_fork_in_child)


class LeaseKeeper:
    """Keeps the leases of one :class:`RedisStore` alive while held (by the process's renewer)."""

    def __init__(self, store: Lessee) -> None:
        self._store = store
        _RENEWER.watch(store)

    def hold(self, token: str) -> None:
        """Renew ``token``'s lease from now on, until :meth:`drop`."""
        _RENEWER.hold(self._store, token)

    def drop(self, token: str) -> None:
        _RENEWER.drop(token)

    def give_back(self, token: str) -> None:
        """Release ``token``'s lease now, if it was taken (after an interruption: best effort)."""
        with contextlib.suppress(AuthError):
            self._store._release(token)
