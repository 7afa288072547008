"""``authfsm diagram``: the lifecycle (or one recorded run) as Mermaid, DOT, SVG or PNG."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Final, TextIO

from ._common import EXIT_OK, UsageError


def cmd_diagram(args: argparse.Namespace, out: TextIO) -> int:
    """Draw the lifecycle (or, with --trace, one recorded run)."""
    from .. import diagram

    fmt = args.format or _format_from_suffix(args.output) or "mermaid"
    if args.trace:
        if fmt != "mermaid":
            raise UsageError("--trace draws Mermaid only (use --format mermaid)")
        lines = _read_lines(args.trace)
        events, bad = diagram.parse_events(lines)
        if bad:
            sys.stderr.write(f"warning: skipped {bad} line(s) that are not JSON objects\n")
        text = diagram.trace_mermaid(events, title=f"authfsm run: {Path(args.trace).name}")
        return _emit(text.encode(), args.output, out)
    if fmt == "mermaid":
        return _emit(diagram.lifecycle_mermaid().encode(), args.output, out)
    dot_source = diagram.lifecycle_dot()
    if fmt == "dot":
        return _emit(dot_source.encode(), args.output, out)
    if fmt == "png" and not args.output and out.isatty():
        raise UsageError("PNG is binary: give --output FILE or redirect stdout")
    try:
        rendered = diagram.render_with_dot(dot_source, fmt)
    except diagram.DotNotFound as error:
        raise UsageError(str(error)) from None
    return _emit(rendered, args.output, out)


_SUFFIXES: Final = {
    ".mmd": "mermaid",
    ".mermaid": "mermaid",
    ".dot": "dot",
    ".gv": "dot",
    ".svg": "svg",
    ".png": "png",
}


def _format_from_suffix(output: str | None) -> str | None:
    return _SUFFIXES.get(Path(output).suffix.lower()) if output else None


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text(errors="replace").splitlines()
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from None


def _emit(data: bytes, output: str | None, out: TextIO) -> int:
    if output:
        try:
            Path(output).write_bytes(data)
        except OSError as error:
            raise UsageError(f"cannot write {output}: {error.strerror}") from None
        return EXIT_OK
    buffer = getattr(out, "buffer", None)
    if buffer is not None:
        out.flush()
        buffer.write(data)
        buffer.flush()
    else:
        out.write(data.decode())
    return EXIT_OK
