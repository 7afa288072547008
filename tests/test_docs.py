"""The documentation site builds without warnings, and every Python sample in it runs."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from authfsm.adapters import generate_key

from .redis_server import running_redis

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.relative_to(DOCS).parts)
BLOCKS = [
    (page.relative_to(DOCS).as_posix(), index, block)
    for page in PAGES
    for index, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S))
]
BUILD_TIMEOUT = 120  # the build takes ~10 s; the budget is 60 s, with room for a slow CI box


def _offline_env(home: Path) -> dict[str, str]:
    env = {**os.environ, "HOME": str(home)}
    # No proxy may route 127.0.0.1 elsewhere; samples talk only to servers they start on loopback.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        env.pop(name, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


class TestDocSamples:
    """Every ```python block of every docs/*.md page runs, as written, in a fresh interpreter."""

    @pytest.mark.parametrize(
        ("page", "index", "block"), BLOCKS, ids=[f"{p}#{i}" for p, i, _ in BLOCKS]
    )
    def test_block_runs(self, page, index, block, tmp_path):
        """The block exits 0 with HOME in a temporary folder (and a Redis server if it uses one).

        HOME holds the key file docs/encryption.md tells the reader to make (~/.myapp/keys).
        """
        env = _offline_env(tmp_path)
        keys = tmp_path / ".myapp" / "keys"
        keys.parent.mkdir()
        keys.write_text(generate_key("k1") + "\n")
        keys.chmod(0o600)
        if "REDIS_URL" in block:
            with running_redis() as server:
                env["REDIS_URL"] = server.url
                done = _run(block, env, tmp_path)
        else:
            done = _run(block, env, tmp_path)
        assert 0 == done.returncode, f"{page} block {index}:\n{done.stderr}"

    def test_there_are_samples(self):
        """The tutorial, the concepts and every how-to guide have runnable samples."""
        pages = {page for page, _, _ in BLOCKS}
        assert {"tutorial.md", "concepts.md", "howto/cli-login.md", "howto/testing.md"} <= pages


def _run(block: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", block],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class TestDocsBuild:
    """The site builds with warnings as errors, so a broken reference fails CI."""

    def test_sphinx_build_is_clean(self, tmp_path):
        """sphinx-build -W --keep-going -b html docs exits 0 from scratch, offline."""
        if importlib.util.find_spec("sphinx") is None:  # fail, never skip: CI must build it
            pytest.fail("Sphinx is not installed: pip install -e '.[docs]'", pytrace=False)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "sphinx",
                "-W",
                "--keep-going",
                "-E",
                "-q",
                "-b",
                "html",
                "-d",
                str(tmp_path / "doctrees"),
                str(DOCS),
                str(tmp_path / "html"),
            ],
            env=_offline_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
        assert 0 == done.returncode, done.stderr
        assert (tmp_path / "html" / "index.html").is_file()
        assert (tmp_path / "html" / "_images" / "lifecycle.svg").is_file()
