"""Which peer checkpoints a merge takes: :class:`PeerChoice`.

The freshest ``k``, one per author, none stale, with backoff from authors whose checkpoints
could not be used.

Bookkeeping only: no I/O and no clock (callers pass the times), so the node and the
simulator's nodes (:mod:`learnae.local.simulation`) rank peers by the same rule.
"""

from __future__ import annotations

import heapq
import random
from collections import OrderedDict
from operator import itemgetter

from learnae.errors import ConfigError
from learnae.ledger.tx import Tx

__all__ = ["BACKOFF", "MAX_BACKOFF", "MAX_PEER_AUTHORS", "PeerChoice"]

BACKOFF = 30.0  # seconds an author whose checkpoint could not be used is passed over (doubling)
MAX_BACKOFF = 1800.0  # the longest pass-over, seconds
MAX_PEER_AUTHORS = 4096  # authors the peer choice remembers (pending checkpoints; backoffs)


class PeerChoice:
    """Which peer checkpoints a merge fetches: up to ``k`` of the freshest, one per author.

    None stale, none by an author backing off. Bookkeeping only (no I/O, no clock: the caller
    gives the times, in ms since the epoch).

    Freshness is ``min(tx.time, arrival)``, ``arrival`` being when :meth:`add` saw the
    transaction. A transaction's ``time`` is what its author wrote, and validation accepts
    one up to :data:`~learnae.ledger.tx.MAX_FUTURE_MS` (10 minutes) ahead of the receiver's
    clock: ranked by it, checkpoints dated in the future would take the ``k`` places of every
    merge for minutes. Capped by arrival, they rank as if published when they arrived. Being
    ``stale`` is judged on freshness too. Equally fresh checkpoints are taken in random order
    (``rng``): otherwise the order in which they arrived would decide, the same authors would
    share every merge, and a group of liars announcing together could fill one.

    Backoff: an author whose checkpoint could not be used (:meth:`failed`: a fetch timeout or
    error, refused content) is passed over for ``backoff`` seconds, twice as long after each
    further failure, at most ``max_backoff``; its checkpoints stay pending meanwhile. A
    checkpoint of theirs that is merged (:meth:`succeeded`) clears it, as does a failure more
    than ``max_backoff`` after the previous pass-over ended. So an author announcing
    checkpoints nobody can fetch costs one fetch timeout, then ever rarer ones, instead of a
    place in every merge.

    Memory: at most ``max_authors`` pending checkpoints (the least fresh is dropped first) and
    ``max_authors`` backoff entries (the least recently failed is dropped first).

    Args:
        stale: seconds after which a checkpoint is too old to merge.
        backoff, max_backoff: seconds (see Backoff), ``0 < backoff <= max_backoff``.
        max_authors: authors remembered (>= 1).
        rng: breaks ties in freshness (None: a generator seeded by the system).

    Raises:
        ConfigError: the bounds are out of range.
    """

    def __init__(self, *, stale: float, backoff: float = BACKOFF, max_backoff: float = MAX_BACKOFF,
                 max_authors: int = MAX_PEER_AUTHORS, rng: random.Random | None = None):
        if not 0 < backoff <= max_backoff or max_authors < 1:
            raise ConfigError(f"peer choice: need 0 < backoff ({backoff}) <= max_backoff ({max_backoff})"
                              f" and max_authors ({max_authors}) >= 1")
        self.stale_ms = stale * 1000
        self.backoff_ms = backoff * 1000
        self.max_backoff_ms = max_backoff * 1000
        self.max_authors = max_authors
        self.rng = rng if rng is not None else random.Random()
        self._pending: dict[bytes, tuple[float, Tx]] = {}  # author -> (freshness, tx)
        self._backoff: OrderedDict[bytes, tuple[int, float]] = OrderedDict()  # author -> (failures, until)

    def __len__(self) -> int:
        """Pending checkpoints (one per author), backing off or not."""
        return len(self._pending)

    def add(self, tx: Tx, now_ms: float) -> None:
        """Take a peer's checkpoint ``tx``, seen at ``now_ms``, as its author's pending one.

        Unless the pending one is at least as fresh (then by ``step``): that one stays.
        """
        fresh = min(tx.time, now_ms)
        old = self._pending.get(tx.author)
        if old is not None and (old[0], old[1].payload.get("step", 0)) >= (fresh, tx.payload.get("step", 0)):
            return
        self._pending[tx.author] = (fresh, tx)
        if len(self._pending) > self.max_authors:
            del self._pending[min(self._pending, key=lambda a: self._pending[a][0])]

    def drop_stale(self, now_ms: float) -> int:
        """Forget the pending checkpoints older than ``stale``; returns how many."""
        old = [a for a, (fresh, _) in self._pending.items() if now_ms - fresh > self.stale_ms]
        for author in old:
            del self._pending[author]
        return len(old)

    def backing_off(self, author: bytes, now_ms: float) -> bool:
        """Whether ``author`` is passed over at ``now_ms``."""
        entry = self._backoff.get(author)
        return entry is not None and now_ms < entry[1]

    def backing_off_count(self, now_ms: float) -> int:
        """Authors passed over at ``now_ms``."""
        return sum(now_ms < until for _, until in self._backoff.values())

    def choose(self, k: int, now_ms: float, *, at_least: int = 1) -> list[Tx]:
        """Take up to ``k`` pending checkpoints, freshest first, by authors not backing off.

        Those backing off stay pending. None are taken if fewer than ``at_least`` are eligible.
        Among equally fresh ones that do not all fit, chance decides.
        """
        ready = [(fresh, tx) for a, (fresh, tx) in self._pending.items() if not self.backing_off(a, now_ms)]
        if len(ready) < at_least:
            return []
        top = heapq.nlargest(k, ready, key=itemgetter(0))  # O(pending log k): a swarm may be large
        if len(ready) > k and top:  # ties at the edge: drawn at random among all that tie
            edge = top[-1][0]
            above = [ft for ft in top if ft[0] > edge]
            tied = [ft for ft in ready if ft[0] == edge]
            top = above + self.rng.sample(tied, k - len(above))
        chosen = [tx for _, tx in top]
        for tx in chosen:
            del self._pending[tx.author]
        return chosen

    def failed(self, author: bytes, now_ms: float) -> float:
        """``author``'s checkpoint could not be used at ``now_ms``: pass it over for longer.

        Returns:
            Seconds it is passed over from ``now_ms``.
        """
        failures, until = self._backoff.pop(author, (0, float("-inf")))
        if now_ms > until + self.max_backoff_ms:  # long ago: start over
            failures = 0
        failures += 1
        wait = min(self.backoff_ms * 2 ** min(failures - 1, 30), self.max_backoff_ms)
        self._backoff[author] = (failures, now_ms + wait)
        while len(self._backoff) > self.max_authors:
            self._backoff.popitem(last=False)
        return wait / 1000

    def succeeded(self, author: bytes) -> None:
        """A checkpoint of ``author`` was merged: clear its backoff."""
        self._backoff.pop(author, None)
