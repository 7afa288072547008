"""
The engine's log events, name, level and fields: what `authfsm diagram --trace` draws
(docs/concepts.md), what ``authfsm.metrics`` counts (docs/metrics.md) and what the docs tell
users to assert on (docs/howto/testing.md). A mutation run (docs/mutation-testing.md) showed
that the rest of the suite checks few of them field by field.

Each test captures one engine's events through ``logger=`` (a logger with only the four levels
authfsm uses) and asserts the whole sequence of a behaviour. The lease's own events
(``authfsm.lease.*``) are left out here: their timing is asserted in tests/test_metrics.py.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from authfsm import AccountMismatch, AuthEngine, Credentials, ReauthRequired, RefreshFailed
from authfsm.adapters import FileStore, MemoryStore
from authfsm.engine import Record, minted

from .test_engine_mutants import SHORT_LEASE, _SiblingWritesDuringCall, _SiblingWritesThenAnswers
from .test_engine_teeth import DUE, POLICY, FaultyStore, stored_record

DURATION = "<duration>"


def _level(name: str):
    def record(self: Events, event: str, **fields: Any) -> None:
        self.seen.append((name, event, fields))

    return record


class Events:
    """A structlog-like logger that records (level, event, fields); any other level is an error."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, Any]]] = []

    debug = _level("debug")
    info = _level("info")
    warning = _level("warning")
    error = _level("error")

    def take(self) -> list[tuple[str, str, dict[str, Any]]]:
        """The events seen since the last take(), lease events left out, durations checked."""
        taken = []
        for level, event, fields in self.seen:
            if event.startswith("authfsm.lease."):
                continue
            if "duration" in fields:
                assert isinstance(fields["duration"], float)
                assert fields["duration"] >= 0
                fields = {**fields, "duration": DURATION}
            taken.append((level, event, fields))
        self.seen.clear()
        return taken


def transition(source: str, dest: str, trigger: str, reason: str, fingerprint: str | None):
    return (
        "info",
        "authfsm.transition",
        {
            "from_state": source,
            "to_state": dest,
            "trigger": trigger,
            "reason": reason,
            "fingerprint": fingerprint,
        },
    )


def logged_engine(store, endpoint, clock, server, policy=POLICY, **issue):
    events = Events()
    engine = AuthEngine(store, endpoint, policy, clock=clock, logger=events)
    creds = server.issue(**issue)
    engine.login(creds)
    assert [transition("logged_out", "fresh", "login", "login", creds.fingerprint)] == (
        events.take()
    )
    return engine, creds, events


class TestRefreshEvents:
    """A refresh is a call, an answer and an outcome, each with the credential's fingerprint."""

    def test_a_successful_refresh(self, file_store, endpoint, clock, server):
        """Catches a refresh's call, answer or success event renamed, re-levelled or emptied."""
        engine, creds, events = logged_engine(file_store, endpoint, clock, server)
        clock.advance(DUE)

        engine.access_token()

        new = engine.credentials.fingerprint
        assert [
            transition("fresh", "stale", "expire", "due", creds.fingerprint),
            transition(
                "stale", "refreshing", "begin_refresh", "store_unchanged", creds.fingerprint
            ),
            ("info", "authfsm.refresh.call", {"fingerprint": creds.fingerprint}),
            (
                "debug",
                "authfsm.refresh.answered",
                {"outcome": "success", "error": None, "status": None, "duration": DURATION},
            ),
            transition("refreshing", "fresh", "refreshed", "refreshed", new),
            ("info", "authfsm.refresh.succeeded", {"fingerprint": new}),
        ] == events.take()

    def test_a_transient_failure(self, file_store, endpoint, clock, server):
        """Catches the transient event losing its reason, status, retry delay (to the
        millisecond) or fingerprint."""
        # Full jitter at 0.61728 of the first 2 s cap: a backoff of 1.23456 s.
        policy = attrs.evolve(POLICY, jitter=lambda: 0.61728)
        engine, creds, events = logged_engine(file_store, endpoint, clock, server, policy=policy)
        clock.advance(DUE)
        server.fail_next(503)

        engine.access_token()

        assert [
            transition("fresh", "stale", "expire", "due", creds.fingerprint),
            transition(
                "stale", "refreshing", "begin_refresh", "store_unchanged", creds.fingerprint
            ),
            ("info", "authfsm.refresh.call", {"fingerprint": creds.fingerprint}),
            (
                "debug",
                "authfsm.refresh.answered",
                {"outcome": "transient", "error": "http_503", "status": 503, "duration": DURATION},
            ),
            transition("refreshing", "stale", "retry_later", "http_503", None),
            (
                "warning",
                "authfsm.refresh.transient",
                {
                    "reason": "http_503",
                    "status": 503,
                    "retry_in": 1.235,
                    "fingerprint": creds.fingerprint,
                },
            ),
        ] == events.take()

    def test_a_dead_refresh_token(self, file_store, endpoint, clock, server):
        """Catches the poisoned event losing its code, status or fingerprint."""
        engine, creds, events = logged_engine(file_store, endpoint, clock, server)
        clock.advance(DUE)
        server.revoke_family_of(creds)

        with pytest.raises(ReauthRequired):
            engine.access_token()

        assert [
            transition("fresh", "stale", "expire", "due", creds.fingerprint),
            transition(
                "stale", "refreshing", "begin_refresh", "store_unchanged", creds.fingerprint
            ),
            ("info", "authfsm.refresh.call", {"fingerprint": creds.fingerprint}),
            (
                "debug",
                "authfsm.refresh.answered",
                {
                    "outcome": "permanent",
                    "error": "invalid_grant",
                    "status": 400,
                    "duration": DURATION,
                },
            ),
            transition("refreshing", "poisoned", "poison", "invalid_grant", creds.fingerprint),
            (
                "warning",
                "authfsm.refresh.poisoned",
                {"code": "invalid_grant", "status": 400, "fingerprint": creds.fingerprint},
            ),
        ] == events.take()


class _Junk:
    """A custom endpoint that answers something that is no outcome at all."""

    def refresh(self, credentials):
        return "not an outcome"

    def revoke(self, credentials):
        return False


class TestInvalidOutcomeEvents:
    """What a broken custom endpoint answers is logged and handled as a transient failure."""

    def test_an_answer_that_is_no_outcome(self, file_store, clock, server):
        """Catches the answer event of a non-outcome renamed, or the answer breaking the flow."""
        engine, _creds, events = logged_engine(file_store, _Junk(), clock, server)
        clock.advance(DUE)

        with pytest.raises(RefreshFailed) as caught:
            engine.refresh()

        assert "invalid_outcome" == caught.value.reason
        assert (
            "debug",
            "authfsm.refresh.answered",
            {
                "outcome": "transient",
                "error": "invalid_outcome",
                "status": None,
                "duration": DURATION,
            },
        ) in events.take()


class _AnswersNoted(_SiblingWritesThenAnswers):
    """The racing sibling of test_engine_mutants, noting what the endpoint answered."""

    def __init__(self, inner, store, server) -> None:
        super().__init__(inner, store, server)
        self.answers: list[object] = []

    def refresh(self, credentials):
        answer = super().refresh(credentials)
        self.answers.append(answer)
        return answer


class TestAdoptionEvents:
    """Adopting a sibling's write says whose credential, from which state, and why."""

    def test_a_due_credential_replaced_by_a_siblings_rotation(
        self, file_store, endpoint, clock, server
    ):
        """Catches the adoption event losing its fingerprint, source state or reason."""
        engine, creds, events = logged_engine(file_store, endpoint, clock, server)
        sibling = AuthEngine(FileStore(file_store.path), endpoint, POLICY, clock=clock)
        clock.advance(DUE)
        sibling.access_token()

        engine.access_token()

        new = sibling.credentials.fingerprint
        assert [
            transition("fresh", "stale", "expire", "due", creds.fingerprint),
            transition("stale", "reloaded", "adopt", "under_lease", new),
            (
                "info",
                "authfsm.refresh.adopted",
                {"fingerprint": new, "from_state": "stale", "reason": "under_lease"},
            ),
        ] == events.take()

    def test_a_write_fenced_by_a_sibling(self, endpoint, clock, server):
        """Catches the fenced write's events renamed, or without the fingerprint not written."""
        store = MemoryStore()
        racing = _AnswersNoted(endpoint, store, server)
        events = Events()
        engine = AuthEngine(store, racing, POLICY, clock=clock, logger=events)
        creds = server.issue()
        engine.login(creds)
        clock.advance(DUE)
        events.take()

        engine.access_token()

        # What the endpoint minted and the fence kept out of the store.
        unwritten = minted(creds, racing.answers[0], clock(), POLICY.identity).fingerprint
        adopted = racing.written[0].fingerprint
        assert [
            ("warning", "authfsm.store.fenced", {"fingerprint": unwritten}),
            transition("refreshing", "stale", "retry_later", "fenced", None),
            transition("stale", "reloaded", "adopt", "fenced", adopted),
            (
                "info",
                "authfsm.refresh.adopted",
                {"fingerprint": adopted, "from_state": "stale", "reason": "fenced"},
            ),
        ] == events.take()[-4:]

    @pytest.mark.parametrize("allow_identity_change", [False, True])
    def test_reload(self, file_store, endpoint, clock, server, allow_identity_change):
        """Catches reload()'s adoption reported with another reason (reload, identity_change)."""
        engine, _creds, events = logged_engine(file_store, endpoint, clock, server)
        other = server.issue(user_id="user-2" if allow_identity_change else "user-1")
        file_store.write(Record(credential=other), stored_record(file_store).revision)

        engine.reload(allow_identity_change=allow_identity_change)

        reason = "identity_change" if allow_identity_change else "reload"
        assert (
            "info",
            "authfsm.refresh.adopted",
            {"fingerprint": other.fingerprint, "from_state": "fresh", "reason": reason},
        ) == events.take()[-1]

    def test_at_status(self, file_store, endpoint, clock, server):
        """Catches the adoption at status() reported with another reason."""
        engine, _creds, events = logged_engine(file_store, endpoint, clock, server)
        sibling = AuthEngine(FileStore(file_store.path), endpoint, POLICY, clock=clock)
        sibling.refresh()

        engine.status()

        new = sibling.credentials.fingerprint
        assert [
            transition("fresh", "reloaded", "adopt", "status", new),
            (
                "info",
                "authfsm.refresh.adopted",
                {"fingerprint": new, "from_state": "fresh", "reason": "status"},
            ),
        ] == events.take()

    def test_at_recover_when_logged_out(self, file_store, endpoint, clock, server):
        """Catches the adoption of a sibling's login by recover() reported with another reason."""
        events = Events()
        engine = AuthEngine(file_store, endpoint, POLICY, clock=clock, logger=events)
        creds = server.issue()
        AuthEngine(FileStore(file_store.path), endpoint, POLICY, clock=clock).login(creds)

        engine.recover("at-some-older-token")

        assert [
            transition("logged_out", "reloaded", "adopt", "recover", creds.fingerprint),
            (
                "info",
                "authfsm.refresh.adopted",
                {"fingerprint": creds.fingerprint, "from_state": "logged_out", "reason": "recover"},
            ),
            ("info", "authfsm.recover.succeeded", {}),
        ] == events.take()

    def test_at_recover_of_a_rejected_api_key(self, file_store, endpoint, clock, server):
        """Catches the adoption of a sibling's new API key reported with another reason."""
        events = Events()
        engine = AuthEngine(file_store, endpoint, POLICY, clock=clock, logger=events)
        engine.login(Credentials.api_key("sk-old-key"))
        AuthEngine(FileStore(file_store.path), endpoint, POLICY, clock=clock).login(
            Credentials.api_key("sk-new-key")
        )
        events.take()

        engine.recover("sk-old-key")

        new = Credentials.api_key("sk-new-key").fingerprint
        assert (
            "info",
            "authfsm.refresh.adopted",
            {"fingerprint": new, "from_state": "fresh", "reason": "api_key_rejected"},
        ) == events.take()[-2]

    def test_a_siblings_write_found_after_a_permanent_failure(self, file_store, clock, server):
        """Catches the adoption after a permanent failure reported without its fingerprint, the
        refreshing state it came from (a refresh avoided, for the metrics) or its reason."""
        siblings = []

        def sibling_login() -> Record:
            siblings.append(server.issue())
            return Record(credential=siblings[-1])

        endpoint = _SiblingWritesDuringCall(file_store, sibling_login)
        engine, _creds, events = logged_engine(file_store, endpoint, clock, server)
        clock.advance(DUE)

        engine.access_token()

        assert [
            transition("refreshing", "reloaded", "adopt", "invalid_grant", siblings[0].fingerprint),
            (
                "info",
                "authfsm.refresh.adopted",
                {
                    "fingerprint": siblings[0].fingerprint,
                    "from_state": "refreshing",
                    "reason": "after_permanent_failure",
                },
            ),
        ] == events.take()[-2:]

    def test_a_logout_found_after_a_permanent_failure(self, file_store, clock, server):
        """Catches the logout found after a permanent failure traced without its reason."""
        endpoint = _SiblingWritesDuringCall(file_store, lambda: Record(credential=None))
        engine, _creds, events = logged_engine(file_store, endpoint, clock, server)
        clock.advance(DUE)

        with pytest.raises(ReauthRequired):
            engine.access_token()

        assert (
            transition("refreshing", "logged_out", "logout", "store_emptied", None)
            == (events.take()[-1])
        )


class TestRefusalEvents:
    """A credential of another identity in the store is refused, with a warning."""

    def test_another_identity_in_the_store(self, file_store, endpoint, clock, server):
        """Catches the refusal event renamed, re-levelled or without reason and fingerprint."""
        engine, creds, events = logged_engine(file_store, endpoint, clock, server, user_id="alice")
        other = server.issue(user_id="mallory")
        file_store.write(Record(credential=other), file_store.read().revision)
        clock.advance(DUE)

        with pytest.raises(AccountMismatch):
            engine.refresh()

        assert (
            "warning",
            "authfsm.refresh.refused",
            {"reason": "account_mismatch", "fingerprint": creds.fingerprint},
        ) == events.take()[-1]


class TestStoreEvents:
    """A failed write of freshly minted tokens is an error event per attempt, with its reason."""

    def test_writes_that_fail(self, file_store, endpoint, clock, server):
        """Catches the write failure's event renamed, re-levelled or without its reason."""
        store = FaultyStore(file_store)
        engine, _, events = logged_engine(store, endpoint, clock, server)
        clock.advance(DUE)
        store.writes_fail = True

        engine.access_token()

        failed = [e for e in events.take() if e[1].startswith("authfsm.store.")]
        assert [("error", "authfsm.store.write_failed", {"reason": "storage_unavailable"})] * 2 == (
            failed
        )

    def test_a_poison_marker_that_cannot_be_written(self, file_store, endpoint, clock, server):
        """Catches the failed poison write's event renamed or without its reason."""
        store = FaultyStore(file_store)
        engine, creds, events = logged_engine(store, endpoint, clock, server)
        clock.advance(DUE)
        server.revoke_family_of(creds)
        store.writes_fail = True

        with pytest.raises(ReauthRequired):
            engine.access_token()

        assert [("error", "authfsm.store.write_failed", {"reason": "storage_unavailable"})] == [
            e for e in events.take() if e[1].startswith("authfsm.store.")
        ]

    def test_save_retries(self, file_store, endpoint, clock, server):
        """Catches the events of the lease kept for a failed save and of later save attempts
        (failed to write, landed, the lease given back) renamed, re-levelled or without their
        reason or fingerprint."""
        store = FaultyStore(file_store)
        engine, _, events = logged_engine(store, endpoint, clock, server, policy=SHORT_LEASE)
        clock.advance(DUE)
        store.writes_fail = True
        events.take()
        token = engine.access_token()
        minted_at = clock()
        kept = [
            e for e in events.seen if e[1] in ("authfsm.lease.retained", "authfsm.lease.released")
        ]
        events.take()

        clock.set(minted_at + 3)  # the first retry: the write fails
        assert token == engine.access_token()
        store.writes_fail = False
        clock.set(minted_at + 7)  # the second lands
        assert token == engine.access_token()

        assert [("warning", "authfsm.lease.retained", {"reason": "unsaved"})] == kept
        later = [e for e in events.seen if e[1].startswith(("authfsm.store.", "authfsm.lease.re"))]
        assert [
            ("warning", "authfsm.store.save_retry_failed", {"reason": "storage_unavailable"}),
            ("info", "authfsm.store.saved", {"fingerprint": engine.credentials.fingerprint}),
            ("info", "authfsm.lease.released", {}),
        ] == later


class TestSessionEvents:
    """Logging out, and recovering (or not) from a 401, each say so."""

    @pytest.mark.parametrize("revoke", [False, True])
    def test_logout(self, file_store, endpoint, clock, server, revoke):
        """Catches the logout event renamed or without whether it revoked."""
        engine, _creds, events = logged_engine(file_store, endpoint, clock, server)

        engine.logout(revoke=revoke)
        engine.status()

        assert [
            transition("fresh", "logged_out", "logout", "logout", None),
            ("info", "authfsm.logged_out", {"revoke": revoke}),
        ] == events.take()
        assert (False, True) == (engine.status().unsaved, engine.status().requires_login)

    def test_recover(self, file_store, endpoint, clock, server):
        """Catches the recovery events renamed, re-levelled, or the failure without its reason."""
        engine, creds, events = logged_engine(file_store, endpoint, clock, server)
        token = engine.recover(creds.access_token)
        first = events.take()
        assert [
            transition("fresh", "stale", "reject", "rejected_by_server", creds.fingerprint),
            transition(
                "stale", "refreshing", "begin_refresh", "store_unchanged", creds.fingerprint
            ),
        ] == first[:2]
        assert ("info", "authfsm.recover.succeeded", {}) == first[-1]
        clock.advance(10.2504)  # the retry is due in 49.7496 s, logged to the millisecond

        with pytest.raises(RefreshFailed):
            engine.recover(token)

        assert [
            (
                "warning",
                "authfsm.recover.rejected_after_refresh",
                {"fingerprint": engine.credentials.fingerprint, "retry_in": 49.75},
            ),
            ("warning", "authfsm.recover.failed", {"reason": "rejected_after_refresh"}),
        ] == events.take()[-2:]
