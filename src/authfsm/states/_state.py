"""
The states of a credential's life.

Rule 1: everything that decides a state lives in this package (the enum, the transition table,
the guard predicates). Rule 2: this package does no I/O and knows no store, endpoint or clock; it
imports nothing else of authfsm.
"""

from __future__ import annotations

import enum

__all__ = ["State"]


class State(enum.Enum):
    """The lifecycle state of one engine's cached credential. Values are the logged names."""

    #: No credential. Left by ``login``, or by ``adopt`` when another process logs in.
    LOGGED_OUT = "logged_out"
    #: Usable and not due for refresh; served with no I/O. Left by ``expire``, ``reject``,
    #: ``begin_refresh`` (explicit refresh), ``adopt``, ``poison`` (shared marker) or ``logout``.
    FRESH = "fresh"
    #: Due for refresh (past its refresh point, or rejected by a resource server); the old token
    #: is served until a refresh succeeds. Left by ``begin_refresh``, ``adopt``, ``poison``,
    #: ``login`` or ``logout``.
    STALE = "stale"
    #: This engine holds the store's lease and a token-endpoint call is in flight. Left by
    #: ``refreshed``, ``retry_later``, ``poison`` or ``adopt`` (a sibling rotated meanwhile).
    REFRESHING = "refreshing"
    #: Serving a credential this engine did not mint (another process refreshed or logged in).
    #: Left like FRESH.
    RELOADED = "reloaded"
    #: The credential failed permanently: no network call for it, no token in status. Left only
    #: by ``login``, ``logout`` or ``adopt`` of a different credential from the store.
    POISONED = "poisoned"
