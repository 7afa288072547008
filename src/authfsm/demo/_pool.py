"""
Real worker processes for the demo, driven in lock step over their stdin and stdout.

Every wait here has a deadline and every process is stopped (then killed, if it must be) when the
pool closes, so a stuck worker can slow the demo down but never hang it.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import authfsm

__all__ = ["DemoError", "WorkerPool", "worker_command"]

_EOF = object()


class DemoError(RuntimeError):
    """A worker died, misbehaved or did not answer in time."""


def _child_env() -> dict[str, str]:
    # Workers import authfsm from wherever this process did, installed or not.
    root = str(Path(authfsm.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


class _Worker:
    def __init__(self, index: int, argv: Sequence[str], stderr_path: Path) -> None:
        self.index = index
        self.stderr_path = stderr_path
        self._stderr = stderr_path.open("wb")
        self.proc = subprocess.Popen(  # noqa: S603  (our own interpreter and module)
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=_child_env(),
            text=True,
            bufsize=1,
        )
        self._lines: queue.Queue[object] = queue.Queue()
        self._reader = threading.Thread(
            target=self._read, args=(self.proc.stdout,), daemon=True, name=f"demo-worker-{index}"
        )
        self._reader.start()

    def _read(self, stream: IO[str] | None) -> None:
        if stream is not None:
            for line in stream:
                self._lines.put(line)
        self._lines.put(_EOF)

    def send(self, command: str) -> None:
        stdin = self.proc.stdin
        if stdin is None:
            raise DemoError(f"worker {self.index} has no input")
        try:
            stdin.write(command + "\n")
            stdin.flush()
        except OSError:
            raise DemoError(self._died(f"worker {self.index} stopped reading")) from None

    def receive(self, deadline: float) -> dict[str, Any]:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DemoError(self._died(f"worker {self.index} did not answer in time"))
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is _EOF:
                raise DemoError(self._died(f"worker {self.index} exited"))
            try:
                reply = json.loads(str(line))
            except ValueError:
                continue  # not protocol output (a stray print); skip it
            if not isinstance(reply, dict):
                continue
            if "error" in reply:
                raise DemoError(f"worker {self.index} failed: {reply['error']}")
            return reply

    def _died(self, what: str) -> str:
        self._stderr.flush()
        try:
            tail = self.stderr_path.read_text(errors="replace").strip().splitlines()[-8:]
        except OSError:
            tail = []
        return what + (":\n  " + "\n  ".join(tail) if tail else "")

    def stop(self, timeout: float) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._reader.join(timeout=timeout)
        self._stderr.close()


class WorkerPool:
    """
    ``count`` worker processes started with ``argv(index)``; use as a context manager.

    ``broadcast`` sends one command to every worker at once, then collects every reply, so each
    round starts in all workers at (nearly) the same moment.
    """

    def __init__(
        self,
        count: int,
        argv: Callable[[int], list[str]],
        folder: Path,
        *,
        timeout: float = 30.0,
    ) -> None:
        self._count = count
        self._argv = argv
        self._folder = folder
        self._timeout = timeout
        self._workers: list[_Worker] = []

    def __enter__(self) -> WorkerPool:
        try:
            for index in range(self._count):
                self._workers.append(
                    _Worker(
                        index,
                        self._argv(index),
                        self._folder / f"worker-{index}.stderr",
                    )
                )
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def ready(self, on_reply: Callable[[], None] | None = None) -> list[dict[str, Any]]:
        """Wait until every worker has set up and said so."""
        return self._collect(on_reply)

    def broadcast(
        self, command: str, on_reply: Callable[[], None] | None = None
    ) -> list[dict[str, Any]]:
        """Send ``command`` to every worker, then return their replies in worker order."""
        for worker in self._workers:
            worker.send(command)
        return self._collect(on_reply)

    def _collect(self, on_reply: Callable[[], None] | None) -> list[dict[str, Any]]:
        deadline = time.monotonic() + self._timeout
        replies = []
        for worker in self._workers:
            replies.append(worker.receive(deadline))
            if on_reply is not None:
                on_reply()
        return replies

    def close(self) -> None:
        """Stop every worker: end of input first, a kill after a grace period."""
        for worker in self._workers:
            with contextlib.suppress(OSError, ValueError):
                if worker.proc.stdin is not None:
                    worker.proc.stdin.close()
        for worker in self._workers:
            worker.stop(timeout=5.0)
        self._workers.clear()


def worker_command(*args: str) -> list[str]:
    """The command line of one worker process."""
    return [sys.executable, "-m", "authfsm.demo.worker", *args]
