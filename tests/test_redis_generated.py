"""
The blocking Redis store and effect performer are generated from the asyncio ones:
scripts/unasync.py and its check.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import SUBPROCESS_TIMEOUT

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "unasync.py"
PACKAGE = Path("src/authfsm/adapters/storage")
ENGINE = Path("src/authfsm/engine")
PAIRS = [
    (PACKAGE, "_redis_async.py", "_redis_sync.py"),
    (PACKAGE, "_redis_release_async.py", "_redis_release_sync.py"),
    (ENGINE, "_perform_async.py", "_perform_sync.py"),
]


def unasync(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(root / "scripts" / "unasync.py"), *args],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )


@pytest.fixture(name="copy")
def _copy(tmp_path: Path) -> Path:
    """The script and the generated modules' sources, in a scratch tree laid out like the repo."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts" / "unasync.py")
    for folder, source, generated in PAIRS:
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        for name in (source, generated):
            shutil.copy(ROOT / folder / name, tmp_path / folder / name)
    return tmp_path


class TestGeneratedStore:
    """The generated modules are current, and the check notices when they are not."""

    def test_generated_files_are_current(self):
        """`python scripts/unasync.py --check` passes on the repository as committed."""
        done = unasync(ROOT, "--check")

        assert 0 == done.returncode, done.stdout + done.stderr

    def test_check_fails_on_a_stale_file(self, copy):
        """A source edited without regenerating: --check exits 1 and shows the missing line."""
        source = copy / PACKAGE / "_redis_async.py"
        text = source.read_text()
        source.write_text(text.replace("    async def read(self)", "    async def read(self)  ", 1))
        before = (copy / PACKAGE / "_redis_sync.py").read_text()

        done = unasync(copy, "--check")

        assert 1 == done.returncode
        assert "+    def read(self)  " in done.stdout
        assert "out of date: src/authfsm/adapters/storage/_redis_sync.py" in done.stderr
        assert before == (copy / PACKAGE / "_redis_sync.py").read_text()  # only checked

    def test_check_fails_on_a_hand_edit(self, copy):
        """An edit of the generated file itself is caught too (and undone by regenerating)."""
        generated = copy / PACKAGE / "_redis_release_sync.py"
        original = generated.read_text()
        generated.write_text(original.replace("_DRAIN: Final = 100", "_DRAIN: Final = 5"))

        checked = unasync(copy, "--check")
        written = unasync(copy)
        rechecked = unasync(copy, "--check")

        assert (1, 0, 0) == (checked.returncode, written.returncode, rechecked.returncode)
        assert original == generated.read_text()

    def test_unused_substitution_fails(self, copy):
        """A substitution that matches nothing any more is reported (the list is what differs)."""
        for folder, name, _generated in PAIRS:
            source = copy / folder / name
            source.write_text(source.read_text().replace("__aexit__", "__leave__"))

        done = unasync(copy)

        assert 1 == done.returncode
        assert "matched nothing" in done.stderr
        assert "__aexit__" in done.stderr

    @pytest.mark.parametrize(("folder", "source", "generated"), PAIRS)
    def test_generated_is_blocking(self, folder, source, generated):
        """The header names the source; nothing asynchronous is left in the generated code."""
        text = (ROOT / folder / generated).read_text()

        assert text.startswith(f"# Generated from {source} by scripts/unasync.py: do not edit.")
        for leftover in (r"\bawait\b", r"\basync\b", r"redis\.asyncio", r"\bAsync[A-Z]", "aclose"):
            assert not re.search(leftover, text), leftover
