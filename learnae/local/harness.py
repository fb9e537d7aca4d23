"""The fault-injection harness, ``memory`` driver: a simulated swarm under a scenario's faults.

``run_scenario(scenario, out)`` runs the scenario twice with the same seed, once with its
timeline of faults and once without (the no-fault reference), checks the invariants, and
writes ``report.json`` and ``timeline.png`` to ``out``.

What is real and what is simulated:

- Real: the tangle (one SQLite file per node, WAL), transactions (signed, mined), the
  syncer (:class:`~learnae.ledger.sync.TangleSync`: gossip, gap repair, anti-entropy),
  content CIDs, safetensors checkpoints and chunks with their validation, and the merge
  rules of :mod:`learnae.merge`.
- Simulated: the network (:class:`~learnae.ipfs.memory.MemoryNetwork`, whose partition,
  loss, delay and down rules carry the faults) and time. Everything runs on a
  virtual-clock asyncio loop (:class:`VirtualClockLoop`): ``sleep``, timeouts and link
  delays advance a simulated clock instead of waiting, so a run takes the CPU time it needs,
  not the simulated duration, and is reproducible from the seed (all randomness comes from
  generators seeded from it; transaction times come from the simulated clock).
- The model: the memory driver trains a small numpy model, softmax regression (dense layer
  ``dense/kernel`` of shape ``(features, classes)`` and ``dense/bias``) by minibatch SGD, so
  a hundred nodes fit on two cores. The ``processes`` driver (:mod:`learnae.local.procdriver`)
  runs real node processes with the manifest's Keras model.
- Rounds: each round (``round_seconds`` simulated seconds) every live trainer trains
  ``local_steps`` batches and publishes a checkpoint (IPFS add + ``checkpoint`` transaction +
  gossip), every live sensor publishes one data chunk; half a round later each live honest
  trainer fetches up to ``peers_per_merge`` peers' latest checkpoints (announced within the
  last two rounds: older ones are stale) by CID (with
  ``fetch_timeout``), merges them with the scenario's rule, adopts new sensor chunks, and its
  accuracy on the common test split is recorded. The real node loop is asynchronous; the
  rounds only schedule the simulation.
- Crash: the node's syncer stops and its memory IPFS node closes (it leaves the network);
  its SQLite tangle is closed and kept, as is its pinned content (a Kubo repo is on disk).
  Restart: a new memory node with the same name and pins, the tangle reopened from its file,
  a new syncer, the model reloaded from the node's latest own checkpoint. (In one process a
  SIGKILL cannot be imitated exactly; the ``processes`` driver sends real ones.)

Invariants (each with its measured figure and its bound, see :func:`check_invariants`):

``ledger_converges``        seconds (simulated) from the recovery point (the start of the
                            round in which the last fault has ended; 0 if none ends) until every
                            live node holds the same transactions and tips (``in_step``), the
                            transactions published at the start of that round included,
                            bound ``converge_seconds``; a final in-step check after a drain
                            period is part of it.
``no_acknowledged_tx_lost``  transactions appended by an honest live node or sensor (before a
                            crash included) missing from some live node's tangle at the end, or
                            from the node's own reopened tangle at a restart; bound 0.
``content_fetchable``       share of the CIDs announced by honest live authors that a random
                            live node fetches at the end; bound 1.0.
``accuracy_recovers``       (scenarios with non-Byzantine faults) the most merges any live
                            honest node needed after the recovery point to reach
                            ``recovery_ratio`` x the reference run's final mean accuracy; bound
                            ``recovery_merges``.
``byzantine_resistance``    (scenarios with Byzantine nodes) the lowest final accuracy of a live
                            honest node divided by the reference run's final mean accuracy;
                            bound ``byzantine_ratio``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import random
import selectors
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from learnae.content import content_id
from learnae.errors import IpfsError, LearnaeError
from learnae.formats import (
    Checkpoint,
    Chunk,
    decode_checkpoint,
    decode_chunk,
    encode_checkpoint,
    encode_chunk,
)
from learnae.identity import Identity
from learnae.ipfs.memory import MemoryNetwork, MemoryNode
from learnae.ledger.sync import TangleSync, encode_message
from learnae.ledger.tangle import Tangle
from learnae.ledger.tx import checkpoint_payload, data_payload, make_tx
from learnae.local.converge import in_step
from learnae.local.results import SimResult
from learnae.local.scenario import Fault, Scenario
from learnae.merge import Contribution, merge

__all__ = ["VirtualClockLoop", "check_invariants", "run_scenario", "simulate", "write_timeline"]

log = logging.getLogger(__name__)

EPOCH_MS = 1_700_000_000_000
"""Transaction time of simulated second 0 (ms since the Unix epoch, in the past)."""
MAX_CHECKPOINT_BYTES = 1 << 20
MAX_CHUNK_BYTES = 1 << 20
MAX_TX_BYTES = 4096
_DATA_PER_MERGE = 8  # sensor chunks a trainer adopts per round at most
_STALE_ROUNDS = 2  # peer checkpoints older than this many rounds are not merged (docs/design.md "Node loop": not stale)


# ------------------------------------------------------------------------ virtual clock
class _VirtualSelector(selectors.DefaultSelector):
    """A selector that never blocks: a wait of ``timeout`` seconds advances the virtual clock."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None):
        ready = super().select(0)
        if not ready and timeout:
            self.now += timeout
        return ready


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on simulated time: ``loop.time()`` starts at 0 and jumps to the next
    scheduled callback whenever nothing is ready, so ``asyncio.sleep(60)`` returns at once
    with the clock 60 s later. Only for code that waits on the loop alone (no threads, no
    sockets): the memory network and the syncer."""

    def __init__(self) -> None:
        self._virtual = _VirtualSelector()
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now


# ------------------------------------------------------------------------------- model
def _softmax_train(w: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, steps: int, batch: int,
                   lr: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``steps`` minibatch SGD steps of softmax regression (cross-entropy); returns new weights."""
    kernel = w["dense/kernel"].astype(np.float64)
    bias = w["dense/bias"].astype(np.float64)
    for _ in range(steps):
        rows = rng.integers(0, len(x), size=min(batch, len(x)))
        xb, yb = x[rows].astype(np.float64), y[rows]
        logits = xb @ kernel + bias
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(yb)), yb] -= 1.0
        kernel -= lr * (xb.T @ p) / len(yb)
        bias -= lr * p.mean(axis=0)
    return {"dense/kernel": kernel.astype(np.float32), "dense/bias": bias.astype(np.float32)}


def _accuracy(w: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    pred = np.argmax(x @ w["dense/kernel"] + w["dense/bias"], axis=1)
    return float(np.mean(pred == y))


# ------------------------------------------------------------------------------- nodes
@dataclass
class _Node:
    name: str
    sensor: bool
    identity: Identity
    path: Path
    neighbours: list[str]
    rng: random.Random
    np_rng: np.random.Generator
    x: np.ndarray
    y: np.ndarray
    ipfs: MemoryNode | None = None
    tangle: Tangle | None = None
    sync: TangleSync | None = None
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    step: int = 0
    seq: int = 0  # sensor chunks made
    acked: list[str] = field(default_factory=list)
    pins: dict[str, bytes] = field(default_factory=dict)  # the "repo on disk" across crashes
    first_ckpt: tuple[str, int] | None = None
    seen_data: set[str] = field(default_factory=set)
    merges: int = 0
    accuracy: dict[int, float] = field(default_factory=dict)  # round -> accuracy after its merge

    @property
    def alive(self) -> bool:
        return self.ipfs is not None


def _identity(seed: int, name: str) -> Identity:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Identity(Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"learnae-faults/{seed}/{name}".encode()).digest()))


def _sub_seed(seed: int, *parts: object) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, (seed, *parts))).encode()).digest()[:8], "big")


def _load_data(scn: Scenario):
    from learnae.training.data import Scaler, assign_shards, load_dataset, split

    ds = load_dataset(scn.dataset)
    train, test = split(ds, 0.2, scn.seed)
    if scn.dataset != "digits":
        scaler = Scaler.fit(train)
        train, test = scaler.apply(train), scaler.apply(test)
    where = assign_shards(train.y, scn.nodes + scn.sensors, scn.partition, scn.seed, train.classes)
    shards = [train.take(np.flatnonzero(where == i), f"shard-{i}") for i in range(scn.nodes + scn.sensors)]
    return train, test, shards


# ---------------------------------------------------------------------------- simulation
class _Sim:
    def __init__(self, scn: Scenario, workdir: Path, with_faults: bool):
        self.scn = scn
        self.workdir = workdir
        self.faults = scn.faults if with_faults else ()
        self.byz = {n: f for f in self.faults if f.kind == "byzantine" for n in f.nodes}
        self.net = MemoryNetwork(seed=_sub_seed(scn.seed, "net"))
        self.loop = asyncio.get_running_loop()
        self.nodes: dict[str, _Node] = {}
        self.restart_missing: list[str] = []
        self.ledger_size: list[float] = []
        self.first_in_step: float | None = None
        self.recovery_time = scn.recovery_round() * scn.round_seconds if self.faults else 0.0

    # -- setup ---------------------------------------------------------------------------------
    async def setup(self) -> None:
        scn = self.scn
        train, self.test, shards = _load_data(scn)
        self.schema = train.schema()
        founder = _identity(scn.seed, "genesis")
        self.genesis = make_tx(founder, kind="genesis", payload={"name": scn.name, "merge": scn.merge},
                               parents=[], swarm=None, pow_bits=scn.pow_bits, time_ms=EPOCH_MS)
        features, classes = train.x.shape[1], train.classes
        init = np.random.default_rng(_sub_seed(scn.seed, "init"))
        self.init_weights = {
            "dense/kernel": (init.standard_normal((features, classes)) * 0.01).astype(np.float32),
            "dense/bias": np.zeros(classes, dtype=np.float32),
        }
        self.expect = {k: (v.shape, str(v.dtype)) for k, v in self.init_weights.items()}
        topo = random.Random(_sub_seed(scn.seed, "topology"))
        names = scn.node_names + scn.sensor_names
        for i, name in enumerate(names):
            sensor = i >= scn.nodes
            pool = names[:i] if not sensor else scn.node_names
            neighbours = topo.sample(pool, min(scn.degree, len(pool)))
            shard = shards[i]
            node = _Node(name, sensor, _identity(scn.seed, name), self.workdir / f"{name}.db", neighbours,
                         random.Random(_sub_seed(scn.seed, name)), np.random.default_rng(_sub_seed(scn.seed, name, "np")),
                         shard.x, shard.y)
            node.weights = {k: v.copy() for k, v in self.init_weights.items()}
            node.tangle = Tangle(node.path, genesis_raw=self.genesis.raw, pow_bits=scn.pow_bits,
                                 max_tx_bytes=MAX_TX_BYTES)
            self.nodes[name] = node
        for node in self.nodes.values():
            await self._start(node, reopen=False)
        self.sensor_keys = {self.nodes[s].identity.public_key for s in scn.sensor_names}

    async def _start(self, node: _Node, reopen: bool) -> None:
        node.ipfs = self.net.node(node.name)
        for data in node.pins.values():
            await node.ipfs.add(data)
        if reopen:
            node.tangle = Tangle(node.path)
            missing = [i for i in node.acked if i not in node.tangle]
            self.restart_missing += [f"{node.name}:{i}" for i in missing]
        for peer in node.neighbours:
            other = self.nodes[peer]
            if other.alive:
                try:
                    await node.ipfs.connect(f"/memory/{peer}/p2p/{peer}")
                except IpfsError:
                    pass  # partitioned or down: the link comes back with heal/up
        # Nodes opened later connect to it from their side when they start.
        node.sync = TangleSync(node.tangle, node.ipfs, announce_interval=self.scn.announce_interval,
                               rng=random.Random(_sub_seed(self.scn.seed, node.name, "sync", len(node.acked))))
        await node.sync.start()
        if reopen and not node.sensor:
            await self._reload_model(node)

    async def _reload_model(self, node: _Node) -> None:
        own = node.tangle.latest_checkpoint_per_author().get(node.identity.public_key)
        if own is None:
            return
        try:
            raw = await node.ipfs.cat(own.payload["cid"], timeout=self.scn.fetch_timeout)
            ckpt = decode_checkpoint(raw, max_bytes=MAX_CHECKPOINT_BYTES, expect=self.expect,
                                     genesis=self.genesis.id)
            node.weights, node.step = ckpt.weights, ckpt.step
        except LearnaeError as exc:
            log.info("%s: could not reload its checkpoint: %s", node.name, exc)

    async def crash(self, node: _Node) -> None:
        await node.sync.stop()
        await node.ipfs.close()
        node.tangle.close()
        node.ipfs = node.sync = node.tangle = None

    async def close(self) -> None:
        for node in self.nodes.values():
            if node.alive:
                await self.crash(node)

    # -- faults --------------------------------------------------------------------------------
    async def apply_faults(self, r: int) -> None:
        for f in self.faults:
            if f.at == r:
                await self._begin(f)
            if f.until == r:
                self._end(f)

    async def _begin(self, f: Fault) -> None:
        net = self.net
        if f.kind == "partition":
            net.partition(*[list(g) for g in f.groups])
        elif f.kind == "heal":
            net.heal()
        elif f.kind == "crash":
            await self.crash(self.nodes[f.nodes[0]])
        elif f.kind == "restart":
            await self._start(self.nodes[f.nodes[0]], reopen=True)
        elif f.kind == "loss":
            net.set_loss(f.p, *(f.nodes[:1] or (None,)))
        elif f.kind == "delay":
            net.set_delay(f.ms, *(f.nodes[:1] or (None,)))
        elif f.kind == "sensor-offline":
            net.down(f.nodes[0])

    def _end(self, f: Fault) -> None:
        net = self.net
        if f.kind == "loss":
            net.set_loss(0.0, *(f.nodes[:1] or (None,)))
        elif f.kind == "delay":
            net.set_delay(0.0, *(f.nodes[:1] or (None,)))
        elif f.kind == "sensor-offline" and self.nodes[f.nodes[0]].alive:
            net.up(f.nodes[0])

    def behaviour(self, node: _Node, r: int) -> Fault | None:
        f = self.byz.get(node.name)
        if f is not None and f.at <= r and (f.until is None or r < f.until):
            return f
        return None

    # -- one round -----------------------------------------------------------------------------
    def _time_ms(self) -> int:
        return EPOCH_MS + int(self.loop.time() * 1000)

    async def _append(self, node: _Node, kind: str, payload: dict) -> None:
        tx = await node.sync.append(node.identity, kind, payload, time_ms=self._time_ms(), rng=node.rng)
        node.acked.append(tx.id)

    async def publish(self, node: _Node, r: int) -> None:
        scn = self.scn
        if node.sensor:
            await self._publish_chunk(node)
            return
        node.weights = _softmax_train(node.weights, node.x, node.y, scn.local_steps, scn.batch_size,
                                      scn.learning_rate, node.np_rng)
        node.step += scn.local_steps
        bad = self.behaviour(node, r)
        weights = node.weights
        if bad is not None and bad.behaviour == "sign-flip":
            weights = {k: -v for k, v in weights.items()}
        elif bad is not None and bad.behaviour == "noise":
            weights = {k: (v + node.np_rng.normal(0.0, bad.sigma, v.shape)).astype(np.float32)
                       for k, v in weights.items()}
        elif bad is not None and bad.behaviour == "scale":
            weights = {k: v * np.float32(100.0) for k, v in weights.items()}
        samples = scn.local_steps * scn.batch_size
        data = encode_checkpoint(Checkpoint(weights, self.genesis.id, node.step, samples))
        if bad is not None and bad.behaviour == "fake-cid":
            cid, size = content_id(node.rng.randbytes(len(data))), len(data)  # nobody has these bytes
        elif bad is not None and bad.behaviour == "stale" and node.first_ckpt is not None:
            cid, size = node.first_ckpt
        else:
            cid, size = await node.ipfs.add(data), len(data)
            node.pins[cid] = data
        if node.first_ckpt is None:
            node.first_ckpt = (cid, size)
        metrics = {"accuracy": _accuracy(node.weights, node.x, node.y)}
        await self._append(node, "checkpoint", checkpoint_payload(cid=cid, size=size, step=node.step,
                                                                  samples=samples, base=[], data=[], metrics=metrics))
        if bad is not None and bad.behaviour == "flood":
            await self._flood(node, bad.count)

    async def _flood(self, node: _Node, count: int) -> None:
        """Gossip ``count`` invalid transactions: garbage bytes and forged signatures."""
        own = node.tangle.get(node.acked[-1]).raw
        junk = []
        for k in range(count):
            if k % 2:
                forged = bytearray(own)
                forged[-1] ^= 0xFF
                junk.append(bytes(forged))
            else:
                junk.append(node.rng.randbytes(200))
        for k in range(0, count, 10):
            await node.ipfs.publish(node.sync.topic, encode_message("tx", txs=junk[k:k + 10]))

    async def _publish_chunk(self, node: _Node) -> None:
        rows = self.scn.chunk_rows
        start = (node.seq * rows) % max(1, len(node.x))
        take = np.arange(start, start + rows) % len(node.x)
        t = self._time_ms()
        chunk = Chunk(node.x[take], node.y[take], self.schema, node.name, node.seq, (t - 1000, t))
        data = encode_chunk(chunk)
        cid = await node.ipfs.add(data)
        node.pins[cid] = data
        await self._append(node, "data", data_payload(cid=cid, size=len(data), rows=rows,
                                                      schema=self.schema.to_dict(), source=node.name,
                                                      seq=node.seq))
        node.seq += 1

    async def merge(self, node: _Node, r: int) -> None:
        scn = self.scn
        if self.byz.get(node.name) is None:
            await self._adopt_data(node)
            latest = node.tangle.latest_checkpoint_per_author()
            fresh_after = self._time_ms() - int(_STALE_ROUNDS * scn.round_seconds * 1000)
            authors = sorted(a for a, tx in latest.items()
                             if a != node.identity.public_key and tx.time >= fresh_after)
            chosen = node.rng.sample(authors, min(scn.peers_per_merge, len(authors)))
            fetched = await asyncio.gather(*(self._fetch(node, latest[a]) for a in chosen))
            peers = [Contribution(c.weights, samples=c.samples, age=c.step, author=a.hex())
                     for a, c in zip(chosen, fetched, strict=True) if c is not None]
            own = Contribution(node.weights, samples=scn.local_steps * scn.batch_size, age=node.step,
                               author=node.identity.public_key.hex())
            node.weights = merge(scn.merge, own, peers, **scn.merge_params).weights
            node.merges += 1
        node.accuracy[r] = _accuracy(node.weights, self.test.x, self.test.y)

    async def _fetch(self, node: _Node, tx) -> Checkpoint | None:
        try:
            raw = await node.ipfs.cat(tx.payload["cid"], timeout=self.scn.fetch_timeout,
                                      max_size=MAX_CHECKPOINT_BYTES)
            return decode_checkpoint(raw, max_bytes=MAX_CHECKPOINT_BYTES, expect=self.expect,
                                     genesis=self.genesis.id)
        except LearnaeError:
            return None

    async def _adopt_data(self, node: _Node) -> None:
        new = [tx for key in sorted(self.sensor_keys) for tx in node.tangle.data_by_author(key)
               if tx.id not in node.seen_data][:_DATA_PER_MERGE]
        for tx in new:
            try:
                raw = await node.ipfs.cat(tx.payload["cid"], timeout=self.scn.fetch_timeout,
                                          max_size=MAX_CHUNK_BYTES)
                chunk = decode_chunk(raw, max_bytes=MAX_CHUNK_BYTES, schema=self.schema)
            except LearnaeError:
                continue  # not reachable now: try again next round
            node.seen_data.add(tx.id)
            node.x = np.concatenate([node.x, chunk.x])
            node.y = np.concatenate([node.y, chunk.y])

    # -- observation ---------------------------------------------------------------------------
    def live(self) -> list[_Node]:
        return [n for n in self.nodes.values() if n.alive and not n.ipfs._down]

    async def watch(self) -> None:
        """Record the first moment after the recovery point when every live tangle is in step
        (started by :meth:`run` once the recovery round's faults are applied)."""
        while True:
            live = self.live()
            if live and in_step([n.tangle for n in live]):
                self.first_in_step = self.loop.time()
                return
            await asyncio.sleep(0.1)

    async def run(self) -> None:
        scn = self.scn
        watcher: asyncio.Task | None = None
        start = round(self.recovery_time / scn.round_seconds)
        for r in range(scn.rounds):
            await asyncio.sleep(max(0.0, r * scn.round_seconds - self.loop.time()))
            await self.apply_faults(r)
            await asyncio.gather(*(self.publish(n, r) for n in self.nodes.values() if n.alive))
            if r == start:  # watch once this round's transactions are out: they must arrive too
                watcher = asyncio.create_task(self.watch())
            await asyncio.sleep(scn.round_seconds / 2)
            await asyncio.gather(*(self.merge(n, r) for n in self.nodes.values() if n.alive and not n.sensor))
            live = self.live()
            self.ledger_size.append(float(np.mean([n.tangle.count() for n in live])) if live else 0.0)
        # Drain: nothing new is published; the ledgers get the bound to come into step.
        end = scn.rounds * scn.round_seconds
        deadline = max(end, self.recovery_time + scn.bounds["converge_seconds"])
        if watcher is None:  # a fault ends at `rounds`: end it after the last round
            await asyncio.sleep(max(0.0, scn.rounds * scn.round_seconds - self.loop.time()))
            await self.apply_faults(scn.rounds)
            watcher = asyncio.create_task(self.watch())
        while not watcher.done() and self.loop.time() < deadline:
            await asyncio.sleep(0.1)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        self.final_in_step = bool(self.live()) and in_step([n.tangle for n in self.live()])

    async def check_end(self) -> dict[str, Any]:
        live = self.live()
        honest_authors = [n for n in self.nodes.values() if n.name not in self.byz]
        acked = [(n.name, i) for n in honest_authors if n.alive for i in n.acked]
        missing = sorted({f"{name}:{i}" for name, i in acked for m in live if i not in m.tangle})
        # Content: every CID announced by a live honest author, fetched by a random live node.
        keys = {n.identity.public_key: n for n in self.nodes.values()}
        cids: dict[str, str] = {}
        excluded = 0
        if live:
            for tx_id in live[0].tangle.order():
                tx = live[0].tangle.get(tx_id)
                if tx.kind not in ("checkpoint", "data"):
                    continue
                author = keys.get(tx.author)
                if author is None or author.name in self.byz or not author.alive:
                    excluded += 1
                    continue
                cids.setdefault(tx.payload["cid"], tx_id)
        rng = random.Random(_sub_seed(self.scn.seed, "fetch"))
        fetch_missing = []
        for cid in cids:
            fetcher = rng.choice(live)
            try:
                await fetcher.ipfs.cat(cid, timeout=self.scn.fetch_timeout)
            except LearnaeError:
                fetch_missing.append(cid)
        problems = live[0].tangle.verify() if live else []
        rejections: dict[str, int] = {}
        for n in live:
            for code, count in n.tangle.rejections.items():
                rejections[code] = rejections.get(code, 0) + count
        return {"acked_missing": missing, "acked_checked": len(acked), "fetch_checked": len(cids),
                "fetch_missing": fetch_missing, "fetch_excluded": excluded, "verify_problems": problems,
                "rejections": rejections}


async def _simulate(scn: Scenario, workdir: Path, with_faults: bool) -> SimResult:
    sim = _Sim(scn, workdir, with_faults)
    try:
        await sim.setup()
        await sim.run()
        end = await sim.check_end()
        live = sim.live()
        return SimResult(
            accuracy={n.name: dict(n.accuracy) for n in sim.nodes.values() if not n.sensor},
            ledger_size=sim.ledger_size,
            honest=[n for n in scn.node_names if n not in sim.byz],
            live_at_end=[n.name for n in live],
            converge_seconds=None if sim.first_in_step is None else sim.first_in_step - sim.recovery_time,
            final_in_step=sim.final_in_step,
            recovery_time=sim.recovery_time,
            restart_missing=sim.restart_missing,
            counters=dict(sim.net.counters),
            simulated_seconds=sim.loop.time(),
            **end,
        )
    finally:
        await sim.close()


def simulate(scn: Scenario, workdir: str | Path | None = None, *, with_faults: bool = True) -> SimResult:
    """Run one simulation of ``scn`` on a fresh :class:`VirtualClockLoop` (SQLite files in
    ``workdir``, default a temporary directory, in /dev/shm when it exists)."""
    tmp_root = "/dev/shm" if Path("/dev/shm").is_dir() else None
    own_tmp = workdir is None
    path = Path(tempfile.mkdtemp(prefix="learnae-faults-", dir=tmp_root)) if own_tmp else Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(_simulate(scn, path, with_faults))
    finally:
        loop.close()
        if own_tmp:
            shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- invariants
def _invariant(passed: bool, figure: Any, bound: Any, unit: str, **detail: Any) -> dict[str, Any]:
    return {"pass": bool(passed), "figure": figure, "bound": bound, "unit": unit, **detail}


def check_invariants(scn: Scenario, run: SimResult, ref: SimResult) -> dict[str, dict[str, Any]]:
    """Each invariant's pass/fail, measured figure and bound (see the module docstring)."""
    b = scn.bounds
    out: dict[str, dict[str, Any]] = {}
    conv = run.converge_seconds if run.final_in_step else None  # not in step after the drain: never converged
    out["ledger_converges"] = _invariant(
        conv is not None and conv <= b["converge_seconds"] and run.final_in_step and not run.verify_problems,
        None if conv is None else round(conv, 3), b["converge_seconds"], run.converge_unit,
        recovery_point_s=run.recovery_time, in_step_at_end=run.final_in_step,
        verify_problems=run.verify_problems[:5])
    lost = len(run.acked_missing) + len(run.restart_missing)
    out["no_acknowledged_tx_lost"] = _invariant(
        lost == 0, lost, 0, "acknowledged transactions missing (at restarts and on live nodes at the end)",
        checked=run.acked_checked, missing=(run.restart_missing + run.acked_missing)[:10])
    share = 1.0 if run.fetch_checked == 0 else 1 - len(run.fetch_missing) / run.fetch_checked
    out["content_fetchable"] = _invariant(
        not run.fetch_missing, round(share, 4), 1.0, "share of announced CIDs fetched after the faults",
        checked=run.fetch_checked, missing=run.fetch_missing[:10],
        excluded_byzantine_or_dead_authors=run.fetch_excluded)
    ref_acc = _final_mean(ref, ref.honest)
    faults = {f.kind for f in scn.faults}
    if faults - {"byzantine"}:
        target = b["recovery_ratio"] * ref_acc
        start = scn.recovery_round()
        needed: dict[str, int | None] = {}
        for name in run.honest:
            if name not in run.live_at_end:
                continue
            hist = run.accuracy[name]
            reached = next((r for r in sorted(hist) if r >= start and hist[r] >= target), None)
            if reached is None:
                needed[name] = None
            elif run.merges is None:  # memory driver: one merge per round
                needed[name] = reached - start + 1
            else:  # processes: the node's own merge counter since the recovery point
                counts = run.merges[name]
                before = max((counts[r] for r in counts if r < start), default=0)
                needed[name] = counts[reached] - before
        worst = None if any(v is None for v in needed.values()) else max(needed.values(), default=0)
        out["accuracy_recovers"] = _invariant(
            worst is not None and worst <= b["recovery_merges"], worst, int(b["recovery_merges"]),
            "merges after the recovery point until every live honest node reaches the target accuracy",
            target_accuracy=round(target, 4), reference_accuracy=round(ref_acc, 4), recovery_round=start,
            per_node=needed)
    if "byzantine" in faults:
        finals = {n: run.accuracy[n][max(run.accuracy[n])] for n in run.honest
                  if n in run.live_at_end and run.accuracy[n]}
        ratio = min(finals.values()) / ref_acc if finals and ref_acc > 0 else 0.0
        out["byzantine_resistance"] = _invariant(
            ratio >= b["byzantine_ratio"], round(ratio, 4), b["byzantine_ratio"],
            "lowest final accuracy of a live honest node over the no-fault run's final mean accuracy",
            reference_accuracy=round(ref_acc, 4), byzantine=sorted(scn.byzantine()),
            merge_rule=scn.merge, honest_final={k: round(v, 4) for k, v in finals.items()})
    return out


def _final_mean(run: SimResult, names: list[str]) -> float:
    finals = [run.accuracy[n][max(run.accuracy[n])] for n in names if run.accuracy.get(n)]
    return float(np.mean(finals)) if finals else 0.0


# ------------------------------------------------------------------------------ outputs
def _fault_periods(scn: Scenario) -> list[dict[str, Any]]:
    """Fault periods in rounds ``[start, end)``: partition..heal, crash..restart, at..until."""
    periods = []
    for f in scn.faults:
        end: int | None = f.until
        if f.kind == "partition":
            end = next((g.at for g in scn.faults if g.kind in ("heal", "partition") and g.at > f.at), None)
        elif f.kind == "crash":
            end = next((g.at for g in scn.faults if g.kind == "restart" and g.nodes == f.nodes and g.at > f.at), None)
        elif f.kind in ("heal", "restart"):
            continue
        label = f.kind + (f" {','.join(f.nodes)}" if f.nodes and f.kind != "byzantine" else "")
        if f.kind == "byzantine":
            label += f" {f.behaviour} x{len(f.nodes)}"
        periods.append({"kind": f.kind, "label": label, "start": f.at, "end": scn.rounds if end is None else end})
    return periods


def write_timeline(path: Path, scn: Scenario, run: SimResult, ref: SimResult, driver: str = "memory") -> None:
    """``timeline.png``: accuracy per node per round (reference mean dashed, fault periods
    shaded) above the mean ledger size of the live nodes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, period in enumerate(_fault_periods(scn)):
        for ax in (top, bottom):
            ax.axvspan(period["start"] - 0.5, period["end"] - 0.5, alpha=0.12, color=colours[k % len(colours)],
                       label=period["label"] if ax is top else None)
    byz = scn.byzantine()
    many = len(run.accuracy) > 12
    for name, hist in run.accuracy.items():
        rounds = range(max([scn.rounds, *(max(h) + 1 for h in run.accuracy.values() if h)]))  # NaN: node down
        style = {"color": "red", "alpha": 0.6} if name in byz else {"alpha": 0.35 if many else 0.8}
        top.plot(rounds, [hist.get(r, math.nan) for r in rounds], lw=1, marker=".", ms=3,
                 label=None if many else name, **style)
    ref_rounds = sorted({r for h in ref.accuracy.values() for r in h})
    ref_mean = [np.mean([h[r] for h in ref.accuracy.values() if r in h]) for r in ref_rounds]
    top.plot(ref_rounds, ref_mean, "k--", lw=2, label="no-fault run (mean)")
    top.set_ylabel("test accuracy")
    top.set_title(f"{scn.name}: {scn.nodes} nodes, merge '{scn.merge}', {driver} driver, seed {scn.seed}")
    top.legend(fontsize=7, ncol=3, loc="lower right")
    bottom.plot(range(len(run.ledger_size)), run.ledger_size, label="this run")
    bottom.plot(range(len(ref.ledger_size)), ref.ledger_size, "k--", label="no-fault run")
    bottom.set_ylabel("ledger size (txs)")
    bottom.set_xlabel("round")
    bottom.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_scenario(scn: Scenario, out: str | Path, *, plot: bool = True, driver: str = "memory",
                 echo=print, use_netns: bool | None = None) -> dict[str, Any]:
    """Run ``scn`` with ``driver`` (``memory``, or ``processes``:
    :mod:`learnae.local.procdriver`) and its no-fault reference (same seed); write
    ``report.json`` (and ``timeline.png`` unless ``plot`` is false) in ``out`` (created);
    return the report. ``use_netns`` goes to the processes driver (None: where available). ``report["pass"]`` is false when an invariant failed.

    Raises:
        ConfigError: the driver cannot run one of the scenario's faults.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if driver == "processes":
        from learnae.local.procdriver import check_supported, simulate_processes

        scn = scn.for_processes()
        check_supported(scn)
        echo("reference run (no faults):")
        ref = simulate_processes(scn, out / "reference", with_faults=False, echo=echo, use_netns=use_netns)
        echo("run with faults:")
        target = scn.bounds["recovery_ratio"] * _final_mean(ref, ref.honest)
        run = simulate_processes(scn, out / "run", with_faults=True, echo=echo, use_netns=use_netns,
                                 target=target)
        model = "the manifest's Keras MLP in `learnae node run` processes (TensorFlow)"
    elif driver == "memory":
        ref = simulate(scn, with_faults=False)
        run = simulate(scn, with_faults=True)
        model = "numpy softmax regression (dense/kernel, dense/bias), minibatch SGD"
    else:
        raise ValueError(f"unknown driver {driver!r}")
    invariants = check_invariants(scn, run, ref)
    rounds = range(max([scn.rounds, *(max(h) + 1 for h in run.accuracy.values() if h)]))
    report = {
        "scenario": scn.name,
        "driver": driver,
        "model": model,
        "seed": scn.seed,
        "nodes": scn.nodes,
        "sensors": scn.sensors,
        "rounds": scn.rounds,
        "round_seconds": scn.round_seconds,
        "merge": scn.merge,
        "pass": all(v["pass"] for v in invariants.values()),
        "invariants": invariants,
        "fault_periods": _fault_periods(scn),
        "accuracy": {n: [h.get(r) for r in rounds] for n, h in run.accuracy.items()},
        "reference_accuracy": {n: [h.get(r) for r in rounds] for n, h in ref.accuracy.items()},
        "merges": None if run.merges is None else {n: [h.get(r) for r in rounds] for n, h in run.merges.items()},
        "ledger_size": run.ledger_size,
        "network": run.counters,
        "rejections": run.rejections,
        "simulated_seconds": round(run.simulated_seconds, 3),
        "wall_seconds": round(time.perf_counter() - started, 3),
    }
    report["timeline"] = None
    if plot:
        try:
            write_timeline(out / "timeline.png", scn, run, ref, driver)
            report["timeline"] = "timeline.png"
        except ImportError:
            log.warning("matplotlib is not installed (pip install learnae[train]): no timeline.png")
    (out / "report.json").write_text(json.dumps(report, indent=2, default=_json_default))
    return report


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
