"""The fault harness's ``memory`` driver: a simulated swarm under a scenario's faults.

:func:`simulate` runs one scenario.

What is real and what is simulated:

- Real: each trainer's network side is the node's own
  (:class:`~learnae.node.network.NetworkSide`: publish, peer choice, staleness and backoff,
  fetch, checks, merge, data adoption, refusals by reason), the swarm's manifest and genesis
  (:func:`~learnae.manifest.make_genesis`), the tangle (one SQLite file per node, WAL),
  transactions (signed, mined), the syncer (:class:`~learnae.ledger.sync.TangleSync`: gossip,
  gap repair, anti-entropy), content CIDs, safetensors checkpoints and chunks with their
  validation, and the merge rules of :mod:`learnae.merge`.
- With ``ledger = "shared"`` (swarms of a thousand nodes) the tangles and syncers are replaced
  by views of one store, with gossip, gap repair and anti-entropy modelled
  (:mod:`learnae.local.shared`); the network sides are the same.
- Simulated: the network (:class:`~learnae.ipfs.memory.MemoryNetwork`, whose partition,
  loss, delay and down rules carry the faults) and time. Everything runs on a
  virtual-clock asyncio loop (:class:`~learnae.local.clock.VirtualClockLoop`): ``sleep``,
  timeouts and link delays advance a simulated clock instead of waiting, so a run takes the
  CPU time it needs, not the simulated duration, and is reproducible from the seed (all
  randomness comes from generators seeded from it; transaction times come from the
  simulated clock). Blocking work runs inline (no threads on a virtual clock).
- The model: softmax regression in numpy (the manifest's model is ``Input -> Dense(classes,
  softmax)`` named ``output``: weights ``output/kernel`` ``(features, classes)`` and
  ``output/bias``) trained by minibatch SGD, so a hundred nodes fit on two cores. The
  ``processes`` driver (:mod:`learnae.local.procdriver`) runs real node processes with the
  manifest's Keras model.
- Rounds: each round (``round_seconds`` simulated seconds) every live trainer trains
  ``local_steps`` batches and publishes a checkpoint through its network side, every live
  sensor publishes one data chunk; half a round later each live honest trainer makes up to
  :data:`CHECKS_PER_ROUND` spot checks (below), adopts new sensor chunks and merges through
  its network side: up to ``peers_per_merge`` of the
  freshest peer checkpoints announced since its last merge (older than two rounds: stale),
  fetched with ``fetch_timeout``, merged with the scenario's rule and added as a
  displacement; then it collects the garbage of its IPFS node (the node's
  :class:`~learnae.node.upkeep.Upkeep`) and its repository is measured against its bound
  (``disk_bounded``); its accuracy on the common test split is recorded. The real node loop
  is asynchronous; the rounds only schedule the simulation. Ledgers are not pruned here (the
  runs are shorter than a node's ledger window, and ``ledger_converges`` compares whole
  ledgers).
- Verification (with a scenario's ``[verification]`` ``rate`` above 0): the honest trainers'
  network sides get ``evaluate``, the softmax cross-entropy (nats, in all and per class:
  :class:`~learnae.verify.HoldoutLoss`) of a set of weights on a public validation split
  that every node holds and none trains on (:data:`VALID_FRACTION` of the training split,
  carved out before sharding; not the test split the accuracies are measured on). Before
  merging, each checks the newest checkpoints its committees gave it (:meth:`~learnae.node.verifier.CheckpointVerifier.check`) and
  publishes the attestations; after each round's merges, whom each honest trainer had flagged
  is recorded (``SimResult.flagged``). Under ``data_claims = "replay"`` checkpoints name data
  only as replayable segments: every :data:`REPLAY_EVERY` rounds an honest trainer follows its
  checkpoint with one pass of SGD over the chunks it adopted since its last segment
  (:func:`_softmax_segment`, rows by :func:`~learnae.verify.segment_rows`), which verifiers
  train again to judge it.
- Byzantine trainers publish through the same network side: poisoned weights, or an IPFS
  node that announces bytes it does not serve (``fake-cid``: random; ``stale``: its first
  checkpoint again); ``flood`` gossips invalid transactions besides. These only publish. The
  liars (:data:`~learnae.local.scenario.LIARS`) merge as honest trainers do (they check
  nothing) and lie in what they publish: ``lazy`` skips training and publishes its weights
  plus noise; ``poison-within-bound`` publishes its update reversed (:func:`_poison`);
  ``inflate-samples`` claims :data:`~learnae.local.scenario.INFLATE` times its samples;
  ``false-data-claim`` adopts no chunk and names the data txs it saw in its checkpoints (under
  replay, as segments it did not train).
- Crash: the node's syncer stops and its memory IPFS node closes (it leaves the network);
  its SQLite tangle is closed and kept, as are its pinned content (a Kubo repo is on disk)
  and its adopted chunks. Restart: a new memory node with the same name and content, the
  tangle reopened from its file, a new syncer and network side, the model reloaded from the
  node's latest own checkpoint. (In one process a SIGKILL cannot be imitated exactly; the
  ``processes`` driver sends real ones.)
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import random
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from learnae.content import content_id, to_v1
from learnae.errors import IpfsError, LearnaeError
from learnae.formats import Chunk, decode_checkpoint, encode_chunk
from learnae.identity import Identity
from learnae.ipfs.base import ForwardingNode
from learnae.ipfs.memory import MemoryNetwork, MemoryNode
from learnae.ledger.sync import TangleSync, encode_message
from learnae.ledger.tangle import Tangle
from learnae.ledger.tx import data_payload
from learnae.local.clock import VirtualClockLoop
from learnae.local.converge import in_step
from learnae.local.invariants import kept_content
from learnae.local.results import SimResult
from learnae.local.scenario import INFLATE, LIARS, Fault, Scenario
from learnae.local.shared import LedgerView, SharedLedger, ViewSync
from learnae.manifest import Limits, Manifest, Verification, make_genesis
from learnae.merge import DEFAULT_MAX_NORM_RATIO, DEFAULT_MIN_NORM
from learnae.models import mlp
from learnae.node.network import DEFAULT_KEEP, NetworkSide
from learnae.node.upkeep import Upkeep, repo_bound
from learnae.training.bridge import Offer
from learnae.verify import HoldoutLoss, holdout_loss, segment_rows

__all__ = ["simulate"]

log = logging.getLogger(__name__)

EPOCH_MS = 1_700_000_000_000
"""Transaction time of simulated second 0 (ms since the Unix epoch, in the past)."""
LIMITS = Limits(tx_bytes=8192, checkpoint_bytes=1 << 20, chunk_bytes=1 << 20)
"""The simulated swarm's manifest limits (bytes)."""
_STALE_ROUNDS = 2  # peer checkpoints older than this many rounds are not merged (stale)
CHECKS_PER_ROUND = 2
"""Spot checks of peers' checkpoints an honest trainer makes at most in each merge phase."""
REPLAY_EVERY = 3
"""Under ``data_claims = "replay"``, an honest trainer publishes a replayable segment over the
chunks it adopted since its last one every this many rounds (after that round's checkpoint)."""
VALID_FRACTION = 0.1
"""Share of the training split carved out as the public validation split (trained on by nobody)."""


async def _inline(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Blocking work on a virtual clock: run it in place (a thread would let the clock jump)."""
    return fn(*args, **kwargs)


# ------------------------------------------------------------------------------- model
KERNEL, BIAS = "output/kernel", "output/bias"  # the weights of the manifest's model


def _sgd_step(kernel: np.ndarray, bias: np.ndarray, xb: np.ndarray, yb: np.ndarray, lr: float) -> None:
    """One SGD step of softmax regression (cross-entropy) on a float64 batch, in place."""
    logits = xb @ kernel + bias
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(yb)), yb] -= 1.0
    kernel -= lr * (xb.T @ p) / len(yb)
    bias -= lr * p.mean(axis=0)


def _softmax_train(w: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, steps: int, batch: int,
                   lr: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``steps`` minibatch SGD steps of softmax regression (cross-entropy); returns new weights."""
    kernel = w[KERNEL].astype(np.float64)
    bias = w[BIAS].astype(np.float64)
    for _ in range(steps):
        rows = rng.integers(0, len(x), size=min(batch, len(x)))
        _sgd_step(kernel, bias, x[rows].astype(np.float64), y[rows], lr)
    return {KERNEL: kernel.astype(np.float32), BIAS: bias.astype(np.float32)}


def _softmax_segment(w: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray, rows: np.ndarray,
                     lr: float) -> dict[str, np.ndarray]:
    """SGD of softmax regression on the batches ``x[rows[i]]``: a replayable segment.

    What an honest trainer trains and a verifier replays (a
    :data:`~learnae.node.verifier.Replay`): the same ``w``, rows ``(steps, batch)`` and
    arrays give bit-identical weights. ``x`` ``(n, ...)`` is flattened per row, as the
    trainers' data are.
    """
    flat = x.reshape(len(x), -1).astype(np.float64)
    kernel = np.asarray(w[KERNEL], np.float64).copy()
    bias = np.asarray(w[BIAS], np.float64).copy()
    for batch in rows:
        _sgd_step(kernel, bias, flat[batch], y[batch], lr)
    return {KERNEL: kernel.astype(np.float32), BIAS: bias.astype(np.float32)}


def _accuracy(w: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    pred = np.argmax(x @ w[KERNEL] + w[BIAS], axis=1)
    return float(np.mean(pred == y))


def _row_loss(w: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Softmax cross-entropy of the model ``w`` on each row of ``x`` ``(n, features)``, ``y`` ``(n,)``.

    Returns:
        ``(n,)`` losses, natural log (nats); NaN or infinity for non-finite weights.
    """
    logits = x.astype(np.float64) @ np.asarray(w[KERNEL], np.float64) + np.asarray(w[BIAS], np.float64)
    top = logits.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return lse - logits[np.arange(len(y)), y]


def _jitter(w: dict[str, np.ndarray], sigma: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``w`` plus Gaussian noise of ``sigma`` times each tensor's RMS (what ``lazy`` publishes)."""
    return {k: (v + rng.normal(0.0, sigma * float(np.sqrt(np.mean(np.square(v, dtype=np.float64)))),
                               v.shape)).astype(v.dtype) for k, v in w.items()}


def _poison(before: dict[str, np.ndarray], after: dict[str, np.ndarray], scale: float,
            max_norm_ratio: float, min_norm: float) -> dict[str, np.ndarray]:
    """``before - s * (after - before)``: a training update reversed (``poison-within-bound``).

    ``s`` is ``scale``, made smaller if need be so that the result's global L2 norm is at most
    half of :func:`~learnae.merge.check_update`'s bound taken against ``before``
    (``max_norm_ratio * max(norm(before), min_norm)``): peers whose own weights are near
    ``before`` accept it.
    """
    def norm(w: Mapping[str, np.ndarray]) -> float:
        return float(np.sqrt(sum(np.sum(np.square(v, dtype=np.float64)) for v in w.values())))

    limit = 0.5 * max_norm_ratio * max(norm(before), min_norm)
    step = {k: after[k].astype(np.float64) - before[k] for k in before}
    s = scale
    if norm(before) + s * norm(step) > limit:  # a bound on the result's norm (triangle inequality)
        s = max(0.0, (limit - norm(before)) / max(norm(step), 1e-12))
    return {k: (before[k] - s * step[k]).astype(before[k].dtype) for k in before}


# ------------------------------------------------------------------------------- nodes
@dataclass
class _Parts:
    """What a running simulated node has; a crash closes them and drops them together."""

    ipfs: _SimIpfs
    tangle: Tangle | LedgerView  # a view of the shared ledger under ``ledger = "shared"``
    sync: TangleSync | ViewSync
    net: NetworkSide | None  # trainers only
    upkeep: Upkeep | None  # likewise


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
    parts: _Parts | None = None  # None while it is down (crashed, not restarted)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    step: int = 0
    seq: int = 0  # sensor chunks made
    acked: list[str] = field(default_factory=list)
    repo: dict[str, bytes] = field(default_factory=dict)  # what it added: the "repo on disk" across crashes
    first_cid: str | None = None  # its first checkpoint (what a ``stale`` Byzantine node announces)
    adopted: set[str] = field(default_factory=set)  # data tx ids whose rows joined x, y (kept on disk)
    unnamed: list[str] = field(default_factory=list)  # adopted, not yet named in a checkpoint
    chunks: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # adopted tx -> its rows
    claimed: int = 0  # ``false-data-claim``: data seq of the last data tx it named
    merged_tags: list[tuple[str, ...]] = field(default_factory=list)  # merged since the last publish
    merges: int = 0
    accuracy: dict[int, float] = field(default_factory=dict)  # round -> accuracy after its merge

    @property
    def alive(self) -> bool:
        """Whether the node runs (it has not crashed, or it restarted since)."""
        return self.parts is not None

    @property
    def up(self) -> _Parts:
        """The running node's parts.

        Raises:
            RuntimeError: the node is down.
        """
        if self.parts is None:
            raise RuntimeError(f"simulated node {self.name} is down (crashed, not restarted)")
        return self.parts

    @property
    def trainer(self) -> NetworkSide:
        """The running trainer's network side.

        Raises:
            RuntimeError: the node is down, or a sensor.
        """
        net = self.up.net
        if net is None:
            raise RuntimeError(f"simulated node {self.name} is a sensor: it has no network side")
        return net


class _SimIpfs(ForwardingNode):
    """A simulated node's IPFS node as its network side sees it: the memory node ``inner``.

    What it pins is kept in ``node.repo`` (its "disk": pinned again at a restart; what was
    unpinned is not), and it lies when a Byzantine behaviour says so: ``fake-cid`` announces
    random bytes, ``stale`` its first checkpoint. Every other call goes to ``inner``.
    """

    inner: MemoryNode

    def __init__(self, inner: MemoryNode, node: _Node, lie: Callable[[], str | None]):
        super().__init__(inner)
        self.node, self.lie = node, lie

    async def add(self, data: bytes) -> str:
        """Add ``data`` to the memory node and keep it in ``node.repo``, or lie (see above)."""
        lie, node = self.lie(), self.node
        if lie == "fake-cid":
            cid = content_id(node.rng.randbytes(len(data)))  # nobody has these bytes
        elif lie == "stale" and node.first_cid is not None:
            cid = node.first_cid
        else:
            cid = await self.inner.add(data)
            node.repo[cid] = data
        if node.first_cid is None and not node.sensor:
            node.first_cid = cid
        return cid

    async def pin(self, cid: str, timeout: float = 30.0) -> None:
        """Pin ``cid`` on the memory node and keep its bytes in ``node.repo``."""
        await self.inner.pin(cid, timeout)
        self.node.repo[to_v1(cid)] = await self.inner.cat(cid, timeout)

    async def unpin(self, cid: str) -> None:
        """Unpin ``cid`` on the memory node and drop it from ``node.repo``."""
        await self.inner.unpin(cid)
        self.node.repo.pop(to_v1(cid), None)


class _Adopted:
    """A simulated trainer's adopted chunks: their rows join its training data.

    The :class:`~learnae.node.network.ChunkStore` of its network side.
    """

    def __init__(self, node: _Node):
        self.node = node

    def held(self, txs: Iterable[str]) -> set[str]:
        """The tx ids of ``txs`` whose chunks the node adopted."""
        return {t for t in txs if t in self.node.adopted}

    def add(self, tx: str, author: bytes, x: np.ndarray, y: np.ndarray) -> None:
        """Add the chunk's rows to the node's training data; it waits to be named."""
        node = self.node
        node.x = np.concatenate([node.x, x.reshape(len(x), -1).astype(node.x.dtype)])
        node.y = np.concatenate([node.y, y.astype(node.y.dtype)])
        node.adopted.add(tx)
        node.unnamed.append(tx)
        node.chunks[tx] = (x, y)  # as decoded: what a verifier replays its segment on


def _identity(seed: int, name: str) -> Identity:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Identity(Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"learnae-faults/{seed}/{name}".encode()).digest()))


def _sub_seed(seed: int, *parts: object) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, (seed, *parts))).encode()).digest()[:8], "big")


def _load_data(scn: Scenario, validation: bool):
    """Load the scenario's data: ``(train, test, shards, validation)``.

    The common test split (20%: the accuracies), one shard of the rest per node and sensor,
    and, if ``validation``, the public validation split (:data:`VALID_FRACTION` of the
    training split, in no shard) on which verifiers evaluate checkpoints; else None (and the
    shards as before verification existed).
    """
    from learnae.training.data import Scaler, assign_shards, load_dataset, split, split_holdout

    ds = load_dataset(scn.dataset)
    train, test = split(ds, 0.2, scn.seed)
    if scn.dataset != "digits":
        scaler = Scaler.fit(train)
        train, test = scaler.apply(train), scaler.apply(test)
    count = scn.nodes + scn.sensors
    valid = None
    if validation:
        train, valid = split_holdout(train, VALID_FRACTION, scn.seed, index=count)  # no shard's index
    where = assign_shards(train.y, count, scn.partition, scn.seed, train.classes)
    shards = [train.take(np.flatnonzero(where == i), f"shard-{i}") for i in range(count)]
    return train, test, shards, valid


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
        self.round = 0
        self.checkpoint_size = 0  # bytes of the largest checkpoint file published
        self.disk: dict[str, tuple[int, int]] = {}  # SimResult.disk
        self.flagged: dict[int, dict[str, list[str]]] = {}  # SimResult.flagged
        self.lied: dict[str, list[int]] = {}  # SimResult.lied
        self.shared: SharedLedger | None = None  # under ``ledger = "shared"``

    # -- setup ---------------------------------------------------------------------------------
    async def setup(self) -> None:
        scn = self.scn
        verification = scn.verification or Verification(rate=0.0)
        self.replay = verification.data_claims == "replay"
        train, self.test, shards, valid = _load_data(scn, verification.rate > 0)
        self.evaluate: Callable[[Mapping[str, np.ndarray]], HoldoutLoss] | None = None
        if valid is not None:
            vx, vy = valid.x.reshape(len(valid.x), -1), valid.y

            def evaluate(w: Mapping[str, np.ndarray]) -> HoldoutLoss:
                return holdout_loss(_row_loss(w, vx, vy), vy)

            self.evaluate = evaluate
        features, classes = train.x.shape[1], train.classes
        self.manifest = Manifest(
            name=scn.name, model=json.dumps(mlp(scn.name, features, [], classes), separators=(",", ":")),
            batch_size=scn.batch_size, learning_rate=scn.learning_rate, merge=scn.merge,
            merge_params=dict(scn.merge_params), pow_bits=scn.pow_bits, limits=LIMITS, created=EPOCH_MS,
            checkpoint_interval=scn.round_seconds,  # what the rounds do: one checkpoint a round
            verification=verification)
        self.genesis = make_genesis(_identity(scn.seed, "genesis"), self.manifest)
        init = np.random.default_rng(_sub_seed(scn.seed, "init"))
        self.init_weights = {
            KERNEL: (init.standard_normal((features, classes)) * 0.01).astype(np.float32),
            BIAS: np.zeros(classes, dtype=np.float32),
        }
        self.expect = {k: (v.shape, str(v.dtype)) for k, v in self.init_weights.items()}
        topo = random.Random(_sub_seed(scn.seed, "topology"))
        names = scn.node_names + scn.sensor_names
        if scn.ledger == "shared":
            self.shared = SharedLedger(self.workdir / "ledger.db", genesis_raw=self.genesis.raw,
                                       pow_bits=scn.pow_bits, max_tx_bytes=LIMITS.tx_bytes, net=self.net,
                                       announce_interval=scn.announce_interval,
                                       clock_ms=lambda: int(self._clock() * 1000))
            self.shared.start()
        tangles: dict[str, Tangle | LedgerView] = {}
        for i, name in enumerate(names):
            sensor = i >= scn.nodes
            pool = names[:i] if not sensor else scn.node_names
            neighbours = topo.sample(pool, min(scn.degree, len(pool)))
            shard = shards[i]
            node = _Node(name, sensor, _identity(scn.seed, name), self.workdir / f"{name}.db", neighbours,
                         random.Random(_sub_seed(scn.seed, name)), np.random.default_rng(_sub_seed(scn.seed, name, "np")),
                         shard.x, shard.y)
            node.weights = {k: v.copy() for k, v in self.init_weights.items()}
            tangles[name] = (self.shared.view(name) if self.shared is not None
                             else Tangle(node.path, genesis_raw=self.genesis.raw, pow_bits=scn.pow_bits,
                                         max_tx_bytes=LIMITS.tx_bytes))
            self.nodes[name] = node
        for node in self.nodes.values():
            await self._start(node, tangles[node.name])
        self.sensor_keys = frozenset(self.nodes[s].identity.public_key for s in scn.sensor_names)

    def _clock(self) -> float:
        """Simulated seconds since the Unix epoch (what the network sides read)."""
        return EPOCH_MS / 1000 + self.loop.time()

    async def _start(self, node: _Node, tangle: Tangle | LedgerView) -> None:
        """Start ``node`` on ``tangle``.

        That is its memory IPFS node (holding its repo), its links, its syncer and, for a
        trainer, its network side.
        """

        def lie() -> str | None:
            bad = self.behaviour(node, self.round)
            return bad.behaviour if bad is not None else None

        ipfs = _SimIpfs(self.net.node(node.name), node, lie)
        for data in node.repo.values():
            await ipfs.inner.add(data)
        for peer in node.neighbours:
            other = self.nodes[peer]
            if other.alive:
                try:
                    await ipfs.connect(f"/memory/{peer}/p2p/{peer}")
                except IpfsError:
                    pass  # partitioned or down: the link comes back with heal/up
        # Nodes opened later connect to it from their side when they start.
        sync: TangleSync | ViewSync
        if isinstance(tangle, LedgerView):
            assert self.shared is not None  # views come from it
            sync = ViewSync(self.shared, tangle)
        else:
            sync_rng = random.Random(_sub_seed(self.scn.seed, node.name, "sync", len(node.acked)))
            sync = TangleSync(tangle, ipfs, announce_interval=self.scn.announce_interval, rng=sync_rng)
        await sync.start()
        net = None
        if not node.sensor:
            net = NetworkSide(ipfs=ipfs, sync=sync, identity=node.identity, manifest=self.manifest,
                              expect=self.expect, k=self.scn.peers_per_merge,
                              stale=_STALE_ROUNDS * self.scn.round_seconds,
                              fetch_timeout=self.scn.fetch_timeout,
                              adopt_authors=self.sensor_keys_or_none(), clock=self._clock,
                              rng=node.rng, offload=_inline,
                              evaluate=None if node.name in self.byz else self.evaluate,
                              replay=functools.partial(_softmax_segment, lr=self.scn.learning_rate))
        node.parts = _Parts(ipfs, tangle, sync, net, None if net is None else Upkeep(net))

    async def restart(self, node: _Node) -> None:
        """Restart a crashed node on its tangle file (or view); a trainer reloads its last checkpoint."""
        tangle = self.shared.view(node.name) if self.shared is not None else Tangle(node.path)
        missing = [i for i in node.acked if i not in tangle]
        self.restart_missing += [f"{node.name}:{i}" for i in missing]
        await self._start(node, tangle)
        if not node.sensor:
            await self._reload_model(node)

    def sensor_keys_or_none(self) -> frozenset[bytes] | None:
        """The authors whose chunks trainers adopt: the sensors (set once all nodes exist)."""
        return getattr(self, "sensor_keys", None)

    async def _reload_model(self, node: _Node) -> None:
        parts = node.up
        own = parts.tangle.latest_checkpoint_per_author().get(node.identity.public_key)
        if own is None:
            return
        try:
            raw = await parts.ipfs.cat(own.payload["cid"], timeout=self.scn.fetch_timeout)
            ckpt = decode_checkpoint(raw, max_bytes=LIMITS.checkpoint_bytes, expect=self.expect,
                                     genesis=self.genesis.id)
            node.weights, node.step = ckpt.weights, ckpt.step
        except LearnaeError as exc:
            log.info("%s: could not reload its checkpoint: %s", node.name, exc)

    async def crash(self, node: _Node) -> None:
        """Stop the node: its syncer stops, its IPFS node closes, its tangle file is kept."""
        parts = node.up
        await parts.sync.stop()
        await parts.ipfs.close()
        parts.tangle.close()
        node.parts = None

    async def close(self) -> None:
        for node in self.nodes.values():
            if node.alive:
                await self.crash(node)
        if self.shared is not None:
            await self.shared.close()

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
            await self.restart(self.nodes[f.nodes[0]])
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
    async def publish(self, node: _Node, r: int) -> None:
        scn = self.scn
        if node.sensor:
            await self._publish_chunk(node)
            return
        bad = self.behaviour(node, r)
        lie = bad.behaviour if bad is not None else None
        before = node.weights
        if lie != "lazy":
            node.weights = _softmax_train(node.weights, node.x, node.y, scn.local_steps, scn.batch_size,
                                          scn.learning_rate, node.np_rng)
        node.step += scn.local_steps
        # Under data_claims = "replay" data are named only by segments (below).
        weights, samples, data = node.weights, scn.local_steps * scn.batch_size, [] if self.replay else node.unnamed
        segment = None
        if bad is not None:
            weights, samples, data = self._lie(node, bad, before, samples, data)
            if lie == "false-data-claim" and self.replay and data and node.trainer.last_checkpoint:
                # it claims a segment on the data, from its previous checkpoint, that it never trained
                segment = {"seed": int(node.np_rng.integers(2**63)), "steps": max(1, samples // scn.batch_size)}
            self.lied.setdefault(node.name, []).append(r)
        merged = () if segment is not None else tuple(node.merged_tags)
        await self._publish_checkpoint(node, Offer(weights, step=node.step, samples=samples,
                                                   total_samples=node.step * scn.batch_size, merged=merged,
                                                   k=scn.peers_per_merge), data, segment)
        if self.replay and bad is None and node.unnamed and r % REPLAY_EVERY == 0:
            await self._publish_segment(node)
        if not (self.replay and bad is None):  # named now, or never (a liar's)
            for t in node.unnamed:
                node.chunks.pop(t, None)
            node.unnamed = []
        node.merged_tags = []
        if bad is not None and bad.behaviour == "flood":
            await self._flood(node, bad.count)

    async def _publish_checkpoint(self, node: _Node, offer: Offer, data: list[str],
                                  segment: dict[str, int] | None = None) -> None:
        metrics = {"accuracy": _accuracy(node.weights, node.x, node.y)}
        tx, raw = await node.trainer.publish(offer, metrics=metrics, data=data, segment=segment)
        self.checkpoint_size = max(self.checkpoint_size, len(raw))
        node.acked.append(tx.id)

    async def _publish_segment(self, node: _Node) -> None:
        """Train one pass over the chunks adopted since the last segment, replayably, and publish it.

        The segment starts from the checkpoint just published; its batches are
        :func:`~learnae.verify.segment_rows` of a fresh seed over the chunks' rows, in the
        order named, so the committee can train it again (:func:`_softmax_segment`).
        """
        scn = self.scn
        x = np.concatenate([node.chunks[t][0] for t in node.unnamed])
        y = np.concatenate([node.chunks[t][1] for t in node.unnamed])
        steps = -(-len(x) // scn.batch_size)
        segment = {"seed": int(node.np_rng.integers(2**63)), "steps": steps}
        rows = segment_rows(segment["seed"], len(x), steps, scn.batch_size)
        node.weights = _softmax_segment(node.weights, x, y, rows, scn.learning_rate)
        node.step += steps
        offer = Offer(node.weights, step=node.step, samples=steps * scn.batch_size,
                      total_samples=node.step * scn.batch_size, k=scn.peers_per_merge)
        await self._publish_checkpoint(node, offer, node.unnamed, segment)
        for t in node.unnamed:
            del node.chunks[t]
        node.unnamed = []

    def _lie(self, node: _Node, bad: Fault, before: dict[str, np.ndarray], samples: int,
             data: list[str]) -> tuple[dict[str, np.ndarray], int, list[str]]:
        """What Byzantine ``node`` publishes: ``(weights, samples, data)`` (see ``BEHAVIOURS``).

        ``before`` are its weights before this round's training, ``samples`` and ``data`` the
        honest claims.
        """
        weights, lie = node.weights, bad.behaviour
        if lie == "sign-flip":
            weights = {k: -v for k, v in weights.items()}
        elif lie == "noise":
            weights = {k: (v + node.np_rng.normal(0.0, bad.sigma, v.shape)).astype(np.float32)
                       for k, v in weights.items()}
        elif lie == "scale":
            weights = {k: v * np.float32(100.0) for k, v in weights.items()}
        elif lie == "lazy":  # its merged weights, untrained, for the steps it claims
            weights = _jitter(weights, bad.sigma, node.np_rng)
        elif lie == "poison-within-bound":
            params = self.manifest.merge_params
            weights = _poison(before, weights, bad.scale, params.get("max_norm_ratio", DEFAULT_MAX_NORM_RATIO),
                              params.get("min_norm", DEFAULT_MIN_NORM))
        elif lie == "inflate-samples":
            samples *= INFLATE
        elif lie == "false-data-claim":
            data = self._unadopted(node)
        return weights, samples, data

    def _unadopted(self, node: _Node) -> list[str]:
        """The data txs stored since the node last looked that it did not adopt (all of them)."""
        txs, node.claimed = node.up.tangle.data_since(node.claimed)
        return [tx.id for tx in txs if tx.id not in node.adopted]

    async def _flood(self, node: _Node, count: int) -> None:
        """Gossip ``count`` invalid transactions: garbage bytes and forged signatures."""
        parts = node.up
        own = parts.tangle.get(node.acked[-1])
        if own is None:
            raise RuntimeError(f"{node.name}'s own transaction {node.acked[-1]} is not in its"
                               " tangle")
        junk = []
        for k in range(count):
            if k % 2:
                forged = bytearray(own.raw)
                forged[-1] ^= 0xFF
                junk.append(bytes(forged))
            else:
                junk.append(node.rng.randbytes(200))
        if isinstance(parts.sync, ViewSync):  # checked once by the shared store
            parts.sync.ledger.offer(junk)
            return
        for k in range(0, count, 10):
            await parts.ipfs.publish(parts.sync.topic, encode_message("tx", txs=junk[k:k + 10]))

    async def _publish_chunk(self, node: _Node) -> None:
        rows = self.scn.chunk_rows
        start = (node.seq * rows) % max(1, len(node.x))
        take = np.arange(start, start + rows) % len(node.x)
        t = int(self._clock() * 1000)
        schema = self.manifest.schema
        chunk = Chunk(node.x[take], node.y[take].astype(np.int64), schema, node.identity.author_id, node.seq,
                      (t - 1000, t))
        data = encode_chunk(chunk)
        parts = node.up
        cid = await parts.ipfs.add(data)
        tx = await parts.sync.append(node.identity, "data", data_payload(
            cid=cid, size=len(data), rows=rows, schema=schema.to_dict(), source=node.name, seq=node.seq),
            time_ms=t, rng=node.rng)
        node.acked.append(tx.id)
        node.seq += 1

    async def merge(self, node: _Node, r: int) -> None:
        """Check, adopt new chunks and merge, half a round after publishing; record the accuracy.

        An honest trainer first makes up to :data:`CHECKS_PER_ROUND` spot checks of the peer
        checkpoints it was selected to verify, then adopts and merges through its network
        side. A liar (:data:`~learnae.local.scenario.LIARS`) merges likewise but checks nothing
        (``false-data-claim`` adopts nothing either); the other Byzantine nodes only publish.
        """
        scn = self.scn
        bad = self.byz.get(node.name)
        if bad is None or bad.behaviour in LIARS:
            net = node.trainer
            for _ in range(CHECKS_PER_ROUND if bad is None else 0):
                if await net.verifier.check() is None:
                    break
            if bad is None or bad.behaviour != "false-data-claim":
                await net.adopt(_Adopted(node))
            offer = Offer(node.weights, step=node.step, samples=scn.local_steps * scn.batch_size,
                          total_samples=node.step * scn.batch_size, k=scn.peers_per_merge)
            merged = await net.merge(offer)
            if merged is not None:
                delta = merged.delta
                node.weights = (dict(merged.weights) if delta is None  # no displacement: replace
                                else {k: w + delta[k] for k, w in node.weights.items()})
                node.merged_tags.append(merged.tag)
            node.merges += 1
            await self._collect_garbage(node)
        node.accuracy[r] = _accuracy(node.weights, self.test.x, self.test.y)

    async def _collect_garbage(self, node: _Node) -> None:
        """Collect garbage on a merging trainer and note its repository against its bound."""
        parts, net = node.up, node.trainer
        assert parts.upkeep is not None  # a trainer's
        await parts.upkeep.collect_garbage()
        used = await parts.ipfs.repo_bytes()
        bound = repo_bound(keep=net.keep, k=self.scn.peers_per_merge, checkpoint=self.checkpoint_size,
                           pinned_data=sum(net.data_pinned.values()), slack=0)
        worst = self.disk.get(node.name)
        if worst is None or used * worst[1] > worst[0] * bound:
            self.disk[node.name] = (used, bound)

    # -- observation ---------------------------------------------------------------------------
    def note_standings(self, r: int) -> None:
        """Record whom each live honest trainer flagged in round ``r``'s merge (its standings then)."""
        names = {n.identity.public_key: n.name for n in self.nodes.values()}
        seen: dict[str, list[str]] = {}
        for node in self.nodes.values():
            if node.sensor or not node.alive or node.name in self.byz:
                continue
            standing = node.trainer.verifier.standing
            seen[node.name] = sorted(names.get(a, a.hex()) for a, s in standing.items() if s.flagged)
        self.flagged[r] = seen

    def live(self) -> list[_Node]:
        """The nodes that run and are not down on the network (``sensor-offline``)."""
        return [n for n in self.nodes.values()
                if n.parts is not None and not n.parts.ipfs.inner._down]

    async def watch(self) -> None:
        """Record the first moment after the recovery point when every live tangle is in step.

        :meth:`run` starts it once the recovery round's faults are applied.
        """
        while True:
            live = self.live()
            if live and in_step([n.up.tangle for n in live]):
                self.first_in_step = self.loop.time()
                return
            await asyncio.sleep(0.1)

    async def run(self) -> None:
        scn = self.scn
        watcher: asyncio.Task | None = None
        start = round(self.recovery_time / scn.round_seconds)
        for r in range(scn.rounds):
            await asyncio.sleep(max(0.0, r * scn.round_seconds - self.loop.time()))
            self.round = r
            await self.apply_faults(r)
            await asyncio.gather(*(self.publish(n, r) for n in self.nodes.values() if n.alive))
            if r == start:  # watch once this round's transactions are out: they must arrive too
                watcher = asyncio.create_task(self.watch())
            await asyncio.sleep(scn.round_seconds / 2)
            await asyncio.gather(*(self.merge(n, r) for n in self.nodes.values() if n.alive and not n.sensor))
            self.note_standings(r)
            live = self.live()
            sizes = [n.up.tangle.count() for n in live]
            self.ledger_size.append(float(np.mean(sizes)) if live else 0.0)
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
        self.final_in_step = bool(self.live()) and in_step([n.up.tangle for n in self.live()])

    async def check_end(self) -> dict[str, Any]:
        live = self.live()
        honest_authors = [n for n in self.nodes.values() if n.name not in self.byz]
        acked = [(n.name, i) for n in honest_authors if n.alive for i in n.acked]
        if self.shared is not None:  # the same question, asked of every view at once
            lacking = self.shared.lacking([i for _, i in acked], [m.name for m in live])
            missing = sorted({f"{name}:{i}" for name, i in acked if i in lacking})
        else:
            missing = sorted({f"{name}:{i}" for name, i in acked for m in live if i not in m.up.tangle})
        # Content: what the swarm keeps (kept_content) of live honest authors, fetched by a random
        # live node.
        keys = {n.identity.public_key: n for n in self.nodes.values()}
        cids: dict[str, str] = {}
        excluded = 0
        if live:
            for cid, tx in kept_content(live[0].up.tangle, DEFAULT_KEEP).items():
                author = keys.get(tx.author)
                if author is None or author.name in self.byz or not author.alive:
                    excluded += 1
                    continue
                cids[cid] = tx.id
        rng = random.Random(_sub_seed(self.scn.seed, "fetch"))
        fetch_missing = []
        for cid in cids:
            fetcher = rng.choice(live)
            try:
                await fetcher.up.ipfs.cat(cid, timeout=self.scn.fetch_timeout)
            except LearnaeError:
                fetch_missing.append(cid)
        problems = live[0].up.tangle.verify() if live else []
        checks: dict[str, int] = {"checked": 0, "disputed": 0}
        for n in self.nodes.values():  # the honest trainers' spot checks (counted in memory)
            if n.alive and not n.sensor and n.name not in self.byz:
                verifier = n.trainer.verifier
                checks["checked"] += verifier.checked
                checks["disputed"] += verifier.disputed
                for code, count in verifier.by_code.items():
                    checks[code] = checks.get(code, 0) + count
        rejections: dict[str, int] = dict(self.shared.store.rejections) if self.shared is not None else {}
        for n in live:  # the ledgers' refusals, and the network sides' (peer checkpoints, chunks)
            parts = n.up
            counts = [parts.tangle.rejections,
                      parts.net.rejections if parts.net is not None else {}]
            for code, count in (item for c in counts for item in c.items()):
                rejections[code] = rejections.get(code, 0) + count
        return {"acked_missing": missing, "acked_checked": len(acked), "fetch_checked": len(cids),
                "fetch_missing": fetch_missing, "fetch_excluded": excluded, "verify_problems": problems,
                "rejections": rejections, "checks": checks}


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
            counters=dict(sim.net.counters + (sim.shared.counters if sim.shared is not None else Counter())),
            disk=sim.disk, flagged=sim.flagged, lied=sim.lied,
            simulated_seconds=sim.loop.time(),
            **end,
        )
    finally:
        await sim.close()


def simulate(scn: Scenario, workdir: str | Path | None = None, *, with_faults: bool = True) -> SimResult:
    """Run one simulation of ``scn`` on a fresh :class:`VirtualClockLoop`.

    Args:
        scn: the scenario.
        workdir: where the nodes' SQLite files go; None: a temporary directory (in /dev/shm
            when it exists), removed afterwards.
        with_faults: apply the scenario's faults; False runs the fault-free reference.

    Returns:
        What the run measured, for :func:`~learnae.local.invariants.check_invariants`.
    """
    tmp_root = "/dev/shm" if Path("/dev/shm").is_dir() else None
    own_tmp = workdir is None
    path = (Path(tempfile.mkdtemp(prefix="learnae-faults-", dir=tmp_root)) if workdir is None
            else Path(workdir))
    path.mkdir(parents=True, exist_ok=True)
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(_simulate(scn, path, with_faults))
    finally:
        loop.close()
        if own_tmp:
            shutil.rmtree(path, ignore_errors=True)
