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
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

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
    return {"epochs": budget, "epochs_per_node": per,
            "centralized": centralized(every, manifest, budget, seed),
            "local_only": local_only(splits, manifest, per, seed),
            "fedavg": fedavg([_with_rows(s, sensors) for s in splits], manifest, -(-budget // local), seed,
                             local_epochs=local),
            "fedavg_local_epochs": local}
