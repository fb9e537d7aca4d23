"""The sensor feeder: readings in, signed ``data`` chunks out; it never trains.

A sensor (a Raspberry Pi next to a probe) reads values from a :class:`Source`, turns each
reading into one row of the swarm's data schema (:class:`RowParser`), keeps the rows in an
on-disk queue (:class:`SensorQueue`, SQLite), cuts them into data chunk files
(:func:`learnae.formats.encode_chunk`) by count or age, and publishes every chunk with a
``data`` transaction signed by the sensor's own key, with a per-sensor ``seq``
(docs/design.md, "Content and wire formats"). Nothing here imports TensorFlow, Keras, scikit-learn or
:mod:`learnae.training`.

Sources (:func:`parse_source`):

=============================================  ============================================
``csv:PATH[,rate=10/s][,label=COL][,loop]``    replay a CSV file at a rate (default: as fast
                                               as the queue takes it); a header row is
                                               detected; columns ``time``/``timestamp``/
                                               ``date`` are skipped, column ``label`` (or
                                               ``label=NAME|INDEX``) is the label, the rest
                                               are features. The replay resumes where it
                                               stopped after a restart.
``jsonl:PATH[,rate=...]``                      JSON lines from a file
``stdin``                                      JSON lines from standard input
``cmd:COMMAND``                                JSON lines from a command's standard output
                                               (``cmd:python probe.py``), run without a shell
``py:MODULE:FUNC[,rate=1/s]``,                 a Python callable (``entry:NAME`` looks it up
``entry:NAME[,rate=1/s]``                      in the ``learnae.sensors`` entry-point group);
                                               if it returns an iterator, its items are the
                                               readings; otherwise each call is one reading
=============================================  ============================================

A JSON line is a list of numbers (features only) or an object ``{"x": [...], "y": LABEL,
"t": MS}`` (``features``/``label``/``time`` are accepted too; ``t`` defaults to now).

Bad input never stops the feeder: each bad reading is rejected alone and counted by reason
(:data:`REJECT_CODES`): ``malformed`` (not JSON / not CSV / no features), ``feature-count``,
``non-numeric``, ``non-finite`` (NaN, inf), ``out-of-range`` (does not fit an integer
dtype), ``missing-label`` and ``bad-label`` (not a class index in ``[0, classes)``).

Store and forward (:class:`SensorQueue`): a reading is kept on disk from the moment it is
stored (commits every 0.2 s or 512 readings, ``synchronous=FULL``) until the transaction of
its chunk is acknowledged; chunks go out strictly in ``seq`` order, one at a time, and the
signed transaction is stored before it is first sent so that a resend after a lost answer is
the same transaction. The queue is bounded by ``max_bytes`` (bytes of queued features and
chunk files); when it is reached the policy is ``stop`` (default: stop reading until chunks
are acknowledged; the source is paused, a pipe fills and its writer blocks) or
``drop-oldest`` (drop the oldest unpublished chunk, or the oldest readings, and count the
dropped rows in :attr:`SensorQueue.stats`).

Ways out: :class:`ViaOutlet` posts each chunk to a trainer node's ``POST /ingest`` (the
contract, and the node side, are in :mod:`learnae.ingest`); :class:`EmbeddedOutlet` runs the
sensor's own Kubo node and ledger and gossips the transaction itself.

A sensor whose state directory was lost but whose key was kept starts again at ``seq`` 0. On
``duplicate-seq`` (or a ``next_seq`` above its first queued chunk's in ``GET /ingest``) it
renumbers its queued chunks from ``next_seq`` (each chunk file is re-encoded with its new
``seq``, so its CID changes, and signed again), logs a warning and goes on
(:meth:`SensorQueue.renumber`). The embedded way out reads ``next_seq`` from its own ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import importlib
import io
import json
import logging
import math
import os
import queue
import random
import shlex
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from learnae.content import content_id
from learnae.errors import ConfigError, FormatError, LearnaeError, TxRejected
from learnae.formats import Chunk, Schema, decode_chunk, encode_chunk
from learnae.identity import Identity
from learnae.ingest import TX_STATUS, IngestRejected, encode_ingest_request
from learnae.ledger.tx import Tx, data_payload, decode_tx, make_tx, tx_link

log = logging.getLogger(__name__)

__all__ = [
    "REJECT_CODES", "BadAnswer", "EmbeddedOutlet", "Feeder", "QueuedChunk", "Reading",
    "Rejected", "Row", "RowParser", "SensorQueue", "SeqTaken", "Signer", "Source", "ViaOutlet",
    "load_identity", "parse_rate", "parse_source",
]

REJECT_CODES = ("malformed", "feature-count", "non-numeric", "non-finite", "out-of-range",
                "missing-label", "bad-label")
"""Reasons a reading is rejected (counted in :attr:`Feeder.rejected`)."""
POLICIES = ("stop", "drop-oldest")
_HEADER_MARGIN = 1024
"""Bytes a chunk file needs besides its tensors (safetensors header with metadata)."""
_TIME_COLUMNS = frozenset({"time", "timestamp", "date", "datetime", "t"})
_LABEL_COLUMNS = ("label", "y", "class")


def _now_ms() -> int:
    return int(time.time() * 1000)


# --------------------------------------------------------------------------- readings -> rows
class Rejected(LearnaeError):
    """One reading was refused; ``code`` is one of :data:`REJECT_CODES`."""

    code = "malformed"


class Reading(NamedTuple):
    """A raw reading from a source: ``values`` (a sequence of features), ``label`` (or None),
    ``t`` (ms since the epoch, or None for now) and ``pos`` (source position to resume from
    after this reading, or None)."""

    values: Any
    label: Any = None
    t: int | None = None
    pos: int | None = None


class Row(NamedTuple):
    """One row of the schema: ``t`` ms, ``x`` features packed in the schema dtype (C order,
    little-endian), ``y`` the label or None, ``pos`` the source position after it."""

    t: int
    x: bytes
    y: int | None
    pos: int | None = None


class RowParser:
    """Turns readings into rows of ``schema``, refusing bad ones with a :class:`Rejected`.

    Features are given flat (``prod(schema.features)`` values, C order) as numbers or numeric
    strings. Labels (when ``schema.label_dtype`` is set) are integer class indices in
    ``[0, classes)`` (an integral float or numeric string is accepted).
    """

    def __init__(self, schema: Schema):
        self.schema = schema
        self.n = math.prod(schema.features)
        self.dtype = np.dtype(schema.dtype).newbyteorder("<")
        self.integer = self.dtype.kind in "iu"
        if self.integer:
            info = np.iinfo(self.dtype)
            self.lo, self.hi = int(info.min), int(info.max)
        self.labelled = schema.label_dtype is not None
        self.classes = schema.classes

    def row(self, reading: Reading) -> Row:
        """The row of ``reading``.

        Raises:
            Rejected: with a code from :data:`REJECT_CODES` and the reason.
        """
        values = reading.values
        if not isinstance(values, list | tuple):
            raise Rejected(f"features must be a list of numbers, got {type(values).__name__}",
                           code="malformed")
        if len(values) != self.n:
            raise Rejected(f"{len(values)} features, the schema needs {self.n}",
                           code="feature-count")
        nums = [_number(v) for v in values]
        if not all(math.isfinite(v) for v in nums):
            raise Rejected("a feature is NaN or infinite", code="non-finite")
        if self.integer:
            if not all(float(v).is_integer() and self.lo <= v <= self.hi for v in nums):
                raise Rejected(f"a feature is not an integer in {self.lo}..{self.hi}",
                               code="out-of-range")
            nums = [int(v) for v in nums]
        with np.errstate(over="ignore", invalid="ignore"):
            x = np.asarray(nums, dtype=self.dtype).tobytes()
        if self.dtype.kind == "f" and not np.isfinite(np.frombuffer(x, self.dtype)).all():
            raise Rejected(f"a feature overflows {self.dtype.name}", code="non-finite")
        y = None
        if self.labelled:
            if reading.label is None:
                raise Rejected("the reading has no label and this sensor's schema is labelled"
                               " (run with --unlabelled for readings without labels)",
                               code="missing-label")
            try:
                label = _number(reading.label)
            except Rejected:
                raise Rejected(f"label {reading.label!r} is not a number", code="bad-label") from None
            if not (math.isfinite(label) and float(label).is_integer()
                    and (self.classes is None or 0 <= label < self.classes)):
                top = "" if self.classes is None else f" in 0..{self.classes - 1}"
                raise Rejected(f"label {reading.label!r} is not a class index{top}",
                               code="bad-label")
            y = int(label)
        t = reading.t if isinstance(reading.t, int) and reading.t >= 0 else _now_ms()
        return Row(t, x, y, reading.pos)


def _number(v: Any) -> float | int:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise Rejected(f"value {v!r} is not a number", code="non-numeric")
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            raise Rejected(f"value {v[:40]!r} is not a number", code="non-numeric") from None
    return v


def reading_from_json(line: str | bytes, pos: int | None = None) -> Reading:
    """A reading from one JSON line: a list of features or ``{"x", "y", "t"}``.

    Raises:
        Rejected: ``malformed``.
    """
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        text = line[:40] if isinstance(line, str) else line[:40].decode("utf-8", "replace")
        raise Rejected(f"line is not JSON: {text!r}", code="malformed") from None
    return reading_from_obj(obj, pos)


def reading_from_obj(obj: Any, pos: int | None = None) -> Reading:
    """A reading from a decoded JSON value or a callable's result (list, tuple or dict).

    Raises:
        Rejected: ``malformed``.
    """
    if isinstance(obj, list | tuple):
        return Reading(obj, None, None, pos)
    if isinstance(obj, dict):
        x = obj.get("x", obj.get("features"))
        if x is None:
            raise Rejected("object has no 'x' (features)", code="malformed")
        t = obj.get("t", obj.get("time"))
        return Reading(x, obj.get("y", obj.get("label")), t if type(t) is int else None, pos)
    raise Rejected(f"a reading is a list of features or an object, not {type(obj).__name__}",
                   code="malformed")


# --------------------------------------------------------------------------- sources
def parse_rate(text: str) -> float:
    """``"10/s"``, ``"5/min"``, ``"2/h"``, ``"10"`` (per second) -> readings per second;
    ``"max"`` or ``"0"`` -> 0 (no pacing).

    Raises:
        ConfigError: otherwise.
    """
    text = text.strip().lower()
    if text in ("max", "0", "inf"):
        return 0.0
    num, _, unit = text.partition("/")
    per = {"": 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "hour": 3600.0}
    try:
        value = float(num)
    except ValueError:
        value = -1.0
    if unit not in per or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"rate {text!r} must look like 10/s, 5/min, 2/h or max")
    return value / per[unit]


class Source:
    """Where readings come from. :meth:`readings` yields :class:`Reading` objects, or
    :class:`Rejected` instances for input that could not even be split into a reading; it
    may block. ``resume`` is the position stored after the last reading kept (replayable
    sources skip to it). :meth:`close` stops it from another thread."""

    name = "source"
    rate = 0.0

    def readings(self, resume: int | None = None) -> Iterator[Reading | Rejected]:
        raise NotImplementedError

    def describe(self) -> dict[str, str]:
        """The ``source`` map of the ``data`` payload."""
        return {"kind": self.name}

    def close(self) -> None:
        """Stop reading (called from another thread)."""

    def _pace(self) -> Callable[[], None]:
        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        due = [time.monotonic()]

        def wait() -> None:
            if interval:
                due[0] += interval
                delay = due[0] - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -1.0:
                    due[0] = time.monotonic()  # far behind (paused): do not burst
        return wait


class CsvSource(Source):
    """Replays a CSV file (see the module docstring); ``pos`` is the data row number."""

    name = "csv"

    def __init__(self, path: str | os.PathLike[str], *, rate: float = 0.0,
                 label: str | int | None = None, loop: bool = False):
        self.path, self.rate, self.label, self.loop = Path(path), rate, label, loop
        self._closed = False
        if not self.path.is_file():
            raise ConfigError(f"CSV source {self.path} is not a readable file")

    def describe(self) -> dict[str, str]:
        return {"kind": "csv", "file": self.path.name}

    def close(self) -> None:
        self._closed = True

    def _columns(self, first: list[str]) -> tuple[bool, list[int], int | None]:
        header = any(_not_number(c) for c in first)
        if not header:
            label = self.label if isinstance(self.label, int) else None
            if isinstance(self.label, str) and self.label.lstrip("-").isdigit():
                label = int(self.label)
            idx = list(range(len(first)))
            if label is not None:
                label = idx[label]
                idx.remove(label)
            return False, idx, label
        names = [c.strip().lower() for c in first]
        label = None
        if self.label is not None:
            want = str(self.label).strip().lower()
            if want.lstrip("-").isdigit():
                label = list(range(len(names)))[int(want)]
            elif want in names:
                label = names.index(want)
            else:
                raise ConfigError(f"{self.path}: no column {self.label!r} for the label")
        else:
            label = next((names.index(n) for n in _LABEL_COLUMNS if n in names), None)
        idx = [i for i, n in enumerate(names) if i != label and n not in _TIME_COLUMNS]
        return True, idx, label

    def readings(self, resume: int | None = None) -> Iterator[Reading | Rejected]:
        pace = self._pace()
        skip = resume or 0
        n = 0
        while not self._closed:
            with self.path.open(newline="", encoding="utf-8", errors="replace") as f:
                rows = csv.reader(f)
                first = next(rows, None)
                if first is None:
                    return
                header, idx, label = self._columns(first)
                if not header:
                    rows = _chain([first], rows)
                for cells in rows:
                    if self._closed:
                        return
                    n += 1
                    if n <= skip:
                        continue
                    if not cells:
                        continue
                    try:
                        values = [cells[i] for i in idx]
                        y = None if label is None else cells[label]
                    except IndexError:
                        yield Rejected(f"row {n} has {len(cells)} columns, the header "
                                       f"{len(first)}", code="feature-count")
                        continue
                    pace()
                    yield Reading(values, y, None, n)
            if not self.loop:
                return


def _chain(*its: Iterable) -> Iterator:
    for it in its:
        yield from it


def _not_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return True
    return False


class LinesSource(Source):
    """JSON lines from a binary stream (stdin, a file or a command's stdout)."""

    def __init__(self, name: str, *, path: str | None = None, command: str | None = None,
                 rate: float = 0.0):
        self.name, self.path, self.command, self.rate = name, path, command, rate
        self._proc: subprocess.Popen | None = None
        self._closed = False
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"JSON lines source {path} is not a readable file")
        if command is not None and not shlex.split(command):
            raise ConfigError("cmd: source needs a command, e.g. cmd:'python probe.py'")

    def describe(self) -> dict[str, str]:
        d = {"kind": self.name}
        if self.command:
            d["command"] = shlex.split(self.command)[0].rsplit("/", 1)[-1][:64]
        return d

    def close(self) -> None:
        self._closed = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.terminate()

    def _stream(self) -> io.BufferedIOBase:
        if self.command is not None:
            self._proc = subprocess.Popen(shlex.split(self.command), stdout=subprocess.PIPE,
                                          stdin=subprocess.DEVNULL)
            return self._proc.stdout
        if self.path is not None:
            return open(self.path, "rb")  # noqa: SIM115
        return sys.stdin.buffer

    def readings(self, resume: int | None = None) -> Iterator[Reading | Rejected]:
        pace = self._pace()
        stream = self._stream()
        skip = (resume or 0) if self.path is not None else 0
        try:
            for n, line in enumerate(stream, 1):
                if self._closed:
                    return
                if n <= skip or not line.strip():
                    continue
                try:
                    reading = reading_from_json(line, n if self.path else None)
                except Rejected as exc:
                    yield exc
                    continue
                pace()
                yield reading
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()
            if self._proc is not None:
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
                if self._proc.returncode:
                    log.warning("source command exited with status %s", self._proc.returncode)


class CallableSource(Source):
    """Readings from a Python callable (see the module docstring)."""

    name = "callable"

    def __init__(self, fn: Callable[[], Any], *, label: str, rate: float = 1.0):
        self.fn, self.label, self.rate = fn, label, rate
        self._closed = False

    def describe(self) -> dict[str, str]:
        return {"kind": "callable", "name": self.label[:64]}

    def close(self) -> None:
        self._closed = True

    def readings(self, resume: int | None = None) -> Iterator[Reading | Rejected]:
        pace = self._pace()
        first = self.fn()
        if hasattr(first, "__next__"):
            for obj in first:
                if self._closed:
                    return
                if obj is None:
                    continue
                try:
                    yield reading_from_obj(obj)
                except Rejected as exc:
                    yield exc
                pace()
            return
        obj = first
        while not self._closed:
            if obj is not None:
                try:
                    yield reading_from_obj(obj)
                except Rejected as exc:
                    yield exc
            pace()
            if self._closed:
                return
            try:
                obj = self.fn()
            except Exception as exc:  # a probe's failure is one lost reading, not the feeder
                log.warning("source callable failed: %r", exc)
                obj = None


def _load_callable(spec: str) -> Callable[[], Any]:
    if spec.startswith("entry:"):
        from importlib.metadata import entry_points

        name = spec[len("entry:"):]
        found = [ep for ep in entry_points(group="learnae.sensors") if ep.name == name]
        if not found:
            raise ConfigError(f"no entry point {name!r} in group 'learnae.sensors'")
        fn = found[0].load()
    else:
        target = spec[len("py:"):]
        module, _, attr = target.partition(":")
        if not module or not attr:
            raise ConfigError(f"py: source {target!r} must be MODULE:FUNCTION")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"cannot load {target}: {exc}") from None
    if not callable(fn):
        raise ConfigError(f"{spec} is not callable")
    return fn


def parse_source(spec: str) -> Source:
    """A :class:`Source` from its command-line form (see the module docstring).

    Raises:
        ConfigError: an unknown kind, a bad option, or a missing file.
    """
    if spec == "stdin":
        return LinesSource("stdin")
    kind, sep, rest = spec.partition(":")
    if not sep:
        raise ConfigError(f"source {spec!r}: use csv:PATH, jsonl:PATH, stdin, cmd:COMMAND,"
                          " py:MODULE:FUNC or entry:NAME")
    if kind == "cmd":
        return LinesSource("cmd", command=rest)
    target, *opts = rest.split(",")
    options: dict[str, str] = {}
    for opt in opts:
        key, _, value = opt.partition("=")
        options[key.strip()] = value.strip()
    allowed = {"csv": {"rate", "label", "loop"}, "jsonl": {"rate"}, "py": {"rate"},
               "entry": {"rate"}}
    if kind not in allowed:
        raise ConfigError(f"source kind {kind!r} is not csv, jsonl, stdin, cmd, py or entry")
    unknown = set(options) - allowed[kind]
    if unknown:
        raise ConfigError(f"source {kind}: unknown options {sorted(unknown)}"
                          f" (known: {sorted(allowed[kind])})")
    rate = parse_rate(options["rate"]) if "rate" in options else None
    if kind == "csv":
        return CsvSource(target, rate=rate or 0.0, label=options.get("label"),
                         loop="loop" in options)
    if kind == "jsonl":
        return LinesSource("jsonl", path=target, rate=rate or 0.0)
    fn = _load_callable(f"{kind}:{target}")
    return CallableSource(fn, label=target, rate=1.0 if rate is None else rate)


# --------------------------------------------------------------------------- the queue
class QueuedChunk(NamedTuple):
    """An unpublished chunk: its ``seq``, file ``data``, ``cid``, ``rows``, and the signed
    transaction ``tx`` (raw bytes) once made, else None."""

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
        """Counters: ``stored``, ``chunked``, ``published``, ``published_rows``,
        ``dropped_rows``, ``dropped_chunks``, ``rejected_chunks``, ``bad_answers`` (2xx
        answers that acknowledged nothing), ``renumbered`` (times the queued chunks were
        moved to a later seq), and the current ``queued_readings``, ``queued_chunks``,
        ``queued_bytes``, ``next_seq``."""
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
        """Would ``extra`` more readings go over :attr:`max_bytes`?"""
        return self.bytes + extra * (self.row_bytes + _ROW_OVERHEAD) > self.max_bytes

    def add(self, rows: Iterable[Row]) -> int:
        """Store readings (one commit). Under ``drop-oldest`` the oldest data is dropped to
        make room first; under ``stop`` the caller must check :meth:`full` (rows beyond the
        limit are stored anyway: the limit is soft by one batch). Returns the rows stored."""
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
        """Turn queued readings into chunks: every full chunk of :attr:`chunk_rows`, then the
        rest if ``force`` or its oldest reading is ``max_age_ms`` old. Returns the new seqs."""
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
        """Move the pending chunks from ``first`` on to ``to`` on (each ``seq`` up by
        ``to - first``, gaps kept), for a ledger that already holds this key's seqs below
        ``to``. Each chunk file is re-encoded with its new seq (its CID changes) and its
        transaction forgotten (signed again); readings not yet cut follow. One commit.

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
        """The swarm refused chunk ``seq`` for good: keep it aside (not sent again; it still
        counts toward the limit and ``drop-oldest`` drops it first)."""
        with self._tx():
            self._db.execute("UPDATE chunks SET state = 'rejected', reason = ? WHERE seq = ?",
                             (reason, seq))
            self._add("rejected_chunks", 1)


# --------------------------------------------------------------------------- the node's answers
class BadAnswer(LearnaeError):
    """A ``2xx`` answer to ``POST /ingest`` that does not name the transaction and chunk
    posted: nothing is acknowledged, the chunk stays queued (retried later)."""

    code = "bad-answer"


class SeqTaken(LearnaeError):
    """The ledger already holds another ``data`` transaction of this sensor's key at the
    chunk's ``seq``; ``next_seq`` is the key's next free seq there (None if not known)."""

    code = "duplicate-seq"

    def __init__(self, reason: str, *, next_seq: int | None = None):
        super().__init__(reason)
        self.next_seq = next_seq


# --------------------------------------------------------------------------- the ways out
class Outlet:
    """Where chunks go. :meth:`send` publishes one and returns its transaction id."""

    async def start(self) -> None:
        """Get ready (start nodes)."""

    async def close(self) -> None:
        """Release everything."""

    async def send(self, item: QueuedChunk, queue: SensorQueue) -> str:
        """Publish ``item``; returns the acknowledged transaction id.

        Raises:
            IngestRejected: refused for good (``status`` 4xx other than 409).
            Exception: anything else is a transient failure: retried later.
        """
        raise NotImplementedError


@dataclass
class Signer:
    """Makes the sensor's ``data`` transactions: its key, the swarm's genesis and
    ``pow_bits``, and the ``source`` map of the payload. Parents are up to two of the given
    tips (``[{"id", "time"}]``), the genesis if none; the time is raised to the latest
    parent's."""

    identity: Identity
    genesis: Tx
    pow_bits: int
    source: dict[str, str]

    def data_tx(self, item: QueuedChunk, schema: Schema, parents: list[dict]) -> Tx:
        ids = sorted({p["id"] for p in parents})[:2] or [self.genesis.id]
        times = [int(p.get("time", 0)) for p in parents] + [self.genesis.time]
        payload = data_payload(cid=item.cid, size=len(item.data), rows=item.rows,
                               schema=schema.to_dict(), source=self.source, seq=item.seq)
        return make_tx(self.identity, kind="data", payload=payload, parents=ids,
                       swarm=self.genesis.id, pow_bits=self.pow_bits,
                       time_ms=max([_now_ms(), *times]))


class ViaOutlet(Outlet):
    """Posts each chunk and its signed transaction to ``URL/ingest`` (stdlib HTTP only).

    Parents: the tips the node returned last (stored in the queue), the genesis at first.
    A chunk is acknowledged only by a ``2xx`` answer naming its transaction and CID
    (else :class:`BadAnswer`); a ``duplicate-seq`` answer raises :class:`SeqTaken` with the
    node's ``next_seq``, and so does a ``GET /ingest?author=`` answer whose ``next_seq`` is
    above the chunk's (asked when no tips are stored yet: a new queue).
    """

    def __init__(self, url: str, signer: Signer, schema: Schema, *, timeout: float = 30.0):
        self.url = url.rstrip("/") + "/ingest"
        self.signer, self.schema, self.timeout = signer, schema, timeout
        self._pool: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        # one worker thread for mining and HTTP (asyncio's default pool would start many,
        # each with its own malloc arena: several MB of RSS on a Pi)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sensor-via")

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def _in_pool(self, fn: Callable, *args: Any) -> Any:
        if self._pool is None:
            await self.start()
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _post(self, body: bytes | None) -> tuple[int, dict]:
        """POST ``body`` (GET ``?author=`` if None); ``(status, JSON object or {})``."""
        url = self.url
        if body is None:
            url += "?" + urllib.parse.urlencode({"author": self.signer.identity.author_id})
        req = urllib.request.Request(url, data=body, method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, _json_object(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _json_object(exc.read())

    async def send(self, item: QueuedChunk, queue: SensorQueue) -> str:
        raw = item.tx
        if raw is None:
            tips = json.loads(queue.get("tips", "[]"))
            if not tips:  # a new queue: ask for the node's tips and seq (optional route)
                status, answer = await self._in_pool(self._post, None)
                if status == 200:
                    tips = _tips(answer) or []
                    if tips:
                        queue.put("tips", json.dumps(tips))
                    free = _seq(answer.get("next_seq"))
                    if free is not None and free > item.seq:
                        raise SeqTaken(f"the node holds this key's data up to seq {free - 1}",
                                       next_seq=free)
            tx = await self._in_pool(self.signer.data_tx, item, self.schema, tips)
            raw = tx.raw
            queue.set_tx(item.seq, raw)
        tx_id = decode_tx(raw).id
        status, answer = await self._in_pool(self._post, encode_ingest_request(item.data, raw))
        if 200 <= status < 300:
            if answer.get("tx") != tx_id or answer.get("cid") != item.cid:
                shown = json.dumps(answer)[:160] if answer else "{} or no JSON object"
                raise BadAnswer(f"{self.url} answered HTTP {status} with {shown}, not naming"
                                f" transaction {tx_id} and chunk {item.cid}; is --via the"
                                " address of a learnae trainer node's API?")
        tips = _tips(answer)
        if tips:
            queue.put("tips", json.dumps(tips))
        if 200 <= status < 300:
            return tx_id
        code, reason = str(answer.get("error", status)), str(answer.get("reason", ""))
        if status == 409 and code == "duplicate-seq":
            queue.set_tx(item.seq, None)
            raise SeqTaken(f"the node says: {reason or code}",
                           next_seq=_seq(answer.get("next_seq")))
        if status == 409 or code in ("bad-signature", "low-pow", "future-time"):
            queue.set_tx(item.seq, None)  # sign again (on fresh tips, or a fixed clock)
            raise RuntimeError(f"node asked to sign again: {code} {reason}")
        if 400 <= status < 500:
            raise IngestRejected(reason or f"HTTP {status}", code=code, status=status)
        raise RuntimeError(f"node answered HTTP {status}: {code} {reason}")


def _json_object(data: bytes) -> dict:
    """``data`` as a JSON object, or ``{}`` (not JSON, or not an object)."""
    try:
        value = json.loads(data or b"{}")
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _tips(answer: dict) -> list[dict] | None:
    """The well-formed ``tips`` of a node's answer (``[{"id", "time"}]``), or None."""
    tips = answer.get("tips")
    if not isinstance(tips, list):
        return None
    out = []
    for tip in tips[:16]:
        if isinstance(tip, dict) and isinstance(tip.get("id"), str) and _seq(tip.get("time")) \
                is not None:
            with contextlib.suppress(LearnaeError):
                tx_link(tip["id"])
                out.append({"id": tip["id"], "time": tip["time"]})
    return out


def _seq(value: Any) -> int | None:
    """``value`` if it is a non-negative integer (not a bool), else None."""
    return value if type(value) is int and value >= 0 else None


class EmbeddedOutlet(Outlet):
    """The sensor's own Kubo node (``STATE/ipfs``) and ledger (``STATE/tangle.sqlite``): adds
    and pins each chunk, appends a ``data`` transaction and gossips it with
    :class:`~learnae.ledger.sync.TangleSync`; dials the invite's bootstrap peers."""

    def __init__(self, state: Path, invite: Any, identity: Identity, schema: Schema,
                 source: dict[str, str], *, host: str = "127.0.0.1", port: int = 0):
        self.state, self.invite, self.identity, self.schema = state, invite, identity, schema
        self.source, self.host, self.port = source, host, port
        self.node = self.sync = self.tangle = None
        self._peering: asyncio.Task | None = None

    async def start(self) -> None:
        from learnae.ipfs.embedded import EmbeddedNode
        from learnae.ipfs.peering import keep_connected
        from learnae.ledger.sync import TangleSync
        from learnae.manifest import open_tangle

        self.tangle, _ = open_tangle(self.state, invite=self.invite)
        self.node = await EmbeddedNode.start(self.state / "ipfs", self.invite.swarm_key,
                                             host=self.host, port=self.port)
        self.sync = TangleSync(self.tangle, self.node)
        await self.sync.start()
        if self.invite.bootstrap:
            self._peering = asyncio.create_task(keep_connected(self.node,
                                                               list(self.invite.bootstrap)))

    async def close(self) -> None:
        if self._peering is not None:
            self._peering.cancel()
            await asyncio.gather(self._peering, return_exceptions=True)
        if self.sync is not None:
            await self.sync.stop()
        if self.node is not None:
            await self.node.close()
        if self.tangle is not None:
            self.tangle.close()

    async def send(self, item: QueuedChunk, queue: SensorQueue) -> str:
        me = self.identity.public_key
        held = self.tangle.data_tx_at_seq(me, item.seq)
        tx = None if held is None else self.tangle.get(held)
        if tx is not None and tx.payload["cid"] != item.cid:
            raise SeqTaken(f"this sensor's ledger holds another transaction of its key at seq"
                           f" {item.seq}: {held}", next_seq=self.tangle.next_data_seq(me))
        cid = await self.node.add(item.data)
        if cid != item.cid:
            raise IngestRejected(f"IPFS named the chunk {cid}, expected {item.cid}",
                                 code="cid-mismatch")
        if tx is None:  # else: appended before a crash, not yet acknowledged
            payload = data_payload(cid=cid, size=len(item.data), rows=item.rows,
                                   schema=self.schema.to_dict(), source=self.source,
                                   seq=item.seq)
            try:
                tx = self.tangle.append(self.identity, "data", payload)
            except TxRejected as exc:
                raise IngestRejected(exc.reason, code=exc.code,
                                     status=TX_STATUS.get(exc.code, 400)) from None
        await self.sync.publish(tx)
        return tx.id


# --------------------------------------------------------------------------- the feeder
def load_identity(state: Path) -> Identity:
    """``STATE/identity.key``, made (mode 0600) on first use."""
    path = state / "identity.key"
    if not path.exists():
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        Identity.generate().save(path)
    return Identity.load(path)


@dataclass
class Feeder:
    """Runs one sensor: a reader thread feeds the :class:`SensorQueue`; the loop cuts chunks
    and hands them to the :class:`Outlet` in ``seq`` order, retrying with backoff.

    Attributes:
        rejected: rejected readings by code (:data:`REJECT_CODES`).
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
        self._wake: asyncio.Event | None = None
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
        and are written first next time; no new ones are taken meanwhile."""
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

    async def _store_loop(self) -> None:
        try:
            await self._store_until_stopped()
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

    async def _store_until_stopped(self) -> None:
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
            if made and self._wake is not None:
                self._wake.set()
            if ended:
                self._source_done = True
                self._wake.set()
                return
            if self._inbox.qsize() < self.flush_rows:
                await asyncio.sleep(self.flush_interval)
            else:
                await asyncio.sleep(0)

    async def _send_loop(self) -> None:
        first = delay = min(1.0, self.retry_max)
        while not self._stop.is_set():
            item = self.queue.next_chunk()
            if item is None:
                if self._source_done:
                    return
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)
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
                    if self._renumber(item, exc):
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

    def _renumber(self, item: QueuedChunk, exc: SeqTaken) -> bool:
        """The ledger holds this key's seqs below ``exc.next_seq`` (the state directory was
        lost or restored from an old copy): move the queued chunks there, and say so. False
        if the queue could not be rewritten (logged; retried later)."""
        try:
            moved = self.queue.renumber(item.seq, exc.next_seq)
        except (sqlite3.Error, FormatError) as err:
            self.last_error = f"cannot renumber the queued chunks: {err}"
            log.error("%s: %s; retrying later", exc.reason, self.last_error)
            return False
        log.warning("%s (was this sensor's state directory lost or restored from an old copy?):"
                    " renumbered %d queued chunk(s) from seq %d to seq %d and carrying on",
                    exc.reason, moved, item.seq, exc.next_seq)
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
        """Run until the source ends and every chunk is delivered (or :meth:`stop`). Returns
        :meth:`stats`."""
        self._wake = asyncio.Event()
        await self.outlet.start()
        resume = self.queue.get("resume")
        reader = threading.Thread(target=self._read, args=(resume,), name="sensor-reader",
                                  daemon=True)
        reader.start()
        try:
            store = asyncio.create_task(self._store_loop())
            send = asyncio.create_task(self._send_loop())
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
