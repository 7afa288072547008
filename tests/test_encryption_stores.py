"""
Encrypted File, Redis and Keyring stores: fail closed, migrate, rotate keys, never leak.

Real backends only: files, a real redis-server, keyrings.alt's file keyring; engines against the
loopback TokenServer.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import attrs
import keyrings.alt.file as keyring_file
import pytest
from structlog.testing import capture_logs

from authfsm import AuthEngine, AuthError, Policy, ReauthRequired, State
from authfsm.adapters import (
    AsyncRedisStore,
    CannotDecrypt,
    EncryptedCodec,
    FileStore,
    KeyringStore,
    RedisStore,
    arotate_key,
    read_sealed_header,
    rotate_key,
)
from authfsm.adapters.storage._codec import Codec
from authfsm.cli._common import UsageError
from authfsm.cli._key_command import (
    add_rotate_key_arguments,
    cmd_rotate_key,
    encryption_fields,
    open_store,
)
from authfsm.engine import (
    LeaseTimeout,
    Record,
    StorageCorrupt,
    StorageUnavailable,
    Store,
    WriteConflict,
)
from authfsm.testing import ScriptedResponse, check_async_store, check_store

from .redis_server import RedisServer, _redis_server  # noqa: F401 - a fixture
from .test_encryption import CREDS, K1, K1_OTHER, K2, KEY_TEXTS, SECRETS, flip, ring

SERVICE = "authfsm-enc-test"
POLICY = Policy(jitter=lambda: 0.5)
_serial = itertools.count()


def plaintext_keyring(path: Path) -> keyring_file.PlaintextKeyring:
    backend = keyring_file.PlaintextKeyring()
    backend.file_path = str(path)
    return backend


@attrs.define
class Backend:
    """One kind of store on a real backend: make stores by name, read and change its bytes."""

    kind: str
    make: Callable[..., Store]  # (codec=None, name="a") -> a new store object on that name
    raw: Callable[..., bytes | None]  # (name="a") -> everything the backend holds for it
    put: Callable[..., None]  # (data, name="a") -> replace the stored bytes

    def open(self, *lines: str, name: str = "a", **options: bool) -> Store:
        return self.make(EncryptedCodec(ring(*lines), **options), name)


@pytest.fixture(name="backend", params=["file", "redis", "keyring"])
def _backend(request, tmp_path, redis_server) -> Iterator[Backend]:
    kind = request.param
    if kind == "file":

        def path(name: str) -> Path:
            return tmp_path / f"{name}.json"

        def read_file(name: str = "a") -> bytes | None:
            return path(name).read_bytes() if path(name).exists() else None

        yield Backend(
            kind,
            lambda codec=None, name="a": FileStore(path(name), codec=codec),
            read_file,
            lambda data, name="a": path(name).write_bytes(data),
        )
        return
    if kind == "redis":
        prefix = f"enc-{next(_serial)}-"
        client = redis_server.client()
        try:
            yield Backend(
                kind,
                lambda codec=None, name="a": RedisStore(
                    redis_server.url, key=prefix + name, codec=codec
                ),
                lambda name="a": client.get("authfsm:" + prefix + name),
                lambda data, name="a": client.set("authfsm:" + prefix + name, data),
            )
        finally:
            client.close()
        return
    keyring_path = tmp_path / "keyring.cfg"

    def read_keyring(name: str = "a") -> bytes | None:
        # The whole keyring file: a change anywhere in it counts.
        return keyring_path.read_bytes() if keyring_path.exists() else None

    def put_keyring(data: bytes, name: str = "a") -> None:
        plaintext_keyring(keyring_path).set_password(SERVICE, name, data.decode())

    yield Backend(
        kind,
        lambda codec=None, name="a": KeyringStore(
            SERVICE,
            name,
            backend=plaintext_keyring(keyring_path),
            lock_path=tmp_path / f"{name}.lock",
            codec=codec,
        ),
        read_keyring,
        put_keyring,
    )


def stored_bytes(backend: Backend, name: str = "a") -> bytes:
    """The record's own bytes (for the keyring: its secret, not the whole file)."""
    if backend.kind == "keyring":
        store = backend.make(None, name)
        assert isinstance(store, KeyringStore)
        value = store._secret.get()
        assert value is not None
        return value.encode()
    data = backend.raw(name)
    assert data is not None
    return data


def assert_no_secret(*texts: object, extra: tuple[str, ...] = ()) -> None:
    for text in texts:
        if isinstance(text, bytes):
            text = text.decode(errors="replace")
        for secret in (*SECRETS, *KEY_TEXTS, *extra):
            assert secret not in str(text)


class TestOnEveryStore:
    """File, Redis and Keyring stores seal the record and say so; nothing secret is stored."""

    def test_round_trip_sealed_and_reported(self, backend):
        store = backend.open(K1)
        plain = backend.make(None, "plain")

        stored = store.write(Record(credential=CREDS), None)

        assert stored == store.read() == backend.open(K1).read()
        assert (True, False) == (store.encrypted, plain.encrypted)  # type: ignore[attr-defined]
        header = read_sealed_header(stored_bytes(backend))
        assert header is not None
        assert ("k1", 1, False) == (header.key_id, header.revision, header.logged_out)
        assert_no_secret(backend.raw())

    def test_the_binding_is_the_stores(self, backend, tmp_path):
        """File: resolved path; Redis: the key with its prefix; keyring: service and user."""
        store = backend.open(K1)
        codec = store.codec  # type: ignore[attr-defined]
        expected = {
            "file": ("file", str((tmp_path / "a.json").resolve())),
            "redis": ("redis", getattr(store, "key", None)),
            "keyring": ("keyring", f"{SERVICE}\0a"),
        }[backend.kind]
        assert expected == codec.binding


class TestFileBinding:
    """Processes naming one file differently (a symlink, a relative path) share its binding."""

    def test_symlink_and_target(self, tmp_path):
        (tmp_path / "real").mkdir()
        target = tmp_path / "real" / "auth.json"
        (tmp_path / "link.json").symlink_to(target)
        (tmp_path / "folder-link").symlink_to(tmp_path / "real")

        stored = FileStore(tmp_path / "link.json", codec=EncryptedCodec(ring(K1))).write(
            Record(credential=CREDS), None
        )

        for path in (target, tmp_path / "folder-link" / "auth.json"):
            assert stored == FileStore(path, codec=EncryptedCodec(ring(K1))).read()

    def test_relative_and_absolute(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        stored = FileStore("auth.json", codec=EncryptedCodec(ring(K1))).write(
            Record(credential=CREDS), None
        )
        monkeypatch.chdir("/")
        assert stored == FileStore(tmp_path / "auth.json", codec=EncryptedCodec(ring(K1))).read()

    def test_an_explicit_context_survives_a_move(self, tmp_path):
        """context= binds a name of the user's choosing instead of the path (containers)."""
        codec = EncryptedCodec(ring(K1), context="myapp-prod")
        stored = FileStore(tmp_path / "a.json", codec=codec).write(Record(credential=CREDS), None)
        (tmp_path / "a.json").rename(tmp_path / "b.json")

        assert stored == FileStore(tmp_path / "b.json", codec=codec).read()
        with pytest.raises(CannotDecrypt):
            FileStore(tmp_path / "b.json", codec=EncryptedCodec(ring(K1))).read()


class TestFailClosed:
    """Wrong key, unknown key id, tampered or moved bytes: a typed error, the bytes untouched."""

    @pytest.mark.parametrize(
        ("lines", "reason"),
        [((K1_OTHER,), "decryption_failed"), ((K2,), "unknown_key_id")],
    )
    def test_wrong_or_missing_key(self, backend, lines, reason):
        backend.open(K1).write(Record(credential=CREDS), None)
        before = backend.raw()
        wrong = backend.open(*lines)

        attempts: list[Callable[[], object]] = [
            wrong.read,
            lambda: wrong.write(Record(credential=CREDS), 1),
            lambda: wrong.delete(1),
            lambda: wrong.reseal(1),  # type: ignore[attr-defined]
            lambda: rotate_key(wrong, lease_timeout=5),
        ]
        for attempt in attempts:
            with pytest.raises(CannotDecrypt) as caught:
                attempt()
            assert reason == caught.value.reason
            assert isinstance(caught.value, StorageCorrupt)
            assert wrong.location in str(caught.value)
            assert_no_secret(str(caught.value), repr(caught.value))

        assert before == backend.raw()
        assert Record(credential=CREDS, revision=1) == backend.open(K1).read()

    def test_tampered_bytes(self, backend):
        backend.open(K1).write(Record(credential=CREDS), None)
        sealed = stored_bytes(backend)
        backend.put(flip(sealed, 8 * sealed.index(b'"ciphertext": "') + 8 * 20 + 1))
        before = backend.raw()
        store = backend.open(K1)

        with pytest.raises(StorageCorrupt):
            store.read()
        with pytest.raises(StorageCorrupt):
            store.write(Record(credential=CREDS), 1)

        assert before == backend.raw()

    def test_moved_to_another_credential(self, backend):
        """A ciphertext copied to another key name of the same kind of store does not open."""
        backend.open(K1).write(Record(credential=CREDS), None)
        backend.put(stored_bytes(backend), name="b")
        before = backend.raw("b")

        with pytest.raises(CannotDecrypt) as caught:
            backend.open(K1, name="b").read()

        assert "decryption_failed" == caught.value.reason
        assert before == backend.raw("b")

    def test_an_engine_with_a_wrong_key_disturbs_nobody(self, backend, endpoint, clock, server):
        """It fails closed at every call and writes nothing; the right engine refreshes once."""
        good = AuthEngine(backend.open(K1), endpoint, POLICY, clock=clock)
        wrong = AuthEngine(backend.open(K1_OTHER), endpoint, POLICY, clock=clock)  # empty: fine
        good.login(server.issue())
        before = backend.raw()

        for call in (wrong.access_token, wrong.status, lambda: wrong.login(server.issue())):
            with pytest.raises(CannotDecrypt):
                call()
        with pytest.raises(CannotDecrypt):
            AuthEngine(backend.open(K1_OTHER), endpoint, POLICY, clock=clock)

        assert before == backend.raw()
        clock.advance(3600)
        assert good.access_token() == backend.open(K1).read().credential.access_token
        assert (1, 0) == (server.token_calls, server.reuse_rejections)


class TestMigration:
    """Plaintext to sealed on the first write when allowed; back only when asked."""

    def test_plaintext_is_refused_by_default(self, backend):
        backend.make(None).write(Record(credential=CREDS), None)
        before = backend.raw()

        with pytest.raises(CannotDecrypt) as caught:
            backend.open(K1).read()

        assert "plaintext_refused" == caught.value.reason
        assert "accept_plaintext=True" in str(caught.value)
        assert before == backend.raw()

    def test_the_first_write_seals_it(self, backend):
        backend.make(None).write(Record(credential=CREDS), None)
        migrating = backend.open(K1, accept_plaintext=True)

        record = migrating.read()
        assert record is not None
        migrating.write(record, record.revision)

        assert Record(credential=CREDS, revision=2) == backend.open(K1).read()
        assert_no_secret(backend.raw())

    def test_rotate_key_seals_it_now_and_back(self, backend):
        """rotate_key with accept_plaintext seals; with write_plaintext unseals; revision kept."""
        backend.make(None).write(Record(credential=CREDS), None)

        sealed = rotate_key(backend.open(K1, accept_plaintext=True))
        assert ("k1", 1) == (sealed.key_id, sealed.revision)
        assert Record(credential=CREDS, revision=1) == backend.open(K1).read()

        back = backend.open(K1, write_plaintext=True)
        assert False is back.encrypted  # type: ignore[attr-defined]
        unsealed = rotate_key(back)
        assert (None, 1) == (unsealed.key_id, unsealed.revision)
        assert None is read_sealed_header(stored_bytes(backend))
        assert Record(credential=CREDS, revision=1) == backend.make(None).read()

    def test_rolling_migration_keeps_every_token(self, tmp_path, endpoint, clock, server):
        """Phase 1 (reads both, writes plaintext) and phase 2 (seals) engines side by side:
        each refresh is adopted by the other, one call per rotation, no reuse, no logout."""
        path = tmp_path / "auth.json"
        old = AuthEngine(FileStore(path), endpoint, POLICY, clock=clock)
        old.login(server.issue())
        phase1 = AuthEngine(
            FileStore(path, codec=EncryptedCodec(ring(K1), write_plaintext=True)),
            endpoint,
            POLICY,
            clock=clock,
        )
        phase2 = AuthEngine(
            FileStore(path, codec=EncryptedCodec(ring(K1), accept_plaintext=True)),
            endpoint,
            POLICY,
            clock=clock,
        )

        for leader, follower in ((phase2, phase1), (phase1, phase2), (phase2, phase1)):
            clock.advance(3600)
            token = leader.access_token()
            assert token == follower.access_token()
            assert State.RELOADED == follower.state

        assert (3, 0) == (server.token_calls, server.reuse_rejections)
        assert read_sealed_header(path.read_bytes()) is not None  # phase 2 wrote last
        strict = AuthEngine(FileStore(path, codec=EncryptedCodec(ring(K1))), clock=clock)
        assert phase2.credentials == strict.credentials


class TestRotateKey:
    """rotate_key re-seals under the lease, keeps the revision, and loses nothing in flight."""

    def test_keeps_the_revision_and_switches_the_key(self, backend):
        backend.open(K1).write(Record(credential=CREDS), None)
        backend.open(K1).write(Record(credential=CREDS), 1)

        rotation = rotate_key(backend.open(K2, K1))

        assert (backend.open(K1).location, 2, "k2", False) == (
            rotation.location,
            rotation.revision,
            rotation.key_id,
            rotation.logged_out,
        )
        assert Record(credential=CREDS, revision=2) == backend.open(K2).read()
        with pytest.raises(CannotDecrypt):
            backend.open(K1).read()

    def test_a_tombstone_and_an_empty_store(self, backend):
        store = backend.open(K2, K1)
        assert None is rotate_key(store).revision
        backend.open(K1).write(Record(credential=None), None)
        rotation = rotate_key(store)
        assert (1, "k2", True) == (rotation.revision, rotation.key_id, rotation.logged_out)

    def test_waits_for_the_lease(self, backend):
        store = backend.open(K1)
        store.write(Record(credential=CREDS), None)
        with store.lease(5), pytest.raises(LeaseTimeout):
            rotate_key(backend.open(K2, K1), lease_timeout=0.05)

    def test_a_reseal_against_a_stale_revision_is_refused(self, backend):
        store = backend.open(K1)
        store.write(Record(credential=CREDS), None)
        other = backend.open(K1)
        other.read()
        store.write(Record(credential=CREDS), 1)
        with pytest.raises(WriteConflict):
            other.reseal(1)  # type: ignore[attr-defined]
        assert 3 == other.write(Record(credential=None), 2).revision

    def test_a_key_rotation_waits_for_an_unsaved_rotation(self, tmp_path, endpoint, clock, server):
        """An engine whose save failed holds the only copy of the new refresh token, and keeps
        the lease until it is written: a key rotation meanwhile waits for it (and times out),
        and runs once the engine's write landed; the next refresh spends the right token."""
        path = tmp_path / "auth.json"
        # Seals with k1, already opens k2 (step 1 of a rotation: every ring learns the new key).
        flaky = FlakyStore(FileStore(path, codec=EncryptedCodec(ring(K1, K2))))
        engine = AuthEngine(flaky, endpoint, POLICY, clock=clock)
        engine.login(server.issue())
        clock.advance(3600)
        flaky.fail_writes = True
        new = engine.access_token()
        assert engine.status().unsaved

        with pytest.raises(LeaseTimeout):
            rotate_key(FileStore(path, codec=EncryptedCodec(ring(K2, K1))), lease_timeout=0.05)
        assert new == engine.access_token()
        flaky.fail_writes = False
        clock.advance(300)  # past the save's backoff (at most 5 min x jitter 0.5)
        assert new == engine.access_token()
        assert not engine.status().unsaved
        rotate_key(FileStore(path, codec=EncryptedCodec(ring(K2, K1))), lease_timeout=0.05)

        saved = FileStore(path, codec=EncryptedCodec(ring(K2))).read()
        assert saved is not None
        assert new == saved.credential.access_token
        sibling = AuthEngine(
            FileStore(path, codec=EncryptedCodec(ring(K2, K1))), endpoint, POLICY, clock=clock
        )
        clock.advance(3600)
        sibling.access_token()
        assert (2, 0) == (server.token_calls, server.reuse_rejections)

    def test_why_the_revision_is_kept(self, tmp_path, endpoint, clock, server):
        """The same re-encryption as an ordinary write (revision + 1), by a tool that does not
        wait for the lease, loses an unsaved rotation: the engine takes the bump for a
        sibling's newer write and adopts the spent token back."""
        path = tmp_path / "auth.json"
        # Seals with k1, already opens k2 (step 1 of a rotation: every ring learns the new key).
        flaky = FlakyStore(FileStore(path, codec=EncryptedCodec(ring(K1, K2))))
        engine = AuthEngine(flaky, endpoint, POLICY, clock=clock)
        engine.login(server.issue())
        clock.advance(3600)
        flaky.fail_writes = True
        new = engine.access_token()

        naive = FileStore(path, codec=EncryptedCodec(ring(K2, K1)))
        record = naive.read()
        assert record is not None
        bumped = attrs.evolve(record, revision=record.revision + 1)
        naive._replace(naive.codec.encode(bumped))  # the atomic rename, without the lock
        flaky.fail_writes = False
        clock.advance(300)

        with pytest.raises(ReauthRequired):
            engine.access_token()  # adopts the spent copy back, spends it again: a reuse
        assert new != (engine.credentials.access_token if engine.credentials else None)
        assert (2, 1) == (server.token_calls, server.reuse_rejections)

    def test_async_redis(self, redis_server):
        async def scenario() -> tuple[object, Record | None]:
            key = f"enc-async-{next(_serial)}"
            old = AsyncRedisStore(redis_server.url, key=key, codec=EncryptedCodec(ring(K1)))
            new = AsyncRedisStore(redis_server.url, key=key, codec=EncryptedCodec(ring(K2, K1)))
            try:
                await old.write(Record(credential=CREDS), None)
                rotation = await arotate_key(new)
                only_k2 = AsyncRedisStore(redis_server.url, key=key, codec=EncryptedCodec(ring(K2)))
                try:
                    return rotation, await only_k2.read()
                finally:
                    await only_k2.aclose()
            finally:
                await old.aclose()
                await new.aclose()

        rotation, record = asyncio.run(asyncio.wait_for(scenario(), 30))
        assert ("k2", 1) == (rotation.key_id, rotation.revision)  # type: ignore[attr-defined]
        assert Record(credential=CREDS, revision=1) == record


class FlakyStore:
    """A real store whose writes can be made to fail (a full disk), as in the rotation tests."""

    def __init__(self, inner: FileStore) -> None:
        self.inner = inner
        self.fail_writes = False

    @property
    def location(self) -> str:
        return self.inner.location

    def read(self) -> Record | None:
        return self.inner.read()

    def write(self, record: Record, expected_revision: int | None) -> Record:
        if self.fail_writes:
            raise StorageUnavailable("No space left on device")
        return self.inner.write(record, expected_revision)

    def delete(self, expected_revision: int | None) -> None:
        self.inner.delete(expected_revision)

    def lease(self, timeout: float) -> AbstractContextManager[None]:
        return self.inner.lease(timeout)


class TestNoPlaintextAnywhere:
    """A whole life on an encrypted store: no token, id_token or account in the stored bytes,
    in captured logs or in any error."""

    def test_grep_everything(self, backend, endpoint, clock, server, caplog):
        secrets: set[str] = set()
        errors: list[str] = []

        def collect(*engines: AuthEngine) -> None:
            for engine in engines:
                cred = engine.credentials
                if cred is None:
                    continue
                for token in (cred.access_token, cred.refresh_token, cred.id_token):
                    if token:
                        secrets.add(token)
                        secrets.update(part for part in token.split(".") if len(part) > 8)

        def attempt(call: Callable[[], object]) -> None:
            try:
                call()
            except AuthError as error:
                errors.extend((str(error), repr(error)))

        caplog.set_level(logging.DEBUG)
        with capture_logs() as events:
            # They seal with k1 and can open k2 (the key the rotation below moves to).
            a = AuthEngine(backend.open(K1, K2), endpoint, POLICY, clock=clock)
            b = AuthEngine(backend.open(K1, K2), endpoint, POLICY, clock=clock)
            a.login(server.issue(account_id="acct-SECRET-3e8b"))
            collect(a)
            clock.advance(3600)
            a.access_token()
            b.access_token()
            attempt(lambda: b.recover(b.access_token()))
            collect(a, b)
            server.script(ScriptedResponse(status=503))
            clock.advance(3600)
            attempt(a.access_token)  # a shared backoff marker is written
            collect(a, b)
            rotate_key(backend.open(K2, K1))
            attempt(lambda: AuthEngine(backend.open(K1_OTHER), endpoint, clock=clock))
            attempt(lambda: backend.open(K2).write(Record(credential=CREDS), 99))
            clock.advance(3600)
            server.revoke_family_of(a.credentials)
            for engine in (a, b):
                attempt(engine.refresh)  # poisoned: the marker is in the clear, no secret
            header = read_sealed_header(stored_bytes(backend))
            assert header is not None
            assert header.poison is not None
            a.login(server.issue(account_id="acct-SECRET-3e8b"))
            collect(a)
            a.logout()
            b.status()

        assert secrets
        logs = [json.dumps(event, default=str) for event in events]
        logs += [record.getMessage() for record in caplog.records]
        assert_no_secret(backend.raw(), *logs, *errors, extra=tuple(secrets))


class TestCommandLine:
    """``authfsm rotate-key`` (cmd_rotate_key) and the key options of every command."""

    @staticmethod
    def run(*argv: str) -> tuple[int, str]:
        parser = argparse.ArgumentParser(prog="authfsm rotate-key")
        add_rotate_key_arguments(parser)
        out = io.StringIO()
        code = cmd_rotate_key(parser.parse_args(list(argv)), out)
        return code, out.getvalue()

    @pytest.fixture(name="keys")
    def _keys(self, tmp_path) -> Path:
        path = tmp_path / "keys"
        path.write_text(f"{K2}\n{K1}\n")
        path.chmod(0o600)
        return path

    def test_rotate(self, tmp_path, keys):
        path = tmp_path / "auth.json"
        FileStore(path, codec=EncryptedCodec(ring(K1))).write(Record(credential=CREDS), None)

        code, text = self.run("--store", str(path), "--key-file", str(keys))

        assert 0 == code
        assert f"{path}: sealed with key 'k2' (was sealed with key 'k1'); revision 1 kept" in text
        assert (
            Record(credential=CREDS, revision=1)
            == FileStore(path, codec=EncryptedCodec(ring(K2))).read()
        )

    def test_migrate_then_back_as_json(self, tmp_path, keys, monkeypatch):
        path = tmp_path / "auth.json"
        FileStore(path).write(Record(credential=CREDS), None)
        monkeypatch.setenv("TEST_KEYS", f"{K1}")

        with pytest.raises(CannotDecrypt):
            self.run("--store", str(path), "--key-env", "TEST_KEYS")
        code, text = self.run("--store", str(path), "--key-env", "TEST_KEYS", "--migrate", "--json")
        assert 0 == code
        assert {
            "store": str(path),
            "encrypted": True,
            "key_id": "k1",
            "previous_key_id": None,
            "revision": 1,
            "logged_out": False,
        } == json.loads(text)
        assert_no_secret(path.read_bytes())

        code, text = self.run(
            "--store", str(path), "--key-file", str(keys), "--to-plaintext", "--json"
        )
        assert (0, False, "k1") == (
            code,
            json.loads(text)["encrypted"],
            json.loads(text)["previous_key_id"],
        )
        assert Record(credential=CREDS, revision=1) == FileStore(path).read()

    def test_usage_errors(self, tmp_path, keys):
        path = tmp_path / "auth.json"
        FileStore(path, codec=EncryptedCodec(ring(K1))).write(Record(credential=CREDS), None)
        keys.chmod(0o644)

        with pytest.raises(UsageError, match="chmod 600"):
            self.run("--store", str(path), "--key-file", str(keys))
        with pytest.raises(UsageError, match="needs the keys"):
            self.run("--store", str(path))
        keys.chmod(0o600)
        with pytest.raises(UsageError, match="opposite directions"):
            self.run("--store", str(path), "--key-file", str(keys), "--migrate", "--to-plaintext")
        with pytest.raises(SystemExit):
            self.run("--store", str(path), "--key-file", str(keys), "--key-env", "X")

    def test_open_store_and_status_fields(self, tmp_path, keys):
        """Without a key, an encrypted store is a usage error naming the options; status can
        show whether it is encrypted and its key id without any key."""
        path = tmp_path / "auth.json"
        FileStore(path, codec=EncryptedCodec(ring(K1))).write(Record(credential=CREDS), None)

        with pytest.raises(UsageError, match="--key-file"):
            open_store(argparse.Namespace(store=str(path)))
        store = open_store(argparse.Namespace(store=str(path), key_file=str(keys)))

        assert {"encrypted": True, "key_id": "k1"} == encryption_fields(store)
        assert Record(credential=CREDS, revision=1) == store.read()
        plain = FileStore(tmp_path / "plain.json")
        assert {"encrypted": False, "key_id": None} == encryption_fields(plain)


# -- the store contract, encrypted ----------------------------------------------------------------


def sealed(*lines: str) -> Codec:
    return EncryptedCodec(ring(*lines))


class TestContract:
    """The store contract kit passes for encrypted File, Redis and Keyring stores."""

    def test_file(self, tmp_path):
        check_store(
            lambda: FileStore(tmp_path / f"auth-{next(_serial)}.json", codec=sealed(K1)),
            contender=lambda store: FileStore(store.path, codec=sealed(K2, K1)),  # type: ignore[attr-defined]
        )

    def test_redis(self, redis_server: RedisServer):
        def forget(store: Store) -> None:
            assert isinstance(store, RedisStore)
            store.client.delete(store.key, store.lease_key, store.lease_key + ":wake")

        check_store(
            lambda: RedisStore(
                redis_server.url, key=f"enc-contract-{next(_serial)}", codec=sealed(K1)
            ),
            contender=lambda store: RedisStore(
                redis_server.url,
                key=store.key,  # type: ignore[attr-defined]
                key_prefix="",
                codec=sealed(K1),
            ),
            teardown=forget,
        )

    def test_async_redis(self, redis_server: RedisServer):
        check_async_store(
            lambda: AsyncRedisStore(
                redis_server.url, key=f"enc-contract-async-{next(_serial)}", codec=sealed(K1)
            )
        )

    @pytest.mark.parametrize("max_secret_size", [None, 512])
    def test_keyring(self, tmp_path, max_secret_size):
        """One secret, and (at a 512-byte limit) chunks with a manifest."""

        def factory() -> KeyringStore:
            n = next(_serial)
            return KeyringStore(
                SERVICE,
                f"user-{n}",
                backend=plaintext_keyring(tmp_path / f"keyring-{n}.cfg"),
                lock_path=tmp_path / f"lock-{n}",
                codec=sealed(K1),
                max_secret_size=max_secret_size,
            )

        def contender(store: Store) -> KeyringStore:
            assert isinstance(store, KeyringStore)
            return KeyringStore(
                store.service,
                store.username,
                backend=plaintext_keyring(Path(store._backend.file_path)),  # type: ignore[attr-defined]
                lock_path=store.lock_path,
                codec=sealed(K1),
                max_secret_size=max_secret_size,
            )

        check_store(factory, contender=contender)
