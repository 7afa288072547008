"""
The refresh storm: N processes find one shared credential stale at the same instant.

For N in 1, 8 and 32 OS processes, on a ``FileStore`` and on a ``RedisStore`` (a real
redis-server on 127.0.0.1), against the loopback ``TokenServer`` (refresh-token rotation; a reused
refresh token revokes the whole family; a fixed ``--latency`` per token call), this measures, in
the same run:

- **authfsm**: every process calls ``AuthEngine.access_token()``;
- **naive**: every process refreshes with the refresh token it holds in memory and writes the
  result back with no lock and no compare-and-swap (what ``authfsm.demo``'s naive client does;
  ``naive_refresh`` below is its refresh step, for the file and for Redis).

Per configuration and round: endpoint calls, reuse rejections, how many processes end with a
*usable* token (one the IdP's protected resource accepts after the round), and for each process
the time from the common start instant until it held a token; the table gives p50 and p99 of
those times over every process of every round, and the median over rounds of the time until the
last process held a usable token. The IdP's own latency (one refresh call, nobody else around,
same HTTP client) is measured in the same run, and the goal is checked against it:

- 1 endpoint call per rotation, 0 reuse rejections, every process usable;
- at N=32, p99 within 50 ms of the IdP's own latency.

The processes are started once and reused (a command per round on stdin), keep their Redis
connection like a service would, freeze their start-up objects out of the garbage collector's
way (``gc.freeze()``; ``--no-gc-freeze`` to compare: identical workers otherwise run a full
collection in the same round), and each
configuration gets one unrecorded warm-up round; each round logs in a new token family, so
rounds are independent. Start instants are wall-clock times shared by every process on this
machine.

With ``--encrypted`` the same run adds rows ``file+enc`` and ``redis+enc`` (authfsm only): the
stores seal every record with ``EncryptedCodec`` (AES-256-GCM, a key the coordinator makes and
hands the workers in ``AUTHFSM_STORM_KEYS``). Their rounds alternate with the plaintext rows' of
the same N, so the cost of encryption in a storm is read off against rounds run under the same
load.

Usage::

    python benchmarks/storm.py [--rounds 5] [--latency 0.1] [--quick] [--no-gc-freeze]
                               [--encrypted] [--write-results]

Needs ``redis-server`` on PATH (``.ci/redis-deps`` installs it) and the ``redis`` extra.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from authfsm.adapters import (
    EncryptedCodec,
    FileStore,
    KeyRing,
    NativeCodec,
    OAuthTokenEndpoint,
    RedisStore,
    generate_key,
)
from authfsm.engine import Record
from authfsm.testing import TokenServer

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "STORM.md"
SIZES = (1, 8, 32)
STORES = ("file", "redis")
KEYS_VARIABLE = "AUTHFSM_STORM_KEYS"
CLIENTS = ("authfsm", "naive")
LIFETIME = 1.0  # a credential issued for 1 s is due after 0.5 s (leeway capped at half)
LEAD = 0.6  # seconds between issuing the stale credential and the start instant
REPLY_TIMEOUT = 60.0
GOAL_MS = 50.0

# -- the worker ----------------------------------------------------------------------------------


def naive_refresh(store_spec: dict[str, Any], endpoint: OAuthTokenEndpoint, cred: Any) -> Any:
    """
    The naive client's refresh: spend the refresh token held in memory, write the result back
    blindly (atomic replace for the file, SET for Redis): no lease, no re-read, no CAS.
    """
    from authfsm.engine import Refreshed, minted

    outcome = endpoint.refresh(cred)
    if not isinstance(outcome, Refreshed):
        return None
    new = minted(cred, outcome, time.time())
    data = NativeCodec().encode(Record(credential=new, revision=int(time.time() * 1000)))
    if store_spec["kind"] == "file":
        path = Path(store_spec["path"])
        fd, tmp = tempfile.mkstemp(prefix=".naive.", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    else:
        _open(store_spec).client.set("authfsm:" + store_spec["key"], data)
    return new


_CLIENTS: dict[str, Any] = {}


def _open(spec: dict[str, Any]) -> FileStore | RedisStore:
    """The store a command names. Redis connections are kept per process, as a service would."""
    codec = EncryptedCodec(KeyRing.from_env(KEYS_VARIABLE)) if spec.get("encrypted") else None
    if spec["kind"] == "file":
        return FileStore(spec["path"], codec=codec)
    client = _CLIENTS.get(spec["url"])
    if client is None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # What a URL-made RedisStore uses, kept open across rounds.
        client = redis.Redis.from_url(
            spec["url"], socket_timeout=2.0, socket_connect_timeout=2.0, retry=Retry(NoBackoff(), 0)
        )
        _CLIENTS[spec["url"]] = client
    return RedisStore(client=client, key=spec["key"], codec=codec)


def worker(*, freeze: bool) -> None:
    """Serve commands from stdin: one JSON line in, one JSON line out."""
    from datetime import timedelta

    import redis  # noqa: F401 - imported at start-up like a real service, not mid-storm

    from authfsm import AuthEngine, AuthError, Policy

    if freeze:
        # Identical workers running identical rounds reach CPython's full-collection threshold
        # in the same round; with every imported module's objects to scan, each pauses ~10 ms,
        # and along the lease hand-overs those pauses add up (a ~100 ms stall in about one
        # round in ten). Long-running services freeze their start-up objects the same way.
        gc.freeze()
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        spec = command["store"]
        store = _open(spec)
        with OAuthTokenEndpoint(command["token_url"], "test-client", timeout=30.0) as endpoint:
            if command["client"] == "authfsm":
                engine = AuthEngine(store, endpoint, Policy(lease_timeout=timedelta(seconds=30)))
            else:
                record = store.read()
                held = record.credential if record is not None else None
            time.sleep(max(command["start_at"] - time.time(), 0.0))
            token: str | None = None
            try:
                if command["client"] == "authfsm":
                    token = engine.access_token()
                else:
                    new = naive_refresh(spec, endpoint, held)
                    token = new.access_token if new is not None else None
            except AuthError:
                token = None
            elapsed = time.time() - command["start_at"]
        print(json.dumps({"token": token, "elapsed": elapsed}), flush=True)


# -- the coordinator -----------------------------------------------------------------------------


class Fleet:
    """Long-lived worker processes; a command goes to the first N of them."""

    def __init__(self, size: int, *, freeze: bool) -> None:
        flags = ["--worker"] + ([] if freeze else ["--no-gc-freeze"])
        self.procs = [
            subprocess.Popen(  # noqa: S603 - this very script, as a worker
                [sys.executable, str(Path(__file__).resolve()), *flags],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,
            )
            for _ in range(size)
        ]
        self._replies(self.procs)

    def run(self, n: int, command: dict[str, Any]) -> list[dict[str, Any]]:
        procs = self.procs[:n]
        line = json.dumps(command).encode() + b"\n"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(line)
        return self._replies(procs)

    @staticmethod
    def _replies(procs: Sequence[subprocess.Popen[bytes]]) -> list[dict[str, Any]]:
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
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        raise RuntimeError(f"worker {n} died")
                    buffers[n] += chunk
                    if b"\n" in buffers[n]:
                        raw, _, buffers[n] = buffers[n].partition(b"\n")
                        replies[n] = json.loads(raw)
                        selector.unregister(key.fileobj)
        return [replies[n] for n in range(len(procs))]

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


@dataclass
class Row:
    store: str
    n: int
    client: str
    calls: list[int] = field(default_factory=list)
    rotations: list[int] = field(default_factory=list)
    reuses: list[int] = field(default_factory=list)
    usable: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # per usable process, seconds
    all_usable: list[float] = field(default_factory=list)  # per round where everyone is usable
    first: list[float] = field(default_factory=list)  # per round: the earliest token
    hop: list[float] = field(default_factory=list)  # per round: (last - first) / (N - 1)

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


def idp_latency(idp: TokenServer, samples: int = 7) -> float:
    """Seconds of one refresh call with nobody else around, through the same HTTP client."""
    times = []
    with OAuthTokenEndpoint(idp.token_url, "test-client", timeout=30.0) as endpoint:
        for _ in range(samples):
            creds = idp.issue()
            started = time.perf_counter()
            endpoint.refresh(creds)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def one_round(
    fleet: Fleet, idp: TokenServer, http: httpx.Client, store: str, n: int, client: str,
    url: str, folder: Path, serial: int, row: Row,
) -> None:  # fmt: skip
    kind, _, sealed = store.partition("+")
    if kind == "file":
        spec: dict[str, Any] = {"kind": "file", "path": str(folder / f"auth-{serial}.json")}
    else:
        spec = {"kind": "redis", "url": url, "key": f"storm-{serial}"}
    spec["encrypted"] = bool(sealed)
    target = _open(spec)
    creds = idp.issue(expires_in=LIFETIME)
    target.write(Record(credential=creds), None)
    idp.reset_counters()
    start_at = time.time() + LEAD
    replies = fleet.run(
        n,
        {"client": client, "store": spec, "token_url": idp.token_url, "start_at": start_at},
    )
    usable = []
    for reply in replies:
        token = reply["token"]
        ok = (
            token is not None
            and http.get(idp.resource_url, headers={"Authorization": f"Bearer {token}"}).is_success
        )
        usable.append(ok)
        if ok:
            row.times.append(reply["elapsed"])
    row.calls.append(idp.token_calls)
    row.rotations.append(idp.rotations)
    row.reuses.append(idp.reuse_rejections)
    row.usable.append(sum(usable))
    if all(usable):
        times = [reply["elapsed"] for reply in replies]
        row.all_usable.append(max(times))
        row.first.append(min(times))
        if n > 1:
            row.hop.append((max(times) - min(times)) / (n - 1))


def ms(seconds: float) -> str:
    return "—" if math.isnan(seconds) else f"{seconds * 1000:.0f}"


def table(rows: list[Row], rounds: int) -> str:
    lines = [
        "| store | N | client | endpoint calls / round | rotations / round "
        "| reuse rejections / round | usable tokens | p50 ms | p99 ms | all usable ms |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        usable = sum(row.usable)
        all_usable = statistics.median(row.all_usable) if row.all_usable else math.nan
        lines.append(
            f"| {row.store} | {row.n} | {row.client} | {statistics.mean(row.calls):g} "
            f"| {statistics.mean(row.rotations):g} | {statistics.mean(row.reuses):g} "
            f"| {usable}/{row.n * rounds} | {ms(row.p(0.5))} | {ms(row.p(0.99))} "
            f"| {ms(all_usable)} ({len(row.all_usable)}/{rounds}) |"
        )
    return "\n".join(lines)


def verdict(rows: list[Row], own: float) -> list[str]:
    out = []
    for row in rows:
        if row.client != "authfsm":
            continue
        one_call = all(c == 1 for c in row.calls) and not any(row.reuses)
        everyone = all(u == row.n for u in row.usable)
        line = (
            f"- {row.store}, N={row.n}: 1 call per rotation, 0 reuse rejections, every process "
            f"usable: **{'yes' if one_call and everyone else 'NO'}**"
        )
        if row.n == max(SIZES):
            over = (row.p(0.99) - own) * 1000
            line += (
                f"; p99 {ms(row.p(0.99))} ms = IdP latency + {over:.0f} ms, within "
                f"{GOAL_MS:g} ms: **{'yes' if over <= GOAL_MS else 'NO'}** (first token at "
                f"IdP latency + {(statistics.median(row.first) - own) * 1000:.0f} ms, then "
                f"{statistics.median(row.hop) * 1000:.2f} ms per follower)"
            )
        out.append(line)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency", type=float, default=0.1, help="IdP latency per call, s")
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    parser.add_argument("--write-results", action="store_true", help=f"write {RESULTS.name}")
    parser.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="leave the workers' garbage collector as it is (see worker())",
    )
    parser.add_argument(
        "--encrypted",
        action="store_true",
        help="add rows for encrypted stores (EncryptedCodec, AES-256-GCM), authfsm only",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(freeze=not args.no_gc_freeze)
        return 0
    rounds = 2 if args.quick else args.rounds
    if args.encrypted:
        # The workers inherit it; a fresh random key per run, never written anywhere.
        os.environ[KEYS_VARIABLE] = generate_key("storm")

    rows: list[Row] = []
    folder = Path(tempfile.mkdtemp(prefix="authfsm-storm-"))
    fleet = Fleet(max(SIZES), freeze=not args.no_gc_freeze)
    try:
        with (
            redis_server() as url,
            TokenServer(access_token_ttl=3600.0, latency=args.latency) as idp,
            httpx.Client(timeout=30.0) as http,
        ):
            own = idp_latency(idp)
            serial = 0
            for store in STORES:
                for n in SIZES:
                    variants = [(store, client) for client in CLIENTS]
                    if args.encrypted:
                        # The naive client writes plaintext: it has no encrypted row.
                        variants.insert(1, (store + "+enc", "authfsm"))
                    group = [Row(kind, n, client) for kind, client in variants]
                    # One unrecorded round each first: connections made, code paths warm. Then
                    # the variants take turns round by round, so load on the machine hits all.
                    for kind, client in variants:
                        serial += 1
                        warm = Row(kind, n, client)
                        one_round(fleet, idp, http, kind, n, client, url, folder, serial, warm)
                    for _ in range(rounds):
                        for (kind, client), row in zip(variants, group, strict=True):
                            serial += 1
                            one_round(fleet, idp, http, kind, n, client, url, folder, serial, row)
                    rows.extend(group)
                    print(f"{store:5} N={n:<2} done", file=sys.stderr)
    finally:
        fleet.close()
        shutil.rmtree(folder, ignore_errors=True)

    report = [
        f"IdP latency setting {args.latency * 1000:g} ms; measured own latency of one refresh "
        f"call {own * 1000:.1f} ms; {rounds} rounds per row; workers' start-up objects "
        f"{'left to the garbage collector' if args.no_gc_freeze else 'frozen (gc.freeze)'}.",
        "",
        table(rows, rounds),
        "",
        *verdict(rows, own),
    ]
    text = "\n".join(report)
    print(text)
    if args.write_results:
        RESULTS.write_text(results_page(text, args, rounds))
    return 0


WHY = """\
## Reading it

- **naive**: every process spends the refresh token it holds; the first call rotates, every other
  one is a reuse, and the IdP revokes the family, so nobody ends with a usable token (not even
  the process whose call succeeded) and every user has to log in again.
- **authfsm**: one process takes the lease and calls; the others wait for the lease in short
  slices (20 ms) and re-read the store between them, so each adopts the new credential, with no
  call and without the lease, as soon as the leader's write lands. "Per follower" in the lines
  above is the mean gap between consecutive processes getting their token (median of rounds).
  The first token comes a little after the IdP's own latency: 32 processes waking at the same
  instant share this machine's two cores.
- Garbage collection: identical workers running identical rounds reach CPython's full-collection
  threshold in the same round. The workers freeze their start-up objects (`gc.freeze()`) as
  long-running services do, unless run with `--no-gc-freeze`. Before followers watched the
  store (when they queued for the lease and re-read one after another) the pauses added up and
  N=32 p99 without the freeze was IdP + 48 ms (file) and IdP + 67 ms (Redis); with the store
  watch, one run without the freeze gave IdP + 31 ms (file) and IdP + 33 ms (Redis).
"""


def results_page(text: str, args: argparse.Namespace, rounds: int) -> str:
    return "\n".join(
        [
            "# Storm benchmark results",
            "",
            f"Written by `python benchmarks/storm.py --write-results` (rounds {rounds}, "
            f"latency {args.latency:g} s{', --no-gc-freeze' if args.no_gc_freeze else ''}"
            f"{', --encrypted' if args.encrypted else ''}); "
            "see the module docstring for what is measured.",
            "",
            text,
            "",
            WHY,
            "## Machine",
            "",
            f"- date: {datetime.now(UTC).isoformat(timespec='seconds')}",
            f"- python: {platform.python_implementation()} {platform.python_version()}",
            f"- platform: {platform.platform()}",
            f"- cpus: {os.cpu_count()}",
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
