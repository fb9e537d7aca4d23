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
- **Memory.** In memory: the set of tips, the top height, counts by kind, each author's latest
  checkpoint, and the pending buffer (transactions whose parents are missing), bounded by
  ``max_pending_bytes``, oldest evicted first and counted in ``pending_evicted``; the last
  :data:`RECENT` transactions this object stored (dropped on a rollback or a prune); and, shared
  by the stores of the process, the decodings of recently validated bytes (:func:`decode_cached`,
  at most :data:`DECODED_BYTES`). Everything else is read from SQLite.
- **Single parent.** The store accepts 1 or 2 parents: whether the author's tangle had a single
  tip cannot be checked by a receiver, and checking against the receiver's own tips would make
  two nodes' sets depend on delivery order. :meth:`Tangle.select_tips` returns one tip only when
  the tangle has one.
- **Membership** (:mod:`learnae.ledger.members`): each stored transaction has a *view*, the
  set of ``admit``/``revoke`` transactions in its past cone (the union of its parents' views,
  itself added if it is one), kept as an id into table ``view``; a transaction is stored only
  if its author may publish it in its parents' view (codes ``not-admitted``, ``revoked``,
  ``sensor-role``, ``not-steward``, ``open-swarm``). The view depends on ancestors alone, so
  every node decides alike whatever the arrival order. Frontier entries keep their view.
- **Attestations** (a verifier's verdict on a peer's checkpoint) approve the checkpoint they
  judge (``validate_tx``'s ``attestation-parent`` rule), so the checkpoint is stored first and an
  attestation that arrives before it waits in the pending buffer. On storing one, the store
  checks that the judged transaction is a ``checkpoint`` (else code ``attestation-target``) by
  another author (else ``self-attestation``), and indexes it in table ``attestation`` with the
  checkpoint's author as its *subject* (:meth:`Tangle.attestations`).

Pruning (:meth:`Tangle.prune`), on the model of IOTA's local snapshots (Hornet):

- **The rule.** The genesis and every transaction whose kind is neither ``checkpoint`` nor
  ``snapshot`` (data, attestations, admit and revoke) are kept forever. A
  ``checkpoint`` is kept iff it is its author's newest, or it is among its author's newest
  ``keep_per_author`` and not older than ``now_ms - window_ms`` (the *cutoff*; times are the
  authors' clocks). A
  ``snapshot`` is kept iff it is its author's newest. "Newest" orders by (time, height, id), as
  :meth:`Tangle.latest_checkpoint_per_author` does. Everything else is pruned: its row and its
  edges are deleted.
- **The frontier** (IOTA's "solid entry points"), table ``pruned``: a pruned transaction that a
  kept one approves is remembered as ``(id, time, height)`` until no kept transaction approves
  it. Kept transactions still verify against it (their parents are known to have been pruned,
  with the time and height the checks need), and a new transaction approving a frontier id is
  accepted as if the id were stored: peers that have not pruned yet may still approve it.
- **Judged checkpoints keep their bytes.** A pruned checkpoint that an attestation approves
  keeps its exact signed bytes (table ``judged``), so the attestation's subject stays provable:
  :meth:`Tangle.verify` re-derives it, snapshots carry the bytes, and an importer checks them
  (id, signature) instead of trusting a claimed author. An attestation arriving for a checkpoint
  this store pruned without its bytes (nobody had judged it) is refused (``attestation-target``):
  its author cannot be checked.
- **Nothing kept changes.** Heights are fixed at insert, so the order key ``(height, id)`` and
  the ownership of content CIDs of the kept transactions stay as they were. A kept transaction
  whose approvers were all pruned stays approved (an edge from child ``0`` says so): pruning
  never turns old transactions back into tips. Cumulative weights count kept approvers only.
- **History does not come back.** Once a store has pruned, a ``checkpoint`` that arrives older
  than the last cutoff while its author has a newer one stored, or a ``snapshot`` while its
  author has a newer one stored, is what a prune would delete at once: it is not stored (status
  ``"pruned"``), so a node does not refetch the history it pruned when a peer that kept it
  answers someone else's request. Unless a pending transaction waits for it: a data transaction
  that arrives late, approving a checkpoint this node pruned and forgot (not in the frontier),
  brings back the pruned ancestry it needs from peers that kept it, and the next prune prunes
  that again. A transaction waiting for a parent that every peer pruned stays in the bounded
  pending buffer and is evicted from it as any other.
- **A bounded file.** SQLite reuses the pages of deleted rows, so a ledger pruned as it grows
  keeps its size; ``PRAGMA journal_size_limit`` truncates the WAL after each checkpoint so it does
  not stay at its high-water mark. ``meta`` records the total pruned and the last cutoff
  (:meth:`Tangle.pruning`). ``limit`` prunes in steps, so a node's loop is never held for long.

Snapshots (:meth:`Tangle.export_snapshot`, :meth:`Tangle.import_snapshot`) carry the kept ledger
and its frontier to a node that joins late, instead of the whole history. What a snapshot is
trusted for is said at :meth:`Tangle.import_snapshot`.

A ``Tangle`` uses one SQLite connection and is not thread-safe: use it from one thread (stores
on different threads are fine: the memo they share is locked).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import sqlite3
import threading
import time
import urllib.parse
import weakref
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import libipld

from learnae.errors import InvalidCID, LedgerError, TxRejected
from learnae.identity import Identity
from learnae.ledger.members import KINDS as MEMBERSHIP_KINDS
from learnae.ledger.members import Roll, Rules, event_ids, view_text
from learnae.ledger.tx import (
    MAX_FUTURE_MS,
    TX_CID_PREFIX,
    Tx,
    cbor_head,
    cbor_text,
    check_parent_times,
    decode_tx,
    make_tx,
    tx_id,
    tx_link,
    validate_tx,
)

log = logging.getLogger(__name__)

DECODED_BYTES = 8 << 20
"""Bytes of validated transactions whose decoding :func:`decode_cached` keeps in memory (the
oldest remembered go first). Their decoded objects take about 4 times as much again (some 40 MB
at the bound, for data transactions)."""
RECENT = 1 << 11
"""Transactions a store keeps in memory after storing them, the newest (:meth:`Tangle.get`,
:meth:`Tangle.stored` and ``in`` answer for them without a query)."""
# The memo of decode_cached and _validate, shared by every store of the process; a store may
# run on another thread than the next (each trainer node has its network thread): _lock guards
# it. Only bytes that passed validation enter _decoded, so junk (anything that fails, however
# large its decoding) never stays in memory.
_lock = threading.Lock()
_decoded: dict[bytes, Tx] = {}  # validated bytes -> their decoding (insertion order: oldest first)
_decoded_bytes = 0  # sum of the lengths of _decoded's keys
_valid: dict[bytes, set[tuple[str | None, int, int]]] = {}  # _decoded's bytes -> the rules they passed
# Decodings made by decode_cached and not remembered, for as long as someone holds them: what
# proves that a Tx handed to a store is the decoding of its bytes (a Tx built otherwise is
# validated every time, never remembered).
_fresh: weakref.WeakValueDictionary[bytes, Tx] = weakref.WeakValueDictionary()


def decode_cached(raw: bytes) -> Tx:
    """:func:`~learnae.ledger.tx.decode_tx`, answered from memory for bytes validated lately.

    A node decodes the same bytes several times (from gossip, then from its store for the peer
    choice, the checkpoints' ``base`` links, the verifier), and a simulation of many nodes in one
    process decodes each transaction once per node. Bytes that a store accepted (the last
    :data:`DECODED_BYTES` of them) and bytes whose decoding a caller still holds give the same
    :class:`Tx` object; others are decoded afresh. Keyed by the exact bytes, so the result is
    the one ``decode_tx`` gives; a ``Tx`` is frozen and no caller changes its payload. Bytes
    that fail to decode, or that decode but fail validation, are not remembered.
    Thread-safe.

    Raises:
        TxRejected: as :func:`~learnae.ledger.tx.decode_tx`.
    """
    if type(raw) is not bytes:
        raw = bytes(raw)
    with _lock:
        tx = _decoded.get(raw)
        if tx is None:
            tx = _fresh.get(raw)
    if tx is None:
        tx = decode_tx(raw)
        with _lock:  # another thread's decoding, if it came first (and may be remembered now)
            tx = _decoded.get(raw) or _fresh.setdefault(raw, tx)
    return tx


def _validate(tx: Tx, *, swarm: str | None, pow_bits: int, max_bytes: int, now_ms: int,
              parent_times: dict[str, int]) -> None:
    """:func:`~learnae.ledger.tx.validate_tx`, once per transaction bytes and swarm rules.

    What a transaction is checked for besides its context (size, swarm, parents' shape, payload,
    proof-of-work, signature) depends on its bytes and the rules ``(swarm, pow_bits,
    max_bytes)`` alone; once they passed, a transaction decoded by :func:`decode_cached` (the
    very object, so its fields are those of its bytes) is checked again for its context only:
    its time against this clock (``future-time``) and against its parents' (``before-parent``),
    in ``validate_tx``'s order. Other rules, or another ``Tx`` object with the same bytes, are
    validated in full.

    Raises:
        TxRejected: as :func:`~learnae.ledger.tx.validate_tx`.
    """
    global _decoded_bytes
    rules = (swarm, pow_bits, max_bytes)
    raw = tx.raw
    with _lock:
        known = _decoded.get(raw) is tx and rules in _valid[raw]
    if known:
        if tx.time > now_ms + MAX_FUTURE_MS:
            raise TxRejected(f"transaction time is {tx.time - now_ms} ms ahead of this clock", code="future-time")
        check_parent_times(tx, parent_times)
        return
    validate_tx(tx, swarm=swarm, pow_bits=pow_bits, max_bytes=max_bytes, now_ms=now_ms,
                parent_times=parent_times)
    with _lock:
        if _decoded.get(raw) is tx:
            _valid[raw].add(rules)
        elif _fresh.get(raw) is tx and raw not in _decoded:  # decode_cached's decoding: remember it
            del _fresh[raw]
            while _decoded and _decoded_bytes + len(raw) > DECODED_BYTES:
                old = next(iter(_decoded))
                del _decoded[old], _valid[old]
                _decoded_bytes -= len(old)
            _decoded[raw] = tx
            _valid[raw] = {rules}
            _decoded_bytes += len(raw)


DEFAULT_ALPHA = 0.05
"""Randomness of the MCMC walk: 0 walks uniformly, large values follow the heaviest approver."""
DEFAULT_DEPTH = 15
"""Walks start at a transaction this many heights below the highest one."""
PRUNABLE = ("checkpoint", "snapshot")
"""The kinds :meth:`Tangle.prune` may delete; every other kind is kept forever."""
SNAPSHOT_VERSION = 1
"""Version of the snapshot file format (:meth:`Tangle.export_snapshot`)."""
SNAPSHOT_MAX_BYTES = 256 << 20
"""Largest snapshot file :meth:`Tangle.import_snapshot` reads by default, in bytes."""
WAL_LIMIT = 4 << 20
"""``PRAGMA journal_size_limit``: the WAL is truncated to this after a checkpoint (bytes)."""
_APPROVED = 0  # edge.child meaning "approved by transactions that were pruned"

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
    view INTEGER NOT NULL DEFAULT 0,  -- view.id: the membership txs in its past cone
    cid TEXT,                    -- content CID announced by data and checkpoint txs
    dseq INTEGER                 -- a data tx's payload seq (per sensor), else NULL
);
CREATE INDEX IF NOT EXISTS tx_order ON tx (height, id);
CREATE INDEX IF NOT EXISTS tx_kind_author ON tx (kind, author);
CREATE INDEX IF NOT EXISTS tx_cid ON tx (cid) WHERE cid IS NOT NULL;
CREATE TABLE IF NOT EXISTS edge (
    child INTEGER NOT NULL,      -- tx.seq of the approver; 0: approvers were pruned (not a tip)
    parent INTEGER NOT NULL,     -- tx.seq (or pruned.seq) of the approved
    PRIMARY KEY (child, parent)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS edge_parent ON edge (parent, child);
CREATE TABLE IF NOT EXISTS pruned (  -- the frontier: pruned transactions that kept ones approve
    seq INTEGER PRIMARY KEY,     -- the seq the transaction had (edges keep pointing to it)
    id TEXT NOT NULL UNIQUE,
    time INTEGER NOT NULL,
    height INTEGER NOT NULL,
    view INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS view (  -- sets of membership (admit, revoke) txs: transactions' views
    id INTEGER PRIMARY KEY,      -- 0: the empty set
    events TEXT NOT NULL UNIQUE  -- their ids, sorted, comma-joined
);
INSERT OR IGNORE INTO view VALUES (0, '');
CREATE TABLE IF NOT EXISTS attestation (  -- index of the attestation txs (never pruned)
    seq INTEGER PRIMARY KEY,     -- tx.seq of the attestation
    tx TEXT NOT NULL UNIQUE,     -- its id
    verifier BLOB NOT NULL,      -- its author
    subject BLOB NOT NULL,       -- the judged checkpoint's author
    checkpoint TEXT NOT NULL,    -- the judged checkpoint's id (one of the attestation's parents)
    method TEXT NOT NULL,
    verdict TEXT NOT NULL,
    code TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS attestation_subject ON attestation (subject);
CREATE INDEX IF NOT EXISTS attestation_checkpoint ON attestation (checkpoint);
CREATE TABLE IF NOT EXISTS judged (  -- pruned checkpoints that attestations approve: their bytes
    id TEXT PRIMARY KEY,         -- also in the frontier (the attestations approve it)
    raw BLOB NOT NULL            -- the exact signed bytes: proof of the attestations' subject
) WITHOUT ROWID;
"""
# after _SCHEMA and the migration of stores made before the dseq column existed
_DSEQ_INDEX = "CREATE INDEX IF NOT EXISTS tx_data_seq ON tx (author, dseq) WHERE dseq IS NOT NULL"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _announced_cid(tx: Tx) -> str | None:
    return tx.payload["cid"] if tx.kind in ("data", "checkpoint") else None


def _data_seq(tx: Tx) -> int | None:
    return tx.payload["seq"] if tx.kind == "data" else None


def _attestation_row(tx: Tx, seq: int, subject: bytes) -> tuple[int, str, bytes, bytes, str, str, str, str]:
    """``tx``'s row of table ``attestation`` (``subject``: the judged checkpoint's author)."""
    p = tx.payload
    return (seq, tx.id, tx.author, subject, tx_id(p["checkpoint"]), p["method"], p["verdict"], p["code"])


def _attestation_target(tx: Tx, target: str, kind: str | None, author: bytes | None) -> bytes:
    """The subject of attestation ``tx``: the author of ``target``, the transaction it judges.

    ``kind``/``author``: ``target``'s, or ``None`` if this store holds neither it nor its bytes.

    Raises:
        TxRejected: code ``attestation-target`` (``target`` is not a checkpoint, or was pruned
            here without its bytes), ``self-attestation`` (``tx``'s author judges its own).
    """
    if kind is None or author is None:
        raise TxRejected(f"attestation {tx.id} judges {target}, which this ledger pruned without keeping its"
                         " bytes (no attestation had judged it): its author cannot be checked",
                         code="attestation-target")
    if kind != "checkpoint":
        raise TxRejected(f"attestation {tx.id} judges {target}, a {kind} transaction: only checkpoints are"
                         " judged", code="attestation-target")
    if author == tx.author:
        raise TxRejected(f"attestation {tx.id} judges its own author's checkpoint {target}: attest your"
                         " peers' checkpoints only", code="self-attestation")
    return author


@dataclass(frozen=True)
class InsertResult:
    """What an insert did with one transaction.

    ``status``: ``"inserted"``, ``"duplicate"`` (already stored or pending; nothing changed),
    ``"pending"`` (valid so far, waiting for parents, see :meth:`Tangle.missing_parents`),
    ``"pruned"`` (history this store pruned: an old checkpoint or snapshot superseded by its
    author's newer one, see the module docstring; not stored) or ``"rejected"`` (``error`` says why;
    counted in :attr:`Tangle.rejections`). ``released``:
    ids of pending transactions stored because this one arrived. ``id`` is ``None`` only for
    bytes that did not decode.
    """

    id: str | None
    status: str
    released: tuple[str, ...] = ()
    error: TxRejected | None = None


@dataclass(frozen=True)
class PruneStats:
    """What one :meth:`Tangle.prune` call did.

    ``pruned``: transactions deleted by this call; ``kept``: transactions stored after it;
    ``frontier``: pruned transactions remembered as entry points (kept ones approve them);
    ``more``: transactions the rule prunes are left (call again); ``seconds``: wall time of the
    call; ``cutoff_ms``: the cutoff it pruned by (checkpoints older than this, beyond each
    author's newest, went).
    """

    pruned: int
    kept: int
    frontier: int
    more: bool
    seconds: float
    cutoff_ms: int


@dataclass(frozen=True)
class SnapshotStats:
    """What one :meth:`Tangle.import_snapshot` call did.

    ``txs``: transactions in the file (the genesis included); ``inserted``: stored by this
    import; ``duplicate``: already stored or pending; ``pending``: waiting for parents the file
    did not hold (gossip fills them); ``pruned``: older than this ledger's last cutoff and
    superseded (not stored, see the module docstring); ``rejected``: failed validation, by
    :class:`~learnae.errors.TxRejected` code in ``rejections``; ``frontier``: entry points
    added; ``bytes``: the file's size; ``seconds``: wall time.
    """

    txs: int
    inserted: int
    duplicate: int
    pending: int
    pruned: int
    rejected: int
    rejections: dict[str, int]
    frontier: int
    bytes: int
    seconds: float


class Attestation(NamedTuple):
    """A stored ``attestation`` transaction, as :meth:`Tangle.attestations` returns it.

    ``tx``: its id; ``seq``: its arrival number in this store (a cursor of
    :meth:`Tangle.attestations_since`); ``verifier``: its author (32-byte Ed25519 key);
    ``subject``: the judged checkpoint's author (32 bytes, known also after the checkpoint was
    pruned); ``checkpoint``: the judged checkpoint's id; ``method``, ``verdict``, ``code``,
    ``figures``: its payload (:func:`~learnae.ledger.tx.attestation_payload`); ``time``: its
    time, ms since the epoch by the verifier's clock.
    """

    tx: str
    seq: int
    verifier: bytes
    subject: bytes
    checkpoint: str
    method: str
    verdict: str
    code: str
    figures: dict[str, float]
    time: int


class _Parent(NamedTuple):
    seq: int
    time: int
    height: int
    frontier: bool  # a pruned transaction remembered in the frontier, not a stored one
    view: int = 0  # view.id


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
        rules: the swarm's membership rules (from its manifest); ``None``: an open swarm whose
            founder alone signs ``revoke``.
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
        rules: Rules | None = None,
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
        # A round of pruning (one or many calls): the seqs the rule keeps, how far the round got
        # (seq), the last seq it covers, and its (window, keep, cutoff).
        self._prune_kept: set[int] = set()
        self._prune_cursor = self._prune_high = 0
        self._prune_args = (-1, -1, -1)
        self._load()
        self.rules = rules if rules is not None else Rules(founder=self._founder())
        """The swarm's membership rules."""

    def _founder(self) -> bytes:
        """The genesis author (a damaged genesis gives a key nobody holds: verify reports it)."""
        try:
            return self.genesis.author
        except LedgerError:  # TxRejected included
            return bytes(32)

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
        self._has_frontier = "pruned" in tables or not self.read_only
        self._has_attestations = "attestation" in tables or not self.read_only  # and "judged"
        self._has_views = "view" in tables or not self.read_only
        if self.read_only:
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(tx)")}
            self._has_dseq = "dseq" in columns
            return
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
        old_tx_columns = {row[1] for row in self._db.execute("PRAGMA table_info(tx)")}
        old_frontier_columns = {row[1] for row in self._db.execute("PRAGMA table_info(pruned)")}
        self._db.executescript(_SCHEMA)
        for table, columns in (("tx", old_tx_columns), ("pruned", old_frontier_columns)):
            if columns and "view" not in columns:  # made before membership: every view is empty
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN view INTEGER NOT NULL DEFAULT 0")
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
        kept up to date by inserts and prunes, so that :meth:`counts` and
        :meth:`latest_checkpoint_per_author` do not grow with the ledger); the frontier's size,
        the pruning figures and the next free seq.
        """
        (self._top,) = self._db.execute("SELECT max(height) FROM tx").fetchone()
        # The last RECENT transactions stored by this object (oldest first): peers' tips, the
        # checkpoints a new one names in its base. Emptied whenever rows may have gone.
        self._recent: dict[str, Tx] = {}
        meta = dict(self._db.execute("SELECT key, value FROM meta WHERE key IN"
                                     " ('pruned_total', 'pruned_cutoff', 'seq_high')"))
        self._pruned_total: int = meta.get("pruned_total", 0)
        self._cutoff: int | None = meta.get("pruned_cutoff")
        (high,) = self._db.execute("SELECT max(seq) FROM tx").fetchone()
        self._frontier_size = 0
        if self._has_frontier:
            (self._frontier_size, frontier_high), = self._db.execute("SELECT count(*), max(seq) FROM pruned")
            high = max(high or 0, frontier_high or 0)
        # seqs are never reused: cursors (checkpoints_since) and edges to the frontier rely on it
        self._next_seq = max(high or 0, meta.get("seq_high", 0)) + 1
        self._tips = {
            i for (i,) in self._db.execute(
                "SELECT id FROM tx WHERE NOT EXISTS (SELECT 1 FROM edge WHERE parent = tx.seq)"
            )
        }
        self._counts: Counter[str] = Counter(dict(self._db.execute("SELECT kind, count(*) FROM tx GROUP BY kind")))
        self._load_views()
        self._latest: dict[bytes, tuple[tuple[int, int, str], int]] = {
            author: ((time_ms, height, i), seq) for author, time_ms, height, i, seq in self._db.execute(
                "SELECT author, time, height, id, seq FROM (SELECT author, time, height, id, seq,"
                " row_number() OVER (PARTITION BY author ORDER BY time DESC, height DESC, id DESC)"
                " AS r FROM tx WHERE kind = 'checkpoint') WHERE r = 1")
        }

    def _load_views(self) -> None:
        """Read the views and the membership transactions (few: kept in memory)."""
        self._views: dict[int, frozenset[str]] = {0: frozenset()}
        if self._has_views:
            self._views.update((i, event_ids(events)) for i, events in self._db.execute("SELECT id, events FROM view"))
        self._view_ids = {events: i for i, events in self._views.items()}
        marks = ",".join("?" * len(MEMBERSHIP_KINDS))
        self._events: dict[str, tuple[int, Tx]] = {
            i: (height, decode_tx(raw)) for i, height, raw in self._db.execute(
                f"SELECT id, height, raw FROM tx WHERE kind IN ({marks})", MEMBERSHIP_KINDS)}
        self._rolls: dict[frozenset[str], Roll] = {}

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
        """The stored or frontier transactions among ``ids`` (a stored one wins)."""
        ids = list(ids)
        marks = ",".join("?" * len(ids))
        view = "view" if self._has_views else "0"
        sql = f"SELECT id, seq, time, height, 0, {view} FROM tx WHERE id IN ({marks})"
        if self._has_frontier:
            sql = f"SELECT id, seq, time, height, 1, {view} FROM pruned WHERE id IN ({marks}) UNION ALL " + sql
            ids = ids + ids
        return {i: _Parent(seq, time_ms, height, bool(frontier), view_id)
                for i, seq, time_ms, height, frontier, view_id in self._db.execute(sql, ids)}

    def _superseded(self, tx: Tx, parents: dict[str, _Parent]) -> bool:
        """Would a prune by the last cutoff delete ``tx`` at once (``parents``: those held)?

        True, once this store has pruned, for a checkpoint older than the last cutoff whose
        author has a newer checkpoint stored, and for a snapshot whose author has a newer
        snapshot stored. Newer by (time, height, id); with parents missing, by time alone.
        """
        if self._cutoff is None or tx.kind not in PRUNABLE:
            return False
        newest: tuple[int, int, str] | None
        if tx.kind == "checkpoint":
            if tx.time >= self._cutoff:
                return False
            latest = self._latest.get(tx.author)
            newest = None if latest is None else latest[0]
        else:
            newest = self._db.execute(
                "SELECT time, height, id FROM tx WHERE kind = 'snapshot' AND author = ?"
                " ORDER BY time DESC, height DESC, id DESC LIMIT 1", (tx.author,)).fetchone()
        if newest is None:
            return False
        known = len(parents) == len(tx.parents)
        height = 1 + max(p.height for p in parents.values()) if known else math.inf
        return (tx.time, height, tx.id) < newest

    def _insert(self, item: bytes | Tx) -> InsertResult:
        try:
            tx = item if isinstance(item, Tx) else decode_cached(item)
        except TxRejected as exc:
            return self._reject(None, exc)
        found = self._parents([tx.id, *tx.parents])
        itself = found.pop(tx.id, None)
        if (itself is not None and not itself.frontier) or tx.id in self._pending:
            return InsertResult(tx.id, "duplicate")
        if tx.id not in self._waiting and self._superseded(tx, found):
            return InsertResult(tx.id, "pruned")
        try:
            _validate(
                tx, swarm=self.swarm, pow_bits=self.pow_bits, max_bytes=self.max_tx_bytes,
                now_ms=self._clock(),
                parent_times={i: p.time for i, p in found.items()},
            )
        except TxRejected as exc:
            return self._reject(tx.id, exc)
        if len(found) < len(tx.parents):
            self._hold(tx, [p for p in tx.parents if p not in found])
            return InsertResult(tx.id, "pending")
        try:
            subject = self._subject(tx, found)
            view = self._view(tx, found.values())
        except TxRejected as exc:
            return self._reject(tx.id, exc)
        self._store(tx, found.values(), itself, subject, view)
        return InsertResult(tx.id, "inserted", self._release(tx.id))

    def _view(self, tx: Tx, parents: Iterable[_Parent]) -> frozenset[str]:
        """Check that ``tx``'s author may publish it in its parents' view; return its own view.

        Raises:
            TxRejected: as :meth:`learnae.ledger.members.Roll.check`.
        """
        events = self._parents_view(parents)
        self.roll_of(events).check(tx)
        return events | {tx.id} if tx.kind in MEMBERSHIP_KINDS else events

    def _view_id(self, events: frozenset[str]) -> int:
        """The id of the view holding ``events``, stored now if new."""
        found = self._view_ids.get(events)
        if found is None:
            found = self._db.execute("INSERT INTO view (events) VALUES (?)", (view_text(events),)).lastrowid
            assert found is not None
            self._views[found], self._view_ids[events] = events, found
        return found

    def check_author(self, tx: Tx) -> None:
        """Check that ``tx``'s author may publish it on its parents, without storing it.

        Raises:
            TxRejected: as :meth:`learnae.ledger.members.Roll.check`.
            LedgerError: a parent is not stored here (nor in the frontier).
        """
        parents = self._parents(tx.parents)
        if len(parents) < len(tx.parents):
            raise LedgerError(f"{tx.id}: its parents are not all in this ledger")
        self._view(tx, parents.values())

    def roll_of(self, events: frozenset[str]) -> Roll:
        """Who may publish in the view holding the membership transactions ``events``.

        ``events``: transaction ids; those not stored here are left out.
        """
        roll = self._rolls.get(events)
        if roll is None:
            if len(self._rolls) >= 256:
                self._rolls.clear()
            roll = self._rolls[events] = Roll.of(self.rules, (self._events[i] for i in events if i in self._events))
        return roll

    def _parents_view(self, parents: Iterable[_Parent]) -> frozenset[str]:
        """The membership transactions below ``parents``: the union of their views."""
        return frozenset().union(*(self._views[v] for v in {p.view for p in parents}))

    def _admitted_on(self, parents: list[str], author: bytes, kind: str) -> bool:
        return self.roll_of(self._parents_view(self._parents(parents).values())).admits(author, kind)

    def tips_for(self, author: bytes, kind: str = "data") -> list[str]:
        """Tips that a ``kind`` transaction by ``author`` may approve, sorted.

        The tips whose view lets the author publish (:meth:`tips` when the ledger holds no
        ``admit``/``revoke``). None may, right after the author was admitted (the tips
        approve transactions from before the admit): then the admit itself, which a new
        transaction may approve like a tip. Empty when this whole ledger does not admit the
        author: a revoked member is not shown the tips from before its revocation.
        """
        tips = self.tips()
        if not self._events:
            return tips
        if not self.roll().admits(author, kind):  # revoked (or never admitted): old tips do not help
            return []
        ok = [i for i, p in self._parents(tips).items()
              if self.roll_of(self._views[p.view]).admits(author, kind)]
        if ok:
            return sorted(ok)
        member = self.roll().members.get(author)
        return [member.since] if member and member.since and member.revoked is None else []

    def recent(self, limit: int = 40) -> list[dict[str, Any]]:
        """The ``limit`` highest stored transactions (the ledger near its tips), highest first.

        Each as ``{"id", "kind", "author" (hex), "time_ms", "height", "parents", "tip"}``: what a
        picture of the DAG's top needs. Cost: ``limit`` rows.
        """
        rows = self._db.execute("SELECT id, raw, height FROM tx ORDER BY height DESC, id LIMIT ?", (limit,)).fetchall()
        out = []
        for i, raw, height in rows:
            tx = decode_tx(raw)
            out.append({"id": i, "kind": tx.kind, "author": tx.author.hex(), "time_ms": tx.time, "height": height,
                        "parents": list(tx.parents), "tip": i in self._tips})
        return out

    def roll_events(self) -> list[str]:
        """The ids of every stored ``admit`` and ``revoke``, in the tangle's order."""
        return [i for (_, i) in sorted((h, i) for i, (h, _) in self._events.items())]

    def roll(self) -> Roll:
        """Who may publish as this whole ledger says: every stored membership transaction."""
        return self.roll_of(frozenset(self._events))

    def _subject(self, tx: Tx, parents: dict[str, _Parent]) -> bytes | None:
        """The subject of attestation ``tx`` (``None`` for other kinds); ``parents``: all of them.

        Raises:
            TxRejected: as :func:`_attestation_target`.
        """
        if tx.kind != "attestation":
            return None
        target = tx_id(tx.payload["checkpoint"])
        parent = parents[target]  # validate_tx: the judged checkpoint is a parent
        kind = author = None
        if not parent.frontier:
            (kind, author), = self._db.execute("SELECT kind, author FROM tx WHERE seq = ?", (parent.seq,))
        elif row := self._db.execute("SELECT raw FROM judged WHERE id = ?", (target,)).fetchone():
            judged = decode_tx(row[0])
            kind, author = judged.kind, judged.author
        return _attestation_target(tx, target, kind, author)

    def _reject(self, tx_id: str | None, exc: TxRejected) -> InsertResult:
        self.rejections[exc.code] += 1
        log.debug("rejected transaction %s (%s): %s", tx_id, exc.code, exc.reason)
        return InsertResult(tx_id, "rejected", error=exc)

    def _store(self, tx: Tx, parents: Iterable[_Parent], frontier: _Parent | None = None,
               subject: bytes | None = None, view: frozenset[str] = frozenset()) -> None:
        """Store ``tx`` on its ``parents``; ``frontier``: its own entry in the frontier, if any.

        A frontier transaction that arrives in full (its approvers' edges point to its frontier
        seq) takes a new seq, the edges follow it, and it leaves the frontier (and ``judged``).
        An attestation is indexed with ``subject`` (:meth:`_subject`); ``view``: its view.
        """
        parents = list(parents)
        height = 1 + max(p.height for p in parents)
        seq = self._next_seq
        self._db.execute(
            "INSERT INTO tx (seq, id, raw, kind, author, time, height, cid, dseq, view)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, tx.id, tx.raw, tx.kind, tx.author, tx.time, height, _announced_cid(tx), _data_seq(tx),
             self._view_id(view)),
        )
        if tx.kind in MEMBERSHIP_KINDS:
            self._events[tx.id] = (height, tx)
        recent = self._recent
        if len(recent) >= RECENT:
            del recent[next(iter(recent))]
        recent[tx.id] = tx
        self._next_seq += 1
        self._db.executemany("INSERT INTO edge VALUES (?, ?)", ((seq, p.seq) for p in parents))
        if subject is not None:
            self._db.execute("INSERT INTO attestation VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             _attestation_row(tx, seq, subject))
        approved = False
        if frontier is not None:
            approved = self._db.execute("UPDATE edge SET parent = ? WHERE parent = ?",
                                        (seq, frontier.seq)).rowcount > 0
            self._db.execute("DELETE FROM pruned WHERE seq = ?", (frontier.seq,))
            self._db.execute("DELETE FROM judged WHERE id = ?", (tx.id,))
            self._frontier_size -= 1
        self._tips.difference_update(tx.parents)
        if not approved:
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
                parents = self._parents([child_id, *child.parents])
                itself = parents.pop(child_id, None)
                if len(parents) < len(child.parents):
                    continue  # still waiting for another parent
                self._unhold(child)
                try:
                    check_parent_times(child, {i: p.time for i, p in parents.items()})
                    subject = self._subject(child, parents)
                    view = self._view(child, parents.values())
                except TxRejected as exc:
                    self._reject(child_id, exc)
                    continue
                self._store(child, parents.values(), itself, subject, view)
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
        rng: random.Random | None = None, approve: str | None = None,
    ) -> Tx:
        """Make one of this node's own transactions on :meth:`select_tips`'s tips, and store it.

        ``time_ms`` (default: the clock) is raised to the latest parent's time if it is earlier,
        so a slow clock cannot make a ``before-parent`` transaction. Mining costs about
        ``2**pow_bits`` sha2-256 hashes.

        Args:
            identity: the author's key.
            kind: the transaction kind (see :mod:`learnae.ledger.tx`).
            payload: its payload.
            time_ms: ms since the epoch; default: the clock.
            rng: randomness of the tip selection.
            approve: a transaction the new one must approve (an attestation's judged
                checkpoint): the parents are then ``approve`` and one tip chosen by
                :meth:`select_tips` other than it (only ``approve`` if it is the only tip). It
                must be stored here, or be in the frontier.

        Raises:
            TxRejected: the transaction is not valid (e.g. ``bad-payload``, ``not-admitted``,
                ``attestation-parent``, ``attestation-target``, ``self-attestation``).
            LedgerError: ``approve`` is not in this ledger; the database failed.
        """
        tx = self.make(identity, kind, payload, time_ms=time_ms, rng=rng, approve=approve)
        result = self.insert(tx)
        if result.error is not None:
            raise result.error
        return tx

    def make(
        self, identity: Identity, kind: str, payload: dict, *, time_ms: int | None = None,
        rng: random.Random | None = None, approve: str | None = None,
    ) -> Tx:
        """The transaction :meth:`append` would store, made and mined but not stored.

        For a reader of a ledger whose node stores it. Arguments and errors as :meth:`append`.
        """
        if approve is None:
            parents = self.select_tips(rng=rng)
            if self._events and not self._admitted_on(parents, identity.public_key, kind):
                parents = self.tips_for(identity.public_key, kind)[:2] or parents
        elif not self._parents([approve]):
            raise LedgerError(f"cannot approve {approve}: it is not in this ledger (wait until it is stored)")
        else:
            parents = [approve, *[t for t in self.select_tips(rng=rng) if t != approve][:1]]
        now = self._clock() if time_ms is None else time_ms
        return make_tx(
            identity, kind=kind, payload=payload, parents=parents, swarm=self.swarm,
            pow_bits=self.pow_bits,
            time_ms=max([now] + [p.time for p in self._parents(parents).values()]),
        )

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

        Walks start at the lowest height stored in the region (a pruned ledger may have no
        transaction left at ``top - depth``). A transaction whose approvers were all pruned has
        none here: a walk may end on it, and :meth:`select_tips` takes only ends that are tips.
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
        low = min(heights.values())
        entry = max((i for i, h in heights.items() if h == low), key=lambda i: (weights[i], i))
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
            if tip in self._tips and tip not in chosen:
                chosen.append(tip)
            if len(chosen) == n:
                return sorted(chosen)
        near = [i for i in region.heights if i in self._tips and i not in chosen]
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
        if tx_id in self._recent:
            return True
        return self._db.execute("SELECT 1 FROM tx WHERE id = ?", (tx_id,)).fetchone() is not None

    def stored(self, ids: Iterable[str]) -> set[str]:
        """Those of ``ids`` that are stored (pending ones are not).

        ``{i for i in ids if i in self}`` in one query per 500 ids: for peers' tip lists.
        """
        recent = self._recent
        wanted = list(dict.fromkeys(ids))
        found = {i for i in wanted if i in recent}
        wanted = [i for i in wanted if i not in found]
        for k in range(0, len(wanted), 500):
            part = wanted[k:k + 500]
            found.update(row[0] for row in self._db.execute(
                f"SELECT id FROM tx WHERE id IN ({','.join('?' * len(part))})", part))
        return found

    def get(self, tx_id: str) -> Tx | None:
        """The stored transaction ``tx_id``, or ``None``."""
        tx = self._recent.get(tx_id)
        if tx is not None:
            return tx
        row = self._db.execute("SELECT raw FROM tx WHERE id = ?", (tx_id,)).fetchone()
        return None if row is None else decode_cached(row[0])

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

    @property
    def top_height(self) -> int:
        """The highest height stored (0: the genesis alone). Cost: constant (kept in memory)."""
        return self._top

    def is_pruned(self, tx_id: str) -> bool:
        """Is ``tx_id`` in the frontier: pruned here, and approved by a kept transaction?

        Pruned transactions that no kept one approves are forgotten: this says ``False`` for
        them, as for ids never seen. Cost: one index lookup.
        """
        if not self._has_frontier:
            return False
        return self._db.execute("SELECT 1 FROM pruned WHERE id = ?", (tx_id,)).fetchone() is not None

    def pruning(self) -> dict[str, int | None]:
        """What pruning did to this store, for ``/status`` and the CLI. Cost: constant.

        Returns:
            ``{"total": transactions pruned since the store was made, "last_cutoff_ms": the
            last prune's cutoff (ms since the epoch; checkpoints older than it, beyond each
            author's newest, went) or None if never pruned, "frontier": entry points (pruned
            transactions kept ones approve)}``.
        """
        return {"total": self._pruned_total, "last_cutoff_ms": self._cutoff, "frontier": self._frontier_size}

    def validate(self, tx: Tx) -> None:
        """Check ``tx`` against this swarm's rules without its parents.

        Form, size, swarm, parents' shape, time (not ahead of the clock), admission, payload,
        proof-of-work and signature; not whether its parents are stored or older. For what
        arrives outside :meth:`insert` (a peer's announced snapshot transaction).

        Raises:
            TxRejected: the rule it breaks, as :func:`~learnae.ledger.tx.validate_tx`.
        """
        validate_tx(tx, swarm=self.swarm, pow_bits=self.pow_bits, max_bytes=self.max_tx_bytes,
                    now_ms=self._clock())

    def counts(self) -> dict[str, int]:
        """Number of stored transactions by kind, sorted by kind. Cost: the number of kinds."""
        return {kind: n for kind, n in sorted(self._counts.items()) if n}

    def order(self) -> list[str]:
        """Every stored id in the deterministic topological order: by height, then id."""
        return [i for (i,) in self._db.execute("SELECT id FROM tx ORDER BY height, id")]

    def _txs(self, sql: str, args: tuple = ()) -> list[Tx]:
        return [decode_cached(raw) for (raw,) in self._db.execute(sql, args)]

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
        return [decode_cached(raw) for _, raw in rows], rows[-1][0] if rows else cursor

    def data_since(self, cursor: int = 0) -> tuple[list[Tx], int]:
        """``data`` transactions stored after ``cursor``, and the next cursor.

        In arrival order, as :meth:`checkpoints_since`.
        """
        rows = self._db.execute(
            "SELECT seq, raw FROM tx WHERE seq > ? AND +kind = 'data' ORDER BY seq", (cursor,)
        ).fetchall()
        return [decode_cached(raw) for _, raw in rows], rows[-1][0] if rows else cursor

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

    def _attestations(self, where: str, args: tuple, order: str, figures: bool = True) -> list[Attestation]:
        if not self._has_attestations:  # a read-only store made before attestations existed
            return []
        rows = self._db.execute(
            "SELECT a.tx, a.seq, a.verifier, a.subject, a.checkpoint, a.method, a.verdict, a.code,"
            f" {'t.raw' if figures else 't.time'}"
            f" FROM attestation a JOIN tx t ON t.seq = a.seq WHERE {where} ORDER BY {order}", args)
        if not figures:
            return [Attestation(i, seq, verifier, subject, checkpoint, method, verdict, code, {}, time_ms)
                    for i, seq, verifier, subject, checkpoint, method, verdict, code, time_ms in rows]
        found = []
        for i, seq, verifier, subject, checkpoint, method, verdict, code, raw in rows:
            tx = decode_tx(raw)
            found.append(Attestation(i, seq, verifier, subject, checkpoint, method, verdict, code,
                                     tx.payload["figures"], tx.time))
        return found

    def attestations_since(self, cursor: int = 0) -> tuple[list[Attestation], int]:
        """Attestations stored after ``cursor``, and the next cursor.

        In arrival order, as :meth:`checkpoints_since` (start with 0). Cost: the attestations
        since ``cursor``.
        """
        found = self._attestations("a.seq > ?", (cursor,), "a.seq")
        return found, found[-1].seq if found else cursor

    def attestations(self, subject: bytes | None = None, *, figures: bool = True) -> list[Attestation]:
        """Every stored attestation, or those judging ``subject``'s checkpoints, in tangle order.

        Args:
            subject: a checkpoint author's 32-byte key; ``None``: every attestation. Subjects
                stay known after the judged checkpoints were pruned.
            figures: read each attestation's ``figures`` (decoding its bytes); False leaves
                them empty and reads the index only (what standings need; several times faster).

        Returns:
            Ordered by (height, id), the same on every node holding the same attestations.
        """
        if subject is None:
            return self._attestations("1", (), "t.height, t.id", figures)
        return self._attestations("a.subject = ?", (subject,), "t.height, t.id", figures)

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
        """``(id, raw bytes)`` of every stored transaction in arrival order.

        Parents come first, except for a frontier transaction that arrived in full after its
        approvers (:meth:`order` is always parents first).
        """
        yield from self._db.execute("SELECT id, raw FROM tx ORDER BY seq")

    def verify(self) -> list[str]:
        """Re-check every stored transaction from its bytes.

        Returns the problems (empty if none), each as ``"<id>: <reason>"``.

        Checks: canonical decoding, id = CID of the bytes, signature, proof-of-work and the
        swarm's rules, parents stored or in the frontier (pruned, with the time and height
        recorded there) and not later in time, and index columns (kind, author, time, height,
        content CID, data seq, edges) that agree with the bytes; no frontier id is also stored.
        Transactions are checked in the tangle's order (parents first), each against the
        membership its parents' view says (:mod:`learnae.ledger.members`), and its stored view
        against the one its parents' give (a frontier entry's is taken as stored). Attestations: the judged
        transaction is a checkpoint of another author, and table ``attestation`` holds exactly
        one row per attestation, derived from its bytes and the checkpoint's (or, pruned, the
        bytes kept in ``judged``, which must be valid checkpoints of the frontier, at its times).
        """
        problems: list[str] = []
        seen: dict[str, tuple[int, int]] = {}  # id -> (time, height) as stored
        views: dict[str, frozenset[str]] = {}  # id -> its view's membership transactions
        view = "view" if self._has_views else "0"
        parent_id = "p.id"
        if self._has_frontier:
            for i, t, h, v in self._db.execute(f"SELECT id, time, height, {view} FROM pruned"):
                seen[i], views[i] = (t, h), self._views.get(v, frozenset())
            parent_id = "coalesce(p.id, (SELECT id FROM pruned WHERE seq = edge.parent))"
        frontier = set(seen)
        authors = self._verify_judged(seen, problems)  # checkpoint id -> author, filled as stored below
        indexed: dict[str, tuple] = {}
        if self._has_attestations:
            indexed = {row[1]: row for row in self._db.execute("SELECT * FROM attestation")}
        rows = self._db.execute(
            f"SELECT id, raw, kind, author, time, height, cid, {'dseq' if self._has_dseq else 'NULL'},"
            f" (SELECT group_concat({parent_id}) FROM edge LEFT JOIN tx p ON p.seq = edge.parent"
            f" WHERE edge.child = tx.seq), seq, {view} FROM tx ORDER BY height, id"
        )
        for tx_id_, raw, kind, author, time_ms, height, cid, dseq, edges, seq, view_id in rows:
            if tx_id_ in frontier:
                problems.append(f"{tx_id_}: stored, and also in the frontier of pruned transactions")
            seen[tx_id_], views[tx_id_] = (time_ms, height), frozenset()
            index_row = indexed.pop(tx_id_, None)
            try:
                tx = decode_tx(raw)
                if tx.id != tx_id_:
                    raise LedgerError(f"the stored bytes have id {tx.id}")
                missing = [p for p in tx.parents if p not in seen]
                if missing:
                    raise LedgerError(f"parents {missing} are neither stored below it nor pruned")
                validate_tx(
                    tx, swarm=self.swarm, pow_bits=self.pow_bits, max_bytes=self.max_tx_bytes,
                    now_ms=self._clock(),
                    parent_times={p: seen[p][0] for p in tx.parents},
                )
                derived = (
                    tx.kind, tx.author, tx.time, max((seen[p][1] + 1 for p in tx.parents), default=0),
                    _announced_cid(tx), _data_seq(tx) if self._has_dseq else None, sorted(tx.parents),
                )
                stored = (kind, author, time_ms, height, cid, dseq,
                          sorted(edges.split(",") if edges else []))
                if derived != stored:
                    raise LedgerError("index columns disagree with the stored bytes")
                events = frozenset().union(*(views[p] for p in tx.parents))
                self.roll_of(events).check(tx)
                views[tx_id_] = events | {tx.id} if tx.kind in MEMBERSHIP_KINDS else events
                if self._views.get(view_id) != views[tx_id_]:
                    raise LedgerError("its view (the membership transactions below it) disagrees with its parents'")
                if tx.kind == "checkpoint":
                    authors[tx.id] = tx.author
                if (tx.kind == "attestation" or index_row is not None) and self._has_attestations:
                    self._verify_attestation(tx, seq, index_row, authors)
            except LedgerError as exc:  # TxRejected included
                problems.append(f"{tx_id_}: {exc.reason}")
        problems += [f"{i}: in the attestation index, but not a stored attestation" for i in indexed]
        return problems

    def _verify_judged(self, frontier: dict[str, tuple[int, int]], problems: list[str]) -> dict[str, bytes]:
        """Check table ``judged`` against ``frontier`` (id -> (time, height)); add to ``problems``.

        Returns the author of each judged checkpoint whose bytes are sound.
        """
        authors: dict[str, bytes] = {}
        if not self._has_attestations:
            return authors
        for i, raw in self._db.execute("SELECT id, raw FROM judged"):
            try:
                tx = decode_tx(raw)
                if tx.id != i or tx.kind != "checkpoint":
                    raise LedgerError(f"its kept bytes are a {tx.kind} transaction with id {tx.id}")
                if i not in frontier or frontier[i][0] != tx.time:
                    raise LedgerError("its kept bytes are not of a frontier entry, or not at its time")
                self.validate(tx)
                authors[i] = tx.author
            except LedgerError as exc:
                problems.append(f"{i}: judged checkpoint: {exc.reason}")
        return authors

    def _verify_attestation(self, tx: Tx, seq: int, row: tuple | None, authors: dict[str, bytes]) -> None:
        """Check attestation ``tx`` (stored as ``seq``) against its index ``row``.

        ``authors``: checkpoint id -> author, for the checkpoints stored below it and the judged
        ones pruned.

        Raises:
            TxRejected: the attestation breaks a rule of :meth:`_subject`.
            LedgerError: ``row`` does not agree with the bytes (or ``tx`` is no attestation).
        """
        if tx.kind != "attestation":
            raise LedgerError(f"a {tx.kind} transaction in the attestation index")
        target = tx_id(tx.payload["checkpoint"])
        author = authors.get(target)
        kind = "checkpoint" if author is not None else None
        if author is None and not self.is_pruned(target):  # stored, not a checkpoint
            (kind, author), = self._db.execute("SELECT kind, author FROM tx WHERE id = ?", (target,))
        subject = _attestation_target(tx, target, kind, author)
        if row != _attestation_row(tx, seq, subject):
            raise LedgerError("its attestation index row disagrees with the stored bytes")

    # Pruning and snapshots ---------------------------------------------------------------------
    def prune(self, now_ms: int, *, window_ms: int, keep_per_author: int,
              limit: int | None = None) -> PruneStats:
        """Delete the checkpoints and snapshots the pruning rule lets go (module docstring).

        A checkpoint is kept iff it is its author's newest, or among its author's newest
        ``keep_per_author`` and not older than ``now_ms - window_ms``; a snapshot iff it is its
        author's newest; every other kind and the genesis always. Pruned transactions that kept
        ones approve enter the frontier; frontier entries nobody kept approves any more leave it.
        One SQLite transaction per call; the in-memory state (counts, tips, top height) follows.

        Args:
            now_ms: the pruning node's clock, ms since the epoch.
            window_ms: checkpoint history kept, ms (at least 0).
            keep_per_author: checkpoints kept per author at most (at least 1).
            limit: most transactions deleted by this call (``None``: all). A round of calls
                with the same window and count applies the rule once, at its first call's
                cutoff (cost: each author's checkpoints, read by index), then deletes in the
                order of arrival, about ``limit`` rows per call; ``more`` is true until the
                round ends (its last call may find nothing left).

        Returns:
            What was pruned, what is left, and whether more is to prune (``more``).

        Raises:
            ValueError: ``window_ms`` < 0, ``keep_per_author`` < 1 or ``limit`` < 1.
            LedgerError: the store is read-only, or the database failed (nothing was pruned).
        """
        if window_ms < 0 or keep_per_author < 1 or (limit is not None and limit < 1):
            raise ValueError("prune needs window_ms >= 0, keep_per_author >= 1 and limit >= 1 or None")
        if self.read_only:
            raise LedgerError(f"{self.path} is open read-only: open it writable to prune it")
        started = time.perf_counter()
        cutoff = now_ms - window_ms
        window, keep, round_cutoff = self._prune_args
        if (limit is None or self._prune_cursor >= self._prune_high
                or (window, keep) != (window_ms, keep_per_author) or cutoff < round_cutoff):
            self._start_round(window_ms, keep_per_author, cutoff)
        batch = self._next_prunable(limit)
        used_cutoff = self._prune_args[2]
        try:
            self._db.execute("BEGIN IMMEDIATE")
            deleted = self._delete(batch)
            total = self._pruned_total + len(deleted)
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                 [("pruned_total", total), ("pruned_cutoff", used_cutoff)])
            self._db.execute("COMMIT")
        except BaseException as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._prune_high = 0
            self._load()
            if isinstance(exc, sqlite3.Error):
                raise LedgerError(f"tangle store {self.path} failed while pruning: {exc}") from exc
            raise
        self._pruned_total, self._cutoff = total, used_cutoff
        for tx_id_, kind, _ in deleted:
            self._counts[kind] -= 1
            self._tips.discard(tx_id_)
        if any(height >= self._top for _, _, height in deleted):
            (self._top,) = self._db.execute("SELECT max(height) FROM tx").fetchone()
        (self._frontier_size,) = self._db.execute("SELECT count(*) FROM pruned").fetchone()
        if deleted:
            log.debug("pruned %d transactions (cutoff %d); %d entry points", len(deleted), used_cutoff,
                      self._frontier_size)
        return PruneStats(pruned=len(deleted), kept=self.count(), frontier=self._frontier_size,
                          more=self._prune_cursor < self._prune_high, seconds=time.perf_counter() - started,
                          cutoff_ms=used_cutoff)

    def _start_round(self, window_ms: int, keep: int, cutoff: int) -> None:
        """Apply the rule: the checkpoints and snapshots it keeps, among those stored now.

        What is stored now and not kept is pruned by this round, in the order of arrival (pages
        next to each other): transactions stored later wait for the next round, so a round never
        deletes what arrived after it started. Cost: each author's checkpoints, read by index.
        """
        kept: set[int] = set()
        groups = [("checkpoint", author) for author in self._latest]
        groups += [("snapshot", a) for (a,) in self._db.execute("SELECT DISTINCT author FROM tx WHERE kind = 'snapshot'")]
        for kind, author in groups:
            newest = self._db.execute(
                "SELECT seq, time FROM tx WHERE kind = ? AND author = ? ORDER BY time DESC, height DESC, id DESC"
                " LIMIT ?", (kind, author, keep if kind == "checkpoint" else 1)).fetchall()
            kept.update(seq for rank, (seq, time_ms) in enumerate(newest) if rank == 0 or time_ms >= cutoff)
        (high,) = self._db.execute("SELECT max(seq) FROM tx").fetchone()
        self._prune_kept, self._prune_cursor, self._prune_high = kept, 0, high or 0
        self._prune_args = (window_ms, keep, cutoff)

    def _next_prunable(self, limit: int | None) -> list[int]:
        """Up to ``limit`` seqs this round prunes, from its cursor on (arrival order)."""
        found: list[int] = []
        kept = self._prune_kept
        while self._prune_cursor < self._prune_high and (limit is None or len(found) < limit):
            rows = self._db.execute(
                "SELECT seq FROM tx WHERE seq > ? AND seq <= ? AND kind IN (?, ?) ORDER BY seq LIMIT ?",
                (self._prune_cursor, self._prune_high, *PRUNABLE, 10_000 if limit is None else limit - len(found)),
            ).fetchall()
            if not rows:
                self._prune_cursor = self._prune_high
                break
            found += [seq for (seq,) in rows if seq not in kept]
            self._prune_cursor = rows[-1][0]
        return found

    def _delete(self, seqs: list[int]) -> list[tuple[str, str, int]]:
        """Delete the transactions ``seqs`` inside the caller's SQLite transaction.

        Returns ``(id, kind, height)`` of those that were stored.
        """
        db = self._db
        self._recent.clear()
        db.execute("CREATE TEMP TABLE IF NOT EXISTS doomed (seq INTEGER PRIMARY KEY)")
        db.execute("CREATE TEMP TABLE IF NOT EXISTS orphaned (seq INTEGER PRIMARY KEY)")
        db.execute("DELETE FROM doomed")
        db.execute("DELETE FROM orphaned")
        db.executemany("INSERT OR IGNORE INTO doomed VALUES (?)", ((s,) for s in seqs))
        deleted = db.execute("SELECT id, kind, height FROM tx WHERE seq IN doomed").fetchall()
        if not deleted:
            return []
        (high,) = db.execute("SELECT max(seq) FROM tx").fetchone()
        db.execute("INSERT INTO meta VALUES ('seq_high', ?) ON CONFLICT (key) DO UPDATE"
                   " SET value = max(value, excluded.value)", (high,))
        # The frontier: doomed transactions that a transaction staying approves.
        db.execute("INSERT INTO pruned (seq, id, time, height, view) SELECT seq, id, time, height, view FROM tx"
                   " WHERE seq IN doomed AND EXISTS (SELECT 1 FROM edge WHERE edge.parent = tx.seq"
                   " AND edge.child != ? AND edge.child NOT IN doomed)", (_APPROVED,))
        # A judged checkpoint keeps its bytes: they prove the subject of the attestations on it.
        if self._has_attestations:
            db.execute("INSERT OR IGNORE INTO judged SELECT id, raw FROM tx WHERE seq IN doomed"
                       " AND kind = 'checkpoint' AND id IN (SELECT checkpoint FROM attestation)")
        # What the doomed approve may lose its last approver.
        db.execute("INSERT OR IGNORE INTO orphaned SELECT parent FROM edge"
                   " WHERE child IN doomed AND parent NOT IN doomed")
        db.execute("DELETE FROM edge WHERE child IN doomed")
        db.execute("DELETE FROM edge WHERE child = ? AND parent IN doomed", (_APPROVED,))
        db.execute("DELETE FROM tx WHERE seq IN doomed")
        db.execute("DELETE FROM pruned WHERE seq IN orphaned"
                   " AND NOT EXISTS (SELECT 1 FROM edge WHERE edge.parent = pruned.seq)")
        # A kept transaction approved only by pruned ones stays approved: not a tip again.
        db.execute("INSERT INTO edge SELECT ?, seq FROM orphaned WHERE seq IN (SELECT seq FROM tx)"
                   " AND NOT EXISTS (SELECT 1 FROM edge WHERE edge.parent = orphaned.seq)", (_APPROVED,))
        return deleted

    def export_snapshot(self) -> bytes:
        """The kept ledger as a snapshot file: a DAG-CBOR map (written canonically).

        ===============  ==========================================================================
        ``v``            :data:`SNAPSHOT_VERSION`
        ``txs``          [bytes]: every stored transaction's exact signed bytes, in the tangle's
                         order (height, id): the genesis first, parents before children
        ``swarm``        text: the genesis id
        ``judged``       [bytes]: the exact signed bytes of the pruned checkpoints that stored
                         attestations judge (frontier entries; they prove the attestations'
                         subjects), by id. Absent in files of versions before attestations.
        ``approved``     [text]: ids of stored transactions approved only by pruned ones (not tips)
        ``frontier``     [[text id, uint time ms, uint height]]: the entry points, by height; an
                         entry whose view holds membership transactions has a fourth element,
                         their ids ([text], sorted)
        ===============  ==========================================================================

        Pending transactions are not in it. Cost: reads the whole store (its size in memory).
        """
        txs = [raw for (raw,) in self._db.execute("SELECT raw FROM tx ORDER BY height, id")]
        frontier: list[tuple] = []
        if self._has_frontier:
            view = "view" if self._has_views else "0"
            frontier = [(i, t, h, *([sorted(self._views[v])] if v else []))
                        for i, t, h, v in self._db.execute(f"SELECT id, time, height, {view} FROM pruned ORDER BY height, id")]
        judged: list[bytes] = []
        if self._has_attestations:
            judged = [raw for (raw,) in self._db.execute("SELECT raw FROM judged ORDER BY id")]
        approved = [i for (i,) in self._db.execute(
            "SELECT t.id FROM edge JOIN tx t ON t.seq = edge.parent WHERE edge.child = ? ORDER BY t.id",
            (_APPROVED,))]
        parts = [
            cbor_head(5, 6),
            cbor_text("v"), cbor_head(0, SNAPSHOT_VERSION),
            cbor_text("txs"), cbor_head(4, len(txs)), *(cbor_head(2, len(raw)) + raw for raw in txs),
            cbor_text("swarm"), cbor_text(self.swarm),
            cbor_text("judged"), cbor_head(4, len(judged)), *(cbor_head(2, len(raw)) + raw for raw in judged),
            cbor_text("approved"), cbor_head(4, len(approved)), *map(cbor_text, approved),
            cbor_text("frontier"), cbor_head(4, len(frontier)),
            *(cbor_head(4, len(row)) + cbor_text(row[0]) + cbor_head(0, row[1]) + cbor_head(0, row[2])
              + b"".join(cbor_head(4, len(e)) + b"".join(map(cbor_text, e)) for e in row[3:]) for row in frontier),
        ]
        return b"".join(parts)

    def import_snapshot(self, data: bytes, *, max_bytes: int = SNAPSHOT_MAX_BYTES) -> SnapshotStats:
        """Merge a snapshot file (:meth:`export_snapshot`, from any member) into this store.

        Adds the frontier entries whose ids are not stored here, then inserts the transactions
        with full validation, as if gossiped (signature, proof-of-work, swarm, admission, times,
        parents): one that fails is rejected and counted, never stored. Works on a fresh store
        (genesis only) and on one with history; importing the same file again changes nothing.
        One SQLite transaction.

        What a snapshot is trusted for: nothing it carries can forge or alter a transaction
        (each is checked against the genesis and its author's signature). It can omit
        transactions (gossip and gap repair then bring them), and it can mis-state the
        frontier's times, heights and views, which cannot be checked without the pruned history: a
        wrong height shifts the order keys (and so which claim of a content CID sorts first) of
        the kept transactions above it, and a wrong time changes which children pass the
        ``before-parent`` rule; a view that leaves out a revocation lets the revoked member's
        transactions on that entry in. Its ``approved`` list can make tips look approved, so that this
        node's new transactions do not approve them. A frontier entry naming a transaction that
        later arrives in full is replaced by it (:meth:`verify` then reports heights a lie
        shifted). Import snapshots announced by the swarm's members, and verify after.

        Attestations whose judged checkpoint the file holds only as a frontier entry are
        accepted when the file also carries that checkpoint's bytes (``judged``): they are kept
        only if they are a valid checkpoint of this swarm (signature, proof-of-work) with the
        entry's id and time, so an attestation's subject is proven, never taken on trust.
        Without them such an attestation is rejected (``attestation-target``).

        Args:
            data: the file's bytes.
            max_bytes: the largest file accepted.

        Returns:
            What the import did.

        Raises:
            LedgerError: nothing was imported: code ``snapshot-oversize`` (over ``max_bytes``),
                ``snapshot-malformed`` (not a snapshot, truncated, or a field of the wrong
                shape), ``snapshot-version`` (a format this version does not read),
                ``snapshot-wrong-swarm`` (another swarm's), ``snapshot-genesis`` (its first
                transaction is not this store's genesis); or the store is read-only, or the
                database failed.
        """
        started = time.perf_counter()
        if self.read_only:
            raise LedgerError(f"{self.path} is open read-only: open it writable to import a snapshot")
        if len(data) > max_bytes:
            raise LedgerError(f"the snapshot is {len(data)} bytes, over the {max_bytes}-byte limit"
                              " (raise max_bytes if it comes from a member you trust)",
                              code="snapshot-oversize")
        txs, frontier, approved, judged = _decode_snapshot(bytes(data), self.swarm)
        results: list[InsertResult] = []
        try:
            self._db.execute("BEGIN IMMEDIATE")
            known = self._parents(i for i, _, _, _ in frontier)
            added = 0
            for i, time_ms, height, events in frontier:
                if i not in known:
                    view = self._view_id(events)
                    self._db.execute("INSERT INTO pruned VALUES (?, ?, ?, ?, ?)",
                                     (self._next_seq, i, time_ms, height, view))
                    known[i] = _Parent(self._next_seq, time_ms, height, True, view)
                    self._next_seq += 1
                    added += 1
            self._keep_judged(judged)
            results = [self._insert(raw) for raw in txs[1:]]
            for i in approved:
                row = self._db.execute("SELECT seq FROM tx WHERE id = ?", (i,)).fetchone()
                if row is not None and not self._db.execute(
                        "SELECT 1 FROM edge WHERE parent = ? LIMIT 1", row).fetchone():
                    self._db.execute("INSERT INTO edge VALUES (?, ?)", (_APPROVED, row[0]))
                    self._tips.discard(i)
            # Entries whose approvers were not stored (rejected, pending) are not entry points.
            self._db.execute("DELETE FROM pruned WHERE NOT EXISTS (SELECT 1 FROM edge WHERE edge.parent = pruned.seq)")
            self._db.execute("DELETE FROM judged WHERE id NOT IN (SELECT id FROM pruned)")
            self._db.execute("COMMIT")
        except BaseException as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._load()
            if isinstance(exc, sqlite3.Error):
                raise LedgerError(f"tangle store {self.path} failed while importing a snapshot: {exc}") from exc
            raise
        (self._frontier_size,) = self._db.execute("SELECT count(*) FROM pruned").fetchone()
        statuses = Counter(r.status for r in results)
        released = sum(len(r.released) for r in results)
        rejections = Counter(r.error.code for r in results if r.error is not None)
        return SnapshotStats(
            txs=len(txs), inserted=statuses["inserted"] + released, duplicate=statuses["duplicate"],
            pending=statuses["pending"] - released, pruned=statuses["pruned"],
            rejected=statuses["rejected"], rejections=dict(rejections), frontier=added,
            bytes=len(data), seconds=time.perf_counter() - started,
        )

    def _keep_judged(self, raws: list[bytes]) -> None:
        """Keep the judged checkpoints' bytes of a snapshot that are sound proofs of their author.

        Sound: a valid checkpoint of this swarm (:meth:`validate`) whose id is a frontier entry
        here, at the entry's time. Others are left out (the attestations on them are then
        rejected as ``attestation-target``).
        """
        for raw in raws:
            try:
                tx = decode_tx(raw)
                self.validate(tx)
            except TxRejected as exc:
                log.debug("a snapshot's judged checkpoint is not valid (%s): %s", exc.code, exc.reason)
                continue
            entry = self._parents([tx.id]).get(tx.id)
            if tx.kind == "checkpoint" and entry is not None and entry.frontier and entry.time == tx.time:
                self._db.execute("INSERT OR IGNORE INTO judged VALUES (?, ?)", (tx.id, tx.raw))
            else:
                log.debug("a snapshot's judged checkpoint %s is not a frontier checkpoint here", tx.id)


def _decode_snapshot(
    data: bytes, swarm: str,
) -> tuple[list[bytes], list[tuple[str, int, int, frozenset[str]]], list[str], list[bytes]]:
    """The transactions, frontier, approved ids and judged checkpoints of a snapshot of ``swarm``.

    Raises:
        LedgerError: codes as :meth:`Tangle.import_snapshot`.
    """
    def malformed(what: str) -> LedgerError:
        return LedgerError(f"not a learnae ledger snapshot: {what}; fetch it again, or from"
                           " another member", code="snapshot-malformed")

    try:
        obj = libipld.decode_dag_cbor(data)
    except Exception as exc:  # noqa: BLE001  (libipld raises ValueError, RecursionError, ...)
        raise malformed(f"not DAG-CBOR, or truncated ({exc})") from None
    if not isinstance(obj, dict) or "v" not in obj:
        raise malformed("not a map with a version 'v'")
    if obj["v"] != SNAPSHOT_VERSION or type(obj["v"]) is not int:
        raise LedgerError(f"snapshot format version {obj['v']!r} is not {SNAPSHOT_VERSION}, the one this"
                          " version of learnae reads", code="snapshot-version")
    txs, frontier, approved = obj.get("txs"), obj.get("frontier"), obj.get("approved")
    judged = obj.get("judged", [])  # absent in files of versions before attestations
    if type(obj.get("swarm")) is not str:
        raise malformed("'swarm' is not a transaction id")
    if obj["swarm"] != swarm:
        raise LedgerError(f"the snapshot is of swarm {obj['swarm']}, this ledger holds swarm {swarm}",
                          code="snapshot-wrong-swarm")
    if type(txs) is not list or not txs or not all(type(raw) is bytes for raw in txs):
        raise malformed("'txs' is not a non-empty list of transactions' bytes")
    if type(approved) is not list or not all(type(i) is str for i in approved):
        raise malformed("'approved' is not a list of transaction ids")
    if type(judged) is not list or not all(type(raw) is bytes for raw in judged):
        raise malformed("'judged' is not a list of transactions' bytes")
    if type(frontier) is not list or not all(
            type(row) is list and len(row) in (3, 4) and type(row[0]) is str
            and all(type(x) is int and x >= 0 for x in row[1:3]) and row[2] >= 1
            and (len(row) == 3 or type(row[3]) is list and all(type(e) is str for e in row[3]))
            for row in frontier):
        raise malformed("'frontier' is not a list of [id, time, height >= 1, optional [view ids]]")
    try:
        for i in (*(row[0] for row in frontier), *approved, *(e for row in frontier for e in row[3:4] for e in e)):
            tx_link(i)
    except InvalidCID as exc:
        raise malformed(exc.reason) from None
    if tx_id(TX_CID_PREFIX + hashlib.sha256(txs[0]).digest()) != swarm:
        raise LedgerError(f"the snapshot's first transaction is not this swarm's genesis {swarm}",
                          code="snapshot-genesis")
    return txs, [(row[0], row[1], row[2], frozenset(row[3] if len(row) == 4 else ())) for row in frontier], approved, judged
