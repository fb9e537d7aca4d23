"""The sensor's on-disk store-and-forward queue of readings and chunks (:class:`SensorQueue`).

A reading is kept on disk from the moment it is stored (commits every 0.2 s or 512 readings,
``synchronous=FULL``) until the transaction of its chunk is acknowledged; chunks go out
strictly in ``seq`` order, one at a time, and the signed transaction is stored before it is
first sent so that a resend after a lost answer is the same transaction. Readings are cut into
data chunk files (:func:`learnae.formats.encode_chunk`) by count or age. The queue is bounded
by ``max_bytes`` (bytes of queued features and chunk files); when it is reached the policy is
``stop`` (default: stop reading until chunks are acknowledged; the source is paused, a pipe
fills and its writer blocks) or ``drop-oldest`` (drop the oldest unpublished chunk, or the
oldest readings, and count the dropped rows in :attr:`SensorQueue.stats`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import sqlite3
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np

from learnae.content import content_id
from learnae.errors import ConfigError
from learnae.formats import Chunk, Schema, decode_chunk, encode_chunk
from learnae.sensor.rows import Row, _now_ms

log = logging.getLogger(__name__)


POLICIES = ("stop", "drop-oldest")
_HEADER_MARGIN = 1024
"""Bytes a chunk file needs besides its tensors (safetensors header with metadata)."""


def _header_bytes(schema: Schema, sensor: str, per_row: int) -> int:
    """The most a chunk file of ``sensor`` takes besides its rows.

    Its safetensors header and metadata, measured on a one-row chunk with the longest seq and
    times it can hold.
    """
    x = np.zeros((1, *schema.features), dtype=schema.dtype)
    y = None if schema.label_dtype is None else np.zeros(1, dtype=schema.label_dtype)
    big = 10**15
    return len(encode_chunk(Chunk(x, y, schema, sensor, big, (big, big)))) - per_row


class QueuedChunk(NamedTuple):
    """An unpublished chunk.

    Attributes:
        seq: its sequence number.
        data: the chunk file.
        cid: the file's CID.
        rows: its row count.
        tx: the signed transaction (raw bytes) once made, else None.
    """

    seq: int
    data: bytes
    cid: str
    rows: int
    tx: bytes | None


_QUEUE_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS readings (id INTEGER PRIMARY KEY, t INTEGER NOT NULL,
                                     x BLOB NOT NULL, y INTEGER);
CREATE TABLE IF NOT EXISTS chunks (seq INTEGER PRIMARY KEY, cid TEXT NOT NULL,
    data BLOB NOT NULL, rows INTEGER NOT NULL, tx BLOB, state TEXT NOT NULL DEFAULT 'pending',
    reason TEXT);
"""
_ROW_OVERHEAD = 24
"""Bytes counted per queued reading besides its features (id, time, label, record)."""


class SensorQueue:
    """The sensor's on-disk store-and-forward queue (``STATE/queue.sqlite``, WAL).

    Holds readings not yet in a chunk and chunks whose transaction is not yet acknowledged,
    plus counters and the source's resume position. Every method commits before it returns
    (``synchronous=FULL``): what it stored survives a power cut. Use it from one thread.

    Args:
        path: the SQLite file.
        schema: the rows' schema (chunks are written with it).
        sensor: the sensor id written in chunk files.
        genesis: the swarm's genesis id; a queue of another swarm is refused.
        max_bytes: bound of the queued bytes (features + chunk files).
        policy: ``"stop"`` or ``"drop-oldest"`` (see the module docstring).
        chunk_rows: rows per chunk (at most what fits ``max_chunk_bytes``).
        max_chunk_bytes: the swarm's chunk file limit.

    Raises:
        ConfigError: bad arguments, or the queue belongs to another swarm or schema.
    """

    def __init__(self, path: str | os.PathLike[str], *, schema: Schema, sensor: str,
                 genesis: str, max_bytes: int = 256 << 20, policy: str = "stop",
                 chunk_rows: int = 1000, max_chunk_bytes: int = 8 << 20):
        if policy not in POLICIES:
            raise ConfigError(f"queue policy {policy!r} is not one of {', '.join(POLICIES)}")
        self.schema, self.sensor, self.policy, self.max_bytes = schema, sensor, policy, max_bytes
        self.dtype = np.dtype(schema.dtype).newbyteorder("<")
        self.row_bytes = math.prod(schema.features) * self.dtype.itemsize
        per_row = self.row_bytes + (8 if schema.label_dtype else 0)
        fit = (max_chunk_bytes - _HEADER_MARGIN) // per_row
        if fit < 1:
            raise ConfigError(f"one row ({per_row} bytes) does not fit a chunk of"
                              f" {max_chunk_bytes} bytes")
        self.chunk_rows = max(1, min(chunk_rows, fit))
        self.header_bytes = _header_bytes(schema, sensor, per_row)
        if max_bytes < 2 * (self.chunk_rows * per_row + _HEADER_MARGIN):
            raise ConfigError(f"queue limit {max_bytes} bytes is below two chunks"
                              f" ({self.chunk_rows} rows of {per_row} bytes)")
        self.path = os.fspath(path)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA cache_size=-512")  # KiB: a Pi's memory is small
        self._db.executescript(_QUEUE_SCHEMA)
        ident = json.dumps({"genesis": genesis, "schema": schema.to_dict()}, sort_keys=True)
        stored = self._meta("swarm")
        if stored is None:
            self._set("swarm", ident)
        elif stored != ident:
            self._db.close()
            raise ConfigError(f"{self.path} queues data of another swarm or schema ({stored});"
                              " use another --state directory")
        self.readings, self.bytes = self._db.execute(
            "SELECT count(*), coalesce(sum(length(x)), 0) FROM readings").fetchone()
        self.bytes += self.readings * _ROW_OVERHEAD
        self.bytes += self._db.execute(
            "SELECT coalesce(sum(length(data)), 0) FROM chunks").fetchone()[0]
        self.oldest_ms: int | None = self._db.execute(
            "SELECT t FROM readings ORDER BY id LIMIT 1").fetchone()
        if self.oldest_ms is not None:
            self.oldest_ms = self.oldest_ms[0]

    def close(self) -> None:
        """Close the SQLite connection (everything is committed already)."""
        self._db.close()

    # meta ----------------------------------------------------------------------------------
    def _meta(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    def _set(self, key: str, value: Any) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def _add(self, key: str, n: int) -> None:
        self._set(key, int(self._meta(key, 0)) + n)

    def get(self, key: str, default: Any = None) -> Any:
        """A stored setting (e.g. ``"tips"``, ``"resume"``)."""
        return self._meta(key, default)

    def put(self, key: str, value: Any) -> None:
        """Store a setting (committed at once)."""
        self._set(key, value)

    def count(self, key: str, n: int = 1) -> None:
        """Add ``n`` to counter ``key`` (committed at once), e.g. ``"bad_answers"``."""
        self._add(key, n)

    @property
    def stats(self) -> dict[str, int]:
        """The queue's counters and current size.

        Counters: ``stored``, ``chunked``, ``published``, ``published_rows``,
        ``dropped_rows``, ``dropped_chunks``, ``rejected_chunks``, ``bad_answers`` (2xx
        answers that acknowledged nothing), ``renumbered`` (times the queued chunks were
        moved to a later seq), and the current ``queued_readings``, ``queued_chunks``,
        ``queued_bytes``, ``next_seq``.
        """
        keys = ("stored", "chunked", "published", "published_rows", "dropped_rows",
                "dropped_chunks", "rejected_chunks", "bad_answers", "renumbered", "next_seq")
        d = {k: int(self._meta(k, 0)) for k in keys}
        d["queued_readings"] = self.readings
        d["queued_chunks"] = self._db.execute(
            "SELECT count(*) FROM chunks WHERE state = 'pending'").fetchone()[0]
        d["queued_bytes"] = self.bytes
        return d

    # readings --------------------------------------------------------------------------------
    def full(self, extra: int = 0) -> bool:
        """Would ``extra`` more readings go over :attr:`max_bytes`?

        Counted with the file headers of the chunks the queued readings will be cut into
        (:attr:`header_bytes` each), so cutting them never takes the queue over its bound.
        """
        headers = -(-(self.readings + extra) // self.chunk_rows) * self.header_bytes
        return self.bytes + extra * (self.row_bytes + _ROW_OVERHEAD) + headers > self.max_bytes

    def add(self, rows: Iterable[Row]) -> int:
        """Store readings (one commit); returns the rows stored.

        Under ``drop-oldest`` the oldest data is dropped to make room first; under ``stop``
        the caller must check :meth:`full` (rows beyond the limit are stored anyway: the limit
        is soft by one batch).
        """
        rows = list(rows)
        if not rows:
            return 0
        if self.policy == "drop-oldest":
            self._make_room(len(rows))
        resume = max((r.pos for r in rows if r.pos is not None), default=None)
        with self._tx():
            self._db.executemany("INSERT INTO readings (t, x, y) VALUES (?, ?, ?)",
                                 [(r.t, r.x, r.y) for r in rows])
            self._add("stored", len(rows))
            if resume is not None:
                self._set("resume", resume)
        self.readings += len(rows)
        self.bytes += sum(len(r.x) + _ROW_OVERHEAD for r in rows)
        if self.oldest_ms is None:
            self.oldest_ms = rows[0].t
        return len(rows)

    def _make_room(self, n: int) -> None:
        while self.full(n):
            old = self._db.execute("SELECT seq, rows, length(data) FROM chunks ORDER BY"
                                   " (state = 'pending'), seq LIMIT 1").fetchone()
            with self._tx():
                if old is not None:
                    self._db.execute("DELETE FROM chunks WHERE seq = ?", (old[0],))
                    self._add("dropped_chunks", 1)
                    self._add("dropped_rows", old[1])
                    self.bytes -= old[2]
                    log.warning("queue full: dropped chunk %d (%d rows)", old[0], old[1])
                    continue
                take = max(n, 1)
                got = self._db.execute(
                    "SELECT count(*), coalesce(sum(length(x)), 0), max(id) FROM (SELECT id, x"
                    " FROM readings ORDER BY id LIMIT ?)", (take,)).fetchone()
                if not got[0]:
                    return
                self._db.execute("DELETE FROM readings WHERE id <= ?", (got[2],))
                self._add("dropped_rows", got[0])
                self.readings -= got[0]
                self.bytes -= got[1] + got[0] * _ROW_OVERHEAD
                self._reset_oldest()
                log.warning("queue full: dropped %d readings", got[0])

    def _reset_oldest(self) -> None:
        row = self._db.execute("SELECT t FROM readings ORDER BY id LIMIT 1").fetchone()
        self.oldest_ms = None if row is None else row[0]

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # chunks ----------------------------------------------------------------------------------
    def cut(self, *, max_age_ms: int | None = None, force: bool = False,
            now_ms: int | None = None) -> list[int]:
        """Turn queued readings into chunks; returns the new seqs.

        Every full chunk of :attr:`chunk_rows` is cut, then the rest if ``force`` or its oldest
        reading is ``max_age_ms`` old.
        """
        made = []
        now = _now_ms() if now_ms is None else now_ms
        while self.readings:
            due = force or (max_age_ms is not None and self.oldest_ms is not None
                            and now - self.oldest_ms >= max_age_ms)
            if self.readings < self.chunk_rows and not due:
                break
            made.append(self._cut_one(min(self.readings, self.chunk_rows)))
        return made

    def _cut_one(self, n: int) -> int:
        rows = self._db.execute("SELECT id, t, x, y FROM readings ORDER BY id LIMIT ?",
                                (n,)).fetchall()
        seq = int(self._meta("next_seq", 0))
        x = np.frombuffer(b"".join(r[2] for r in rows), dtype=self.dtype)
        x = x.reshape(len(rows), *self.schema.features).astype(self.schema.dtype, copy=False)
        y = None
        if self.schema.label_dtype is not None:
            y = np.asarray([r[3] for r in rows], dtype=self.schema.label_dtype)
        times = [r[1] for r in rows]
        data = encode_chunk(Chunk(x, y, self.schema, self.sensor, seq,
                                  (min(times), max(times))))
        cid = content_id(data)
        with self._tx():
            self._db.execute("DELETE FROM readings WHERE id <= ?", (rows[-1][0],))
            self._db.execute("INSERT INTO chunks (seq, cid, data, rows) VALUES (?, ?, ?, ?)",
                             (seq, cid, data, len(rows)))
            self._set("next_seq", seq + 1)
            self._add("chunked", 1)
        self.readings -= len(rows)
        self.bytes += len(data) - sum(len(r[2]) + _ROW_OVERHEAD for r in rows)
        self._reset_oldest()
        return seq

    def next_chunk(self) -> QueuedChunk | None:
        """The oldest unpublished chunk (lowest seq), or None."""
        row = self._db.execute("SELECT seq, data, cid, rows, tx FROM chunks WHERE state ="
                               " 'pending' ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else QueuedChunk(*row)

    def set_tx(self, seq: int, raw: bytes | None) -> None:
        """Store the signed transaction of chunk ``seq`` (None: forget it, to sign again)."""
        self._db.execute("UPDATE chunks SET tx = ? WHERE seq = ?", (raw, seq))

    def acknowledged(self, seq: int, tx_id: str) -> None:
        """Chunk ``seq`` is published as ``tx_id``: drop its bytes from the queue."""
        row = self._db.execute("SELECT rows, length(data) FROM chunks WHERE seq = ?",
                               (seq,)).fetchone()
        if row is None:
            return
        with self._tx():
            self._db.execute("DELETE FROM chunks WHERE seq = ?", (seq,))
            self._add("published", 1)
            self._add("published_rows", row[0])
            self._set("last_tx", tx_id)
        self.bytes -= row[1]

    def renumber(self, first: int, to: int) -> int:
        """Move the pending chunks from ``first`` on to ``to`` on.

        Each ``seq`` goes up by ``to - first`` (gaps kept), for a ledger that already holds
        this key's seqs below ``to``. Each chunk file is re-encoded with its new seq (its CID
        changes) and its transaction forgotten (signed again); readings not yet cut follow. One
        commit.

        Returns:
            The number of chunks moved.

        Raises:
            ValueError: ``to <= first``.
        """
        if to <= first:
            raise ValueError(f"renumber moves chunks up: {first} -> {to}")
        shift, grown = to - first, 0
        seqs = [r[0] for r in self._db.execute(
            "SELECT seq FROM chunks WHERE state = 'pending' AND seq >= ? ORDER BY seq DESC",
            (first,))]
        with self._tx():
            for seq in seqs:  # highest first: a new seq is never one still in use
                (data,) = self._db.execute("SELECT data FROM chunks WHERE seq = ?",
                                           (seq,)).fetchone()
                chunk = decode_chunk(data, max_bytes=len(data), schema=self.schema)
                new = encode_chunk(dataclasses.replace(chunk, seq=seq + shift))
                self._db.execute("UPDATE chunks SET seq = ?, cid = ?, data = ?, tx = NULL"
                                 " WHERE seq = ?", (seq + shift, content_id(new), new, seq))
                grown += len(new) - len(data)
            self._set("next_seq", int(self._meta("next_seq", 0)) + shift)
            self._add("renumbered", 1)
        self.bytes += grown
        return len(seqs)

    def reject(self, seq: int, reason: str) -> None:
        """Keep chunk ``seq`` aside: the swarm refused it for good.

        It is not sent again; it still counts toward the limit and ``drop-oldest`` drops it
        first.
        """
        with self._tx():
            self._db.execute("UPDATE chunks SET state = 'rejected', reason = ? WHERE seq = ?",
                             (reason, seq))
            self._add("rejected_chunks", 1)
