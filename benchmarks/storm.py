"""
The refresh storm: many callers find one shared credential stale at the same instant.

Against the loopback ``TokenServer`` (refresh-token rotation; a reused refresh token revokes the
whole family; a fixed ``--latency`` per token call), on a ``FileStore`` and on a ``RedisStore``
(a real redis-server on 127.0.0.1), this measures in one run:

- **processes** (``--sizes``, default 1, 8, 32 and 128): N OS processes, each calling
  ``AuthEngine.access_token()`` (**authfsm**), and, up to ``--naive-up-to`` processes, the
  **naive** client: every process refreshes with the refresh token it holds in memory and writes
  the result back with no lock and no compare-and-swap (what ``authfsm.demo``'s naive client
  does; ``naive_refresh`` in ``_storm_workers.py``);
- **asyncio** (``--tasks`` per process in ``--task-procs`` processes, default 8 x 250): every task
  awaits ``AsyncAuthEngine.access_token()``, with one engine per process shared by its tasks and
  with one engine per task (``--task-engines``); the file through the async engine's
  blocking-store adapter, Redis through ``AsyncRedisStore``.

With ``--busy K``, K CPU-bound neighbours (pure-Python loops) run from before the first round
to after the last, so the figures show what the followers' waiting costs the leader when the
cores are short.

Per row and round: endpoint calls, reuse rejections, how many callers end with a *usable* token
(one the IdP's protected resource accepts after the round), and for each caller the time from
the common start instant until it held a token. The table gives the median over rounds of the
first token (the leader's delivery) and of the last one (when everyone is usable), and p50/p99
over every caller of every round. **The floor** is the IdP's own latency (one refresh call,
nobody else around, the same HTTP client) measured in the same run, under the same neighbours;
every row gives its lag over the floor (p99 - floor) and its ratio to it. The goal:

- 1 endpoint call per rotation, 0 reuse rejections, every caller usable;
- at N=32 processes, p99 within 10 ms of the floor on a quiet machine, and within 50 ms beside
  two busy neighbours (``--busy 2``).

Each round logs in a new token family and stores it as a credential that is already due but
still valid (logged in an hour ago, expiring in a minute: inside the default 5-minute leeway), so
rounds are independent and every caller must refresh or adopt. Workers are started once and
reused: a round is two lines on their stdin, "prepare" (build the engines, which read the store)
and "go" with a wall-clock start instant shared by every process on this machine, so the storm
starts when everyone is ready. They keep their Redis connections, HTTP clients and event loop
like a service would, freeze their start-up objects out of the garbage collector's way
(``gc.freeze()``; ``--no-gc-freeze`` to compare) and collect after every round. Each
configuration gets one unrecorded warm-up round, then its rows take turns round by round. Besides
the times, each row gives the CPU time its workers used per round (``/proc``, Linux).

With ``--bare-cost PRE:POST,...`` the file's process runs add bare-client rows whose followers
burn PRE microseconds of CPU after their lock try fails, before they sleep, and POST after they
wake (client ``bare+PRE/POST``): against the plain bare row of the same run, what each
microsecond of a follower's own work costs the first token and the p99 at that N.

With ``--short`` the file's process runs add two rows of followers with the engine's flow cut
away (``short_follower`` in ``_storm_workers.py``): **short** waits on the lock in the kernel,
reads the store and lets the engine's core judge and adopt the record; **short-read** only
waits and reads (decoding included). Between bare, short-read, short and authfsm: what the
read, the judgement and the flow around them each cost the storm.

With ``--encrypted`` the process runs add rows ``file+enc`` and ``redis+enc`` (authfsm only):
the stores seal every record with ``EncryptedCodec`` (AES-256-GCM, a key the coordinator makes
and hands the workers in ``AUTHFSM_STORM_KEYS``); their rounds alternate with the plaintext rows'
of the same N, so the cost of encryption is read off against rounds run under the same load.

Needs ``redis-server`` on PATH (``.ci/redis-deps`` installs it) and the ``redis`` extra.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import httpx
from _storm_fleet import QUIET_WINDOW, Fleet, neighbours, redis_server
from _storm_report import Row, Run, report, results_page
from _storm_workers import KEYS_VARIABLE, open_store

from authfsm.adapters import OAuthTokenEndpoint, generate_key
from authfsm.engine import Record
from authfsm.testing import TokenServer

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "STORM.md"
SIZES = (1, 8, 32, 128)
QUICK_SIZES = (1, 8)
STORES = ("file", "redis")
ENGINES = ("shared", "per-task")
TASKS, TASK_PROCS = 250, 8
QUICK_TASKS, QUICK_TASK_PROCS = 50, 2
NAIVE_UP_TO = 32
# The stale credential: logged in an hour ago, expiring in a minute, so already due (the default
# policy refreshes 5 minutes before expiry) but still valid, as when a fleet wakes into the window.
AGE = 3600.0
STILL_VALID = 60.0
FLOOR_SAMPLES = 7


def floor_samples(idp: TokenServer, samples: int = FLOOR_SAMPLES) -> list[float]:
    """Seconds of one refresh call each, with nobody else around, through the same HTTP client."""
    times = []
    with OAuthTokenEndpoint(idp.token_url, "test-client", timeout=30.0) as endpoint:
        for _ in range(samples):
            creds = idp.issue()
            started = time.perf_counter()
            endpoint.refresh(creds)
            times.append(time.perf_counter() - started)
    return times


class Storm:
    """Runs rounds on the fleet and records them in rows."""

    def __init__(
        self,
        fleet: Fleet,
        idp: TokenServer,
        http: httpx.Client,
        url: str,
        rounds: int,
        quiet: float = QUIET_WINDOW,
    ) -> None:
        self.fleet, self.idp, self.http, self.url = fleet, idp, http, url
        self.rounds = rounds
        self.quiet = quiet
        self.folder = Path(tempfile.mkdtemp(prefix="authfsm-storm-"))
        self.serial = 0
        self.spent: list[str] = []  # wall time per configuration

    def round(self, row: Row, *, record: bool = True) -> None:
        """A new token family stored due, every worker of the row prepared, then the storm."""
        self.serial += 1
        kind, _, sealed = row.store.partition("+")
        # One file or key per kind of store, as a service has: the workers keep their store
        # objects across rounds (and with them a Redis store's release subscription).
        name = row.store.replace("+", "-")
        if kind == "file":
            path = self.folder / f"auth-{name}.json"
            spec: dict[str, Any] = {"kind": "file", "path": str(path)}
        else:
            spec = {"kind": "redis", "url": self.url, "key": f"storm-{name}-{os.getpid()}"}
        spec["encrypted"] = bool(sealed)
        now = time.time()
        stale = attrs.evolve(
            self.idp.issue(),
            last_refresh=datetime.fromtimestamp(now - AGE, UTC),
            expires_at=datetime.fromtimestamp(now + STILL_VALID, UTC),
        )
        store = open_store(spec)
        current = store.read()
        store.write(Record(credential=stale), current.revision if current else None)
        self.idp.reset_counters()
        command = {
            "mode": "async" if row.engines else "sync",
            "client": row.client,
            "store": spec,
            "token_url": self.idp.token_url,
            "tasks": row.tasks,
            "engines": row.engines,
        }
        self.fleet.prepare(row.procs, command)
        cpu = self.fleet.cpu_seconds(row.procs)
        start_at = self.fleet.start_instant(row.procs)
        replies = self.fleet.go(row.procs, start_at, self.quiet)
        cpu = self.fleet.cpu_seconds(row.procs) - cpu
        if record:
            self._record(row, replies, cpu, previous=stale.access_token)

    def _record(
        self, row: Row, replies: list[dict[str, Any]], cpu: float, *, previous: str
    ) -> None:
        """The round's figures into ``row``; every distinct token is checked with the IdP."""
        valid: dict[str, bool] = {}
        ok_times: list[float] = []
        calls = sorted(call for reply in replies for call in reply.get("calls", []))
        if calls:  # the leader's call (the naive rows: the first one sent)
            row.sent.append(calls[0][0])
            row.answered.append(calls[0][1])
        for reply in replies:
            if reply["early"] < 0:
                row.late += len(reply["results"])
            for token, elapsed, failure in reply["results"]:
                if token is None:
                    row.unusable[f"error {failure}" if failure else "no token"] += 1
                    continue
                if token not in valid:
                    auth = {"Authorization": f"Bearer {token}"}
                    valid[token] = self.http.get(self.idp.resource_url, headers=auth).is_success
                if valid[token]:
                    ok_times.append(elapsed)
                elif token == previous:
                    why = f" ({failure})" if failure else ""
                    row.unusable["served the previous token" + why] += 1
                else:
                    row.unusable["a token the IdP refuses"] += 1
        row.times.extend(ok_times)
        row.cpu.append(cpu)
        row.calls.append(self.idp.token_calls)
        row.rotations.append(self.idp.rotations)
        row.reuses.append(self.idp.reuse_rejections)
        row.usable.append(len(ok_times))
        if ok_times:
            row.first.append(min(ok_times))
        if len(ok_times) == row.callers:
            row.last.append(max(ok_times))
            if row.callers > 1:
                row.hop.append((max(ok_times) - min(ok_times)) / (row.callers - 1))

    def configuration(self, label: str, rows: list[Row]) -> list[Row]:
        """
        One unrecorded round per row (connections made, code paths warm), then the rows take
        turns round by round, so load on the machine hits them all alike.
        """
        begun = time.monotonic()
        for row in rows:
            self.round(row, record=False)
        for _ in range(self.rounds):
            for row in rows:
                self.round(row)
        self.spent.append(f"{label} {time.monotonic() - begun:.1f} s")
        print(f"{label}: done in {time.monotonic() - begun:.1f} s", file=sys.stderr)
        return rows

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def followers(url: str, folder: Path) -> str:
    """How this code's followers wait for a leader: woken by the store, or polling it."""
    import redis.asyncio

    from authfsm.adapters import AsyncRedisStore, FileStore, RedisStore
    from authfsm.engine import AsyncReleaseWatch, BlockingStoreInLoop, ReleaseWatch

    file = FileStore(folder / "probe.json")
    redis_store = RedisStore(url, key="probe")
    stores = {
        "file": (file, ReleaseWatch),
        "redis": (redis_store, ReleaseWatch),
        "file (asyncio)": (BlockingStoreInLoop(file), AsyncReleaseWatch),
        "redis (asyncio)": (
            AsyncRedisStore(client=redis.asyncio.Redis.from_url(url), key="probe"),
            AsyncReleaseWatch,
        ),
    }
    woken = {name: isinstance(store, kind) for name, (store, kind) in stores.items()}
    redis_store.close()
    if all(woken.values()):
        return "followers sleep until the leader's release (the stores have `wait_for_release`)"
    if not any(woken.values()):
        return "followers poll the store (no store here has `wait_for_release`)"
    return "followers: " + ", ".join(
        f"{name} {'sleep until the release' if on else 'poll'}" for name, on in woken.items()
    )


# -- the run -------------------------------------------------------------------------------------


def sizes_option(text: str) -> tuple[int, ...]:
    if text.strip().lower() == "none":
        return ()
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("sizes are numbers of processes, 1 or more")
    return tuple(sorted(set(sizes)))


def costs_option(text: str) -> tuple[tuple[int, int], ...]:
    """``PRE:POST,...``: microseconds of CPU a bare follower burns before it sleeps, after."""
    costs = []
    for part in text.split(","):
        pre, colon, post = part.strip().partition(":")
        try:
            cost = (int(pre), int(post)) if colon else None
        except ValueError:
            cost = None
        if cost is None or min(cost) < 0:
            raise argparse.ArgumentTypeError(f"not PRE:POST microseconds: {part.strip()!r}")
        costs.append(cost)
    return tuple(costs)


def choices_option(allowed: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        chosen = tuple(part.strip() for part in text.split(",") if part.strip())
        wrong = [part for part in chosen if part not in allowed]
        if wrong or not chosen:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}")
        return chosen

    return parse


def parser() -> argparse.ArgumentParser:
    made = argparse.ArgumentParser(
        prog="storm.py",
        description=__doc__.strip().split("\n\n")[0],
        epilog="See the module docstring and benchmarks/README.md for what is measured.",
    )
    made.add_argument("--rounds", type=int, default=5, help="recorded rounds per row (5)")
    made.add_argument("--latency", type=float, default=0.1, help="IdP latency per call, s (0.1)")
    made.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run (< 60 s): 2 rounds, and unless given --sizes "
        f"{','.join(map(str, QUICK_SIZES))} --tasks {QUICK_TASKS} --task-procs {QUICK_TASK_PROCS}",
    )
    made.add_argument(
        "--sizes",
        type=sizes_option,
        help=f"process counts, comma-separated, or 'none' (default {','.join(map(str, SIZES))})",
    )
    made.add_argument(
        "--stores",
        type=choices_option(STORES),
        default=STORES,
        help="stores, comma-separated (file,redis)",
    )
    made.add_argument(
        "--naive-up-to",
        type=int,
        default=NAIVE_UP_TO,
        metavar="N",
        help=f"naive-client rows for sizes up to N ({NAIVE_UP_TO}; 0: none)",
    )
    made.add_argument(
        "--tasks", type=int, help=f"asyncio tasks per process, 0 for none (default {TASKS})"
    )
    made.add_argument(
        "--task-procs", type=int, help=f"processes of the asyncio run (default {TASK_PROCS})"
    )
    made.add_argument(
        "--task-engines",
        type=choices_option(ENGINES),
        default=ENGINES,
        help="asyncio engines: one per process shared by its tasks, one per task (both)",
    )
    made.add_argument(
        "--busy",
        type=int,
        default=0,
        metavar="K",
        help="CPU-bound neighbour processes during the rounds (0)",
    )
    made.add_argument(
        "--quiet-window",
        type=float,
        default=QUIET_WINDOW,
        metavar="S",
        help=f"seconds after the start before workers report (default {QUIET_WINDOW:g}; "
        "see _storm_fleet.QUIET_WINDOW)",
    )
    made.add_argument(
        "--no-bare",
        dest="bare",
        action="store_false",
        help="leave out the bare file client's rows (the floor of a shared-file client)",
    )
    made.add_argument(
        "--bare-cost",
        type=costs_option,
        default=(),
        metavar="PRE:POST,...",
        help="add bare file rows whose followers burn PRE us of CPU before they sleep and POST "
        "us after they wake (what each microsecond of a follower's work costs the storm)",
    )
    made.add_argument(
        "--short",
        action="store_true",
        help="add file rows of followers with the engine's flow cut away: 'short' (wait on the "
        "lock, read, the engine's judgement) and 'short-read' (wait, read)",
    )
    made.add_argument("--write-results", action="store_true", help=f"write {RESULTS.name}")
    made.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="leave the workers' garbage collector as it is (see _storm_workers.serve)",
    )
    made.add_argument(
        "--encrypted",
        action="store_true",
        help="add process rows for encrypted stores (EncryptedCodec, AES-256-GCM), authfsm only",
    )
    return made


def options(argv: Sequence[str] | None) -> argparse.Namespace:
    """The parsed command line, with --quick's defaults filled in."""
    made = parser()
    args = made.parse_args(argv)
    quick = args.quick
    args.rounds = 2 if quick else args.rounds
    if args.sizes is None:
        args.sizes = QUICK_SIZES if quick else SIZES
    if args.tasks is None:
        args.tasks = QUICK_TASKS if quick else TASKS
    if args.task_procs is None:
        args.task_procs = QUICK_TASK_PROCS if quick else TASK_PROCS
    if args.rounds < 1 or args.task_procs < 1 or args.tasks < 0 or args.busy < 0:
        made.error("--rounds and --task-procs take 1 or more, --tasks and --busy 0 or more")
    return args


def every_configuration(storm: Storm, args: argparse.Namespace) -> tuple[list[Row], list[Row]]:
    """Every configuration the options ask for: the process rows, then the asyncio rows."""
    processes: list[Row] = []
    for store in args.stores:
        for n in args.sizes:
            variants = [(store, "authfsm")]
            if args.encrypted:  # the naive client writes plaintext: it has no such row
                variants.append((store + "+enc", "authfsm"))
            if n <= args.naive_up_to:
                variants.append((store, "naive"))
            if store == "file" and args.bare:
                variants.append((store, "bare"))
            if store == "file":
                variants += [(store, f"bare+{pre}/{post}") for pre, post in args.bare_cost]
            if store == "file" and args.short:
                variants += [(store, "short"), (store, "short-read")]
            rows = [Row(kind, n, client) for kind, client in variants]
            processes += storm.configuration(f"{store} N={n}", rows)
    tasks: list[Row] = []
    for store in args.stores if args.tasks else ():
        rows = [
            Row(store, args.task_procs, "authfsm", tasks=args.tasks, engines=engines)
            for engines in args.task_engines
        ]
        tasks += storm.configuration(f"{store} asyncio {args.task_procs}x{args.tasks}", rows)
    return processes, tasks


def main(argv: Sequence[str] | None = None) -> int:
    args = options(argv)
    if args.encrypted:
        # The workers inherit it; a fresh random key per run, never written anywhere.
        os.environ[KEYS_VARIABLE] = generate_key("storm")
    started = time.monotonic()
    run = Run(load=[os.getloadavg()[0]])
    fleet = Fleet(
        max(*args.sizes, args.task_procs if args.tasks else 1, 1), freeze=not args.no_gc_freeze
    )
    print(
        f"{len(fleet.procs)} workers ready in {time.monotonic() - started:.0f} s", file=sys.stderr
    )
    try:
        with (
            redis_server() as url,
            TokenServer(access_token_ttl=3600.0, latency=args.latency) as idp,
            httpx.Client(timeout=30.0) as http,
            neighbours(args.busy),
        ):
            storm = Storm(fleet, idp, http, url, args.rounds, args.quiet_window)
            try:
                run.floors += floor_samples(idp)  # under the same neighbours as the rounds
                processes, tasks = every_configuration(storm, args)
                fleet.settle()  # no worker still collecting its last round's garbage
                run.floors += floor_samples(idp)
                run.memory = fleet.memory()
                run.followers = followers(url, storm.folder)
                run.spent = storm.spent
            finally:
                storm.close()
    finally:
        fleet.close()
    run.seconds = time.monotonic() - started
    run.load.append(os.getloadavg()[0])
    text = report(args, run, processes, tasks)
    print(text)
    if args.write_results:
        RESULTS.write_text(results_page(text, argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
