"""
Codex's ``auth.json`` as a file format, so a Python tool and the Codex CLI share one login.

Use it with :class:`~authfsm.adapters.FileStore` and :meth:`authfsm.Policy.codex` (whose identity
claims are Codex's)::

    FileStore("~/.codex/auth.json", codec=CodexCodec())

What the file holds
    Codex (``codex-rs/login``, ``AuthDotJson``) writes::

        {"auth_mode": "chatgpt", "OPENAI_API_KEY": null,
         "tokens": {"id_token": "<JWT>", "access_token": "...", "refresh_token": "...",
                    "account_id": "..." | null},
         "last_refresh": "2026-05-01T12:34:56.123456Z"}

    ``tokens`` become an OAuth :class:`~authfsm.Credentials` (``account_id`` as written: when it
    is null the engine's :class:`~authfsm.engine.IdentityClaims` find the account in the
    id_token's ``https://api.openai.com/auth`` claims); an API-key login (``auth_mode`` "apikey",
    or no ``auth_mode`` and a non-null ``OPENAI_API_KEY``) becomes ``Credentials.api_key``; a file
    with neither holds no credential (logged out).

What a rewrite keeps
    authfsm changes only the credential's fields, as Codex's own refresh does: ``tokens``'
    four fields, ``last_refresh`` (written as Codex writes it: RFC 3339 in UTC with ``Z``; an
    unchanged instant keeps its text) and, when the kind of login changes, ``auth_mode``. Every
    other field, at the top level or inside ``tokens`` (newer Codex versions', other tools'),
    is written back as it was read, in its place. A logout removes every login Codex knows
    (tokens, API key, agent identity, personal access token, Bedrock key) and leaves
    ``{"OPENAI_API_KEY": null, ...}``, the document Codex writes for "no credentials", instead of
    deleting the file: the revision must survive a logout (see below).

authfsm's own state
    The revision, the shared poison and backoff markers, and the access token's ``expires_at``
    (Codex has no field for it; it is tied to the credential's fingerprint, so it lapses with a
    new token) live in one extra top-level field, ``"authfsm"``. Codex ignores unknown fields
    and drops them when it rewrites the file, which it does on every login and refresh.

The revision, and why compare-and-swap still holds
    A write that expects revision *r* must be refused whenever the file is no longer the one
    read as *r*, whoever changed it. authfsm's writes count (*r*, *r* + 1, ...) and store the
    count in ``authfsm.revision`` next to ``authfsm.digest``, a hash of the whole document as
    written (the digest itself left out). When the file is read back:

    - the digest matches: nobody has changed the file since authfsm wrote it, and its revision
      is the stored count;
    - the ``authfsm`` field is gone (Codex rewrote the file) or the digest does not match
      (someone changed it and kept the field): the file is *foreign*, and its revision is
      2**52 plus a 52-bit hash of the whole document.

    A foreign revision is derived from the content, so it differs from the revision of any
    other content (but for a 2**-52 chance), including every count authfsm wrote: a write or
    delete that expects an earlier revision is refused (``WriteConflict``), the engine re-reads,
    and adopts Codex's new tokens or refuses another account's. Even a rewrite by Codex with
    the same tokens changes the revision. authfsm's next write counts on from the foreign
    revision. So the revision changes whenever the file changes and goes up by one with each
    authfsm write; it is not guaranteed to go *up* when Codex rewrites the file, because Codex
    erased the count and nothing left in the file says how many writes came before. Revisions
    stay below 2**53, so every JSON reader holds them exactly.

What is refused (``CodecError``, so ``FileStore`` raises ``StorageCorrupt`` and never
overwrites the file)
    Anything Codex itself would refuse to load: invalid JSON (or NaN, or a lone surrogate), a
    top level that is not an object, fields of the wrong type, missing tokens, an unknown
    ``auth_mode``, an ``id_token`` that is not a JWT whose claims Codex can read, a bad
    ``last_refresh``; logins authfsm cannot refresh (``chatgptAuthTokens``, agent identity,
    personal access token, Bedrock key); duplicate keys (a rewrite would silently drop one);
    and a malformed ``authfsm`` field. Messages name fields, never values.

Limits
    Codex takes no lock and rewrites ``auth.json`` in place (truncate, then write), so this codec
    sets ``settle_time``: ``FileStore`` gives a file that fails to decode that long to change
    before calling it corrupt. A Codex write landing in the few milliseconds between authfsm's
    read and its atomic rename is lost (the file holds authfsm's write); Codex's next refresh
    then fails for the spent token, and it asks for a login. Only a lock Codex shared could
    close that window.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs

from ...engine import Credentials, InvalidCredentials, Kind, Record
from ._codec import (
    CodecError,
    _time,
    backoff_from_json,
    backoff_to_json,
    poison_from_json,
    poison_to_json,
)

__all__ = ["CodexCodec"]

#: The top-level field that holds authfsm's state; Codex ignores it.
FIELD = "authfsm"
_FORMAT = "authfsm-codex/1"
_FOREIGN = 2**52

_CHATGPT = "chatgpt"
_API_KEY = "apikey"
# Logins Codex has that authfsm cannot refresh: host-supplied tokens, agent identities.
_UNSHARED_MODES = frozenset({"chatgptAuthTokens", "agentIdentity"})
# Fields that make Codex infer another login when auth_mode is absent.
_OTHER_LOGINS = ("personal_access_token", "bedrock_api_key")
# Every field that holds a login; a logout removes them all.
_LOGIN_FIELDS = ("auth_mode", "tokens", "last_refresh", "agent_identity", *_OTHER_LOGINS)

_OPENAI_AUTH = "https://api.openai.com/auth"
_OPENAI_PROFILE = "https://api.openai.com/profile"
_AUTH_CLAIMS = ("chatgpt_plan_type", "chatgpt_user_id", "user_id", "chatgpt_account_id")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


class CodexCodec:
    """
    Reads and writes Codex's ``auth.json``, keeping every field it does not own.

    Args:
        settle_time: how long ``FileStore`` waits for a file that fails to decode to change
            before calling it corrupt (Codex rewrites the file in place, without a lock).
    """

    def __init__(self, *, settle_time: float = 0.05) -> None:
        self.settle_time = settle_time

    def decode(self, data: bytes) -> Record:
        doc = _parse(data)
        meta = _meta(doc)
        credential = _credential(doc)
        if credential is not None and meta is not None and "expires_at" in meta:
            expiry = meta["expires_at"]
            if expiry["fingerprint"] == credential.fingerprint:
                credential = attrs.evolve(credential, expires_at=expiry["at"])
        return Record(
            credential=credential,
            revision=_revision(doc, meta),
            poison=poison_from_json(meta.get("poison")) if meta is not None else None,
            backoff=backoff_from_json(meta.get("backoff")) if meta is not None else None,
        )

    def encode(self, record: Record, previous: bytes | None = None) -> bytes:
        doc: dict[str, Any] = _parse(previous) if previous is not None else {}
        doc.pop(FIELD, None)
        _apply(doc, record.credential)
        meta: dict[str, Any] = {"format": _FORMAT, "revision": record.revision}
        if record.poison is not None:
            meta["poison"] = poison_to_json(record.poison)
        if record.backoff is not None:
            meta["backoff"] = backoff_to_json(record.backoff)
        cred = record.credential
        if cred is not None and cred.expires_at is not None:
            meta["expires_at"] = {
                "fingerprint": cred.fingerprint,
                "at": cred.expires_at.isoformat(),
            }
        doc[FIELD] = meta
        meta["digest"] = _digest(doc)
        # Codex writes pretty JSON with UTF-8 as it is; so do we.
        return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()

    def __repr__(self) -> str:
        return f"CodexCodec(settle_time={self.settle_time!r})"


# -- reading ---------------------------------------------------------------------------------


def _parse(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_unique_keys,
            parse_constant=_no_constant,
        )
        # Valid JSON may still escape a lone surrogate, which no UTF-8 writer (nor Codex) takes.
        json.dumps(doc, ensure_ascii=False).encode()
    except CodecError:
        raise
    except UnicodeError:
        raise CodecError("not valid UTF-8 text") from None
    except (ValueError, RecursionError) as error:
        raise CodecError(f"not valid JSON ({type(error).__name__})") from None
    if not isinstance(doc, dict):
        raise CodecError(f"top level must be an object, not {_kind(doc)}")
    return doc


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise CodecError("an object has a duplicate key")
    return obj


def _no_constant(_name: str) -> Any:
    raise CodecError("NaN and Infinity are not JSON")


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _optional(obj: dict[str, Any], key: str, path: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise CodecError(f"{path} must be a string, not {_kind(value)}")
    return value


def _required(obj: dict[str, Any], key: str, path: str) -> str:
    value = _optional(obj, key, path)
    if value is None:
        raise CodecError(f"{path} is missing")
    return value


def _mode(doc: dict[str, Any]) -> Kind:
    """Which login the document holds, resolved as Codex resolves it."""
    raw = doc.get("auth_mode")
    if raw is not None:
        if not isinstance(raw, str):
            raise CodecError(f"auth_mode must be a string, not {_kind(raw)}")
        if raw == _CHATGPT:
            return Kind.OAUTH
        if raw == _API_KEY:
            return Kind.API_KEY
        if raw in _UNSHARED_MODES:
            raise CodecError(f"auth_mode {raw!r} is not a login authfsm can share")
        raise CodecError("auth_mode is not one Codex knows")
    for field in _OTHER_LOGINS:
        if doc.get(field) is not None:
            raise CodecError(f"a {field} login is not one authfsm can share")
    return Kind.OAUTH if doc.get("OPENAI_API_KEY") is None else Kind.API_KEY


def _credential(doc: dict[str, Any]) -> Credentials | None:
    """The credential the document holds; every field Codex parses is checked as Codex does."""
    kind = _mode(doc)
    api_key = _optional(doc, "OPENAI_API_KEY", "OPENAI_API_KEY")
    for field in ("agent_identity", *_OTHER_LOGINS):
        _optional(doc, field, field)
    last_refresh = _timestamp(doc.get("last_refresh"), "last_refresh")
    tokens = doc.get("tokens")
    if tokens is not None:
        if not isinstance(tokens, dict):
            raise CodecError(f"tokens must be an object, not {_kind(tokens)}")
        id_token = _required(tokens, "id_token", "tokens.id_token")
        _check_id_token(id_token, "tokens.id_token")
        access_token = _required(tokens, "access_token", "tokens.access_token")
        refresh_token = _required(tokens, "refresh_token", "tokens.refresh_token")
        account_id = _optional(tokens, "account_id", "tokens.account_id")
    try:
        if kind is Kind.API_KEY:
            if not api_key:
                raise CodecError("an API-key login needs a non-empty OPENAI_API_KEY")
            return Credentials(access_token=api_key, kind=Kind.API_KEY, last_refresh=last_refresh)
        if tokens is None:
            return None
        return Credentials(
            access_token=access_token,
            refresh_token=refresh_token,
            id_token=id_token,
            account_id=account_id,
            last_refresh=last_refresh,
        )
    except InvalidCredentials as error:
        raise CodecError(str(error)) from None


def _check_id_token(token: str, path: str) -> None:
    """Refuse what Codex refuses: it parses the id_token's claims when it loads the file."""
    parts = token.split(".")
    if len(parts) < 3 or not all(parts[:3]):
        raise CodecError(f"{path} is not a JWT")
    payload = parts[1]
    if not _BASE64URL.fullmatch(payload):
        raise CodecError(f"{path} has a payload that is not unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError, RecursionError):
        raise CodecError(f"{path} has a payload that is not JSON") from None
    if not isinstance(claims, dict):
        raise CodecError(f"{path} has claims that are not an object")
    _optional(claims, "email", f"{path} claim email")
    for name, fields in ((_OPENAI_PROFILE, ("email",)), (_OPENAI_AUTH, _AUTH_CLAIMS)):
        group = claims.get(name)
        if group is None:
            continue
        if not isinstance(group, dict):
            raise CodecError(f"{path} claim {name} must be an object, not {_kind(group)}")
        for field in fields:
            _optional(group, field, f"{path} claim {name}.{field}")


def _timestamp(raw: Any, path: str) -> datetime | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise CodecError(f"{path} must be a string, not {_kind(raw)}")
    match = _RFC3339.fullmatch(raw)
    if match is None:
        raise CodecError(f"{path} is not an RFC 3339 timestamp")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    try:
        zone = UTC
        if not zulu:
            offset = timedelta(hours=int(off_h), minutes=int(off_m))
            zone = timezone(-offset if sign == "-" else offset)
        return datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            int((fraction or "0")[:6].ljust(6, "0")),  # Codex writes nanoseconds; we keep micro
            tzinfo=zone,
        )
    except ValueError:
        raise CodecError(f"{path} is not a valid date and time") from None


def _meta(doc: dict[str, Any]) -> dict[str, Any] | None:
    """authfsm's field, validated (``expires_at`` parsed), or None when there is none."""
    meta = doc.get(FIELD)
    if meta is None:
        return None
    if not isinstance(meta, dict):
        raise CodecError(f"{FIELD} must be an object, not {_kind(meta)}")
    if meta.get("format") != _FORMAT:
        raise CodecError(f"{FIELD}.format must be {_FORMAT!r}")
    revision = meta.get("revision")
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
        raise CodecError(f"{FIELD}.revision must be a non-negative integer")
    _required(meta, "digest", f"{FIELD}.digest")
    poison_from_json(meta.get("poison"))
    backoff_from_json(meta.get("backoff"))
    parsed = dict(meta)
    expiry = meta.get("expires_at")
    if expiry is not None:
        if not isinstance(expiry, dict):
            raise CodecError(f"{FIELD}.expires_at must be an object, not {_kind(expiry)}")
        fingerprint = _required(expiry, "fingerprint", f"{FIELD}.expires_at.fingerprint")
        at = _time(expiry, "at")
        if at is None:
            raise CodecError(f"{FIELD}.expires_at.at is missing")
        parsed["expires_at"] = {"fingerprint": fingerprint, "at": at}
    else:
        parsed.pop("expires_at", None)
    return parsed


def _revision(doc: dict[str, Any], meta: dict[str, Any] | None) -> int:
    if meta is not None:
        claimed = doc[FIELD]
        expected = _digest({**doc, FIELD: {k: v for k, v in claimed.items() if k != "digest"}})
        if hmac.compare_digest(expected, claimed["digest"]):
            revision: int = meta["revision"]
            return revision
    # Foreign content: a revision derived from all of it, out of the range authfsm counts in.
    h = hashlib.blake2b(_canonical(doc), digest_size=8, person=b"authfsm-codex-rv")
    return _FOREIGN + (int.from_bytes(h.digest(), "big") >> 12)


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _digest(doc: dict[str, Any]) -> str:
    """The hash of a document as authfsm writes it, the digest itself left out."""
    meta = {k: v for k, v in doc[FIELD].items() if k != "digest"}
    body = _canonical({**doc, FIELD: meta})
    return hashlib.blake2b(body, digest_size=16, person=b"authfsm-codex-v1").hexdigest()


# -- writing ---------------------------------------------------------------------------------


def _apply(doc: dict[str, Any], cred: Credentials | None) -> None:
    """Write ``cred`` into ``doc`` (the previous document), changing only the login's fields."""
    if cred is None:
        for field in _LOGIN_FIELDS:
            doc.pop(field, None)
        doc["OPENAI_API_KEY"] = None
        return
    if cred.kind is Kind.API_KEY:
        if cred.refresh_token or cred.id_token or cred.account_id:
            raise InvalidCredentials(
                "Codex's auth.json holds an API key alone: no refresh token, id_token or account"
            )
        for field in _LOGIN_FIELDS:
            if field != "auth_mode":
                doc.pop(field, None)
        doc["auth_mode"] = _API_KEY
        doc["OPENAI_API_KEY"] = cred.access_token
        _set_last_refresh(doc, cred.last_refresh)
        return
    if cred.id_token is None or cred.refresh_token is None:
        raise InvalidCredentials("Codex's auth.json needs an id_token and a refresh_token")
    try:
        _check_id_token(cred.id_token, "id_token")
    except CodecError as error:
        raise InvalidCredentials(f"Codex could not read this credential: {error}") from None
    if not doc:
        doc["auth_mode"] = _CHATGPT
    elif doc.get("auth_mode") not in (None, _CHATGPT) or (
        doc.get("auth_mode") is None
        and any(doc.get(f) is not None for f in ("OPENAI_API_KEY", *_OTHER_LOGINS))
    ):
        # Without this, Codex would resolve the document to the other login it still holds.
        doc["auth_mode"] = _CHATGPT
    doc.setdefault("OPENAI_API_KEY", None)
    previous = doc.get("tokens")
    tokens: dict[str, Any] = dict(previous) if isinstance(previous, dict) else {}
    tokens.update(
        id_token=cred.id_token,
        access_token=cred.access_token,
        refresh_token=cred.refresh_token,
        account_id=cred.account_id,
    )
    doc["tokens"] = tokens
    _set_last_refresh(doc, cred.last_refresh)


def _set_last_refresh(doc: dict[str, Any], value: datetime | None) -> None:
    if value is None:
        doc.pop("last_refresh", None)
        return
    old = doc.get("last_refresh")
    try:
        if isinstance(old, str) and _timestamp(old, "last_refresh") == value:
            return  # the same instant: keep Codex's own text (it may carry nanoseconds)
    except CodecError:
        pass
    doc["last_refresh"] = _codex_time(value)


def _codex_time(value: datetime) -> str:
    """RFC 3339 in UTC with ``Z`` and as many fraction digits as needed (chrono's AutoSi)."""
    try:
        utc = value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise InvalidCredentials("last_refresh is outside the years 1 to 9999 in UTC") from None
    text = (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}"
        f"T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}"
    )
    micro = utc.microsecond
    if micro:
        text += f".{micro // 1000:03d}" if micro % 1000 == 0 else f".{micro:06d}"
    return text + "Z"
