"""
The generated Mermaid renders in real Mermaid, in headless Chromium.

Chromium (Debian ``chromium``) and the pinned ``mermaid`` npm package are installed by
``.ci/system-deps``. In CI (``CI`` set) a missing one fails the test; elsewhere it is skipped with
the command to run.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from authfsm import diagram
from authfsm.states import State

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_DEPS = ROOT / ".ci" / "system-deps"


def need(what: str) -> None:
    message = f"{what} is not installed; run .ci/system-deps"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def mermaid_js() -> Path:
    """The mermaid.min.js that .ci/system-deps unpacked (its version pinned in that script)."""
    override = os.environ.get("AUTHFSM_MERMAID_JS")
    if override:
        return Path(override)
    version = re.search(r"^MERMAID_VERSION=(\S+)$", SYSTEM_DEPS.read_text(), re.M)
    assert version is not None, "MERMAID_VERSION is pinned in .ci/system-deps"
    cache = os.environ.get("AUTHFSM_CI_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "authfsm-ci"
    )
    return Path(cache) / f"mermaid-{version.group(1)}" / "mermaid.min.js"


def chromium() -> str:
    for name in (os.environ.get("AUTHFSM_CHROMIUM"), "chromium", "chromium-browser"):
        if name and (found := shutil.which(name)):
            return found
    need("chromium")
    raise AssertionError("unreachable")


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><script src="{script}"></script></head>
<body><pre id="status">pending</pre>
<script>
const sources = {sources};
mermaid.initialize({{startOnLoad: false, securityLevel: "strict"}});
(async () => {{
  const results = [];
  for (const [i, text] of sources.entries()) {{
    try {{
      const {{svg}} = await mermaid.render("diagram" + i, text);
      results.push({{ok: true, svg}});
    }} catch (e) {{
      results.push({{ok: false, error: String(e && e.message || e)}});
    }}
  }}
  document.getElementById("status").textContent = JSON.stringify(results);
}})();
</script></body></html>
"""


def render(sources: list[str], tmp_path: Path) -> list[dict[str, object]]:
    """Render each Mermaid source in one headless Chromium; return {ok, svg | error} each."""
    script = mermaid_js()
    if not script.is_file():
        need(f"mermaid ({script})")
    browser = chromium()
    page = tmp_path / "render.html"
    # JSON in a <script>: escape '</' so a diagram cannot close the script element.
    page.write_text(
        PAGE.format(script=script.as_uri(), sources=json.dumps(sources).replace("</", "<\\/"))
    )
    done = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--allow-file-access-from-files",
            "--virtual-time-budget=30000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    match = re.search(r'<pre id="status">(.*?)</pre>', done.stdout, re.S)
    assert match is not None, f"chromium printed no page (exit {done.returncode}): {done.stderr}"
    status = html.unescape(match.group(1))
    assert "pending" != status, "Mermaid did not finish rendering in the time budget"
    results: list[dict[str, object]] = json.loads(status)
    return results


def svg_texts(svg: str) -> set[str]:
    """The text content of every element of an SVG (labels, titles), stripped."""
    return {html.unescape(t).strip() for t in re.findall(r">([^<>]+)<", svg)}


class TestMermaidRenders:
    """Mermaid accepts what `authfsm diagram` writes, and draws every state."""

    def test_lifecycle_and_trace_render(self, tmp_path):
        """The lifecycle shows every state name; a trace shows every process lane."""
        trace = diagram.trace_mermaid(
            [
                {
                    "event": "authfsm.transition",
                    "from_state": "reloaded",
                    "to_state": "stale",
                    "trigger": "expire",
                    "reason": "due",
                    "fingerprint": "aaaa1111bbbb2222",
                    "pid": 101,
                },
                {"event": "authfsm.refresh.call", "fingerprint": "aaaa1111", "pid": 202},
                {"event": "authfsm.refresh.succeeded", "fingerprint": "cccc3333", "pid": 202},
                {"event": "authfsm.refresh.poisoned", "code": "invalid_grant", "pid": 101},
            ]
        )
        checked_in = (ROOT / "diagrams" / "lifecycle.mmd").read_text()

        lifecycle, trace_svg, file_svg = render(
            [diagram.lifecycle_mermaid(), trace, checked_in], tmp_path
        )

        assert {"ok": True} == {"ok": lifecycle["ok"]}, lifecycle.get("error")
        texts = svg_texts(str(lifecycle["svg"]))
        assert set() == {s.name for s in State} - texts
        assert "any state" in texts
        assert diagram.STATE_MEANINGS[State.POISONED] in texts
        assert trace_svg["ok"], trace_svg.get("error")
        assert {"pid 101", "pid 202", "token endpoint"} <= svg_texts(str(trace_svg["svg"]))
        assert file_svg["ok"], file_svg.get("error")

    def test_broken_mermaid_is_reported(self, tmp_path):
        """The harness itself tells a rejected diagram from a rendered one."""
        (result,) = render(["stateDiagram-v2\n  A --> : : :\n  ]]] nonsense"], tmp_path)

        assert result["ok"] is False
        assert result["error"]
