"""
A real redis-server for tests: started on 127.0.0.1 (an ephemeral port) or a unix socket in a tmp
folder, ready once it answers PING, stopped (and reaped) even when a test fails.

No mocks and no fakeredis: RedisStore is tested against the server users run. A missing
``redis-server`` binary is a failure with a message that says how to install it, never a skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
MISSING = (
    "redis-server was not found on PATH (or in $AUTHFSM_REDIS_SERVER). The Redis tests need a "
    "real server: run .ci/redis-deps (it does `apt-get install -y redis-server`)."
)


def find_binary() -> str:
    """The redis-server binary; fails the test (never skips it) when there is none."""
    binary = os.environ.get("AUTHFSM_REDIS_SERVER") or shutil.which("redis-server")
    if not binary or not os.access(binary, os.X_OK):
        pytest.fail(MISSING, pytrace=False)
    return binary


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """
    One redis-server process with its data folder.

    Args:
        folder: where its data, log and (with ``unix_socket``) socket live.
        unix_socket: listen on ``folder/redis.sock`` instead of a TCP port.
        persistent: append-only file fsynced on every write, so a SIGKILL loses nothing and a
            restart (:meth:`start` again, same port) brings every key back.
        tls: (certificate, key) of a self-signed server certificate: serve TLS only, on the
            port (``rediss://``), with the certificate as the clients' CA.
        extra: more ``--option value`` arguments.
    """

    def __init__(
        self,
        folder: Path,
        *,
        unix_socket: bool = False,
        persistent: bool = False,
        tls: tuple[Path, Path] | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.unix_socket = unix_socket
        self.persistent = persistent
        self.tls = tls
        self.extra = extra
        self.port = 0 if unix_socket else free_port()
        self.socket_path = folder / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        if self.unix_socket:
            return f"unix://{self.socket_path}?db=0"
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        options: dict[str, object] = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}
        if self.tls:
            options["ssl_ca_certs"] = str(self.tls[0])
        return redis.Redis.from_url(self.url, **options)

    def start(self) -> RedisServer:
        """Start (or restart, on the same port and data) and wait until it answers PING."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("redis-server is already running")
        args = [
            find_binary(),
            "--bind", "127.0.0.1",
            "--port", "0" if self.tls else str(self.port),
            "--dir", str(self.folder),
            "--logfile", str(self.folder / "redis.log"),
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
            "--appendfsync", "always",
        ]  # fmt: skip
        if self.unix_socket:
            args += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        if self.tls:
            cert, key = self.tls
            args += [
                "--tls-port", str(self.port),
                "--tls-cert-file", str(cert),
                "--tls-key-file", str(key),
                "--tls-ca-cert-file", str(cert),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        args += list(self.extra)
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.starts += 1
        try:
            self._wait_ready()
        except BaseException:
            self.stop(kill=True)
            raise
        return self

    def stop(self, *, kill: bool = False) -> None:
        """SIGKILL (``kill``) or SIGTERM the server and reap it. Idempotent."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)
        if process.stderr is not None:
            process.stderr.close()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        assert self.process is not None
        while True:
            if self.process.poll() is not None:
                log = self.folder / "redis.log"
                stderr = (
                    self.process.stderr.read().decode(errors="replace")
                    if self.process.stderr
                    else ""
                )
                text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                pytest.fail(f"redis-server exited with {self.process.returncode}: {stderr}{text}")
            try:
                with contextlib.closing(self.client()) as client:
                    if client.ping():
                        return
            except redis.exceptions.ConnectionError:  # not listening yet, or still loading
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"redis-server did not answer PING within {START_TIMEOUT:g} s")
            time.sleep(0.01)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop(kill=True)


@contextlib.contextmanager
def running_redis(**kwargs: object) -> Iterator[RedisServer]:
    """A started server in its own temporary folder; stopped and removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="authfsm-redis-"))
    try:
        with RedisServer(folder, **kwargs) as server:  # type: ignore[arg-type]
            yield server
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(name="redis_server", scope="session")
def _redis_server() -> Iterator[RedisServer]:
    """One server for the session; tests isolate themselves by key (see ``redis_key``)."""
    with running_redis() as server:
        yield server


@pytest.fixture(name="redis_key")
def _redis_key(request: pytest.FixtureRequest) -> str:
    """A key no other test uses."""
    return f"{request.node.name[:60]}:{os.urandom(6).hex()}"
