"""The fault-injection harness, ``processes`` driver: real node processes under a scenario's faults.

Each trainer node is a ``learnae node run`` process (:class:`~learnae.local.runner.LocalSwarm`:
own state directory, embedded Kubo, the manifest's Keras model, TensorFlow), every node
dialling every earlier one. Where network namespaces can be made (root and iproute2,
:func:`learnae.local.netns.available`), each node runs in a namespace of its own on one
bridge and a ``partition`` moves the groups onto separate bridges (:meth:`Lan.partition`):
gossip, gap repair and bitswap are all cut. Elsewhere the nodes share 127.0.0.1 and the
partition comes from the fault layer in each node (:mod:`learnae.ipfs.faults`, steered
through a control file): it cuts the ledger's gossip but not bitswap. ``loss`` and ``delay``
always come from the fault layer (this kernel has no netem). ``crash`` is a SIGKILL of the
node's process group; ``restart`` starts it again on the same state directory, address and
peer id. Byzantine behaviours and sensor outages are left to the ``memory`` driver.

Topologies (the scenario's ``[topology]``; all but ``mesh`` need namespaces, and are refused
with the reason where they cannot be made, :func:`check_supported`):

- ``mesh``: as above, every node reaches every other one.
- ``line`` and ``star``: a :class:`~learnae.local.netns.Lan` whose hosts have routes only to
  the hosts they are linked to (:func:`~learnae.local.netns.line_links`,
  :func:`~learnae.local.netns.star_links`, ``n0`` the hub); a dial to any other node fails at
  once. Each node is told (``--peer``) only its neighbours; peer exchange tells it the others,
  which it cannot reach. Partitions and crashes work as in a mesh.
- ``home-nat``: a :class:`~learnae.local.netns.HomeNat`. The ``relays`` relay members
  (``learnae node run --relay --reachability public``, and ``--no-serve-checkpoints`` when
  the scenario says so; :attr:`LocalSwarm.relays`) and the fetcher are public hosts, and each
  node sits behind a router of its own (``hole_punching`` per node: port-keeping or
  symmetric NAT). Relay members are told each other, nodes only the relay members. Relay
  members train nothing, are counted in no invariant and stop with the swarm. The manifest
  lets a node publish at most one checkpoint per round (``round_seconds``; 0.5 s elsewhere):
  a relay member holds only each author's newest checkpoint, and one it skipped because a
  newer one came within its one-second step can be fetched from nobody. Crashes, restarts,
  loss and delay work as in a mesh; a ``partition`` is refused.

Where the topology links nodes, the driver notes every direct connection a node reports in
its ``/status`` ``network.peers`` to a host it is not linked to (in a home-nat: anyone but a
relay member) and reports their number as ``unlinked_connections`` (0 when the network did
what it should).

Rounds are wall-clock here: round ``r`` starts ``r * round_seconds`` seconds after every
node has begun training; faults are applied at round starts, and at each round's end the
driver records each live node's test accuracy and merge count (from ``STATE/status.json``)
and the transaction ids in its tangle (read-only from its SQLite file). The no-fault
reference run stops after its last round. After the last round of the run with faults
the driver keeps recording (at most :data:`EXTRA_ROUNDS` more) until every live node has
reached the target accuracy or made ``recovery_merges`` merges since the recovery point,
so the accuracy invariant is decided also for a node restarted late. The scenario's
``[bounds.processes]`` table sets this driver's bounds (:meth:`Scenario.for_processes`).

What each invariant measures here (bounds from the scenario, as for the memory driver):

``ledger_converges``        wall seconds from the recovery point until every live node holds
                            every transaction any live node held at that point (the nodes keep
                            training and publishing, so their tips never stand still; the
                            check is that the backlog of the fault arrives everywhere); at the
                            end the same check for everything held at the last round, within
                            the same bound, and ``learnae ledger verify`` of one node's tangle.
``no_acknowledged_tx_lost``  transactions committed in a node's tangle just before its SIGKILL
                            that are missing from the file it restarts from; and transactions
                            seen in any live node's tangle during the run that a live node
                            lacks at the end.
``content_fetchable``       share of the CIDs the swarm keeps by the ledger at the end (every
                            data chunk, each author's newest ``keep`` checkpoints:
                            :func:`~learnae.local.invariants.kept_content`) that a fresh peer
                            (:mod:`learnae.local.fetcher`, its own process and namespace)
                            fetches from the swarm. In a home-nat the peer is public: it can
                            dial the relay members only, so it asks for what they hold (each
                            author's newest checkpoint and the data chunks of the last
                            ``DEFAULT_STALE`` seconds), or for nothing when they serve no
                            content; the rest is reported as ``excluded_out_of_reach``, not
                            checked.
``disk_bounded``            each node's ``/status`` ``disk``: its IPFS repository measured right
                            after a garbage collection, against ``disk.ipfs_bound_bytes``; the
                            largest ratio over the run. The nodes run without ledger pruning
                            (:data:`NO_PRUNING`): the convergence checks compare whole ledgers.
``accuracy_recovers``       the most merges (the node's own ``merges`` counter) any live node
                            made after the recovery point before its test accuracy reached
                            ``recovery_ratio`` x the reference run's final mean accuracy.
``checkpoint_fetches``      share of the peer-checkpoint fetches the nodes made over the run
                            that succeeded: ``checkpoints_fetched`` over it plus the ``timeout``
                            and ``ipfs`` rejections, from each node's last ``/status`` (a
                            crashed node's counts before the crash kept), summed over the
                            nodes; bound ``min_fetch_success``. Relay members fetch too
                            (``relay_files_fetched``) but are not counted here.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from learnae.errors import ConfigError
from learnae.ipfs import libkubo
from learnae.ipfs.faults import write_control
from learnae.ledger.tangle import Tangle
from learnae.local import netns
from learnae.local.invariants import kept_content
from learnae.local.results import SimResult
from learnae.local.runner import LOCAL_CHECKPOINT_INTERVAL, LocalSwarm, free_port
from learnae.local.scenario import Fault, Scenario, check_process_hosts
from learnae.node.network import DEFAULT_KEEP, DEFAULT_STALE

__all__ = ["SUPPORTED", "check_supported", "simulate_processes"]

SUPPORTED = ("partition", "heal", "crash", "restart", "loss", "delay")
"""Fault kinds the processes driver applies (partition and heal not in a home-nat topology)."""
START_TIMEOUT = 240.0  # seconds for every node to start training (TensorFlow start-up on 2 cores)
TICK = 0.5  # seconds between checks
NO_PRUNING = ("--ledger-window", "86400", "--ledger-keep", "1000000")
"""Node options that keep whole ledgers: the convergence checks compare them."""
EXTRA_ROUNDS = 30  # rounds observed at most after the last one (see _window_done)


def check_supported(scn: Scenario) -> None:
    """Raise :class:`ConfigError` when this driver cannot run ``scn`` here.

    That is more nodes than one test network holds, a fault it does not apply, a partition in a
    home-nat topology, or a topology other than mesh where network namespaces cannot be made
    (the reason says why).
    """
    check_process_hosts(scn)
    if scn.ledger != "own":
        raise ConfigError(f"the processes driver runs real nodes, each with its own ledger: ledger ="
                          f" {scn.ledger!r} is for the memory driver")
    kinds = {f.kind for f in scn.faults}
    other = sorted(kinds - set(SUPPORTED))
    if other:
        raise ConfigError(f"the processes driver does not apply {', '.join(other)} faults"
                          " (use --driver memory for them)")
    kind = scn.topology.kind
    if kind == "home-nat" and kinds & {"partition", "heal"}:
        raise ConfigError("the processes driver does not partition a home-nat topology (its members"
                          " behind NAT reach each other only through the relay members): use crash,"
                          " restart, loss or delay faults there")
    if kind != "mesh":
        ok, why = netns.nat_available() if kind == "home-nat" else netns.available()
        if not ok:
            raise ConfigError(f"the {kind} topology needs network namespaces, which cannot be made"
                              f" here: {why}")


def tangle_ids(state: Path) -> set[str]:
    """The transaction ids in a node's tangle file (read-only; works while the node runs)."""
    def read() -> set[str]:
        db = sqlite3.connect(f"file:{state / 'tangle.sqlite'}?mode=ro", uri=True, timeout=5)
        try:
            return {row[0] for row in db.execute("SELECT id FROM tx")}
        finally:
            db.close()

    for _ in range(4):  # e.g. the file is still being created
        with contextlib.suppress(sqlite3.Error):
            return read()
        time.sleep(0.2)
    return read()


def content_cids(state: Path, *, relayed: bool = False) -> list[str]:
    """The content CIDs the swarm keeps by the tangle in ``state`` (:func:`kept_content`).

    ``relayed``: only what a relay member holds of it (:mod:`learnae.node.serving`): each
    author's newest checkpoint and the data chunks announced within the last
    :data:`~learnae.node.network.DEFAULT_STALE` seconds.
    """
    with Tangle(state / "tangle.sqlite", read_only=True) as tangle:
        if not relayed:
            return sorted(kept_content(tangle, DEFAULT_KEEP))
        since_ms = (time.time() - DEFAULT_STALE) * 1000
        return sorted(cid for cid, tx in kept_content(tangle, 1).items()
                      if tx.kind == "checkpoint" or tx.time >= since_ms)


class _Run:
    def __init__(self, scn: Scenario, out: Path, with_faults: bool, echo: Callable[[str], None],
                 use_netns: bool | None, target: float | None = None):
        self.scn = scn
        self.target = target
        self.out = out
        self.faults = scn.faults if with_faults else ()
        self.reference = not with_faults
        self.echo = echo
        self.n = scn.nodes
        self.topology = scn.topology
        self.relays = scn.topology.relays
        if use_netns is None:
            use_netns = netns.available()[0]
        if not use_netns and scn.topology.kind != "mesh":
            raise ConfigError(f"the {scn.topology.kind} topology needs network namespaces (the driver"
                              " was told not to use them)")
        self.lan = self._network() if use_netns else None
        try:
            self.swarm = self._swarm(scn, out)
        except BaseException:
            if self.lan:
                self.lan.close()
            raise
        self.names = scn.node_names
        self.disk: dict[str, tuple[int, int]] = {}  # SimResult.disk
        self.blocked: dict[int, set[str]] = {i: set() for i in range(self.n)}
        self.loss: dict[int, float] = {i: 0.0 for i in range(self.n)}
        self.delay: dict[int, float] = {i: 0.0 for i in range(self.n)}
        self.accuracy: dict[str, dict[int, float]] = {name: {} for name in self.names}
        self.merges: dict[str, dict[int, int]] = {name: {} for name in self.names}
        self._merge_base = [0] * self.n  # a restarted node counts merges from 0 again
        self.ledger_size: list[float] = []
        self.seen: set[str] = set()
        self.restart_missing: list[str] = []
        self.rejections: dict[str, int] = {}
        # peer-checkpoint fetches per node: (succeeded, failed) in its last status, and the
        # totals of its runs before a crash (a restarted node counts from 0 again)
        self._fetches: dict[int, tuple[int, int]] = {}
        self._fetch_base: dict[int, tuple[int, int]] = {}
        self.unlinked: set[tuple[int, str]] = set()  # (node, host) direct connections off the topology
        self.private: set[int] = set()  # nodes that found themselves behind NAT
        self.backlog = 0  # most transactions a live node lacked at the recovery point
        self._watch: tuple[float, set[str]] | None = None  # (recovery point, ids held then)
        self._converge: float | None = None  # seconds until every live node held those ids

    def _network(self) -> netns.Lan | netns.HomeNat:
        """The namespaces: hosts for the nodes, the relay members and the fetcher.

        mesh, line, star: a :class:`~learnae.local.netns.Lan`, node ``i`` on host ``i``, the
        fetcher on the last host, linked to every node. home-nat: a
        :class:`~learnae.local.netns.HomeNat`, the relay members on the first public hosts, the
        fetcher on the last public one, each node behind a router of its own.
        """
        n, kind = self.n, self.topology.kind
        if kind == "home-nat":
            return netns.HomeNat(self.relays + 1, n, hole_punching=list(self.topology.hole_punching))
        if kind == "mesh":
            return netns.Lan(n + 1)
        links = netns.line_links(n) if kind == "line" else netns.star_links(n)
        return netns.Lan(n + 1, links=links | {(i, n) for i in range(n)})

    def host(self, i: int) -> int:
        """The network's host of node ``i``."""
        return i + self.relays + 1 if self.topology.kind == "home-nat" else i

    def fetcher_host(self) -> int:
        """The network's host of the fetcher."""
        return self.relays if self.topology.kind == "home-nat" else self.n

    def neighbours(self, i: int) -> list[int]:
        """The nodes node ``i`` is linked to (line and star topologies)."""
        links = (self.lan.links if isinstance(self.lan, netns.Lan) else None) or frozenset()
        linked = {b for a, b in links if a == i} | {a for a, b in links if b == i}
        return sorted(linked - {self.fetcher_host()})

    def linked_hosts(self, i: int) -> list[int]:
        """The hosts node ``i`` may hold a direct connection to (not in a mesh).

        Its neighbours' and the fetcher's; in a home-nat the relay members' (nobody can dial a
        node behind NAT, and it is told only the relay members).
        """
        if self.topology.kind == "home-nat":
            return list(range(self.relays))
        return [*(self.host(j) for j in self.neighbours(i)), self.fetcher_host()]

    def _peers(self, i: int) -> list[str]:
        """Node ``i``'s ``--peer`` addresses: its neighbours', or the relay members' (home-nat)."""
        if self.topology.kind == "home-nat":
            return [r.addr for r in self.swarm.relays]
        return [self.swarm.members[j].addr for j in self.neighbours(i)]

    def _swarm(self, scn: Scenario, out: Path) -> LocalSwarm:
        """Make the local swarm: in a mesh every node dials every earlier one.

        Otherwise each node is told its neighbours or the relay members only (:meth:`_peers`).
        The nodes run in namespaces when there is a network; each node's fault layer follows
        its control file.
        """
        lan, kind = self.lan, self.topology.kind
        relay_args = ["--reachability", "public", "--quiet", *NO_PRUNING]
        if not self.topology.serve_checkpoints:
            relay_args.append("--no-serve-checkpoints")
        return LocalSwarm(
            out, nodes=self.n, sensors=scn.sensors, dataset=scn.dataset, partition=scn.partition,
            merge=scn.merge, seed=scn.seed, mesh=True, fetch_timeout=5.0,
            stream_seconds=max(1.0, scn.rounds * scn.round_seconds * 0.6),
            hosts=[lan.addresses[self.host(i)] for i in range(self.n)] if lan else None,
            wrap=(lambda i, argv: lan.command(self.host(i) if i < self.n else i - self.n, argv))
            if lan else None,
            extra_args=lambda i: ["--fault-control", str(self.control(i)), "--k", str(scn.peers_per_merge),
                                  "--quiet", *NO_PRUNING],
            peers=None if kind == "mesh" else self._peers,
            relay_hosts=lan.addresses[:self.relays] if lan and self.relays else None,
            relay_args=relay_args,
            checkpoint_interval=scn.round_seconds if kind == "home-nat" else LOCAL_CHECKPOINT_INTERVAL)

    def control(self, i: int) -> Path:
        return self.out / f"faults-n{i}.json"

    def _write_controls(self) -> None:
        for i in range(self.n):
            write_control(self.control(i), blocked=self.blocked[i], loss=self.loss[i], delay_ms=self.delay[i])

    def live(self) -> list[int]:
        return [i for i, m in enumerate(self.swarm.members) if not m.down]

    # ---------------------------------------------------------------------------- faults
    def apply_faults(self, r: int) -> None:
        for f in self.faults:
            if f.at == r:
                self._begin(f)
            elif f.until == r:
                self._end(f)
        self._write_controls()

    def _targets(self, f: Fault) -> list[int]:
        return [self.names.index(n) for n in f.nodes if n in self.names] or list(range(self.n))

    def _begin(self, f: Fault) -> None:
        self.echo(f"    round {f.at}: {f.kind} {' '.join(f.nodes) or ''}".rstrip())
        if f.kind == "partition":
            groups = [[self.names.index(n) for n in g if n in self.names] for g in f.groups]
            rest = [i for i in range(self.n) if not any(i in g for g in groups)]
            groups = [g for g in (*groups, rest) if g]
            if isinstance(self.lan, netns.Lan):
                self.lan.partition(groups)
            else:
                ids = [m.addr.rpartition("/p2p/")[2] for m in self.swarm.members]
                for g in groups:
                    for i in g:
                        self.blocked[i] = {ids[j] for j in range(self.n) if j not in g}
        elif f.kind == "heal":
            if isinstance(self.lan, netns.Lan):
                self.lan.heal()
            for i in range(self.n):
                self.blocked[i] = set()
        elif f.kind == "crash":
            for i in self._targets(f):
                self._crash(i)
        elif f.kind == "restart":
            for i in self._targets(f):
                self.swarm.start_node(i)
        elif f.kind == "loss":
            for i in self._targets(f):
                self.loss[i] = f.p
        elif f.kind == "delay":
            for i in self._targets(f):
                self.delay[i] = f.ms

    def _end(self, f: Fault) -> None:
        self.echo(f"    round {f.until}: end of {f.kind}")
        for i in self._targets(f):
            if f.kind == "loss":
                self.loss[i] = 0.0
            elif f.kind == "delay":
                self.delay[i] = 0.0

    def _crash(self, i: int) -> None:
        """SIGKILL node ``i``; what its tangle held just before must be in the file after."""
        m = self.swarm.members[i]
        before = tangle_ids(m.state)
        self.swarm.kill(i)
        self._merge_base[i] = max(self.merges[self.names[i]].values(), default=0)
        base, last = self._fetch_base.get(i, (0, 0)), self._fetches.pop(i, (0, 0))
        self._fetch_base[i] = (base[0] + last[0], base[1] + last[1])
        after = tangle_ids(m.state)
        self.seen |= before
        self.restart_missing += sorted(f"{self.names[i]}:{tx}" for tx in before - after)
        with contextlib.suppress(OSError):
            (m.state / "status.json").unlink()  # stale until the restarted node writes it

    # --------------------------------------------------------------------------- observe
    def record(self, r: int) -> None:
        statuses = self.swarm.poll()
        sizes = []
        for i in self.live():
            m, s = self.swarm.members[i], statuses[i]
            if s is None:
                continue
            ids = tangle_ids(m.state)
            self.seen |= ids
            sizes.append(len(ids))
            self._note_disk(self.names[i], s.get("disk") or {})
            self._note_fetches(i, s)
            self._note_network(i, s.get("network") or {})
            acc = (s.get("test") or {}).get("accuracy")
            if acc is not None:
                self.accuracy[self.names[i]][r] = float(acc)
                self.merges[self.names[i]][r] = self._merge_base[i] + int(s.get("merges") or 0)
        self.ledger_size.append(float(np.mean(sizes)) if sizes else 0.0)

    def _note_fetches(self, i: int, status: dict) -> None:
        """Keep node ``i``'s peer-checkpoint fetch counts from its ``status``."""
        rejected = status.get("rejections") or {}
        self._fetches[i] = (int(status.get("checkpoints_fetched") or 0),
                            int(rejected.get("timeout", 0)) + int(rejected.get("ipfs", 0)))

    def _note_network(self, i: int, network: dict) -> None:
        """Note whether node ``i`` is behind NAT, and its direct connections off the topology."""
        if network.get("reachability") == "private":
            self.private.add(i)
        if self.lan is None or self.topology.kind == "mesh":
            return
        allowed = {self.lan.addresses[h] for h in self.linked_hosts(i)}
        for peer in network.get("peers") or []:
            host = str(peer.get("addr", "")).split("/")[2:3]
            if peer.get("via") == "direct" and host and host[0] not in allowed:
                self.unlinked.add((i, host[0]))

    def fetch_counts(self) -> tuple[int, int]:
        """Peer-checkpoint fetches over the run, all nodes: (succeeded, failed)."""
        both = [*self._fetch_base.values(), *self._fetches.values()]
        return sum(ok for ok, _ in both), sum(bad for _, bad in both)

    def _note_disk(self, name: str, disk: dict) -> None:
        """Keep the node's measurement nearest its bound (only those right after a collection)."""
        used, bound = disk.get("ipfs_bytes"), disk.get("ipfs_bound_bytes")
        if used is None or not bound or not disk.get("gc"):
            return
        worst = self.disk.get(name)
        if worst is None or used * worst[1] > worst[0] * bound:
            self.disk[name] = (used, bound)

    def union(self) -> set[str]:
        out: set[str] = set()
        for i in self.live():
            out |= tangle_ids(self.swarm.members[i].state)
        return out

    def holds(self, wanted: set[str]) -> bool:
        return all(wanted <= tangle_ids(self.swarm.members[i].state) for i in self.live())

    def _sleep_until(self, when: float) -> None:
        """Poll the nodes until ``when``, noting when the recovery backlog has arrived."""
        while time.monotonic() < when:
            self.swarm.poll()
            if self._watch and self._converge is None and self.holds(self._watch[1]):
                self._converge = time.monotonic() - self._watch[0]
            time.sleep(TICK)

    def _window_done(self, start: int) -> bool:
        """Whether the accuracy invariant is decided for every live node.

        It is once, since round ``start``, the node has reached the target accuracy (when
        known) or made ``recovery_merges`` merges.
        """
        bound = self.scn.bounds["recovery_merges"]
        for i in self.live():
            name = self.names[i]
            counts = self.merges[name]
            before = max((c for r, c in counts.items() if r < start), default=0)
            after = [c for r, c in counts.items() if r >= start]
            reached = self.target is not None and any(
                a >= self.target for r, a in self.accuracy[name].items() if r >= start)
            if not reached and (not after or max(after) - before < bound):
                return False
        return True

    def wait_holds(self, wanted: set[str], until: float) -> float | None:
        """Seconds until every live node holds ``wanted`` (None: not by ``until``)."""
        start = time.monotonic()
        while True:
            self.swarm.poll()
            if self.holds(wanted):
                return time.monotonic() - start
            if time.monotonic() >= until:
                return None
            time.sleep(TICK)

    # ------------------------------------------------------------------------------- run
    def run(self) -> SimResult:
        scn = self.scn
        bound = scn.bounds["converge_seconds"]
        self._write_controls()
        self.swarm.start()
        where = f" in a {self.topology.kind} of network namespaces" if self.lan else " on 127.0.0.1"
        relays = f" and {self.relays} relay member{'s' * (self.relays > 1)}" if self.relays else ""
        self.echo(f"  {self.n} node processes{relays}{where}; waiting for every node to train…")
        started = time.monotonic()
        self.swarm.wait(self.swarm.all_training, START_TIMEOUT, "every node training")
        t0 = time.monotonic()
        self.echo(f"  every node training after {t0 - started:.1f} s")
        recovery_round = min(scn.recovery_round(), scn.rounds) if self.faults else 0
        self._watch = None
        self._converge = None
        for r in range(scn.rounds + 1):
            self._sleep_until(t0 + r * scn.round_seconds)
            if r:
                self.record(r - 1)
            self.apply_faults(r)
            if r == recovery_round:
                self._watch = (time.monotonic(), self.union())
                self.backlog = max((len(self._watch[1] - tangle_ids(self.swarm.members[i].state))
                                    for i in self.live()), default=0)
        if self.reference:
            return self._reference_result(time.monotonic() - t0)
        # Observe on until every live node has made the merges the accuracy invariant allows
        # after the recovery point (a restarted node first loads TensorFlow again).
        r = scn.rounds + 1
        while r <= scn.rounds + EXTRA_ROUNDS and not self._window_done(recovery_round):
            self._sleep_until(t0 + r * scn.round_seconds)
            self.record(r - 1)
            r += 1
        self.echo(f"  {r} rounds observed in {time.monotonic() - t0:.1f} s; checking the ledgers and the content")
        watch_from, converge = self._watch, self._converge
        if watch_from is None:  # set in the loop above: the recovery round is at most `rounds`
            raise RuntimeError(f"recovery round {recovery_round} was never reached in"
                               f" {scn.rounds} rounds")
        # the recovery backlog, then everything held at the end, each within the bound
        if converge is None:
            waited = self.wait_holds(watch_from[1], watch_from[0] + bound)
            converge = None if waited is None else time.monotonic() - watch_from[0]
        final_in_step = self.wait_holds(self.union(), time.monotonic() + bound) is not None
        missing_seen = sorted({f"{self.names[i]}:{tx}" for i in self.live()
                               for tx in self.seen - tangle_ids(self.swarm.members[i].state)})
        fetch = self.fetch_check()
        for i, s in enumerate(self.swarm.poll()):
            for code, count in ((s or {}).get("rejections") or {}).items():
                self.rejections[code] = self.rejections.get(code, 0) + count
            if s is not None:
                self._note_fetches(i, s)
        fetched, failed = self.fetch_counts()
        served = [((s or {}).get("network") or {}).get("served") or {}
                  for s in self.swarm.relay_statuses()]
        wall = time.monotonic() - t0
        live = self.live()
        self.swarm.stop()
        problems = self.verify(live[0]) if live else ["no live node"]
        return SimResult(
            accuracy=self.accuracy, ledger_size=self.ledger_size, honest=list(self.names),
            live_at_end=[self.names[i] for i in live], converge_seconds=converge, final_in_step=final_in_step,
            recovery_time=recovery_round * scn.round_seconds, acked_missing=missing_seen,
            acked_checked=len(self.seen), restart_missing=self.restart_missing,
            fetch_checked=fetch["checked"], fetch_missing=fetch["missing"],
            fetch_excluded=fetch.get("excluded", 0), verify_problems=problems,
            counters={"backlog_at_recovery": self.backlog, "fetch_seconds": fetch.get("seconds", 0),
                      "fetch_rotated_out": fetch.get("rotated", 0),
                      "namespaces": int(self.lan is not None),
                      "checkpoints_fetched": fetched, "checkpoint_fetches_failed": failed,
                      "relays": self.relays,
                      "relay_files_fetched": sum(int(s.get("fetched", 0)) for s in served),
                      "unlinked_connections": len(self.unlinked), "private_nodes": len(self.private)},
            rejections=self.rejections, simulated_seconds=wall, merges=self.merges, disk=self.disk,
            converge_unit="wall seconds from the recovery point until every live node holds every transaction"
                          " any live node held there")

    def _reference_result(self, wall: float) -> SimResult:
        """Stop the swarm after the last round; the result holds what a reference gives."""
        self.swarm.stop()
        return SimResult(
            accuracy=self.accuracy, ledger_size=self.ledger_size, honest=list(self.names),
            live_at_end=[self.names[i] for i in self.live()], converge_seconds=None, final_in_step=False,
            recovery_time=0.0, acked_missing=[], acked_checked=0, restart_missing=[], fetch_checked=0,
            fetch_missing=[], fetch_excluded=0, verify_problems=[], counters={}, rejections=self.rejections,
            simulated_seconds=wall, merges=self.merges, disk=self.disk)

    def fetch_check(self) -> dict:
        """What the swarm keeps (:func:`content_cids`), fetched by a fresh peer process.

        The nodes train on meanwhile: a checkpoint that falls out of its author's newest
        ``keep`` during the check is unpinned and collected by design. A CID the peer did not
        get counts as missing only if the ledger still says it is kept after the fetches. The
        peer reads what the first live node's ledger keeps once it is connected, and gives up
        waiting for a CID as soon as that ledger stops keeping it (:mod:`learnae.local.fetcher`'s
        ``--kept-by``: ``rotated``).
        In a home-nat topology the peer dials the relay members only (nobody can dial the
        nodes behind NAT) and asks for what they hold (:func:`content_cids`, ``relayed``), or
        nothing when they serve no content; the rest of what the swarm keeps is ``excluded``.
        """
        live = self.live()
        home_nat = self.topology.kind == "home-nat"
        state = self.swarm.members[live[0]].state if live else None

        def kept() -> list[str]:
            if state is None or (home_nat and not self.topology.serve_checkpoints):
                return []
            return content_cids(state, relayed=home_nat)

        excluded = len(content_cids(state)) - len(kept()) if home_nat and state else 0
        work = self.out / "fetcher"
        work.mkdir(exist_ok=True)
        libkubo.create_repo(work / "ipfs")
        host = self.lan.addresses[self.fetcher_host()] if self.lan else "127.0.0.1"
        argv = [sys.executable, "-m", "learnae.local.fetcher", "--repo", str(work / "ipfs"),
                "--invite", str(self.swarm.invite), "--listen", f"{host}:{4001 if self.lan else free_port()}",
                "--timeout", str(max(self.scn.fetch_timeout, 10.0)), "--out", str(work / "result.json")]
        if state is None or (home_nat and not self.topology.serve_checkpoints):  # nothing to fetch
            (work / "cids.txt").write_text("")
            argv += ["--cids", str(work / "cids.txt")]
        else:  # what it keeps, read by the peer once it is connected
            argv += ["--kept-by", str(state), *(["--relayed"] if home_nat else [])]
        peers = self.swarm.relays if home_nat else [self.swarm.members[i] for i in live]
        for m in peers:
            argv += ["--peer", m.addr]
        if self.lan:
            argv = self.lan.command(self.fetcher_host(), argv)
        with open(work / "fetcher.log", "w") as logf:
            proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        try:
            result = json.loads((work / "result.json").read_text())
        except (OSError, ValueError):  # the peer failed: everything kept counts as missing
            cids = kept()
            return {"checked": len(cids), "missing": cids, "excluded": excluded}
        still = set(kept())  # after the fetches
        missing = [cid for cid in result["missing"] if cid in still]
        return {"checked": len(result["checked"]), "missing": missing, "seconds": result["elapsed_s"],
                "rotated": len(result["rotated"]) + len(result["missing"]) - len(missing), "excluded": excluded}

    def verify(self, i: int) -> list[str]:
        """``learnae ledger verify`` of node ``i``'s tangle (after the nodes stopped)."""
        from learnae.invite import Invite
        from learnae.state import open_tangle

        tangle, _ = open_tangle(self.swarm.members[i].state, invite=Invite.load(self.swarm.invite))
        try:
            return [str(p) for p in tangle.verify()]
        finally:
            tangle.close()

    def close(self) -> None:
        try:
            self.swarm.stop()
        finally:
            if self.lan:
                self.lan.close()


def simulate_processes(scn: Scenario, workdir: Path, *, with_faults: bool = True,
                       echo: Callable[[str], None] = print, use_netns: bool | None = None,
                       target: float | None = None) -> SimResult:
    """Run ``scn`` once on real node processes in ``workdir`` (see the module doc).

    ``use_netns``: put the nodes in network namespaces (default: when
    :func:`learnae.local.netns.available`); False forces the fault layer for partitions (a
    mesh only). ``target``: the accuracy the ``accuracy_recovers`` invariant asks for (from
    the reference run); after the last round the run ends once every node has reached it or
    used up its ``recovery_merges``.

    The reference run (``with_faults`` False) gives the accuracy the other run is judged
    against, as the memory driver's does: it runs the scenario's ``rounds`` and stops, with no
    observation window after them and no ledger, content or disk check (its result's other
    fields are empty).

    Counters in the result: ``backlog_at_recovery`` (the most transactions a live node lacked
    at the recovery point: above 0 shows a partition really cut the ledger),
    ``fetch_seconds``, ``fetch_rotated_out``, ``namespaces`` (1 or 0),
    ``checkpoints_fetched`` and ``checkpoint_fetches_failed`` (``checkpoint_fetches``),
    ``relays`` and ``relay_files_fetched`` (files the relay members fetched to serve),
    ``unlinked_connections`` (see the module doc) and ``private_nodes`` (nodes whose
    ``/status`` said they are behind NAT at some point).

    Raises:
        ConfigError: the driver cannot run ``scn`` here (:func:`check_supported`), or a
            topology other than mesh with ``use_netns`` False.
    """
    check_supported(scn)
    workdir.mkdir(parents=True, exist_ok=True)
    run = _Run(scn, workdir, with_faults, echo, use_netns, target)
    try:
        return run.run()
    finally:
        run.close()
