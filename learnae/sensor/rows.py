"""Readings and rows: what a source yields, and its checks against the swarm's data schema.

A :class:`Reading` is what a source produced (features, label, time, resume position); a
:class:`RowParser` turns it into a :class:`Row` of the schema (features packed in the schema's
dtype), or refuses it with a :class:`Rejected`.

A JSON line is a list of numbers (features only) or an object ``{"x": [...], "y": LABEL,
"t": MS}`` (``features``/``label``/``time`` are accepted too; ``t`` defaults to now).

Bad input never stops the feeder: each bad reading is rejected alone and counted by reason
(:data:`REJECT_CODES`): ``malformed`` (not JSON / not CSV / no features), ``feature-count``,
``non-numeric``, ``non-finite`` (NaN, inf), ``out-of-range`` (does not fit an integer
dtype), ``missing-label`` and ``bad-label`` (not a class index in ``[0, classes)``).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, NamedTuple

import numpy as np

from learnae.errors import LearnaeError
from learnae.formats import Schema

REJECT_CODES = ("malformed", "feature-count", "non-numeric", "non-finite", "out-of-range",
                "missing-label", "bad-label")
"""Reasons a reading is rejected (counted in :attr:`~learnae.sensor.feeder.Feeder.rejected`)."""


def _now_ms() -> int:
    return int(time.time() * 1000)


class Rejected(LearnaeError):
    """One reading was refused; ``code`` is one of :data:`REJECT_CODES`."""

    code = "malformed"


class Reading(NamedTuple):
    """A raw reading from a source, not yet checked.

    Attributes:
        values: the features (a sequence of numbers or numeric strings).
        label: the label, or None.
        t: ms since the epoch, or None for now.
        pos: the source position to resume from after this reading, or None.
    """

    values: Any
    label: Any = None
    t: int | None = None
    pos: int | None = None


class Row(NamedTuple):
    """One checked row of the schema.

    Attributes:
        t: ms since the epoch.
        x: the features packed in the schema dtype (C order, little-endian).
        y: the label, or None.
        pos: the source position after it, or None.
    """

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
                raise Rejected(f"label {reading.label!r} is not a number",
                               code="bad-label") from None
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
