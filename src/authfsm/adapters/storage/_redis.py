"""
A store in Redis, shared by processes on many hosts (sync and asyncio).

This module owns the Redis layout of a credential and the Lua scripts that change it:

- the record is ONE string key holding :class:`NativeCodec` JSON (revision and the shared poison
  and backoff markers inside), so a reader always sees a whole record;
- ``write``/``delete`` are compare-and-swap by a Lua script. Python reads and fully decodes the
  current value (so a corrupt value raises ``StorageCorrupt`` and is never replaced), checks its
  revision, and the script swaps only if the key still holds exactly the bytes that were judged
  (their SHA-1). The revision is inside those bytes, so this is a compare on the revision that
  also refuses any other change; a lease holder whose lease expired while a sibling wrote is
  fenced by it;
- the lease is a lock key set with ``SET NX PX`` to a random token, renewed while held (by one
  renewer thread per process, or a task per lease for asyncio) and deleted only by its owner
  (Lua compare-and-delete). A holder that dies, or is paused past the TTL, loses it. Waiters
  block on a wake-up list the owner pushes to on release, so the lease passes on in one round
  trip instead of a polling interval.

Every Redis failure becomes an :class:`AuthError`: connection errors and timeouts are
``StorageUnavailable`` (transient: the engine keeps serving its cached token), a value that is not
a record is ``StorageCorrupt`` naming the key. It must never put a token, a stored value or a
password from the URL into a message, a repr or a log; it logs nothing itself.

redis-py is imported only when a store is made, so authfsm works without the ``redis`` extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import math
import os
import secrets
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import parse_qs, urlsplit

import attrs

from ...engine import (
    AuthError,
    LeaseTimeout,
    Record,
    StorageCorrupt,
    StorageUnavailable,
    WriteConflict,
)
from ._codec import Codec, CodecError, NativeCodec
from ._encryption import bind_codec, is_encrypted

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = ["AsyncRedisStore", "RedisStore"]

_C = TypeVar("_C")  # a sync or asyncio redis-py client

#: Compare-and-swap of the record. ARGV[1]: SHA-1 of the value the caller judged ("" = absent),
#: ARGV[2]: the new value ("" = delete). Returns {1} when swapped, else {0, current value}.
_CAS: Final = """
local current = redis.call('GET', KEYS[1])
local digest = ''
if current then digest = redis.sha1hex(current) end
if digest ~= ARGV[1] then return {0, current} end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2]) end
return {1}
"""

#: Take the lease for token ARGV[1] for ARGV[2] ms. Idempotent, so a command retried after a lost
#: reply finds its own token instead of waiting for its own lease to expire.
_ACQUIRE: Final = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

#: Extend the lease to ARGV[2] ms if token ARGV[1] still owns it.
_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

#: Release the lease if token ARGV[1] owns it, and wake one waiter (KEYS[2] holds at most one
#: wake-up, which expires after ARGV[2] ms when nobody was waiting).
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('RPUSH', KEYS[2], '1')
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""

# Swaps retried when the value changed but kept the expected revision (a delete and re-create).
_SWAP_ATTEMPTS: Final = 4


def _digest(data: bytes) -> str:
    # A change detector matching Redis' own redis.sha1hex, not a security measure.
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


def _as_bytes(value: object) -> bytes | None:
    """A Redis reply as bytes (a client made with decode_responses=True answers str)."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"unexpected Redis reply of type {type(value).__name__}")


def _as_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"unexpected Redis reply of type {type(value).__name__}")
    return value


def _describe_url(url: str) -> str:
    """The server named by ``url`` without credentials or options: safe to print."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        db = parse_qs(parts.query).get("db", ["0"])[0]
        return f"unix://{parts.path}?db={db}"
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port or 6379
    except ValueError:
        port = 6379
    db = parts.path.lstrip("/") or "0"
    return f"{parts.scheme}://{host}:{port}/{db}"


def _describe_client(client: Any) -> str:
    """The server a client talks to, from its pool's connection settings."""
    pool = getattr(client, "connection_pool", None)
    kwargs: dict[str, Any] = dict(getattr(pool, "connection_kwargs", {}) or {})
    db = kwargs.get("db", 0)
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}?db={db}"
    tls = "SSL" in str(getattr(pool, "connection_class", ""))
    scheme = "rediss" if tls else "redis"
    host = str(kwargs.get("host", "localhost"))
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{kwargs.get('port', 6379)}/{db}"


def _import_redis(*, for_asyncio: bool = False) -> Any:
    """redis-py, imported when a store is made (it is the optional ``redis`` extra)."""
    try:
        module = importlib.import_module("redis.asyncio" if for_asyncio else "redis")
    except ImportError:
        raise ImportError(
            "RedisStore needs redis-py; install it with: pip install 'authfsm[redis]'"
        ) from None
    return module


@attrs.frozen
class _Current:
    """What the record key holds: its SHA-1 ("" when absent) and bytes (None when absent)."""

    digest: str
    data: bytes | None = attrs.field(repr=False)


class _Layout:
    """
    What the sync and async stores share: key names, validation, decoding and judging replies.

    It does no I/O. ``seen`` remembers the revision, digest and bytes of the last value read, so
    a write right after a read (what the engine does under the lease) swaps in one round trip.
    """

    def __init__(
        self,
        *,
        key: str,
        key_prefix: str,
        lease_ttl: float,
        poll_interval: float,
        codec: Codec | None,
        server: str,
    ) -> None:
        if not isinstance(key, str) or not key:
            raise ValueError("key must be a non-empty string")
        if not isinstance(key_prefix, str):
            raise TypeError("key_prefix must be a string")
        if not (isinstance(lease_ttl, int | float) and math.isfinite(lease_ttl) and lease_ttl > 0):
            raise ValueError("lease_ttl must be a positive number of seconds")
        if not (
            isinstance(poll_interval, int | float)
            and math.isfinite(poll_interval)
            and poll_interval > 0
        ):
            raise ValueError("poll_interval must be a positive number of seconds")
        self.record_key = key_prefix + key
        self.lease_key = self.record_key + ":lease"
        self.wake_key = self.record_key + ":lease:wake"
        self.lease_ttl = float(lease_ttl)
        self.ttl_ms = max(1, math.ceil(lease_ttl * 1000))
        # Renew three times per TTL: two renewals may fail (a blip) before the lease lapses.
        self.renew_every = self.lease_ttl / 3
        self.poll_interval = float(poll_interval)
        self.location = f"{server} key {self.record_key!r}"
        # An encrypting codec is bound to the record's key (prefix included), not the server:
        # hosts reach one server under different names.
        self.codec: Codec = bind_codec(
            codec if codec is not None else NativeCodec(), "redis", self.record_key, self.location
        )
        self.seen: tuple[int, str, bytes] | None = None

    # -- values ------------------------------------------------------------------------------

    def decode(self, data: bytes | None) -> Record | None:
        """The record in ``data`` (None: no key); ``StorageCorrupt`` naming the key if it is not."""
        if data is None:
            return None
        try:
            record = self.codec.decode(data)
        except CodecError as error:
            raise StorageCorrupt(self.location, str(error)) from None
        self.seen = (record.revision, _digest(data), data)
        return record

    def known(self, expected_revision: int | None) -> _Current | None:
        """What the key holds if it is at ``expected_revision``, as far as the last read knows."""
        if expected_revision is None:
            return _Current(digest="", data=None)
        seen = self.seen
        if seen is None or seen[0] != expected_revision:
            return None
        return _Current(digest=seen[1], data=seen[2])

    def validate(self, data: bytes | None, expected_revision: int | None) -> _Current:
        """The key's value as read: ``WriteConflict`` unless it is at ``expected_revision``."""
        record = self.decode(data)
        found = record.revision if record is not None else None
        if found != expected_revision:
            raise WriteConflict(self.location, expected_revision, found)
        return _Current(digest=_digest(data) if data is not None else "", data=data)

    def judge(
        self, reply: object, expected_revision: int | None, value: bytes, *, retried: bool
    ) -> _Current | None:
        """
        None when the swap happened; else what the key holds now, to swap against next.

        ``retried``: the command was sent again after a connection error, so a key holding
        exactly our new value means our first attempt swapped (and its reply was lost).

        Raises ``WriteConflict`` when the key holds another revision, ``StorageCorrupt`` when it
        holds something that is not a record (which is then never replaced).
        """
        if not isinstance(reply, list | tuple) or not reply:
            raise TypeError("unexpected reply from the compare-and-swap script")
        if _as_int(reply[0]) == 1:
            revision = (expected_revision or 0) + 1
            self.seen = (revision, _digest(value), value) if value else None
            return None
        current = _as_bytes(reply[1]) if len(reply) > 1 else None
        if retried and value and current == value:
            return None
        return self.validate(current, expected_revision)

    def swap_gave_up(self, expected_revision: int | None) -> WriteConflict:
        return WriteConflict(self.location, expected_revision, expected_revision)

    # -- errors ------------------------------------------------------------------------------

    def translate(self, error: Exception, *, about_record: bool) -> AuthError:
        """A redis-py error as an AuthError; the message names the store, never a value."""
        exceptions = _import_redis().exceptions
        kind = type(error).__name__
        if isinstance(error, exceptions.TimeoutError):
            return StorageUnavailable(
                f"Credential store {self.location} did not answer in time ({kind}); "
                "the cached credential stays in use.",
                reason="storage_timeout",
            )
        if isinstance(error, exceptions.ConnectionError):
            return StorageUnavailable(
                f"Cannot reach credential store {self.location} ({kind}); "
                "the cached credential stays in use.",
            )
        if about_record and "WRONGTYPE" in str(error):
            return StorageCorrupt(self.location, "the key holds a value that is not a string")
        return StorageUnavailable(
            f"Credential store {self.location} refused a command ({kind}).",
            reason="storage_error",
        )

    def lease_timeout(self, timeout: float) -> LeaseTimeout:
        return LeaseTimeout(
            f"The refresh lease {self.lease_key!r} of {self.location} was held for over "
            f"{timeout:g} s.",
            reason="lease_timeout",
        )


class _Resealer:
    """
    The new value of a reseal: the record read, encoded again. The swap's bookkeeping assumes a
    write adds one to the revision; :meth:`done` puts back the revision a reseal keeps.
    """

    def __init__(self, layout: _Layout, expected_revision: int) -> None:
        self._layout = layout
        self._expected = expected_revision
        self._last: tuple[Record, bytes] | None = None

    def __call__(self, previous: bytes | None) -> bytes:
        record = self._layout.decode(previous)
        if record is None:
            raise WriteConflict(self._layout.location, self._expected, None)
        value = self._layout.codec.encode(record, previous)
        self._last = (record, value)
        return value

    def done(self) -> Record:
        assert self._last is not None
        record, value = self._last
        self._layout.seen = (record.revision, _digest(value), value)
        return record


def _client_options(timeout: float, options: dict[str, Any], retry: Any) -> dict[str, Any]:
    options = dict(options)
    options.setdefault("socket_timeout", timeout)
    options.setdefault("socket_connect_timeout", timeout)
    # redis-py's default retries ten times with backoff up to a second: the engine would stall
    # for seconds on every call while the server is down. The store retries once itself (to
    # reconnect a pooled connection that a server restart closed, knowing it did); anything
    # more is the engine's job (it keeps its token and tries again later).
    options.setdefault("retry", retry)
    if options.get("decode_responses"):
        raise ValueError("RedisStore needs decode_responses=False (values are bytes)")
    return options


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
        self._stores: weakref.WeakSet[RedisStore] = weakref.WeakSet()
        self._held: dict[str, RedisStore] = {}
        self._period = 60.0
        self._thread: threading.Thread | None = None

    def watch(self, store: RedisStore) -> None:
        with self._lock:
            self._stores.add(store)
            if store.renew_every < self._period:
                self._period = store.renew_every
                self._lock.notify_all()  # tick at the new, shorter period from now on
            self._ensure_thread()

    def hold(self, store: RedisStore, token: str) -> None:
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
                with contextlib.suppress(AuthError):
                    store._renew(token)


_RENEWER: Final = _LeaseRenewer()
os.register_at_fork(after_in_child=_RENEWER.after_fork_in_child)


def _connect(
    name: str,
    url: str | None,
    client: _C | None,
    options: dict[str, Any],
    connect: Callable[[str], _C],
) -> tuple[_C, str, bool]:
    """The client to use, a password-free description of its server, and whether we own it."""
    if (url is None) == (client is None):
        raise TypeError(f"{name} takes a url or a client, not both and not neither")
    if client is None:
        assert url is not None
        return connect(url), _describe_url(url), True
    if options:
        raise TypeError("connection options go with a url, not with a client")
    return client, _describe_client(client), False


class _RedisShared:
    """What the sync and async stores share: the key layout, the Lua scripts, the error types."""

    _client: Any
    _layout: _Layout

    def _set_up(
        self,
        server: str,
        *,
        key: str,
        key_prefix: str,
        lease_ttl: float,
        poll_interval: float,
        codec: Codec | None,
    ) -> None:
        redis_py = _import_redis()
        self._errors: type[Exception] = redis_py.exceptions.RedisError
        self._disconnects: type[Exception] = redis_py.exceptions.ConnectionError
        self._layout = _Layout(
            key=key,
            key_prefix=key_prefix,
            lease_ttl=lease_ttl,
            poll_interval=poll_interval,
            codec=codec,
            server=server,
        )
        self._cas = self._client.register_script(_CAS)
        self._acquire_script = self._client.register_script(_ACQUIRE)
        self._renew_script = self._client.register_script(_RENEW)
        self._release_script = self._client.register_script(_RELEASE)

    @property
    def location(self) -> str:
        """The server and key, e.g. ``redis://127.0.0.1:6379/0 key 'authfsm:credential'``."""
        return self._layout.location

    @property
    def key(self) -> str:
        """The Redis key that holds the record."""
        return self._layout.record_key

    @property
    def lease_key(self) -> str:
        """The Redis key that holds the lease's token while someone holds it."""
        return self._layout.lease_key

    @property
    def codec(self) -> Codec:
        return self._layout.codec

    @property
    def encrypted(self) -> bool:
        """Whether records are written encrypted (an ``EncryptedCodec`` that seals)."""
        return is_encrypted(self._layout.codec)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.location}>"


class RedisStore(_RedisShared):
    """
    The credential record in one Redis key, shared across hosts.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` for TLS, or
            ``unix:///path/redis.sock?db=0``. Give ``url`` or ``client``, not both.
        client: an existing ``redis.Redis`` (made with ``decode_responses=False``). Its retry
            settings are yours: redis-py's default retries for seconds while the server is
            down. A URL-made client gets ``retry=Retry(NoBackoff(), 0)``; the store itself
            sends a command once more after a connection error.
        key: the credential's name; the Redis key is ``key_prefix + key``. For Redis Cluster,
            put a hash tag in it (``"{myapp}"``): the lease keys must share its slot.
        key_prefix: prepended to every key this store touches.
        lease_ttl: seconds a lease lives without renewal. A holder renews it every third of that
            while it holds it; a holder that dies (or is paused longer than this) loses it.
        poll_interval: the longest a waiter sleeps between attempts when no release woke it,
            so how soon it notices a lease that expired with its holder. (Redis ends blocking
            waits at its ``hz`` rate, 10 times a second by default, so less than 0.1 s gains
            nothing on a default server.)
        timeout: socket connect and read timeout of a URL-made client, in seconds.
        codec: the value format (default: :class:`NativeCodec`).
        **options: passed to ``redis.Redis.from_url``: ``ssl_ca_certs``, ``ssl_certfile``,
            ``ssl_keyfile``, ``ssl_cert_reqs``, ``password``, ``username``, ...

    The lease is a Redis lock with a random token; every thread or engine taking it gets its own
    token, so it is not re-entrant (and needs not be: writes take no lease).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: redis.Redis | None = None,
        key: str = "credential",
        key_prefix: str = "authfsm:",
        lease_ttl: float = 10.0,
        poll_interval: float = 0.1,
        timeout: float = 2.0,
        codec: Codec | None = None,
        **options: Any,
    ) -> None:
        redis_py = _import_redis()

        def connect(url: str) -> redis.Redis:
            retry = redis_py.retry.Retry(redis_py.backoff.NoBackoff(), 0)
            made: redis.Redis = redis_py.Redis.from_url(
                url, **_client_options(timeout, options, retry)
            )
            return made

        self._client: redis.Redis
        self._client, server, self._owns_client = _connect(
            "RedisStore", url, client, options, connect
        )
        self._set_up(
            server,
            key=key,
            key_prefix=key_prefix,
            lease_ttl=lease_ttl,
            poll_interval=poll_interval,
            codec=codec,
        )
        _RENEWER.watch(self)

    @property
    def client(self) -> redis.Redis:
        return self._client

    @property
    def renew_every(self) -> float:
        """Seconds between renewals of a held lease (a third of ``lease_ttl``)."""
        return self._layout.renew_every

    def read(self) -> Record | None:
        data = self._call(self._client.get, self._layout.record_key, about_record=True)
        return self._layout.decode(_as_bytes(data))

    def write(self, record: Record, expected_revision: int | None) -> Record:
        stored = attrs.evolve(record, revision=(expected_revision or 0) + 1)
        # A codec that shares its format with another program keeps that program's fields.
        self._swap(expected_revision, lambda previous: self._layout.codec.encode(stored, previous))
        return stored

    def delete(self, expected_revision: int | None) -> None:
        self._swap(expected_revision, lambda _previous: b"")

    def reseal(self, expected_revision: int) -> Record:
        """
        Write the stored record again as it is, revision included, in the codec's current form
        (an ``EncryptedCodec`` seals it with its current key): what ``rotate_key`` does.
        ``WriteConflict`` unless the key holds revision ``expected_revision``.
        """
        resealer = _Resealer(self._layout, expected_revision)
        self._swap(expected_revision, resealer)
        return resealer.done()

    @contextlib.contextmanager
    def lease(self, timeout: float) -> Iterator[None]:
        token = secrets.token_hex(16)
        self._acquire(token, timeout)
        _RENEWER.hold(self, token)
        try:
            yield
        finally:
            _RENEWER.drop(token)
            with contextlib.suppress(StorageUnavailable):  # then the TTL frees it
                self._release(token)

    def close(self) -> None:
        """Close the connections of a client this store made (a given client stays open)."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> RedisStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- I/O ---------------------------------------------------------------------------------

    def _call(
        self, command: Callable[..., Any], *args: Any, about_record: bool = False, **kwargs: Any
    ) -> Any:
        return self._attempt(command, args, kwargs, about_record=about_record)[0]

    def _attempt(
        self,
        command: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        about_record: bool,
    ) -> tuple[Any, bool]:
        """The reply, and whether the command had to be sent twice (after a disconnect)."""
        for attempt in range(2):
            try:
                return command(*args, **kwargs), attempt > 0
            except self._disconnects as error:
                if attempt:
                    raise self._layout.translate(error, about_record=about_record) from None
            except self._errors as error:
                raise self._layout.translate(error, about_record=about_record) from None
        raise AssertionError("unreachable")

    def _swap(
        self, expected_revision: int | None, new_value: Callable[[bytes | None], bytes]
    ) -> None:
        """Compare-and-swap the record key; ``new_value(previous bytes)``, b"" to delete."""
        layout = self._layout
        current = layout.known(expected_revision)
        for _ in range(_SWAP_ATTEMPTS):
            if current is None:  # nothing read at this revision yet: read it (and judge it)
                data = self._call(self._client.get, layout.record_key, about_record=True)
                current = layout.validate(_as_bytes(data), expected_revision)
            value = new_value(current.data)
            reply, retried = self._attempt(
                self._cas,
                (),
                {"keys": [layout.record_key], "args": [current.digest, value]},
                about_record=True,
            )
            current = layout.judge(reply, expected_revision, value, retried=retried)
            if current is None:
                return
        raise layout.swap_gave_up(expected_revision)

    def _acquire(self, token: str, timeout: float) -> None:
        layout = self._layout
        deadline = time.monotonic() + timeout if timeout >= 0 else math.inf
        while True:
            taken = self._call(
                self._acquire_script, keys=[layout.lease_key], args=[token, layout.ttl_ms]
            )
            if _as_int(taken) == 1:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise layout.lease_timeout(timeout)
            # Sleep until the holder's release pushes a wake-up, or at most poll_interval.
            # BLPOP's timeout 0 means forever, hence the floor.
            wait = max(min(remaining, layout.poll_interval), 0.001)
            self._call(self._client.blpop, [layout.wake_key], timeout=wait)

    def _renew(self, token: str) -> None:
        """Extend ``token``'s lease if it still owns it (a released token: nothing happens)."""
        layout = self._layout
        self._call(self._renew_script, keys=[layout.lease_key], args=[token, layout.ttl_ms])

    def _release(self, token: str) -> None:
        layout = self._layout
        self._call(
            self._release_script,
            keys=[layout.lease_key, layout.wake_key],
            args=[token, layout.ttl_ms],
        )


class AsyncRedisStore(_RedisShared):
    """
    :class:`RedisStore` for asyncio (``redis.asyncio``), for ``AsyncAuthEngine``.

    The same arguments, layout and scripts, so sync and async engines can share one key. Methods
    are coroutines; ``lease()`` is an async context manager renewed by a task while held. A
    client is bound to the event loop that first uses it.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: redis.asyncio.Redis | None = None,
        key: str = "credential",
        key_prefix: str = "authfsm:",
        lease_ttl: float = 10.0,
        poll_interval: float = 0.1,
        timeout: float = 2.0,
        codec: Codec | None = None,
        **options: Any,
    ) -> None:
        redis_asyncio = _import_redis(for_asyncio=True)
        redis_py = _import_redis()

        def connect(url: str) -> redis.asyncio.Redis:
            retry = redis_asyncio.retry.Retry(redis_py.backoff.NoBackoff(), 0)
            made: redis.asyncio.Redis = redis_asyncio.Redis.from_url(
                url, **_client_options(timeout, options, retry)
            )
            return made

        self._client: redis.asyncio.Redis
        self._client, server, self._owns_client = _connect(
            "AsyncRedisStore", url, client, options, connect
        )
        self._set_up(
            server,
            key=key,
            key_prefix=key_prefix,
            lease_ttl=lease_ttl,
            poll_interval=poll_interval,
            codec=codec,
        )
        # Fire-and-forget tasks (a cancelled waiter's release) are kept alive until done.
        self._background: set[asyncio.Task[None]] = set()

    @property
    def client(self) -> redis.asyncio.Redis:
        return self._client

    async def read(self) -> Record | None:
        data = await self._call(self._client.get, self._layout.record_key, about_record=True)
        return self._layout.decode(_as_bytes(data))

    async def write(self, record: Record, expected_revision: int | None) -> Record:
        stored = attrs.evolve(record, revision=(expected_revision or 0) + 1)
        await self._swap(
            expected_revision, lambda previous: self._layout.codec.encode(stored, previous)
        )
        return stored

    async def delete(self, expected_revision: int | None) -> None:
        await self._swap(expected_revision, lambda _previous: b"")

    async def reseal(self, expected_revision: int) -> Record:
        """:meth:`RedisStore.reseal`: the record rewritten as it is, revision kept."""
        resealer = _Resealer(self._layout, expected_revision)
        await self._swap(expected_revision, resealer)
        return resealer.done()

    @contextlib.asynccontextmanager
    async def lease(self, timeout: float) -> AsyncIterator[None]:
        token = secrets.token_hex(16)
        try:
            await self._acquire(token, timeout)
        except asyncio.CancelledError:
            # The SET may have landed before the cancellation: give it back, never hold it.
            self._in_background(self._release_quietly(token))
            raise
        renewer = asyncio.get_running_loop().create_task(self._renew_forever(token))
        try:
            yield
        finally:
            renewer.cancel()
            try:
                await self._release(token)
            except StorageUnavailable:
                pass  # the TTL frees it
            except asyncio.CancelledError:
                self._in_background(self._release_quietly(token))
                raise

    async def aclose(self) -> None:
        """Close the connections of a client this store made (a given client stays open)."""
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> AsyncRedisStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- I/O ---------------------------------------------------------------------------------

    async def _call(
        self,
        command: Callable[..., Awaitable[Any]],
        *args: Any,
        about_record: bool = False,
        **kwargs: Any,
    ) -> Any:
        return (await self._attempt(command, args, kwargs, about_record=about_record))[0]

    async def _attempt(
        self,
        command: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        about_record: bool,
    ) -> tuple[Any, bool]:
        """The reply, and whether the command had to be sent twice (after a disconnect)."""
        for attempt in range(2):
            try:
                return await command(*args, **kwargs), attempt > 0
            except self._disconnects as error:
                if attempt:
                    raise self._layout.translate(error, about_record=about_record) from None
            except self._errors as error:
                raise self._layout.translate(error, about_record=about_record) from None
        raise AssertionError("unreachable")

    async def _swap(
        self, expected_revision: int | None, new_value: Callable[[bytes | None], bytes]
    ) -> None:
        """Compare-and-swap the record key; ``new_value(previous bytes)``, b"" to delete."""
        layout = self._layout
        current = layout.known(expected_revision)
        for _ in range(_SWAP_ATTEMPTS):
            if current is None:  # nothing read at this revision yet: read it (and judge it)
                data = await self._call(self._client.get, layout.record_key, about_record=True)
                current = layout.validate(_as_bytes(data), expected_revision)
            value = new_value(current.data)
            reply, retried = await self._attempt(
                self._cas,
                (),
                {"keys": [layout.record_key], "args": [current.digest, value]},
                about_record=True,
            )
            current = layout.judge(reply, expected_revision, value, retried=retried)
            if current is None:
                return
        raise layout.swap_gave_up(expected_revision)

    async def _acquire(self, token: str, timeout: float) -> None:
        layout = self._layout
        deadline = time.monotonic() + timeout if timeout >= 0 else math.inf
        while True:
            taken = await self._call(
                self._acquire_script, keys=[layout.lease_key], args=[token, layout.ttl_ms]
            )
            if _as_int(taken) == 1:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise layout.lease_timeout(timeout)
            wait = max(min(remaining, layout.poll_interval), 0.001)
            await self._call(self._client.blpop, [layout.wake_key], timeout=wait)

    async def _renew_forever(self, token: str) -> None:
        layout = self._layout
        while True:
            await asyncio.sleep(layout.renew_every)
            with contextlib.suppress(AuthError):
                await self._call(
                    self._renew_script, keys=[layout.lease_key], args=[token, layout.ttl_ms]
                )

    async def _release(self, token: str) -> None:
        layout = self._layout
        await self._call(
            self._release_script,
            keys=[layout.lease_key, layout.wake_key],
            args=[token, layout.ttl_ms],
        )

    async def _release_quietly(self, token: str) -> None:
        with contextlib.suppress(AuthError):
            await self._release(token)

    def _in_background(self, coroutine: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
