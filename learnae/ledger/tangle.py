"""The tangle store: validated transactions in SQLite, and the queries on them.

It keeps the tips, computes cumulative weights, selects tips, fixes a deterministic order, and
answers the queries the node, sync and CLI need.

Sources: S. Popov, "The Tangle" (IOTA whitepaper, v1.4.3, 2018): section 2 for tips, approvers
and cumulative weight, section 4.1 for the MCMC tip selection and confirmation confidence;
docs/design.md "The tangle".

Design choices:

- **Source of truth.** The ``tx`` table keeps each transaction's exact signed bytes; the other
  columns and the ``edge`` table are indexes derived from them, and :meth:`Tangle.verify`
  re-derives and re-checks everything from the bytes.
- **Durability.** WAL journal, ``synchronous=FULL``: :meth:`Tangle.insert` and
  :meth:`Tangle.insert_many` return only after their SQLite transaction committed, so a crash,
  even a power loss, loses nothing they acknowledged. ``insert_many`` shares one commit (one
  fsync) between many transactions: use it to ingest in bulk.
- **Order.** ``order key = (height, id)``: the genesis has height 0, any other transaction
  ``1 + max(parent heights)``. A child is always higher than its parents, so sorting by the key
  is a topological order; the key depends only on the transaction and its ancestors, so every
  node holding the same set has the same order, and it is fixed at insert. The owner of a content
  CID is the author of the first ``data``/``checkpoint`` transaction announcing it in this order.
  Like any topological order it cannot rank concurrent transactions by real time: one that
  approves only old transactions gets a low height, so a late claim on someone else's CID can
  sort first.
- **Cumulative weight, computed where it is used.** ``W(x) = 1 +`` the number of transactions
  approving ``x`` directly or indirectly. Keeping it for every transaction means adding 1 to
  every ancestor of each new transaction (all of the tangle, soon), too slow for thousands of
  inserts a second. The random walks only need the weights of the transactions above their
  entry point (``depth`` heights below the top, some ``depth x width`` of them), so
  :meth:`Tangle.select_tips` computes those exactly, in one pass from the top down with bitsets
  of approvers, each time (well under a millisecond for tens of transactions per height).
  :meth:`Tangle.weight` of any one transaction counts its approvers (cost: their number).
- **Memory.** In memory: the set of tips, the top height and the pending buffer (transactions
  whose parents are missing), bounded by ``max_pending_bytes``, oldest evicted first and counted
  in ``pending_evicted``. Everything else is read from SQLite.
- **Single parent.** The store accepts 1 or 2 parents: whether the author's tangle had a single
  tip cannot be checked by a receiver, and checking against the receiver's own tips would make
  two nodes' sets depend on delivery order. :meth:`Tangle.select_tips` returns one tip only when
  the tangle has one.

A ``Tangle`` uses one SQLite connection and is not thread-safe: use it from one thread.
"""

from __future__ import annotations

import logging
import math
import os
import random
import sqlite3
import time
import urllib.parse
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from learnae.errors import LedgerError, TxRejected
from learnae.identity import Identity
from learnae.ledger.tx import Tx, check_parent_times, decode_tx, make_tx, validate_tx

log = logging.getLogger(__name__)

DEFAULT_ALPHA = 0.05
"""Randomness of the MCMC walk: 0 walks uniformly, large values follow the heaviest approver."""
DEFAULT_DEPTH = 15
"""Walks start at a transaction this many heights below the highest one."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tx (
    seq INTEGER PRIMARY KEY,     -- local arrival order (cursors for "new since")
    id TEXT NOT NULL UNIQUE,     -- CIDv1 base32 of raw
    raw BLOB NOT NULL,           -- the exact signed DAG-CBOR bytes: the source of truth
    kind TEXT NOT NULL,
    author BLOB NOT NULL,
    time INTEGER NOT NULL,
    height INTEGER NOT NULL,     -- 0 for the genesis, else 1 + max(parent heights)
    cid TEXT,                    -- content CID announced by data and checkpoint txs
    dseq INTEGER                 -- a data tx's payload seq (per sensor), else NULL
);
CREATE INDEX IF NOT EXISTS tx_order ON tx (height, id);
CREATE INDEX IF NOT EXISTS tx_kind_author ON tx (kind, author);
CREATE INDEX IF NOT EXISTS tx_cid ON tx (cid) WHERE cid IS NOT NULL;
CREATE TABLE IF NOT EXISTS edge (
    child INTEGER NOT NULL,      -- tx.seq of the approver
    parent INTEGER NOT NULL,     -- tx.seq of the approved
    PRIMARY KEY (child, parent)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS edge_parent ON edge (parent, child);
"""
# after _SCHEMA and the migration of stores made before the dseq column existed
_DSEQ_INDEX = "CREATE INDEX IF NOT EXISTS tx_data_seq ON tx (author, dseq) WHERE dseq IS NOT NULL"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _announced_cid(tx: Tx) -> str | None:
    return tx.payload["cid"] if tx.kind in ("data", "checkpoint") else None


def _data_seq(tx: Tx) -> int | None:
    return tx.payload["seq"] if tx.kind == "data" else None


@dataclass(frozen=True)
class InsertResult:
    """What an insert did with one transaction.

    ``status``: ``"inserted"``, ``"duplicate"`` (already stored or pending; nothing changed),
    ``"pending"`` (valid so far, waiting for parents, see :meth:`Tangle.missing_parents`) or
    ``"rejected"`` (``error`` says why; counted in :attr:`Tangle.rejections`). ``released``:
    ids of pending transactions stored because this one arrived. ``id`` is ``None`` only for
    bytes that did not decode.
    """

    id: str | None
    status: str
    released: tuple[str, ...] = ()
    error: TxRejected | None = None


class _Parent(NamedTuple):
    seq: int
    time: int
    height: int


class _Region(NamedTuple):
    """The transactions a walk can visit: every one at most ``depth`` heights below the top."""

    entry: str  # where walks start: the heaviest at the lowest height (ties: greatest id)
    heights: dict[str, int]
    approvers: dict[str, list[str]]  # all of them: approvers are higher, so inside the region
    weights: dict[str, int]  # exact cumulative weights


class Tangle:
    """A swarm's tangle in one SQLite file.

    Create a store with ``Tangle(path, genesis_raw=..., pow_bits=..., max_tx_bytes=...)``; the
    rules are saved in the file, so ``Tangle(path)`` reopens it (values passed when reopening
    must match the saved ones).

    Args:
        path: the SQLite file.
        genesis_raw: the genesis transaction's bytes (needed to create the store).
        pow_bits: proof-of-work bits every transaction needs (from the manifest).
        max_tx_bytes: largest accepted transaction encoding (from the manifest).
        admitted: ``admitted(author_key) -> bool`` for closed swarms; ``None`` admits all.
        max_pending_bytes: bound on the bytes of transactions waiting for parents.
        clock: ms since the epoch, for the ``future-time`` rule.
        read_only: open for reading only (SQLite ``mode=ro``): nothing is ever written to the
            file, and :meth:`insert` fails. For commands that only read a ledger, possibly
            while its node runs.

    Raises:
        LedgerError: the file is empty, not an SQLite database, an SQLite database that is
            not a tangle store, holds another swarm or other rules, or is new and
            ``genesis_raw``, ``pow_bits`` or ``max_tx_bytes`` is missing. Nothing is written
            to the file in any of these cases.
        TxRejected: ``genesis_raw`` is not a valid genesis transaction.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        genesis_raw: bytes | None = None,
        pow_bits: int | None = None,
        max_tx_bytes: int | None = None,
        admitted: Callable[[bytes], bool] | None = None,
        max_pending_bytes: int = 32 * 2**20,
        clock: Callable[[], int] = _now_ms,
        read_only: bool = False,
    ):
        self.path = os.fspath(path)
        self.read_only = read_only
        if not os.path.exists(self.path) and (read_only or genesis_raw is None):
            raise LedgerError(f"{self.path} does not exist" if read_only else
                              f"{self.path} is a new tangle store: pass genesis_raw, pow_bits and max_tx_bytes")
        if read_only:
            uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, isolation_level=None)
        else:
            self._db = sqlite3.connect(self.path, isolation_level=None)
        self._admitted = admitted
        self._clock = clock
        try:
            self._prepare(genesis_raw is not None)
            self._open_rules(genesis_raw, pow_bits, max_tx_bytes)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise LedgerError(f"{self.path} is not a usable tangle store: {exc}") from None
        except BaseException:
            self._db.close()
            raise
        self._max_pending_bytes = max_pending_bytes
        self.rejections: Counter[str] = Counter()
        """Rejected transactions by :class:`~learnae.errors.TxRejected` code."""
        self.pending_evicted = 0
        """Pending transactions dropped to keep the buffer within ``max_pending_bytes``."""
        self._pending: dict[str, Tx] = {}  # insertion order: oldest first
        self._pending_bytes = 0
        self._waiting: defaultdict[str, set[str]] = defaultdict(set)  # missing parent -> children
        self._load()

    def _prepare(self, creating: bool) -> None:
        """Check what the file holds before anything is written to it, then set it up.

        A writable store then sets the journal, creates the schema of a new store, and
        migrates an older one.
        """
        tables = {name for (name,) in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" not in tables:
            if tables:
                raise LedgerError(f"{self.path} is an SQLite database but not a learnae ledger (it"
                                  f" holds tables {sorted(tables)}); refusing to touch it")
            if not creating:
                empty = os.path.getsize(self.path) == 0
                raise LedgerError(f"{self.path} is {'an empty file' if empty else 'an empty database'},"
                                  " not a learnae ledger (a node or `learnae init` makes one)")
        if self.read_only:
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(tx)")}
            self._has_dseq = "dseq" in columns
            return
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        if "dseq" not in {row[1] for row in self._db.execute("PRAGMA table_info(tx)")}:
            self._add_dseq()
        self._db.execute(_DSEQ_INDEX)
        self._has_dseq = True

    def _add_dseq(self) -> None:
        """Migrate a store made before the ``dseq`` column: add it, filled from the bytes."""
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute("ALTER TABLE tx ADD COLUMN dseq INTEGER")
        rows = self._db.execute("SELECT seq, raw FROM tx WHERE kind = 'data'").fetchall()
        self._db.executemany("UPDATE tx SET dseq = ? WHERE seq = ?",
                             ((_data_seq(decode_tx(raw)), seq) for seq, raw in rows))
        self._db.execute("COMMIT")
        log.info("%s: indexed the seq of %d data transactions", self.path, len(rows))

    def _open_rules(self, genesis_raw: bytes | None, pow_bits: int | None, max_tx_bytes: int | None) -> None:
        given: dict[str, Any] = {"pow_bits": pow_bits, "max_tx_bytes": max_tx_bytes}
        if genesis_raw is not None:
            genesis = decode_tx(genesis_raw)
            if genesis.kind != "genesis":
                raise LedgerError(f"genesis_raw is a {genesis.kind!r} transaction, not a genesis")
            given["swarm"] = genesis.id
        saved = dict(self._db.execute("SELECT key, value FROM meta"))
        if not saved:
            if genesis_raw is None or pow_bits is None or max_tx_bytes is None:
                raise LedgerError(
                    f"{self.path} is a new tangle store: pass genesis_raw, pow_bits and max_tx_bytes"
                )
            validate_tx(genesis, swarm=None, pow_bits=pow_bits, max_bytes=max_tx_bytes, now_ms=self._clock())
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT INTO meta VALUES (?, ?)", given.items())
            self._db.execute(
                "INSERT INTO tx (id, raw, kind, author, time, height) VALUES (?, ?, ?, ?, ?, 0)",
                (genesis.id, genesis.raw, genesis.kind, genesis.author, genesis.time),
            )
            self._db.execute("COMMIT")
            saved = given
        for key, value in given.items():
            if value is not None and saved.get(key) != value:
                raise LedgerError(f"{self.path} has {key} = {saved.get(key)!r}, not {value!r}")
        self.swarm: str = saved["swarm"]
        """The genesis transaction's id."""
        self.pow_bits: int = saved["pow_bits"]
        self.max_tx_bytes: int = saved["max_tx_bytes"]

    def _load(self) -> None:
        """(Re)read the in-memory state from the database.

        Tips, top height, counts by kind and each author's latest checkpoint (one pass; then
        kept up to date by inserts, so that :meth:`counts` and
        :meth:`latest_checkpoint_per_author` do not grow with the ledger).
        """
        (self._top,) = self._db.execute("SELECT max(height) FROM tx").fetchone()
        self._tips = {
            i for (i,) in self._db.execute(
                "SELECT id FROM tx WHERE NOT EXISTS (SELECT 1 FROM edge WHERE parent = tx.seq)"
            )
        }
        self._counts: Counter[str] = Counter(dict(self._db.execute("SELECT kind, count(*) FROM tx GROUP BY kind")))
        self._latest: dict[bytes, tuple[tuple[int, int, str], int]] = {
            author: ((time_ms, height, i), seq) for author, time_ms, height, i, seq in self._db.execute(
                "SELECT author, time, height, id, seq FROM (SELECT author, time, height, id, seq,"
                " row_number() OVER (PARTITION BY author ORDER BY time DESC, height DESC, id DESC)"
                " AS r FROM tx WHERE kind = 'checkpoint') WHERE r = 1")
        }

    def close(self) -> None:
        """Close the database (everything acknowledged is already on disk)."""
        self._db.close()

    def __enter__(self) -> Tangle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Insertion ---------------------------------------------------------------------------------
    def insert(self, item: bytes | Tx) -> InsertResult:
        """Validate and store one transaction (its bytes or a :class:`Tx` from ``decode_tx``).

        Idempotent; returns after the commit. Bad transactions are not errors: they come back
        with status ``"rejected"``, counted by code.

        Raises:
            LedgerError: the database failed; nothing from this call was stored.
        """
        return self.insert_many([item])[0]

    def insert_many(self, items: Iterable[bytes | Tx]) -> list[InsertResult]:
        """:meth:`insert` for many transactions in one SQLite transaction (one commit).

        Children may come before their parents in ``items``. Returns one result per item.

        Raises:
            LedgerError: the database failed; nothing from this call was stored (pending
                transactions it released are dropped too; peers can send them again).
        """
        try:
            self._db.execute("BEGIN IMMEDIATE")
            results = [self._insert(item) for item in items]
            self._db.execute("COMMIT")
        except BaseException as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._load()
            if isinstance(exc, sqlite3.Error):
                raise LedgerError(f"tangle store {self.path} failed: {exc}") from exc
            raise
        return results

    def _parents(self, ids: Iterable[str]) -> dict[str, _Parent]:
        ids = list(ids)
        rows = self._db.execute(
            f"SELECT id, seq, time, height FROM tx WHERE id IN ({','.join('?' * len(ids))})", ids
        )
        return {i: _Parent(*rest) for i, *rest in rows}

    def _insert(self, item: bytes | Tx) -> InsertResult:
        try:
            tx = item if isinstance(item, Tx) else decode_tx(item)
        except TxRejected as exc:
            return self._reject(None, exc)
        found = self._parents([tx.id, *tx.parents])
        if tx.id in found or tx.id in self._pending:
            return InsertResult(tx.id, "duplicate")
        try:
            validate_tx(
                tx, swarm=self.swarm, pow_bits=self.pow_bits, max_bytes=self.max_tx_bytes,
                now_ms=self._clock(), admitted=self._admitted,
                parent_times={i: p.time for i, p in found.items()},
            )
        except TxRejected as exc:
            return self._reject(tx.id, exc)
        if len(found) < len(tx.parents):
            self._hold(tx, [p for p in tx.parents if p not in found])
            return InsertResult(tx.id, "pending")
        self._store(tx, found.values())
        return InsertResult(tx.id, "inserted", self._release(tx.id))

    def _reject(self, tx_id: str | None, exc: TxRejected) -> InsertResult:
        self.rejections[exc.code] += 1
        log.debug("rejected transaction %s (%s): %s", tx_id, exc.code, exc.reason)
        return InsertResult(tx_id, "rejected", error=exc)

    def _store(self, tx: Tx, parents: Iterable[_Parent]) -> None:
        parents = list(parents)
        height = 1 + max(p.height for p in parents)
        seq = self._db.execute(
            "INSERT INTO tx (id, raw, kind, author, time, height, cid, dseq) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (tx.id, tx.raw, tx.kind, tx.author, tx.time, height, _announced_cid(tx), _data_seq(tx)),
        ).lastrowid
        assert seq is not None  # an INSERT sets it
        self._db.executemany("INSERT INTO edge VALUES (?, ?)", ((seq, p.seq) for p in parents))
        self._tips.difference_update(tx.parents)
        self._tips.add(tx.id)
        self._top = max(self._top, height)
        self._counts[tx.kind] += 1
        if tx.kind == "checkpoint":
            key = (tx.time, height, tx.id)  # what latest_checkpoint_per_author maximizes
            latest = self._latest.get(tx.author)
            if latest is None or key > latest[0]:
                self._latest[tx.author] = (key, seq)

    def _hold(self, tx: Tx, missing: list[str]) -> None:
        """Buffer ``tx`` until its ``missing`` parents arrive; evict the oldest beyond the bound."""
        self._pending[tx.id] = tx
        self._pending_bytes += len(tx.raw)
        for parent in missing:
            self._waiting[parent].add(tx.id)
        while self._pending_bytes > self._max_pending_bytes:
            self._unhold(next(iter(self._pending.values())))
            self.pending_evicted += 1

    def _unhold(self, tx: Tx) -> None:
        del self._pending[tx.id]
        self._pending_bytes -= len(tx.raw)
        for parent in tx.parents:
            children = self._waiting.get(parent)
            if children is not None:
                children.discard(tx.id)
                if not children:
                    del self._waiting[parent]

    def _release(self, tx_id: str) -> tuple[str, ...]:
        """Store the pending transactions that waited only for ``tx_id`` (and, in turn, theirs)."""
        released = []
        arrived = [tx_id]
        while arrived:
            for child_id in sorted(self._waiting.pop(arrived.pop(), ())):
                child = self._pending[child_id]
                parents = self._parents(child.parents)
                if len(parents) < len(child.parents):
                    continue  # still waiting for another parent
                self._unhold(child)
                try:
                    check_parent_times(child, {i: p.time for i, p in parents.items()})
                except TxRejected as exc:
                    self._reject(child_id, exc)
                    continue
                self._store(child, parents.values())
                released.append(child_id)
                arrived.append(child_id)
        return tuple(released)

    @property
    def pending(self) -> int:
        """Number of transactions waiting for parents."""
        return len(self._pending)

    def missing_parents(self) -> list[str]:
        """Ids that pending transactions approve and this node has nowhere: ask peers for them."""
        return sorted(p for p in self._waiting if p not in self._pending)

    def append(
        self, identity: Identity, kind: str, payload: dict, *, time_ms: int | None = None,
        rng: random.Random | None = None,
    ) -> Tx:
        """Make one of this node's own transactions on :meth:`select_tips`'s tips, and store it.

        ``time_ms`` (default: the clock) is raised to the latest parent's time if it is earlier,
        so a slow clock cannot make a ``before-parent`` transaction. Mining costs about
        ``2**pow_bits`` sha2-256 hashes.

        Raises:
            TxRejected: the transaction is not valid (e.g. ``bad-payload``, ``not-admitted``).
            LedgerError: the database failed.
        """
        parents = self.select_tips(rng=rng)
        now = self._clock() if time_ms is None else time_ms
        tx = make_tx(
            identity, kind=kind, payload=payload, parents=parents, swarm=self.swarm,
            pow_bits=self.pow_bits,
            time_ms=max([now] + [p.time for p in self._parents(parents).values()]),
        )
        result = self.insert(tx)
        if result.error is not None:
            raise result.error
        return tx

    # Tips, weights and random walks ------------------------------------------------------------
    def tips(self) -> list[str]:
        """Ids of the transactions nobody approves yet, sorted."""
        return sorted(self._tips)

    def approvers(self, tx_id: str) -> list[str]:
        """Ids of the stored transactions that directly approve ``tx_id``, sorted."""
        rows = self._db.execute(
            "SELECT c.id FROM tx p JOIN edge ON edge.parent = p.seq JOIN tx c ON c.seq = edge.child"
            " WHERE p.id = ? ORDER BY c.id",
            (tx_id,),
        )
        return [i for (i,) in rows]

    def _descendants(self, tx_id: str, region: _Region | None = None) -> set[str]:
        """Every transaction approving ``tx_id`` directly or indirectly (cost: their number)."""
        found: set[str] = set()
        stack = [tx_id]
        while stack:
            current = stack.pop()
            if region is not None and current in region.approvers:
                approvers = region.approvers[current]
            else:
                approvers = self.approvers(current)
            for approver in approvers:
                if approver not in found:
                    found.add(approver)
                    stack.append(approver)
        return found

    def weight(self, tx_id: str) -> int:
        """Cumulative weight (Popov 2018, section 2) of ``tx_id``.

        1 + the number of transactions approving ``tx_id`` directly or indirectly. Costs
        O(that number) queries.

        Raises:
            LedgerError: ``tx_id`` is not stored.
        """
        if tx_id not in self:
            raise LedgerError(f"transaction {tx_id} is not in this tangle")
        return 1 + len(self._descendants(tx_id))

    def _region(self, depth: int) -> _Region:
        """Transactions at least ``top - depth`` high, their approvers and exact weights.

        Heights are contiguous (a transaction at height h > 0 has a parent at h - 1), so the
        lowest height of the region is never empty.
        """
        floor = max(0, self._top - depth)
        heights = dict(
            self._db.execute("SELECT id, height FROM tx WHERE height >= ? ORDER BY height DESC, id", (floor,))
        )
        approvers: dict[str, list[str]] = {i: [] for i in heights}
        for child, parent in self._db.execute(
            "SELECT c.id, p.id FROM tx c JOIN edge ON edge.child = c.seq JOIN tx p ON p.seq = edge.parent"
            " WHERE c.height > ? AND p.height >= ?",
            (floor, floor),
        ):
            approvers[parent].append(child)
        # Highest first, so each approver's set is complete before it is used: the set of x's
        # direct and indirect approvers is the union of its approvers and their sets (bitsets).
        bit = {i: 1 << k for k, i in enumerate(heights)}
        above: dict[str, int] = {}
        for i in heights:
            acc = 0
            for approver in approvers[i]:
                acc |= above[approver] | bit[approver]
            above[i] = acc
        weights = {i: 1 + a.bit_count() for i, a in above.items()}
        entry = max((i for i, h in heights.items() if h == floor), key=lambda i: (weights[i], i))
        return _Region(entry, heights, approvers, weights)

    @staticmethod
    def _walk(region: _Region, alpha: float, rng: random.Random) -> str:
        """One MCMC walk (Popov 2018, section 4.1) from the region's entry to a tip.

        From ``x`` it steps to approver ``y`` with probability proportional to
        ``exp(-alpha * (W(x) - W(y)))``.
        """
        weights = region.weights
        current = region.entry
        while approvers := region.approvers[current]:
            heaviest = max(weights[a] for a in approvers)
            current = rng.choices(approvers, [math.exp(alpha * (weights[a] - heaviest)) for a in approvers])[0]
        return current

    def select_tips(
        self, n: int = 2, *, alpha: float = DEFAULT_ALPHA, depth: int = DEFAULT_DEPTH,
        rng: random.Random | None = None,
    ) -> list[str]:
        """Tips for a new transaction to approve, by IOTA's MCMC walk (Popov 2018, section 4.1).

        Walks start at the heaviest transaction ``depth`` heights below the highest one. If
        ``2 * n`` walks reach fewer than ``n`` distinct tips, the highest other tips (ties: id)
        fill in, so the result is ``min(n, number of tips)`` distinct ids, sorted. Cost: the
        transactions within ``depth`` heights of the top.
        """
        if len(self._tips) <= n:
            return sorted(self._tips)
        rng = rng or random.Random()
        region = self._region(depth)
        chosen: list[str] = []
        for _ in range(2 * n):
            tip = self._walk(region, alpha, rng)
            if tip not in chosen:
                chosen.append(tip)
            if len(chosen) == n:
                return sorted(chosen)
        near = [i for i, a in region.approvers.items() if not a and i not in chosen]
        others = sorted(near, key=lambda i: (-region.heights[i], i)) + sorted(self._tips - region.heights.keys())
        return sorted(chosen + others[: n - len(chosen)])

    def confirmation_confidence(
        self, tx_id: str, *, walks: int = 100, alpha: float = DEFAULT_ALPHA,
        depth: int = DEFAULT_DEPTH, rng: random.Random | None = None,
    ) -> float:
        """Confirmation confidence of ``tx_id`` (Popov 2018, section 4.1), from 0 to 1.

        The share of ``walks`` MCMC walks ending at a tip that approves ``tx_id`` directly or
        indirectly, or is ``tx_id`` (the transaction selecting it will approve it). Costs
        O(transactions approving ``tx_id``).

        Raises:
            LedgerError: ``tx_id`` is not stored.
        """
        if tx_id not in self:
            raise LedgerError(f"transaction {tx_id} is not in this tangle")
        rng = rng or random.Random()
        region = self._region(depth)
        ends = Counter(self._walk(region, alpha, rng) for _ in range(walks))
        approving = self._descendants(tx_id, region) | {tx_id}
        return sum(count for tip, count in ends.items() if tip in approving) / walks

    # Queries -----------------------------------------------------------------------------------
    def __contains__(self, tx_id: object) -> bool:
        """Is ``tx_id`` stored? Pending transactions are not."""
        return self._db.execute("SELECT 1 FROM tx WHERE id = ?", (tx_id,)).fetchone() is not None

    def get(self, tx_id: str) -> Tx | None:
        """The stored transaction ``tx_id``, or ``None``."""
        row = self._db.execute("SELECT raw FROM tx WHERE id = ?", (tx_id,)).fetchone()
        return None if row is None else decode_tx(row[0])

    @property
    def genesis(self) -> Tx:
        """The genesis transaction (its payload is the swarm's manifest).

        Raises:
            LedgerError: the file lost it (the store always holds its genesis).
        """
        genesis = self.get(self.swarm)
        if genesis is None:
            raise LedgerError(f"{self.path} does not hold its genesis transaction {self.swarm}")
        return genesis

    def count(self) -> int:
        """Number of stored transactions, the genesis included. Cost: constant (kept in memory)."""
        return sum(self._counts.values())

    def counts(self) -> dict[str, int]:
        """Number of stored transactions by kind, sorted by kind. Cost: the number of kinds."""
        return {kind: n for kind, n in sorted(self._counts.items()) if n}

    def order(self) -> list[str]:
        """Every stored id in the deterministic topological order: by height, then id."""
        return [i for (i,) in self._db.execute("SELECT id FROM tx ORDER BY height, id")]

    def _txs(self, sql: str, args: tuple = ()) -> list[Tx]:
        return [decode_tx(raw) for (raw,) in self._db.execute(sql, args)]

    def owner(self, content_cid: str) -> bytes | None:
        """The owner of ``content_cid`` (CIDv1 base32), ``None`` if no transaction announces it.

        The author key of the first ``data``/``checkpoint`` transaction announcing it, in the
        tangle's order.
        """
        row = self._db.execute(
            "SELECT author FROM tx WHERE cid = ? ORDER BY height, id LIMIT 1", (content_cid,)
        ).fetchone()
        return None if row is None else row[0]

    def latest_checkpoint_per_author(self) -> dict[bytes, Tx]:
        """Each author's latest ``checkpoint`` transaction: greatest (time, height, id).

        Cost: the number of authors (kept up to date by inserts), not the ledger's size.
        """
        seqs = [seq for _, seq in self._latest.values()]
        txs = [tx for chunk in range(0, len(seqs), 500)
               for tx in self._txs(f"SELECT raw FROM tx WHERE seq IN ({','.join('?' * len(seqs[chunk:chunk + 500]))})",
                                   tuple(seqs[chunk:chunk + 500]))]
        return {tx.author: tx for tx in txs}

    def checkpoints_since(self, cursor: int = 0) -> tuple[list[Tx], int]:
        """``checkpoint`` transactions stored after ``cursor``, and the next cursor.

        The transactions come in arrival order. Cursors count this store's arrivals (start
        with 0), so late arrivals with a low place in the order are not skipped. Cost: the
        arrivals since ``cursor``.
        """
        rows = self._db.execute(
            "SELECT seq, raw FROM tx WHERE seq > ? AND +kind = 'checkpoint' ORDER BY seq", (cursor,)
        ).fetchall()
        return [decode_tx(raw) for _, raw in rows], rows[-1][0] if rows else cursor

    def data_since(self, cursor: int = 0) -> tuple[list[Tx], int]:
        """``data`` transactions stored after ``cursor``, and the next cursor.

        In arrival order, as :meth:`checkpoints_since`.
        """
        rows = self._db.execute(
            "SELECT seq, raw FROM tx WHERE seq > ? AND +kind = 'data' ORDER BY seq", (cursor,)
        ).fetchall()
        return [decode_tx(raw) for _, raw in rows], rows[-1][0] if rows else cursor

    def data_tx_at_seq(self, author: bytes, seq: int) -> str | None:
        """Id of ``author``'s first ``data`` transaction with payload ``seq``, or ``None``.

        First in the tangle's order. Cost: one index lookup.
        """
        if not self._has_dseq:  # a read-only store made before the index existed
            return next((tx.id for tx in self.data_by_author(author) if tx.payload["seq"] == seq), None)
        row = self._db.execute("SELECT id FROM tx WHERE author = ? AND dseq = ? ORDER BY height, id LIMIT 1",
                               (author, seq)).fetchone()
        return None if row is None else row[0]

    def next_data_seq(self, author: bytes) -> int:
        """One more than the highest payload ``seq`` of ``author``'s ``data`` transactions.

        0 if it has none. Cost: one index lookup.
        """
        if not self._has_dseq:
            return 1 + max((tx.payload["seq"] for tx in self.data_by_author(author)), default=-1)
        (top,) = self._db.execute("SELECT max(dseq) FROM tx WHERE author = ? AND dseq IS NOT NULL",
                                  (author,)).fetchone()
        return 0 if top is None else top + 1

    def data_by_author(self, author: bytes) -> list[Tx]:
        """``data`` transactions by ``author`` (32-byte key), in the tangle's order."""
        return self._txs(
            "SELECT raw FROM tx WHERE kind = 'data' AND author = ? ORDER BY height, id", (author,)
        )

    def lineage(self, tx_id: str) -> dict[str, Tx | None]:
        """A checkpoint's lineage, each id mapped to its transaction (``None`` if not stored).

        The checkpoint, then the ``base`` and ``data`` transactions it names, recursively,
        breadth first.
        """
        found: dict[str, Tx | None] = {}
        queue = deque([tx_id])
        while queue:
            current = queue.popleft()
            if current not in found:
                tx = found[current] = self.get(current)
                if tx is not None and tx.kind == "checkpoint":
                    queue.extend(tx.links("base") + tx.links("data"))
        return found

    def iter_raw(self) -> Iterator[tuple[str, bytes]]:
        """``(id, raw bytes)`` of every stored transaction in arrival order (parents first)."""
        yield from self._db.execute("SELECT id, raw FROM tx ORDER BY seq")

    def verify(self) -> list[str]:
        """Re-check every stored transaction from its bytes.

        Returns the problems (empty if none), each as ``"<id>: <reason>"``.

        Checks: canonical decoding, id = CID of the bytes, signature, proof-of-work and the
        swarm's rules, parents stored before it and not later in time, and index columns
        (kind, author, time, height, content CID, data seq, edges) that agree with the bytes.
        """
        problems = []
        seen: dict[str, tuple[int, int]] = {}  # id -> (time, height) as stored
        rows = self._db.execute(
            f"SELECT id, raw, kind, author, time, height, cid, {'dseq' if self._has_dseq else 'NULL'},"
            " (SELECT group_concat(p.id) FROM edge JOIN tx p ON p.seq = edge.parent"
            " WHERE edge.child = tx.seq) FROM tx ORDER BY seq"
        )
        for tx_id, raw, kind, author, time_ms, height, cid, dseq, edges in rows:
            seen[tx_id] = (time_ms, height)
            try:
                tx = decode_tx(raw)
                if tx.id != tx_id:
                    raise LedgerError(f"the stored bytes have id {tx.id}")
                missing = [p for p in tx.parents if p not in seen]
                if missing:
                    raise LedgerError(f"parents {missing} are not stored before it")
                validate_tx(
                    tx, swarm=self.swarm, pow_bits=self.pow_bits, max_bytes=self.max_tx_bytes,
                    now_ms=self._clock(), admitted=self._admitted,
                    parent_times={p: seen[p][0] for p in tx.parents},
                )
                derived = (
                    tx.kind, tx.author, tx.time, max((seen[p][1] + 1 for p in tx.parents), default=0),
                    _announced_cid(tx), _data_seq(tx) if self._has_dseq else None, sorted(tx.parents),
                )
                stored = (kind, author, time_ms, height, cid, dseq, sorted(edges.split(",") if edges else []))
                if derived != stored:
                    raise LedgerError("index columns disagree with the stored bytes")
            except LedgerError as exc:  # TxRejected included
                problems.append(f"{tx_id}: {exc.reason}")
        return problems
