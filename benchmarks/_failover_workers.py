"""
The failover benchmark's worker processes (see ``failover.py``), and the coordinator's handle on
them.

A worker is one process of the fleet: one ``AuthEngine`` on its own
``RedisStore.from_sentinel(...)``, started once and serving rounds over stdin/stdout, one JSON
line each way:

1. ``{"op": "prepare", ...}``: make the round's store (the round's key, ``min_replicas``) and
   engine (which reads the store: the freshly logged-in credential), answer ``{"ready": ...}``;
2. ``{"op": "go", "start_at": t, ...}``: from the wall-clock instant ``t`` on, ask the engine for
   a token every ``interval`` seconds (the hot path, and a refresh or an adoption whenever the
   short-lived token is due) until ``{"op": "stop"}`` arrives; then make one request to the
   IdP's protected resource with ``engine.httpx_auth()`` (a 401 is recovered once, as a client
   would) and answer with what happened.

Meanwhile the coordinator kills the Redis primary under it; the worker knows nothing about that.
It counts what its engine says (events by name, errors by reason, the calls after which the
engine's failure was ``"unreplicated"``); the coordinator judges.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from _storm_fleet import read_replies

from authfsm import AuthEngine, AuthError, Policy
from authfsm.adapters import OAuthTokenEndpoint, RedisStore

WORKER = Path(__file__).resolve()
TRACE_VARIABLE = "AUTHFSM_FAILOVER_TRACE"
HTTP_TIMEOUT = 10.0


class Events:
    """A structlog-shaped logger that only counts the engine's events by name."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.trace = bool(os.environ.get(TRACE_VARIABLE))

    def _count(self, event: str, **fields: Any) -> None:
        self.counts[event] += 1
        if event == "authfsm.store.write_failed":  # why matters: unreachable, or unreplicated
            self.counts[f"{event}:{fields.get('reason')}"] += 1
        if self.trace:  # fingerprints at most: the engine's events never hold a token
            print(f"{time.time():.3f} {os.getpid()} {event} {fields}", file=sys.stderr)

    debug = info = warning = error = critical = _count


def sentinel_store(command: dict[str, Any]) -> RedisStore:
    """The round's store, as every process of a fleet makes it: from the Sentinels."""
    return RedisStore.from_sentinel(
        command["sentinels"],
        command["service"],
        key=command["key"],
        min_replicas=command["min_replicas"],
        replica_timeout=command["replica_timeout"],
        lease_ttl=command["lease_ttl"],
        timeout=command["timeout"],
    )


def policy(command: dict[str, Any]) -> Policy:
    """The benchmark's time scale: backoffs shrunk like the token lifetime (see failover.py)."""
    return Policy(
        backoff_initial=timedelta(seconds=command["backoff"]),
        backoff_min=timedelta(seconds=command["backoff"] / 4),
        backoff_max=timedelta(seconds=command["backoff"] * 5),
        lease_timeout=timedelta(seconds=command["lease_timeout"]),
    )


class Lines:
    """JSON lines from a file descriptor, readable with a timeout (no buffered ``sys.stdin``)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.selector = selectors.DefaultSelector()
        self.selector.register(fd, selectors.EVENT_READ)

    def next(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next line; None after ``timeout`` seconds without one. EOFError at the end."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if not self.selector.select(left):
                return None
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        message: dict[str, Any] = json.loads(line)
        return message


class Round:
    """One worker's round: its engine, asked for a token until told to stop."""

    def __init__(self, command: dict[str, Any], endpoint: OAuthTokenEndpoint) -> None:
        self.events = Events()
        self.store = sentinel_store(command)
        self.engine = AuthEngine(self.store, endpoint, policy(command), logger=self.events)
        self.resource_url = command["resource_url"]

    def run(self, lines: Lines, start_at: float, interval: float) -> dict[str, Any]:
        time.sleep(max(start_at - time.time(), 0.0))
        calls = unreplicated_seen = 0
        errors: Counter[str] = Counter()
        core = self.engine._core  # a benchmark may look inside: status() would do I/O
        while lines.next(timeout=interval) is None:  # anything on stdin now means "stop"
            calls += 1
            try:
                self.engine.access_token()
            except AuthError as error:
                errors[error.reason] += 1
            except Exception as error:  # noqa: BLE001 - a store must raise AuthError only
                errors[f"unexpected {type(error).__name__}"] += 1
            if core.failure == "unreplicated":
                unreplicated_seen += 1
        return {
            "calls": calls,
            "errors": dict(errors),
            "unreplicated_seen": unreplicated_seen,
            **self.finish(),
        }

    def finish(self) -> dict[str, Any]:
        """One request to the protected resource, then the engine's status and credential."""
        status: int | str
        try:
            with httpx.Client(timeout=HTTP_TIMEOUT) as http:
                status = http.get(self.resource_url, auth=self.engine.httpx_auth()).status_code
        except AuthError as error:
            status = error.reason
        seen = self.engine.status()
        cred = self.engine.credentials
        self.store.close()
        return {
            "resource": status,
            "state": seen.state.name,
            "failure": seen.failure,
            "unsaved": seen.unsaved,
            # A throwaway token of the loopback IdP: the coordinator asks the IdP whether it is
            # the newest one minted.
            "refresh_token": cred.refresh_token if cred is not None else None,
            "events": dict(self.events.counts),
        }


def _answer(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def serve() -> None:
    """Serve rounds from stdin until it closes."""
    endpoints: dict[str, OAuthTokenEndpoint] = {}
    lines = Lines(sys.stdin.fileno())
    _answer({"ready": os.getpid()})
    pending: Round | None = None
    with contextlib.suppress(EOFError):
        while True:
            command = lines.next()
            assert command is not None
            if command["op"] == "prepare":
                url = command["token_url"]
                if url not in endpoints:
                    endpoints[url] = OAuthTokenEndpoint(url, "test-client", timeout=HTTP_TIMEOUT)
                pending = Round(command, endpoints[url])
                _answer({"ready": os.getpid()})
            elif command["op"] == "go":
                assert pending is not None, "go before prepare"
                _answer(pending.run(lines, command["start_at"], command["interval"]))
                pending = None


class Fleet:
    """The coordinator's side: ``size`` long-lived workers, every round to all of them."""

    def __init__(self, size: int) -> None:
        self.procs = [
            subprocess.Popen(  # noqa: S603 - this very script
                [sys.executable, str(WORKER)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,
            )
            for _ in range(size)
        ]
        self.replies()

    def send(self, command: dict[str, Any]) -> None:
        line = json.dumps(command).encode() + b"\n"
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(line)

    def replies(self) -> list[dict[str, Any]]:
        """Every worker's next answer, in order."""
        return read_replies(self.procs)

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError):
                if proc.stdin is not None:
                    proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


if __name__ == "__main__":
    serve()
