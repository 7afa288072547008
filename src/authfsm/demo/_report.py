"""
How the demo shows itself: a progress display on stderr while it runs, a table when it is done.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TextIO

from ._runner import SCENARIO_STORIES, DemoReport, RunResult

__all__ = ["StreamProgress", "format_report"]

_COLUMNS: tuple[tuple[str, str], ...] = (
    ("scenario", "<"),
    ("client", "<"),
    ("token calls", ">"),
    ("reuse rejections", ">"),
    ("family revoked", "<"),
    ("working tokens", ">"),
    ("wrong user", ">"),
    ("forced re-logins", ">"),
    ("refused switch", ">"),
)


def _row(run: RunResult) -> list[str]:
    revoked = "no"
    if run.family_revoked:
        revoked = "yes (by scenario)" if run.scenario == "poison" else "yes"
    return [
        run.scenario,
        run.client,
        str(run.token_calls),
        str(run.reuse_rejections),
        revoked,
        f"{run.working}/{run.workers}",
        str(run.wrong_user),
        str(run.relogins),
        str(run.refused_switch),
    ]


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    header = [name for name, _ in _COLUMNS]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            f"{cell:{align}{width}}"
            for cell, width, (_, align) in zip(cells, widths, _COLUMNS, strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return [line(header), rule, *(line(r) for r in rows)]


def format_report(report: DemoReport) -> str:
    """The results as a plain-text table with a line of explanation per scenario."""
    out = [
        f"{report.workers} worker processes share one credential file; "
        f"{report.polls} polls each; token server on 127.0.0.1 "
        "(rotating refresh tokens, reuse revokes the family).",
        "",
        *_table([_row(run) for run in report.runs]),
        "",
    ]
    for scenario in dict.fromkeys(run.scenario for run in report.runs):
        out.append(f"{scenario}: {SCENARIO_STORIES[scenario]}.")
    out.append(
        "working tokens: the final token is accepted by the server for the worker's own user;"
    )
    out.append("wrong user: it works, for somebody else.")
    out.append(f"Finished in {report.seconds:.1f} s.")
    if report.kept:
        out.append("")
        out.append(f"Kept in {report.kept}:")
        for run in report.runs:
            for label, path in (
                ("store", run.store),
                ("event log", run.events),
                ("trace", run.trace),
            ):
                if path:
                    out.append(f"  {run.scenario}/{run.client} {label}: {path}")
    return "\n".join(out) + "\n"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


class StreamProgress:
    """
    A progress display on a text stream (stderr): a bar redrawn in place on a terminal, one line
    per finished run otherwise. ``quiet`` draws nothing.
    """

    def __init__(self, stream: TextIO, *, quiet: bool = False) -> None:
        self._stream = stream
        self._quiet = quiet
        self._live = stream.isatty()
        self._label = ""
        self._steps = 1
        self._done = 0
        self._started = time.monotonic()

    def begin(self, scenario: str, client: str, steps: int) -> None:
        self._label = f"{scenario:<14} {client:<7}"
        self._steps = max(steps, 1)
        self._done = 0
        self._started = time.monotonic()
        self._draw("starting workers")

    def advance(self, what: str) -> None:
        self._done = min(self._done + 1, self._steps)
        self._draw(what)

    def end(self, result: RunResult) -> None:
        if self._quiet:
            return
        summary = (
            f"{self._label} done in {result.seconds:4.1f} s: "
            f"{_count(result.token_calls, 'token call')}, "
            f"{_count(result.reuse_rejections, 'reuse rejection')}, "
            f"{result.working}/{result.workers} working"
            + (f", {result.wrong_user} as another user" if result.wrong_user else "")
        )
        if self._live:
            self._stream.write("\r\x1b[2K")
        self._stream.write(summary + "\n")
        self._stream.flush()

    def _draw(self, what: str) -> None:
        if self._quiet or not self._live:
            return
        width = 24
        filled = round(width * self._done / self._steps)
        bar = "#" * filled + "." * (width - filled)
        elapsed = time.monotonic() - self._started
        self._stream.write(f"\r\x1b[2K{self._label} [{bar}] {what} ({elapsed:4.1f} s)")
        self._stream.flush()
