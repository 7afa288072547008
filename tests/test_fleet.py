"""
Fleet safety under load and faults, with real OS processes, a real redis-server and the loopback
token server (refresh-token rotation; a reused refresh token revokes the whole family).

- storms: 32 processes find one credential stale at the same instant (file and Redis);
- a permanent failure polled 50 times by each of 32 processes;
- crash faults: SIGKILL of the lease holder before the call, after the server answered, and
  inside the store's write (before and after its commit point);
- Redis killed and restarted on the same port mid-run (append-only file: nothing lost);
- lease expiry: a holder paused (SIGSTOP) past its TTL is fenced by the CAS; a slow but live
  holder keeps its lease by renewing it.

Every wait is bounded, every subprocess has a timeout, and servers and processes are stopped
even when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from authfsm import AuthEngine, Policy, ReauthRequired, State
from authfsm.adapters import FileStore, OAuthTokenEndpoint, RedisStore
from authfsm.engine import Record, Store
from authfsm.testing import TokenServer

from .redis_server import (
    RedisServer,
    _redis_server,  # noqa: F401 - a fixture
    running_redis,
)

FLEET = 32
POLLS = 50
START_TIMEOUT = 60.0
COMMAND_TIMEOUT = 60.0
SUBPROCESS_TIMEOUT = 30.0
# A credential issued with a 1 s lifetime is due after 0.5 s (the leeway is capped at half of it).
LIFETIME = 1.0
DUE_AFTER = 0.6

# One fleet worker: builds an engine per command on the store it names, waits for the command's
# start instant (wall clock, shared by every process on this machine), acts, prints one JSON line.
_FLEET_WORKER = """
import json, sys, time, traceback
from datetime import timedelta

from authfsm import AuthEngine, AuthError, Policy
from authfsm.adapters import FileStore, OAuthTokenEndpoint
from authfsm.adapters import RedisStore


def make_store(spec):
    if spec["kind"] == "file":
        return FileStore(spec["path"])
    return RedisStore(spec["url"], key=spec["key"], lease_ttl=spec["lease_ttl"])


def act(command):
    store = make_store(command["store"])
    policy = Policy(lease_timeout=timedelta(seconds=20))
    with OAuthTokenEndpoint(command["token_url"], "test-client", timeout=10.0) as endpoint:
        engine = AuthEngine(store, endpoint, policy)
        delay = command["start_at"] - time.time()
        if delay > 0:
            time.sleep(delay)
        if command["op"] == "token":
            try:
                token = engine.access_token()
            except AuthError as error:
                token = None
            return {
                "token": token,
                "state": engine.state.value,
                "elapsed": time.time() - command["start_at"],
            }
        statuses = [engine.status(refresh=True) for _ in range(command["polls"])]
        return {
            "states": sorted({s.state.value for s in statuses}),
            "requires_login": sorted({s.requires_login for s in statuses}),
            "failures": sorted({str(s.failure) for s in statuses}),
        }


print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    try:
        out = act(json.loads(line))
    except Exception:
        out = {"error": traceback.format_exc()}
    print(json.dumps(out), flush=True)
"""


class Fleet:
    """N long-lived worker processes driven by JSON lines on stdin; one JSON line back each."""

    def __init__(self, folder: Path, size: int) -> None:
        script = folder / "fleet_worker.py"
        script.write_text(_FLEET_WORKER)
        self.stderr = [folder / f"worker-{n}.err" for n in range(size)]
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            for n in range(size):
                with self.stderr[n].open("wb") as err:
                    self.procs.append(
                        subprocess.Popen(
                            [sys.executable, str(script)],
                            stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE,
                            stderr=err,
                            bufsize=0,
                        )
                    )
            ready = self._replies(START_TIMEOUT)
            assert all(reply == {"ready": True} for reply in ready), ready
        except BaseException:
            self.close()
            raise

    def run(self, command: dict[str, Any]) -> list[dict[str, Any]]:
        """Send ``command`` to every worker and return their replies (in worker order)."""
        line = json.dumps(command).encode() + b"\n"
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(line)
        replies = self._replies(COMMAND_TIMEOUT)
        errors = [reply["error"] for reply in replies if "error" in reply]
        assert [] == errors, errors[0]
        return replies

    def _replies(self, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        replies: list[dict[str, Any] | None] = [None] * len(self.procs)
        buffers: dict[int, bytes] = {}
        with selectors.DefaultSelector() as selector:
            for n, proc in enumerate(self.procs):
                assert proc.stdout is not None
                selector.register(proc.stdout, selectors.EVENT_READ, n)
                buffers[n] = b""
            while any(reply is None for reply in replies):
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"workers did not answer within {timeout:g} s"
                for key, _ in selector.select(remaining):
                    n = key.data
                    chunk = os.read(key.fd, 65536)
                    assert chunk, f"worker {n} died: {self.stderr[n].read_text()[-3000:]}"
                    buffers[n] += chunk
                    if b"\n" in buffers[n]:
                        line, _, buffers[n] = buffers[n].partition(b"\n")
                        replies[n] = json.loads(line)
                        selector.unregister(key.fileobj)
        return [reply for reply in replies if reply is not None]

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError):
                if proc.stdin is not None:
                    proc.stdin.close()
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture(name="fleet", scope="module")
def _fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path_factory.mktemp("fleet"), FLEET)
    try:
        yield fleet
    finally:
        fleet.close()


@pytest.fixture(name="idp")
def _idp() -> Iterator[TokenServer]:
    """The strict token server on the real clock (processes cannot share a fake one)."""
    with TokenServer(access_token_ttl=3600.0) as server:
        yield server


def store_spec(kind: str, tmp_path: Path, redis_server: RedisServer) -> dict[str, Any]:
    if kind == "file":
        return {"kind": "file", "path": str(tmp_path / "auth.json")}
    return {
        "kind": "redis",
        "url": redis_server.url,
        "key": f"fleet:{tmp_path.name}",
        "lease_ttl": 5.0,
    }


def open_store(spec: dict[str, Any], **options: Any) -> Store:
    if spec["kind"] == "file":
        return FileStore(spec["path"])
    return RedisStore(spec["url"], key=spec["key"], lease_ttl=spec["lease_ttl"], **options)


def stale_login(idp: TokenServer, store: Store) -> tuple[Any, float]:
    """Store a credential that is due DUE_AFTER seconds from now; returns it and that instant."""
    creds = idp.issue(expires_in=LIFETIME)
    store.write(Record(credential=creds), None)
    return creds, time.time() + DUE_AFTER


@pytest.mark.parametrize("kind", ["file", "redis"])
class TestStorm:
    """32 processes find the credential stale at the same instant: one call, one new token."""

    def test_one_call_same_new_token_family_alive(self, kind, fleet, idp, tmp_path, redis_server):
        """Exactly 1 endpoint call, 0 reuse rejections, all 32 hold the same new token."""
        spec = store_spec(kind, tmp_path, redis_server)
        store = open_store(spec)
        creds, due = stale_login(idp, store)

        replies = fleet.run(
            {"op": "token", "store": spec, "token_url": idp.token_url, "start_at": due + 0.3}
        )

        record = store.read()
        assert record is not None
        assert record.credential is not None
        assert 1 == idp.token_calls
        assert 0 == idp.reuse_rejections
        assert {record.credential.access_token} == {reply["token"] for reply in replies}
        assert creds.access_token != record.credential.access_token
        assert idp.is_current(record.credential)
        assert idp.family_alive(record.credential)
        assert ["fresh"] + ["reloaded"] * (FLEET - 1) == sorted(r["state"] for r in replies)
        assert 2 == record.revision


@pytest.mark.parametrize("kind", ["file", "redis"])
class TestPermanentFailure:
    """A revoked family polled by 32 processes, 50 times each: one call, everyone poisoned."""

    def test_one_call_in_total(self, kind, fleet, idp, tmp_path, redis_server):
        spec = store_spec(kind, tmp_path, redis_server)
        store = open_store(spec)
        creds, due = stale_login(idp, store)
        idp.revoke_family_of(creds)

        replies = fleet.run(
            {
                "op": "poll",
                "polls": POLLS,
                "store": spec,
                "token_url": idp.token_url,
                "start_at": due + 0.3,
            }
        )

        assert 1 == idp.token_calls
        assert 0 == idp.reuse_rejections
        for reply in replies:
            assert {
                "states": ["poisoned"],
                "requires_login": [True],
                "failures": ["invalid_grant"],
            } == reply
        record = store.read()
        assert record is not None
        assert creds == record.credential
        assert record.poisoned() is not None


# One crash victim: takes the lease to refresh a stale credential and pauses at a chosen point
# (a marker file says it got there), where the test SIGKILLs it. The pause points wrap the
# endpoint and the store from the outside: nothing in authfsm knows about them.
_VICTIM = """
import json, os, sys, tempfile, time
from datetime import timedelta
from pathlib import Path

from authfsm import AuthEngine, AuthError, Policy
from authfsm.adapters import FileStore, OAuthTokenEndpoint
from authfsm.adapters import RedisStore

kind, where, key, token_url, point, marker, resume, not_before = sys.argv[1:9]


def pause():
    Path(marker).touch()
    deadline = time.monotonic() + 30
    while not Path(resume).exists():  # the test kills (or stops) us before this
        if time.monotonic() > deadline:
            sys.exit("never killed")
        time.sleep(0.005)


class PausingEndpoint:
    def __init__(self, inner):
        self.inner = inner

    def refresh(self, credentials):
        if point == "before_call":
            pause()
        outcome = self.inner.refresh(credentials)
        if point == "after_answer":
            pause()
        return outcome

    def revoke(self, credentials):
        return self.inner.revoke(credentials)


class PausingFileStore(FileStore):
    def _replace(self, data):
        if point == "write_uncommitted":
            # Half of the new record in the temporary file, fsynced, not renamed: a torn write.
            fd, tmp = tempfile.mkstemp(
                prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
            )
            with os.fdopen(fd, "wb") as handle:
                handle.write(data[: len(data) // 2])
                handle.flush()
                os.fsync(handle.fileno())
            pause()
        super()._replace(data)
        if point == "write_committed":
            pause()  # renamed into place; the lease is still held


class PausingRedisStore(RedisStore):
    def write(self, record, expected_revision):
        if point == "write_uncommitted":
            pause()  # the new record is encoded; the CAS script has not run
        stored = super().write(record, expected_revision)
        if point == "write_committed":
            pause()  # the CAS ran at the server; its reply dies with us
        return stored


if kind == "file":
    store = PausingFileStore(where)
else:
    store = PausingRedisStore(where, key=key, lease_ttl=0.5)
with OAuthTokenEndpoint(token_url, "test-client", timeout=10.0) as endpoint:
    policy = Policy(lease_timeout=timedelta(seconds=20))
    engine = AuthEngine(store, PausingEndpoint(endpoint), policy)
    delay = float(not_before) - time.time()
    if delay > 0:
        time.sleep(delay)
    try:
        token, error = engine.access_token(), None
    except AuthError as failure:
        token, error = None, failure.reason
    print(json.dumps({"token": token, "state": engine.state.value, "error": error}), flush=True)
"""


def start_victim(
    tmp_path: Path, kind: str, spec: dict[str, Any], token_url: str, point: str, not_before: float
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    script = tmp_path / "victim.py"
    script.write_text(_VICTIM)
    marker, resume = tmp_path / "paused", tmp_path / "resume"
    where = spec["path"] if kind == "file" else spec["url"]
    key = spec.get("key", "")
    args = [kind, where, key, token_url, point, str(marker), str(resume), str(not_before)]
    proc = subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    return proc, marker, resume


def wait_for(marker: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    while not marker.exists():
        if proc.poll() is not None:
            stderr = proc.stderr.read().decode() if proc.stderr else ""
            pytest.fail(f"the victim exited with {proc.returncode}: {stderr}")
        assert time.monotonic() < deadline, "the victim never reached its pause point"
        time.sleep(0.005)


@contextlib.contextmanager
def reaped(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait(timeout=5)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


#: What the survivor sees after the victim died at each point, with a strict IdP:
#: (state of the survivor, endpoint calls in total, reuse rejections, family still alive).
CRASH_OUTCOMES = {
    # Nothing was spent: the survivor refreshes.
    "before_call": (State.FRESH, 1, 0, True),
    # The server rotated and the new tokens died with the victim: the survivor spends the old
    # refresh token again, the IdP sees a reuse and revokes the family: a forced re-login.
    "after_answer": (State.POISONED, 2, 1, False),
    "write_uncommitted": (State.POISONED, 2, 1, False),
    # The write landed before the victim died: the survivor adopts it with no call.
    "write_committed": (State.RELOADED, 1, 0, True),
}


@pytest.mark.parametrize("point", sorted(CRASH_OUTCOMES))
@pytest.mark.parametrize("kind", ["file", "redis"])
class TestCrashFaults:
    """SIGKILL of the lease holder: store valid, lease freed, the next process proceeds."""

    def test_kill_and_proceed(self, kind, point, idp, tmp_path, redis_server):
        """Killed at the point: the outcome of CRASH_OUTCOMES, a valid store, a free lease."""
        spec = store_spec(kind, tmp_path, redis_server)
        spec["lease_ttl"] = 0.5
        store = open_store(spec)
        _, due = stale_login(idp, store)
        before = store.read()
        proc, marker, _ = start_victim(tmp_path, kind, spec, idp.token_url, point, due)
        with reaped(proc):
            wait_for(marker, proc)
            proc.send_signal(signal.SIGKILL)
            assert -signal.SIGKILL == proc.wait(timeout=5)
        killed_at = time.monotonic()

        # The store is readable and holds a valid record: the old one, or the victim's new one.
        after_crash = store.read()
        assert after_crash is not None
        if point == "write_committed":
            assert before is not None
            assert before.revision + 1 == after_crash.revision
        else:
            assert before == after_crash
        # The lease is free again: at once for the OS lock, once the 0.5 s TTL ran out for Redis.
        with store.lease(timeout=5.0):
            freed_after = time.monotonic() - killed_at
        assert freed_after < (0.2 if kind == "file" else 0.5 + 0.3)
        # Another process proceeds.
        with OAuthTokenEndpoint(idp.token_url, "test-client", timeout=10.0) as endpoint:
            survivor = AuthEngine(open_store(spec), endpoint)
            with contextlib.suppress(ReauthRequired):
                survivor.access_token()

        state, calls, reuses, alive = CRASH_OUTCOMES[point]
        final = store.read()
        assert final is not None
        assert final.credential is not None
        assert (state, calls, reuses, alive) == (
            survivor.state,
            idp.token_calls,
            idp.reuse_rejections,
            idp.family_alive(final.credential),
        )
        if state is State.POISONED:
            assert final.poisoned() is not None  # the fleet stops too: one re-login, no storm
        else:
            assert idp.is_current(final.credential)
        if kind == "file":
            # A write that died before its rename leaves a torn temporary file; the survivor's
            # next write (under the lease) sweeps it away.
            leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
            assert [] == leftovers


@pytest.mark.parametrize("kind", ["file", "redis"])
def test_crash_after_answer_with_reuse_grace(kind, tmp_path, redis_server):
    """With an IdP that replays a reused token's answer within a grace period, no re-login."""
    with TokenServer(access_token_ttl=3600.0, reuse_grace=60.0) as idp:
        spec = store_spec(kind, tmp_path, redis_server)
        spec["lease_ttl"] = 0.5
        store = open_store(spec)
        _, due = stale_login(idp, store)
        proc, marker, _ = start_victim(tmp_path, kind, spec, idp.token_url, "after_answer", due)
        with reaped(proc):
            wait_for(marker, proc)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=5)
        with OAuthTokenEndpoint(idp.token_url, "test-client", timeout=10.0) as endpoint:
            survivor = AuthEngine(open_store(spec), endpoint)
            token = survivor.access_token()

        final = store.read()
        assert final is not None
        assert final.credential is not None
        assert (State.FRESH, 2, 1, 0) == (
            survivor.state,
            idp.token_calls,
            idp.grace_reuses,
            idp.reuse_rejections,
        )
        assert token == final.credential.access_token
        assert idp.is_current(final.credential)
        assert idp.family_alive(final.credential)


@pytest.fixture(name="paused_holder", scope="class")
def _paused_holder(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> dict[str, Any]:
    """
    Run once: a holder spends the refresh token, is SIGSTOPped past its 0.5 s lease TTL, a
    sibling takes the lease, refreshes and writes, then the holder resumes and tries to write.

    The IdP replays a reused token's answer within a grace period, so the double spend that the
    lapsed lease allowed does not revoke the family: this isolates the store's fencing from the
    IdP's reuse detection (which is why a live holder renews its lease).
    """
    tmp_path = tmp_path_factory.mktemp("paused")
    with TokenServer(access_token_ttl=3600.0, reuse_grace=60.0) as idp:
        spec = store_spec("redis", tmp_path, redis_server)
        spec["lease_ttl"] = 0.5
        store = open_store(spec)
        assert isinstance(store, RedisStore)
        _, due = stale_login(idp, store)
        proc, marker, resume = start_victim(
            tmp_path, "redis", spec, idp.token_url, "after_answer", due
        )
        with reaped(proc):
            wait_for(marker, proc)
            proc.send_signal(signal.SIGSTOP)
            deadline = time.monotonic() + 5
            while store.client.exists(store.lease_key):
                assert time.monotonic() < deadline, "the paused holder's lease never expired"
                time.sleep(0.02)
            with OAuthTokenEndpoint(idp.token_url, "test-client", timeout=10.0) as endpoint:
                sibling = AuthEngine(open_store(spec), endpoint)
                sibling_token = sibling.access_token()
            written = store.client.get(store.key)
            resume.touch()
            proc.send_signal(signal.SIGCONT)
            out, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
            assert 0 == proc.returncode, err.decode()
        return {
            "holder": json.loads(out.decode().strip().splitlines()[-1]),
            "sibling_token": sibling_token,
            "sibling_state": sibling.state,
            "written_by_sibling": written,
            "final_bytes": store.client.get(store.key),
            "final": store.read(),
            "counts": (idp.token_calls, idp.grace_reuses, idp.reuse_rejections),
        }


class TestLeaseExpiry:
    """A lease holder that outlives its TTL is fenced; a live slow one keeps its lease."""

    def test_paused_holder_cannot_overwrite(self, paused_holder):
        """The holder's CAS write is refused: the sibling's newer revision stays byte for byte."""
        final = paused_holder["final"]
        assert paused_holder["written_by_sibling"] == paused_holder["final_bytes"]
        assert 2 == final.revision
        assert (2, 1, 0) == paused_holder["counts"]
        assert State.FRESH == paused_holder["sibling_state"]
        assert paused_holder["sibling_token"] == final.credential.access_token

    def test_fenced_holder_adopts_the_siblings_credential(self, paused_holder):
        """After the refused write the holder adopts what the sibling wrote (RELOADED)."""
        expected = {"token": paused_holder["sibling_token"], "state": "reloaded", "error": None}
        assert expected == paused_holder["holder"]

    def test_fenced_holder_never_calls_again_nor_writes(self, paused_holder):
        """Whatever the holder concluded, it made no second call and left no poison behind."""
        assert None is paused_holder["final"].poison
        assert paused_holder["holder"]["state"] in ("reloaded", "poisoned")

    def test_slow_holder_renews_its_lease(self, redis_server, clock, tmp_path):
        """A refresh call 4x longer than the lease TTL: the lease is renewed, one call only."""
        with TokenServer(clock=clock, access_token_ttl=3600.0, latency=1.2) as idp:
            key = f"slow:{tmp_path.name}"
            stores = [RedisStore(redis_server.url, key=key, lease_ttl=0.3) for _ in range(2)]
            with OAuthTokenEndpoint(idp.token_url, "test-client", timeout=10.0) as endpoint:
                engines = [AuthEngine(s, endpoint, clock=clock) for s in stores]
                engines[0].login(idp.issue())
                engines[1].reload()
                clock.advance(3600)
                tokens: list[str] = []
                threads = [
                    threading.Thread(target=lambda e=e: tokens.append(e.access_token()))
                    for e in engines
                ]
                for thread in threads:
                    thread.start()
                    time.sleep(0.1)
                for thread in threads:
                    thread.join(timeout=20)

            assert 1 == idp.token_calls
            assert 0 == idp.reuse_rejections
            assert 1 == len(set(tokens))
            assert [State.FRESH, State.RELOADED] == [e.state for e in engines]


class TestRedisRestart:
    """Redis killed mid-run and restarted on the same port with its append-only file."""

    def test_engines_serve_through_and_recover(self, clock, tmp_path):
        with (
            running_redis(persistent=True) as server,
            TokenServer(clock=clock, access_token_ttl=3600.0) as idp,
            OAuthTokenEndpoint(idp.token_url, "test-client", timeout=5.0) as endpoint,
        ):
            engines = [
                AuthEngine(RedisStore(server.url, key="shared", timeout=0.5), endpoint, clock=clock)
                for _ in range(4)
            ]
            creds = idp.issue()
            engines[0].login(creds)
            for engine in engines[1:]:
                engine.reload()
            before = engines[0].store.read()

            served, problems = poll_during(
                engines,
                lambda: (server.stop(kill=True), time.sleep(0.3), server.start()),
            )

            # Down: every access_token() still served the unexpired token; status() said why.
            assert {creds.access_token} == served
            assert {"storage_unavailable"} <= problems
            assert 2 == server.starts
            # Nothing lost: the record is back byte for byte.
            assert before == engines[0].store.read()
            # Recovered: due now, one refresh fleet-wide, the others adopt it.
            clock.advance(3600 - 200)
            tokens = {engine.access_token() for engine in engines}
            assert 1 == idp.token_calls
            assert 1 == len(tokens)
            assert creds.access_token not in tokens
            assert [State.FRESH] + [State.RELOADED] * 3 == [e.state for e in engines]
            record = engines[0].store.read()
            assert record is not None
            assert before is not None
            assert before.revision + 1 == record.revision

    def test_down_while_due_serves_the_old_token(self, clock, tmp_path):
        """Due but unexpired while Redis is down: the old token, no call, store attempts backed
        off; once the backoff has passed and Redis is back, one refresh."""
        with (
            running_redis(persistent=True) as server,
            TokenServer(clock=clock, access_token_ttl=3600.0) as idp,
            OAuthTokenEndpoint(idp.token_url, "test-client", timeout=5.0) as endpoint,
        ):
            engine = AuthEngine(RedisStore(server.url, key="k", timeout=0.5), endpoint, clock=clock)
            creds = idp.issue()
            engine.login(creds)
            server.stop(kill=True)
            clock.advance(3600 - 200)

            down = [engine.access_token() for _ in range(5)]
            server.start()
            assert creds.access_token == engine.access_token()  # still backing off
            clock.advance(Policy().backoff_initial.total_seconds())
            up = engine.access_token()

            assert [creds.access_token] * 5 == down
            assert up != creds.access_token
            assert 1 == idp.token_calls
            assert State.FRESH == engine.state


def poll_during(
    engines: list[AuthEngine], disturbance: Callable[[], object]
) -> tuple[set[str], set[str]]:
    """Each engine polls access_token() and status() from its own thread while the disturbance
    runs; returns the tokens served and the status failures seen. Bounded in time and count."""
    stop = threading.Event()
    served: set[str] = set()
    problems: set[str] = set()
    errors: list[BaseException] = []
    lock = threading.Lock()

    def poll(engine: AuthEngine) -> None:
        deadline = time.monotonic() + 20
        for _ in range(10_000):
            if stop.is_set() or time.monotonic() > deadline:
                return
            try:
                token = engine.access_token()
                status = engine.status()
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)
                return
            with lock:
                served.add(token)
                if status.failure:
                    problems.add(status.failure)
            time.sleep(0.005)

    threads = [threading.Thread(target=poll, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.1)
        disturbance()
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    assert [] == errors
    return served, problems
