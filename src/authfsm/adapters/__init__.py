"""
Adapters: the I/O the engine drives. Stores (memory, file, OS keyring, Redis; codecs for the
native and Codex file formats; encryption at rest with key rotation) and the OAuth token
endpoint (httpx).
"""

from __future__ import annotations

from ._endpoint import OAuthTokenEndpoint
from .storage import (
    AsyncRedisStore,
    CannotDecrypt,
    Codec,
    CodecError,
    CodexCodec,
    DataKey,
    EncryptedCodec,
    FileStore,
    KeyConfigurationError,
    KeyRing,
    KeyringStore,
    KeyUnavailable,
    MemoryStore,
    NativeCodec,
    RedisStore,
    Rotation,
    SealedHeader,
    arotate_key,
    generate_key,
    read_sealed_header,
    rotate_key,
)

__all__ = [
    "AsyncRedisStore",
    "CannotDecrypt",
    "Codec",
    "CodecError",
    "CodexCodec",
    "DataKey",
    "EncryptedCodec",
    "FileStore",
    "KeyConfigurationError",
    "KeyRing",
    "KeyUnavailable",
    "KeyringStore",
    "MemoryStore",
    "NativeCodec",
    "OAuthTokenEndpoint",
    "RedisStore",
    "Rotation",
    "SealedHeader",
    "arotate_key",
    "generate_key",
    "read_sealed_header",
    "rotate_key",
]
