"""Training a replayable segment, and training it again: what a replay check runs.

Proof-of-Learning (Jia et al., IEEE S&P 2021) checks a claim of training by redoing it: the
prover logs where a segment started, which data it trained on in which order, and what came
out; a verifier trains the same segment again and compares (:func:`learnae.verify.replay_verdict`).
In learnae a segment is ``steps`` batches drawn by :func:`learnae.verify.segment_rows` from the
data a checkpoint names (public chunks, which every member can fetch), from a given start, with
the optimizer's state reset at the start, so that the start weights, the data, the seed and
the step count say everything the replay needs. Updates trained on a member's private data
cannot be replayed (docs/design.md, "Verification").

Determinism: :func:`train_segment` turns on TensorFlow's op determinism
(``tf.config.experimental.enable_op_determinism``, for the rest of the process) and seeds
Keras's generators from the segment's seed (dropout and the like). On one CPU the replay is
then bit-identical (``bench/verify.py``); another CPU's floating-point paths may differ
slightly, which the replay tolerance allows for.

TensorFlow is imported inside the functions, as in :mod:`learnae.training.model`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from learnae.training.model import get_weights, set_weights
from learnae.verify import segment_rows

if TYPE_CHECKING:
    import keras

__all__ = ["train_segment"]


def train_segment(model: keras.Model, start: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray, *,
                  seed: int, steps: int, batch_size: int) -> dict[str, np.ndarray]:
    """Train a segment from ``start``: ``steps`` batches of the rows :func:`segment_rows` draws.

    The optimizer's state (its step count, Adam's moments, ...; not its learning rate) is
    zeroed first: a fresh optimizer, which is what a replay starts from too. The model keeps the trained weights.

    Args:
        model: a compiled model (:func:`~learnae.training.model.build_model`).
        start: the weights the segment starts from (path -> array, every weight of ``model``).
        x: the named data's features, shape ``(rows, *input_shape)``.
        y: its labels, shape ``(rows,)``.
        seed: the segment's seed (:func:`learnae.verify.segment_rows`).
        steps: batches to train, >= 1.
        batch_size: rows per batch, >= 1.

    Returns:
        The weights after the segment (path -> array).

    Raises:
        ValueError: no rows, or ``x`` and ``y`` differ in length; the
            :func:`~learnae.verify.segment_rows` and
            :func:`~learnae.training.model.set_weights` errors.
    """
    import keras
    import tensorflow as tf

    if len(x) != len(y) or not len(x):
        raise ValueError(f"a segment needs rows, and as many labels as rows: got {len(x)} and {len(y)}")
    order = segment_rows(seed, len(x), steps, batch_size)
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed % 2**32)
    set_weights(model, start)
    for variable in model.optimizer.variables:  # not its learning rate, a variable too
        if not variable.path.endswith("/learning_rate"):
            variable.assign(np.zeros(variable.shape, dtype=variable.dtype))
    for rows in order:
        model.train_on_batch(x[rows], y[rows])
    return get_weights(model)
