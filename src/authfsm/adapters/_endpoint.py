"""
The OAuth token endpoint adapter: spends a refresh token over HTTP and classifies the outcome.

This module owns the wire protocol of RFC 6749 §6 (refresh), RFC 7009 (revoke) and of the other
grants a login needs (§4.1.3 authorization code, RFC 8628 device code: ``request_token``), and the
rules that turn every reply, hostile or not, into a :class:`Refreshed`, :class:`TransientFailure` or
:class:`PermanentFailure`. It must not raise for a network or HTTP problem, must not adopt a
malformed reply, and must never put token material or the client secret into a reason, code,
description or repr.

Request building (:func:`build_refresh_request`, :func:`build_revoke_request`,
:func:`build_grant_request`, :func:`build_get_request`), body reading (:class:`CappedBody`) and
classification (:func:`classify_refresh`, :func:`classify_grant`, :func:`parse_retry_after`) are
pure and shared by the sync and async paths; only the loops that move bytes differ (:func:`send`,
:func:`send_async`, also used by login discovery and JWKS fetches), and how each holds the whole
exchange to one deadline (:class:`Watchdog` for sync, ``asyncio.timeout`` for async).

Those loops run on a client of either family, ``httpx`` (the default, a dependency) or
``httpx2`` (optional, never imported here): which exceptions an exchange can raise comes from
:mod:`authfsm.engine._http_family`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import json
import math
import re
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import quote, quote_plus, urlencode

import attrs
import httpx

from ..engine._credentials import Credentials, token_problem
from ..engine._http_family import family_of, http_errors, request_errors, sync_client_family
from ..engine._ports import (
    MAX_EXPIRES_IN,
    PERMANENT_ERROR_CODES,
    PermanentFailure,
    Refreshed,
    RefreshOutcome,
    TransientFailure,
)
from ._redact import REDACTED, redact_url

if TYPE_CHECKING:
    from ..engine._http_family import AnyResponse, AsyncClient, SyncClient

# The pure pieces below are public within this private module so tests can drive them directly.
__all__ = ["OAuthTokenEndpoint"]

ClientAuth = Literal["client_secret_basic", "client_secret_post"]
BodyFormat = Literal["form", "json"]

#: Parameters the adapter writes itself; ``extra_params`` may not override them.
_RESERVED_PARAMS = frozenset(
    {
        "grant_type",
        "refresh_token",
        "client_id",
        "client_secret",
        "scope",
        "token",
        "token_type_hint",
    }
)
_CODE_CHARS = re.compile(r"[a-z0-9_.-]+")
_DIGITS = re.compile(r"[0-9]+")
_NUMERIC = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_MAX_CODE = 64
_MAX_DESCRIPTION = 200
#: What a run past the endpoint's overall deadline is reported as: httpx's name for a server too
#: slow to answer, which is what it is wherever in the exchange it happens.
DEADLINE_REASON = "network:ReadTimeout"

_T = TypeVar("_T")
#: httpcore's ``trace`` request extension: called with an event name and its details.
Trace = Callable[[str, Mapping[str, Any]], None]


def _optional_url(url: str | None) -> str:
    return "None" if url is None else repr(redact_url(url))


def _names_only(mapping: Mapping[str, str]) -> str:
    return repr(sorted(mapping))


@attrs.frozen(kw_only=True)
class PreparedRequest:
    """One request to send: everything but the transport. Headers and body may hold secrets."""

    url: str = attrs.field(repr=_optional_url)
    headers: Mapping[str, str] = attrs.field(repr=False)
    content: bytes = attrs.field(repr=False)
    method: Literal["GET", "POST"] = "POST"


@attrs.frozen(kw_only=True)
class Reply:
    """
    What came back, reduced to what classification needs.

    Attributes:
        status: the HTTP status.
        retry_after: the raw ``Retry-After`` header, if any.
        body: the (decoded) body, or None when :attr:`problem` says why it is unusable.
        problem: ``"response_too_large"`` or ``"invalid_response:content_encoding"``, else None.
    """

    status: int
    retry_after: str | None = None
    body: bytes | None = attrs.field(default=None, repr=False)
    problem: str | None = None


@attrs.frozen(kw_only=True)
class EndpointSettings:
    """
    Everything a request is built from; fixed when the endpoint is made.

    The repr shows URLs without userinfo or query values, and only the names of extra parameters
    and headers: any of them may carry a secret.
    """

    token_url: str = attrs.field(repr=_optional_url)
    client_id: str
    client_secret: str | None = attrs.field(repr=False)
    client_auth: ClientAuth
    body_format: BodyFormat
    scope: str | None
    extra_params: Mapping[str, str] = attrs.field(repr=_names_only)
    revoke_url: str | None = attrs.field(repr=_optional_url)
    headers: Mapping[str, str] = attrs.field(repr=_names_only)


# -- request building ------------------------------------------------------------------------


def _basic_credentials(client_id: str, client_secret: str) -> str:
    # RFC 6749 §2.3.1: form-urlencode both parts *before* base64, so ':' and non-ASCII survive.
    pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
    return "Basic " + base64.b64encode(pair.encode("ascii")).decode("ascii")


def _prepare(settings: EndpointSettings, url: str, params: dict[str, str]) -> PreparedRequest:
    # Protocol headers replace the caller's (case-insensitively); the caller's others pass.
    headers = httpx.Headers(settings.headers)
    headers["Accept"] = "application/json"
    # The response is tiny; asking for identity keeps the size cap about bytes on the wire.
    headers["Accept-Encoding"] = "identity"
    params["client_id"] = settings.client_id
    if settings.client_secret is not None:
        if settings.client_auth == "client_secret_basic":
            headers["Authorization"] = _basic_credentials(
                settings.client_id, settings.client_secret
            )
        else:
            params["client_secret"] = settings.client_secret
    if settings.body_format == "json":
        headers["Content-Type"] = "application/json"
        content = json.dumps(params, separators=(",", ":")).encode("utf-8")
    else:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        content = urlencode(params).encode("ascii")
    return PreparedRequest(url=url, headers=dict(headers.items()), content=content)


def build_refresh_request(settings: EndpointSettings, refresh_token: str) -> PreparedRequest:
    """The RFC 6749 §6 refresh request for ``refresh_token``."""
    params = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if settings.scope is not None:
        params["scope"] = settings.scope
    params.update(settings.extra_params)
    return _prepare(settings, settings.token_url, params)


#: Parameters a grant request may not set through ``params``: the adapter writes them itself.
_GRANT_RESERVED = frozenset({"grant_type", "client_id", "client_secret"})


def build_grant_request(
    settings: EndpointSettings, grant_type: str, params: Mapping[str, str]
) -> PreparedRequest:
    """
    A token request for any grant (RFC 6749 §4.1.3 ``authorization_code``, RFC 8628
    ``urn:ietf:params:oauth:grant-type:device_code``, ...), with the client's authentication.

    ``params`` are the grant's own parameters; ``grant_type``, ``client_id`` and ``client_secret``
    are written by the adapter (``ValueError`` if ``params`` sets them). The endpoint's ``scope``
    and ``extra_params`` belong to refresh requests and are not added.
    """
    if not isinstance(grant_type, str) or not grant_type:
        raise ValueError("grant_type must be a non-empty string")
    clashes = sorted(_GRANT_RESERVED.intersection(params))
    if clashes:
        raise ValueError(f"params may not set {', '.join(clashes)}")
    return _prepare(settings, settings.token_url, {"grant_type": grant_type, **params})


def build_form_request(
    settings: EndpointSettings, url: str, params: Mapping[str, str]
) -> PreparedRequest:
    """
    A client-authenticated POST of ``params`` to another endpoint of the same provider (the RFC
    8628 device authorization endpoint), in the endpoint's body format.
    """
    clashes = sorted({"client_id", "client_secret"}.intersection(params))
    if clashes:
        raise ValueError(f"params may not set {', '.join(clashes)}")
    return _prepare(settings, url, dict(params))


def build_get_request(url: str, headers: Mapping[str, str] | None = None) -> PreparedRequest:
    """A GET of a JSON document (discovery metadata, a JWKS), uncompressed so the cap is exact."""
    merged = httpx.Headers(headers or {})
    merged["Accept"] = "application/json"
    merged["Accept-Encoding"] = "identity"
    return PreparedRequest(url=url, headers=dict(merged.items()), content=b"", method="GET")


def build_revoke_request(
    settings: EndpointSettings, revoke_url: str, credentials: Credentials
) -> PreparedRequest:
    """The RFC 7009 revocation request: the refresh token if there is one, else the access token."""
    if credentials.refresh_token is not None:
        params = {"token": credentials.refresh_token, "token_type_hint": "refresh_token"}
    else:
        params = {"token": credentials.access_token, "token_type_hint": "access_token"}
    return _prepare(settings, revoke_url, params)


# -- body reading ----------------------------------------------------------------------------


class CappedBody:
    """
    Collects a response body, keeping at most ``cap`` decoded bytes.

    Fed raw chunks from the wire; decodes ``gzip``/``deflate`` itself with a bounded
    decompressor so a small compressed body cannot expand past the cap. Holds at most ``cap``
    bytes plus the raw chunk being fed.
    """

    def __init__(self, cap: int, content_encoding: str | None = None) -> None:
        self._cap = cap
        self._parts: list[bytes] = []
        self._size = 0
        self.problem: str | None = None
        encoding = (content_encoding or "identity").strip().lower()
        self._inflate: Any = None
        if encoding in {"gzip", "x-gzip", "deflate"}:
            # 32 + MAX_WBITS accepts both gzip and zlib headers.
            self._inflate = zlib.decompressobj(32 + zlib.MAX_WBITS)
        elif encoding not in {"", "identity"}:
            self.problem = "invalid_response:content_encoding"

    @property
    def done(self) -> bool:
        """True once the body is known to be unusable: stop reading."""
        return self.problem is not None

    def declare_length(self, content_length: str | None) -> None:
        """Give up before reading when an uncompressed body announces more than the cap."""
        if self._inflate is None and content_length is not None:
            length = content_length.strip()
            if _DIGITS.fullmatch(length) and int(length) > self._cap:
                self.problem = "response_too_large"

    def feed(self, chunk: bytes) -> None:
        """Add one raw chunk; sets :attr:`problem` when the body goes over the cap."""
        if self.done or not chunk:
            return
        if self._inflate is not None:
            try:
                # Never inflate more than one byte past the cap.
                chunk = self._inflate.decompress(chunk, self._cap - self._size + 1)
            except zlib.error:
                self.problem = "invalid_response:content_encoding"
                return
            if self._inflate.unconsumed_tail:
                self.problem = "response_too_large"
                return
        self._size += len(chunk)
        if self._size > self._cap:
            self.problem = "response_too_large"
            self._parts.clear()
            return
        self._parts.append(chunk)

    def reply(self, status: int, retry_after: str | None) -> Reply:
        """The finished :class:`Reply`."""
        if self.done:
            return Reply(status=status, retry_after=retry_after, problem=self.problem)
        return Reply(status=status, retry_after=retry_after, body=b"".join(self._parts))


# -- classification --------------------------------------------------------------------------


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """
    Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date.

    A date in the past gives 0; anything unparseable gives None.
    """
    if value is None:
        return None
    text = value.strip()
    if _DIGITS.fullmatch(text):
        seconds = float(text)
        return seconds if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _secret_forms(secrets: Iterable[str | None]) -> list[str]:
    forms: set[str] = set()
    for secret in secrets:
        if secret:
            # Servers sometimes echo the form-encoded value they received.
            forms.update({secret, quote(secret, safe=""), quote_plus(secret)})
    # Longest first, so a secret containing another is redacted whole.
    return sorted(forms, key=len, reverse=True)


def _redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


def _mentions_secret(code: str, secrets: list[str]) -> bool:
    for secret in secrets:
        lowered = secret.lower()
        # A truncated code may be a fragment of a token, not the whole of it.
        if lowered in code or (len(code) >= 8 and code in lowered):
            return True
    return False


class _NonFinite:
    """Stands in for the non-JSON literals ``NaN`` and ``Infinity``: never a valid value."""


def _non_finite(_literal: str) -> _NonFinite:
    return _NonFinite()


def _load_json(body: bytes | None) -> Any:
    if not body:
        return None
    try:
        # A float that still comes out infinite is then a finite numeral too big for a float.
        return json.loads(body, parse_constant=_non_finite)
    # RecursionError: a deeply nested document fits easily under the size cap.
    except (ValueError, RecursionError):
        return None


def _error_code(document: Any, secrets: list[str]) -> str | None:
    if not isinstance(document, dict):
        return None
    error = document.get("error")
    raw: str | None = None
    if isinstance(error, str):
        raw = error
    elif isinstance(error, dict) and isinstance(nested := error.get("code"), str):
        raw = nested
    elif isinstance(top := document.get("code"), str):
        raw = top
    if not raw:
        return None
    code = raw.strip().lower()[:_MAX_CODE]
    if not _CODE_CHARS.fullmatch(code) or _mentions_secret(code, secrets):
        return "unknown"
    return code


def _error_description(document: Any, secrets: list[str]) -> str | None:
    if not isinstance(document, dict):
        return None
    text = document.get("error_description")
    error = document.get("error")
    if not isinstance(text, str) and isinstance(error, dict):
        text = error.get("message")  # the shape OpenAI and others use
    if not isinstance(text, str) or not text:
        return None
    # Redact before truncating, or a token cut at the limit would escape as a fragment.
    text = _redact(text, secrets)
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text[:_MAX_DESCRIPTION]


def oauth_error(document: Any, secrets: Iterable[str | None] = ()) -> tuple[str | None, str | None]:
    """
    The OAuth ``error`` code and ``error_description`` of a document, safe to show: the code
    lower case within ``[a-z0-9_.-]`` (else ``"unknown"``), the description printable, with
    ``secrets`` redacted, cut to 200 characters. ``(None, None)`` when there is no error.
    """
    forms = _secret_forms(secrets)
    return _error_code(document, forms), _error_description(document, forms)


def _expires_in(value: Any) -> float | Literal[False] | None:
    """
    The lifetime in seconds; None when absent or absurd, False when malformed.

    Absurd means a number beyond :data:`~authfsm.engine._ports.MAX_EXPIRES_IN` (ten years),
    however large (``2**63-1``, ``1e300``, ``1e999``): the tokens are still adopted, with no expiry
    known, because refusing them would lose a rotation the server has already made. Malformed
    means not a positive number (or numeric string): zero, negative, ``NaN``, a word.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not _NUMERIC.fullmatch(text):
            return False
        # A numeral too long for a float comes out infinite: finite, but absurd.
        value = float(text)
    elif isinstance(value, bool) or not isinstance(value, int | float):
        return False
    # Comparisons, not float(): exact for an int of any size, and false for NaN.
    if not value > 0:
        return False
    if value > MAX_EXPIRES_IN:
        return None
    return float(value)


def _success(document: Any, status: int) -> RefreshOutcome:
    def invalid(what: str) -> TransientFailure:
        return TransientFailure(reason=f"invalid_response:{what}", status=status)

    if not isinstance(document, dict):
        return invalid("not_json" if document is None else "not_object")
    access_token = document.get("access_token")
    # The same rule Credentials applies, so nothing adopted here can fail there after a rotation.
    if not isinstance(access_token, str) or token_problem(access_token) is not None:
        return invalid("access_token")
    optional: dict[str, str | None] = {}
    for name in ("refresh_token", "id_token"):
        value = document.get(name)
        if value is not None and token_problem(value) is not None:
            return invalid(name)
        optional[name] = value
    expires_in = _expires_in(document.get("expires_in"))
    if expires_in is False:
        return invalid("expires_in")
    return Refreshed(
        access_token=access_token,
        refresh_token=optional["refresh_token"],
        id_token=optional["id_token"],
        expires_in=expires_in,
    )


def classify_refresh(
    reply: Reply,
    *,
    credentials: Credentials,
    client_secret: str | None = None,
    permanent_codes: frozenset[str] = PERMANENT_ERROR_CODES,
    now: datetime,
) -> RefreshOutcome:
    """
    Turn a token endpoint reply into an outcome; never raises, never adopts a malformed body.

    Permanent iff the status is 401 or the error code is in ``permanent_codes`` (at any status,
    including a 2xx that carries an ``error`` and no ``access_token``). Everything else that is
    not a well-formed 2xx is transient. Well-formed means a JSON object whose tokens pass
    :func:`~authfsm.engine._credentials.token_problem` (a token with CR, LF or NUL, or only
    whitespace, is ``invalid_response:<field>``) and whose ``expires_in``, if any, is a positive
    number; one beyond ten years is adopted as "no expiry known" (see :func:`_expires_in`).
    """
    secrets = _secret_forms(
        (
            credentials.access_token,
            credentials.refresh_token,
            credentials.id_token,
            client_secret,
        )
    )

    def final(code: str | None, status: int) -> bool:
        return status == 401 or (code is not None and code in permanent_codes)

    return _classify_token_reply(reply, secrets=secrets, final=final, now=now)


def classify_grant(
    reply: Reply, *, secrets: Iterable[str | None] = (), now: datetime
) -> RefreshOutcome:
    """
    Turn the token endpoint's reply to a grant other than refresh into an outcome; never raises.

    What an error code means is the caller's business here (``authorization_pending`` keeps a
    device login polling, ``invalid_grant`` ends a code exchange), so every answer the server
    gave on purpose is a :class:`PermanentFailure` carrying its code: any reply with a readable
    OAuth error code at a status below 500 (a 2xx with an ``error`` and no ``access_token``
    too, as GitHub sends), and any 401. A 5xx or 429 without a code, a network failure, or a
    malformed body is a :class:`TransientFailure`. A 2xx is adopted by the same rules as a
    refresh. ``secrets`` (the code, the verifier, the device code, the client secret) are
    redacted from descriptions and never become a code.
    """

    def final(code: str | None, status: int) -> bool:
        return status == 401 or (code is not None and status < 500)

    return _classify_token_reply(reply, secrets=_secret_forms(secrets), final=final, now=now)


def _classify_token_reply(
    reply: Reply,
    *,
    secrets: list[str],
    final: Callable[[str | None, int], bool],
    now: datetime,
) -> RefreshOutcome:
    status = reply.status
    success = 200 <= status < 300
    retry_after = None if success else parse_retry_after(reply.retry_after, now)
    if reply.problem is not None:
        if status == 401:
            return PermanentFailure(code="http_401", status=status)
        return TransientFailure(reason=reply.problem, status=status, retry_after=retry_after)
    document = _load_json(reply.body)
    code = _error_code(document, secrets)
    if success:
        # Some servers (GitHub among them) answer 200 with an OAuth error body.
        has_access = isinstance(document, dict) and "access_token" in document
        if code is None or has_access:
            return _success(document, status)
    if final(code, status):
        return PermanentFailure(
            code=code or f"http_{status}",
            status=status,
            description=_error_description(document, secrets),
        )
    reason = f"http_{status}" + (f":{code}" if code else "")
    return TransientFailure(reason=reason, status=status, retry_after=retry_after)


# -- the adapter -----------------------------------------------------------------------------


def _network_failure(exc: BaseException) -> TransientFailure:
    # Only the class name: messages can carry URLs with query strings.
    return TransientFailure(reason=f"network:{type(exc).__name__}")


def _check_body_deadline(deadline: float) -> None:
    # httpx's read timeout restarts with every chunk; a server dripping bytes would evade it.
    if time.monotonic() > deadline:
        raise httpx.ReadTimeout("the response body took longer than the timeout")


class DeadlineExceeded(Exception):
    """A sync exchange outlasted the endpoint's timeout; the caller was let go at the deadline."""


class Watchdog:
    """
    Holds one sync exchange to an overall deadline, which httpx (timing out each read) cannot.

    :meth:`run` does the exchange on a short-lived worker thread while the caller waits at most
    ``seconds``, so neither slow headers nor a dripping body can hold the caller longer. The
    worker passes :meth:`trace` to httpx as the ``trace`` request extension, which shows every
    socket the exchange connects; at the deadline those sockets are shut down, which ends a
    blocked read at once, so the worker does not linger either. (A connection reused from a
    caller's pool is not seen; its worker ends at the body deadline or the per-read timeout.)
    """

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._expired = False

    def trace(self, event: str, info: Mapping[str, Any]) -> None:
        """httpcore's trace hook: remembers the socket of each connection (TCP, then TLS)."""
        # "connection.connect_tcp.complete", "connection.start_tls.complete", "proxy.…", …
        if not event.endswith((".connect_tcp.complete", ".start_tls.complete")):
            return
        stream = info.get("return_value")
        sock = getattr(stream, "get_extra_info", lambda _name: None)("socket")
        if not isinstance(sock, socket.socket):
            return
        with self._lock:
            self._sockets.append(sock)
            expired = self._expired
        if expired:
            _shut_down(sock)

    def run(self, work: Callable[[Trace], _T]) -> _T:
        """``work(trace)``'s result or exception; :class:`DeadlineExceeded` at the deadline."""
        results: list[_T] = []
        errors: list[BaseException] = []
        done = threading.Event()
        context = contextvars.copy_context()  # the caller's logging and tracing context

        def worker() -> None:
            try:
                results.append(context.run(work, self.trace))
            # Handed to the caller below, who raises it (or has left and drops it).
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
            finally:
                done.set()

        threading.Thread(target=worker, name="authfsm-token-endpoint", daemon=True).start()
        if not done.wait(self._seconds):
            self._expire()
            raise DeadlineExceeded
        if errors:
            raise errors[0]
        return results[0]

    def _expire(self) -> None:
        with self._lock:
            self._expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut_down(sock)


def _shut_down(sock: socket.socket) -> None:
    # The plain socket's shutdown even for an SSLSocket, whose own would drop its SSL object
    # under the worker's feet; either way the blocked read returns at once. A socket detached by
    # the TLS wrap (the TCP one, once TLS is up) answers OSError: its TLS twin is shut instead.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


# -- the byte-moving loops; everything else is shared -------------------------------------------


def _send_args(
    request: PreparedRequest, timeout: float, trace: Trace | None = None
) -> dict[str, Any]:
    args: dict[str, Any] = {
        "method": request.method,
        "url": request.url,
        "headers": request.headers,
        "timeout": timeout,
        "follow_redirects": False,
        "extensions": {} if trace is None else {"trace": trace},
    }
    if request.method == "POST":
        args["content"] = request.content
    return args


def _body_for(response: AnyResponse, cap: int) -> CappedBody:
    body = CappedBody(cap, response.headers.get("content-encoding"))
    body.declare_length(response.headers.get("content-length"))
    return body


def _read_reply(
    client: SyncClient, request: PreparedRequest, *, timeout: float, cap: int, trace: Trace
) -> Reply:
    # Stops the worker of a connection the watchdog could not see (one reused from a pool).
    deadline = time.monotonic() + timeout
    with client.stream(**_send_args(request, timeout, trace)) as response:
        body = _body_for(response, cap)
        if not body.done:
            for chunk in response.iter_raw():
                body.feed(chunk)
                if body.done:
                    break
                _check_body_deadline(deadline)
        return body.reply(response.status_code, response.headers.get("retry-after"))


async def _read_reply_async(
    client: AsyncClient, request: PreparedRequest, *, timeout: float, cap: int
) -> Reply:
    async with client.stream(**_send_args(request, timeout)) as response:
        body = _body_for(response, cap)
        if not body.done:
            async for chunk in response.aiter_raw():
                body.feed(chunk)
                if body.done:
                    break
        return body.reply(response.status_code, response.headers.get("retry-after"))


def send(
    request: PreparedRequest, *, client: SyncClient, timeout: float, cap: int
) -> Reply | TransientFailure:
    """
    One exchange held to ``timeout`` seconds overall, its body capped at ``cap`` decoded bytes.

    Never raises for a network problem or the deadline: those are a :class:`TransientFailure`
    whose reason names only the exception class (``network:ConnectError``), or
    :data:`DEADLINE_REASON`. Redirects are not followed. ``client`` is of either family
    (``httpx`` or ``httpx2``): both raise the same exception names and both call the
    ``trace`` extension the :class:`Watchdog` watches sockets through.
    """
    try:
        return Watchdog(timeout).run(
            lambda trace: _read_reply(client, request, timeout=timeout, cap=cap, trace=trace)
        )
    except DeadlineExceeded:
        return TransientFailure(reason=DEADLINE_REASON)
    except request_errors(OSError) as exc:
        return _network_failure(exc)


async def send_async(
    request: PreparedRequest,
    *,
    client: AsyncClient | None,
    timeout: float,
    cap: int,
) -> Reply | TransientFailure:
    """
    :func:`send` on ``client`` (of either family), or on a short-lived ``httpx.AsyncClient``
    when None.
    """
    try:
        # Cancelling the exchange at the deadline closes its connection, wherever it was.
        async with asyncio.timeout(timeout):
            if client is not None:
                return await _read_reply_async(client, request, timeout=timeout, cap=cap)
            async with httpx.AsyncClient(timeout=timeout) as own:
                return await _read_reply_async(own, request, timeout=timeout, cap=cap)
    # Before OSError, of which the builtin TimeoutError is a subclass.
    except TimeoutError:
        return TransientFailure(reason=DEADLINE_REASON)
    except request_errors(OSError) as exc:
        return _network_failure(exc)


def new_sync_client(timeout: float) -> httpx.Client:
    """
    An ``httpx.Client`` that keeps no idle connections: a fresh one per exchange is one whose
    socket the :class:`Watchdog` sees being connected, and so can shut down at the deadline.

    httpx, not httpx2, because it is the family authfsm depends on (httpx2 is optional);
    pass an ``httpx2.Client`` as ``client`` to use that family instead.
    """
    return httpx.Client(timeout=timeout, limits=httpx.Limits(max_keepalive_connections=0))


class OAuthTokenEndpoint:
    """
    A :class:`~authfsm.engine.TokenEndpoint` speaking OAuth 2.0 over httpx or httpx2 (sync and
    async).

    Args:
        token_url: where refresh requests go.
        client_id: the OAuth client id; always sent in the body (many servers want it).
        client_secret: for confidential clients; never sent in the body with
            ``client_secret_basic``, never shown in ``repr``.
        client_auth: HTTP Basic (RFC 6749 §2.3.1) or ``client_id``/``client_secret`` in the body.
        body_format: ``"form"`` (RFC 6749 §6) or ``"json"`` (what some servers, Codex's among
            them, expect).
        scope: sent as ``scope`` when given.
        extra_params: further body parameters for refresh requests (not the reserved ones).
        revoke_url: the RFC 7009 endpoint; without it :meth:`revoke` returns False.
        headers: extra request headers (a user agent, say).
        timeout: the deadline, in seconds, for a whole exchange (connecting, sending, status
            line, headers and body), sync or async, refresh or revoke; also httpx's timeout for
            each connect, write and read. Past it, a refresh is
            ``TransientFailure("network:ReadTimeout")`` and a revoke is False.
        max_response_bytes: a larger body (after gzip/deflate decoding, which is bounded) is not
            read: ``TransientFailure("response_too_large")``.
        permanent_codes: the OAuth error codes that mean the refresh token is dead.
        client: an ``httpx.Client`` or ``httpx2.Client`` to use (and not close); the
            deadline, the body cap and the classification hold on either. By default the
            endpoint owns an ``httpx.Client`` (httpx is the dependency authfsm installs;
            httpx2 is optional), which keeps no idle connections so that every exchange's
            socket is its own. Anything else (an ``AsyncClient`` too) is a ``TypeError``: the
            ``*_async`` methods take an ``AsyncClient`` of either family as ``client=``.
        async_client: an ``httpx.AsyncClient`` or ``httpx2.AsyncClient`` the ``*_async``
            methods use (and do not close) when they are given none: how an
            ``AsyncAuthEngine`` refreshes on httpx2. By default each async exchange uses a
            short-lived ``httpx.AsyncClient``.

    ``repr`` shows the URLs without userinfo or query values.
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        *,
        client_secret: str | None = None,
        client_auth: ClientAuth = "client_secret_basic",
        body_format: BodyFormat = "form",
        scope: str | None = None,
        extra_params: Mapping[str, str] | None = None,
        revoke_url: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        max_response_bytes: int = 64 * 1024,
        permanent_codes: frozenset[str] = PERMANENT_ERROR_CODES,
        client: SyncClient | None = None,
        async_client: AsyncClient | None = None,
    ) -> None:
        if async_client is not None and family_of(async_client, kind="AsyncClient") is None:
            raise TypeError(
                "async_client must be an httpx.AsyncClient or httpx2.AsyncClient, "
                f"not {type(async_client).__name__}"
            )
        self._async_client = async_client
        for name, url in (("token_url", token_url), ("revoke_url", revoke_url)):
            if url is not None and httpx.URL(url).scheme not in {"http", "https"}:
                raise ValueError(f"{name} must be an http or https URL")
        if not isinstance(client_id, str) or not client_id:
            raise ValueError("client_id must be a non-empty string")
        if client_secret is not None and not client_secret:
            raise ValueError("client_secret must be a non-empty string or None")
        if client_auth not in ("client_secret_basic", "client_secret_post"):
            raise ValueError(f"unknown client_auth {client_auth!r}")
        if body_format not in ("form", "json"):
            raise ValueError(f"unknown body_format {body_format!r}")
        if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
            raise ValueError("timeout must be a positive number of seconds")
        if isinstance(max_response_bytes, bool) or max_response_bytes <= 0:
            raise ValueError("max_response_bytes must be a positive number of bytes")
        extra = dict(extra_params or {})
        clashes = sorted(_RESERVED_PARAMS.intersection(extra))
        if clashes:
            raise ValueError(f"extra_params may not set {', '.join(clashes)}")
        self._settings = EndpointSettings(
            token_url=token_url,
            client_id=client_id,
            client_secret=client_secret,
            client_auth=client_auth,
            body_format=body_format,
            scope=scope,
            extra_params=extra,
            revoke_url=revoke_url,
            # Validates names and values now rather than at the first refresh.
            headers=dict(httpx.Headers(headers or {}).items()),
        )
        self._timeout = float(timeout)
        self._cap = max_response_bytes
        self._permanent_codes = frozenset(permanent_codes)
        self._owns_client = client is None
        if client is not None:
            sync_client_family(client)
        else:
            # Refreshes are rare: a fresh connection per exchange costs little (new_sync_client).
            client = new_sync_client(self._timeout)
        self._client = client

    def __repr__(self) -> str:
        s = self._settings
        revoke = "" if s.revoke_url is None else f", revoke_url={redact_url(s.revoke_url)!r}"
        return (
            f"OAuthTokenEndpoint(token_url={redact_url(s.token_url)!r}{revoke}, "
            f"client_id={s.client_id!r}, client_auth={s.client_auth!r}, "
            f"body_format={s.body_format!r}, confidential={s.client_secret is not None})"
        )

    # -- sync ----------------------------------------------------------------------------------

    @property
    def client_id(self) -> str:
        """The OAuth client id this endpoint authenticates as."""
        return self._settings.client_id

    @property
    def token_url(self) -> str:
        """Where token requests go."""
        return self._settings.token_url

    def refresh(self, credentials: Credentials) -> RefreshOutcome:
        """Spend ``credentials.refresh_token`` once and classify what happens."""
        if credentials.refresh_token is None:
            return PermanentFailure(code="no_refresh_token")
        request = build_refresh_request(self._settings, credentials.refresh_token)
        reply = self._send(request)
        if isinstance(reply, TransientFailure):
            return reply
        return self._classify(reply, credentials)

    def request_token(
        self, grant_type: str, params: Mapping[str, str], *, secrets: Iterable[str] = ()
    ) -> RefreshOutcome:
        """
        Ask the token endpoint for tokens with any grant, with the same deadline, body cap and
        secret-free classification as :meth:`refresh` (see :func:`classify_grant`: every OAuth
        error code the server answers comes back as a ``PermanentFailure`` carrying it).

        ``params`` are the grant's parameters (``code``, ``redirect_uri``, ``code_verifier``;
        ``device_code``); the client id and secret are added as for a refresh. ``secrets`` are
        values to keep out of the outcome (the client secret always is).
        """
        request = build_grant_request(self._settings, grant_type, params)
        reply = self._send(request)
        if isinstance(reply, TransientFailure):
            return reply
        return self._classify_grant(reply, secrets)

    def post_form(self, url: str, params: Mapping[str, str]) -> Reply | TransientFailure:
        """
        POST ``params`` with the client's authentication to another endpoint of the provider
        (the RFC 8628 device authorization endpoint); the capped reply, unclassified, or a
        ``TransientFailure`` for a network failure or the deadline.
        """
        return self._send(build_form_request(self._settings, url, params))

    def _send(self, request: PreparedRequest) -> Reply | TransientFailure:
        return send(request, client=self._client, timeout=self._timeout, cap=self._cap)

    def revoke(self, credentials: Credentials) -> bool:
        """Revoke the credential (RFC 7009), best effort: True on a 2xx, False otherwise."""
        if self._settings.revoke_url is None:
            return False
        request = build_revoke_request(self._settings, self._settings.revoke_url, credentials)
        try:
            return Watchdog(self._timeout).run(
                lambda trace: self._revoke_on(self._client, request, trace)
            )
        except http_errors(DeadlineExceeded, OSError):
            return False

    def close(self) -> None:
        """Close the HTTP client if the endpoint created it; a client passed in is left open."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> OAuthTokenEndpoint:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- async ---------------------------------------------------------------------------------

    async def refresh_async(
        self, credentials: Credentials, *, client: AsyncClient | None = None
    ) -> RefreshOutcome:
        """:meth:`refresh` on ``client``, or on a short-lived ``AsyncClient`` when None."""
        if credentials.refresh_token is None:
            return PermanentFailure(code="no_refresh_token")
        request = build_refresh_request(self._settings, credentials.refresh_token)
        reply = await self._send_async(request, client)
        if isinstance(reply, TransientFailure):
            return reply
        return self._classify(reply, credentials)

    async def request_token_async(
        self,
        grant_type: str,
        params: Mapping[str, str],
        *,
        secrets: Iterable[str] = (),
        client: AsyncClient | None = None,
    ) -> RefreshOutcome:
        """:meth:`request_token` on ``client``, or on a short-lived ``AsyncClient`` when None."""
        request = build_grant_request(self._settings, grant_type, params)
        reply = await self._send_async(request, client)
        if isinstance(reply, TransientFailure):
            return reply
        return self._classify_grant(reply, secrets)

    async def post_form_async(
        self, url: str, params: Mapping[str, str], *, client: AsyncClient | None = None
    ) -> Reply | TransientFailure:
        """:meth:`post_form` on ``client``, or on a short-lived ``AsyncClient`` when None."""
        request = build_form_request(self._settings, url, params)
        return await self._send_async(request, client)

    async def _send_async(
        self, request: PreparedRequest, client: AsyncClient | None
    ) -> Reply | TransientFailure:
        client = client if client is not None else self._async_client
        return await send_async(request, client=client, timeout=self._timeout, cap=self._cap)

    async def revoke_async(
        self, credentials: Credentials, *, client: AsyncClient | None = None
    ) -> bool:
        """:meth:`revoke` on ``client``, or on a short-lived ``AsyncClient`` when None."""
        if self._settings.revoke_url is None:
            return False
        request = build_revoke_request(self._settings, self._settings.revoke_url, credentials)
        client = client if client is not None else self._async_client
        try:
            async with asyncio.timeout(self._timeout):
                if client is not None:
                    return await self._revoke_on_async(client, request)
                async with httpx.AsyncClient(timeout=self._timeout) as own:
                    return await self._revoke_on_async(own, request)
        except http_errors(TimeoutError, OSError):
            return False

    # -- revoke and classification -------------------------------------------------------------

    def _revoke_on(self, client: SyncClient, request: PreparedRequest, trace: Trace) -> bool:
        with client.stream(**_send_args(request, self._timeout, trace)) as response:
            return response.is_success

    async def _revoke_on_async(self, client: AsyncClient, request: PreparedRequest) -> bool:
        async with client.stream(**_send_args(request, self._timeout)) as response:
            return response.is_success

    def _classify(self, reply: Reply, credentials: Credentials) -> RefreshOutcome:
        return classify_refresh(
            reply,
            credentials=credentials,
            client_secret=self._settings.client_secret,
            permanent_codes=self._permanent_codes,
            now=datetime.now(UTC),
        )

    def _classify_grant(self, reply: Reply, secrets: Iterable[str]) -> RefreshOutcome:
        return classify_grant(
            reply, secrets=(*secrets, self._settings.client_secret), now=datetime.now(UTC)
        )
