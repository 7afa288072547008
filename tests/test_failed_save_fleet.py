"""
A refresh whose write fails, across real OS processes (issue 12.1 beyond one process).

Process A refreshes (the strict loopback token server rotates the refresh token) while its store
refuses every write, as a full disk or a broken connection would. A keeps serving the new tokens
and keeps the lease until a later call writes them. Process B (this test), on a healthy store
object, must never take the lease meanwhile: it would read the older record and spend its
refresh token again, and the server would revoke the whole family. Once A's write lands, B
adopts A's tokens without a call. File store and Redis store alike.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from authfsm import AuthEngine, Policy
from authfsm.adapters import OAuthTokenEndpoint
from authfsm.testing import TokenServer

from .helpers import SUBPROCESS_TIMEOUT, child, wait_for_file
from .redis_server import RedisServer, _redis_server  # noqa: F401 - a fixture
from .test_fleet import DUE_AFTER, LIFETIME, open_store, stale_login, store_spec

# Process A: writes fail while the flag file exists; after its refresh it says so (ready) and,
# once told (go), calls again until its tokens are written, then prints them.
_KEEPER = """
import json, sys, time
from datetime import timedelta
from pathlib import Path
from authfsm import AuthEngine, Policy
from authfsm.adapters import FileStore, OAuthTokenEndpoint, RedisStore
from authfsm.engine import StorageUnavailable

kind, where, key, token_url, flag, ready, go, not_before = sys.argv[1:]


class FullDisk:
    def __init__(self, inner):
        self.inner = inner

    @property
    def location(self):
        return self.inner.location

    def read(self):
        return self.inner.read()

    def write(self, record, expected_revision):
        if Path(flag).exists():
            raise StorageUnavailable("No space left on device", reason="storage_unavailable")
        return self.inner.write(record, expected_revision)

    def delete(self, expected_revision):
        self.inner.delete(expected_revision)

    def lease(self, timeout):
        return self.inner.lease(timeout)


inner = FileStore(where) if kind == "file" else RedisStore(where, key=key, lease_ttl=1.0)
policy = Policy(jitter=lambda: 0.0, lease_timeout=timedelta(seconds=5))
with OAuthTokenEndpoint(token_url, "test-client", timeout=10.0) as endpoint:
    engine = AuthEngine(FullDisk(inner), endpoint, policy)
    time.sleep(max(float(not_before) - time.time(), 0.0))
    token = engine.access_token()
    assert engine.status().unsaved
    Path(ready).write_text(token)
    deadline = time.monotonic() + 30
    while not Path(go).exists():
        assert time.monotonic() < deadline, "never told to go on"
        time.sleep(0.01)
    for _ in range(100):
        if not engine.status().unsaved:
            break
        time.sleep(0.1)
    print(json.dumps({"token": engine.access_token(), "unsaved": engine.status().unsaved}))
"""


@pytest.mark.parametrize("kind", ["file", "redis"])
def test_a_sibling_never_spends_what_a_failed_save_holds(
    kind: str, tmp_path: Path, redis_server: RedisServer
) -> None:
    with TokenServer(access_token_ttl=3600.0) as idp:
        spec = store_spec(kind, tmp_path, redis_server)
        store = open_store(spec)
        _, due = stale_login(idp, store)
        script, flag, ready, go = (tmp_path / name for name in ("keeper.py", "full", "ready", "go"))
        script.write_text(_KEEPER)
        flag.touch()
        where = spec["path"] if kind == "file" else spec["url"]
        args = [kind, where, spec.get("key", ""), idp.token_url, str(flag), str(ready), str(go)]
        command = [sys.executable, str(script), *args, str(due)]
        with child(command, stdout=subprocess.PIPE) as keeper:
            wait_for_file(ready, keeper)
            minted = ready.read_text()
            time.sleep(max(due - DUE_AFTER + LIFETIME + 0.05 - time.time(), 0.0))
            policy = Policy(jitter=lambda: 0.0, lease_timeout=timedelta(seconds=0.5))
            with OAuthTokenEndpoint(idp.token_url, "test-client", timeout=10.0) as endpoint:
                sibling = AuthEngine(open_store(spec), endpoint, policy)
                # The stored credential has expired: B wants to refresh, but the lease
                # stays with A, whose tokens exist nowhere else. B backs off (serving what it
                # has, as after any transient failure) and makes no call.
                assert minted != sibling.access_token()
                assert "lease_timeout" == sibling.status().failure
                assert (1, 0) == (idp.token_calls, idp.reuse_rejections)

                flag.unlink()  # the disk has room again
                go.touch()
                out, _ = keeper.communicate(timeout=SUBPROCESS_TIMEOUT)
                assert 0 == keeper.returncode
                assert {"token": minted, "unsaved": False} == json.loads(out)

                deadline = time.monotonic() + 5.0
                # B backs off after its lease timeout (0.5 s), then reads and adopts.
                while (token := sibling.access_token()) != minted:
                    assert time.monotonic() < deadline, "B never adopted A's tokens"
                    time.sleep(0.1)

        record = store.read()
        assert record is not None
        assert record.credential is not None
        assert minted == token == record.credential.access_token
        assert (1, 0) == (idp.token_calls, idp.reuse_rejections)
        assert idp.family_alive(record.credential)
