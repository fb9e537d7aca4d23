"""The demo's baselines (:mod:`learnae.local.baselines`) on real TensorFlow."""

from __future__ import annotations

import numpy as np

from learnae.local import baselines
from learnae.manifest import Manifest
from learnae.models import model_config
from learnae.training.model import build_model, get_weights


def test_many_steps_per_execution_train_the_same_weights_as_one():
    manifest = Manifest(name="baselines", model=model_config("digits-mlp"))
    shard = baselines.node_splits("digits", 3, "dirichlet:0.5", 0)[0].train
    batched = baselines._build(manifest, seed=1)
    single = build_model(manifest.model, optimizer=manifest.optimizer, learning_rate=manifest.learning_rate,
                         seed=1, steps_per_execution=1)
    assert baselines.STEPS_PER_EXECUTION > 1
    for model in (batched, single):
        baselines._fit(model, shard.x, shard.y, manifest, epochs=3)
    a, b = get_weights(batched), get_weights(single)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], get_weights(baselines._build(manifest, seed=1))[k]) for k in a)
