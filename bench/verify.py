"""Benchmark: what spot checks cost a node, and how often they wrongly dispute an honest update.

Usage: python bench/verify.py [--segments 200] [--batches 30] [--peers 20] [--interval 30] [--replays 200]
                              [--rate 0.05] [--data SPEC]

One Keras process, the digits MLP of ``learnae init --model digits-mlp`` on a shard of digits
(``--data``: a Dirichlet(0.5) quarter by default), as ``learnae node run`` trains it:

1. **Cost of one check**, process CPU seconds, as :class:`learnae.node.verifier.CheckpointVerifier`
   does it: decode the checkpoint and its base (``--bases`` files, from safetensors bytes),
   find the mix of the bases nearest to the checkpoint (:func:`learnae.verify.nearest_mix`),
   evaluate both on the test split (a model of the verifier's own).
2. **Training CPU** per second of wall time (the same process, ``model.fit`` on the shard).
3. **Share**: a swarm of ``--peers`` other members that each publish one checkpoint per
   ``--interval`` seconds (the manifest's ``checkpoint_interval``, 30 s by default) sends a
   node ``peers / interval`` checkpoints a second, of which it checks ``--rate`` (5%): the share
   is ``rate * peers / interval * check_cpu`` over the training CPU a second.
4. **False disputes**: ``--segments`` honest updates of ``--batches`` batches each (what a
   node trains between two checkpoints), each judged by :func:`learnae.verify.holdout_verdict`
   against the checkpoint before it, with the bar :func:`learnae.verify.gain_bar` sets from the
   gains judged before, from the first update to well past convergence. Replay
   is not built yet: no replay figure.
5. **Who the holdout can tell apart** (``--swarm-rounds``, 0 to skip): ``--members`` members on
   shards of ``--partition`` each train ``--batches`` batches from an unequal mix (Dirichlet(1)
   weights) of the previous round's updates, as merges made one peer at a time weight them;
   those updates are its ``base``. Each round also makes a ``lazy`` update (such a mix plus
   N(0, 0.01) on every weight, what ``learnae node run --behaviour lazy`` publishes) and a
   poisoned one (the last member's update reversed, the harness's ``poison-within-bound``).
   For each kind: how often the shipped rule agrees (against the nearest mix of the bases,
   with the bar :func:`learnae.verify.gain_bar` sets from the honest gains judged so far), how
   often the rule before it agreed (against the plain mean, a fixed ``min_gain``), and the
   quantiles of the best relative gain on one class's rows against each.
6. **Replay** (``--replays``, 0 to skip): honest segments of ``--batches`` batches trained by
   one model (:func:`learnae.training.replay.train_segment`, on the rows
   :func:`learnae.verify.segment_rows` draws from the node's data, each from where the last
   one ended) and replayed by another; judged by :func:`learnae.verify.replay_verdict` at
   :data:`learnae.verify.REPLAY_TOLERANCE`: the false-dispute rate (goal 0), the largest
   distance, the distance of a replay that drew other rows (what a ``false-data-claim``
   shows), and what one replay costs against the training CPU at ``--rate``.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
from collections import deque

import numpy as np

from learnae.verify import (
    RECENT_GAINS,
    REPLAY_TOLERANCE,
    HoldoutLoss,
    gain_bar,
    holdout_loss,
    holdout_verdict,
    nearest_mix,
    replay_verdict,
)


def cpu() -> float:
    """This process's user + system CPU seconds."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segments", type=int, default=200, help="honest updates judged")
    parser.add_argument("--batches", type=int, default=30, help="batches per honest update")
    parser.add_argument("--peers", type=int, default=20, help="other members publishing")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between a member's checkpoints")
    parser.add_argument("--bases", type=int, default=5, help="base checkpoints per check (own + k peers)")
    parser.add_argument("--data", default="digits:shard=0/4,partition=dirichlet:0.5,seed=3",
                        help="the node's data (a `learnae node run --data` spec)")
    parser.add_argument("--swarm-rounds", type=int, default=40, help="rounds of section 5 (0: skip it)")
    parser.add_argument("--members", type=int, default=4, help="members in section 5")
    parser.add_argument("--partition", action="append",
                        help="section 5's shards, a --data partition (repeatable; default iid and dirichlet:0.5)")
    parser.add_argument("--replays", type=int, default=200, help="honest segments replayed in section 6 (0: skip it)")
    parser.add_argument("--rate", type=float, default=0.05,
                        help="spot-check rate (the manifest's default, 0.05)")
    args = parser.parse_args()

    from learnae.formats import Checkpoint, decode_checkpoint, encode_checkpoint
    from learnae.manifest import Manifest, Verification
    from learnae.models import model_config
    from learnae.training.data import DataSpec
    from learnae.training.model import (
        build_model,
        configure_threads,
        expected_shapes,
        get_weights,
        row_losses,
        set_weights,
    )

    configure_threads(1)
    m = Manifest(name="bench", model=model_config("digits-mlp"), learning_rate=0.003)
    cfg = Verification(rate=args.rate)
    splits = DataSpec.parse(args.data).load()
    model = build_model(m.model, optimizer=m.optimizer, learning_rate=m.learning_rate, seed=0)
    checker = build_model(m.model, optimizer=m.optimizer, learning_rate=m.learning_rate, seed=1)
    expect = expected_shapes(model)
    x, y, batch = splits.train.x, splits.train.y, m.batch_size

    def validation_loss(weights) -> HoldoutLoss:
        set_weights(checker, weights)
        return holdout_loss(row_losses(checker, splits.test.x, splits.test.y), splits.test.y)

    def train(batches: int) -> None:
        rows = np.random.default_rng().integers(0, len(x), size=batches * batch)
        model.fit(x[rows], y[rows], batch_size=batch, epochs=1, verbose=0, shuffle=False)

    # 4. honest updates, judged against the checkpoint before them (also warms TensorFlow up)
    disputes: dict[str, int] = {}
    gains = []
    recent: deque[float] = deque(maxlen=RECENT_GAINS)
    at_base = validation_loss(get_weights(model))
    for _ in range(args.segments):
        train(args.batches)
        checked = validation_loss(get_weights(model))
        verdict = holdout_verdict(at_base, checked, cfg, min_gain=gain_bar(recent, cfg))
        recent.append(verdict.figures.get("class_gain", float("nan")))
        gains.append(verdict.figures.get("gain", float("nan")))
        if verdict.verdict == "dispute":
            disputes[verdict.code] = disputes.get(verdict.code, 0) + 1
        at_base = checked

    # 1. one check: decode the checkpoint and its bases, average, evaluate two models
    genesis = "b" + "a" * 58
    raw = encode_checkpoint(Checkpoint(get_weights(model), genesis, 1, batch))
    checks, t0 = 20, cpu()
    for _ in range(checks):
        files = [decode_checkpoint(raw, max_bytes=m.limits.checkpoint_bytes, expect=expect, genesis=genesis)
                 for _ in range(args.bases + 1)]
        own, bases = files[0], files[1:]
        start, _ = nearest_mix(own.weights, [c.weights for c in bases])
        validation_loss(start)
        validation_loss(own.weights)
    check_cpu = (cpu() - t0) / checks

    # 2. training CPU per wall second
    t0, w0 = cpu(), time.perf_counter()
    while time.perf_counter() - w0 < 10:
        train(20)
    train_cpu = (cpu() - t0) / (time.perf_counter() - w0)

    per_second = cfg.rate * args.peers / args.interval
    share = per_second * check_cpu / train_cpu
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}")
    print(f"one check ({args.bases} bases + the checkpoint decoded, 2 evaluations on"
          f" {len(splits.test.y)} test rows): {check_cpu * 1000:.1f} ms CPU")
    print(f"training: {train_cpu:.2f} CPU s per wall second")
    print(f"checks at rate {cfg.rate:g}, {args.peers} peers, one checkpoint per {args.interval:g} s each:"
          f" {per_second:.3f}/s -> {share * 100:.2f}% of the training CPU")
    worst = max(args.peers, int(cfg.verifiers / cfg.rate))
    print(f"  (at most, with {worst}+ peers every checkpoint is checked by {cfg.verifiers}: "
          f"{cfg.verifiers / args.interval * check_cpu / train_cpu * 100:.2f}%)")
    late = gains[len(gains) // 2:]
    print(f"honest updates judged ({args.data}): {args.segments} of {args.batches} batches;"
          f" wrongly disputed: {sum(disputes.values())} {disputes or ''}")
    print(f"  gain in all per update: first {gains[0]:.3f}, median of the second half {np.median(late):.4f},"
          f" lowest {min(gains):.4f}")

    for partition in args.partition or ["iid", "dirichlet:0.5"]:
        if args.swarm_rounds > 0:
            swarm_rounds(m, partition, args)
    if args.replays > 0:
        replays(m, splits.train, per_second, args)


def swarm_rounds(m, partition: str, args: argparse.Namespace) -> None:
    """Section 5 for one partition: how often each rule agrees with honest, lazy and poisoned
    updates over ``args.swarm_rounds`` rounds."""
    from learnae.manifest import Verification
    from learnae.training.data import DataSpec
    from learnae.training.model import build_model, get_weights, row_losses, set_weights

    cfg = Verification(rate=args.rate)
    n = args.members
    shards = [DataSpec.parse(f"digits:shard={i}/{n},partition={partition},seed=3").load() for i in range(n)]
    test = shards[0].test
    models = [build_model(m.model, optimizer=m.optimizer, learning_rate=m.learning_rate, seed=0) for _ in range(n)]
    checker = build_model(m.model, optimizer=m.optimizer, learning_rate=m.learning_rate, seed=1)
    rng = np.random.default_rng(0)
    recent: deque[float] = deque(maxlen=RECENT_GAINS)

    def losses(weights) -> HoldoutLoss:
        set_weights(checker, weights)
        return holdout_loss(row_losses(checker, test.x, test.y), test.y)

    def judged(weights, bases) -> tuple[bool, bool, float, float]:
        """(the shipped rule agrees, the rule before agrees, the best class gain against the
        nearest mix, against the plain mean)."""
        checked = losses(weights)
        mix, _ = nearest_mix(weights, bases)
        shipped = holdout_verdict(losses(mix), checked, cfg, min_gain=gain_bar(recent, cfg))
        mean = {k: np.mean([b[k] for b in bases], axis=0) for k in weights}
        before = holdout_verdict(losses(mean), checked, cfg)
        return (shipped.verdict == "agree", before.verdict == "agree",
                shipped.figures["class_gain"], before.figures["class_gain"])

    def mixed(bases) -> dict[str, np.ndarray]:
        """A merge as members make them, one peer at a time: unequal weights on the bases."""
        a = rng.dirichlet(np.ones(len(bases)))
        return {k: sum(c * b[k] for c, b in zip(a, bases, strict=True)).astype(np.float32) for k in bases[0]}

    seen: dict[str, list[tuple[bool, bool, float, float]]] = {"honest": [], "lazy": [], "poisoned": []}
    bases = [get_weights(model) for model in models]
    for _ in range(args.swarm_rounds):
        updates = []
        for model, shard in zip(models, shards, strict=True):
            start = mixed(bases)
            set_weights(model, start)
            rows = rng.integers(0, len(shard.train.x), size=args.batches * m.batch_size)
            model.fit(shard.train.x[rows], shard.train.y[rows], batch_size=m.batch_size, epochs=1,
                      verbose=0, shuffle=False)
            updates.append(get_weights(model))
            seen["honest"].append(verdict := judged(updates[-1], bases))
            recent.append(verdict[2])
        lazy = {k: w + rng.normal(0.0, 0.01, w.shape).astype(w.dtype) for k, w in mixed(bases).items()}
        seen["lazy"].append(judged(lazy, bases))
        seen["poisoned"].append(judged({k: 2 * w - updates[-1][k] for k, w in start.items()}, bases))
        bases = updates
    print(f"{n} members on {partition} shards, {args.swarm_rounds} rounds of {args.batches} batches, each"
          f" from an unequal mix of the last round's updates (its bases); agreed by the shipped rule"
          f" (nearest mix, min_gain {cfg.min_gain:g} or half the recent median gain) and by the rule"
          f" before (plain mean, min_gain {cfg.min_gain:g}):")
    for kind, rows in seen.items():
        shipped, before = (sum(r[i] for r in rows) / len(rows) for i in (0, 1))
        q = [np.quantile([r[i] for r in rows], [0.1, 0.5, 0.9]) for i in (2, 3)]
        print(f"  {kind:9s} {len(rows):4d} updates: agreed {shipped:6.1%} (shipped), {before:6.1%} (before);"
              f" best class gain 10/50/90%: mix {q[0][0]:.3f} {q[0][1]:.3f} {q[0][2]:.3f},"
              f" mean {q[1][0]:.3f} {q[1][1]:.3f} {q[1][2]:.3f}")


def replays(m, train, per_second: float, args: argparse.Namespace) -> None:
    """Section 6: ``args.replays`` honest segments trained, replayed and judged."""
    from learnae.training.model import build_model, get_weights
    from learnae.training.replay import train_segment

    prover, verifier = (build_model(m.model, optimizer=m.optimizer, learning_rate=m.learning_rate, seed=s)
                        for s in (0, 1))
    segment = {"x": train.x, "y": train.y, "steps": args.batches, "batch_size": m.batch_size}
    start = get_weights(prover)
    distances, others, disputes, replay_cpu = [], [], 0, 0.0
    for i in range(args.replays):
        claimed = train_segment(prover, start, seed=i, **segment)
        t0 = cpu()
        replayed = train_segment(verifier, start, seed=i, **segment)
        replay_cpu += cpu() - t0
        verdict = replay_verdict(start, claimed, replayed)
        disputes += verdict.verdict == "dispute"
        distances.append(verdict.figures.get("replay_distance", float("inf")))
        if i % 10 == 0:  # a replay that drew other rows: what a false-data claim shows
            other = train_segment(verifier, start, seed=i + 2**40, **segment)
            others.append(replay_verdict(start, claimed, other).figures["replay_distance"])
        start = claimed
    per_replay = replay_cpu / args.replays
    print(f"replays: {args.replays} honest segments of {args.batches} batches, replayed by a second model:"
          f" disputed {disputes} at tolerance {REPLAY_TOLERANCE:g}; largest distance {max(distances):.3g}")
    print(f"  a replay that drew other rows: distance {min(others):.3f} to {max(others):.3f} ({len(others)} tried)")
    print(f"  one replay of {args.batches} batches: {per_replay * 1000:.0f} ms CPU. A whole segment costs"
          f" what its author's training did, so replaying every checked checkpoint of {args.peers} peers"
          f" (one per {args.interval:g} s of training each) at rate {args.rate:g} costs"
          f" {per_second * args.interval * 100:.0f}% of a node's training CPU")


if __name__ == "__main__":
    main()
