"""Tests for learnae.identity: key files, author ids (did:key), Ed25519 sign/verify."""

from __future__ import annotations

import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from learnae.errors import BadSignature, ConfigError, IdentityError
from learnae.identity import Identity, author_id, parse_author_id, read_author_file, verify

# RFC 8032 section 7.1, TEST 1 (empty message).
RFC8032_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_SIG = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)

# The all-zero 32-byte public key (pinned; cross-checked below with a separate base58).
ZERO_KEY_ID = "z6MkeTG3bFFSLYVU7VqhgZxqr6YzpaGrQtFMh1uvqGy1vDnP"

# did:key vectors from the W3C CCG did:key method spec and its test vectors:
# - the spec's example DID document: did:key:z6MkpTHR8V... with
#   publicKeyBase58 "B12NYF8RrR3h41TDCTJojY59usg3mbtbjnFs7Eud1Y6u";
# - test-vectors (ed25519): did:key:z6MkiTBz1y... with publicKeyJwk
#   x = "O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik", which is the public key of the
#   all-zero 32-byte private seed.
DID_KEY_VECTORS = [
    (
        "94966b7c08e405775f8de6cc1c4508f6eb227403e1025b2c8ad2d7477398c5b2",
        "z6MkpTHR8VNsBxYAAWHut2Geadd9jSwuBV8xRoAnwWsdvktH",
    ),
    (
        "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29",
        "z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
    ),
]


def base58btc(data: bytes) -> str:
    """Plain base58 (Bitcoin alphabet), independent of the multiformats package."""
    alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    n, out = int.from_bytes(data, "big"), ""
    while n:
        n, r = divmod(n, 58)
        out = alphabet[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def flip(data: bytes, bit: int) -> bytes:
    b = bytearray(data)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


# ------------------------------------------------------------------ key files
def test_save_load_round_trip(tmp_path):
    ident = Identity.generate()
    path = tmp_path / "keys" / "node" / "identity.pem"  # parents are created
    ident.save(path)
    loaded = Identity.load(path)
    assert loaded.public_key == ident.public_key
    assert loaded.author_id == ident.author_id
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    assert [p.name for p in path.parent.iterdir()] == ["identity.pem"]  # no temp file left


def test_saved_key_file_has_mode_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        Identity.generate().save(tmp_path / "id.pem")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "id.pem").stat().st_mode) == 0o600


def test_save_refuses_to_overwrite(tmp_path):
    path = tmp_path / "id.pem"
    first, second = Identity.generate(), Identity.generate()
    first.save(path)
    with pytest.raises(IdentityError, match="already exists; refusing to overwrite"):
        second.save(path)
    assert Identity.load(path).public_key == first.public_key
    second.save(path, overwrite=True)
    assert Identity.load(path).public_key == second.public_key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_load_refuses_key_readable_by_others(tmp_path, mode):
    path = tmp_path / "id.pem"
    Identity.generate().save(path)
    path.chmod(mode)
    with pytest.raises(IdentityError, match=f"mode {mode:04o}.*chmod 600 {path}") as info:
        Identity.load(path)
    assert "group or others" in info.value.reason


def test_load_missing_file(tmp_path):
    with pytest.raises(IdentityError, match="no key file at .*nope.pem"):
        Identity.load(tmp_path / "nope.pem")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_load_unreadable_file(tmp_path):
    path = tmp_path / "id.pem"
    Identity.generate().save(path)
    path.chmod(0o000)
    with pytest.raises(IdentityError, match="cannot open key file .*Permission denied"):
        Identity.load(path)


def test_key_bytes_are_never_written_to_a_file_others_can_read(tmp_path, monkeypatch):
    real_write, modes = os.write, []

    def spying_write(fd, data):
        modes.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", spying_write)
    old = os.umask(0)
    try:
        Identity.generate().save(tmp_path / "id.pem")
    finally:
        os.umask(old)
    assert modes == [0o600]


def test_load_path_through_a_file(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(IdentityError, match="cannot open key file .*Not a directory"):
        Identity.load(tmp_path / "file" / "id.pem")


def test_save_path_through_a_file(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(IdentityError, match="cannot write key file"):
        Identity.generate().save(tmp_path / "file" / "id.pem")


def test_load_fifo_does_not_hang(tmp_path):
    os.mkfifo(tmp_path / "fifo", 0o600)
    with pytest.raises(IdentityError, match="not a regular file"):
        Identity.load(tmp_path / "fifo")


def test_load_directory(tmp_path):
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(IdentityError, match="not a regular file"):
        Identity.load(tmp_path / "dir")


def write_private(path, data: bytes):
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def test_load_wrong_key_type(tmp_path):
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = write_private(tmp_path / "ec.pem", pem)
    with pytest.raises(
        IdentityError, match=r"holds an elliptic-curve \(ECDSA\) key, expected an Ed25519 key"
    ):
        Identity.load(path)


def test_load_not_a_key(tmp_path):
    path = write_private(tmp_path / "id.pem", b"hello\n")
    with pytest.raises(IdentityError, match="does not hold a PEM private key"):
        Identity.load(path)


def test_load_encrypted_key(tmp_path):
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    path = write_private(tmp_path / "id.pem", pem)
    with pytest.raises(IdentityError, match="is encrypted"):
        Identity.load(path)


# ------------------------------------------------------------- sign / verify
def test_sign_and_verify():
    ident = Identity.generate()
    sig = ident.sign(b"checkpoint tx")
    assert len(sig) == 64 and len(ident.public_key) == 32
    assert verify(ident.public_key, b"checkpoint tx", sig) is None


def test_rfc8032_test_1():
    ident = Identity(Ed25519PrivateKey.from_private_bytes(RFC8032_SECRET))
    assert ident.public_key == RFC8032_PUBLIC
    assert ident.sign(b"") == RFC8032_SIG
    verify(RFC8032_PUBLIC, b"", RFC8032_SIG)


MESSAGE = b"a transaction's unsigned DAG-CBOR encoding"


@pytest.fixture(scope="module")
def signed():
    ident = Identity.generate()
    return ident, ident.sign(MESSAGE)


@given(bit=st.integers(0, len(MESSAGE) * 8 - 1))
def test_flipped_message_bit_fails(signed, bit):
    ident, sig = signed
    with pytest.raises(BadSignature, match=f"signature by {ident.author_id} does not verify"):
        verify(ident.public_key, flip(MESSAGE, bit), sig)


@given(bit=st.integers(0, 64 * 8 - 1))
def test_flipped_signature_bit_fails(signed, bit):
    ident, sig = signed
    with pytest.raises(BadSignature, match=ident.author_id):
        verify(ident.public_key, MESSAGE, flip(sig, bit))


@given(bit=st.integers(0, 32 * 8 - 1))
def test_flipped_key_bit_fails(signed, bit):
    ident, sig = signed
    key = flip(ident.public_key, bit)
    with pytest.raises(BadSignature, match=author_id(key)):
        verify(key, MESSAGE, sig)


@pytest.mark.parametrize(
    ("key", "sig", "match"),
    [
        (bytes(31), bytes(64), "public key is 31 bytes, expected 32"),
        ("z6Mk", bytes(64), "public key is a str"),
        (RFC8032_PUBLIC, bytes(63), "is 63 bytes, expected 64"),
        (RFC8032_PUBLIC, RFC8032_SIG + b"\0", "is 65 bytes, expected 64"),
        (RFC8032_PUBLIC, None, "is a NoneType, expected 64"),
    ],
)
def test_wrong_lengths_are_bad_signatures(key, sig, match):
    with pytest.raises(BadSignature, match=match):
        verify(key, b"", sig)


# ----------------------------------------------------------------- author ids
def test_author_id_of_zero_key():
    assert author_id(bytes(32)) == ZERO_KEY_ID
    assert ZERO_KEY_ID == "z" + base58btc(b"\xed\x01" + bytes(32))
    assert parse_author_id(ZERO_KEY_ID) == bytes(32)


@pytest.mark.parametrize(("key_hex", "did"), DID_KEY_VECTORS)
def test_did_key_spec_vectors(key_hex, did):
    key = bytes.fromhex(key_hex)
    assert author_id(key) == did
    assert parse_author_id(did) == key


def test_author_id_of_all_zero_seed_is_the_did_key_test_vector():
    ident = Identity(Ed25519PrivateKey.from_private_bytes(bytes(32)))
    assert ident.author_id == "z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"


@given(key=st.binary(min_size=32, max_size=32))
def test_author_id_round_trip(key):
    text = author_id(key)
    assert text.startswith("z6Mk")
    assert text == "z" + base58btc(b"\xed\x01" + key)
    assert parse_author_id(text) == key


def test_author_id_needs_32_bytes():
    with pytest.raises(IdentityError, match="32 bytes, got 33 bytes"):
        author_id(bytes(33))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "not a base58btc multibase string"),
        ("did:key:" + ZERO_KEY_ID, "not a base58btc multibase string"),
        ("f" + (b"\xed\x01" + bytes(32)).hex(), "not a base58btc multibase string"),
        ("z" + "1" * 100, "not a base58btc multibase string"),
        ("z6Mk0OIl", "not valid base58btc"),
        ("z", r"multicodec prefix \(none\), expected ed01"),
        ("z" + base58btc(b"\xe7\x01" + bytes(33)), "multicodec prefix e701"),  # secp256k1-pub
        ("z" + base58btc(b"\xed\x01" + bytes(31)), "31-byte key, expected 32"),
        ("z" + base58btc(b"\xed\x01" + bytes(33)), "33-byte key, expected 32"),
        (b"z6Mk", "is a string, got bytes"),
    ],
)
def test_parse_author_id_rejects(text, match):
    with pytest.raises(IdentityError, match=match):
        parse_author_id(text)


# ------------------------------------------------------------------ author files
def test_author_file_takes_ids_and_hex_keys_in_file_order(tmp_path):
    a, b, c = (Identity.generate() for _ in range(3))
    path = tmp_path / "authors.txt"
    path.write_text(f"# the lab\n{a.author_id}  # alice\n\n   {b.public_key.hex().upper()}\n"
                    f"{c.public_key.hex()}#carol\n")
    assert read_author_file(path) == (a.public_key, b.public_key, c.public_key)
    path.write_text("# nobody yet\n\n")
    assert read_author_file(path) == ()  # empty is the caller's policy


@pytest.mark.parametrize(("lines", "line", "reason"), [
    (["z6Mk0OIl"], 1, "not valid base58btc"),
    ([ZERO_KEY_ID, "  ", "ab" * 31], 3, "not a base58btc multibase string"),  # 62 hex digits
    (["# x", "g" * 64], 2, "not a base58btc"),
    (["ab " * 32], 1, "not a base58btc"),  # hex digits, but spaced
    ([ZERO_KEY_ID, "did:key:" + ZERO_KEY_ID], 2, "not a base58btc"),
])
def test_author_file_names_the_bad_line_and_the_accepted_forms(tmp_path, lines, line, reason):
    path = tmp_path / "authors.txt"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=f"{path}:{line}: .*{reason}.*; name an author by"
                                          r" author id \(z6Mk...\) or by public key \(64 hex"):
        read_author_file(path)


def test_author_file_refuses_an_author_listed_twice_in_either_form(tmp_path):
    path = tmp_path / "authors.txt"
    path.write_text(f"{ZERO_KEY_ID}\n# again, as a key:\n{bytes(32).hex()}\n")
    with pytest.raises(ConfigError, match=f"{path}:3: author {ZERO_KEY_ID} is listed twice"
                                          r" \(first on line 1\)"):
        read_author_file(path)


def test_author_file_unreadable_or_not_text(tmp_path):
    with pytest.raises(ConfigError, match="no author file at .*missing.txt"):
        read_author_file(tmp_path / "missing.txt")
    with pytest.raises(ConfigError, match="cannot read author file"):
        read_author_file(tmp_path)  # a directory
    (tmp_path / "bin").write_bytes(b"\xff\xfe\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        read_author_file(tmp_path / "bin")
    with pytest.raises(ConfigError, match="no --adopt file at .*missing.txt"):
        read_author_file(tmp_path / "missing.txt", "--adopt file")
