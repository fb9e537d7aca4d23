"""The feeder loop: runs one sensor from its source to its outlet (:class:`Feeder`).

A reader thread parses readings into rows; the loop stores them in the
:class:`~learnae.sensor.queue.SensorQueue`, cuts chunks, and hands them to the
:class:`~learnae.sensor.outlets.Outlet` in ``seq`` order, retrying with backoff. Rejected
readings and refused chunks are counted by code; nothing a source, a node or the disk does
stops it. The sensor's key is kept in its state directory (:func:`load_identity`).

A sensor whose state directory was lost but whose key was kept starts again at ``seq`` 0. On
``duplicate-seq`` (or a ``next_seq`` above its first queued chunk's in ``GET /ingest``) it
renumbers its queued chunks from ``next_seq`` (each chunk file is re-encoded with its new
``seq``, so its CID changes, and signed again), logs a warning and goes on
(:meth:`~learnae.sensor.queue.SensorQueue.renumber`). The embedded way out reads ``next_seq``
from its own ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import random
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from learnae.errors import FormatError
from learnae.identity import Identity
from learnae.ingest import IngestRejected
from learnae.sensor.outlets import BadAnswer, Outlet, SeqTaken
from learnae.sensor.queue import QueuedChunk, SensorQueue
from learnae.sensor.rows import Rejected, Row, RowParser
from learnae.sensor.sources import Source

log = logging.getLogger(__name__)


def load_identity(state: Path) -> Identity:
    """``STATE/identity.key``, made (mode 0600) on first use."""
    path = state / "identity.key"
    if not path.exists():
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        Identity.generate().save(path)
    return Identity.load(path)


@dataclass
class Feeder:
    """Runs one sensor, from its source to its outlet.

    A reader thread feeds the :class:`SensorQueue`; the loop cuts chunks and hands them to the
    :class:`Outlet` in ``seq`` order, retrying with backoff.

    Attributes:
        rejected: rejected readings by code (:data:`~learnae.sensor.rows.REJECT_CODES`).
        refused: chunks the swarm refused, by code.
    """

    source: Source
    parser: RowParser
    queue: SensorQueue
    outlet: Outlet
    max_age: float = 60.0
    flush_interval: float = 0.2
    flush_rows: int = 512
    retry_max: float = 60.0
    drain_timeout: float | None = None
    write_retry: float = 5.0
    rejected: Counter = field(default_factory=Counter)
    refused: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._inbox: queue.Queue = queue.Queue(maxsize=4 * self.flush_rows)
        self._stop = threading.Event()
        self._source_done = False
        self._held: list[Row] = []
        self._reported = (time.monotonic(), 0)
        self._ended = False
        self.last_error: str | None = None

    def _read(self, resume: int | None) -> None:
        try:
            for item in self.source.readings(resume):
                if isinstance(item, Rejected):
                    row: Row | Rejected = item
                else:
                    try:
                        row = self.parser.row(item)
                    except Rejected as exc:
                        row = exc
                while not self._stop.is_set():
                    try:
                        self._inbox.put(row, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except Exception as exc:  # the source broke: log it, deliver what we have
            log.error("source failed: %r", exc)
        finally:
            self._inbox.put(None)

    def stop(self) -> None:
        """Ask :meth:`run` to return soon (thread-safe)."""
        self._stop.set()
        self.source.close()

    def _drain(self) -> bool:
        """Move parsed rows from the reader to the disk queue; True when the source ended.

        Rows that could not be written (SQLite failed: disk full, I/O error) stay in memory
        and are written first next time; no new ones are taken meanwhile.
        """
        rows = self._held
        while len(rows) < self.flush_rows and not self._ended:
            if self.queue.policy == "stop" and self.queue.full(len(rows) + 1):
                break
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._ended = True
                break
            if isinstance(item, Rejected):
                self.rejected[item.code] += 1
                log.debug("reading rejected (%s): %s", item.code, item.reason)
            else:
                rows.append(item)
        self.queue.add(rows)
        self._held = []
        return self._ended

    async def _store_loop(self, wake: asyncio.Event) -> None:
        try:
            await self._store_until_stopped(wake)
        finally:  # stopped (SIGTERM): keep what the reader already parsed
            with contextlib.suppress(sqlite3.Error):
                while not self._source_done and (self._inbox.qsize() or self._held):
                    before = self._inbox.qsize()
                    self._drain()
                    if self._inbox.qsize() == before:
                        break

    def _report(self, now: float) -> None:
        """Log the rejection counts once a minute while they change."""
        if now - self._reported[0] >= 60.0 and sum(self.rejected.values()) != self._reported[1]:
            self._reported = (now, sum(self.rejected.values()))
            log.info("readings rejected so far: %s", dict(self.rejected))

    async def _store_until_stopped(self, wake: asyncio.Event) -> None:
        while not self._stop.is_set():
            self._report(time.monotonic())
            try:
                ended = self._drain()
                made = self.queue.cut(max_age_ms=int(self.max_age * 1000), force=ended)
            except sqlite3.Error as exc:  # e.g. the SD card is full: keep the rows, wait
                self.last_error = f"queue write failed: {exc}"
                log.error("cannot write the queue (%s); %d readings held in memory, retrying"
                          " in %.0f s", exc, len(self._held), self.write_retry)
                await self._sleep(self.write_retry)
                continue
            if made:
                wake.set()
            if ended:
                self._source_done = True
                wake.set()
                return
            if self._inbox.qsize() < self.flush_rows:
                await asyncio.sleep(self.flush_interval)
            else:
                await asyncio.sleep(0)

    async def _send_loop(self, wake: asyncio.Event) -> None:
        first = delay = min(1.0, self.retry_max)
        while not self._stop.is_set():
            item = self.queue.next_chunk()
            if item is None:
                if self._source_done:
                    return
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), 1.0)
                continue
            try:
                tx_id = await self.outlet.send(item, self.queue)
            except IngestRejected as exc:
                if exc.code in ("not-admitted", "wrong-swarm"):
                    self.last_error = exc.reason
                    log.error("the swarm refuses this sensor (%s): %s; retrying in %.0f s",
                              exc.code, exc.reason, self.retry_max)
                    await self._sleep(self.retry_max)
                    continue
                self.refused[exc.code] += 1
                self.queue.reject(item.seq, f"{exc.code}: {exc.reason}")
                log.error("chunk %d refused for good (%s): %s", item.seq, exc.code, exc.reason)
                continue
            except SeqTaken as exc:
                if exc.next_seq is not None and exc.next_seq > item.seq:
                    if self._renumber(item, exc.next_seq, exc.reason):
                        delay = first
                        continue
                else:
                    self.last_error = exc.reason
                    log.warning("chunk %d stays queued: %s, and the ledger did not tell the next"
                                " free seq; retrying in %.1f s", item.seq, exc.reason, delay)
                delay = await self._back_off(delay)
                continue
            except Exception as exc:  # offline, node down, a bad answer: keep it, retry later
                self.last_error = str(exc)
                if isinstance(exc, BadAnswer):
                    self.queue.count("bad_answers")
                    log.warning("chunk %d stays queued: %s; retrying in %.1f s", item.seq,
                                exc.reason, delay)
                else:
                    log.info("chunk %d not delivered (%s); retrying in %.1f s", item.seq, exc,
                             delay)
                delay = await self._back_off(delay)
                continue
            delay = first
            self.queue.acknowledged(item.seq, tx_id)
            log.info("chunk %d (%d rows) published as %s", item.seq, item.rows, tx_id)

    def _renumber(self, item: QueuedChunk, next_seq: int, reason: str) -> bool:
        """Move the queued chunks to the ledger's next free seq of this key, and say so.

        The ledger holds this key's seqs below ``next_seq`` (the state directory was lost or
        restored from an old copy).

        Args:
            item: the first queued chunk, whose seq is taken.
            next_seq: the key's next free seq in the ledger.
            reason: why the seq is taken (the :class:`SeqTaken` error's reason), logged.

        Returns:
            True once moved; False if the queue could not be rewritten (logged; retried later).
        """
        try:
            moved = self.queue.renumber(item.seq, next_seq)
        except (sqlite3.Error, FormatError) as err:
            self.last_error = f"cannot renumber the queued chunks: {err}"
            log.error("%s: %s; retrying later", reason, self.last_error)
            return False
        log.warning("%s (was this sensor's state directory lost or restored from an old copy?):"
                    " renumbered %d queued chunk(s) from seq %d to seq %d and carrying on",
                    reason, moved, item.seq, next_seq)
        return True

    async def _back_off(self, delay: float) -> float:
        """Sleep about ``delay`` seconds (jittered); returns the next delay."""
        await self._sleep(delay * random.uniform(0.8, 1.2))
        return min(delay * 2, self.retry_max)

    async def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._stop.is_set() and time.monotonic() < end:
            await asyncio.sleep(min(0.2, end - time.monotonic()))

    async def run(self) -> dict[str, Any]:
        """Run until the source ends and every chunk is delivered (or :meth:`stop`).

        Returns:
            :meth:`stats`.
        """
        wake = asyncio.Event()  # a chunk was cut, or the source ended
        await self.outlet.start()
        resume = self.queue.get("resume")
        reader = threading.Thread(target=self._read, args=(resume,), name="sensor-reader",
                                  daemon=True)
        reader.start()
        try:
            store = asyncio.create_task(self._store_loop(wake))
            send = asyncio.create_task(self._send_loop(wake))
            await store
            if self.drain_timeout is None:
                await send
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(send), self.drain_timeout)
                self._stop.set()
                await send
        finally:
            self.stop()
            await self.outlet.close()
            reader.join(0.5)
        return self.stats()

    def stats(self) -> dict[str, Any]:
        """Queue counters plus ``rejected`` and ``refused`` by code."""
        d: dict[str, Any] = self.queue.stats
        d["rejected"] = dict(self.rejected)
        d["refused"] = dict(self.refused)
        return d
