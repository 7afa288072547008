"""
The asyncio engine: drives the same :class:`~._flows.EngineCore` as ``AuthEngine``.

Single flight across tasks comes from an ``asyncio.Lock``; the store's lease is taken without
blocking the event loop; cancellation is thrown into the flow, whose ``finally`` blocks give the
lease back and leave REFRESHING. ``transitions``' AsyncMachine is not used: the lifecycle's
callbacks are pure and synchronous, and all awaiting happens outside triggers.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..states import State
from ._checks import check_endpoint, check_policy, check_store
from ._credentials import Credentials
from ._drivers import Commitment, drive_async, poll_lease
from ._effects import POLL_INTERVAL, Flow
from ._errors import EngineMisuse
from ._events import EventLog, Observer
from ._flows import EngineCore
from ._policy import Policy
from ._ports import ReleaseWatch, Store
from ._ports_async import AsyncStore, AsyncTokenEndpoint
from ._record import Record
from ._status import AuthStatus

if TYPE_CHECKING:
    from ..login import LoginResult
    from ..login._engine import IssuerSetup
    from ..login._result import IdentityCheck
    from ._httpx2_auth import AsyncEngineAuth2
    from ._httpx_auth import AsyncEngineAuth

__all__ = ["AsyncAuthEngine", "BlockingStoreInLoop"]

T = TypeVar("T")


class BlockingStoreInLoop:
    """
    Lets ``AsyncAuthEngine`` use a blocking store (``FileStore``, ``MemoryStore``).

    Reads and writes of a small file run inline; the lease is polled with non-blocking attempts
    and ``asyncio.sleep`` between them, so a waiting task never blocks the loop and a cancelled
    one never ends up holding the lease.
    """

    def __init__(self, store: Store, *, poll_interval: float = 0.002) -> None:
        self._store = store
        self._poll = poll_interval

    @property
    def location(self) -> str:
        return self._store.location

    async def read(self) -> Record | None:
        return self._store.read()

    async def write(self, record: Record, expected_revision: int | None) -> Record:
        return self._store.write(record, expected_revision)

    async def delete(self, expected_revision: int | None) -> None:
        self._store.delete(expected_revision)

    def lease(self, timeout: float) -> contextlib.AbstractAsyncContextManager[None]:
        return poll_lease(self._store, timeout, self._poll)

    async def wait_for_release(self, timeout: float) -> None:
        """
        The store's asyncio wait (``wait_for_release_async``, as the built-in stores have), else
        its blocking ``ReleaseWatch`` wait in a worker thread, else a short sleep.
        """
        wait_async = getattr(self._store, "wait_for_release_async", None)
        if wait_async is not None:
            await wait_async(timeout)
        elif isinstance(self._store, ReleaseWatch):
            await asyncio.to_thread(self._store.wait_for_release, timeout)
        else:
            await asyncio.sleep(max(min(timeout, POLL_INTERVAL), 0.0))


class AsyncAuthEngine:
    """
    ``AuthEngine`` for asyncio programs: the same API, as coroutines, and the same decisions.

    Args:
        store: an async store (``RedisStore``'s async client, ...) or a blocking one
            (``FileStore``, ``MemoryStore``), which is wrapped in :class:`BlockingStoreInLoop`.
        endpoint: an endpoint with ``refresh_async``/``revoke_async`` (``OAuthTokenEndpoint``).
        policy, clock, logger, metrics: as for ``AuthEngine``.

    Create it with ``await AsyncAuthEngine.open(...)``, which reads the store once; the plain
    constructor defers that read to the first call.
    """

    def __init__(
        self,
        store: AsyncStore | Store,
        endpoint: AsyncTokenEndpoint | None = None,
        policy: Policy | None = None,
        *,
        clock: Callable[[], float] = time.time,
        logger: Any = None,
        metrics: Observer | None = None,
    ) -> None:
        check_store(store, asynchronous=True)
        check_endpoint(endpoint, asynchronous=True)
        check_policy(policy)
        # Both protocols have the same method names; only the coroutine-ness tells them apart.
        self._store: AsyncStore = (
            store  # type: ignore[assignment]
            if inspect.iscoroutinefunction(getattr(store, "read", None))
            else BlockingStoreInLoop(store)  # type: ignore[arg-type]
        )
        self._endpoint = endpoint
        self._clock = clock
        self._issuer: IssuerSetup | None = None
        self._flight = asyncio.Lock()
        self._started = False
        # The event loop the engine's lock and tasks belong to, and how many operations run.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = 0
        self._guard = threading.Lock()
        # The lease kept across calls while freshly minted tokens are not written (RetainLease),
        # and one kept under an event loop that is gone (let go of by the next operation).
        self._retained: list[contextlib.AbstractAsyncContextManager[None]] = []
        self._orphaned: list[contextlib.AbstractAsyncContextManager[None]] = []
        # Operations whose caller was cancelled after their token call was sent: they finish.
        self._detached: set[asyncio.Task[Any]] = set()
        self.hot_until = -math.inf
        self.hot_token = ""
        self._core = EngineCore(
            policy if policy is not None else Policy(),
            clock,
            EventLog(
                logger,
                None
                if metrics is None
                else metrics.attach(self, store=store, endpoint=endpoint, clock=clock),
            ),
            has_endpoint=endpoint is not None,
            hot=self,
        )

    @classmethod
    async def open(
        cls,
        store: AsyncStore | Store,
        endpoint: AsyncTokenEndpoint | None = None,
        policy: Policy | None = None,
        *,
        clock: Callable[[], float] = time.time,
        logger: Any = None,
        metrics: Observer | None = None,
    ) -> AsyncAuthEngine:
        """Build an engine and read the store once (``StorageCorrupt`` surfaces here)."""
        engine = cls(store, endpoint, policy, clock=clock, logger=logger, metrics=metrics)
        async with engine._flight:
            await engine._start()
        return engine

    @classmethod
    async def from_issuer(
        cls,
        issuer: str,
        *,
        client_id: str,
        store: AsyncStore | Store,
        client_secret: str | None = None,
        scope: str = "openid offline_access",
        policy: Policy | None = None,
        clock: Callable[[], float] = time.time,
        logger: Any = None,
        metrics: Observer | None = None,
        timeout: float = 10.0,
        identity_check: IdentityCheck = "verify",
    ) -> AsyncAuthEngine:
        """See ``AuthEngine.from_issuer``: discovery with asyncio, then the store read once."""
        from ..login._engine import issuer_setup_async

        setup = await issuer_setup_async(
            issuer,
            client_id=client_id,
            client_secret=client_secret,
            scope=scope,
            timeout=timeout,
            identity_check=identity_check,
            clock=clock,
            logger=logger,
        )
        engine = await cls.open(
            store, setup.endpoint, policy, clock=clock, logger=logger, metrics=metrics
        )
        engine._issuer = setup
        return engine

    async def login_browser(self, *, revoke_previous: bool = False, **options: Any) -> LoginResult:
        """See ``AuthEngine.login_browser``; waits for the redirect without blocking the loop."""
        from ..login import browser_login_async

        setup = self._issuer_setup()
        result = await browser_login_async(setup.metadata, **{**setup.login_options(), **options})
        await self._land(result, setup, revoke_previous=revoke_previous)
        return result

    async def login_device(self, *, revoke_previous: bool = False, **options: Any) -> LoginResult:
        """See ``AuthEngine.login_device``; polls with ``asyncio.sleep``."""
        from ..login import device_login_async

        setup = self._issuer_setup()
        result = await device_login_async(setup.metadata, **{**setup.login_options(), **options})
        await self._land(result, setup, revoke_previous=revoke_previous)
        return result

    def _issuer_setup(self) -> IssuerSetup:
        if self._issuer is None:
            raise EngineMisuse(
                "This engine does not know its provider; build it with "
                "await AsyncAuthEngine.from_issuer()."
            )
        return self._issuer

    async def _land(
        self, result: LoginResult, setup: IssuerSetup, *, revoke_previous: bool
    ) -> None:
        from ..login._engine import stamped, superseded

        credentials = stamped(result, setup)
        replaced = await self._run(lambda core: core.login(credentials))
        old = superseded(replaced, credentials)
        if revoke_previous and old is not None:
            await setup.endpoint.revoke_async(old)

    @property
    def state(self) -> State:
        return self._core.state

    @property
    def policy(self) -> Policy:
        return self._core.policy

    @property
    def credentials(self) -> Credentials | None:
        return self._core.cred

    async def access_token(self) -> str:
        """See ``AuthEngine.access_token``; a fresh credential costs no lock and no I/O."""
        if self._clock() < self.hot_until:
            return self.hot_token
        return await self._run(lambda core: core.serve(force=False))

    async def refresh(self) -> str:
        """See ``AuthEngine.refresh``."""
        return await self._run(lambda core: core.serve(force=True))

    async def recover(self, rejected_token: str) -> str:
        """See ``AuthEngine.recover``."""
        return await self._run(lambda core: core.recover(rejected_token))

    async def status(self, *, include_token: bool = False, refresh: bool = False) -> AuthStatus:
        """See ``AuthEngine.status``."""
        return await self._run(
            lambda core: core.status(include_token=include_token, refresh=refresh)
        )

    async def login(self, credentials: Credentials) -> None:
        """See ``AuthEngine.login``."""
        await self._run(lambda core: core.login(credentials))

    async def logout(self, *, revoke: bool = False) -> bool:
        """See ``AuthEngine.logout``."""
        return await self._run(lambda core: core.logout(revoke=revoke))

    async def reload(self, *, allow_identity_change: bool = False) -> State:
        """See ``AuthEngine.reload``."""
        return await self._run(
            lambda core: core.reload(allow_identity_change=allow_identity_change)
        )

    def httpx_auth(self) -> AsyncEngineAuth:
        """An ``httpx.Auth`` for ``httpx.AsyncClient``: bearer token, one recovery on 401."""
        from ._httpx_auth import AsyncEngineAuth

        return AsyncEngineAuth(self)

    def httpx2_auth(self) -> AsyncEngineAuth2:
        """The same as :meth:`httpx_auth` for an ``httpx2.AsyncClient`` (``authfsm[httpx2]``)."""
        from ._httpx2_auth import AsyncEngineAuth2

        return AsyncEngineAuth2(self)

    async def _start(self) -> None:
        if not self._started:
            await drive_async(self._core.start(), self._store, self._endpoint)
            self._started = True
        while self._orphaned:
            # Best effort: a Redis lease's client belonged to the old loop (its key then expires
            # by its TTL); a file's lease is let go of here.
            with contextlib.suppress(Exception):
                await self._orphaned.pop().__aexit__(None, None, None)

    async def _run(self, operation: Callable[[EngineCore], Flow[T]]) -> T:
        """
        Run one operation in a task of its own that holds the engine's lock.

        A cancelled caller gets its cancellation at once. Before the token call, the operation
        is cancelled with it (the flow releases the lease). After it, the operation finishes in
        the background: the answer is written and only then the lease and the lock released.
        """
        self._enter_loop()
        commitment = Commitment()
        inner = asyncio.ensure_future(self._locked(operation, commitment))
        inner.add_done_callback(self._leave)
        try:
            return await asyncio.shield(inner)
        except asyncio.CancelledError:
            if inner.done():
                raise
            if commitment.committed:
                self._detached.add(inner)
                inner.add_done_callback(self._forget)
            else:
                inner.cancel()
                await asyncio.wait({inner})
                if not inner.cancelled():
                    inner.exception()  # retrieved: the caller gets its cancellation instead
            raise

    async def _locked(
        self, operation: Callable[[EngineCore], Flow[T]], commitment: Commitment
    ) -> T:
        async with self._flight:
            await self._start()
            return await drive_async(
                operation(self._core), self._store, self._endpoint, commitment, self._retained
            )

    def _leave(self, _task: asyncio.Task[Any]) -> None:
        with self._guard:
            self._running -= 1

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._detached.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: nobody awaits a detached operation

    def _enter_loop(self) -> None:
        loop = asyncio.get_running_loop()
        with self._guard:
            if loop is not self._loop:
                if self._running:
                    raise EngineMisuse(
                        "This AsyncAuthEngine is in use by another event loop; use one engine "
                        "per event loop (each with its own store object)."
                    )
                # A new loop (e.g. a second asyncio.run) while idle: the lock belongs to it now.
                self._loop = loop
                self._flight = asyncio.Lock()
                bound = [lease for lease in self._retained if not isinstance(lease, poll_lease)]
                if bound:
                    # A lease kept under the old loop (an asyncio Redis client's) cannot be
                    # relied on under this one: let it go; the next write of the unsaved
                    # tokens takes the lease anew. A blocking store's lease stays held.
                    self._orphaned.extend(bound)
                    self._retained.clear()
                    self._core.retained = False
            self._running += 1

    def __repr__(self) -> str:
        return f"<AsyncAuthEngine state={self.state.name} store={self._store.location!r}>"
