"""
One engine's state machine: the table of :mod:`authfsm.states` run by ``transitions.Machine``.

The machine's callbacks are pure (guards judge :class:`~authfsm.states.Facts`); the only side
effect is the ``on_transition`` report the engine logs. Nothing here does I/O or locking: the
engine serialises calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from transitions import EventData, Machine

from ..states import GUARDS, TRANSITIONS, Facts, State
from ._errors import IllegalTransition

__all__ = ["Lifecycle", "Transition"]


@attrs.frozen(kw_only=True)
class Transition:
    """One transition that happened (for logs and tests)."""

    trigger: str
    source: State
    dest: State
    facts: Facts


def _guard(fn: Callable[[Facts], bool]) -> Callable[[EventData], bool]:
    def check(event: EventData) -> bool:
        facts: Facts = event.kwargs["facts"]
        return fn(facts)

    return check


def _names(guards: object) -> list[str]:
    # The table names its guards (strings), so diagrams can print them; nothing else is allowed.
    names = guards if isinstance(guards, list) else [] if guards is None else [guards]
    if not all(isinstance(name, str) and name in GUARDS for name in names):
        raise TypeError(f"table guards must be names from GUARDS, got {guards!r}")
    return list(names)


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
        for name, fn in GUARDS.items():
            setattr(self, name, _guard(fn))
        self._on_transition = on_transition
        self._machine = Machine(
            model=self,
            states=State,
            transitions=TRANSITIONS,
            initial=initial,
            auto_transitions=False,
            send_event=True,
            model_attribute="state",
            after_state_change=self._report,
        )
        self._allowed: dict[State, frozenset[str]] = {
            s: frozenset(self._machine.get_triggers(s)) for s in State
        }
        # The guards of every row per (state, trigger), to skip the machine when none can pass.
        self._rows: dict[tuple[State, str], list[tuple[list[str], list[str]]]] = {}
        for row in TRANSITIONS:
            source = row["source"]
            for state in source if isinstance(source, list) else [source]:
                assert isinstance(state, State)
                self._rows.setdefault((state, row["trigger"]), []).append(
                    (_names(row.get("conditions")), _names(row.get("unless")))
                )

    def allows(self, trigger: str) -> bool:
        """The table declares ``trigger`` for the current state (guards not consulted)."""
        return trigger in self._allowed[self.state]

    def fire(self, trigger: str, facts: Facts) -> bool:
        """Fire ``trigger``; True if a row's guards passed and the state moved (or re-entered)."""
        if not self.allows(trigger):
            raise IllegalTransition(trigger, self.state.name)
        result: Any = self._machine.events[trigger].trigger(self, facts=facts)
        return bool(result)

    def attempt(self, trigger: str, facts: Facts) -> bool:
        """
        Like :meth:`fire`, but an undeclared pair is just a refusal.

        The engine probes the store's news with several triggers in turn; most probes are
        refused, so the guards are checked here first (they are pure) and the machine is only
        run when a row can pass. The machine stays the judge of which row wins.
        """
        rows = self._rows.get((self.state, trigger))
        if not rows or not any(
            all(GUARDS[g](facts) for g in conditions) and not any(GUARDS[g](facts) for g in unless)
            for conditions, unless in rows
        ):
            return False
        return self.fire(trigger, facts)

    def _report(self, event: EventData) -> None:
        if self._on_transition is None or event.transition is None:
            return
        self._on_transition(
            Transition(
                trigger=event.event.name if event.event else "?",
                source=State[str(event.transition.source)],
                dest=State[str(event.transition.dest)],
                facts=event.kwargs["facts"],
            )
        )
