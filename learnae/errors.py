"""Typed errors for learnae.

Every error carries a ``reason``: one sentence a person can act on. Long-running
roles (node, sensor) catch :class:`LearnaeError`, count it by ``code`` and carry
on; they never die on a bad peer, transaction or chunk.
"""

from __future__ import annotations


class LearnaeError(Exception):
    """Base of every learnae error.

    Attributes:
        reason: a readable sentence saying what was wrong and, where it helps, what to do.
        code: a short stable identifier used to count rejections (``"nan"``, ``"bad-signature"``).
    """

    code = "error"

    def __init__(self, reason: str, *, code: str | None = None):
        super().__init__(reason)
        self.reason = reason
        if code is not None:
            self.code = code


# content layer -------------------------------------------------------------
class ContentError(LearnaeError):
    """A problem with content addressing (CIDs)."""

    code = "content"


class InvalidCID(ContentError):
    """A CID string does not parse, or names a codec/hash learnae does not accept."""

    code = "invalid-cid"


class FormatError(LearnaeError):
    """A checkpoint or data chunk file is not acceptable."""

    code = "format"


class CorruptFile(FormatError):
    """The bytes are not a well-formed safetensors file (bad header, offsets, dtype)."""

    code = "corrupt"


class OversizeError(FormatError):
    """An object is larger than the swarm's limit for its kind."""

    code = "oversize"


class SchemaMismatch(FormatError):
    """Tensor names, shapes or dtypes differ from what the swarm expects."""

    code = "schema"


class NonFiniteError(FormatError):
    """A tensor holds NaN or infinity."""

    code = "non-finite"


# identity layer ------------------------------------------------------------
class IdentityError(LearnaeError):
    """A key file or author id is unusable."""

    code = "identity"


class BadSignature(IdentityError):
    """An Ed25519 signature does not verify for the claimed author and message."""

    code = "bad-signature"


# ipfs layer ----------------------------------------------------------------
class IpfsError(LearnaeError):
    """An IPFS operation failed."""

    code = "ipfs"


class IpfsTimeout(IpfsError):
    """An IPFS operation did not finish within its timeout (for ``cat``: nobody served the CID)."""

    code = "timeout"


class InvalidMultiaddr(IpfsError):
    """A multiaddr string does not parse or lacks the parts an operation needs."""

    code = "invalid-multiaddr"


class NodeClosed(IpfsError):
    """The IPFS node was closed (or never started) before the operation."""

    code = "closed"


class ConfigError(LearnaeError):
    """A configuration, manifest or invite file is missing or invalid."""

    code = "config"


# ledger layer --------------------------------------------------------------
class LedgerError(LearnaeError):
    """The tangle store or its sync failed."""

    code = "ledger"


class TxRejected(LedgerError):
    """A transaction failed validation; ``code`` names the rule it broke.

    Codes (docs/design.md "Content and wire formats"): ``undecodable``, ``not-canonical``, ``bad-version``,
    ``bad-fields``, ``bad-type``, ``bad-signature``, ``low-pow``, ``too-large``, ``bad-parents``,
    ``future-time``, ``before-parent``, ``wrong-swarm``, ``unknown-kind``, ``bad-payload``;
    for membership (:mod:`learnae.ledger.members`) ``not-admitted``, ``revoked``,
    ``sensor-role``, ``not-steward`` and ``open-swarm``; for attestations ``attestation-parent`` (the judged checkpoint is not a
    parent), ``attestation-target`` (it is not a checkpoint held here) and ``self-attestation``;
    ``bad-snapshot`` for a peer's announced snapshot transaction that is not one
    (:mod:`learnae.ledger.sync`). A snapshot file that cannot be imported raises a
    :class:`LedgerError` coded ``snapshot-oversize``, ``snapshot-malformed``,
    ``snapshot-version``, ``snapshot-wrong-swarm`` or ``snapshot-genesis``
    (:meth:`learnae.ledger.tangle.Tangle.import_snapshot`).
    """

    code = "tx-rejected"
