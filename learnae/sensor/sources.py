"""Sources: where a sensor's readings come from, and their command-line form.

:func:`parse_source` makes a :class:`Source` from ``--source``:

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

The form of a JSON line, and the checks a reading then goes through, are in
:mod:`learnae.sensor.rows`.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import itertools
import logging
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from learnae.errors import ConfigError
from learnae.sensor.rows import Reading, Rejected, reading_from_json, reading_from_obj

log = logging.getLogger(__name__)


_TIME_COLUMNS = frozenset({"time", "timestamp", "date", "datetime", "t"})
_LABEL_COLUMNS = ("label", "y", "class")


def parse_rate(text: str) -> float:
    """Readings per second from a rate: 0 for ``"max"`` or ``"0"`` (no pacing).

    ``"10/s"``, ``"5/min"``, ``"2/h"`` and ``"10"`` (per second) are rates.

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
    """Where readings come from.

    :meth:`readings` yields :class:`Reading` objects, or :class:`Rejected` instances for input
    that could not even be split into a reading; it may block. ``resume`` is the position
    stored after the last reading kept (replayable sources skip to it). :meth:`close` stops it
    from another thread.
    """

    name = "source"
    rate = 0.0

    def readings(self, resume: int | None = None) -> Iterator[Reading | Rejected]:
        """Yield the readings after position ``resume`` (None: from the start)."""
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
        """``{"kind": "csv", "file": NAME}`` (the file's name, not its path)."""
        return {"kind": "csv", "file": self.path.name}

    def close(self) -> None:
        """Stop after the current row."""
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
        """Yield the data rows after row number ``resume``; a short row is a :class:`Rejected`."""
        pace = self._pace()
        skip = resume or 0
        n = 0
        while not self._closed:
            with self.path.open(newline="", encoding="utf-8", errors="replace") as f:
                rows: Iterator[list[str]] = csv.reader(f)
                first = next(rows, None)
                if first is None:
                    return
                header, idx, label = self._columns(first)
                if not header:
                    rows = itertools.chain([first], rows)
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
        """``{"kind": KIND}``, plus the program's name (not its arguments) for ``cmd:``."""
        d = {"kind": self.name}
        if self.command:
            d["command"] = shlex.split(self.command)[0].rsplit("/", 1)[-1][:64]
        return d

    def close(self) -> None:
        """Stop after the current line; a ``cmd:`` source's command is terminated."""
        self._closed = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.terminate()

    def _stream(self) -> IO[bytes]:
        if self.command is not None:
            proc = subprocess.Popen(shlex.split(self.command), stdout=subprocess.PIPE,
                                    stdin=subprocess.DEVNULL)
            self._proc = proc
            if proc.stdout is None:  # never: stdout=PIPE makes one
                raise OSError(f"cmd: source {self.command!r} gave no output pipe")
            return proc.stdout
        if self.path is not None:
            return open(self.path, "rb")  # noqa: SIM115
        return sys.stdin.buffer

    def readings(self, resume: int | None = None) -> Iterator[Reading | Rejected]:
        """Yield one reading per JSON line (a file resumes after line number ``resume``)."""
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
        """``{"kind": "callable", "name": SPEC}``."""
        return {"kind": "callable", "name": self.label[:64]}

    def close(self) -> None:
        """Stop after the current call."""
        self._closed = True

    def readings(self, resume: int | None = None) -> Iterator[Reading | Rejected]:
        """Yield the callable's readings (``resume`` is ignored: a probe cannot replay)."""
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
