"""
The redis-py clients of the Redis stores: made from a URL, a Sentinel deployment or Redis Cluster
nodes, or given; and a description of each that is safe to print.

redis-py is imported here only when a store is made, so authfsm works without the ``redis``
extra. A description never holds a password, a username or any other option: it names the
servers (and the Sentinel service), nothing else.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs

from ...engine import StorageUnavailable

__all__ = [
    "Connection",
    "connect",
    "connect_cluster",
    "connect_sentinel",
    "import_redis",
    "split_options",
]

#: The keywords of the stores themselves; ``from_sentinel``/``from_cluster`` pass the rest of
#: their keywords to redis-py.
STORE_OPTIONS = frozenset(
    {
        "key",
        "key_prefix",
        "lease_ttl",
        "poll_interval",
        "timeout",
        "codec",
        "min_replicas",
        "replica_timeout",
    }
)


def import_redis(name: str = "redis") -> Any:
    """A redis-py module, imported when a store is made (it is the optional ``redis`` extra)."""
    try:
        module = importlib.import_module(name)
    except ImportError:
        raise ImportError(
            "RedisStore needs redis-py; install it with: pip install 'authfsm[redis]'"
        ) from None
    return module


@attrs.frozen
class Connection:
    """A client a store talks through, and what the store knows about it."""

    #: ``redis.Redis``, ``redis.cluster.RedisCluster`` or their asyncio twins.
    client: Any
    #: The servers, without credentials or options: safe to print.
    server: str
    #: The store made the client, so it closes it.
    owned: bool
    #: A Redis Cluster client: keys need one hash tag, releases use sharded pub/sub.
    cluster: bool = False
    #: The ``redis.sentinel.Sentinel`` the client came from, closed with it.
    sentinel: Any = None
    #: The client's socket timeout when known, in seconds.
    socket_timeout: float | None = None


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``options`` as (the store's keywords, redis-py's keywords)."""
    store = {name: value for name, value in options.items() if name in STORE_OPTIONS}
    client = {name: value for name, value in options.items() if name not in STORE_OPTIONS}
    return store, client


def _no_retry(*, asyncio: bool, retries: int = 0) -> Any:
    # redis-py's default retries with backoff up to seconds: the engine would stall on every
    # call while a server is down. The store sends a command once more itself (to reconnect a
    # pooled connection that a restart or a failover closed, knowing it did); anything more is
    # the engine's job (it keeps its token and tries again later).
    retry = import_redis("redis.asyncio.retry" if asyncio else "redis.retry").Retry
    return retry(import_redis("redis.backoff").NoBackoff(), retries)


def _client_options(timeout: float, options: Mapping[str, Any], retry: Any) -> dict[str, Any]:
    merged = dict(options)
    merged.setdefault("socket_timeout", timeout)
    merged.setdefault("socket_connect_timeout", timeout)
    merged.setdefault("retry", retry)
    if merged.get("decode_responses"):
        raise ValueError("RedisStore needs decode_responses=False (values are bytes)")
    return merged


def _check_options(name: str, client: Any) -> None:
    """
    Raise TypeError now for a connection option redis-py does not know.

    redis-py makes connections when the first command needs one, so a misspelt option would
    otherwise surface as a TypeError at the engine's first store call. Making a connection
    object opens no socket.
    """
    pool = client.connection_pool
    try:
        pool.connection_class(**pool.connection_kwargs)
    except TypeError as error:
        raise TypeError(f"{name}: a connection option redis-py does not take ({error})") from None


def _timeout_of(options: Mapping[str, Any]) -> float | None:
    value = options.get("socket_timeout")
    return float(value) if isinstance(value, int | float) else None


def connect(
    name: str,
    url: str | None,
    client: Any,
    options: dict[str, Any],
    *,
    timeout: float,
    asyncio: bool,
) -> Connection:
    """The client to use (made from ``url``, or ``client``), as a :class:`Connection`."""
    if (url is None) == (client is None):
        raise TypeError(f"{name} takes a url or a client, not both and not neither")
    if client is None:
        assert url is not None
        merged = _client_options(timeout, options, _no_retry(asyncio=asyncio))
        module = import_redis("redis.asyncio" if asyncio else "redis")
        if asyncio:
            # redis.asyncio's default pool refuses a 101st concurrent command ("Too many
            # connections"): many engines of one event loop sharing a store would see the store
            # fail in a storm. A blocking pool makes a task wait for a connection instead (at
            # most the store's timeout).
            merged.setdefault("max_connections", 100)
            pool = module.BlockingConnectionPool.from_url(url, timeout=timeout, **merged)
            made = module.Redis.from_pool(pool)
        else:
            made = module.Redis.from_url(url, **merged)
        _check_options(name, made)
        return Connection(
            client=made,
            server=_describe_url(url),
            owned=True,
            socket_timeout=_timeout_of(merged),
        )
    if options:
        raise TypeError("connection options go with a url, not with a client")
    other = "redis" if asyncio else "redis.asyncio"
    if isinstance(
        client, (import_redis(other).Redis, import_redis(f"{other}.cluster").RedisCluster)
    ):
        wanted = "a redis.asyncio client" if asyncio else "a blocking redis-py client"
        raise TypeError(f"{name} needs {wanted}, not a {type(client).__module__} one")
    cluster_module = import_redis("redis.asyncio.cluster" if asyncio else "redis.cluster")
    if isinstance(client, cluster_module.RedisCluster):
        manager = client.nodes_manager
        kwargs = getattr(client, "connection_kwargs", None) or manager.connection_kwargs
        return Connection(
            client=client,
            server=_describe_nodes("redis+cluster", list(manager.startup_nodes)),
            owned=False,
            cluster=True,
            socket_timeout=_timeout_of(kwargs),
        )
    pool = getattr(client, "connection_pool", None)
    return Connection(
        client=client,
        server=_describe_client(client),
        owned=False,
        socket_timeout=_timeout_of(getattr(pool, "connection_kwargs", {}) or {}),
    )


def connect_sentinel(
    sentinels: Sequence[str | tuple[str, int]],
    service_name: str,
    options: dict[str, Any],
    *,
    sentinel_options: Mapping[str, Any] | None,
    timeout: float,
    asyncio: bool,
    name: str = "RedisStore",
) -> Connection:
    """A client of the current primary of ``service_name``, found (and followed) by Sentinel."""
    if not isinstance(service_name, str) or not service_name:
        raise ValueError("service_name must be the non-empty name of a Sentinel service")
    addresses = _addresses(sentinels, default_port=26379, what="sentinels")
    module = import_redis("redis.asyncio.sentinel" if asyncio else "redis.sentinel")
    # The Sentinels' own connections fail fast too: a dead Sentinel is skipped, not retried.
    sentinel_kwargs = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": _no_retry(asyncio=asyncio),
        **(sentinel_options or {}),
    }
    merged = _client_options(timeout, options, _no_retry(asyncio=asyncio))
    manager = module.Sentinel(addresses, sentinel_kwargs=sentinel_kwargs)
    client = manager.master_for(service_name, **merged)
    _check_options(name, client)
    for sentinel in manager.sentinels:
        _check_options(f"{name} (sentinel_options)", sentinel)
    scheme = "rediss+sentinel" if merged.get("ssl") else "redis+sentinel"
    return Connection(
        client=client,
        server=_describe_nodes(scheme, [f"{host}:{port}" for host, port in addresses])
        + f"/{service_name}",
        owned=True,
        sentinel=manager,
        socket_timeout=_timeout_of(merged),
    )


def connect_cluster(
    nodes: Sequence[str | tuple[str, int]],
    options: dict[str, Any],
    *,
    timeout: float,
    asyncio: bool,
) -> Connection:
    """A Redis Cluster client that starts from ``nodes`` (any of the cluster's nodes)."""
    addresses = _addresses(nodes, default_port=6379, what="nodes")
    module = import_redis("redis.asyncio.cluster" if asyncio else "redis.cluster")
    # One retry inside redis-py: after a failover it refreshes the slot map and goes to the
    # new owner of the slot (a redirect, MOVED, is followed regardless).
    merged = _client_options(timeout, options, _no_retry(asyncio=asyncio, retries=1))
    scheme = "rediss+cluster" if merged.get("ssl") else "redis+cluster"
    server = _describe_nodes(scheme, [f"{host}:{port}" for host, port in addresses])
    errors = import_redis("redis.exceptions")
    try:
        # The blocking client asks the nodes for the slot map now (the asyncio one at its
        # first command, where the store translates what fails).
        client = module.RedisCluster(
            startup_nodes=[module.ClusterNode(host, port) for host, port in addresses], **merged
        )
    except (errors.RedisError, errors.RedisClusterException) as error:
        raise StorageUnavailable(
            f"Cannot reach the Redis Cluster {server}: {type(error).__name__}."
        ) from None
    return Connection(
        client=client,
        server=server,
        owned=True,
        cluster=True,
        socket_timeout=_timeout_of(merged),
    )


def _addresses(
    given: Sequence[str | tuple[str, int]], *, default_port: int, what: str
) -> list[tuple[str, int]]:
    """``"host:port"`` strings or ``(host, port)`` pairs as pairs; ValueError naming ``what``."""
    if isinstance(given, str) or not given:
        raise ValueError(f"{what} must be a non-empty list of 'host:port' or (host, port)")
    addresses = []
    for item in given:
        if isinstance(item, str):
            host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
            host = host.strip("[]")
            try:
                port = int(port_text) if port_text else default_port
            except ValueError:
                raise ValueError(f"{what}: {item!r} is not 'host:port'") from None
        elif (
            isinstance(item, tuple)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], int)
        ):
            host, port = item
        else:
            raise ValueError(f"{what} must be 'host:port' strings or (host, port) pairs")
        if not host or not 0 < port < 65536:
            raise ValueError(f"{what}: {item!r} is not 'host:port'")
        addresses.append((host, port))
    return addresses


def _describe_nodes(scheme: str, names: list[str]) -> str:
    """``scheme://host:port,host:port`` (IPv6 hosts in brackets)."""
    shown = []
    for name in names:
        host, _, port = name.rpartition(":")
        shown.append(f"[{host}]:{port}" if ":" in host else name)
    return f"{scheme}://{','.join(shown)}"


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
    manager = getattr(pool, "sentinel_manager", None)
    if manager is not None:  # a Sentinel-managed primary: the Sentinels and the service
        names = []
        for sentinel in getattr(manager, "sentinels", []):
            options = sentinel.connection_pool.connection_kwargs
            names.append(f"{options.get('host', 'localhost')}:{options.get('port', 26379)}")
        scheme = "rediss+sentinel" if tls else "redis+sentinel"
        return f"{_describe_nodes(scheme, names)}/{getattr(pool, 'service_name', '?')}"
    scheme = "rediss" if tls else "redis"
    host = str(kwargs.get("host", "localhost"))
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{kwargs.get('port', 6379)}/{db}"
