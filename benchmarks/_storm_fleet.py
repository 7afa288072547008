"""
The storm benchmark's machinery (see ``storm.py``): the worker fleet, a throwaway redis-server,
CPU-bound neighbours, and the workers' memory.

It starts, talks to and stops processes; it must not judge what they measure.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WORKER = Path(__file__).resolve().parent / "_storm_workers.py"
REPLY_TIMEOUT = 120.0
# How long after the last worker is ready the storm starts: time to hand every worker its
# "go" line and for each to be scheduled and go to sleep until the start instant.
GO_MARGIN = 0.05
GO_MARGIN_PER_WORKER = 0.001
# How long after the start instant a worker that has its token keeps quiet before it answers
# (and collects its garbage): a worker answering at once would wake the coordinator and spend
# CPU on its reply and its collection while later followers still wait for a core, which
# is the harness's cost, not the library's. A caller still waiting after the window answers
# as soon as it is done.
QUIET_WINDOW = 1.0


def read_replies(procs: Sequence[subprocess.Popen[bytes]]) -> list[dict[str, Any]]:
    """One JSON line from each worker, in the workers' order (``REPLY_TIMEOUT`` for all)."""
    deadline = time.monotonic() + REPLY_TIMEOUT
    replies: dict[int, dict[str, Any]] = {}
    buffers = {n: b"" for n in range(len(procs))}
    with selectors.DefaultSelector() as selector:
        for n, proc in enumerate(procs):
            assert proc.stdout is not None
            selector.register(proc.stdout, selectors.EVENT_READ, n)
        while len(replies) < len(procs):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"workers did not answer within {REPLY_TIMEOUT:g} s")
            for key, _ in selector.select(remaining):
                n = key.data
                chunk = os.read(key.fd, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"worker {n} died")
                buffers[n] += chunk
                if b"\n" in buffers[n]:
                    raw, _, buffers[n] = buffers[n].partition(b"\n")
                    replies[n] = json.loads(raw)
                    selector.unregister(key.fileobj)
    return [replies[n] for n in range(len(procs))]


class Fleet:
    """Long-lived worker processes; a round goes to the first N of them."""

    def __init__(self, size: int, *, freeze: bool) -> None:
        flags = [] if freeze else ["--no-gc-freeze"]
        self.procs = [
            subprocess.Popen(  # noqa: S603 - the worker script next to this one
                [sys.executable, str(WORKER), *flags],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,
            )
            for _ in range(size)
        ]
        read_replies(self.procs)

    def prepare(self, n: int, command: dict[str, Any]) -> None:
        """Hand the first ``n`` workers a round; returns when all are ready."""
        self._send(self.procs[:n], {"op": "prepare", **command})
        read_replies(self.procs[:n])

    def settle(self) -> None:
        """Returns once every worker is idle (done with its last round and its garbage)."""
        self._send(self.procs, {"op": "ping"})
        read_replies(self.procs)

    def cpu_seconds(self, n: int) -> float:
        """
        CPU time the first ``n`` workers have used so far, all their threads (Linux; nan
        elsewhere): the scheduler's nanoseconds on a CPU, not the 10 ms ticks of ``/proc/PID/stat``.
        """
        total = 0
        for proc in self.procs[:n]:
            try:
                tasks = list(Path(f"/proc/{proc.pid}/task").iterdir())
            except OSError:
                return math.nan
            for task in tasks:
                with contextlib.suppress(OSError, ValueError, IndexError):  # a thread that ended
                    total += int((task / "schedstat").read_text().split()[0])
        return total / 1e9

    def go(self, n: int, start_at: float, quiet: float = QUIET_WINDOW) -> list[dict[str, Any]]:
        """
        Start the prepared round at ``start_at``; every worker's answer, in order. Workers
        answer no earlier than ``quiet`` seconds after the start (see ``QUIET_WINDOW``).
        """
        command = {"op": "go", "start_at": start_at, "report_at": start_at + quiet}
        self._send(self.procs[:n], command)
        return read_replies(self.procs[:n])

    @staticmethod
    def start_instant(n: int) -> float:
        """The shared start instant: late enough for ``n`` ready workers to get it in time."""
        return time.time() + GO_MARGIN + GO_MARGIN_PER_WORKER * n

    @staticmethod
    def _send(procs: Sequence[subprocess.Popen[bytes]], command: dict[str, Any]) -> None:
        line = json.dumps(command).encode() + b"\n"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(line)

    def memory(self) -> Memory | None:
        """The workers' resident and proportional set sizes now (Linux only)."""
        return Memory.of([proc.pid for proc in self.procs])

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


@dataclass(frozen=True)
class Memory:
    """Per-worker RSS and PSS in MiB (PSS splits shared pages among their sharers)."""

    rss: list[float]
    pss: list[float]

    @classmethod
    def of(cls, pids: Sequence[int]) -> Memory | None:
        rss, pss = [], []
        for pid in pids:
            fields: dict[str, float] = {}
            try:
                text = Path(f"/proc/{pid}/smaps_rollup").read_text()
            except OSError:
                return None
            for line in text.splitlines():
                name, _, value = line.partition(":")
                if name in ("Rss", "Pss"):
                    fields[name] = int(value.split()[0]) / 1024
            rss.append(fields["Rss"])
            pss.append(fields["Pss"])
        return cls(rss, pss)

    def describe(self) -> str:
        return (
            f"{len(self.rss)} workers: RSS {statistics.median(self.rss):.0f} MiB each (median; "
            f"max {max(self.rss):.0f}), PSS {statistics.median(self.pss):.0f} MiB each, "
            f"{sum(self.pss) / 1024:.2f} GiB in all"
        )


@contextlib.contextmanager
def neighbours(count: int) -> Iterator[list[int]]:
    """``count`` CPU-bound processes (pure-Python loops) until the block ends; yields their PIDs."""
    procs = [
        subprocess.Popen([sys.executable, str(WORKER), "--busy"])  # noqa: S603 - ours
        for _ in range(count)
    ]
    try:
        yield [proc.pid for proc in procs]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server on 127.0.0.1; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found: run .ci/redis-deps (apt-get install -y redis-server)")
    folder = Path(tempfile.mkdtemp(prefix="authfsm-storm-redis-"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(  # noqa: S603 - the redis-server found on PATH
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(folder), "--logfile", str(folder / "redis.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                with contextlib.closing(redis.Redis.from_url(url)) as client:
                    client.ping()
                    break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)
