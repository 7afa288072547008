"""The Redis test harness itself (tests/redis_server.py): its ports survive a busy machine."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from .helpers import _ephemeral_low, free_port
from .redis_server import RedisServer


def test_free_ports_lie_below_the_ephemeral_range() -> None:
    # An outgoing connection takes its source port from the ephemeral range; a port chosen there
    # can be taken between choosing it and the server's bind (CI lost a cluster node that way).
    ports = {free_port() for _ in range(20)}
    assert all(1024 <= port < _ephemeral_low() for port in ports)
    assert len(ports) > 1  # chosen at random, so parallel test processes rarely pick the same


def test_a_first_start_whose_port_was_taken_moves_to_a_free_one(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "node", cluster=True)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", server.port))  # bound, not listening: connections refused
        taken = server.port
        with server:
            assert server.port != taken
            with server.client() as client:
                assert client.ping()
            assert server.starts == 1


def test_a_restart_never_moves(tmp_path: Path) -> None:
    # Clients know the port: a restart on another one would be a different server to them.
    with RedisServer(tmp_path / "node") as server:
        port = server.port
        server.stop(kill=True)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
            squatter.bind(("127.0.0.1", port))
            with pytest.raises(pytest.fail.Exception, match="Address already in use"):
                server.start()
        assert server.port == port
