"""
KeyringStore chunks a record over ``max_secret_size`` (Windows Credential Manager: 2560 bytes of
UTF-16), with a manifest written last: on the real keyrings.alt file backend, wrapped to refuse
secrets over a limit as Windows does.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import keyring.errors
import keyrings.alt.file as keyring_file
import pytest

from authfsm import Credentials
from authfsm.adapters import EncryptedCodec, KeyRing, KeyringStore
from authfsm.adapters.storage._chunked import (
    MAX_CHUNKS,
    WINDOWS_SECRET_LIMIT,
    ChunkedSecret,
    TornSecret,
    default_max_size,
    secret_size,
)
from authfsm.engine import Record, StorageCorrupt, StorageUnavailable
from authfsm.testing import TokenServer

from .helpers import SUBPROCESS_TIMEOUT

SERVICE = "authfsm-chunk-test"
USER = "alice@example"
LIMIT = 600  # bytes of UTF-16: 300 characters a secret
KEYS = "k1:" + "A" * 43 + "="
_serial = itertools.count()


class WindowsLikeKeyring(keyring_file.PlaintextKeyring):
    """keyrings.alt's file keyring refusing a secret over ``limit`` bytes of UTF-16, as
    Windows Credential Manager refuses one over 2560 (``CredWrite``: error 1783)."""

    limit = LIMIT

    def set_password(self, service: str, username: str, password: str) -> None:
        if len(password.encode("utf-16-le")) > self.limit:
            raise keyring.errors.PasswordSetError(
                "(1783, 'CredWrite', 'The stub received bad data')"
            )
        super().set_password(service, username, password)


class FailingManifest(WindowsLikeKeyring):
    """Dies (raises) when the manifest is written: a writer killed after its chunks."""

    def set_password(self, service: str, username: str, password: str) -> None:
        if username == USER and "authfsm-chunked/1" in password:
            raise keyring.errors.PasswordSetError("killed")
        super().set_password(service, username, password)


class NoDeletes(WindowsLikeKeyring):
    """Refuses every delete: clean-up after a commit fails."""

    def delete_password(self, service: str, username: str) -> None:
        raise keyring.errors.PasswordDeleteError("locked")


def backend_at(path: Path, kind: type[keyring_file.PlaintextKeyring] = WindowsLikeKeyring):
    backend = kind()
    backend.file_path = str(path)
    return backend


def big(n: int, size: int = 1500) -> Credentials:
    """A credential whose JSON is well over the limit (a long id_token, as real ones are)."""
    return Credentials(
        access_token=f"at-{n}-" + "a" * (size // 3),
        refresh_token=f"rt-{n}",
        id_token=f"id-{n}-" + "i" * size,
    )


def small(n: int) -> Credentials:
    return Credentials(access_token=f"at-{n}", refresh_token=f"rt-{n}")


@pytest.fixture(name="keyring_path")
def _keyring_path(tmp_path: Path) -> Path:
    return tmp_path / "keyring" / "keyring_pass.cfg"


def open_store(keyring_path: Path, tmp_path: Path, *, max_secret_size=LIMIT, kind=None, codec=None):
    return KeyringStore(
        SERVICE,
        USER,
        backend=backend_at(keyring_path, kind or WindowsLikeKeyring),
        lock_path=tmp_path / "lock",
        max_secret_size=max_secret_size,
        codec=codec,
    )


def slot(name: str) -> str:
    """The slot of a chunk entry's name ("a" or "b")."""
    return name.rsplit("/authfsm-chunk/", 1)[1][0]


def entries(keyring_path: Path) -> dict[str, str]:
    """Every chunk entry the keyring holds for USER (probing both slots), and the main one."""
    backend = backend_at(keyring_path)
    found = {}
    main = backend.get_password(SERVICE, USER)
    if main is not None:
        found[USER] = main
    for slot in "ab":
        for index in range(MAX_CHUNKS):
            name = f"{USER}/authfsm-chunk/{slot}{index}"
            value = backend.get_password(SERVICE, name)
            if value is None:
                break
            found[name] = value
    return found


class TestChunks:
    """Over the limit: chunks, then a manifest; under it: one secret, as before."""

    def test_windows_refuses_it_unchunked(self, keyring_path, tmp_path):
        """The "Windows" backend refuses the record whole: StorageUnavailable, nothing stored."""
        store = open_store(keyring_path, tmp_path, max_secret_size=None)
        with pytest.raises(StorageUnavailable) as caught:
            store.write(Record(credential=big(1)), None)
        assert "keyring_error" == caught.value.reason
        assert None is store.read()

    def test_chunked_round_trip(self, keyring_path, tmp_path):
        store = open_store(keyring_path, tmp_path)

        stored = store.write(Record(credential=big(1)), None)

        assert stored == store.read()
        held = entries(keyring_path)
        manifest = json.loads(held[USER])
        assert "authfsm-chunked/1" == manifest["format"]
        assert manifest["count"] == len(held) - 1 > 4
        assert all(secret_size(value) <= LIMIT for value in held.values())
        # A reader with no limit of its own understands chunks too.
        assert stored == open_store(keyring_path, tmp_path, max_secret_size=None).read()

    def test_small_records_stay_one_secret_and_chunks_are_cleaned(self, keyring_path, tmp_path):
        """big -> big (other slot, old one removed) -> small (one entry, chunks removed)."""
        store = open_store(keyring_path, tmp_path)
        first = store.write(Record(credential=big(1)), None)
        slot_a = set(entries(keyring_path))

        second = store.write(Record(credential=big(2, size=900)), first.revision)
        slot_b = set(entries(keyring_path))
        third = store.write(Record(credential=small(3)), second.revision)

        assert {"a"} == {slot(name) for name in slot_a - {USER}}
        assert {"b"} == {slot(name) for name in slot_b - {USER}}
        assert {USER} == set(entries(keyring_path))
        assert third == store.read()
        assert "authfsm/1" == json.loads(entries(keyring_path)[USER])["format"]

    def test_a_writer_dying_before_its_manifest_loses_nothing(self, keyring_path, tmp_path):
        """The old record stays whole and readable; the orphaned chunks are stale (named by no
        manifest) and the next write removes them."""
        store = open_store(keyring_path, tmp_path)
        first = store.write(Record(credential=big(1)), None)
        before = entries(keyring_path)

        dying = open_store(keyring_path, tmp_path, kind=FailingManifest)
        with pytest.raises(StorageUnavailable):
            dying.write(Record(credential=big(2)), first.revision)

        assert first == store.read()
        orphans = set(entries(keyring_path)) - set(before)
        assert {"b"} == {slot(name) for name in orphans}
        second = store.write(Record(credential=small(3)), first.revision)
        assert {USER} == set(entries(keyring_path))
        assert second == store.read()

    def test_a_failed_clean_up_never_fails_the_committed_write(self, keyring_path, tmp_path):
        """Chunks left behind after the manifest landed are stale, not an error; the next
        write removes them."""
        first = open_store(keyring_path, tmp_path).write(Record(credential=big(1)), None)
        stuck = open_store(keyring_path, tmp_path, kind=NoDeletes)

        second = stuck.write(Record(credential=big(2)), first.revision)

        assert second == stuck.read()
        assert {"a", "b"} == {slot(name) for name in set(entries(keyring_path)) - {USER}}
        third = open_store(keyring_path, tmp_path).write(Record(credential=small(3)), 2)
        assert {USER} == set(entries(keyring_path))
        assert third == stuck.read()

    def test_stale_chunks_are_ignored_then_cleaned(self, keyring_path, tmp_path):
        """Leftovers past the manifest's count, of another generation, are never read; the
        next write removes them."""
        store = open_store(keyring_path, tmp_path)
        first = store.write(Record(credential=big(1)), None)
        count = json.loads(entries(keyring_path)[USER])["count"]
        backend = backend_at(keyring_path)
        for index in range(count, count + 3):
            backend.set_password(
                SERVICE, f"{USER}/authfsm-chunk/a{index}", f"0123456789abcdef.{index}:x"
            )

        assert first == store.read()
        store.write(Record(credential=big(2)), first.revision)
        assert not any(slot(name) == "a" for name in set(entries(keyring_path)) - {USER})

    def test_a_chunk_of_another_generation_is_torn_never_mixed(self, keyring_path, tmp_path):
        """A chunk overwritten by a later write reusing the slot: detected (TornSecret), and with
        no writer around the store reports it corrupt and leaves it."""
        store = open_store(keyring_path, tmp_path)
        store.write(Record(credential=big(1)), None)
        backend = backend_at(keyring_path)
        backend.set_password(SERVICE, f"{USER}/authfsm-chunk/a1", "fedcba9876543210.1:zzz")
        before = keyring_path.read_bytes()

        with pytest.raises(TornSecret):
            store._secret.get()
        with pytest.raises(StorageCorrupt):
            store.read()
        with pytest.raises(StorageCorrupt):
            store.write(Record(credential=small(2)), 1)
        assert before == keyring_path.read_bytes()

    def test_too_large_even_in_chunks(self, keyring_path, tmp_path):
        store = open_store(keyring_path, tmp_path)
        first = store.write(Record(credential=small(1)), None)
        with pytest.raises(StorageUnavailable) as caught:
            store.write(Record(credential=big(2, size=MAX_CHUNKS * LIMIT)), first.revision)
        assert "secret_too_large" == caught.value.reason
        assert first == store.read()

    def test_delete_removes_every_chunk(self, keyring_path, tmp_path):
        store = open_store(keyring_path, tmp_path)
        first = store.write(Record(credential=big(1)), None)
        store.delete(first.revision)
        assert {} == entries(keyring_path)
        assert None is store.read()

    def test_utf16_sizes_and_non_ascii_text(self, keyring_path):
        """Characters outside the BMP count four bytes; no chunk is over the limit, none split."""
        secret = ChunkedSecret(backend_at(keyring_path), SERVICE, USER, LIMIT)
        text = "".join(itertools.islice(itertools.cycle("aé€😀"), 2000))
        secret.put(text)
        assert text == secret.get()
        assert all(secret_size(value) <= LIMIT for value in entries(keyring_path).values())

    def test_limits_and_defaults(self, keyring_path, tmp_path):
        assert 2560 == WINDOWS_SECRET_LIMIT
        assert (WINDOWS_SECRET_LIMIT if os.name == "nt" else None) == default_max_size()
        plain = KeyringStore(
            SERVICE, USER, backend=backend_at(keyring_path), lock_path=tmp_path / "l"
        )
        assert default_max_size() == plain.max_secret_size
        for wrong in (255, 0, True, 1.5):
            with pytest.raises(ValueError, match="max_secret_size"):
                open_store(keyring_path, tmp_path, max_secret_size=wrong)

    def test_encrypted_and_chunked_at_the_real_windows_limit(self, keyring_path, tmp_path):
        """An encrypted record with a 2 KB id_token does not fit 2560 bytes; chunked, it does,
        and no entry holds a token."""
        codec = EncryptedCodec(KeyRing.parse(KEYS))
        store = KeyringStore(
            SERVICE,
            USER,
            backend=backend_at(keyring_path, WindowsLikeKeyring),
            lock_path=tmp_path / "lock",
            codec=codec,
            max_secret_size=WINDOWS_SECRET_LIMIT,
        )
        WindowsLikeKeyring.limit = WINDOWS_SECRET_LIMIT
        try:
            cred = big(7, size=2000)
            stored = store.write(Record(credential=cred), None)
            assert stored == store.read()
        finally:
            WindowsLikeKeyring.limit = LIMIT
        text = keyring_path.read_text()
        assert cred.access_token not in text
        assert "i" * 50 not in text
        assert len(entries(keyring_path)) > 2


class TestNoTornReads:
    """While one thread writes records of every size, readers only ever see whole records."""

    def test_concurrent_reader_sees_only_whole_records(self, keyring_path, tmp_path):
        writer = open_store(keyring_path, tmp_path)
        reader = open_store(keyring_path, tmp_path)
        current = writer.write(Record(credential=small(0)), None)
        written = [current]
        seen: list[Record | None] = []
        problems: list[BaseException] = []
        torn = [0]
        done = threading.Event()

        def read() -> None:
            for _ in range(2000):  # bounded
                if done.is_set():
                    return
                try:
                    seen.append(reader.read())
                except Exception as error:  # noqa: BLE001 - reported below
                    problems.append(error)
                # The optimistic path alone, no lock: a whole secret, or TornSecret (or the
                # backend's own error while it rewrites its file in place, which read() above
                # answers by reading again under the lock).
                try:
                    reader._secret.get()
                except TornSecret:
                    torn[0] += 1
                except Exception:  # noqa: BLE001, S110 - keyrings.alt mid-rewrite
                    pass

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        try:
            for n in range(1, 61):
                cred = big(n, size=300 + 97 * n) if n % 3 else small(n)
                current = writer.write(Record(credential=cred), current.revision)
                written.append(current)
        finally:
            done.set()
            thread.join(30)

        assert not thread.is_alive()
        assert [] == problems
        stored = {record.revision: record for record in written}
        for record in seen:
            assert record is not None
            assert stored[record.revision] == record


# Processes on one encrypted, chunked keyring secret ("Windows": 600-byte limit): one refresh.
_WORKER = """
import json, sys, time
from datetime import timedelta
from pathlib import Path

import keyring.errors
from keyrings.alt.file import PlaintextKeyring

from authfsm import AuthEngine, Policy
from authfsm.adapters import EncryptedCodec, KeyringStore, KeyRing, OAuthTokenEndpoint


class WindowsLike(PlaintextKeyring):
    def set_password(self, service, username, password):
        if len(password.encode("utf-16-le")) > 600:
            raise keyring.errors.PasswordSetError("too big")
        super().set_password(service, username, password)


keyring_path, lock_path, token_url, ready, go, keys = sys.argv[1:7]
backend = WindowsLike()
backend.file_path = keyring_path
store = KeyringStore(
    "authfsm-chunk-test", "alice@example", backend=backend, lock_path=lock_path,
    codec=EncryptedCodec(KeyRing.parse(keys)), max_secret_size=600,
)
with OAuthTokenEndpoint(token_url, "test-client", timeout=10.0) as endpoint:
    engine = AuthEngine(store, endpoint, Policy(lease_timeout=timedelta(seconds=20)))
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
    """Four processes on one encrypted, chunked keyring secret: one call, one token."""

    def test_one_refresh_the_others_adopt(self, tmp_path, keyring_path):
        script = tmp_path / "worker.py"
        script.write_text(_WORKER)
        lock = tmp_path / "lock"
        go = tmp_path / "go"
        ready = [tmp_path / f"ready-{n}" for n in range(4)]
        with TokenServer(access_token_ttl=3600.0, latency=0.1) as server:
            store = KeyringStore(
                SERVICE,
                USER,
                backend=backend_at(keyring_path),
                lock_path=lock,
                codec=EncryptedCodec(KeyRing.parse(KEYS)),
                max_secret_size=LIMIT,
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
                        str(lock),
                        server.token_url,
                        str(ready[n]),
                        str(go),
                        KEYS,
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                )
                for n in range(4)
            ]
            try:
                deadline = time.monotonic() + SUBPROCESS_TIMEOUT
                while not all(r.exists() for r in ready):
                    assert time.monotonic() < deadline, "workers did not get ready"
                    assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
                    time.sleep(0.01)
                while time.time() < issued + 0.6:
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
            record = store.read()
            assert record is not None
            saved = record.credential
            assert (1, 0) == (server.token_calls, server.reuse_rejections)
            assert server.is_current(saved)
        assert {saved.access_token} == {out["token"] for out in outputs}
        assert ["fresh"] + ["reloaded"] * 3 == sorted(out["state"] for out in outputs)
        assert json.loads(entries(keyring_path)[USER])["format"] == "authfsm-chunked/1"
        assert saved.access_token not in keyring_path.read_text()
