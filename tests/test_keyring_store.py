"""KeyringStore on a real file-based keyring (keyrings.alt): CAS, lease, errors, processes."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

# Both come with the test extra; a missing one is an install failure, not a reason to skip.
import keyring.backends.fail as fail_backend
import keyrings.alt.file as keyring_file
import pytest

from authfsm import AsyncAuthEngine, AuthEngine, Credentials, State
from authfsm.adapters import CodexCodec
from authfsm.adapters.storage._keyring import KeyringStore, default_lock_path
from authfsm.engine import (
    Backoff,
    LeaseTimeout,
    Poison,
    Record,
    StorageCorrupt,
    StorageUnavailable,
    WriteConflict,
)
from authfsm.testing import TokenServer, check_store

from .helpers import SUBPROCESS_TIMEOUT, sample_credentials

SERVICE = "authfsm-test"
USER = "alice@example"
ACCESS = "at-SECRET-71b0d2e94c"
REFRESH = "rt-SECRET-0f6e3a58d2"
SECRETS = (ACCESS, REFRESH)
CREDS = sample_credentials(ACCESS, REFRESH)
_serial = itertools.count()


def plaintext_keyring(path: Path) -> object:
    """keyrings.alt's file backend, storing its secrets in ``path``."""
    backend = keyring_file.PlaintextKeyring()
    backend.file_path = str(path)
    return backend


def creds(n: int) -> Credentials:
    return Credentials(access_token=f"at-{n}-" + "x" * (n * 37 % 500), refresh_token=f"rt-{n}")


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


@pytest.fixture(name="keyring_path")
def _keyring_path(tmp_path: Path) -> Path:
    return tmp_path / "keyring" / "keyring_pass.cfg"


@pytest.fixture(name="lock_path")
def _lock_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "authfsm.lock"


@pytest.fixture(name="store")
def _store(keyring_path: Path, lock_path: Path) -> KeyringStore:
    return KeyringStore(SERVICE, USER, backend=plaintext_keyring(keyring_path), lock_path=lock_path)


def sibling(store: KeyringStore, keyring_path: Path) -> KeyringStore:
    """Another process's view: its own backend object on the same keyring file and lock."""
    return KeyringStore(
        store.service,
        store.username,
        backend=plaintext_keyring(keyring_path),
        lock_path=store.lock_path,
    )


class TestRecords:
    """The record is one secret in the keyring: written, read back, counted."""

    def test_empty_then_written_then_read(self, store, keyring_path):
        """An empty keyring reads None; a write stores native JSON under service and user."""
        assert None is store.read()

        stored = store.write(Record(credential=CREDS), None)

        assert 1 == stored.revision
        assert stored == store.read()
        assert stored == sibling(store, keyring_path).read()
        secret = plaintext_keyring(keyring_path).get_password(SERVICE, USER)
        assert "authfsm/1" == json.loads(secret)["format"]
        assert 0o600 == stat.S_IMODE(keyring_path.stat().st_mode)

    def test_revisions_markers_and_tombstone(self, store):
        """+1 per write; markers round-trip; a logout's tombstone keeps the revision counting."""
        record = Record(
            credential=CREDS,
            poison=Poison(fingerprint=CREDS.fingerprint, reason="invalid_grant", at=1.5),
            backoff=Backoff(fingerprint=CREDS.fingerprint, not_before=2.25, failures=3),
        )
        revisions = []
        current = None
        for rec in (record, Record(credential=creds(1)), Record(credential=None)):
            current = store.write(rec, None if current is None else current.revision)
            revisions.append(current.revision)
            assert current == store.read()

        assert [1, 2, 3] == revisions
        with pytest.raises(WriteConflict):
            store.write(Record(credential=CREDS), None)

    def test_other_secrets_are_left_alone(self, store, keyring_path):
        """Other entries of the same keyring survive our writes and deletes."""
        backend = plaintext_keyring(keyring_path)
        backend.set_password(SERVICE, "bob", "bob's secret")
        backend.set_password("another-app", USER, "theirs")

        record = store.write(Record(credential=CREDS), None)
        store.delete(record.revision)

        assert None is store.read()
        assert "bob's secret" == backend.get_password(SERVICE, "bob")
        assert "theirs" == backend.get_password("another-app", USER)

    def test_another_codec_sees_the_secret_it_replaces(self, keyring_path, lock_path):
        """With CodexCodec (Codex's own keyring entry), fields Codex owns survive a rewrite."""
        backend = plaintext_keyring(keyring_path)
        codex = {"OPENAI_API_KEY": "sk-SECRET-1", "a_newer_codex_field": [1, {"x": None}]}
        backend.set_password("Codex Auth", "cli|0123456789abcdef", json.dumps(codex))
        store = KeyringStore(
            "Codex Auth",
            "cli|0123456789abcdef",
            backend=backend,
            lock_path=lock_path,
            codec=CodexCodec(),
        )
        record = store.read()

        stored = store.write(Record(credential=Credentials.api_key("sk-SECRET-2")), record.revision)

        assert stored == store.read()
        saved = json.loads(backend.get_password("Codex Auth", "cli|0123456789abcdef"))
        assert "sk-SECRET-2" == saved["OPENAI_API_KEY"]
        assert [1, {"x": None}] == saved["a_newer_codex_field"]


class TestCompareAndSwap:
    """write() and delete() succeed only against the current revision."""

    def test_stale_expected_revision_is_refused(self, store, keyring_path):
        """Wrong revisions raise WriteConflict and leave the secret as it was."""
        record = store.write(Record(credential=CREDS), None)
        record = store.write(Record(credential=creds(1)), record.revision)
        backend = plaintext_keyring(keyring_path)
        before = backend.get_password(SERVICE, USER)

        for expected in (None, 0, 1, 3):
            with pytest.raises(WriteConflict):
                store.write(Record(credential=CREDS), expected)
            with pytest.raises(WriteConflict):
                store.delete(expected)

        assert before == backend.get_password(SERVICE, USER)
        assert record == store.read()

    def test_delete(self, store):
        """delete(current) empties the keyring entry; delete(None) on an empty one is fine."""
        record = store.write(Record(credential=CREDS), None)

        store.delete(record.revision)
        store.delete(None)

        assert None is store.read()

    def test_fenced_sibling_cannot_overwrite(self, store, keyring_path):
        """A sibling that read revision 1 before another write is refused."""
        other = sibling(store, keyring_path)
        record = store.write(Record(credential=CREDS), None)
        seen = other.read()
        store.write(Record(credential=creds(2)), record.revision)

        with pytest.raises(WriteConflict):
            other.write(Record(credential=creds(3)), seen.revision)

        assert creds(2) == store.read().credential


CORRUPT = {
    "not_json": "not json at all",
    "empty": "",
    "truncated": '{"format": "authfsm/1", "revision": 3, "credential": {"access_token": "at-SECRET',
    "wrong_format": json.dumps({"format": "codex/1", "revision": 1}),
    "revision_string": json.dumps({"format": "authfsm/1", "revision": "1", "credential": None}),
    "access_token_number": json.dumps(
        {"format": "authfsm/1", "revision": 1, "credential": {"access_token": 5}}
    ),
}


class TestCorrupt:
    """A secret that is not a record is StorageCorrupt naming service and user, never replaced."""

    @pytest.mark.parametrize("value", sorted(CORRUPT))
    def test_refused_and_untouched(self, store, keyring_path, value):
        """read(), write() and delete() raise; the secret is byte for byte what it was."""
        plaintext_keyring(keyring_path).set_password(SERVICE, USER, CORRUPT[value])
        before = keyring_path.read_bytes()

        with pytest.raises(StorageCorrupt) as caught:
            store.read()
        for expected in (None, 1, 3):
            with pytest.raises(StorageCorrupt):
                store.write(Record(credential=CREDS), expected)
            with pytest.raises(StorageCorrupt):
                store.delete(expected)
        with pytest.raises(StorageCorrupt):
            AuthEngine(store)

        message = str(caught.value)
        assert SERVICE in message
        assert USER in message
        assert store.location == caught.value.location
        assert "storage_corrupt" == caught.value.reason
        assert_no_secret(message, repr(caught.value))
        assert before == keyring_path.read_bytes()


class TestUnavailable:
    """A keyring that fails is StorageUnavailable; nothing of the secret leaks."""

    def test_no_backend_available(self, lock_path):
        """keyring's own 'fail' backend (no secret service on this machine) on every operation."""
        store = KeyringStore(SERVICE, USER, backend=fail_backend.Keyring(), lock_path=lock_path)
        attempts = {
            "read": store.read,
            "write": lambda: store.write(Record(credential=CREDS), None),
            "delete": lambda: store.delete(None),
            "engine": lambda: AuthEngine(store),
        }
        for name, attempt in attempts.items():
            with pytest.raises(StorageUnavailable) as caught:
                attempt()
            assert "keyring_error" == caught.value.reason, name
            assert "NoKeyringError" in str(caught.value)
            assert_no_secret(str(caught.value))
        with store.lease(timeout=0.2):  # failed operations gave the lease back
            pass

    def test_unwritable_keyring_file(self, store, keyring_path):
        """The backend cannot write its file (a directory is in the way): StorageUnavailable."""
        keyring_path.mkdir(parents=True)

        with pytest.raises(StorageUnavailable) as caught:
            store.write(Record(credential=CREDS), None)

        assert "keyring_error" == caught.value.reason
        assert_no_secret(str(caught.value))

    def test_without_the_keyring_package(self, tmp_path):
        """authfsm imports without keyring; KeyringStore() then says how to install it."""
        script = tmp_path / "no_keyring.py"
        script.write_text(
            "import sys\n"
            "sys.modules['keyring'] = None  # as if it were not installed\n"
            "import authfsm, authfsm.adapters\n"
            "from authfsm.adapters.storage._keyring import KeyringStore\n"
            "from authfsm.engine import StorageUnavailable\n"
            "try:\n"
            "    KeyringStore()\n"
            "except StorageUnavailable as error:\n"
            "    print(error.reason, error)\n"
        )
        done = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT,
            check=False,
        )

        assert 0 == done.returncode, done.stderr
        assert done.stdout.startswith("keyring_not_installed")
        assert "authfsm[keyring]" in done.stdout


class TestLease:
    """The lease is an OS lock on the lock file, shared by every store on the same secret."""

    def test_sibling_times_out_while_held(self, store, keyring_path, lock_path):
        """Another store on the same lock file gets LeaseTimeout; the lock file is private."""
        other = sibling(store, keyring_path)
        with store.lease(timeout=1.0):
            with pytest.raises(LeaseTimeout) as caught, other.lease(timeout=0.1):
                pass
            with pytest.raises(LeaseTimeout), other.lease(timeout=0):
                pass
        with other.lease(timeout=0.2):
            pass

        assert "lease_timeout" == caught.value.reason
        assert 0o600 == stat.S_IMODE(lock_path.stat().st_mode)
        assert 0o700 == stat.S_IMODE(lock_path.parent.stat().st_mode)

    def test_the_same_store_from_the_same_thread_times_out(self, store):
        """The lease is not re-entrant: the holder's own object and thread are refused too."""
        with store.lease(timeout=1.0):
            with pytest.raises(LeaseTimeout), store.lease(timeout=0):
                pass
            started = time.monotonic()
            with pytest.raises(LeaseTimeout) as caught, store.lease(timeout=0.2):
                pass
            waited = time.monotonic() - started
        with store.lease(timeout=0):
            pass

        assert "lease_timeout" == caught.value.reason
        assert 0.15 <= waited < 2.0

    def test_confirming_read_inside_the_lease_does_not_wait(self, store):
        """read() of an empty secret re-reads under the lock: inside a held lease, at once."""
        started = time.monotonic()
        with store.lease(timeout=1.0):
            assert None is store.read()

        assert time.monotonic() - started < 2.0

    def test_write_inside_the_lease(self, store):
        """write() and delete() re-enter the lease held by the same thread."""
        with store.lease(timeout=1.0):
            record = store.write(Record(credential=CREDS), None)
            store.delete(record.revision)

        assert None is store.read()

    def test_default_lock_path(self, monkeypatch, tmp_path):
        """By default the lock lives in the user's state folder, named after the secret."""
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
        path = default_lock_path("my app", "bob/ops")

        assert tmp_path / "xdg" / "authfsm" == path.parent
        assert path.name.startswith("keyring-my_app-bob_ops-")
        assert path != default_lock_path("my app", "bob_ops")
        store = KeyringStore("my app", "bob/ops", backend=fail_backend.Keyring())
        assert path == store.lock_path

    def test_torn_backend_write_is_not_read_as_empty(self, store, keyring_path):
        """A file backend rewrites its file in place: a reader waits for the writer's lease."""
        record = store.write(Record(credential=CREDS), None)
        whole = keyring_path.read_bytes()
        other = sibling(store, keyring_path)
        holding = threading.Event()

        def writer() -> None:
            with other.lease(timeout=5):
                keyring_path.write_bytes(whole[: len(whole) // 3])  # caught mid-write
                holding.set()
                time.sleep(0.2)
                keyring_path.write_bytes(whole)

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            assert holding.wait(5)
            seen = store.read()
        finally:
            thread.join(timeout=10)

        assert record == seen


class TestEngine:
    """AuthEngine on KeyringStore against the loopback token server."""

    def test_refresh_once_sibling_adopts(self, store, keyring_path, endpoint, clock, server):
        """Two engines on one keyring secret: one token call, the other adopts."""
        a = AuthEngine(store, endpoint, clock=clock)
        a.login(server.issue())
        b = AuthEngine(sibling(store, keyring_path), endpoint, clock=clock)
        clock.advance(3600)

        assert a.access_token() == b.access_token()
        assert 1 == server.token_calls
        assert State.RELOADED == b.state
        assert a.access_token() == store.read().credential.access_token

    def test_async_engines_share_it_too(self, store, keyring_path, endpoint, clock, server):
        """AsyncAuthEngine uses the blocking KeyringStore: 20 tasks on two engines, one call."""

        async def scenario() -> set[str]:
            a = await AsyncAuthEngine.open(store, endpoint, clock=clock)
            await a.login(server.issue())
            b = await AsyncAuthEngine.open(sibling(store, keyring_path), endpoint, clock=clock)
            clock.advance(3600)
            tokens = [e.access_token() for e in (a, b) for _ in range(10)]
            return set(await asyncio.gather(*tokens))

        tokens = asyncio.run(asyncio.wait_for(scenario(), timeout=30))

        assert {store.read().credential.access_token} == tokens
        assert 1 == server.token_calls

    def test_async_engines_on_one_store_object_refresh_once(self, store, endpoint, clock, server):
        """Two AsyncAuthEngines of one event loop on the same KeyringStore: one call, no reuse."""
        server.latency = 0.2  # the first refresh is still in flight when the second engine looks

        async def scenario() -> list[str]:
            a = await AsyncAuthEngine.open(store, endpoint, clock=clock)
            await a.login(server.issue())
            b = await AsyncAuthEngine.open(store, endpoint, clock=clock)
            clock.advance(3600)
            return await asyncio.gather(a.access_token(), b.access_token())

        tokens = asyncio.run(asyncio.wait_for(scenario(), timeout=30))

        saved = store.read().credential
        assert (1, 0) == (server.token_calls, server.reuse_rejections)
        assert {saved.access_token} == set(tokens)

    def test_logout_is_seen_by_siblings(self, store, keyring_path, endpoint, clock, server):
        """A logout leaves a tombstone; the sibling sees LOGGED_OUT at its next check."""
        a = AuthEngine(store, endpoint, clock=clock)
        a.login(server.issue())
        b = AuthEngine(sibling(store, keyring_path), endpoint, clock=clock)

        a.logout()

        assert State.LOGGED_OUT == b.status().state
        assert None is store.read().credential


class TestContract:
    """KeyringStore passes the store contract kit (the differential state machine)."""

    def test_contract(self, tmp_path):
        """With another KeyringStore on the same keyring file and lock as the contender."""

        def factory() -> KeyringStore:
            n = next(_serial)
            return KeyringStore(
                SERVICE,
                f"user-{n}",
                backend=plaintext_keyring(tmp_path / f"keyring-{n}.cfg"),
                lock_path=tmp_path / f"lock-{n}",
            )

        def contender(store) -> KeyringStore:
            return KeyringStore(
                store.service,
                store.username,
                backend=plaintext_keyring(Path(store._backend.file_path)),
                lock_path=store.lock_path,
            )

        check_store(factory, contender=contender)


# Two OS processes share the keyring file and the lock file: an engine each, released together.
_WORKER = """
import json, sys, time
from datetime import timedelta
from pathlib import Path

from keyrings.alt.file import PlaintextKeyring

from authfsm import AuthEngine, Policy
from authfsm.adapters import OAuthTokenEndpoint
from authfsm.adapters import KeyringStore


keyring_path, lock_path, token_url, ready, go = sys.argv[1:6]
backend = PlaintextKeyring()
backend.file_path = keyring_path
store = KeyringStore("authfsm-test", "alice@example", backend=backend, lock_path=lock_path)
policy = Policy(lease_timeout=timedelta(seconds=20))
with OAuthTokenEndpoint(token_url, "test-client", timeout=10.0) as endpoint:
    engine = AuthEngine(store, endpoint, policy)
    Path(ready).touch()
    deadline = time.monotonic() + 20
    while not Path(go).exists():
        if time.monotonic() > deadline:
            sys.exit("timed out waiting for go")
        time.sleep(0.001)
    token = engine.access_token()
print(json.dumps({"token": token, "state": engine.state.value}), flush=True)
"""


class TestCrossProcess:
    """Two processes on one keyring secret refresh once; the other adopts."""

    def test_one_refresh_the_other_adopts(self, tmp_path, keyring_path, lock_path):
        """Both print the new token, which is the keyring's and the server's current one."""
        script = tmp_path / "worker.py"
        script.write_text(_WORKER)
        go = tmp_path / "go"
        ready = [tmp_path / f"ready-{n}" for n in range(2)]
        with TokenServer(access_token_ttl=3600.0, latency=0.2) as server:
            store = KeyringStore(
                SERVICE, USER, backend=plaintext_keyring(keyring_path), lock_path=lock_path
            )
            old = server.issue(expires_in=1)
            store.write(Record(credential=old), None)
            issued = time.time()
            procs = [
                subprocess.Popen(
                    [
                        sys.executable,
                        str(script),
                        str(keyring_path),
                        str(lock_path),
                        server.token_url,
                        str(ready[n]),
                        str(go),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                )
                for n in range(2)
            ]
            try:
                deadline = time.monotonic() + SUBPROCESS_TIMEOUT
                while not all(r.exists() for r in ready):
                    assert time.monotonic() < deadline, "workers did not get ready"
                    assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
                    time.sleep(0.01)
                while time.time() < issued + 0.6:  # past the refresh point (half of 1 s)
                    time.sleep(0.01)
                go.touch()
                outputs = []
                for proc in procs:
                    stdout, stderr = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
                    assert 0 == proc.returncode, stderr
                    outputs.append(json.loads(stdout.strip().splitlines()[-1]))
            finally:
                for proc in procs:
                    if proc.poll() is None:
                        proc.kill()
                        proc.communicate(timeout=5)

            saved = store.read().credential
            assert 1 == server.token_calls
            assert 0 == server.reuse_rejections
            assert server.is_current(saved)
        assert {saved.access_token} == {out["token"] for out in outputs}
        assert saved.access_token != old.access_token
        assert ["fresh", "reloaded"] == sorted(out["state"] for out in outputs)
