"""
Smoke test of ``benchmarks/failover.py``: one small round per variant runs end to end and
reports, and with ``min_replicas=1`` the kill cost no refresh token.

Nothing here is timed. The round kills the primary with the replica in sync (``--lagging 0``),
1.47 s after the login (seed 12): halfway between the fleet's first refresh (due 1 s after the
login) and its second. What a kill at any moment costs is for the full run to count (see
``benchmarks/README.md``), not for a smoke test to hit by chance. Needs ``redis-server``, like
the Redis tests.
"""

from __future__ import annotations

import subprocess

from .test_benchmarks import ROOT, run_benchmark

FAILOVER = ROOT / "benchmarks" / "failover.py"


def run_failover(*args: str) -> subprocess.CompletedProcess[str]:
    return run_benchmark(FAILOVER, *args, timeout=90.0)


class TestFailoverBenchmark:
    """``benchmarks/failover.py``: its options, and one round of each variant."""

    def test_help_lists_the_options(self):
        done = run_failover("--help")

        assert (0, "") == (done.returncode, done.stderr)
        for option in ("--rounds", "--quick", "--seed", "--variants", "--lagging", "--workers"):
            assert option in done.stdout

    def test_one_round_of_each_variant(self):
        done = run_failover(
            "--rounds", "1", "--seed", "12", "--workers", "2", "--lagging", "0",
            "--span", "1", "--tail", "1.5",
        )  # fmt: skip

        assert 0 == done.returncode, done.stderr
        out = done.stdout
        assert "seed 12 (replay with --seed 12)" in done.stderr
        # variant | replica | rounds | kills | reuse rejections | revoked | lost
        assert "| min_replicas=1 | **any** | 1 | 1 | 0 | 0 | 0 |" in out, out
        assert "| min_replicas=0 | **any** | 1 | 1 |" in out
        assert "## Rounds" in out
