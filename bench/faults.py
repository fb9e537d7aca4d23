"""Benchmark: the memory driver runs a partition-heal scenario (and its no-fault reference run)
at one or more swarm sizes. Prints, per size, the wall time, the simulated time, the
invariants' figures and the final mean test accuracy of the faulted run against the reference's.

Usage: ``python bench/faults.py [--nodes 100 [1000 ...]] [--ledger own|shared|auto] [--rounds 14]
[--out DIR] [--no-plot]``; ``--scale`` runs 10 and 100 nodes on both ledgers and 1,000 on the
shared one. ``--ledger auto`` (the default): each node a tangle of its own up to
:data:`SHARED_FROM` nodes, the shared ledger from there (:mod:`learnae.local.shared`: with
tangles of their own the work grows with nodes squared). Targets: at most 5 minutes on 2 cores
for 100 nodes and for 1,000 (docs/benchmarks.md, "Fault harness").
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from learnae.local.harness import PARALLEL_NODES, run_scenario
from learnae.local.scenario import parse_scenario

TARGET_SECONDS = 300.0
SHARED_FROM = 500
"""``--ledger auto`` gives swarms of this many nodes and more the shared ledger."""


def scenario(nodes: int, rounds: int, ledger: str = "own") -> dict:
    """The bench's partition-heal scenario for ``nodes`` trainers (the same at every size)."""
    return {
        "name": f"bench-partition-heal-{nodes}",
        "ledger": ledger,
        "seed": 7,
        "nodes": nodes,
        "rounds": rounds,
        "merge": "mean",
        "peers_per_merge": 6,
        # Tip announcements are what grows fastest with the swarm (each reaches every node
        # and is checked against its tangle): announce less often than the 2 s default.
        "announce_interval": 8.0,
        "faults": [
            {"kind": "partition", "at": 2, "halves": True},
            {"kind": "heal", "at": rounds // 2 - 1},
        ],
    }


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the parallel runs)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def run(nodes: int, rounds: int, out: str, plot: bool, ledger: str) -> dict:
    """Run the scenario at one size on ``ledger``; print and return its figures."""
    scn = parse_scenario(scenario(nodes, rounds, ledger), where="bench")
    load_before = _loadavg()
    start = time.perf_counter()
    cpu = _cpu()
    report = run_scenario(scn, out, plot=plot)
    wall = time.perf_counter() - start
    cpu = _cpu() - cpu
    acc = report["invariants"]["accuracy_recovers"]
    faulted = sum(h[-1] for h in report["accuracy"].values() if h and h[-1] is not None) / max(
        1, sum(1 for h in report["accuracy"].values() if h and h[-1] is not None))
    reference = acc["reference_accuracy"]
    print(f"memory driver, {nodes}-node partition-heal on the {ledger} ledger, {rounds} rounds (plus the"
          f" no-fault reference run, {'in parallel' if nodes >= PARALLEL_NODES else 'after it'}),"
          f" cpus={os.cpu_count()}")
    print(f"  wall time: {wall:.1f} s, process CPU {cpu:.1f} s (target <= {TARGET_SECONDS:.0f} s);"
          f" load average before {load_before}, after {_loadavg()}")
    print(f"  simulated time per run: {report['simulated_seconds']:.0f} s")
    for name, inv in report["invariants"].items():
        print(f"  {name:26} {'pass' if inv['pass'] else 'FAIL'}  figure {inv['figure']}  bound {inv['bound']}")
    print(f"  final mean test accuracy: faulted {faulted:.4f}, no-fault reference {reference:.4f},"
          f" ratio {faulted / reference if reference else float('nan'):.4f}")
    print(f"  report: {out}/report.json" + (f", {out}/timeline.png" if plot else ""))
    return {"nodes": nodes, "ledger": ledger, "wall": wall, "cpu": cpu, "faulted": faulted,
            "reference": reference, "converge": report["invariants"]["ledger_converges"]["figure"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[100])
    parser.add_argument("--scale", action="store_true",
                        help="run 10 and 100 nodes on both ledgers, 1,000 on the shared one")
    parser.add_argument("--ledger", choices=["own", "shared", "auto"], default="auto",
                        help=f"each node a tangle of its own, one shared ledger, or auto (shared from"
                             f" {SHARED_FROM} nodes)")
    parser.add_argument("--rounds", type=int, default=14)
    parser.add_argument("--out", default=None)
    parser.add_argument("--no-plot", action="store_true", help="do not draw timeline.png")
    args = parser.parse_args()
    if args.scale:
        runs = [(10, "own"), (10, "shared"), (100, "own"), (100, "shared"), (1000, "shared")]
    else:
        runs = [(n, args.ledger if args.ledger != "auto" else "shared" if n >= SHARED_FROM else "own")
                for n in args.nodes]
    out = args.out or tempfile.mkdtemp(prefix="learnae-bench-faults-")
    rows = [run(n, args.rounds, out if len(runs) == 1 else f"{out}/{n}-{ledger}", not args.no_plot, ledger)
            for n, ledger in runs]
    if len(rows) > 1:
        print("nodes  ledger  wall s  cpu s  faulted  reference  ratio   converge s")
        for r in rows:
            print(f"{r['nodes']:5}  {r['ledger']:6}  {r['wall']:6.1f}  {r['cpu']:5.1f}  {r['faulted']:.4f}"
                  f"   {r['reference']:.4f}     {r['faulted'] / r['reference'] if r['reference'] else float('nan'):.4f}"
                  f"  {r['converge']}")


if __name__ == "__main__":
    main()
