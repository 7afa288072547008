"""Small pieces shared by the store and fleet tests: sample credentials and child processes."""

from __future__ import annotations

import random
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from authfsm import Credentials

SUBPROCESS_TIMEOUT = 30.0


def sample_credentials(access: str, refresh: str, **fields: Any) -> Credentials:
    """A credential of account acct-1, refreshed 2029-12-31 23:00 UTC, expiring an hour later."""
    values: dict[str, Any] = {
        "expires_at": datetime(2030, 1, 1, tzinfo=UTC),
        "account_id": "acct-1",
        "last_refresh": datetime(2029, 12, 31, 23, tzinfo=UTC),
        **fields,
    }
    return Credentials(access_token=access, refresh_token=refresh, **values)


@contextmanager
def child(
    args: list[str], *, stdout: int = subprocess.DEVNULL
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process (stderr kept for failure messages), killed and reaped on the way out."""
    process = subprocess.Popen(args, stdout=stdout, stderr=subprocess.PIPE)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


def wait_for_file(path: Path, process: subprocess.Popen[bytes]) -> None:
    """Wait (bounded) until ``process`` creates ``path``; fail with its stderr if it died."""
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    stderr = process.stderr.read() if process.poll() is not None and process.stderr else b""
    assert path.exists(), stderr


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that nobody listened on a moment ago, chosen below the ephemeral
    range: between choosing it and a server binding it, no outgoing connection of this or another
    test process can take it as its source port (CI saw that with an ephemeral port).
    """
    low = _ephemeral_low()
    for _ in range(100):
        port = random.randrange(max(1024, low - 12000), low)  # noqa: S311 - not a secret
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
