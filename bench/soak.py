"""Soak benchmark: node processes running for a long while stay within their disk, ledger and memory.

Usage: python bench/soak.py [--minutes 15] [--nodes 3] [--model mlp-1m] [--plot docs/soak.png]

A swarm of ``--nodes`` trainer processes (``learnae node run``, embedded Kubo on 127.0.0.1,
digits in Dirichlet(0.5) shards, ``--model`` 's checkpoints: ``mlp-1m`` is 4.2 MB) runs for
``--minutes`` with a short ``checkpoint_interval`` (``--interval`` seconds) and a short ledger
window, so that in minutes it goes through what a volunteer's node goes through in days:
hundreds of checkpoints published and fetched, ledger prunes and snapshots. Every
``--sample`` seconds it records, for each node: the state directory's size and its ``ipfs/``
part (bytes on disk), the ledger's rows (``/status``) and file size (``tangle.sqlite`` with
its WAL), the process's resident memory (RSS, from ``/proc``), and the node's counters.

At the end it prints the figures and checks what issue 14 asks, from minute 2 to the end:

- no node's ``ipfs/`` exceeds ``(keep + k + 4) x checkpoint + 64 MiB``;
- no node's ledger exceeds its pruning bound: the genesis, each node's newest snapshot
  transaction, ``ledger_keep`` checkpoints per author, the checkpoints published between two
  prunes, and the frontier (entry points) the node reports;
- each node's RSS grows by under 10 % from minute 2 to the end.

It writes the samples as JSON next to the plot (``--plot``; one panel per figure).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from learnae.ipfs import libkubo
from learnae.local.runner import free_port
from learnae.manifest import Manifest
from learnae.models import model_config
from learnae.models.check import check_model
from learnae.node.upkeep import REPO_SLACK, SPARE_CHECKPOINTS, checkpoint_bytes, measure
from learnae.state import StateDir, init_swarm

NODE = "from learnae.cli import main; main()"


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (``VmRSS``), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def read_status(state: Path) -> dict:
    try:
        return json.loads(StateDir(state).status.read_text())
    except (OSError, ValueError):
        return {}


def sample(states: list[Path], procs: list[subprocess.Popen], t0: float) -> list[dict]:
    rows = []
    for state, proc in zip(states, procs, strict=True):
        if proc.poll() is not None:
            raise SystemExit(f"node {state.name} exited with status {proc.returncode}; see {state}/node.log")
        use = measure(StateDir(state), budget=0)
        st = read_status(state)
        ledger = st.get("ledger", {})
        rows.append({
            "node": state.name, "t_s": round(time.monotonic() - t0, 1),
            "state_bytes": use.total, "ipfs_bytes": use.ipfs,
            "ledger_rows": ledger.get("transactions"), "ledger_file_bytes": use.ledger,
            "frontier": (ledger.get("pruning") or {}).get("frontier", 0),
            "pruned": (ledger.get("pruning") or {}).get("total", 0),
            "rss_bytes": rss_bytes(proc.pid), "published": st.get("published"), "merges": st.get("merges"),
            "ipfs_bound_bytes": st.get("disk", {}).get("ipfs_bound_bytes"),
            "gc": st.get("disk", {}).get("gc"),
        })
    return rows


def plot(samples: list[dict], bounds: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    panels = [("ipfs_bytes", "ipfs/ (MB)", 1e6, bounds["ipfs_bytes"]),
              ("ledger_rows", "ledger rows", 1, bounds["ledger_rows"]),
              ("ledger_file_bytes", "tangle.sqlite + WAL (MB)", 1e6, None),
              ("rss_bytes", "RSS (MB)", 1e6, None)]
    nodes = sorted({s["node"] for s in samples})
    for ax, (key, label, scale, bound) in zip(axes.flat, panels, strict=True):
        for node in nodes:
            pts = [(s["t_s"] / 60, s[key] / scale) for s in samples if s["node"] == node and s[key] is not None]
            ax.plot(*zip(*pts, strict=True), marker=".", label=node)
        if bound is not None:
            ax.axhline(bound / scale, color="red", linestyle="--", label="bound")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("minutes")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"soak: {len(nodes)} nodes, {samples[-1]['t_s'] / 60:.0f} min")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--minutes", type=float, default=15.0, help="how long the swarm runs (default 15)")
    ap.add_argument("--nodes", type=int, default=3, help="node processes (default 3)")
    ap.add_argument("--model", default="mlp-1m", help="shipped model config (default mlp-1m)")
    ap.add_argument("--interval", type=float, default=5.0,
                    help="the manifest's checkpoint_interval, seconds (default 5)")
    ap.add_argument("--keep", type=int, default=3, help="--keep of each node (default 3)")
    ap.add_argument("--k", type=int, default=2, help="--k of each node (default 2)")
    ap.add_argument("--ledger-window", type=float, default=120.0, help="seconds (default 120)")
    ap.add_argument("--ledger-keep", type=int, default=8, help="checkpoints per author (default 8)")
    ap.add_argument("--snapshot-interval", type=float, default=120.0, help="seconds (default 120)")
    ap.add_argument("--sample", type=float, default=60.0, help="seconds between samples (default 60)")
    ap.add_argument("--plot", type=Path, default=None, help="write the plot here (and the samples as .json)")
    args = ap.parse_args()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    manifest = Manifest(name="soak", model=model_config(args.model), pow_bits=4, sync_every=10,
                        checkpoint_interval=args.interval, learning_rate=0.001)
    ckpt = checkpoint_bytes(check_model(manifest.model).params)
    prune_every = min(60.0, args.ledger_window / 2)
    bounds = {
        "ipfs_bytes": (args.keep + args.k + SPARE_CHECKPOINTS) * ckpt + REPO_SLACK,
        # genesis + each node's snapshot tx + kept checkpoints + those published between prunes
        "ledger_rows": 1 + args.nodes * (1 + args.ledger_keep + math.ceil(prune_every / args.interval)),
    }
    print(f"{args.nodes} nodes, {args.model} ({ckpt / 1e6:.1f} MB a checkpoint), checkpoint every"
          f" {args.interval:g} s, keep {args.keep}, k {args.k}, ledger window {args.ledger_window:g} s /"
          f" {args.ledger_keep} per author, {args.minutes:g} min")
    print(f"bounds: ipfs/ {bounds['ipfs_bytes'] / 1e6:.0f} MB; ledger rows {bounds['ledger_rows']} + frontier")
    with tempfile.TemporaryDirectory(prefix="learnae-soak-") as tmp_name:
        tmp = Path(tmp_name)
        invite = tmp / "invite.json"
        init_swarm(tmp / "founder", manifest).invite.save(invite)
        states = [tmp / f"node{i}" for i in range(args.nodes)]
        ids = [libkubo.create_repo(s / "ipfs") for s in states]
        ports = [free_port() for _ in states]
        addrs = [f"/ip4/127.0.0.1/tcp/{p}/p2p/{i}" for p, i in zip(ports, ids, strict=True)]
        procs: list[subprocess.Popen] = []
        samples: list[dict] = []
        try:
            for i, state in enumerate(states):
                peers = [a for j, a in enumerate(addrs) if j != i]
                cmd = [sys.executable, "-c", NODE, "node", "run", "--invite", str(invite), "--state", str(state),
                       "--data", f"digits:shard={i}/{args.nodes},partition=dirichlet:0.5",
                       "--listen", f"127.0.0.1:{ports[i]}", "--quiet", "--api", "off",
                       "--keep", str(args.keep), "--k", str(args.k),
                       "--ledger-window", str(args.ledger_window), "--ledger-keep", str(args.ledger_keep),
                       "--snapshot-interval", str(args.snapshot_interval), "--network-nice", "0"]
                for p in peers:
                    cmd += ["--peer", p]
                log = open(state / "node.log", "w")  # noqa: SIM115 (closed when the process ends)
                procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              start_new_session=True))
            t0 = time.monotonic()
            end = t0 + args.minutes * 60
            next_sample = t0 + args.sample
            while time.monotonic() < end:
                time.sleep(max(0.0, min(next_sample, end) - time.monotonic()))
                if time.monotonic() >= next_sample:
                    rows = sample(states, procs, t0)
                    samples += rows
                    next_sample += args.sample
                    print(f"{rows[0]['t_s'] / 60:5.1f} min  " + "  ".join(
                        f"{r['node']}: ipfs {r['ipfs_bytes'] / 1e6:6.1f} MB, ledger {r['ledger_rows']} rows"
                        f" {r['ledger_file_bytes'] / 1e6:.2f} MB, RSS {r['rss_bytes'] / 1e6:.0f} MB,"
                        f" pub {r['published']} merges {r['merges']}" for r in rows), flush=True)
            samples += sample(states, procs, t0)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    ok = report(samples, bounds)
    if args.plot is not None:
        plot(samples, bounds, args.plot)
        args.plot.with_suffix(".json").write_text(json.dumps({"args": vars(args) | {"plot": str(args.plot)},
                                                              "bounds": bounds, "samples": samples}, indent=1))
        print(f"plot: {args.plot}; samples: {args.plot.with_suffix('.json')}")
    return 0 if ok else 1


def report(samples: list[dict], bounds: dict) -> bool:
    """Print the figures from minute 2 on and whether the bounds held."""
    ok = True
    for node in sorted({s["node"] for s in samples}):
        mine = [s for s in samples if s["node"] == node]
        late = [s for s in mine if s["t_s"] >= 120] or mine[-1:]
        ipfs = max(s["ipfs_bytes"] for s in late)
        rows = max(s["ledger_rows"] - s["frontier"] for s in late if s["ledger_rows"] is not None)
        rss0, rss1 = late[0]["rss_bytes"], late[-1]["rss_bytes"]
        growth = rss1 / rss0 - 1
        last = mine[-1]
        fits = ipfs <= bounds["ipfs_bytes"] and rows <= bounds["ledger_rows"] and growth < 0.10
        ok &= fits
        print(f"{node}: ipfs/ max {ipfs / 1e6:.1f} MB (bound {bounds['ipfs_bytes'] / 1e6:.0f});"
              f" ledger max {rows} rows beside the frontier (bound {bounds['ledger_rows']}),"
              f" file {last['ledger_file_bytes'] / 1e6:.2f} MB, {last['pruned']} pruned;"
              f" RSS {rss0 / 1e6:.0f} -> {rss1 / 1e6:.0f} MB ({growth:+.1%});"
              f" published {last['published']}, merges {last['merges']}; {'ok' if fits else 'OVER'}")
    return ok


if __name__ == "__main__":
    sys.exit(main())
