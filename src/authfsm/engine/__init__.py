"""
The decision core and the engine that drives it.

Values (``Credentials``, ``Record``, ``Policy``), the pure decision functions, the lifecycle
runner and :class:`AuthEngine`, the imperative shell.
"""

from __future__ import annotations

from ._async import AsyncAuthEngine, BlockingStoreInLoop
from ._core import minted, observe
from ._credentials import Credentials, Kind, decode_jwt_claims, fingerprint
from ._errors import (
    AccountMismatch,
    AuthError,
    EngineMisuse,
    IllegalTransition,
    InvalidCredentials,
    LeaseTimeout,
    ReauthRequired,
    RefreshFailed,
    StorageCorrupt,
    StorageUnavailable,
    StorageUnreplicated,
    WriteConflict,
)
from ._identity import Identity, IdentityClaims, identity_of, is_compatible
from ._lifecycle import Lifecycle, Transition
from ._policy import Policy, backoff_delay, refresh_point
from ._ports import (
    PERMANENT_ERROR_CODES,
    PermanentFailure,
    Refreshed,
    RefreshOutcome,
    Released,
    ReleaseWatch,
    Store,
    TokenEndpoint,
    TransientFailure,
)
from ._ports_async import AsyncReleaseWatch, AsyncStore, AsyncTokenEndpoint
from ._record import Backoff, Poison, Record
from ._status import AuthStatus
from ._sync import AuthEngine

__all__ = [
    "PERMANENT_ERROR_CODES",
    "AccountMismatch",
    "AsyncAuthEngine",
    "AsyncReleaseWatch",
    "AsyncStore",
    "AsyncTokenEndpoint",
    "AuthEngine",
    "AuthError",
    "AuthStatus",
    "Backoff",
    "BlockingStoreInLoop",
    "Credentials",
    "EngineMisuse",
    "Identity",
    "IdentityClaims",
    "IllegalTransition",
    "InvalidCredentials",
    "Kind",
    "LeaseTimeout",
    "Lifecycle",
    "PermanentFailure",
    "Poison",
    "Policy",
    "ReauthRequired",
    "Record",
    "RefreshFailed",
    "RefreshOutcome",
    "Refreshed",
    "ReleaseWatch",
    "Released",
    "StorageCorrupt",
    "StorageUnavailable",
    "StorageUnreplicated",
    "Store",
    "TokenEndpoint",
    "TransientFailure",
    "Transition",
    "WriteConflict",
    "backoff_delay",
    "decode_jwt_claims",
    "fingerprint",
    "identity_of",
    "is_compatible",
    "minted",
    "observe",
    "refresh_point",
]
