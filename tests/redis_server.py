"""
Real redis-servers for tests: started on 127.0.0.1 (free ports below the ephemeral range) or a
unix socket in a tmp folder, ready once they answer PING, stopped (and reaped, by PID) even when a
test fails.

Also the deployments users run: a primary with a replica (:class:`Replicated`), the same watched
by three Sentinels (:class:`SentinelDeployment`, with fast failover settings), and a Redis Cluster
of three primaries with a replica each (:class:`ClusterDeployment`, made by
``redis-cli --cluster create``).

No mocks and no fakeredis: RedisStore is tested against the server users run. A missing
``redis-server`` binary is a failure with a message that says how to install it, never a skip.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from .helpers import free_port

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
START_ATTEMPTS = 5  # a first start whose port another process took meanwhile retries elsewhere
PORT_TAKEN = "Address already in use"
MISSING = (
    "redis-server was not found on PATH (or in $AUTHFSM_REDIS_SERVER). The Redis tests need a "
    "real server: run .ci/redis-deps (it does `apt-get install -y redis-server`)."
)


def find_binary() -> str:
    """The redis-server binary; fails the test (never skips it) when there is none."""
    binary = os.environ.get("AUTHFSM_REDIS_SERVER") or shutil.which("redis-server")
    if not binary or not os.access(binary, os.X_OK):
        pytest.fail(MISSING, pytrace=False)
    return binary


def find_cli() -> str:
    """redis-cli, next to redis-server (it comes in the same package)."""
    beside = Path(find_binary()).with_name("redis-cli")
    binary = str(beside) if beside.exists() else shutil.which("redis-cli")
    if not binary:
        pytest.fail(MISSING.replace("redis-server was", "redis-cli was"), pytrace=False)
    return binary


def wait_until(condition: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> float:
    """Poll ``condition`` every 10 ms until true; the seconds it took. Fails after ``timeout``."""
    started = time.monotonic()
    while True:
        with contextlib.suppress(redis.exceptions.RedisError):
            if condition():
                return time.monotonic() - started
        if time.monotonic() - started > timeout:
            pytest.fail(f"{what}: not within {timeout:g} s")
        time.sleep(0.01)


class _PortTaken(Exception):
    """redis-server could not listen: another process took its port after we chose it."""


class RedisServer:
    """
    One redis-server process with its data folder.

    Args:
        folder: where its data, log and (with ``unix_socket``) socket live.
        unix_socket: listen on ``folder/redis.sock`` instead of a TCP port.
        persistent: append-only file fsynced on every write, so a SIGKILL loses nothing and a
            restart (:meth:`start` again, same port) brings every key back.
        tls: (certificate, key) of a self-signed server certificate: serve TLS only, on the
            port (``rediss://``), with the certificate as the clients' CA.
        replica_of: start as a replica of that server (full sync without delay).
        cluster: a Redis Cluster node (its bus on a port of its own).
        extra: more ``--option value`` arguments.
    """

    def __init__(
        self,
        folder: Path,
        *,
        unix_socket: bool = False,
        persistent: bool = False,
        tls: tuple[Path, Path] | None = None,
        replica_of: RedisServer | None = None,
        cluster: bool = False,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.unix_socket = unix_socket
        self.persistent = persistent
        self.tls = tls
        self.replica_of = replica_of
        self.cluster = cluster
        self.extra = extra
        self.port = 0 if unix_socket else free_port()
        self.bus_port = free_port() if cluster else 0
        self.socket_path = folder / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        if self.unix_socket:
            return f"unix://{self.socket_path}?db=0"
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        options: dict[str, object] = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}
        if self.tls:
            options["ssl_ca_certs"] = str(self.tls[0])
        return redis.Redis.from_url(self.url, **options)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        """Start (or restart, on the same port and data) and wait until it answers PING."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("redis-server is already running")
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                return self._start_once()
            except _PortTaken as taken:
                # Only a first start may move: a restart must come back on the port clients use.
                if self.starts > 1 or attempt == START_ATTEMPTS:
                    pytest.fail(str(taken))
                self.starts -= 1
                (self.folder / "redis.log").unlink(missing_ok=True)
                self.port = 0 if self.unix_socket else free_port()
                self.bus_port = free_port() if self.cluster else 0
        raise AssertionError("unreachable")

    def _start_once(self) -> RedisServer:
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.starts += 1
        try:
            self._wait_ready()
            if self.replica_of is not None:
                # REPLICAOF connects at once; --replicaof waits for the next once-a-second cron.
                with contextlib.closing(self.client()) as client:
                    client.replicaof("127.0.0.1", self.replica_of.port)
        except BaseException:
            self.stop(kill=True)
            raise
        return self

    def command(self) -> list[str]:
        """The redis-server command line."""
        args = [
            find_binary(),
            "--bind", "127.0.0.1",
            "--port", "0" if self.tls else str(self.port),
            "--dir", str(self.folder),
            "--logfile", str(self.folder / "redis.log"),
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
            "--appendfsync", "always",
        ]  # fmt: skip
        if self.unix_socket:
            args += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        if self.tls:
            cert, key = self.tls
            args += [
                "--tls-port", str(self.port),
                "--tls-cert-file", str(cert),
                "--tls-key-file", str(key),
                "--tls-ca-cert-file", str(cert),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        # A replica's first sync through a file: it counts for WAIT once loaded (a diskless sync
        # waits 5 s for more replicas, and then counts at the replica's first ACK, 1 s later).
        args += ["--repl-diskless-sync", "no"]
        if self.cluster:
            args += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.folder / "nodes.conf"),
                "--cluster-port", str(self.bus_port),
                "--cluster-node-timeout", "1000",
            ]  # fmt: skip
        args += list(self.extra)
        return args

    def pause(self) -> None:
        """SIGSTOP: the process answers nothing (its kernel still takes in TCP data)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self, *, kill: bool = False) -> None:
        """SIGKILL (``kill``) or SIGTERM the server and reap it. Idempotent."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)
        if process.stderr is not None:
            process.stderr.close()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        assert self.process is not None
        while True:
            if self.process.poll() is not None:
                log = self.folder / "redis.log"
                stderr = (
                    self.process.stderr.read().decode(errors="replace")
                    if self.process.stderr
                    else ""
                )
                text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                said = f"redis-server exited with {self.process.returncode}: {stderr}{text}"
                if PORT_TAKEN in said:
                    raise _PortTaken(said)
                pytest.fail(said)
            try:
                with contextlib.closing(self.client()) as client:
                    if client.ping():
                        return
            except redis.exceptions.ConnectionError:  # not listening yet, or still loading
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"redis-server did not answer PING within {START_TIMEOUT:g} s")
            time.sleep(0.01)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop(kill=True)


@contextlib.contextmanager
def running_redis(**kwargs: object) -> Iterator[RedisServer]:
    """A started server in its own temporary folder; stopped and removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="authfsm-redis-"))
    try:
        with RedisServer(folder, **kwargs) as server:  # type: ignore[arg-type]
            yield server
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class SentinelServer(RedisServer):
    """
    ``redis-server --sentinel`` watching ``primary`` as ``service_name``; fast failover: down
    after ``down_after_ms`` without an answer, a failover retried after 2 x ``failover_ms``.
    ``peers`` ((port, id) of the other Sentinels) and the replica are known from the start, so
    no Sentinel waits seconds for their hello messages before it can vote.
    """

    def __init__(
        self,
        folder: Path,
        *,
        primary: RedisServer,
        replica: RedisServer,
        service_name: str,
        down_after_ms: int,
        failover_ms: int,
    ) -> None:
        super().__init__(folder)
        self.sentinel_id = secrets.token_hex(20)
        self.primary = primary
        self.replica = replica
        self.service_name = service_name
        self.down_after_ms = down_after_ms
        self.failover_ms = failover_ms
        self.peers: list[SentinelServer] = []

    def command(self) -> list[str]:
        name = self.service_name
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {self.folder}",
            f"logfile {self.folder / 'redis.log'}",
            "daemonize no",
            f"sentinel myid {self.sentinel_id}",
            f"sentinel monitor {name} 127.0.0.1 {self.primary.port} 2",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_ms}",
            f"sentinel known-replica {name} 127.0.0.1 {self.replica.port}",
            *(
                f"sentinel known-sentinel {name} 127.0.0.1 {peer.port} {peer.sentinel_id}"
                for peer in self.peers
            ),
        ]
        config = self.folder / "sentinel.conf"  # Sentinel rewrites it: a file of its own
        config.write_text("\n".join(lines) + "\n")
        return [find_binary(), str(config), "--sentinel"]

    def primary_port(self) -> int:
        """The port of the primary this Sentinel announces now."""
        with contextlib.closing(self.client()) as client:
            _host, port = client.sentinel_get_master_addr_by_name(self.service_name)
        return int(port)


def replicas_in_sync(primary: RedisServer, count: int) -> bool:
    """Whether ``count`` replicas acknowledge a write made now (a WAIT after it)."""
    with contextlib.closing(primary.client()) as client:
        pipe = client.pipeline(transaction=False)
        pipe.set("authfsm-test:sync", os.urandom(4).hex())
        pipe.wait(count, 200)
        return int(pipe.execute()[1]) >= count


class Replicated:
    """A primary and one replica, in sync when started."""

    def __init__(self, folder: Path) -> None:
        self.primary = RedisServer(folder / "primary")
        self.replica = RedisServer(folder / "replica", replica_of=self.primary)

    def start(self) -> Replicated:
        self.primary.start()
        self.replica.start()
        wait_until(lambda: replicas_in_sync(self.primary, 1), "the replica in sync")
        return self

    def stop(self) -> None:
        self.replica.stop(kill=True)
        self.primary.stop(kill=True)

    @contextlib.contextmanager
    def replica_paused(self) -> Iterator[None]:
        """The replica SIGSTOPped (it acknowledges nothing), then resumed and in sync again."""
        self.replica.pause()
        try:
            yield
        finally:
            self.replica.resume()
        wait_until(lambda: replicas_in_sync(self.primary, 1), "the replica in sync again")


class SentinelDeployment(Replicated):
    """
    A primary, its replica and three Sentinels (quorum 2) that fail over in about a second.

    :meth:`cut_off_replica` makes replication lag certain: the replica is SIGSTOPped and the
    primary drops its link, so nothing written after that reaches it (a paused process's kernel
    would otherwise still take in the replication stream, and the replica apply it on SIGCONT).
    """

    def __init__(
        self,
        folder: Path,
        *,
        service_name: str = "authfsm-test",
        down_after_ms: int = 300,
        failover_ms: int = 1000,
    ) -> None:
        super().__init__(folder)
        self.service_name = service_name
        self.sentinels = [
            SentinelServer(
                folder / f"sentinel-{n}",
                primary=self.primary,
                replica=self.replica,
                service_name=service_name,
                down_after_ms=down_after_ms,
                failover_ms=failover_ms,
            )
            for n in range(3)
        ]
        for sentinel in self.sentinels:
            sentinel.peers = [peer for peer in self.sentinels if peer is not sentinel]

    @property
    def addresses(self) -> list[str]:
        return [sentinel.address for sentinel in self.sentinels]

    def start(self) -> SentinelDeployment:
        super().start()
        for sentinel in self.sentinels:
            sentinel.start()

        def watching() -> bool:
            for sentinel in self.sentinels:
                with contextlib.closing(sentinel.client()) as client:
                    state = client.sentinel_master(self.service_name)
                if state["num-other-sentinels"] != 2 or state["num-slaves"] != 1:
                    return False
            return True

        wait_until(watching, "three Sentinels that know each other and the replica")
        return self

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop(kill=True)
        super().stop()

    def cut_off_replica(self) -> None:
        """Pause the replica and drop its link: later writes reach the primary only."""
        self.replica.pause()
        with contextlib.closing(self.primary.client()) as client:
            client.client_kill_filter(_type="replica")

    def kill_primary(self) -> None:
        """SIGKILL the primary (by PID): whatever it did not send its replica is lost."""
        self.primary.stop(kill=True)

    def switch_over(self) -> float:
        """A failover with both servers alive (SENTINEL FAILOVER): the primary is demoted."""
        with contextlib.closing(self.sentinels[0].client()) as client:
            client.sentinel_failover(self.service_name)
        return self.wait_for_failover()

    def wait_for_failover(self) -> float:
        """Seconds until every Sentinel announces the replica as primary and it acts as one."""
        old, new = self.primary.port, self.replica.port

        def promoted() -> bool:
            if any(sentinel.primary_port() != new for sentinel in self.sentinels):
                return False
            with contextlib.closing(self.replica.client()) as client:
                return bool(client.role()[0] in (b"master", "master"))

        took = wait_until(promoted, f"a failover from port {old} to {new}", timeout=15.0)
        self.primary, self.replica = self.replica, self.primary
        return took

    def rejoin_old_primary(self) -> None:
        """Start the killed primary again, empty, as a replica of the new one; wait for sync."""
        self.replica.replica_of = self.primary
        self.replica.start()
        wait_until(lambda: replicas_in_sync(self.primary, 1), "the old primary as a replica")


class ClusterDeployment:
    """
    Redis Cluster: three primaries with a replica each, made by ``redis-cli --cluster create``,
    ready when every node says ``cluster_state:ok`` and every primary's replica is in sync.
    """

    def __init__(self, folder: Path, *, primaries: int = 3) -> None:
        self.nodes = [RedisServer(folder / f"node-{n}", cluster=True) for n in range(2 * primaries)]
        self.primaries = primaries

    @property
    def addresses(self) -> list[str]:
        return [node.address for node in self.nodes]

    def start(self) -> ClusterDeployment:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [find_cli(), "--cluster", "create", *self.addresses,
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, capture_output=True, timeout=START_TIMEOUT,
        )  # fmt: skip

        def ready() -> bool:
            for node in self.nodes:
                with contextlib.closing(node.client()) as client:
                    if client.execute_command("CLUSTER INFO")["cluster_state"] != "ok":
                        return False
                    replication = client.info("replication")
                if replication["role"] == "master" and not (
                    replication["connected_slaves"] == 1
                    and replication["slave0"]["state"] == "online"
                    and replication["slave0"]["offset"] == replication["master_repl_offset"]
                ):
                    return False
            return True

        wait_until(ready, "a Redis Cluster with its slots covered and its replicas in sync")
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop(kill=True)

    def node(self, port: int) -> RedisServer:
        return next(node for node in self.nodes if node.port == port)

    def replica_of(self, primary_port: int) -> RedisServer:
        """The replica of the primary on ``primary_port``."""
        with contextlib.closing(self.node(primary_port).client()) as client:
            port = client.info("replication")["slave0"]["port"]
        return self.node(int(port))


@contextlib.contextmanager
def running(deployment_type: type[Replicated], **kwargs: object) -> Iterator[Any]:
    """A started deployment (Replicated, SentinelDeployment) in a temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="authfsm-redis-"))
    deployment = deployment_type(folder, **kwargs)  # type: ignore[arg-type]
    try:
        yield deployment.start()
    finally:
        deployment.stop()
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def running_cluster() -> Iterator[ClusterDeployment]:
    folder = Path(tempfile.mkdtemp(prefix="authfsm-redis-cluster-"))
    cluster = ClusterDeployment(folder)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(name="redis_server", scope="session")
def _redis_server() -> Iterator[RedisServer]:
    """One server for the session; tests isolate themselves by key (see ``redis_key``)."""
    with running_redis() as server:
        yield server


@pytest.fixture(name="redis_key")
def _redis_key(request: pytest.FixtureRequest) -> str:
    """A key no other test uses."""
    return f"{request.node.name[:60]}:{os.urandom(6).hex()}"
