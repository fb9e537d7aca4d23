"""The sensor feeder: readings in, signed ``data`` chunks out; it never trains.

A sensor (a Raspberry Pi next to a probe) reads values from a :class:`Source`, turns each
reading into one row of the swarm's data schema (:class:`RowParser`), keeps the rows in an
on-disk queue (:class:`SensorQueue`, SQLite), cuts them into data chunk files
(:func:`learnae.formats.encode_chunk`) by count or age, and publishes every chunk with a
``data`` transaction signed by the sensor's own key, with a per-sensor ``seq``
(docs/design.md, "Content and wire formats"). Nothing here imports TensorFlow, Keras,
scikit-learn or :mod:`learnae.training`.

Modules, each importing only those above it:

- :mod:`~learnae.sensor.rows`: readings, rows, the row checks and their reject codes.
- :mod:`~learnae.sensor.sources`: where readings come from (CSV, JSON lines, stdin, a command,
  a Python callable) and ``--source`` parsing.
- :mod:`~learnae.sensor.queue`: the on-disk store-and-forward queue of readings and chunks.
- :mod:`~learnae.sensor.outlets`: the ways out (a node's ``POST /ingest``, or the sensor's own
  Kubo node and ledger), the signer of ``data`` transactions, and the answers they raise.
- :mod:`~learnae.sensor.feeder`: the feeder loop that runs one sensor, and the sensor's key.

The names below are importable from :mod:`learnae.sensor` itself.
"""

from __future__ import annotations

from learnae.sensor.feeder import Feeder, load_identity
from learnae.sensor.outlets import BadAnswer, EmbeddedOutlet, Outlet, SeqTaken, Signer, ViaOutlet
from learnae.sensor.queue import QueuedChunk, SensorQueue
from learnae.sensor.rows import REJECT_CODES, Reading, Rejected, Row, RowParser
from learnae.sensor.sources import (
    CallableSource,
    CsvSource,
    LinesSource,
    Source,
    parse_rate,
    parse_source,
)

__all__ = [
    "REJECT_CODES", "BadAnswer", "CallableSource", "CsvSource", "EmbeddedOutlet", "Feeder",
    "LinesSource", "Outlet", "QueuedChunk", "Reading", "Rejected", "Row", "RowParser",
    "SensorQueue", "SeqTaken", "Signer", "Source", "ViaOutlet", "load_identity", "parse_rate",
    "parse_source",
]
