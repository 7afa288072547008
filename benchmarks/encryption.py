"""
The cost of encryption at rest, per store read and write: plaintext against ``EncryptedCodec``
(AES-256-GCM), measured in the same run on the same machine.

For a realistic credential (JWT access token and id_token, ~2.3 KB of native JSON), this times,
per operation, the median over ``--repeats`` runs of ``--number`` calls:

- the codec alone: ``encode`` and ``decode`` (NativeCodec, EncryptedCodec wrapping it);
- ``read()`` and a compare-and-swap ``write()`` of FileStore (tmpfs if /dev/shm exists, else the
  temp folder), RedisStore (a throwaway redis-server on 127.0.0.1) and KeyringStore
  (keyrings.alt's file keyring), and KeyringStore split into chunks at Windows' 2560-byte limit;
- ``AuthEngine.access_token()`` on a fresh credential, which does no I/O at all: encryption
  must not change it.

Usage::

    python benchmarks/encryption.py [--number 200] [--repeats 7] [--quick] [--no-redis]

Needs the ``encryption``, ``redis`` and ``keyring``/``test`` extras; ``redis-server`` on PATH
unless ``--no-redis``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from authfsm import AuthEngine
from authfsm.adapters import (
    EncryptedCodec,
    FileStore,
    KeyRing,
    KeyringStore,
    NativeCodec,
    RedisStore,
    generate_key,
)
from authfsm.engine import Credentials, Record

KEYS = KeyRing.parse(generate_key("bench"))


def credential() -> Credentials:
    """A credential shaped like a real one: JWTs of typical size, an hour left."""
    now = datetime.now(UTC)
    return Credentials(
        access_token="eyJhbGciOiJSUzI1NiJ9." + "A" * 900 + ".sig" + "s" * 340,
        refresh_token="rt_" + "r" * 60,
        id_token="eyJhbGciOiJSUzI1NiJ9." + "I" * 700 + ".sig" + "s" * 340,
        expires_at=now + timedelta(hours=1),
        account_id="acct-2f1e0d",
        last_refresh=now,
    )


def per_call(operation: Callable[[], object], number: int, repeats: int) -> float:
    """Median seconds per call over ``repeats`` runs of ``number`` calls (after a warm-up)."""
    for _ in range(min(number, 20)):
        operation()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(number):
            operation()
        samples.append((time.perf_counter() - started) / number)
    return statistics.median(samples)


class Writer:
    """A compare-and-swap writer that always expects the revision it wrote last."""

    def __init__(self, store: Any, record: Record) -> None:
        self.store = store
        self.record = record
        self.revision = store.write(record, None).revision

    def __call__(self) -> None:
        self.revision = self.store.write(self.record, self.revision).revision


def store_rows(
    name: str, make: Callable[[Any], Any], record: Record, number: int, repeats: int
) -> list[tuple[str, float, float]]:
    """(operation, plaintext s, encrypted s) for read and write of one kind of store."""
    rows = []
    plain, sealed = make(None), make(EncryptedCodec(KEYS))
    write_plain, write_sealed = Writer(plain, record), Writer(sealed, record)
    rows.append(
        (
            f"{name} read()",
            per_call(plain.read, number, repeats),
            per_call(sealed.read, number, repeats),
        )
    )
    rows.append(
        (
            f"{name} write()",
            per_call(write_plain, number, repeats),
            per_call(write_sealed, number, repeats),
        )
    )
    return rows


@contextlib.contextmanager
def redis_url(enabled: bool) -> Iterator[str | None]:
    if not enabled:
        yield None
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from storm import redis_server  # the same throwaway server the storm uses

    with redis_server() as url:
        yield url


def keyring_backend(path: Path) -> Any:
    import keyrings.alt.file

    backend = keyrings.alt.file.PlaintextKeyring()
    backend.file_path = str(path)
    return backend


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=200, help="calls per run")
    parser.add_argument("--repeats", type=int, default=7, help="runs per operation")
    parser.add_argument("--quick", action="store_true", help="50 calls, 3 runs")
    parser.add_argument("--no-redis", action="store_true", help="skip RedisStore")
    args = parser.parse_args(argv)
    number, repeats = (50, 3) if args.quick else (args.number, args.repeats)
    record = Record(credential=credential())
    native = NativeCodec()
    codec = EncryptedCodec(KEYS).bind("file", "/bench/auth.json", "bench")
    plain_bytes, sealed_bytes = native.encode(record), codec.encode(record)

    rows: list[tuple[str, float, float]] = [
        (
            "codec encode",
            per_call(lambda: native.encode(record), number * 10, repeats),
            per_call(lambda: codec.encode(record), number * 10, repeats),
        ),
        (
            "codec decode",
            per_call(lambda: native.decode(plain_bytes), number * 10, repeats),
            per_call(lambda: codec.decode(sealed_bytes), number * 10, repeats),
        ),
    ]
    shm = Path("/dev/shm")  # noqa: S108 - tmpfs, so the disk does not drown the difference
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    with (
        tempfile.TemporaryDirectory(prefix="authfsm-bench-", dir=base) as folder,
        redis_url(not args.no_redis) as url,
    ):
        root = Path(folder)
        serial = iter(range(1_000_000))
        rows += store_rows(
            "FileStore",
            lambda c: FileStore(root / f"auth-{next(serial)}.json", codec=c),
            record,
            number,
            repeats,
        )
        if url is not None:
            rows += store_rows(
                "RedisStore",
                lambda c: RedisStore(url, key=f"bench-{next(serial)}", codec=c),
                record,
                number,
                repeats,
            )

        def keyring_store(codec: Any, limit: int | None) -> KeyringStore:
            n = next(serial)  # a keyring file each: keyrings.alt parses all of it per call
            return KeyringStore(
                "authfsm-bench",
                "user",
                backend=keyring_backend(root / f"keyring-{n}.cfg"),
                lock_path=root / f"lock-{n}",
                codec=codec,
                max_secret_size=limit,
            )

        for label, limit in (("KeyringStore", None), ("KeyringStore, 2560 B chunks", 2560)):
            rows += store_rows(
                label,
                lambda c, limit=limit: keyring_store(c, limit),
                record,
                max(number // 4, 10),
                repeats,
            )
        engines = []
        for codec_or_none in (None, EncryptedCodec(KEYS)):
            path = root / f"engine-{next(serial)}.json"
            FileStore(path, codec=codec_or_none).write(record, None)
            engines.append(AuthEngine(FileStore(path, codec=codec_or_none)))
        rows.append(
            (
                "access_token(), fresh",
                per_call(engines[0].access_token, number * 100, repeats),
                per_call(engines[1].access_token, number * 100, repeats),
            )
        )

    print(
        f"record: {len(plain_bytes)} B native JSON, {len(sealed_bytes)} B sealed "
        f"({len(sealed_bytes) / len(plain_bytes):.2f}x); medians of {repeats} runs\n"
    )
    print("| operation | plaintext µs | encrypted µs | ratio | added µs |")
    print("|---|---:|---:|---:|---:|")
    for name, plain_s, sealed_s in rows:
        print(
            f"| {name} | {plain_s * 1e6:.2f} | {sealed_s * 1e6:.2f} | "
            f"{sealed_s / plain_s:.2f}x | {(sealed_s - plain_s) * 1e6:+.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
