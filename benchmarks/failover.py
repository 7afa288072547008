"""
Redis failover: the primary SIGKILLed at random moments under a refreshing fleet (issue 11).

The goal: over many rounds, with ``min_replicas=1``, **0 reuse rejections and 0 credentials
lost**, and every process of the fleet ends with a token the IdP accepts.

One Sentinel deployment (``tests/redis_server.py``: a primary, a replica and three Sentinels on
127.0.0.1, failing over in about a second) serves every round. A round:

1. logs in a new token family at the loopback ``TokenServer`` (rotation; a refresh token used
   twice revokes the family) and stores it through the Sentinel-discovered primary, under a key
   of the round's own;
2. ``--workers`` OS processes (started once, ``_failover_workers.py``), each with one
   ``AuthEngine`` on its own ``RedisStore.from_sentinel(..., min_replicas=M)``, ask for a token
   every ``--interval`` s; access tokens live ``--ttl`` s, so the fleet refreshes (one process
   under the lease, the others adopt) every ``ttl / 2`` s;
3. the primary is SIGKILLed (by PID: a process this script started) at an instant drawn
   uniformly from ``ttl / 2`` to ``ttl / 2 + --span`` s after the login: the first refresh is
   due ``ttl / 2`` after it, so the kill falls over whole refresh periods, uniformly over the
   phase of the refresh activity. In a seeded ``--lagging`` share of the rounds the replica is
   cut off first (SIGSTOP and its link dropped, as the tests' ``cut_off_replica`` does) for a
   stretch drawn from ``--lag-min``-``--lag-max`` s ending at the kill, and resumed right after
   it: the rotations of that stretch are on the killed primary only;
4. Sentinel promotes the replica; ``--settle`` s later the killed server is started again as a
   replica of the new primary (faster than rebuilding the deployment: the roles swap every
   round; restarted at once, it makes these fast Sentinels fail over again, back and forth);
   the workers go on for ``--tail`` s, then each makes one request to the IdP's protected
   resource with ``engine.httpx_auth()`` and reports; the Sentinels' log says how many
   failovers the round had (1 is the kill's), and an extra one is undone before the next round;
5. the verdict: reuse rejections at the IdP, whether the family is alive, whether the stored
   credential is the newest one the IdP minted ("lost" if not), ``StorageUnreplicated`` the
   engines caught, how many workers' final requests were accepted.

Each round runs for ``min_replicas=1`` and ``min_replicas=0`` (``--variants``) with the same
seeded schedule, taking turns. A round's schedule comes from ``random.Random("<seed>:<round>")``;
the run's seed is printed, and ``--seed`` replays the schedules (the processes' own timing is not
replayed). The report is a Markdown table per variant and per state of the replica at the kill,
and one line per round; the figures are printed, never asserted.

The time scale is compressed: tokens live seconds, so the engines' backoffs (``--backoff``) and
the store's lease TTL (``--lease-ttl``) are shrunk alike, and a round takes seconds.

Needs ``redis-server`` on PATH (``.ci/redis-deps`` installs it), the ``redis`` extra and pytest
(``tests/redis_server.py`` reports a missing binary through it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import secrets
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from _failover_deployment import Deployment, sleep_until
from _failover_report import Outcome, Plan, report, results_page
from _failover_workers import TRACE_VARIABLE, Events, Fleet

from authfsm import AuthEngine
from authfsm.adapters import RedisStore
from authfsm.testing import TokenServer

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "FAILOVER.md"
ROUNDS, QUICK_ROUNDS = 20, 3
START_MARGIN = 0.05  # from sending "go" to the workers' start instant, s
# A refresh whose write found no primary: the rotation is in that engine's memory only.
WRITE_CUT = "authfsm.store.write_failed:storage_unavailable"
STORE_TIMEOUT = 1.0  # socket timeouts of every store (replica_timeout must be shorter)


def plans(seed: int, rounds: int, args: argparse.Namespace) -> list[Plan]:
    """Every round's schedule; each round draws from its own generator, so rounds replay alone."""
    made = []
    for number in range(1, rounds + 1):
        draw = random.Random(f"{seed}:{number}")  # noqa: S311 - a replayable schedule
        kill_at = args.ttl / 2 + draw.uniform(0.0, args.span)
        lagging = draw.random() < args.lagging
        lag = draw.uniform(args.lag_min, args.lag_max)
        made.append(Plan(number, f"{seed}:{number}", kill_at, lag if lagging else None))
    return made


class Failover:
    """Runs rounds on the deployment and the fleet, and judges each one."""

    def __init__(
        self, deployment: Deployment, fleet: Fleet, idp: TokenServer, args: argparse.Namespace
    ) -> None:
        self.deployment, self.fleet, self.idp, self.args = deployment, fleet, idp, args
        self.serial = 0

    def settings(self, key: str, min_replicas: int) -> dict[str, Any]:
        """How every process of the round makes its store and engine."""
        args = self.args
        return {
            "sentinels": self.deployment.sentinels,
            "service": self.deployment.service,
            "key": key,
            "min_replicas": min_replicas,
            "replica_timeout": args.replica_timeout,
            "lease_ttl": args.lease_ttl,
            "timeout": STORE_TIMEOUT,
            "backoff": args.backoff,
            "lease_timeout": args.lease_ttl * 2,
            "token_url": self.idp.token_url,
            "resource_url": self.idp.resource_url,
        }

    @contextlib.contextmanager
    def store(self, key: str, min_replicas: int = 0) -> Iterator[RedisStore]:
        """The coordinator's own store of the round (the login, then the verdict's read)."""
        store = RedisStore.from_sentinel(
            self.deployment.sentinels,
            self.deployment.service,
            key=key,
            min_replicas=min_replicas,
            replica_timeout=self.args.replica_timeout,
            timeout=STORE_TIMEOUT,
        )
        try:
            yield store
        finally:
            store.close()

    def round(self, plan: Plan, min_replicas: int) -> Outcome:
        begun = time.monotonic()
        self.serial += 1
        key = f"failover-{self.serial}-{secrets.token_hex(3)}"
        outcome = Outcome(plan, min_replicas, len(self.fleet.procs))
        deployment = self.deployment
        switches = deployment.switches()
        login = self.idp.issue()
        # The fleet's refreshes keep time with the login (due ttl/2 after it, then every ~ttl/2
        # plus the IdP's latency): the schedule counts from it, so a replay hits the same phase.
        minted = time.time()
        events = Events()
        with self.store(key, min_replicas) as store:
            AuthEngine(store, logger=events).login(login)
        deployment.login_replicated()
        self.idp.reset_counters()
        self.fleet.send({"op": "prepare", **self.settings(key, min_replicas)})
        self.fleet.replies()
        start_at = time.time() + START_MARGIN
        self.fleet.send({"op": "go", "start_at": start_at, "interval": self.args.interval})

        if plan.lag is not None:
            sleep_until(minted + plan.kill_at - plan.lag)
            deployment.cut_off_replica()
        sleep_until(minted + plan.kill_at)
        killed = time.monotonic()
        deployment.kill_primary(resume_replica=plan.lag is not None)
        deployment.wait_for_failover()
        outcome.failover = time.monotonic() - killed
        # Restarted at once, the killed server makes these Sentinels fail over again, back and
        # forth, with two primaries at a time (see benchmarks/README.md): it waits a moment.
        time.sleep(self.args.settle)
        rejoining = time.monotonic()
        deployment.rejoin()
        outcome.rejoin = time.monotonic() - rejoining
        time.sleep(self.args.tail)
        self.fleet.send({"op": "stop"})
        replies = self.fleet.replies()
        outcome.failovers = deployment.switches() - switches
        outcome.steady = deployment.steady()

        self.judge(outcome, replies, login, key)
        outcome.unreplicated += events.counts["authfsm.store.unreplicated"]
        outcome.seconds = time.monotonic() - begun
        return outcome

    def judge(self, o: Outcome, replies: list[dict[str, Any]], login: Any, key: str) -> None:
        idp = self.idp
        o.token_calls, o.rotations, o.reuses = idp.token_calls, idp.rotations, idp.reuse_rejections
        o.revoked = not idp.family_alive(login)
        with self.store(key) as store:
            record = store.read()
        stored = record.credential if record is not None else None
        o.lost = stored is None or not idp.is_current(stored)
        for reply in replies:
            held = reply["refresh_token"]
            o.newest_in_engine = o.newest_in_engine or bool(held and idp.is_current(held))
            events = reply["events"]
            o.unreplicated += events.get("authfsm.store.unreplicated", 0)
            o.write_cut = o.write_cut or bool(events.get(WRITE_CUT, 0))
            seen = reply["unreplicated_seen"] or reply["failure"] == "unreplicated"
            o.seen_unreplicated += bool(seen)
            o.usable += reply["resource"] == 200
            o.errors.update(reply["errors"])
            o.finals[str(reply["resource"])] += 1


# -- the run -------------------------------------------------------------------------------------


def variants_option(text: str) -> tuple[int, ...]:
    try:
        chosen = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not chosen or not set(chosen) <= {0, 1}:
        raise argparse.ArgumentTypeError("min_replicas values: 1 and/or 0 (one replica here)")
    return tuple(dict.fromkeys(chosen))


def parser() -> argparse.ArgumentParser:
    made = argparse.ArgumentParser(
        prog="failover.py",
        description=__doc__.strip().split("\n\n")[0],
        epilog="See the module docstring and benchmarks/README.md for what is measured.",
    )
    add = made.add_argument
    add("--rounds", type=int, help=f"rounds per variant ({ROUNDS}; --quick {QUICK_ROUNDS})")
    add("--quick", action="store_true", help=f"a smoke run: {QUICK_ROUNDS} rounds")
    add("--seed", type=int, help="replay the schedules of a run (default: a new random seed)")
    add("--only", type=int, metavar="N", help="run round N of the seed's schedule alone")
    add("--variants", type=variants_option, default=(1, 0), help="min_replicas values (1,0)")
    add("--workers", type=int, default=4, help="worker processes, one engine each (4)")
    add("--ttl", type=float, default=2.0, help="access token lifetime, s (2)")
    add("--latency", type=float, default=0.05, help="IdP latency per call, s (0.05)")
    add("--interval", type=float, default=0.02, help="a worker's pause between calls, s (0.02)")
    add("--span", type=float, default=2.0, help="the kill's range after ttl/2, s (2)")
    add("--lagging", type=float, default=0.5, help="share of rounds with a cut-off replica (0.5)")
    add("--lag-min", type=float, default=0.2, help="shortest cut-off before the kill, s (0.2)")
    add("--lag-max", type=float, default=1.0, help="longest cut-off before the kill, s (1)")
    add("--settle", type=float, default=1.0, help="from the failover to the rejoin, s (1)")
    add("--tail", type=float, default=3.0, help="workers go on after the rejoin, s (3)")
    add("--replica-timeout", type=float, default=0.3, help="the stores' WAIT timeout, s (0.3)")
    add("--lease-ttl", type=float, default=2.0, help="the stores' lease TTL, s (2)")
    add("--backoff", type=float, default=0.2, help="the engines' first backoff, s (0.2)")
    add("--write-results", action="store_true", help=f"write {RESULTS.name}")
    add("--trace", action="store_true", help="the workers print every engine event to stderr")
    return made


def options(argv: Sequence[str] | None) -> argparse.Namespace:
    made = parser()
    args = made.parse_args(argv)
    if args.rounds is None:
        args.rounds = QUICK_ROUNDS if args.quick else ROUNDS
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 1_000_000)
    if args.rounds < 1 or args.workers < 1 or (args.only is not None and args.only < 1):
        made.error("--rounds, --only and --workers take 1 or more")
    if not 0 <= args.lagging <= 1 or not 0 < args.lag_min <= args.lag_max <= args.ttl / 2:
        made.error("--lagging is a share (0-1); 0 < --lag-min <= --lag-max <= ttl/2")
    if not 0 < args.replica_timeout < STORE_TIMEOUT:
        made.error(f"--replica-timeout must be shorter than the stores' {STORE_TIMEOUT:g} s")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = options(argv)
    started = time.monotonic()
    load = [os.getloadavg()[0]]
    schedule = plans(args.seed, args.only or args.rounds, args)
    if args.only is not None:
        schedule, args.rounds = schedule[-1:], 1
    print(f"seed {args.seed} (replay with --seed {args.seed})", file=sys.stderr)
    if args.trace:
        os.environ[TRACE_VARIABLE] = "1"  # the workers inherit it
    fleet = Fleet(args.workers)
    outcomes: list[Outcome] = []
    try:
        with (
            Deployment.running() as deployment,
            TokenServer(access_token_ttl=args.ttl, latency=args.latency) as idp,
        ):
            setup = time.monotonic() - started
            failover = Failover(deployment, fleet, idp, args)
            for plan in schedule:
                # Take turns: which variant goes first alternates, the schedule is the same.
                order = args.variants if plan.number % 2 else args.variants[::-1]
                done = [failover.round(plan, variant) for variant in order]
                outcomes += sorted(done, key=lambda o: args.variants.index(o.min_replicas))
                print(
                    f"round {plan.number} (seed {plan.seed}) {plan.describe()}: "
                    + "; ".join(o.line() for o in done),
                    file=sys.stderr,
                )
    finally:
        fleet.close()
    load.append(os.getloadavg()[0])
    total = time.monotonic() - started
    run = {
        "seconds": f"{total:.0f} s",
        "setup": f"deployment and {args.workers} workers ready in {setup:.1f} s",
        "load": " at the start, ".join(f"{v:.1f}" for v in load) + " at the end",
    }
    text = report(args, outcomes, run)
    print(text)
    if args.write_results:
        RESULTS.write_text(results_page(text, argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
