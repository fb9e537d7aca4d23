"""Adopted sensor rows: kept on disk, and a training pool of bounded size.

A trainer node adopts sensors' ``data`` chunks (``--adopt``). This module, which never imports
TensorFlow, holds them in two places:

- :class:`AdoptedStore`: every adopted chunk, on disk in the state directory
  (``STATE/adopted.sqlite``, one row per chunk: tx id, author, rows, the features and labels
  as raw bytes with their dtype and shape). Each chunk is one SQLite transaction committed
  with ``synchronous=FULL`` (write-ahead log), so after a crash a chunk is either whole on
  disk or absent. A restarted node reads the chunks from here instead of fetching them
  again from IPFS. The file grows with the data adopted (about the chunks' size).
- :class:`TrainingPool`: what training runs on: the node's own rows (always all of them)
  followed by at most ``max_rows`` adopted rows, in arrays allocated once; adding a chunk
  writes its rows into place and never copies the pool.

Which adopted rows the pool keeps: a uniform random sample of every adopted row so far,
by reservoir sampling (Vitter's Algorithm R: J. S. Vitter, "Random sampling with a
reservoir", ACM Trans. Math. Softw. 11(1), 1985). While fewer than ``max_rows`` rows were
adopted the pool holds them all; after that, the ``t``-th adopted row (0-based) enters with
probability ``max_rows / (t + 1)`` in place of a uniformly chosen row, so that at any time
each of the ``n`` rows adopted so far is in the pool with the same probability
``max_rows / n``. What this means for training: the pool is an unbiased sample of all the
data the node adopted, so the loss training minimizes estimates the loss on all of it; old
rows are not forgotten and a burst from one sensor cannot push the others' rows out. The
price: once ``n`` is well above ``max_rows``, a new chunk contributes few rows (a fraction
``max_rows / n`` of them), so a swarm whose sensors' data drift over time would rather want
a window of the newest rows. The sample is drawn with a seeded generator: fed the same
chunks in the same order (the store's), a restarted node rebuilds the same pool.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from learnae.errors import ConfigError, LearnaeError

log = logging.getLogger("learnae.pool")

__all__ = ["DEFAULT_MAX_ROWS", "AdoptedStore", "StoreError", "StoredChunk",
           "TrainingPool", "seed_from"]

#: Adopted rows the training pool holds at most, by default (``--adopt-max-rows``): 50,000
#: rows of 64 float32 features take 12.8 MB.
DEFAULT_MAX_ROWS = 50_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunk (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- order of arrival: the order the pool is fed
    tx TEXT NOT NULL UNIQUE,                -- the data transaction's id
    author BLOB NOT NULL,                   -- the sensor's public key (32 bytes)
    rows INTEGER NOT NULL,
    x_dtype TEXT NOT NULL, x_shape TEXT NOT NULL, x BLOB NOT NULL,  -- shape: one row's, JSON
    y_dtype TEXT NOT NULL, y BLOB NOT NULL,
    stored REAL NOT NULL                    -- seconds since the Unix epoch
);
"""
_NUMERIC = "biuf"  # dtype kinds a stored array may have


class StoreError(LearnaeError):
    """The adopted-data store cannot be opened, read or written."""

    code = "store"


@dataclass(frozen=True)
class StoredChunk:
    """One adopted chunk as read back from the store.

    Attributes:
        seq: its place in the store's order (increasing, from 1).
        tx: the id of the ``data`` transaction that announced it.
        author: the sensor's public key (32 bytes).
        x: features, shape ``(rows, *features)``, the dtype it was stored with.
        y: labels, shape ``(rows,)``.
    """

    seq: int
    tx: str
    author: bytes
    x: np.ndarray
    y: np.ndarray


class AdoptedStore:
    """The adopted chunks on disk (``STATE/adopted.sqlite``); see the module docstring.

    Safe to use from several threads: every call opens its own SQLite connection (the
    node's network side writes while its training side reads). ``chunks``, ``rows`` and
    ``last_seq`` count what the store holds; they are kept in memory, read once at opening
    and updated by :meth:`add` (they do not see another process writing the same file).

    Args:
        path: the SQLite file (created, with its directory, if missing).

    Raises:
        StoreError: the file is not a store this module can use (corrupt, or another
            program's); the error says to move it away.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with self._connect() as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
                chunks, rows, last = db.execute(
                    "SELECT count(*), coalesce(sum(rows), 0), coalesce(max(seq), 0) FROM chunk"
                ).fetchone()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the adopted-data store {self.path} ({exc}); move it away"
                             " and restart: the node then fetches the chunks again") from None
        self.chunks, self.rows, self.last_seq = int(chunks), int(rows), int(last)
        self.unreadable = 0  # rows :meth:`after` skipped

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            yield db
        finally:
            db.close()

    def add(self, tx: str, author: bytes, x: np.ndarray, y: np.ndarray) -> int | None:
        """Store one chunk durably (returns once committed to disk).

        Args:
            tx: the data transaction's id.
            author: the sensor's public key.
            x: features ``(rows, *features)``, numeric.
            y: labels ``(rows,)``, numeric.

        Returns:
            The chunk's ``seq``, or None when the store already held ``tx``.

        Raises:
            ValueError: ``x`` and ``y`` disagree on the number of rows, or are not numeric.
            StoreError: SQLite or the disk failed (e.g. the disk is full).
        """
        x, y = np.ascontiguousarray(x), np.ascontiguousarray(y)
        if (x.ndim < 1 or y.shape != (len(x),) or x.dtype.kind not in _NUMERIC
                or y.dtype.kind not in _NUMERIC):
            raise ValueError(f"cannot store features {x.dtype}{x.shape} with labels"
                             f" {y.dtype}{y.shape}")
        try:
            with self._connect() as db:
                cur = db.execute(
                    "INSERT OR IGNORE INTO chunk (tx, author, rows, x_dtype, x_shape, x,"
                    " y_dtype, y, stored) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (tx, bytes(author), len(x), x.dtype.str, json.dumps(list(x.shape[1:])),
                     x.tobytes(), y.dtype.str, y.tobytes(), time.time()))
                seq = cur.lastrowid if cur.rowcount == 1 else None
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot store chunk {tx} in {self.path}: {exc}") from None
        if seq is None:
            return None
        self.chunks += 1
        self.rows += len(x)
        self.last_seq = max(self.last_seq, seq)
        return seq

    def held(self, txs: Iterable[str]) -> set[str]:
        """Which of ``txs`` (transaction ids) the store holds.

        Raises:
            StoreError: SQLite failed.
        """
        txs = list(dict.fromkeys(txs))
        found: set[str] = set()
        try:
            with self._connect() as db:
                for i in range(0, len(txs), 500):  # old SQLite builds take 999 parameters at most
                    part = txs[i:i + 500]
                    found.update(t for (t,) in db.execute(
                        f"SELECT tx FROM chunk WHERE tx IN ({','.join('?' * len(part))})", part))
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from None
        return found

    def after(self, seq: int = 0) -> Iterator[StoredChunk]:
        """The chunks stored after ``seq``, in the store's order, one at a time.

        Only one chunk's arrays are in memory at once. A row that does not decode is logged,
        counted in :attr:`unreadable` and skipped.

        Raises:
            StoreError: SQLite failed.
        """
        while True:
            try:
                with self._connect() as db:
                    row = db.execute("SELECT seq, tx, author, rows, x_dtype, x_shape, x, y_dtype, y"
                                     " FROM chunk WHERE seq > ? ORDER BY seq LIMIT 1",
                                     (seq,)).fetchone()
            except (sqlite3.Error, OSError) as exc:
                raise StoreError(f"cannot read {self.path}: {exc}") from None
            if row is None:
                return
            seq = row[0]
            try:
                chunk = _decode_row(row)
            except (ValueError, TypeError) as exc:
                self.unreadable += 1
                log.warning("chunk %s in %s does not decode (%s); skipped", row[1], self.path, exc)
                continue
            yield chunk


def _decode_row(row: tuple) -> StoredChunk:
    seq, tx, author, rows, x_dtype, x_shape, x, y_dtype, y = row
    xd, yd = np.dtype(x_dtype), np.dtype(y_dtype)
    if xd.kind not in _NUMERIC or yd.kind not in _NUMERIC:
        raise ValueError(f"stored dtypes {x_dtype}, {y_dtype} are not numeric")
    shape = tuple(int(n) for n in json.loads(x_shape))
    xa = np.frombuffer(x, dtype=xd).reshape((int(rows), *shape))
    ya = np.frombuffer(y, dtype=yd).reshape((int(rows),))
    return StoredChunk(seq=int(seq), tx=str(tx), author=bytes(author), x=xa, y=ya)


class TrainingPool:
    """The rows training runs on: the node's own, then a uniform sample of adopted rows.

    At most ``max_rows`` adopted rows are kept (Algorithm R; see the module docstring).

    The arrays are allocated once, ``len(own) + max_rows`` rows (pages are only touched as
    rows arrive); :attr:`x` and :attr:`y` are views of their filled part. Not thread-safe:
    one thread (the node's training thread) adds and reads, between ``fit`` calls.

    Args:
        x: the node's own features ``(n, *features)``. Copied in.
        y: its labels ``(n,)``. Copied in.
        max_rows: adopted rows kept at most (>= 1).
        seed: seed of the sampling's generator (``numpy.random.default_rng``).

    Raises:
        ConfigError: ``max_rows`` is not an integer >= 1.
        ValueError: ``x`` and ``y`` disagree on the number of rows.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, max_rows: int = DEFAULT_MAX_ROWS, *,
                 seed: int = 0):
        if not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 1:
            raise ConfigError(f"the adopted rows' bound is {max_rows!r}; give an integer >= 1"
                              " (--adopt-max-rows), or --adopt none to adopt nothing")
        x, y = np.asarray(x), np.asarray(y)
        if y.shape != (len(x),):
            raise ValueError(f"{len(x)} feature rows but labels of shape {y.shape}")
        self.own = len(x)
        self.max_rows = max_rows
        self._x = np.empty((self.own + max_rows, *x.shape[1:]), dtype=x.dtype)
        self._y = np.empty(self.own + max_rows, dtype=y.dtype)
        self._x[:self.own], self._y[:self.own] = x, y
        self.held = 0  # adopted rows in the pool: min(seen, max_rows)
        self.seen = 0  # adopted rows offered so far
        self._rng = np.random.default_rng(seed)

    @property
    def x(self) -> np.ndarray:
        """Features ``(own + held, *features)``: a view, valid until the next :meth:`add`."""
        return self._x[:self.own + self.held]

    @property
    def y(self) -> np.ndarray:
        """Labels ``(own + held,)``: a view, valid until the next :meth:`add`."""
        return self._y[:self.own + self.held]

    @property
    def features(self) -> tuple[int, ...]:
        """Shape of one row's features."""
        return tuple(self._x.shape[1:])

    def add(self, x: np.ndarray, y: np.ndarray) -> int:
        """Offer adopted rows to the pool, in order (cast to the pool's dtypes).

        Args:
            x: features ``(m, *features)``.
            y: labels ``(m,)``.

        Returns:
            How many of the pool's slots were written (rows that entered).

        Raises:
            ValueError: the rows' shape is not the pool's, or ``x`` and ``y`` disagree; the
                pool is then unchanged.
        """
        x, y = np.asarray(x), np.asarray(y)
        if x.shape[1:] != self.features or y.shape != (len(x),):
            raise ValueError(f"rows {x.shape} with labels {y.shape} do not fit a pool of rows"
                             f" {self.features}")
        k, base, held = self.max_rows, self.own, self.held
        fill = min(len(x), k - held)  # while the reservoir is not full, every row enters
        self._x[base + held:base + held + fill] = x[:fill]
        self._y[base + held:base + held + fill] = y[:fill]
        self.held += fill
        self.seen += fill
        rest = len(x) - fill
        if rest == 0:
            return fill
        # Algorithm R: the row at stream index t replaces slot j, j uniform in [0, t], if j < k.
        t = self.seen + np.arange(rest, dtype=np.int64)
        j = self._rng.integers(0, t + 1)
        enter = np.flatnonzero(j < k)
        # Drawn all at once, applied in order: a slot drawn twice keeps the later row.
        slots, last = np.unique(j[enter][::-1], return_index=True)
        rows = fill + enter[::-1][last]
        self._x[base + slots] = x[rows]
        self._y[base + slots] = y[rows]
        self.seen += rest
        return fill + len(slots)

    def nbytes(self) -> int:
        """Bytes of the pool's arrays once full."""
        return int(self._x.nbytes + self._y.nbytes)


def seed_from(key: bytes) -> int:
    """A sampling seed from a node's public key.

    The same across its restarts, different between nodes (so that the swarm's nodes keep
    different samples of the same data).
    """
    return int.from_bytes(bytes(key)[:8].ljust(8, b"\0"), "big")

