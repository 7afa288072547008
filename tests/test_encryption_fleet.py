"""
Fleets of real OS processes on one encrypted FileStore and one encrypted RedisStore, against the
loopback TokenServer (rotation, reuse detection that revokes the family): a storm, a key
rotation in the middle of one, a process with a wrong key, a migration from plaintext.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from authfsm.adapters import (
    EncryptedCodec,
    FileStore,
    KeyRing,
    RedisStore,
    read_sealed_header,
    rotate_key,
)
from authfsm.engine import Record, Store
from authfsm.testing import TokenServer

from .redis_server import RedisServer, _redis_server  # noqa: F401 - a fixture
from .test_encryption import K1, K1_OTHER, K2

WORKERS = 8
SUBPROCESS_TIMEOUT = 30.0
ROTATIONS_MAX = 200  # the rotating thread's bound

# One worker: an engine on the store its spec names, with the keys in its own environment
# (AUTHFSM_TEST_KEYS; each process may get different ones). Ready, wait for "go", act once,
# print one JSON line. Every wait is bounded.
_WORKER = """
import json, os, sys, time
from datetime import timedelta
from pathlib import Path

from authfsm import AuthEngine, AuthError, Policy
from authfsm.adapters import EncryptedCodec, FileStore, KeyRing, OAuthTokenEndpoint, RedisStore

spec, token_url, ready, go = json.loads(sys.argv[1]), *sys.argv[2:5]
codec = EncryptedCodec(
    KeyRing.from_env("AUTHFSM_TEST_KEYS"), accept_plaintext=spec.get("migrate", False)
)
if spec["kind"] == "file":
    store = FileStore(spec["path"], codec=codec)
else:
    store = RedisStore(spec["url"], key=spec["key"], lease_ttl=5.0, codec=codec)
policy = Policy(lease_timeout=timedelta(seconds=20))
with OAuthTokenEndpoint(token_url, "test-client", timeout=10.0) as endpoint:
    try:
        engine = AuthEngine(store, endpoint, policy)
    except AuthError as error:
        engine, failure = None, error
    Path(ready).touch()
    deadline = time.monotonic() + 20
    while not Path(go).exists():
        if time.monotonic() > deadline:
            sys.exit("timed out waiting for go")
        time.sleep(0.001)
    try:
        if engine is None:
            raise failure
        out = {"token": engine.access_token(), "state": engine.state.value}
    except AuthError as error:
        out = {"error": type(error).__name__, "reason": error.reason, "message": str(error)}
print(json.dumps(out), flush=True)
"""


@pytest.fixture(name="idp")
def _idp() -> Iterator[TokenServer]:
    """The token server on the real clock (processes cannot share a fake one)."""
    with TokenServer(access_token_ttl=3600.0) as server:
        yield server


def spec_for(kind: str, tmp_path: Path, redis_server: RedisServer) -> dict[str, Any]:
    if kind == "file":
        return {"kind": "file", "path": str(tmp_path / "auth.json")}
    return {"kind": "redis", "url": redis_server.url, "key": f"enc-fleet-{tmp_path.name}"}


def open_store(spec: dict[str, Any], *lines: str, **options: bool) -> Store:
    codec = EncryptedCodec(KeyRing.parse("\n".join(lines)), **options) if lines else None
    if spec["kind"] == "file":
        return FileStore(spec["path"], codec=codec)
    return RedisStore(spec["url"], key=spec["key"], codec=codec)


def raw(spec: dict[str, Any], redis_server: RedisServer) -> bytes:
    if spec["kind"] == "file":
        return Path(spec["path"]).read_bytes()
    client = redis_server.client()
    try:
        value = client.get("authfsm:" + spec["key"])
    finally:
        client.close()
    assert isinstance(value, bytes)
    return value


def run_fleet(
    tmp_path: Path,
    spec: dict[str, Any],
    token_url: str,
    keys: list[str],
    not_before: float,
    during: threading.Thread | None = None,
    during_started: threading.Event | None = None,
) -> list[dict[str, Any]]:
    """
    Worker ``n`` gets the key text ``keys[n]``; all are released together at ``not_before``.
    ``during`` is started once they are ready, and they are released only after it set
    ``during_started``.
    """
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{n}" for n in range(len(keys))]
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), json.dumps(spec), token_url, str(ready[n]), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "AUTHFSM_TEST_KEYS": keys[n]},
        )
        for n in range(len(keys))
    ]
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT
        while not all(r.exists() for r in ready):
            assert time.monotonic() < deadline, "workers did not get ready"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.01)
        if during is not None:
            during.start()  # before, during and after the storm
        if during_started is not None:
            assert during_started.wait(SUBPROCESS_TIMEOUT), "the concurrent task did not start"
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


def stale_login(idp: TokenServer, store: Store) -> tuple[Any, float]:
    """A 1-second credential (due after half of it): returns it and when all may start."""
    creds = idp.issue(expires_in=1)
    store.write(Record(credential=creds), None)
    return creds, time.time() + 1.1


def assert_not_in(data: bytes, *secrets: str | None) -> None:
    text = data.decode()
    for secret in secrets:
        if secret:
            assert secret not in text


@pytest.mark.parametrize("kind", ["file", "redis"])
class TestEncryptedFleet:
    """Eight processes on one encrypted store."""

    def test_storm_one_call(self, kind, tmp_path, idp, redis_server):
        """All stale at once: one call, no reuse, one new token for all, sealed in the store."""
        spec = spec_for(kind, tmp_path, redis_server)
        store = open_store(spec, K1)
        old, start = stale_login(idp, store)

        outputs = run_fleet(tmp_path, spec, idp.token_url, [K1] * WORKERS, start)

        record = store.read()
        assert record is not None
        assert record.credential is not None
        assert (1, 0) == (idp.token_calls, idp.reuse_rejections)
        assert {record.credential.access_token} == {out.get("token") for out in outputs}
        assert ["fresh"] + ["reloaded"] * (WORKERS - 1) == sorted(o["state"] for o in outputs)
        assert idp.family_alive(record.credential)
        data = raw(spec, redis_server)
        assert "k1" == read_sealed_header(data).key_id  # type: ignore[union-attr]
        cred = record.credential
        assert_not_in(data, cred.access_token, cred.refresh_token, cred.id_token, old.refresh_token)

    def test_key_rotation_in_the_middle_of_a_storm(self, kind, tmp_path, idp, redis_server):
        """Half the fleet seals with k1, half with k2 (a rollout in progress), and rotate_key
        re-seals with k2 again and again while they storm: one call, no reuse, nobody loses the
        rotation, and afterwards k2 alone opens the store; the revision counts only the
        refresh."""
        spec = spec_for(kind, tmp_path, redis_server)
        _old, start = stale_login(idp, open_store(spec, K1))
        rotations: list[int | None] = []
        started, stop = threading.Event(), threading.Event()

        def rotate() -> None:
            rotator = open_store(spec, K2, K1)
            for _ in range(ROTATIONS_MAX):
                if stop.is_set():
                    return
                rotations.append(rotate_key(rotator, lease_timeout=20).revision)
                started.set()  # the fleet is released only after a first rotation
                time.sleep(0.005)

        thread = threading.Thread(target=rotate, daemon=True)
        keys = [f"{K1}\n{K2}", f"{K2}\n{K1}"] * (WORKERS // 2)
        try:
            outputs = run_fleet(
                tmp_path, spec, idp.token_url, keys, start, during=thread, during_started=started
            )
        finally:
            stop.set()
            thread.join(30)

        assert not thread.is_alive()
        final = rotate_key(open_store(spec, K2, K1))
        record = open_store(spec, K2).read()
        assert record is not None
        assert record.credential is not None
        assert (1, 0) == (idp.token_calls, idp.reuse_rejections)
        assert {record.credential.access_token} == {out.get("token") for out in outputs}
        assert idp.is_current(record.credential)
        assert ("k2", 2, 2) == (final.key_id, final.revision, record.revision)
        assert 1 == rotations[0]  # rotating before the refresh, on through the storm
        assert {1, 2} >= set(rotations)

    def test_a_process_with_a_wrong_key_fails_closed(self, kind, tmp_path, idp, redis_server):
        """One process has another key under the same id, one lacks the key id: both fail
        with CannotDecrypt and write nothing; the six others refresh once, as always."""
        spec = spec_for(kind, tmp_path, redis_server)
        store = open_store(spec, K1)
        _old, start = stale_login(idp, store)
        keys = [K1_OTHER, K2] + [K1] * (WORKERS - 2)

        outputs = run_fleet(tmp_path, spec, idp.token_url, keys, start)

        assert {("CannotDecrypt", "decryption_failed"), ("CannotDecrypt", "unknown_key_id")} == {
            (out["error"], out["reason"]) for out in outputs[:2]
        }
        for out in outputs[:2]:
            assert K1_OTHER.split(":")[1] not in out["message"]
            assert K1.split(":")[1] not in out["message"]
        good = outputs[2:]
        record = store.read()
        assert record is not None
        assert record.credential is not None
        assert (1, 0) == (idp.token_calls, idp.reuse_rejections)
        assert {record.credential.access_token} == {out["token"] for out in good}
        assert ["fresh"] + ["reloaded"] * (WORKERS - 3) == sorted(o["state"] for o in good)
        assert 2 == record.revision

    def test_migration_from_plaintext(self, kind, tmp_path, idp, redis_server):
        """A plaintext store, a fleet that now has the key and may migrate: one call, everyone
        keeps a working token, and the store is sealed for good."""
        spec = spec_for(kind, tmp_path, redis_server)
        old, start = stale_login(idp, open_store(spec))
        assert read_sealed_header(raw(spec, redis_server)) is None

        outputs = run_fleet(
            tmp_path, {**spec, "migrate": True}, idp.token_url, [K1] * WORKERS, start
        )

        record = open_store(spec, K1).read()  # strict: no plaintext accepted any more
        assert record is not None
        assert record.credential is not None
        assert (1, 0) == (idp.token_calls, idp.reuse_rejections)
        assert {record.credential.access_token} == {out.get("token") for out in outputs}
        cred = record.credential
        assert_not_in(raw(spec, redis_server), cred.access_token, cred.refresh_token, cred.id_token)
        assert old.access_token != cred.access_token
