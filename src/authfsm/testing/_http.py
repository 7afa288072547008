"""
The HTTP plumbing of the test token server: a threaded loopback server, request framing
(Content-Length and chunked bodies) and form/JSON parameter parsing. What to answer is decided by
the owner (:class:`~._token_server.TokenServer`); nothing here knows about tokens.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import attrs

__all__ = ["LoopbackHTTPServer", "MalformedRequestError", "Reply", "parse_params"]

_MAX_BODY = 32 * 1024 * 1024
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,8}")
_MAX_TRAILERS = 64


@attrs.frozen(kw_only=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    drop: bool = False


class MalformedRequestError(Exception):
    """The request could not be read or parsed; answered 400 invalid_request."""


class Owner(Protocol):
    """What the server asks for each request."""

    def _handle(
        self,
        method: str,
        path: str,
        content_type: str | None,
        authorization: str | None,
        body: bytes,
        *,
        query: str = "",
    ) -> Reply: ...

    def _unreadable(self, path: str, method: str) -> Reply: ...


class LoopbackHTTPServer(ThreadingHTTPServer):
    # Handler threads must never keep a test process alive, and 32+ clients connect at once.
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, owner: Owner) -> None:
        self.owner = owner
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def track(self, connection: socket.socket, *, open_: bool) -> None:
        with self._connections_lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_connections(self) -> None:
        # Idle keep-alive connections would otherwise outlive stop() and hide a server "crash".
        with self._connections_lock:
            connections = list(self._connections)
            self._connections.clear()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (a timeout test) is normal here; anything else is a bug worth a
        # traceback, which never contains request data.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: LoopbackHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "authfsm-testing"
    sys_version = ""
    # An idle keep-alive connection is closed after this long, so handler threads do not pile up.
    timeout = 30.0
    # Headers and body leave in separate writes; without TCP_NODELAY, Nagle plus delayed ACK adds
    # tens of milliseconds to every request, which would swamp benchmarks.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, open_=True)

    def finish(self) -> None:
        self.server.track(self.connection, open_=False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        # The default writes every request line to stderr; tests want silence.
        return

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def _serve(self) -> None:
        owner = self.server.owner
        # The query is handed over for endpoints that take it (``/authorize``), never logged.
        target = urlsplit(self.path)
        path = target.path
        try:
            body = _read_body(
                self.rfile,
                self.headers.get("Content-Length"),
                self.headers.get("Transfer-Encoding"),
            )
        except MalformedRequestError:
            # The framing is broken, so the rest of the stream cannot be trusted.
            self.close_connection = True
            reply = owner._unreadable(path, self.command)
        else:
            reply = owner._handle(
                self.command,
                path,
                self.headers.get("Content-Type"),
                self.headers.get("Authorization"),
                body,
                query=target.query,
            )
        if reply.delay > 0:
            time.sleep(reply.delay)
        if reply.drop:
            self.close_connection = True
            return
        self._write(reply)

    def _write(self, reply: Reply) -> None:
        try:
            self.send_response(reply.status)
            if reply.content_type is not None:
                self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            # RFC 6749 §5.1: token responses must not be cached.
            self.send_header("Cache-Control", "no-store")
            self.send_header("Pragma", "no-cache")
            for name, value in reply.headers:
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(reply.body)
            self.wfile.flush()
        except OSError:
            # The client gave up (a timeout test); nothing to answer any more.
            self.close_connection = True


def _read_body(
    rfile: io.BufferedIOBase, content_length: str | None, transfer_encoding: str | None
) -> bytes:
    if transfer_encoding is not None:
        if transfer_encoding.strip().lower() != "chunked":
            raise MalformedRequestError
        return _read_chunked(rfile)
    if content_length is None:
        return b""
    if not content_length.strip().isdigit():
        raise MalformedRequestError
    length = int(content_length)
    if length > _MAX_BODY:
        raise MalformedRequestError
    body = rfile.read(length)
    if len(body) != length:
        raise MalformedRequestError
    return body


def _read_chunked(rfile: io.BufferedIOBase) -> bytes:
    parts: list[bytes] = []
    total = 0
    # Each chunk carries at least one byte, so the cap also bounds the number of chunks.
    while True:
        line = rfile.readline(1024)
        if not line.endswith(b"\n"):
            raise MalformedRequestError
        size_text = line.split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(size_text):
            raise MalformedRequestError
        size = int(size_text, 16)
        if size == 0:
            break
        total += size
        if total > _MAX_BODY:
            raise MalformedRequestError
        chunk = rfile.read(size)
        if len(chunk) != size or rfile.readline(3) not in (b"\r\n", b"\n"):
            raise MalformedRequestError
        parts.append(chunk)
    for _ in range(_MAX_TRAILERS):
        trailer = rfile.readline(8192)
        if trailer in (b"\r\n", b"\n"):
            return b"".join(parts)
        if not trailer.endswith(b"\n"):
            raise MalformedRequestError
    raise MalformedRequestError


def parse_params(content_type: str | None, body: bytes) -> dict[str, str]:
    """The request parameters from a form or JSON body; MalformedRequestError for anything else."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedRequestError from None
    if media_type == "application/json":
        try:
            value = json.loads(text)
        except ValueError:
            raise MalformedRequestError from None
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise MalformedRequestError
        return {str(k): str(v) for k, v in value.items()}
    if media_type == "application/x-www-form-urlencoded":
        try:
            parsed = parse_qs(text, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise MalformedRequestError from None
        # RFC 6749 §3.1: a parameter sent more than once makes the request invalid.
        if any(len(values) != 1 for values in parsed.values()):
            raise MalformedRequestError
        return {key: values[0] for key, values in parsed.items()}
    raise MalformedRequestError
