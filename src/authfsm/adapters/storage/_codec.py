"""
File formats for a :class:`~authfsm.engine.Record`.

A codec turns a record into bytes and back. Decoding is strict: anything that is not exactly a
record raises :class:`CodecError` with a description of the problem that names fields and types,
never values (the values may be secrets).
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any, Protocol

from ...engine import Backoff, Credentials, InvalidCredentials, Kind, Poison, Record

__all__ = ["Codec", "CodecError", "NativeCodec"]


class CodecError(ValueError):
    """The bytes are not a record in this codec's format (the message holds no secret)."""


class Codec(Protocol):
    """
    Turns a record into bytes and back.

    ``encode`` is given the bytes it replaces (``previous``, None when there are none), so a
    format shared with another program can keep that program's fields; a codec that owns its
    whole format ignores them. ``encode`` raises ``InvalidCredentials`` for a record the format
    cannot hold; ``decode`` raises :class:`CodecError`.

    A codec may also set ``settle_time`` (seconds): when the file fails to decode,
    :class:`~authfsm.adapters.FileStore` waits up to that long for it to change before calling it
    corrupt, for formats that other programs rewrite in place rather than atomically.
    """

    def encode(self, record: Record, previous: bytes | None = None) -> bytes: ...

    def decode(self, data: bytes) -> Record: ...


def _get(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], *, optional: bool) -> Any:
    value = obj.get(key)
    if value is None:
        if optional:
            return None
        raise CodecError(f"field {key!r} is missing")
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise CodecError(f"field {key!r} must be {_name(kind)}, not bool")
    if not isinstance(value, kind):
        raise CodecError(f"field {key!r} must be {_name(kind)}, not {type(value).__name__}")
    return value


def _name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _time(obj: dict[str, Any], key: str) -> datetime | None:
    raw = _get(obj, key, str, optional=True)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise CodecError(f"field {key!r} is not an ISO 8601 timestamp") from None
    if value.tzinfo is None:
        raise CodecError(f"field {key!r} has no time zone")
    return value


def _float(obj: dict[str, Any], key: str) -> float:
    try:
        value = float(_get(obj, key, (int, float), optional=False))
    except OverflowError:
        raise CodecError(f"field {key!r} must be finite") from None
    if not math.isfinite(value):
        raise CodecError(f"field {key!r} must be finite")
    return value


def credential_to_json(cred: Credentials) -> dict[str, Any]:
    return {
        "kind": cred.kind.value,
        "access_token": cred.access_token,
        "refresh_token": cred.refresh_token,
        "id_token": cred.id_token,
        "expires_at": cred.expires_at.isoformat() if cred.expires_at else None,
        "account_id": cred.account_id,
        "last_refresh": cred.last_refresh.isoformat() if cred.last_refresh else None,
        **({"issuer": cred.issuer} if cred.issuer else {}),
        **({"client_id": cred.client_id} if cred.client_id else {}),
        **({"identity_verified": True} if cred.identity_verified else {}),
    }


def credential_from_json(obj: Any) -> Credentials:
    if not isinstance(obj, dict):
        raise CodecError(f"credential must be an object, not {type(obj).__name__}")
    kind_raw = _get(obj, "kind", str, optional=True) or Kind.OAUTH.value
    try:
        kind = Kind(kind_raw)
    except ValueError:
        raise CodecError("field 'kind' must be 'oauth' or 'api_key'") from None
    try:
        return Credentials(
            kind=kind,
            access_token=_get(obj, "access_token", str, optional=False),
            refresh_token=_get(obj, "refresh_token", str, optional=True),
            id_token=_get(obj, "id_token", str, optional=True),
            expires_at=_time(obj, "expires_at"),
            account_id=_get(obj, "account_id", str, optional=True),
            last_refresh=_time(obj, "last_refresh"),
            issuer=_get(obj, "issuer", str, optional=True),
            client_id=_get(obj, "client_id", str, optional=True),
            identity_verified=_get(obj, "identity_verified", bool, optional=True) or False,
        )
    except InvalidCredentials as error:
        raise CodecError(str(error)) from None


def poison_to_json(poison: Poison) -> dict[str, Any]:
    return {"fingerprint": poison.fingerprint, "reason": poison.reason, "at": poison.at}


def poison_from_json(obj: Any) -> Poison | None:
    if obj is None:
        return None
    if not isinstance(obj, dict):
        raise CodecError("'poison' must be an object")
    return Poison(
        fingerprint=_get(obj, "fingerprint", str, optional=False),
        reason=_get(obj, "reason", str, optional=False),
        at=_float(obj, "at"),
    )


def backoff_to_json(backoff: Backoff) -> dict[str, Any]:
    return {
        "fingerprint": backoff.fingerprint,
        "not_before": backoff.not_before,
        "failures": backoff.failures,
    }


def backoff_from_json(obj: Any) -> Backoff | None:
    if obj is None:
        return None
    if not isinstance(obj, dict):
        raise CodecError("'backoff' must be an object")
    return Backoff(
        fingerprint=_get(obj, "fingerprint", str, optional=False),
        not_before=_float(obj, "not_before"),
        failures=_get(obj, "failures", int, optional=False),
    )


class NativeCodec:
    """
    authfsm's own JSON format: the credential, the revision and the shared markers.

    ``{"format": "authfsm/1", "revision": 3, "credential": {...} | null, "poison": {...} | null,
    "backoff": {...} | null}``
    """

    FORMAT = "authfsm/1"

    def encode(self, record: Record, previous: bytes | None = None) -> bytes:
        # The whole file is ours: nothing of the previous one is kept.
        doc: dict[str, Any] = {
            "format": self.FORMAT,
            "revision": record.revision,
            "credential": credential_to_json(record.credential) if record.credential else None,
            "poison": None,
            "backoff": None,
        }
        if record.poison is not None:
            doc["poison"] = poison_to_json(record.poison)
        if record.backoff is not None:
            doc["backoff"] = backoff_to_json(record.backoff)
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    def decode(self, data: bytes) -> Record:
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, ValueError, RecursionError) as error:
            raise CodecError(f"not valid JSON ({type(error).__name__})") from None
        if not isinstance(doc, dict):
            raise CodecError(f"top level must be an object, not {type(doc).__name__}")
        if doc.get("format") != self.FORMAT:
            if doc.get("format") == "authfsm-sealed/1":
                raise CodecError("it is encrypted: open it with its key (EncryptedCodec)")
            raise CodecError(f"'format' must be {self.FORMAT!r}")
        revision = _get(doc, "revision", int, optional=False)
        if revision < 0:
            raise CodecError("'revision' must not be negative")
        raw_cred = doc.get("credential")
        credential = credential_from_json(raw_cred) if raw_cred is not None else None
        return Record(
            credential=credential,
            revision=revision,
            poison=poison_from_json(doc.get("poison")),
            backoff=backoff_from_json(doc.get("backoff")),
        )
