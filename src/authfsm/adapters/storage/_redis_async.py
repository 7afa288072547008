"""
AsyncRedisStore: the credential record in one Redis key, shared by processes on many hosts.

``_redis_sync.py`` is generated from ``_redis_async.py`` by ``scripts/unasync.py``: edit the
latter and run the script (a test fails while the generated file is out of date). What truly
differs between the blocking and the asyncio store lives in ``_redis_threads.py`` and
``_redis_tasks.py``, under the same names; the layout, the scripts and the judging of replies
in ``_redis_layout.py``; the clients in ``_redis_clients.py``.

- the record is ONE string key holding :class:`NativeCodec` JSON (revision and the shared poison
  and backoff markers inside), so a reader always sees a whole record;
- ``write``/``delete`` are compare-and-swap by a Lua script. Python reads and fully decodes the
  current value (so a corrupt value raises ``StorageCorrupt`` and is never replaced), checks its
  revision, and the script swaps only if the key still holds exactly the bytes that were judged
  (their SHA-1). The revision is inside those bytes, so this is a compare on the revision that
  also refuses any other change; a lease holder whose lease expired while a sibling wrote is
  fenced by it. With ``min_replicas``, ``WAIT`` follows the script on its connection;
- the lease is a lock key set with ``SET NX PX`` to a random token, renewed while held and
  deleted only by its owner (Lua compare-and-delete). A holder that dies, or is paused past the
  TTL, loses it. A lease waiter blocks on a wake-up list the owner pushes to on release, so the
  lease passes on in one round trip; followers that only wait for the release (the
  ``ReleaseWatch`` protocol) are woken by a message on the release channel.

Every Redis failure becomes an :class:`AuthError`: connection errors and timeouts are
``StorageUnavailable`` (transient: the engine keeps serving its cached token), a value that is not
a record is ``StorageCorrupt`` naming the key. It must never put a token, a stored value or a
password into a message, a repr or a log; it logs nothing itself.
"""

from __future__ import annotations

import contextlib
import functools
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Self

import attrs

from ...engine import AuthError, Record, Released, StorageUnavailable
from ._codec import Codec
from ._encryption import is_encrypted
from ._redis_clients import (
    Connection,
    connect,
    connect_cluster,
    connect_sentinel,
    import_redis,
    split_options,
)
from ._redis_layout import (
    ACQUIRE,
    CAS,
    RENEW,
    SWAP_ATTEMPTS,
    Layout,
    Resealer,
    as_bytes,
    as_int,
    release_script,
)
from ._redis_release_async import AsyncReleaseWatcher, Held
from ._redis_tasks import Interrupted, LeaseKeeper, initialized, sleep

if TYPE_CHECKING:
    import redis.asyncio
    import redis.asyncio.cluster

__all__ = ["AsyncRedisStore"]

#: The last try for the lease that found it held, in this task or thread: the watcher it was
#: marked on and the mark (see AsyncReleaseWatcher.mark); taken by the wait that follows it.
_SEEN_HELD: ContextVar[tuple[AsyncReleaseWatcher, Held] | None] = ContextVar(
    "authfsm_redis_seen_held", default=None
)
#: The record as a lease just taken in this task or thread found it (the store, its bytes or
#: None): what the first read under that lease returns instead of reading it again.
_LEASED: ContextVar[tuple[AsyncRedisStore, bytes | None] | None] = ContextVar(
    "authfsm_redis_leased", default=None
)


class AsyncRedisStore:
    """
    The credential record in one Redis key, shared across hosts, for ``AsyncAuthEngine``.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` for TLS, or
            ``unix:///path/redis.sock?db=0``. Give ``url`` or ``client``, not both.
        client: an existing ``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster``
            (made with ``decode_responses=False``). Its retry settings and pool are yours:
            redis-py's default retries for seconds while the server is down, and its asyncio
            pool refuses a 101st concurrent command. A client the store makes gets
            ``retry=Retry(NoBackoff(), 0)`` (the store itself sends a command once more after
            a connection error) and, for asyncio, a blocking pool of 100 connections (a burst
            from many engines waits for a free one).
        key: the credential's name; the Redis key is ``key_prefix + key``. In Redis Cluster
            every key of the store must be in one slot: a key without a hash tag is wrapped in
            one (``authfsm:{credential}``); give your own to choose it (``"{myapp}:cred"``).
        key_prefix: prepended to every key this store touches.
        lease_ttl: seconds a lease lives without renewal. A holder renews it every third of that
            while it holds it; a holder that dies (or is paused longer than this) loses it.
        poll_interval: the longest a waiter sleeps between attempts when no release woke it,
            so how soon it notices a lease that expired with its holder. (Redis ends blocking
            waits at its ``hz`` rate, 10 times a second by default, so less than 0.1 s gains
            nothing on a default server.)
        timeout: socket connect and read timeout of a client the store makes, in seconds.
        codec: the value format (default: :class:`NativeCodec`).
        min_replicas: after every write (``write``, ``delete``, ``reseal``) that swapped, wait
            until this many replicas acknowledged it (Redis ``WAIT``); fewer within
            ``replica_timeout`` raise :class:`~authfsm.engine.StorageUnreplicated`. The write
            is not undone. A lease must reach them too before its holder spends a refresh
            token: else it is given back and ``lease()`` raises ``StorageUnreplicated`` (no
            refresh starts while the replicas are away; engines serve their tokens meanwhile).
            0 (the default) waits for none.
        replica_timeout: how long to wait for them, in seconds; shorter than ``timeout``.
        **options: passed to ``redis.asyncio.Redis.from_url``: ``ssl_ca_certs``,
            ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``, ``password``, ``username``...

    :meth:`from_sentinel` follows the primary of a Sentinel deployment through failovers;
    :meth:`from_cluster` talks to Redis Cluster.

    What ``min_replicas`` guarantees: a write this store reported as done is on the primary and
    on that many replicas, so a failover that promotes one of them keeps it. Sentinel promotes
    the most up-to-date reachable replica, and Redis Cluster a replica of the slot's shard
    (``WAIT`` counts that shard's replicas), so with ``min_replicas=1`` and one replica a
    failover after the write keeps the credential. What it does not: ``WAIT`` is not strong
    consistency. A replica acknowledges having received the write, not having made it durable;
    a failover may still promote a replica that did not acknowledge it (when several replicas
    lag unequally, or after a partition), and persistence is yours to configure (AOF, RDB). A
    write that raised ``StorageUnreplicated`` is on the primary and maybe on some replicas.

    The lease is a Redis lock with a random token; every thread, task or engine taking it gets
    its own token, so it is not re-entrant (and need not be: writes take no lease).
    Concurrency: coroutine methods; each held lease is renewed by a task; the client belongs
    to the event loop that first uses it.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster | None = None,
        key: str = "credential",
        key_prefix: str = "authfsm:",
        lease_ttl: float = 10.0,
        poll_interval: float = 0.1,
        timeout: float = 2.0,
        codec: Codec | None = None,
        min_replicas: int = 0,
        replica_timeout: float = 1.0,
        **options: Any,
    ) -> None:
        connection = connect(
            type(self).__name__, url, client, options, timeout=timeout, asyncio=True
        )
        self._set_up(
            connection,
            key=key,
            key_prefix=key_prefix,
            lease_ttl=lease_ttl,
            poll_interval=poll_interval,
            codec=codec,
            min_replicas=min_replicas,
            replica_timeout=replica_timeout,
        )

    @classmethod
    def from_sentinel(
        cls,
        sentinels: Sequence[str | tuple[str, int]],
        service_name: str,
        *,
        sentinel_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Self:
        """
        A store on the primary of a Sentinel deployment, which it follows through failovers.

        Args:
            sentinels: the Sentinels, as ``"host:port"`` or ``(host, port)``; the store asks
                them for the current primary of ``service_name`` whenever it (re)connects.
            service_name: the name the Sentinels monitor the primary under (``mymaster``).
            sentinel_options: connection options for the Sentinels themselves (``password``,
                ``ssl``, ...); by default the socket timeouts of the store.
            **options: the store's keywords (``key``, ``key_prefix``, ``lease_ttl``,
                ``poll_interval``, ``timeout``, ``codec``, ``min_replicas``,
                ``replica_timeout``), and connection options for the primary (``password``,
                ``username``, ``ssl``, ``ssl_ca_certs``, ...).

        After a failover the first command on a connection to the old primary fails (the
        connection is gone, or the demoted server answers ``READONLY``); the store reconnects
        at once, which asks the Sentinels for the new primary. While Sentinel has not promoted
        one yet, calls raise ``StorageUnavailable`` and the engine keeps its cached token.
        """
        settings, client_options = split_options(options)
        timeout = settings.pop("timeout", 2.0)
        connection = connect_sentinel(
            sentinels,
            service_name,
            client_options,
            sentinel_options=sentinel_options,
            timeout=timeout,
            asyncio=True,
            name=cls.__name__,
        )
        store = cls.__new__(cls)
        store._set_up(connection, **settings)
        return store

    @classmethod
    def from_cluster(cls, nodes: Sequence[str | tuple[str, int]], **options: Any) -> Self:
        """
        A store in Redis Cluster.

        Args:
            nodes: some of the cluster's nodes, as ``"host:port"`` or ``(host, port)``; the
                client learns the others and the slot map from them.
            **options: the store's keywords (as for :meth:`from_sentinel`) and connection
                options for the nodes (``password``, ``ssl``, ...).

        The record, the lease keys and the release channel share one hash slot (see ``key``);
        the scripts touch only the keys they are given, the release message is published with
        ``SPUBLISH`` to the slot's shard, and ``WAIT`` goes to the slot's primary.
        """
        settings, client_options = split_options(options)
        timeout = settings.pop("timeout", 2.0)
        connection = connect_cluster(nodes, client_options, timeout=timeout, asyncio=True)
        store = cls.__new__(cls)
        store._set_up(connection, **settings)
        return store

    def _set_up(
        self,
        connection: Connection,
        *,
        key: str = "credential",
        key_prefix: str = "authfsm:",
        lease_ttl: float = 10.0,
        poll_interval: float = 0.1,
        codec: Codec | None = None,
        min_replicas: int = 0,
        replica_timeout: float = 1.0,
    ) -> None:
        exceptions = import_redis().exceptions
        self._errors: tuple[type[Exception], ...] = (
            exceptions.RedisError,
            exceptions.RedisClusterException,
        )
        self._disconnects: type[Exception] = exceptions.ConnectionError
        self._connection = connection
        self._client: Any = connection.client
        self._layout = layout = Layout(
            key=key,
            key_prefix=key_prefix,
            lease_ttl=lease_ttl,
            poll_interval=poll_interval,
            codec=codec,
            server=connection.server,
            cluster=connection.cluster,
            min_replicas=min_replicas,
            replica_timeout=replica_timeout,
        )
        socket_timeout = connection.socket_timeout
        if layout.min_replicas and socket_timeout and layout.replica_timeout >= socket_timeout:
            raise ValueError(
                f"replica_timeout ({layout.replica_timeout:g} s) must be shorter than the "
                f"socket timeout ({socket_timeout:g} s), or the reply of WAIT times out"
            )
        self._cas = self._client.register_script(CAS)
        self._acquire_script = self._client.register_script(ACQUIRE)
        self._renew_script = self._client.register_script(RENEW)
        self._release_script = self._client.register_script(
            release_script(sharded=connection.cluster)
        )
        self._keeper = LeaseKeeper(self)
        # A client without pub/sub (redis-py < 8 has none for an asyncio cluster) is polled.
        self._watcher: AsyncReleaseWatcher | None = None
        if callable(getattr(self._client, "pubsub", None)):
            self._watcher = AsyncReleaseWatcher(
                self._client,
                layout.release_channel,
                sharded=connection.cluster,
                lease_held=self._lease_held,
            )

    @property
    def client(self) -> redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster:
        client: redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster = self._client
        return client

    @property
    def location(self) -> str:
        """The servers and key, e.g. ``redis://127.0.0.1:6379/0 key 'authfsm:credential'``."""
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
    def release_channel(self) -> str:
        """The channel a release is published on (sharded in Redis Cluster)."""
        return self._layout.release_channel

    @property
    def codec(self) -> Codec:
        return self._layout.codec

    @property
    def encrypted(self) -> bool:
        """Whether records are written encrypted (an ``EncryptedCodec`` that seals)."""
        return is_encrypted(self._layout.codec)

    @property
    def renew_every(self) -> float:
        """Seconds between renewals of a held lease (a third of ``lease_ttl``)."""
        return self._layout.renew_every

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.location}>"

    async def read(self) -> Record | None:
        leased = _LEASED.get()
        if leased is not None:
            # The first read under a lease just taken (in this task or thread): the record
            # the lease script answered with, as it was when the lease was taken.
            _LEASED.set(None)
            if leased[0] is self:
                return self._layout.decode(leased[1])
        data = await self._call(self._client.get, self._layout.record_key, about_record=True)
        return self._layout.decode(as_bytes(data))

    async def write(self, record: Record, expected_revision: int | None) -> Record:
        _LEASED.set(None)
        stored = attrs.evolve(record, revision=(expected_revision or 0) + 1)
        # A codec that shares its format with another program keeps that program's fields.
        acknowledged = await self._swap(
            expected_revision, lambda previous: self._layout.codec.encode(stored, previous)
        )
        self._layout.require_replicas(acknowledged)
        return stored

    async def delete(self, expected_revision: int | None) -> None:
        _LEASED.set(None)
        acknowledged = await self._swap(expected_revision, lambda _previous: b"")
        self._layout.require_replicas(acknowledged)

    async def reseal(self, expected_revision: int) -> Record:
        """
        Write the stored record again as it is, revision included, in the codec's current form
        (an ``EncryptedCodec`` seals it with its current key): what ``rotate_key`` does.
        ``WriteConflict`` unless the key holds revision ``expected_revision``.
        """
        _LEASED.set(None)
        resealer = Resealer(self._layout, expected_revision)
        acknowledged = await self._swap(expected_revision, resealer)
        record = resealer.done()
        self._layout.require_replicas(acknowledged)
        return record

    @contextlib.asynccontextmanager
    async def lease(self, timeout: float) -> AsyncIterator[None]:
        token = secrets.token_hex(16)
        try:
            await self._acquire(token, timeout)
        except Interrupted:
            # The SET may have landed before the interruption: give it back, never hold it.
            self._keeper.give_back(token)
            raise
        self._keeper.hold(token)
        try:
            yield
        finally:
            _LEASED.set(None)
            self._keeper.drop(token)
            try:
                await self._release(token)
            except StorageUnavailable:
                pass  # the TTL frees it
            except Interrupted:
                self._keeper.give_back(token)
                raise

    async def wait_for_release(self, timeout: float) -> Released | None:
        """
        Return once the lease is free, or after ``timeout`` seconds, whichever comes first
        (:class:`~authfsm.engine.AsyncReleaseWatch`); at once when nobody holds it. Never
        takes the lease; ``StorageUnavailable`` when Redis cannot be reached.

        Woken by the release's message, within a round trip of it, however many wait. The
        message carries the record as the release left it, returned as
        :class:`~authfsm.engine.Released` (the engine adopts it without a read). A lease that
        expires with its holder sends none: then this returns None after ``timeout``.
        """
        if not timeout > 0:
            return None
        if self._layout.cluster:
            await initialized(self._client)
        watcher = self._watcher
        if watcher is None:
            await self._poll_for_release(timeout)
            return None
        seen = _SEEN_HELD.get()
        if seen is not None:
            _SEEN_HELD.set(None)
        held = seen[1] if seen is not None and seen[0] is watcher else None
        try:
            message = await watcher.wait(timeout, held=held)
        except self._errors as error:
            raise self._layout.translate(error, about_record=False) from None
        return self._layout.released(message)

    async def aclose(self) -> None:
        """
        Close the release subscription, and the connections of a client this store made (a
        given client stays open).
        """
        if self._watcher is not None:
            await self._watcher.aclose()
        if self._connection.owned:
            await self._client.aclose()
        if self._connection.sentinel is not None:
            for sentinel in self._connection.sentinel.sentinels:
                await sentinel.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- I/O ---------------------------------------------------------------------------------

    async def _call(
        self, command: Callable[..., Any], *args: Any, about_record: bool = False, **kwargs: Any
    ) -> Any:
        reply, _retried = await self._attempt(
            lambda _retried: command(*args, **kwargs), about_record=about_record
        )
        return reply

    async def _attempt(
        self,
        command: Callable[[bool], Any],
        *,
        about_record: bool,
    ) -> tuple[Any, bool]:
        """
        The reply of ``command(retried)``, and ``retried``: whether it had to be sent twice
        (after a disconnect, which may have lost the reply of a first attempt that ran).
        """
        for attempt in range(2):
            try:
                return await command(attempt > 0), attempt > 0
            except self._disconnects as error:
                if attempt:
                    raise self._layout.translate(error, about_record=about_record) from None
            except self._errors as error:
                raise self._layout.translate(error, about_record=about_record) from None
        raise AssertionError("unreachable")

    async def _swap(
        self, expected_revision: int | None, new_value: Callable[[bytes | None], bytes]
    ) -> int | None:
        """
        Compare-and-swap the record key (``new_value(previous bytes)``, b"" to delete); the
        number of replicas that acknowledged the swap (None: none were waited for).
        """
        layout = self._layout
        current = layout.known(expected_revision)
        acknowledged: int | None
        for _ in range(SWAP_ATTEMPTS):
            if current is None:  # nothing read at this revision yet: read it (and judge it)
                data = await self._call(self._client.get, layout.record_key, about_record=True)
                current = layout.validate(as_bytes(data), expected_revision)
            value = new_value(current.data)
            (reply, acknowledged), retried = await self._attempt(
                functools.partial(self._send_swap, current.digest, value), about_record=True
            )
            current = layout.judge(reply, expected_revision, value, retried=retried)
            if current is None:
                return acknowledged
        raise layout.swap_gave_up(expected_revision)

    async def _send_swap(self, digest: str, value: bytes, retried: bool) -> tuple[Any, int | None]:
        """The script's reply and, with ``min_replicas``, WAIT's: the replicas that have it."""
        layout = self._layout
        args = [digest, value, "1" if retried else ""]
        if not layout.min_replicas:
            return await self._cas(keys=[layout.record_key], args=args), None
        # WAIT counts the replicas that acknowledged this connection's last write, so it must
        # follow the script on the same connection (it cannot run inside a script). A pipeline
        # sends both on one connection in one round trip; in Redis Cluster, to the slot's
        # primary.
        route: dict[str, Any] = {}
        if layout.cluster:
            await initialized(self._client)
            route["target_nodes"] = self._client.get_node_from_key(layout.record_key)
        pipe = self._client.pipeline(transaction=False)
        # (A cluster pipeline has no eval(); the command itself is routed by its key.)
        pipe.execute_command("EVAL", CAS, 1, layout.record_key, *args)
        pipe.execute_command("WAIT", layout.min_replicas, layout.wait_ms, **route)
        reply, acknowledged = await pipe.execute()
        if layout.cluster and (
            self._client.get_node_from_key(layout.record_key).name != route["target_nodes"].name
        ):
            # The slot moved while the script ran (it followed a redirect): WAIT counted the
            # replicas of the old owner, which says nothing about this write.
            acknowledged = 0
        return reply, as_int(acknowledged)

    async def _acquire(self, token: str, timeout: float) -> None:
        layout = self._layout
        deadline = time.monotonic() + timeout if timeout >= 0 else math.inf
        watcher = self._watcher
        while True:
            held = await watcher.mark() if watcher is not None and timeout == 0 else None
            reply = await self._call(
                self._acquire_script,
                keys=[layout.lease_key, layout.record_key],
                args=[token, layout.ttl_ms],
            )
            if isinstance(reply, list) and reply:
                if layout.min_replicas:
                    await self._replicate_lease(token)
                if as_int(reply[0]) == 1:  # the record as the lease found it: the next read
                    _LEASED.set((self, as_bytes(reply[1]) if len(reply) > 1 else None))
                return
            as_int(reply)  # 0: held by another
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                # The wait for the release that usually follows (in this task or thread) needs
                # no look at the lease: this try was it (see AsyncReleaseWatcher.mark).
                _SEEN_HELD.set(None if watcher is None or held is None else (watcher, held))
                raise layout.lease_timeout(timeout)
            # Sleep until the holder's release pushes a wake-up, or at most poll_interval.
            # BLPOP's timeout 0 means forever, hence the floor.
            wait = max(min(remaining, layout.poll_interval), 0.001)
            await self._call(self._client.blpop, [layout.wake_key], timeout=wait)

    async def _replicate_lease(self, token: str) -> None:
        """
        With ``min_replicas``: the lease just taken must reach the replicas (``WAIT``, at most
        ``replica_timeout``) before its holder spends a refresh token; if it does not, it is
        given back and ``StorageUnreplicated`` raised (the engine then keeps serving its token
        and backs off). A failover while the holder refreshes thus promotes a replica on which
        the lease is held, so no sibling takes it and spends the same refresh token; and no
        refresh starts that a failover could cut off from every copy of its result.

        ``WAIT`` counts the acknowledgements of its own connection's writes, so a renewal of the
        lease (a write) goes first on the same connection, in one round trip.
        """
        layout = self._layout
        acknowledged = await self._call(self._send_lease_wait, token)
        if acknowledged < layout.min_replicas:
            with contextlib.suppress(AuthError):
                await self._release(token)
            layout.require_replicas(acknowledged)

    async def _send_lease_wait(self, token: str) -> int:
        layout = self._layout
        route: dict[str, Any] = {}
        if layout.cluster:
            await initialized(self._client)
            route["target_nodes"] = self._client.get_node_from_key(layout.lease_key)
        pipe = self._client.pipeline(transaction=False)
        pipe.execute_command("EVAL", RENEW, 1, layout.lease_key, token, layout.ttl_ms)
        pipe.execute_command("WAIT", layout.min_replicas, layout.wait_ms, **route)
        _renewed, acknowledged = await pipe.execute()
        return as_int(acknowledged)

    async def _renew(self, token: str) -> None:
        """Extend ``token``'s lease if it still owns it (a released token: nothing happens)."""
        layout = self._layout
        await self._call(self._renew_script, keys=[layout.lease_key], args=[token, layout.ttl_ms])

    async def _release(self, token: str) -> None:
        layout = self._layout
        await self._call(
            self._release_script,
            keys=[layout.lease_key, layout.wake_key, layout.release_channel, layout.record_key],
            args=[token, layout.ttl_ms],
        )

    async def _lease_held(self) -> bool:
        return as_int(await self._call(self._client.exists, self._layout.lease_key)) > 0

    async def _poll_for_release(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while await self._lease_held():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await sleep(min(remaining, self._layout.poll_interval))
