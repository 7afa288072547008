"""
Property tests: random lives of two engines sharing one store (DESIGN §8).

Two real AuthEngines (the subject and a sibling "process") share a MemoryStore, a fake clock and
an in-process IdP that rotates refresh tokens and revokes the family on reuse. Hypothesis drives
random interleavings of clock jumps, token requests, 401 recoveries, logins of the same and of
other identities, logouts and scripted endpoint failures, and checks the invariants after every
step.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections import deque
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta

import attrs
from hypothesis import note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from authfsm import AuthEngine, AuthError, Credentials, Policy, State
from authfsm.adapters import MemoryStore
from authfsm.engine import (
    Identity,
    PermanentFailure,
    Record,
    Refreshed,
    RefreshOutcome,
    StorageUnavailable,
    TransientFailure,
    identity_of,
    is_compatible,
)
from authfsm.states import TRANSITIONS
from authfsm.testing import FakeClock

USERS = [("alice", "acme"), ("bob", "acme"), ("carol", "other")]

DECLARED = {
    (row["trigger"], source.value, row["dest"].value)
    for row in TRANSITIONS
    for source in (row["source"] if isinstance(row["source"], list) else [row["source"]])
}


def _jwt(claims: dict) -> str:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJub25lIn0.{body}.sig"


@attrs.define
class _Family:
    user: str
    account: str
    current: str
    spent: set[str] = attrs.Factory(set)
    alive: bool = True


class FakeIdP:
    """An in-process IdP: rotation, reuse detection that revokes the family, scripted failures."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.families: dict[str, _Family] = {}
        self.by_refresh: dict[str, _Family] = {}
        self.script: deque[str] = deque()
        self.calls: list[str] = []  # fingerprints of spent credentials, in order
        self.double_spends: list[str] = []

    def issue(self, user: str, account: str) -> Credentials:
        rt = "rt-" + secrets.token_hex(8)
        family = _Family(user, account, rt)
        self.by_refresh[rt] = family
        return self._credentials(family, rt)

    def _credentials(self, family: _Family, rt: str) -> Credentials:
        now = datetime.fromtimestamp(self.clock(), UTC)
        return Credentials(
            access_token="at-" + secrets.token_hex(8),
            refresh_token=rt,
            id_token=_jwt({"sub": family.user}),
            account_id=family.account,
            expires_at=now + timedelta(hours=1),
            last_refresh=now,
        )

    def refresh(self, credentials: Credentials) -> RefreshOutcome:
        self.calls.append(credentials.fingerprint)
        if self.script:
            kind = self.script.popleft()
            if kind == "transient":
                return TransientFailure(reason="http_503", status=503)
            if kind == "rate_limited":
                return TransientFailure(reason="http_429", status=429, retry_after=90)
            if kind == "permanent":
                return PermanentFailure(code="invalid_grant", status=400)
        rt = credentials.refresh_token
        assert rt is not None
        family = self.by_refresh[rt]
        if rt in family.spent:
            # A lost rotation: a live family killed by reuse. (Spending a spent token of a
            # family the server already revoked loses nothing.)
            if family.alive:
                self.double_spends.append(credentials.fingerprint)
            family.alive = False
            return PermanentFailure(code="refresh_token_reused", status=400)
        if not family.alive:
            return PermanentFailure(code="invalid_grant", status=400)
        new_rt = "rt-" + secrets.token_hex(8)
        family.spent.add(rt)
        family.current = new_rt
        self.by_refresh[new_rt] = family
        fresh = self._credentials(family, new_rt)
        return Refreshed(
            access_token=fresh.access_token,
            refresh_token=new_rt,
            id_token=fresh.id_token,
            expires_in=3600,
        )

    def revoke(self, credentials: Credentials) -> bool:
        if credentials.refresh_token in self.by_refresh:
            self.by_refresh[credentials.refresh_token].alive = False
        return True


class _BreakableView:
    """The subject's view of the shared store, whose writes fail while ``broken`` (disk full)."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.broken = 0  # how many writes are still to fail
        self.failed = False  # the last write failed

    @property
    def location(self) -> str:
        return self.store.location

    def read(self) -> Record | None:
        return self.store.read()

    def write(self, record: Record, expected_revision: int | None) -> Record:
        if self.broken:
            self.broken -= 1
            self.failed = True
            raise StorageUnavailable("No space left on device")
        stored = self.store.write(record, expected_revision)
        self.failed = False
        return stored

    def delete(self, expected_revision: int | None) -> None:
        self.store.delete(expected_revision)

    def lease(self, timeout: float) -> AbstractContextManager[None]:
        return self.store.lease(timeout)


class _Transitions:
    """A structlog-like logger that keeps transition events and everything logged."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def info(self, event: str, **kw: object) -> None:
        self.events.append((event, kw))

    warning = error = debug = info


class TwoEngines(RuleBasedStateMachine):
    """The subject engine and a sibling share a store; invariants hold after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.idp = FakeIdP(self.clock)
        self.store = MemoryStore()
        self.log = _Transitions()
        # A short lease wait: the sibling meets a lease the subject keeps (real time passes).
        policy = Policy(jitter=lambda: 0.5, lease_timeout=timedelta(milliseconds=5))
        self.view = _BreakableView(self.store)
        self.engine = AuthEngine(self.view, self.idp, policy, clock=self.clock, logger=self.log)
        self.sibling = AuthEngine(self.store, self.idp, policy, clock=self.clock, logger=self.log)
        self.policy = policy
        self.expected: dict[int, Identity | None] = {id(self.engine): None, id(self.sibling): None}
        self.poisoned: set[str] = set()
        self.revision = 0
        self.tokens: set[str] = set()

    # -- actions -------------------------------------------------------------------------

    def _engine(self, which: bool) -> AuthEngine:
        # Also while the subject holds tokens the store lacks (its writes failed): it keeps the
        # lease until they are written, so the sibling never reads the spent ones and spends them.
        return self.engine if which else self.sibling

    def _call(self, engine: AuthEngine, action: str, *args: object) -> None:
        calls_before = len(self.idp.calls)
        state_before = engine.state
        fp_before = engine.credentials.fingerprint if engine.credentials else None
        try:
            result = getattr(engine, action)(*args)
            note(f"{action}{args} -> ok")
        except AuthError as error:
            result = None
            note(f"{action}{args} -> {type(error).__name__}({error.reason})")
        spent = self.idp.calls[calls_before:]
        # A poisoned credential never calls the network.
        assert not (set(spent) & self.poisoned), "a poisoned credential was spent"
        if state_before is State.POISONED and fp_before is not None:
            assert fp_before not in spent
        if isinstance(result, str):
            self.tokens.add(result)
        self._track(engine)

    def _track(self, engine: AuthEngine) -> None:
        # Poison every engine must obey is the store's marker (a failed write of it, or a
        # client error, poisons only the engine that got it: checked in _call).
        record = self.store.read()
        marker = record.poisoned() if record is not None else None
        creds = engine.credentials
        if (
            engine.state is State.POISONED
            and creds
            and marker
            and marker.fingerprint == creds.fingerprint
        ):
            self.poisoned.add(marker.fingerprint)

    @rule(seconds=st.sampled_from([1, 60, 1800, 3400, 3600, 7200, 9 * 86400]))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @rule(subject=st.booleans())
    def access_token(self, subject: bool) -> None:
        self._call(self._engine(subject), "access_token")

    @rule(subject=st.booleans())
    def refresh(self, subject: bool) -> None:
        self._call(self._engine(subject), "refresh")

    @rule(subject=st.booleans(), include_token=st.booleans(), refresh=st.booleans())
    def status(self, subject: bool, include_token: bool, refresh: bool) -> None:
        engine = self._engine(subject)
        status = engine.status(include_token=include_token, refresh=refresh)
        if status.state in (State.POISONED, State.LOGGED_OUT):
            assert status.token is None
        self._track(engine)

    @rule(subject=st.booleans(), current=st.booleans())
    def recover(self, subject: bool, current: bool) -> None:
        engine = self._engine(subject)
        if current and engine.credentials is not None:
            rejected = engine.credentials.access_token
        else:
            rejected = "at-some-older-token"
        self._call(engine, "recover", rejected)

    @rule(subject=st.booleans(), user=st.sampled_from(USERS))
    def login(self, subject: bool, user: tuple[str, str]) -> None:
        engine = self._engine(subject)
        creds = self.idp.issue(*user)
        try:
            engine.login(creds)
        except AuthError:
            return  # the store refused the write: nothing changed
        self.expected[id(engine)] = identity_of(creds, self.policy.identity)
        note(f"login {user} on {'subject' if subject else 'sibling'}")

    @rule(subject=st.booleans(), revoke=st.booleans())
    def logout(self, subject: bool, revoke: bool) -> None:
        engine = self._engine(subject)
        try:
            engine.logout(revoke=revoke)
        except AuthError:
            return
        self.expected[id(engine)] = None

    @rule(subject=st.booleans())
    def reload_allowing_change(self, subject: bool) -> None:
        engine = self._engine(subject)
        try:
            engine.reload(allow_identity_change=True)
        except AuthError:
            return
        creds = engine.credentials
        self.expected[id(engine)] = (
            identity_of(creds, self.policy.identity) if creds is not None else None
        )
        self._track(engine)

    @rule(writes=st.integers(min_value=1, max_value=6))
    def subject_writes_fail(self, writes: int) -> None:
        self.view.broken = writes

    @rule(kind=st.sampled_from(["transient", "rate_limited", "permanent"]))
    def script_failure(self, kind: str) -> None:
        self.idp.script.append(kind)

    @precondition(lambda self: any(f.alive for f in self.idp.by_refresh.values()))
    @rule()
    def server_revokes_everything(self) -> None:
        for family in self.idp.by_refresh.values():
            family.alive = False

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def refresh_tokens_are_never_spent_twice(self) -> None:
        assert [] == self.idp.double_spends

    @invariant()
    def every_transition_is_a_row(self) -> None:
        observed = {
            (kw["trigger"], kw["from_state"], kw["to_state"])
            for event, kw in self.log.events
            if event == "authfsm.transition"
        }
        assert observed <= DECLARED

    @invariant()
    def never_adopt_another_identity(self) -> None:
        for engine in (self.engine, self.sibling):
            creds = engine.credentials
            key = id(engine)
            if creds is None or engine.state is State.LOGGED_OUT:
                self.expected[key] = None
                continue
            actual = identity_of(creds, self.policy.identity)
            expected = self.expected[key]
            if expected is None:
                self.expected[key] = actual
            else:
                assert is_compatible(expected, actual), (expected, actual)

    @invariant()
    def status_never_leaks_when_poisoned_or_logged_out(self) -> None:
        for engine in (self.engine, self.sibling):
            status = engine._core.snapshot(include_token=True)  # no I/O: the cached view
            if status.state in (State.POISONED, State.LOGGED_OUT):
                assert status.token is None
            assert engine.state is not State.REFRESHING

    @invariant()
    def unsaved_credentials_are_never_older_than_the_store(self) -> None:
        core = self.engine._core
        record = self.store.read()
        if core.unsaved is None or core.cred is None or record is None:
            return
        if record.credential is not None and core.unsaved.base is not None:
            assert record.revision <= core.unsaved.base or (
                record.credential.fingerprint == core.cred.fingerprint
            )

    @invariant()
    def revision_never_goes_backwards(self) -> None:
        record = self.store.read()
        revision = record.revision if record is not None else 0
        assert revision >= self.revision
        self.revision = revision

    @invariant()
    def no_secret_in_logs(self) -> None:
        text = repr(self.log.events)
        assert "rt-" not in text
        assert "at-" not in text
        assert "eyJ" not in text


TestTwoEngines = TwoEngines.TestCase
TestTwoEngines.settings = settings(
    TestTwoEngines.settings,
    max_examples=max(200, settings.default.max_examples),
    stateful_step_count=60,
)
