"""FileStore's contract proven on real files: modes, atomic replace, CAS, corruption, the lease."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from authfsm import AsyncAuthEngine, AuthEngine, Credentials, State
from authfsm.adapters import FileStore
from authfsm.engine import (
    Backoff,
    LeaseTimeout,
    Poison,
    Record,
    StorageCorrupt,
    StorageUnavailable,
    WriteConflict,
)

from .helpers import SUBPROCESS_TIMEOUT, child, sample_credentials, wait_for_file

ACCESS = "at-SECRET-4f9c2e7d1b"
REFRESH = "rt-SECRET-a81d03c6e5"
SECRETS = (ACCESS, REFRESH)
CREDS = sample_credentials(ACCESS, REFRESH)


def creds(n: int) -> Credentials:
    """A credential whose size varies with ``n`` (a torn write would show as bad JSON)."""
    return Credentials(
        access_token=f"at-{n}-" + "x" * (n * 37 % 4000),
        refresh_token=f"rt-{n}",
        account_id="acct-1",
    )


def snapshot(path: Path) -> object:
    """The bytes of a file, or the listing of a directory: what must not change."""
    if path.is_dir():
        return ("directory", sorted(p.name for p in path.iterdir()))
    return path.read_bytes()


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def run_script(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )


class TestAtomicWrite:
    """Writes create a private file in a private folder and replace it atomically."""

    def test_first_write_creates_file_0600_and_folder_0700(self, tmp_path):
        """A missing folder is created 0700 and the first write creates the file 0600."""
        path = tmp_path / "fresh" / "auth.json"
        store = FileStore(path)
        assert None is store.read()
        assert not path.parent.exists()  # reading creates nothing

        stored = store.write(Record(credential=CREDS), None)

        assert 1 == stored.revision
        assert 0o700 == stat.S_IMODE(path.parent.stat().st_mode)
        assert 0o600 == stat.S_IMODE(path.stat().st_mode)
        assert stored == store.read()

    def test_loose_file_becomes_0600_on_write(self, file_store):
        """A 0644 file written by someone else is 0600 again after our next write."""
        record = file_store.write(Record(credential=CREDS), None)
        file_store.path.chmod(0o644)

        file_store.write(Record(credential=creds(1)), record.revision)

        assert 0o600 == stat.S_IMODE(file_store.path.stat().st_mode)

    def test_no_temp_files_left(self, file_store):
        """After writes and a refused write the folder holds the file and its lock, nothing else."""
        record = file_store.write(Record(credential=CREDS), None)
        for n in range(5):
            record = file_store.write(Record(credential=creds(n)), record.revision)
        with pytest.raises(WriteConflict):
            file_store.write(Record(credential=CREDS), 1)

        assert [] == temp_files(file_store.path.parent)
        assert {"auth.json", "auth.json.lock"} >= {p.name for p in file_store.path.parent.iterdir()}

    def test_inode_changes_on_every_write(self, file_store):
        """Every write installs a new inode; a reader of the old one still sees a whole record."""
        record = file_store.write(Record(credential=CREDS), None)
        inodes = [file_store.path.stat().st_ino]
        with file_store.path.open("rb") as old:
            before = file_store.path.read_bytes()
            for n in range(10):
                record = file_store.write(Record(credential=creds(n)), record.revision)
                inodes.append(file_store.path.stat().st_ino)
            assert before == old.read()

        assert all(a != b for a, b in itertools.pairwise(inodes))

    def test_reader_never_sees_a_partial_file(self, file_store):
        """A thread polling during 200 writes of varying size always reads a whole record."""
        record = file_store.write(Record(credential=creds(0)), None)
        reader_store = FileStore(file_store.path)
        stop = threading.Event()
        seen: list[int] = []
        errors: list[BaseException] = []

        def reader() -> None:
            deadline = time.monotonic() + 20
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    current = reader_store.read()
                    assert current is not None
                    assert current.credential is not None
                    assert current.credential.refresh_token == f"rt-{current.revision - 1}"
                    seen.append(current.revision)
                except BaseException as error:  # noqa: BLE001 - reported by the main thread
                    errors.append(error)
                    return

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            for n in range(1, 201):
                record = file_store.write(Record(credential=creds(n)), record.revision)
        finally:
            stop.set()
            thread.join(timeout=10)

        assert not thread.is_alive()
        assert [] == errors
        assert 201 == record.revision
        assert seen
        assert sorted(seen) == seen  # never an older record after a newer one
        assert [] == temp_files(file_store.path.parent)

    def test_temp_file_and_folder_are_fsynced_before_write_returns(self, file_store, monkeypatch):
        """The whole temp file is fsynced before its rename, the folder after it, both before
        write() returns: a crash never leaves an empty or missing credential behind."""
        record = file_store.write(Record(credential=CREDS), None)
        events: list[tuple[object, ...]] = []
        real_fsync, real_replace = os.fsync, os.replace

        def spy_fsync(fd: int) -> None:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                events.append(("fsync folder", info.st_ino))
            else:
                events.append(("fsync file", info.st_ino, info.st_size))
            real_fsync(fd)

        def spy_replace(src: str, dst: str) -> None:
            events.append(("rename", os.stat(src).st_ino, Path(dst)))
            real_replace(src, dst)

        monkeypatch.setattr(os, "fsync", spy_fsync)
        monkeypatch.setattr(os, "replace", spy_replace)
        file_store.write(Record(credential=creds(7)), record.revision)
        events.append(("returned",))
        monkeypatch.undo()

        written = file_store.path.stat()
        assert [
            ("fsync file", written.st_ino, written.st_size),
            ("rename", written.st_ino, file_store.path),
            ("fsync folder", file_store.path.parent.stat().st_ino),
            ("returned",),
        ] == events


class TestCompareAndSwap:
    """write() and delete() succeed only against the revision they expect."""

    def test_wrong_expected_revision_is_refused(self, file_store):
        """A stale or future expected revision raises WriteConflict and leaves the file alone."""
        record = file_store.write(Record(credential=CREDS), None)
        record = file_store.write(Record(credential=creds(1)), record.revision)
        before = file_store.path.read_bytes()

        for expected in (0, 1, 3, 99):
            with pytest.raises(WriteConflict) as caught:
                file_store.write(Record(credential=CREDS), expected)
            assert "write_conflict" == caught.value.reason
            assert before == file_store.path.read_bytes()

        assert record == file_store.read()

    def test_revision_goes_up_by_one(self, file_store):
        """Each accepted write stores revision + 1, whatever revision the record carried."""
        record = file_store.write(Record(credential=CREDS, revision=42), None)
        revisions = [record.revision]
        for n in range(4):
            record = file_store.write(Record(credential=creds(n), revision=7), record.revision)
            revisions.append(record.revision)

        assert [1, 2, 3, 4, 5] == revisions
        assert 5 == file_store.read().revision

    def test_create_over_an_existing_record_is_refused(self, file_store):
        """write(expected=None) means 'the store is empty': refused when a record exists."""
        file_store.write(Record(credential=CREDS), None)
        before = file_store.path.read_bytes()

        with pytest.raises(WriteConflict):
            file_store.write(Record(credential=creds(1)), None)

        assert before == file_store.path.read_bytes()

    def test_tombstone_keeps_the_revision_counting(self, file_store):
        """A record without credential (a logout) keeps its revision; the next write is +1."""
        record = file_store.write(Record(credential=CREDS), None)
        tomb = file_store.write(Record(credential=None), record.revision)

        assert (None, 2) == (file_store.read().credential, file_store.read().revision)
        assert None is json.loads(file_store.path.read_text())["credential"]
        with pytest.raises(WriteConflict):
            file_store.write(Record(credential=CREDS), None)
        with pytest.raises(WriteConflict):
            file_store.write(Record(credential=CREDS), record.revision)

        again = file_store.write(Record(credential=creds(1)), tomb.revision)

        assert 3 == again.revision

    def test_markers_round_trip(self, file_store):
        """Poison and backoff markers are stored and read back as they were written."""
        record = Record(
            credential=CREDS,
            poison=Poison(fingerprint=CREDS.fingerprint, reason="invalid_grant", at=1.5),
            backoff=Backoff(fingerprint=CREDS.fingerprint, not_before=2.25, failures=3),
        )

        stored = file_store.write(record, None)

        assert stored == file_store.read()
        assert CREDS.fingerprint == file_store.read().poisoned().fingerprint

    def test_delete_with_the_right_revision(self, file_store):
        """delete(current revision) removes the file; the store reads empty."""
        record = file_store.write(Record(credential=CREDS), None)

        file_store.delete(record.revision)

        assert not file_store.path.exists()
        assert None is file_store.read()
        file_store.delete(None)  # deleting an empty store that is expected empty is fine

    def test_delete_with_a_wrong_revision_is_refused(self, file_store):
        """delete(stale revision) or delete(None) on a record raises and keeps the file."""
        record = file_store.write(Record(credential=CREDS), None)
        record = file_store.write(Record(credential=creds(1)), record.revision)
        before = file_store.path.read_bytes()

        for expected in (None, 1, 3):
            with pytest.raises(WriteConflict):
                file_store.delete(expected)

        assert before == file_store.path.read_bytes()


def _doc(**changes: object) -> bytes:
    """A native-format document holding the secret credential, with some fields changed."""
    credential = {
        "kind": "oauth",
        "access_token": ACCESS,
        "refresh_token": REFRESH,
        "id_token": None,
        "expires_at": "2030-01-01T00:00:00+00:00",
        "account_id": "acct-1",
        "last_refresh": None,
    }
    doc: dict[str, object] = {
        "format": "authfsm/1",
        "revision": 3,
        "credential": credential,
        "poison": None,
        "backoff": None,
    }
    for key, value in changes.items():
        if key in credential:
            credential[key] = value
        else:
            doc[key] = value
    return json.dumps(doc).encode()


_VALID = _doc()
_BIG_INT = b"1" + b"0" * 400  # an integer no float can hold

CORRUPT = {
    "truncated": _VALID[: len(_VALID) // 2],
    "invalid_json": b'{"format": "authfsm/1", "revision": 3,, }',
    "not_an_object": b'["authfsm/1", 3]',
    "json_null": b"null",
    "wrong_format": _doc(format="codex/1"),
    "no_format": _VALID.replace(b'"format": "authfsm/1", ', b""),
    "revision_string": _doc(revision="3"),
    "revision_bool": _doc(revision=True),
    "revision_negative": _doc(revision=-1),
    "access_token_number": _doc(access_token=12345),
    "access_token_empty": _doc(access_token=""),
    "credential_not_object": _doc(credential=ACCESS),
    "kind_unknown": _doc(kind="password"),
    "expires_at_not_iso": _doc(expires_at="next tuesday"),
    "expires_at_naive": _doc(expires_at="2030-01-01T00:00:00"),
    "last_refresh_number": _doc(last_refresh=1_800_000_000),
    "poison_not_object": _doc(poison="invalid_grant"),
    "poison_at_infinite": _doc(poison={"fingerprint": "f", "reason": "r", "at": float("inf")}),
    "backoff_not_object": _doc(backoff=[1, 2]),
    "empty": b"",
    "whitespace": b" \n\t\n",
    "binary_garbage": bytes(range(256)) * 4,
    "nul_bytes": b"\x00" * 64,
    "utf8_bom_garbage": b"\xef\xbb\xbf\xff\xfe{",
    # Found by these tests: decoding raises RecursionError / OverflowError (not StorageCorrupt).
    "deeply_nested": b"[" * 100_000,
    "poison_at_huge_int": _VALID.replace(
        b'"poison": null',
        b'"poison": {"fingerprint": "f", "reason": "r", "at": ' + _BIG_INT + b"}",
    ),
    "backoff_not_before_huge_int": _VALID.replace(
        b'"backoff": null',
        b'"backoff": {"fingerprint": "f", "not_before": ' + _BIG_INT + b', "failures": 1}',
    ),
    # Found by these tests: decodes, then the engine crashes hashing it (UnicodeEncodeError).
    "access_token_lone_surrogate": _VALID.replace(ACCESS.encode(), b"\\ud800"),
    "directory": None,
}


@pytest.fixture(name="corrupt", params=sorted(CORRUPT))
def _corrupt(request, tmp_path) -> Path:
    """The path of a corrupt credential file (or a directory where the file should be)."""
    path = tmp_path / "auth.json"
    data = CORRUPT[request.param]
    if data is None:
        path.mkdir()
        (path / "keep.txt").write_text("not ours")
    else:
        path.write_bytes(data)
    return path


class TestCorruptFile:
    """A file that is not a record raises StorageCorrupt naming it and is never overwritten."""

    def test_read_raises_storage_corrupt(self, corrupt):
        """read() raises StorageCorrupt with the path in the message and as .location."""
        before = snapshot(corrupt)

        with pytest.raises(StorageCorrupt) as caught:
            FileStore(corrupt).read()

        error = caught.value
        assert str(corrupt) == error.location
        assert str(corrupt) in str(error)
        assert "storage_corrupt" == error.reason
        assert_no_secret(str(error), repr(error))
        assert before == snapshot(corrupt)

    def test_write_and_delete_leave_it_byte_identical(self, corrupt):
        """write() and delete() with any expected revision raise and change nothing."""
        before = snapshot(corrupt)
        store = FileStore(corrupt)

        for expected in (None, 0, 3, 4):
            with pytest.raises(StorageCorrupt):
                store.write(Record(credential=creds(1)), expected)
            with pytest.raises(StorageCorrupt):
                store.delete(expected)

        assert before == snapshot(corrupt)
        assert [] == temp_files(corrupt.parent)
        with store.lease(timeout=0.2):  # the failed writes released the lease
            pass

    def test_engine_refuses_it_and_changes_nothing(self, corrupt, tmp_path, endpoint, clock):
        """AuthEngine construction, login() and logout() on a corrupt file all raise untouched."""
        before = snapshot(corrupt)
        with pytest.raises(StorageCorrupt):
            AuthEngine(FileStore(corrupt), endpoint, clock=clock)

        # An engine that started while the file was fine, then met the corruption.
        moved = tmp_path / "aside"
        corrupt.rename(moved)
        engine = AuthEngine(FileStore(corrupt), endpoint, clock=clock)
        moved.rename(corrupt)
        with pytest.raises(StorageCorrupt):
            engine.login(CREDS)
        with pytest.raises(StorageCorrupt):
            engine.logout()
        with pytest.raises(StorageCorrupt):
            engine.logout(revoke=True)

        assert before == snapshot(corrupt)
        assert [] == temp_files(corrupt.parent)


@pytest.mark.parametrize(
    "expires_at",
    [
        "9999-12-31T23:59:59+00:00",
        "0001-01-01T00:00:00+00:00",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-23:00",
    ],
)
def test_expiry_at_the_ends_of_the_calendar(file_store, clock, expires_at):
    """An extreme but well-formed expires_at is refused as corrupt or served; never a crash."""
    file_store.path.write_bytes(_doc(expires_at=expires_at))
    before = file_store.path.read_bytes()
    try:
        engine = AuthEngine(file_store, None, clock=clock)
    except StorageCorrupt:
        assert before == file_store.path.read_bytes()
        return

    status = engine.status()

    assert status.fingerprint == CREDS.fingerprint
    assert before == file_store.path.read_bytes()


_UNREADABLE_SCRIPT = """
import json, os, sys

from authfsm import AsyncAuthEngine, AuthEngine, Credentials, State
from authfsm.adapters import FileStore
from authfsm.engine import Record

path = sys.argv[1]
if os.getuid() == 0:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
os.stat(path)  # the folder is traversable: only the file's own bits deny access
attempts = {
    "read": lambda: FileStore(path).read(),
    "engine": lambda: AuthEngine(FileStore(path)),
    "write": lambda: FileStore(path).write(Record(credential=Credentials(access_token="x")), 1),
    "delete": lambda: FileStore(path).delete(1),
}
out = {"uid": os.getuid()}
for name, attempt in attempts.items():
    try:
        attempt()
        out[name] = ["no error", None, ""]
    except Exception as error:
        out[name] = [type(error).__name__, getattr(error, "reason", None), str(error)]
print(json.dumps(out))
"""


@pytest.fixture(name="open_folder")
def _open_folder() -> Iterator[Path]:
    """A folder every user can traverse (pytest's own tmp folders are 0700 for root)."""
    folder = Path(tempfile.mkdtemp(prefix="authfsm-perm-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class TestUnreadableFile:
    """A file this user may not read gives a clear error and is never overwritten."""

    def test_permission_denied_in_a_subprocess(self, open_folder):
        """As another user: StorageUnavailable(permission_denied) for read and engine, no change."""
        path = open_folder / "auth.json"
        FileStore(path).write(Record(credential=CREDS), None)
        assert 0o600 == stat.S_IMODE(path.stat().st_mode)
        before = path.read_bytes()
        script = open_folder / "unreadable.py"
        script.write_text(_UNREADABLE_SCRIPT)
        as_root = os.getuid() == 0
        if not as_root:
            path.chmod(0)
        try:
            done = run_script(script, str(path))
        finally:
            path.chmod(0o600)

        assert 0 == done.returncode, done.stderr
        out = json.loads(done.stdout.strip().splitlines()[-1])
        assert (65534 if as_root else os.getuid()) == out["uid"]
        unavailable = StorageUnavailable.__name__
        assert [unavailable, "permission_denied"] == out["read"][:2]
        assert [unavailable, "permission_denied"] == out["engine"][:2]
        assert unavailable == out["write"][0]
        assert unavailable == out["delete"][0]
        for name in ("read", "engine"):
            assert str(path) in out[name][2]
        assert_no_secret(done.stdout, done.stderr)
        assert before == path.read_bytes()
        assert 0o600 == stat.S_IMODE(path.stat().st_mode)


class TestNoSecrets:
    """No exception text and no repr of the store carries a token."""

    def test_errors_and_reprs_hold_no_token(self, file_store):
        """WriteConflict, StorageCorrupt, LeaseTimeout and reprs never show the tokens."""
        record = file_store.write(Record(credential=CREDS), None)
        texts = [repr(file_store), str(file_store.location), repr(record), repr(file_store.read())]
        with pytest.raises(WriteConflict) as conflict:
            file_store.write(Record(credential=CREDS), 7)
        with pytest.raises(WriteConflict) as gone:
            file_store.delete(None)
        other = FileStore(file_store.path)
        with file_store.lease(timeout=1.0), pytest.raises(LeaseTimeout) as busy, other.lease(0.2):
            pass
        file_store.path.write_bytes(_doc(revision="3"))
        with pytest.raises(StorageCorrupt) as corrupt:
            file_store.read()

        for caught in (conflict, gone, busy, corrupt):
            texts += [str(caught.value), repr(caught.value)]
        assert_no_secret(*texts)
        assert ACCESS in file_store.path.read_text()  # the secrets were there to leak


_LEASE_HOLDER = """
import sys, time
from pathlib import Path
from authfsm.adapters import FileStore


with FileStore(sys.argv[1]).lease(timeout=10):
    Path(sys.argv[2]).touch()
    time.sleep(60)
"""


class TestLease:
    """The lease excludes other stores, threads and processes, and dies with its holder."""

    def test_second_store_times_out(self, file_store):
        """Another FileStore on the same path gets LeaseTimeout while the first holds the lease."""
        other = FileStore(file_store.path)
        with file_store.lease(timeout=1.0):
            started = time.monotonic()
            with pytest.raises(LeaseTimeout) as caught, other.lease(timeout=0.2):
                pass
            waited = time.monotonic() - started

        assert "lease_timeout" == caught.value.reason
        assert 0.15 <= waited < 2.0
        with other.lease(timeout=0.2):  # free again once released
            pass

    def test_another_thread_on_the_same_store_times_out(self, file_store):
        """The same FileStore object used from another thread is excluded too."""
        outcome: list[str] = []

        def contender() -> None:
            try:
                with file_store.lease(timeout=0.2):
                    outcome.append("acquired")
            except LeaseTimeout:
                outcome.append("timeout")

        with file_store.lease(timeout=1.0):
            thread = threading.Thread(target=contender)
            thread.start()
            thread.join(timeout=5)

        assert not thread.is_alive()
        assert ["timeout"] == outcome

    def test_the_same_store_from_the_same_thread_times_out(self, file_store):
        """The lease is not re-entrant: the holder's own object and thread wait, then time out
        (two engines of one event loop share both), and get it once it is released."""
        with file_store.lease(timeout=1.0):
            with pytest.raises(LeaseTimeout) as caught, file_store.lease(0):
                pass
            started = time.monotonic()
            with pytest.raises(LeaseTimeout), file_store.lease(timeout=0.2):
                pass
            waited = time.monotonic() - started

        assert "lease_timeout" == caught.value.reason
        assert 0.15 <= waited < 2.0
        with file_store.lease(0):
            pass

    def test_write_and_delete_wait_lock_timeout(self, file_store):
        """write() and delete() wait for a busy lock as long as lock_timeout says, then raise."""
        impatient = FileStore(file_store.path, lock_timeout=0.2)
        waits: list[float] = []
        with file_store.lease(timeout=1.0):
            for attempt in (
                lambda: impatient.write(Record(credential=CREDS), None),
                lambda: impatient.delete(None),
            ):
                started = time.monotonic()
                with pytest.raises(LeaseTimeout):
                    attempt()
                waits.append(time.monotonic() - started)

        assert all(0.15 <= waited < 2.0 for waited in waits), waits
        assert 1 == impatient.write(Record(credential=CREDS), None).revision

    @pytest.mark.parametrize("lock_timeout", [-1.0, float("nan"), float("inf")])
    def test_lock_timeout_must_be_a_finite_wait(self, tmp_path, lock_timeout):
        """A negative, NaN or endless lock_timeout is refused when the store is made."""
        with pytest.raises(ValueError, match="lock_timeout"):
            FileStore(tmp_path / "auth.json", lock_timeout=lock_timeout)

    def test_write_inside_the_lease_does_not_deadlock(self, file_store):
        """write() and delete() re-enter the lease held by the same thread."""
        done: list[int] = []

        def work() -> None:
            with file_store.lease(timeout=1.0):
                record = file_store.write(Record(credential=CREDS), None)
                record = file_store.write(Record(credential=creds(1)), record.revision)
                done.append(record.revision)
                file_store.delete(record.revision)
                done.append(0)

        thread = threading.Thread(target=work)
        started = time.monotonic()
        thread.start()
        thread.join(timeout=10)

        assert not thread.is_alive()
        assert [2, 0] == done
        assert time.monotonic() - started < 5
        with FileStore(file_store.path).lease(timeout=0.2):  # and released at the end
            pass

    def test_killed_holder_frees_the_lease(self, file_store, tmp_path):
        """A subprocess holding the lease is SIGKILLed: the OS frees it within 2 s."""
        script = tmp_path / "holder.py"
        script.write_text(_LEASE_HOLDER)
        held = tmp_path / "held"
        with child([sys.executable, str(script), str(file_store.path), str(held)]) as holder:
            wait_for_file(held, holder)
            with pytest.raises(LeaseTimeout), file_store.lease(timeout=0.2):
                pass

            holder.send_signal(signal.SIGKILL)
            assert -signal.SIGKILL == holder.wait(timeout=5)
            started = time.monotonic()
            with file_store.lease(timeout=2.0):
                acquired_after = time.monotonic() - started

        assert acquired_after < 2.0


class TestOneStoreObjectManyEngines:
    """Engines sharing one FileStore object (as AsyncAuthEngines of one app do) refresh once."""

    def test_two_async_engines_spend_the_refresh_token_once(
        self, file_store, endpoint, clock, server
    ):
        """Both due at once on one event loop: one token call, no reuse, the other adopts."""
        server.latency = 0.2  # the first refresh is still in flight when the second engine looks

        async def scenario() -> list[str]:
            a = await AsyncAuthEngine.open(file_store, endpoint, clock=clock)
            await a.login(server.issue())
            b = await AsyncAuthEngine.open(file_store, endpoint, clock=clock)
            clock.advance(3600)
            tokens = await asyncio.gather(a.access_token(), b.access_token())
            assert [State.FRESH, State.RELOADED] == sorted(
                (a.state, b.state), key=lambda state: state.value
            )
            return tokens

        tokens = asyncio.run(asyncio.wait_for(scenario(), timeout=30))

        saved = file_store.read().credential
        assert (1, 0) == (server.token_calls, server.reuse_rejections)
        assert {saved.access_token} == set(tokens)
        assert server.is_current(saved)


# A writer killed between creating its temporary file and renaming it into place.
_DIES_MID_WRITE = """
import os, signal, sys
from authfsm.adapters import FileStore
from authfsm.engine import Credentials, Record

store = FileStore(sys.argv[1])
current = store.read()


def die(src, dst):
    os.kill(os.getpid(), signal.SIGKILL)


os.replace = die
store.write(Record(credential=Credentials(access_token="half")), current.revision)
"""


class TestOrphanSweep:
    """A write removes this store's temporary files orphaned by dead writers, and only those."""

    def test_orphan_of_a_killed_writer_is_swept(self, file_store, tmp_path):
        """A process SIGKILLed before its rename leaves a temp file; our next write removes it."""
        first = file_store.write(Record(credential=CREDS), None)
        script = tmp_path / "dies.py"
        script.write_text(_DIES_MID_WRITE)
        died = run_script(script, str(file_store.path))
        assert -signal.SIGKILL == died.returncode, died.stderr
        orphans = temp_files(file_store.path.parent)
        assert 1 == len(orphans)
        unrelated = file_store.path.parent / ".other.json.abc123.tmp"
        unrelated.write_bytes(b"keep me")

        file_store.write(Record(credential=CREDS), first.revision)

        assert [unrelated.name] == temp_files(file_store.path.parent)

    def test_neighbour_whose_name_extends_ours_keeps_its_write(self, tmp_path, monkeypatch):
        """auth.json's sweep must not delete the in-progress temp file of auth.json.work."""
        ours = FileStore(tmp_path / "auth.json")
        neighbour = FileStore(tmp_path / "auth.json.work")
        first = ours.write(Record(credential=CREDS), None)
        mid_write, resume = threading.Event(), threading.Event()
        real_replace = os.replace

        def paused_replace(src: str, dst: str) -> None:
            if Path(dst) == neighbour.path:  # the neighbour's temp file exists, not yet renamed
                mid_write.set()
                resume.wait(10)
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", paused_replace)
        outcome: list[object] = []

        def write_neighbour() -> None:
            try:
                outcome.append(neighbour.write(Record(credential=creds(1)), None).credential)
            except BaseException as error:  # noqa: BLE001 - reported by the main thread
                outcome.append(error)

        thread = threading.Thread(target=write_neighbour)
        thread.start()
        try:
            assert mid_write.wait(10)
            ours.write(Record(credential=creds(2)), first.revision)
        finally:
            resume.set()
            thread.join(timeout=10)

        assert not thread.is_alive()
        assert [creds(1)] == outcome
        assert creds(1) == neighbour.read().credential
        assert creds(2) == ours.read().credential
        assert [] == temp_files(tmp_path)
