"""
The failover benchmark's records and report (see ``failover.py``): one round of one variant as
the coordinator judged it, the Markdown tables, the verdict and the results page.

It only formats what the coordinator measured; it starts nothing and measures nothing.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from _storm_report import results_page as storm_results_page


@dataclass(frozen=True)
class Plan:
    """One round's seeded schedule, the same for every variant."""

    number: int
    seed: str  # "<run seed>:<round>": random.Random(seed) drew the figures below
    kill_at: float  # seconds after the login
    lag: float | None  # the replica cut off this long before the kill; None: in sync

    def describe(self) -> str:
        replica = "in sync" if self.lag is None else f"cut off {self.lag:.2f} s before"
        return f"kill at +{self.kill_at:.2f} s, replica {replica}"


@dataclass
class Outcome:
    """One round of one variant, judged after the workers stopped."""

    plan: Plan
    min_replicas: int
    workers: int
    token_calls: int = 0
    rotations: int = 0
    reuses: int = 0  # reuse rejections at the IdP
    revoked: bool = False  # the round's token family is dead
    lost: bool = False  # the stored credential is not the newest one the IdP minted
    newest_in_engine: bool = False  # an engine still held the newest one (lost or not)
    unreplicated: int = 0  # StorageUnreplicated the engines caught (authfsm.store.unreplicated)
    seen_unreplicated: int = 0  # workers whose engine reported failure "unreplicated"
    usable: int = 0  # workers whose final request the IdP's resource accepted
    write_cut: bool = False  # a refresh's write found no primary (the kill fell in a refresh)
    failover: float = math.nan  # kill -> every Sentinel announces the promoted replica, s
    rejoin: float = math.nan  # the killed primary back as a replica, in sync, s
    failovers: int = 0  # promotions the Sentinels made in the round (1 is the kill's)
    steady: bool = True  # after the round: one primary, the one the kill promoted
    seconds: float = math.nan  # the whole round: login to verdict
    errors: Counter[str] = field(default_factory=Counter)  # AuthError reasons, every call
    finals: Counter[str] = field(default_factory=Counter)  # the final requests' answers

    @property
    def clean(self) -> bool:
        return not (self.reuses or self.revoked or self.lost) and self.usable == self.workers

    def line(self) -> str:
        parts = [
            f"{self.reuses} reuse",
            "revoked" if self.revoked else "alive",
            "LOST" if self.lost else "kept",
            f"{self.usable}/{self.workers} usable",
            f"{self.unreplicated} unreplicated",
            f"{self.rotations} rotations",
            f"failover {self.failover:.2f} s",
        ]
        if self.failovers != 1 or not self.steady:
            parts.append(f"{self.failovers} failovers{'' if self.steady else ', not steady'}")
        return f"min_replicas={self.min_replicas}: " + ", ".join(parts)


def median(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.median(kept) if kept else math.nan


def seconds(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}"


HEADER = (
    "| variant | replica at the kill | rounds | kills | reuse rejections | families revoked "
    "| credentials lost | unreplicated writes reported | workers usable at the end "
    "| rotations / round | extra failovers | median failover s | median rejoin s "
    "| median round s |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def _row(variant: int, replica: str, outcomes: list[Outcome]) -> str:
    workers = sum(o.workers for o in outcomes)
    reported = sum(o.unreplicated for o in outcomes)
    seen = sum(o.seen_unreplicated for o in outcomes)
    return (
        f"| min_replicas={variant} | {replica} | {len(outcomes)} | {len(outcomes)} "
        f"| {sum(o.reuses for o in outcomes)} | {sum(o.revoked for o in outcomes)} "
        f"| {sum(o.lost for o in outcomes)} | {reported} ({seen} workers saw it) "
        f"| {sum(o.usable for o in outcomes)}/{workers} "
        f"| {statistics.mean(o.rotations for o in outcomes):.1f} "
        f"| {sum(o.failovers - 1 for o in outcomes)} "
        f"| {seconds(median([o.failover for o in outcomes]))} "
        f"| {seconds(median([o.rejoin for o in outcomes]))} "
        f"| {seconds(median([o.seconds for o in outcomes]))} |"
    )


def table(outcomes: list[Outcome]) -> str:
    """One row per variant over every round, then one per variant and state of the replica."""
    lines = [HEADER]
    variants = list(dict.fromkeys(o.min_replicas for o in outcomes))
    for variant in variants:
        mine = [o for o in outcomes if o.min_replicas == variant]
        lines.append(_row(variant, "**any**", mine))
        for replica, lagging in (("in sync", False), ("cut off", True)):
            part = [o for o in mine if (o.plan.lag is not None) == lagging]
            if part and len(part) < len(mine):
                lines.append(_row(variant, replica, part))
    return "\n".join(lines)


def rounds_table(outcomes: list[Outcome]) -> str:
    """Every round: its seed and schedule, and per variant what came of it."""
    variants = list(dict.fromkeys(o.min_replicas for o in outcomes))
    lines = [
        "| round | seed | kill at s after the login | replica cut off s before | "
        + " | ".join(f"min_replicas={v}" for v in variants)
        + " |",
        "|---:|---|---:|---:|" + "---|" * len(variants),
    ]
    for plan in dict.fromkeys(o.plan for o in outcomes):
        cells = []
        for variant in variants:
            found = [o for o in outcomes if o.plan == plan and o.min_replicas == variant]
            cells.append(_cell(found[0]) if found else "")
        lag = "—" if plan.lag is None else f"{plan.lag:.2f}"
        lines.append(
            f"| {plan.number} | `{plan.seed}` | {plan.kill_at:.2f} | {lag} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def _cell(o: Outcome) -> str:
    if o.clean and o.failovers == 1:
        notes = [f"{o.rotations} rotations"]
        if o.unreplicated:
            notes.append(f"{o.unreplicated} unreplicated")
        if o.write_cut:
            notes.append("a refresh's write cut by the kill")
        return f"ok ({', '.join(notes)})"
    parts = []
    if o.reuses:
        parts.append(f"**{o.reuses} reuse**")
    if o.revoked:
        parts.append("**revoked**")
    if o.lost:
        parts.append("**lost**" + (" (an engine held it)" if o.newest_in_engine else ""))
    if o.usable < o.workers:
        parts.append(f"{o.usable}/{o.workers} usable")
    if o.unreplicated:
        parts.append(f"{o.unreplicated} unreplicated")
    if o.failovers != 1:
        parts.append(f"{o.failovers} failovers")
    if o.write_cut:
        parts.append("a refresh's write cut by the kill")
    return ", ".join(parts)


def verdict(outcomes: list[Outcome]) -> list[str]:
    out = []
    for variant in dict.fromkeys(o.min_replicas for o in outcomes):
        mine = [o for o in outcomes if o.min_replicas == variant]
        held = all(o.clean for o in mine)
        out.append(
            f"- min_replicas={variant}: 0 reuse rejections, 0 families revoked, 0 credentials "
            f"lost, every worker usable, in every round: **{'yes' if held else 'NO'}**"
        )
    return out


def report(args: argparse.Namespace, outcomes: list[Outcome], run: dict[str, str]) -> str:
    """The whole printed report: the settings, the tables, the verdict and the run's costs."""
    errors: dict[int, Counter[str]] = {}
    finals: dict[int, Counter[str]] = {}
    for o in outcomes:
        errors.setdefault(o.min_replicas, Counter()).update(o.errors)
        finals.setdefault(o.min_replicas, Counter()).update(o.finals)
    out = [
        f"Seed {args.seed} (replay: `--seed {args.seed}`); {args.rounds} rounds per variant, "
        f"{args.workers} worker processes, each one `AuthEngine` on its own "
        f"`RedisStore.from_sentinel(..., replica_timeout={args.replica_timeout:g})` asking for a "
        f"token every {args.interval * 1000:g} ms; access tokens live {args.ttl:g} s (refreshed "
        f"every ~{args.ttl / 2:g} s), IdP latency {args.latency * 1000:g} ms; the kill falls "
        f"uniformly {args.ttl / 2:g}-{args.ttl / 2 + args.span:g} s after the login; in "
        f"{args.lagging:.0%} of the rounds (seeded) the replica is cut off "
        f"{args.lag_min:g}-{args.lag_max:g} s before it; the killed server rejoins "
        f"{args.settle:g} s after the failover, and the workers go on for {args.tail:g} s after "
        "that.",
        "",
        table(outcomes),
        "",
        *verdict(outcomes),
        "",
    ]
    for variant in dict.fromkeys(o.min_replicas for o in outcomes):
        cut = [o for o in outcomes if o.min_replicas == variant and o.write_cut]
        if cut:
            out.append(
                f"min_replicas={variant}: in {len(cut)} round(s) the kill cut a refresh's write "
                f"(the IdP had rotated; the write, or the WAIT after it, met the killed primary); "
                f"{sum(not o.clean for o in cut)} of them ended badly."
            )
    for variant, counts in errors.items():
        if counts:
            out.append(
                f"Errors the workers' calls raised, min_replicas={variant} (every round): "
                + ", ".join(f"{n} {why}" for why, n in counts.most_common())
                + "."
            )
    for variant, counts in finals.items():
        out.append(
            f"Final requests to the IdP's resource, min_replicas={variant}: "
            + ", ".join(f"{n} {what}" for what, n in counts.most_common())
            + "."
        )
    out += [
        "",
        "## Rounds",
        "",
        rounds_table(outcomes),
        "",
        f"Wall time: {run['seconds']} in all ({run['setup']}). Machine load (1-minute "
        f"average, {os.cpu_count()} CPUs, this run included): {run['load']}.",
    ]
    return "\n".join(out)


WHY = """\
## Reading it

- **variant**: `min_replicas=1` (every write waits for the replica with `WAIT`; too few
  acknowledgements raise `StorageUnreplicated`, and the engine keeps the new credential and
  writes it again until acknowledged; the lease must reach the replica too, or no refresh
  starts) against `min_replicas=0` (replication is asynchronous; a
  write is done when the primary has it). Both run the same rounds: same seeds, same kill
  instants, same stretches of replica lag, taking turns round by round.
- **replica at the kill**: "in sync" rounds kill the primary with replication running (on
  loopback a write reaches the replica within a millisecond, so a kill almost never falls between
  them); "cut off" rounds stop the replica (SIGSTOP) and drop its link a random short stretch
  before the kill, and resume it right after, so every rotation of that stretch exists on the
  killed primary only: the window the variants differ in, made certain instead of lucky.
- **reuse rejections**: refresh tokens the IdP saw twice; each one revokes the family
  (**families revoked**), and the whole fleet must log in again.
- **credentials lost**: after the round, the stored credential is not the newest one the IdP
  minted: a rotation was done and the store went back to an older credential (the Rounds table
  says when an engine still held the newest one).
- **unreplicated writes reported**: `StorageUnreplicated` raised to the engines (their
  `authfsm.store.unreplicated` events), and how many workers saw `status().failure ==
  "unreplicated"`. Between the promotion and the rejoin the new primary has no replica, so with
  `min_replicas=1` every write of that stretch is reported.
- **workers usable at the end**: each worker makes one request to the IdP's protected resource
  with `engine.httpx_auth()` (a 401 is recovered once, as a client does); this IdP accepts only
  the newest access token of a live family.
- **failover**: from the SIGKILL until all three Sentinels announce the replica and it answers
  as a primary; **rejoin**: the killed server started again as a replica of the new primary,
  until it acknowledges a write; **extra failovers**: promotions besides the kill's (the first
  Sentinel's `+switch-master` lines). **round**: from the login to the verdict.
- **What loses a rotation** (the workers' event traces, `--trace`): an engine other than the one
  that refreshed reads the store after the promotion, before that one has written its credential
  again, and spends the older record's refresh token. Either the kill fell during a refresh ("a
  refresh's write cut by the kill": the IdP rotated, the write found no primary or its `WAIT`
  was cut), and the followers that waited for that refresh still hold the spent credential; or
  the replica lagged, the followers adopted the new credential from the primary while its
  writer waited in `WAIT`, and after the promotion adopted the older record back.
"""


def results_page(text: str, argv: Sequence[str] | None) -> str:
    return storm_results_page(
        text, argv, title="Failover benchmark results", script="failover.py", why=WHY
    )
