"""
Test doubles for authfsm and for the applications that embed it.

:class:`TokenServer` is a strict OAuth token endpoint on 127.0.0.1 (rotation, reuse detection,
revocation, scripted failures); :class:`FakeClock` is a clock that moves only when told. Both are
meant for your own integration tests as much as for ours.
"""

from __future__ import annotations

from ._clock import FakeClock
from ._token_server import Call, ScriptedResponse, TokenServer

__all__ = ["Call", "FakeClock", "ScriptedResponse", "TokenServer"]
