"""Benchmark: bytes to accuracy. learnae's checkpoint codecs side by side, and FedAvg.

Usage: ``python bench/traffic.py [--nodes 4] [--duration 90] [--choices float32,float16,...]
[--model mlp-1m] [--checkpoint-interval S] [--out DIR]`` (as root: each node runs in a network
namespace of its own).

For each compression choice (the manifest's ``compression``, docs/design.md "Compressed
checkpoints") the bench runs the demo's swarm: ``--nodes`` ``learnae node run`` processes on
the demo's shards of digits (``dirichlet:0.5``) and its model, each in its own network
namespace on one bridge (:class:`learnae.local.netns.Lan`), for ``--duration`` seconds of
training. Every second it reads each node's test accuracy (its ``status.json``) and the bytes
its link carried both ways, from the bridge port's counters: everything on the wire,
checkpoints, ledger gossip, bitswap's and libp2p's own traffic, TCP and IP headers. It reports,
per node on average, the bytes sent and received until the swarm's mean test accuracy first
reached 0.95 of the centralized baseline (one model on every shard, 40 epochs), and the mean
accuracy at the end.

FedAvg (McMahan et al. 2017) in the same run: a server holds the model; each round every
node downloads it, trains one epoch on its shard and uploads the result, and the server takes
the sample-weighted mean (:func:`learnae.merge.mean`). Its bytes per node are
``rounds x 2 x`` the float32 checkpoint file, counting the model alone (no protocol, headers or
retransmissions): a lower bound, which flatters FedAvg.

Prints a table and writes ``DIR/traffic.json`` and ``DIR/traffic.png`` (accuracy against
bytes per node). Needs root (namespaces); nothing leaves the namespaces.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from learnae.formats import Checkpoint, encode_checkpoint  # noqa: E402
from learnae.local import netns  # noqa: E402
from learnae.local.runner import LOCAL_CHECKPOINT_INTERVAL, LocalSwarm, make_manifest  # noqa: E402
from learnae.manifest import Compression, Manifest  # noqa: E402
from learnae.models import MODELS, model_config  # noqa: E402
from learnae.state import open_tangle  # noqa: E402

DATASET, PARTITION, SEED = "digits", "dirichlet:0.5", 0
TARGET = 0.95
CENTRALIZED_EPOCHS = 40
CHOICES = {
    "float32": Compression(),
    "float16": Compression(codec="float16"),
    "int8": Compression(codec="int8"),
    "int4": Compression(codec="int4"),
    "int8+int4 deltas": Compression(codec="int8", delta_codec="int4", keyframe_every=8),
}


def run_choice(name: str, compression: Compression, out: Path, args: argparse.Namespace) -> dict:
    """One swarm with ``compression``: samples of (seconds, mean accuracy, bytes per node)."""
    nodes = args.nodes
    with netns.Lan(nodes, guard=True) as lan:
        swarm = LocalSwarm(out, nodes=nodes, dataset=DATASET, partition=PARTITION, seed=SEED,
                           hosts=lan.addresses, wrap=lambda i, argv: lan.command(i, argv),
                           compression=compression, checkpoint_interval=args.checkpoint_interval)
        swarm.manifest = manifest(args.model, swarm.manifest)
        samples: list[tuple[float, float | None, float]] = []
        try:
            swarm.start()
            start, training = time.monotonic(), None
            while training is None or time.monotonic() - training < args.duration:
                statuses = swarm.poll()
                if training is None and swarm.all_training(statuses):
                    training = time.monotonic()
                elif training is None and time.monotonic() - start > 180:
                    raise RuntimeError(f"the nodes were not all training after 180 s: {statuses}")
                accuracies = [((s or {}).get("test") or {}).get("accuracy") for s in statuses]
                mean = None if None in accuracies else sum(a or 0.0 for a in accuracies) / nodes
                samples.append((round(time.monotonic() - start, 1), mean, sum(lan.link_bytes()) / nodes))
                time.sleep(1.0)
            statuses = swarm.poll()
        finally:
            swarm.stop()
        foreign = sum(lan.foreign_packets().values())
    tangle, _manifest = open_tangle(swarm.members[0].state)
    try:
        sizes = [tx.payload["size"] for tx in tangle.checkpoints_since(0)[0]]
    finally:
        tangle.close()
    return {"name": name, "compression": compression.to_payload(), "samples": samples,
            "merges": [(s or {}).get("merges") for s in statuses],
            "rejections": [(s or {}).get("rejections") for s in statuses],
            "checkpoint_bytes_mean": round(sum(sizes) / max(1, len(sizes))), "checkpoints": len(sizes),
            "foreign_packets": foreign}


def manifest(model: str | None, base: Manifest) -> Manifest:
    """``base`` (the demo's manifest) with the model ``model`` (a :data:`MODELS` name), if given."""
    return base if model is None else dataclasses.replace(base, model=model_config(model))


def fedavg_curve(manifest: Manifest, nodes: int, rounds: int) -> tuple[list[float], int]:
    """FedAvg's test accuracy after each round, and the float32 checkpoint file's bytes."""
    from learnae.local.baselines import node_splits
    from learnae.merge import Contribution, mean
    from learnae.training.model import build_model, evaluate, get_weights, set_weights

    splits = node_splits(DATASET, nodes, PARTITION, SEED)
    model = build_model(manifest.model, optimizer=manifest.optimizer, learning_rate=manifest.learning_rate,
                        seed=SEED)
    weights = get_weights(model)
    size = len(encode_checkpoint(Checkpoint(weights, "bafy-genesis", 0, 0)))
    curve = []
    for _ in range(rounds):
        results = []
        for i, s in enumerate(splits):
            set_weights(model, weights)
            model.fit(s.train.x, s.train.y, batch_size=manifest.batch_size, epochs=1, verbose=0)
            results.append(Contribution(get_weights(model), samples=len(s.train), age=0, author=str(i)))
        weights = mean(results[0], results[1:])
        set_weights(model, weights)
        curve.append(evaluate(model, splits[0].test.x, splits[0].test.y)["accuracy"])
    return curve, size


def first_at(samples: list, target: float) -> tuple[float, float] | None:
    """(seconds, bytes per node) when the mean accuracy first reached ``target``, or None."""
    return next(((t, b) for t, acc, b in samples if acc is not None and acc >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--duration", type=float, default=90.0, help="seconds of training per choice")
    parser.add_argument("--choices", default=",".join(CHOICES), help="comma-separated, of: " + ", ".join(CHOICES))
    parser.add_argument("--fedavg-rounds", type=int, default=60)
    parser.add_argument("--model", choices=sorted(MODELS), default=None,
                        help="another model than the demo's (e.g. mlp-1m: 1M parameters, 4 MB checkpoints)")
    parser.add_argument("--checkpoint-interval", type=float, default=LOCAL_CHECKPOINT_INTERVAL,
                        help="least seconds between two checkpoints of a node (the demo's by default)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    ok, why = netns.available()
    if not ok:
        sys.exit(f"bench/traffic.py needs network namespaces: {why}")
    out = args.out or Path(tempfile.mkdtemp(prefix="learnae-bench-traffic-"))
    out.mkdir(parents=True, exist_ok=True)
    from learnae.local.baselines import centralized, node_splits

    chosen = manifest(args.model, make_manifest(DATASET))
    central = centralized(node_splits(DATASET, args.nodes, PARTITION, SEED), chosen, CENTRALIZED_EPOCHS, SEED)
    target = TARGET * central
    curve, f32_size = fedavg_curve(chosen, args.nodes, args.fedavg_rounds)
    fedavg_round = next((r + 1 for r, acc in enumerate(curve) if acc >= target), None)
    print(f"{args.nodes} nodes, {DATASET} {PARTITION}, model {args.model or 'of the demo'}, duration {args.duration:g} s, cpus={os.cpu_count()},"
          f" load {os.getloadavg()[0]:.1f}; centralized {central:.3f}, target {target:.3f};"
          f" float32 checkpoint {f32_size} bytes", flush=True)
    runs = []
    for name in args.choices.split(","):
        run = run_choice(name, CHOICES[name], out / name.replace(" ", "-").replace("+", "-"), args)
        runs.append(run)
        hit = first_at(run["samples"], target)
        end = run["samples"][-1]
        print(f"  {name:18} to target: {'-' if hit is None else f'{hit[1] / 1e6:7.2f} MB/node at {hit[0]:5.1f} s'}"
              f"   end: accuracy {end[1] if end[1] is None else round(end[1], 3)}, {end[2] / 1e6:.2f} MB/node;"
              f" checkpoint {run['checkpoint_bytes_mean']} bytes on average; foreign packets {run['foreign_packets']}",
              flush=True)
    fedavg_bytes = None if fedavg_round is None else fedavg_round * 2 * f32_size
    print(f"  {'FedAvg':18} to target: "
          f"{'-' if fedavg_bytes is None else f'{fedavg_bytes / 1e6:7.2f} MB/node at round {fedavg_round}'}"
          f"   end: accuracy {curve[-1]:.3f} after {len(curve)} rounds (model bytes only)")
    base = first_at(runs[0]["samples"], target) if runs and runs[0]["name"] == "float32" else None
    if base:
        for run in runs[1:]:
            hit = first_at(run["samples"], target)
            if hit:
                print(f"  {run['name']:18} / float32 bytes to target: {hit[1] / base[1]:.3f}")
    report = {"nodes": args.nodes, "dataset": DATASET, "model": args.model or "demo", "partition": PARTITION, "duration": args.duration,
              "centralized": central, "target": target, "float32_checkpoint_bytes": f32_size, "runs": runs,
              "fedavg": {"curve": curve, "round_at_target": fedavg_round, "bytes_per_node_at_target": fedavg_bytes}}
    (out / "traffic.json").write_text(json.dumps(report, indent=1))
    plot(report, out / "traffic.png")
    print(f"report: {out}/traffic.json, {out}/traffic.png")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for run in report["runs"]:
        points = [(b / 1e6, acc) for _t, acc, b in run["samples"] if acc is not None]
        if points:
            ax.plot(*zip(*points, strict=True), label=f"learnae {run['name']}")
    size = report["float32_checkpoint_bytes"]
    ax.plot([(r + 1) * 2 * size / 1e6 for r in range(len(report["fedavg"]["curve"]))], report["fedavg"]["curve"],
            "k:", label="FedAvg (model bytes only)")
    ax.axhline(report["target"], color="grey", linestyle="--", label="target (0.95 of centralized)")
    ax.set_xscale("log")
    ax.set_xlabel("MB sent and received per node")
    ax.set_ylabel("mean test accuracy")
    ax.set_title(f"bytes to accuracy: {report['nodes']} nodes, {report['dataset']} {report['partition']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
