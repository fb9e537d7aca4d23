"""One ledger shared by the simulated nodes of a large swarm: a store, and a view per node.

With ``ledger = "shared"`` the ``memory`` driver (:mod:`learnae.local.simulation`) gives each
node a :class:`LedgerView` of one :class:`SharedLedger` instead of a tangle and a syncer of its
own. Why: every node of a swarm holds every transaction, so N simulated nodes with tangles of
their own receive, check and store N x rounds transactions each, and the work grows with N^2
(1,000 nodes and 14 rounds: 14 M SQLite inserts a run). Here each transaction is checked and
stored once, and its arrival at a node is a byte and a list entry in that node's view.
docs/design.md, "Fault injection", says when to use which.

Real: the store (a :class:`~learnae.ledger.tangle.Tangle`: every transaction is validated as
gossip is, signature, proof of work, payload, parents, attestation rules), the transactions
(made, mined and signed by their authors on tips of their own view), and the node's network
side and spot checks, which read a view as a :class:`~learnae.ledger.reader.LedgerReader` and
append through a :class:`ViewSync` (a :class:`~learnae.ledger.reader.LedgerWriter`).

Modelled, in place of the syncer (:mod:`learnae.ledger.sync`):

- **Gossip.** A new transaction reaches the nodes its author reaches over live links at that
  moment (:meth:`~learnae.ipfs.memory.MemoryNetwork.spread`: partitions, down nodes, loss and
  delay rules), each after its fastest path's delay; a node closed or down when its copy
  arrives does not get it.
- **Gap repair.** A transaction arrives together with every ancestor the node lacks (its sender
  holds them, and a syncer asks for missing parents at once).
- **Anti-entropy.** Every ``announce_interval`` seconds (:meth:`SharedLedger.sweep`) each
  running node takes, from each peer over a live link, what that peer held when the sweep
  began: one hop per interval, as a tips announcement and its answer do.
- **Tip selection.** A view's parents are two of its tips drawn uniformly (URTS, Popov 2018,
  section 4), where a node's own tangle walks IOTA's MCMC walk over the transactions within
  15 heights of its top: in a swarm whose N nodes publish in the same instant that region holds
  about 15 N transactions, so the walk would cost every node O(N) per checkpoint.
- **Membership** is the whole store's roll (simulated swarms admit and revoke nobody).
- **Flooding.** Invalid transactions a Byzantine node gossips are checked by the store once
  and counted once (:meth:`SharedLedger.offer`), not once per receiver.

Not modelled: the syncer's budgets and message limits, pending buffers (a view's ``pending``
is always 0), snapshots and pruning.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from learnae.errors import LedgerError
from learnae.identity import Identity
from learnae.ipfs.memory import MemoryNetwork
from learnae.ledger.members import Roll, Rules
from learnae.ledger.tangle import Attestation, InsertResult, Tangle
from learnae.ledger.tx import Tx, make_tx, tx_id

__all__ = ["LedgerView", "SharedLedger", "ViewSync"]


class SharedLedger:
    """Every transaction of a simulated swarm, stored once, and each node's view of them.

    Args:
        path: the store's SQLite file.
        genesis_raw, pow_bits, max_tx_bytes: the swarm's, as for :class:`~learnae.ledger.tangle.Tangle`.
        net: the simulated network whose links carry gossip (:meth:`~learnae.ipfs.memory.MemoryNetwork.spread`).
        announce_interval: seconds between anti-entropy sweeps.
        clock_ms: the simulated clock, ms since the epoch (a new transaction's default time).

    Attributes:
        store: the store; its ``rejections`` count what it refused, once per transaction.
        txs: the stored transactions, in store order (parents before children); a transaction's
            place there is its index.
        published: transactions made through :meth:`append`.
    """

    def __init__(self, path: Path, *, genesis_raw: bytes, pow_bits: int, max_tx_bytes: int,
                 net: MemoryNetwork, announce_interval: float, clock_ms: Callable[[], int]):
        self.store = Tangle(path, genesis_raw=genesis_raw, pow_bits=pow_bits, max_tx_bytes=max_tx_bytes)
        self.net, self.announce_interval, self.clock_ms = net, announce_interval, clock_ms
        self.txs: list[Tx] = []
        self.index: dict[str, int] = {}
        self.parents: list[tuple[int, ...]] = []
        self.heights: list[int] = []
        self.attestation: dict[int, Attestation] = {}  # index of an attestation tx -> its row
        self.views: dict[str, LedgerView] = {}
        self.capacity = 4096  # every view's ``_held`` has this many bytes: one per possible index
        self.published = 0
        self._sweeper: asyncio.Task | None = None
        self._add(self.store.genesis)

    def _add(self, tx: Tx) -> int:
        i = len(self.txs)
        if i == self.capacity:
            self.capacity *= 2
            for view in self.views.values():
                view._held.extend(bytes(self.capacity - len(view._held)))
        parents = tuple(self.index[p] for p in tx.parents)
        self.txs.append(tx)
        self.index[tx.id] = i
        self.parents.append(parents)
        self.heights.append(1 + max((self.heights[p] for p in parents), default=-1))
        if tx.kind == "attestation":
            p = tx.payload
            judged = tx_id(p["checkpoint"])
            self.attestation[i] = Attestation(tx.id, i, tx.author, self.txs[self.index[judged]].author, judged,
                                              p["method"], p["verdict"], p["code"], p["figures"], tx.time)
        return i

    @property
    def counters(self) -> Counter[str]:
        """``published`` transactions and ``delivered`` copies (the views' arrivals but their own)."""
        arrived = sum(v.count() for v in self.views.values())
        return Counter(published=self.published, delivered=arrived - self.published - len(self.views))

    def view(self, name: str) -> LedgerView:
        """Node ``name``'s view, made (holding the genesis) on first use; reopened if closed."""
        view = self.views.get(name)
        if view is None:
            view = self.views[name] = LedgerView(self, name)
            view.receive(0)
        view.open = True
        return view

    def start(self) -> None:
        """Start the anti-entropy sweeps on the running loop (idempotent)."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def close(self) -> None:
        """Stop the sweeps and close the store."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        self.store.close()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.announce_interval)
            self.sweep()

    def append(self, view: LedgerView, identity: Identity, kind: str, payload: dict, *,
               time_ms: int | None = None, rng: random.Random | None = None, approve: str | None = None) -> Tx:
        """Make a transaction on ``view``'s tips, store it and gossip it from ``view``'s node.

        As :meth:`~learnae.ledger.tangle.Tangle.append` (``time_ms`` is raised to the latest
        parent's), with the parents drawn by :meth:`LedgerView.select_tips`.

        Raises:
            TxRejected: the store refused it.
            LedgerError: ``approve`` is not in the view.
        """
        parents = view.select_tips(rng or random.Random(), approve)
        now = self.clock_ms() if time_ms is None else time_ms
        latest = max(self.txs[self.index[p]].time for p in parents)
        tx = make_tx(identity, kind=kind, payload=payload, parents=parents, swarm=self.store.swarm,
                     pow_bits=self.store.pow_bits, time_ms=max(now, latest))
        result = self.store.insert(tx)
        if result.error is not None:
            raise result.error
        i = self._add(tx)
        view.receive(i)
        self.published += 1
        self._gossip(view.name, i)
        return tx

    def offer(self, raws: Iterable[bytes]) -> list[InsertResult]:
        """Transactions gossiped as bytes (a flood's): the store checks each once.

        Valid ones are stored but reach no view (a flood of valid transactions is not
        modelled). Returns the store's results.
        """
        return self.store.insert_many(list(raws))

    def _gossip(self, name: str, i: int) -> None:
        later: dict[float, list[str]] = defaultdict(list)
        for peer, t in self.net.spread(name):
            if peer != name:
                later[t].append(peer)
        loop = asyncio.get_running_loop()
        for t, peers in later.items():
            if t > 0:
                loop.call_later(t, self._deliver, peers, i)
            else:
                self._deliver(peers, i, now=True)

    def _deliver(self, peers: list[str], i: int, now: bool = False) -> None:
        """Hand the transaction of index ``i`` to the views ``peers`` that are open and up.

        ``now``: in the instant :meth:`~learnae.ipfs.memory.MemoryNetwork.spread` found them up.
        """
        views, is_up = self.views, self.net.is_up
        for peer in peers:
            view = views.get(peer)
            if view is not None and view.open and (now or is_up(peer)):
                view.receive(i)

    def lacking(self, ids: list[str], names: Iterable[str]) -> set[str]:
        """The ``ids`` that one or more of the views ``names`` do not hold (or nobody does)."""
        total = len(self.txs)
        where = np.array([self.index.get(i, -1) for i in ids], dtype=np.int64)
        lack = where < 0
        for name in names:
            lack |= ~self.views[name].held_array(total)[where]
        return {i for i, bad in zip(ids, lack.tolist(), strict=True) if bad}

    def sweep(self) -> int:
        """One anti-entropy round: each running node takes what its live peers held at its start.

        Returns:
            Transactions delivered.
        """
        total, net = len(self.txs), self.net
        up = [v for v in self.views.values() if v.open and net.is_up(v.name)]
        held = {v.name: v.held_array(total) for v in up}
        delivered = 0
        for view in up:
            want = np.zeros(total, dtype=bool)
            for peer in net.neighbours(view.name):
                if peer in held:
                    want |= held[peer]
            for i in np.flatnonzero(want & ~held[view.name]).tolist():  # store order: parents first
                delivered += view.receive(i)
        return delivered


class LedgerView:
    """What one simulated node holds of a :class:`SharedLedger`: a :class:`~learnae.ledger.reader.LedgerReader`.

    Also what the simulation reads of a node's tangle (``count``, ``tips``, ``pending``,
    ``verify``, ``rejections``, ``close``). Cursors count the view's arrivals.
    """

    def __init__(self, ledger: SharedLedger, name: str):
        self.ledger, self.name = ledger, name
        self.open = True
        self.rejections: Counter[str] = Counter()  # the store counts refusals, once for all views
        self._held = bytearray(ledger.capacity)  # by index: 1 if the view holds the transaction
        self._arrivals: list[int] = []  # indexes, in arrival order
        self._tips: set[int] = set()
        self._latest: dict[bytes, tuple[tuple[int, int, str], int]] = {}  # author -> (key, index)

    # -- arrivals ----------------------------------------------------------------------------------
    def holds(self, i: int) -> bool:
        """Whether the view holds the transaction of index ``i``."""
        return self._held[i] == 1

    def receive(self, i: int) -> int:
        """Take the transaction of index ``i`` and every ancestor not held yet; returns how many."""
        held = self._held
        if held[i]:
            return 0
        parents = self.ledger.parents[i]
        for p in parents:
            if not held[p]:
                break
        else:  # the usual case: its parents are here
            self._take(i, parents)
            return 1
        missing, stack = {i}, [i]
        while stack:
            for p in self.ledger.parents[stack.pop()]:
                if p not in missing and not held[p]:
                    missing.add(p)
                    stack.append(p)
        for j in sorted(missing):  # store order: parents first
            self._take(j, self.ledger.parents[j])
        return len(missing)

    def _take(self, i: int, parents: tuple[int, ...]) -> None:
        self._held[i] = 1
        self._arrivals.append(i)
        tips = self._tips
        for p in parents:
            tips.discard(p)
        tips.add(i)
        tx = self.ledger.txs[i]
        if tx.kind == "checkpoint":
            key = (tx.time, self.ledger.heights[i], tx.id)
            latest = self._latest.get(tx.author)
            if latest is None or key > latest[0]:
                self._latest[tx.author] = (key, i)

    def held_array(self, total: int) -> np.ndarray:
        """A copy of what the view holds among the first ``total`` indexes, as booleans."""
        return np.frombuffer(self._held[:total], dtype=np.bool_)

    def select_tips(self, rng: random.Random, approve: str | None = None) -> list[str]:
        """Parents for a new transaction: two tips drawn uniformly, or ``approve`` and one other.

        Raises:
            LedgerError: ``approve`` is not held.
        """
        txs, tips = self.ledger.txs, sorted(self._tips)
        if approve is None:
            return [txs[i].id for i in (tips if len(tips) <= 2 else rng.sample(tips, 2))]
        i = self.ledger.index.get(approve)
        if i is None or not self.holds(i):
            raise LedgerError(f"cannot approve {approve}: it is not in this ledger (wait until it is stored)")
        others = [t for t in tips if t != i]
        return [approve, *([txs[rng.choice(others)].id] if others else [])]

    # -- LedgerReader ------------------------------------------------------------------------------
    @property
    def swarm(self) -> str:
        """The genesis id."""
        return self.ledger.store.swarm

    @property
    def rules(self) -> Rules:
        """The swarm's membership rules."""
        return self.ledger.store.rules

    def __contains__(self, tx_id: object) -> bool:
        i = self.ledger.index.get(tx_id) if isinstance(tx_id, str) else None
        return i is not None and self._held[i] == 1

    def get(self, tx_id: str) -> Tx | None:
        """The transaction if the view holds it."""
        i = self.ledger.index.get(tx_id)
        return self.ledger.txs[i] if i is not None and self._held[i] else None

    def roll(self) -> Roll:
        """The store's roll (see the module docstring)."""
        return self.ledger.store.roll()

    def latest_checkpoint_per_author(self) -> dict[bytes, Tx]:
        """Each author's latest held checkpoint: greatest (time, height, id)."""
        txs = self.ledger.txs
        return {author: txs[i] for author, (_, i) in self._latest.items()}

    def _since(self, cursor: int, kind: str) -> tuple[list[Tx], int]:
        txs = self.ledger.txs
        return [txs[i] for i in self._arrivals[cursor:] if txs[i].kind == kind], len(self._arrivals)

    def checkpoints_since(self, cursor: int = 0) -> tuple[list[Tx], int]:
        """Checkpoint transactions that arrived after ``cursor``; the next cursor."""
        return self._since(cursor, "checkpoint")

    def data_since(self, cursor: int = 0) -> tuple[list[Tx], int]:
        """Data transactions that arrived after ``cursor``; the next cursor."""
        return self._since(cursor, "data")

    def attestations_since(self, cursor: int = 0) -> tuple[list[Attestation], int]:
        """Attestations that arrived after ``cursor``; the next cursor."""
        rows = self.ledger.attestation
        return [rows[i] for i in self._arrivals[cursor:] if i in rows], len(self._arrivals)

    def attestations(self, subject: bytes | None = None, *, figures: bool = True) -> list[Attestation]:
        """Held attestations (of ``subject``'s checkpoints), ordered by (height, id); always with figures."""
        ledger = self.ledger
        found = [(ledger.heights[i], a.tx, a) for i, a in ledger.attestation.items()
                 if self.holds(i) and (subject is None or a.subject == subject)]
        return [a for _, _, a in sorted(found)]

    # -- what the simulation reads ----------------------------------------------------------------
    def count(self) -> int:
        """Transactions held."""
        return len(self._arrivals)

    @property
    def pending(self) -> int:
        """Always 0: transactions arrive with their ancestors."""
        return 0

    def tips(self) -> list[str]:
        """Ids of the held transactions no held one approves, sorted."""
        return sorted(self.ledger.txs[i].id for i in self._tips)

    def verify(self) -> list[str]:
        """The store's :meth:`~learnae.ledger.tangle.Tangle.verify` (a view is a subset of it)."""
        return self.ledger.store.verify()

    def close(self) -> None:
        """A crash: the view stops taking transactions until :meth:`SharedLedger.view` reopens it."""
        self.open = False


class ViewSync:
    """A node's :class:`~learnae.ledger.reader.LedgerWriter` on a :class:`SharedLedger`.

    ``newcomer`` and ``newcomer_rate`` are kept but not applied (the syncer's budgets are not
    modelled); ``start`` and ``stop`` do nothing (the ledger's sweeps serve every view).
    """

    def __init__(self, ledger: SharedLedger, view: LedgerView):
        self.ledger, self.tangle = ledger, view
        self.newcomer: Callable[[bytes], bool] | None = None
        self.newcomer_rate = 0.0

    async def append(self, identity: Identity, kind: str, payload: dict, *,
                     time_ms: int | None = None, rng: random.Random | None = None,
                     approve: str | None = None) -> Tx:
        """:meth:`SharedLedger.append` on this node's view."""
        return self.ledger.append(self.tangle, identity, kind, payload, time_ms=time_ms, rng=rng, approve=approve)

    async def start(self) -> None:
        """Nothing to start."""

    async def stop(self) -> None:
        """Nothing to stop."""
