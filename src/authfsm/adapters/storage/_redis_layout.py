"""
What the Redis stores share and what does no I/O: key names, the Lua scripts, judging replies.

One layout for :class:`RedisStore` and :class:`AsyncRedisStore`, so sync and async engines can
share a key. It owns:

- the keys: the record ``key_prefix + key`` and, next to it, ``...:lease`` (the lease token) and
  ``...:lease:wake`` (a wake-up list); in Redis Cluster all of them carry one hash tag, so they
  live in one slot, as a Lua script and a blocking wait on them need;
- the release channel ``...:lease:released``, published to when a lease is given back (sharded
  pub/sub in Redis Cluster, on the record's slot);
- the scripts, which touch only the keys passed in ``KEYS``;
- decoding a value and judging a compare-and-swap reply, and the number of replicas a write must
  reach (``min_replicas``).

It must never put a token or a stored value into a message, a repr or a log.
"""

from __future__ import annotations

import hashlib
import math
from typing import Final

import attrs

from ...engine import (
    AuthError,
    LeaseTimeout,
    Record,
    Released,
    StorageCorrupt,
    StorageUnavailable,
    StorageUnreplicated,
    WriteConflict,
)
from ._codec import Codec, CodecError, NativeCodec
from ._encryption import bind_codec
from ._redis_clients import import_redis

__all__ = [
    "ACQUIRE",
    "CAS",
    "RENEW",
    "SWAP_ATTEMPTS",
    "Current",
    "Layout",
    "Resealer",
    "as_bytes",
    "as_int",
    "digest",
    "hash_tag",
    "release_script",
]

#: Compare-and-swap of the record. ARGV[1]: SHA-1 of the value the caller judged ("" = absent),
#: ARGV[2]: the new value ("" = delete), ARGV[3]: "1" when the command is sent again after a lost
#: reply. Returns {1} when swapped, else {0, current value}. A resent command that finds exactly
#: its new value (its first attempt swapped) sets it again: a write of its own, so a WAIT after it
#: on the new connection counts the replicas that have the value.
CAS: Final = """
local current = redis.call('GET', KEYS[1])
local digest = ''
if current then digest = redis.sha1hex(current) end
if digest ~= ARGV[1] then
  if ARGV[3] == '1' and ARGV[2] ~= '' and current == ARGV[2] then
    redis.call('SET', KEYS[1], ARGV[2])
    return {1}
  end
  return {0, current}
end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2]) end
return {1}
"""

#: Take the lease for token ARGV[1] for ARGV[2] ms. Idempotent, so a command retried after a lost
#: reply finds its own token instead of waiting for its own lease to expire. Taken, it answers
#: with the record key KEYS[2] as it is under the new lease ({1, value}; {1}: no record; {2}: a
#: value that is not a string, read it), what its holder reads first: no second round trip.
ACQUIRE: Final = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local record = redis.pcall('GET', KEYS[2])
if type(record) == 'string' then return {1, record} end
if record == false then return {1} end
return {2}
"""

#: Extend the lease to ARGV[2] ms if token ARGV[1] still owns it.
RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

#: Release the lease if token ARGV[1] owns it; wake one lease waiter (KEYS[2] holds at most one
#: wake-up, which expires after ARGV[2] ms when nobody was waiting) and every follower watching
#: the release channel KEYS[3] (a channel, passed as a key so Redis Cluster checks its slot).
#: The message carries the record key KEYS[4] as it is now ('r' and its value; 'r' alone: no
#: record), so followers adopt the leader's write without reading it; a value that is not a
#: string is not carried ('1': read the key).
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('RPUSH', KEYS[2], '1')
redis.call('PEXPIRE', KEYS[2], ARGV[2])
local record = redis.pcall('GET', KEYS[4])
local message = '1'
if type(record) == 'string' then message = 'r' .. record
elseif record == false then message = 'r' end
redis.call('PUBLISH_COMMAND', KEYS[3], message)
return 1
"""

#: The first byte of a release message that carries the record.
_CARRIES_RECORD: Final = b"r"

# Swaps retried when the value changed but kept the expected revision (a delete and re-create).
SWAP_ATTEMPTS: Final = 4


def release_script(*, sharded: bool) -> str:
    """The release script: SPUBLISH (the slot's shard only) in Redis Cluster, else PUBLISH."""
    return _RELEASE.replace("PUBLISH_COMMAND", "SPUBLISH" if sharded else "PUBLISH")


def digest(data: bytes) -> str:
    # A change detector matching Redis' own redis.sha1hex, not a security measure.
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


def as_bytes(value: object) -> bytes | None:
    """A Redis reply as bytes (a client made with decode_responses=True answers str)."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"unexpected Redis reply of type {type(value).__name__}")


def as_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"unexpected Redis reply of type {type(value).__name__}")
    return value


def hash_tag(key: str) -> str | None:
    """
    The part of ``key`` Redis Cluster hashes: between the first ``{`` and the next ``}``, when
    not empty; None when the whole key is hashed.
    """
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end < 0 or end == start + 1:
        return None
    return key[start + 1 : end]


def _seconds(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a positive number of seconds")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number of seconds")
    return float(value)


@attrs.frozen
class Current:
    """What the record key holds: its SHA-1 ("" when absent) and bytes (None when absent)."""

    digest: str
    data: bytes | None = attrs.field(repr=False)


class Layout:
    """
    Key names, validation, decoding and judging replies, for one store object.

    It does no I/O. ``seen`` remembers the revision, digest and bytes of the last value read, so
    a write right after a read (what the engine does under the lease) swaps in one round trip.

    ``cluster``: the keys must share a slot. A key with a hash tag (``"{myapp}:credential"``)
    is used as it is; one without gets ``key`` wrapped in braces (``"authfsm:{credential}"``).
    """

    def __init__(
        self,
        *,
        key: str,
        key_prefix: str,
        lease_ttl: float,
        poll_interval: float,
        codec: Codec | None,
        server: str,
        cluster: bool = False,
        min_replicas: int = 0,
        replica_timeout: float = 1.0,
    ) -> None:
        if not isinstance(key, str) or not key:
            raise ValueError("key must be a non-empty string")
        if not isinstance(key_prefix, str):
            raise TypeError("key_prefix must be a string")
        self.lease_ttl = _seconds(lease_ttl, "lease_ttl")
        self.poll_interval = _seconds(poll_interval, "poll_interval")
        if isinstance(min_replicas, bool) or not isinstance(min_replicas, int) or min_replicas < 0:
            raise ValueError("min_replicas must be a whole number of replicas, 0 or more")
        self.min_replicas = min_replicas
        self.replica_timeout = _seconds(replica_timeout, "replica_timeout")
        # WAIT's timeout 0 means forever, hence the floor.
        self.wait_ms = max(1, math.ceil(self.replica_timeout * 1000))
        record_key = key_prefix + key
        if cluster and hash_tag(record_key) is None:
            record_key = f"{key_prefix}{{{key}}}"
            if hash_tag(record_key) is None:
                raise ValueError(
                    "key cannot be put in a Redis Cluster hash tag; give it one, e.g. "
                    "key='{myapp}:credential'"
                )
        self.cluster = cluster
        self.record_key = record_key
        self.lease_key = record_key + ":lease"
        self.wake_key = record_key + ":lease:wake"
        self.release_channel = record_key + ":lease:released"
        self.ttl_ms = max(1, math.ceil(self.lease_ttl * 1000))
        # Renew three times per TTL: two renewals may fail (a blip) before the lease lapses.
        self.renew_every = self.lease_ttl / 3
        self.location = f"{server} key {self.record_key!r}"
        # An encrypting codec is bound to the record's key (prefix included), not the server:
        # hosts reach one server under different names.
        self.codec: Codec = bind_codec(
            codec if codec is not None else NativeCodec(), "redis", self.record_key, self.location
        )
        self.seen: tuple[int, str, bytes] | None = None

    # -- values ------------------------------------------------------------------------------

    def decode(self, data: bytes | None) -> Record | None:
        """The record in ``data`` (None: no key); ``StorageCorrupt`` naming the key if it is not."""
        if data is None:
            return None
        try:
            record = self.codec.decode(data)
        except CodecError as error:
            raise StorageCorrupt(self.location, str(error)) from None
        self.seen = (record.revision, digest(data), data)
        return record

    def released(self, message: bytes | None) -> Released | None:
        """
        What a release message carried (see ``_RELEASE``): the record as the leader left it;
        None when it carried nothing, or nothing readable (the caller reads the key, and a
        corrupt value is reported there).
        """
        if not message or message[:1] != _CARRIES_RECORD:
            return None
        try:
            return Released(self.decode(message[1:] or None))
        except StorageCorrupt:
            return None

    def known(self, expected_revision: int | None) -> Current | None:
        """What the key holds if it is at ``expected_revision``, as far as the last read knows."""
        if expected_revision is None:
            return Current(digest="", data=None)
        seen = self.seen
        if seen is None or seen[0] != expected_revision:
            return None
        return Current(digest=seen[1], data=seen[2])

    def validate(self, data: bytes | None, expected_revision: int | None) -> Current:
        """The key's value as read: ``WriteConflict`` unless it is at ``expected_revision``."""
        record = self.decode(data)
        found = record.revision if record is not None else None
        if found != expected_revision:
            raise WriteConflict(self.location, expected_revision, found)
        return Current(digest=digest(data) if data is not None else "", data=data)

    def judge(
        self, reply: object, expected_revision: int | None, value: bytes, *, retried: bool
    ) -> Current | None:
        """
        None when the swap happened; else what the key holds now, to swap against next.

        ``retried``: the command was sent again after a connection error, so a key holding
        exactly our new value means our first attempt swapped (and its reply was lost).

        Raises ``WriteConflict`` when the key holds another revision, ``StorageCorrupt`` when it
        holds something that is not a record (which is then never replaced).
        """
        if not isinstance(reply, list | tuple) or not reply:
            raise TypeError("unexpected reply from the compare-and-swap script")
        if as_int(reply[0]) == 1:
            revision = (expected_revision or 0) + 1
            self.seen = (revision, digest(value), value) if value else None
            return None
        current = as_bytes(reply[1]) if len(reply) > 1 else None
        if retried and value and current == value:
            return None
        return self.validate(current, expected_revision)

    def swap_gave_up(self, expected_revision: int | None) -> WriteConflict:
        return WriteConflict(self.location, expected_revision, expected_revision)

    # -- replication -------------------------------------------------------------------------

    def require_replicas(self, acknowledged: int | None) -> None:
        """
        ``StorageUnreplicated`` when fewer than ``min_replicas`` replicas acknowledged a write
        (``acknowledged``: WAIT's reply; None: no WAIT was sent, none required).
        """
        if acknowledged is not None and acknowledged < self.min_replicas:
            raise StorageUnreplicated(
                self.location,
                acknowledged=acknowledged,
                required=self.min_replicas,
                timeout=self.replica_timeout,
            )

    # -- errors ------------------------------------------------------------------------------

    def translate(self, error: Exception, *, about_record: bool) -> AuthError:
        """A redis-py error as an AuthError; the message names the store, never a value."""
        exceptions = import_redis().exceptions
        kind = type(error).__name__
        if isinstance(error, exceptions.TimeoutError):
            return StorageUnavailable(
                f"Credential store {self.location} did not answer in time ({kind}); "
                "the cached credential stays in use.",
                reason="storage_timeout",
            )
        if isinstance(error, exceptions.ConnectionError):
            return StorageUnavailable(
                f"Cannot reach credential store {self.location} ({kind}); "
                "the cached credential stays in use.",
            )
        if about_record and "WRONGTYPE" in str(error):
            return StorageCorrupt(self.location, "the key holds a value that is not a string")
        return StorageUnavailable(
            f"Credential store {self.location} refused a command ({kind}).",
            reason="storage_error",
        )

    def lease_timeout(self, timeout: float) -> LeaseTimeout:
        return LeaseTimeout(
            f"The refresh lease {self.lease_key!r} of {self.location} was held for over "
            f"{timeout:g} s.",
            reason="lease_timeout",
        )


class Resealer:
    """
    The new value of a reseal: the record read, encoded again. The swap's bookkeeping assumes a
    write adds one to the revision; :meth:`done` puts back the revision a reseal keeps.
    """

    def __init__(self, layout: Layout, expected_revision: int) -> None:
        self._layout = layout
        self._expected = expected_revision
        self._last: tuple[Record, bytes] | None = None

    def __call__(self, previous: bytes | None) -> bytes:
        record = self._layout.decode(previous)
        if record is None:
            raise WriteConflict(self._layout.location, self._expected, None)
        value = self._layout.codec.encode(record, previous)
        self._last = (record, value)
        return value

    def done(self) -> Record:
        assert self._last is not None
        record, value = self._last
        self._layout.seen = (record.revision, digest(value), value)
        return record
