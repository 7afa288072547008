"""Followers woken at once: RedisStore.wait_for_release / AsyncRedisStore.wait_for_release (the
ReleaseWatch protocols) against a real redis-server: one release wakes every waiter, a held lease
keeps them waiting until their timeout, a free one returns at once, close() unsubscribes."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import attrs
import pytest
import redis

from authfsm import AuthEngine, Policy, StorageCorrupt
from authfsm.adapters import AsyncRedisStore, RedisStore
from authfsm.engine import (
    AsyncReleaseWatch,
    Credentials,
    LeaseTimeout,
    Record,
    Released,
    ReleaseWatch,
    StorageUnavailable,
)
from authfsm.testing import TokenServer

from .redis_server import (
    RedisServer,
    _redis_key,  # noqa: F401 - a fixture
    _redis_server,  # noqa: F401 - a fixture
    free_port,
    running_redis,
)

WAITERS = 16


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


@pytest.fixture(name="holder")
def _holder(redis_server: RedisServer, redis_key: str) -> Iterator[RedisStore]:
    """The store that holds the lease; followers are other stores on its key."""
    with RedisStore(redis_server.url, key=redis_key) as store:
        yield store


def follower_of(store: RedisStore, **options) -> RedisStore:
    url = store.location.split(" key ")[0]
    return RedisStore(url, key=store.key, key_prefix="", **options)


def subscribers(store: RedisStore) -> int:
    ((_channel, count),) = store.client.execute_command("PUBSUB NUMSUB", store.release_channel)
    return int(count)


class TestProtocol:
    def test_both_stores_are_release_watches(self, holder, redis_server):
        assert isinstance(holder, ReleaseWatch)
        assert isinstance(AsyncRedisStore(redis_server.url), AsyncReleaseWatch)


class TestWaitForRelease:
    """The blocking store, waiters in threads."""

    def test_one_release_wakes_every_waiter(self, holder):
        """16 threads of one store wait (timeout 5 s): none returns while the lease is held,
        all return within a few ms of the release."""
        follower = follower_of(holder)
        woken: list[float] = []

        def wait() -> None:
            follower.wait_for_release(5.0)
            woken.append(time.monotonic())

        with holder.lease(1.0):
            threads = [threading.Thread(target=wait) for _ in range(WAITERS)]
            for thread in threads:
                thread.start()
            time.sleep(0.3)
            early = len(woken)
            released = time.monotonic()
        for thread in threads:
            thread.join(timeout=10)
        follower.close()

        latency = max(woken) - released
        print(f"{WAITERS} threads woken {latency * 1000:.1f} ms after the release")
        assert 0 == early
        assert WAITERS == len(woken)
        assert latency < 0.5  # the timeout was 5 s

    def test_held_lease_keeps_a_waiter_until_its_timeout(self, holder):
        """Timeout 0.3 on a held lease: returns after 0.3 s, never taking the lease."""
        follower = follower_of(holder)
        with holder.lease(1.0):
            token = holder.client.get(holder.lease_key)
            started = time.monotonic()
            follower.wait_for_release(0.3)
            waited = time.monotonic() - started
            still = holder.client.get(holder.lease_key)
        follower.close()

        assert 0.3 <= waited < 0.6
        assert token == still

    def test_free_lease_returns_at_once(self, holder):
        """Nobody holds it: return after the subscription is confirmed and one EXISTS."""
        follower = follower_of(holder)
        started = time.monotonic()
        follower.wait_for_release(5.0)
        first = time.monotonic() - started
        started = time.monotonic()
        follower.wait_for_release(5.0)
        again = time.monotonic() - started
        follower.close()

        assert first < 0.5
        assert again < 0.05

    def test_releases_nobody_waited_for_are_not_a_wake_up(self, holder):
        """Releases while nobody waits queue up on the subscription; they do not end a later
        wait on a held lease early."""
        follower = follower_of(holder)
        follower.wait_for_release(1.0)  # subscribed from now on
        for _ in range(5):
            with holder.lease(1.0):
                pass
        with holder.lease(1.0):
            started = time.monotonic()
            follower.wait_for_release(0.3)
            waited = time.monotonic() - started
        follower.close()

        assert waited >= 0.3

    def test_a_lease_lost_with_its_holder_ends_the_wait_at_the_timeout(self, holder):
        """An expiring lease publishes nothing: the waiter's timeout is the safety net."""
        follower = follower_of(holder)
        holder.client.set(holder.lease_key, b"a-dead-holder", px=100)
        started = time.monotonic()
        follower.wait_for_release(0.5)
        waited = time.monotonic() - started
        follower.close()

        assert 0.5 <= waited < 0.8

    def test_close_ends_the_subscription(self, holder):
        """One subscription per store, made at the first wait and kept; close() ends it."""
        follower = follower_of(holder)
        before = subscribers(holder)
        for _ in range(3):
            follower.wait_for_release(1.0)
        during = subscribers(holder)
        follower.close()

        assert (0, 1, 0) == (before, during, subscribers(holder))

    def test_zero_timeout_returns_at_once(self, holder):
        follower = follower_of(holder)
        with holder.lease(1.0):
            started = time.monotonic()
            follower.wait_for_release(0)
            assert time.monotonic() - started < 0.05
        assert 0 == subscribers(holder)

    def test_a_client_without_pub_sub_is_polled(self, holder, redis_server):
        """(redis-py before 8 has no pub/sub for asyncio Redis Cluster.) The wait polls EXISTS
        every poll_interval instead: a release is seen within one, a held lease lasts."""

        class NoPubSub(redis.Redis):
            pubsub = None

        client = NoPubSub.from_url(redis_server.url)
        follower = RedisStore(client=client, key=holder.key, key_prefix="", poll_interval=0.05)
        with holder.lease(1.0):
            started = time.monotonic()
            follower.wait_for_release(0.3)
            held = time.monotonic() - started
            thread = threading.Thread(target=follower.wait_for_release, args=(5.0,))
            thread.start()
            time.sleep(0.1)
            released = time.monotonic()
        thread.join(timeout=10)
        latency = time.monotonic() - released
        client.close()

        assert 0.3 <= held < 0.6
        assert latency < 0.3

    def test_server_away_is_storage_unavailable(self):
        store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", key="k", timeout=0.5)
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            store.wait_for_release(5.0)
        assert time.monotonic() - started < 2.0

    def test_a_broken_subscription_is_made_again(self, tmp_path):
        """The server restarts under a subscription: a wait may fail or return early, the next
        one subscribes again and is woken by a release."""
        with running_redis() as server:
            holder = RedisStore(server.url, key="k")
            follower = RedisStore(server.url, key="k")
            follower.wait_for_release(1.0)
            server.stop(kill=True)
            server.start()
            with contextlib.suppress(StorageUnavailable):  # or an early return
                follower.wait_for_release(1.0)
            woken: list[float] = []
            with holder.lease(1.0):
                thread = threading.Thread(
                    target=lambda: (follower.wait_for_release(5.0), woken.append(time.monotonic()))
                )
                thread.start()
                time.sleep(0.3)
                early = len(woken)
                released = time.monotonic()
            thread.join(timeout=10)
            follower.close()
            holder.close()

        assert 0 == early
        assert 1 == len(woken)
        assert woken[0] - released < 0.5


def exists_calls(store: RedisStore) -> int:
    """EXISTS commands the server has run so far (the look at the lease before a wait)."""
    stats = store.client.info("commandstats")
    return int(stats.get("cmdstat_exists", {}).get("calls", 0))


def release_later(holder: RedisStore, held, after: float) -> threading.Thread:
    """Let go of ``held`` (a lease of ``holder`` entered by the caller) in ``after`` seconds."""
    thread = threading.Timer(after, held.__exit__, (None, None, None))
    thread.start()
    return thread


class TestWaitAfterATry:
    """
    A try for the lease that found it held is the look a wait needs: at the start of a storm,
    every follower's wait costs no round trip more (the subscription was confirmed before the
    try, so every release after it reaches the waiter).
    """

    def test_the_wait_after_a_failed_try_sends_no_look(self, holder):
        follower = follower_of(holder)
        follower.wait_for_release(1.0)  # subscribed from now on
        held = holder.lease(1.0)
        held.__enter__()
        before = exists_calls(holder)
        follower.wait_for_release(0.1)  # a wait on its own looks at the lease
        looked = exists_calls(holder) - before

        with pytest.raises(LeaseTimeout), follower.lease(0):
            pass
        before = exists_calls(holder)
        timer = release_later(holder, held, 0.2)
        started = time.monotonic()
        follower.wait_for_release(5.0)
        woken = time.monotonic() - started
        timer.join()
        follower.close()

        assert (1, 0) == (looked, exists_calls(holder) - before)
        assert 0.1 < woken < 2.0  # the release woke it, not its timeout

    def test_a_release_between_the_try_and_the_wait_is_not_missed(self, holder):
        follower = follower_of(holder)
        follower.wait_for_release(1.0)
        with holder.lease(1.0), pytest.raises(LeaseTimeout), follower.lease(0):
            pass
        # Released now, before the wait starts: its message is what ends the wait.
        started = time.monotonic()
        follower.wait_for_release(5.0)
        woken = time.monotonic() - started
        follower.close()

        assert woken < 1.0

    def test_a_try_before_the_subscription_is_confirmed_still_looks(self, holder):
        """No subscription yet when the try was sent: the wait subscribes, then looks."""
        follower = follower_of(holder)
        with holder.lease(1.0):
            with pytest.raises(LeaseTimeout), follower.lease(0):
                pass
            before = exists_calls(holder)
            follower.wait_for_release(0.1)
            looked = exists_calls(holder) - before
        follower.close()

        assert 1 == looked

    def test_asyncio_the_wait_after_a_failed_try_sends_no_look(self, holder):
        async def scenario() -> tuple[int, float]:
            async with AsyncRedisStore(
                holder.location.split(" key ")[0], key=holder.key, key_prefix=""
            ) as follower:
                await follower.wait_for_release(1.0)
                held = holder.lease(1.0)
                held.__enter__()
                with pytest.raises(LeaseTimeout):
                    async with follower.lease(0):
                        pass
                before = exists_calls(holder)
                timer = release_later(holder, held, 0.2)
                started = time.monotonic()
                await follower.wait_for_release(5.0)
                woken = time.monotonic() - started
                await asyncio.to_thread(timer.join)
                return exists_calls(holder) - before, woken

        looks, woken = run(scenario())
        assert 0 == looks
        assert 0.1 < woken < 2.0


def wait_in_thread(store: RedisStore, timeout: float = 5.0) -> tuple[threading.Thread, list]:
    """``store.wait_for_release(timeout)`` in a thread; the list gets what it returned."""
    got: list = []
    thread = threading.Thread(target=lambda: got.append(store.wait_for_release(timeout)))
    thread.start()
    return thread, got


class TestWhatTheReleaseCarries:
    """
    The release's message carries the record as the leader left it: a follower woken by it
    adopts that, without reading the key (one round trip less per follower of a storm).
    """

    def test_a_waiter_gets_the_record_written_under_the_lease(self, holder):
        follower = follower_of(holder)
        follower.wait_for_release(1.0)  # subscribed
        with holder.lease(1.0):
            thread, got = wait_in_thread(follower)
            time.sleep(0.2)
            written = holder.write(Record(credential=Credentials(access_token="at-2")), None)
        thread.join(10)
        follower.close()

        assert [Released(written)] == got

    def test_a_store_left_empty_is_carried_as_no_record(self, holder):
        first = holder.write(Record(credential=Credentials(access_token="at-1")), None)
        follower = follower_of(holder)
        follower.wait_for_release(1.0)
        with holder.lease(1.0):
            thread, got = wait_in_thread(follower)
            time.sleep(0.2)
            holder.delete(first.revision)
        thread.join(10)
        follower.close()

        assert [Released(None)] == got

    def test_a_message_that_carries_nothing_means_read_it(self, holder):
        """An older release script publishes "1": the waiter wakes and returns None."""
        follower = follower_of(holder)
        follower.wait_for_release(1.0)
        holder.client.set(holder.lease_key, b"an-older-holder", px=5000)
        thread, got = wait_in_thread(follower)
        time.sleep(0.2)
        holder.client.delete(holder.lease_key)
        holder.client.publish(holder.release_channel, b"1")
        thread.join(10)
        follower.close()

        assert [None] == got

    def test_a_corrupt_record_is_not_carried_but_read(self, holder):
        """What cannot be decoded is left to the read, which reports it (StorageCorrupt)."""
        follower = follower_of(holder)
        follower.wait_for_release(1.0)
        with holder.lease(1.0):
            thread, got = wait_in_thread(follower)
            time.sleep(0.2)
            holder.client.set(holder.key, b"{not json")
        thread.join(10)
        follower.close()

        assert [None] == got
        with pytest.raises(StorageCorrupt):
            follower.read()

    def test_a_follower_engine_adopts_the_release_without_reading(self, holder, redis_server):
        """The whole point: a follower of a refresh reads nothing after the leader's release."""
        with TokenServer(access_token_ttl=3600.0) as idp:
            stale = idp.issue(expires_in=1.0)
            holder.write(Record(credential=stale), None)
            follower = follower_of(holder)
            engine = AuthEngine(follower, None, Policy())
            follower.wait_for_release(0.01)  # subscribed, as a running service is
            reads: list[float] = []
            read = follower.read
            follower.read = lambda: (reads.append(time.monotonic()), read())[1]  # type: ignore[method-assign]
            time.sleep(1.0)  # due now
            with holder.lease(5.0):
                thread = threading.Thread(target=lambda: reads.append(engine.access_token()))
                thread.start()
                # Released within its first slice of waiting (0.25 s), once it waits.
                deadline = time.monotonic() + 5
                while not follower._watcher._reading and time.monotonic() < deadline:
                    time.sleep(0.002)
                rotated = attrs.evolve(
                    stale,
                    access_token="at-rotated",
                    refresh_token="rt-2",
                    expires_at=stale.expires_at + timedelta(hours=1),
                )
                current = holder.read()
                holder.write(Record(credential=rotated), current.revision)
            thread.join(10)
            follower.close()

        assert ["at-rotated"] == reads  # the token, and no read at all
        assert "at-rotated" == engine.credentials.access_token


class Events:
    """A logger for an engine: the (level, name) of every event it emits."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __getattr__(self, level: str):
        return lambda event, **_fields: self.seen.append((level, event))


class TestOldNewsIsNotAdopted:
    def test_a_release_message_left_unread_since_an_earlier_round_is_not_adopted(self, holder):
        """
        Releases nobody waited for queue up, unread, on a follower's subscription. The next
        wait reads them first: what they carried is older than what the engine has seen, so
        it reads the store instead (adopting it would take the store for gone back in time,
        and serve the spent token while writing it back).
        """
        with TokenServer(access_token_ttl=3600.0) as idp:
            follower = follower_of(holder)
            follower.wait_for_release(0.01)  # subscribed
            first = holder.write(Record(credential=idp.issue()), None)
            with holder.lease(1.0):  # a release nobody waits for: its message stays unread
                pass
            stale = idp.issue(expires_in=1.0)
            current = holder.write(Record(credential=stale), first.revision)
            events = Events()
            engine = AuthEngine(follower, None, Policy(), logger=events)  # seen: the current
            time.sleep(1.0)  # due now
            tokens: list[str] = []
            with holder.lease(5.0):
                thread = threading.Thread(target=lambda: tokens.append(engine.access_token()))
                thread.start()
                time.sleep(0.1)
                early = list(tokens)
                rotated = attrs.evolve(
                    stale,
                    access_token="at-rotated",
                    refresh_token="rt-2",
                    expires_at=stale.expires_at + timedelta(hours=1),
                )
                holder.write(Record(credential=rotated), current.revision)
            thread.join(10)
            follower.close()

        assert ([], ["at-rotated"]) == (early, tokens)
        assert "reloaded" == engine.state.value
        assert [] == [name for level, name in events.seen if level == "warning"]


class TestAsyncWaitForRelease:
    """The asyncio store, waiters in tasks."""

    def test_one_release_wakes_every_task(self, holder):
        async def scenario() -> tuple[int, list[float], float]:
            woken: list[float] = []
            async with AsyncRedisStore(
                holder.location.split(" key ")[0], key=holder.key, key_prefix=""
            ) as follower:

                async def wait() -> None:
                    await follower.wait_for_release(5.0)
                    woken.append(time.monotonic())

                with holder.lease(1.0):
                    tasks = [asyncio.ensure_future(wait()) for _ in range(WAITERS)]
                    await asyncio.sleep(0.3)
                    early = len(woken)
                    released = time.monotonic()
                await asyncio.gather(*tasks)
            return early, woken, released

        early, woken, released = run(scenario())
        latency = max(woken) - released
        print(f"{WAITERS} tasks woken {latency * 1000:.1f} ms after the release")
        assert 0 == early
        assert WAITERS == len(woken)
        assert latency < 0.5

    def test_held_free_and_closed(self, holder):
        """A held lease keeps a task until its timeout; a free one returns at once; aclose()
        ends the subscription."""

        async def scenario() -> tuple[float, float, int, int]:
            follower = AsyncRedisStore(
                holder.location.split(" key ")[0], key=holder.key, key_prefix=""
            )
            with holder.lease(1.0):
                started = time.monotonic()
                await follower.wait_for_release(0.3)
                held = time.monotonic() - started
            started = time.monotonic()
            await follower.wait_for_release(5.0)
            free = time.monotonic() - started
            during = subscribers(holder)
            await follower.aclose()
            return held, free, during, subscribers(holder)

        held, free, during, after = run(scenario())
        assert 0.3 <= held < 0.6
        assert free < 0.05
        assert (1, 0) == (during, after)

    def test_a_cancelled_waiter_leaves_the_others_waiting(self, holder):
        """Cancelling the task that reads the subscription hands the reading to another."""

        async def scenario() -> tuple[bool, float]:
            async with AsyncRedisStore(
                holder.location.split(" key ")[0], key=holder.key, key_prefix=""
            ) as follower:
                with holder.lease(1.0):
                    first = asyncio.ensure_future(follower.wait_for_release(5.0))
                    await asyncio.sleep(0.1)
                    second = asyncio.ensure_future(follower.wait_for_release(5.0))
                    await asyncio.sleep(0.1)
                    first.cancel()
                    await asyncio.sleep(0.1)
                    waiting = not second.done()
                    released = time.monotonic()
                await asyncio.wait_for(second, 5.0)
                return waiting, time.monotonic() - released

        waiting, latency = run(scenario())
        assert waiting
        assert latency < 0.5
