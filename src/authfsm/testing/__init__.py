"""
Test doubles and test kits for authfsm and for the applications that embed it.

:class:`TokenServer` is a strict OAuth token endpoint on 127.0.0.1 (rotation, reuse detection,
revocation, scripted failures); :class:`FakeClock` is a clock that moves only when told;
:func:`check_store` / :class:`StoreContract` run the store contract (a Hypothesis differential
state machine) against any store. All are meant for your own tests as much as for ours.
"""

from __future__ import annotations

from ._clock import FakeClock
from ._store_kit import (
    AsyncStoreInThread,
    ContractViolation,
    ReferenceStore,
    StoreContract,
    check_async_store,
    check_store,
    store_machine,
)
from ._token_server import Call, ScriptedResponse, TokenServer

__all__ = [
    "AsyncStoreInThread",
    "Call",
    "ContractViolation",
    "FakeClock",
    "ReferenceStore",
    "ScriptedResponse",
    "StoreContract",
    "TokenServer",
    "check_async_store",
    "check_store",
    "store_machine",
]
