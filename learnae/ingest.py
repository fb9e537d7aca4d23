"""The node side of ``POST /ingest``: a sensor's data chunk and its signed ``data`` transaction.

A trainer node's HTTP API (:mod:`learnae.api`) answers ``POST /ingest`` and ``GET /ingest``
with :func:`handle_ingest` and :func:`ingest_info`; the sensor feeder (:mod:`learnae.sensor`)
posts with :func:`encode_ingest_request`. Both roles and the API share this module, which
imports only the layers below them (content, formats, identity, the ledger's transactions).

The ``POST /ingest`` contract (``--via http://NODE:PORT``):

* request: ``Content-Type: application/json``, body ``{"chunk": BASE64, "tx": BASE64}``:
  the chunk file bytes and the raw signed ``data`` transaction (standard base64);
* ``200``: ``{"tx": TX_ID, "cid": CHUNK_CID, "tips": [{"id": ..., "time": MS}, ...]}``; the
  node has checked, added, pinned and published (or already held) the transaction. ``tx``
  must be the id of the transaction posted and ``cid`` its chunk's CID: only such an answer
  acknowledges a chunk. Any other ``2xx`` answer (``{}``, a proxy's page, another id) leaves
  the chunk queued; the sensor counts it (``bad_answers`` in its stats and ``learnae sensor
  status``), logs a warning and retries later. ``tips`` are the node's current tips, which
  the sensor approves in its next transaction;
* ``GET /ingest[?author=AUTHOR_ID]`` (optional): ``200 {"tips": [...], "next_seq": N}``, so
  that a new sensor's first transaction approves the node's tips rather than the genesis
  alone (without it, the first one approves the genesis, which is valid). ``next_seq`` (only
  with ``author``, a ``z6Mk...`` id) is that author's next free ``seq`` as the node knows it:
  one more than its highest data ``seq``, 0 if none;
* ``4xx``: ``{"error": CODE, "reason": TEXT}`` (plus ``tips`` on ``409``): ``400`` bad request
  or transaction (``bad-request``, the :class:`~learnae.errors.TxRejected` codes, ``wrong-kind``,
  ``mismatch``, ``cid-mismatch``, chunk codes ``corrupt``/``format``/``non-finite``),
  ``403`` ``not-admitted``/``revoked``/``wrong-swarm``/``not-owner`` (the chunk's ``sensor`` is not the
  transaction author's id), ``409`` ``unknown-parent``/``before-parent``
  (re-sign on the returned tips) or ``duplicate-seq`` (another transaction of this author
  holds this ``seq``, stored or being ingested; the answer carries ``next_seq`` as above),
  ``413`` ``too-large``/``oversize``, ``422`` ``schema``; ``5xx``: the node failed, try again
  later (same bytes).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import random
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from learnae.content import content_id
from learnae.errors import FormatError, LearnaeError, TxRejected
from learnae.formats import Chunk, Schema, decode_chunk
from learnae.identity import author_id, parse_author_id
from learnae.ledger.tx import Tx, decode_tx, validate_tx

if TYPE_CHECKING:  # for annotations only: the sensor imports this module, keep it light
    from learnae.ipfs.base import IpfsNode
    from learnae.ledger.tangle import Tangle
    from learnae.manifest import Manifest

__all__ = [
    "TX_STATUS", "IngestRejected", "check_ingest", "encode_ingest_request", "handle_ingest",
    "ingest_info", "ingest_reply", "ingest_tips", "next_free_seq", "parse_ingest_request",
    "sensor_schema",
]


def _now_ms() -> int:
    return int(time.time() * 1000)


def sensor_schema(swarm_schema: Schema, labelled: bool = True) -> Schema:
    """The schema a sensor writes.

    The swarm's (``labelled``), or the swarm's features without labels (``label_dtype`` and
    ``classes`` None) for a sensor whose readings carry none.
    """
    if labelled:
        return swarm_schema
    return Schema(swarm_schema.features, swarm_schema.dtype, None, None)


class IngestRejected(LearnaeError):
    """``POST /ingest`` refused a chunk.

    ``code`` names the rule, ``status`` the HTTP status, ``tips`` (on 409) the node's tips to
    re-sign on, ``next_seq`` (on ``duplicate-seq``) the author's next free seq.
    """

    code = "bad-request"

    def __init__(self, reason: str, *, code: str | None = None, status: int = 400):
        super().__init__(reason, code=code)
        self.status = status
        self.tips: list[dict] | None = None
        self.next_seq: int | None = None

    def body(self) -> dict[str, Any]:
        """The JSON answer: ``{"error": code, "reason": ...}`` (plus ``tips``, ``next_seq``)."""
        d: dict[str, Any] = {"error": self.code, "reason": self.reason}
        if self.tips is not None:
            d["tips"] = self.tips
        if self.next_seq is not None:
            d["next_seq"] = self.next_seq
        return d


TX_STATUS = {"not-admitted": 403, "revoked": 403, "sensor-role": 403, "not-steward": 403, "open-swarm": 403,
             "wrong-swarm": 403, "too-large": 413, "before-parent": 409}
"""HTTP status of a refused transaction by :class:`~learnae.errors.TxRejected` code (400 otherwise)."""
"""HTTP status of a refused transaction by :class:`~learnae.errors.TxRejected` code (else 400)."""


def encode_ingest_request(chunk_bytes: bytes, tx_raw: bytes) -> bytes:
    """The JSON body of ``POST /ingest``."""
    return json.dumps({"chunk": base64.b64encode(chunk_bytes).decode(),
                       "tx": base64.b64encode(tx_raw).decode()}).encode()


def parse_ingest_request(body: bytes) -> tuple[bytes, bytes]:
    """``(chunk_bytes, tx_raw)`` from a ``POST /ingest`` JSON body.

    Raises:
        IngestRejected: ``bad-request`` (400).
    """
    try:
        d = json.loads(body)
        chunk, tx = d["chunk"], d["tx"]
        return base64.b64decode(chunk, validate=True), base64.b64decode(tx, validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error, RecursionError):
        raise IngestRejected('the body must be JSON {"chunk": BASE64, "tx": BASE64}',
                             code="bad-request") from None


def ingest_tips(tangle: Tangle, n: int = 8, author: bytes | None = None) -> list[dict[str, Any]]:
    """Up to ``n`` of the tangle's tips as ``[{"id", "time"}]`` (what a sensor approves).

    With ``author`` (a sensor's public key), only tips its data may approve
    (:meth:`~learnae.ledger.tangle.Tangle.tips_for`: a sensor admitted a moment ago gets
    tips that have its admission in their past).
    """
    tips = tangle.tips() if author is None else tangle.tips_for(author) or tangle.tips()
    if len(tips) > n:
        tips = random.sample(tips, n)
    out = []
    for i in tips:
        tx = tangle.get(i)
        if tx is not None:
            out.append({"id": i, "time": tx.time})
    return out


def check_ingest(manifest: Manifest, tangle: Tangle, chunk_bytes: bytes, tx_raw: bytes, *,
                 now_ms: int | None = None,
                 claimed: dict[tuple[bytes, int], str] | None = None) -> tuple[Tx, Chunk]:
    """Check a chunk and its signed ``data`` transaction posted by a sensor.

    The node runs this before it adds, pins and publishes them. Pure: reads ``tangle``,
    changes nothing.

    Checks, cheap first: the transaction's size, form, kind, swarm, parents (stored in
    ``tangle``), time, admission, payload, proof-of-work and signature
    (:func:`~learnae.ledger.tx.validate_tx`); the chunk's size against
    ``manifest.limits.chunk_bytes`` and the payload's ``size``; its CID
    (:func:`~learnae.content.content_id`) against the payload's ``cid``; the file itself
    (:func:`~learnae.formats.decode_chunk`); its schema (the swarm's, or the swarm's features
    without labels); ``rows``, ``seq`` and ``schema`` against the payload; and that the author
    has no other transaction with the same ``seq``, stored or in ``claimed`` (one index
    lookup: the cost does not grow with the author's history). A transaction already stored
    passes (a sensor resending after a lost answer).

    Args:
        manifest: the swarm's :class:`~learnae.manifest.Manifest`.
        tangle: the node's :class:`~learnae.ledger.tangle.Tangle`.
        chunk_bytes: the chunk file.
        tx_raw: the signed transaction's bytes.
        now_ms: the node's clock (ms), default now.
        claimed: ``(author key, seq) -> tx id`` of the ingests under way (checked, not yet
            stored), as :func:`handle_ingest` keeps them; another transaction at one of
            these is a ``duplicate-seq`` too.

    Returns:
        ``(tx, chunk)``: the decoded transaction and chunk.

    Raises:
        IngestRejected: ``code``/``status`` as in the module docstring.
    """
    now = _now_ms() if now_ms is None else now_ms
    limits = manifest.limits
    if len(tx_raw) > limits.tx_bytes:
        raise IngestRejected(f"the transaction is {len(tx_raw)} bytes, over the swarm's"
                             f" {limits.tx_bytes}", code="too-large", status=413)
    try:
        tx = decode_tx(tx_raw)
    except TxRejected as exc:
        raise IngestRejected(exc.reason, code=exc.code) from None
    if tx.kind != "data":
        raise IngestRejected(f"a {tx.kind!r} transaction; /ingest takes 'data' only",
                             code="wrong-kind")
    if tx.id not in tangle:
        if tx.swarm != tangle.swarm:
            raise IngestRejected(f"the transaction belongs to swarm {tx.swarm}, not"
                                 f" {tangle.swarm}", code="wrong-swarm", status=403)
        parents = {p: tangle.get(p) for p in tx.parents}
        missing = [p for p, t in parents.items() if t is None]
        if missing:
            unknown = IngestRejected(f"this node does not hold parent {missing[0]}; sign again"
                                     " on the returned tips", code="unknown-parent", status=409)
            unknown.tips = ingest_tips(tangle, author=tx.author)
            raise unknown
        try:
            validate_tx(tx, swarm=tangle.swarm, pow_bits=manifest.pow_bits,
                        max_bytes=limits.tx_bytes, now_ms=now,
                        parent_times={p: t.time for p, t in parents.items() if t is not None})
            tangle.check_author(tx)
        except TxRejected as exc:
            err = IngestRejected(exc.reason, code=exc.code, status=TX_STATUS.get(exc.code, 400))
            if err.status == 409 or exc.code == "not-admitted":  # not admitted on those parents, perhaps
                err.tips = ingest_tips(tangle, author=tx.author)
            raise err from None
    payload = tx.payload
    if len(chunk_bytes) > limits.chunk_bytes:
        raise IngestRejected(f"the chunk is {len(chunk_bytes)} bytes, over the swarm's"
                             f" {limits.chunk_bytes}", code="oversize", status=413)
    if payload["size"] != len(chunk_bytes):
        raise IngestRejected(f"the transaction says {payload['size']} bytes, the chunk has"
                             f" {len(chunk_bytes)}", code="mismatch")
    cid = content_id(chunk_bytes)
    if cid != payload["cid"]:
        raise IngestRejected(f"the chunk's CID is {cid}, the transaction announces"
                             f" {payload['cid']}", code="cid-mismatch")
    try:
        chunk = decode_chunk(chunk_bytes, max_bytes=limits.chunk_bytes)
    except FormatError as exc:
        status = 422 if exc.code == "schema" else 400
        raise IngestRejected(f"chunk: {exc.reason}", code=exc.code, status=status) from None
    swarm_schema = manifest.schema
    if chunk.schema not in (swarm_schema, sensor_schema(swarm_schema, labelled=False)):
        raise IngestRejected(f"chunk schema {chunk.schema.to_dict()} is not the swarm's"
                             f" {swarm_schema.to_dict()} (or it without labels)",
                             code="schema", status=422)
    if (payload["rows"] != chunk.x.shape[0] or payload["seq"] != chunk.seq
            or payload["schema"] != chunk.schema.to_dict()):
        raise IngestRejected("the transaction's rows, seq or schema differ from the chunk's",
                             code="mismatch")
    if chunk.sensor != author_id(tx.author):
        raise IngestRejected(f"the chunk names sensor {chunk.sensor[:48]!r}, the transaction is signed by"
                             f" {author_id(tx.author)}: a chunk is announced by the sensor that made it",
                             code="not-owner", status=403)
    if tx.id not in tangle:
        seq = payload["seq"]
        other = tangle.data_tx_at_seq(tx.author, seq)
        if other is None and claimed and claimed.get((tx.author, seq), tx.id) != tx.id:
            other = f"{claimed[tx.author, seq]} (being ingested)"
        if other is not None:
            duplicate = IngestRejected(
                f"this sensor already published seq {seq} as {other}", code="duplicate-seq",
                status=409)
            duplicate.tips = ingest_tips(tangle, author=tx.author)
            duplicate.next_seq = next_free_seq(tangle, tx.author, claimed)
            raise duplicate
    return tx, chunk


def next_free_seq(tangle: Tangle, author: bytes,
                  claimed: dict[tuple[bytes, int], str] | None = None) -> int:
    """``author``'s next free data ``seq``.

    One more than the highest in ``tangle`` or ``claimed`` (see :func:`check_ingest`), 0 if
    none. One index lookup.
    """
    top = max((seq for who, seq in claimed or () if who == author), default=-1)
    return max(tangle.next_data_seq(author), top + 1)


def ingest_info(tangle: Tangle, author: str | None = None) -> dict[str, Any]:
    """The answer of ``GET /ingest``.

    ``{"tips": [{"id", "time"}, ...]}``, plus ``next_seq`` (:func:`next_free_seq`) when
    ``author`` is an author id (``z6Mk...``; anything else is ignored).
    """
    key = None
    if author is not None:
        with contextlib.suppress(LearnaeError):
            key = parse_author_id(author)
    info: dict[str, Any] = {"tips": ingest_tips(tangle, author=key)}
    if key is not None:
        info["next_seq"] = next_free_seq(tangle, key, _in_flight(tangle).seqs)
    return info


def ingest_reply(tangle: Tangle, tx: Tx) -> dict[str, Any]:
    """The 200 answer: ``{"tx", "cid", "tips"}``."""
    return {"tx": tx.id, "cid": tx.payload["cid"], "tips": ingest_tips(tangle, author=tx.author)}


class _InFlight:
    """The ingests under way on one tangle, between their check and their insert."""

    def __init__(self) -> None:
        self.seqs: dict[tuple[bytes, int], str] = {}  # (author key, seq) -> tx id
        self.done: dict[str, asyncio.Event] = {}  # tx id -> set when its ingest ends


_IN_FLIGHT: weakref.WeakKeyDictionary[Tangle, _InFlight] = weakref.WeakKeyDictionary()


def _in_flight(tangle: Tangle) -> _InFlight:
    flight = _IN_FLIGHT.get(tangle)
    if flight is None:
        flight = _IN_FLIGHT[tangle] = _InFlight()
    return flight


async def handle_ingest(body: bytes, *, manifest: Manifest, tangle: Tangle, ipfs: IpfsNode,
                        publish: Callable[[Tx], Awaitable[Any]] | None = None,
                        now_ms: int | None = None) -> tuple[int, dict[str, Any]]:
    """The whole ``POST /ingest`` for a node's HTTP API.

    Parse, :func:`check_ingest`, add and pin the chunk (``ipfs.add``), store the transaction
    (``tangle.insert``) and gossip it (``publish(tx)``, e.g. ``TangleSync.publish``). Returns
    ``(status, json_body)``; never raises for bad input. Use on the loop that owns ``tangle``::

        status, body = await handle_ingest(await request.read(), manifest=..., tangle=...,
                                           ipfs=..., publish=sync.publish)
        return web.json_response(body, status=status)

    The check and the claim of the author's ``seq`` are one step (no ``await`` between
    them): while a transaction is being added and stored, another transaction of its author
    at the same ``seq`` gets ``409 duplicate-seq``; the same transaction posted again waits
    for the first post's outcome, then is answered as a resend (``200``), or takes over if
    the first one failed.
    """
    flight = _in_flight(tangle)
    try:
        chunk_bytes, tx_raw = parse_ingest_request(body)
        while True:
            tx, _ = check_ingest(manifest, tangle, chunk_bytes, tx_raw, now_ms=now_ms,
                                 claimed=flight.seqs)
            key = (tx.author, tx.payload["seq"])
            if tx.id in tangle or key not in flight.seqs:
                break
            await flight.done[tx.id].wait()  # this very transaction is under way
    except IngestRejected as exc:
        return exc.status, exc.body()
    claim = tx.id not in tangle
    if claim:
        flight.seqs[key], done = tx.id, asyncio.Event()
        flight.done[tx.id] = done
    try:
        try:
            cid = await ipfs.add(chunk_bytes)
        except LearnaeError as exc:
            return 503, {"error": "ipfs", "reason": f"could not add the chunk: {exc.reason}"}
        if cid != tx.payload["cid"]:
            return 500, {"error": "ipfs", "reason": f"IPFS named the chunk {cid}"}
        if tx.id not in tangle:
            result = tangle.insert(tx)
            if result.error is not None:
                return 400, {"error": result.error.code, "reason": result.error.reason}
            if publish is not None:
                await publish(tx)
        return 200, ingest_reply(tangle, tx)
    finally:
        if claim:
            del flight.seqs[key], flight.done[tx.id]
            done.set()
