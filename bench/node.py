"""Benchmark of the trainer node: the swarm's cost to training, and merging big checkpoints.

Usage: python bench/node.py [--digits-epochs 100] [--big-epochs 30] [--peers 4] [--repeat 20]

1. Overhead: for ``digits-mlp`` (4,810 parameters) and ``mlp-1m`` (1,053,194), a swarm of
   two nodes on digits (Dirichlet(0.5) shards, embedded Kubo on 127.0.0.1): a peer node in a
   separate process (``learnae node run``), started first, and once it has published a
   checkpoint, the measured node in this process (:class:`learnae.node.TrainerNode`, a
   checkpoint due every 10 batches, the network side at its default priority, 10 nice steps
   below training; digits also once at training's priority). Over the training loop's wall
   time (first execution ends -> last ends: the first traces the train function) it prints:

   - in batches: a timer callback's ``on_train_batch_begin`` -> ``on_train_batch_end``
     (it runs before the swarm callback, so the swarm's work is outside);
   - swarm: the training thread's time in the swarm callback (snapshots and offers, applying
     merged weights: ``SwarmCallback.offer_seconds`` and ``apply_seconds``); publishing,
     fetching and merging run on the network thread and show only as CPU taken from
     training (the thread never waits for the network);
   - metrics: the node's holdout/test evaluations (every 2 s);
   - rest: everything else outside batches: Keras's own per-epoch and per-batch work (for
     ``fit`` on arrays, a new input pipeline per epoch), and the GIL and CPU used by the
     network thread and the peer process.

   Then the same model and shard without any swarm (no peer process): ``fit`` on arrays as
   the node calls it, and :func:`learnae.training.model.fit_passes` (one input pipeline for
   all epochs), once per batch and with several batches per execution; each with its share
   outside batches, wall time and test accuracy.
2. Merge: ``--peers`` peers' 1M-parameter checkpoints (``mlp-1m`` shapes, random float32):
   decode each with the checks a node applies (names, shapes, dtypes, finiteness), then merge
   with every rule (norm checks included) against a snapshot laid out as ``get_weights``
   lays it out; median, min and max of ``--repeat`` runs, wall and CPU time.
"""

from __future__ import annotations

import argparse
import json
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
from learnae.manifest import Manifest
from learnae.merge import RULES, Contribution, merge
from learnae.models import MODELS, model_config
from learnae.node import DEFAULT_NETWORK_NICE
from learnae.state import init_swarm


def timer_callback():
    """A Keras callback summing the time inside batches (executions), from the end of the
    first (which traces and compiles the train function) to the end of the last."""
    import keras

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.compute = 0.0
            self.first = self.last = None
            self.batches = 0

        def on_train_batch_begin(self, batch, logs=None):
            self._t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.last = time.perf_counter()
            if self.first is None:
                self.first = self.last
            else:
                self.compute += self.last - self._t
            self.batches += 1

    return Timer()


def _divisor(steps: int, cap: int = 16) -> int:
    """The largest divisor of ``steps`` up to ``cap``: batches per execution for fit_passes."""
    return max(d for d in range(1, min(cap, steps) + 1) if steps % d == 0)


def baselines(model: str, epochs: int, spec: str, manifest: Manifest) -> list[dict]:
    """The same fit without any swarm: arrays (as the node), fit_passes x1, fit_passes xN."""
    from learnae.training.data import DataSpec
    from learnae.training.model import build_model, evaluate, fit_passes

    splits = DataSpec.parse(spec).load()
    x, y, bs = splits.train.x, splits.train.y, manifest.batch_size
    steps = -(-len(x) // bs)
    out = []
    for how, per_call in dict.fromkeys([("fit on arrays", 1), ("fit_passes", 1), ("fit_passes", _divisor(steps))]):
        m = build_model(manifest.model, optimizer=manifest.optimizer, learning_rate=manifest.learning_rate,
                        seed=0, steps_per_execution=per_call)
        timer = timer_callback()
        if how == "fit on arrays":
            m.fit(x, y, batch_size=bs, epochs=epochs, verbose=0, callbacks=[timer])
        else:
            fit_passes(m, x, y, batch_size=bs, epochs=epochs, callbacks=[timer])
        wall = timer.last - timer.first
        out.append({"how": how, "per_call": per_call, "steps": steps, "wall_s": wall,
                    "outside_share": 1 - timer.compute / wall,
                    "accuracy": evaluate(m, splits.test.x, splits.test.y)["accuracy"]})
    return out


def _wait_for_checkpoint(peer: subprocess.Popen, state: Path, timeout: float = 300.0) -> None:
    """Wait until the peer node has published a checkpoint (its ``status.json``)."""
    from learnae.state import StateDir

    status, deadline = StateDir(state).status, time.monotonic() + timeout
    while time.monotonic() < deadline:
        if peer.poll() is not None:
            raise SystemExit(f"the peer node exited with status {peer.returncode} before publishing")
        try:
            if json.loads(status.read_text()).get("published", 0) >= 1:
                return
        except (OSError, ValueError):
            pass  # not written yet, or caught mid-write
        time.sleep(0.2)
    raise SystemExit(f"the peer node published no checkpoint within {timeout:.0f} s")


def overhead(model: str, epochs: int, tmp: Path, network_nice: int = DEFAULT_NETWORK_NICE,
             with_baselines: bool = True) -> dict:
    from learnae.invite import Invite
    from learnae.node import NodeConfig, TrainerNode
    from learnae.training.data import DataSpec

    manifest = Manifest(name=f"bench-{model}", model=model_config(model), pow_bits=4, sync_every=10,
                        checkpoint_interval=0, learning_rate=0.001)
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
    _wait_for_checkpoint(peer, states[1])  # so peer checkpoints arrive from the first batch on

    timer = timer_callback()
    node = TrainerNode(NodeConfig(invite=Invite.load(invite_path), state=states[0], data=DataSpec.parse(spec.format(0)),
                                  listen=f"127.0.0.1:{ports[0]}", peers=(addrs[1],), api=None, epochs=epochs,
                                  wait_peers=1, seed=0, callbacks=(timer,), network_nice=network_nice))
    report = node._report
    reports: list[tuple[float, float]] = []  # (start, seconds) of each metric evaluation

    def timed_report(*args, **kwargs):  # the node's metric evaluations (bench instrumentation)
        t = time.perf_counter()
        try:
            return report(*args, **kwargs)
        finally:
            reports.append((t, time.perf_counter() - t))

    node._report = timed_report
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
    metrics = sum(d for t, d in reports if timer.first <= t < timer.last)  # not the final one
    cb = node._cb
    swarm = cb.offer_seconds + cb.apply_seconds
    return {"model": model, "network_nice": network_nice, "epochs": epochs,
            "batches": timer.batches, "wall_s": wall,
            "compute_s": timer.compute, "outside_share": 1 - timer.compute / wall,
            "swarm_share": swarm / wall, "offer_s": cb.offer_seconds, "apply_s": cb.apply_seconds,
            "metrics_share": metrics / wall,
            "published": node.published, "merges": node.merges, "offers": cb.offers,
            "merges_applied": cb.merges_applied, "rejections": dict(node.rejections),
            "baselines": baselines(model, epochs, spec.format(0), manifest) if with_baselines else []}


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


def _times(fn, repeat: int) -> dict:
    walls, cpus = [], []
    for _ in range(repeat):
        c, t = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return {"median": statistics.median(walls), "min": min(walls), "max": max(walls),
            "cpu": statistics.median(cpus)}


def merge_bench(peers: int, repeat: int = 20) -> dict:
    from learnae.formats import pack

    shapes = _shapes("mlp-1m")
    rng = np.random.default_rng(0)
    expect = {k: (s, "float32") for k, s in shapes.items()}
    own = pack({k: rng.normal(0, 0.05, s).astype(np.float32) for k, s in shapes.items()})  # as get_weights
    files = [encode_checkpoint(Checkpoint({k: v + rng.normal(0, 0.01, v.shape).astype(np.float32)
                                           for k, v in own.items()}, "bafy-genesis", 100 + i, 320))
             for i in range(peers)]
    params = sum(int(np.prod(s)) for s in shapes.values())
    result = {"parameters": params, "checkpoint_bytes": len(files[0]), "peers": peers, "repeat": repeat}

    def decode_all():
        return [decode_checkpoint(f, max_bytes=64 << 20, expect=expect, genesis="bafy-genesis") for f in files]

    result["decode"] = _times(decode_all, repeat)
    contributions = [Contribution(c.weights, samples=c.samples, age=c.step, author=f"p{i}")
                     for i, c in enumerate(decode_all())]
    me = Contribution(own, samples=320, age=100, author="me")
    for rule in RULES:
        out = merge(rule, me, contributions)
        assert not out.rejected, out.rejected
        result[rule] = _times(lambda rule=rule: merge(rule, me, contributions), repeat)
    return result


def _ms(t: dict) -> str:
    return f"{t['median'] * 1e3:.0f} ms ({t['min'] * 1e3:.0f}-{t['max'] * 1e3:.0f}; CPU {t['cpu'] * 1e3:.0f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits-epochs", type=int, default=100)
    parser.add_argument("--big-epochs", type=int, default=30)
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")

    m = merge_bench(args.peers, args.repeat)
    print(f"merge: {m['peers']} peers x {m['parameters']:,} parameters ({m['checkpoint_bytes'] / 1e6:.1f} MB each),"
          f" median (min-max; CPU median) of {m['repeat']} runs (target: <= 100 ms with decoding):")
    print(f"  decode+check all {_ms(m['decode'])}")
    for rule in RULES:
        total = {k: m[rule][k] + m["decode"]["median"] for k in ("median", "min", "max")}
        print(f"  merge {rule:9} {_ms(m[rule])}; with decoding {total['median'] * 1e3:.0f} ms")
    runs = (("digits-mlp", args.digits_epochs, DEFAULT_NETWORK_NICE), ("digits-mlp", args.digits_epochs, 0),
            ("mlp-1m", args.big_epochs, DEFAULT_NETWORK_NICE))
    for model, epochs, nice in runs:
        with tempfile.TemporaryDirectory(prefix="learnae-bench-node-") as tmp:
            r = overhead(model, epochs, Path(tmp), network_nice=nice, with_baselines=nice == DEFAULT_NETWORK_NICE)
        rest = r["outside_share"] - r["swarm_share"] - r["metrics_share"]
        print(f"{r['model']}, network side {r['network_nice']} nice steps below training:"
              f" {r['batches']} batches in {r['wall_s']:.2f} s; outside batches"
              f" {r['outside_share'] * 100:.1f}% of wall time (target <= 10%) = swarm {r['swarm_share'] * 100:.1f}%"
              f" (offers {r['offer_s'] * 1e3:.0f} ms, applies {r['apply_s'] * 1e3:.0f} ms)"
              f" + metrics {r['metrics_share'] * 100:.1f}% + rest {rest * 100:.1f}%;"
              f" {r['offers']} offers, {r['published']} checkpoints, {r['merges']} merges ({r['merges_applied']} applied),"
              f" rejections {r['rejections'] or 'none'}")
        for b in r["baselines"]:
            print(f"  without the swarm, {b['how']} x{b['per_call']} ({b['steps']} batches/epoch):"
                  f" outside batches {b['outside_share'] * 100:.1f}% of {b['wall_s']:.2f} s,"
                  f" test accuracy {b['accuracy']:.3f}")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
