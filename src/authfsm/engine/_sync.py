"""
The synchronous engine: drives :class:`~._flows.EngineCore` with blocking I/O.

It adds only what is specific to threads: a re-entrant flight lock so that concurrent callers
of one engine share one refresh, and the lock-free hot path.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

from ..states import State
from ._checks import check_endpoint, check_policy, check_store
from ._credentials import Credentials
from ._drivers import drive
from ._effects import Flow
from ._errors import EngineMisuse
from ._events import EventLog, Observer
from ._flows import EngineCore
from ._policy import Policy
from ._ports import Store, TokenEndpoint
from ._status import AuthStatus

if TYPE_CHECKING:
    from ..login import LoginResult
    from ..login._engine import IssuerSetup
    from ..login._result import IdentityCheck
    from ._httpx2_auth import EngineAuth2
    from ._httpx_auth import EngineAuth

__all__ = ["AuthEngine"]

T = TypeVar("T")


class AuthEngine:
    """
    Keeps one shared credential usable for this process.

    Args:
        store: where the credential is shared (``FileStore``, ``MemoryStore``, ...).
        endpoint: the token endpoint that spends refresh tokens; without one the engine never
            refreshes (it still adopts what siblings write).
        policy: the rules (leeway, intervals, backoff, identity claims).
        clock: POSIX seconds; tests pass a fake one.
        logger: a structlog logger for ``authfsm.*`` events (default: ``structlog.get_logger``
            once the application has configured structlog; silent before).
        metrics: an :class:`authfsm.metrics.EngineMetrics` to record OpenTelemetry metrics
            from the same events (default: none, and nothing is measured).

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
        metrics: Observer | None = None,
    ) -> None:
        check_store(store, asynchronous=False)
        check_endpoint(endpoint, asynchronous=False)
        check_policy(policy)
        self._store = store
        self._endpoint = endpoint
        self._clock = clock
        self._issuer: IssuerSetup | None = None
        self._flight = threading.RLock()
        # The lease kept across calls while freshly minted tokens are not written (RetainLease).
        self._retained: list[AbstractContextManager[None]] = []
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
        self._run(self._core.start())

    @classmethod
    def from_issuer(
        cls,
        issuer: str,
        *,
        client_id: str,
        store: Store,
        client_secret: str | None = None,
        scope: str = "openid offline_access",
        policy: Policy | None = None,
        clock: Callable[[], float] = time.time,
        logger: Any = None,
        metrics: Observer | None = None,
        timeout: float = 10.0,
        identity_check: IdentityCheck = "verify",
    ) -> AuthEngine:
        """
        An engine for the provider at ``issuer``, found by discovery (cached per process).

        The token and revocation endpoints come from the provider's metadata; id_tokens in
        refresh replies are verified against its keys (one that fails is dropped, the rotation
        kept). Log in with :meth:`login_browser` or :meth:`login_device`. Needs
        ``authfsm[login]``; raises ``DiscoveryError`` for a provider that cannot be used.
        """
        from ..login._engine import issuer_setup

        setup = issuer_setup(
            issuer,
            client_id=client_id,
            client_secret=client_secret,
            scope=scope,
            timeout=timeout,
            identity_check=identity_check,
            clock=clock,
            logger=logger,
        )
        engine = cls(store, setup.endpoint, policy, clock=clock, logger=logger, metrics=metrics)
        engine._issuer = setup
        return engine

    @property
    def state(self) -> State:
        """The lifecycle state of the cached credential."""
        return self._core.state

    @property
    def policy(self) -> Policy:
        return self._core.policy

    @property
    def store(self) -> Store:
        return self._store

    @property
    def credentials(self) -> Credentials | None:
        """The cached credential (secrets are not in its repr)."""
        return self._core.cred

    def access_token(self) -> str:
        """
        A token to send now.

        Fresh credential: returned with no lock and no I/O. Due: refreshed first (or adopted
        from the store when a sibling already did). Transient failure: the old token. Raises
        :class:`ReauthRequired` when logged out or poisoned, :class:`AccountMismatch` when the
        store holds another identity's credential and ours is due.
        """
        if self._clock() < self.hot_until:
            return self.hot_token
        return self._run(self._core.serve(force=False))

    def refresh(self) -> str:
        """
        Refresh now (guarded: a credential a sibling already rotated is adopted instead).

        Raises :class:`RefreshFailed` on a transient failure or while backing off,
        :class:`ReauthRequired` / :class:`AccountMismatch` as ``access_token`` does.
        """
        return self._run(self._core.serve(force=True))

    def recover(self, rejected_token: str) -> str:
        """
        After a resource server answered 401 to ``rejected_token``: a token to retry with.

        Judged against the rejected token, not against whatever is cached now: if the cache or
        the store already holds a different compatible credential it is returned with no call;
        otherwise one guarded refresh. Raises :class:`ReauthRequired` when poisoned (no call),
        :class:`RefreshFailed` when no better token can be had now.
        """
        return self._run(self._core.recover(rejected_token))

    def status(self, *, include_token: bool = False, refresh: bool = False) -> AuthStatus:
        """
        What the engine knows now; reads the store to notice logouts, logins and poison.

        With ``refresh=True`` a due credential is refreshed first (never raising for an auth
        failure: the status says it). The token is included only when asked for and never while
        POISONED or LOGGED_OUT.
        """
        return self._run(self._core.status(include_token=include_token, refresh=refresh))

    def login(self, credentials: Credentials) -> None:
        """Store ``credentials`` for every engine sharing the store and use them; clears poison."""
        self._run(self._core.login(credentials))

    def login_browser(self, *, revoke_previous: bool = False, **options: Any) -> LoginResult:
        """
        Log in through the browser (authorization code + PKCE, loopback redirect) and store the
        result for every engine sharing the store, like :meth:`login`.

        ``options`` go to :func:`authfsm.login.browser_login` (``ports``, ``open_browser``,
        ``timeout``, ``opener``, ``stream``, ``scope``, ...). With ``revoke_previous`` the refresh
        token the login replaced is revoked at the server (best effort). Only for engines made
        with :meth:`from_issuer`.
        """
        from ..login import browser_login

        setup = self._issuer_setup()
        result = browser_login(setup.metadata, **{**setup.login_options(), **options})
        self._land(result, setup, revoke_previous=revoke_previous)
        return result

    def login_device(self, *, revoke_previous: bool = False, **options: Any) -> LoginResult:
        """
        Log in with the device authorization grant (RFC 8628) and store the result like
        :meth:`login_browser`. ``options`` go to :func:`authfsm.login.device_login`
        (``on_prompt``, ``stream``, ``timeout``, ...).
        """
        from ..login import device_login

        setup = self._issuer_setup()
        result = device_login(setup.metadata, **{**setup.login_options(), **options})
        self._land(result, setup, revoke_previous=revoke_previous)
        return result

    def _issuer_setup(self) -> IssuerSetup:
        if self._issuer is None:
            raise EngineMisuse(
                "This engine does not know its provider; build it with AuthEngine.from_issuer()."
            )
        return self._issuer

    def _land(self, result: LoginResult, setup: IssuerSetup, *, revoke_previous: bool) -> None:
        from ..login._engine import stamped, superseded

        credentials = stamped(result, setup)
        replaced = self._run(self._core.login(credentials))
        old = superseded(replaced, credentials)
        if revoke_previous and old is not None:
            setup.endpoint.revoke(old)

    def logout(self, *, revoke: bool = False) -> bool:
        """
        Remove the credential from the store (every sibling sees LOGGED_OUT at its next check).

        With ``revoke=True`` the refresh token is also revoked at the server (best effort).
        Returns True when a revocation was asked for and the server accepted it.
        """
        return self._run(self._core.logout(revoke=revoke))

    def reload(self, *, allow_identity_change: bool = False) -> State:
        """
        Adopt whatever the store holds now.

        A credential of another identity raises :class:`AccountMismatch` unless
        ``allow_identity_change`` is true. Returns the new state.
        """
        return self._run(self._core.reload(allow_identity_change=allow_identity_change))

    def httpx_auth(self) -> EngineAuth:
        """An ``httpx.Auth`` that sends the bearer token and recovers once from a 401."""
        from ._httpx_auth import EngineAuth

        return EngineAuth(self)

    def httpx2_auth(self) -> EngineAuth2:
        """The same as :meth:`httpx_auth` for an ``httpx2.Client`` (``authfsm[httpx2]``)."""
        from ._httpx2_auth import EngineAuth2

        return EngineAuth2(self)

    def _run(self, flow: Flow[T]) -> T:
        with self._flight:
            return drive(flow, self._store, self._endpoint, self._retained)

    def __repr__(self) -> str:
        return f"<AuthEngine state={self.state.name} store={self._store.location!r}>"
