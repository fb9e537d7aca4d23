"""Ed25519 identities: key files, author ids, signing and verification.

Signatures are Ed25519 (RFC 8032, "PureEdDSA"): 32-byte public keys, 64-byte
signatures, computed by the ``cryptography`` library. A transaction's ``author`` is
the raw 32-byte public key; people see it as an *author id*, the method-specific
identifier of a ``did:key`` (W3C CCG did:key method): the multicodec ``ed25519-pub``
prefix (varint 0xed, i.e. the bytes ``0xed 0x01``) followed by the key, in multibase
base58btc (prefix ``z``), so every author id starts with ``z6Mk``.

Key files hold the private key as unencrypted PKCS#8 PEM, readable by their owner
only (mode 0600): :meth:`Identity.save` creates them that way and :meth:`Identity.load`
refuses any other key file, like ssh does.

Author files (:func:`read_author_file`) list authors one a line, by author id or public key:
a swarm's admission list, the authors whose data a node adopts.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, rsa, x448, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from multiformats import multibase

from learnae.errors import BadSignature, ConfigError, IdentityError
from learnae.files import read_bounded, write_atomic, write_new

__all__ = ["Identity", "author_id", "parse_author_id", "read_author_file", "verify"]

_ED25519_PUB = b"\xed\x01"  # multicodec 'ed25519-pub' (0xed) as an unsigned varint
_MAX_KEY_FILE = 64 * 1024
_OTHER_KEYS = [
    (rsa.RSAPrivateKey, "an RSA"),
    (ec.EllipticCurvePrivateKey, "an elliptic-curve (ECDSA)"),
    (dsa.DSAPrivateKey, "a DSA"),
    (ed448.Ed448PrivateKey, "an Ed448"),
    (x25519.X25519PrivateKey, "an X25519"),
    (x448.X448PrivateKey, "an X448"),
]
_MAX_AUTHOR_ID = 64  # base58 of 34 bytes is at most 47 characters, plus 'z'
_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
_MAX_AUTHOR_FILE = 4 * 2**20  # 10,000 author ids with comments take well under 1 MiB


class Identity:
    """An Ed25519 private key: the author of transactions and chunks.

    Usually made by :meth:`generate` or :meth:`load`; the constructor wraps an existing
    ``Ed25519PrivateKey`` (e.g. one derived from a known seed in tests).
    """

    def __init__(self, private_key: Ed25519PrivateKey):
        self._key = private_key
        self._public = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @classmethod
    def generate(cls) -> Identity:
        """A fresh random identity (key from OpenSSL's cryptographically secure RNG)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        """Read a key file written by :meth:`save` (PKCS#8 PEM, unencrypted, Ed25519).

        Raises:
            IdentityError: the file is missing or unreadable, is not a regular file, lets
                group or others access it (the reason gives the ``chmod 600`` that fixes it),
                is not a PEM private key, is encrypted, or holds a key other than Ed25519.
        """
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not hang us
        except FileNotFoundError:
            raise IdentityError(f"no key file at {path}") from None
        except OSError as e:
            raise IdentityError(f"cannot open key file {path}: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise IdentityError(f"key file {path} is not a regular file")
            mode = stat.S_IMODE(st.st_mode)
            if mode & 0o077:
                raise IdentityError(
                    f"key file {path} has mode {mode:04o}, so group or others can access it;"
                    f" run `chmod 600 {path}` (and consider the key exposed if others could read it)"
                )
            with os.fdopen(fd, "rb", closefd=False) as f:
                pem = f.read(_MAX_KEY_FILE + 1)
        except OSError as e:
            raise IdentityError(f"cannot read key file {path}: {e.strerror}") from None
        finally:
            os.close(fd)
        if len(pem) > _MAX_KEY_FILE:
            raise IdentityError(f"key file {path} is over {_MAX_KEY_FILE} bytes; not a key file")
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except TypeError:
            raise IdentityError(
                f"key file {path} is encrypted; learnae key files are unencrypted PKCS#8 PEM"
            ) from None
        except (ValueError, UnsupportedAlgorithm):
            raise IdentityError(
                f"key file {path} does not hold a PEM private key (expected PKCS#8 Ed25519)"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            kind = next(
                (k for c, k in _OTHER_KEYS if isinstance(key, c)), f"a {type(key).__name__}"
            )
            raise IdentityError(f"key file {path} holds {kind} key, expected an Ed25519 key")
        return cls(key)

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the private key to ``path`` as unencrypted PKCS#8 PEM, mode 0600.

        Parent directories are created (mode 0700). The key is written to a temporary
        file created with mode 0600 in the same directory, synced, then moved into place and
        the directory synced (:mod:`learnae.files`), so ``path`` is never partly written nor
        readable by others, even briefly, and survives a power cut once this returns.

        Raises:
            IdentityError: ``path`` exists and ``overwrite`` is false, or the write failed.
        """
        path = Path(path)
        pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        exists = IdentityError(
            f"key file {path} already exists; refusing to overwrite it (pass overwrite=True)"
        )
        if not overwrite and path.exists():
            raise exists
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if overwrite:
                write_atomic(path, pem, mode=0o600)
            else:
                try:
                    write_new(path, pem, mode=0o600)
                except FileExistsError:
                    raise exists from None  # it appeared meanwhile
        except OSError as e:
            raise IdentityError(f"cannot write key file {path}: {e.strerror or e}") from None

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key (RFC 8032 encoding)."""
        return self._public

    @property
    def author_id(self) -> str:
        """This identity's author id (``z6Mk...``; see :func:`author_id`)."""
        return author_id(self._public)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature (RFC 8032) of ``message``; deterministic."""
        return self._key.sign(message)

    def __repr__(self) -> str:
        return f"Identity({self.author_id})"


def author_id(public_key: bytes) -> str:
    """The did:key method-specific id of a 32-byte Ed25519 public key.

    ``"z"`` + base58btc(``0xed 0x01`` + key): multicodec ``ed25519-pub`` in multibase, as
    in the W3C did:key method, so ``"did:key:" + author_id(key)`` is the key's DID.

    Raises:
        IdentityError: ``public_key`` is not 32 bytes.
    """
    if not isinstance(public_key, bytes | bytearray) or len(public_key) != 32:
        raise IdentityError(f"an Ed25519 public key is 32 bytes, got {_describe(public_key)}")
    return multibase.encode(_ED25519_PUB + bytes(public_key), "base58btc")


def parse_author_id(text: str) -> bytes:
    """Inverse of :func:`author_id`: the 32-byte public key named by ``text``.

    Raises:
        IdentityError: ``text`` is not a string, does not start with ``z`` (base58btc),
            is not valid base58, lacks the ``ed25519-pub`` multicodec prefix, or holds a key
            that is not 32 bytes.
    """
    if not isinstance(text, str):
        raise IdentityError(f"an author id is a string, got {type(text).__name__}")
    shown = text if len(text) <= _MAX_AUTHOR_ID else text[:_MAX_AUTHOR_ID] + "..."
    if not text.startswith("z") or len(text) > _MAX_AUTHOR_ID:
        raise IdentityError(
            f"author id {shown!r} is not a base58btc multibase string ('z6Mk...', at most"
            f" {_MAX_AUTHOR_ID} characters)"
        )
    try:
        raw = multibase.decode(text)
    except (ValueError, KeyError):
        raise IdentityError(f"author id {shown!r} is not valid base58btc") from None
    if not raw.startswith(_ED25519_PUB):
        raise IdentityError(
            f"author id {shown!r} does not name an Ed25519 key (multicodec prefix"
            f" {raw[:2].hex() or '(none)'}, expected ed01)"
        )
    key = raw[len(_ED25519_PUB) :]
    if len(key) != 32:
        raise IdentityError(f"author id {shown!r} holds a {len(key)}-byte key, expected 32 bytes")
    return key


def read_author_file(path: str | os.PathLike[str], what: str = "author file") -> tuple[bytes, ...]:
    """The authors a text file lists, one a line (an admission list, an ``--adopt`` file).

    A line names an author by author id (``z6Mk...``, see :func:`author_id`) or by Ed25519
    public key in 64 hex digits; ``#`` starts a comment; blank lines are skipped. A file that
    lists nobody gives an empty tuple: whether that is allowed is the caller's rule.

    Args:
        path: the file.
        what: what the file is, for error messages (``"admission file"``).

    Returns:
        The 32-byte public keys, in file order.

    Raises:
        ConfigError: the file is unreadable, over 4 MiB or not UTF-8 text, or a line names no
            author or one listed before; the reason gives ``path:line`` and the accepted forms.
    """
    path = Path(path)
    data = read_bounded(path, what, _MAX_AUTHOR_FILE)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not UTF-8 text") from None
    first_line: dict[bytes, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if _HEX_KEY.fullmatch(entry):
            key = bytes.fromhex(entry)
        else:
            try:
                key = parse_author_id(entry)
            except IdentityError as e:
                raise ConfigError(f"{path}:{number}: {e.reason}; name an author by author id"
                                  " (z6Mk...) or by public key (64 hex digits)") from None
        if key in first_line:
            raise ConfigError(f"{path}:{number}: author {author_id(key)} is listed twice (first"
                              f" on line {first_line[key]})")
        first_line[key] = number
    return tuple(first_line)


def verify(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Check an Ed25519 signature (RFC 8032) of ``message`` by ``public_key``.

    Returns None when the signature is valid.

    Raises:
        BadSignature: the signature does not verify, or the key is not 32 bytes or the
            signature not 64; the reason names the author by author id.
    """
    if not isinstance(public_key, bytes | bytearray) or len(public_key) != 32:
        raise BadSignature(
            f"cannot check a signature: the author's public key is {_describe(public_key)},"
            " expected 32 bytes"
        )
    # author_id() costs more than the check itself: compute it only for the error message.
    if not isinstance(signature, bytes | bytearray) or len(signature) != 64:
        raise BadSignature(f"signature by {author_id(public_key)} is {_describe(signature)}, "
                           "expected 64 bytes")
    try:
        Ed25519PublicKey.from_public_bytes(bytes(public_key)).verify(bytes(signature), message)
    except (InvalidSignature, ValueError):
        raise BadSignature(f"signature by {author_id(public_key)} does not verify for this message") from None


def _describe(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return f"{len(value)} bytes"
    return f"a {type(value).__name__}"

