"""What a node's network side needs of its ledger: two protocols.

A node runs a :class:`~learnae.ledger.tangle.Tangle` (its own SQLite store) kept in step by a
:class:`~learnae.ledger.sync.TangleSync`. The node's network side
(:class:`~learnae.node.network.NetworkSide`) and its spot checks
(:class:`~learnae.node.verifier.CheckpointVerifier`) use only the part of them written here,
so a large simulation can give its nodes views of one shared store instead
(:mod:`learnae.local.shared`; docs/design.md, "Fault injection").
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Protocol

from learnae.identity import Identity
from learnae.ledger.members import Roll, Rules
from learnae.ledger.tangle import Attestation
from learnae.ledger.tx import Tx

__all__ = ["LedgerReader", "LedgerWriter"]


class LedgerReader(Protocol):
    """The ledger as a node's network side reads it (see :class:`~learnae.ledger.tangle.Tangle`).

    Cursors count this node's arrivals: start with 0, pass back what the last call returned.
    """

    @property
    def swarm(self) -> str:
        """The genesis transaction's id."""
        ...

    @property
    def rules(self) -> Rules:
        """The swarm's membership rules (founder, stewards, admission)."""
        ...

    def __contains__(self, tx_id: object) -> bool: ...

    def get(self, tx_id: str) -> Tx | None:
        """The transaction ``tx_id`` if this node holds it."""
        ...

    def roll(self) -> Roll:
        """Who may publish, as this node's ledger says."""
        ...

    def latest_checkpoint_per_author(self) -> dict[bytes, Tx]:
        """Each author's latest ``checkpoint`` transaction: greatest (time, height, id)."""
        ...

    def checkpoints_since(self, cursor: int = 0) -> tuple[list[Tx], int]:
        """``checkpoint`` transactions that arrived after ``cursor``, in arrival order; the next cursor."""
        ...

    def data_since(self, cursor: int = 0) -> tuple[list[Tx], int]:
        """``data`` transactions that arrived after ``cursor``, in arrival order; the next cursor."""
        ...

    def attestations_since(self, cursor: int = 0) -> tuple[list[Attestation], int]:
        """Attestations that arrived after ``cursor``, in arrival order; the next cursor."""
        ...

    def attestations(self, subject: bytes | None = None, *, figures: bool = True) -> list[Attestation]:
        """Every attestation held (of ``subject``'s checkpoints if given), ordered by (height, id)."""
        ...


class LedgerWriter(Protocol):
    """How a node's network side appends to its ledger (see :class:`~learnae.ledger.sync.TangleSync`)."""

    newcomer: Callable[[bytes], bool] | None
    """Whether an author is on probation (its transactions are stored at a lower rate)."""
    newcomer_rate: float
    """Transactions a second stored from one newcomer."""

    @property
    def tangle(self) -> LedgerReader:
        """The node's ledger."""
        ...

    async def append(self, identity: Identity, kind: str, payload: dict, *,
                     time_ms: int | None = None, rng: random.Random | None = None,
                     approve: str | None = None) -> Tx:
        """Make, store and send one of this node's transactions on tips of its ledger.

        ``approve``: a transaction the new one must approve (an attestation's checkpoint).

        Raises:
            TxRejected: the transaction is not valid.
            LedgerError: ``approve`` is not held; the store failed.
        """
        ...
