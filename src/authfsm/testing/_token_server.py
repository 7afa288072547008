"""
A strict OAuth token endpoint on 127.0.0.1: a test double for your own integration, and for ours.

:class:`TokenServer` owns a small in-memory identity provider served over real HTTP: token families
(one per login), refresh-token rotation with reuse detection that revokes the whole family, RFC 7009
revocation, a bearer-protected ``/resource``, and a FIFO of scripted failures (status codes,
``Retry-After``, delays, dropped connections). Its login side (discovery, ``/authorize`` with PKCE,
the device flow, signed id_tokens and their JWK set) lives in :mod:`._login_endpoints`. Point a
client at :attr:`TokenServer.token_url` to see how it behaves against a server that punishes a
second use of a refresh token the way production identity providers do.

It must never print, log or raise a token, and a malformed request must never stop the server: every
bad input is answered ``400 invalid_request``.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hmac
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote_plus

import attrs

from ..engine._credentials import Credentials
from ._http import LoopbackHTTPServer, MalformedRequestError, Reply, parse_params
from ._login_endpoints import LOGIN_PATHS, LoginEndpoints
from ._login_host import LoginOutcome
from ._replies import ScriptedResponse
from ._replies import dumps as _dumps
from ._replies import error_reply as _error
from ._replies import json_reply as _json_reply
from ._replies import numeric as _numeric
from ._replies import scripted_reply as _scripted_reply

if TYPE_CHECKING:
    from ._keys import SigningAlgorithm

__all__ = ["SPARSE_FIELDS", "Call", "Outcome", "ScriptedResponse", "SparseField", "TokenServer"]

# What the refresh side did with one request; the login side adds LoginOutcome.
_RefreshOutcome = Literal[
    "rotated",
    "refreshed",
    "grace_reuse",
    "reused_family_revoked",
    "invalid_grant",
    "invalid_client",
    "unsupported_grant_type",
    "scripted",
    "revoked",
    "resource_ok",
    "resource_denied",
    "bad_request",
]
#: What the server did with one request; see :class:`Call`.
Outcome = _RefreshOutcome | LoginOutcome

TOKEN_PATH = "/oauth/token"  # noqa: S105  (a URL path, not a password)
REVOKE_PATH = "/oauth/revoke"
RESOURCE_PATH = "/resource"

#: A field a refresh response may leave out; see :attr:`TokenServer.sparse`.
SparseField = Literal["refresh_token", "id_token", "expires_in"]
SPARSE_FIELDS: frozenset[str] = frozenset({"refresh_token", "id_token", "expires_in"})


@attrs.frozen(kw_only=True)
class Call:
    """
    One request the server answered, as the test sees it afterwards. It never holds a token.

    Attributes:
        path: the request path, without the query string.
        method: the HTTP method.
        grant_type: the ``grant_type`` sent to the token endpoint, if any could be read.
        status: the HTTP status answered, or None when a scripted response dropped the connection.
        outcome: what the server did (``"rotated"``, ``"reused_family_revoked"``, ...).
        family: the id of the token family the request touched (``"family-1"``), if known.
        at: the server clock's time when the request was handled.
    """

    path: str
    method: str
    grant_type: str | None
    status: int | None
    outcome: Outcome
    family: str | None
    at: float


@attrs.frozen(kw_only=True)
class _Spent:
    at: float
    # The response that spent the token, replayed verbatim on a reuse within the grace period.
    response: Mapping[str, object]


# Mutable on purpose: a family is the server's live state, changed only under the server's lock.
@attrs.define(kw_only=True, eq=False)
class _Family:
    id: str
    user_id: str
    account_id: str | None
    codex_claims: bool
    access_token: str = attrs.field(default="", repr=False)
    refresh_token: str = attrs.field(default="", repr=False)
    access_expires_at: float = 0.0
    alive: bool = True
    spent: dict[str, _Spent] = attrs.field(factory=dict, repr=False)
    # Families from issue(signed=True) and the login grants carry signed id_tokens.
    signed: bool = False
    auth_time: float | None = None


class TokenServer(LoginEndpoints):
    """
    A strict OAuth 2.0 token endpoint with refresh-token rotation, served on an ephemeral port.

    Use it as a context manager (``with TokenServer() as server:``) or call :meth:`start` and
    :meth:`stop`. :meth:`issue` logs a user in (a new token family); the client under test then
    refreshes at :attr:`token_url`. Each refresh token works once: presenting a spent one again
    (after ``reuse_grace`` seconds) revokes the whole family and answers ``reuse_error``.

    All times come from ``clock`` (POSIX seconds), so a :class:`~authfsm.testing.FakeClock` can
    expire tokens without sleeping.

    Sparse responses: ``sparse`` names the fields a successful refresh response leaves out, as
    RFC 6749 §5.1 and §6 allow, so a client can be tested against an IdP that sends less:

    - ``"refresh_token"``: a *non-rotating* IdP. The refresh token presented stays current and
      may be used again (it is not spent, so no reuse detection); the call's outcome is
      ``"refreshed"`` and :attr:`rotations` does not count it. The access token still changes.
    - ``"id_token"``: no new id_token; the client keeps the one it had.
    - ``"expires_in"``: no lifetime; the access token still expires after ``access_token_ttl``
      (and a JWT access token still says so in its ``exp``).

    :meth:`issue` (a login) always returns every field. ``sparse`` may be changed at any time.

    Logging in over HTTP: the server is also an OpenID provider for one public client
    (``client_id``), so a client written against the RFCs can log in unchanged:

    - discovery at :attr:`openid_configuration_url` and :attr:`oauth_metadata_url`, with
      :attr:`issuer` equal to :attr:`url`; :meth:`patch_discovery` serves a broken document;
    - :attr:`authorize_url` approves at once as the :meth:`login_as` user and redirects to the
      client's loopback ``redirect_uri`` with ``code``, ``state`` and ``iss``. It demands PKCE
      with S256 and ``response_type=code``; :meth:`script_authorization` declines, or sends a
      wrong ``state`` or ``iss``. A code lives ``authorization_code_ttl`` seconds and is spent
      by its first exchange, good or bad; a second exchange revokes the family it started;
    - the device flow (RFC 8628) at :attr:`device_authorization_url`, driven from the test with
      :meth:`approve_device`, :meth:`deny_device` and :meth:`script_device`; polls are counted
      (:attr:`device_polls`, :meth:`device_authorization`);
    - both grants start a new token family, as :meth:`issue` does, whose id_tokens are signed
      (``id_token_alg``, key generated when first needed) and verify against :attr:`jwks_url`;
      the code grant's id_token carries the request's ``nonce``. :attr:`id_token_tamper` breaks
      them on purpose. Access tokens stay unsigned.

    Signed id_tokens need PyJWT (``pip install 'authfsm[login]'``); without it the refresh side
    works as before and the login grants and the JWK set answer ``server_error``.

    Every request is in :attr:`calls`, by path and outcome only: no code, ``state``, ``nonce``,
    verifier or token is logged, shown in a repr or put in an error.
    """

    def __init__(
        self,
        *,
        client_id: str = "test-client",
        client_secret: str | None = None,
        access_token_ttl: float = 3600.0,
        reuse_grace: float = 0.0,
        reuse_error: str = "refresh_token_reused",
        jwt_access_tokens: bool = True,
        clock: Callable[[], float] = time.time,
        latency: float = 0.0,
        sparse: Iterable[SparseField] = (),
        id_token_alg: SigningAlgorithm = "ES256",  # noqa: S107  (an algorithm name)
        authorization_code_ttl: float = 60.0,
        device_code_ttl: float = 600.0,
        device_interval: float | None = 5.0,
        enforce_device_interval: bool = False,
    ) -> None:
        """
        Set the server up; nothing is bound until :meth:`start`.

        The login settings (see the class docstring) are also attributes: ``id_token_alg``
        (``"ES256"`` or ``"RS256"``) signs id_tokens; ``authorization_code_ttl`` is how long a
        code can be exchanged; ``device_code_ttl`` is the device flow's ``expires_in``;
        ``device_interval`` its ``interval`` (None leaves it out of the response); and
        ``enforce_device_interval`` answers ``slow_down`` to a poll that comes too soon.
        """
        if access_token_ttl <= 0:
            raise ValueError("access_token_ttl must be positive")
        if reuse_grace < 0:
            raise ValueError("reuse_grace must not be negative")
        self._client_id = client_id
        self._client_secret = client_secret
        self.access_token_ttl = access_token_ttl
        self.reuse_grace = reuse_grace
        self.reuse_error = reuse_error
        self.jwt_access_tokens = jwt_access_tokens
        self._clock = clock
        self._latency = 0.0
        self.latency = latency
        self._sparse: frozenset[str] = frozenset()
        self.sparse = frozenset(sparse)

        self._lock = threading.Lock()
        self._families: list[_Family] = []
        self._by_refresh: dict[str, _Family] = {}
        self._by_access: dict[str, _Family] = {}
        self._script: collections.deque[ScriptedResponse] = collections.deque()
        self._calls: list[Call] = []
        self._token_calls = 0
        self._rotations = 0
        self._reuse_rejections = 0
        self._grace_reuses = 0
        self._init_login(
            id_token_alg=id_token_alg,
            authorization_code_ttl=authorization_code_ttl,
            device_code_ttl=device_code_ttl,
            device_interval=device_interval,
            enforce_device_interval=enforce_device_interval,
        )

        self._httpd: LoopbackHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> TokenServer:
        """Bind 127.0.0.1 on an ephemeral port and serve from a daemon thread; returns self."""
        if self._httpd is not None:
            raise RuntimeError("TokenServer is already running")
        httpd = LoopbackHTTPServer(self)
        thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"authfsm-token-server:{httpd.server_address[1]}",
            daemon=True,
        )
        thread.start()
        self._httpd, self._thread = httpd, thread
        return self

    def stop(self) -> None:
        """Stop serving, close the listening socket and every open connection. Idempotent."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._httpd = self._thread = None
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=5.0)

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:PORT``."""
        if self._httpd is None:
            raise RuntimeError("TokenServer is not running; call start() or use it in a with block")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def token_url(self) -> str:
        """The token endpoint (``grant_type=refresh_token``)."""
        return self.url + TOKEN_PATH

    @property
    def revoke_url(self) -> str:
        """The RFC 7009 revocation endpoint."""
        return self.url + REVOKE_PATH

    @property
    def resource_url(self) -> str:
        """A resource that accepts only the family's current, unexpired access token."""
        return self.url + RESOURCE_PATH

    # -- settings ----------------------------------------------------------------------------

    @property
    def latency(self) -> float:
        """Seconds every token-endpoint call sleeps before it is handled (a slow IdP)."""
        return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("latency must not be negative")
        self._latency = float(seconds)

    @property
    def sparse(self) -> frozenset[str]:
        """The fields refresh responses leave out (see the class docstring)."""
        return self._sparse

    @sparse.setter
    def sparse(self, fields: Iterable[SparseField]) -> None:
        chosen = frozenset(fields)
        unknown = sorted(chosen - SPARSE_FIELDS)
        if unknown:
            raise ValueError(
                f"sparse may name only {', '.join(sorted(SPARSE_FIELDS))}, not {', '.join(unknown)}"
            )
        self._sparse = chosen

    # -- the test side -----------------------------------------------------------------------

    def issue(
        self,
        *,
        user_id: str = "user-1",
        account_id: str | None = "acct-1",
        expires_in: float | None = None,
        codex_claims: bool = False,
        signed: bool = False,
    ) -> Credentials:
        """
        Log a user in: start a new token family and return its credentials.

        ``expires_in`` overrides ``access_token_ttl`` for this first access token only; rotations
        use ``access_token_ttl``. ``codex_claims`` adds OpenAI's ``https://api.openai.com/auth``
        claims to every id_token of the family. With ``signed`` every id_token of the family is
        signed (verifiable at :attr:`jwks_url`, needs PyJWT) as after a login over HTTP;
        without it they are unsigned (``alg: none``) JWTs, as they always were here.
        """
        with self._lock:
            now = self._clock()
            family, response = self._login(
                user_id, account_id, expires_in, codex_claims, now, signed=signed
            )
            return Credentials(
                access_token=family.access_token,
                refresh_token=family.refresh_token,
                id_token=str(response["id_token"]),
                expires_at=datetime.fromtimestamp(family.access_expires_at, UTC),
                account_id=account_id,
                last_refresh=datetime.fromtimestamp(now, UTC),
            )

    def issue_json(
        self,
        *,
        user_id: str = "user-1",
        account_id: str | None = "acct-1",
        expires_in: float | None = None,
        codex_claims: bool = False,
        signed: bool = False,
    ) -> dict[str, Any]:
        """Like :meth:`issue`, but the raw token response (plus ``account_id``) as a dict."""
        with self._lock:
            now = self._clock()
            _family, response = self._login(
                user_id, account_id, expires_in, codex_claims, now, signed=signed
            )
        issued = dict(response)
        if account_id is not None:
            issued["account_id"] = account_id
        return issued

    def script(self, *responses: ScriptedResponse) -> None:
        """Queue canned answers; each token-endpoint call takes the oldest instead of working."""
        for response in responses:
            if not isinstance(response, ScriptedResponse):
                raise TypeError(f"script() takes ScriptedResponse, not {type(response).__name__}")
        with self._lock:
            self._script.extend(responses)

    def fail_next(
        self,
        status: int = 503,
        *,
        error: str | None = None,
        retry_after: float | str | None = None,
        times: int = 1,
        delay: float = 0.0,
    ) -> None:
        """Make the next ``times`` token calls fail with ``status`` (and ``{"error": error}``)."""
        if times < 1:
            raise ValueError("times must be at least 1")
        headers: dict[str, str] = {}
        if retry_after is not None:
            headers["Retry-After"] = (
                retry_after if isinstance(retry_after, str) else _seconds_text(retry_after)
            )
        payload = None if error is None else {"error": error}
        self.script(
            *(
                ScriptedResponse(status, json=payload, headers=headers, delay=delay)
                for _ in range(times)
            )
        )

    def revoke_family_of(self, credentials_or_token: Credentials | str) -> None:
        """Revoke, from the test side, the family a credential (or any of its tokens) belongs to."""
        with self._lock:
            family = self._family_of(credentials_or_token)
            if family is None:
                raise KeyError("no token family holds that credential")
            family.alive = False

    def family_alive(self, credentials_or_token: Credentials | str) -> bool:
        """Whether the credential's family is known and not revoked."""
        with self._lock:
            family = self._family_of(credentials_or_token)
            return family is not None and family.alive

    def is_current(self, credentials_or_token: Credentials | str) -> bool:
        """Whether this is its family's current (unspent) refresh token, alive or not."""
        with self._lock:
            family = self._family_of(credentials_or_token)
            if family is None:
                return False
            presented = (
                credentials_or_token
                if isinstance(credentials_or_token, str)
                else credentials_or_token.refresh_token
            )
            return presented is not None and presented == family.refresh_token

    def family_id(self, credentials_or_token: Credentials | str) -> str | None:
        """The id of the credential's family (as in :attr:`Call.family`), or None if unknown."""
        with self._lock:
            family = self._family_of(credentials_or_token)
            return None if family is None else family.id

    @property
    def calls(self) -> list[Call]:
        """Every request answered so far, oldest first (a copy)."""
        with self._lock:
            return list(self._calls)

    @property
    def token_calls(self) -> int:
        """POST requests to the token endpoint, whatever their outcome."""
        return self._token_calls

    @property
    def rotations(self) -> int:
        """Refresh tokens spent: successful refreshes that minted new tokens."""
        return self._rotations

    @property
    def reuse_rejections(self) -> int:
        """Spent refresh tokens presented again and refused (the family is then revoked)."""
        return self._reuse_rejections

    @property
    def grace_reuses(self) -> int:
        """Spent refresh tokens presented again within ``reuse_grace`` and answered."""
        return self._grace_reuses

    def reset_counters(self) -> None:
        """Zero the counters; the call log, the families and the script are kept."""
        with self._lock:
            self._token_calls = self._rotations = 0
            self._reuse_rejections = self._grace_reuses = 0
            self._device_polls = 0

    def __repr__(self) -> str:
        url = None if self._httpd is None else self.url
        return (
            f"TokenServer(url={url!r}, token_calls={self._token_calls}, "
            f"rotations={self._rotations}, reuse_rejections={self._reuse_rejections}, "
            f"grace_reuses={self._grace_reuses})"
        )

    # -- request handling (called from handler threads) --------------------------------------

    def _handle(
        self,
        method: str,
        path: str,
        content_type: str | None,
        authorization: str | None,
        body: bytes,
        *,
        query: str = "",
    ) -> Reply:
        if path in LOGIN_PATHS:
            return self._handle_login(method, path, query, content_type, authorization, body)
        if path == TOKEN_PATH:
            if method != "POST":
                return self._refuse(path, method, 405, "invalid_request", "use POST")
            return self._token(content_type, authorization, body)
        if path == REVOKE_PATH:
            if method != "POST":
                return self._refuse(path, method, 405, "invalid_request", "use POST")
            return self._revoke(content_type, body)
        if path == RESOURCE_PATH:
            if method not in ("GET", "POST"):
                return self._refuse(path, method, 405, "invalid_request", "use GET or POST")
            return self._resource(method, authorization, body)
        return self._refuse(path, method, 404, "invalid_request", "no such endpoint")

    def _unreadable(self, path: str, method: str) -> Reply:
        if path == TOKEN_PATH and method == "POST":
            with self._lock:
                self._token_calls += 1
        return self._refuse(path, method, 400, "invalid_request", "the request body is malformed")

    def _refuse(self, path: str, method: str, status: int, error: str, description: str) -> Reply:
        with self._lock:
            self._log(path, method, None, status, "bad_request", None)
        return _error(status, error, description)

    def _token(self, content_type: str | None, authorization: str | None, body: bytes) -> Reply:
        # Outside the lock, so concurrent calls wait in parallel as they would at a slow IdP.
        if self._latency > 0:
            time.sleep(self._latency)
        try:
            params: dict[str, str] | None = parse_params(content_type, body)
        except MalformedRequestError:
            params = None
        grant_type = None if params is None else params.get("grant_type")
        with self._lock:
            self._token_calls += 1
            if self._script:
                scripted = self._script.popleft()
                status = None if scripted.drop else scripted.status
                family = self._by_refresh.get((params or {}).get("refresh_token", ""))
                family_id = None if family is None else family.id
                self._log(TOKEN_PATH, "POST", grant_type, status, "scripted", family_id)
                return _scripted_reply(scripted)
            if params is None:
                return self._token_refused(
                    grant_type, 400, "bad_request", "invalid_request", "the body is malformed"
                )
            client_error = self._authenticate(params, authorization)
            if client_error is not None:
                return self._token_refused(
                    grant_type,
                    401,
                    "invalid_client",
                    "invalid_client",
                    client_error,
                    headers=(("WWW-Authenticate", 'Basic realm="authfsm-testing"'),),
                )
            if grant_type is None:
                return self._token_refused(
                    None, 400, "bad_request", "invalid_request", "grant_type is required"
                )
            if grant_type != "refresh_token":
                login = self._login_grant(grant_type, params)
                if login is not None:
                    return login
                return self._token_refused(
                    grant_type,
                    400,
                    "unsupported_grant_type",
                    "unsupported_grant_type",
                    "grant_type must be refresh_token, authorization_code or "
                    "urn:ietf:params:oauth:grant-type:device_code",
                )
            presented = params.get("refresh_token")
            if not presented:
                return self._token_refused(
                    grant_type, 400, "bad_request", "invalid_request", "refresh_token is required"
                )
            return self._refresh(presented)

    def _refresh(self, presented: str) -> Reply:
        now = self._clock()
        family = self._by_refresh.get(presented)
        if family is None:
            self._log(TOKEN_PATH, "POST", "refresh_token", 400, "invalid_grant", None, now)
            return _error(400, "invalid_grant", "refresh token is unknown")
        spent = family.spent.get(presented)
        if spent is not None:
            # Strictly less: a grace of 0 must refuse a reuse even at the same clock instant.
            if family.alive and now - spent.at < self.reuse_grace:
                self._grace_reuses += 1
                self._log(TOKEN_PATH, "POST", "refresh_token", 200, "grace_reuse", family.id, now)
                return _json_reply(200, spent.response)
            # A spent token keeps answering reuse_error after the family is gone, as production
            # IdPs do; every such presentation is a reuse the client should not have made.
            family.alive = False
            self._reuse_rejections += 1
            self._log(
                TOKEN_PATH, "POST", "refresh_token", 400, "reused_family_revoked", family.id, now
            )
            return _error(400, self.reuse_error, "refresh token reused; family revoked")
        if not family.alive:
            self._log(TOKEN_PATH, "POST", "refresh_token", 400, "invalid_grant", family.id, now)
            return _error(400, "invalid_grant", "refresh token has been revoked")
        sparse = self._sparse
        rotate = "refresh_token" not in sparse
        response = self._mint(family, self.access_token_ttl, now, rotate=rotate)
        for name in sparse:
            del response[name]
        outcome: Outcome = "refreshed"
        if rotate:
            family.spent[presented] = _Spent(at=now, response=MappingProxyType(response))
            self._rotations += 1
            outcome = "rotated"
        self._log(TOKEN_PATH, "POST", "refresh_token", 200, outcome, family.id, now)
        return _json_reply(200, response)

    def _token_refused(
        self,
        grant_type: str | None,
        status: int,
        outcome: Outcome,
        error: str,
        description: str,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> Reply:
        self._log(TOKEN_PATH, "POST", grant_type, status, outcome, None)
        return _error(status, error, description, headers)

    def _authenticate(self, params: Mapping[str, str], authorization: str | None) -> str | None:
        """None when the client authenticated, else why not (never echoing what was sent)."""
        if authorization is not None and authorization[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return "malformed Basic credentials"
            raw_id, colon, raw_secret = decoded.partition(":")
            if not colon:
                return "malformed Basic credentials"
            # RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
            client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
            if "client_id" in params and params["client_id"] != client_id:
                return "client_id in the body and in Basic credentials differ"
        else:
            client_id = params.get("client_id", "")
            secret = params.get("client_secret", "")
        if not client_id:
            return "client authentication is required"
        if not hmac.compare_digest(client_id.encode(), self._client_id.encode()):
            return "unknown client"
        if self._client_secret is not None and not hmac.compare_digest(
            secret.encode(), self._client_secret.encode()
        ):
            return "client authentication failed"
        return None

    def _revoke(self, content_type: str | None, body: bytes) -> Reply:
        try:
            params = parse_params(content_type, body)
        except MalformedRequestError:
            return self._refuse(
                REVOKE_PATH, "POST", 400, "invalid_request", "the body is malformed"
            )
        token = params.get("token")
        if not token:
            return self._refuse(REVOKE_PATH, "POST", 400, "invalid_request", "token is required")
        with self._lock:
            family = self._family_of(token)
            if family is not None:
                family.alive = False
            # RFC 7009 §2.2: an unknown or already revoked token is answered 200 as well.
            self._log(
                REVOKE_PATH, "POST", None, 200, "revoked", None if family is None else family.id
            )
        return Reply(status=200)

    def _resource(self, method: str, authorization: str | None, body: bytes) -> Reply:
        token = None
        if authorization is not None and authorization[:7].lower() == "bearer ":
            token = authorization[7:].strip()
        with self._lock:
            now = self._clock()
            family = None if not token else self._by_access.get(token)
            if (
                family is None
                or not family.alive
                or token != family.access_token
                or now >= family.access_expires_at
            ):
                self._log(
                    RESOURCE_PATH,
                    method,
                    None,
                    401,
                    "resource_denied",
                    None if family is None else family.id,
                    now,
                )
                return Reply(
                    status=401,
                    body=_dumps({"error": "invalid_token"}),
                    content_type="application/json",
                    headers=(("WWW-Authenticate", 'Bearer error="invalid_token"'),),
                )
            self._log(RESOURCE_PATH, method, None, 200, "resource_ok", family.id, now)
            return _json_reply(
                200,
                {
                    "ok": True,
                    "user_id": family.user_id,
                    "account_id": family.account_id,
                    "body_bytes": len(body),
                },
            )

    # -- state (call with the lock held) -----------------------------------------------------

    def _login(
        self,
        user_id: str,
        account_id: str | None,
        expires_in: float | None,
        codex_claims: bool,
        now: float,
        *,
        signed: bool = False,
        nonce: str | None = None,
        auth_time: float | None = None,
    ) -> tuple[_Family, dict[str, object]]:
        ttl = self.access_token_ttl if expires_in is None else expires_in
        if ttl <= 0:
            raise ValueError("expires_in must be positive")
        if signed:
            self._signing_keys()  # fail before the family exists when PyJWT is missing
        family = _Family(
            id=f"family-{len(self._families) + 1}",
            user_id=user_id,
            account_id=account_id,
            codex_claims=codex_claims,
            signed=signed,
            auth_time=auth_time,
        )
        self._families.append(family)
        return family, self._mint(family, ttl, now, nonce=nonce)

    def _start_family(
        self,
        *,
        user_id: str,
        account_id: str | None,
        codex_claims: bool,
        now: float,
        nonce: str | None,
        auth_time: float,
    ) -> tuple[str, dict[str, object]]:
        """A family for a login over HTTP: signed id_tokens, the request's nonce in the first."""
        family, response = self._login(
            user_id,
            account_id,
            None,
            codex_claims,
            now,
            signed=True,
            nonce=nonce,
            auth_time=auth_time,
        )
        return family.id, response

    def _revoke_family(self, family_id: str) -> None:
        for family in self._families:
            if family.id == family_id:
                family.alive = False

    def _mint(
        self,
        family: _Family,
        ttl: float,
        now: float,
        *,
        rotate: bool = True,
        nonce: str | None = None,
    ) -> dict[str, object]:
        """
        New access, refresh and id tokens for the family; they become its current ones.

        With ``rotate=False`` the family keeps its refresh token, which the response repeats.
        ``nonce`` goes into the id_token of a login only: OpenID Connect Core §12.2 says a
        refreshed id_token should not carry one.
        """
        exp = now + ttl
        if self.jwt_access_tokens:
            access = _unsigned_jwt(
                {
                    "iss": self._issuer(),
                    "sub": family.user_id,
                    "iat": _numeric(now),
                    "exp": _numeric(exp),
                    "jti": secrets.token_urlsafe(16),
                }
            )
        else:
            access = "at-" + secrets.token_urlsafe(32)
        refresh = "rt-" + secrets.token_urlsafe(32) if rotate else family.refresh_token
        id_claims: dict[str, object] = {
            "iss": self._issuer(),
            "aud": self._client_id,
            "sub": family.user_id,
            "iat": _numeric(now),
            "exp": _numeric(exp),
        }
        if family.auth_time is not None:
            id_claims["auth_time"] = _numeric(family.auth_time)
        if nonce is not None:
            id_claims["nonce"] = nonce
        if family.codex_claims:
            id_claims["https://api.openai.com/auth"] = {
                "chatgpt_account_id": family.account_id,
                "chatgpt_user_id": family.user_id,
            }
        family.access_token, family.refresh_token = access, refresh
        family.access_expires_at = exp
        self._by_access[access] = family
        self._by_refresh[refresh] = family
        return {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": _numeric(ttl),
            "refresh_token": refresh,
            "id_token": (
                self._sign_id_token(id_claims) if family.signed else _unsigned_jwt(id_claims)
            ),
        }

    def _family_of(self, credentials_or_token: Credentials | str) -> _Family | None:
        if isinstance(credentials_or_token, str):
            return self._by_refresh.get(credentials_or_token) or self._by_access.get(
                credentials_or_token
            )
        if credentials_or_token.refresh_token is not None:
            family = self._by_refresh.get(credentials_or_token.refresh_token)
            if family is not None:
                return family
        return self._by_access.get(credentials_or_token.access_token)

    def _issuer(self) -> str:
        return self.url if self._httpd is not None else "http://127.0.0.1"

    def _log(
        self,
        path: str,
        method: str,
        grant_type: str | None,
        status: int | None,
        outcome: Outcome,
        family: str | None,
        at: float | None = None,
    ) -> None:
        self._calls.append(
            Call(
                path=path,
                method=method,
                grant_type=grant_type,
                status=status,
                outcome=outcome,
                family=family,
                at=self._clock() if at is None else at,
            )
        )


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unsigned_jwt(claims: Mapping[str, object]) -> str:
    header = _b64url(_dumps({"alg": "none", "typ": "JWT"}))
    # A non-empty signature keeps clients that insist on three non-empty parts happy.
    return f"{header}.{_b64url(_dumps(dict(claims)))}.sig"


def _seconds_text(seconds: float) -> str:
    value = _numeric(seconds)
    return str(value)
