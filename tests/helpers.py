"""Small pieces shared by the store and fleet tests: sample credentials and child processes."""

from __future__ import annotations

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
def child(args: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """A child process (stderr kept for failure messages), killed and reaped on the way out."""
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
        if process.stderr is not None:
            process.stderr.close()


def wait_for_file(path: Path, process: subprocess.Popen[bytes]) -> None:
    """Wait (bounded) until ``process`` creates ``path``; fail with its stderr if it died."""
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    stderr = process.stderr.read() if process.poll() is not None and process.stderr else b""
    assert path.exists(), stderr
