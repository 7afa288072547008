"""
The storm benchmark's worker processes (see ``storm.py``): what each process does in a storm.

A worker is started once and serves rounds over stdin/stdout, one JSON line each way:

1. ``{"op": "prepare", ...}``: make the round's store, endpoint and engine(s) (a sync
   ``AuthEngine`` reads the store here, an ``AsyncAuthEngine`` is opened here), then answer
   ``{"ready": ...}``;
2. ``{"op": "go", "start_at": t, "report_at": r}``: sleep until the wall-clock instant ``t``,
   which every worker on this machine shares, then get a token (one call, or one per asyncio
   task); keep quiet until ``r`` (so that no reply and no garbage collection takes a core from
   a follower still waiting), then answer with each caller's token and seconds from ``t`` until
   it held it (and when its refresh calls were sent and answered), and collect the garbage;
3. ``{"op": "ping"}`` at any time: answered once what came before it is done.

Workers keep, across rounds, what a service keeps: the store objects (with a Redis store's
release subscription), the Redis connections, the HTTP clients, and (for asyncio) one event loop.
Run ``python benchmarks/_storm_workers.py --busy`` for a CPU-bound
neighbour: a pure-Python loop until it is stopped.

A worker times its own callers and nothing else; the coordinator (``storm.py``) checks the
tokens with the IdP and judges.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from authfsm import AsyncAuthEngine, AuthEngine, AuthError, Policy
from authfsm.adapters import (
    AsyncRedisStore,
    EncryptedCodec,
    FileStore,
    KeyRing,
    NativeCodec,
    OAuthTokenEndpoint,
    RedisStore,
)
from authfsm.engine import Record, Refreshed, minted

KEYS_VARIABLE = "AUTHFSM_STORM_KEYS"
POLICY = Policy(lease_timeout=timedelta(seconds=30))
HTTP_TIMEOUT = 30.0

# What a process keeps across rounds, as a service would: per Redis URL a client, per token URL
# an endpoint (sync), and for asyncio one event loop with its own clients.
_REDIS: dict[str, Any] = {}
_ASYNC_REDIS: dict[str, Any] = {}
_ENDPOINTS: dict[str, OAuthTokenEndpoint] = {}
_ASYNC_ENDPOINTS: dict[str, OAuthTokenEndpoint] = {}
# Per store spec, the store object (a service keeps one): a file store's release watch, a Redis
# store's release subscription.
_STORES: dict[str, FileStore | RedisStore] = {}
_ASYNC_STORES: dict[str, FileStore | AsyncRedisStore] = {}
_RUNNER: asyncio.Runner | None = None

#: What one caller got: its token (None after an error), seconds from the start instant until
#: it had it, and the error's reason.
Outcome = tuple[str | None, float, str | None]


def _codec(spec: dict[str, Any]) -> EncryptedCodec | None:
    return EncryptedCodec(KeyRing.from_env(KEYS_VARIABLE)) if spec.get("encrypted") else None


def _redis_client(url: str, *, for_asyncio: bool) -> Any:
    """What a URL-made RedisStore uses (short timeouts, no retry), kept open across rounds."""
    kept = _ASYNC_REDIS if for_asyncio else _REDIS
    client = kept.get(url)
    if client is None:
        import redis
        import redis.asyncio
        from redis.backoff import NoBackoff

        family = redis.asyncio if for_asyncio else redis
        options: dict[str, Any] = {
            "socket_timeout": 2.0,
            "socket_connect_timeout": 2.0,
            "retry": family.retry.Retry(NoBackoff(), 0),
        }
        if for_asyncio:  # as AsyncRedisStore's own client: tasks wait for a free connection
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                url, max_connections=100, timeout=2.0, **options
            )
            client = redis.asyncio.Redis.from_pool(pool)
        else:
            client = family.Redis.from_url(url, **options)
        kept[url] = client
    return client


def open_store(spec: dict[str, Any]) -> FileStore | RedisStore:
    """
    The blocking store a command names (the coordinator writes the stale credential with it),
    kept across rounds like a service keeps its store.
    """
    key = json.dumps(spec, sort_keys=True)
    store = _STORES.get(key)
    if store is None:
        if spec["kind"] == "file":
            store = FileStore(spec["path"], codec=_codec(spec))
        else:
            client = _redis_client(spec["url"], for_asyncio=False)
            store = RedisStore(client=client, key=spec["key"], codec=_codec(spec))
        _STORES[key] = store
    return store


def open_async_store(spec: dict[str, Any]) -> FileStore | AsyncRedisStore:
    """For ``AsyncAuthEngine``: a FileStore (the engine wraps it) or an ``AsyncRedisStore``."""
    key = json.dumps(spec, sort_keys=True)
    store = _ASYNC_STORES.get(key)
    if store is None:
        if spec["kind"] == "file":
            store = FileStore(spec["path"], codec=_codec(spec))
        else:
            client = _redis_client(spec["url"], for_asyncio=True)
            store = AsyncRedisStore(client=client, key=spec["key"], codec=_codec(spec))
        _ASYNC_STORES[key] = store
    return store


#: The refresh calls this worker made in the current round: (sent, answered), wall-clock.
CALLS: list[tuple[float, float]] = []


class TimedEndpoint(OAuthTokenEndpoint):
    """The endpoint, noting when each refresh call was sent and answered (for the report)."""

    def refresh(self, credentials: Any) -> Any:
        sent = time.time()
        try:
            return super().refresh(credentials)
        finally:
            CALLS.append((sent, time.time()))

    async def refresh_async(self, credentials: Any, *, client: Any = None) -> Any:
        sent = time.time()
        try:
            return await super().refresh_async(credentials, client=client)
        finally:
            CALLS.append((sent, time.time()))


def _endpoint(token_url: str) -> OAuthTokenEndpoint:
    endpoint = _ENDPOINTS.get(token_url)
    if endpoint is None:
        endpoint = TimedEndpoint(token_url, "test-client", timeout=HTTP_TIMEOUT)
        _ENDPOINTS[token_url] = endpoint
    return endpoint


def _async_endpoint(token_url: str) -> OAuthTokenEndpoint:
    """An endpoint whose ``*_async`` calls share one ``httpx.AsyncClient`` of the worker's loop."""
    endpoint = _ASYNC_ENDPOINTS.get(token_url)
    if endpoint is None:
        import httpx

        endpoint = TimedEndpoint(
            token_url,
            "test-client",
            timeout=HTTP_TIMEOUT,
            async_client=httpx.AsyncClient(timeout=HTTP_TIMEOUT),
        )
        _ASYNC_ENDPOINTS[token_url] = endpoint
    return endpoint


def naive_refresh(store_spec: dict[str, Any], endpoint: OAuthTokenEndpoint, cred: Any) -> Any:
    """
    The naive client's refresh (what ``authfsm.demo``'s naive client does): spend the refresh
    token held in memory, write the result back blindly (atomic replace for the file, SET for
    Redis): no lease, no re-read, no CAS.
    """
    outcome = endpoint.refresh(cred)
    if not isinstance(outcome, Refreshed):
        return None
    new = minted(cred, outcome, time.time())
    data = NativeCodec().encode(Record(credential=new, revision=int(time.time() * 1000)))
    if store_spec["kind"] == "file":
        path = Path(store_spec["path"])
        fd, tmp = tempfile.mkstemp(prefix=".naive.", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    else:
        client = _redis_client(store_spec["url"], for_asyncio=False)
        client.set("authfsm:" + store_spec["key"], data)
    return new


def burn(seconds: float) -> None:
    """Use ``seconds`` of this thread's CPU (a follower's work, simulated: ``--bare-cost``)."""
    if seconds > 0:
        until = time.thread_time() + seconds
        while time.thread_time() < until:
            pass


def bare_cost(client: str) -> tuple[float, float]:
    """The CPU a bare client's name asks for: ``bare+PRE/POST`` (microseconds), else none."""
    _, plus, cost = client.partition("+")
    if not plus:
        return 0.0, 0.0
    before, _, after = cost.partition("/")
    return int(before) / 1e6, int(after) / 1e6


class BareFileClient:
    """
    The least a correct shared-file client can do (the **bare** rows, a floor for authfsm's):
    one OS lock, no timeouts, no identity checks, no markers, no events. Whoever gets the
    exclusive lock re-reads the file and, if it still holds the token it started with, refreshes
    and writes it back (temporary file, fsync, rename); everyone else sleeps in the kernel for a
    shared lock, which is granted when the leader lets go, and reads what it wrote.
    """

    def __init__(
        self, spec: dict[str, Any], endpoint: OAuthTokenEndpoint, cost: tuple[float, float]
    ) -> None:
        self.path = Path(spec["path"])
        self.endpoint = endpoint
        # Seconds of CPU a follower burns before it sleeps and after it wakes (--bare-cost).
        self.before_sleep, self.after_wake = cost
        # Kept open like the store object of a service.
        self.lock = os.open(f"{self.path}.bare-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.held = self._read()

    def _read(self) -> dict[str, Any]:
        with open(self.path, "rb") as handle:
            credential: dict[str, Any] = json.loads(handle.read())["credential"]
        return credential

    def token(self) -> str:
        import fcntl

        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            burn(self.before_sleep)
            fcntl.flock(self.lock, fcntl.LOCK_SH)  # until the leader lets go
            fcntl.flock(self.lock, fcntl.LOCK_UN)
            burn(self.after_wake)
            return str(self._read()["access_token"])
        try:
            current = self._read()
            if current["access_token"] != self.held["access_token"]:
                return str(current["access_token"])
            record = NativeCodec().decode(self.path.read_bytes())
            assert record.credential is not None
            outcome = self.endpoint.refresh(record.credential)
            assert isinstance(outcome, Refreshed)
            new = minted(record.credential, outcome, time.time())
            data = NativeCodec().encode(Record(credential=new, revision=record.revision + 1))
            fd, tmp = tempfile.mkstemp(prefix=".bare.", dir=self.path.parent)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
            folder = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
            return new.access_token
        finally:
            fcntl.flock(self.lock, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self.lock)


def held_back(engine: AuthEngine | AsyncAuthEngine) -> str | None:
    """
    Why an engine that answered is backing off (it then serves the token it holds), or None.

    Read from the engine's core: a benchmark may look inside, the library does not say this
    without an I/O (``status()``) that would disturb the storm.
    """
    core = getattr(engine, "_core", None)
    if core is None or engine.state.name != "STALE":
        return None
    return getattr(core, "failure", None) or "backing_off"


def short_follower(engine: AuthEngine, store: FileStore, *, judge: bool) -> str:
    """
    A follower with the engine's flow cut away (the **short** rows, ``--short``): one look at
    the lease's lock file; if it is held, sleep in the kernel for a shared lock, then read the
    store (``FileStore.read``: the file and its decoding) and, with ``judge``, let the engine's
    core judge and adopt the record as a follower does after its wake (identity, poison,
    backoff, the lifecycle, the events). Without ``judge`` it returns the token read. Whoever
    finds the lease free runs ``access_token()``. Only for measuring: it reads the engine's
    private core, as :func:`held_back` does.
    """
    import fcntl

    fd = os.open(f"{store.path}.lock", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            fcntl.flock(fd, fcntl.LOCK_SH)  # until the leader lets go
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return engine.access_token()
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    record = store.read()
    if not judge:
        assert record is not None
        assert record.credential is not None
        return record.credential.access_token
    core = engine._core  # a benchmark may look inside
    core._sync(record, reason="short_follower")
    assert core.cred is not None
    return core.cred.access_token


class SyncRound:
    """One process, one caller: ``AuthEngine.access_token()`` or the naive refresh."""

    def __init__(self, command: dict[str, Any]) -> None:
        self.spec = command["store"]
        self.client = command["client"]
        self.endpoint = _endpoint(command["token_url"])
        store = open_store(self.spec)
        self.bare: BareFileClient | None = None
        self.store = store
        if self.client == "authfsm" or self.client.startswith("short"):
            self.engine = AuthEngine(store, self.endpoint, POLICY)  # reads the store
        elif self.client.startswith("bare"):
            self.bare = BareFileClient(self.spec, self.endpoint, bare_cost(self.client))
        else:
            record = store.read()
            self.held = record.credential if record is not None else None

    def go(self, start_at: float) -> list[Outcome]:
        time.sleep(max(start_at - time.time(), 0.0))
        token: str | None = None
        failure: str | None = None
        try:
            if self.client == "authfsm":
                token = self.engine.access_token()
            elif self.client.startswith("short"):
                assert isinstance(self.store, FileStore)
                token = short_follower(self.engine, self.store, judge=self.client == "short")
            elif self.bare is not None:
                token = self.bare.token()
            else:
                new = naive_refresh(self.spec, self.endpoint, self.held)
                token = new.access_token if new is not None else None
        except AuthError as error:
            failure = error.reason
        elapsed = time.time() - start_at
        if self.bare is not None:
            self.bare.close()
        if self.client == "authfsm" and failure is None:
            failure = held_back(self.engine)
        return [(token, elapsed, failure)]


class AsyncRound:
    """
    One process, ``tasks`` asyncio tasks: one ``AsyncAuthEngine`` shared by all of them
    (``engines == "shared"``), or one per task (``"per-task"``); one store object either way.
    """

    def __init__(self, command: dict[str, Any]) -> None:
        self.tasks = int(command["tasks"])
        self.per_task = command["engines"] == "per-task"
        self.spec = command["store"]
        self.token_url = command["token_url"]
        self.engines: list[AsyncAuthEngine] = []

    async def prepare(self) -> None:
        store = open_async_store(self.spec)
        endpoint = _async_endpoint(self.token_url)
        for _ in range(self.tasks if self.per_task else 1):
            self.engines.append(await AsyncAuthEngine.open(store, endpoint, POLICY))

    async def go(self, start_at: float) -> list[Outcome]:
        await asyncio.sleep(max(start_at - time.time(), 0.0))
        engines = self.engines
        results = await asyncio.gather(
            *(self._one(engines[i % len(engines)], start_at) for i in range(self.tasks))
        )
        self.engines = []
        return list(results)

    @staticmethod
    async def _one(engine: AsyncAuthEngine, start_at: float) -> Outcome:
        try:
            token = await engine.access_token()
        except AuthError as error:
            return None, time.time() - start_at, error.reason
        return token, time.time() - start_at, held_back(engine)


def _runner() -> asyncio.Runner:
    global _RUNNER
    if _RUNNER is None:
        _RUNNER = asyncio.Runner()
    return _RUNNER


def _answer(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def serve(*, freeze: bool) -> None:
    """Serve rounds from stdin (prepare, then go) until stdin closes."""
    import redis.asyncio  # noqa: F401 - imported at start-up like a service, not mid-storm

    if freeze:
        # Identical workers running identical rounds reach CPython's full-collection threshold
        # in the same round; with every imported module's objects to scan, each pauses ~10 ms,
        # and along the lease hand-overs those pauses add up (a ~100 ms stall in about one
        # round in ten). Long-running services freeze their start-up objects the same way.
        gc.freeze()
    _answer({"ready": os.getpid()})
    pending: SyncRound | AsyncRound | None = None
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "ping":  # answered once everything before it is done
            _answer({"ready": os.getpid()})
            continue
        if command["op"] == "prepare":
            if command["mode"] == "async":
                pending = AsyncRound(command)
                _runner().run(pending.prepare())
            else:
                pending = SyncRound(command)
            _answer({"ready": os.getpid()})
            continue
        assert pending is not None, "go before prepare"
        start_at = command["start_at"]
        early = start_at - time.time()  # negative: this worker was late for the start
        CALLS.clear()
        if isinstance(pending, AsyncRound):
            results = _runner().run(pending.go(start_at))
        else:
            results = pending.go(start_at)
        pending = None
        time.sleep(max(command.get("report_at", 0.0) - time.time(), 0.0))
        calls = [(sent - start_at, answered - start_at) for sent, answered in CALLS]
        _answer({"results": results, "early": early, "calls": calls})
        # The round's engines are garbage now (250 per process with one engine per task):
        # collect them between rounds (before the next "prepare" is answered, outside the CPU
        # time a round is charged), so no round pays for the garbage of the one before.
        gc.collect()
        if freeze:
            gc.freeze()


def busy() -> None:
    """A CPU-bound neighbour: a pure-Python loop until it is stopped (SIGTERM)."""
    count = 0
    while True:
        count += 1


if __name__ == "__main__":
    if "--busy" in sys.argv[1:]:
        busy()
    else:
        serve(freeze="--no-gc-freeze" not in sys.argv[1:])
