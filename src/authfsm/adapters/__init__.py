"""
Adapters: the I/O the engine drives. Stores (memory, file) and the OAuth token endpoint (httpx).
"""

from __future__ import annotations

from ._endpoint import OAuthTokenEndpoint
from .storage import Codec, CodecError, FileStore, MemoryStore, NativeCodec

__all__ = ["Codec", "CodecError", "FileStore", "MemoryStore", "NativeCodec", "OAuthTokenEndpoint"]
