"""Shared fixtures: a loopback token server, a fake clock, stores, and a store that counts I/O."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

from authfsm.adapters import FileStore, MemoryStore, OAuthTokenEndpoint
from authfsm.engine import Record
from authfsm.testing import FakeClock, TokenServer

# transitions logs every callback at INFO; keep test output (and timings) clean.
logging.getLogger("transitions").setLevel(logging.WARNING)

settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", max_examples=500, deadline=None)
# Under mutmut (docs/mutation-testing.md) every function runs through a trampoline, which trips
# the differing_executors check. Derandomized and without the example database, so a mutant's
# verdict does not depend on the runs before it; no shrinking, since a failure is all a mutant
# run needs (shrinking a failing stateful run can take a minute per mutant).
settings.register_profile(
    "mutmut",
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


class CountingStore:
    """Wraps a store and counts reads, writes and leases (to prove the hot path does no I/O)."""

    def __init__(self, inner: MemoryStore | FileStore) -> None:
        self.inner = inner
        self.reads = 0
        self.writes = 0
        self.leases = 0
        self.waits = 0

    @property
    def location(self) -> str:
        return self.inner.location

    def read(self) -> Record | None:
        self.reads += 1
        return self.inner.read()

    def write(self, record: Record, expected_revision: int | None) -> Record:
        self.writes += 1
        return self.inner.write(record, expected_revision)

    def delete(self, expected_revision: int | None) -> None:
        self.writes += 1
        self.inner.delete(expected_revision)

    def lease(self, timeout: float) -> AbstractContextManager[None]:
        self.leases += 1
        return self.inner.lease(timeout)

    def wait_for_release(self, timeout: float) -> None:
        self.waits += 1
        self.inner.wait_for_release(timeout)

    @property
    def io(self) -> int:
        return self.reads + self.writes + self.leases


@pytest.fixture(name="clock")
def _clock() -> FakeClock:
    return FakeClock(1_800_000_000.0)


@pytest.fixture(name="server")
def _server(clock: FakeClock) -> Iterator[TokenServer]:
    with TokenServer(clock=clock, access_token_ttl=3600.0) as server:
        yield server


@pytest.fixture(name="endpoint")
def _endpoint(server: TokenServer) -> Iterator[OAuthTokenEndpoint]:
    with OAuthTokenEndpoint(
        server.token_url, "test-client", revoke_url=server.revoke_url, timeout=2.0
    ) as endpoint:
        yield endpoint


@pytest.fixture(name="file_store")
def _file_store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "auth.json")
