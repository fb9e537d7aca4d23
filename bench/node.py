"""Benchmark of the trainer node: the swarm's cost to training, and merging big checkpoints.

Usage: python bench/node.py [--digits-epochs 30] [--big-epochs 3] [--peers 4]

1. Overhead: for ``digits-mlp`` (4,810 parameters) and ``mlp-1m`` (1,053,194), a swarm of
   two nodes on digits (Dirichlet(0.5) shards, embedded Kubo on 127.0.0.1): a peer node in a
   separate process (``learnae node run``) and the measured node in this process
   (:class:`learnae.node.TrainerNode`, checkpoint every 10 batches). A timer callback
   records each batch's compute (``on_train_batch_begin`` -> ``on_train_batch_end``, before
   the swarm callback). Printed: the share of the training loop's wall time spent outside
   batches (the swarm callback's snapshots and weight loads, metric evaluations every 2 s,
   the network thread's CPU and GIL use, Keras' own per-batch and per-epoch work), the same
   share for a plain ``fit`` of the same model and data without the swarm (Keras' own part),
   and the node's checkpoints and merges.
2. Merge: ``--peers`` peers' 1M-parameter checkpoints (``mlp-1m`` shapes, random float32):
   decode each with the checks a node applies (names, shapes, dtypes, finiteness), then merge
   with ``mean``, ``median`` and ``krum``; median of 5 runs each.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from learnae.formats import Checkpoint, decode_checkpoint, encode_checkpoint
from learnae.ipfs import libkubo
from learnae.local.runner import free_port
from learnae.manifest import Manifest, init_swarm
from learnae.merge import Contribution, merge
from learnae.models import MODELS, model_config


def overhead(model: str, epochs: int, tmp: Path) -> dict:
    import keras

    from learnae.manifest import Invite
    from learnae.node import NodeConfig, TrainerNode
    from learnae.training.data import DataSpec

    manifest = Manifest(name=f"bench-{model}", model=model_config(model), pow_bits=4, sync_every=10,
                        learning_rate=0.001)
    invite_path = tmp / "invite.json"
    init_swarm(tmp / "founder", manifest).invite.save(invite_path)
    states = [tmp / "me", tmp / "peer"]
    ids = [libkubo.create_repo(s / "ipfs") for s in states]
    ports = [free_port(), free_port()]
    addrs = [f"/ip4/127.0.0.1/tcp/{p}/p2p/{i}" for p, i in zip(ports, ids, strict=True)]
    spec = "digits:shard={}/2,partition=dirichlet:0.5"
    peer = subprocess.Popen(
        [sys.executable, "-c", "from learnae.cli import main; main()", "node", "run", "--invite", str(invite_path),
         "--state", str(states[1]), "--data", spec.format(1), "--listen", f"127.0.0.1:{ports[1]}",
         "--peer", addrs[0], "--quiet", "--api", "off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.compute = 0.0
            self.first = self.last = None
            self.batches = 0

        def on_train_batch_begin(self, batch, logs=None):
            self._t = time.perf_counter()
            self.first = self.first or self._t

        def on_train_batch_end(self, batch, logs=None):
            self.last = time.perf_counter()
            self.compute += self.last - self._t
            self.batches += 1

    timer = Timer()
    node = TrainerNode(NodeConfig(invite=Invite.load(invite_path), state=states[0], data=DataSpec.parse(spec.format(0)),
                                  listen=f"127.0.0.1:{ports[0]}", peers=(addrs[1],), api=None, epochs=epochs,
                                  wait_peers=1, seed=0, callbacks=(timer,)))
    try:
        node.run()
    finally:
        if peer.poll() is None:
            peer.send_signal(signal.SIGTERM)
        try:
            peer.wait(60)
        except subprocess.TimeoutExpired:
            peer.kill()
            peer.wait()
    wall = timer.last - timer.first
    # baseline: the same fit without any swarm (one fit call, the timer only)
    from learnae.training.model import build_model

    plain = Timer()
    splits = DataSpec.parse(spec.format(0)).load()
    alone = build_model(manifest.model, optimizer=manifest.optimizer, learning_rate=manifest.learning_rate, seed=0)
    alone.fit(splits.train.x, splits.train.y, batch_size=manifest.batch_size, epochs=epochs, verbose=0,
              callbacks=[plain])
    return {"baseline_outside_share": 1 - plain.compute / (plain.last - plain.first),
            "baseline_wall_s": plain.last - plain.first,
            "model": model, "epochs": epochs, "batches": timer.batches, "wall_s": wall,
            "compute_s": timer.compute, "outside_share": 1 - timer.compute / wall,
            "published": node.published, "merges": node.merges,
            "loaded": node._cb.applied, "rejections": dict(node.rejections)}


def _shapes(model: str) -> dict[str, tuple[int, ...]]:
    """Weight path -> shape of a named MLP, from its config (no Keras needed)."""
    shapes, n_in = {}, None
    for layer in MODELS[model]["config"]["layers"]:
        cfg = layer["config"]
        if layer["class_name"] == "InputLayer":
            n_in = cfg["batch_shape"][-1]
        elif layer["class_name"] == "Dense":
            shapes[f"{cfg['name']}/kernel"] = (n_in, cfg["units"])
            shapes[f"{cfg['name']}/bias"] = (cfg["units"],)
            n_in = cfg["units"]
    return shapes


def merge_bench(peers: int, repeat: int = 5) -> dict:
    shapes = _shapes("mlp-1m")
    rng = np.random.default_rng(0)
    expect = {k: (s, "float32") for k, s in shapes.items()}
    own = {k: rng.normal(0, 0.05, s).astype(np.float32) for k, s in shapes.items()}
    files = [encode_checkpoint(Checkpoint({k: v + rng.normal(0, 0.01, v.shape).astype(np.float32)
                                           for k, v in own.items()}, "bafy-genesis", 100 + i, 320))
             for i in range(peers)]
    params = sum(int(np.prod(s)) for s in shapes.values())
    result = {"parameters": params, "checkpoint_bytes": len(files[0]), "peers": peers}
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        decoded = [decode_checkpoint(f, max_bytes=64 << 20, expect=expect, genesis="bafy-genesis") for f in files]
        times.append(time.perf_counter() - t)
    result["decode_all_s"] = statistics.median(times)
    contributions = [Contribution(c.weights, samples=c.samples, age=c.step, author=f"p{i}")
                     for i, c in enumerate(decoded)]
    me = Contribution(own, samples=320, age=100, author="me")
    for rule in ("mean", "median", "krum"):
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            out = merge(rule, me, contributions)
            times.append(time.perf_counter() - t)
        assert not out.rejected, out.rejected
        result[f"merge_{rule}_s"] = statistics.median(times)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits-epochs", type=int, default=30)
    parser.add_argument("--big-epochs", type=int, default=3)
    parser.add_argument("--peers", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    m = merge_bench(args.peers)
    print(f"merge: {m['peers']} peers x {m['parameters']:,} parameters ({m['checkpoint_bytes'] / 1e6:.1f} MB each):"
          f" decode+check all {m['decode_all_s'] * 1e3:.0f} ms; merge mean {m['merge_mean_s'] * 1e3:.0f} ms,"
          f" median {m['merge_median_s'] * 1e3:.0f} ms, krum {m['merge_krum_s'] * 1e3:.0f} ms")
    for model, epochs in (("digits-mlp", args.digits_epochs), ("mlp-1m", args.big_epochs)):
        with tempfile.TemporaryDirectory(prefix="learnae-bench-node-") as tmp:
            r = overhead(model, epochs, Path(tmp))
        print(f"{r['model']}: {r['batches']} batches in {r['wall_s']:.1f} s, compute {r['compute_s']:.1f} s;"
              f" outside batches {r['outside_share'] * 100:.1f} % of wall time"
              f" (plain fit without the swarm: {r['baseline_outside_share'] * 100:.1f} % of {r['baseline_wall_s']:.1f} s);"
              f" {r['published']} checkpoints, {r['merges']} merges ({r['loaded']} loaded),"
              f" rejections {r['rejections'] or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
