"""Keras and data glue: the only part of learnae that imports TensorFlow.

Importing this package is cheap: nothing here imports TensorFlow until a name that needs it
is used. Modules:

- :mod:`learnae.training.data` (numpy/scikit-learn only): datasets, the common test split,
  IID and Dirichlet shards, :class:`~learnae.training.data.DataSpec`.
- :mod:`learnae.training.bridge` (no TensorFlow): :class:`SwarmBridge`, the interface between
  Keras and the node's network thread, and :class:`QueueBridge`.
- :mod:`learnae.training.model` (TensorFlow, imported inside its functions): building a model
  from its Keras JSON config in safe mode, weights by path, threads, evaluation.
- :mod:`learnae.training.callback` (imports Keras): :class:`SwarmCallback`.
- :mod:`learnae.training.pool` (numpy and SQLite only): adopted sensor chunks on disk
  (:class:`~learnae.training.pool.AdoptedStore`) and the bounded training pool
  (:class:`~learnae.training.pool.TrainingPool`, reservoir sampling).

The names below are re-exported lazily (PEP 562): ``from learnae.training import
SwarmCallback`` imports Keras, ``from learnae.training import DataSpec`` does not.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "DataError": "data",
    "DataSpec": "data",
    "Dataset": "data",
    "load_dataset": "data",
    "shard": "data",
    "split": "data",
    "Merged": "bridge",
    "Offer": "bridge",
    "QueueBridge": "bridge",
    "SwarmBridge": "bridge",
    "build_model": "model",
    "configure_threads": "model",
    "evaluate": "model",
    "expected_shapes": "model",
    "get_weights": "model",
    "set_weights": "model",
    "SwarmCallback": "callback",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(_LAZY)
