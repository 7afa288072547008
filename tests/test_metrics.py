"""OpenTelemetry metrics: each one moves as the behaviour happens, and none can hurt the engine."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from authfsm import AsyncAuthEngine, AuthEngine, Policy, ReauthRequired, RefreshFailed, State
from authfsm.adapters import FileStore, MemoryStore
from authfsm.engine import Record
from authfsm.metrics import METRICS, EngineMetrics

ROOT = Path(__file__).resolve().parent.parent
COMMON = {"authfsm.credential.name", "authfsm.store.kind", "server.address"}
ALLOWED_KEYS = COMMON | {"authfsm.outcome", "authfsm.state", "error.type"}


@pytest.fixture(name="reader")
def _reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture(name="metrics")
def _metrics(reader: InMemoryMetricReader) -> EngineMetrics:
    return EngineMetrics(meter_provider=MeterProvider(metric_readers=[reader]), name="api")


def points(reader: InMemoryMetricReader) -> list[tuple[str, dict[str, object], object]]:
    """Every data point as (metric name, attributes, value or (count, sum))."""
    found = []
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    value = getattr(point, "value", None)
                    if value is None:
                        value = (point.count, point.sum)
                    found.append((metric.name, dict(point.attributes or {}), value))
    return found


def total(reader: InMemoryMetricReader, name: str, **attributes: str) -> float:
    """The sum of a counter's points whose attributes include ``attributes``."""
    return sum(
        value
        for metric, attrs, value in points(reader)
        if metric == name
        and isinstance(value, int | float)
        and all(attrs.get(key) == want for key, want in attributes.items())
    )


def histogram(reader: InMemoryMetricReader, name: str, **attributes: str) -> tuple[int, float]:
    """(count, sum) of a histogram over the points whose attributes include ``attributes``."""
    count, seconds = 0, 0.0
    for metric, attrs, value in points(reader):
        if metric == name and all(attrs.get(k) == v for k, v in attributes.items()):
            assert isinstance(value, tuple)
            count += value[0]
            seconds += value[1]
    return count, seconds


class _SiblingWritesFirst:
    """A store where a sibling's write lands just before our next write: a lost lease."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner
        self.sibling: Record | None = None

    @property
    def location(self) -> str:
        return self.inner.location

    def read(self) -> Record | None:
        return self.inner.read()

    def write(self, record: Record, expected_revision: int | None) -> Record:
        if self.sibling is not None:
            sibling, self.sibling = self.sibling, None
            current = self.inner.read()
            self.inner.write(sibling, current.revision if current is not None else None)
        return self.inner.write(record, expected_revision)

    def delete(self, expected_revision: int | None) -> None:
        self.inner.delete(expected_revision)

    def lease(self, timeout: float):
        return self.inner.lease(timeout)


class TestRefreshMetrics:
    """Refresh calls, durations, adoptions, transient failures and poisonings are counted."""

    def test_a_refresh_counts_one_call_its_duration_and_the_lease_wait(
        self, file_store, endpoint, clock, server, metrics, reader
    ):
        """One successful call: one point per instrument, durations in seconds."""
        engine = AuthEngine(file_store, endpoint, clock=clock, metrics=metrics)
        engine.login(server.issue())
        clock.advance(3600)

        engine.access_token()

        assert 1 == total(reader, "authfsm.refresh.calls", **{"authfsm.outcome": "success"})
        count, seconds = histogram(reader, "authfsm.refresh.duration")
        assert 1 == count
        assert 0 < seconds < 5
        waits, waited = histogram(
            reader, "authfsm.lease.wait.duration", **{"authfsm.outcome": "acquired"}
        )
        assert 1 == waits
        assert 0 <= waited < 5
        attributes = next(a for m, a, _ in points(reader) if m == "authfsm.refresh.calls")
        assert {
            "authfsm.credential.name": "api",
            "authfsm.store.kind": "file",
            "server.address": "127.0.0.1",
            "authfsm.outcome": "success",
        } == attributes

    @pytest.mark.parametrize("hold", [0.1, 0.3], ids=["first-wait", "later-wait"])
    def test_a_follower_records_how_long_it_waited_for_the_leader(
        self, file_store, endpoint, clock, server, metrics, reader, hold
    ):
        """A sibling holds the lease and writes a new credential: the follower adopts it and
        records a wait of that length, in seconds (not rounded to whole ones), whether the
        release came within its first wait (0.25 s at most) or a later one."""
        engine = AuthEngine(file_store, endpoint, clock=clock, metrics=metrics)
        engine.login(server.issue())
        clock.advance(3600)
        leader = FileStore(file_store.path)
        holding = threading.Event()

        def lead() -> None:
            with leader.lease(timeout=1.0):
                holding.set()
                time.sleep(hold)
                record = leader.read()
                assert record is not None
                leader.write(Record(credential=server.issue()), record.revision)

        thread = threading.Thread(target=lead, daemon=True)
        thread.start()
        assert holding.wait(5)
        engine.access_token()
        thread.join(5)

        count, waited = histogram(
            reader, "authfsm.lease.wait.duration", **{"authfsm.outcome": "adopted"}
        )
        assert (1, State.RELOADED, 0) == (count, engine.state, server.token_calls)
        assert hold - 0.05 <= waited < 5

    def test_a_sibling_adopting_the_write_counts_a_refresh_avoided(
        self, file_store, endpoint, clock, server, metrics, reader
    ):
        """B adopts A's rotation: one call in all, one adoption (B's start-up read is not one)."""
        a = AuthEngine(file_store, endpoint, clock=clock, metrics=metrics)
        a.login(server.issue())
        b = AuthEngine(FileStore(file_store.path), endpoint, clock=clock, metrics=metrics)
        clock.advance(3600)

        a.access_token()
        b.access_token()

        assert (State.RELOADED, 1) == (b.state, server.token_calls)
        assert 1 == total(reader, "authfsm.refresh.calls")
        assert 1 == total(reader, "authfsm.refresh.adopted")

    def test_transient_failures_carry_a_bounded_error_type(
        self, file_store, endpoint, clock, server, metrics, reader
    ):
        """A 503 is ``http_503``; a 400 with a code the server made up is ``http_400``."""
        engine = AuthEngine(file_store, endpoint, clock=clock, metrics=metrics)
        engine.login(server.issue())
        server.fail_next(503)
        clock.advance(3600)
        engine.access_token()
        server.fail_next(400, error="x" * 40 + "-unique-per-request-1234")
        clock.advance(3600)
        engine.access_token()

        transient = {
            a["error.type"]: v
            for m, a, v in points(reader)
            if m == "authfsm.refresh.calls" and a["authfsm.outcome"] == "transient"
        }
        assert {"http_503": 1, "http_400": 1} == transient
        calls, _ = histogram(reader, "authfsm.refresh.duration", **{"authfsm.outcome": "transient"})
        assert 2 == calls

    def test_a_poisoning_is_counted_once_by_the_engine_that_found_it(
        self, file_store, endpoint, clock, server, metrics, reader
    ):
        """A's call finds the family revoked; B learns it from the store and counts nothing."""
        a = AuthEngine(file_store, endpoint, clock=clock, metrics=metrics)
        a.login(server.issue())
        b = AuthEngine(FileStore(file_store.path), endpoint, clock=clock, metrics=metrics)
        server.revoke_family_of(a.credentials)
        clock.advance(3600)

        for engine in (a, b):
            with pytest.raises(ReauthRequired):
                engine.access_token()

        assert 1 == total(reader, "authfsm.poisoned", **{"error.type": "invalid_grant"})
        assert 1 == total(
            reader,
            "authfsm.refresh.calls",
            **{"authfsm.outcome": "permanent", "error.type": "invalid_grant"},
        )
        assert 2 == total(reader, "authfsm.state", **{"authfsm.state": "poisoned"})


class TestStoreMetrics:
    """Logouts, lease timeouts and fenced writes are counted."""

    def test_a_logout_is_counted_by_the_engine_that_made_it(
        self, file_store, endpoint, clock, server, metrics, reader
    ):
        """A logs out; B notices it at its next status and counts nothing."""
        a = AuthEngine(file_store, endpoint, clock=clock, metrics=metrics)
        a.login(server.issue())
        b = AuthEngine(FileStore(file_store.path), endpoint, clock=clock, metrics=metrics)

        a.logout()
        b.status()

        assert State.LOGGED_OUT == b.state
        assert 1 == total(reader, "authfsm.logged_out")

    def test_a_lease_timeout_is_counted_with_its_wait(
        self, file_store, endpoint, clock, server, metrics, reader
    ):
        """A lease held past the policy's timeout: one timeout, a wait of at least the timeout."""
        policy = Policy(lease_timeout=timedelta(milliseconds=100))
        engine = AuthEngine(file_store, endpoint, policy, clock=clock, metrics=metrics)
        engine.login(server.issue())
        clock.advance(3600 - 60)

        with FileStore(file_store.path).lease(timeout=1.0), pytest.raises(RefreshFailed):
            engine.refresh()

        assert 1 == total(reader, "authfsm.lease.timeouts")
        count, seconds = histogram(
            reader, "authfsm.lease.wait.duration", **{"authfsm.outcome": "timeout"}
        )
        assert 1 == count
        assert 0.09 <= seconds < 5
        assert 0 == server.token_calls

    def test_a_fenced_write_counts_a_write_conflict(self, endpoint, clock, server, metrics, reader):
        """A sibling's write lands while ours is in flight: one conflict, the sibling's kept."""
        store = _SiblingWritesFirst(MemoryStore())
        engine = AuthEngine(store, endpoint, clock=clock, metrics=metrics)
        engine.login(server.issue(user_id="alice", account_id="acme"))
        clock.advance(3600)
        sibling = server.issue(user_id="alice", account_id="acme")  # fresh: not refreshed again
        store.sibling = Record(credential=sibling)

        engine.access_token()

        assert sibling.fingerprint == engine.credentials.fingerprint
        assert 1 == total(reader, "authfsm.write.conflicts")
        # The store kind is the class name without "Store"; a private class's is "custom".
        assert "custom" == next(
            a["authfsm.store.kind"] for m, a, _ in points(reader) if m == "authfsm.write.conflicts"
        )


class TestRecoveryAndGauges:
    """401 recoveries through httpx_auth, the expiry gauge and the state gauge."""

    def test_a_401_recovered_through_httpx_auth(
        self, file_store, endpoint, clock, server, metrics, reader
    ):
        """B rotates; A's request gets a 401, adopts B's token and succeeds: one recovery."""
        a = AuthEngine(file_store, endpoint, clock=clock, metrics=metrics)
        a.login(server.issue())
        b = AuthEngine(FileStore(file_store.path), endpoint, clock=clock)
        b.refresh()

        with httpx.Client(auth=a.httpx_auth()) as client:
            response = client.get(server.resource_url)

        assert 200 == response.status_code
        assert 1 == total(reader, "authfsm.http.unauthorized.recovered")
        assert 0 == total(reader, "authfsm.http.unauthorized.failed")

    def test_a_401_that_cannot_be_recovered_counts_its_error_type(
        self, file_store, endpoint, clock, server, metrics, reader
    ):
        """The family is revoked: the 401 leads to a poisoning, counted as a failed recovery."""
        engine = AuthEngine(file_store, endpoint, clock=clock, metrics=metrics)
        engine.login(server.issue())
        server.revoke_family_of(engine.credentials)

        with httpx.Client(auth=engine.httpx_auth()) as client, pytest.raises(ReauthRequired):
            client.get(server.resource_url)

        assert 1 == total(
            reader, "authfsm.http.unauthorized.failed", **{"error.type": "invalid_grant"}
        )
        assert 0 == total(reader, "authfsm.http.unauthorized.recovered")

    def test_the_expiry_gauge_follows_the_clock_and_the_refresh(
        self, file_store, endpoint, clock, server, metrics, reader
    ):
        """3600 s after login, 600 s less later, 3600 s again after a refresh; none logged out."""
        engine = AuthEngine(file_store, endpoint, clock=clock, metrics=metrics)
        assert 0 == total(reader, "authfsm.credential.expires_in")
        engine.login(server.issue())
        readings = [total(reader, "authfsm.credential.expires_in")]
        clock.advance(600)
        readings.append(total(reader, "authfsm.credential.expires_in"))
        clock.advance(3000)
        engine.access_token()
        readings.append(total(reader, "authfsm.credential.expires_in"))

        assert [3600, 3000, 3600] == readings
        assert 1 == total(reader, "authfsm.state", **{"authfsm.state": "fresh"})
        assert 0 == total(reader, "authfsm.state", **{"authfsm.state": "stale"})


class TestSafety:
    """No secret in any attribute; a broken meter cannot break a refresh; free when unused."""

    def test_no_token_fingerprint_or_subject_in_the_exported_data(
        self, file_store, endpoint, clock, server, metrics, reader
    ):
        """A whole life, then the exported JSON is grepped for every secret and identifier."""
        secrets: set[str] = set()
        a = AuthEngine(file_store, endpoint, clock=clock, metrics=metrics)
        b = AuthEngine(FileStore(file_store.path), endpoint, clock=clock, metrics=metrics)
        a.login(server.issue(user_id="user-7f3a9", account_id="acct-51c2e"))
        for _ in range(2):
            clock.advance(3600)
            a.access_token()
            b.access_token()
            for engine in (a, b):
                c = engine.credentials
                secrets.update(t for t in (c.access_token, c.refresh_token, c.id_token) if t)
                secrets.add(c.fingerprint)
        server.fail_next(503)
        clock.advance(3600)
        a.access_token()
        server.revoke_family_of(a.credentials)
        clock.advance(3600)
        with pytest.raises(ReauthRequired):
            a.access_token()
        a.logout()

        data = reader.get_metrics_data()
        assert data is not None
        text = data.to_json()
        assert {"authfsm.refresh.calls", "authfsm.poisoned"} <= {m for m, _, _ in points(reader)}
        for secret in {*secrets, "user-7f3a9", "acct-51c2e", str(file_store.path)}:
            assert secret not in text
        assert "eyJ" not in text
        keys = {key for _, attributes, _ in points(reader) for key in attributes}
        assert keys <= ALLOWED_KEYS
        assert {m for m, _, _ in points(reader)} <= set(METRICS)

    def test_a_meter_that_raises_does_not_break_refresh(self, file_store, endpoint, clock, server):
        """Every instrument raises on use: refreshes, recoveries and logouts still work."""
        engine = AuthEngine(
            file_store, endpoint, clock=clock, metrics=EngineMetrics(_BrokenProvider(), name="x")
        )
        engine.login(server.issue())
        clock.advance(3600)
        token = engine.access_token()
        server.fail_next(503)
        clock.advance(3600)

        assert token == engine.access_token()
        assert State.STALE == engine.state
        engine.logout()

    def test_an_observer_that_raises_does_not_break_refresh(
        self, file_store, endpoint, clock, server
    ):
        """An observer raising on every event is ignored by the engine's event log."""

        class Raising(EngineMetrics):
            def attach(self, engine, *, store, endpoint, clock):
                def observe(event, fields):
                    raise RuntimeError("exporter down")

                return observe

        engine = AuthEngine(file_store, endpoint, clock=clock, metrics=Raising(name="x"))
        engine.login(server.issue())
        clock.advance(3600)
        first = engine.credentials.access_token

        assert first != engine.access_token()
        assert 1 == server.token_calls

    def test_a_fresh_access_token_emits_nothing(self, file_store, endpoint, clock, server, reader):
        """The hot path: no event reaches the observer for a fresh credential."""
        events: list[str] = []

        class Recording(EngineMetrics):
            def attach(self, engine, *, store, endpoint, clock):
                return lambda event, fields: events.append(event)

        provider = MeterProvider(metric_readers=[reader])
        engine = AuthEngine(
            file_store, endpoint, clock=clock, metrics=Recording(provider, name="x")
        )
        engine.login(server.issue())
        events.clear()
        for _ in range(100):
            engine.access_token()

        assert [] == events

    def test_opentelemetry_is_imported_only_when_metrics_are_asked_for(self, tmp_path):
        """An engine without metrics= (and authfsm.metrics itself) does not import it."""
        code = (
            "import sys, authfsm, authfsm.metrics\n"
            "from authfsm.adapters import MemoryStore\n"
            "authfsm.AuthEngine(MemoryStore()).status()\n"
            "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
        )
        assert 0 == done.returncode, done.stderr

    @pytest.mark.parametrize("name", ["", "/home/alice/.myapp/auth.json", "a b", "x" * 65])
    def test_a_name_must_be_a_short_label(self, name):
        """A path, an empty or a long name is refused at configuration time."""
        with pytest.raises(ValueError, match="short label"):
            EngineMetrics(MeterProvider(), name=name)


class TestAsyncEngine:
    """The async engine feeds the same instruments."""

    def test_refresh_adoption_and_gauge(self, file_store, endpoint, clock, server, metrics, reader):
        """One call by A, adopted by B; the store kind names the file store, not its wrapper."""

        async def scenario() -> tuple[AsyncAuthEngine, AsyncAuthEngine]:
            a = await AsyncAuthEngine.open(file_store, endpoint, clock=clock, metrics=metrics)
            await a.login(server.issue())
            b = await AsyncAuthEngine.open(
                FileStore(file_store.path), endpoint, clock=clock, metrics=metrics
            )
            clock.advance(3600)
            await a.access_token()
            await b.access_token()
            return a, b

        # The gauge reads the engines it watches (weakly): keep them alive until it is read,
        # or a garbage collection in between leaves it nothing to report.
        engines = asyncio.run(asyncio.wait_for(scenario(), timeout=30))

        assert 1 == total(reader, "authfsm.refresh.calls", **{"authfsm.outcome": "success"})
        assert 1 == total(reader, "authfsm.refresh.adopted")
        assert 3600 == total(reader, "authfsm.credential.expires_in")
        kinds = {a["authfsm.store.kind"] for _, a, _ in points(reader)}
        assert {"file"} == kinds
        assert 2 == len(engines)


class TestDocs:
    """docs/metrics.md's runnable example runs and prints what the page says."""

    def test_the_example_runs(self):
        """The block with the in-memory reader exits 0 and prints the refresh counters."""
        blocks = re.findall(
            r"```python\n(.*?)```", (ROOT / "docs" / "metrics.md").read_text(), re.S
        )
        example = next(b for b in blocks if "InMemoryMetricReader" in b)
        done = subprocess.run(
            [sys.executable, "-c", example], capture_output=True, text=True, timeout=60, check=False
        )
        assert 0 == done.returncode, done.stderr
        lines = done.stdout.splitlines()
        assert (
            "authfsm.refresh.calls [{call}] {'authfsm.outcome': 'transient', "
            "'error.type': 'http_503'} 1"
        ) in lines
        assert "authfsm.refresh.adopted [{refresh}] {} 1" in lines
        assert "authfsm.credential.expires_in [s] {} 200.0" in lines


class _Raises:
    def __getattr__(self, name: str):
        def fail(*args: object, **kwargs: object) -> None:
            raise RuntimeError(f"broken meter: {name}")

        return fail


class _BrokenMeter:
    def create_counter(self, *args: object, **kwargs: object) -> _Raises:
        return _Raises()

    create_histogram = create_counter

    def create_observable_gauge(self, *args: object, **kwargs: object) -> _Raises:
        return _Raises()


class _BrokenProvider:
    def get_meter(self, *args: object, **kwargs: object) -> _BrokenMeter:
        return _BrokenMeter()
