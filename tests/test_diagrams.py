"""Diagrams drawn from the transition table, the checked-in copies, and run traces."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from transitions.extensions import GraphMachine

from authfsm import diagram
from authfsm.states import GUARDS, TRANSITIONS, State

ROOT = Path(__file__).resolve().parent.parent
DIAGRAMS = ROOT / "diagrams"
IN_CI = bool(os.environ.get("CI"))
REGENERATE = (
    "regenerate with: authfsm diagram -o diagrams/lifecycle.mmd && "
    "authfsm diagram -o diagrams/lifecycle.dot && authfsm diagram -o diagrams/lifecycle.svg"
)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authfsm.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def need_dot() -> None:
    """Graphviz is installed by .ci/system-deps: missing in CI is a failure, locally a skip."""
    if shutil.which("dot") is None:
        message = "Graphviz's dot is not installed; run .ci/system-deps"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def transitions_edges() -> set[tuple[str, str, str]]:
    """(source, dest, row label) as the transitions package itself draws the table."""
    machine = GraphMachine(
        states=State,
        transitions=TRANSITIONS,
        initial=State.LOGGED_OUT,
        auto_transitions=False,
        graph_engine="mermaid",
        show_conditions=True,
    )
    edges = set()
    for line in machine.get_graph().source.splitlines():
        match = re.fullmatch(r"\s*(\w+) --> (\w+): (.*)", line)
        if match:
            source, dest, labels = match.groups()
            edges |= {(source, dest, label) for label in labels.split(" | ")}
    return edges


def expanded(edges: list[diagram.Edge]) -> set[tuple[str, str, str]]:
    every = [s.name for s in State]
    return {
        (source, edge.dest, label)
        for edge in edges
        for source in (every if edge.source == diagram.ANY_STATE else [edge.source])
        for label in edge.labels
    }


def svg_signature(svg: str) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """Each node and edge of a Graphviz SVG: class, title, tooltip and texts (no coordinates)."""
    ns = {"svg": "http://www.w3.org/2000/svg", "xlink": "http://www.w3.org/1999/xlink"}
    root = ET.fromstring(svg)  # noqa: S314  (our own Graphviz output, not untrusted input)
    found = []
    for group in root.iter(f"{{{ns['svg']}}}g"):
        kind = group.get("class")
        if kind not in ("node", "edge"):
            continue
        title = group.findtext("svg:title", default="", namespaces=ns)
        tooltips = [a.get(f"{{{ns['xlink']}}}title", "") for a in group.iter(f"{{{ns['svg']}}}a")]
        texts = tuple(t.text or "" for t in group.iter(f"{{{ns['svg']}}}text"))
        found.append((kind, title, tooltips[0] if tooltips else "", texts))
    return found


class TestLifecycleEdges:
    """The diagram's edges are exactly the table's rows."""

    def test_same_edges_as_the_transitions_package_draws(self):
        """Expanding "any state" gives the (source, dest, label) set GraphMachine draws."""
        assert transitions_edges() == expanded(diagram.lifecycle_edges())

    def test_rows_from_every_state_are_drawn_once(self):
        """login, logout and adopt apply in every state: one edge each from ANY_STATE."""
        from_any = {e.dest: e.labels for e in diagram.lifecycle_edges() if e.source == "ANY_STATE"}

        assert {
            "STALE": ("login [is_due]",),
            "FRESH": ("login",),
            "LOGGED_OUT": ("logout",),
            "RELOADED": ("adopt [differs_from_reference & is_compatible & !is_poisoned_in_store]",),
        } == from_any

    def test_guards_and_unless_are_on_the_edges(self):
        """Conditions are listed in brackets, unless-guards with a leading '!'."""
        labels = {label for e in diagram.lifecycle_edges() for label in e.labels}

        assert "expire [is_due]" in labels
        assert "begin_refresh [matches_reference & can_refresh & !is_backing_off]" in labels
        assert "retry_later [is_backing_off]" in labels

    def test_every_guard_of_the_table_is_shown(self):
        """No guard predicate is left off the diagram."""
        text = diagram.lifecycle_mermaid()

        assert set() == {name for name in GUARDS if name not in text}

    def test_row_label_handles_callables_and_single_values(self):
        """Guards given as functions or bare strings are named like the table's strings."""

        def is_fine(_facts: object) -> bool:
            return True

        row = {"trigger": "go", "source": "A", "dest": "B", "conditions": is_fine, "unless": "x"}

        assert "go [is_fine & !x]" == diagram.row_label(row)


class TestStateDocumentation:
    """Every state is named and explained in every format."""

    def test_every_state_has_a_meaning(self):
        """STATE_MEANINGS covers the enum (a new state must be documented)."""
        assert set(State) == set(diagram.STATE_MEANINGS)

    def test_docs_come_from_the_enum_comments(self):
        """state_docs() reads each member's #: comment, without reST markup."""
        docs = diagram.state_docs()

        assert set(docs) == {s.name for s in State}
        assert docs["FRESH"].startswith("Usable and not due for refresh")
        assert "``" not in "".join(docs.values())

    def test_mermaid_declares_each_state_with_its_meaning(self):
        """Each state keeps its name as the box title and its meaning as the description."""
        text = diagram.lifecycle_mermaid()
        for state in State:
            assert f'state "{state.name}" as {state.name}' in text
            assert f"{state.name} : {diagram.STATE_MEANINGS[state]}" in text

    def test_dot_has_a_tooltip_per_state(self):
        """The DOT source carries the #: documentation as each node's tooltip."""
        text = diagram.lifecycle_dot()
        for state in State:
            line = next(line for line in text.splitlines() if line.startswith(f"  {state.name} ["))
            assert "tooltip=" in line
            assert diagram.STATE_MEANINGS[state] in line

    def test_mermaid_avoids_what_mermaid_misreads(self):
        """No `Class` keyword (Mermaid ignores it) and no bare ';' (it ends a statement)."""
        text = diagram.lifecycle_mermaid()

        assert "Class " not in text
        assert all(";" not in line for line in text.splitlines() if not line.startswith("  %%"))


class TestCheckedInDiagrams:
    """diagrams/ holds what `authfsm diagram` generates now."""

    def test_mermaid_is_up_to_date(self):
        """diagrams/lifecycle.mmd equals a fresh rendering of the table."""
        assert diagram.lifecycle_mermaid() == (DIAGRAMS / "lifecycle.mmd").read_text(), REGENERATE

    def test_dot_is_up_to_date(self):
        """diagrams/lifecycle.dot equals a fresh rendering of the table."""
        assert diagram.lifecycle_dot() == (DIAGRAMS / "lifecycle.dot").read_text(), REGENERATE

    def test_svg_is_up_to_date(self, tmp_path):
        """A fresh `authfsm diagram --format svg` has the same nodes, edges, labels and tooltips
        (coordinates may differ between Graphviz versions and fonts)."""
        need_dot()
        fresh = tmp_path / "lifecycle.svg"

        done = run_cli("diagram", "--format", "svg", "--output", str(fresh))

        assert 0 == done.returncode, done.stderr
        checked_in = (DIAGRAMS / "lifecycle.svg").read_text()
        assert svg_signature(fresh.read_text()) == svg_signature(checked_in), REGENERATE
        assert len(State) + 2 == sum(1 for kind, *_ in svg_signature(checked_in) if kind == "node")

    def test_svg_rendering_is_deterministic(self):
        """Two renderings of the same DOT are byte-identical (so the checked-in file is stable)."""
        need_dot()
        source = diagram.lifecycle_dot()

        assert diagram.render_with_dot(source, "svg") == diagram.render_with_dot(source, "svg")

    def test_readme_embeds_the_current_diagram(self):
        """README.md shows the lifecycle as a Mermaid block, and it is diagrams/lifecycle.mmd."""
        blocks = re.findall(r"```mermaid\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
        assert (DIAGRAMS / "lifecycle.mmd").read_text() in blocks


class TestDiagramCommand:
    """`authfsm diagram` writes each format where it is told to."""

    def test_mermaid_to_stdout_by_default(self):
        """With no options it prints the Mermaid diagram."""
        done = run_cli("diagram")

        assert 0 == done.returncode, done.stderr
        assert diagram.lifecycle_mermaid() == done.stdout

    def test_format_follows_the_output_suffix(self, tmp_path):
        """-o x.dot writes DOT, -o x.mmd (or an unknown suffix) Mermaid, nothing on stdout."""
        cases = (("a.dot", diagram.lifecycle_dot()), ("a.mmd", None), ("a.txt", None))
        for name, expected in cases:
            target = tmp_path / name
            done = run_cli("diagram", "-o", str(target))
            assert 0 == done.returncode, done.stderr
            assert "" == done.stdout
            assert (expected or diagram.lifecycle_mermaid()) == target.read_text()

    def test_png_is_written(self, tmp_path):
        """--format png writes a PNG file through dot."""
        need_dot()
        target = tmp_path / "lifecycle.png"

        done = run_cli("diagram", "--format", "png", "-o", str(target))

        assert 0 == done.returncode, done.stderr
        assert target.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    def test_svg_without_graphviz_says_how_to_install_it(self, tmp_path):
        """No dot on PATH: exit 2 and an install hint, for svg and png alike."""
        env = {**os.environ, "PATH": str(tmp_path)}
        for fmt in ("svg", "png"):
            done = run_cli("diagram", "--format", fmt, "-o", str(tmp_path / "x"), env=env)
            assert 2 == done.returncode
            assert "apt-get install graphviz" in done.stderr
            assert not (tmp_path / "x").exists()


EVENTS = [
    {"event": "authfsm.transition", "from_state": "logged_out", "to_state": "reloaded",
     "trigger": "adopt", "reason": "startup", "fingerprint": "aaaa1111bbbb2222", "pid": 101,
     "timestamp": "2030-01-01T00:00:00.000001Z"},
    {"event": "authfsm.transition", "from_state": "reloaded", "to_state": "stale",
     "trigger": "expire", "reason": "due", "fingerprint": "aaaa1111bbbb2222", "pid": 202,
     "timestamp": "2030-01-01T00:00:00.000003Z"},
    {"event": "authfsm.refresh.call", "fingerprint": "aaaa1111bbbb2222", "pid": 101,
     "timestamp": "2030-01-01T00:00:00.000004Z"},
    {"event": "authfsm.refresh.succeeded", "fingerprint": "cccc3333dddd4444", "pid": 101,
     "timestamp": "2030-01-01T00:00:00.000005Z"},
    {"event": "authfsm.refresh.poisoned", "code": "invalid_grant", "pid": 202,
     "timestamp": "2030-01-01T00:00:00.000006Z"},
    {"event": "authfsm.refresh.refused", "reason": "account_mismatch", "pid": 202,
     "timestamp": "2030-01-01T00:00:00.000007Z"},
    {"event": "myapp.request", "pid": 101, "timestamp": "2030-01-01T00:00:00.000002Z"},
]  # fmt: skip


class TestTrace:
    """`authfsm diagram --trace` draws one run from structlog JSON lines."""

    def test_one_lane_per_process(self):
        """Each pid is a participant; transitions are notes over it; refreshes go to the IdP."""
        text = diagram.trace_mermaid(EVENTS)

        assert text.startswith("---\ntitle: authfsm run\n---\nsequenceDiagram\n")
        assert "  participant P1 as pid 101" in text
        assert "  participant P2 as pid 202" in text
        assert "  participant IDP as token endpoint" in text
        assert "  Note over P1: LOGGED_OUT → RELOADED<br/>adopt (startup), fp aaaa1111" in text
        assert "  P1->>IDP: refresh_token grant, fp aaaa1111" in text
        assert "  IDP-->>P1: rotated, new fp cccc3333" in text
        assert "  IDP--xP2: invalid_grant" in text
        assert "  Note over P2: refused: account_mismatch" in text

    def test_worker_number_labels_the_lane(self):
        """Events that carry the demo's worker number show it next to the pid."""
        event = {"event": "authfsm.refresh.call", "fingerprint": "ab", "pid": 7, "worker": 3}

        assert "  participant P1 as pid 7 (worker 3)" in diagram.trace_mermaid([event])

    def test_ordered_by_timestamp(self):
        """Events are sorted by their timestamps, whatever the file order."""
        text = diagram.trace_mermaid(list(reversed(EVENTS)))

        assert text.index("adopt (startup)") < text.index("expire (due)")
        assert "participant P1 as pid 101" in text

    def test_hostile_fields_cannot_break_the_diagram(self):
        """Newlines, ';' and '#' in event fields are neutralised."""
        event = {
            "event": "authfsm.transition",
            "from_state": "a\nsequenceDiagram",
            "to_state": "b;c#d",
            "trigger": "x<script>",
            "pid": "1\n2",
        }
        body = diagram.trace_mermaid([event]).split("sequenceDiagram\n", 1)[1]

        assert "sequenceDiagram" not in body.replace("A_SEQUENCEDIAGRAM", "")
        assert not set(";#<>") & set(body.replace("<br/>", ""))

    def test_no_events_still_renders(self):
        """A log without authfsm events gives a diagram that says so."""
        assert "no authfsm.* events" in diagram.trace_mermaid([])

    def test_command(self, tmp_path):
        """--trace reads a JSON lines file, skips non-JSON lines with a warning."""
        log = tmp_path / "events.jsonl"
        log.write_text("\n".join(json.dumps(e) for e in EVENTS) + "\nnot json\n\n")

        done = run_cli("diagram", "--trace", str(log))

        assert 0 == done.returncode, done.stderr
        assert "participant P2 as pid 202" in done.stdout
        assert "skipped 1 line" in done.stderr

    def test_command_refuses_other_formats_and_missing_files(self, tmp_path):
        """--trace with --format dot, or a file that is not there: usage errors (exit 2)."""
        log = tmp_path / "events.jsonl"
        log.write_text("")

        assert 2 == run_cli("diagram", "--trace", str(log), "--format", "dot").returncode
        assert 2 == run_cli("diagram", "--trace", str(tmp_path / "missing.jsonl")).returncode
