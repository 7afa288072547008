"""
The failover benchmark's Redis deployment (see ``failover.py``): the test suite's
``SentinelDeployment`` (``tests/redis_server.py``: a primary, a replica and three Sentinels on
127.0.0.1), driven round after round: cut off the replica, SIGKILL the primary, wait for the
promotion, let the killed server rejoin as a replica, and check that one primary is left.

It starts, kills and restarts Redis processes (its own, by PID); it judges nothing about the
credential.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import redis

sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
# The deployment of the test suite, used as it is (its helpers fail through pytest.fail).
from tests.redis_server import (
    RedisServer,
    SentinelDeployment,
    replicas_in_sync,
    running,
    wait_until,
)

STEADY_TIMEOUT = 30.0


def _is_primary(server: RedisServer) -> bool:
    try:
        with contextlib.closing(server.client()) as client:
            return client.role()[0] in (b"master", "master")
    except redis.exceptions.RedisError:
        return False


class Deployment:
    """One Sentinel deployment for the whole run; the roles of its two servers swap each round."""

    def __init__(self, deployment: SentinelDeployment) -> None:
        self.servers = deployment

    @classmethod
    @contextlib.contextmanager
    def running(cls) -> Iterator[Deployment]:
        with running(SentinelDeployment) as deployment:
            yield cls(deployment)

    @property
    def sentinels(self) -> list[str]:
        return self.servers.addresses

    @property
    def service(self) -> str:
        return self.servers.service_name

    def login_replicated(self) -> None:
        """Returns once the replica acknowledges a write made now (so it has the login)."""
        with helper_failures():
            wait_until(lambda: replicas_in_sync(self.servers.primary, 1), "the replica in sync")

    def cut_off_replica(self) -> None:
        self.servers.cut_off_replica()

    def kill_primary(self, *, resume_replica: bool) -> None:
        """SIGKILL the primary (by PID); resume a cut-off replica right after."""
        self.servers.kill_primary()
        if resume_replica:
            self.servers.replica.resume()

    def wait_for_failover(self) -> None:
        with helper_failures():
            self.servers.wait_for_failover()

    def rejoin(self) -> None:
        """The killed server started again, as a replica of the new primary, in sync."""
        with helper_failures():
            self.servers.rejoin_old_primary()

    def switches(self) -> int:
        """Failovers so far, as the first Sentinel logged them (``+switch-master``)."""
        log = self.servers.sentinels[0].folder / "redis.log"
        return log.read_text(errors="replace").count("+switch-master")

    def steady(self) -> bool:
        """
        Whether the deployment is as this object believes: every Sentinel announces
        ``primary``, it alone acts as a primary, the other server replicates it in sync.
        If not (a Sentinel failed over on its own), wait until the Sentinels agree, make the
        other server a replica of the announced primary, and return False.
        """
        d = self.servers
        if self._as_believed():
            return True
        agreed: list[int] = []

        def agree() -> bool:
            ports = {sentinel.primary_port() for sentinel in d.sentinels}
            agreed[:] = list(ports)
            return len(ports) == 1 and ports <= {d.primary.port, d.replica.port}

        with helper_failures():
            wait_until(agree, "the Sentinels agreeing", STEADY_TIMEOUT)
        if agreed[0] != d.primary.port:
            d.primary, d.replica = d.replica, d.primary
        d.replica.replica_of = d.primary
        if d.replica.process is None:
            with helper_failures():
                d.replica.start()
        elif _is_primary(d.replica):  # what Sentinel would do at its next look at it
            with contextlib.closing(d.replica.client()) as client:
                client.replicaof("127.0.0.1", d.primary.port)
        with helper_failures():
            wait_until(self._as_believed, "one primary again", STEADY_TIMEOUT)
        return False

    def _as_believed(self) -> bool:
        d = self.servers
        with contextlib.suppress(redis.exceptions.RedisError):
            if all(sentinel.primary_port() == d.primary.port for sentinel in d.sentinels):
                return (
                    _is_primary(d.primary)
                    and not _is_primary(d.replica)
                    and replicas_in_sync(d.primary, 1)
                )
        return False


@contextlib.contextmanager
def helper_failures() -> Iterator[None]:
    """The test helpers fail through ``pytest.fail``: a RuntimeError here."""
    import pytest

    try:
        yield
    except pytest.fail.Exception as error:
        raise RuntimeError(f"the Redis deployment: {error}") from None


def sleep_until(instant: float) -> None:
    time.sleep(max(instant - time.time(), 0.0))
