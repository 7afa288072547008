"""
The loopback redirect receiver of a browser login (RFC 8252 §7.3, §8.3).

This module owns binding the port (127.0.0.1 only, never ``0.0.0.0``), reading one HTTP request
head at a time from the browser, and writing the pages a login decides on, with
``Connection: close``. It does not decide anything about the login: every request is handed to
the flow (:mod:`._browser`), which says what page to answer and whether to keep waiting. The sync
receiver multiplexes connections with :mod:`selectors` (a browser's idle pre-connection cannot
hold up the real redirect), the async one with ``asyncio.start_server``; both stop at the login's
deadline with :class:`LoginTimeout` and free the port when closed, whatever ended the login.

It must never log, show or raise with the request target: it carries the code and ``state``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import html
import selectors
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from types import MappingProxyType, TracebackType
from urllib.parse import parse_qs, urlsplit

import attrs

from ._errors import LoginTimeout, PortUnavailable

__all__ = [
    "LOOPBACK_HOST",
    "AsyncLoopbackReceiver",
    "CallbackRequest",
    "LoopbackReceiver",
    "Page",
    "bind_loopback",
    "parse_request_head",
    "render_page",
]

#: The only address the receiver listens on: the IPv4 loopback literal (RFC 8252 §8.3).
LOOPBACK_HOST = "127.0.0.1"
#: A request head larger than this is answered 431 and dropped.
MAX_HEAD_BYTES = 16 * 1024
#: How long a connection may take to deliver its request head.
READ_TIMEOUT = 10.0
#: How long writing a page may take before the connection is dropped.
WRITE_TIMEOUT = 5.0
#: Connections held open at once; more are closed at once (a browser opens a few).
MAX_CONNECTIONS = 32
#: The longest a sync wait blocks before looking at the deadline again (Ctrl-C on Windows).
_SLICE = 0.25
_MAX_PARAMS = 64


def bind_loopback(ports: Sequence[int] = (0,)) -> socket.socket:
    """
    A listening TCP socket on 127.0.0.1: the first of ``ports`` that can be bound (0 lets the
    OS choose a free one). Raises :class:`PortUnavailable`, listing every port and why, when
    none can.

    On Linux ``SO_REUSEADDR`` is set, which there only allows re-binding a port whose last
    connection is in TIME_WAIT (a second login right after the first), never sharing a port
    someone listens on. Elsewhere it is not set: on Windows it would let another program take
    the port over (``SO_EXCLUSIVEADDRUSE`` is set instead), on BSD and macOS it would let this
    socket share a port another program listens on.
    """
    if not ports:
        raise ValueError("give at least one port (0 lets the OS choose)")
    for port in ports:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"a port is an int from 0 to 65535, not {port!r}")
    failures: list[tuple[int, str]] = []
    for port in ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if sys.platform.startswith("linux"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            elif sys.platform == "win32":  # pragma: no cover - not run on Linux CI
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
            sock.bind((LOOPBACK_HOST, port))
            sock.listen(MAX_CONNECTIONS)
        except OSError as exc:
            sock.close()
            failures.append((port, errno.errorcode.get(exc.errno or 0, type(exc).__name__)))
            continue
        return sock
    raise PortUnavailable(failures)


@attrs.frozen(kw_only=True)
class CallbackRequest:
    """
    One request the browser made to the receiver: its method, path and query parameters.

    Attributes:
        method: the HTTP method (``GET`` for a redirect).
        path: the path, without the query.
        params: the query parameters, the first value of each (they may hold the code and
            ``state``: never shown).
        repeated: the names of parameters sent more than once (RFC 6749 §3.1 forbids it).
    """

    method: str
    path: str
    params: Mapping[str, str] = attrs.field(repr=False)
    repeated: frozenset[str] = attrs.field(repr=False, default=frozenset())


def parse_request_head(head: bytes) -> CallbackRequest | None:
    """The request in an HTTP/1.x request head (up to the blank line), or None if malformed."""
    line, _, _headers = head.partition(b"\r\n")
    try:
        method, target, version = line.decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        return None
    if not version.startswith("HTTP/1.") or not target.startswith("/") or not method.isalpha():
        return None
    try:
        parts = urlsplit(target)
        parsed = parse_qs(parts.query, keep_blank_values=True, max_num_fields=_MAX_PARAMS)
    except ValueError:
        return None
    return CallbackRequest(
        method=method,
        path=parts.path,
        params=MappingProxyType({name: values[0] for name, values in parsed.items()}),
        repeated=frozenset(name for name, values in parsed.items() if len(values) > 1),
    )


@attrs.frozen(kw_only=True)
class Page:
    """A page to answer the browser with: a status, a title and a message (plain text)."""

    status: int
    title: str
    message: str


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
_REASONS[431] = "Request Header Fields Too Large"

BAD_REQUEST = Page(status=400, title="Bad request", message="The request could not be read.")
TOO_LARGE = Page(status=431, title="Request too large", message="The request head is too large.")


def render_page(page: Page) -> bytes:
    """The HTTP response for ``page``: HTML-escaped text, no caching, ``Connection: close``."""
    title = html.escape(page.title)
    message = html.escape(page.message).replace("\n", "<br>\n")
    body = (
        '<!doctype html>\n<html><head><meta charset="utf-8">'
        f'<title>{title}</title></head>\n<body style="font-family: sans-serif">'
        f"<h1>{title}</h1>\n<p>{message}</p></body></html>\n"
    ).encode()
    head = (
        f"HTTP/1.1 {page.status} {_REASONS.get(page.status, 'Error')}\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        # The page's URL holds the code: nothing it loads or links to may learn it.
        "Referrer-Policy: no-referrer\r\n"
        "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii")
    return head + body


def _timed_out() -> LoginTimeout:
    return LoginTimeout(
        "No login redirect reached the loopback receiver before the deadline; "
        "start the login again."
    )


# -- sync ----------------------------------------------------------------------------------------


@attrs.define
class _Connection:
    sock: socket.socket
    opened: float
    head: bytearray = attrs.field(factory=bytearray)


def _send_and_close(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.setblocking(True)
        sock.settimeout(WRITE_TIMEOUT)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    sock.close()


class LoopbackReceiver:
    """
    Waits, blocking, for requests on a listening socket from :func:`bind_loopback`, until the
    monotonic ``deadline``. Closing it (or leaving its ``with`` block) closes the listening
    socket and every connection, so the port is free again.
    """

    def __init__(self, listener: socket.socket, *, deadline: float) -> None:
        self._listener = listener
        self._deadline = deadline
        self._selector = selectors.DefaultSelector()
        self._connections: dict[socket.socket, _Connection] = {}
        self._pending: socket.socket | None = None
        listener.setblocking(False)
        self._selector.register(listener, selectors.EVENT_READ)

    @property
    def port(self) -> int:
        """The port the receiver listens on."""
        port: int = self._listener.getsockname()[1]
        return port

    def next_request(self) -> CallbackRequest:
        """The next complete request; :class:`LoginTimeout` at the deadline."""
        self._answer_pending(None)
        while True:  # bounded by the deadline: every pass waits or consumes an event
            now = time.monotonic()
            if now >= self._deadline:
                raise _timed_out()
            self._drop_stale(now)
            events = self._selector.select(min(self._deadline - now, _SLICE))
            for key, _mask in events:
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    self._accept(now)
                    continue
                request = self._read(sock)
                if request is not None:
                    return request

    def answer(self, page: Page) -> None:
        """Answer the request :meth:`next_request` returned, and close its connection."""
        self._answer_pending(page)

    def close(self) -> None:
        """Close the listening socket and every connection."""
        self._answer_pending(None)
        for sock in list(self._connections):
            self._forget(sock)
            sock.close()
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(self._listener)
        self._selector.close()
        self._listener.close()

    def __enter__(self) -> LoopbackReceiver:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _answer_pending(self, page: Page | None) -> None:
        sock, self._pending = self._pending, None
        if sock is None:
            return
        if page is None:
            sock.close()
        else:
            _send_and_close(sock, render_page(page))

    def _accept(self, now: float) -> None:
        for _ in range(MAX_CONNECTIONS):
            try:
                sock, _address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(self._connections) >= MAX_CONNECTIONS:
                sock.close()
                continue
            sock.setblocking(False)
            self._connections[sock] = _Connection(sock=sock, opened=now)
            self._selector.register(sock, selectors.EVENT_READ)

    def _read(self, sock: socket.socket) -> CallbackRequest | None:
        connection = self._connections[sock]
        try:
            data = sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            data = b""
        if not data:
            self._forget(sock)
            sock.close()
            return None
        connection.head += data
        end = connection.head.find(b"\r\n\r\n")
        if end < 0:
            if len(connection.head) > MAX_HEAD_BYTES:
                self._forget(sock)
                _send_and_close(sock, render_page(TOO_LARGE))
            return None
        self._forget(sock)
        request = parse_request_head(bytes(connection.head[:end]))
        if request is None:
            _send_and_close(sock, render_page(BAD_REQUEST))
            return None
        self._pending = sock
        return request

    def _drop_stale(self, now: float) -> None:
        for sock, connection in list(self._connections.items()):
            if now - connection.opened > READ_TIMEOUT:
                self._forget(sock)
                sock.close()

    def _forget(self, sock: socket.socket) -> None:
        if self._connections.pop(sock, None) is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)


# -- async ---------------------------------------------------------------------------------------


@attrs.define
class _Waiting:
    request: CallbackRequest
    page: asyncio.Future[Page | None]
    sent: asyncio.Future[None]


class AsyncLoopbackReceiver:
    """
    :class:`LoopbackReceiver` for asyncio: each connection is served by its own task of an
    ``asyncio`` server on the listening socket; waiting never blocks the event loop.
    """

    def __init__(self, listener: socket.socket, *, deadline: float) -> None:
        self._listener = listener
        self._deadline = deadline
        self._port: int = listener.getsockname()[1]
        self._queue: asyncio.Queue[_Waiting] = asyncio.Queue(maxsize=MAX_CONNECTIONS)
        self._handlers: set[asyncio.Task[None]] = set()
        self._current: _Waiting | None = None
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The port the receiver listens on."""
        return self._port

    async def start(self) -> None:
        """Start accepting connections on the listening socket."""
        self._server = await asyncio.start_server(
            self._serve, sock=self._listener, limit=MAX_HEAD_BYTES
        )

    async def next_request(self) -> CallbackRequest:
        """The next complete request; :class:`LoginTimeout` at the deadline."""
        await self._answer_current(None)
        remaining = self._deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(remaining, 0)):
                waiting = await self._queue.get()
        except TimeoutError:
            raise _timed_out() from None
        self._current = waiting
        return waiting.request

    async def answer(self, page: Page) -> None:
        """Answer the request :meth:`next_request` returned, and close its connection."""
        await self._answer_current(page)

    async def close(self) -> None:
        """
        Stop listening (the port is free once this starts) and end every connection.

        Safe to call from a cancelled task's cleanup: nothing here waits unboundedly.
        """
        if self._server is not None:
            self._server.close()  # closes the listening socket at once
        else:
            self._listener.close()
        current, self._current = self._current, None
        if current is not None and not current.page.done():
            current.page.set_result(None)
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        if handlers:
            await asyncio.wait(handlers, timeout=WRITE_TIMEOUT)

    async def _answer_current(self, page: Page | None) -> None:
        current, self._current = self._current, None
        if current is None:
            return
        if not current.page.done():
            current.page.set_result(page)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WRITE_TIMEOUT):
                await asyncio.shield(current.sent)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        loop = asyncio.get_running_loop()
        sent: asyncio.Future[None] = loop.create_future()
        try:
            data = b""
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    data = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                await self._write(writer, render_page(TOO_LARGE))
                return
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return
            request = parse_request_head(data[:-4])
            if request is None:
                await self._write(writer, render_page(BAD_REQUEST))
                return
            waiting = _Waiting(request=request, page=loop.create_future(), sent=sent)
            try:
                self._queue.put_nowait(waiting)
            except asyncio.QueueFull:
                return
            page = await waiting.page
            if page is not None:
                await self._write(writer, render_page(page))
        finally:
            writer.close()
            if not sent.done():
                sent.set_result(None)
            self._handlers.discard(task)

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, data: bytes) -> None:
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(WRITE_TIMEOUT):
                writer.write(data)
                await writer.drain()
