"""
One engine's state machine: the table of :mod:`authfsm.states`, compiled by ``transitions.Machine``.

The machine's guards are pure (they judge :class:`~authfsm.states.Facts`); the only side effect
is the ``on_transition`` report the engine logs. Nothing here does I/O or locking: the engine
serialises calls.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import attrs
from transitions import Machine
from transitions.core import Transition as MachineTransition

from ..states import GUARDS, TRANSITIONS, Facts, State
from ._errors import IllegalTransition

__all__ = ["Lifecycle", "Transition"]

#: One row of the machine for one (state, trigger): its guards (with whether each must pass) and
#: its destination.
_Row = tuple[tuple[tuple[Callable[[Facts], bool], bool], ...], State]


@attrs.frozen(kw_only=True)
class Transition:
    """One transition that happened (for logs and tests)."""

    trigger: str
    source: State
    dest: State
    facts: Facts


def _compiled(row: MachineTransition) -> _Row:
    """One row as the machine holds it: its guards (by function) and its destination."""
    guards = tuple(
        (GUARDS[name], bool(condition.target))
        for condition in row.conditions
        for name in _names(condition.func)
    )
    if row.dest is None:
        raise TypeError("table rows must name a destination (no internal transitions)")
    return guards, State[row.dest]


def _names(guards: object) -> list[str]:
    # The table names its guards (strings), so diagrams can print them; nothing else is allowed.
    names = guards if isinstance(guards, list) else [] if guards is None else [guards]
    if not all(isinstance(name, str) and name in GUARDS for name in names):
        raise TypeError(f"table guards must be names from GUARDS, got {guards!r}")
    return list(names)


@functools.cache
def _machine_rows() -> dict[tuple[State, str], tuple[_Row, ...]]:
    """
    What ``transitions.Machine`` compiles from the table, per (state, trigger): its rows in
    order, each with its guards (the function, and True for a condition, False for an unless)
    and its destination. The table is one constant, so it is compiled once per process.
    """
    machine = Machine(
        model=None,
        states=State,
        transitions=TRANSITIONS,
        initial=State.LOGGED_OUT,
        auto_transitions=False,
    )
    return {
        (State[source], trigger): tuple(_compiled(row) for row in rows)
        for trigger, event in machine.events.items()
        for source, rows in event.transitions.items()
    }


class Lifecycle:
    """
    Holds the current :class:`State` and fires triggers.

    ``fire`` raises :class:`IllegalTransition` for a pair the table does not declare; ``attempt``
    returns False instead. Both return False, with the state unchanged, when every row's guards
    refuse.
    """

    state: State

    def __init__(
        self,
        initial: State = State.LOGGED_OUT,
        on_transition: Callable[[Transition], None] | None = None,
    ) -> None:
        self.state = initial
        self._on_transition = on_transition
        self._rows = _machine_rows()

    def allows(self, trigger: str) -> bool:
        """The table declares ``trigger`` for the current state (guards not consulted)."""
        return (self.state, trigger) in self._rows

    def fire(self, trigger: str, facts: Facts) -> bool:
        """Fire ``trigger``; True if a row's guards passed and the state moved (or re-entered)."""
        rows = self._rows.get((self.state, trigger))
        if rows is None:
            raise IllegalTransition(trigger, self.state.name)
        return self._run(trigger, rows, facts)

    def attempt(self, trigger: str, facts: Facts) -> bool:
        """
        Like :meth:`fire`, but an undeclared pair is just a refusal.

        The engine probes the store's news with several triggers in turn; most are refused.
        """
        rows = self._rows.get((self.state, trigger))
        return rows is not None and self._run(trigger, rows, facts)

    def _run(self, trigger: str, rows: tuple[_Row, ...], facts: Facts) -> bool:
        """
        The machine's rule, on the machine's rows: the first row whose conditions all pass and
        whose unless-guards all fail wins; its destination becomes the state (a row back to the
        same state counts, and is reported), and the transition is reported. Run here rather
        than through ``Machine`` events: with no callbacks besides the report, the machine's
        event objects and callback lookups were most of what a follower of a refresh spent to
        adopt a sibling's write (tests/test_states.py checks both agree on every pair).
        """
        source = self.state
        for guards, dest in rows:
            if all(guard(facts) is wanted for guard, wanted in guards):
                self.state = dest
                if self._on_transition is not None:
                    self._on_transition(
                        Transition(trigger=trigger, source=source, dest=dest, facts=facts)
                    )
                return True
        return False
