"""
The I/O requests a login flow yields, and the two drivers that perform them.

The browser, device and id_token flows (:mod:`._browser`, :mod:`._device`, :mod:`._id_token`) are
generators that ``yield`` one of these effects and get its result sent back, as the engine's
flows do: every decision (what to send, what an answer means, when to poll, when to give up) is
made once, and :func:`drive` (blocking) and :func:`drive_async` (asyncio) differ only in how they
move bytes, sleep and wait. An exception raised while performing an effect ends the flow.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import IO, Any, Protocol, TypeVar

import attrs
import httpx

from ..adapters._endpoint import OAuthTokenEndpoint
from ..engine._errors import AuthError
from ..engine._events import EventLog
from ._loopback import AsyncLoopbackReceiver, LoopbackReceiver, Page

__all__ = [
    "AnswerRequest",
    "AsyncIO",
    "Effect",
    "KeySource",
    "LoadKeys",
    "LoginFlow",
    "NextRequest",
    "OpenBrowser",
    "PostForm",
    "RequestToken",
    "ShowPrompt",
    "ShowText",
    "Sleep",
    "SyncIO",
    "drive",
    "drive_async",
]

T = TypeVar("T")


@attrs.frozen
class OpenBrowser:
    """Open the user's browser at ``url`` (result: whether a browser was opened)."""

    url: str = attrs.field(repr=False)


@attrs.frozen
class ShowText:
    """Show the user a line of text on the login's stream (result: None)."""

    text: str = attrs.field(repr=False)


@attrs.frozen
class ShowPrompt:
    """Hand the device login's prompt to the caller's callback (result: None)."""

    prompt: Any = attrs.field(repr=False)


@attrs.frozen
class NextRequest:
    """Wait for the next request at the loopback receiver (result: a ``CallbackRequest``)."""


@attrs.frozen
class AnswerRequest:
    """Answer the last request with ``page`` and close its connection (result: None)."""

    page: Page


@attrs.frozen
class PostForm:
    """POST ``params`` with client authentication to ``url`` (result: ``Reply`` or failure)."""

    url: str
    params: Mapping[str, str] = attrs.field(repr=False)


@attrs.frozen
class RequestToken:
    """Ask the token endpoint for tokens with a grant (result: a ``RefreshOutcome``)."""

    grant_type: str
    params: Mapping[str, str] = attrs.field(repr=False)
    secrets: tuple[str, ...] = attrs.field(repr=False, default=())


@attrs.frozen
class Sleep:
    """Wait ``seconds`` (result: None)."""

    seconds: float


@attrs.frozen
class LoadKeys:
    """The provider's signing keys, fetched again when ``refresh`` (result: JWK dicts)."""

    refresh: bool = False


Effect = (
    OpenBrowser
    | ShowText
    | ShowPrompt
    | NextRequest
    | AnswerRequest
    | PostForm
    | RequestToken
    | Sleep
    | LoadKeys
)
LoginFlow = Generator[Effect, Any, T]
Jwk = Mapping[str, Any]


class KeySource(Protocol):
    """Where the signing keys come from (a :class:`~._id_token.JwksCache` or a fixed set)."""

    def keys(self, *, refresh: bool = False) -> tuple[Jwk, ...]: ...

    async def keys_async(
        self, *, refresh: bool = False, client: httpx.AsyncClient | None = None
    ) -> tuple[Jwk, ...]: ...


def _missing(what: str) -> RuntimeError:
    # A flow asked for something its driver was not given: a bug in this package, not the user's.
    return RuntimeError(f"this login has no {what}")


@attrs.define(kw_only=True)
class SyncIO:
    """What :func:`drive` performs effects with; a flow uses only some of these."""

    endpoint: OAuthTokenEndpoint | None = None
    receiver: LoopbackReceiver | None = None
    keys: KeySource | None = None
    opener: Callable[[str], bool] | None = None
    stream: IO[str] | None = None
    on_prompt: Callable[[Any], None] | None = None
    sleep: Callable[[float], None] | None = None

    def perform(self, effect: Effect) -> Any:
        match effect:
            case OpenBrowser(url):
                return _open(self.opener, url)
            case ShowText(text):
                _write(self.stream, text)
                return None
            case ShowPrompt(prompt):
                if self.on_prompt is None:
                    raise _missing("prompt callback")
                self.on_prompt(prompt)
                return None
            case NextRequest():
                return self._receiver().next_request()
            case AnswerRequest(page):
                self._receiver().answer(page)
                return None
            case PostForm(url, params):
                return self._endpoint().post_form(url, params)
            case RequestToken(grant_type, params, secrets):
                return self._endpoint().request_token(grant_type, params, secrets=secrets)
            case Sleep(seconds):
                if self.sleep is None:
                    raise _missing("sleep")
                self.sleep(seconds)
                return None
            case LoadKeys(refresh):
                if self.keys is None:
                    raise _missing("key source")
                return self.keys.keys(refresh=refresh)
        raise TypeError(f"unknown effect {effect!r}")  # pragma: no cover

    def _receiver(self) -> LoopbackReceiver:
        if self.receiver is None:
            raise _missing("loopback receiver")
        return self.receiver

    def _endpoint(self) -> OAuthTokenEndpoint:
        if self.endpoint is None:
            raise _missing("token endpoint")
        return self.endpoint


@attrs.define(kw_only=True)
class AsyncIO:
    """What :func:`drive_async` performs effects with; nothing here blocks the event loop."""

    endpoint: OAuthTokenEndpoint | None = None
    client: httpx.AsyncClient | None = None
    receiver: AsyncLoopbackReceiver | None = None
    keys: KeySource | None = None
    opener: Callable[[str], bool] | None = None
    stream: IO[str] | None = None
    on_prompt: Callable[[Any], None] | None = None
    sleep: Callable[[float], Awaitable[None]] | None = None

    async def perform(self, effect: Effect) -> Any:
        match effect:
            case OpenBrowser(url):
                # A browser launcher may block for a while (or for good, a console browser).
                return await asyncio.to_thread(_open, self.opener, url)
            case ShowText(text):
                _write(self.stream, text)
                return None
            case ShowPrompt(prompt):
                if self.on_prompt is None:
                    raise _missing("prompt callback")
                self.on_prompt(prompt)
                return None
            case NextRequest():
                return await self._receiver().next_request()
            case AnswerRequest(page):
                await self._receiver().answer(page)
                return None
            case PostForm(url, params):
                return await self._endpoint().post_form_async(url, params, client=self.client)
            case RequestToken(grant_type, params, secrets):
                return await self._endpoint().request_token_async(
                    grant_type, params, secrets=secrets, client=self.client
                )
            case Sleep(seconds):
                await (self.sleep or asyncio.sleep)(seconds)
                return None
            case LoadKeys(refresh):
                if self.keys is None:
                    raise _missing("key source")
                return await self.keys.keys_async(refresh=refresh, client=self.client)
        raise TypeError(f"unknown effect {effect!r}")  # pragma: no cover

    def _receiver(self) -> AsyncLoopbackReceiver:
        if self.receiver is None:
            raise _missing("loopback receiver")
        return self.receiver

    def _endpoint(self) -> OAuthTokenEndpoint:
        if self.endpoint is None:
            raise _missing("token endpoint")
        return self.endpoint


def _open(opener: Callable[[str], bool] | None, url: str) -> bool:
    if opener is None:
        return False
    try:
        return bool(opener(url))
    # A launcher that fails in any way is a browser that did not open: the URL is printed.
    except Exception:  # noqa: BLE001
        return False


def _write(stream: IO[str] | None, text: str) -> None:
    if stream is None:
        return
    with contextlib.suppress(OSError, ValueError):  # a closed or broken stream
        stream.write(text + "\n")
        stream.flush()


def _log_end(events: EventLog, name: str, error: BaseException) -> None:
    if isinstance(error, AuthError):
        events.emit("warning", "authfsm.login.failed", flow=name, reason=error.reason)
    else:
        events.emit("warning", "authfsm.login.interrupted", flow=name, error=type(error).__name__)


def drive(flow: LoginFlow[T], io: SyncIO, *, events: EventLog, name: str) -> T:
    """Run ``flow`` to its result, performing each effect with ``io``."""
    result: Any = None
    try:
        while True:  # bounded by the flow, whose every loop is bounded
            try:
                effect = flow.send(result)
            except StopIteration as stop:
                value: T = stop.value
                return value
            result = io.perform(effect)
    except BaseException as error:
        _log_end(events, name, error)
        raise
    finally:
        flow.close()


async def drive_async(flow: LoginFlow[T], io: AsyncIO, *, events: EventLog, name: str) -> T:
    """:func:`drive` with asyncio."""
    result: Any = None
    try:
        while True:
            try:
                effect = flow.send(result)
            except StopIteration as stop:
                value: T = stop.value
                return value
            result = await io.perform(effect)
    except BaseException as error:
        _log_end(events, name, error)
        raise
    finally:
        flow.close()
