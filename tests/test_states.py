"""The lifecycle table: well-formed, total, and run faithfully by the Lifecycle."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from transitions import Machine

from authfsm import IllegalTransition
from authfsm.engine import Lifecycle
from authfsm.states import GUARDS, TRANSITIONS, TRIGGERS, Facts, State


def declared(state: State, trigger: str) -> list[dict]:
    rows = []
    for row in TRANSITIONS:
        sources = row["source"] if isinstance(row["source"], list) else [row["source"]]
        if row["trigger"] == trigger and state in sources:
            rows.append(row)
    return rows


def passes(row: dict, facts: Facts) -> bool:
    conditions = row.get("conditions", [])
    unless = row.get("unless", [])
    return all(GUARDS[g](facts) for g in conditions) and not any(GUARDS[g](facts) for g in unless)


facts_strategy = st.builds(
    Facts,
    now=st.floats(0, 10, allow_nan=False),
    reference=st.sampled_from([None, "a", "b"]),
    candidate=st.sampled_from([None, "a", "b"]),
    due_at=st.one_of(st.just(math.inf), st.floats(0, 10, allow_nan=False)),
    compatible=st.booleans(),
    poisoned=st.sampled_from([None, "a", "b"]),
    backoff_until=st.one_of(st.none(), st.floats(0, 10, allow_nan=False)),
    refreshable=st.booleans(),
)


class TestTable:
    """The table is data the machine, the diagrams and the tests share."""

    def test_every_row_names_known_guards_states_and_triggers(self):
        """Rows use only declared guards and State members."""
        for row in TRANSITIONS:
            assert set(row.get("conditions", [])) | set(row.get("unless", [])) <= set(GUARDS)
            sources = row["source"] if isinstance(row["source"], list) else [row["source"]]
            assert all(isinstance(s, State) for s in sources)
            assert isinstance(row["dest"], State)

    def test_every_state_is_reachable_and_left(self):
        """Every state is the destination of some row and the source of some row."""
        dests = {row["dest"] for row in TRANSITIONS}
        sources = set()
        for row in TRANSITIONS:
            sources |= set(row["source"] if isinstance(row["source"], list) else [row["source"]])
        assert set(State) == dests
        assert set(State) == sources

    def test_poisoned_is_left_only_by_login_logout_or_adopt(self):
        """Only a login, a logout, or a different credential leave POISONED."""
        leaving = {
            row["trigger"]
            for row in TRANSITIONS
            if State.POISONED in (row["source"] if isinstance(row["source"], list) else [])
            and row["dest"] is not State.POISONED
        }
        assert {"login", "logout", "adopt"} == leaving

    def test_guarded_rows_come_before_their_fallbacks(self):
        """For one (state, trigger), an unguarded row is always the last one."""
        for state in State:
            for trigger in TRIGGERS:
                rows = declared(state, trigger)
                for row in rows[:-1]:
                    assert row.get("conditions") or row.get("unless"), (state, trigger)

    def test_triggers_are_named_for_what_happened(self):
        """The trigger vocabulary of DESIGN §2."""
        assert {
            "login",
            "logout",
            "expire",
            "reject",
            "poison",
            "adopt",
            "retry_later",
            "begin_refresh",
            "refreshed",
        } == set(TRIGGERS)


class TestLifecycle:
    """The Lifecycle runs the table: declared rows move, everything else is refused."""

    @given(state=st.sampled_from(State), trigger=st.sampled_from(TRIGGERS), facts=facts_strategy)
    def test_total(self, state, trigger, facts):
        """Every (state, trigger) pair is declared (first passing row wins) or refused in place."""
        seen = []
        life = Lifecycle(state, on_transition=seen.append)
        rows = declared(state, trigger)

        if not rows:
            with pytest.raises(IllegalTransition) as caught:
                life.fire(trigger, facts)
            assert state == life.state
            assert trigger in str(caught.value)
            assert state.name in str(caught.value)
            assert not life.attempt(trigger, facts)
            assert [] == seen
            return

        winner = next((row for row in rows if passes(row, facts)), None)
        moved = life.fire(trigger, facts)
        if winner is None:
            assert (False, state, []) == (moved, life.state, seen)
        else:
            assert (True, winner["dest"]) == (moved, life.state)
            assert [(trigger, state, winner["dest"])] == [
                (t.trigger, t.source, t.dest) for t in seen
            ]

    @given(state=st.sampled_from(State), trigger=st.sampled_from(TRIGGERS), facts=facts_strategy)
    def test_agrees_with_the_transitions_machine(self, state, trigger, facts):
        """
        The Lifecycle runs the rows the machine compiled itself (it is faster than the machine's
        events): on every pair and any facts, ``transitions.Machine`` firing the same table on
        its own model moves to the same state, or refuses the same way.
        """

        class Model:
            state: State

        model = Model()
        for name, guard in GUARDS.items():
            setattr(model, name, lambda event, guard=guard: guard(event.kwargs["facts"]))
        machine = Machine(
            model=model,
            states=State,
            transitions=TRANSITIONS,
            initial=state,
            auto_transitions=False,
            send_event=True,
        )
        seen = []
        life = Lifecycle(state, on_transition=seen.append)

        if trigger not in machine.get_triggers(state):
            with pytest.raises(IllegalTransition):
                life.fire(trigger, facts)
            return
        expected = machine.events[trigger].trigger(model, facts=facts)
        assert (expected, model.state) == (life.fire(trigger, facts), life.state)
        assert ([(trigger, state, model.state)] if expected else []) == [
            (t.trigger, t.source, t.dest) for t in seen
        ]

    def test_illegal_trigger_names_both(self):
        """An illegal pair raises an error naming the trigger and the state."""
        life = Lifecycle(State.LOGGED_OUT)

        with pytest.raises(IllegalTransition, match=r"'refreshed'.*LOGGED_OUT"):
            life.fire("refreshed", Facts(now=0))
        assert State.LOGGED_OUT == life.state

    def test_refresh_cycle(self):
        """login, expire, begin_refresh, refreshed: the happy path, state by state."""
        life = Lifecycle()
        assert life.fire("login", Facts(now=0, due_at=10))
        assert State.FRESH == life.state
        assert not life.fire("expire", Facts(now=5, due_at=10))
        assert State.FRESH == life.state
        assert life.fire("expire", Facts(now=10, due_at=10))
        assert State.STALE == life.state
        assert life.fire("begin_refresh", Facts(now=10, reference="a", candidate="a"))
        assert State.REFRESHING == life.state
        assert life.fire("refreshed", Facts(now=10, reference="a", candidate="b"))
        assert State.FRESH == life.state

    def test_poisoned_candidate_is_never_adopted(self):
        """adopt refuses a candidate the store names poisoned; poison takes it instead."""
        facts = Facts(now=0, reference="a", candidate="b", poisoned="b")
        life = Lifecycle(State.STALE)

        assert not life.fire("adopt", facts)
        assert life.fire("poison", facts)
        assert State.POISONED == life.state

    def test_incompatible_candidate_is_refused(self):
        """Neither adopt nor begin_refresh accepts another identity's credential."""
        facts = Facts(now=0, reference="a", candidate="b", compatible=False)
        life = Lifecycle(State.STALE)

        assert (False, False) == (life.fire("adopt", facts), life.fire("begin_refresh", facts))
        assert State.STALE == life.state


class TestGuards:
    """Guards are pure functions of Facts."""

    @pytest.mark.parametrize(
        ("guard", "facts", "expected"),
        [
            ("is_due", Facts(now=5, due_at=5), True),
            ("is_due", Facts(now=4.9, due_at=5), False),
            ("is_due", Facts(now=1e12), False),
            ("differs_from_reference", Facts(now=0, reference="a", candidate="b"), True),
            ("differs_from_reference", Facts(now=0, reference="a", candidate="a"), False),
            ("differs_from_reference", Facts(now=0, reference="a", candidate=None), False),
            ("differs_from_reference", Facts(now=0, reference=None, candidate="a"), True),
            ("matches_reference", Facts(now=0, reference="a", candidate="a"), True),
            ("matches_reference", Facts(now=0, reference=None, candidate=None), False),
            ("is_poisoned_in_store", Facts(now=0, candidate="a", poisoned="a"), True),
            ("is_poisoned_in_store", Facts(now=0, candidate="a", poisoned="b"), False),
            ("is_backing_off", Facts(now=1, backoff_until=2), True),
            ("is_backing_off", Facts(now=2, backoff_until=2), False),
            ("is_backing_off", Facts(now=2), False),
            ("can_refresh", Facts(now=0, refreshable=False), False),
            ("is_compatible", Facts(now=0, compatible=False), False),
        ],
    )
    def test_guard(self, guard, facts, expected):
        """Each guard's truth table."""
        assert expected == GUARDS[guard](facts)
