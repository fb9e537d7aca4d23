"""Outlets: the ways a queued chunk leaves the sensor, as a ``data`` transaction it signs.

:class:`ViaOutlet` posts each chunk to a trainer node's ``POST /ingest`` (the contract, and
the node side, are in :mod:`learnae.ingest`), with transactions made by a :class:`Signer`;
:class:`EmbeddedOutlet` runs the sensor's own Kubo node and ledger and gossips the transaction
itself. An answer that acknowledges nothing raises :class:`BadAnswer`; a ``seq`` the ledger
already holds for this key raises :class:`SeqTaken` with the key's next free ``seq`` (from
the node's ``duplicate-seq`` answer or ``GET /ingest``, or, embedded, from the sensor's own
ledger).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from learnae.errors import LearnaeError, TxRejected
from learnae.formats import Schema
from learnae.identity import Identity
from learnae.ingest import TX_STATUS, IngestRejected, encode_ingest_request
from learnae.ledger.tx import Tx, data_payload, decode_tx, make_tx, tx_link
from learnae.sensor.queue import QueuedChunk, SensorQueue
from learnae.sensor.rows import _now_ms

if TYPE_CHECKING:
    from learnae.invite import Invite
    from learnae.ipfs.base import IpfsNode
    from learnae.ledger.sync import TangleSync
    from learnae.ledger.tangle import Tangle


class BadAnswer(LearnaeError):
    """A ``2xx`` answer to ``POST /ingest`` that acknowledges nothing.

    It does not name the transaction and chunk posted: the chunk stays queued (retried later).
    """

    code = "bad-answer"


class SeqTaken(LearnaeError):
    """The ledger holds another ``data`` transaction of this sensor's key at the chunk's seq.

    Attributes:
        next_seq: the key's next free seq there (None if not known).
    """

    code = "duplicate-seq"

    def __init__(self, reason: str, *, next_seq: int | None = None):
        super().__init__(reason)
        self.next_seq = next_seq


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
    """Makes the sensor's ``data`` transactions.

    It holds the sensor's key, the swarm's genesis and ``pow_bits``, and the ``source`` map of
    the payload. Parents are up to two of the given
    tips (``[{"id", "time"}]``), the genesis if none; the time is raised to the latest
    parent's.
    """

    identity: Identity
    genesis: Tx
    pow_bits: int
    source: dict[str, str]

    def data_tx(self, item: QueuedChunk, schema: Schema, parents: list[dict]) -> Tx:
        """The signed (and mined) ``data`` transaction of ``item``, whose rows are ``schema``'s."""
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
        """Start the worker thread that mines and posts."""
        # one worker thread for mining and HTTP (asyncio's default pool would start many,
        # each with its own malloc arena: several MB of RSS on a Pi)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sensor-via")

    async def close(self) -> None:
        """Stop the worker thread (without waiting for it)."""
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
        """Sign ``item`` (once: the transaction is kept in ``queue``) and post it.

        Raises:
            SeqTaken: the node holds this key's ``seq`` already.
            BadAnswer: a ``2xx`` answer that acknowledges nothing.
            IngestRejected: refused for good (``status`` 4xx other than 409).
            Exception: anything else is a transient failure: retried later.
        """
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
            if code == "not-admitted":  # perhaps only on those parents (admitted a moment ago)
                queue.set_tx(item.seq, None)
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
    """The sensor's own Kubo node (``STATE/ipfs``) and ledger (``STATE/tangle.sqlite``).

    It adds and pins each chunk, appends a ``data`` transaction and gossips it with
    :class:`~learnae.ledger.sync.TangleSync`; dials the invite's bootstrap peers.
    """

    def __init__(self, state: Path, invite: Invite, identity: Identity, schema: Schema,
                 source: dict[str, str], *, host: str = "127.0.0.1", port: int = 0):
        self.state, self.invite, self.identity, self.schema = state, invite, identity, schema
        self.source, self.host, self.port = source, host, port
        self.node: IpfsNode | None = None
        self.sync: TangleSync | None = None
        self.tangle: Tangle | None = None
        self._peering: list[asyncio.Task] = []

    async def start(self) -> None:
        """Open the ledger, start the Kubo node and the sync, and dial the bootstrap peers."""
        from learnae.ipfs.embedded import EmbeddedNode
        from learnae.ipfs.peering import exchange_addresses, keep_connected, pex_topic
        from learnae.ledger.sync import TangleSync
        from learnae.state import open_tangle

        self.tangle, _ = open_tangle(self.state, invite=self.invite)
        # behind a home router the sensor reserves a slot on the bootstrap peers that relay
        # (docs/design.md, "Members behind NAT")
        self.node = await EmbeddedNode.start(self.state / "ipfs", self.invite.swarm_key,
                                             host=self.host, port=self.port,
                                             relays=list(self.invite.bootstrap))
        self.sync = TangleSync(self.tangle, self.node)
        await self.sync.start()
        self._peering = [asyncio.create_task(exchange_addresses(self.node, pex_topic(self.invite.genesis)))]
        if self.invite.bootstrap:
            self._peering.append(asyncio.create_task(keep_connected(self.node, list(self.invite.bootstrap))))

    async def close(self) -> None:
        """Stop dialling, the sync and the node, and close the ledger."""
        for task in self._peering:
            task.cancel()
        await asyncio.gather(*self._peering, return_exceptions=True)
        if self.sync is not None:
            await self.sync.stop()
        if self.node is not None:
            await self.node.close()
        if self.tangle is not None:
            self.tangle.close()

    async def send(self, item: QueuedChunk, queue: SensorQueue) -> str:
        """Add ``item`` to IPFS, append its transaction to the ledger (once) and gossip it.

        Raises:
            SeqTaken: the ledger holds another transaction of this key at ``item.seq``.
            IngestRejected: refused for good (the CID differs, or the ledger refuses it).
            Exception: anything else is a transient failure: retried later.
        """
        tangle, node, sync = self.tangle, self.node, self.sync
        if tangle is None or node is None or sync is None:
            raise RuntimeError("the embedded outlet is not started: await outlet.start() first")
        me = self.identity.public_key
        held = tangle.data_tx_at_seq(me, item.seq)
        tx = None if held is None else tangle.get(held)
        if tx is not None and tx.payload["cid"] != item.cid:
            raise SeqTaken(f"this sensor's ledger holds another transaction of its key at seq"
                           f" {item.seq}: {held}", next_seq=tangle.next_data_seq(me))
        cid = await node.add(item.data)
        if cid != item.cid:
            raise IngestRejected(f"IPFS named the chunk {cid}, expected {item.cid}",
                                 code="cid-mismatch")
        if tx is None:  # else: appended before a crash, not yet acknowledged
            payload = data_payload(cid=cid, size=len(item.data), rows=item.rows,
                                   schema=self.schema.to_dict(), source=self.source,
                                   seq=item.seq)
            try:
                tx = tangle.append(self.identity, "data", payload)
            except TxRejected as exc:
                raise IngestRejected(exc.reason, code=exc.code,
                                     status=TX_STATUS.get(exc.code, 400)) from None
        await sync.publish(tx)
        return tx.id
