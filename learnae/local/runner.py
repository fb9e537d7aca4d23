"""A local swarm of trainer nodes and sensors as separate processes on this machine.

:class:`LocalSwarm` creates a private swarm (``init_swarm``, the same as ``learnae init``) in
``out/founder``, then starts ``nodes`` processes of ``learnae node run``, each with its own
state directory ``out/nodeI`` (keys, ledger, embedded Kubo repo), listening on 127.0.0.1
and dialling the first node (the founder's peer: its address is known before it starts,
because the runner makes each Kubo repo first and reads its peer id), or every earlier node
with ``mesh=True``.

Data: the common training part is cut into ``nodes + sensors`` shards (``partition``). Node
I trains on shard I; sensor J streams shard ``nodes + J`` as new labelled rows: the runner
writes that shard's raw rows to ``out/sensorJ.csv`` and starts ``learnae sensor run`` on it
(``csv:...,rate=R/s``, paced to finish within ``stream_seconds``), posting each signed chunk
to node ``J mod nodes`` through its ``POST /ingest`` (``--via``); every node adopts the
chunks it sees on the ledger.

It follows every node through ``STATE/status.json`` (rewritten by the node as it trains) and
every sensor through its queue's counters, and stops them all with :meth:`LocalSwarm.stop`:
SIGTERM to each pid it started (sensors first), a wait, then SIGKILL to stragglers' process
groups. Each process runs in a process group of its own so a Ctrl+C in the terminal reaches
the runner only, and the runner decides how its children stop.

Hooks for the fault harness's ``processes`` driver: ``hosts`` (each node's listen address,
e.g. in a network namespace), ``wrap`` (a function rewriting a node's command line, e.g.
``ip netns exec``), ``extra_args`` (more ``node run`` options per node), ``peers`` (each
node's ``--peer`` addresses, for topologies other than the default), ``relay_hosts`` (relay
members: ``learnae node run --relay`` processes, one per host listed, ``relay_args`` added to
each, every relay member told the others; they train nothing and are started first),
:meth:`kill` and :meth:`start_node` (a SIGKILL and a restart on the same state directory).

Use it as a context manager (``with LocalSwarm(...) as swarm:``): ``stop()`` runs on the
way out, also on an exception or KeyboardInterrupt; :meth:`LocalSwarm.install_signal_handlers`
makes SIGTERM behave like Ctrl+C for the runner's own process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from learnae.ipfs import libkubo
from learnae.manifest import Compression, Manifest
from learnae.models import model_config
from learnae.state import init_swarm

NODE = "from learnae.cli import main; main()"

_T = TypeVar("_T")

#: The model used for each bundled data set (anything else: an MLP sized from the data).
LOCAL_CHECKPOINT_INTERVAL = 0.5
"""Least seconds between two checkpoints of a node of a local swarm: a swarm of 4 nodes on one
machine announces at most 8 a second (a volunteer swarm's default is 30 s: ``Manifest``)."""
MODELS = {"digits": "digits-mlp", "wine": "wine-mlp", "breast_cancer": "breast-cancer-mlp", "iris": "iris-mlp"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port``."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def data_spec(dataset: str, index: int, count: int, partition: str, seed: int) -> str:
    """The ``--data`` spec of node ``index`` of ``count``."""
    return f"{dataset}:shard={index}/{count},partition={partition},seed={seed}"


def make_manifest(dataset: str, merge: str = "mean", *, sync_every: int = 10) -> Manifest:
    """The swarm's definition for ``dataset`` (the model the nodes and the baselines share)."""
    from learnae.training.data import load_dataset

    if dataset in MODELS:
        model = model_config(MODELS[dataset])
    else:
        ds = load_dataset(dataset)
        model = _mlp_config(ds.features, ds.classes)
    return Manifest(name="local", model=model, pow_bits=4, merge=merge, learning_rate=0.003,
                    sync_every=sync_every, checkpoint_interval=LOCAL_CHECKPOINT_INTERVAL)


def _mlp_config(features: tuple[int, ...], classes: int) -> str:
    """A one-hidden-layer MLP config for a data file (same layout as the bundled models)."""
    from learnae.models import mlp

    n_in = int(features[0]) if len(features) == 1 else int(__import__("math").prod(features))
    return json.dumps(mlp("data-mlp", n_in, [32], classes), separators=(",", ":"))


@dataclass
class NodeProc:
    """One process the runner started (``kind``: ``node``, ``relay`` member or ``sensor``)."""

    name: str
    state: Path
    port: int
    addr: str
    kind: str = "node"
    proc: subprocess.Popen | None = None
    log: Path | None = None
    api_port: int = 0
    rows: int = 0  # a sensor's rows to stream
    down: bool = False  # killed on purpose (a crash the fault harness made)
    history: list[tuple[float, float]] = field(default_factory=list)  # (elapsed s, test accuracy)
    peers_max: int = 0  # most peers seen in its status while it ran

    def status(self) -> dict | None:
        """The node's ``status.json``, or a sensor's queue counters; None before it has any."""
        if self.kind == "sensor":
            return sensor_counters(self.state)
        try:
            return json.loads((self.state / "status.json").read_text())
        except (OSError, ValueError):
            return None


def sensor_counters(state: Path) -> dict | None:
    """A sensor's queue counters (``published``, ``published_rows``, ...), read-only."""
    import sqlite3

    path = state / "queue.sqlite"
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
        try:
            return {k: v for k, v in db.execute("SELECT key, value FROM meta") if isinstance(v, int)}
        finally:
            db.close()
    except sqlite3.Error:
        return None


def write_sensor_csv(path: Path, dataset: str, shard: int, count: int, partition: str, seed: int) -> int:
    """Write shard ``shard`` of ``count`` as CSV with a ``label`` column; return its rows.

    Every row of the shard, unscaled: a sensor sends raw readings and each node scales them as
    it scales its own.
    """
    import numpy as np

    from learnae.training.data import DataSpec

    s = DataSpec(dataset, shard=(shard, count), partition=partition, seed=seed, scale="none").load()
    x = np.concatenate([s.train.x, s.holdout.x]).reshape(len(s.train) + len(s.holdout), -1)
    y = np.concatenate([s.train.y, s.holdout.y])
    header = ",".join([*(f"f{i}" for i in range(x.shape[1])), "label"])
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header=header, comments="",
               fmt=[*["%.9g"] * x.shape[1], "%d"])
    return len(y)


class LocalSwarm:
    """Trainer node, relay member and sensor processes in one private swarm.

    ``nodes`` trainer node processes and ``sensors`` sensor processes (see the module doc),
    on 127.0.0.1 unless ``hosts`` says otherwise.

    Args:
        peers: ``peers(i)`` gives node ``i``'s ``--peer`` multiaddrs (called when the node
            starts, so it may read :attr:`members` and :attr:`relays`); default: the first
            node, or with ``mesh`` every earlier node.
        relay_hosts: one relay member per address listed (its listen address; port 4001 unless
            it is 127.0.0.1), in :attr:`relays`; none by default.
        relay_args: more ``node run`` options for every relay member.
        wrap: ``wrap(i, argv)`` rewrites the command line of node ``i``, or of relay member
            ``i - nodes`` for ``i >= nodes``.
        checkpoint_interval: the manifest's least seconds between two checkpoints of a node.
        compression: how the swarm's checkpoints travel (the manifest's; float32 by default).

    The other arguments are described in the module doc.
    """

    def __init__(self, out: Path, *, nodes: int = 2, sensors: int = 0, dataset: str = "digits",
                 partition: str = "dirichlet:0.5", merge: str = "mean", seed: int = 0,
                 sync_every: int | str = "epoch", fetch_timeout: float = 10.0, threads: int = 1,
                 stream_seconds: float = 30.0, mesh: bool = False, hosts: list[str] | None = None,
                 wrap: Callable[[int, list[str]], list[str]] | None = None,
                 extra_args: Callable[[int], list[str]] | None = None,
                 peers: Callable[[int], list[str]] | None = None,
                 relay_hosts: list[str] | None = None, relay_args: Sequence[str] = (),
                 checkpoint_interval: float = LOCAL_CHECKPOINT_INTERVAL,
                 compression: Compression | None = None):
        if nodes < 1:
            raise ValueError("nodes must be >= 1")
        self.out = Path(out)
        self.n = nodes
        self.n_sensors = sensors
        self.dataset = dataset
        self.partition = partition
        self.merge = merge
        self.seed = seed
        self.sync_every = sync_every
        self.fetch_timeout = fetch_timeout
        self.threads = threads
        self.stream_seconds = stream_seconds
        self.mesh = mesh
        self.hosts = hosts or ["127.0.0.1"] * nodes
        self.wrap = wrap or (lambda _i, argv: argv)
        self.extra_args = extra_args or (lambda _i: [])
        self.peers = peers
        self.relay_hosts = list(relay_hosts or [])
        self.relay_args = list(relay_args)
        self.manifest = dataclasses.replace(make_manifest(dataset, merge), checkpoint_interval=checkpoint_interval,
                                            compression=compression or Compression())
        self.invite = self.out / "invite.json"
        self.members: list[NodeProc] = []
        self.sensors: list[NodeProc] = []
        self.relays: list[NodeProc] = []
        self.started_at = 0.0
        self._stopped = False
        self._env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")

    @property
    def shards(self) -> int:
        """Shards of the training part: one per node and one per sensor."""
        return self.n + self.n_sensors

    # ------------------------------------------------------------------ start
    def create(self) -> None:
        """Make the swarm's files.

        ``learnae init`` in ``out/founder``, the invite in ``out/invite.json``, each node's
        and relay member's Kubo repo, and each sensor's CSV.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        init_swarm(self.out / "founder", self.manifest).invite.save(self.invite)
        for i in range(self.n):
            state = self.out / f"node{i}"
            port = free_port() if self.hosts[i] == "127.0.0.1" else 4001
            pid = libkubo.create_repo(state / "ipfs")
            self.members.append(NodeProc(f"node{i}", state, port, f"/ip4/{self.hosts[i]}/tcp/{port}/p2p/{pid}",
                                         api_port=free_port()))
        for k, host in enumerate(self.relay_hosts):
            state = self.out / f"relay{k}"
            port = free_port() if host == "127.0.0.1" else 4001
            pid = libkubo.create_repo(state / "ipfs")
            self.relays.append(NodeProc(f"relay{k}", state, port, f"/ip4/{host}/tcp/{port}/p2p/{pid}",
                                        kind="relay", api_port=free_port()))
        for j in range(self.n_sensors):
            sensor = NodeProc(f"sensor{j}", self.out / f"sensor{j}", 0, "", kind="sensor")
            sensor.rows = write_sensor_csv(self.out / f"sensor{j}.csv", self.dataset, self.n + j, self.shards,
                                           self.partition, self.seed)
            self.sensors.append(sensor)

    def argv(self, i: int) -> list[str]:
        """The command line of node ``i`` (without ``wrap``)."""
        m = self.members[i]
        if self.peers is not None:
            addrs = self.peers(i)
        else:
            addrs = [p.addr for p in (self.members[:i] if self.mesh else self.members[:1] if i else [])]
        peers = [a for addr in addrs for a in ("--peer", addr)]
        return [sys.executable, "-c", NODE, "node", "run", "--invite", str(self.invite), "--state", str(m.state),
                "--data", data_spec(self.dataset, i, self.shards, self.partition, self.seed),
                "--listen", f"{self.hosts[i]}:{m.port}", "--api", f"127.0.0.1:{m.api_port}",
                "--seed", str(self.seed), "--threads", str(self.threads),
                "--fetch-timeout", str(self.fetch_timeout), "--sync-every", str(self.sync_every),
                "--wait-peers", "1" if self.n > 1 or self.relays else "0",
                # one machine stands for many here: every node's network side is one machine's, so
                # it must not yield the CPU to the other nodes' training
                "--network-nice", "0", *peers, *self.extra_args(i)]

    def relay_argv(self, k: int) -> list[str]:
        """The command line of relay member ``k`` (without ``wrap``): it knows every other one."""
        r = self.relays[k]
        peers = [a for other in self.relays if other is not r for a in ("--peer", other.addr)]
        return [sys.executable, "-c", NODE, "node", "run", "--relay", "--invite", str(self.invite),
                "--state", str(r.state), "--listen", f"{self.relay_hosts[k]}:{r.port}",
                "--api", f"127.0.0.1:{r.api_port}", "--fetch-timeout", str(self.fetch_timeout),
                "--network-nice", "0", *peers, *self.relay_args]

    def sensor_argv(self, j: int) -> list[str]:
        """The command line of sensor ``j``.

        Its CSV paced over ``stream_seconds``, posted to node ``j mod nodes``.
        """
        s = self.sensors[j]
        node = self.members[j % self.n]
        rate = max(s.rows / self.stream_seconds, 0.1)
        rows = max(8, s.rows // 10)  # about ten chunks per sensor
        return [sys.executable, "-c", NODE, "sensor", "run", "--invite", str(self.invite), "--state", str(s.state),
                "--source", f"csv:{self.out / f'{s.name}.csv'},rate={rate:.3f}/s,label=label",
                "--via", f"http://127.0.0.1:{node.api_port}", "--name", s.name,
                "--rows", str(rows), "--max-age", str(max(1.0, self.stream_seconds / 10))]

    def _spawn(self, m: NodeProc, argv: list[str]) -> None:
        m.log = self.out / f"{m.name}.log"
        with open(m.log, "a") as log:
            m.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self._env,
                                      start_new_session=True)
        m.down = False

    def start_node(self, i: int) -> None:
        """Start node ``i`` (again, after :meth:`kill`: same state directory, port and peer id)."""
        self._spawn(self.members[i], self.wrap(i, self.argv(i)))

    def start(self) -> None:
        """Create the swarm (if not yet), start every relay member, every node, every sensor.

        A sensor runs in the network namespace of the node it posts to, when ``wrap`` puts
        nodes in one.
        """
        if not self.members:
            self.create()
        self.started_at = time.monotonic()
        for k, r in enumerate(self.relays):
            self._spawn(r, self.wrap(self.n + k, self.relay_argv(k)))
        for i in range(self.n):
            self.start_node(i)
        for j, s in enumerate(self.sensors):
            self._spawn(s, self.wrap(j % self.n, self.sensor_argv(j)))

    def __enter__(self) -> LocalSwarm:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def install_signal_handlers() -> None:
        """Make SIGTERM raise KeyboardInterrupt in the runner, as Ctrl+C does."""
        def handler(_signum, _frame):
            raise KeyboardInterrupt
        signal.signal(signal.SIGTERM, handler)

    # ------------------------------------------------------------------ follow
    def statuses(self) -> list[dict | None]:
        """Each node's ``status.json`` (None before it wrote one), in node order."""
        return [m.status() for m in self.members]

    def poll(self) -> list[dict | None]:
        """Read every node's status and record test accuracy histories.

        Raises:
            RuntimeError: a node or sensor exited that was neither stopped nor killed on
                purpose.
        """
        now = time.monotonic() - self.started_at
        for s in (*self.sensors, *self.relays):
            self._check_alive(s)
        out = []
        for m in self.members:
            st = None if m.down else m.status()
            self._check_alive(m)
            m.peers_max = max(m.peers_max, int((st or {}).get("peer_count") or 0))
            acc = ((st or {}).get("test") or {}).get("accuracy")
            if acc is not None and (not m.history or m.history[-1][1] != acc or now - m.history[-1][0] > 5):
                m.history.append((round(now, 1), acc))
            out.append(st)
        return out

    def _check_alive(self, m: NodeProc) -> None:
        """Raise if ``m`` ended unasked: a sensor may end (status 0) once its data is sent."""
        code = None if m.proc is None else m.proc.poll()
        if code is not None and not m.down and not self._stopped and (m.kind != "sensor" or code != 0):
            raise RuntimeError(f"{m.name} exited with {code}:\n{self.log_tail(m)}")

    def relay_statuses(self) -> list[dict | None]:
        """Each relay member's ``status.json`` (None before it wrote one), in order."""
        return [r.status() for r in self.relays]

    def sensor_counters(self) -> list[dict | None]:
        """Each sensor's queue counters (None before it has any), in sensor order."""
        return [s.status() for s in self.sensors]

    def wait(self, predicate: Callable[[list[dict | None]], _T], timeout: float, what: str,
             interval: float = 0.5) -> _T:
        """Poll until ``predicate(statuses)`` is truthy; TimeoutError otherwise."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = predicate(self.poll())
            if value:
                return value
            time.sleep(interval)
        raise TimeoutError(f"not within {timeout} s: {what}")

    def all_training(self, statuses: list[dict | None]) -> bool:
        """Whether every node that is not down has trained at least one step."""
        return all(s is not None and s.get("step", 0) > 0 for m, s in zip(self.members, statuses, strict=True)
                   if not m.down)

    @staticmethod
    def log_tail(m: NodeProc, chars: int = 3000) -> str:
        """The last ``chars`` characters of ``m``'s log ("" if it has none or cannot be read)."""
        try:
            return m.log.read_text()[-chars:] if m.log else ""
        except OSError:
            return ""

    # ------------------------------------------------------------------ stop
    def pids(self) -> list[int]:
        """The pids of every process started: nodes, sensors, relay members."""
        return [m.proc.pid for m in (*self.members, *self.sensors, *self.relays) if m.proc is not None]

    def kill(self, i: int) -> None:
        """SIGKILL node ``i``'s process group (a crash: no final checkpoint, no clean close)."""
        m = self.members[i]
        m.down = True
        if m.proc is not None and m.proc.poll() is None:
            _kill_group(m.proc)

    def stop(self, timeout: float = 30.0) -> dict[str, int | None]:
        """Stop every process started: SIGTERM, then SIGKILL after ``timeout`` s.

        SIGTERM goes by pid, sensors first, so their last chunks still reach a node, relay
        members last; after ``timeout`` s, stragglers' process groups get SIGKILL.

        Safe to call twice and from a ``finally``; a second Ctrl+C during the wait is absorbed
        so the kill still happens. Returns each process's exit code (negative: killed by
        signal; None: never started).
        """
        self._stopped = True
        end = time.monotonic() + timeout
        for group in (self.sensors, self.members, self.relays):
            procs = [m.proc for m in group if m.proc is not None]
            for proc in procs:
                if proc.poll() is None:
                    try:
                        proc.send_signal(signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            for proc in procs:
                while proc.poll() is None:
                    try:
                        proc.wait(max(0.0, end - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        break
                    except KeyboardInterrupt:  # keep stopping
                        continue
            for proc in procs:
                if proc.poll() is None:
                    _kill_group(proc)
        return {m.name: None if m.proc is None else m.proc.returncode
                for m in (*self.members, *self.sensors, *self.relays)}


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``'s process group (it leads one: ``start_new_session``) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()
