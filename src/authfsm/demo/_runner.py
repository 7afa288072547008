"""
The demo: the same fleet of worker processes, first with a naive client, then with authfsm.

For each scenario and each client the runner starts a :class:`~authfsm.testing.TokenServer`-backed
run in its own folder: it logs a user in to a fresh credential file, starts N workers on that file,
applies the scenario, drives every worker through the same polls in lock step, asks each one what
its final token is worth at the server's protected resource, and counts what the server saw.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

import attrs

from ..adapters import FileStore
from ..diagram import parse_events, trace_mermaid
from ..engine import AuthEngine, Credentials
from ..testing import TokenServer
from ._pool import WorkerPool, worker_command

__all__ = ["CLIENTS", "SCENARIOS", "DemoReport", "Progress", "RunResult", "run_demo"]

#: The scenarios, in the order ``all`` runs them.
SCENARIOS: Final = ("race", "poison", "account-switch")
#: The clients, in the order each scenario runs them.
CLIENTS: Final = ("naive", "authfsm")

#: What each scenario shows, for the report.
SCENARIO_STORIES: Final = {
    "race": "every worker finds the credential due at the same moment",
    "poison": "the refresh token was revoked at the server before the run",
    "account-switch": "another user logs in to the shared file while the workers hold theirs",
}

_USER, _ACCOUNT = "alice", "acme"
_OTHER_USER, _OTHER_ACCOUNT = "bob", "globex"
# A token server this slow makes every worker of a round reach it before the first answer.
_IDP_LATENCY: Final = 0.2
_CLIENT_ID: Final = "authfsm-demo"


class Progress(Protocol):
    """Told what the runner is doing; draws a progress display (or nothing)."""

    def begin(self, scenario: str, client: str, steps: int) -> None: ...

    def advance(self, what: str) -> None: ...

    def end(self, result: RunResult) -> None: ...


@attrs.frozen(kw_only=True)
class RunResult:
    """
    What one client did in one scenario.

    Attributes:
        token_calls: requests to the token endpoint, whatever their outcome.
        rotations: refresh tokens successfully spent.
        reuse_rejections: spent refresh tokens presented again (each revokes the family).
        family_revoked: the first user's token family is dead at the end.
        working: workers whose final token the resource server accepts, for their own user.
        wrong_user: workers whose final token works, for another user.
        relogins: workers whose credential is dead: only a login can help them.
        refused_switch: workers that refused another user's credential (``AccountMismatch``).
        events: the JSON lines event log of an authfsm run, if kept.
        trace: the Mermaid trace diagram drawn from ``events``, if kept.
    """

    scenario: str
    client: str
    workers: int
    polls: int
    token_calls: int
    rotations: int
    reuse_rejections: int
    family_revoked: bool
    working: int
    wrong_user: int
    relogins: int
    refused_switch: int
    seconds: float
    store: str | None = None
    events: str | None = None
    trace: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class DemoReport:
    """Every run of one ``authfsm demo``."""

    workers: int
    polls: int
    runs: tuple[RunResult, ...]
    seconds: float
    kept: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "workers": self.workers,
            "polls": self.polls,
            "seconds": self.seconds,
            "kept": self.kept,
            "runs": [run.to_dict() for run in self.runs],
        }


def _login(path: Path, credentials: Credentials) -> None:
    AuthEngine(FileStore(path)).login(credentials)


def _seed(server: TokenServer, path: Path) -> Credentials:
    now = time.time()
    issued = server.issue(user_id=_USER, account_id=_ACCOUNT, expires_in=120.0)
    # Logged in ten minutes ago with a 12-minute token: inside the 5-minute refresh leeway now,
    # yet still accepted by the resource server for two more minutes.
    credentials = attrs.evolve(issued, last_refresh=datetime.fromtimestamp(now - 600.0, UTC))
    _login(path, credentials)
    return credentials


def _apply_scenario(scenario: str, server: TokenServer, path: Path, first: Credentials) -> None:
    """What happens once the workers hold the first user's credential, before the first poll."""
    if scenario == "poison":
        server.revoke_family_of(first)
    elif scenario == "account-switch":
        _login(path, server.issue(user_id=_OTHER_USER, account_id=_OTHER_ACCOUNT))


def _run(
    server: TokenServer,
    scenario: str,
    client: str,
    *,
    folder: Path,
    workers: int,
    polls: int,
    keep: bool,
    progress: Progress,
) -> RunResult:
    run_dir = folder / scenario / client
    run_dir.mkdir(parents=True)
    store = run_dir / "auth.json"
    events = run_dir / "events.jsonl" if client == "authfsm" else None
    started = time.monotonic()
    progress.begin(scenario, client, workers * (polls + 2))
    server.reset_counters()
    first = _seed(server, store)

    def argv(index: int) -> list[str]:
        args = [
            "--client", client,
            "--index", str(index),
            "--store", str(store),
            "--token-url", server.token_url,
            "--resource-url", server.resource_url,
            "--client-id", _CLIENT_ID,
            "--user", _USER,
        ]  # fmt: skip
        if events is not None:
            args += ["--events", str(events)]
        return worker_command(*args)

    def step(what: str) -> Callable[[], None]:
        return lambda: progress.advance(what)

    with WorkerPool(workers, argv, run_dir) as pool:
        pool.ready(step("starting workers"))
        _apply_scenario(scenario, server, store, first)
        for round_ in range(1, polls + 1):
            pool.broadcast("poll", step(f"poll {round_}/{polls}"))
        token_calls = server.token_calls
        rotations = server.rotations
        reuse_rejections = server.reuse_rejections
        checks = pool.broadcast("check", step("checking tokens"))
    trace = None
    if keep and events is not None and events.exists():
        found, _bad = parse_events(events.read_text().splitlines())
        trace = run_dir / "trace.mmd"
        trace.write_text(trace_mermaid(found, title=f"authfsm demo: {scenario}"))
    result = RunResult(
        scenario=scenario,
        client=client,
        workers=workers,
        polls=polls,
        token_calls=token_calls,
        rotations=rotations,
        reuse_rejections=reuse_rejections,
        family_revoked=not server.family_alive(first),
        working=sum(bool(c.get("token_ok") and c.get("own_user")) for c in checks),
        wrong_user=sum(bool(c.get("token_ok") and not c.get("own_user")) for c in checks),
        relogins=sum(bool(c.get("needs_login")) for c in checks),
        refused_switch=sum(bool(c.get("refused_switch")) for c in checks),
        seconds=round(time.monotonic() - started, 2),
        store=str(store) if keep else None,
        events=str(events) if keep and events is not None else None,
        trace=str(trace) if trace is not None else None,
    )
    progress.end(result)
    return result


def run_demo(
    *,
    workers: int = 8,
    scenarios: Sequence[str] = SCENARIOS,
    polls: int = 5,
    keep: bool = False,
    progress: Progress,
) -> DemoReport:
    """
    Run every scenario with the naive client, then with authfsm, against one local token server.

    With ``keep`` the folder of the runs (credential files, the authfsm runs' JSON event logs and
    trace diagrams) is left behind and named in the report; otherwise it is removed.
    """
    if workers < 1 or polls < 1:
        raise ValueError("workers and polls must be at least 1")
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario {unknown[0]!r}")
    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="authfsm-demo-"))
    runs: list[RunResult] = []
    try:
        with TokenServer(
            client_id=_CLIENT_ID, access_token_ttl=3600.0, latency=_IDP_LATENCY
        ) as server:
            for scenario in scenarios:
                for client in CLIENTS:
                    runs.append(
                        _run(
                            server,
                            scenario,
                            client,
                            folder=folder,
                            workers=workers,
                            polls=polls,
                            keep=keep,
                            progress=progress,
                        )
                    )
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    return DemoReport(
        workers=workers,
        polls=polls,
        runs=tuple(runs),
        seconds=round(time.monotonic() - started, 2),
        kept=str(folder) if keep else None,
    )
