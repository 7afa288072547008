"""
Behaviours a mutation run showed the rest of the suite could lose without noticing.

Each test drives real engines against the loopback TokenServer (or a fake clock and a real
store) and asserts what a user sees: tokens served, calls at the server, store contents, errors
and their reasons, status fields.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import attrs
import pytest

from authfsm import (
    AccountMismatch,
    AsyncAuthEngine,
    AuthEngine,
    Credentials,
    Kind,
    Policy,
    RefreshFailed,
    State,
    StorageUnavailable,
)
from authfsm.adapters import FileStore, MemoryStore, OAuthTokenEndpoint
from authfsm.engine import Backoff, PermanentFailure, Record, Refreshed, RefreshOutcome

from .conftest import CountingStore

# Due in 3600 - 300 s; this far after login the credential is due and not yet expired.
DUE = 3600 - 60


def _half() -> float:
    return 0.5


#: Full jitter fixed at one half: backoffs of 1, 2, 4, ... seconds after 1, 2, 3 failures.
POLICY = Policy(jitter=_half)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


def at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def stored_record(store) -> Record:
    record = store.read()
    assert record is not None
    return record


def engine_on(store, endpoint, clock, server, **issue) -> tuple[AuthEngine, Credentials]:
    engine = AuthEngine(store, endpoint, POLICY, clock=clock)
    creds = server.issue(**issue)
    engine.login(creds)
    return engine, creds


async def async_engine_on(store, endpoint, clock, server) -> tuple[AsyncAuthEngine, Credentials]:
    engine = await AsyncAuthEngine.open(store, endpoint, POLICY, clock=clock)
    creds = server.issue()
    await engine.login(creds)
    return engine, creds


def due_now(server, clock) -> Credentials:
    """A fresh login of user-1 whose expires_at is now: due the moment it is stored."""
    return attrs.evolve(server.issue(), expires_at=at(clock()))


class FaultyStore(CountingStore):
    """A counting store whose reads or writes raise StorageUnavailable while told to."""

    def __init__(self, inner: MemoryStore | FileStore) -> None:
        super().__init__(inner)
        self.reads_fail = False
        self.writes_fail = False

    def read(self) -> Record | None:
        if self.reads_fail:
            self.reads += 1
            raise StorageUnavailable("store down", reason="storage_unavailable")
        return super().read()

    def write(self, record: Record, expected_revision: int | None) -> Record:
        if self.writes_fail:
            self.writes += 1
            raise StorageUnavailable("store down", reason="storage_unavailable")
        return super().write(record, expected_revision)


class RevocationLog:
    """The real endpoint, noting which refresh tokens it was asked to revoke."""

    def __init__(self, inner: OAuthTokenEndpoint) -> None:
        self.inner = inner
        self.revoked: list[str | None] = []

    def refresh(self, credentials: Credentials) -> RefreshOutcome:
        return self.inner.refresh(credentials)

    def revoke(self, credentials: Credentials) -> bool:
        self.revoked.append(credentials.refresh_token)
        return self.inner.revoke(credentials)


class TestFleetBackoff:
    """Transient failures of different engines add up in the shared backoff marker."""

    def test_failure_count_grows_across_engines(self, file_store, endpoint, clock, server):
        """Catches B counting only its own failures (marker count 1 again, backoff not growing)."""
        a, creds = engine_on(file_store, endpoint, clock, server)
        b = AuthEngine(FileStore(file_store.path), endpoint, POLICY, clock=clock)
        clock.advance(DUE)
        server.fail_next(503)
        assert creds.access_token == a.access_token()
        first = clock()
        assert Backoff(fingerprint=creds.fingerprint, not_before=first + 1.0, failures=1) == (
            stored_record(file_store).backoff
        )

        clock.advance(2)
        server.fail_next(503)
        assert creds.access_token == b.access_token()
        second = clock()

        assert 2 == server.token_calls
        assert Backoff(fingerprint=creds.fingerprint, not_before=second + 2.0, failures=2) == (
            stored_record(file_store).backoff
        )
        assert (State.STALE, at(second + 2.0)) == (b.status().state, b.status().retry_at)

        clock.advance(3)
        server.fail_next(503)
        assert creds.access_token == a.access_token()
        third = clock()

        assert 3 == server.token_calls
        assert Backoff(fingerprint=creds.fingerprint, not_before=third + 4.0, failures=3) == (
            stored_record(file_store).backoff
        )


class TestRecoverFailure:
    """A failed recover() leaves the rejected token out of the hot path."""

    def test_access_token_after_backoff_refreshes(self, file_store, endpoint, clock, server):
        """Catches a failed recover() re-opening the hot path: the rejected token served on."""
        engine, creds = engine_on(file_store, endpoint, clock, server)
        server.fail_next(503)
        with pytest.raises(RefreshFailed) as caught:
            engine.recover(creds.access_token)
        assert ("http_503", 1) == (caught.value.reason, server.token_calls)
        assert caught.value.retry_at is not None

        clock.set(caught.value.retry_at + 0.001)
        token = engine.access_token()

        assert 2 == server.token_calls
        assert token != creds.access_token
        assert token == stored_record(file_store).credential.access_token
        assert State.FRESH == engine.state

    def test_async_access_token_after_backoff_refreshes(self, file_store, endpoint, clock, server):
        """Async twin: catches a failed recover() leaving the rejected token in the hot path."""

        async def scenario():
            engine, creds = await async_engine_on(file_store, endpoint, clock, server)
            server.fail_next(503)
            with pytest.raises(RefreshFailed) as caught:
                await engine.recover(creds.access_token)
            calls = server.token_calls
            clock.set(caught.value.retry_at + 0.001)
            return creds, caught.value.reason, calls, await engine.access_token(), engine.state

        creds, reason, calls, token, state = run(scenario())

        assert ("http_503", 1) == (reason, calls)
        assert 2 == server.token_calls
        assert token != creds.access_token
        assert token == stored_record(file_store).credential.access_token
        assert State.FRESH == state


class TestNewCredentialAfterFailure:
    """A new credential does not inherit the backoff of the one that failed."""

    def test_due_login_is_refreshed_at_once(self, file_store, endpoint, clock, server):
        """Catches login() keeping the old retry_at: the due new token served with no call."""
        engine, creds = engine_on(file_store, endpoint, clock, server)
        clock.advance(DUE)
        server.fail_next(429, retry_after=600)
        assert creds.access_token == engine.access_token()
        assert 1 == server.token_calls
        new = due_now(server, clock)

        engine.login(new)
        token = engine.access_token()

        assert 2 == server.token_calls
        assert token not in (creds.access_token, new.access_token)
        assert token == stored_record(file_store).credential.access_token
        assert State.FRESH == engine.state

    def test_due_adopted_credential_is_refreshed_at_once(self, file_store, endpoint, clock, server):
        """Catches the old credential's backoff marker being applied to a different one."""
        engine, creds = engine_on(file_store, endpoint, clock, server)
        clock.advance(DUE)
        server.fail_next(429, retry_after=600)
        assert creds.access_token == engine.access_token()
        # A sibling (say the Codex CLI) stores a due credential and keeps the old marker.
        record = stored_record(file_store)
        new = due_now(server, clock)
        file_store.write(Record(credential=new, backoff=record.backoff), record.revision)

        assert State.RELOADED == engine.reload()
        token = engine.access_token()

        assert 2 == server.token_calls
        assert token not in (creds.access_token, new.access_token)
        assert token == stored_record(file_store).credential.access_token
        assert State.FRESH == engine.state


class TestSiblingHonoursBackoff:
    """A 429 with Retry-After stops every engine on the store, even a fresh one."""

    def test_fresh_sibling_refresh_is_refused_without_a_call(
        self, file_store, endpoint, clock, server
    ):
        """Catches begin_refresh ignoring the shared marker: B would spend the token anyway."""
        a = AuthEngine(file_store, endpoint, POLICY, clock=clock)
        b, creds = engine_on(FileStore(file_store.path), endpoint, clock, server)
        a.access_token()  # adopt B's login first: a forced refresh of a logged-out engine adopts
        server.fail_next(429, retry_after=120)
        with pytest.raises(RefreshFailed) as first:
            a.refresh()
        assert "http_429" == first.value.reason
        assert State.FRESH == b.state

        with pytest.raises(RefreshFailed) as caught:
            b.refresh()

        assert ("backing_off", clock() + 120) == (caught.value.reason, caught.value.retry_at)
        assert 1 == server.token_calls
        assert creds == stored_record(file_store).credential

    def test_async_fresh_sibling_refresh_is_refused(self, file_store, endpoint, clock, server):
        """Async twin: catches a fresh sibling spending the token during the shared backoff."""

        async def scenario():
            a = await AsyncAuthEngine.open(file_store, endpoint, POLICY, clock=clock)
            b, creds = await async_engine_on(FileStore(file_store.path), endpoint, clock, server)
            await a.access_token()  # adopt B's login first (see the sync test)
            server.fail_next(429, retry_after=120)
            with pytest.raises(RefreshFailed):
                await a.refresh()
            fresh = b.state
            with pytest.raises(RefreshFailed) as caught:
                await b.refresh()
            return creds, fresh, caught.value

        creds, fresh, error = run(scenario())

        assert State.FRESH == fresh
        assert ("backing_off", clock() + 120) == (error.reason, error.retry_at)
        assert 1 == server.token_calls
        assert creds == stored_record(file_store).credential


class TestRefreshPoint:
    """The refresh point follows the earliest known expiry."""

    def test_expires_at_before_jwt_exp_wins(self, file_store, endpoint, clock, server):
        """Catches the JWT exp taking precedence over an earlier expires_at."""
        engine = AuthEngine(file_store, endpoint, POLICY, clock=clock)
        start = clock()
        creds = attrs.evolve(server.issue(), expires_at=at(start + 1200))  # JWT exp: +3600
        engine.login(creds)

        assert at(start + 1200 - 300) == engine.status().refresh_at
        clock.advance(1200 - 300 - 1)
        assert creds.access_token == engine.access_token()
        assert 0 == server.token_calls

        clock.advance(2)
        token = engine.access_token()

        assert 1 == server.token_calls
        assert token != creds.access_token


class TestApiKeyWithLastRefresh:
    """An API key is never due, whatever its last_refresh says."""

    def test_stays_fresh_without_lease_or_call(self, file_store, endpoint, clock, server):
        """Catches refresh_point dating an API key by last_refresh + 8 days (lease, STALE)."""
        store = CountingStore(file_store)
        engine = AuthEngine(store, endpoint, POLICY, clock=clock)
        key = Credentials(access_token="sk-test-key", kind=Kind.API_KEY, last_refresh=at(clock()))
        engine.login(key)
        store.leases = 0
        clock.advance(100 * 86400)

        tokens = {engine.access_token() for _ in range(3)}
        status = engine.status(refresh=True)

        assert {"sk-test-key"} == tokens
        assert (State.FRESH, None) == (status.state, status.refresh_at)
        assert 0 == store.leases
        assert 0 == server.token_calls


class TestRecoverDuringBackoff:
    """recover() during a backoff answers at once, without touching the store."""

    def test_raises_backing_off_without_store_read(self, file_store, endpoint, clock, server):
        """Catches the backoff check moved after (or dropped before) the guarded re-read."""
        store = CountingStore(file_store)
        engine, creds = engine_on(store, endpoint, clock, server)
        clock.advance(DUE)
        server.fail_next(503)
        assert creds.access_token == engine.access_token()
        not_before = stored_record(file_store).backoff.not_before
        store.reads = store.writes = store.leases = 0

        with pytest.raises(RefreshFailed) as caught:
            engine.recover(creds.access_token)

        assert ("backing_off", not_before) == (caught.value.reason, caught.value.retry_at)
        assert 0 == store.io
        assert 1 == server.token_calls

    def test_async_raises_backing_off_without_store_read(self, file_store, endpoint, clock, server):
        """Async twin: catches recover() reading the store (or calling) while backing off."""
        store = CountingStore(file_store)

        async def scenario():
            engine, creds = await async_engine_on(store, endpoint, clock, server)
            clock.advance(DUE)
            server.fail_next(503)
            served = await engine.access_token()
            store.reads = store.writes = store.leases = 0
            with pytest.raises(RefreshFailed) as caught:
                await engine.recover(creds.access_token)
            return creds, served, caught.value

        creds, served, error = run(scenario())

        assert creds.access_token == served
        not_before = stored_record(file_store).backoff.not_before
        assert ("backing_off", not_before) == (error.reason, error.retry_at)
        assert 0 == store.io
        assert 1 == server.token_calls


class TestStatus:
    """status(refresh=True) refreshes only what is due."""

    def test_refresh_status_of_fresh_credential_makes_no_call(
        self, file_store, endpoint, clock, server
    ):
        """Catches status(refresh=True) forcing a refresh of a credential that is not due."""
        engine, creds = engine_on(file_store, endpoint, clock, server)

        status = engine.status(include_token=True, refresh=True)

        assert (State.FRESH, creds.access_token, None) == (
            status.state,
            status.token,
            status.failure,
        )
        assert 0 == server.token_calls
        assert creds == stored_record(file_store).credential


class TestLogoutRevokesNewest:
    """logout(revoke=True) revokes what the store holds, not only the cached credential."""

    def test_revokes_the_sibling_rotation(self, file_store, endpoint, clock, server):
        """Catches revoking only the cached (spent) token: the newest is never sent."""
        revocations = RevocationLog(endpoint)
        a = AuthEngine(file_store, revocations, POLICY, clock=clock)
        a.login(server.issue())
        b = AuthEngine(FileStore(file_store.path), endpoint, POLICY, clock=clock)
        b.refresh()
        newest = stored_record(file_store).credential

        assert a.logout(revoke=True) is True

        assert newest.refresh_token in revocations.revoked
        assert not server.family_alive(newest)
        outcome = endpoint.refresh(newest)
        assert isinstance(outcome, PermanentFailure)
        assert "invalid_grant" == outcome.code
        assert None is stored_record(file_store).credential

    def test_revokes_a_sibling_login(self, file_store, endpoint, clock, server):
        """Catches revoking only the cached credential: the stored login's family stays alive."""
        a, mine = engine_on(file_store, endpoint, clock, server)
        b = AuthEngine(FileStore(file_store.path), endpoint, POLICY, clock=clock)
        theirs = server.issue()
        b.login(theirs)

        assert a.logout(revoke=True) is True

        assert (False, False) == (server.family_alive(mine), server.family_alive(theirs))


class TestReload:
    """reload() of an unchanged store changes nothing."""

    def test_unchanged_store_keeps_state(self, file_store, endpoint, clock, server):
        """Catches an inverted fingerprint comparison (AccountMismatch) or a spurious adopt."""
        a, creds = engine_on(file_store, endpoint, clock, server)

        assert State.FRESH == a.reload()
        assert (State.FRESH, creds) == (a.state, a.credentials)

        b = AuthEngine(FileStore(file_store.path), endpoint, POLICY, clock=clock)
        rotated = b.refresh()
        assert State.RELOADED == a.reload()
        assert State.RELOADED == a.reload()
        assert rotated == a.access_token()
        assert 1 == server.token_calls


class TestBackoffMarkerWriteFails:
    """The shared marker is advice: failing to write it does not break serving."""

    def test_old_token_served_and_own_backoff_kept(self, file_store, endpoint, clock, server):
        """Catches the marker's write error escaping (failure becomes a store one) or no backoff."""
        store = FaultyStore(file_store)
        engine, creds = engine_on(store, endpoint, clock, server)
        clock.advance(DUE)
        server.fail_next(503)
        store.writes = 0
        store.writes_fail = True

        assert creds.access_token == engine.access_token()
        assert creds.access_token == engine.access_token()

        assert (1, 1) == (server.token_calls, store.writes)
        assert Record(credential=creds, revision=1) == stored_record(file_store)
        status = engine.status()
        assert (State.STALE, "http_503") == (status.state, status.failure)

    def test_async_old_token_served(self, file_store, endpoint, clock, server):
        """Async twin: catches the failed marker write raising out of access_token()."""
        store = FaultyStore(file_store)

        async def scenario():
            engine, creds = await async_engine_on(store, endpoint, clock, server)
            clock.advance(DUE)
            server.fail_next(503)
            store.writes = 0
            store.writes_fail = True
            served = [await engine.access_token() for _ in range(2)]
            return creds, served, await engine.status()

        creds, served, status = run(scenario())

        assert [creds.access_token] * 2 == served
        assert (1, 1) == (server.token_calls, store.writes)
        assert Record(credential=creds, revision=1) == stored_record(file_store)
        assert (State.STALE, "http_503") == (status.state, status.failure)


class TestStoreOutage:
    """An explicit refresh reports an unreachable store; access_token() rides it out."""

    def test_refresh_raises_and_access_token_serves(self, endpoint, clock, server):
        """Catches refresh() swallowing the outage and handing back the old token as if new."""
        store = FaultyStore(MemoryStore())
        engine, creds = engine_on(store, endpoint, clock, server)
        clock.advance(DUE)
        store.reads_fail = True

        with pytest.raises(StorageUnavailable) as caught:
            engine.refresh()
        assert "storage_unavailable" == caught.value.reason

        assert creds.access_token == engine.access_token()
        assert 0 == server.token_calls

    def test_async_refresh_raises_and_access_token_serves(self, endpoint, clock, server):
        """Async twin: catches refresh() returning the old token during a store outage."""
        store = FaultyStore(MemoryStore())

        async def scenario():
            engine, creds = await async_engine_on(store, endpoint, clock, server)
            clock.advance(DUE)
            store.reads_fail = True
            with pytest.raises(StorageUnavailable) as caught:
                await engine.refresh()
            return creds, caught.value.reason, await engine.access_token()

        creds, reason, served = run(scenario())

        assert "storage_unavailable" == reason
        assert creds.access_token == served
        assert 0 == server.token_calls


def test_policy_jitter_is_fixed():
    """Guards the fixture itself: the backoffs the tests above expect are 1 s, then 2 s, 4 s."""
    from authfsm.engine import backoff_delay

    assert [1.0, 2.0, 4.0] == [backoff_delay(n, None, POLICY) for n in (1, 2, 3)]
    assert timedelta(seconds=2) == POLICY.backoff_initial


class TestSparseReplies:
    """Refresh replies that leave fields out (RFC 6749 §6): the engine keeps what it had."""

    def test_without_refresh_token_the_next_refresh_sends_the_original(
        self, file_store, endpoint, clock, server
    ):
        """Catches a minted credential dropping the refresh token a non-rotating IdP keeps."""
        engine, creds = engine_on(file_store, endpoint, clock, server)
        server.sparse = {"refresh_token"}
        clock.advance(DUE)
        engine.access_token()
        clock.advance(DUE)
        engine.access_token()

        assert creds.refresh_token == engine.credentials.refresh_token
        assert creds.refresh_token == stored_record(file_store).credential.refresh_token
        assert (2, 0) == (server.token_calls, server.reuse_rejections)

    def test_without_id_token_the_identity_stays_and_guards(
        self, file_store, endpoint, clock, server
    ):
        """Catches a minted credential losing its id_token: another user would then be adopted."""
        engine, creds = engine_on(file_store, endpoint, clock, server, user_id="alice")
        server.sparse = {"id_token"}
        clock.advance(DUE)
        engine.access_token()
        assert creds.id_token == engine.credentials.id_token
        assert "alice" == engine.status().identity.user_id

        other = server.issue(user_id="bob", account_id="acct-2")
        AuthEngine(FileStore(file_store.path), clock=clock).login(other)
        clock.advance(DUE)
        with pytest.raises(AccountMismatch):
            engine.access_token()

    def test_without_expires_in_the_new_token_sets_the_refresh_point(
        self, file_store, endpoint, clock, server
    ):
        """Catches the expiry staying the old one (or unknown): 10 calls would each refresh."""
        engine, _ = engine_on(file_store, endpoint, clock, server)
        server.sparse = {"expires_in"}
        clock.advance(DUE)
        engine.access_token()

        tokens = {engine.access_token() for _ in range(10)}

        assert (1, 1) == (len(tokens), server.token_calls)
        assert at(clock() + 3600 - 300) == engine.status().refresh_at
        assert engine.credentials.expires_at is None


class _OtherIdentity:
    """An endpoint whose reply names another user (a misrouted or hostile server)."""

    def __init__(self, server) -> None:
        self.server = server
        self.calls = 0

    def refresh(self, credentials: Credentials) -> RefreshOutcome:
        self.calls += 1
        other = self.server.issue(user_id="mallory", account_id="acct-9")
        return Refreshed(
            access_token=other.access_token,
            refresh_token=other.refresh_token,
            id_token=other.id_token,
            expires_in=3600,
        )

    def revoke(self, credentials: Credentials) -> bool:
        return False


def test_a_reply_naming_another_identity_is_never_adopted(file_store, clock, server):
    """Catches adopting (or writing) a refresh reply that names another user."""
    endpoint = _OtherIdentity(server)
    engine = AuthEngine(file_store, endpoint, POLICY, clock=clock)
    creds = server.issue(user_id="alice")
    engine.login(creds)
    before = stored_record(file_store).credential
    clock.advance(DUE)

    with pytest.raises(RefreshFailed) as caught:
        engine.refresh()

    assert "identity_changed_in_response" == caught.value.reason
    assert (State.STALE, creds.access_token) == (engine.state, engine.access_token())
    assert before == stored_record(file_store).credential
    assert "alice" == engine.status().identity.user_id
