"""AsyncAuthEngine: the same behaviour as AuthEngine, as coroutines, plus task safety."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from authfsm import AsyncAuthEngine, AuthEngine, ReauthRequired, RefreshFailed, State
from authfsm.adapters import FileStore, MemoryStore
from authfsm.testing import ScriptedResponse


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


async def opened(store, endpoint, clock, server, **issue):
    engine = await AsyncAuthEngine.open(store, endpoint, clock=clock)
    await engine.login(server.issue(**issue))
    return engine


class TestAsyncBehaviour:
    """The core behaviours, through the async engine and the async endpoint."""

    def test_fresh_token_and_proactive_refresh(self, file_store, endpoint, clock, server):
        """Fresh: the cached token; due: one call, persisted."""

        async def scenario():
            engine = await opened(file_store, endpoint, clock, server)
            first = await engine.access_token()
            clock.advance(3600)
            second = await engine.access_token()
            return first, second, engine.state

        first, second, state = run(scenario())

        assert first != second
        assert (State.FRESH, 1) == (state, server.token_calls)
        assert second == file_store.read().credential.access_token

    def test_guarded_reload_adopts_without_a_call(self, file_store, endpoint, clock, server):
        """A sibling's rotation is adopted by the async engine: zero calls."""

        async def scenario():
            a = await opened(file_store, endpoint, clock, server)
            b = AuthEngine(FileStore(file_store.path), endpoint, clock=clock)
            clock.advance(3600)
            rotated = b.access_token()
            return rotated, await a.access_token(), a.state

        rotated, adopted, state = run(scenario())

        assert rotated == adopted
        assert (State.RELOADED, 1) == (state, server.token_calls)

    def test_poison_is_shared(self, file_store, endpoint, clock, server):
        """A revoked family: one call, then none from this engine nor a sync sibling."""

        async def scenario():
            engine = await opened(file_store, endpoint, clock, server)
            server.revoke_family_of(engine.credentials)
            clock.advance(3600)
            with pytest.raises(ReauthRequired):
                await engine.access_token()
            with pytest.raises(ReauthRequired):
                await engine.refresh()
            status = await engine.status(include_token=True, refresh=True)
            return engine.state, status.token

        assert (State.POISONED, None) == run(scenario())
        sibling = AuthEngine(FileStore(file_store.path), endpoint, clock=clock)
        with pytest.raises(ReauthRequired):
            sibling.access_token()
        assert 1 == server.token_calls

    def test_transient_backoff(self, file_store, endpoint, clock, server):
        """503: the old token is served, no call before the backoff ends, then one."""

        async def scenario():
            engine = await opened(file_store, endpoint, clock, server)
            old = engine.credentials.access_token
            server.script(ScriptedResponse(status=503))
            clock.advance(3600 - 60)
            served = [await engine.access_token() for _ in range(3)]
            calls_during_backoff = server.token_calls
            with pytest.raises(RefreshFailed):
                await engine.refresh()
            clock.advance(600)
            return old, served, calls_during_backoff, await engine.access_token()

        old, served, calls, new = run(scenario())

        assert [old, old, old] == served
        assert 1 == calls
        assert old != new
        assert 2 == server.token_calls

    def test_recover_judged_against_the_rejected_token(self, file_store, endpoint, clock, server):
        """A sibling rotated: recover() adopts from the store with no call."""

        async def scenario():
            a = await opened(file_store, endpoint, clock, server)
            rejected = a.credentials.access_token
            b = AuthEngine(FileStore(file_store.path), endpoint, clock=clock)
            rotated = b.refresh()
            return rotated, await a.recover(rejected)

        rotated, recovered = run(scenario())

        assert rotated == recovered
        assert 1 == server.token_calls


class TestTasks:
    """Single flight across tasks, and cancellation safety."""

    def test_hundred_tasks_one_call(self, file_store, endpoint, clock, server):
        """100 concurrent tasks on a stale credential: exactly one endpoint call."""

        async def scenario():
            engine = await opened(file_store, endpoint, clock, server)
            clock.advance(3600)
            return await asyncio.gather(*(engine.access_token() for _ in range(100)))

        tokens = run(scenario())

        assert 1 == len(set(tokens))
        assert 1 == server.token_calls

    def test_cancelled_callers_return_at_once_and_the_call_still_finishes(
        self, file_store, endpoint, clock, server
    ):
        """Callers cancelled mid-call get their cancellation; the call's answer is still kept."""

        async def scenario():
            engine = await opened(file_store, endpoint, clock, server)
            clock.advance(3600)
            server.script(ScriptedResponse(status=503, delay=1.0))
            leader = asyncio.create_task(engine.refresh())
            await asyncio.sleep(0.2)
            waiter = asyncio.create_task(engine.refresh())
            await asyncio.sleep(0.05)
            assert State.REFRESHING == engine.state
            waiter.cancel()
            leader.cancel()
            results = await asyncio.gather(leader, waiter, return_exceptions=True)
            cancelled_during_call = engine.state
            for _ in range(100):  # bounded: the 503 arrives within a second
                if engine.state is not State.REFRESHING:
                    break
                await asyncio.sleep(0.05)
            return engine, results, cancelled_during_call

        engine, results, during = run(scenario())

        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        assert State.REFRESHING == during  # the callers did not wait for the answer
        assert State.STALE == engine.state
        assert "http_503" == run(engine.status()).failure
        with FileStore(file_store.path).lease(timeout=0):
            pass  # the lease is free
        assert file_store.read().credential == engine.credentials
        assert 1 == file_store.read().backoff.failures  # the answer was written

        async def afterwards():
            return await engine.access_token()

        clock.advance(600)
        assert engine.credentials.access_token != run(afterwards())
        assert 0 == server.reuse_rejections

    def test_memory_store_lease_excludes_tasks(self, clock):
        """Two async engines on one MemoryStore in one loop do not both hold the lease."""
        store = MemoryStore()
        order: list[str] = []

        async def holder(name: str) -> None:
            engine = AsyncAuthEngine(store, clock=clock)
            async with engine._store.lease(5):
                order.append(f"{name}+")
                await asyncio.sleep(0.05)
                order.append(f"{name}-")

        async def scenario():
            await asyncio.gather(holder("a"), holder("b"))

        run(scenario())

        assert order in (["a+", "a-", "b+", "b-"], ["b+", "b-", "a+", "a-"])


class TestAsyncHttpx:
    """AsyncAuthEngine.httpx_auth() with httpx.AsyncClient against the loopback server."""

    def test_retries_a_401_and_resends_a_streamed_body(self, file_store, endpoint, clock, server):
        """A stale token gets 401; the retry adopts the sibling's token and re-sends the body."""

        async def body():
            for chunk in (b"a" * 500, b"b" * 500):
                yield chunk

        async def scenario():
            engine = await opened(file_store, endpoint, clock, server)
            AuthEngine(FileStore(file_store.path), endpoint, clock=clock).refresh()
            async with httpx.AsyncClient(auth=engine.httpx_auth(), timeout=5) as client:
                return await client.post(server.resource_url, content=body())

        response = run(scenario())

        assert 200 == response.status_code
        assert 1000 == response.json()["body_bytes"]
        assert [401] == [r.status_code for r in response.history]
        assert 1 == server.token_calls

    def test_sync_auth_refuses_async_client(self, file_store, endpoint, clock, server):
        """Mixing the sync engine with an AsyncClient is a clear error."""
        engine = AuthEngine(file_store, endpoint, clock=clock)
        engine.login(server.issue())

        async def scenario():
            async with httpx.AsyncClient(auth=engine.httpx_auth()) as client:
                await client.get(server.resource_url)

        with pytest.raises(RuntimeError, match="AsyncAuthEngine"):
            run(scenario())
