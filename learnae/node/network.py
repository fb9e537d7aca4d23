"""A trainer's network side: publish, choose, fetch, check, merge, adopt (:class:`NetworkSide`).

One class does the network work of every trainer, whoever drives it: ``learnae node run``
(:class:`~learnae.node.trainer.TrainerNode`: embedded Kubo, Keras in another thread, the wall
clock) and the fault harness's memory driver (:mod:`learnae.local.simulation`: the memory
network, a numpy model, a virtual clock). What differs is passed in: the
:class:`~learnae.ipfs.base.IpfsNode`, the ledger's :class:`~learnae.ledger.sync.TangleSync`, the
clock, the random generator for mining, and how blocking work (encoding, decoding, merging,
SQLite) leaves the event loop.

The training side talks to it in two types (:mod:`learnae.training.bridge`): it hands over an
:class:`~learnae.training.bridge.Offer` (a snapshot of its weights with its step and samples)
and gets back a :class:`~learnae.training.bridge.Merged`, whose ``delta`` is the merge's
displacement from the offered snapshot; the trainer adds it to its current weights, keeping
what it trained meanwhile (docs/design.md, "Node loop").
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import random
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from learnae.errors import FormatError, LearnaeError
from learnae.formats import (
    Checkpoint,
    Chunk,
    checkpoint_encoding,
    decode_checkpoint,
    decode_chunk,
    encode_checkpoint,
)
from learnae.identity import Identity, author_id
from learnae.ipfs.base import IpfsNode
from learnae.ledger.reader import LedgerReader, LedgerWriter
from learnae.ledger.tx import Tx, checkpoint_payload
from learnae.manifest import Manifest
from learnae.merge import Contribution, MergeResult, merge
from learnae.node.peers import PeerChoice
from learnae.node.verifier import CheckpointVerifier, Evaluate, Replay
from learnae.training.bridge import Merged, Offer
from learnae.training.pool import StoreError
from learnae.verify import cap_samples

__all__ = ["DEFAULT_FETCH_TIMEOUT", "DEFAULT_K", "DEFAULT_KEEP", "DEFAULT_STALE", "FINAL_FETCH_TIMEOUT", "ChunkStore", "Keyframes",
           "NetworkSide", "fetch_chunk", "fetch_peer_checkpoint", "merge_contributions",
           "publish_checkpoint"]

log = logging.getLogger("learnae.node")

DEFAULT_KEEP = 3
DEFAULT_K = 4
DEFAULT_FETCH_TIMEOUT = 20.0
FINAL_FETCH_TIMEOUT = 5.0
"""Seconds per peer checkpoint in the merge a stopping node makes (:meth:`NetworkSide.merge_all`)."""
DEFAULT_STALE = 600.0
ADOPT_TRIES = 3  # fetch attempts for a data chunk before it is refused

Offload = Callable[..., Awaitable[Any]]
"""How blocking work leaves the event loop: ``await offload(fn, *args)``, e.g.
:func:`asyncio.to_thread` (the default) or an inline call on a virtual-clock loop."""


class ChunkStore(Protocol):
    """Where adopted data chunks go; its calls block (run them through the offload).

    A node's is :class:`~learnae.training.pool.AdoptedStore`, on disk; the simulator's keeps
    them in memory.
    """

    def held(self, txs: Iterable[str]) -> set[str]:
        """Return the data tx ids of ``txs`` whose chunks the store holds.

        Raises:
            StoreError: the store failed (counted as ``adopt:store``; the chunks are fetched).
        """

    def add(self, tx: str, author: bytes, x: np.ndarray, y: np.ndarray) -> object:
        """Store the chunk of data tx ``tx`` by ``author``.

        Args:
            tx: the data transaction's id.
            author: its author's 32-byte public key.
            x: features ``(rows, *features)``.
            y: labels ``(rows,)``.

        Raises:
            StoreError: the store failed (counted as ``adopt:store``; the chunk is fetched
                again at the next pass).
        """


# ------------------------------------------------------------------ one step each
async def publish_checkpoint(ipfs: IpfsNode, sync: LedgerWriter, identity: Identity, *,
                             weights: Mapping[str, np.ndarray], step: int, samples: int,
                             base: Sequence[str] = (), metrics: Mapping[str, float] | None = None,
                             data: Sequence[str] = (), offload: Offload = asyncio.to_thread,
                             time_ms: int | None = None, rng: random.Random | None = None,
                             segment: Mapping[str, int] | None = None, codec: str = "float32",
                             block: int = 64,
                             delta_of: tuple[str, Mapping[str, np.ndarray]] | None = None) -> tuple[Tx, bytes]:
    """Publish weights as a checkpoint and announce it in a signed ``checkpoint`` tx.

    The steps: safetensors -> ``ipfs.add`` (pinned) -> signed ``checkpoint`` tx -> gossip.

    Args:
        ipfs: the node's IPFS node.
        sync: the node's ledger syncer (its tangle stores the tx).
        identity: the author's key.
        weights: weight path -> array, in the model's order.
        step: the node's local steps so far.
        samples: examples trained on since the previous checkpoint.
        base: checkpoint tx ids merged into these weights.
        metrics: metric name -> value on the node's own held-out data.
        data: data tx ids adopted into the training pool since the previous checkpoint.
        offload: how the encoding leaves the event loop (:data:`Offload`).
        time_ms: the tx's time, ms since the Unix epoch (None: now).
        rng: random generator for mining and tip selection (None: seeded by the system).
        segment: ``seed`` and ``steps`` of a replayable training segment from the only
            ``base`` on the rows of ``data`` (:func:`learnae.verify.segment_rows`), or None.
        codec: how the weights are encoded (:data:`learnae.codec.CODECS`).
        block: values per scale of a quantized codec.
        delta_of: ``(cid, weights)`` of a full checkpoint of this author's that receivers can
            fetch (it stays pinned): the file is then a delta against it.

    Returns:
        ``(tx, file bytes)``.

    Raises:
        NonFiniteError: the weights hold NaN or infinity; IpfsError; TxRejected, LedgerError.
    """
    adopted = list(dict.fromkeys(data))
    ckpt = Checkpoint(dict(weights), sync.tangle.swarm, int(step), int(samples))
    raw = await offload(lambda: encode_checkpoint(ckpt, codec=codec, block=block, base=delta_of))
    cid = await ipfs.add(raw)
    payload = checkpoint_payload(cid=cid, size=len(raw), step=int(step), samples=int(samples),
                                 base=list(dict.fromkeys(base)), data=adopted, metrics=dict(metrics or {}),
                                 segment=segment)
    tx = await sync.append(identity, "checkpoint", payload, time_ms=time_ms, rng=rng)
    return tx, raw


class Keyframes:
    """Full checkpoints a node decoded lately, by CID: the bases peers' deltas name.

    Least recently used ones leave first once the held weights pass ``max_bytes``.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._held: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
        self._bytes = 0  # of the held weights

    def get(self, cid: str) -> dict[str, np.ndarray] | None:
        """The weights of ``cid``, or None when not held."""
        weights = self._held.get(cid)
        if weights is not None:
            self._held.move_to_end(cid)
        return weights

    def put(self, cid: str, weights: dict[str, np.ndarray]) -> None:
        """Hold ``weights`` as ``cid``'s."""
        old = self._held.pop(cid, None)
        if old is not None:
            self._bytes -= _nbytes(old)
        self._held[cid] = weights
        self._bytes += _nbytes(weights)
        while len(self._held) > 1 and self._bytes > self.max_bytes:
            self._bytes -= _nbytes(self._held.popitem(last=False)[1])


def _nbytes(weights: Mapping[str, np.ndarray]) -> int:
    return sum(w.nbytes for w in weights.values())


async def fetch_peer_checkpoint(ipfs: IpfsNode, tx: Tx, manifest: Manifest,
                                expect: Mapping[str, tuple[tuple[int, ...], str]], *,
                                genesis: str, timeout: float = DEFAULT_FETCH_TIMEOUT,
                                offload: Offload = asyncio.to_thread,
                                keyframes: Keyframes | None = None) -> Contribution:
    """Fetch and decode the checkpoint a peer's ``checkpoint`` tx announces.

    The file must be encoded as the swarm's manifest says (``compression``: its codec for a
    full checkpoint, its ``delta_codec`` for a delta), else it is refused ``codec`` before
    anything is decoded. A delta (docs/design.md "Compressed checkpoints") is decoded against
    the full checkpoint it names: from ``keyframes`` when held there, else fetched (same limit
    and timeout) and decoded first. With ``keyframes``, every full checkpoint decoded is held
    there.

    Args:
        ipfs: the node's IPFS node.
        tx: the peer's ``checkpoint`` transaction.
        manifest: the swarm's manifest (its checkpoint size limit bounds the fetch).
        expect: weight path -> ``(shape, dtype name)`` the swarm's model has.
        genesis: the swarm's genesis tx id (a checkpoint names its swarm).
        timeout: seconds for the fetch.
        offload: how the decoding leaves the event loop (:data:`Offload`).
        keyframes: full checkpoints held for deltas (None: none held, a delta's base is fetched).

    Returns:
        A :class:`~learnae.merge.Contribution` authored by the tx's author id (hex).

    Raises:
        IpfsTimeout (code ``timeout``), IpfsError, OversizeError, CorruptFile, FormatError,
        SchemaMismatch, NonFiniteError: each with its ``code`` for counting (a delta's base's
        too: a base that is itself a delta is refused ``delta-base``).
    """
    limit = manifest.limits.checkpoint_bytes

    rules = manifest.compression

    async def fetch(cid: str, *, delta: bool) -> Checkpoint:
        """``cid`` decoded; a delta (when ``delta``: a base must be full) with its base's weights."""
        raw = await ipfs.cat(cid, timeout=timeout, max_size=limit)
        codec, delta_of = checkpoint_encoding(raw, max_bytes=limit)
        wanted = rules.codec if delta_of is None else rules.delta_codec
        if codec != wanted:
            what = "full checkpoint" if delta_of is None else "delta"
            raise FormatError(f"a {codec} {what}, where this swarm's manifest says"
                              f" {wanted or 'no deltas'}", code="codec")
        base = None
        if delta and delta_of is not None:
            base = keyframes.get(delta_of) if keyframes is not None else None
            if base is None:
                base = (await fetch(delta_of, delta=False)).weights
        ckpt = await offload(lambda: decode_checkpoint(raw, max_bytes=limit, expect=expect, genesis=genesis,
                                                       base=base))
        if keyframes is not None and ckpt.delta_of is None:
            keyframes.put(cid, ckpt.weights)
        return ckpt

    ckpt = await fetch(tx.payload["cid"], delta=True)
    return Contribution(ckpt.weights, samples=ckpt.samples, age=ckpt.step, author=tx.author.hex())


async def fetch_chunk(ipfs: IpfsNode, tx: Tx, manifest: Manifest, *,
                      timeout: float = DEFAULT_FETCH_TIMEOUT,
                      offload: Offload = asyncio.to_thread) -> Chunk:
    """Fetch and decode the labelled data chunk a ``data`` tx announces.

    It is checked against the swarm's schema and chunk size limit.

    Raises:
        IpfsTimeout, IpfsError, OversizeError, CorruptFile, SchemaMismatch, FormatError (also
        when the chunk has no labels or not the rows its tx announces).
    """
    limit = manifest.limits.chunk_bytes
    raw = await ipfs.cat(tx.payload["cid"], timeout=timeout, max_size=limit)
    chunk = await offload(decode_chunk, raw, max_bytes=limit, schema=manifest.schema)
    if chunk.y is None:
        raise FormatError("the chunk has no labels")
    if len(chunk.x) != tx.payload.get("rows"):
        raise FormatError(f"the chunk holds {len(chunk.x)} rows, its tx announces {tx.payload.get('rows')}")
    return chunk


def merge_contributions(manifest: Manifest, own: Contribution,
                        peers: Sequence[Contribution]) -> MergeResult:
    """Merge peers into own with the manifest's rule and parameters.

    Refused peers are listed in ``MergeResult.rejected``, never raised.
    """
    return merge(manifest.merge, own, peers, **manifest.merge_params)


def _merge_with(manifest: Manifest, own: Contribution,
                peers: list[Contribution]) -> tuple[MergeResult, dict[str, np.ndarray]]:
    """Return the merge, and its displacement from the own snapshot.

    The displacement is what the trainer adds to its current weights
    (:attr:`~learnae.training.bridge.Merged.delta`).
    """
    result = merge_contributions(manifest, own, peers)
    return result, {k: np.subtract(w, own.weights[k], dtype=own.weights[k].dtype)
                    for k, w in result.weights.items()}


_REFUSED = {"revoked": "the author was revoked",
            "low-standing": "the author's standing is below the swarm's threshold"}
NEWCOMER_PACE = 3.0
"""A newcomer's transactions are stored at least this many times a checkpoint interval."""


# ------------------------------------------------------------------ the network side
class NetworkSide:
    """The network work of one trainer (see the module docstring). Call it on one event loop.

    Args:
        ipfs: the node's IPFS node.
        sync: its ledger syncer (the syncer's ``tangle`` is the node's).
        identity: its author key.
        manifest: the swarm's manifest.
        expect: weight path -> ``(shape, dtype name)`` of the swarm's model (what peers'
            checkpoints are decoded against).
        k: merge with up to ``k`` peer checkpoints (an offer's ``k`` overrides it).
        keep: own checkpoints kept pinned; older ones are unpinned.
        stale: seconds after which a peer checkpoint is too old to merge (:class:`PeerChoice`).
        fetch_timeout: seconds per fetch of a checkpoint or a chunk.
        adopt_authors: authors whose ``data`` chunks :meth:`adopt` takes (None: every author).
        clock: seconds since the Unix epoch (transaction times, freshness, backoff).
        rng: random generator (:class:`random.Random`) for mining, tip selection and the
            peer choice's ties (None: seeded by the system).
        offload: how blocking work leaves the loop (:data:`Offload`).
        rejections: where to count refusals by code (shared with the training side's
            counts); a new counter by default.
        errors: where to count failures by code, likewise.
        evaluate: validation loss of a set of weights (blocking; run through ``offload``). With
            it, and a manifest whose verification ``rate`` is above 0, the node spot-checks
            its peers' checkpoints (:attr:`verifier`); without it, it checks none but still
            merges by the standings the ledger's attestations give.
        replay: trains a segment again (blocking; :data:`~learnae.node.verifier.Replay`); with
            it the node's checks replay the peers' replayable segments.

    Attributes:
        rejections: refused peer checkpoints and chunks by code: ``timeout``, ``ipfs``,
            ``oversize``, ``corrupt``, ``format``, ``schema``, ``non-finite``, the merge's codes
            (``names``, ``shape``, ``norm``, ...), ``stale``, ``bad-checkpoint``; for chunks
            ``data:<code>`` (``data:not-admitted``, ``data:timeout``, ...).
        errors: the node's own failures: ``adopt:store``.
        published: checkpoints published; merges: merges that used a peer checkpoint.
        fetched: peer checkpoints fetched and decoded (the fetches that failed are counted
            in ``rejections`` as ``timeout`` and ``ipfs``).
        merged_from: author id (hex) -> merges that used a checkpoint of that author.
        last_checkpoint: the last published checkpoint (``tx``, ``cid``, ``step``, ``samples``,
            ``base``, ``time`` in ms) or None.
        pinned: CIDs of own checkpoints kept pinned, oldest first.
        choice: the :class:`PeerChoice` of pending peer checkpoints and backoffs.
        data_accepted: chunks fetched, checked and stored; data_held: admitted chunks found in
            the store already, not fetched again.
        data_pinned: CID -> bytes of the adopted chunks this node keeps pinned (it serves them
            to the swarm for as long as it holds them).
        adopt_paused: while True, :meth:`adopt` takes no new chunks (set over the disk budget).
        verifier: the node's :class:`~learnae.node.verifier.CheckpointVerifier` (its spot checks
            and everyone's standings); a flagged author's checkpoints are refused as
            ``low-standing`` before they are fetched, and a revoked author's (revoked in this
            ledger, :mod:`learnae.ledger.members`) as ``revoked``, those published before the
            revocation included.
    """

    def __init__(self, *, ipfs: IpfsNode, sync: LedgerWriter, identity: Identity, manifest: Manifest,
                 expect: Mapping[str, tuple[tuple[int, ...], str]], k: int = DEFAULT_K,
                 keep: int = DEFAULT_KEEP, stale: float = DEFAULT_STALE,
                 fetch_timeout: float = DEFAULT_FETCH_TIMEOUT,
                 adopt_authors: frozenset[bytes] | None = None,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None,
                 offload: Offload = asyncio.to_thread, rejections: Counter[str] | None = None,
                 errors: Counter[str] | None = None, evaluate: Evaluate | None = None,
                 replay: Replay | None = None):
        self.ipfs, self.sync, self.identity, self.manifest = ipfs, sync, identity, manifest
        self.expect = expect
        self.k, self.keep, self.fetch_timeout = k, keep, fetch_timeout
        self.adopt_authors = adopt_authors
        self.clock, self.rng, self.offload = clock, rng, offload
        self.rejections: Counter[str] = Counter() if rejections is None else rejections
        self.errors: Counter[str] = Counter() if errors is None else errors
        self.choice = PeerChoice(stale=stale, rng=rng)
        self.published = 0
        self.merges = 0
        self.fetched = 0
        self.merged_from: Counter[str] = Counter()
        self.record: Counter[bytes] = Counter()  # author -> its checkpoints and chunks others used
        self.last_checkpoint: dict[str, Any] | None = None
        self.pinned: deque[str] = deque()
        self.held_keyframes: set[str] = set()  # own keyframes out of ``pinned`` that kept deltas name
        self._deltas: dict[str, str] = {}  # CID of a pinned own delta -> its keyframe's
        self._keyframe: tuple[str, dict[str, np.ndarray]] | None = None  # own newest, as receivers decode it
        self._since_keyframe = 0  # own deltas published since it
        params = sum(math.prod(shape) for shape, _dtype in expect.values())
        self.keyframes = Keyframes(max_bytes=4 * params * (k + 2)) if manifest.compression.delta_codec else None
        self.data_accepted = 0
        self.data_held = 0
        self.data_pinned: dict[str, int] = {}
        self.adopt_paused = False
        self._cursor = 0  # tangle seq of the last checkpoint tx handed to the peer choice
        self._data_cursor = 0  # data seq of the last data tx looked at
        self._waiting: list[Tx] = []  # admitted data txs whose chunks are still to fetch
        self._tries: dict[str, int] = {}
        pace = manifest.checkpoint_interval
        if sync.newcomer is None and pace > 0:  # the syncer stores fewer of a newcomer's transactions
            sync.newcomer = self.newcomer  # but never fewer than 3 times what an honest member sends
            sync.newcomer_rate = max(manifest.newcomers.tx_per_minute / 60, NEWCOMER_PACE / pace)
        self.verifier = CheckpointVerifier(
            sync=sync, identity=identity, manifest=manifest, evaluate=evaluate,
            fetch=self._fetch, offload=offload, clock=clock, rng=rng, replay=replay,
            fetch_data=lambda tx: fetch_chunk(self.ipfs, tx, self.manifest, timeout=self.fetch_timeout,
                                              offload=self.offload))

    async def _fetch(self, tx: Tx, timeout: float | None = None) -> Contribution:
        return await fetch_peer_checkpoint(self.ipfs, tx, self.manifest, self.expect, genesis=self.tangle.swarm,
                                           timeout=self.fetch_timeout if timeout is None else timeout,
                                           offload=self.offload, keyframes=self.keyframes)

    @property
    def tangle(self) -> LedgerReader:
        """The node's ledger (the syncer's tangle)."""
        return self.sync.tangle

    # -------------------------------------------------------------------------- publish
    async def publish(self, offer: Offer, *, metrics: Mapping[str, float] | None = None,
                      data: Sequence[str] = (), segment: Mapping[str, int] | None = None) -> tuple[Tx, bytes]:
        """Publish ``offer``'s weights as a checkpoint; keep the last ``keep`` own ones pinned.

        The checkpoint descends from this node's previous checkpoint and from the peers'
        merged since (``offer.merged``'s tags), and names the data txs ``data``. Its time is
        at least 1 ms after the previous one's, so an author's checkpoints sort by time as
        they were published (which of them are its newest ``keep``).

        Args:
            offer: the training side's snapshot.
            metrics: metric name -> value on the node's own held-out data.
            data: data tx ids adopted into the training pool since the previous checkpoint.
            segment: ``seed`` and ``steps`` when ``offer``'s weights are a replayable segment
                trained from this node's previous checkpoint on the rows of ``data``
                (:func:`learnae.verify.segment_rows`); nothing may be merged in between.

        Returns:
            ``(tx, file bytes)``.

        Raises:
            ValueError: a ``segment`` without a previous checkpoint, or after a merge.
            NonFiniteError, IpfsError, TxRejected, LedgerError: as :func:`publish_checkpoint`.
        """
        base = [self.last_checkpoint["tx"]] if self.last_checkpoint else []
        if segment is not None and (not base or any(offer.merged)):
            raise ValueError("a segment starts from the node's previous checkpoint, with nothing merged since")
        base += [tx_id for tag in offer.merged if tag for tx_id in tag]
        # strictly after the previous one: "newest" by time then names the one kept pinned
        time_ms = max(int(self.clock() * 1000), self.last_checkpoint.get("time", -1) + 1 if self.last_checkpoint else 0)
        c = self.manifest.compression
        keyframe = self._keyframe if c.delta_codec and self._since_keyframe + 1 < c.keyframe_every else None
        tx, raw = await publish_checkpoint(self.ipfs, self.sync, self.identity, weights=offer.weights,
                                           step=offer.step, samples=offer.samples, base=base,
                                           metrics=metrics, data=data, offload=self.offload,
                                           time_ms=time_ms, rng=self.rng, segment=segment,
                                           codec=c.codec if keyframe is None else c.delta_codec or c.codec,
                                           block=c.block, delta_of=keyframe)
        cid = tx.payload["cid"]
        self.published += 1
        self.last_checkpoint = {"tx": tx.id, "cid": cid, "step": offer.step,
                                "samples": offer.samples, "base": base, "time": tx.time}
        if keyframe is not None:
            self._since_keyframe += 1
            self._deltas[cid] = keyframe[0]
        elif c.delta_codec:  # a new keyframe: deltas are taken against what receivers decode
            decoded = await self.offload(lambda: decode_checkpoint(raw, max_bytes=len(raw)).weights)
            self._keyframe, self._since_keyframe = (cid, decoded), 0
        self.pinned.append(cid)
        await self._unpin_old()
        return tx, raw

    def own_pins(self) -> list[str]:
        """Every own checkpoint CID pinned: the keyframes kept for deltas, then ``pinned``."""
        return [*self.held_keyframes, *self.pinned]

    async def _unpin_old(self) -> None:
        """Unpin own checkpoints past the newest ``keep``, except keyframes a kept delta names."""
        while len(self.pinned) > self.keep:
            self._deltas.pop(old := self.pinned.popleft(), None)
            self.held_keyframes.add(old)
        needed = {*self._deltas.values(), *self.pinned, *([self._keyframe[0]] if self._keyframe else [])}
        for old in sorted(self.held_keyframes - needed):
            self.held_keyframes.discard(old)
            try:
                await self.ipfs.unpin(old)
            except LearnaeError as exc:
                log.debug("unpin %s: %s", old, exc.reason)

    # ---------------------------------------------------------------------------- merge
    def _collect(self) -> None:
        """Hand the peers' checkpoint txs stored since the cursor to the peer choice.

        Their arrival is now: at most one merge round after they were stored.
        """
        txs, self._cursor = self.tangle.checkpoints_since(self._cursor)
        me, now_ms = self.identity.public_key, self.clock() * 1000
        add, get, record, rules = self.choice.add, self.tangle.get, self.record, self.tangle.rules
        counting = self.manifest.newcomers.record > 0 and rules.admission is None  # see newcomer()
        for tx in txs:
            author = tx.author
            if author != me:
                add(tx, now_ms)
            if counting:
                for link in (*tx.links("base"), *tx.links("data")):
                    used = get(link)
                    if used is not None and used.author != author:  # merged, or trained on
                        record[used.author] += 1
        self.verifier.consider(txs)
        self.verifier.refresh()

    def newcomer(self, author: bytes) -> bool:
        """Is ``author`` (32-byte key) on probation (the manifest's :class:`~learnae.manifest.Newcomers`)?

        Only in an open swarm, never the founder or a steward: until :attr:`record` counts
        ``newcomers.record`` of its checkpoints merged, or data chunks trained on, by others (in
        the checkpoints this node has seen since it started).
        """
        rule, rules = self.manifest.newcomers, self.tangle.rules
        if rule.record == 0 or rules.admission is not None or author == rules.founder or author in rules.stewards:
            return False
        return self.record[author] < rule.record

    def _pass_over(self, author: bytes) -> None:
        """A checkpoint of ``author`` could not be used: back off from the author."""
        wait = self.choice.failed(author, self.clock() * 1000)
        log.info("passing over checkpoints by %s for %.0f s", author.hex()[:12], wait)

    async def merge(self, offer: Offer, *, k: int | None = None, timeout: float | None = None) -> Merged | None:
        """Merge ``offer`` with up to ``k`` of the freshest pending peer checkpoints.

        The peer checkpoints (:class:`PeerChoice`) are each fetched, decoded and checked;
        refusals are counted and their authors backed off from.

        Args:
            offer: the training side's snapshot.
            k: how many peer checkpoints at most (default ``offer.k``, then the node's ``k``).
            timeout: seconds per fetch (default: the node's ``fetch_timeout``).

        Returns:
            The merge (weights, the merged tx ids as its tag, its displacement from
            ``offer.weights`` as ``delta``), or None if no peer checkpoint was usable or
            fewer than ``offer.min_peers`` were pending.

        Raises:
            LearnaeError: the merge itself failed (never a peer's fault: those are counted).
        """
        self._collect()
        now_ms = self.clock() * 1000
        stale = self.choice.drop_stale(now_ms)
        if stale:
            self.rejections["stale"] += stale
        chosen = self.choice.choose(k or offer.k or self.k, now_ms, at_least=max(offer.min_peers, 1))
        roll, kept = self.tangle.roll(), []
        for tx in chosen:  # refused before they are fetched
            code = ("revoked" if roll.revoked(tx.author)
                    else "low-standing" if self.verifier.flagged(tx.author) else None)
            if code is None:
                kept.append(tx)
                continue
            self.rejections[code] += 1
            log.info("peer checkpoint %s by %s refused: %s", tx.id[:16], tx.author.hex()[:12], _REFUSED[code])
        chosen = kept
        if not chosen:
            return None
        results = await asyncio.gather(*(self._fetch(tx, timeout) for tx in chosen), return_exceptions=True)
        peers, used_tx = [], {}
        for tx, result in zip(chosen, results, strict=True):
            if isinstance(result, LearnaeError):
                self.rejections[result.code] += 1
                log.info("peer checkpoint %s by %s refused: %s", tx.id[:16], tx.author.hex()[:12], result.reason)
                self._pass_over(tx.author)
            elif isinstance(result, (ValueError, KeyError, TypeError, OSError)):
                self.rejections["bad-checkpoint"] += 1
                log.info("peer checkpoint %s by %s refused: %r", tx.id[:16], tx.author.hex()[:12], result)
                self._pass_over(tx.author)
            elif isinstance(result, BaseException):
                raise result
            else:
                self.fetched += 1
                peers.append(result)
                used_tx[result.author] = tx.id
        if not peers:
            return None
        own = Contribution(offer.weights, samples=offer.samples, age=offer.step,
                           author=self.identity.public_key.hex())
        capped = cap_samples([own.samples, *(p.samples for p in peers)], self.manifest.verification.sample_cap)
        weight = self.manifest.newcomers.weight
        peers = [dataclasses.replace(p, samples=math.floor(n * weight) if self.newcomer(bytes.fromhex(p.author)) else n)
                 for p, n in zip(peers, capped[1:], strict=True)]
        result, delta = await self.offload(_merge_with, self.manifest, own, peers)
        for author, code, reason in result.rejected:
            self.rejections[code] += 1
            used_tx.pop(author, None)
            log.info("peer checkpoint by %s refused (%s): %s", author[:12], code, reason)
            self._pass_over(bytes.fromhex(author))
        for author in used_tx:
            self.choice.succeeded(bytes.fromhex(author))
            self.merged_from[author] += 1
        if not used_tx:
            return None
        self.merges += 1
        return Merged(result.weights, tuple(used_tx.values()), delta=delta)

    async def merge_all(self, offer: Offer) -> Merged | None:
        """Merge ``offer`` with the freshest checkpoint of every peer (not stale, not backing off).

        This is how a node ends on the swarm's consensus. Each fetch gets
        :data:`FINAL_FETCH_TIMEOUT` seconds: peers that stopped first no longer serve their last
        checkpoints, and a volunteer who stops a node should not wait the full fetch timeout
        for each of them (with 20 s, the last of four nodes stopped one after the other took
        17 s to exit). A peer that cannot deliver in time is left out of the final merge.

        Returns:
            The merge as :meth:`merge` returns it; None if no peer checkpoint was usable.
        """
        self._collect()
        now_ms = self.clock() * 1000
        for author, tx in self.tangle.latest_checkpoint_per_author().items():
            if author != self.identity.public_key:
                self.choice.add(tx, now_ms)
        return await self.merge(offer, k=max(len(self.choice), 1), timeout=FINAL_FETCH_TIMEOUT)

    # ---------------------------------------------------------------------------- adopt
    def _ownership(self, tx: Tx, chunk: Chunk) -> str | None:
        """Why ``chunk``, announced by ``tx``, is not its author's to announce; None if it is."""
        owner = author_id(tx.author)
        if chunk.sensor != owner:
            log.info("data chunk %s refused: its bytes name sensor %.24s, the transaction's author is"
                     " %.24s (a copy of another sensor's chunk)", tx.id[:16], chunk.sensor, owner)
            return "not-owner"
        if tx.payload["cid"] in self.data_pinned:
            log.info("data chunk %s refused: its CID is already adopted under another transaction", tx.id[:16])
            return "duplicate"
        return None

    async def adopt(self, store: ChunkStore, *, stopping: Callable[[], bool] = lambda: False) -> int:
        """Make one pass of data adoption over the ``data`` txs stored since the last pass.

        It takes those by admitted authors (others counted as ``data:not-admitted``, and those
        of an author revoked in this ledger as ``data:revoked``, whenever announced), fetches
        and checks each chunk the store does not hold yet (:func:`fetch_chunk`) and stores it.
        Ownership: a chunk is taken only from the author its bytes name (its ``sensor`` is the
        transaction author's id; else ``data:not-owner``: a copy re-announced by another
        author), and a chunk already taken under another transaction is not taken again
        (``data:duplicate``).
        A chunk whose fetch timed out or failed is tried again in the next passes,
        :data:`ADOPT_TRIES` times in all, then refused as ``data:<code>``; store failures count
        as ``adopt:store``. A stored chunk is pinned (``adopt:pin`` counts failures), so the
        node serves it onwards. While :attr:`adopt_paused`, no chunk is fetched (they wait).

        Args:
            store: where chunks go (:class:`ChunkStore`).
            stopping: checked between fetches; True ends the pass early.

        Returns:
            Chunks stored in this pass.
        """
        txs, self._data_cursor = self.tangle.data_since(self._data_cursor)
        admitted: list[Tx] = []
        roll = self.tangle.roll()
        for tx in txs:
            if roll.revoked(tx.author):
                self.rejections["data:revoked"] += 1
            elif self.adopt_authors is None or tx.author in self.adopt_authors:
                admitted.append(tx)
            else:
                self.rejections["data:not-admitted"] += 1
        if admitted:
            try:
                held = await self.offload(store.held, [tx.id for tx in admitted])
            except StoreError as exc:  # fetch them: storing a held chunk again is a no-op
                self.errors["adopt:store"] += 1
                log.warning("reading adopted data: %s", exc.reason)
                held = set()
            self.data_held += len(held)
            self.data_pinned.update((tx.payload["cid"], tx.payload["size"]) for tx in admitted if tx.id in held)
            self._waiting += [tx for tx in admitted if tx.id not in held]
        later: list[Tx] = []
        stored = 0
        for i, tx in enumerate(self._waiting):
            if stopping() or self.adopt_paused:
                later += self._waiting[i:]
                break
            try:
                chunk = await fetch_chunk(self.ipfs, tx, self.manifest, timeout=self.fetch_timeout,
                                          offload=self.offload)
            except LearnaeError as exc:
                self._tries[tx.id] = self._tries.get(tx.id, 0) + 1
                if exc.code in ("timeout", "ipfs") and self._tries[tx.id] < ADOPT_TRIES:
                    later.append(tx)
                    continue
                self._tries.pop(tx.id, None)
                self.rejections[f"data:{exc.code}"] += 1
                log.info("data chunk %s by %s refused: %s", tx.id[:16], tx.author.hex()[:12], exc.reason)
                continue
            except (ValueError, KeyError, TypeError, OSError) as exc:
                self.rejections["data:bad-chunk"] += 1
                log.info("data chunk %s by %s refused: %r", tx.id[:16], tx.author.hex()[:12], exc)
                continue
            self._tries.pop(tx.id, None)
            refused = self._ownership(tx, chunk)
            if refused is not None:
                self.rejections[f"data:{refused}"] += 1
                continue
            try:
                await self.offload(store.add, tx.id, tx.author, chunk.x, chunk.y)
            except (StoreError, ValueError) as exc:  # e.g. disk full: fetched at a restart
                self.errors["adopt:store"] += 1
                log.warning("data chunk %s not stored: %s", tx.id[:16], exc)
                continue
            self.data_accepted += 1
            stored += 1
            try:  # the blocks are here: pinning is local
                await self.ipfs.pin(tx.payload["cid"])
                self.data_pinned[tx.payload["cid"]] = tx.payload["size"]
            except LearnaeError as exc:
                self.errors["adopt:pin"] += 1
                log.info("data chunk %s not pinned: %s", tx.id[:16], exc.reason)
        self._waiting = later
        return stored
