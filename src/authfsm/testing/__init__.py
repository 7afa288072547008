"""
Test doubles and test kits for authfsm and for the applications that embed it.

:class:`TokenServer` is a strict OAuth token endpoint on 127.0.0.1 (rotation, reuse detection,
revocation, scripted failures) and an OpenID provider to log in to (discovery, authorization code
with PKCE, device flow, signed id_tokens and their JWK set, each with knobs to break it);
:class:`FakeClock` is a clock that moves only when told;
:func:`check_store` / :class:`StoreContract` run the store contract (a Hypothesis differential
state machine) against any store. All are meant for your own tests as much as for ours.
"""

from __future__ import annotations

from ._clock import FakeClock
from ._device_flow import DeviceAuthorization
from ._login_endpoints import ScriptedRedirect
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
    "DeviceAuthorization",
    "FakeClock",
    "ReferenceStore",
    "ScriptedRedirect",
    "ScriptedResponse",
    "StoreContract",
    "TokenServer",
    "check_async_store",
    "check_store",
    "store_machine",
]
