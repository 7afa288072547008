"""The endpoint timeout bounds the whole exchange: dripping headers cannot hold a call."""

from __future__ import annotations

import asyncio
import queue
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from authfsm.adapters import OAuthTokenEndpoint
from authfsm.engine import Credentials, Refreshed, TransientFailure

TIMEOUT = 0.6
#: The call must be back by then; dripping the whole head takes over ten times as long.
LATEST = TIMEOUT + 0.5
DRIP_PAUSE = 0.2
ANSWER = b'{"access_token": "at-new", "refresh_token": "rt-new", "expires_in": 3600}'
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(
    ANSWER
)
CREDS = Credentials(access_token="at-old", refresh_token="rt-old")
DEADLINE = TransientFailure(reason="network:ReadTimeout")


class DripServer:
    """
    A raw HTTP/1.1 server on 127.0.0.1 that answers each request per a script: ``"ok"`` answers at
    once (keeping the connection open), ``"drip"`` sends the status line and headers one byte
    every 0.2 s. It records when each dripping connection was found closed by the client.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.script: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.stop = threading.Event()
        self.requests = 0
        self.hung_up_at: list[float] = []
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}/oauth/token"

    def __enter__(self) -> DripServer:
        self._accepting.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self._accepting.join(timeout=2)
        for thread in self._threads:
            thread.join(timeout=2)
        self._listener.close()

    def _accept(self) -> None:
        deadline = time.monotonic() + 60
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(0.05)
            for _ in range(10):  # requests on one connection
                if not self._read_request(conn):
                    return
                self.requests += 1
                if self.script.get_nowait() == "ok":
                    conn.sendall(HEAD + ANSWER)
                    continue
                self._drip(conn, HEAD + ANSWER)
                return

    def _read_request(self, conn: socket.socket) -> bool:
        data = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not self.stop.is_set():
            head, sep, rest = data.partition(b"\r\n\r\n")
            if sep:
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if len(rest) >= length:
                    return True
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                return False
            data += chunk
        return False

    def _drip(self, conn: socket.socket, reply: bytes) -> None:
        for byte in reply:
            if self.stop.wait(DRIP_PAUSE):
                return
            try:
                conn.sendall(bytes([byte]))
                # The client shutting the connection down shows up as EOF here.
                if self._closed_by_peer(conn):
                    break
            except OSError:
                break
        self.hung_up_at.append(time.monotonic())

    @staticmethod
    def _closed_by_peer(conn: socket.socket) -> bool:
        try:
            return conn.recv(1, socket.MSG_PEEK) == b""
        except TimeoutError:
            return False


@pytest.fixture(name="dripping")
def _dripping(monkeypatch) -> Iterator[DripServer]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with DripServer() as server:
        yield server


def endpoint_for(server: DripServer, **kwargs) -> OAuthTokenEndpoint:
    return OAuthTokenEndpoint(
        server.url, "my-cli", revoke_url=server.url, timeout=TIMEOUT, **kwargs
    )


def timed(call):
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


class TestSync:
    """refresh() and revoke() return by the deadline however slowly the headers come."""

    def test_refresh(self, dripping):
        """Dripping headers give the deadline failure on time, and the socket is shut down."""
        dripping.script.put("drip")
        with endpoint_for(dripping) as endpoint:
            outcome, took = timed(lambda: endpoint.refresh(CREDS))
            returned = time.monotonic()

            assert (DEADLINE, True) == (outcome, took < LATEST)
            # The worker does not linger: its connection is closed within a drip or two.
            for _ in range(40):
                if dripping.hung_up_at:
                    break
                time.sleep(0.05)
            assert dripping.hung_up_at
            assert dripping.hung_up_at[0] - returned < 2 * DRIP_PAUSE + 0.2

    def test_revoke(self, dripping):
        """A revoke against dripping headers is False, on time."""
        dripping.script.put("drip")
        with endpoint_for(dripping) as endpoint:
            answer, took = timed(lambda: endpoint.revoke(CREDS))
        assert (False, True) == (answer, took < LATEST)

    def test_reused_pooled_connection(self, dripping):
        """On a caller's client whose kept-alive connection drips, the caller is still let go."""
        dripping.script.put("ok")
        dripping.script.put("drip")
        with httpx.Client() as client, endpoint_for(dripping, client=client) as endpoint:
            first = endpoint.refresh(CREDS)
            outcome, took = timed(lambda: endpoint.refresh(CREDS))

        assert Refreshed(access_token="at-new", refresh_token="rt-new", expires_in=3600) == first
        assert (DEADLINE, True) == (outcome, took < LATEST)
        assert 2 == dripping.requests  # the second request did reuse the connection

    def test_prompt_server_unaffected(self, dripping):
        """A server that answers at once is adopted as before."""
        dripping.script.put("ok")
        with endpoint_for(dripping) as endpoint:
            outcome = endpoint.refresh(CREDS)
        assert Refreshed(access_token="at-new", refresh_token="rt-new", expires_in=3600) == outcome


class TestAsync:
    """refresh_async() and revoke_async() return by the deadline, on their own client or ours."""

    @pytest.mark.parametrize("own_client", [True, False])
    def test_refresh(self, dripping, own_client):
        """Dripping headers give the deadline's TransientFailure, on time."""
        dripping.script.put("drip")
        endpoint = endpoint_for(dripping)

        async def run():
            if own_client:
                return await endpoint.refresh_async(CREDS)
            async with httpx.AsyncClient() as client:
                return await endpoint.refresh_async(CREDS, client=client)

        outcome, took = timed(lambda: asyncio.run(run()))
        endpoint.close()
        assert (DEADLINE, True) == (outcome, took < LATEST)

    @pytest.mark.parametrize("own_client", [True, False])
    def test_revoke(self, dripping, own_client):
        """A revoke against dripping headers is False, on time."""
        dripping.script.put("drip")
        endpoint = endpoint_for(dripping)

        async def run():
            if own_client:
                return await endpoint.revoke_async(CREDS)
            async with httpx.AsyncClient() as client:
                return await endpoint.revoke_async(CREDS, client=client)

        answer, took = timed(lambda: asyncio.run(run()))
        endpoint.close()
        assert (False, True) == (answer, took < LATEST)
