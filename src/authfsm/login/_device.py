"""
Device login: the OAuth 2.0 Device Authorization Grant (RFC 8628), for machines without a
browser (SSH sessions, containers, TVs).

This module owns reading the device authorization response (:func:`parse_device_authorization`),
what the user is shown (:class:`DevicePrompt`, with a phishing warning), and the polling rules,
in the manner of golang.org/x/oauth2's ``deviceauth.go``: poll every ``interval`` seconds (5 when
the provider gives none) plus a little jitter; ``authorization_pending`` keeps polling;
``slow_down`` adds 5 seconds to this and every later interval; ``access_denied`` and
``expired_token`` end the login; the deadline is ``expires_in``; a network failure or 5xx doubles
the interval (RFC 8628 §3.5) and polling goes on until the deadline. It must never show, log or
raise with the device code or the tokens; the user code is shown only to the user, through the
prompt.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import IO, Any
from urllib.parse import urlsplit

import attrs
import httpx

from ..adapters._endpoint import ClientAuth, OAuthTokenEndpoint, Reply, oauth_error
from ..engine._credentials import token_problem
from ..engine._events import EventLog
from ..engine._ports import PermanentFailure, TransientFailure
from ._client import check_seconds, finish_for, keys_for, open_endpoint, require_endpoint
from ._discovery import ProviderMetadata
from ._effects import (
    AsyncIO,
    LoginFlow,
    PostForm,
    RequestToken,
    ShowPrompt,
    Sleep,
    SyncIO,
    drive,
    drive_async,
)
from ._errors import LoginTimeout, TokenRequestFailed
from ._id_token import JwksCache
from ._result import Finish, IdentityCheck, LoginResult, finish_flow, provider_error

__all__ = [
    "DEVICE_CODE_GRANT",
    "DeviceAuthorization",
    "DevicePrompt",
    "device_login",
    "device_login_async",
    "parse_device_authorization",
]

#: The RFC 8628 grant type polled at the token endpoint.
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
#: The polling interval when the provider gives none (RFC 8628 §3.2).
DEFAULT_INTERVAL = 5.0
#: What ``slow_down`` adds to the interval, for good (RFC 8628 §3.5).
SLOW_DOWN_STEP = 5.0
#: The shortest interval honoured: a provider's ``0`` must not become a busy loop.
MIN_INTERVAL = 1.0
#: The interval a run of network failures doubles up to.
MAX_BACKOFF_INTERVAL = 60.0
#: The lifetime assumed when the provider omits ``expires_in`` (as MSAL does).
DEFAULT_EXPIRES_IN = 1800.0
#: The longest lifetime honoured: a day.
MAX_EXPIRES_IN = 86400.0
_MAX_USER_CODE = 64

PHISHING_WARNING = (
    "Never share this code. Device codes are a common phishing target: enter it only if you "
    "started this login yourself."
)


@attrs.frozen(kw_only=True)
class DeviceAuthorization:
    """
    The provider's answer to a device authorization request (RFC 8628 §3.2).

    Attributes:
        device_code: polled with; a secret, never shown.
        user_code: for the user to enter at ``verification_uri``.
        verification_uri: where the user goes.
        verification_uri_complete: the same with the user code in it, if given.
        expires_in: seconds the codes live (``DEFAULT_EXPIRES_IN`` when not given).
        interval: seconds between polls (5 when not given, at least 1).
    """

    device_code: str = attrs.field(repr=False)
    user_code: str = attrs.field(repr=False)
    verification_uri: str
    verification_uri_complete: str | None = attrs.field(default=None, repr=False)
    expires_in: float
    interval: float


@attrs.frozen(kw_only=True)
class DevicePrompt:
    """
    What to show the user of a device login; the default callback writes :attr:`message`.

    Attributes:
        verification_uri: where to go.
        verification_uri_complete: the address with the code filled in, when the provider
            gives one (show it, or a QR code of it, first).
        user_code: the code to enter (or to check against the one shown).
        expires_in: seconds left to do it.
        message: all of that as text, with the phishing warning.
    """

    verification_uri: str
    verification_uri_complete: str | None = attrs.field(repr=False)
    user_code: str = attrs.field(repr=False)
    expires_in: float
    message: str = attrs.field(repr=False)


def _invalid(field: str) -> TokenRequestFailed:
    return TokenRequestFailed(
        f"The provider's device authorization answer has no usable {field}.",
        reason=f"invalid_response:{field}",
    )


def _shown_url(value: object) -> str | None:
    """``value`` if it is an http(s) URL safe to print on a terminal (no control characters)."""
    if not isinstance(value, str) or not value.isprintable() or " " in value:
        return None
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    return value if parts.scheme in {"http", "https"} and parts.hostname else None


def _seconds(value: object, default: float) -> float | None:
    """A positive finite number (or numeric string) of seconds; ``default`` when absent."""
    if value is None:
        return default
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    seconds = float(value)
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def _document(body: bytes | None) -> Any:
    try:
        return json.loads(body or b"")
    except (ValueError, RecursionError):
        return None


def parse_device_authorization(reply: Reply | TransientFailure) -> DeviceAuthorization:
    """
    The :class:`DeviceAuthorization` in a reply of the device authorization endpoint.

    An OAuth error answered below 500 raises the matching :class:`ProviderError`; a network
    failure, a 5xx or 429 without a code, or a malformed answer raises
    :class:`TokenRequestFailed`. The user code and URLs must be printable (no control
    characters: they are shown on a terminal); ``verification_url`` (Google's older name) is
    accepted for ``verification_uri``.
    """
    if isinstance(reply, TransientFailure):
        raise TokenRequestFailed(
            f"The device authorization request failed ({reply.reason}); try again.",
            reason=reply.reason,
        )
    document = None if reply.problem is not None else _document(reply.body)
    if not 200 <= reply.status < 300:
        code, description = oauth_error(document)
        if code is not None and reply.status < 500:
            raise provider_error(code, description, where="device authorization endpoint")
        raise TokenRequestFailed(
            f"The device authorization request failed (HTTP {reply.status}); try again.",
            reason=f"http_{reply.status}",
        )
    if reply.problem is not None:
        raise TokenRequestFailed(
            f"The device authorization answer could not be read ({reply.problem}).",
            reason=reply.problem,
        )
    if not isinstance(document, dict):
        raise _invalid("JSON object")
    device_code = document.get("device_code")
    if not isinstance(device_code, str) or token_problem(device_code) is not None:
        raise _invalid("device_code")
    user_code = document.get("user_code")
    if (
        not isinstance(user_code, str)
        or not 0 < len(user_code) <= _MAX_USER_CODE
        or not user_code.isprintable()
    ):
        raise _invalid("user_code")
    uri = _shown_url(document.get("verification_uri", document.get("verification_url")))
    if uri is None:
        raise _invalid("verification_uri")
    complete = None
    if document.get("verification_uri_complete") is not None:
        complete = _shown_url(document["verification_uri_complete"])
        if complete is None:
            raise _invalid("verification_uri_complete")
    expires_in = _seconds(document.get("expires_in"), DEFAULT_EXPIRES_IN)
    if expires_in is None:
        raise _invalid("expires_in")
    interval = _seconds(document.get("interval"), DEFAULT_INTERVAL)
    if interval is None:
        raise _invalid("interval")
    return DeviceAuthorization(
        device_code=device_code,
        user_code=user_code,
        verification_uri=uri,
        verification_uri_complete=complete,
        expires_in=min(expires_in, MAX_EXPIRES_IN),
        interval=max(interval, MIN_INTERVAL),
    )


def device_prompt(authorization: DeviceAuthorization) -> DevicePrompt:
    """What to show the user for ``authorization``."""
    minutes = max(1, math.floor(authorization.expires_in / 60))
    complete = authorization.verification_uri_complete
    if complete is not None:
        steps = (
            f"To log in, open {complete} in a browser\n"
            f"and check that it shows the code {authorization.user_code}\n"
            f"(or open {authorization.verification_uri} and enter the code)."
        )
    else:
        steps = (
            f"To log in, open {authorization.verification_uri} in a browser\n"
            f"and enter the code {authorization.user_code}"
        )
    message = f"{steps}\nThe code expires in {minutes} minutes.\n{PHISHING_WARNING}"
    return DevicePrompt(
        verification_uri=authorization.verification_uri,
        verification_uri_complete=complete,
        user_code=authorization.user_code,
        expires_in=authorization.expires_in,
        message=message,
    )


@attrs.frozen(kw_only=True)
class DevicePlan:
    """Everything the device flow decides with, fixed before it starts."""

    metadata: ProviderMetadata
    device_endpoint: str
    params: Mapping[str, str] = attrs.field(repr=False)
    timeout: float | None
    jitter: float
    random: Callable[[], float]
    finish: Finish
    events: EventLog


def device_flow(plan: DevicePlan) -> LoginFlow[LoginResult]:
    """The device login as a flow of effects (see :mod:`._effects`)."""
    clock = plan.finish.clock
    plan.events.emit("info", "authfsm.login.started", flow="device", issuer=plan.metadata.issuer)
    reply = yield PostForm(plan.device_endpoint, plan.params)
    authorization = parse_device_authorization(reply)
    yield ShowPrompt(device_prompt(authorization))
    lifetime = authorization.expires_in
    if plan.timeout is not None:
        lifetime = min(lifetime, plan.timeout)
    deadline = clock() + lifetime
    interval = authorization.interval
    retry_after = 0.0
    # Every poll waits at least MIN_INTERVAL of the clock, so this bounds the loop even when a
    # clock does not move.
    for _ in range(math.ceil(lifetime / MIN_INTERVAL) + 1):
        wait = max(interval, retry_after) + plan.jitter * plan.random()
        # A poll at the deadline would only learn that the code expired.
        if clock() + wait >= deadline:
            break
        yield Sleep(wait)
        outcome = yield RequestToken(
            DEVICE_CODE_GRANT,
            {"device_code": authorization.device_code},
            secrets=(authorization.device_code,),
        )
        retry_after = 0.0
        if isinstance(outcome, PermanentFailure) and outcome.code == "authorization_pending":
            plan.events.emit("debug", "authfsm.login.device.pending", interval=interval)
            continue
        if isinstance(outcome, PermanentFailure) and outcome.code == "slow_down":
            interval += SLOW_DOWN_STEP
            plan.events.emit("info", "authfsm.login.device.slow_down", interval=interval)
            continue
        if isinstance(outcome, TransientFailure):
            interval = min(interval * 2, max(MAX_BACKOFF_INTERVAL, interval))
            retry_after = outcome.retry_after or 0.0
            plan.events.emit(
                "warning",
                "authfsm.login.device.transient",
                reason=outcome.reason,
                interval=interval,
            )
            continue
        result = yield from finish_flow(outcome, plan.finish, nonce=None)
        plan.events.emit(
            "info",
            "authfsm.login.succeeded",
            flow="device",
            issuer=plan.metadata.issuer,
            fingerprint=result.credentials.fingerprint,
            verified=result.identity is not None and result.identity.verified,
        )
        return result
    raise LoginTimeout(
        f"The device login was not approved within {lifetime:.0f} seconds; start it again."
    )


def _writer(stream: IO[str] | None) -> Callable[[DevicePrompt], None]:
    def show(prompt: DevicePrompt) -> None:
        out = stream if stream is not None else sys.stderr
        out.write(prompt.message + "\n")
        out.flush()

    return show


def _plan(
    metadata: ProviderMetadata,
    *,
    client_id: str,
    scope: str | None,
    extra_params: Mapping[str, str] | None,
    timeout: float | None,
    jitter: float,
    finish: Finish,
    events: EventLog,
) -> DevicePlan:
    device_endpoint = require_endpoint(metadata, "device_authorization_endpoint")
    if not isinstance(client_id, str) or not client_id:
        raise ValueError("client_id must be a non-empty string")
    check_seconds("timeout", timeout, allow_none=True)
    if isinstance(jitter, bool) or not isinstance(jitter, int | float) or not 0 <= jitter <= 60:
        raise ValueError("jitter must be a number of seconds from 0 to 60")
    params = dict(extra_params or {})
    if "scope" in params or "device_code" in params:
        raise ValueError("extra_params may not set scope or device_code")
    if scope is not None:
        params["scope"] = scope
    # Jitter only spreads polls out; it needs no cryptographic randomness.
    rng = random.Random()  # noqa: S311
    return DevicePlan(
        metadata=metadata,
        device_endpoint=device_endpoint,
        params=params,
        timeout=timeout,
        jitter=float(jitter),
        random=rng.random,
        finish=finish,
        events=events,
    )


def device_login(
    metadata: ProviderMetadata,
    *,
    client_id: str,
    scope: str | None = "openid offline_access",
    on_prompt: Callable[[DevicePrompt], None] | None = None,
    stream: IO[str] | None = None,
    timeout: float | None = None,
    extra_params: Mapping[str, str] | None = None,
    client_secret: str | None = None,
    client_auth: ClientAuth = "client_secret_basic",
    endpoint: OAuthTokenEndpoint | None = None,
    identity_check: IdentityCheck = "verify",
    jwks: JwksCache | Mapping[str, Any] | None = None,
    leeway: float = 60.0,
    http_timeout: float = 10.0,
    jitter: float = 1.0,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
    logger: Any = None,
) -> LoginResult:
    """
    Log in with a code the user enters on another device (RFC 8628).

    Asks the provider's ``device_authorization_endpoint`` for codes, hands a
    :class:`DevicePrompt` (address, user code, phishing warning) to ``on_prompt`` (default:
    write its message to ``stream``, itself ``sys.stderr`` by default), then polls the token
    endpoint until the user approves (see the module for the rules), verifies the id_token and
    returns the result.

    Args:
        metadata: from :func:`discover`.
        client_id: the OAuth client id.
        scope: the scopes to ask for (None sends none).
        on_prompt: called once with what to show the user.
        stream: where the default ``on_prompt`` writes.
        timeout: seconds to wait at most, below the provider's ``expires_in``.
        extra_params: further device authorization request parameters (``audience``).
        client_secret, client_auth, endpoint, identity_check: as for :func:`browser_login`.
        jwks, leeway, http_timeout, clock, logger: as for :func:`browser_login`.
        jitter: up to this many seconds are added at random to each wait.
        sleep: how to wait (default :func:`time.sleep`); with ``clock``, lets a test run a
            whole login without waiting.

    Raises:
        LoginTimeout (``expires_in`` or ``timeout`` passed), LoginDenied, DeviceCodeExpired,
        ProviderError, TokenRequestFailed, IdTokenInvalid, DiscoveryError.
    """
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
    plan = _plan(
        metadata,
        client_id=client_id,
        scope=scope,
        extra_params=extra_params,
        timeout=timeout,
        jitter=jitter,
        finish=finish,
        events=events,
    )
    with open_endpoint(
        metadata,
        client_id=client_id,
        client_secret=client_secret,
        client_auth=client_auth,
        http_timeout=http_timeout,
        endpoint=endpoint,
    ) as token_endpoint:
        io = SyncIO(
            endpoint=token_endpoint,
            keys=keys,
            on_prompt=on_prompt or _writer(stream),
            sleep=sleep or time.sleep,
        )
        return drive(device_flow(plan), io, events=events, name="device")


async def device_login_async(
    metadata: ProviderMetadata,
    *,
    client_id: str,
    scope: str | None = "openid offline_access",
    on_prompt: Callable[[DevicePrompt], None] | None = None,
    stream: IO[str] | None = None,
    timeout: float | None = None,
    extra_params: Mapping[str, str] | None = None,
    client_secret: str | None = None,
    client_auth: ClientAuth = "client_secret_basic",
    endpoint: OAuthTokenEndpoint | None = None,
    identity_check: IdentityCheck = "verify",
    jwks: JwksCache | Mapping[str, Any] | None = None,
    leeway: float = 60.0,
    http_timeout: float = 10.0,
    jitter: float = 1.0,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    logger: Any = None,
    client: httpx.AsyncClient | None = None,
) -> LoginResult:
    """
    :func:`device_login` with asyncio: waits with ``asyncio.sleep`` (or ``sleep``) and sends
    through ``client`` (or short-lived ``AsyncClient``\\ s); cancelling the task stops polling.
    """
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
    plan = _plan(
        metadata,
        client_id=client_id,
        scope=scope,
        extra_params=extra_params,
        timeout=timeout,
        jitter=jitter,
        finish=finish,
        events=events,
    )
    with open_endpoint(
        metadata,
        client_id=client_id,
        client_secret=client_secret,
        client_auth=client_auth,
        http_timeout=http_timeout,
        endpoint=endpoint,
    ) as token_endpoint:
        io = AsyncIO(
            endpoint=token_endpoint,
            client=client,
            keys=keys,
            on_prompt=on_prompt or _writer(stream),
            sleep=sleep,
        )
        return await drive_async(device_flow(plan), io, events=events, name="device")
