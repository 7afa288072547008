"""
Smoke tests of the benchmarks: they start, run end to end and report, on a size CI can afford.

Nothing here is timed: the benchmarks print their figures, and these tests only check that a run
completes and that authfsm's guarantees (one call per rotation, no reuse, every caller usable)
hold in it. The storm needs ``redis-server``, like the Redis tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STORM = ROOT / "benchmarks" / "storm.py"


def run_benchmark(script: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """A benchmark script with this checkout's ``src`` first on the path."""
    paths = [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def run_storm(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return run_benchmark(STORM, *args, timeout=timeout)


class TestStorm:
    """``benchmarks/storm.py``: its options and one small run of every kind of row."""

    def test_help_lists_the_options(self):
        done = run_storm("--help")

        assert (0, "") == (done.returncode, done.stderr)
        for option in (
            "--sizes",
            "--tasks",
            "--task-procs",
            "--task-engines",
            "--busy",
            "--quick",
            "--quiet-window",
            "--bare-cost",
            "--short",
        ):
            assert option in done.stdout

    def test_a_small_storm_of_processes_and_tasks(self):
        done = run_storm(
            "--sizes", "2", "--rounds", "1", "--naive-up-to", "2",
            "--tasks", "3", "--task-procs", "2", "--busy", "1", "--quiet-window", "0",
            "--bare-cost", "100:200", "--short",
        )  # fmt: skip

        assert 0 == done.returncode, done.stderr
        out = done.stdout
        assert "## Processes" in out
        assert "## asyncio" in out
        assert "1 busy neighbour process;" in out
        # Every authfsm row (2 stores x (1 process row + 2 asyncio rows)) keeps the guarantees.
        assert 6 == out.count("every caller usable: **yes**")
        assert "**NO**" not in out
        # The naive client spends one refresh token twice: a reuse, and nobody usable.
        assert "| file | 2 | naive | 2 | 1 | 1 | 0/2 |" in out
        # The bare client, plain and burning 100 us before its sleep and 200 us after.
        assert "| file | 2 | bare | 1 | 1 | 0 | 2/2 |" in out
        assert "| file | 2 | bare+100/200 | 1 | 1 | 0 | 2/2 |" in out
        assert "| file (bare+100/200 client) |" in out
        # Followers with the engine's flow cut away: one call, and both usable.
        assert "| file | 2 | short | 1 | 1 | 0 | 2/2 |" in out
        assert "| file | 2 | short-read | 1 | 1 | 0 | 2/2 |" in out

    def test_a_follower_cost_is_two_numbers(self):
        done = run_storm("--bare-cost", "100:200,300", "--sizes", "none", "--tasks", "0")

        assert 2 == done.returncode
        assert "not PRE:POST microseconds: '300'" in done.stderr
