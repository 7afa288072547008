"""The README's examples run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


class TestReadme:
    """Every python block of README.md runs."""

    @pytest.mark.parametrize("index", range(len(BLOCKS)))
    def test_block_runs(self, index, tmp_path):
        """The block exits 0 in a fresh interpreter (HOME points at a temporary folder)."""
        env = {**os.environ, "HOME": str(tmp_path)}
        done = subprocess.run(
            [sys.executable, "-c", BLOCKS[index]],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert 0 == done.returncode, done.stderr

    def test_there_are_examples(self):
        """The README has at least the two quick-start blocks."""
        assert len(BLOCKS) >= 2

    def test_quickstart_file_runs(self):
        """examples/quickstart.py, the complete quick-start example, runs."""
        done = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "quickstart.py")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert 0 == done.returncode, done.stderr
        assert "POISONED" in done.stdout
