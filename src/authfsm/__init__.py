"""
authfsm: an explicit state machine for OAuth credentials shared by many processes.

One refresh per rotation fleet-wide, no refresh storms after a permanent failure, no adoption of
another user's credential, recovery judged against the rejected token.
"""

from __future__ import annotations

from .engine import (
    AccountMismatch,
    AsyncAuthEngine,
    AuthEngine,
    AuthError,
    AuthStatus,
    Credentials,
    EngineMisuse,
    Identity,
    IdentityClaims,
    IllegalTransition,
    InvalidCredentials,
    Kind,
    LeaseTimeout,
    Policy,
    ReauthRequired,
    RefreshFailed,
    StorageCorrupt,
    StorageUnavailable,
    StorageUnreplicated,
    WriteConflict,
)
from .states import TRANSITIONS, State

__version__ = "0.1.0"

__all__ = [
    "TRANSITIONS",
    "AccountMismatch",
    "AsyncAuthEngine",
    "AuthEngine",
    "AuthError",
    "AuthStatus",
    "Credentials",
    "EngineMisuse",
    "Identity",
    "IdentityClaims",
    "IllegalTransition",
    "InvalidCredentials",
    "Kind",
    "LeaseTimeout",
    "Policy",
    "ReauthRequired",
    "RefreshFailed",
    "State",
    "StorageCorrupt",
    "StorageUnavailable",
    "StorageUnreplicated",
    "WriteConflict",
    "__version__",
]
