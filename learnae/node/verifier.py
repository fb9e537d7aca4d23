"""A trainer's spot checks of its peers' checkpoints, and the standings it merges by.

docs/design.md, "Verification". :class:`CheckpointVerifier` is part of a trainer's network side
(:class:`~learnae.node.network.NetworkSide`):

- :meth:`~CheckpointVerifier.consider` is shown every peer checkpoint the node learns of and
  queues those whose committee (:func:`learnae.verify.committee`) names this node;
- :meth:`~CheckpointVerifier.check` takes the newest queued checkpoint, fetches it and the
  checkpoints it names as its ``base``, checks its claims (:func:`~learnae.verify.claims_verdict`),
  then either replays it, when it is a replayable ``segment`` on public data
  (:func:`~learnae.verify.segment_rows`, :func:`~learnae.verify.replay_verdict`), or judges its
  effect on the validation set against the mix of its bases nearest to it
  (:func:`~learnae.verify.nearest_mix`, :func:`~learnae.verify.holdout_verdict`), and records the
  verdict in the ledger as a signed ``attestation`` that approves the checkpoint. Under the
  manifest's ``data_claims = "replay"`` a checkpoint that names data without a segment is
  disputed ``data-unreplayable``;
- :meth:`~CheckpointVerifier.refresh` derives every author's standing from the ledger's
  attestations (:func:`~learnae.verify.standings`), the same on every node holding the same
  ledger; :meth:`~CheckpointVerifier.flagged` says whose checkpoints the merge leaves out.

The model is evaluated by the driver's ``evaluate`` (validation losses of a set of weights,
in all and per class: :class:`~learnae.verify.HoldoutLoss`): a
Keras model on the swarm's public test split in ``learnae node run``, the numpy model in the
fault harness's memory driver. Segments are trained again by the driver's ``replay``
(:data:`Replay`): the numpy model's SGD in the memory driver; ``learnae node run`` has none
yet, so it leaves segments unchecked (``skipped["no-replay"]``).
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np

from learnae.errors import LearnaeError
from learnae.formats import Chunk
from learnae.identity import Identity
from learnae.ledger.reader import LedgerWriter
from learnae.ledger.tx import Tx, attestation_payload
from learnae.manifest import Manifest
from learnae.verify import (
    DISPUTE,
    RECENT_GAINS,
    HoldoutLoss,
    Standing,
    Verdict,
    claims_verdict,
    gain_bar,
    holdout_verdict,
    is_selected,
    nearest_mix,
    replay_verdict,
    segment_rows,
    standings,
)

__all__ = ["MAX_BASES", "MAX_QUEUED", "CheckpointVerifier", "Evaluate", "Fetch", "FetchData", "Replay"]

log = logging.getLogger("learnae.node")

MAX_QUEUED = 64
"""Selected checkpoints waiting for a check at most (the oldest are dropped first)."""
MAX_BASES = 16
"""Bases of a checkpoint a holdout check loads at most: the first named (the author's previous
checkpoint, then the peers merged since, in merge order). A checkpoint may name hundreds (a
node that merged every peer on stopping), and each base is a model's weights in memory. The
start of an update that merged more lies outside the mix of these 16, which makes the update
look better than it is, never worse: no honest member is disputed for it."""

Evaluate = Callable[[Mapping[str, np.ndarray]], HoldoutLoss]
"""Blocking: the validation losses of a set of weights (weight path -> array), in all and per class."""
Fetch = Callable[[Tx], Awaitable[Any]]
"""Fetch and decode the checkpoint a tx announces (a :class:`~learnae.merge.Contribution`)."""
FetchData = Callable[[Tx], Awaitable[Chunk]]
"""Fetch and decode the labelled chunk a ``data`` tx announces."""
Replay = Callable[[Mapping[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray], Mapping[str, np.ndarray]]
"""Blocking: ``replay(start, x, y, rows)`` trains ``start`` (weight path -> array) one batch per
row of ``rows`` ``(steps, batch_size)`` (indices into ``x`` ``(n, ...)``, ``y`` ``(n,)``), with
the manifest's optimizer and learning rate, as the segment's author did; returns the weights."""


class CheckpointVerifier:
    """Spot checks and standings for one trainer (see the module docstring).

    Args:
        sync: the node's ledger syncer (attestations are appended and gossiped through it).
        identity: the node's author key.
        manifest: the swarm's manifest (its ``verification`` parameters, its ``batch_size``).
        evaluate: validation losses of a set of weights (:data:`Evaluate`), run through
            ``offload``; None: this node checks nothing (it still derives the standings).
        fetch: fetches and decodes a checkpoint (:data:`Fetch`).
        fetch_data: fetches and decodes a data chunk (:data:`FetchData`); with ``replay``.
        replay: trains a segment again (:data:`Replay`); None: segments are not checked.
        offload: how blocking work leaves the event loop.
        clock: seconds since the Unix epoch (attestation times).
        rng: random generator for mining and tip selection.

    Attributes:
        checked: checkpoints checked; disputed: those disputed; by_code: verdict codes counted.
        recent_gains: the best class gains of the latest checkpoints judged, which set the
            bar the next one is held to (:func:`~learnae.verify.gain_bar`).
        skipped: checkpoints taken from the queue but not judged, by reason (the error code of
            a fetch that failed, ``first`` for a first checkpoint, ``diverged`` for bases whose
            losses cannot be compared, ``no-replay`` for a segment this node cannot train
            again).
        standing: author key -> :class:`~learnae.verify.Standing`, as of the last
            :meth:`refresh`.
    """

    def __init__(self, *, sync: LedgerWriter, identity: Identity, manifest: Manifest, evaluate: Evaluate | None,
                 fetch: Fetch, offload: Callable[..., Awaitable[Any]], clock: Callable[[], float],
                 rng: Any = None, fetch_data: FetchData | None = None, replay: Replay | None = None):
        self.sync, self.identity, self.manifest = sync, identity, manifest
        self.cfg = manifest.verification
        self.evaluate, self.fetch, self.offload = evaluate, fetch, offload
        self.fetch_data, self.replay = fetch_data, replay
        self.clock, self.rng = clock, rng
        self.queue: deque[Tx] = deque(maxlen=MAX_QUEUED)
        self.checked = 0
        self.disputed = 0
        self.by_code: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.recent_gains: deque[float] = deque(maxlen=RECENT_GAINS)
        self.standing: dict[bytes, Standing] = {}
        self._cursor = 0
        self._committees: dict[tuple[str, bytes], tuple[bytes, ...]] = {}  # standings' cache
        self._committee_candidates: set[bytes] = set()  # what it was computed for

    def candidates(self) -> list[bytes]:
        """Who may verify: every author with a checkpoint in the ledger, and this node.

        A node that has not published yet counts itself in, so its committees can differ
        from the others' until its first checkpoint arrives there.
        """
        authors = set(self.sync.tangle.latest_checkpoint_per_author())
        return [*authors, *({self.identity.public_key} - authors)]

    def consider(self, txs: list[Tx]) -> None:
        """Queue the peer checkpoints of ``txs`` whose committee names this node."""
        if self.evaluate is None or self.cfg.rate <= 0 or not txs:
            return
        me, candidates = self.identity.public_key, self.candidates()
        for tx in txs:
            if tx.author != me and is_selected(tx.id, tx.author, me, candidates, self.cfg):
                self.queue.append(tx)

    async def check(self) -> Verdict | None:
        """Check the newest queued checkpoint and publish the attestation; None if none could be.

        Newest first: authors keep only their last few checkpoints (``--keep``), so under a
        backlog the oldest queued ones are the likeliest to be gone, and each of those would
        cost a fetch timeout. A checkpoint, or all of its base, that cannot be fetched is not
        judged (no attestation: an unreachable author is not a liar); :attr:`skipped` counts it.
        """
        while self.queue:
            tx = self.queue.pop()
            try:
                verdict = await self._judge(tx)
            except LearnaeError as exc:
                log.info("cannot check checkpoint %s by %s: %s", tx.id[:16], tx.author.hex()[:12], exc.reason)
                self.skipped[exc.code] += 1
                continue
            except ValueError as exc:  # e.g. a base that diverged: no loss to compare with
                log.info("cannot judge checkpoint %s by %s: %s", tx.id[:16], tx.author.hex()[:12], exc)
                self.skipped["diverged"] += 1
                continue
            if verdict is None:
                continue
            payload = attestation_payload(checkpoint=tx.id, method=verdict.method, verdict=verdict.verdict,
                                          code=verdict.code, figures=verdict.figures)
            await self.sync.append(self.identity, "attestation", payload, approve=tx.id,
                                   time_ms=int(self.clock() * 1000), rng=self.rng)
            self.checked += 1
            self.by_code[verdict.code] += 1
            if verdict.verdict == "dispute":
                self.disputed += 1
                log.warning("disputed checkpoint %s by %s: %s %s", tx.id[:16], tx.author.hex()[:12],
                            verdict.code, verdict.figures)
            return verdict
        return None

    async def _judge(self, tx: Tx) -> Verdict | None:
        tangle = self.sync.tangle
        bases = [b for b in (tangle.get(t) for t in tx.links("base")) if b is not None]
        previous = next((b.payload["step"] for b in bases if b.author == tx.author), None)
        claims = claims_verdict(tx.payload["samples"], tx.payload["step"], previous, self.manifest.batch_size)
        if claims.verdict == "dispute":
            return claims
        segment = tx.payload.get("segment")
        if segment is None and tx.links("data") and self.cfg.data_claims == "replay":
            return Verdict("replay", DISPUTE, "data-unreplayable",
                           {**claims.figures, "data": float(len(tx.links("data")))})
        if not bases:
            self.skipped["first"] += 1  # nothing it claims to start from
            return None
        if segment is not None:
            verdict = await self._replay(tx, bases[0], segment)
            return None if verdict is None else verdict._replace(figures={**claims.figures, **verdict.figures})
        own = await self.fetch(tx)
        fetched, failed = [], Counter[str]()
        for base in bases[:MAX_BASES]:
            try:
                fetched.append(await self.fetch(base))
            except LearnaeError as exc:
                log.debug("base %s of %s: %s", base.id[:16], tx.id[:16], exc.reason)
                failed[f"base:{exc.code}"] += 1
        if not fetched:
            self.skipped.update(failed)
            return None
        start, mix = await self.offload(nearest_mix, own.weights, [c.weights for c in fetched])
        assert self.evaluate is not None  # consider() queues nothing without it
        at_base = await self.offload(self.evaluate, start)
        checked = await self.offload(self.evaluate, own.weights)
        verdict = holdout_verdict(at_base, checked, self.cfg, min_gain=gain_bar(self.recent_gains, self.cfg))
        if "class_gain" in verdict.figures:
            self.recent_gains.append(verdict.figures["class_gain"])
        return verdict._replace(figures={**claims.figures, **verdict.figures,
                                         "bases": float(len(fetched)), "mix_max": float(mix.max())})

    async def _replay(self, tx: Tx, start: Tx, segment: Mapping[str, int]) -> Verdict | None:
        """Train ``tx``'s segment again from ``start`` on its data; None if it cannot be."""
        if self.replay is None or self.fetch_data is None:
            self.skipped["no-replay"] += 1
            return None
        chunks = []
        for data_id in tx.links("data"):
            data_tx = self.sync.tangle.get(data_id)
            if data_tx is None:  # validation holds links to stored txs; a pruned one is gone
                self.skipped["data:missing"] += 1
                return None
            chunks.append(await self.fetch_data(data_tx))
        x = np.concatenate([c.x for c in chunks])
        y = np.concatenate([c.y for c in chunks])
        rows = segment_rows(segment["seed"], len(x), segment["steps"], self.manifest.batch_size)
        own, base = await self.fetch(tx), await self.fetch(start)
        replayed = await self.offload(self.replay, base.weights, x, y, rows)
        return replay_verdict(base.weights, own.weights, replayed)

    def refresh(self) -> bool:
        """Re-derive the standings if attestations arrived since the last call; whether they did."""
        tangle = self.sync.tangle
        new, self._cursor = tangle.attestations_since(self._cursor)
        if not new:
            return False
        candidates = self.candidates()
        if set(candidates) != self._committee_candidates:
            self._committees.clear()
            self._committee_candidates = set(candidates)
        self.standing = standings(tangle.attestations(figures=False), lambda _checkpoint: candidates, self.cfg,
                                  self._committees)
        return True

    def flagged(self, author: bytes) -> bool:
        """Whether ``author``'s standing is below the swarm's threshold."""
        s = self.standing.get(author)
        return s is not None and s.flagged

    def status(self) -> dict[str, Any]:
        """For ``/status``: counts (skipped checks by reason too), and the standings."""
        return {
            "checked": self.checked, "disputed": self.disputed, "queued": len(self.queue),
            "by_code": dict(self.by_code), "skipped": dict(self.skipped),
            "flagged": sorted(a.hex() for a, s in self.standing.items() if s.flagged),
            "standings": {a.hex(): round(s.score, 3) for a, s in self.standing.items()},
        }
