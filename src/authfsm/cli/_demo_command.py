"""``authfsm demo``: the naive client and authfsm side by side in real processes."""

from __future__ import annotations

import argparse
import sys
from typing import Final, TextIO

from ._common import EXIT_OK, EXIT_TRANSIENT, print_json

DEMO_DETAILS: Final = """\
scenarios:
  race            every worker finds the credential due at the same moment
  poison          the refresh token was revoked at the server before the run
  account-switch  another user logs in to the shared file while the workers hold theirs

columns:
  token calls       requests to the token endpoint
  reuse rejections  spent refresh tokens presented again (each one revokes the token family)
  family revoked    the user's token family is dead at the end
  working tokens    workers whose final token the server accepts, for their own user
  wrong user        workers whose final token works, for another user
  forced re-logins  workers whose credential is dead: only a login helps
  refused switch    workers that refused another user's credential (AccountMismatch)

The naive client keeps the credential in memory, reloads the file when it changes, refreshes
with the refresh token it holds when due or after a 401, and writes the result back: no lock,
no re-read before spending, no identity check. The demo exits 3 if a worker fails to answer.
"""


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    """Run the naive client and authfsm side by side in real processes; print the table."""
    from ..demo import SCENARIOS, DemoError, StreamProgress, format_report, run_demo

    scenarios = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    try:
        report = run_demo(
            workers=args.workers,
            scenarios=scenarios,
            polls=args.polls,
            keep=args.keep,
            progress=StreamProgress(sys.stderr, quiet=args.quiet),
        )
    except DemoError as error:
        sys.stderr.write(f"authfsm demo: {error}\n")
        return EXIT_TRANSIENT
    if args.json:
        print_json(report.to_dict(), out)
    else:
        out.write(format_report(report))
    return EXIT_OK
