"""
The engine's core: every decision of the credential's life, with no I/O.

:class:`EngineCore` holds one engine's cached credential and lifecycle. Its operations are
generators that yield I/O requests (:mod:`._effects`) and receive the results, in the manner of
h11: the sync and async engines drive the same flows, so no policy is written twice. What the
flows decide with is the transition table's guards and the pure functions of :mod:`._core`.

Callers serialise operations (one flow at a time per core); ``hot_until``/``hot_token`` are
written so that a lock-free reader always sees a valid pair.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final, Protocol, TypeVar

from ..states import Facts, State
from ._core import minted, observe
from ._credentials import Credentials, Kind
from ._effects import (
    READ,
    RELEASE,
    RETAIN,
    TRY_LEASE,
    AcquireLease,
    AwaitRelease,
    CallEndpoint,
    Flow,
    RevokeAtEndpoint,
    WriteStore,
)
from ._errors import (
    AccountMismatch,
    AuthError,
    InvalidCredentials,
    LeaseTimeout,
    ReauthRequired,
    RefreshFailed,
    StorageUnavailable,
    StorageUnreplicated,
    WriteConflict,
)
from ._events import EventLog
from ._identity import identity_of, is_compatible
from ._lifecycle import Lifecycle
from ._policy import Policy, backoff_delay, refresh_point
from ._ports import PermanentFailure, Refreshed, Released, TransientFailure
from ._record import Backoff, Poison, Record
from ._status import AuthStatus

__all__ = ["CLIENT_ERROR_CODES", "EngineCore"]

T = TypeVar("T")

#: Permanent codes that blame this process's client configuration, not the credential.
CLIENT_ERROR_CODES: Final = frozenset({"invalid_client", "unauthorized_client"})

_SERVING: Final = frozenset({State.FRESH, State.RELOADED})
_HOLDING: Final = frozenset({State.FRESH, State.RELOADED, State.STALE})
# Each pass of the serve loop returns, raises, or fires a trigger that moves towards a served
# state; four passes cover the longest path (adopt -> expire -> refresh -> serve).
_MAX_PASSES: Final = 4
# The failure reasons of a credential this engine holds and the store does not (yet) keep safe.
_UNSAVED: Final = frozenset({"unsaved", "unreplicated"})
# Failure reasons that describe the store, not the credential: cleared once it answers again.
_STORE_FAILURES: Final = frozenset({"storage_unavailable", "storage_timeout", "permission_denied"})
# The longest a follower sleeps on a busy lease before it looks at the store again, even if
# no release woke it: the safety net for a holder that vanished without a word (a Redis lease
# that expired with its process).
_WATCH_SLICE: Final = 0.25
# Looks at the store while waiting for one lease, at most: the lease timeout bounds the wait, and
# this bounds it too when the timer does not move.
_MAX_LOOKS: Final = 100_000
# A failed write of freshly minted tokens is tried this many times in all under the same lease
# (a dropped connection is reconnected by the second); after that, at later calls (_Unsaved).
_SAVE_ATTEMPTS: Final = 2
# How long a later attempt to write an unsaved credential waits for the lease.
_SAVE_LEASE_WAIT: Final = 2.0
# A token refreshed this recently and rejected again is not stale: the resource server rejects
# it for another reason (audience, scope), and refreshing again would not help.
_REJECTED_WHEN_NEW: Final = 60.0
# A shared failure count is advice from another process: bounded before use.
_MAX_FAILURES: Final = 10_000
# How many credentials this engine held recently are remembered to judge a late 401 against.
_HISTORY: Final = 4


class _Unsaved:
    """
    A credential this engine holds that the store does not: a refresh whose write failed, or a
    store that lost its record (a Redis restart without persistence).

    ``base`` is the revision the credential was minted from (None: the store was empty). A store
    record at or below it is an older copy: it is never adopted back (its refresh token may be
    spent), and the write is tried again under the lease, at ``retry_at`` and on later calls.

    ``unreplicated``: the write reached the store's primary, but not the replicas it must reach
    (``StorageUnreplicated``); the record there is this credential, yet a failover could bring
    back the older one. It is written again (a new revision, waited for again) until they do.
    """

    __slots__ = ("attempts", "base", "retry_at", "unreplicated")

    def __init__(self, base: int | None, retry_at: float, *, unreplicated: bool = False) -> None:
        self.base = base
        self.retry_at = retry_at
        self.attempts = 0
        self.unreplicated = unreplicated

    @property
    def failure(self) -> str:
        return "unreplicated" if self.unreplicated else "unsaved"


def _utc(ts: float) -> datetime | None:
    if not math.isfinite(ts):
        return None
    try:
        return datetime.fromtimestamp(ts, UTC)
    except (OverflowError, OSError, ValueError):  # beyond what datetime can hold
        return None


def _minted_before(candidate: Credentials, current: Credentials) -> bool:
    """``candidate`` was refreshed before ``current`` (both dates known)."""
    return (
        candidate.last_refresh is not None
        and current.last_refresh is not None
        and candidate.last_refresh < current.last_refresh
    )


class HotPath(Protocol):
    """Where the lock-free ``access_token`` looks: a deadline and the token valid until then."""

    hot_until: float
    hot_token: str


class EngineCore:
    """One engine's credential, lifecycle and decisions; I/O happens in whoever drives it."""

    def __init__(
        self,
        policy: Policy,
        clock: Callable[[], float],
        log: EventLog,
        *,
        has_endpoint: bool,
        hot: HotPath | None = None,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.policy = policy
        self.clock = clock
        # Durations in events (refresh, lease wait) are measured on a monotonic timer: the
        # clock may jump, and a fake one does not move while a request is in flight.
        self.timer = timer
        self.log = log
        self.has_endpoint = has_endpoint
        self.lifecycle = Lifecycle(State.LOGGED_OUT, on_transition=log.transition)
        self.cred: Credentials | None = None
        self.due_at = math.inf
        self.retry_at = -math.inf
        self.failures = 0
        self.failure: str | None = None
        self.unsaved: _Unsaved | None = None
        # This engine kept the lease past the end of its last run (RetainLease): its freshly
        # minted tokens are not written yet, and no sibling may spend the older stored ones.
        self.retained = False
        # The highest record revision this engine has read or written: a store that later shows
        # a lower one has gone back in time (a failover to a replica that missed writes).
        self.high_water = 0
        # The failure came from taking the lease (a plain store read does not clear it).
        self.lease_failed = False
        # Credentials held before the current one: a 401 for one of them is judged against it.
        self.history: deque[Credentials] = deque(maxlen=_HISTORY)
        # The token the last recovery obtained, and when (to notice a 401 loop).
        self.recovered: tuple[str, float] | None = None
        # The engine's hot path reads only these two; they live on the engine itself so that
        # access_token() costs one attribute lookup less.
        self.hot_until = -math.inf
        self.hot_token = ""
        self.hot: HotPath = hot if hot is not None else self
        self.hot.hot_until = -math.inf

    @property
    def state(self) -> State:
        return self.lifecycle.state

    # -- operations (each one a flow) --------------------------------------------------------

    def start(self) -> Flow[None]:
        self._sync((yield READ), reason="startup")

    def serve(self, *, force: bool) -> Flow[str]:
        """A token to send: refresh when due (always when ``force``), adopt what siblings wrote."""
        return (yield from self._tidy_lease(self._serve(force=force)))

    def _serve(self, *, force: bool) -> Flow[str]:
        for _ in range(_MAX_PASSES):
            now = self.clock()
            state = self.state
            if state in (State.LOGGED_OUT, State.POISONED):
                if not self._sync((yield READ), reason="check"):
                    raise self._reauth_error()
                # Adopting a sibling's write is the refresh a forced call asked for: the new
                # credential is served, never spent at once (Codex's guarded refresh).
                force = False
                continue
            cred = self.cred
            assert cred is not None
            if self.unsaved is not None and now >= self.unsaved.retry_at:
                yield from self._save_unsaved()
                continue
            if not force:
                if state in _SERVING:
                    if now < self.due_at:
                        return cred.access_token
                    self.lifecycle.fire("expire", self._facts(now=now, reason="due"))
                    self._publish()
                elif state is State.STALE and now < self.retry_at:
                    return cred.access_token
            elif state is State.STALE and now < self.retry_at:
                raise RefreshFailed(
                    "Refreshing is backing off after a failure; try again later.",
                    reason=self.failure or "backing_off",
                    retry_at=self.retry_at,
                )
            try:
                yield from self._guarded_refresh(now)
            except StorageUnavailable as error:
                # The store is unreachable: back off before trying it again, keep serving.
                self._back_off(error.reason)
                if force or self.state not in _HOLDING:
                    raise
                return cred.access_token
            except RefreshFailed:
                if force or self.state not in _HOLDING:
                    raise
                return cred.access_token
            if self.cred is not cred:
                # Refreshed, or a sibling's write adopted: that is the refresh a forced call
                # asked for. Anything else (a sibling's backoff taken from the store) is not:
                # the next pass says so instead of returning the same token.
                force = False
        if self.state in _HOLDING and self.cred is not None:
            return self.cred.access_token
        raise self._reauth_error()

    def recover(self, rejected_token: str) -> Flow[str]:
        """A token to retry with after ``rejected_token`` got a 401, judged against it."""
        try:
            token = yield from self._recover(rejected_token)
        except AuthError as error:
            self.log.emit("warning", "authfsm.recover.failed", reason=error.reason)
            raise
        self.log.emit("info", "authfsm.recover.succeeded")
        return token

    def _recover(self, rejected_token: str) -> Flow[str]:
        now = self.clock()
        if self.state in (State.LOGGED_OUT, State.POISONED):
            self._sync((yield READ), reason="recover")
            if self.state in (State.LOGGED_OUT, State.POISONED):
                raise self._reauth_error()
        current = self.cred
        assert current is not None
        if current.access_token != rejected_token:
            rejected = self._held_before(rejected_token)
            if rejected is not None and not self._compatible(rejected, current):
                # The request was made for another identity than the one held now: never retry
                # it with this one's token.
                self._refused()
            return (yield from self.serve(force=False))
        if current.kind is Kind.API_KEY:
            if self._sync((yield READ), reason="api_key_rejected"):
                return (yield from self.serve(force=False))
            raise ReauthRequired(
                "The API key was rejected by the server; configure a valid key.",
                reason="api_key_rejected",
            )
        self.lifecycle.fire("reject", self._facts(now=now, reason="rejected_by_server"))
        self._publish()
        if now < self.retry_at:
            looping = self.failure == "rejected_after_refresh"
            raise RefreshFailed(
                "The token was rejected and refreshing is backing off after a failure.",
                reason="rejected_after_refresh" if looping else "backing_off",
                retry_at=self.retry_at,
            )
        yield from self._guarded_refresh(now, rejected=rejected_token)
        token = yield from self.serve(force=False)
        if token == rejected_token:
            raise RefreshFailed(
                "The token was rejected and no other token could be obtained yet.",
                reason=self.failure or "no_new_token",
                retry_at=self.retry_at if math.isfinite(self.retry_at) else None,
            )
        self.recovered = (token, self.clock())
        return token

    def status(self, *, include_token: bool, refresh: bool) -> Flow[AuthStatus]:
        yield from self._tidy_lease(self._status(refresh=refresh))
        return self.snapshot(include_token)

    def _status(self, *, refresh: bool) -> Flow[None]:
        try:
            if refresh:
                yield from self.serve(force=False)
            else:
                self._sync((yield READ), reason="status")
                if self.unsaved is not None and self.clock() >= self.unsaved.retry_at:
                    yield from self._save_unsaved()
        except StorageUnavailable as error:
            self.failure = error.reason
        except (ReauthRequired, RefreshFailed) as error:
            self.failure = self.failure or error.reason
        else:
            # A plain status reads the store, so it answered; a refreshing status may have
            # skipped the store while backing off from the outage. A lease that could not be
            # taken is not cured by a read that works.
            waiting = refresh and self.state is State.STALE and self.clock() < self.retry_at
            if self.failure in _STORE_FAILURES and not waiting and not self.lease_failed:
                self.failure = None
                self.failures = 0
                self.retry_at = -math.inf

    def login(self, credentials: Credentials) -> Flow[Credentials | None]:
        """Store ``credentials`` under the lease; returns the credential it replaced, if any."""
        if not isinstance(credentials, Credentials):
            raise InvalidCredentials("login() takes a Credentials value")
        yield from self._take_lease(self._lease_timeout())
        unreplicated: StorageUnreplicated | None = None
        try:
            record = yield READ
            replaced = record.credential if record is not None else None
            base = record.revision if record is not None else None
            try:
                yield WriteStore(Record(credential=credentials), base)
                self._saw((base or 0) + 1)
            except StorageUnreplicated as error:
                unreplicated = error  # stored on the primary: kept, and written again later
            self.unsaved = None  # replaced by the login's credential, which the store holds
        finally:
            yield from self._give_back_lease()
        facts = observe(
            reference=credentials,
            candidate=credentials,
            record=None,
            policy=self.policy,
            now=self.clock(),
            reason="login",
        )
        self.unsaved = None
        self.lifecycle.fire("login", facts)
        self._take(credentials)
        if unreplicated is not None:
            self._unreplicated(unreplicated, credentials)
            self._mark_unsaved(base, self.clock(), unreplicated=True)
        return replaced

    def logout(self, *, revoke: bool) -> Flow[bool]:
        revoked: list[bool] = []
        yield from self._take_lease(self._lease_timeout())
        try:
            record = yield READ
            if revoke:
                stored = record.credential if record is not None else None
                for cred in {c for c in (self.cred, stored) if c is not None}:
                    revoked.append(bool((yield RevokeAtEndpoint(cred))))
            if record is not None and record.credential is not None:
                try:
                    yield WriteStore(Record(credential=None), record.revision)
                except StorageUnreplicated as error:
                    # The tombstone is on the primary; a failover may bring the credential
                    # back for other engines, but this one is logged out all the same.
                    self.log.emit(
                        "warning",
                        "authfsm.store.unreplicated",
                        acknowledged=error.acknowledged,
                        required=error.required,
                    )
            self.unsaved = None  # logged out: nothing of this engine's is left to write
        finally:
            yield from self._give_back_lease()
        self.unsaved = None
        self.lifecycle.fire("logout", Facts(now=self.clock(), reason="logout"))
        self._take(None)
        self.log.emit("info", "authfsm.logged_out", revoke=revoke)
        return bool(revoked) and all(revoked)

    def reload(self, *, allow_identity_change: bool) -> Flow[State]:
        return (
            yield from self._tidy_lease(self._reload(allow_identity_change=allow_identity_change))
        )

    def _reload(self, *, allow_identity_change: bool) -> Flow[State]:
        record = yield READ
        if self._sync(record, reason="reload") or self._is_older_copy(record):
            return self.state  # an older copy of this engine's unsaved credential: nothing new
        candidate = record.credential if record is not None else None
        current = self.cred
        if candidate is not None and (
            current is None or candidate.fingerprint != current.fingerprint
        ):
            if not allow_identity_change:
                self._refused()
            self._sync(record, reason="identity_change", judge_against_nothing=True)
        return self.state

    # -- the guarded refresh -----------------------------------------------------------------

    def _guarded_refresh(self, now: float, *, rejected: str | None = None) -> Flow[None]:
        """
        Reload before spending: adopt what a sibling wrote, else spend under the lease.

        ``rejected``: the access token a resource server refused (from ``recover``). If that
        token is itself what a recovery obtained moments ago, nothing is spent: the server
        rejects it for another reason than its age, and a refresh would not help.
        """
        # A lease this engine kept from an earlier run is held already: nobody wrote since.
        if not self.retained and not (yield from self._reach_lease()):
            return
        try:
            record = yield READ
            if self._sync(record, reason="under_lease"):
                return
            reference = self.cred
            assert reference is not None
            facts = self._facts(
                now=self.clock(),
                reason="store_unchanged",
                candidate=self._stored(record),
                record=record,
            )
            if not self.has_endpoint:
                raise RefreshFailed("No token endpoint is configured.", reason="no_endpoint")
            if rejected is not None and self._rejected_when_new(rejected, facts.now):
                raise self._rejected_again(facts.now)
            if not self.lifecycle.attempt("begin_refresh", facts):
                self._refuse_refresh(facts)
            self._publish()
            try:
                self.log.emit("info", "authfsm.refresh.call", fingerprint=reference.fingerprint)
                started = self.timer()
                answer = yield CallEndpoint(reference)
                done = self.clock()
                self._answered(answer, self.timer() - started)
                if isinstance(answer, Refreshed):
                    yield from self._on_refreshed(reference, record, answer, done)
                elif isinstance(answer, TransientFailure):
                    yield from self._on_transient(reference, record, answer, done)
                elif isinstance(answer, PermanentFailure):
                    yield from self._on_permanent(reference, answer, done)
                else:
                    failure = TransientFailure(reason="invalid_outcome")
                    yield from self._on_transient(reference, record, failure, done)
            finally:
                if self.state is State.REFRESHING:  # an error or cancellation mid-flight
                    self.lifecycle.fire("retry_later", Facts(now=now, reason="aborted"))
                    self._publish()
        finally:
            yield from self._give_back_lease()

    def _reach_lease(self) -> Flow[bool]:
        """
        Take the lease for a refresh; False when there is nothing to spend any more (a sibling's
        write was adopted while waiting for it).

        The lease is tried before the store is read, as the first thing: at the start of a
        storm the first engine to try is the leader at once, and every other one costs it one
        look at the lease before it sleeps until the release (reading first cost every one of
        them a read and a judgement more, taken from the leader's CPU or its store's queue).
        What the store holds is read under the lease (``_guarded_refresh``), where a sibling's
        write, or another identity, is found as before (an engine refused for another identity
        reads first, without the lease, as long as the refusal lasts).
        """
        started = self.timer()
        if self.failure == "account_mismatch":
            # Refused before: the store holds another identity, and most likely still does.
            # Look at it first, so that a refusal repeated on every call costs no lease.
            record = yield READ
            if self._sync(record, reason="before_lease"):
                return False
            stored = self._stored(record)
            if stored is not None:
                facts = self._facts(now=self.clock(), reason="before_lease", candidate=stored)
                if not facts.compatible:
                    self._refused()
        return (yield from self._await_lease(started))

    def _answered(self, answer: object, duration: float) -> None:
        """Every grant sent, by outcome and duration (whatever the flow then does with it)."""
        if isinstance(answer, Refreshed):
            outcome, error, status = "success", None, None
        elif isinstance(answer, TransientFailure):
            outcome, error, status = "transient", answer.reason, answer.status
        elif isinstance(answer, PermanentFailure):
            outcome, error, status = "permanent", answer.code, answer.status
        else:
            outcome, error, status = "transient", "invalid_outcome", None
        self.log.emit(
            "debug",
            "authfsm.refresh.answered",
            outcome=outcome,
            error=error,
            status=status,
            duration=round(duration, 6),
        )

    def _await_lease(self, started: float) -> Flow[bool]:
        """
        Take the lease; while a sibling holds it, sleep until it is given back, then look.

        Followers of a refresh do not queue for the lease only to re-read the store one after
        the other: each one sleeps until the leader releases the lease (a store that can tell,
        :class:`ReleaseWatch`, wakes every waiter at once; any other is looked at every 20 ms),
        reads the store, and adopts (returning False) what the leader wrote. Only when nothing
        new was written does a follower try to take the lease itself. The wait is bounded by
        the policy's lease timeout; a lease that cannot be had backs this engine off like any
        transient failure, so a hung holder costs every sibling one wait, not one per call.
        """
        total = self._lease_timeout()
        for _look in range(_MAX_LOOKS):
            try:
                taken = yield TRY_LEASE
            except StorageUnavailable as error:
                self.lease_failed = True
                self.failure = error.reason
                raise
            if not taken:
                left = total - (self.timer() - started)
                if left <= 0:
                    break
            else:
                if self.lease_failed:
                    self.lease_failed = False
                    if self.failure in _STORE_FAILURES or self.failure == "lease_timeout":
                        self.failure = None
                self._waited("acquired", started)
                return True
            record = yield from self._await_release(min(left, _WATCH_SLICE))
            if self._sync(record, reason="while_waiting_for_lease"):
                self._waited("adopted", started)
                return False
        self._back_off("lease_timeout", lease=True)
        self.log.emit(
            "warning",
            "authfsm.lease.timeout",
            duration=round(self.timer() - started, 6),
            retry_in=round(self.retry_at - self.clock(), 3),
        )
        raise LeaseTimeout(
            f"Another engine held the refresh lease for over {total:g} s.",
            reason="lease_timeout",
            retry_at=self.retry_at,
        )

    def _await_release(self, timeout: float) -> Flow[Record | None]:
        """
        Sleep until the lease is given back (see :class:`AwaitRelease`), then what the store
        holds: the record the release carried, when it is newer than any this engine has seen
        (no read), else a read. A release message may have waited, unread, since long before
        this wait; what it carried is then old news, never adopted (the read decides). A watch
        that fails (a subscription to a server that went away) only skips the wait: the read
        reaches the store, or says why not.
        """
        released: Released | None = None
        with contextlib.suppress(StorageUnavailable):
            released = yield AwaitRelease(timeout)
        if (
            isinstance(released, Released)
            and released.record is not None
            and released.record.revision > self.high_water
        ):
            return released.record
        record: Record | None = yield READ
        return record

    def _take_lease(self, timeout: float) -> Flow[None]:
        """The lease, unless this engine kept it from an earlier run (then it holds it)."""
        if not self.retained:
            yield AcquireLease(timeout)

    def _give_back_lease(self, *, keep: bool = True) -> Flow[None]:
        """
        Release the lease at the end of an operation, unless this engine holds tokens the store
        does not (a refresh whose write failed): then keep it (:class:`RetainLease`) until a
        later call writes them, so no sibling reads the older record and spends its refresh
        token, which the server has rotated. Replicas that did not acknowledge a write are not
        a reason: the store's primary holds the new tokens. ``keep=False``: the lease is not
        worth keeping (a write under it was fenced).
        """
        if keep and self.unsaved is not None and not self.unsaved.unreplicated:
            if not self.retained:
                yield RETAIN
                self.retained = True
                self.log.emit("warning", "authfsm.lease.retained", reason=self.unsaved.failure)
            return
        yield RELEASE
        if self.retained:
            self.retained = False
            self.log.emit("info", "authfsm.lease.released")

    def _tidy_lease(self, flow: Flow[T]) -> Flow[T]:
        """
        Run ``flow``, giving back a kept lease whose reason went away, before and after it: the
        unsaved tokens were superseded by a newer record that was adopted (written by a program
        that ignores the lease, such as Codex rewriting its auth.json).
        """
        yield from self._drop_needless_lease()
        try:
            return (yield from flow)
        finally:
            yield from self._drop_needless_lease()

    def _drop_needless_lease(self) -> Flow[None]:
        if self.retained and (self.unsaved is None or self.unsaved.unreplicated):
            yield from self._give_back_lease()

    def _waited(self, outcome: str, started: float) -> None:
        duration = round(self.timer() - started, 6)
        self.log.emit("debug", "authfsm.lease.waited", outcome=outcome, duration=duration)

    def _back_off(self, reason: str, *, lease: bool = False) -> None:
        """A failure that is not the endpoint's: wait before trying again, keep serving."""
        self.failures += 1
        self.retry_at = self.clock() + backoff_delay(self.failures, None, self.policy)
        self.failure = reason
        self.lease_failed = self.lease_failed or lease
        self._publish()

    def _refuse_refresh(self, facts: Facts) -> None:
        if not facts.compatible:
            self._refused()
        if not facts.refreshable:
            # Nothing to spend: serve it as it is, and only look at the store again now and
            # then (a sibling may log in) instead of on every call.
            self.failure = "not_refreshable"
            self.retry_at = facts.now + self.policy.backoff_max.total_seconds()
            self._publish()
            raise RefreshFailed(
                "This credential has no refresh token; it is used until it expires, then "
                "log in again.",
                reason="not_refreshable",
                retry_at=self.retry_at,
            )
        raise RefreshFailed(
            "Refreshing is backing off after a failure; try again later.",
            reason=self.failure or "backing_off",
            retry_at=facts.backoff_until,
        )

    def _on_refreshed(
        self, reference: Credentials, record: Record | None, answer: Refreshed, now: float
    ) -> Flow[None]:
        new = minted(reference, answer, now, self.policy.identity)
        facts = observe(
            reference=reference,
            candidate=new,
            record=None,
            policy=self.policy,
            now=now,
            reason="refreshed",
        )
        if not facts.compatible:
            # A response naming another identity is never adopted nor written.
            self.lifecycle.fire("refreshed", facts)
            failure = TransientFailure(reason="identity_changed_in_response")
            yield from self._on_transient(reference, record, failure, now)
            return
        expected = record.revision if record is not None else None
        saved = unreplicated = False
        for _attempt in range(_SAVE_ATTEMPTS):
            try:
                yield WriteStore(Record(credential=new), expected)
                self._saw((expected or 0) + 1)
            except StorageUnreplicated as error:
                # Written, but a failover could still lose it: never try that revision again.
                self._unreplicated(error, new)
                unreplicated = True
                break
            except WriteConflict:
                # Fenced: our lease lapsed and a sibling wrote meanwhile. Never overwrite it.
                # Leave REFRESHING first: from there the table's fallback row would poison us.
                self.log.emit("warning", "authfsm.store.fenced", fingerprint=new.fingerprint)
                self.lifecycle.fire("retry_later", Facts(now=now, reason="fenced"))
                self._publish()
                self._sync((yield READ), reason="fenced")
                return
            except AuthError as error:
                # The server has rotated: the new tokens exist only here now.
                self.log.emit("error", "authfsm.store.write_failed", reason=error.reason)
                self.failure = "unsaved"
            else:
                saved = True
                break
        if saved and self.unsaved is not None:
            self.unsaved = None  # the store holds this engine's newest credential now
        if saved and self.failure in _UNSAVED:
            self.failure = None
        self.lifecycle.fire("refreshed", facts)
        if self.failure == "rejected_after_refresh":
            # Still in a 401 loop: a rejection of this one is not staleness either.
            self.recovered = (new.access_token, now)
        self._take(new)
        if not saved:
            # Keep serving them, never adopt the older stored copy back, and write them again
            # under the lease on later calls until the write lands (and is replicated).
            self._mark_unsaved(expected, now, unreplicated=unreplicated)
        self.log.emit("info", "authfsm.refresh.succeeded", fingerprint=new.fingerprint)

    def _mark_unsaved(self, base: int | None, now: float, *, unreplicated: bool) -> None:
        unsaved = self.unsaved if self.unsaved is not None else _Unsaved(base, now)
        unsaved.base = base
        unsaved.unreplicated = unreplicated
        unsaved.attempts += 1
        unsaved.retry_at = now + backoff_delay(unsaved.attempts, None, self.policy)
        self.unsaved = unsaved
        self.failure = unsaved.failure
        self._publish()

    def _unreplicated(self, error: StorageUnreplicated, cred: Credentials) -> None:
        self.log.emit(
            "warning",
            "authfsm.store.unreplicated",
            acknowledged=error.acknowledged,
            required=error.required,
            fingerprint=cred.fingerprint,
        )

    def _save_unsaved(self) -> Flow[None]:
        """Write the credential the store does not hold yet, under the lease (see _Unsaved)."""
        unsaved = self.unsaved
        cred = self.cred
        assert unsaved is not None
        assert cred is not None
        try:
            yield from self._take_lease(min(self._lease_timeout(), _SAVE_LEASE_WAIT))
        except AuthError as error:
            self.log.emit("warning", "authfsm.store.save_retry_failed", reason=error.reason)
            self._mark_unsaved(unsaved.base, self.clock(), unreplicated=unsaved.unreplicated)
            return
        keep = True
        try:
            record = yield READ
            if self._stored(record) is not cred and not self._unreplicated_copy(record):
                self._sync(record, reason="unsaved_superseded")
                return
            yield WriteStore(Record(credential=cred), record.revision if record else None)
            self._saw((record.revision if record else 0) + 1)
        except StorageUnreplicated as error:
            self._unreplicated(error, cred)
            self._mark_unsaved(unsaved.base, self.clock(), unreplicated=True)
        except WriteConflict as error:
            # Written between the read and the write: the lease this engine kept was not
            # exclusive any more (a Redis lease that expired during an outage). Give it back;
            # the next retry takes it anew and judges what was written.
            keep = False
            self.log.emit("warning", "authfsm.store.save_retry_failed", reason=error.reason)
            self._mark_unsaved(unsaved.base, self.clock(), unreplicated=unsaved.unreplicated)
        except AuthError as error:
            self.log.emit("warning", "authfsm.store.save_retry_failed", reason=error.reason)
            self._mark_unsaved(unsaved.base, self.clock(), unreplicated=unsaved.unreplicated)
        else:
            self.unsaved = None
            if self.failure in _UNSAVED:
                self.failure = None
            self._publish()
            self.log.emit("info", "authfsm.store.saved", fingerprint=cred.fingerprint)
        finally:
            yield from self._give_back_lease(keep=keep)

    def _on_transient(
        self,
        reference: Credentials,
        record: Record | None,
        answer: TransientFailure,
        now: float,
    ) -> Flow[None]:
        shared = record.backoff if record is not None else None
        failures = 1 + min(
            max(
                self.failures,
                shared.failures if shared and shared.fingerprint == reference.fingerprint else 0,
            ),
            _MAX_FAILURES,
        )
        retry_at = now + backoff_delay(failures, answer.retry_after, self.policy)
        marker = Backoff(fingerprint=reference.fingerprint, not_before=retry_at, failures=failures)
        # The shared marker is advice; this engine backs off on its own even if it cannot write.
        # The credential written with it is the one just spent (the store's copy, or this
        # engine's unsaved one, which the write then saves).
        with contextlib.suppress(AuthError):
            yield WriteStore(
                Record(
                    credential=reference,
                    poison=record.poison if record is not None else None,
                    backoff=marker,
                ),
                record.revision if record is not None else None,
            )
            if self.unsaved is not None:
                self.unsaved = None
        if self.state is State.REFRESHING:
            self.lifecycle.fire("retry_later", Facts(now=now, reason=answer.reason))
        self.failures = failures
        self.retry_at = retry_at
        self.failure = answer.reason
        self._publish()
        self.log.emit(
            "warning",
            "authfsm.refresh.transient",
            reason=answer.reason,
            status=answer.status,
            retry_in=round(retry_at - now, 3),
            fingerprint=reference.fingerprint,
        )
        raise RefreshFailed(
            f"Refreshing failed for now ({answer.reason}); the old token stays in use.",
            reason=answer.reason,
            retry_at=retry_at,
        )

    def _on_permanent(
        self, reference: Credentials, answer: PermanentFailure, now: float
    ) -> Flow[None]:
        # After a permanent failure, look once more: a sibling may have rotated meanwhile.
        record = yield READ
        candidate = self._stored(record)
        if candidate is None:
            self.lifecycle.fire("logout", Facts(now=now, reason="store_emptied"))
            self._take(None)
            raise self._reauth_error()
        facts = observe(
            reference=reference,
            candidate=candidate,
            record=record,
            policy=self.policy,
            now=now,
            reason=answer.code,
        )
        if self.lifecycle.attempt("adopt", facts):
            self._take(candidate)
            self.log.emit(
                "info",
                "authfsm.refresh.adopted",
                fingerprint=facts.candidate,
                from_state=State.REFRESHING.value,
                reason="after_permanent_failure",
            )
            return
        if facts.candidate == facts.reference and answer.code not in CLIENT_ERROR_CODES:
            # Shared: the credential itself is dead for everyone. A client error (wrong client
            # id or secret in this process) says nothing about the credential, so it poisons
            # only this engine and a correctly configured sibling may still refresh.
            marker = Poison(fingerprint=reference.fingerprint, reason=answer.code, at=now)
            try:
                yield WriteStore(
                    Record(credential=candidate, poison=marker),
                    record.revision if record is not None else None,
                )
            except AuthError as error:
                self.log.emit("error", "authfsm.store.write_failed", reason=error.reason)
        self.unsaved = None
        self.lifecycle.fire("poison", facts)
        self.failure = answer.code
        self._publish()
        self.log.emit(
            "warning",
            "authfsm.refresh.poisoned",
            code=answer.code,
            status=answer.status,
            fingerprint=reference.fingerprint,
        )
        raise self._reauth_error()

    # -- store observations ------------------------------------------------------------------

    def _stored(self, record: Record | None) -> Credentials | None:
        """
        The credential the store stands for: this engine's own unsaved one when the record is
        an older copy of it (or missing), else the record's.
        """
        if self._is_older_copy(record):
            return self.cred
        return record.credential if record is not None else None

    def _saw(self, revision: int) -> None:
        self.high_water = max(self.high_water, revision)

    def _went_back(self, record: Record | None, state: State, judge_against_nothing: bool) -> bool:
        """The store shows an older revision than this engine saw, holding an older credential."""
        cred = self.cred
        return (
            record is not None
            and record.revision < self.high_water
            and record.credential is not None
            and cred is not None
            and state in _HOLDING
            and not judge_against_nothing
            and record.credential.fingerprint != cred.fingerprint
            and _minted_before(record.credential, cred)
            # Another identity is the user's deliberate switch (refused or allowed as ever).
            and is_compatible(
                identity_of(cred, self.policy.identity),
                identity_of(record.credential, self.policy.identity),
            )
        )

    def _unreplicated_copy(self, record: Record | None) -> bool:
        """The store's primary holds this engine's credential, not yet known to be replicated."""
        return (
            self.unsaved is not None
            and self.unsaved.unreplicated
            and self.cred is not None
            and record is not None
            and record.credential is not None
            and record.credential.fingerprint == self.cred.fingerprint
        )

    def _is_older_copy(self, record: Record | None) -> bool:
        """The store holds what this engine's unsaved credential replaced (or nothing)."""
        unsaved = self.unsaved
        if unsaved is None or self.cred is None:
            return False
        if record is None:
            return True
        if record.credential is not None and record.credential.fingerprint == self.cred.fingerprint:
            return False  # it landed after all
        if unsaved.base is None:
            return record.credential is not None and _minted_before(record.credential, self.cred)
        return record.revision <= unsaved.base

    def _sync(
        self, record: Record | None, *, reason: str, judge_against_nothing: bool = False
    ) -> bool:
        """
        Apply what the store holds: logout, shared poison, adoption or shared backoff.

        Returns True when a trigger fired. ``judge_against_nothing`` judges the candidate as if
        nothing were cached (an identity change the application asked for).
        """
        now = self.clock()
        state = self.state
        if self.unsaved is not None and not judge_against_nothing:
            if self._is_older_copy(record) or self._unreplicated_copy(record):
                # Never adopt back what this engine's credential replaced; and its own write,
                # not yet replicated, is nothing new (it is written again until it is).
                return False
            landed = (
                record is not None
                and record.credential is not None
                and self.cred is not None
                and record.credential.fingerprint == self.cred.fingerprint
            )
            if not landed:
                self.log.emit("warning", "authfsm.store.unsaved_superseded", reason=reason)
            self.unsaved = None
            if self.failure in _UNSAVED:
                self.failure = None
            self._publish()
        if self._went_back(record, state, judge_against_nothing):
            assert record is not None
            # The store went back in time (a failover to a replica that missed the latest
            # writes, a restored backup) to a credential older than this engine's, whose
            # refresh token was spent: keep this one, never adopt that back, write it again.
            self.log.emit(
                "warning", "authfsm.store.went_back", revision=record.revision, reason=reason
            )
            self.unsaved = _Unsaved(record.revision, now)
            self.failure = "unsaved"
            self._publish()
            return False
        if record is not None:
            self._saw(record.revision)
        if record is None and state in _HOLDING and self.cred is not None:
            # No record at all is not a logout (a logout leaves a tombstone): the store lost
            # it (a Redis restart without persistence). Keep serving; write it back.
            self.log.emit("warning", "authfsm.store.record_missing", reason=reason)
            self.unsaved = _Unsaved(None, now)
            self.failure = "unsaved"
            self._publish()
            return False
        candidate = record.credential if record is not None else None
        if candidate is None:
            if state is State.LOGGED_OUT:
                return False
            self.lifecycle.fire("logout", Facts(now=now, reason=f"store_emptied:{reason}"))
            self._take(None)
            return True
        facts = observe(
            reference=None if judge_against_nothing else self.cred,
            candidate=candidate,
            record=record,
            policy=self.policy,
            now=now,
            reason=reason,
            due_at=None if judge_against_nothing else self.due_at,
        )
        if facts.candidate == facts.reference and state is State.POISONED:
            return False
        if self.lifecycle.attempt("poison", facts):
            self._take(candidate)
            self.failure = record.poison.reason if record and record.poison else "poisoned"
            self._publish()
            return True
        if self.lifecycle.attempt("adopt", facts):
            self._take(candidate)
            self.log.emit(
                "info",
                "authfsm.refresh.adopted",
                fingerprint=facts.candidate,
                from_state=state.value,
                reason=reason,
            )
            return True
        if self.lifecycle.attempt("retry_later", facts):
            assert facts.backoff_until is not None
            self.retry_at = max(self.retry_at, facts.backoff_until)
            self._publish()
            return True
        return False

    # -- bookkeeping -------------------------------------------------------------------------

    def _facts(
        self,
        *,
        now: float,
        reason: str,
        candidate: Credentials | None = None,
        record: Record | None = None,
    ) -> Facts:
        return observe(
            reference=self.cred,
            candidate=candidate,
            record=record,
            policy=self.policy,
            now=now,
            reason=reason,
            due_at=self.due_at,  # the refresh point of self.cred, computed when it was taken
        )

    def _compatible(self, reference: Credentials, candidate: Credentials) -> bool:
        claims = self.policy.identity
        return is_compatible(identity_of(reference, claims), identity_of(candidate, claims))

    def _held_before(self, access_token: str) -> Credentials | None:
        """The credential this engine held recently whose access token this is, if any."""
        for cred in self.history:
            if cred.access_token == access_token:
                return cred
        return None

    def _rejected_when_new(self, rejected: str, now: float) -> bool:
        """``rejected`` is what a recovery obtained moments ago: a 401 for it is not staleness."""
        if self.recovered is None:
            return False
        token, at = self.recovered
        return token == rejected and 0.0 <= now - at < _REJECTED_WHEN_NEW

    def _rejected_again(self, now: float) -> RefreshFailed:
        cred = self.cred
        assert cred is not None
        assert self.recovered is not None
        # Serve the same token until then (access_token() must not refresh it either), and
        # refresh at most once per window after that.
        self.failure = "rejected_after_refresh"
        retry_at = self.recovered[1] + _REJECTED_WHEN_NEW
        self.retry_at = max(self.retry_at, retry_at)
        self._publish()
        self.log.emit(
            "warning",
            "authfsm.recover.rejected_after_refresh",
            fingerprint=cred.fingerprint,
            retry_in=round(retry_at - now, 3),
        )
        return RefreshFailed(
            "The server rejected a token refreshed moments ago; refreshing again would not help "
            "(check the token's audience and scopes, or the server's clock).",
            reason="rejected_after_refresh",
            retry_at=retry_at,
        )

    def _take(self, credentials: Credentials | None) -> None:
        """Cache ``credentials`` (after the lifecycle accepted them) and republish the hot path."""
        previous = self.cred
        if previous is not None and previous is not credentials:
            self.history.append(previous)
        self.cred = credentials
        if (
            credentials is None
            or previous is None
            or (credentials.fingerprint != previous.fingerprint)
        ):
            self.retry_at = -math.inf
            self.failures = 0
            if self.state is not State.POISONED:
                self.failure = None
        self.due_at = (
            refresh_point(credentials, self.policy) if credentials is not None else math.inf
        )
        self._publish()

    def _publish(self) -> None:
        # Close the hot path first, then open it with the new token: a reader racing this
        # sees either the old deadline with a still-valid token, or nothing.
        hot = self.hot
        hot.hot_until = -math.inf
        cred = self.cred
        if cred is not None and self.state in _SERVING:
            hot.hot_token = cred.access_token
            # While the store lacks this credential, calls come back to the flows to save it.
            unsaved = self.unsaved
            hot.hot_until = self.due_at if unsaved is None else min(self.due_at, unsaved.retry_at)

    def _lease_timeout(self) -> float:
        return self.policy.lease_timeout.total_seconds()

    def _refused(self) -> None:
        self.failure = "account_mismatch"
        self.log.emit(
            "warning",
            "authfsm.refresh.refused",
            reason="account_mismatch",
            fingerprint=self.cred.fingerprint if self.cred else None,
        )
        raise AccountMismatch()

    def _reauth_error(self) -> ReauthRequired:
        if self.state is State.POISONED:
            return ReauthRequired(
                f"The credential was rejected for good ({self.failure or 'poisoned'}); "
                "log in again.",
                reason=self.failure or "poisoned",
            )
        return ReauthRequired("Not logged in; log in first.", reason="logged_out")

    def snapshot(self, include_token: bool) -> AuthStatus:
        """The status as cached now (no I/O)."""
        cred = self.cred
        state = self.state
        if cred is None:
            return AuthStatus(state=state, failure=self.failure, requires_login=True)
        show = include_token and state in (_HOLDING | {State.REFRESHING})
        return AuthStatus(
            state=state,
            method=cred.kind.value,
            token=cred.access_token if show else None,
            identity=identity_of(cred, self.policy.identity),
            issuer=cred.issuer,
            identity_verified=cred.identity_verified and cred.id_token is not None,
            fingerprint=cred.fingerprint,
            expires_at=cred.expires_at,
            refresh_at=_utc(self.due_at),
            retry_at=_utc(self.retry_at) if state is State.STALE else None,
            failure=self.failure,
            requires_login=state is State.POISONED or self.failure == "account_mismatch",
            unsaved=self.unsaved is not None,
        )
