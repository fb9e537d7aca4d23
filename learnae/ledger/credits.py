"""Who contributed what, from the ledger alone: the credits table.

Every figure is counted from the transactions a tangle holds, so every member holding the same
ledger computes the same table (``learnae ledger credits``; docs/design.md, "Credits"). Per
author:

- ``checkpoints``: ``checkpoint`` transactions published;
- ``merged``: those of them in the lineage of another author's checkpoint: named in its
  ``base``, or an ancestor (through ``base`` links) of one so named. A checkpoint counts if
  one of its children (the checkpoints naming it as a base) is another author's or counts
  itself;
- ``data_chunks``, ``data_rows``: ``data`` transactions published, and the rows they announce;
- ``rows_adopted``: the rows of those data transactions that another author's checkpoint names
  in its ``data`` (each data transaction counted once). Under the manifest's ``data_claims =
  "trust"`` these are the trainers' claims, unchecked; under ``"replay"`` only segments name
  data, and a false one is disputed;
- ``attested``, ``disputed``: its checkpoints that another member's attestation agreed with,
  and those one disputed (a checkpoint can be both).

A pruned ledger counts what it still holds: pruning drops old checkpoints and with them their
counts (the attestations' index is never pruned).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from learnae.identity import author_id

if TYPE_CHECKING:
    from learnae.ledger.tangle import Tangle

__all__ = ["Credit", "credits", "credits_json"]


@dataclass
class Credit:
    """One author's line of the credits table (see the module docstring)."""

    checkpoints: int = 0
    merged: int = 0
    data_chunks: int = 0
    data_rows: int = 0
    rows_adopted: int = 0
    attested: int = 0
    disputed: int = 0

    def to_dict(self) -> dict[str, int]:
        """The figures by name."""
        return asdict(self)


def credits(tangle: Tangle) -> dict[bytes, Credit]:
    """The credits table of ``tangle``: author key (32 bytes) -> :class:`Credit`.

    Authors with no checkpoint, data or judged checkpoint (the genesis's founder, a verifier
    only) have no line. Cost: one read of the ledger's checkpoint and data transactions and
    of the attestations' index.
    """
    table: dict[bytes, Credit] = defaultdict(Credit)
    checkpoints, _ = tangle.checkpoints_since(0)
    data, _ = tangle.data_since(0)
    author_of = {tx.id: tx.author for tx in checkpoints}
    rows_of = {tx.id: (tx.author, tx.payload["rows"]) for tx in data}
    for tx in data:
        line = table[tx.author]
        line.data_chunks += 1
        line.data_rows += tx.payload["rows"]
    children: dict[str, list[str]] = defaultdict(list)
    adopted: set[str] = set()
    for tx in checkpoints:
        table[tx.author].checkpoints += 1
        for base in tx.links("base"):
            children[base].append(tx.id)
        adopted.update(d for d in tx.links("data") if d in rows_of and rows_of[d][0] != tx.author)
    for d in adopted:
        author, rows = rows_of[d]
        table[author].rows_adopted += rows
    used = _used_by_others(author_of, children)
    for tx_id, me in author_of.items():
        if used[tx_id]:
            table[me].merged += 1
    judged: dict[str, set[str]] = {"agree": set(), "dispute": set()}
    for a in tangle.attestations(figures=False):
        if a.verifier != a.subject and a.checkpoint not in judged[a.verdict]:
            judged[a.verdict].add(a.checkpoint)
            line = table[a.subject]
            if a.verdict == "agree":
                line.attested += 1
            else:
                line.disputed += 1
    return dict(table)


def _used_by_others(author_of: dict[str, bytes], children: dict[str, list[str]]) -> dict[str, bool]:
    """For each checkpoint: whether it is in the lineage of another author's checkpoint.

    Children (the checkpoints naming one as a base) are settled before their bases, depth
    first with a stack of its own. ``base`` links are payload links, not parents: a child can
    sit lower in the tangle's order than its base, so the order cannot be walked instead. The
    links form a DAG (a transaction names ids that existed before it).
    """
    used: dict[str, bool] = {}
    for root in author_of:
        stack = [(root, False)]
        while stack:
            tx_id, ready = stack.pop()
            if tx_id in used:
                continue
            kids = children.get(tx_id, [])
            if not ready:
                stack.append((tx_id, True))
                stack.extend((c, False) for c in kids if c not in used)
                continue
            me = author_of[tx_id]
            used[tx_id] = any(author_of[c] != me or used[c] for c in kids)
    return used


def credits_json(tangle: Tangle) -> list[dict[str, Any]]:
    """The table as JSON-ready rows, ``author`` (author id) first, sorted by author id."""
    rows = [{"author": author_id(key), "author_key": key.hex(), **line.to_dict()}
            for key, line in credits(tangle).items()]
    return sorted(rows, key=lambda row: row["author"])
