#!/usr/bin/env python3
"""
Generate blocking modules from asyncio ones, as httpcore does with unasync: the Redis store and
the engine's effect performer.

    python scripts/unasync.py           # write the generated files
    python scripts/unasync.py --check   # exit 1, showing a diff, when one is out of date

The asyncio modules are the hand-written source. A generated module is its source with a header
and the substitutions below applied line by line: a whole-line substitution if one matches
(imports whose names change, so the names stay sorted), then tokens on word boundaries. What
cannot be written once lives in ``_redis_tasks.py`` and ``_redis_threads.py`` (hand-written twins
with the same names). A substitution that matches nothing is an error, so the lists say exactly
what differs. Generated code must also pass ``ruff format``: where removing ``await`` would let
a statement fit on fewer lines, the source keeps it exploded with a trailing comma.

It uses the standard library only, so the check runs wherever the tests do.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path("src/authfsm/adapters/storage")

#: (source, generated), relative to the repository.
ENGINE = Path("src/authfsm/engine")

FILES = [
    (PACKAGE / "_redis_async.py", PACKAGE / "_redis_sync.py"),
    (PACKAGE / "_redis_release_async.py", PACKAGE / "_redis_release_sync.py"),
    (ENGINE / "_perform_async.py", ENGINE / "_perform_sync.py"),
]

#: Whole lines (regular expressions matching all of a line, without its newline).
LINES = [
    (
        r"from collections\.abc import AsyncIterator, Callable, Mapping, Sequence",
        "from collections.abc import Callable, Iterator, Mapping, Sequence",
    ),
    (r"from collections\.abc import Awaitable, Callable", "from collections.abc import Callable"),
    (r"from \._redis_tasks import (.*)", r"from ._redis_threads import \1"),
    (
        r"from \._redis_release_async import AsyncReleaseWatcher, Held",
        "from ._redis_release_sync import Held, ReleaseWatcher",
    ),
    (
        r"What each effect means for an asyncio store and endpoint: one call per kind of effect\.",
        "What each effect means for a blocking store and endpoint: one call per kind of effect.",
    ),
    (
        r"from \._ports_async import AsyncStore, AsyncTokenEndpoint, TransientFailure",
        "from ._ports import Store, TokenEndpoint, TransientFailure",
    ),
    (
        r"    Concurrency: coroutine methods; each held lease is renewed by a task; "
        r"the client belongs",
        "    Concurrency: blocking methods, safe to share between threads; one thread per process",
    ),
    (
        r"    to the event loop that first uses it\.",
        "    renews every lease held through any RedisStore.",
    ),
]

#: Tokens, matched on word boundaries anywhere in a line (code, docstrings, comments).
TOKENS = [
    (r"Async([A-Z]\w*)", r"\1"),  # AsyncRedisStore, AsyncIterator, AsyncReleaseWatch, ...
    (r"async def", "def"),
    (r"async with", "with"),
    (r"await ", ""),
    (r"asynccontextmanager", "contextmanager"),
    (r"__aenter__", "__enter__"),
    (r"__aexit__", "__exit__"),
    (r"aclose", "close"),
    (r"redis\.asyncio", "redis"),
    (r"asyncio=True", "asyncio=False"),
    (r"Awaitable\[bool\]", "bool"),
    (r"AbstractAsyncContextManager", "AbstractContextManager"),
    (r"(perform|refresh|revoke|shielded|sleep)_async", r"\1"),
]

_LINES = [(re.compile(pattern), replacement) for pattern, replacement in LINES]
# A token is not part of a longer name: no word character before it, nor after one that ends in
# a word character (``await `` ends in a space, ``redis\.asyncio`` in a letter).
_TOKENS = [
    (
        re.compile(r"(?<!\w)" + pattern + (r"(?!\w)" if re.search(r"[\w)]$", pattern) else "")),
        replacement,
    )
    for pattern, replacement in TOKENS
]

HEADER = (
    "# Generated from {source} by scripts/unasync.py: do not edit.\n"
    "# Edit the source, then run `python scripts/unasync.py` (a test fails while this is stale).\n"
)


def unasync_line(line: str, used: set[str]) -> str:
    """One line of a source module, made blocking; ``used`` collects the patterns that matched."""
    body, newline = (line[:-1], "\n") if line.endswith("\n") else (line, "")
    for pattern, replacement in _LINES:
        if pattern.fullmatch(body):
            used.add(pattern.pattern)
            body = pattern.sub(replacement, body)
            break
    for pattern, replacement in _TOKENS:
        body, count = pattern.subn(replacement, body)
        if count:
            used.add(pattern.pattern)
    return body + newline


def generate(source: Path, used: set[str]) -> str:
    """The text of the module generated from ``source`` (a path relative to the repository)."""
    text = (ROOT / source).read_text(encoding="utf-8")
    lines = [unasync_line(line, used) for line in text.splitlines(keepends=True)]
    return HEADER.format(source=source.name) + "".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument(
        "--check", action="store_true", help="only check that the generated files are current"
    )
    options = parser.parse_args(argv)
    used: set[str] = set()
    stale = []
    for source, target in FILES:
        expected = generate(source, used)
        path = ROOT / target
        found = path.read_text(encoding="utf-8") if path.exists() else ""
        if found == expected:
            continue
        if options.check:
            stale.append(target)
            sys.stdout.writelines(
                difflib.unified_diff(
                    found.splitlines(keepends=True),
                    expected.splitlines(keepends=True),
                    fromfile=f"{target} (as it is)",
                    tofile=f"{target} (generated from {source.name})",
                )
            )
        else:
            path.write_text(expected, encoding="utf-8")
            print(f"wrote {target}")
    unused = [p.pattern for p, _ in _LINES + _TOKENS if p.pattern not in used]
    if unused:
        print(f"substitutions that matched nothing (remove them): {unused}", file=sys.stderr)
        return 1
    if stale:
        names = ", ".join(str(target) for target in stale)
        print(f"out of date: {names}; run: python scripts/unasync.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
