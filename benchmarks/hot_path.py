"""
The hot path: what it costs to ask "is my cached token still good? give it to me".

Every request an application sends starts with this check, so it should cost next to nothing.
This script measures, in one run of one process on one machine, the nanoseconds per call of:

- authfsm ``AuthEngine.access_token()`` on a fresh credential (``MemoryStore``, no endpoint,
  the credential expiring in an hour, the default ``time.time`` clock): the number the goals are
  about;
- authfsm ``AuthEngine.status()`` as it is (it takes the engine's lock and reads the store), to
  show what it costs next to ``access_token()``;
- the same check in the peers, done the way their users (or transports) do it, each holding a
  valid token that expires in an hour:

  - Authlib ``OAuth2Token``: ``tok.is_expired(leeway=60)``, then ``tok["access_token"]``;
  - google-auth ``google.oauth2.credentials.Credentials``: ``creds.valid`` then
    ``creds.apply(headers)`` (the header its transports set per request); ``creds.valid`` then
    ``creds.token`` alone; and ``creds.before_request(...)``, what ``AuthorizedSession`` calls;
  - botocore ``RefreshableCredentials``: ``get_frozen_credentials()``;

- the floor: a clock read, a float compare and an attribute read
  (``time.time() < obj.deadline and obj.token``), once as a method call like the others, once
  inline; and the bare loop iteration every row includes (not subtracted, as in ``timeit``).

Method: each item is a ``timeit.Timer`` statement (timer ``time.perf_counter_ns``; ``timeit``
disables the garbage collector while it times), with the objects it uses bound as locals. The
call count N is calibrated per item so that one repeat takes about ``--target-ms``; the
calibration doubles as the warm-up (it runs the statement thousands of times before any sample
is kept) and one more unrecorded repeat follows it. Then the repeats are taken in rounds, every
item once per round in a rotating order, so that drift in the machine's speed lands on every item
alike. The report gives the median and the minimum ns/call over the repeats.

Honesty checks: before and after timing, every item is checked to still hold its valid token and
never to have refreshed (a refresh would raise, or be counted, and fail the run).

Usage::

    python benchmarks/hot_path.py [--quick] [--json FILE] [--write-results]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import platform
import statistics
import sys
import time
import timeit
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from authlib.oauth2.rfc6749 import OAuth2Token  # type: ignore[import-untyped]
from botocore.credentials import RefreshableCredentials  # type: ignore[import-untyped]
from google.oauth2.credentials import Credentials as GoogleCredentials

from authfsm import AuthEngine, Credentials, State
from authfsm.adapters import MemoryStore

RESULTS_PATH = Path(__file__).with_name("RESULTS.md")
PACKAGES = ("authfsm", "authlib", "google-auth", "botocore")
LIFETIME = timedelta(hours=1)
TOKEN = "bench-access-token-0123456789abcdef"
PRIMARY = "authfsm.access_token"
FLOOR = "floor.call"
STATUS = "authfsm.status"


# -- what is measured ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One item: a statement timed with ``names`` bound as locals, and a sanity check."""

    key: str
    label: str
    group: str  # "authfsm", "peer", "floor" or "reference"
    stmt: str
    names: Mapping[str, object]
    verify: Callable[[], None]


class Cached:
    """The floor: a deadline and the token valid until then, checked in one method call."""

    def __init__(self, token: str, deadline: float) -> None:
        self.token = token
        self.deadline = deadline

    def check(self) -> str | bool:
        return time.time() < self.deadline and self.token


def stale(*_args: object) -> None:
    """Stands in for every refresh: a valid token must never reach it."""
    raise AssertionError("a token expiring in an hour was judged stale")


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(f"benchmark setup broken: {what}")


def authfsm_cases() -> list[Case]:
    now = datetime.now(UTC)
    engine = AuthEngine(MemoryStore())
    engine.login(
        Credentials(
            access_token=TOKEN,
            refresh_token="bench-refresh-token",
            expires_at=now + LIFETIME,
            last_refresh=now,
        )
    )

    def verify() -> None:
        expect(engine.state is State.FRESH, f"authfsm state is {engine.state.name}")
        expect(engine.access_token() == TOKEN, "authfsm serves the token")
        expect(engine.status().state is State.FRESH, "authfsm status() is FRESH")

    names = {"engine": engine}
    return [
        Case(PRIMARY, "authfsm `engine.access_token()`", "authfsm",
             "token = engine.access_token()", names, verify),
        Case(STATUS, "authfsm `engine.status()`", "authfsm",
             "status = engine.status()", names, verify),
    ]  # fmt: skip


def authlib_case() -> Case:
    tok = OAuth2Token({"access_token": TOKEN, "token_type": "Bearer", "expires_in": 3600})

    def verify() -> None:
        expect(tok.is_expired(leeway=60) is False, "authlib token not expired")
        expect(tok["access_token"] == TOKEN, "authlib serves the token")

    return Case(
        "authlib.is_expired",
        'Authlib `tok.is_expired(leeway=60)` + `tok["access_token"]`',
        "peer",
        'if tok.is_expired(leeway=60):\n    stale()\ntoken = tok["access_token"]',
        {"tok": tok, "stale": stale},
        verify,
    )


def google_lookup_enabled() -> bool:
    """Whether google-auth's Regional Access Boundary lookup is on (recent versions only)."""
    try:
        from google.auth import _regional_access_boundary_utils as rab
    except ImportError:
        return False
    return bool(rab.is_regional_access_boundary_lookup_enabled())


def google_cases() -> list[Case]:
    # google-auth keeps expiry as a naive UTC datetime.
    expiry = datetime.now(UTC).replace(tzinfo=None) + LIFETIME
    creds = GoogleCredentials(token=TOKEN, expiry=expiry)  # type: ignore[no-untyped-call]
    headers: dict[str, str] = {}

    def verify() -> None:
        expect(creds.valid, "google-auth credentials valid")
        creds.apply(headers)  # type: ignore[no-untyped-call]
        expect(headers["authorization"] == f"Bearer {TOKEN}", "google-auth sets the header")

    names = {"creds": creds, "headers": headers, "stale": stale}
    cases = [
        Case("google.valid_apply", "google-auth `creds.valid` + `creds.apply(headers)`", "peer",
             "if not creds.valid:\n    stale()\ncreds.apply(headers)", names, verify),
        Case("google.valid_token", "google-auth `creds.valid` + `creds.token`", "peer",
             "if not creds.valid:\n    stale()\ntoken = creds.token", names, verify),
    ]  # fmt: skip
    if not google_lookup_enabled():
        # With the lookup enabled before_request may start network calls: leave it out then.
        # Transports pass each request's own headers (a shared dict would grow: before_request
        # appends to x-goog-api-client), so this row builds one per call, as they do.
        cases.append(
            Case(
                "google.before_request",
                "google-auth `creds.before_request(...)` (its transports)",
                "peer",
                'creds.before_request(stale, "GET", url, {})',
                {"creds": creds, "stale": stale, "url": "https://storage.googleapis.com/b/o"},
                verify,
            )
        )
    return cases


def botocore_case() -> Case:
    refreshes: list[None] = []

    def refresh() -> dict[str, str]:
        refreshes.append(None)
        return metadata

    metadata = {
        "access_key": "AKIDBENCHMARK",
        "secret_key": "bench-secret-key",
        "token": TOKEN,
        "expiry_time": (datetime.now(UTC) + LIFETIME).isoformat(),
    }
    creds = RefreshableCredentials.create_from_metadata(metadata, refresh, "bench")

    def verify() -> None:
        expect(creds.get_frozen_credentials().token == TOKEN, "botocore serves the token")
        expect(not refreshes, f"botocore refreshed {len(refreshes)} times")

    return Case(
        "botocore.frozen",
        "botocore `creds.get_frozen_credentials()`",
        "peer",
        "frozen = creds.get_frozen_credentials()",
        {"creds": creds},
        verify,
    )


def floor_cases() -> list[Case]:
    cached = Cached(TOKEN, time.time() + LIFETIME.total_seconds())

    def verify() -> None:
        expect(cached.check() == TOKEN, "the floor serves the token")

    names = {"cached": cached}
    return [
        Case(FLOOR, "floor `obj.check()`: clock < deadline and token, one call", "floor",
             "token = cached.check()", names, verify),
        Case("floor.inline", "floor inline: `time.time() < obj.deadline and obj.token`", "floor",
             "token = time.time() < cached.deadline and cached.token", names, verify),
        Case("loop", "reference: one empty loop iteration (in every row)", "reference",
             "pass", {}, lambda: None),
    ]  # fmt: skip


def all_cases() -> list[Case]:
    return [*authfsm_cases(), authlib_case(), *google_cases(), botocore_case(), *floor_cases()]


# -- timing ----------------------------------------------------------------------------------------


@dataclass
class Measurement:
    """The ns/call samples of one item (one per repeat)."""

    case: Case
    calls: int
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def best(self) -> float:
        return min(self.samples)


def make_timer(case: Case) -> timeit.Timer:
    # Bind the case's objects as locals of timeit's inner function, as a caller's locals would be;
    # ``time`` stays a module global, as it is in user code.
    setup = "\n".join(f"{name} = _names[{name!r}]" for name in case.names) or "pass"
    scope: dict[str, Any] = {"_names": case.names, "time": time}
    return timeit.Timer(case.stmt, setup, timer=time.perf_counter_ns, globals=scope)


def calibrate(timer: timeit.Timer, target_ns: float) -> int:
    """Calls per repeat so that one repeat takes about ``target_ns`` (this also warms up)."""
    calls = 1
    while True:
        elapsed = timer.timeit(calls)
        if elapsed >= target_ns / 10:
            return max(1, round(calls * target_ns / elapsed))
        calls *= 2


def measure(cases: Sequence[Case], repeats: int, target_ns: float) -> list[Measurement]:
    """Every case ``repeats`` times, in rounds with a rotating order; warm-up first."""
    timers = [make_timer(case) for case in cases]
    results = []
    for case, timer in zip(cases, timers, strict=True):
        calls = calibrate(timer, target_ns)
        timer.timeit(calls)  # one more unrecorded repeat
        results.append(Measurement(case, calls))
    order = list(range(len(cases)))
    for round_ in range(repeats):
        shift = round_ % len(order)
        for i in order[shift:] + order[:shift]:
            result = results[i]
            result.samples.append(timers[i].timeit(result.calls) / result.calls)
    return results


# -- reporting -------------------------------------------------------------------------------------


def by_key(results: Sequence[Measurement]) -> dict[str, Measurement]:
    return {r.case.key: r for r in results}


def ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}x"


def table(results: Sequence[Measurement]) -> str:
    keyed = by_key(results)
    primary, floor = keyed[PRIMARY].median, keyed[FLOOR].median
    lines = [
        "| item | median ns | min ns | vs authfsm access_token | vs floor |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.case.label} | {r.median:.1f} | {r.best:.1f} "
            f"| {ratio(r.median, primary)} | {ratio(r.median, floor)} |"
        )
    return "\n".join(lines)


def verdict(results: Sequence[Measurement]) -> dict[str, Any]:
    keyed = by_key(results)
    primary = keyed[PRIMARY].median
    fastest_peer = min((r for r in results if r.case.group == "peer"), key=lambda r: r.median)
    floor_ratio = primary / keyed[FLOOR].median
    return {
        "ahead_of_every_peer": primary < fastest_peer.median,
        "fastest_peer": fastest_peer.case.key,
        "fastest_peer_ratio": fastest_peer.median / primary,
        "floor_ratio": floor_ratio,
        "within_2x_of_floor": floor_ratio <= 2.0,
        "status_ratio": keyed[STATUS].median / primary,
    }


def verdict_lines(v: Mapping[str, Any]) -> list[str]:
    ahead = "yes" if v["ahead_of_every_peer"] else "NO"
    within = "yes" if v["within_2x_of_floor"] else "NO"
    return [
        f"- authfsm `access_token()` ahead of every peer: **{ahead}** (fastest peer: "
        f"`{v['fastest_peer']}`, {v['fastest_peer_ratio']:.2f}x authfsm's median)",
        f"- authfsm `access_token()` within 2x of the floor: **{within}** "
        f"({v['floor_ratio']:.2f}x the one-call floor)",
        f"- `status()` costs {v['status_ratio']:.1f}x `access_token()` "
        "(it takes the lock, reads the store and builds a snapshot)",
    ]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, str]:
    info = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "platform": platform.platform(),
        "cpu": f"{cpu_model()} ({platform.machine()})",
    }
    for package in PACKAGES:
        info[package] = importlib.metadata.version(package)
    return info


def results_markdown(table_md: str, lines: Sequence[str], info: Mapping[str, str]) -> str:
    machine = "\n".join(f"- {k}: {v}" for k, v in info.items())
    return (
        "# Hot-path benchmark results\n\n"
        "Written by `python benchmarks/hot_path.py --write-results`; see `README.md` here for "
        "what is measured. ns per call, median and minimum over the repeats, one process.\n\n"
        f"{table_md}\n\n{chr(10).join(lines)}\n\n## Machine\n\n{machine}\n"
    )


def to_json(
    results: Sequence[Measurement], v: Mapping[str, Any], info: Mapping[str, str], config: object
) -> str:
    items = [
        {
            "key": r.case.key,
            "label": r.case.label,
            "group": r.case.group,
            "calls_per_repeat": r.calls,
            "median_ns": r.median,
            "min_ns": r.best,
            "samples_ns": r.samples,
        }
        for r in results
    ]
    return json.dumps({"machine": info, "config": config, "results": items, "goals": v}, indent=2)


# -- command line ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--quick", action="store_true", help="3 repeats of ~10 ms (a smoke run)")
    parser.add_argument("--repeats", type=int, help="repeats per item (default 7, quick 3)")
    parser.add_argument("--target-ms", type=float, help="ms per repeat (default 50, quick 10)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results as JSON")
    parser.add_argument(
        "--write-results", action="store_true", help=f"write {RESULTS_PATH.name} next to this file"
    )
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 7)
    args.target_ms = args.target_ms or (10.0 if args.quick else 50.0)
    if args.repeats < 1 or not math.isfinite(args.target_ms) or args.target_ms <= 0:
        parser.error("--repeats and --target-ms must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cases = all_cases()
    for case in cases:
        case.verify()
    results = measure(cases, args.repeats, args.target_ms * 1e6)
    for case in cases:
        case.verify()  # nothing refreshed or went stale while being timed
    info = machine_info()
    table_md, v = table(results), verdict(results)
    lines = verdict_lines(v)
    print(table_md, "", *lines, "", *(f"{k}: {val}" for k, val in info.items()), sep="\n")
    config = {"repeats": args.repeats, "target_ms": args.target_ms}
    if args.json is not None:
        args.json.write_text(to_json(results, v, info, config) + "\n")
    if args.write_results:
        RESULTS_PATH.write_text(results_markdown(table_md, lines, info))
        print(f"\nwrote {RESULTS_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
