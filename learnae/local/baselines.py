"""Baselines for a local swarm run, on the same split, model and training budget.

For ``count`` nodes holding shards of one data set (the ``--data`` specs of
:func:`learnae.local.runner.data_spec`) and ``shards - count`` sensors streaming the other
shards (which every node of the swarm adopts), each trained for ``epochs`` passes:

- ``centralized``: one model on every shard's training rows together (nodes' and sensors'),
  ``epochs`` passes;
- ``local_only``: each node's model on its own shard only (no swarm, so no sensor data),
  ``epochs`` passes (per node);
- ``fedavg``: a server holding a global model; each of ``epochs`` rounds every node starts
  from the global model, trains one pass over its shard plus the sensors' rows (what a swarm
  node holds once it has adopted them), and the server sets the global
  model to the sample-weighted mean of the results (:func:`learnae.merge.mean`, FedAvg's
  rule, McMahan et al. 2017). Beyond :data:`MAX_FEDAVG_ROUNDS` rounds, each round trains
  ``ceil(epochs / MAX_FEDAVG_ROUNDS)`` local epochs (same total, fewer averagings).

All are evaluated on the common test split (``Splits.test``, the same rows for every node).

The demo's verdict (:func:`compare`, :func:`verdict`) sets each node's swarm accuracy against
its local-only accuracy with a margin for the test split's size: on breast_cancer's 114 test
rows one row is 0.0088 of accuracy, so "the swarm scored higher" alone is noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import Any, Literal

import numpy as np

from learnae.local.runner import data_spec
from learnae.manifest import Manifest
from learnae.merge import Contribution
from learnae.merge import mean as fedavg_mean
from learnae.training.data import DataSpec, Splits

MAX_FEDAVG_ROUNDS = 25
# Batches per call of Keras's compiled train function: the same updates in the same order
# (bit-identical weights), with the per-batch Python overhead that dominates these small
# models paid once per 32 batches; about 1.8 times faster on digits.
STEPS_PER_EXECUTION = 32


def node_splits(dataset: str, count: int, partition: str, seed: int) -> list[Splits]:
    """Shard ``i`` of ``count`` for every ``i`` (identical to what node process ``i`` loads)."""
    return [DataSpec.parse(data_spec(dataset, i, count, partition, seed)).load() for i in range(count)]


def _with_rows(s: Splits, extra: list[Splits]) -> Splits:
    """``s`` with the training rows of ``extra`` appended (a node that adopted sensor data)."""
    if not extra:
        return s
    x = np.concatenate([s.train.x, *(e.train.x for e in extra)])
    y = np.concatenate([s.train.y, *(e.train.y for e in extra)])
    return s._replace(train=replace(s.train, x=x, y=y))


def _build(manifest: Manifest, seed: int):
    from learnae.training.model import build_model

    return build_model(manifest.model, optimizer=manifest.optimizer, learning_rate=manifest.learning_rate,
                       seed=seed, steps_per_execution=STEPS_PER_EXECUTION)


def _fit(model, x: np.ndarray, y: np.ndarray, manifest: Manifest, epochs: int, seed: int = 0) -> None:
    """``epochs`` passes over (x, y), each in a fresh random order, as one Keras epoch.

    The epoch is the concatenated passes (same batches and sample visits; Keras's per-epoch
    overhead, which dominates on these small sets, is paid once).
    """
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.permutation(len(x)) for _ in range(max(1, epochs))])
    model.fit(x[idx], y[idx], batch_size=manifest.batch_size, epochs=1, shuffle=False, verbose=0)


def centralized(splits: list[Splits], manifest: Manifest, epochs: int, seed: int) -> float:
    """Test accuracy of one model trained on every node's rows together."""
    from learnae.training.model import evaluate

    x = np.concatenate([s.train.x for s in splits])
    y = np.concatenate([s.train.y for s in splits])
    model = _build(manifest, seed)
    _fit(model, x, y, manifest, epochs)
    return evaluate(model, splits[0].test.x, splits[0].test.y)["accuracy"]


def local_only(splits: list[Splits], manifest: Manifest, epochs: int | list[int], seed: int) -> list[float]:
    """Per node: test accuracy of its model trained on its shard alone."""
    from learnae.training.model import evaluate

    per = epochs if isinstance(epochs, list) else [epochs] * len(splits)
    out = []
    for s, e in zip(splits, per, strict=True):
        model = _build(manifest, seed)
        _fit(model, s.train.x, s.train.y, manifest, max(1, e))
        out.append(evaluate(model, s.test.x, s.test.y)["accuracy"])
    return out


def fedavg(splits: list[Splits], manifest: Manifest, rounds: int, seed: int, local_epochs: int = 1) -> float:
    """Test accuracy of the FedAvg global model after ``rounds`` rounds of ``local_epochs`` each."""
    from learnae.training.model import evaluate, get_weights, set_weights

    clients = [_build(manifest, seed) for _ in splits]
    global_weights = get_weights(clients[0])
    for _ in range(max(1, rounds)):
        results: list[Contribution] = []
        for model, s in zip(clients, splits, strict=True):
            set_weights(model, global_weights)
            _fit(model, s.train.x, s.train.y, manifest, local_epochs)
            results.append(Contribution(get_weights(model), samples=len(s.train), age=0, author=str(len(results))))
        global_weights = fedavg_mean(results[0], results[1:])
    set_weights(clients[0], global_weights)
    return evaluate(clients[0], splits[0].test.x, splits[0].test.y)["accuracy"]


def all_baselines(dataset: str, count: int, partition: str, seed: int, manifest: Manifest,
                  epochs: int | list[int], shards: int | None = None) -> dict[str, Any]:
    """The three baselines for ``count`` nodes.

    The nodes hold shards ``0..count-1`` of ``shards`` (default ``count``; the rest are the
    sensors'); ``epochs`` per node (a list) or for all. Centralized and FedAvg use the nodes'
    median epoch count, so they get the budget a typical node had.
    """
    per = epochs if isinstance(epochs, list) else [epochs] * count
    budget = max(1, int(np.median(per)))
    # FedAvg costs one Keras fit per node per round: past MAX_FEDAVG_ROUNDS rounds, each round
    # trains several local epochs instead (same total epochs, fewer averagings).
    local = -(-budget // MAX_FEDAVG_ROUNDS)
    every = node_splits(dataset, shards or count, partition, seed)
    splits, sensors = every[:count], every[count:]
    return {"epochs": budget, "epochs_per_node": per, "test_rows": len(every[0].test),
            "centralized": centralized(every, manifest, budget, seed),
            "local_only": local_only(splits, manifest, per, seed),
            "fedavg": fedavg([_with_rows(s, sensors) for s in splits], manifest, -(-budget // local), seed,
                             local_epochs=local),
            "fedavg_local_epochs": local}


CONFIDENCE = 0.95
"""Confidence of the interval the demo's verdict judges each node by (two-sided)."""

NODE_RULE = ("a node is worse/better than training alone when the 95% interval of its swarm minus local-only"
             " accuracy on the common test rows (Newcombe's hybrid Wilson score interval) lies wholly below/above 0")
"""How :func:`compare` judges one node (``report.json`` states it next to the verdict)."""


def wilson_interval(p: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson's (1927) score interval for a proportion ``p`` observed on ``n`` trials.

    Unlike the normal (Wald) interval it stays inside [0, 1] and does not shrink to a point
    at ``p`` = 0 or 1 (an accuracy of 1.0 on 114 rows gives about [0.967, 1]).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, not {n}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], not {p}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / n + z2n / (4 * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Comparison:
    """One node's swarm accuracy against its local-only accuracy on the same ``n`` test rows.

    ``low``/``high``: the interval of ``swarm - local_only`` (:func:`compare`). ``verdict``:
    ``"worse"`` when the whole interval is below 0, ``"better"`` when it is above 0, else
    ``"same"`` (the test split cannot tell them apart).
    """

    swarm: float
    local_only: float
    n: int
    low: float
    high: float
    confidence: float = CONFIDENCE

    @property
    def difference(self) -> float:
        """``swarm - local_only``."""
        return self.swarm - self.local_only

    @property
    def margin_below(self) -> float:
        """How far below local-only the swarm may score and still not be ``"worse"``."""
        return self.high - self.difference

    @property
    def margin_above(self) -> float:
        """How far above local-only the swarm must score to be ``"better"``."""
        return self.difference - self.low

    @property
    def verdict(self) -> Literal["better", "same", "worse"]:
        """``"worse"``/``"better"``: the interval lies wholly below/above 0; else ``"same"``."""
        return "worse" if self.high < 0 else "better" if self.low > 0 else "same"

    def as_json(self) -> dict[str, Any]:
        """What ``report.json`` shows of it."""
        return {"difference": round(self.difference, 6), "interval": [round(self.low, 6), round(self.high, 6)],
                "confidence": self.confidence, "test_rows": self.n, "verdict": self.verdict}


def compare(swarm: float, local_only: float, n: int, confidence: float = CONFIDENCE) -> Comparison:
    """Swarm against local-only accuracy, both measured on the same ``n`` test rows.

    The interval of the difference ``swarm - local_only`` is Newcombe's hybrid score interval
    (Newcombe 1998, "Interval estimation for the difference between independent proportions:
    comparison of eleven methods", Statistics in Medicine 17:873-890, method 10), built from
    each accuracy's Wilson (1927) score interval ``[l, u]``::

        low  = d - sqrt((swarm - l_swarm)**2 + (u_local - local_only)**2)
        high = d + sqrt((u_swarm - swarm)**2 + (local_only - l_local)**2)

    It treats the two accuracies as independent binomial proportions. They are measured on the
    same rows, and two models' errors on the same rows are positively correlated, which makes
    the true spread of the difference smaller: the interval is conservative (wider), never
    narrower than the paired one. A paired test (McNemar's) would need each node's per-row
    predictions, which a node does not report. With both accuracies near 0.96 the interval is
    about ±0.06 on 114 rows (breast_cancer: a node is worse only 8 rows below local-only),
    ±0.03 on 359 rows (digits) and ±0.005 on 10,000.
    """
    for name, p in (("swarm", swarm), ("local_only", local_only)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} accuracy must be in [0, 1], not {p}")
    low, high = newcombe_interval(swarm, n, local_only, n, confidence)
    return Comparison(swarm, local_only, n, low=low, high=high, confidence=confidence)


def newcombe_interval(p1: float, n1: int, p2: float, n2: int,
                      confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Newcombe's (1998, method 10) hybrid score interval for ``p1 - p2`` (see :func:`compare`)."""
    l1, u1 = wilson_interval(p1, n1, confidence)
    l2, u2 = wilson_interval(p2, n2, confidence)
    d = p1 - p2
    return d - math.hypot(p1 - l1, u2 - p2), d + math.hypot(u1 - p1, p2 - l2)


def verdict(comparisons: list[Comparison | None], centralized: float | None = None) -> dict[str, bool]:
    """Whether the swarm beat training alone, judged on the test split's size.

    ``no_node_worse``: no node's swarm accuracy is below its local-only accuracy by more than
    the interval allows (the swarm hurt nobody; a node without an accuracy, ``None``, fails
    this). ``some_node_better``: at least one node's swarm accuracy is above its local-only
    accuracy by more than the interval allows (the swarm helped someone: a swarm that merely
    matches training alone, e.g. one whose merges do nothing, does not pass). ``ok``: both.

    With ``centralized`` (the accuracy of one model trained on every node's rows, on the same
    test rows), a split on which nobody had anything to gain is told apart from a swarm that
    gained nothing: ``nothing_to_gain`` when no node's local-only accuracy is below
    ``centralized`` by more than the interval allows (then no swarm can be shown ``better``),
    and ``matches_centralized`` when no node's swarm accuracy is below ``centralized`` by more
    than it allows. ``ok`` is then ``no_node_worse`` and either ``some_node_better`` or both
    of those. Where some node had something to gain, a swarm that only matches training alone
    still fails; where none had, no accuracy can show what merges did, and the swarm must
    only do as well as training on all the data.

    Each node is judged at :data:`CONFIDENCE` on its own, uncorrected for the number of nodes:
    if the swarm is exactly as good as training alone, each node is called ``worse`` (or
    ``better``) with a chance of at most 2.5%, less for the conservative interval.
    """
    no_worse = all(c is not None and c.verdict != "worse" for c in comparisons)
    better = any(c is not None and c.verdict == "better" for c in comparisons)
    judged = {"no_node_worse": no_worse, "some_node_better": better, "ok": no_worse and better}
    if centralized is not None:
        judged["nothing_to_gain"] = all(c is not None and compare(centralized, c.local_only, c.n).verdict != "better"
                                        for c in comparisons)
        judged["matches_centralized"] = all(c is not None and compare(c.swarm, centralized, c.n).verdict != "worse"
                                            for c in comparisons)
        judged["ok"] = no_worse and (better or (judged["nothing_to_gain"] and judged["matches_centralized"]))
    return judged


def describe_margin(n: int, confidence: float = CONFIDENCE, baseline: str = "local-only",
                    centralized: bool = False) -> str:
    """The line under the demo's table that says how nodes are judged.

    ``centralized``: with :func:`verdict`'s rule for a split on which nobody had anything to gain.
    """
    ok = "ok = no node worse, at least one better"
    if centralized:
        ok += (", or none could gain (every local-only matches centralized by the same interval)"
               " and every swarm accuracy matches centralized")
    return (f"vs {baseline}: {confidence:.0%} interval of swarm - {baseline} on the n={n} common test rows"
            f" (one row = {1 / n:.4f}; Newcombe's hybrid Wilson score interval): worse if wholly below 0,"
            f" better if wholly above; {ok}")
