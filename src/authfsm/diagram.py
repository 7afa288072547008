"""
Diagrams of the lifecycle, drawn from :data:`authfsm.states.TRANSITIONS`, and of one recorded run.

The lifecycle diagram is built from the table alone, so it cannot drift from the machine: every row
becomes an edge labelled ``trigger [guard & guard & !unless]``; rows whose source is every state
are drawn once, from an "any state" node; edges between the same two states share one label, in
table order. Each state carries its one-line meaning and (in DOT/SVG) its ``#:`` documentation as
a tooltip.

Outputs: Mermaid ``stateDiagram-v2`` and Graphviz DOT as text (no system tool needed), SVG and PNG
through Graphviz's ``dot`` executable. :func:`trace_mermaid` turns the JSON lines that structlog
writes for ``authfsm.*`` events into a Mermaid sequence diagram with one lane per process.

This module reads nothing and writes nothing; the only I/O is running ``dot`` for SVG/PNG.
"""

from __future__ import annotations

import enum
import inspect
import json
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import attrs

from .states import TRANSITIONS, State

__all__ = [
    "ANY_STATE",
    "STATE_MEANINGS",
    "DotNotFound",
    "Edge",
    "lifecycle_dot",
    "lifecycle_edges",
    "lifecycle_mermaid",
    "parse_events",
    "render_with_dot",
    "row_label",
    "state_docs",
    "trace_mermaid",
]

#: The name of the node that stands for "every state" (rows whose source is all of State).
ANY_STATE: Final = "ANY_STATE"
_START: Final = "[*]"
TITLE: Final = "authfsm credential lifecycle"

#: One line per state, shown inside its box (the full ``#:`` comment is the DOT tooltip).
STATE_MEANINGS: Final[Mapping[State, str]] = {
    State.LOGGED_OUT: "no credential",
    State.FRESH: "usable, not due, served with no I/O",
    State.STALE: "due or rejected, old token until refreshed",
    State.REFRESHING: "holds the lease, token call in flight",
    State.RELOADED: "adopted a credential a sibling wrote",
    State.POISONED: "failed for good, no network until login",
}

_LEGEND: Final = (
    "edge label: trigger [guards]; every guard must hold, !guard must not. "
    "Rows of one trigger are tried in table order."
)


class DotNotFound(RuntimeError):
    """Graphviz's ``dot`` is not installed; the message says how to install it."""

    def __init__(self) -> None:
        super().__init__(
            "Rendering SVG or PNG needs Graphviz's `dot` program, which was not found on PATH. "
            "Install Graphviz (Debian/Ubuntu: `sudo apt-get install graphviz`; macOS: "
            "`brew install graphviz`; Fedora: `sudo dnf install graphviz`), or use "
            "--format mermaid or --format dot, which need no system tool."
        )


@attrs.frozen(kw_only=True)
class Edge:
    """
    One arrow of the lifecycle diagram.

    Attributes:
        source: a state name, or :data:`ANY_STATE` for rows that apply in every state.
        dest: a state name.
        labels: ``trigger [guards]`` for each table row this arrow stands for, in table order.
    """

    source: str
    dest: str
    labels: tuple[str, ...]


# -- the table as edges --------------------------------------------------------------------------


def _state_name(value: object) -> str:
    if isinstance(value, enum.Enum):
        return value.name
    return str(value)


def _guard_name(guard: object) -> str:
    if isinstance(guard, str):
        return guard
    return str(getattr(guard, "__name__", guard))


def _as_list(value: object) -> list[object]:
    if value is None:
        return []
    if isinstance(value, str | enum.Enum) or not isinstance(value, Iterable):
        return [value]
    return list(value)


def row_label(row: Mapping[str, Any]) -> str:
    """``trigger [cond & cond & !unless]`` for one table row (the ``transitions`` notation)."""
    guards = [_guard_name(g) for g in _as_list(row.get("conditions"))]
    guards += ["!" + _guard_name(g) for g in _as_list(row.get("unless"))]
    trigger = str(row["trigger"])
    return f"{trigger} [{' & '.join(guards)}]" if guards else trigger


def lifecycle_edges(
    table: Sequence[Mapping[str, Any]] = TRANSITIONS,
    states: type[State] = State,
) -> list[Edge]:
    """
    The table as diagram edges, in table order.

    A row whose sources are every state becomes one edge from :data:`ANY_STATE`; ``dest="="``
    is the source itself and ``dest=None`` (an internal transition) is drawn as a self-loop.
    Rows between the same two nodes share one edge.
    """
    every = {s.name for s in states}
    grouped: dict[tuple[str, str], list[str]] = {}
    for row in table:
        raw_sources = row["source"]
        sources = (
            sorted(every) if raw_sources == "*" else [_state_name(s) for s in _as_list(raw_sources)]
        )
        label = row_label(row)
        if set(sources) == every and len(sources) > 1:
            sources = [ANY_STATE]
        for source in sources:
            dest = row.get("dest")
            dest_name = source if dest is None or dest == "=" else _state_name(dest)
            labels = grouped.setdefault((source, dest_name), [])
            if label not in labels:
                labels.append(label)
    return [Edge(source=s, dest=d, labels=tuple(ls)) for (s, d), ls in grouped.items()]


# -- state documentation -------------------------------------------------------------------------


def state_docs(states: type[enum.Enum] = State) -> dict[str, str]:
    """
    Each member's ``#:`` documentation comment, joined into one line (reST markup removed).

    Members without one (or when the source is not available) get ``STATE_MEANINGS`` or "".
    """
    docs: dict[str, str] = {}
    try:
        lines, _ = inspect.getsourcelines(states)
    except (OSError, TypeError):
        lines = []
    pending: list[str] = []
    member = re.compile(r"^\s*([A-Z][A-Z0-9_]*)\s*=")
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        match = member.match(line)
        if match and pending:
            docs[match.group(1)] = " ".join(pending).replace("``", "")
        if stripped:
            pending = []
    for state in states:
        if state.name not in docs:
            meaning = STATE_MEANINGS.get(state) if isinstance(state, State) else None
            docs[state.name] = meaning or ""
    return docs


# -- Mermaid -------------------------------------------------------------------------------------


def _mermaid_text(text: str) -> str:
    # Mermaid ends a label at ';' and starts an entity at '#'; its entity codes keep both.
    return text.replace("#", "#35;").replace(";", "#59;")


def lifecycle_mermaid(
    table: Sequence[Mapping[str, Any]] = TRANSITIONS,
    *,
    title: str = TITLE,
) -> str:
    """The lifecycle as a Mermaid ``stateDiagram-v2`` (renders in Mermaid 10 and later)."""
    edges = lifecycle_edges(table)
    out = [
        "---",
        f"title: {title}",
        "---",
        "stateDiagram-v2",
        "  %% Generated by `authfsm diagram --format mermaid` from authfsm.states.TRANSITIONS.",
        f"  %% {_LEGEND}",
        "  classDef anyState fill:none,stroke-dasharray:5 5",
        "  classDef poisoned fill:#fde0dc,stroke:#c0392b",
    ]
    if any(e.source == ANY_STATE for e in edges):
        out.append(f'  state "any state" as {ANY_STATE}')
    for state in State:
        # The explicit declaration keeps the name as the box's title above the description;
        # a bare `NAME : text` would replace the name with the text.
        out.append(f'  state "{state.name}" as {state.name}')
        out.append(f"  {state.name} : {_mermaid_text(STATE_MEANINGS[state])}")
    if any(e.source == ANY_STATE for e in edges):
        out.append(f"  class {ANY_STATE} anyState")
    out.append(f"  class {State.POISONED.name} poisoned")
    out.append(f"  {_START} --> {State.LOGGED_OUT.name}")
    for edge in edges:
        label = "<br/>".join(_mermaid_text(text) for text in edge.labels)
        out.append(f"  {edge.source} --> {edge.dest} : {label}")
    return "\n".join(out) + "\n"


# -- Graphviz ------------------------------------------------------------------------------------


def _dot_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def lifecycle_dot(
    table: Sequence[Mapping[str, Any]] = TRANSITIONS,
    *,
    title: str = TITLE,
) -> str:
    """The lifecycle as Graphviz DOT (state tooltips carry the enum's ``#:`` documentation)."""
    edges = lifecycle_edges(table)
    docs = state_docs(State)
    heading = _dot_string(f"{title}\n{_LEGEND}")
    out = [
        "// Generated by `authfsm diagram --format dot` from authfsm.states.TRANSITIONS.",
        "digraph authfsm_lifecycle {",
        f"  graph [label={heading}, labelloc=t, fontsize=16,",
        '         fontname="Helvetica", rankdir=TB, nodesep=0.6, ranksep=0.7];',
        '  node [shape=box, style="rounded,filled", fillcolor="#f4f6fb", color="#4a5a7a",',
        '        fontname="Helvetica", margin="0.2,0.08"];',
        '  edge [fontname="Helvetica", fontsize=10, color="#4a5a7a"];',
        '  start [shape=circle, style=filled, fillcolor=black, label="", width=0.2,',
        '         tooltip="initial state"];',
    ]
    if any(e.source == ANY_STATE for e in edges):
        out.append(
            f'  {ANY_STATE} [label="any state", style="rounded,dashed", fillcolor=white,'
            ' tooltip="rows that apply in every state"];'
        )
    for state in State:
        fill = ', fillcolor="#fde0dc", color="#c0392b"' if state is State.POISONED else ""
        label = (
            f'<<b>{state.name}</b><br/><font point-size="10">{_html(STATE_MEANINGS[state])}</font>>'
        )
        out.append(
            f"  {state.name} [label={label}, tooltip={_dot_string(docs[state.name])}{fill}];"
        )
    out.append(f"  start -> {State.LOGGED_OUT.name};")
    for edge in edges:
        # One guard a line keeps long guarded labels narrow.
        label = "\n".join(text.replace(" & ", "\n& ") for text in edge.labels)
        style = ", style=dashed" if edge.source == ANY_STATE else ""
        out.append(
            f"  {edge.source} -> {edge.dest} [label={_dot_string(label)},"
            f" tooltip={_dot_string(label)}{style}];"
        )
    out.append("}")
    return "\n".join(out) + "\n"


def render_with_dot(dot_source: str, fmt: str, *, timeout: float = 60.0) -> bytes:
    """
    Run Graphviz's ``dot -T<fmt>`` on ``dot_source`` and return what it printed.

    Raises :class:`DotNotFound` when ``dot`` is not installed, ``RuntimeError`` when it fails.
    """
    if fmt not in {"svg", "png"}:
        raise ValueError(f"dot renders svg or png here, not {fmt!r}")
    program = shutil.which("dot")
    if program is None:
        raise DotNotFound()
    done = subprocess.run(  # noqa: S603  (a fixed program and arguments, no shell)
        [program, f"-T{fmt}"],
        input=dot_source.encode(),
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        problem = done.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"dot -T{fmt} failed ({done.returncode}): {problem}")
    return done.stdout


# -- traces --------------------------------------------------------------------------------------

_SAFE = re.compile(r"[^A-Za-z0-9_ .,:()/+=@-]")


def _trace_text(value: object) -> str:
    # Event fields are data from a file: keep only characters Mermaid reads literally.
    return _SAFE.sub("_", str(value))[:80]


def _short(fingerprint: object) -> str:
    return _trace_text(fingerprint)[:8] if fingerprint else "-"


def _lane_of(event: Mapping[str, Any]) -> str:
    for key in ("pid", "process", "worker"):
        if event.get(key) is not None:
            return f"{key} {_trace_text(event[key])}"
    return "process"


def parse_events(lines: Iterable[str]) -> tuple[list[dict[str, Any]], int]:
    """The JSON objects among ``lines`` that are ``authfsm.*`` events, and how many lines were not
    JSON objects (blank lines are not counted)."""
    events: list[dict[str, Any]] = []
    bad = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if not isinstance(value, dict):
            bad += 1
            continue
        if str(value.get("event", "")).startswith("authfsm."):
            events.append(value)
    return events, bad


def trace_mermaid(events: Iterable[Mapping[str, Any]], *, title: str = "authfsm run") -> str:
    """
    One run as a Mermaid ``sequenceDiagram``: a lane per process (its ``pid`` field), a note for
    every ``authfsm.transition`` and arrows to and from the token endpoint for
    ``authfsm.refresh.*`` events. Events are ordered by their ``timestamp`` field when every event
    has one, else kept in file order. Fingerprints are shortened; no token is ever in an event.
    """
    ordered = list(events)
    if ordered and all(isinstance(e.get("timestamp"), str) for e in ordered):
        ordered.sort(key=lambda e: str(e["timestamp"]))
    lanes: dict[str, str] = {}
    labels: dict[str, str] = {}
    for event in ordered:
        lane = _lane_of(event)
        if lane not in lanes:
            lanes[lane] = f"P{len(lanes) + 1}"
            worker = event.get("worker")
            labels[lane] = lane + (
                f" (worker {_trace_text(worker)})" if worker is not None and "pid" in event else ""
            )
    idp = "IDP"
    body: list[str] = []
    uses_idp = False
    for event in ordered:
        lane = lanes[_lane_of(event)]
        name = str(event.get("event"))
        fp = _short(event.get("fingerprint"))
        if name == "authfsm.transition":
            source = _trace_text(str(event.get("from_state", "?")).upper())
            dest = _trace_text(str(event.get("to_state", "?")).upper())
            trigger = _trace_text(event.get("trigger", "?"))
            reason = _trace_text(event.get("reason") or "")
            why = f"{trigger} ({reason})" if reason else trigger
            body.append(f"  Note over {lane}: {source} → {dest}<br/>{why}, fp {fp}")
        elif name == "authfsm.refresh.call":
            uses_idp = True
            body.append(f"  {lane}->>{idp}: refresh_token grant, fp {fp}")
        elif name == "authfsm.refresh.succeeded":
            uses_idp = True
            body.append(f"  {idp}-->>{lane}: rotated, new fp {fp}")
        elif name in {"authfsm.refresh.poisoned", "authfsm.refresh.transient"}:
            uses_idp = True
            why = _trace_text(event.get("code") or event.get("reason") or "failed")
            body.append(f"  {idp}--x{lane}: {why}")
        elif name == "authfsm.refresh.refused":
            body.append(f"  Note over {lane}: refused: {_trace_text(event.get('reason', '?'))}")
    out = ["---", f"title: {_trace_text(title)}", "---", "sequenceDiagram"]
    for lane_name, alias in lanes.items():
        out.append(f"  participant {alias} as {labels[lane_name]}")
    if uses_idp:
        out.append(f"  participant {idp} as token endpoint")
    if not body:
        out.append("  participant P0 as no authfsm events")
        out.append("  Note over P0: the log holds no authfsm.* events")
    out.extend(body)
    return "\n".join(out) + "\n"
