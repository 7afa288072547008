"""
The storm benchmark's records and report (see ``storm.py``): a row's figures over its rounds,
the Markdown tables with every row's lag over the floor, the verdict lines and the results page.

It only formats what the coordinator measured; it starts nothing and measures nothing.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from _storm_fleet import Memory

# Issue 11's goal: at N=32 processes, p99 within 10 ms of the IdP's own latency on a quiet
# machine, and within 50 ms beside busy neighbours (--busy 2).
GOAL_N = 32
GOAL_QUIET_MS = 10.0
GOAL_BUSY_MS = 50.0


def goal_ms(busy: int) -> float:
    """The p99 lag the goal allows at N=32 with ``busy`` CPU-bound neighbours."""
    return GOAL_BUSY_MS if busy else GOAL_QUIET_MS


@dataclass
class Row:
    """One line of a table: a store, a number of callers and a client, over its rounds."""

    store: str  # "file", "redis", "file+enc", ...
    procs: int
    client: str  # "authfsm", "naive" or "bare"
    tasks: int = 1  # asyncio tasks per process
    engines: str = ""  # asyncio: "shared" (one per process) or "per-task"; "" for processes
    calls: list[int] = field(default_factory=list)
    rotations: list[int] = field(default_factory=list)
    reuses: list[int] = field(default_factory=list)
    usable: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # per usable caller, seconds
    first: list[float] = field(default_factory=list)  # per round: the first usable token
    sent: list[float] = field(default_factory=list)  # per round: the first call's request sent
    answered: list[float] = field(default_factory=list)  # ... and its answer received
    last: list[float] = field(default_factory=list)  # per round where every caller is usable
    hop: list[float] = field(default_factory=list)  # per round: (last - first) / (callers - 1)
    cpu: list[float] = field(default_factory=list)  # per round: the workers' CPU seconds
    late: int = 0  # callers whose worker got the "go" after the start instant
    unusable: Counter[str] = field(default_factory=Counter)  # why, over every round

    @property
    def callers(self) -> int:
        return self.procs * self.tasks

    @property
    def size(self) -> str:
        return str(self.procs) if not self.engines else f"{self.procs}x{self.tasks}"

    @property
    def who(self) -> str:
        if not self.engines:
            return self.client
        return f"{self.client}, engine per {'process' if self.engines == 'shared' else 'task'}"

    def p(self, q: float) -> float:
        return percentile(self.times, q)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) with linear interpolation; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def ms(seconds: float) -> str:
    return "—" if math.isnan(seconds) else f"{seconds * 1000:.0f}"


def lag(seconds: float, floor: float) -> str:
    return "—" if math.isnan(seconds) else f"{(seconds - floor) * 1000:+.0f}"


def table(rows: list[Row], rounds: int, floor: float) -> str:
    lines = [
        "| store | N | client | endpoint calls / round | rotations / round "
        "| reuse rejections / round | usable tokens | first token ms (lag) | p50 ms "
        "| p99 ms | p99 lag ms | p99 / IdP | all usable ms | workers' CPU ms / round |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        first = median(row.first)
        ratio = row.p(0.99) / floor
        lines.append(
            f"| {row.store} | {row.size} | {row.who} | {statistics.mean(row.calls):g} "
            f"| {statistics.mean(row.rotations):g} | {statistics.mean(row.reuses):g} "
            f"| {sum(row.usable)}/{row.callers * rounds} | {ms(first)} ({lag(first, floor)}) "
            f"| {ms(row.p(0.5))} | {ms(row.p(0.99))} | {lag(row.p(0.99), floor)} "
            f"| {'—' if math.isnan(ratio) else f'{ratio:.2f}x'} "
            f"| {ms(median(row.last))} ({len(row.last)}/{rounds}) | {ms(median(row.cpu))} |"
        )
    return "\n".join(lines)


def _floor_like(row: Row) -> bool:
    """A floor-like row: the bare client (plain or ``bare+PRE/POST``), or a short follower."""
    return row.client == "bare" or row.client.startswith(("bare+", "short"))


def growth(rows: list[Row], floor: float) -> str:
    """How the p99 lag grows with N (first-token lag in parentheses): authfsm, bare client."""
    sizes = sorted({row.procs for row in rows})
    stores = list(dict.fromkeys(_line(row) for row in rows))
    lines = [
        "| store | " + " | ".join(f"N={n}" for n in sizes) + " |",
        "|---|" + "---:|" * len(sizes),
    ]
    for store in stores:
        cells = []
        for n in sizes:
            found = [r for r in rows if _line(r) == store and r.procs == n]
            cells.append(
                f"{lag(found[0].p(0.99), floor)} ({lag(median(found[0].first), floor)})"
                if found
                else ""
            )
        lines.append(f"| {store} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _line(row: Row) -> str:
    return row.store if row.client == "authfsm" else f"{row.store} ({row.client} client)"


def verdict(rows: list[Row], floor: float, busy: int = 0) -> list[str]:
    goal_lag = goal_ms(busy)
    out = []
    for row in rows:
        if row.client != "authfsm":
            continue
        one_call = all(c == 1 for c in row.calls) and not any(row.reuses)
        everyone = all(u == row.callers for u in row.usable)
        line = (
            f"- {row.store}, N={row.size}{', ' + row.who if row.engines else ''}: 1 call per "
            f"rotation, 0 reuse rejections, every caller usable: "
            f"**{'yes' if one_call and everyone else 'NO'}**"
        )
        if row.engines or row.procs >= GOAL_N:
            over = (row.p(0.99) - floor) * 1000
            goal = "" if row.engines or row.procs != GOAL_N else f" (goal {goal_lag:g} ms)"
            line += (
                f"; p99 {ms(row.p(0.99))} ms = IdP latency {over:+.0f} ms{goal}: "
                f"**{'within' if over <= goal_lag else 'NOT within'} {goal_lag:g} ms** (first "
                f"token at IdP latency {lag(median(row.first), floor)} ms, then "
                f"{median(row.hop) * 1000:.2f} ms per caller; the leader's call sent at "
                f"{median(row.sent) * 1000:.1f} ms, answered at IdP latency "
                f"{lag(median(row.answered), floor)} ms)".replace("nan ms", "— ms")
            )
            bare = [
                r
                for r in rows
                if r.client == "bare" and r.store == row.store and r.procs == row.procs
            ]
            if bare and not row.engines and bare[0].times:
                line += (
                    f"; the bare file client (the floor of a shared-file client) at the same N: "
                    f"p99 {lag(bare[0].p(0.99), floor)} ms (first token "
                    f"{lag(median(bare[0].first), floor)} ms)"
                )
        out.append(line)
    return out


@dataclass
class Run:
    """What a run measured besides its rows."""

    floors: list[float] = field(default_factory=list)  # the IdP's own latency, s: before, after
    followers: str = ""  # how the followers wait (see storm.followers)
    memory: Memory | None = None
    spent: list[str] = field(default_factory=list)  # wall time per configuration
    load: list[float] = field(default_factory=list)  # 1-minute load average: start, end
    seconds: float = 0.0


def report(
    args: argparse.Namespace, run: Run, process_rows: list[Row], task_rows: list[Row]
) -> str:
    """The whole printed report: the header, the tables, the verdict and the run's costs."""
    rounds = args.rounds
    floors = run.floors
    floor = statistics.median(floors)
    half = len(floors) // 2
    out = [
        f"IdP latency setting {args.latency * 1000:g} ms; **floor** (the IdP's own latency: one "
        f"refresh call, nobody else around) {floor * 1000:.1f} ms, the median of "
        f"{median(floors[:half]) * 1000:.1f} ms before the rounds and "
        f"{median(floors[half:]) * 1000:.1f} ms after; {rounds} round{'' if rounds == 1 else 's'} "
        f"per row; {args.busy} busy neighbour process{'' if args.busy == 1 else 'es'}; "
        f"{run.followers}; workers' start-up objects "
        f"{'left to the garbage collector' if args.no_gc_freeze else 'frozen (gc.freeze)'}.",
    ]
    late = sum(row.late for row in process_rows + task_rows)
    if late:
        out.append(
            f"\n**{late} callers started late** (their worker got the start signal after the "
            "start instant): their times include that delay."
        )
    if process_rows:
        authfsm = [row for row in process_rows if row.client == "authfsm" or _floor_like(row)]
        out += [
            "",
            "## Processes",
            "",
            table(process_rows, rounds, floor),
            "",
            "p99 lag over the floor in ms by number of processes (authfsm, and the bare file "
            "client; the first token's lag in parentheses):",
            "",
            growth(authfsm, floor),
        ]
    if task_rows:
        out += ["", "## asyncio", "", table(task_rows, rounds, floor)]
    out += ["", *verdict(process_rows + task_rows, floor, args.busy), ""]
    failed = [row for row in process_rows + task_rows if row.client == "authfsm" and row.unusable]
    if failed:
        out.append("authfsm callers without a usable token, over every round:")
        out += [
            f"- {row.store}, N={row.size}{', ' + row.who if row.engines else ''}: "
            + ", ".join(f"{count} {why}" for why, count in row.unusable.most_common())
            for row in failed
        ]
        out.append("")
    if run.memory is not None:
        out.append(f"Memory after the rounds: {run.memory.describe()}.")
    out.append(
        f"Wall time: {run.seconds:.0f} s in all; per configuration (warm-up and rounds): "
        + "; ".join(run.spent)
        + "."
    )
    if run.load:
        out.append(
            f"Machine load (1-minute average, {os.cpu_count()} CPUs, this run included): "
            + " at the start, ".join(f"{value:.1f}" for value in run.load)
            + " at the end."
        )
    return "\n".join(out)


WHY = """\
## Reading it

- **floor**: the IdP's own latency, one refresh call with nobody else around through the same
  HTTP client, measured before and after the rounds of the same run (under the same busy
  neighbours); "lag" is a time minus the floor, "p99 / IdP" the p99 divided by it.
- **bare**: the least a correct shared-file client does, a floor for authfsm's rows: one OS
  lock and nothing else (no timeouts, identity checks, markers or events). The leader re-reads
  the file under the exclusive lock, refreshes and writes it back (fsync, rename); everyone else
  sleeps in the kernel for a shared lock and reads the file once it is granted. It shows what
  this machine, its cores and this harness cost by themselves.
- **bare+PRE/POST** (`--bare-cost`): the bare client whose followers burn PRE microseconds
  of CPU after their lock try fails, before they sleep, and POST after they wake, before they
  read: against the plain bare row of the same run, what a follower's own work costs the storm
  (work before sleeping delays the leader's call and the IdP, which share the cores; work after
  waking queues the followers behind each other).
- **short**, **short-read** (`--short`): followers with the engine's flow cut away. They wait
  on the lock in the kernel as bare ones do; short-read then reads the store
  (`FileStore.read`, decoding and checking the record), short also has the engine's core judge
  and adopt it (identity, poison, backoff, the lifecycle, events). Whoever finds the lease free
  runs `access_token()`.
- **naive**: every process spends the refresh token it holds; the first call rotates, every other
  one is a reuse, and the IdP revokes the family, so nobody ends with a usable token (not even
  the process whose call succeeded) and every user has to log in again.
- **authfsm**: one process takes the lease and calls; the others are followers: they wait while
  it holds the lease (polling the store, or woken by a store with `wait_for_release`; the header
  says which) and adopt the new credential, with no call, once the leader's write lands. The
  **first token** is the leader's delivery: the IdP's latency plus what the waiting followers
  cost it in CPU; "per caller" in the lines above is the mean gap between consecutive callers
  getting their token after that (median of rounds). Every caller shares this machine's cores.
- **the leader's call** (in the verdict lines): when the first refresh call of the round was sent
  (from the start instant) and when its answer came back (over the floor), medians of rounds.
  The IdP, Redis and the workers share this machine's cores: an answer later than the floor
  is the IdP starved by the followers' start (each one tries the lease once, then sleeps),
  which a remote IdP would not be; a late send is the leader's own work starved the same way,
  and its store operations queued behind the followers' (Redis).
- Workers answer only after a quiet window (`--quiet-window`, 1 s from the start), so no reply
  and no garbage collection takes a core from a follower still waiting; they keep their store
  objects across rounds, one file or key per kind of store, as a service does.
- **asyncio**: with one engine per process, its tasks queue on the engine's lock and one of them
  runs the flow (so each process is one follower of the store); with one engine per task, every
  task is a follower of its own.
- **callers without a usable token** (listed under the verdict): an error's reason, or "served
  the previous token (reason)": an engine whose store failed backs off and keeps serving the
  token it holds, still valid here but rotated by the leader, so the IdP refuses it. With one
  engine per task on one `redis.asyncio` client, redis-py's connection pool (100 connections by
  default) runs out while the tasks wait for the lease: `storage_unavailable`.
- Garbage collection: identical workers running identical rounds reach CPython's full-collection
  threshold in the same round. The workers freeze their start-up objects (`gc.freeze()`) as
  long-running services do, unless run with `--no-gc-freeze`, and collect after every round,
  outside the storm, so no row pays for the garbage of another (one engine per task leaves 250
  engines per process behind: left to the next round, they cost a shared-engine row ~1 s of
  CPU per round and several hundred ms of p99).
- **workers' CPU ms / round**: the CPU time all the round's workers used from the start signal
  to their last answer (the scheduler's figure, all threads; median of rounds). On 2 cores,
  more than ~2 ms of it per ms of the round means the callers queue for a core.
"""


def results_page(
    text: str,
    argv: Sequence[str] | None,
    *,
    title: str = "Storm benchmark results",
    script: str = "storm.py",
    why: str = WHY,
) -> str:
    """The results file of a benchmark: its table, what each column means, the machine."""
    given = sys.argv[1:] if argv is None else list(argv)
    return "\n".join(
        [
            f"# {title}",
            "",
            f"Written by `python benchmarks/{script} {shlex.join(given)}`; see the module "
            "docstring and `README.md` here for what is measured.",
            "",
            text,
            "",
            why,
            "## Machine",
            "",
            f"- date: {datetime.now(UTC).isoformat(timespec='seconds')}",
            f"- python: {platform.python_implementation()} {platform.python_version()}",
            f"- platform: {platform.platform()}",
            f"- cpus: {os.cpu_count()}",
            "",
        ]
    )
