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

Rounds are wall-clock here: round ``r`` starts ``r * round_seconds`` seconds after every
node has begun training; faults are applied at round starts, and at each round's end the
driver records each live node's test accuracy and merge count (from ``STATE/status.json``)
and the transaction ids in its tangle (read-only from its SQLite file). After the last round
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
                            fetches from the swarm.
``disk_bounded``            each node's ``/status`` ``disk``: its IPFS repository measured right
                            after a garbage collection, against ``disk.ipfs_bound_bytes``; the
                            largest ratio over the run. The nodes run without ledger pruning
                            (:data:`NO_PRUNING`): the convergence checks compare whole ledgers.
``accuracy_recovers``       the most merges (the node's own ``merges`` counter) any live node
                            made after the recovery point before its test accuracy reached
                            ``recovery_ratio`` x the reference run's final mean accuracy.
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
from learnae.local.runner import LocalSwarm, free_port
from learnae.local.scenario import Fault, Scenario
from learnae.node.network import DEFAULT_KEEP

__all__ = ["SUPPORTED", "check_supported", "simulate_processes"]

SUPPORTED = ("partition", "heal", "crash", "restart", "loss", "delay")
"""Fault kinds the processes driver applies."""
START_TIMEOUT = 240.0  # seconds for every node to start training (TensorFlow start-up on 2 cores)
TICK = 0.5  # seconds between checks
NO_PRUNING = ("--ledger-window", "86400", "--ledger-keep", "1000000")
"""Node options that keep whole ledgers: the convergence checks compare them."""
EXTRA_ROUNDS = 30  # rounds observed at most after the last one (see _window_done)


def check_supported(scn: Scenario) -> None:
    """Raise :class:`ConfigError` when ``scn`` has a fault this driver does not apply."""
    other = sorted({f.kind for f in scn.faults} - set(SUPPORTED))
    if other:
        raise ConfigError(f"the processes driver does not apply {', '.join(other)} faults"
                          " (use --driver memory for them)")


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


def content_cids(state: Path) -> list[str]:
    """The content CIDs the swarm keeps by the tangle in ``state`` (:func:`kept_content`)."""
    with Tangle(state / "tangle.sqlite", read_only=True) as tangle:
        return sorted(kept_content(tangle, DEFAULT_KEEP))


class _Run:
    def __init__(self, scn: Scenario, out: Path, with_faults: bool, echo: Callable[[str], None],
                 use_netns: bool | None, target: float | None = None):
        self.scn = scn
        self.target = target
        self.out = out
        self.faults = scn.faults if with_faults else ()
        self.echo = echo
        self.n = scn.nodes
        if use_netns is None:
            use_netns = netns.available()[0]
        self.lan = netns.Lan(self.n + 1) if use_netns else None  # the last host is the fetcher's
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
        self.backlog = 0  # most transactions a live node lacked at the recovery point
        self._watch: tuple[float, set[str]] | None = None  # (recovery point, ids held then)
        self._converge: float | None = None  # seconds until every live node held those ids

    def _swarm(self, scn: Scenario, out: Path) -> LocalSwarm:
        """Make the local swarm: every node dials every earlier one.

        The nodes run in namespaces when there is a LAN; each node's fault layer follows its
        control file.
        """
        lan = self.lan
        return LocalSwarm(
            out, nodes=self.n, sensors=scn.sensors, dataset=scn.dataset, partition=scn.partition,
            merge=scn.merge, seed=scn.seed, mesh=True, fetch_timeout=5.0,
            stream_seconds=max(1.0, scn.rounds * scn.round_seconds * 0.6),
            hosts=lan.addresses[:self.n] if lan else None,
            wrap=(lambda i, argv: lan.command(i, argv)) if lan else None,
            extra_args=lambda i: ["--fault-control", str(self.control(i)), "--k", str(scn.peers_per_merge),
                                  "--quiet", *NO_PRUNING])

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
            if self.lan:
                self.lan.partition(groups)
            else:
                ids = [m.addr.rpartition("/p2p/")[2] for m in self.swarm.members]
                for g in groups:
                    for i in g:
                        self.blocked[i] = {ids[j] for j in range(self.n) if j not in g}
        elif f.kind == "heal":
            if self.lan:
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
            acc = (s.get("test") or {}).get("accuracy")
            if acc is not None:
                self.accuracy[self.names[i]][r] = float(acc)
                self.merges[self.names[i]][r] = self._merge_base[i] + int(s.get("merges") or 0)
        self.ledger_size.append(float(np.mean(sizes)) if sizes else 0.0)

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
        self.echo(f"  {self.n} node processes{' in network namespaces' if self.lan else ' on 127.0.0.1'};"
                  " waiting for every node to train…")
        self.swarm.wait(self.swarm.all_training, START_TIMEOUT, "every node training")
        t0 = time.monotonic()
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
        # Observe on until every live node has made the merges the accuracy invariant allows
        # after the recovery point (a restarted node first loads TensorFlow again).
        r = scn.rounds + 1
        while r <= scn.rounds + EXTRA_ROUNDS and not self._window_done(recovery_round):
            self._sleep_until(t0 + r * scn.round_seconds)
            self.record(r - 1)
            r += 1
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
        for s in self.swarm.poll():
            for code, count in ((s or {}).get("rejections") or {}).items():
                self.rejections[code] = self.rejections.get(code, 0) + count
        wall = time.monotonic() - t0
        live = self.live()
        self.swarm.stop()
        problems = self.verify(live[0]) if live else ["no live node"]
        return SimResult(
            accuracy=self.accuracy, ledger_size=self.ledger_size, honest=list(self.names),
            live_at_end=[self.names[i] for i in live], converge_seconds=converge, final_in_step=final_in_step,
            recovery_time=recovery_round * scn.round_seconds, acked_missing=missing_seen,
            acked_checked=len(self.seen), restart_missing=self.restart_missing,
            fetch_checked=fetch["checked"], fetch_missing=fetch["missing"], fetch_excluded=0,
            verify_problems=problems,
            counters={"backlog_at_recovery": self.backlog, "fetch_seconds": fetch.get("seconds", 0),
                      "fetch_rotated_out": fetch.get("rotated", 0),
                      "namespaces": int(self.lan is not None)},
            rejections=self.rejections, simulated_seconds=wall, merges=self.merges, disk=self.disk,
            converge_unit="wall seconds from the recovery point until every live node holds every transaction"
                          " any live node held there")

    def fetch_check(self) -> dict:
        """What the swarm keeps (:func:`content_cids`), fetched by a fresh peer process.

        The nodes train on meanwhile: a checkpoint that falls out of its author's newest
        ``keep`` during the check is unpinned and collected by design. A CID the peer did not
        get counts as missing only if the ledger still says it is kept after the fetches.
        """
        live = self.live()
        cids = content_cids(self.swarm.members[live[0]].state) if live else []
        work = self.out / "fetcher"
        work.mkdir(exist_ok=True)
        (work / "cids.txt").write_text("\n".join(cids))
        libkubo.create_repo(work / "ipfs")
        host = self.lan.addresses[self.n] if self.lan else "127.0.0.1"
        argv = [sys.executable, "-m", "learnae.local.fetcher", "--repo", str(work / "ipfs"),
                "--invite", str(self.swarm.invite), "--listen", f"{host}:{4001 if self.lan else free_port()}",
                "--cids", str(work / "cids.txt"), "--timeout", str(max(self.scn.fetch_timeout, 10.0)),
                "--out", str(work / "result.json")]
        for i in live:
            argv += ["--peer", self.swarm.members[i].addr]
        if self.lan:
            argv = self.lan.command(self.n, argv)
        with open(work / "fetcher.log", "w") as logf:
            proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        try:
            result = json.loads((work / "result.json").read_text())
        except (OSError, ValueError):
            return {"checked": len(cids), "missing": cids}
        kept = set(content_cids(self.swarm.members[live[0]].state))  # after the fetches
        missing = [cid for cid in result["missing"] if cid in kept]
        return {"checked": len(cids), "missing": missing, "seconds": result["elapsed_s"],
                "rotated": len(result["missing"]) - len(missing)}

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
    :func:`learnae.local.netns.available`); False forces the fault layer for partitions.
    ``target``: the accuracy the ``accuracy_recovers`` invariant asks for (from the reference
    run); after the last round the run ends once every node has reached it or used up its
    ``recovery_merges``.
    Counters in the result: ``backlog_at_recovery`` (the most transactions a live node lacked
    at the recovery point: above 0 shows a partition really cut the ledger),
    ``fetch_seconds``, ``namespaces`` (1 or 0).
    """
    check_supported(scn)
    workdir.mkdir(parents=True, exist_ok=True)
    run = _Run(scn, workdir, with_faults, echo, use_netns, target)
    try:
        return run.run()
    finally:
        run.close()
