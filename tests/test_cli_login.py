"""`authfsm login --issuer` and then `authfsm token`, run as a user runs them (subprocesses)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import httpx
import pytest

from authfsm import AuthEngine
from authfsm.adapters import FileStore
from authfsm.testing import TokenServer

from .helpers import SUBPROCESS_TIMEOUT
from .test_cli import run_cli

CLIENT = "cli-test"


@pytest.fixture(name="idp")
def _idp() -> Iterator[TokenServer]:
    with TokenServer(client_id=CLIENT, client_secret=None, device_interval=1) as server:
        server.login_as("carol", "acme")
        yield server


def login(idp: TokenServer, store: Path, *extra: str, act) -> subprocess.CompletedProcess[str]:
    """Run `authfsm login --issuer`; ``act`` reads its stderr lines and plays the user."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "authfsm.cli",
            "login",
            "--issuer",
            idp.issuer,
            "--client-id",
            CLIENT,
            "--store",
            str(store),
            "--login-timeout",
            "20",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []

    def watch() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            seen.append(line)
            act(line)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        process.wait(timeout=SUBPROCESS_TIMEOUT)  # stderr is the watcher's alone
        assert process.stdout is not None
        out = process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
    watcher.join(timeout=5)
    return subprocess.CompletedProcess(process.args, process.returncode, out, "".join(seen))


def visit(line: str) -> None:
    """The user opens the printed address (the test provider approves at once)."""
    match = re.search(r"(http://127\.0\.0\.1:\d+/authorize\?\S+)", line)
    if match:
        threading.Thread(
            target=httpx.get,
            args=(match.group(1),),
            kwargs={"follow_redirects": True, "timeout": 10.0},
            daemon=True,
        ).start()


def test_browser_login_then_token_refreshes_from_the_stored_issuer(idp, tmp_path):
    store = tmp_path / "auth.json"

    done = login(idp, store, "--no-browser", act=visit)

    assert 0 == done.returncode, done.stderr
    assert "Logged in as carol" in done.stdout
    assert "identity verified" in done.stdout
    status = run_cli("status", "--store", str(store))
    assert idp.issuer in status.stdout
    assert "verified (id_token" in status.stdout
    # Make it due, then the credential helper refreshes with nothing but --store.
    engine = AuthEngine(FileStore(store))
    old = engine.credentials
    now = datetime.now(UTC)
    engine.login(attrs.evolve(old, expires_at=now, last_refresh=now - timedelta(hours=1)))
    calls = idp.token_calls
    token = run_cli("token", "--store", str(store))
    assert 0 == token.returncode, token.stderr
    assert token.stdout.strip() != old.access_token
    assert calls + 1 == idp.token_calls
    assert 0 == idp.reuse_rejections


def test_device_login(idp, tmp_path):
    store = tmp_path / "auth.json"

    def approve(line: str) -> None:
        match = re.search(r"the code ([A-Z0-9-]+)", line)
        if match:
            idp.approve_device(match.group(1))

    done = login(idp, store, "--device", act=approve)

    assert 0 == done.returncode, done.stderr
    assert "Never share this code" in done.stderr
    assert "carol" in done.stdout
    assert FileStore(store).read().credential.issuer == idp.issuer


def test_a_provider_that_cannot_be_discovered_is_a_usage_error(tmp_path):
    idp_url = "http://127.0.0.1:9/nowhere"  # nothing listens on the discard port
    done = run_cli(
        "login", "--issuer", idp_url, "--client-id", CLIENT, "--store", str(tmp_path / "a.json")
    )
    assert done.returncode in (2, 3)
    assert not (tmp_path / "a.json").exists()


def test_denied_login_exits_1_and_writes_nothing(idp, tmp_path):
    from authfsm.testing import ScriptedRedirect

    idp.script_authorization(ScriptedRedirect(error="access_denied", error_description="no"))
    store = tmp_path / "auth.json"

    done = login(idp, store, "--no-browser", act=visit)

    assert 1 == done.returncode
    assert not store.exists()
