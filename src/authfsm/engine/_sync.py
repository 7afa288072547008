"""
The synchronous engine: the imperative shell around the lifecycle.

It owns the cached credential, takes locks (one in-process flight lock, the store's lease across
processes), reads and writes the store, calls the token endpoint, and feeds what it saw to the
:class:`~authfsm.engine._lifecycle.Lifecycle` as triggers. Decisions are the table's guards and
the pure functions of :mod:`authfsm.engine._core`; nothing here re-decides them.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from ..states import Facts, State
from ._core import minted, observe
from ._credentials import Credentials, Kind
from ._errors import (
    AccountMismatch,
    AuthError,
    InvalidCredentials,
    ReauthRequired,
    RefreshFailed,
    StorageUnavailable,
    WriteConflict,
)
from ._events import EventLog
from ._identity import identity_of
from ._lifecycle import Lifecycle
from ._policy import Policy, backoff_delay, refresh_point
from ._ports import PermanentFailure, Refreshed, Store, TokenEndpoint, TransientFailure
from ._record import Backoff, Poison, Record
from ._status import AuthStatus

if TYPE_CHECKING:
    from ._httpx_auth import EngineAuth

__all__ = ["AuthEngine"]

_SERVING: Final = frozenset({State.FRESH, State.RELOADED})
_HOLDING: Final = frozenset({State.FRESH, State.RELOADED, State.STALE})
# Each pass of the serve loop either returns, raises, or fires a trigger that moves towards a
# served state; four passes cover the longest path (adopt -> expire -> refresh -> serve).
_MAX_PASSES: Final = 4


def _utc(ts: float) -> datetime | None:
    return datetime.fromtimestamp(ts, UTC) if math.isfinite(ts) else None


class AuthEngine:
    """
    Keeps one shared credential usable for this process.

    Args:
        store: where the credential is shared (``FileStore``, ``MemoryStore``, ...).
        endpoint: the token endpoint that spends refresh tokens; without one the engine never
            refreshes (it still reloads what siblings write).
        policy: the rules (leeway, intervals, backoff, identity claims).
        clock: POSIX seconds; tests pass a fake one.
        logger: a structlog logger for ``authfsm.*`` events (default: ``structlog.get_logger``
            once the application has configured structlog; silent before).

    The constructor reads the store once (and raises ``StorageCorrupt`` for unreadable data).
    ``access_token()`` on a fresh credential takes no lock and does no I/O.
    """

    def __init__(
        self,
        store: Store,
        endpoint: TokenEndpoint | None = None,
        policy: Policy | None = None,
        *,
        clock: Callable[[], float] = time.time,
        logger: Any = None,
    ) -> None:
        self._store = store
        self._endpoint = endpoint
        self._policy = policy if policy is not None else Policy()
        self._clock = clock
        self._log = EventLog(logger)
        self._flight = threading.RLock()
        self._lifecycle = Lifecycle(State.LOGGED_OUT, on_transition=self._log.transition)
        self._cred: Credentials | None = None
        self._due_at = math.inf
        self._retry_at = -math.inf
        self._failures = 0
        self._failure: str | None = None
        # The hot path reads only these two: a deadline and the token valid until then.
        self._hot_until = -math.inf
        self._hot_token = ""
        with self._flight:
            self._sync(self._store.read(), reason="startup")

    # -- public API ------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The lifecycle state of the cached credential."""
        return self._lifecycle.state

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def store(self) -> Store:
        return self._store

    @property
    def credentials(self) -> Credentials | None:
        """The cached credential (secrets are not in its repr)."""
        return self._cred

    def access_token(self) -> str:
        """
        A token to send now.

        Fresh credential: returned with no lock and no I/O. Due: refreshed first (or adopted
        from the store when a sibling already did). Transient failure: the old token. Raises
        :class:`ReauthRequired` when logged out or poisoned, :class:`AccountMismatch` when the
        store holds another identity's credential and ours is due.
        """
        if self._clock() < self._hot_until:
            return self._hot_token
        with self._flight:
            return self._serve(force=False)

    def refresh(self) -> str:
        """
        Refresh now (guarded: a credential a sibling already rotated is adopted instead).

        Raises :class:`RefreshFailed` on a transient failure or while backing off,
        :class:`ReauthRequired` / :class:`AccountMismatch` as ``access_token`` does.
        """
        with self._flight:
            return self._serve(force=True)

    def recover(self, rejected_token: str) -> str:
        """
        After a resource server answered 401 to ``rejected_token``: a token to retry with.

        Judged against the rejected token, not against whatever is cached now: if the cache or
        the store already holds a different compatible credential it is returned with no call;
        otherwise one guarded refresh. Raises :class:`ReauthRequired` when poisoned (no call),
        :class:`RefreshFailed` when no better token can be had now.
        """
        with self._flight:
            now = self._clock()
            if self.state in (State.LOGGED_OUT, State.POISONED):
                self._sync(self._store.read(), reason="recover")
                if self.state in (State.LOGGED_OUT, State.POISONED):
                    raise self._reauth_error()
            current = self._cred
            assert current is not None
            if current.access_token != rejected_token:
                return self._serve(force=False)
            if current.kind is Kind.API_KEY:
                if self._sync(self._store.read(), reason="api_key_rejected"):
                    return self._serve(force=False)
                raise ReauthRequired(
                    "The API key was rejected by the server; configure a valid key.",
                    reason="api_key_rejected",
                )
            self._lifecycle.fire("reject", self._facts(now=now, reason="rejected_by_server"))
            self._publish()
            if now < self._retry_at:
                raise RefreshFailed(
                    "The token was rejected and refreshing is backing off after a failure.",
                    reason="backing_off",
                    retry_at=self._retry_at,
                )
            self._guarded_refresh(now)
            token = self._serve(force=False)
            if token == rejected_token:
                raise RefreshFailed(
                    "The token was rejected and no other token could be obtained yet.",
                    reason=self._failure or "no_new_token",
                    retry_at=self._retry_at if math.isfinite(self._retry_at) else None,
                )
            return token

    def status(self, *, include_token: bool = False, refresh: bool = False) -> AuthStatus:
        """
        What the engine knows now; reads the store to notice logouts, logins and poison.

        With ``refresh=True`` a due credential is refreshed first (never raising for an auth
        failure: the status says it). The token is included only when asked for and never while
        POISONED or LOGGED_OUT.
        """
        with self._flight:
            try:
                if refresh:
                    self._serve(force=False)
                else:
                    self._sync(self._store.read(), reason="status")
            except (ReauthRequired, RefreshFailed, StorageUnavailable) as error:
                self._failure = self._failure or error.reason
            return self._status(include_token)

    def login(self, credentials: Credentials) -> None:
        """Store ``credentials`` for every engine sharing the store and use them; clears poison."""
        if not isinstance(credentials, Credentials):
            raise InvalidCredentials("login() takes a Credentials value")
        with self._flight, self._lease():
            record = self._store.read()
            self._store.write(
                Record(credential=credentials), record.revision if record is not None else None
            )
            facts = observe(
                reference=credentials,
                candidate=credentials,
                record=None,
                policy=self._policy,
                now=self._clock(),
                reason="login",
            )
            self._lifecycle.fire("login", facts)
            self._take(credentials)

    def logout(self, *, revoke: bool = False) -> None:
        """
        Remove the credential from the store (every sibling sees LOGGED_OUT at its next check).

        With ``revoke=True`` the refresh token is also revoked at the server (best effort).
        """
        with self._flight, self._lease():
            record = self._store.read()
            if revoke and self._endpoint is not None:
                for cred in {c for c in (self._cred, record and record.credential) if c}:
                    self._endpoint.revoke(cred)
            if record is not None and record.credential is not None:
                self._store.write(Record(credential=None), record.revision)
            self._lifecycle.fire("logout", Facts(now=self._clock(), reason="logout"))
            self._take(None)

    def reload(self, *, allow_identity_change: bool = False) -> State:
        """
        Adopt whatever the store holds now.

        A credential of another identity raises :class:`AccountMismatch` unless
        ``allow_identity_change`` is true. Returns the new state.
        """
        with self._flight:
            record = self._store.read()
            if self._sync(record, reason="reload"):
                return self.state
            candidate = record.credential if record is not None else None
            current = self._cred
            if candidate is not None and (
                current is None or candidate.fingerprint != current.fingerprint
            ):
                if not allow_identity_change:
                    self._refused()
                self._sync(record, reason="identity_change", reference=None)
            return self.state

    def httpx_auth(self) -> EngineAuth:
        """An ``httpx.Auth`` that sends the bearer token and recovers once from a 401."""
        from ._httpx_auth import EngineAuth

        return EngineAuth(self)

    # -- the serve loop --------------------------------------------------------------------

    def _serve(self, *, force: bool) -> str:
        for _ in range(_MAX_PASSES):
            now = self._clock()
            state = self.state
            if state in (State.LOGGED_OUT, State.POISONED):
                if not self._sync(self._store.read(), reason="check"):
                    raise self._reauth_error()
                continue
            cred = self._cred
            assert cred is not None
            if not force:
                if state in _SERVING:
                    if now < self._due_at:
                        return cred.access_token
                    self._lifecycle.fire("expire", self._facts(now=now, reason="due"))
                    self._publish()
                elif state is State.STALE and now < self._retry_at:
                    return cred.access_token
            elif state is State.STALE and now < self._retry_at:
                raise RefreshFailed(
                    "Refreshing is backing off after a failure; try again later.",
                    reason=self._failure or "backing_off",
                    retry_at=self._retry_at,
                )
            try:
                self._guarded_refresh(now)
            except (RefreshFailed, StorageUnavailable):
                if force or self.state not in _HOLDING:
                    raise
                return cred.access_token
            force = False
        if self.state in _HOLDING and self._cred is not None:
            return self._cred.access_token
        raise self._reauth_error()

    def _guarded_refresh(self, now: float) -> None:
        """Reload before spending: adopt what a sibling wrote, else spend under the lease."""
        if self._sync(self._store.read(), reason="before_lease"):
            return
        with self._lease():
            record = self._store.read()
            if self._sync(record, reason="under_lease"):
                return
            reference = self._cred
            assert reference is not None
            facts = self._facts(
                now=self._clock(),
                reason="store_unchanged",
                candidate=record.credential if record is not None else None,
                record=record,
            )
            if not self._lifecycle.attempt("begin_refresh", facts):
                self._refuse_refresh(facts)
            self._publish()
            assert record is not None
            try:
                self._spend(reference, record)
            finally:
                if self.state is State.REFRESHING:  # an unexpected error mid-flight
                    self._lifecycle.fire("retry_later", Facts(now=now, reason="aborted"))
                    self._publish()

    def _refuse_refresh(self, facts: Facts) -> None:
        if not facts.compatible:
            self._refused()
        if not facts.refreshable:
            raise RefreshFailed(
                "This credential has no refresh token; it is used until it expires.",
                reason="not_refreshable",
            )
        raise RefreshFailed(
            "Refreshing is backing off after a failure; try again later.",
            reason=self._failure or "backing_off",
            retry_at=facts.backoff_until,
        )

    def _spend(self, reference: Credentials, record: Record) -> None:
        if self._endpoint is None:
            raise RefreshFailed("No token endpoint is configured.", reason="no_endpoint")
        self._log.emit("info", "authfsm.refresh.call", fingerprint=reference.fingerprint)
        answer = self._endpoint.refresh(reference)
        now = self._clock()
        if isinstance(answer, Refreshed):
            self._on_refreshed(reference, record, answer, now)
        elif isinstance(answer, TransientFailure):
            self._on_transient(reference, record, answer, now)
        elif isinstance(answer, PermanentFailure):
            self._on_permanent(reference, answer, now)
        else:
            raise TypeError(f"{type(self._endpoint).__name__}.refresh() returned {answer!r}")

    def _on_refreshed(
        self, reference: Credentials, record: Record, answer: Refreshed, now: float
    ) -> None:
        new = minted(reference, answer, now)
        facts = observe(
            reference=reference,
            candidate=new,
            record=None,
            policy=self._policy,
            now=now,
            reason="refreshed",
        )
        if not facts.compatible:
            # A response naming another identity is never adopted nor written.
            self._lifecycle.fire("refreshed", facts)
            self._on_transient(
                reference, record, TransientFailure(reason="identity_changed_in_response"), now
            )
            return
        try:
            self._store.write(Record(credential=new), record.revision)
        except WriteConflict:
            # Fenced: our lease lapsed and a sibling wrote meanwhile. Never overwrite it.
            self._log.emit("warning", "authfsm.store.fenced", fingerprint=new.fingerprint)
            if not self._sync(self._store.read(), reason="fenced"):
                self._lifecycle.fire("retry_later", Facts(now=now, reason="fenced"))
                self._publish()
            return
        except AuthError as error:
            # The server has rotated: the new tokens exist only here now. Keep serving them.
            self._log.emit("error", "authfsm.store.write_failed", reason=error.reason)
        self._lifecycle.fire("refreshed", facts)
        self._take(new)
        self._log.emit("info", "authfsm.refresh.succeeded", fingerprint=new.fingerprint)

    def _on_transient(
        self, reference: Credentials, record: Record, answer: TransientFailure, now: float
    ) -> None:
        shared = record.backoff
        failures = 1 + max(
            self._failures,
            shared.failures if shared and shared.fingerprint == reference.fingerprint else 0,
        )
        retry_at = now + backoff_delay(failures, answer.retry_after, self._policy)
        marker = Backoff(fingerprint=reference.fingerprint, not_before=retry_at, failures=failures)
        # The shared marker is advice; this engine backs off on its own even if it cannot write.
        with contextlib.suppress(AuthError):
            self._store.write(
                Record(credential=record.credential, poison=record.poison, backoff=marker),
                record.revision,
            )
        if self.state is State.REFRESHING:
            self._lifecycle.fire("retry_later", Facts(now=now, reason=answer.reason))
        self._failures = failures
        self._retry_at = retry_at
        self._failure = answer.reason
        self._publish()
        self._log.emit(
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

    def _on_permanent(self, reference: Credentials, answer: PermanentFailure, now: float) -> None:
        # After a permanent failure, look once more: a sibling may have rotated meanwhile.
        record = self._store.read()
        candidate = record.credential if record is not None else None
        if candidate is None:
            self._lifecycle.fire("logout", Facts(now=now, reason="store_emptied"))
            self._take(None)
            raise self._reauth_error()
        facts = observe(
            reference=reference,
            candidate=candidate,
            record=record,
            policy=self._policy,
            now=now,
            reason=answer.code,
        )
        if self._lifecycle.attempt("adopt", facts):
            self._take(candidate)
            self._log.emit("info", "authfsm.refresh.adopted", fingerprint=facts.candidate)
            return
        if record is not None and facts.candidate == facts.reference:
            marker = Poison(fingerprint=reference.fingerprint, reason=answer.code, at=now)
            try:
                self._store.write(Record(credential=candidate, poison=marker), record.revision)
            except AuthError as error:
                self._log.emit("error", "authfsm.store.write_failed", reason=error.reason)
        self._lifecycle.fire("poison", facts)
        self._failure = answer.code
        self._publish()
        self._log.emit(
            "warning",
            "authfsm.refresh.poisoned",
            code=answer.code,
            status=answer.status,
            fingerprint=reference.fingerprint,
        )
        raise self._reauth_error()

    # -- store observations ----------------------------------------------------------------

    def _sync(
        self, record: Record | None, *, reason: str, reference: Credentials | bool | None = True
    ) -> bool:
        """
        Apply what the store holds: logout, shared poison, adoption or shared backoff.

        Returns True when a trigger fired. ``reference=None`` judges the candidate as if nothing
        were cached (an identity change the application asked for).
        """
        now = self._clock()
        state = self.state
        candidate = record.credential if record is not None else None
        if candidate is None:
            if state is State.LOGGED_OUT:
                return False
            self._lifecycle.fire("logout", Facts(now=now, reason=f"store_emptied:{reason}"))
            self._take(None)
            return True
        ref = self._cred if reference is True else reference
        assert not isinstance(ref, bool)
        facts = observe(
            reference=ref,
            candidate=candidate,
            record=record,
            policy=self._policy,
            now=now,
            reason=reason,
        )
        if facts.candidate == facts.reference and state is State.POISONED:
            return False
        if self._lifecycle.attempt("poison", facts):
            self._take(candidate)
            self._failure = record.poison.reason if record and record.poison else "poisoned"
            self._publish()
            return True
        if self._lifecycle.attempt("adopt", facts):
            self._take(candidate)
            self._log.emit("info", "authfsm.refresh.adopted", fingerprint=facts.candidate)
            return True
        if self._lifecycle.attempt("retry_later", facts):
            assert facts.backoff_until is not None
            self._retry_at = max(self._retry_at, facts.backoff_until)
            self._publish()
            return True
        return False

    # -- bookkeeping -----------------------------------------------------------------------

    def _facts(
        self,
        *,
        now: float,
        reason: str,
        candidate: Credentials | None = None,
        record: Record | None = None,
    ) -> Facts:
        return observe(
            reference=self._cred,
            candidate=candidate,
            record=record,
            policy=self._policy,
            now=now,
            reason=reason,
        )

    def _take(self, credentials: Credentials | None) -> None:
        """Cache ``credentials`` (after the lifecycle accepted them) and republish the hot path."""
        previous = self._cred
        self._cred = credentials
        if (
            credentials is None
            or previous is None
            or (credentials.fingerprint != previous.fingerprint)
        ):
            self._retry_at = -math.inf
            self._failures = 0
            if self.state is not State.POISONED:
                self._failure = None
        self._due_at = (
            refresh_point(credentials, self._policy) if credentials is not None else math.inf
        )
        self._publish()

    def _publish(self) -> None:
        # Close the hot path first, then open it with the new token: a reader racing this
        # sees either the old deadline with a still-valid token, or nothing.
        self._hot_until = -math.inf
        cred = self._cred
        if cred is not None and self.state in _SERVING:
            self._hot_token = cred.access_token
            self._hot_until = self._due_at

    @contextmanager
    def _lease(self) -> Iterator[None]:
        with self._store.lease(self._policy.lease_timeout.total_seconds()):
            yield

    def _refused(self) -> None:
        self._failure = "account_mismatch"
        self._log.emit(
            "warning",
            "authfsm.refresh.refused",
            reason="account_mismatch",
            fingerprint=self._cred.fingerprint if self._cred else None,
        )
        raise AccountMismatch()

    def _reauth_error(self) -> ReauthRequired:
        if self.state is State.POISONED:
            return ReauthRequired(
                "The credential was rejected for good "
                f"({self._failure or 'poisoned'}); log in again.",
                reason=self._failure or "poisoned",
            )
        return ReauthRequired("Not logged in; log in first.", reason="logged_out")

    def _status(self, include_token: bool) -> AuthStatus:
        cred = self._cred
        state = self.state
        if cred is None:
            return AuthStatus(state=state, failure=self._failure, requires_login=True)
        expires = cred.expires_at
        return AuthStatus(
            state=state,
            method=cred.kind.value,
            token=cred.access_token
            if include_token and state in _HOLDING | {State.REFRESHING}
            else None,
            identity=identity_of(cred, self._policy.identity),
            fingerprint=cred.fingerprint,
            expires_at=expires,
            refresh_at=_utc(self._due_at),
            retry_at=_utc(self._retry_at) if state is State.STALE else None,
            failure=self._failure,
            requires_login=state is State.POISONED or self._failure == "account_mismatch",
        )

    def __repr__(self) -> str:
        return f"<AuthEngine state={self.state.name} store={self._store.location!r}>"
