# Generated from _redis_release_async.py by scripts/unasync.py: do not edit.
# Edit the source, then run `python scripts/unasync.py` (a test fails while this is stale).
"""
Followers woken at once by a release: the subscription of one store to its lease's release channel.

The release script publishes on the channel (``SPUBLISH`` in Redis Cluster: the slot's shard
only) after deleting the lease. A waiter subscribes (once per store object: the subscription is
made at the first wait and kept), checks the lease key only once the subscription is confirmed,
so a release after that check is never missed, and then waits for a message. One waiter at a time
reads the subscription's connection; the others wait on a condition it notifies, so every waiter
of the store wakes on one message. A lease that expires with a dead holder sends nothing: the
caller's timeout is the safety net.

It never takes the lease and never writes. Errors are redis-py's, for the store to translate. A
subscription that failed, or whose reader was cancelled, is dropped; the other waiters make a new
one and look at the lease again (a release may have come while none was open).

A waiter whose try for the lease has just found it held skips that look (:meth:`mark`): when
the subscription was confirmed before the try was sent and has not been lost since, every release
after the try reaches it, so the releases counted since the try are all it needs. At the start
of a storm this spares every follower a round trip (and the leader the queue behind it).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from ._redis_threads import Condition, wait_on

__all__ = ["ReleaseWatcher"]

# Messages read at once after the first: releases published while nobody waited.
_DRAIN: Final = 100
# A read that returns with no message this much before its timeout lost its subscription.
_EARLY: Final = 0.01
# Subscriptions one wait makes at most (a lost one is made again), before it returns early.
_SUBSCRIPTIONS: Final = 3

_CONFIRMED: Final = frozenset({"subscribe", "ssubscribe"})
_RELEASED: Final = frozenset({"message", "smessage"})
_LOST: Final = frozenset({"unsubscribe", "sunsubscribe"})


class ReleaseChannel:
    """
    One subscription to a release channel: ``SUBSCRIBE``, or ``SSUBSCRIBE`` in Redis Cluster.

    It reads messages as kinds: ``"confirmed"`` (the server subscribed it), ``"released"`` (a
    lease was given back) and ``"lost"`` (the subscription ended: the slot moved, the server
    went away, or a read came back empty early).
    """

    def __init__(self, client: Any, channel: str, *, sharded: bool) -> None:
        self._pubsub = client.pubsub()
        self._channel = channel
        self._sharded = sharded
        #: The data of the last release message read (what the release carried).
        self.released: bytes | None = None

    def open(self) -> None:
        if self._sharded:
            self._pubsub.ssubscribe(self._channel)
        else:
            self._pubsub.subscribe(self._channel)

    def read(self, timeout: float) -> list[str]:
        """The kinds of the messages within ``timeout`` s: the first waited for, then any queued."""
        started = time.monotonic()
        message = self._message(timeout)
        if message is None:
            if time.monotonic() - started < timeout - _EARLY:
                return ["lost"]
            return []
        kinds = [self._note(message)]
        for _ in range(_DRAIN):
            message = self._message(0)
            if message is None:
                break
            kinds.append(self._note(message))
        return kinds

    def close(self) -> None:
        self._pubsub.close()

    def _note(self, message: dict[str, Any]) -> str:
        kind = _kind(message)
        if kind == "released":
            data = message.get("data")
            self.released = data.encode() if isinstance(data, str) else data
        return kind

    def _message(self, timeout: float) -> dict[str, Any] | None:
        pubsub = self._pubsub
        get = pubsub.get_sharded_message if self._sharded else pubsub.get_message
        message: dict[str, Any] | None = get(timeout=timeout)
        return message


def _kind(message: dict[str, Any]) -> str:
    kind = message.get("type")
    name = kind.decode() if isinstance(kind, bytes) else str(kind)
    if name in _CONFIRMED:
        return "confirmed"
    if name in _RELEASED:
        return "released"
    if name in _LOST:
        return "lost"
    return "other"


class Held(NamedTuple):
    """What a waiter knew just before its try found the lease held (see ``mark``)."""

    #: Subscriptions lost so far: a loss after the mark voids it.
    lost: int
    #: Releases read so far: one more is a release after the try, or just before it.
    releases: int


class ReleaseWatcher:
    """
    Waits for the release of one store's lease, for any number of waiters of that store.

    Args:
        client: the store's client (``pubsub()`` makes the subscription).
        channel: the release channel.
        sharded: subscribe with ``SSUBSCRIBE`` (Redis Cluster).
        lease_held: whether the lease key exists now (the store's translated ``EXISTS``).
    """

    def __init__(
        self,
        client: Any,
        channel: str,
        *,
        sharded: bool,
        lease_held: Callable[[], bool],
    ) -> None:
        self._client = client
        self._channel_name = channel
        self._sharded = sharded
        self._lease_held = lease_held
        self._start()

    def _start(self) -> None:
        # A forked child starts again: the subscription's socket is its parent's, and its
        # condition may have been held by a thread that does not exist in the child.
        self._pid = os.getpid()
        self._condition = Condition()
        self._channel: ReleaseChannel | None = None
        self._confirmed = False
        # Whether a waiter is reading the channel (the others wait on the condition).
        self._reading = False
        # Releases seen, and subscriptions lost: waiters compare them before and after.
        self._releases = 0
        self._lost = 0
        # What the last release read carried (its message's data).
        self._released: bytes | None = None
        self._closed = False

    def mark(self) -> Held | None:
        """
        To take just before a try for the lease is sent: what :meth:`wait` needs after the try
        found it held instead of looking at the lease again; None while no subscription is
        confirmed (then the wait looks).
        """
        if self._pid != os.getpid():
            return None
        with self._condition:
            if not self._confirmed or self._closed:
                return None
            return Held(self._lost, self._releases)

    def wait(self, timeout: float, *, held: Held | None = None) -> bytes | None:
        """
        Return once the lease is free, after ``timeout`` s, or early (see the module). With
        ``held`` (the :meth:`mark` of a try that found the lease held), a subscription
        confirmed since, and not lost, waits for the next release without a look.

        Returns the data of the latest release message when one ended the wait (what that
        release carried), else None.
        """
        deadline = time.monotonic() + timeout
        if self._pid != os.getpid():
            self._start()
            held = None
        for _ in range(_SUBSCRIPTIONS):
            with self._condition:
                if held is not None and self._confirmed and held.lost == self._lost:
                    seen, lost = held.releases, held.lost
                else:
                    if not self._subscribe(deadline):
                        return None
                    seen, lost = self._releases, self._lost
                    held = None
            if held is None and not self._lease_held():
                return None
            held = None
            with self._condition:
                while self._releases == seen and self._lost == lost and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    self._take_turn(remaining)
                if self._releases != seen:
                    return self._released
                if self._closed:
                    return None
            # The subscription was lost (the reader failed or was cancelled): a release may have
            # gone unheard, so subscribe again and look at the lease again.
        return None

    def _subscribe(self, deadline: float) -> bool:
        """
        Whether the subscription is confirmed, with what it had queued read (False: the
        deadline passed first, or the watcher is closed). Called holding the condition.
        """
        drained = False
        while not (self._confirmed and drained):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed:
                return False
            if not self._confirmed:
                self._take_turn(remaining)
                continue
            drained = True
            if not self._reading:
                # Releases nobody waited for are queued on the subscription: read them now
                # (and look again: that read may find the subscription lost).
                self._take_turn(0)
        return True

    def close(self) -> None:
        """Close the subscription; waiters return (a reading one when its read fails)."""
        with self._condition:
            self._closed = True
            channel, self._channel = self._channel, None
            self._confirmed = False
            self._condition.notify_all()
        if channel is not None:
            channel.close()

    def _take_turn(self, timeout: float) -> None:
        """
        Read the channel for up to ``timeout`` s if nobody reads it, else wait for the reader.

        Called and returns holding the condition; reads without it.
        """
        if self._reading:
            wait_on(self._condition, timeout)
            return
        self._reading = True
        self._condition.release()
        kinds: list[str] | None = None
        try:
            kinds = self._read(timeout)
        finally:
            self._condition.acquire()
            self._reading = False
            for kind in kinds if kinds is not None else ["lost"]:
                if kind == "confirmed":
                    self._confirmed = True
                elif kind == "released":
                    self._releases += 1
                    channel = self._channel
                    self._released = channel.released if channel is not None else None
                elif kind == "lost":
                    self._channel = None
                    self._confirmed = False
                    self._lost += 1
            self._condition.notify_all()

    def _read(self, timeout: float) -> list[str]:
        # Only the reader (one at a time) opens, reads and drops the channel.
        channel = self._channel
        if channel is None:
            if self._closed:
                return []
            channel = ReleaseChannel(self._client, self._channel_name, sharded=self._sharded)
            self._channel = channel
            try:
                channel.open()
            except BaseException:
                self._channel = None
                _close_quietly(channel)
                raise
            if self._closed:  # closed while this reader opened it
                _close_quietly(channel)
                return []
        try:
            kinds = channel.read(timeout)
        except BaseException:
            _close_quietly(channel)
            if self._closed:
                return []
            raise
        if "lost" in kinds:
            _close_quietly(channel)
        return kinds


def _close_quietly(channel: ReleaseChannel) -> None:
    with contextlib.suppress(Exception):  # the subscription is being dropped anyway
        channel.close()
