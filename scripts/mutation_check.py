"""
Check mutmut's mutants against a chosen set of tests, quickly, and record the verdicts where
``mutmut results`` reads them (docs/mutation-testing.md).

``mutmut run`` runs, for every mutant, each test that covers the mutated function; for the
engine's busiest functions (``serve``, ``_guarded_refresh``, ``_await_lease``) that is most of
the suite, and a mutant that makes an engine wait (a lease that is never given back, a wake-up
that never comes) costs its tests' full timeouts. This runs a mutant against a fixed list of
test files instead (the engine's own by default), stops at the first failure, and gives each
mutant a wall-clock limit: a mutant that makes the tests hang is noticed, as a timeout.

Run it after ``mutmut run`` has made ``mutants/`` (and while no ``mutmut run`` is running)::

    python scripts/mutation_check.py --unchecked authfsm.engine._flows   # every unchecked one
    python scripts/mutation_check.py --survivors authfsm.engine._flows   # look at them again
    python scripts/mutation_check.py 'authfsm.engine._flows.xǁEngineCoreǁserve__mutmut_41'

A survivor here may still be killed by a test outside the list: ``mutmut run NAME`` runs them
all. Verdicts use mutmut's exit codes (0 survived, 1 killed, 36 timeout).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "mutants"
TESTS = [
    "tests/test_engine_mutants.py",
    "tests/test_engine_teeth.py",
    "tests/test_events_mutants.py",
    "tests/test_unreplicated.py",
    "tests/test_engine.py",
    "tests/test_metrics.py",
    "tests/test_async_engine.py",
    "tests/test_rotation_safety.py",
    "tests/test_followers.py",
    "tests/test_engine_stateful.py",
    "tests/test_login_engine.py",
]
KILLED, SURVIVED, TIMEOUT, NO_TESTS = 1, 0, 36, 33


def meta_path(module: str) -> Path:
    """The results file mutmut keeps for a module (``authfsm.engine._flows``)."""
    return MUTANTS / "src" / (module.replace(".", "/") + ".py.meta")


def module_of(mutant: str) -> str:
    """The module of a method's (``….xǁClassǁname__mutmut_N``) or a function's mutant."""
    method = ".x\u01c1"
    return mutant.split(method)[0] if method in mutant else mutant.rsplit(".", 1)[0]


def _warm_up(tests: list[str]) -> None:
    """Import pytest, the package and the test modules once: every forked check starts warm."""
    import pytest

    os.chdir(MUTANTS)
    sys.path.insert(0, str(MUTANTS / "src"))
    os.environ["HYPOTHESIS_PROFILE"] = "mutmut"
    os.environ["MUTANT_UNDER_TEST"] = ""
    with open(os.devnull, "w") as quiet:
        saved = os.dup(1)
        os.dup2(quiet.fileno(), 1)
        try:
            pytest.main(["-q", "-p", "no:cacheprovider", "--collect-only", *tests])
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def covering(mutant: str, files: list[str]) -> list[str]:
    """
    The tests of ``files`` that call the mutated function (mutmut's own map of them, from its
    ``mutmut-stats.json``), quickest first, as mutmut orders them: a kill is found early.
    """
    stats = _stats()
    function = mutant.rsplit("__mutmut_", 1)[0]
    durations = stats["duration_by_test"]
    wanted = tuple(files)
    tests = [
        t for t in stats["tests_by_mangled_function_name"].get(function, []) if t.startswith(wanted)
    ]
    return sorted(tests, key=lambda test: durations.get(test, 0.0))


_STATS: dict[str, dict[str, object]] = {}


def _stats() -> dict[str, dict[str, object]]:
    if not _STATS:
        _STATS.update(json.loads((MUTANTS / "mutmut-stats.json").read_text()))
    return _STATS


def check(
    mutant: str, tests: list[str], limit: float, *, every_test: bool = False
) -> tuple[str, int, float]:
    """Run ``tests`` with ``mutant`` switched on, in a forked child; its verdict and seconds."""
    tests = tests if every_test else covering(mutant, tests)
    if not tests:
        return mutant, NO_TESTS, 0.0
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: quiet, the mutant on, pytest in-process; never returns
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.environ["MUTANT_UNDER_TEST"] = mutant
            import pytest

            code = pytest.main(["-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *tests])
        except BaseException:  # noqa: BLE001 - whatever happens, the child only exits
            code = 3
        os._exit(int(code))
    deadline = started + limit
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return mutant, TIMEOUT, time.monotonic() - started
        time.sleep(0.02)
    code = os.waitstatus_to_exitcode(status)
    if code in (2, 4, 5):  # interrupted, usage error, no tests: not a verdict
        raise RuntimeError(f"{mutant}: pytest exited {code}")
    return mutant, SURVIVED if code == 0 else KILLED, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    made = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    made.add_argument("mutants", nargs="*", help="mutant names, as mutmut prints them")
    made.add_argument("--unchecked", metavar="MODULE", help="every unchecked mutant of MODULE")
    made.add_argument("--survivors", metavar="MODULE", help="every survivor of MODULE")
    made.add_argument("--tests", nargs="+", default=TESTS, help="test files (the engine's)")
    made.add_argument(
        "--every-test",
        action="store_true",
        help="run every test of the files, not only those mutmut saw call the function "
        "(for survivors, and for tests newer than mutmut's map)",
    )
    made.add_argument("--jobs", type=int, default=2, help="mutants checked at once (2)")
    made.add_argument("--limit", type=float, default=30.0, help="seconds per mutant (30)")
    made.add_argument(
        "--shuffle",
        type=int,
        metavar="SEED",
        help="check in a random order (seeded): stopped early, what was checked is a sample",
    )
    args = made.parse_args(argv)
    names = list(args.mutants)
    for module, wanted in ((args.unchecked, None), (args.survivors, SURVIVED)):
        if module:
            codes = json.loads(meta_path(module).read_text())["exit_code_by_key"]
            names += [name for name, code in codes.items() if code == wanted]
    if not names:
        made.error("no mutants to check")
    if args.shuffle is not None:
        random.Random(args.shuffle).shuffle(names)  # noqa: S311 - an order, not a secret
    verdicts: dict[str, int] = {}
    _warm_up(args.tests)
    with ThreadPoolExecutor(args.jobs) as pool:
        for count, (name, verdict, took) in enumerate(
            pool.map(lambda n: check(n, args.tests, args.limit, every_test=args.every_test), names),
            1,
        ):
            verdicts[name] = verdict
            word = {
                KILLED: "killed",
                SURVIVED: "SURVIVED",
                TIMEOUT: "timeout",
                NO_TESTS: "no tests",
            }[verdict]
            print(f"[{count}/{len(names)}] {word:8} {took:5.1f} s  {name}", flush=True)
            if count % 20 == 0 or count == len(names):
                _record(verdicts)
    killed = sum(v == KILLED for v in verdicts.values())
    survived = sum(v == SURVIVED for v in verdicts.values())
    timeouts = sum(v == TIMEOUT for v in verdicts.values())
    print(f"checked {len(verdicts)}: killed {killed}, survived {survived}, timeouts {timeouts}")
    return 0


def _record(verdicts: dict[str, int]) -> None:
    """Write the verdicts into mutmut's results files (``mutmut results`` shows them)."""
    by_module: dict[str, dict[str, int]] = {}
    for name, verdict in verdicts.items():
        by_module.setdefault(module_of(name), {})[name] = verdict
    for module, found in by_module.items():
        path = meta_path(module)
        data = json.loads(path.read_text())
        data["exit_code_by_key"].update(found)
        path.write_text(json.dumps(data, indent=4))


if __name__ == "__main__":
    raise SystemExit(main())
