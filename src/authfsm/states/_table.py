"""
The lifecycle as data: every transition any engine may take, one row each.

This constant is the single source for the runtime machine (``transitions.Machine``), the
diagrams, the docs and the tests. Rows for one trigger are tried in order and the first whose
guards pass wins, so guarded rows come before their fallbacks. A (state, trigger) pair with no row
is illegal: firing it raises an error that names both and leaves the state unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ._state import State

if TYPE_CHECKING:
    from transitions.core import TransitionConfigDict

__all__ = ["TRANSITIONS", "TRIGGERS"]

S = State
_SERVING = [S.FRESH, S.RELOADED]
_HOLDING = [S.FRESH, S.STALE, S.RELOADED]
_EVERY = list(State)

TRANSITIONS: Final[list[TransitionConfigDict]] = [
    # The application logs in or out. A login clears any poison; a due credential starts stale.
    {"trigger": "login", "source": _EVERY, "dest": S.STALE, "conditions": ["is_due"]},
    {"trigger": "login", "source": _EVERY, "dest": S.FRESH},
    {"trigger": "logout", "source": _EVERY, "dest": S.LOGGED_OUT},
    # The clock passes the refresh point.
    {"trigger": "expire", "source": _SERVING, "dest": S.STALE, "conditions": ["is_due"]},
    # A resource server answered 401 to the current access token.
    {"trigger": "reject", "source": _HOLDING, "dest": S.STALE},
    # The store names the candidate poisoned: stop, and never call the network for it.
    {
        "trigger": "poison",
        "source": [S.LOGGED_OUT, *_HOLDING, S.POISONED],
        "dest": S.POISONED,
        "conditions": ["is_poisoned_in_store", "is_compatible"],
    },
    # The store holds a different credential of a compatible identity: take it, no network.
    {
        "trigger": "adopt",
        "source": [S.LOGGED_OUT, *_HOLDING, S.REFRESHING, S.POISONED],
        "dest": S.RELOADED,
        "conditions": ["differs_from_reference", "is_compatible"],
        "unless": ["is_poisoned_in_store"],
    },
    # Another engine failed transiently moments ago: wait with it instead of stampeding.
    {
        "trigger": "retry_later",
        "source": S.STALE,
        "dest": S.STALE,
        "conditions": ["is_backing_off"],
    },
    # Under the lease the store still holds the credential judged stale: spend it.
    {
        "trigger": "begin_refresh",
        "source": _HOLDING,
        "dest": S.REFRESHING,
        "conditions": ["matches_reference", "can_refresh"],
        "unless": ["is_backing_off"],
    },
    # The endpoint minted a credential; one naming another identity is never adopted.
    {
        "trigger": "refreshed",
        "source": S.REFRESHING,
        "dest": S.FRESH,
        "conditions": ["is_compatible"],
    },
    {"trigger": "refreshed", "source": S.REFRESHING, "dest": S.STALE},
    # A transient failure: keep the old token, back off.
    {"trigger": "retry_later", "source": S.REFRESHING, "dest": S.STALE},
    # A permanent failure and the final re-read found no sibling rotation.
    {"trigger": "poison", "source": S.REFRESHING, "dest": S.POISONED},
]

#: Every trigger name, in the order the table first uses it.
TRIGGERS: Final[tuple[str, ...]] = tuple(dict.fromkeys(row["trigger"] for row in TRANSITIONS))
