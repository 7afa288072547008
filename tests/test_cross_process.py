"""Real OS processes sharing one credential file and one loopback token server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from authfsm.adapters import FileStore
from authfsm.engine import Credentials, Record
from authfsm.testing import TokenServer

WORKERS = 8
SUBPROCESS_TIMEOUT = 30.0

# One worker: build an engine on the shared file, say it is ready, wait for "go", act once,
# print what it saw as one JSON line. Every wait is bounded.
_WORKER = """
import json, sys, time
from datetime import timedelta
from pathlib import Path

from authfsm import AuthEngine, Policy
from authfsm.adapters import FileStore, OAuthTokenEndpoint

path, token_url, ready, go, mode = sys.argv[1:6]
policy = Policy(lease_timeout=timedelta(seconds=20))
with OAuthTokenEndpoint(token_url, "test-client", timeout=10.0) as endpoint:
    engine = AuthEngine(FileStore(path), endpoint, policy)
    Path(ready).touch()
    deadline = time.monotonic() + 20
    while not Path(go).exists():
        if time.monotonic() > deadline:
            sys.exit("timed out waiting for go")
        time.sleep(0.001)
    if mode == "token":
        token = engine.access_token()
        out = {"token": token, "state": engine.state.value}
    else:
        statuses = [engine.status(refresh=True) for _ in range(10)]
        out = {
            "states": [s.state.value for s in statuses],
            "requires_login": [s.requires_login for s in statuses],
            "failure": statuses[-1].failure,
        }
print(json.dumps(out), flush=True)
"""


@pytest.fixture(name="real_server")
def _real_server() -> Iterator[TokenServer]:
    """A token server on the real clock (the workers cannot share a fake one)."""
    with TokenServer(access_token_ttl=3600.0) as server:
        yield server


def stale_credential(server: TokenServer, path: Path) -> Credentials:
    """Store a 1-second credential and wait until it is past its refresh point for everyone."""
    creds = server.issue(expires_in=1)
    FileStore(path).write(Record(credential=creds), None)
    return creds


def run_workers(
    tmp_path: Path, path: Path | list[Path], token_url: str, mode: str, not_before: float
) -> list[dict[str, object]]:
    """
    Start the workers, release them together once all are ready and ``not_before`` passed.

    With a list of paths, worker ``n`` opens the credential file by ``path[n % len(path)]``.
    """
    paths = path if isinstance(path, list) else [path]
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{n}" for n in range(WORKERS)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(paths[n % len(paths)]),
                token_url,
                str(ready[n]),
                str(go),
                mode,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(WORKERS)
    ]
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT
        while not all(r.exists() for r in ready):
            assert time.monotonic() < deadline, "workers did not get ready"
            assert all(p.poll() is None for p in procs), [p.communicate()[1] for p in procs]
            time.sleep(0.01)
        while time.time() < not_before:
            time.sleep(0.01)
        go.touch()
        outputs = []
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
            assert 0 == proc.returncode, stderr
            outputs.append(json.loads(stdout.strip().splitlines()[-1]))
        return outputs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=5)


class TestFleetRefresh:
    """Eight processes finding one credential stale at once make one token call."""

    def test_one_call_one_new_token_for_all(self, tmp_path, real_server):
        """All 8 print the same new token, the file's and the server's current one; one call."""
        path = tmp_path / "auth.json"
        creds = stale_credential(real_server, path)
        issued_at = time.time()

        outputs = run_workers(tmp_path, path, real_server.token_url, "token", issued_at + 1.1)

        record = FileStore(path).read()
        assert record is not None
        assert record.credential is not None
        assert 1 == real_server.token_calls
        assert 0 == real_server.reuse_rejections
        tokens = {out["token"] for out in outputs}
        assert {record.credential.access_token} == tokens
        assert creds.access_token not in tokens
        assert real_server.is_current(record.credential)
        assert real_server.family_alive(record.credential)
        assert ["fresh"] + ["reloaded"] * (WORKERS - 1) == sorted(o["state"] for o in outputs)
        assert 2 == record.revision
        assert None is record.poison


class TestFleetThroughASymlink:
    """Processes opening one file through a symlink and through its target share one lease."""

    def test_one_call_and_the_link_is_kept(self, tmp_path, real_server):
        """4 workers by the link, 4 by the target: one call, one token, the link still a link."""
        (tmp_path / "real").mkdir()
        target = tmp_path / "real" / "auth.json"
        link = tmp_path / "auth.json"
        link.symlink_to(target)
        creds = stale_credential(real_server, target)
        issued_at = time.time()

        outputs = run_workers(
            tmp_path, [link, target], real_server.token_url, "token", issued_at + 1.1
        )

        record = FileStore(target).read()
        assert record is not None
        assert record.credential is not None
        assert (1, 0) == (real_server.token_calls, real_server.reuse_rejections)
        assert {record.credential.access_token} == {out["token"] for out in outputs}
        assert creds.access_token != record.credential.access_token
        assert real_server.is_current(record.credential)
        assert ["fresh"] + ["reloaded"] * (WORKERS - 1) == sorted(o["state"] for o in outputs)
        assert link.is_symlink()
        assert target == link.resolve()


class TestFleetPoison:
    """After a permanent failure the fleet stops calling."""

    def test_revoked_family_one_call_all_poisoned(self, tmp_path, real_server):
        """8 processes x 10 status(refresh=True) on a revoked family: one call, all poisoned."""
        path = tmp_path / "auth.json"
        creds = stale_credential(real_server, path)
        issued_at = time.time()
        real_server.revoke_family_of(creds)

        outputs = run_workers(tmp_path, path, real_server.token_url, "status", issued_at + 1.1)

        assert 1 == real_server.token_calls
        assert 0 == real_server.reuse_rejections
        for out in outputs:
            assert ["poisoned"] * 10 == out["states"]
            assert [True] * 10 == out["requires_login"]
            assert "invalid_grant" == out["failure"]
        record = FileStore(path).read()
        assert record is not None
        assert creds == record.credential
        assert record.poisoned() is not None
        assert "invalid_grant" == record.poison.reason
