"""
``authfsm rotate-key``, and the key options every command on an encrypted store takes.

The keys come from a key file (``--key-file``, mode 0600 or 0400), an environment variable
(``--key-env``) or the OS keyring (``--key-keyring SERVICE:USER``), never from the command line
itself, where ``ps`` would show them. ``rotate-key`` re-seals the stored record with the current
key (the first in the ring) under the store's lease, keeping its revision, so no engine sharing
the store notices; ``--migrate`` also encrypts an unencrypted store, ``--to-plaintext`` writes it
back unencrypted. Nothing here prints a key or a token.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Final, TextIO

from ..adapters import (
    CodecError,
    EncryptedCodec,
    FileStore,
    KeyConfigurationError,
    KeyRing,
    read_sealed_header,
    rotate_key,
)
from ._common import EXIT_OK, UsageError, add_json, add_store, positive_float, print_json

__all__ = [
    "ROTATE_KEY_DETAILS",
    "ROTATE_KEY_SUMMARY",
    "add_key_arguments",
    "add_rotate_key_arguments",
    "cmd_rotate_key",
    "encryption_fields",
    "key_ring_from_args",
    "open_store",
]

ROTATE_KEY_SUMMARY: Final = (
    "Re-encrypt the stored credential now with the current key (the first in the ring), under "
    "the store's lease; nobody is logged out and the revision is kept."
)

ROTATE_KEY_DETAILS: Final = """\
keys:
  one key a line, ID:BASE64 (32 bytes), the current key first; older keys after it still open
  what they sealed. Make one with:  echo "k2:$(openssl rand -base64 32)"

rotating (every process reads the key file or variable you change):
  1. add the new key AFTER the current one everywhere (every process can open it)
  2. move it first everywhere (processes now seal with it), then:
       authfsm rotate-key --store ~/.myapp/auth.json --key-file ~/.myapp/keys
  3. remove the old key

migrating an unencrypted store:   authfsm rotate-key --store PATH --key-file FILE --migrate
back to plaintext (every process must accept plaintext first):  ... --to-plaintext
"""


def add_key_arguments(parser: argparse.ArgumentParser) -> None:
    """``--key-file`` / ``--key-env`` / ``--key-keyring`` and ``--migrate`` (for every command)."""
    group = parser.add_argument_group("encryption at rest")
    source = group.add_mutually_exclusive_group()
    source.add_argument(
        "--key-file",
        metavar="FILE",
        help="the keys, one ID:BASE64 a line, current first (the file must be mode 0600 or 0400)",
    )
    source.add_argument(
        "--key-env",
        metavar="VAR",
        help="an environment variable holding the keys (ID:BASE64,ID:BASE64, current first)",
    )
    source.add_argument(
        "--key-keyring",
        metavar="SERVICE:USER",
        help="the keys as one secret in the OS keyring (the store file holds only ciphertext)",
    )
    group.add_argument(
        "--migrate",
        action="store_true",
        help="also read an unencrypted store; its next write (or rotate-key) encrypts it",
    )


def add_rotate_key_arguments(parser: argparse.ArgumentParser) -> None:
    """Everything ``rotate-key`` takes: the store, the keys, the direction, ``--json``."""
    add_store(parser)
    add_key_arguments(parser)
    parser.add_argument(
        "--to-plaintext",
        action="store_true",
        help="write the record back unencrypted (every process must accept plaintext first)",
    )
    parser.add_argument(
        "--lease-timeout",
        type=positive_float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the store's lease (default: 30)",
    )
    add_json(parser)


def key_ring_from_args(args: argparse.Namespace) -> KeyRing | None:
    """The key ring the options name (None: no key option); bad keys are a usage error."""
    try:
        if getattr(args, "key_file", None):
            return KeyRing.from_file(args.key_file)
        if getattr(args, "key_env", None):
            return KeyRing.from_env(args.key_env)
        if getattr(args, "key_keyring", None):
            service, sep, user = str(args.key_keyring).partition(":")
            if not sep or not service or not user:
                raise UsageError("--key-keyring takes SERVICE:USER")
            return KeyRing.from_keyring(service, user)
    except KeyConfigurationError as error:
        raise UsageError(str(error)) from None
    return None


def open_store(args: argparse.Namespace, *, write_plaintext: bool = False) -> FileStore:
    """
    The ``--store`` file, encrypted when a key option is given. Without one, a store that is
    encrypted is a usage error that says which option is missing (not "corrupt").
    """
    keys = key_ring_from_args(args)
    if keys is not None:
        codec = EncryptedCodec(
            keys,
            accept_plaintext=bool(getattr(args, "migrate", False)),
            write_plaintext=write_plaintext,
        )
        return FileStore(args.store, codec=codec)
    store = FileStore(args.store)
    if _sealed_key_id(store.path) is not None:
        raise UsageError(
            f"{store.location} is encrypted: pass its keys with --key-file, --key-env or "
            "--key-keyring"
        )
    return store


def encryption_fields(store: FileStore) -> dict[str, Any]:
    """
    For ``status``: whether the store writes encrypted records, and the key id the file is
    sealed with now (None when it is not sealed or there is no file). Needs no key.
    """
    return {"encrypted": store.encrypted, "key_id": _sealed_key_id(store.path)}


def _sealed_key_id(path: Path) -> str | None:
    try:
        header = read_sealed_header(path.read_bytes())
    except (OSError, CodecError):
        return None  # missing, unreadable or damaged: the store's own read reports it
    return header.key_id if header is not None else None


def cmd_rotate_key(args: argparse.Namespace, out: TextIO) -> int:
    """Re-seal the stored record with the current key (or migrate it), under the lease."""
    if key_ring_from_args(args) is None:
        raise UsageError("rotate-key needs the keys: --key-file, --key-env or --key-keyring")
    if args.to_plaintext and args.migrate:
        raise UsageError("--to-plaintext and --migrate go in opposite directions: pick one")
    store = open_store(args, write_plaintext=bool(args.to_plaintext))
    before = _sealed_key_id(store.path)
    rotation = rotate_key(store, lease_timeout=args.lease_timeout)
    data = {
        "store": rotation.location,
        "encrypted": rotation.key_id is not None,
        "key_id": rotation.key_id,
        "previous_key_id": before,
        "revision": rotation.revision,
        "logged_out": rotation.logged_out,
    }
    if args.json:
        print_json(data, out)
    elif rotation.revision is None:
        out.write(f"{rotation.location}: empty, nothing to re-encrypt\n")
    else:
        was = f"sealed with key {before!r}" if before else "unencrypted"
        now = f"sealed with key {rotation.key_id!r}" if rotation.key_id else "unencrypted"
        out.write(
            f"{rotation.location}: {now} (was {was}); revision {rotation.revision} kept, "
            "nobody logged out\n"
        )
    return EXIT_OK
