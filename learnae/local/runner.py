"""A local swarm of trainer nodes as separate processes on this machine.

:class:`LocalSwarm` creates a private swarm (``init_swarm``, the same as ``learnae init``) in
``out/founder``, then starts ``nodes`` processes of ``learnae node run``, each with its own
state directory ``out/nodeI`` (keys, ledger, embedded Kubo repo), listening on 127.0.0.1
and all dialling the first node (the founder's peer: its address is known before it starts,
because the runner makes each Kubo repo first and reads its peer id). It follows every node
through ``STATE/status.json`` (rewritten by the node as it trains) and stops them all with
:meth:`LocalSwarm.stop`: SIGTERM to each pid it started, a wait, then SIGKILL to stragglers.
Each process runs in a process group of its own so a Ctrl+C in the terminal reaches the
runner only, and the runner decides how its children stop.

Use it as a context manager (``with LocalSwarm(...) as swarm:``): ``stop()`` runs on the
way out, also on an exception or KeyboardInterrupt; :meth:`LocalSwarm.install_signal_handlers`
makes SIGTERM behave like Ctrl+C for the runner's own process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from learnae.ipfs import libkubo
from learnae.manifest import Manifest, init_swarm
from learnae.models import model_config

NODE = "from learnae.cli import main; main()"

#: The model used for each bundled data set (anything else: an MLP sized from the data).
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
                    sync_every=sync_every)


def _mlp_config(features: tuple[int, ...], classes: int) -> str:
    """A one-hidden-layer MLP config for a data file (same layout as the bundled models)."""
    from learnae.models import _mlp

    n_in = int(features[0]) if len(features) == 1 else int(__import__("math").prod(features))
    return json.dumps(_mlp("data-mlp", n_in, [32], classes), separators=(",", ":"))


@dataclass
class NodeProc:
    """One trainer node process the runner started."""

    name: str
    state: Path
    port: int
    addr: str
    proc: subprocess.Popen | None = None
    log: Path | None = None
    api_port: int = 0
    history: list[tuple[float, float]] = field(default_factory=list)  # (elapsed s, test accuracy)

    def status(self) -> dict | None:
        try:
            return json.loads((self.state / "status.json").read_text())
        except (OSError, ValueError):
            return None


class LocalSwarm:
    """``nodes`` trainer node processes in one private swarm on 127.0.0.1 (see the module doc)."""

    def __init__(self, out: Path, *, nodes: int = 2, sensors: int = 0, dataset: str = "digits",
                 partition: str = "dirichlet:0.5", merge: str = "mean", seed: int = 0,
                 sync_every: int | str = "epoch", fetch_timeout: float = 10.0, threads: int = 1):
        if nodes < 1:
            raise ValueError("nodes must be >= 1")
        self.out = Path(out)
        self.n = nodes
        self.sensors = sensors  # not started yet: see the report's "missing"
        self.dataset = dataset
        self.partition = partition
        self.merge = merge
        self.seed = seed
        self.sync_every = sync_every
        self.fetch_timeout = fetch_timeout
        self.threads = threads
        self.manifest = make_manifest(dataset, merge)
        self.invite = self.out / "invite.json"
        self.members: list[NodeProc] = []
        self.started_at = 0.0
        self._stopped = False

    # ------------------------------------------------------------------ start
    def create(self) -> None:
        """``learnae init`` in ``out/founder`` and the invite in ``out/invite.json``."""
        self.out.mkdir(parents=True, exist_ok=True)
        init_swarm(self.out / "founder", self.manifest).invite.save(self.invite)
        for i in range(self.n):
            state = self.out / f"node{i}"
            port = free_port()
            pid = libkubo.create_repo(state / "ipfs")
            self.members.append(NodeProc(f"node{i}", state, port, f"/ip4/127.0.0.1/tcp/{port}/p2p/{pid}"))

    def argv(self, i: int) -> list[str]:
        m = self.members[i]
        founder = self.members[0]
        peers = ["--peer", founder.addr] if i else []
        m.api_port = free_port()
        return [sys.executable, "-c", NODE, "node", "run", "--invite", str(self.invite), "--state", str(m.state),
                "--data", data_spec(self.dataset, i, self.n, self.partition, self.seed),
                "--listen", f"127.0.0.1:{m.port}", "--api", f"127.0.0.1:{m.api_port}",
                "--seed", str(self.seed), "--threads", str(self.threads),
                "--fetch-timeout", str(self.fetch_timeout), "--sync-every", str(self.sync_every),
                "--wait-peers", "1" if self.n > 1 else "0", *peers]

    def start(self) -> None:
        """Create the swarm (if not yet) and start every node process."""
        if not self.members:
            self.create()
        self.started_at = time.monotonic()
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
        for i, m in enumerate(self.members):
            m.log = self.out / f"{m.name}.log"
            with open(m.log, "w") as log:
                m.proc = subprocess.Popen(self.argv(i), stdout=log, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True)

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
        return [m.status() for m in self.members]

    def poll(self) -> list[dict | None]:
        """Read every status, record test accuracy histories, fail on a dead process."""
        now = time.monotonic() - self.started_at
        out = []
        for m in self.members:
            s = m.status()
            if m.proc is not None and m.proc.poll() is not None and not self._stopped:
                raise RuntimeError(f"{m.name} exited with {m.proc.returncode}:\n{self.log_tail(m)}")
            acc = ((s or {}).get("test") or {}).get("accuracy")
            if acc is not None and (not m.history or m.history[-1][1] != acc or now - m.history[-1][0] > 5):
                m.history.append((round(now, 1), acc))
            out.append(s)
        return out

    def wait(self, predicate, timeout: float, what: str, interval: float = 0.5):
        """Poll until ``predicate(statuses)`` is truthy; TimeoutError otherwise."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = predicate(self.poll())
            if value:
                return value
            time.sleep(interval)
        raise TimeoutError(f"not within {timeout} s: {what}")

    def all_training(self, statuses: list[dict | None]) -> bool:
        return all(s is not None and s.get("step", 0) > 0 for s in statuses)

    @staticmethod
    def log_tail(m: NodeProc, chars: int = 3000) -> str:
        try:
            return m.log.read_text()[-chars:] if m.log else ""
        except OSError:
            return ""

    # ------------------------------------------------------------------ stop
    def pids(self) -> list[int]:
        return [m.proc.pid for m in self.members if m.proc is not None]

    def stop(self, timeout: float = 30.0) -> dict[str, int | None]:
        """SIGTERM every process started (by pid), wait up to ``timeout`` s, SIGKILL stragglers.

        Safe to call twice and from a ``finally``; a second Ctrl+C during the wait is absorbed
        so the kill still happens. Returns each node's exit code (negative: killed by signal).
        """
        self._stopped = True
        procs = [m for m in self.members if m.proc is not None]
        for m in procs:
            if m.proc.poll() is None:
                try:
                    m.proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        end = time.monotonic() + timeout
        for m in procs:
            while m.proc.poll() is None:
                try:
                    m.proc.wait(max(0.0, end - time.monotonic()))
                except subprocess.TimeoutExpired:
                    break
                except KeyboardInterrupt:  # keep stopping
                    continue
        for m in procs:
            if m.proc.poll() is None:
                try:
                    os.killpg(m.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    m.proc.kill()
                m.proc.wait()
        return {m.name: m.proc.returncode for m in procs}
