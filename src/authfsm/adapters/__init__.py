"""
Adapters: the I/O the engine drives. Stores (memory, file, OS keyring; codecs for the native and
Codex file formats) and the OAuth token endpoint (httpx).
"""

from __future__ import annotations

from ._endpoint import OAuthTokenEndpoint
from .storage import (
    Codec,
    CodecError,
    CodexCodec,
    FileStore,
    KeyringStore,
    MemoryStore,
    NativeCodec,
)

__all__ = [
    "Codec",
    "CodecError",
    "CodexCodec",
    "FileStore",
    "KeyringStore",
    "MemoryStore",
    "NativeCodec",
    "OAuthTokenEndpoint",
]
