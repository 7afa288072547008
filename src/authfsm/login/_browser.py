"""
Browser login: the authorization code grant with PKCE (RFC 7636, S256 only) and a loopback
redirect (RFC 8252), for CLIs and desktop apps.

This module owns the authorization request (:func:`authorization_url`), the judgement of every
request that reaches the loopback receiver (:func:`judge_callback`: state, RFC 9207 ``iss``,
provider errors, ``/cancel``), and the flow that ties them to the code exchange; the receiver
itself is :mod:`._loopback`. It must never exchange a code whose ``state`` is not this login's,
and never log, print in an error, or show in a ``repr`` the code, ``state``, ``nonce``, verifier
or tokens.

A redirect with a wrong or missing ``state`` fails the login (:class:`StateMismatch`) after the
browser is told why, rather than waiting on: the alternative would leave a user who used a stale
tab waiting in silence until the deadline, and a forged redirect means the login is under
attack. Requests with none of ``code``, ``error`` and ``state`` (a prefetch, a favicon, a
mistyped address) are answered and ignored.
"""

from __future__ import annotations

import os
import sys
import time
import webbrowser
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any
from urllib.parse import quote, urlencode

import attrs
import httpx

from ..adapters._endpoint import ClientAuth, OAuthTokenEndpoint, oauth_error
from ..engine._credentials import token_problem
from ..engine._events import EventLog
from ._client import check_seconds, finish_for, keys_for, open_endpoint, require_endpoint
from ._discovery import ProviderMetadata
from ._effects import (
    AnswerRequest,
    AsyncIO,
    LoginFlow,
    NextRequest,
    OpenBrowser,
    RequestToken,
    ShowText,
    SyncIO,
    drive,
    drive_async,
)
from ._errors import (
    DiscoveryError,
    IssuerMismatch,
    LoginCancelled,
    LoginError,
    StateMismatch,
)
from ._id_token import JwksCache
from ._loopback import (
    LOOPBACK_HOST,
    AsyncLoopbackReceiver,
    CallbackRequest,
    LoopbackReceiver,
    Page,
    bind_loopback,
)
from ._pkce import new_pkce, random_value, same_secret
from ._result import Finish, IdentityCheck, LoginResult, finish_flow, provider_error

__all__ = [
    "Verdict",
    "authorization_url",
    "browser_login",
    "browser_login_async",
    "judge_callback",
]

#: Parameters of the authorization request the login writes itself.
_RESERVED = frozenset(
    {
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
    }
)
CANCEL_PATH = "/cancel"
#: Stray requests (favicons, prefetches) answered before the login gives up on the browser.
_MAX_REQUESTS = 200
_CALLBACK_PARAMS = ("code", "state", "error", "iss")

SUCCESS = Page(
    status=200,
    title="Logged in",
    message="You are logged in. You can close this tab and return to the application.",
)
NOT_FOUND = Page(status=404, title="Not found", message="Nothing here.")
NOT_ALLOWED = Page(status=405, title="Method not allowed", message="Only GET is served here.")
NOT_A_RESPONSE = Page(
    status=400,
    title="Waiting for the login",
    message="This address receives the provider's answer to a login; it carried none.",
)
CANCELLED = Page(
    status=200, title="Login cancelled", message="The login was cancelled. You can close this tab."
)


def _failed(message: str) -> Page:
    return Page(status=400, title="Login failed", message=message)


def authorization_url(
    metadata: ProviderMetadata,
    *,
    client_id: str,
    redirect_uri: str,
    scope: str,
    state: str,
    code_challenge: str,
    nonce: str | None = None,
    extra_params: Mapping[str, str] | None = None,
) -> str:
    """
    The authorization request (RFC 6749 §4.1.1 with RFC 7636 S256 and the OpenID ``nonce``)
    as a URL for the browser. It carries ``state`` and the challenge: never log it.

    Asking for ``offline_access`` (a refresh token) adds ``prompt=consent``, as OpenID Connect
    Core §11 requires of such requests (providers such as oidc-provider otherwise issue no
    refresh token); ``extra_params`` may set another ``prompt``.
    """
    endpoint = require_endpoint(metadata, "authorization_endpoint")
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": state,
        "code_challenge": code_challenge,
        "code_challenge_method": "S256",
    }
    if nonce is not None:
        params["nonce"] = nonce
    if "offline_access" in scope.split():
        params["prompt"] = "consent"
    params.update(extra_params or {})
    separator = "&" if "?" in endpoint else "?"
    return endpoint + separator + urlencode(params, quote_via=quote)


@attrs.frozen(kw_only=True)
class Verdict:
    """
    What to do with one request at the receiver.

    Exactly one of: ``code`` (exchange it, then answer), ``error`` (answer ``page``, then raise
    it), or neither (answer ``page`` and keep waiting).
    """

    page: Page | None = None
    code: str | None = attrs.field(default=None, repr=False)
    error: LoginError | None = None


def judge_callback(
    request: CallbackRequest,
    *,
    redirect_path: str,
    state: str,
    issuer: str,
    iss_required: bool,
) -> Verdict:
    """
    Judge one request at the loopback receiver (pure).

    In order: ``/cancel`` cancels; another path, or a method other than GET, is answered and
    ignored; a callback with none of ``code``/``error``/``state`` is answered and ignored; then
    ``state`` must be this login's (constant-time comparison), ``iss`` (RFC 9207) must be
    ``issuer`` exactly when present, and present when ``iss_required``; then a provider
    ``error`` fails the login (``access_denied`` as :class:`LoginDenied`), and a ``code`` is
    to be exchanged.
    """
    if request.path == CANCEL_PATH:
        return Verdict(page=CANCELLED, error=LoginCancelled())
    if request.path != redirect_path:
        return Verdict(page=NOT_FOUND)
    if request.method != "GET":
        return Verdict(page=NOT_ALLOWED)
    params = request.params
    if not any(name in params for name in ("code", "error", "state")):
        return Verdict(page=NOT_A_RESPONSE)
    if "state" in request.repeated or not same_secret(state, params.get("state")):
        return Verdict(
            page=_failed(
                "This answer was not meant for the login that is waiting (its state does not "
                "match). Start the login again, in one tab."
            ),
            error=StateMismatch(),
        )
    repeated = request.repeated.intersection(_CALLBACK_PARAMS)
    if repeated:
        return Verdict(
            page=_failed("The provider's answer repeats a parameter."),
            error=LoginError(
                "The login redirect repeated a parameter; it was refused.",
                reason="invalid_callback",
            ),
        )
    iss = params.get("iss")
    if iss is not None and iss != issuer:
        return Verdict(
            page=_failed("The answer came from another issuer than the one this login uses."),
            error=IssuerMismatch(
                f"The login redirect's iss is not {issuer!r} (RFC 9207): refused, its code "
                "was not used (a mix-up attack, or a misconfigured client).",
                reason="issuer_mismatch",
            ),
        )
    if iss is None and iss_required:
        return Verdict(
            page=_failed("The provider's answer lacks its issuer (iss)."),
            error=IssuerMismatch(
                f"The login redirect carries no iss although {issuer!r} always sends one "
                "(RFC 9207): refused, its code was not used.",
                reason="issuer_missing",
            ),
        )
    if "error" in params:
        code, description = oauth_error(
            {"error": params["error"], "error_description": params.get("error_description")},
            (state,),
        )
        code = code or "unknown"
        error = provider_error(code, description, where="authorization endpoint")
        shown = f"{code}: {description}" if description else code
        return Verdict(page=_failed(f"The provider answered {shown}"), error=error)
    code_value = params.get("code")
    if code_value is None or token_problem(code_value) is not None:
        return Verdict(
            page=_failed("The provider's answer carries no usable code."),
            error=LoginError(
                "The login redirect carried no usable authorization code.",
                reason="invalid_callback",
            ),
        )
    return Verdict(code=code_value)


@attrs.frozen(kw_only=True)
class BrowserPlan:
    """Everything the browser flow decides with, fixed before it starts."""

    metadata: ProviderMetadata
    client_id: str
    scope: str
    redirect_uri: str
    redirect_path: str
    extra_params: Mapping[str, str] = attrs.field(repr=False)
    open_browser: bool
    finish: Finish
    events: EventLog


def browser_flow(plan: BrowserPlan) -> LoginFlow[LoginResult]:
    """The browser login as a flow of effects (see :mod:`._effects`)."""
    pkce = new_pkce()
    state = random_value()
    nonce = random_value() if "openid" in plan.scope.split() else None
    url = authorization_url(
        plan.metadata,
        client_id=plan.client_id,
        redirect_uri=plan.redirect_uri,
        scope=plan.scope,
        state=state,
        code_challenge=pkce.challenge,
        nonce=nonce,
        extra_params=plan.extra_params,
    )
    plan.events.emit("info", "authfsm.login.started", flow="browser", issuer=plan.metadata.issuer)
    opened = (yield OpenBrowser(url)) if plan.open_browser else False
    if opened:
        yield ShowText("Your browser was opened to log in; waiting for it to finish.")
    else:
        yield ShowText(f"To log in, open this address in a browser on this machine:\n\n  {url}\n")
    plan.events.emit("info", "authfsm.login.browser", opened=bool(opened))
    for _ in range(_MAX_REQUESTS):
        request = yield NextRequest()
        verdict = judge_callback(
            request,
            redirect_path=plan.redirect_path,
            state=state,
            issuer=plan.metadata.issuer,
            iss_required=plan.metadata.authorization_response_iss_parameter_supported,
        )
        if verdict.code is not None:
            code = verdict.code
            break
        assert verdict.page is not None
        yield AnswerRequest(verdict.page)
        if verdict.error is not None:
            raise verdict.error
        plan.events.emit("debug", "authfsm.login.request_ignored", status=verdict.page.status)
    else:
        raise LoginError(
            "Too many requests reached the login's loopback receiver without an answer from "
            "the provider; start the login again.",
            reason="too_many_requests",
        )
    outcome = yield RequestToken(
        "authorization_code",
        {"code": code, "redirect_uri": plan.redirect_uri, "code_verifier": pkce.verifier},
        secrets=(code, pkce.verifier, state),
    )
    try:
        result = yield from finish_flow(outcome, plan.finish, nonce=nonce)
    except LoginError as error:
        yield AnswerRequest(_failed(f"The login could not be completed ({error.reason})."))
        raise
    yield AnswerRequest(SUCCESS)
    plan.events.emit(
        "info",
        "authfsm.login.succeeded",
        flow="browser",
        issuer=plan.metadata.issuer,
        fingerprint=result.credentials.fingerprint,
        verified=result.identity is not None and result.identity.verified,
    )
    return result


def can_open_browser() -> bool:
    """
    Whether :func:`webbrowser.open` could show a graphical browser here: always on Windows and
    macOS; elsewhere only with ``$BROWSER`` set or a display (``$DISPLAY``,
    ``$WAYLAND_DISPLAY``), so an SSH session or a container gets the URL printed instead of a
    console browser taking over the terminal.
    """
    if sys.platform in ("win32", "darwin"):
        return True
    return any(os.environ.get(name) for name in ("BROWSER", "DISPLAY", "WAYLAND_DISPLAY"))


def _system_opener(url: str) -> bool:
    return can_open_browser() and webbrowser.open(url, new=1)


def _plan(
    metadata: ProviderMetadata,
    *,
    client_id: str,
    scope: str,
    port: int,
    redirect_path: str,
    extra_params: Mapping[str, str] | None,
    open_browser: bool,
    finish: Finish,
    events: EventLog,
) -> BrowserPlan:
    return BrowserPlan(
        metadata=metadata,
        client_id=client_id,
        scope=scope,
        redirect_uri=f"http://{LOOPBACK_HOST}:{port}{redirect_path}",
        redirect_path=redirect_path,
        extra_params=dict(extra_params or {}),
        open_browser=open_browser,
        finish=finish,
        events=events,
    )


def _check_arguments(
    metadata: ProviderMetadata,
    *,
    client_id: str,
    scope: str,
    redirect_path: str,
    extra_params: Mapping[str, str] | None,
    timeout: float,
) -> None:
    require_endpoint(metadata, "authorization_endpoint")
    methods = metadata.code_challenge_methods_supported
    if methods and "S256" not in methods:
        raise DiscoveryError(
            f"The provider {metadata.issuer!r} does not list PKCE S256, the only method this "
            "login uses.",
            reason="pkce_s256_unsupported",
        )
    if not isinstance(client_id, str) or not client_id:
        raise ValueError("client_id must be a non-empty string")
    if not isinstance(scope, str) or not scope.strip():
        raise ValueError("scope must be a non-empty string")
    if not redirect_path.startswith("/") or redirect_path == CANCEL_PATH or "?" in redirect_path:
        raise ValueError("redirect_path must be a path such as '/callback' (not '/cancel')")
    clashes = sorted(_RESERVED.intersection(extra_params or {}))
    if clashes:
        raise ValueError(f"extra_params may not set {', '.join(clashes)}")
    check_seconds("timeout", timeout)


def browser_login(
    metadata: ProviderMetadata,
    *,
    client_id: str,
    scope: str = "openid offline_access",
    ports: Sequence[int] = (0,),
    redirect_path: str = "/callback",
    timeout: float = 300.0,
    open_browser: bool = True,
    opener: Callable[[str], bool] | None = None,
    stream: IO[str] | None = None,
    extra_params: Mapping[str, str] | None = None,
    client_secret: str | None = None,
    client_auth: ClientAuth = "client_secret_basic",
    endpoint: OAuthTokenEndpoint | None = None,
    identity_check: IdentityCheck = "verify",
    jwks: JwksCache | Mapping[str, Any] | None = None,
    leeway: float = 60.0,
    http_timeout: float = 10.0,
    clock: Callable[[], float] | None = None,
    logger: Any = None,
) -> LoginResult:
    """
    Log in through the user's browser: authorization code + PKCE S256, loopback redirect.

    Binds 127.0.0.1 on the first of ``ports`` that is free (0: one the OS picks), opens the
    browser at the authorization URL (or prints it to ``stream`` when no browser can be
    opened), serves the redirect at ``http://127.0.0.1:{port}{redirect_path}``, checks it
    (:func:`judge_callback`), exchanges the code at the token endpoint, verifies the id_token,
    answers the browser and frees the port, whatever happens. Ctrl-C propagates
    (``KeyboardInterrupt``) after the port is freed; a request to ``/cancel`` raises
    :class:`LoginCancelled`.

    Args:
        metadata: from :func:`discover`.
        client_id: the OAuth client id (a native/public client as a rule).
        scope: the scopes to ask for; with ``openid`` a ``nonce`` is sent and checked.
        ports: ports to try in order; the provider must accept the redirect URI with the one
            bound (RFC 8252 §7.3: any port, for native clients), or register each fixed port.
        redirect_path: the redirect URI's path.
        timeout: seconds to wait for the browser's redirect (:class:`LoginTimeout`).
        open_browser: False never tries a browser: the URL is printed.
        opener: called with the URL, returns whether a browser opened (default:
            :func:`webbrowser.open`, not tried without a display: see :func:`can_open_browser`).
        stream: where the URL or a waiting notice is written (default ``sys.stderr``).
        extra_params: further authorization request parameters (``prompt``, ``audience``).
        client_secret: for a confidential client (``client_auth`` says how it is sent).
        endpoint: an :class:`~authfsm.adapters.OAuthTokenEndpoint` to exchange the code with
            (its ``client_id`` must match), instead of one built from the metadata.
        identity_check: ``"verify"`` (default) or ``"decode"`` (see :data:`IdentityCheck`).
        jwks: the key set (a :class:`JwksCache` or a JWK set dict); default: the metadata's
            ``jwks_uri``.
        leeway: clock skew tolerated on id_token times, in seconds.
        http_timeout: deadline of each HTTP exchange (token, JWKS), in seconds.
        clock: POSIX seconds for ``expires_at``/``last_refresh`` and id_token checks.
        logger: a structlog logger for ``authfsm.login.*`` events (default as the engine's).

    Raises:
        PortUnavailable, LoginTimeout, LoginCancelled, StateMismatch, IssuerMismatch,
        LoginDenied, ProviderError, TokenRequestFailed, IdTokenInvalid, DiscoveryError.
    """
    _check_arguments(
        metadata,
        client_id=client_id,
        scope=scope,
        redirect_path=redirect_path,
        extra_params=extra_params,
        timeout=timeout,
    )
    keys = keys_for(metadata, jwks, http_timeout=http_timeout)
    finish = finish_for(
        metadata,
        client_id=client_id,
        identity_check=identity_check,
        keys=keys,
        leeway=leeway,
        clock=clock,
    )
    events = EventLog(logger)
    with open_endpoint(
        metadata,
        client_id=client_id,
        client_secret=client_secret,
        client_auth=client_auth,
        http_timeout=http_timeout,
        endpoint=endpoint,
    ) as token_endpoint:
        listener = bind_loopback(ports)
        with LoopbackReceiver(listener, deadline=time.monotonic() + timeout) as receiver:
            plan = _plan(
                metadata,
                client_id=client_id,
                scope=scope,
                port=receiver.port,
                redirect_path=redirect_path,
                extra_params=extra_params,
                open_browser=open_browser,
                finish=finish,
                events=events,
            )
            io = SyncIO(
                endpoint=token_endpoint,
                receiver=receiver,
                keys=keys,
                opener=opener or _system_opener,
                stream=stream if stream is not None else sys.stderr,
            )
            return drive(browser_flow(plan), io, events=events, name="browser")


async def browser_login_async(
    metadata: ProviderMetadata,
    *,
    client_id: str,
    scope: str = "openid offline_access",
    ports: Sequence[int] = (0,),
    redirect_path: str = "/callback",
    timeout: float = 300.0,
    open_browser: bool = True,
    opener: Callable[[str], bool] | None = None,
    stream: IO[str] | None = None,
    extra_params: Mapping[str, str] | None = None,
    client_secret: str | None = None,
    client_auth: ClientAuth = "client_secret_basic",
    endpoint: OAuthTokenEndpoint | None = None,
    identity_check: IdentityCheck = "verify",
    jwks: JwksCache | Mapping[str, Any] | None = None,
    leeway: float = 60.0,
    http_timeout: float = 10.0,
    clock: Callable[[], float] | None = None,
    logger: Any = None,
    client: httpx.AsyncClient | None = None,
) -> LoginResult:
    """
    :func:`browser_login` with asyncio: the redirect is awaited on an asyncio server and HTTP
    goes through ``client`` (or short-lived ``AsyncClient``\\ s), so the event loop is never
    blocked (the browser opener runs in a thread). Cancelling the task stops the login and
    frees the port.
    """
    _check_arguments(
        metadata,
        client_id=client_id,
        scope=scope,
        redirect_path=redirect_path,
        extra_params=extra_params,
        timeout=timeout,
    )
    keys = keys_for(metadata, jwks, http_timeout=http_timeout)
    finish = finish_for(
        metadata,
        client_id=client_id,
        identity_check=identity_check,
        keys=keys,
        leeway=leeway,
        clock=clock,
    )
    events = EventLog(logger)
    with open_endpoint(
        metadata,
        client_id=client_id,
        client_secret=client_secret,
        client_auth=client_auth,
        http_timeout=http_timeout,
        endpoint=endpoint,
    ) as token_endpoint:
        listener = bind_loopback(ports)
        receiver = AsyncLoopbackReceiver(listener, deadline=time.monotonic() + timeout)
        try:
            await receiver.start()
            plan = _plan(
                metadata,
                client_id=client_id,
                scope=scope,
                port=receiver.port,
                redirect_path=redirect_path,
                extra_params=extra_params,
                open_browser=open_browser,
                finish=finish,
                events=events,
            )
            io = AsyncIO(
                endpoint=token_endpoint,
                client=client,
                receiver=receiver,
                keys=keys,
                opener=opener or _system_opener,
                stream=stream if stream is not None else sys.stderr,
            )
            return await drive_async(browser_flow(plan), io, events=events, name="browser")
        finally:
            await receiver.close()
