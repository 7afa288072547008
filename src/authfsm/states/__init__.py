"""
The lifecycle of a shared credential, declared as data.

Rule 1: everything that decides a state lives here: :class:`State`, the :data:`TRANSITIONS`
table and the guard predicates. Rule 2: nothing here does I/O or imports the rest of authfsm; the
engine observes the world and feeds what it saw in as triggers with :class:`Facts`.
"""

from __future__ import annotations

from ._guards import (
    GUARDS,
    Facts,
    can_refresh,
    differs_from_reference,
    is_backing_off,
    is_compatible,
    is_due,
    is_poisoned_in_store,
    matches_reference,
)
from ._state import State
from ._table import TRANSITIONS, TRIGGERS

__all__ = [
    "GUARDS",
    "TRANSITIONS",
    "TRIGGERS",
    "Facts",
    "State",
    "can_refresh",
    "differs_from_reference",
    "is_backing_off",
    "is_compatible",
    "is_due",
    "is_poisoned_in_store",
    "matches_reference",
]
