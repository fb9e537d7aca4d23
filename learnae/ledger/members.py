"""Membership: who may publish in a swarm, as the genesis and the ``admit``/``revoke`` txs say.

The rules (docs/design.md "Membership"):

- The swarm's **founder** is the genesis transaction's author. The manifest says whether the
  swarm is *open* (anyone may publish) or *closed* (the authors its admission list names), and
  names its **stewards** and their **quorum** ``k``.
- ``admit`` (``member``, ``role``) and ``revoke`` (``member``, ``reason``) transactions are
  signed by the founder or a steward; anyone else's is refused (``not-steward``). One by the
  founder takes effect alone; one by a steward is a vote, and takes effect once ``k`` distinct
  stewards voted alike. ``admit`` exists in closed swarms only (``open-swarm`` otherwise);
  ``revoke`` in both (an open swarm bans a key with it). The founder cannot be revoked.
- **In the tangle's order, causally.** A transaction sees the membership transactions in its
  past cone (itself excluded), its *view*. Its author may publish it when, in that view, the
  author is not revoked (``revoked``) and the swarm is open, or the author is the founder, a
  steward, on the genesis admission list, or admitted (``not-admitted``); a member admitted as
  a ``sensor`` publishes ``data`` only (``sensor-role``). A member is admitted from the point
  where its admission is in a transaction's past and revoked likewise, so a revoked member's
  earlier transactions stay valid, and every node judges a transaction alike from its
  ancestors alone, whatever order transactions arrive in. Revocation of an author id is final.
- Votes within a view are counted in the tangle's order (height, id), so two views holding the
  same membership transactions give the same :class:`Roll`.

What the ledger cannot do: refuse a revoked member's transactions that do not approve the
revocation (it may go on approving old tips; such transactions are valid, since no ancestor
says otherwise). A node therefore also stops merging the checkpoints and adopting the data of
an author revoked in its own ledger (``learnae.node.network``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from learnae.errors import TxRejected
from learnae.identity import author_id, parse_author_id
from learnae.ledger.tx import Tx

__all__ = ["KINDS", "Member", "Roll", "Rules"]

KINDS = ("admit", "revoke")
"""The membership transaction kinds."""


@dataclass(frozen=True)
class Rules:
    """A swarm's membership rules, from its genesis and manifest.

    Attributes:
        founder: the genesis author's 32-byte public key.
        admission: the public keys a closed swarm admits from the start; ``None``: open swarm.
        stewards: public keys that may sign ``admit`` and ``revoke`` besides the founder.
        quorum: distinct stewards' votes an ``admit`` or ``revoke`` needs to take effect
            (1 to ``len(stewards)``; the founder's alone always does).
    """

    founder: bytes
    admission: frozenset[bytes] | None = None
    stewards: frozenset[bytes] = frozenset()
    quorum: int = 1


@dataclass(frozen=True)
class Member:
    """One author's membership in a :class:`Roll`.

    Attributes:
        author: the author id (``"z6Mk..."``).
        role: ``"node"`` (every kind) or ``"sensor"`` (data only).
        since: the id of the ``admit`` that took effect; ``None`` for the founder, stewards and
            the genesis admission list.
        revoked: the id of the ``revoke`` that took effect, or ``None``.
        reason: that revocation's reason.
    """

    author: str
    role: str = "node"
    since: str | None = None
    revoked: str | None = None
    reason: str | None = None


@dataclass
class Roll:
    """Who may publish, as a set of membership transactions (a view) says.

    Build one with :meth:`of`. ``members``: every author the rules or the view name, by
    public key (for an open swarm only those named).
    """

    rules: Rules
    members: dict[bytes, Member] = field(default_factory=dict)

    @classmethod
    def of(cls, rules: Rules, events: Iterable[tuple[int, Tx]]) -> Roll:
        """The roll after ``events``, in any order.

        ``events``: ``(height, tx)`` of valid ``admit``/``revoke`` transactions; they are
        applied in the tangle's order (height, then id).
        """
        roll = cls(rules)
        for key in (rules.founder, *rules.stewards, *(rules.admission or ())):
            roll.members.setdefault(key, Member(author_id(key)))
        votes: defaultdict[tuple, set[bytes]] = defaultdict(set)
        for _, tx in sorted(events, key=lambda e: (e[0], e[1].id)):
            member = parse_author_id(tx.payload["member"])
            what = (tx.kind, member, tx.payload.get("role"))
            votes[what].add(tx.author)
            if not roll._carried(votes[what]):
                continue
            current = roll.members.get(member)
            if tx.kind == "revoke":
                base = current or Member(tx.payload["member"])
                if base.revoked is None:
                    roll.members[member] = Member(base.author, base.role, base.since, tx.id,
                                                  tx.payload["reason"])
            elif current is None or (current.revoked is None and current.since is not None):
                roll.members[member] = Member(tx.payload["member"], tx.payload["role"], tx.id)
        return roll

    def _carried(self, issuers: set[bytes]) -> bool:
        return (self.rules.founder in issuers
                or len(issuers & self.rules.stewards) >= self.rules.quorum)

    def check(self, tx: Tx) -> None:
        """May ``tx``'s author publish it in this view (and, for a membership transaction, sign it)?

        Raises:
            TxRejected: code ``revoked``, ``not-admitted``, ``sensor-role``, ``not-steward``,
                ``open-swarm`` (an ``admit`` in an open swarm) or ``bad-payload`` (a revocation
                of the founder).
        """
        if tx.kind == "genesis":
            return
        refusal = self._refusal(tx.author, tx.kind)
        if refusal is not None:
            raise refusal
        if tx.kind in KINDS:
            self._check_issuer(tx)

    def admits(self, author: bytes, kind: str = "data") -> bool:
        """May ``author`` (a 32-byte public key) publish a ``kind`` transaction in this view?"""
        return self._refusal(author, kind) is None

    def _refusal(self, author: bytes, kind: str) -> TxRejected | None:
        member = self.members.get(author)
        if member is not None and member.revoked is not None:
            return TxRejected(f"author {member.author} was revoked by {member.revoked}"
                              f" ({member.reason}): it may no longer publish", code="revoked")
        if self.rules.admission is not None and member is None:
            return TxRejected(f"author {author_id(author)} is not admitted to this swarm",
                              code="not-admitted")
        if member is not None and member.role == "sensor" and kind != "data":
            return TxRejected(f"author {member.author} is admitted as a sensor: it publishes data,"
                              f" not {kind} transactions", code="sensor-role")
        return None

    def _check_issuer(self, tx: Tx) -> None:
        rules = self.rules
        if tx.author != rules.founder and tx.author not in rules.stewards:
            raise TxRejected(f"{tx.kind} signed by {author_id(tx.author)}, who is neither the"
                             " founder nor a steward", code="not-steward")
        if tx.kind == "admit" and rules.admission is None:
            raise TxRejected("the swarm is open: everyone may publish, nobody needs an admit",
                             code="open-swarm")
        if tx.kind == "revoke" and parse_author_id(tx.payload["member"]) == rules.founder:
            raise TxRejected("the founder cannot be revoked", code="bad-payload")

    def revoked(self, author: bytes) -> bool:
        """Is ``author`` (a 32-byte public key) revoked in this roll?"""
        member = self.members.get(author)
        return member is not None and member.revoked is not None

    def listing(self) -> list[Member]:
        """Every member, founder first, then by author id."""
        founder = self.members.get(self.rules.founder)
        rest = sorted((m for k, m in self.members.items() if k != self.rules.founder),
                      key=lambda m: m.author)
        return ([founder] if founder else []) + rest


def event_ids(view: str) -> frozenset[str]:
    """The membership transaction ids of a view's stored form (comma-joined, sorted)."""
    return frozenset(view.split(",")) if view else frozenset()


def view_text(ids: Iterable[str]) -> str:
    """The stored form of a view: its membership transaction ids, sorted and comma-joined."""
    return ",".join(sorted(ids))
