"""EncryptedCodec and KeyRing: the sealed format, its properties, and where keys come from."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import attrs
import keyrings.alt.file as keyring_file
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authfsm.adapters import (
    CannotDecrypt,
    CodecError,
    CodexCodec,
    DataKey,
    EncryptedCodec,
    FileStore,
    KeyConfigurationError,
    KeyRing,
    KeyUnavailable,
    NativeCodec,
    generate_key,
    read_sealed_header,
)
from authfsm.engine import (
    Backoff,
    EngineMisuse,
    Poison,
    Record,
    StorageCorrupt,
    StorageUnavailable,
)
from authfsm.testing._store_kit import _strategies

from .helpers import sample_credentials

ACCESS = "at-SECRET-5d1c0e77b2"
REFRESH = "rt-SECRET-a0c4f1e9d3"
ID_TOKEN = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJTRUNSRVQtc3ViIn0.sig"
ACCOUNT = "acct-SECRET-3e8b"
CREDS = sample_credentials(ACCESS, REFRESH, id_token=ID_TOKEN, account_id=ACCOUNT)
SECRETS = (ACCESS, REFRESH, ID_TOKEN, ID_TOKEN.split(".")[1], ACCOUNT)

K1 = generate_key("k1")
K2 = generate_key("k2")
K1_OTHER = generate_key("k1")  # same id, another secret: a wrong key
KEY_TEXTS = [line.split(":", 1)[1] for line in (K1, K2, K1_OTHER)]


def ring(*lines: str) -> KeyRing:
    return KeyRing.parse("\n".join(lines))


def bound(keys: KeyRing, name: str = "/home/a/auth.json", kind: str = "file", **options):
    return EncryptedCodec(keys, **options).bind(kind, name, f"<{kind} {name}>")


def assert_no_secret(*texts: str | bytes) -> None:
    for text in texts:
        if isinstance(text, bytes):
            text = text.decode(errors="replace")
        for secret in (*SECRETS, *KEY_TEXTS):
            assert secret not in text


def flip(data: bytes, bit: int) -> bytes:
    changed = bytearray(data)
    changed[bit // 8] ^= 1 << (bit % 8)
    return bytes(changed)


POISON = Poison(fingerprint=CREDS.fingerprint, reason="invalid_grant", at=1.5)
BACKOFF = Backoff(fingerprint=CREDS.fingerprint, not_before=2.25, failures=3)


class TestSealedFormat:
    """What a sealed record looks like: a clear header, one ciphertext, nothing secret."""

    def test_round_trip_and_clear_header(self):
        """The record comes back whole; the header shows revision, markers, key id; no secret."""
        codec = bound(ring(K1))
        record = Record(credential=CREDS, revision=7, poison=POISON, backoff=BACKOFF)

        sealed = codec.encode(record)

        assert record == codec.decode(sealed)
        header = read_sealed_header(sealed)
        assert header is not None
        assert (7, False, POISON, BACKOFF, "k1", "A256GCM") == (
            header.revision,
            header.logged_out,
            header.poison,
            header.backoff,
            header.key_id,
            header.algorithm,
        )
        doc = json.loads(sealed)
        assert {
            "algorithm",
            "backoff",
            "ciphertext",
            "format",
            "key_id",
            "logged_out",
            "nonce",
            "poison",
            "revision",
        } == set(doc)
        assert 12 == len(base64.b64decode(doc["nonce"]))
        assert_no_secret(sealed)

    def test_tombstone_is_sealed_and_readable_without_the_key(self):
        """A logout's tombstone says so in the clear and still opens only with the key."""
        codec = bound(ring(K1))
        sealed = codec.encode(Record(credential=None, revision=3))

        header = read_sealed_header(sealed)
        assert header is not None
        assert (3, True) == (header.revision, header.logged_out)
        assert Record(credential=None, revision=3) == codec.decode(sealed)
        with pytest.raises(CannotDecrypt):
            bound(ring(K1_OTHER)).decode(sealed)

    def test_a_fresh_nonce_every_write(self):
        """The same record sealed twice gives two different nonces and ciphertexts."""
        codec = bound(ring(K1))
        record = Record(credential=CREDS, revision=1)

        first, second = json.loads(codec.encode(record)), json.loads(codec.encode(record))

        assert first["nonce"] != second["nonce"]
        assert first["ciphertext"] != second["ciphertext"]

    def test_plaintext_is_not_a_sealed_header(self):
        assert None is read_sealed_header(NativeCodec().encode(Record(credential=CREDS)))
        assert None is read_sealed_header(b"\xff not json")

    def test_writes_use_the_current_key_reads_any(self):
        """Sealed with k1, opened by [k2, k1]; re-encoded by it, sealed with k2."""
        old = bound(ring(K1))
        both = bound(ring(K2, K1))
        record = Record(credential=CREDS, revision=4)

        resealed = both.encode(both.decode(old.encode(record)))

        assert "k2" == json.loads(resealed)["key_id"]
        assert record == bound(ring(K2)).decode(resealed)

    def test_native_codec_names_an_encrypted_record(self):
        """A process without the key is told the store is encrypted, not just "bad format"."""
        sealed = bound(ring(K1)).encode(Record(credential=CREDS))
        with pytest.raises(CodecError, match="encrypted"):
            NativeCodec().decode(sealed)


class TestMisuse:
    """Configurations that cannot work fail at once, with what to do instead."""

    def test_codex_codec_is_refused(self):
        """The Codex CLI must be able to read its auth.json: no encryption around CodexCodec."""
        with pytest.raises(EngineMisuse, match="Codex"):
            EncryptedCodec(ring(K1), inner=CodexCodec())

    def test_nested_and_wrong_types(self):
        with pytest.raises(EngineMisuse):
            EncryptedCodec(ring(K1), inner=EncryptedCodec(ring(K1)))
        with pytest.raises(EngineMisuse, match="KeyRing"):
            EncryptedCodec(K1)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="context"):
            EncryptedCodec(ring(K1), context="")

    def test_an_unbound_codec_refuses(self):
        """Only a store binds a codec: an unbound one never seals without a binding."""
        codec = EncryptedCodec(ring(K1))
        with pytest.raises(EngineMisuse, match="not bound"):
            codec.encode(Record(credential=CREDS))
        with pytest.raises(EngineMisuse, match="not bound"):
            codec.decode(b"{}")

    def test_the_given_codec_stays_unbound(self, tmp_path):
        """A store binds a copy: one codec object configures several stores."""
        codec = EncryptedCodec(ring(K1))
        a = FileStore(tmp_path / "a.json", codec=codec)
        b = FileStore(tmp_path / "b.json", codec=codec)

        a.write(Record(credential=CREDS), None)
        (tmp_path / "b.json").write_bytes((tmp_path / "a.json").read_bytes())

        assert None is codec.binding
        assert ("file", str((tmp_path / "a.json").resolve())) == a.codec.binding  # type: ignore[attr-defined]
        with pytest.raises(CannotDecrypt) as caught:
            b.read()
        assert "decryption_failed" == caught.value.reason


# -- properties ------------------------------------------------------------------------------------

records = _strategies()
secrets_ = st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=4, unique=True)
revisions = st.integers(min_value=0, max_value=2**53)
names = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40)


def ring_of(keys: list[bytes], current: int) -> KeyRing:
    ordered = [keys[current], *keys[:current], *keys[current + 1 :]]
    return KeyRing([DataKey(f"key-{keys.index(k)}", k) for k in ordered])


class TestProperties:
    """For any record and key ring: round trip; any change of the stored bytes is refused."""

    @given(record=records, revision=revisions, keys=secrets_, data=st.data())
    def test_decrypt_of_encrypt_is_identity(self, record, revision, keys, data):
        """Sealed with whichever key is current, opened by any ring that holds it."""
        writer = ring_of(keys, data.draw(st.integers(0, len(keys) - 1), label="current"))
        reader = ring_of(keys, data.draw(st.integers(0, len(keys) - 1), label="reader current"))
        record = attrs.evolve(record, revision=revision)

        sealed = bound(writer).encode(record)

        assert record == bound(reader).decode(sealed)

    @given(record=records, revision=revisions, data=st.data())
    def test_any_single_bit_flip_is_refused(self, record, revision, data):
        """One bit changed anywhere in the stored bytes: CodecError or CannotDecrypt, never a
        record (canonical JSON and base64 leave no bit that does not count)."""
        codec = bound(ring(K1))
        sealed = codec.encode(attrs.evolve(record, revision=revision))
        bit = data.draw(st.integers(0, len(sealed) * 8 - 1), label="bit")

        with pytest.raises((CodecError, CannotDecrypt)):
            codec.decode(flip(sealed, bit))

    def test_every_single_bit_flip_of_one_record_is_refused(self):
        """Exhaustively, for a record with every field and both markers: all bits count."""
        codec = bound(ring(K1))
        sealed = codec.encode(Record(credential=CREDS, revision=12, poison=POISON, backoff=BACKOFF))

        accepted = []
        for bit in range(len(sealed) * 8):
            try:
                codec.decode(flip(sealed, bit))
            except (CodecError, CannotDecrypt):
                continue
            accepted.append(bit)

        assert [] == accepted

    @given(record=records, name=names, other=names, kind=st.sampled_from(["redis", "keyring"]))
    def test_another_store_or_credential_cannot_open_it(self, record, name, other, kind):
        """The associated data binds the store kind and name: moved, it does not open."""
        sealed = bound(ring(K1), name=name).encode(record)

        for wrong in (bound(ring(K1), name=name, kind=kind), bound(ring(K1), name=other)):
            if wrong.binding == ("file", name):
                continue  # the same store after all
            with pytest.raises(CannotDecrypt) as caught:
                wrong.decode(sealed)
            assert "decryption_failed" == caught.value.reason

    @given(record=records, keys=secrets_)
    def test_a_dropped_key_is_named_unknown(self, record, keys):
        """A ring without the key the record names: unknown key id, nothing guessed."""
        sealed = bound(ring_of(keys, 0)).encode(record)
        others = [DataKey("key-other", os.urandom(32))] + [
            DataKey(f"key-{n}", k) for n, k in enumerate(keys) if n != 0
        ]

        with pytest.raises(CannotDecrypt) as caught:
            bound(KeyRing(others)).decode(sealed)
        assert "unknown_key_id" == caught.value.reason

    @settings(max_examples=25)
    @given(record=records, data=st.data())
    def test_a_store_refuses_a_flipped_file_and_leaves_it(self, record, data):
        """Through FileStore: read and write raise a typed AuthError; the bytes stay as they
        were."""
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "auth.json"
            store = FileStore(path, codec=EncryptedCodec(ring(K1)))
            store.write(record, None)
            bit = data.draw(st.integers(0, path.stat().st_size * 8 - 1), label="bit")
            path.write_bytes(flip(path.read_bytes(), bit))
            before = path.read_bytes()

            with pytest.raises(StorageCorrupt):
                store.read()
            with pytest.raises(StorageCorrupt):
                store.write(Record(credential=CREDS), 1)

            assert before == path.read_bytes()


# -- key rings -------------------------------------------------------------------------------------


class TestKeyText:
    """The text form: ID:BASE64 a line or comma-separated, current first; mistakes are named."""

    def test_lines_commas_comments_and_derived_ids(self):
        bare = base64.b64encode(os.urandom(32)).decode()
        keys = KeyRing.parse(f"# rotated 2026-05\n{K2}, {K1}\n{bare}  # legacy\n")

        assert ("k2", "k1", DataKey.derived_id(base64.b64decode(bare))) == keys.ids
        assert "k2" == keys.current.id

    def test_url_safe_base64(self):
        secret = os.urandom(32)
        keys = KeyRing.parse("u1:" + base64.urlsafe_b64encode(secret).decode())
        assert secret == keys.current.secret

    @pytest.mark.parametrize(
        ("text", "problem"),
        [
            ("", "holds no key"),
            ("# nothing\n", "holds no key"),
            ("k1:" + base64.b64encode(b"short").decode(), "Key 1 .* not 32 bytes"),
            ("k1:not base64!", "Key 1 .* not 32 bytes"),
            (f"{K1}\n{K1}", "key id 'k1' twice"),
            ("bad id:" + base64.b64encode(bytes(32)).decode(), "Key 1 .*key id"),
        ],
    )
    def test_mistakes_are_named_never_echoed(self, text, problem):
        with pytest.raises(KeyConfigurationError, match=problem) as caught:
            KeyRing.parse(text)
        assert_no_secret(str(caught.value))
        assert "not base64!" not in str(caught.value)

    def test_reprs_hold_no_key(self):
        keys = ring(K2, K1)
        assert_no_secret(repr(keys), repr(keys.current), repr(bound(keys)))
        assert "'k2'" in repr(keys)

    def test_generate_key(self):
        line = generate_key()
        key_id, _, encoded = line.partition(":")
        assert 32 == len(base64.b64decode(encoded))
        assert key_id == DataKey.derived_id(base64.b64decode(encoded))
        assert "mine" == KeyRing.parse(generate_key("mine")).current.id


class TestKeySources:
    """Keys from a variable, an owner-only file, the OS keyring, or a callable."""

    def test_environment_variable(self, monkeypatch):
        monkeypatch.setenv("MY_KEYS", f"{K2},{K1}")
        assert ("k2", "k1") == KeyRing.from_env("MY_KEYS").ids

    def test_unset_variable_is_named(self, monkeypatch):
        monkeypatch.delenv("MY_KEYS", raising=False)
        with pytest.raises(KeyConfigurationError, match="MY_KEYS is not set"):
            KeyRing.from_env("MY_KEYS")

    @pytest.mark.parametrize("mode", [0o600, 0o400])
    def test_owner_only_key_file(self, tmp_path, mode):
        path = tmp_path / "keys"
        path.write_text(f"{K2}\n{K1}\n")
        path.chmod(mode)
        assert ("k2", "k1") == KeyRing.from_file(path).ids

    @pytest.mark.parametrize("mode", [0o640, 0o644, 0o604, 0o660, 0o602])
    def test_key_file_open_to_others_is_refused(self, tmp_path, mode):
        """Readable (or writable) by group or others: refused, saying what to run."""
        path = tmp_path / "keys"
        path.write_text(K1)
        path.chmod(mode)
        with pytest.raises(KeyConfigurationError, match=f"chmod 600 {path}") as caught:
            KeyRing.from_file(path)
        assert f"mode {mode:04o}" in str(caught.value)
        assert_no_secret(str(caught.value))

    def test_missing_key_file_and_directory(self, tmp_path):
        with pytest.raises(KeyConfigurationError, match="does not exist"):
            KeyRing.from_file(tmp_path / "nope")
        with pytest.raises(KeyConfigurationError, match="not a regular file"):
            KeyRing.from_file(tmp_path)

    def test_os_keyring_holds_the_key_the_file_holds_the_ciphertext(self, tmp_path):
        """The key lives in the keyring; the shared file has only ciphertext and no key."""
        backend = keyring_file.PlaintextKeyring()
        backend.file_path = str(tmp_path / "keyring.cfg")
        backend.set_password("authfsm-keys", "myapp", K1)
        path = tmp_path / "auth.json"

        store = FileStore(
            path,
            codec=EncryptedCodec(KeyRing.from_keyring("authfsm-keys", "myapp", backend=backend)),
        )
        stored = store.write(Record(credential=CREDS), None)

        assert stored == store.read()
        assert_no_secret(path.read_bytes())
        with pytest.raises(KeyConfigurationError, match="holds no keys"):
            KeyRing.from_keyring("authfsm-keys", "nobody", backend=backend)

    def test_callable_is_lazy_and_reloaded_on_an_unknown_key_id(self, tmp_path):
        """A KMS callable: called on first use; a new key id reloads it (rate-limited)."""
        served = [K1]
        calls = []

        def kms() -> str:
            calls.append(1)
            return "\n".join(served)

        keys = KeyRing.from_callable(kms, name="test KMS", reload_after=0.0)
        assert [] == calls
        store = FileStore(tmp_path / "auth.json", codec=EncryptedCodec(keys))
        stored = store.write(Record(credential=CREDS), None)
        assert 1 == len(calls)

        served[:] = [K2, K1]  # the KMS rotated; another process re-sealed with k2
        FileStore(tmp_path / "auth.json", codec=EncryptedCodec(ring(K2, K1))).reseal(1)

        assert stored == store.read()
        assert 2 == len(calls)

    def test_reload_is_rate_limited(self):
        calls = []

        def kms() -> str:
            calls.append(1)
            return K1

        keys = KeyRing.from_callable(kms, reload_after=3600.0)
        for _ in range(5):
            assert None is keys.find("k-unknown")
        assert 1 == len(calls)

    def test_a_failing_callable_is_transient_and_names_the_store(self, tmp_path):
        """KMS down: KeyUnavailable (a StorageUnavailable) naming the store, not the error text."""

        def kms() -> str:
            raise RuntimeError("vault said: token=hvs.SECRET")

        path = tmp_path / "auth.json"
        store = FileStore(path, codec=EncryptedCodec(KeyRing.from_callable(kms)))
        with pytest.raises(KeyUnavailable) as caught:
            store.write(Record(credential=CREDS), None)
        assert isinstance(caught.value, StorageUnavailable)
        assert str(path) in str(caught.value)
        assert "hvs.SECRET" not in str(caught.value)
        assert not path.exists()

    def test_key_file_reloaded_when_a_new_key_appears(self, tmp_path):
        """Rotation without restarts: the file gains k2, a sibling seals with it, we follow."""
        keys_path = tmp_path / "keys"
        keys_path.write_text(K1)
        keys_path.chmod(0o600)
        path = tmp_path / "auth.json"
        ours = FileStore(path, codec=EncryptedCodec(KeyRing.from_file(keys_path, reload_after=0)))
        stored = ours.write(Record(credential=CREDS), None)

        keys_path.write_text(f"{K2}\n{K1}")
        FileStore(path, codec=EncryptedCodec(KeyRing.from_file(keys_path))).reseal(1)

        assert "k2" == json.loads(path.read_bytes())["key_id"]
        assert stored == ours.read()
        assert "k2" == ours.codec.keys.current.id  # type: ignore[attr-defined]
