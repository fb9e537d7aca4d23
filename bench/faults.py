"""Benchmark: the memory driver runs a 100-node partition-heal scenario (and its no-fault
reference run). Prints the wall time, the simulated time and the invariants' figures.

Usage: ``python bench/faults.py [--nodes 100] [--rounds 12] [--out DIR]``. The issue's
target: at most 5 minutes on 2 cores for 100 nodes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from learnae.local.harness import run_scenario
from learnae.local.scenario import parse_scenario


def scenario(nodes: int, rounds: int) -> dict:
    return {
        "name": f"bench-partition-heal-{nodes}",
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=14)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    scn = parse_scenario(scenario(args.nodes, args.rounds), where="bench")
    out = args.out or tempfile.mkdtemp(prefix="learnae-bench-faults-")
    start = time.perf_counter()
    report = run_scenario(scn, out)
    wall = time.perf_counter() - start
    print(f"memory driver, {args.nodes}-node partition-heal, {args.rounds} rounds "
          f"(plus the no-fault reference run), cpus={os.cpu_count()}")
    print(f"wall time: {wall:.1f} s (target <= 300 s); simulated time per run: {report['simulated_seconds']:.0f} s")
    for name, inv in report["invariants"].items():
        print(f"  {name:26} {'pass' if inv['pass'] else 'FAIL'}  figure {inv['figure']}  bound {inv['bound']}")
    print(f"report: {out}/report.json, {out}/timeline.png")


if __name__ == "__main__":
    main()
