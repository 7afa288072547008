"""
Behaviours a mutation run of the engine's decisions (``engine/_flows.py``) showed the rest of the
suite could lose without noticing (docs/mutation-testing.md).

Like tests/test_engine_teeth.py, each test drives real engines against the loopback TokenServer
(or a fake clock and a real store) and asserts what a user sees: tokens served, calls at the
server, store contents, errors and their reasons, status fields. The clock is a FakeClock and the
backoff jitter is fixed, so every backoff below is exact.
"""

from __future__ import annotations

import gc
import threading
import time
from datetime import timedelta

import attrs
import pytest

from authfsm import (
    AuthEngine,
    Credentials,
    LeaseTimeout,
    ReauthRequired,
    RefreshFailed,
    State,
    StorageUnavailable,
)
from authfsm.adapters import FileStore, MemoryStore
from authfsm.engine import (
    Backoff,
    PermanentFailure,
    Poison,
    Record,
    RefreshOutcome,
    WriteConflict,
)
from authfsm.testing import ScriptedResponse

from .conftest import CountingStore
from .test_engine_teeth import (
    DUE,
    POLICY,
    FaultyStore,
    _OtherIdentity,
    at,
    due_now,
    engine_on,
    stored_record,
)

#: A lease that cannot be had fails after 50 ms of real time instead of 30 s.
SHORT_LEASE = attrs.evolve(POLICY, lease_timeout=timedelta(milliseconds=50))


class TestStoreOutageBackoff:
    """An unreachable store backs the engine off exponentially, and a read that works clears it."""

    def test_backoff_grows_per_failed_attempt(self, endpoint, clock, server):
        """Catches _back_off not counting failures (1 s, 2 s, 4 s with the fixed jitter)."""
        store = FaultyStore(MemoryStore())
        engine, creds = engine_on(store, endpoint, clock, server)
        clock.advance(DUE)
        store.reads_fail = True

        delays = []
        for _ in range(3):
            attempt = clock()
            assert creds.access_token == engine.access_token()
            status = engine.status()
            assert (State.STALE, "storage_unavailable") == (status.state, status.failure)
            delays.append(status.retry_at.timestamp() - attempt)
            clock.set(status.retry_at.timestamp() + 0.5)

        assert [1.0, 2.0, 4.0] == pytest.approx(delays)
        assert 0 == server.token_calls

    def test_a_store_that_answers_again_clears_the_failure(self, endpoint, clock, server):
        """Catches a failed read being taken for a failed lease: the failure would stick."""
        store = FaultyStore(MemoryStore())
        engine, creds = engine_on(store, endpoint, clock, server)
        clock.advance(DUE)
        store.reads_fail = True
        assert creds.access_token == engine.access_token()
        store.reads_fail = False

        status = engine.status()

        assert (State.STALE, None, None) == (status.state, status.failure, status.retry_at)
        token = engine.access_token()
        assert (1, State.FRESH) == (server.token_calls, engine.state)
        assert token == stored_record(store).credential.access_token


class TestNotRefreshable:
    """A credential without a refresh token is served as it is; refresh() says why not."""

    def test_explicit_refresh_reports_not_refreshable(self, file_store, endpoint, clock, server):
        """Catches the reason or the retry time of the refusal being lost."""
        engine = AuthEngine(file_store, endpoint, POLICY, clock=clock)
        creds = attrs.evolve(server.issue(), refresh_token=None)
        engine.login(creds)
        clock.advance(DUE)

        with pytest.raises(RefreshFailed) as caught:
            engine.refresh()

        retry_at = clock() + POLICY.backoff_max.total_seconds()
        assert ("not_refreshable", retry_at) == (caught.value.reason, caught.value.retry_at)
        assert creds.access_token == engine.access_token()
        status = engine.status()
        assert ("not_refreshable", at(retry_at)) == (status.failure, status.retry_at)
        assert 0 == server.token_calls


class TestRejectedAgain:
    """A token a recovery obtained moments ago and rejected again is not refreshed again."""

    def test_error_says_when_to_try_again(self, file_store, endpoint, clock, server):
        """Catches the rejection loop's retry time being lost (None) from the error."""
        engine, creds = engine_on(file_store, endpoint, clock, server)
        recovered_at = clock()
        token = engine.recover(creds.access_token)
        clock.advance(10)

        with pytest.raises(RefreshFailed) as caught:
            engine.recover(token)

        assert ("rejected_after_refresh", recovered_at + 60) == (
            caught.value.reason,
            caught.value.retry_at,
        )
        assert 1 == server.token_calls
        assert token == engine.access_token()


def _unsaved_refresh(file_store, endpoint, clock, server, policy=SHORT_LEASE):
    """An engine whose refresh rotated while the store refused every write; login undated."""
    store = FaultyStore(file_store)
    engine = AuthEngine(store, endpoint, policy, clock=clock)
    # No last_refresh: only the revision tells that the stored copy is the older one.
    creds = attrs.evolve(server.issue(), last_refresh=None)
    engine.login(creds)
    clock.advance(DUE)
    store.writes_fail = True
    new = engine.access_token()
    assert new != creds.access_token
    return store, engine, creds, new


class TestUnsavedRetry:
    """A credential the store does not hold yet is kept, and never traded for the older copy."""

    def test_the_lease_is_kept_until_the_retry_writes(self, file_store, endpoint, clock, server):
        """Catches the lease given back while the new tokens exist only in this engine: a
        sibling would read the older record and spend its rotated refresh token."""
        store, engine, creds, new = _unsaved_refresh(file_store, endpoint, clock, server)
        sibling = FileStore(file_store.path)
        with pytest.raises(LeaseTimeout), sibling.lease(0.05):
            pass
        status = engine.status()

        assert (State.FRESH, True, "unsaved") == (status.state, status.unsaved, status.failure)
        assert new == engine.access_token()
        assert creds == stored_record(file_store).credential
        store.writes_fail = False
        clock.advance(10)
        assert new == engine.access_token()
        assert new == stored_record(file_store).credential.access_token
        with sibling.lease(0.05):  # written: given back
            pass
        assert (1, 0) == (server.token_calls, server.reuse_rejections)

    def test_a_retry_from_another_thread_writes_and_gives_the_lease_back(
        self, file_store, endpoint, clock, server
    ):
        """Catches a kept file lease that only its first thread could use or give back (the
        OS lock was per thread): a later call from another thread saves and releases."""
        store, engine, _, new = _unsaved_refresh(file_store, endpoint, clock, server)
        store.writes_fail = False
        clock.advance(10)
        results: list[object] = []
        worker = threading.Thread(target=lambda: results.append(engine.status().unsaved))
        worker.start()
        worker.join(timeout=10)

        assert [False] == results
        assert new == stored_record(file_store).credential.access_token
        with FileStore(file_store.path).lease(0.05):
            pass

    def test_a_fenced_retry_gives_the_kept_lease_back(self, file_store, endpoint, clock, server):
        """Catches a kept lease held on after a write under it was fenced (someone wrote between
        its read and its write, so it was not exclusive): it is given back, the tokens stay
        unsaved, and the next retry takes the lease anew and writes them."""
        store, engine, _, new = _unsaved_refresh(file_store, endpoint, clock, server)
        store.writes_fail = False
        conflicts = [WriteConflict(file_store.location, 1, 2)]
        real_write = store.write

        def write_once_fenced(record, expected_revision):
            if conflicts:
                raise conflicts.pop()
            return real_write(record, expected_revision)

        store.write = write_once_fenced
        clock.advance(10)
        status = engine.status()
        with FileStore(file_store.path).lease(0.05):
            pass  # given back

        assert (True, "unsaved") == (status.unsaved, status.failure)
        clock.advance(10)
        assert not engine.status().unsaved
        assert new == stored_record(file_store).credential.access_token
        with FileStore(file_store.path).lease(0.05):
            pass
        assert (1, 0) == (server.token_calls, server.reuse_rejections)

    def test_a_newer_record_written_past_the_lease_ends_the_keeping(
        self, file_store, endpoint, clock, server
    ):
        """Catches a kept lease that outlives its reason: a program that ignores the lease (Codex
        rewriting its auth.json) logs in anew; the engine adopts that newer record, which
        supersedes its unsaved tokens, and gives the lease back in the same call."""
        _, engine, _, _ = _unsaved_refresh(file_store, endpoint, clock, server)
        fresh = server.issue()
        current = stored_record(file_store)
        file_store._replace(  # the atomic rename, without the lock
            file_store.codec.encode(Record(credential=fresh, revision=current.revision + 1))
        )

        status = engine.status()

        assert (False, fresh.fingerprint) == (status.unsaved, status.fingerprint)
        with FileStore(file_store.path).lease(0.05):
            pass
        assert fresh.access_token == engine.access_token()

    def test_an_engine_dropped_while_keeping_the_lease_gives_it_back(
        self, file_store, endpoint, clock, server
    ):
        """Its unsaved tokens are gone with it: nothing is left to protect, so the lease is free
        for the rest of the process (the file's lock would otherwise stay taken until exit)."""
        _, engine, _, _ = _unsaved_refresh(file_store, endpoint, clock, server)
        del engine
        gc.collect()

        with FileStore(file_store.path).lease(0.05):
            pass

    def test_reload_keeps_the_new_credential(self, file_store, endpoint, clock, server):
        """Catches reload() taking the older stored copy for another identity (AccountMismatch)."""
        _, engine, creds, new = _unsaved_refresh(file_store, endpoint, clock, server)

        assert State.FRESH == engine.reload()

        assert (new, True) == (engine.access_token(), engine.status().unsaved)
        assert creds == stored_record(file_store).credential

    def test_failed_save_retry_keeps_the_new_credential(self, file_store, endpoint, clock, server):
        """Catches a failed save retry forgetting which revision is the older copy."""
        store, engine, creds, new = _unsaved_refresh(file_store, endpoint, clock, server)
        clock.advance(5)
        writes = store.writes
        assert new == engine.access_token()
        assert writes + 1 == store.writes
        status = engine.status()

        assert (State.FRESH, True, "unsaved") == (status.state, status.unsaved, status.failure)
        assert new == engine.access_token()
        assert creds == stored_record(file_store).credential
        assert 1 == server.token_calls

    def test_save_retries_back_off_exponentially(self, file_store, endpoint, clock, server):
        """Catches the save retries not counting: the store would be written every second."""
        store = FaultyStore(file_store)
        engine, _ = engine_on(store, endpoint, clock, server)
        clock.advance(DUE)
        store.writes_fail = True
        new = engine.access_token()
        minted_at = clock()
        writes = store.writes

        attempts = []
        for offset in (1, 2, 3, 6, 7):
            clock.set(minted_at + offset)
            assert new == engine.access_token()
            attempts.append(store.writes - writes)

        assert [1, 1, 2, 2, 3] == attempts
        assert (True, 1) == (engine.status().unsaved, server.token_calls)


class _SiblingWritesDuringCall:
    """An endpoint that fails for good while a sibling writes ``record_for(store)`` meanwhile."""

    def __init__(self, store: FileStore, record_for) -> None:
        self.store = store
        self.record_for = record_for
        self.calls = 0

    def refresh(self, credentials: Credentials) -> RefreshOutcome:
        self.calls += 1
        self.store.write(self.record_for(), self.store.read().revision)
        return PermanentFailure(code="invalid_grant", status=400)

    def revoke(self, credentials: Credentials) -> bool:
        return False


class TestPermanentFailureLooksOnceMore:
    """After a permanent failure the store is read once more, and what it holds decides."""

    def test_a_sibling_logout_meanwhile_logs_out(self, file_store, clock, server):
        """Catches the final re-read of an emptied store not firing logout (or another trigger)."""
        endpoint = _SiblingWritesDuringCall(file_store, lambda: Record(credential=None))
        engine = AuthEngine(file_store, endpoint, POLICY, clock=clock)
        engine.login(server.issue())
        clock.advance(DUE)

        with pytest.raises(ReauthRequired) as caught:
            engine.access_token()

        assert ("logged_out", State.LOGGED_OUT) == (caught.value.reason, engine.state)
        assert (None, None) == (engine.credentials, stored_record(file_store).credential)
        assert 1 == endpoint.calls

    def test_a_sibling_credential_poisoned_meanwhile_is_not_adopted(
        self, file_store, clock, server
    ):
        """Catches the final re-read ignoring the store's poison marker: a dead token adopted."""
        siblings = []

        def poisoned_sibling() -> Record:
            # Issued now: not due, so adopting it would serve it at once.
            siblings.append(server.issue())
            marker = Poison(fingerprint=siblings[0].fingerprint, reason="invalid_grant", at=clock())
            return Record(credential=siblings[0], poison=marker)

        endpoint = _SiblingWritesDuringCall(file_store, poisoned_sibling)
        engine = AuthEngine(file_store, endpoint, POLICY, clock=clock)
        engine.login(server.issue())
        clock.advance(DUE)

        with pytest.raises(ReauthRequired) as caught:
            engine.access_token()
        with pytest.raises(ReauthRequired):
            engine.access_token()

        assert ("invalid_grant", State.POISONED) == (caught.value.reason, engine.state)
        assert 1 == endpoint.calls
        assert siblings == [stored_record(file_store).credential]

    def test_a_record_lost_during_the_call_ends_in_reauth(self, file_store, clock, server):
        """Catches the final re-read failing on a store that lost its record while the token
        call was out (no record at all, not even a tombstone): ReauthRequired, nothing else
        escapes, and the dead credential is not served."""

        class _LosesTheRecord(_SiblingWritesDuringCall):
            def refresh(self, credentials: Credentials) -> RefreshOutcome:
                self.calls += 1
                self.store.path.unlink()  # a Redis restart without persistence
                return PermanentFailure(code="invalid_grant", status=400)

        endpoint = _LosesTheRecord(file_store, lambda: None)
        engine = AuthEngine(file_store, endpoint, POLICY, clock=clock)
        engine.login(server.issue())
        clock.advance(DUE)

        with pytest.raises(ReauthRequired):
            engine.access_token()

        assert engine.state in (State.LOGGED_OUT, State.POISONED)
        with pytest.raises(ReauthRequired):
            engine.access_token()
        assert 1 == endpoint.calls

    def test_a_lost_record_is_written_back_poisoned(self, file_store, endpoint, clock, server):
        """Catches the poison write of a store that lost its record failing (no revision)."""
        engine, creds = engine_on(file_store, endpoint, clock, server)
        file_store.path.unlink()
        server.revoke_family_of(creds)
        clock.advance(DUE)

        with pytest.raises(ReauthRequired) as caught:
            engine.access_token()

        assert ("invalid_grant", State.POISONED) == (caught.value.reason, engine.state)
        record = stored_record(file_store)
        assert (creds, creds.fingerprint) == (record.credential, record.poison.fingerprint)
        assert 1 == server.token_calls


class TestLostRecordRewrite:
    """
    While a credential whose record the store lost cannot be written back, a record that
    appears meanwhile is judged by when it was minted: an older one is never adopted back.
    """

    @pytest.mark.parametrize(
        ("minted", "adopted"),
        [(-60.0, False), (0.0, True), (10.0, True), (None, True)],
        ids=["older", "same-instant", "newer", "undated"],
    )
    def test_only_a_newer_record_is_adopted(
        self, file_store, endpoint, clock, server, minted, adopted
    ):
        """Catches the minting-date comparison being inverted, loosened or dropped."""
        store = FaultyStore(file_store)
        engine, creds = engine_on(store, endpoint, clock, server)
        file_store.path.unlink()
        store.writes_fail = True
        assert (True, "unsaved") == (engine.status().unsaved, engine.status().failure)

        start = clock()
        if minted is not None and minted > 0:
            clock.advance(minted)
        other = server.issue(user_id="user-1")
        if minted is None or minted < 0:
            other = attrs.evolve(other, last_refresh=None if minted is None else at(start + minted))
        file_store.write(Record(credential=other), None)

        status = engine.status()

        if adopted:
            assert (State.RELOADED, other, False) == (
                engine.state,
                engine.credentials,
                status.unsaved,
            )
            assert other.access_token == engine.access_token()
        else:
            assert (State.FRESH, creds, True) == (engine.state, engine.credentials, status.unsaved)
            assert creds.access_token == engine.access_token()
        assert 0 == server.token_calls


class TestTransientFailureMarker:
    """The shared backoff marker is written with the record's other contents, and saves it."""

    def test_a_lost_record_is_written_back_with_the_marker(
        self, file_store, endpoint, clock, server
    ):
        """Catches the marker write of a store that lost its record failing, or staying unsaved."""
        store = CountingStore(file_store)
        engine, creds = engine_on(store, endpoint, clock, server)
        file_store.path.unlink()
        clock.advance(DUE)
        server.fail_next(503)

        assert creds.access_token == engine.access_token()
        store.reads = store.writes = store.leases = 0
        assert creds.access_token == engine.access_token()  # backing off: no I/O, nothing to save
        assert 0 == store.io

        assert Record(
            credential=creds,
            backoff=Backoff(fingerprint=creds.fingerprint, not_before=clock() + 1.0, failures=1),
            revision=1,
        ) == stored_record(file_store)
        status = engine.status()
        assert (State.STALE, "http_503", False) == (status.state, status.failure, status.unsaved)
        assert 1 == server.token_calls

    def test_a_poison_marker_of_another_credential_is_kept(
        self, file_store, endpoint, clock, server
    ):
        """Catches the marker write dropping the record's poison marker of an older credential."""
        engine, creds = engine_on(file_store, endpoint, clock, server)
        old = Poison(fingerprint="fp-of-a-dead-credential", reason="invalid_grant", at=clock())
        revision = stored_record(file_store).revision
        file_store.write(Record(credential=creds, poison=old), revision)
        clock.advance(DUE)
        server.fail_next(503)

        assert creds.access_token == engine.access_token()

        record = stored_record(file_store)
        assert (creds, old, 1) == (record.credential, record.poison, record.backoff.failures)


class TestRecoverEdges:
    """recover() looks at the store before giving up, and judges a 401 by what it knows."""

    def test_logged_out_engine_adopts_a_sibling_login(self, file_store, endpoint, clock, server):
        """Catches recover() of a logged-out engine giving up without reading the store."""
        engine = AuthEngine(file_store, endpoint, POLICY, clock=clock)
        creds = server.issue()
        AuthEngine(FileStore(file_store.path), endpoint, POLICY, clock=clock).login(creds)

        assert creds.access_token == engine.recover("at-some-older-token")

        assert (State.RELOADED, 0) == (engine.state, server.token_calls)

    def test_rejected_api_key_requires_reauth(self, file_store, endpoint, clock, server):
        """Catches a rejected API key being reported with another reason (or not at all)."""
        engine = AuthEngine(file_store, endpoint, POLICY, clock=clock)
        engine.login(Credentials.api_key("sk-test-key"))

        with pytest.raises(ReauthRequired) as caught:
            engine.recover("sk-test-key")

        assert "api_key_rejected" == caught.value.reason
        assert (0, "sk-test-key") == (
            server.token_calls,
            stored_record(file_store).credential.access_token,
        )

    def test_rejected_api_key_adopts_a_sibling_key(self, file_store, endpoint, clock, server):
        """Catches a rejected API key ignoring the new key a sibling stored (or refreshing it)."""
        engine = AuthEngine(file_store, endpoint, POLICY, clock=clock)
        engine.login(Credentials.api_key("sk-old-key"))
        sibling = AuthEngine(FileStore(file_store.path), endpoint, POLICY, clock=clock)
        sibling.login(Credentials.api_key("sk-new-key"))

        assert "sk-new-key" == engine.recover("sk-old-key")

        assert (State.RELOADED, 0) == (engine.state, server.token_calls)

    def test_sibling_rotation_rejected_soon_after_a_recovery_is_refreshed(
        self, file_store, endpoint, clock, server
    ):
        """Catches any 401 within a minute of a recovery being taken for the rejection loop."""
        engine, creds = engine_on(file_store, endpoint, clock, server)
        recovered = engine.recover(creds.access_token)
        sibling = AuthEngine(FileStore(file_store.path), endpoint, POLICY, clock=clock)
        rotated = sibling.refresh()
        assert State.RELOADED == engine.reload()
        clock.advance(10)

        token = engine.recover(rotated)

        assert token not in (creds.access_token, recovered, rotated)
        assert (3, 0) == (server.token_calls, server.reuse_rejections)
        assert token == stored_record(file_store).credential.access_token

    def test_a_recovered_token_rejected_a_minute_later_is_refreshed(
        self, file_store, endpoint, clock, server
    ):
        """Catches the rejection-loop window lasting longer than its 60 s."""
        engine, creds = engine_on(file_store, endpoint, clock, server)
        recovered_at = clock()
        recovered = engine.recover(creds.access_token)
        clock.set(recovered_at + 60)

        token = engine.recover(recovered)

        assert token not in (creds.access_token, recovered)
        assert 2 == server.token_calls


class TestStatusEdges:
    """status() reports failures, and clears store failures once the store answers."""

    def test_refreshing_status_of_a_logged_out_engine_says_so(self, file_store, endpoint, clock):
        """Catches status(refresh=True) dropping the reason it could not serve a token."""
        engine = AuthEngine(file_store, endpoint, POLICY, clock=clock)

        status = engine.status(refresh=True)

        assert (State.LOGGED_OUT, "logged_out", True) == (
            status.state,
            status.failure,
            status.requires_login,
        )

    def test_refreshing_status_clears_a_healed_store_failure(self, endpoint, clock, server):
        """Catches status(refresh=True) of a fresh credential keeping an old store failure."""
        store = FaultyStore(MemoryStore())
        engine, creds = engine_on(store, endpoint, clock, server)
        store.reads_fail = True
        assert "storage_unavailable" == engine.status().failure
        store.reads_fail = False

        status = engine.status(include_token=True, refresh=True)

        assert (State.FRESH, None, creds.access_token) == (
            status.state,
            status.failure,
            status.token,
        )
        assert 0 == server.token_calls

    def test_status_at_the_retry_time_saves_an_unsaved_credential(
        self, file_store, endpoint, clock, server
    ):
        """Catches the save retry of status() waiting past the moment it is due."""
        store = FaultyStore(file_store)
        engine, _ = engine_on(store, endpoint, clock, server)
        clock.advance(DUE)
        store.writes_fail = True
        new = engine.access_token()
        store.writes_fail = False
        clock.set(clock() + 1.0)  # the first save retry is due after 1 s (fixed jitter)

        status = engine.status()

        assert (False, None) == (status.unsaved, status.failure)
        assert new == stored_record(file_store).credential.access_token

    def test_status_of_a_fresh_credential_shows_no_retry_time(
        self, file_store, endpoint, clock, server
    ):
        """Catches status() reporting a retry time outside STALE, and losing the expiry."""
        engine = AuthEngine(file_store, endpoint, POLICY, clock=clock)
        creds = attrs.evolve(server.issue(), refresh_token=None)
        engine.login(creds)
        with pytest.raises(RefreshFailed):
            engine.refresh()

        status = engine.status()

        assert (State.FRESH, "not_refreshable", None, creds.expires_at) == (
            status.state,
            status.failure,
            status.retry_at,
            status.expires_at,
        )


class TestRefreshWrites:
    """What a refresh writes to the store, even when the store lost its record."""

    def test_a_lost_record_is_written_back_refreshed(self, file_store, endpoint, clock, server):
        """Catches the refresh of a store that lost its record failing to write it back."""
        engine, creds = engine_on(file_store, endpoint, clock, server)
        file_store.path.unlink()
        clock.advance(DUE)

        token = engine.access_token()

        record = stored_record(file_store)
        assert (token, 1) == (record.credential.access_token, record.revision)
        assert token != creds.access_token
        status = engine.status()
        assert (State.FRESH, False, None) == (status.state, status.unsaved, status.failure)

    def test_a_reply_naming_another_identity_backs_the_fleet_off(self, file_store, clock, server):
        """Catches the refused reply's backoff marker being written against no revision (lost)."""
        endpoint = _OtherIdentity(server)
        engine, creds = engine_on(file_store, endpoint, clock, server, user_id="alice")
        clock.advance(DUE)

        with pytest.raises(RefreshFailed):
            engine.refresh()

        assert Backoff(fingerprint=creds.fingerprint, not_before=clock() + 1.0, failures=1) == (
            stored_record(file_store).backoff
        )
        assert creds == stored_record(file_store).credential


class _SiblingWritesThenAnswers:
    """The real endpoint; during the call a sibling whose lease lapsed writes a new login."""

    def __init__(self, inner, store: MemoryStore, server) -> None:
        self.inner = inner
        self.store = store
        self.server = server
        self.written: list[Credentials] = []

    def refresh(self, credentials: Credentials) -> RefreshOutcome:
        sibling = self.server.issue()
        self.store.write(Record(credential=sibling), self.store.read().revision)
        self.written.append(sibling)
        return self.inner.refresh(credentials)

    def revoke(self, credentials: Credentials) -> bool:
        return False


class TestFencedWrite:
    """A refresh whose write is fenced by a sibling's newer revision never overwrites it."""

    def test_the_sibling_write_wins_and_is_adopted(self, endpoint, clock, server):
        """Catches the fenced path firing the wrong trigger or not re-reading the store."""
        memory = MemoryStore()
        store = CountingStore(memory)
        racing = _SiblingWritesThenAnswers(endpoint, memory, server)
        engine, _ = engine_on(store, racing, clock, server)
        clock.advance(DUE)
        store.leases = 0

        token = engine.access_token()

        assert 1 == store.leases  # the refresh's own: the sibling's write is adopted at once

        assert [token] == [c.access_token for c in racing.written]
        assert (State.RELOADED, racing.written) == (engine.state, [engine.credentials])
        assert racing.written == [stored_record(store).credential]
        assert 1 == server.token_calls


class TestRefreshWhileUnsaved:
    """A refresh that lands in the store ends the pending save of the credential it replaced."""

    def test_no_save_retry_after_a_saved_refresh(self, file_store, endpoint, clock, server):
        """Catches a saved refresh leaving the older pending save behind (a lease per call)."""
        store = FaultyStore(file_store)
        engine, _ = engine_on(store, endpoint, clock, server)
        clock.advance(DUE)
        store.writes_fail = True
        engine.access_token()
        store.writes_fail = False

        token = engine.refresh()  # before the save retry is due
        clock.advance(5)
        store.reads = store.writes = store.leases = 0

        assert token == engine.access_token()
        assert (0, False) == (store.io, engine.status().unsaved)
        assert token == stored_record(file_store).credential.access_token
        assert (2, 0) == (server.token_calls, server.reuse_rejections)

    def test_a_second_unsaved_refresh_keeps_the_retry_schedule(
        self, file_store, endpoint, clock, server
    ):
        """Catches an unsaved refresh restarting the save retries at 1 s (a write per second)."""
        store = FaultyStore(file_store)
        engine, _ = engine_on(store, endpoint, clock, server)
        clock.advance(DUE)
        store.writes_fail = True
        engine.access_token()
        minted_at = clock()
        token = engine.refresh()  # unsaved again: the second failure, retried after 2 s
        writes = store.writes

        attempts = []
        for offset in (1, 2):
            clock.set(minted_at + offset)
            assert token == engine.access_token()
            attempts.append(store.writes - writes)

        assert [0, 1] == attempts
        assert (2, 0) == (server.token_calls, server.reuse_rejections)


class TestBusyLease:
    """A lease held elsewhere is waited for the policy's lease timeout, no longer and no less."""

    @pytest.mark.parametrize("timeout_ms", [10, 300])
    def test_waits_the_lease_timeout_then_gives_up(
        self, file_store, endpoint, clock, server, timeout_ms
    ):
        """Catches a wait that gives up early, never, or looks at the store in a busy loop."""
        policy = attrs.evolve(POLICY, lease_timeout=timedelta(milliseconds=timeout_ms))
        store = CountingStore(file_store)
        engine = AuthEngine(store, endpoint, policy, clock=clock)
        creds = server.issue()
        engine.login(creds)
        clock.advance(DUE)
        store.reads = store.leases = 0

        with FileStore(file_store.path).lease(1.0):
            started = time.monotonic()
            assert creds.access_token == engine.access_token()
            waited = time.monotonic() - started

        assert timeout_ms / 1000 <= waited < timeout_ms / 1000 + 2.0
        assert 0 == server.token_calls
        assert "lease_timeout" == engine.status().failure
        # Slept until the timeout (in slices of at most 0.25 s), not polled every few ms.
        assert 1 <= store.waits <= 3
        assert store.reads <= 4


class TestRecoverWithoutNewToken:
    """recover() that finds no other token says why and when to try again; at that time it does."""

    def test_a_sibling_backoff_marker_says_when(self, file_store, endpoint, clock, server):
        """Catches the reason ("no_new_token") or the retry time (the marker's) being lost."""
        engine, creds = engine_on(file_store, endpoint, clock, server)
        not_before = clock() + 30
        marker = Backoff(fingerprint=creds.fingerprint, not_before=not_before, failures=1)
        record = stored_record(file_store)
        file_store.write(attrs.evolve(record, backoff=marker), record.revision)

        with pytest.raises(RefreshFailed) as caught:
            engine.recover(creds.access_token)

        assert ("no_new_token", not_before) == (caught.value.reason, caught.value.retry_at)
        assert (State.STALE, at(not_before)) == (engine.state, engine.status().retry_at)
        assert 0 == server.token_calls

    def test_an_adopted_copy_with_the_same_access_token(self, file_store, endpoint, clock, server):
        """Catches an unknown retry time (none scheduled) being reported as a time."""
        engine, creds = engine_on(file_store, endpoint, clock, server)
        copy = attrs.evolve(creds, refresh_token="rt-written-by-a-sibling")
        file_store.write(Record(credential=copy), stored_record(file_store).revision)

        with pytest.raises(RefreshFailed) as caught:
            engine.recover(creds.access_token)

        assert ("no_new_token", None) == (caught.value.reason, caught.value.retry_at)
        assert (copy, 0) == (engine.credentials, server.token_calls)

    def test_at_the_retry_time_the_token_is_refreshed(self, file_store, endpoint, clock, server):
        """Catches the backoff of a rejected token lasting up to and including its retry time."""
        engine, creds = engine_on(file_store, endpoint, clock, server)
        clock.advance(DUE)
        server.fail_next(503)
        assert creds.access_token == engine.access_token()
        retry_at = engine.status().retry_at.timestamp()
        clock.set(retry_at)

        token = engine.recover(creds.access_token)

        assert token not in (creds.access_token,)
        assert (2, token) == (server.token_calls, stored_record(file_store).credential.access_token)


class _FlakyWrites(FaultyStore):
    """A store whose next ``failing`` writes raise StorageUnavailable (a dropped connection)."""

    def __init__(self, inner, failing: int) -> None:
        super().__init__(inner)
        self.failing = failing

    def write(self, record: Record, expected_revision: int | None) -> Record:
        self.writes_fail = self.failing > 0
        self.failing -= 1
        return super().write(record, expected_revision)


class TestSaveRetriedAtOnce:
    """A refresh whose first write fails and whose second lands leaves nothing unsaved."""

    def test_the_second_write_clears_the_failure(self, file_store, endpoint, clock, server):
        """Catches the "unsaved" failure of the first attempt sticking after the second landed."""
        store = _FlakyWrites(file_store, failing=0)
        engine, _ = engine_on(store, endpoint, clock, server)
        clock.advance(DUE)
        store.failing = 1

        token = engine.access_token()

        status = engine.status()
        assert (State.FRESH, None, False) == (status.state, status.failure, status.unsaved)
        assert token == stored_record(file_store).credential.access_token
        assert 1 == server.token_calls

    def test_also_when_the_server_answers_the_same_tokens(
        self, file_store, endpoint, clock, server
    ):
        """Catches the failure being cleared only because the credential changed: a server that
        answers with the access token still valid and no new refresh token changes no token."""
        store = _FlakyWrites(file_store, failing=0)
        engine, creds = engine_on(store, endpoint, clock, server)
        clock.advance(DUE)
        store.failing = 1
        server.script(ScriptedResponse(status=200, json={"access_token": creds.access_token}))

        assert creds.access_token == engine.access_token()

        status = engine.status()
        assert (None, False, None) == (status.failure, status.unsaved, status.expires_at)
        assert creds.refresh_token == stored_record(file_store).credential.refresh_token


class TestStoreOutageHealed:
    """Once the store answers again, the next outage backs off from the start."""

    def test_the_failure_count_starts_over(self, endpoint, clock, server):
        """Catches status() clearing a healed store failure but not its count (2 s, not 1 s)."""
        store = FaultyStore(MemoryStore())
        engine, creds = engine_on(store, endpoint, clock, server)
        clock.advance(DUE)
        store.reads_fail = True
        assert creds.access_token == engine.access_token()
        store.reads_fail = False
        assert None is engine.status().failure
        store.reads_fail = True

        attempt = clock()
        assert creds.access_token == engine.access_token()

        status = engine.status()
        assert ("storage_unavailable", at(attempt + 1.0)) == (status.failure, status.retry_at)
        assert 0 == server.token_calls


class TestRejectionLoopGoesOn:
    """While a 401 loop lasts, the token refreshed at its retry time is watched the same way."""

    def test_the_next_refresh_is_watched_too(self, file_store, endpoint, clock, server):
        """Catches the refresh at the end of the loop's window forgetting the loop: a 401 for its
        token moments later would be refreshed again instead of reported."""
        engine, creds = engine_on(file_store, endpoint, clock, server)
        started = clock()
        recovered = engine.recover(creds.access_token)
        clock.advance(10)
        with pytest.raises(RefreshFailed):
            engine.recover(recovered)
        clock.set(started + 60)
        refreshed = engine.access_token()
        assert refreshed not in (creds.access_token, recovered)
        clock.advance(10)

        with pytest.raises(RefreshFailed) as caught:
            engine.recover(refreshed)

        assert ("rejected_after_refresh", started + 120) == (
            caught.value.reason,
            caught.value.retry_at,
        )
        assert (2, refreshed) == (server.token_calls, engine.access_token())


class TestErrorMessages:
    """Each error's message says what happened and what to do (docs/errors.md), never a token."""

    def test_no_refresh_token(self, file_store, endpoint, clock, server):
        """Catches the not_refreshable message losing its advice (use it, then log in again)."""
        engine = AuthEngine(file_store, endpoint, POLICY, clock=clock)
        engine.login(attrs.evolve(server.issue(), refresh_token=None))

        with pytest.raises(RefreshFailed) as caught:
            engine.refresh()

        assert (
            "This credential has no refresh token; it is used until it expires, then log in again."
        ) == str(caught.value)

    def test_a_siblings_backoff(self, file_store, endpoint, clock, server):
        """Catches the message of a refresh refused by the shared backoff losing its advice."""
        engine, creds = engine_on(file_store, endpoint, clock, server)
        marker = Backoff(fingerprint=creds.fingerprint, not_before=clock() + 30, failures=1)
        record = stored_record(file_store)
        file_store.write(attrs.evolve(record, backoff=marker), record.revision)

        with pytest.raises(RefreshFailed) as caught:
            engine.refresh()

        assert ("backing_off", clock() + 30) == (caught.value.reason, caught.value.retry_at)
        assert "Refreshing is backing off after a failure; try again later." == str(caught.value)

    def test_transient_then_backing_off(self, file_store, endpoint, clock, server):
        """Catches the messages of a transient failure and of the backoff after it."""
        engine, creds = engine_on(file_store, endpoint, clock, server)
        server.fail_next(503)
        with pytest.raises(RefreshFailed) as failed:
            engine.refresh()

        with pytest.raises(RefreshFailed) as backing_off:
            engine.refresh()
        with pytest.raises(RefreshFailed) as rejected:
            engine.recover(creds.access_token)

        assert [
            "Refreshing failed for now (http_503); the old token stays in use.",
            "Refreshing is backing off after a failure; try again later.",
            "The token was rejected and refreshing is backing off after a failure.",
        ] == [str(e.value) for e in (failed, backing_off, rejected)]
        assert 1 == server.token_calls

    def test_recover_without_a_new_token(self, file_store, endpoint, clock, server):
        """Catches the message of a 401 no other token can answer yet."""
        engine, creds = engine_on(file_store, endpoint, clock, server)
        marker = Backoff(fingerprint=creds.fingerprint, not_before=clock() + 30, failures=1)
        record = stored_record(file_store)
        file_store.write(attrs.evolve(record, backoff=marker), record.revision)

        with pytest.raises(RefreshFailed) as caught:
            engine.recover(creds.access_token)

        assert "The token was rejected and no other token could be obtained yet." == str(
            caught.value
        )

    def test_rejected_after_refresh(self, file_store, endpoint, clock, server):
        """Catches the rejection loop's message losing what to check."""
        engine, creds = engine_on(file_store, endpoint, clock, server)
        token = engine.recover(creds.access_token)

        with pytest.raises(RefreshFailed) as caught:
            engine.recover(token)

        assert (
            "The server rejected a token refreshed moments ago; refreshing again would not help "
            "(check the token's audience and scopes, or the server's clock)."
        ) == str(caught.value)

    def test_rejected_api_key(self, file_store, endpoint, clock, server):
        """Catches the rejected API key's message losing its advice."""
        engine = AuthEngine(file_store, endpoint, POLICY, clock=clock)
        engine.login(Credentials.api_key("sk-test-key"))

        with pytest.raises(ReauthRequired) as caught:
            engine.recover("sk-test-key")

        assert "The API key was rejected by the server; configure a valid key." == str(caught.value)
        assert "sk-test-key" not in repr(caught.value)

    def test_no_endpoint(self, file_store, clock, server):
        """Catches the message of an engine with nothing to refresh with."""
        engine = AuthEngine(file_store, None, POLICY, clock=clock)
        engine.login(server.issue())

        with pytest.raises(RefreshFailed) as caught:
            engine.refresh()

        assert ("no_endpoint", "No token endpoint is configured.") == (
            caught.value.reason,
            str(caught.value),
        )

    def test_reauth(self, file_store, endpoint, clock, server):
        """Catches the messages of a dead credential and of no login losing their advice."""
        engine, creds = engine_on(file_store, endpoint, clock, server)
        server.revoke_family_of(creds)
        with pytest.raises(ReauthRequired) as poisoned:
            engine.refresh()
        engine.logout()

        with pytest.raises(ReauthRequired) as logged_out:
            engine.access_token()

        assert [
            (
                "invalid_grant",
                "The credential was rejected for good (invalid_grant); log in again.",
            ),
            ("logged_out", "Not logged in; log in first."),
        ] == [(e.value.reason, str(e.value)) for e in (poisoned, logged_out)]


class TestStatusIdentity:
    """status() names the issuer, and calls an identity verified only with an id_token."""

    @pytest.mark.parametrize(
        ("verified", "with_id_token", "shown"),
        [(True, True, True), (True, False, False), (False, True, False)],
        ids=["verified", "no-id-token", "unverified"],
    )
    def test_issuer_and_verification(
        self, file_store, endpoint, clock, server, verified, with_id_token, shown
    ):
        """Catches the issuer or the verification flag lost from status(), or the flag shown
        without an id_token to back it."""
        creds = attrs.evolve(
            server.issue(),
            issuer="https://idp.example",
            identity_verified=verified,
        )
        if not with_id_token:
            creds = attrs.evolve(creds, id_token=None)
        engine = AuthEngine(file_store, endpoint, POLICY, clock=clock)
        engine.login(creds)

        status = engine.status()

        assert ("https://idp.example", shown) == (status.issuer, status.identity_verified)


# -- third run (docs/mutation-testing.md): survivors of the current _flows.py -----------------


class TestBackoffBoundaries:
    """The backoff ends at ``retry_at`` exactly, and a refusal without a failure says why."""

    @pytest.mark.parametrize("call", ["access_token", "refresh"])
    def test_at_the_retry_time_the_token_is_refreshed(
        self, file_store, endpoint, clock, server, call
    ):
        """Catches the backoff lasting up to and including ``retry_at`` (``<=`` for ``<``)."""
        engine, creds = engine_on(file_store, endpoint, clock, server)
        server.fail_next(503)
        with pytest.raises(RefreshFailed) as failed:
            engine.refresh()
        assert failed.value.retry_at is not None
        clock.set(failed.value.retry_at)

        token = getattr(engine, call)()

        assert token != creds.access_token
        assert (2, State.FRESH) == (server.token_calls, engine.state)

    @pytest.mark.parametrize(
        ("age", "stale"),
        [(0, False), (DUE, False), (4000, False), (0, True)],
        ids=["fresh", "due", "expired", "stale"],
    )
    def test_a_forced_refresh_within_a_siblings_backoff_says_backing_off(
        self, file_store, endpoint, clock, server, age, stale
    ):
        """
        A forced refresh() that finds a sibling's backoff in the store raises, every time,
        with no call: it never returns the same token as if it had refreshed (it did so for a
        due credential, the first time). Catches the default reason being lost too: the engine
        took the sibling's backoff from the store and has no failure of its own.
        """
        engine = AuthEngine(file_store, endpoint, POLICY, clock=clock)
        creds = due_now(server, clock) if stale else server.issue()
        engine.login(creds)  # a due credential is STALE from the start
        clock.advance(age)
        marker = Backoff(fingerprint=creds.fingerprint, not_before=clock() + 30, failures=1)
        record = stored_record(file_store)
        file_store.write(attrs.evolve(record, backoff=marker), record.revision)

        refusals = []
        for _ in range(2):
            with pytest.raises(RefreshFailed) as refused:
                engine.refresh()
            refusals.append((refused.value.reason, refused.value.retry_at))

        assert [("backing_off", clock() + 30)] * 2 == refusals
        assert (0, None) == (server.token_calls, engine.status().failure)


class _EverChanging(CountingStore):
    """A store in which a sibling logs in again, already due, before every read."""

    def __init__(self, inner: MemoryStore, server, clock) -> None:
        super().__init__(inner)
        self.server = server
        self.clock = clock
        self.changing = False

    def read(self) -> Record | None:
        if self.changing:
            record = super().read()
            due = attrs.evolve(self.server.issue(), expires_at=at(self.clock()))
            super().write(Record(credential=due), record.revision if record else None)
        return super().read()


class TestEverChangingStore:
    def test_the_engine_stops_looking_and_serves_what_it_adopted(self, endpoint, clock, server):
        """Catches the end of the bounded passes raising ReauthRequired while a credential is
        held: a store that changes on every look must neither spin nor log the caller out."""
        store = _EverChanging(MemoryStore(), server, clock)
        engine, _ = engine_on(store, endpoint, clock, server)
        clock.advance(DUE)
        store.changing = True

        token = engine.access_token()

        assert token == engine.credentials.access_token
        assert 0 == server.token_calls
        assert store.reads <= 20


class TestTakingANewCredential:
    def test_an_adopted_credential_clears_the_failure_of_the_old_one(
        self, file_store, endpoint, clock, server
    ):
        """Catches a transient failure of the old credential sticking to the adopted one."""
        engine, _ = engine_on(file_store, endpoint, clock, server)
        server.fail_next(503)
        with pytest.raises(RefreshFailed):
            engine.refresh()
        assert "http_503" == engine.status().failure
        sibling = AuthEngine(FileStore(file_store.path), endpoint, POLICY, clock=clock)
        relogin = server.issue()
        sibling.login(relogin)

        status = engine.status()  # reads the store: adopts the sibling's login

        assert (State.RELOADED, None, None) == (status.state, status.failure, status.retry_at)
        assert relogin.access_token == engine.access_token()

    def test_a_poison_marker_without_a_reason_says_poisoned(
        self, file_store, endpoint, clock, server
    ):
        """Catches the default reason of a dead credential being lost when the marker gives
        none (an empty reason written by another program)."""
        engine, creds = engine_on(file_store, endpoint, clock, server)
        record = stored_record(file_store)
        marker = Poison(fingerprint=creds.fingerprint, reason="", at=clock())
        file_store.write(attrs.evolve(record, poison=marker), record.revision)
        clock.advance(DUE)

        with pytest.raises(ReauthRequired) as caught:
            engine.access_token()

        assert "poisoned" == caught.value.reason
        assert 0 == server.token_calls


class _LandsThenFails(FaultyStore):
    """A store whose writes land but whose answer is lost (a timeout after the write)."""

    def write(self, record: Record, expected_revision: int | None) -> Record:
        if not self.writes_fail:
            return super().write(record, expected_revision)
        self.writes += 1
        self.inner.write(record, expected_revision)
        raise StorageUnavailable("store down", reason="storage_unavailable")


class TestUnsavedThatLanded:
    def test_a_read_that_finds_the_write_clears_the_unsaved_state(
        self, file_store, endpoint, clock, server
    ):
        """Catches the engine's own credential in the store being taken for the older copy: it
        stayed "unsaved" and was written once more for nothing."""
        store = _LandsThenFails(file_store)
        engine, _ = engine_on(store, endpoint, clock, server)
        clock.advance(DUE)
        store.writes_fail = True
        token = engine.access_token()
        assert engine.status().unsaved is False
        store.writes_fail = False
        writes = store.writes
        clock.advance(60)

        assert token == engine.access_token()
        status = engine.status()

        assert (False, None) == (status.unsaved, status.failure)
        assert writes == store.writes
        assert token == stored_record(file_store).credential.access_token

    def test_a_lost_record_written_back_by_a_sibling_is_taken_as_saved(
        self, endpoint, clock, server
    ):
        """Catches the engine's own credential, written back by a sibling after the store lost
        it, being taken for the older copy: it stayed "unsaved" and wrote it once more."""
        store = CountingStore(MemoryStore())
        a, creds = engine_on(store, endpoint, clock, server)
        b = AuthEngine(store, endpoint, POLICY, clock=clock)
        store.inner._record = None  # a Redis restart without persistence
        a.reload()  # both notice (a reload writes nothing)
        b.reload()
        assert creds.access_token == a.access_token()  # A writes it back
        revision = stored_record(store).revision
        writes = store.writes

        status = b.status()

        assert (False, None) == (status.unsaved, status.failure)
        assert creds.access_token == b.access_token()
        assert (revision, writes) == (stored_record(store).revision, store.writes)  # B: none
        assert 0 == server.token_calls

    def test_a_siblings_logout_waits_for_the_unsaved_write(
        self, file_store, endpoint, clock, server
    ):
        """Catches the unsaved engine reading a tombstone as its own older copy (or failing on
        it): a sibling's logout waits for the lease, which the unsaved engine keeps until its
        tokens are written; then it logs out, and the engine sees it."""
        store, engine, _, _ = _unsaved_refresh(file_store, endpoint, clock, server)
        sibling = AuthEngine(FileStore(file_store.path), endpoint, SHORT_LEASE, clock=clock)
        with pytest.raises(LeaseTimeout):
            sibling.logout()
        store.writes_fail = False
        clock.advance(10)
        assert not engine.status().unsaved
        sibling.logout()

        status = engine.status()  # reads the store: the tombstone

        assert (State.LOGGED_OUT, False) == (status.state, status.unsaved)
        with pytest.raises(ReauthRequired) as caught:
            engine.access_token()
        assert "logged_out" == caught.value.reason


class _SlowReads(FileStore):
    """A file store whose reads wait until the test lets them go."""

    def __init__(self, path) -> None:
        super().__init__(path)
        self.slow = False
        self.reading = threading.Event()
        self.go_on = threading.Event()

    def read(self) -> Record | None:
        if self.slow:
            self.reading.set()
            assert self.go_on.wait(5)
        return super().read()


class TestHotPath:
    def test_a_fresh_token_does_not_wait_for_a_slow_store_read(
        self, file_store, endpoint, clock, server
    ):
        """Catches the hot path never opening: access_token() of a fresh credential then
        queues on the engine's lock behind another thread's store read (status())."""
        store = _SlowReads(file_store.path)
        engine, creds = engine_on(store, endpoint, clock, server)
        store.slow = True
        reader = threading.Thread(target=engine.status, daemon=True)
        reader.start()
        assert store.reading.wait(5)
        served: list[str] = []
        caller = threading.Thread(target=lambda: served.append(engine.access_token()), daemon=True)

        caller.start()
        caller.join(2)
        in_time = list(served)  # before the slow read is let go (the lock is free after it)
        store.go_on.set()
        reader.join(5)
        caller.join(5)

        assert [creds.access_token] == in_time
