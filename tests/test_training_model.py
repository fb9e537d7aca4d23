"""learnae.training.model and .callback with real TensorFlow on small models (slow)."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import numpy as np
import pytest

from learnae.errors import ConfigError, NonFiniteError, SchemaMismatch
from learnae.formats import Checkpoint, decode_checkpoint, encode_checkpoint
from learnae.training.bridge import Merged, Offer, QueueBridge, SwarmBridge
from learnae.training.data import DataSpec
from learnae.training.model import (  # importing this module does not import TensorFlow
    build_model,
    evaluate,
    expected_shapes,
    fit_passes,
    get_weights,
    row_losses,
    set_weights,
)

pytestmark = pytest.mark.slow

keras: Any = None  # imported by the tf fixture, so that `pytest -m "not slow"` stays fast
SwarmCallback: Any = None


@pytest.fixture(scope="module", autouse=True)
def tf():
    global keras, SwarmCallback
    keras = pytest.importorskip("keras")
    from learnae.training.callback import SwarmCallback

GENESIS = "bafyreigenesisgenesisgenesisgenesisgenesisgenesisgenesisgenesis"


@functools.cache
def digits_json() -> str:
    """The config, made once: layer names (hence weight paths) are auto-numbered by Keras."""
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    ).to_json()


@pytest.fixture(scope="module")
def digits():
    return DataSpec.parse("digits:seed=0").load()


def small_model(seed: int = 0, optimizer: str = "sgd", lr: float = 0.05):
    return build_model(digits_json(), optimizer=optimizer, learning_rate=lr, seed=seed)


# --------------------------------------------------------------------------- building
def test_digits_mlp_builds_and_names_weights_by_path():
    model = small_model()
    names = [v.path for v in model.weights]
    assert len(names) == 4 and names[0].endswith("/kernel") and names[1].endswith("/bias")
    assert list(get_weights(model)) == names
    shapes = expected_shapes(model)
    assert list(shapes.values()) == [
        ((64, 64), "float32"), ((64,), "float32"), ((64, 10), "float32"), ((10,), "float32")
    ]
    assert model.optimizer.__class__.__name__ == "SGD"
    assert abs(float(model.optimizer.learning_rate) - 0.05) < 1e-7


def test_named_layers_give_stable_paths():
    config = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, activation="softmax", name="output")],
        name="iris_mlp",
    ).to_json()
    model = build_model(config, optimizer="adam", learning_rate=0.01)
    assert list(get_weights(model)) == ["output/kernel", "output/bias"]


def test_same_seed_gives_same_initial_weights():
    a, b, c = small_model(seed=4), small_model(seed=4), small_model(seed=5)
    wa, wb, wc = get_weights(a), get_weights(b), get_weights(c)
    assert all(np.array_equal(wa[n], wb[n]) for n in wa)
    assert not np.array_equal(wa[next(iter(wa))], wc[next(iter(wc))])


def lambda_json() -> str:
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Lambda(lambda t: t * 2.0),
            keras.layers.Dense(2, activation="softmax"),
        ]
    ).to_json()


def test_lambda_layer_is_refused():
    with pytest.raises(ConfigError, match="uses Lambda .* Python code"):
        build_model(lambda_json(), optimizer="adam", learning_rate=0.01)


def test_keras_safe_mode_holds_even_if_unsafe_deserialization_was_enabled(monkeypatch):
    """With our own check switched off, Keras's safe mode (forced by build_model) still
    refuses the lambda, even after enable_unsafe_deserialization()."""
    from keras.src.saving import serialization_lib

    import learnae.training.model as model_module

    monkeypatch.setattr(model_module, "_check_config", lambda config: None)
    before = serialization_lib.in_safe_mode()
    keras.config.enable_unsafe_deserialization()
    try:
        with pytest.raises(ConfigError, match="cannot be built: .*lambda"):
            build_model(lambda_json(), optimizer="adam", learning_rate=0.01)
    finally:
        from keras.src.backend.common import global_state

        global_state.set_global_attribute("safe_mode_saving", before)


def _edit_first_dense(config_json: str, **changes) -> str:
    config = json.loads(config_json)
    dense = next(x for x in config["config"]["layers"] if x["class_name"] == "Dense")
    dense.update(changes)
    return json.dumps(config)


@pytest.mark.parametrize(
    "text, match",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a Keras model"),
        ('{"class_name": "Dense", "module": "keras.layers", "config": {"units": 2}}',
         "not a Keras model"),
    ],
)
def test_bad_configs_are_refused(text, match):
    with pytest.raises(ConfigError, match=match):
        build_model(text, optimizer="adam", learning_rate=0.01)


def test_custom_objects_are_refused():
    with pytest.raises(ConfigError, match="module 'os'"):
        build_model(_edit_first_dense(digits_json(), module="os"), optimizer="adam",
                    learning_rate=0.01)
    with pytest.raises(ConfigError, match="registered custom object 'evil>Dense'"):
        build_model(_edit_first_dense(digits_json(), registered_name="evil>Dense"),
                    optimizer="adam", learning_rate=0.01)
    with pytest.raises(ConfigError, match="cannot be built"):
        build_model(_edit_first_dense(digits_json(), class_name="NoSuchLayer"),
                    optimizer="adam", learning_rate=0.01)


def test_model_without_input_shape_is_refused():
    config = keras.Sequential([keras.layers.Dense(2, activation="softmax")]).to_json()
    with pytest.raises(ConfigError, match="no weights"):
        build_model(config, optimizer="adam", learning_rate=0.01)


def test_bad_optimizer_or_learning_rate_is_refused():
    with pytest.raises(ConfigError, match="not a Keras optimizer"):
        build_model(digits_json(), optimizer="telepathy", learning_rate=0.01)
    for lr in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="learning rate"):
            build_model(digits_json(), optimizer="adam", learning_rate=lr)


# --------------------------------------------------------------------------- weights
def test_weights_round_trip_through_a_checkpoint_file():
    source, target = small_model(seed=1), small_model(seed=2)
    weights = get_weights(source)
    data = encode_checkpoint(Checkpoint(weights, genesis=GENESIS, step=12, samples=384))
    ckpt = decode_checkpoint(data, max_bytes=1 << 20, expect=expected_shapes(target),
                             genesis=GENESIS)
    assert list(ckpt.weights) == list(weights) and (ckpt.step, ckpt.samples) == (12, 384)
    set_weights(target, ckpt.weights)
    after = get_weights(target)
    assert all(np.array_equal(after[n], weights[n]) for n in weights)


def test_checkpoint_of_another_model_is_refused_by_expect():
    other = build_model(
        keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])
        .to_json(), optimizer="sgd", learning_rate=0.1)
    data = encode_checkpoint(Checkpoint(get_weights(other), GENESIS, 1, 1))
    with pytest.raises(SchemaMismatch):
        decode_checkpoint(data, max_bytes=1 << 20, expect=expected_shapes(small_model()))


def test_get_weights_returns_copies():
    model = small_model()
    weights = get_weights(model)
    for w in weights.values():
        w[...] = 7
    assert not any(np.all(w == 7) for w in get_weights(model).values())


def test_set_weights_checks_everything_before_assigning():
    model = small_model()
    before = get_weights(model)
    good = {n: np.zeros_like(w) for n, w in before.items()}
    last = list(good)[-1]
    bad_cases = [
        ({n: w for n, w in good.items() if n != last}, SchemaMismatch, "missing"),
        ({**good, "extra/kernel": np.zeros(1)}, SchemaMismatch, "unexpected"),
        ({**good, last: np.zeros(11, np.float32)}, SchemaMismatch, "shape"),
        ({**good, last: np.zeros(10, np.int32)}, SchemaMismatch, "dtype"),
        ({**good, last: np.full(10, np.nan, np.float32)}, NonFiniteError, "NaN"),
    ]
    for weights, error, match in bad_cases:
        with pytest.raises(error, match=match):
            set_weights(model, weights)
        now = get_weights(model)  # nothing was assigned, not even the valid tensors
        assert all(np.array_equal(now[n], before[n]) for n in before)
    set_weights(model, {n: w.astype(np.float64) for n, w in good.items()})  # float64 is cast
    assert all(not w.any() and w.dtype == np.float32 for w in get_weights(model).values())


def test_set_weights_can_add_to_the_current_weights():
    model = small_model()
    before = get_weights(model)
    step = {n: np.full(w.shape, 0.5, np.float64) for n, w in before.items()}
    set_weights(model, step, add=True)
    assert all(np.allclose(w, before[n] + 0.5) for n, w in get_weights(model).items())
    with pytest.raises(NonFiniteError):
        set_weights(model, {**step, list(step)[0]: np.full(before[list(step)[0]].shape, np.inf)}, add=True)
    assert all(np.allclose(w, before[n] + 0.5) for n, w in get_weights(model).items())


# --------------------------------------------------------------------------- training
def test_digits_mlp_trains_above_90_percent(digits):
    train, hold, test = digits
    model = build_model(digits_json(), optimizer="adam", learning_rate=0.003, seed=0)
    model.fit(train.x, train.y, batch_size=32, epochs=12, verbose=0)  # ~1.3 s on 2 cores
    metrics = evaluate(model, test.x, test.y)
    assert set(metrics) == {"loss", "accuracy"} and isinstance(metrics["accuracy"], float)
    assert metrics["accuracy"] > 0.9, metrics
    assert evaluate(model, hold.x, hold.y)["accuracy"] > 0.85


def test_evaluate_needs_rows():
    from learnae.training.data import DataError

    with pytest.raises(DataError, match="0 feature rows"):
        evaluate(small_model(), np.zeros((0, 64), np.float32), np.zeros(0, np.int64))


def test_configure_threads_before_and_after_tensorflow_starts():
    code = textwrap.dedent(
        """
        from learnae.errors import ConfigError
        from learnae.training.model import build_model, configure_threads
        assert configure_threads(2) == (2, 1)
        import keras
        build_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)]).to_json(),
                    optimizer="sgd", learning_rate=0.1)
        assert configure_threads(2, inter_op=1) == (2, 1)  # same numbers again: fine
        try:
            configure_threads(3)
        except ConfigError as e:
            assert "already started with 2 intra-op" in e.reason, e.reason
        else:
            raise AssertionError("changing threads after start was accepted")
        for bad in (0, -1, 1.5, True):
            try:
                configure_threads(bad)
            except ConfigError:
                pass
            else:
                raise AssertionError(bad)
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


# --------------------------------------------------------------------------- callback
def Every(fn):  # noqa: N802 (reads like the class it makes)
    """A Keras callback running ``fn(global_batch_number)`` at every batch end (1-based,
    across epochs)."""

    class _Every(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.count = 0

        def on_train_batch_end(self, batch, logs=None):
            self.count += 1
            fn(self.count)

    return _Every()


def test_offers_every_sync_every_batches(digits):
    train = digits.train.take(np.arange(300), "train300")
    model = small_model()
    bridge = QueueBridge()
    swarm = SwarmCallback(bridge, batch_size=32, sync_every=3, k=4, min_peers=2,
                          samples_per_epoch=len(train))
    taken = []  # (batch number, offer, the model's weights at that boundary)

    def drain(n):
        offer = bridge.take_offer()
        if offer is not None:
            taken.append((n, offer, get_weights(model)))

    model.fit(train.x, train.y, batch_size=32, epochs=2, shuffle=False, verbose=0,
              callbacks=[swarm, Every(drain)])
    # 300 rows / 32 = 10 batches per epoch (the last holds 12 rows); 20 steps in all
    assert swarm.step == 20 and swarm.samples == 600
    assert [n for n, _, _ in taken] == [3, 6, 9, 12, 15, 18]
    assert [o.step for _, o, _ in taken] == [3, 6, 9, 12, 15, 18]
    # the offer at step 12 covers batches 10 (12 rows), 11 and 12 (32 rows each)
    assert [o.samples for _, o, _ in taken] == [96, 96, 96, 76, 96, 96]
    assert [o.total_samples for _, o, _ in taken] == [96, 192, 288, 364, 460, 556]
    for _, offer, weights in taken:
        assert list(offer.weights) == list(weights) and (offer.k, offer.min_peers) == (4, 2)
        assert all(np.array_equal(offer.weights[n], weights[n]) for n in weights)
        assert offer.merged == ()
    first, last = taken[0][1].weights, taken[-1][1].weights
    assert not all(np.array_equal(first[n], last[n]) for n in first)  # snapshots, not views
    assert swarm.offers == 6 and swarm.merges_applied == 0


def test_merged_weights_are_loaded_at_the_next_batch_boundary(digits):
    train = digits.train
    model = small_model()
    bridge = QueueBridge()
    zeros = {n: np.zeros_like(w) for n, w in get_weights(model).items()}
    swarm = SwarmCallback(bridge, batch_size=32, sync_every=5)
    seen, offers = {}, []

    def node(n):  # plays the node's network thread, right before the boundary of batch 4
        if n == 4:
            bridge.put_merged(zeros, tag="merge-1")

    def record(n):  # looks at the model after SwarmCallback handled the boundary
        seen[n] = get_weights(model)
        offer = bridge.take_offer()
        if offer is not None:
            offers.append(offer)

    model.fit(train.x, train.y, batch_size=32, epochs=1, steps_per_epoch=8, verbose=0,
              callbacks=[Every(node), swarm, Every(record)])
    assert swarm.merges_applied == 1 and swarm.merges_rejected == 0
    assert any(w.any() for w in seen[3].values())
    assert not any(w.any() for w in seen[4].values())  # loaded at batch 4's boundary
    assert any(w.any() for w in seen[5].values())  # and training went on from them
    assert offers[0].step == 5 and offers[0].merged == ("merge-1",)


def test_a_merge_delta_keeps_what_was_trained_since_the_snapshot(digits):
    train = digits.train
    model = small_model()
    bridge = QueueBridge()
    swarm = SwarmCallback(bridge, batch_size=32, sync_every=1000)
    seen = {}

    def node(n):  # a snapshot at batch 2; its merge, every weight moved by 1, comes at batch 4
        if n == 2:
            seen["snapshot"] = get_weights(model)
        if n == 4:
            seen["current"] = get_weights(model)  # two batches trained since the snapshot
            snap = seen["snapshot"]
            bridge.put_merged(Merged({k: v + 1 for k, v in snap.items()}, tag="m",
                                     delta={k: np.ones_like(v) for k, v in snap.items()}))

    def record(n):
        if n == 4:
            seen["after"] = get_weights(model)

    model.fit(train.x, train.y, batch_size=32, epochs=1, steps_per_epoch=6, verbose=0,
              callbacks=[Every(node), swarm, Every(record)])
    assert swarm.merges_applied == 1
    after, current, snap = seen["after"], seen["current"], seen["snapshot"]
    assert all(np.allclose(after[k], current[k] + 1) for k in after)  # the two batches are kept
    assert not all(np.allclose(after[k], snap[k] + 1) for k in after)  # not the merged weights


def test_bad_merged_weights_are_rejected_and_training_goes_on(digits):
    model = small_model()
    bridge = QueueBridge()
    swarm = SwarmCallback(bridge, batch_size=32, sync_every=100)
    bridge.put_merged({"not/a/weight": np.zeros(3, np.float32)})
    model.fit(digits.train.x, digits.train.y, batch_size=32, epochs=1, verbose=0,
              callbacks=[swarm])
    assert swarm.merges_rejected == 1 and swarm.merges_applied == 0
    assert swarm.step == -(-len(digits.train) // 32)


def test_a_bridge_that_never_answers_does_not_block_fit(digits):
    train = digits.train
    model = small_model()
    bridge = QueueBridge()  # nobody takes offers, nobody sends merged weights
    swarm = SwarmCallback(bridge, batch_size=32, sync_every=2, samples_per_epoch=len(train))
    model.fit(train.x, train.y, batch_size=32, epochs=3, verbose=0, callbacks=[swarm])
    steps = 3 * -(-len(train) // 32)
    assert swarm.step == steps and swarm.samples == 3 * len(train)
    assert swarm.offers == bridge.offers == steps // 2
    assert bridge.offers_replaced == swarm.offers - 1
    latest = bridge.take_offer()
    assert latest.step == steps // 2 * 2 and latest.samples == latest.total_samples
    assert bridge.take_offer() is None


def test_a_pull_bridge_gets_a_snapshot_only_when_its_node_is_ready(digits):
    train = digits.train
    model = small_model()
    bridge = QueueBridge(pull=True)
    swarm = SwarmCallback(bridge, batch_size=32, sync_every=2, samples_per_epoch=len(train))
    taken: list[Offer] = []
    done = threading.Event()

    def node():  # publishing takes 20 ms, about 10 batches here
        while not done.is_set():
            offer = bridge.take_offer(timeout=0.05)
            if offer is not None:
                taken.append(offer)
                time.sleep(0.02)

    thread = threading.Thread(target=node)
    thread.start()
    try:
        model.fit(train.x, train.y, batch_size=32, epochs=5, verbose=0, callbacks=[swarm])
    finally:
        done.set()
        thread.join(10)
    steps = 5 * -(-len(train) // 32)
    assert swarm.step == steps
    assert 2 <= swarm.offers < steps // 4  # offers due while the node was busy waited for it
    assert bridge.offers_replaced == 0 and len(taken) + len(bridge.outbox.queue) == swarm.offers
    # at most one offer per multiple of sync_every crossed (a deferred offer made at step 7
    # may be followed by the one due at 8 when the node is ready again by then)
    assert all(b.step // 2 > a.step // 2 for a, b in zip(taken, taken[1:], strict=False))
    pending = sum(o.samples for o in bridge.outbox.queue)  # an offer the node did not take
    assert sum(o.samples for o in taken) + pending + swarm._pending_samples == 5 * len(train)


class Declining(SwarmBridge):
    """Accepts every other offer; raises from take_merged once."""

    def __init__(self):
        self.accepted: list[Offer] = []
        self.calls = 0
        self.raised = False

    def offer_checkpoint(self, offer):
        self.calls += 1
        if self.calls % 2:
            return False
        self.accepted.append(offer)
        return True

    def take_merged(self):
        if not self.raised:
            self.raised = True
            raise RuntimeError("network thread died")
        return None


def test_declined_offers_carry_their_counts_and_bridge_errors_are_survived(digits):
    model = small_model()
    bridge = Declining()
    swarm = SwarmCallback(bridge, batch_size=10, sync_every=1)
    model.fit(digits.train.x[:100], digits.train.y[:100], batch_size=10, epochs=1, verbose=0,
              callbacks=[swarm])
    assert swarm.step == 10 and (swarm.offers, swarm.declined, swarm.errors) == (5, 5, 1)
    assert [o.samples for o in bridge.accepted] == [20] * 5
    assert [o.step for o in bridge.accepted] == [2, 4, 6, 8, 10]


class Raising(SwarmBridge):
    def offer_checkpoint(self, offer):
        raise OSError("disk full")

    def take_merged(self):
        raise OSError("socket closed")


def test_a_raising_bridge_does_not_stop_training(digits):
    model = small_model()
    swarm = SwarmCallback(Raising(), batch_size=32, sync_every=1)
    history = model.fit(digits.train.x, digits.train.y, batch_size=32, epochs=2, verbose=0,
                        callbacks=[swarm])
    steps = 2 * -(-len(digits.train) // 32)
    assert len(history.history["loss"]) == 2 and swarm.errors == 2 * steps


def test_steps_per_execution_counts_every_batch():
    model = build_model(
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
        .to_json(), optimizer="sgd", learning_rate=0.1)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], steps_per_execution=4)
    bridge = QueueBridge()
    swarm = SwarmCallback(bridge, batch_size=10, sync_every=3, samples_per_epoch=95)
    model.fit(np.zeros((95, 4), np.float32), np.zeros(95, np.int64), batch_size=10, epochs=2,
              verbose=0, callbacks=[swarm])
    assert swarm.step == 20 and swarm.samples == 190
    # Keras reports boundaries at steps 4, 8, 10 | 14, 18, 20 (the last execution of each
    # epoch holds 2 batches, not 4); all but 18 -> 20 cross a multiple of 3
    assert bridge.offers == 5


def test_callback_arguments_are_checked():
    for kwargs in ({"batch_size": 0, "sync_every": 1}, {"batch_size": 1, "sync_every": 0},
                   {"batch_size": 1, "sync_every": 1, "k": 0},
                   {"batch_size": 1, "sync_every": 1, "min_peers": -1},
                   {"batch_size": 1, "sync_every": 1, "samples_per_epoch": 0}):
        with pytest.raises(ConfigError, match="SwarmCallback"):
            SwarmCallback(QueueBridge(), **kwargs)


def test_merged_as_plain_mapping_is_accepted(digits):
    class Plain(SwarmBridge):
        def __init__(self, weights):
            self.weights = weights

        def offer_checkpoint(self, offer):
            return True

        def take_merged(self):
            weights, self.weights = self.weights, None
            return weights

    model = small_model()
    zeros = {n: np.zeros_like(w) for n, w in get_weights(model).items()}
    swarm = SwarmCallback(Plain(zeros), batch_size=32, sync_every=1000)
    model.fit(digits.train.x[:32], digits.train.y[:32], batch_size=32, epochs=1, verbose=0,
              callbacks=[swarm])
    assert swarm.merges_applied == 1 and not any(w.any() for w in get_weights(model).values())
    assert isinstance(Merged(zeros).weights, dict)


# --------------------------------------------------------------- steps per execution, passes
def tiny_json() -> str:
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")]).to_json()


def test_build_model_compiles_steps_per_execution():
    assert small_model().steps_per_execution == 1
    model = build_model(tiny_json(), optimizer="sgd", learning_rate=0.1, steps_per_execution=5)
    assert model.steps_per_execution == 5
    for bad in (0, -1, 2.0, True, "auto"):
        with pytest.raises(ConfigError, match="steps_per_execution"):
            build_model(tiny_json(), optimizer="sgd", learning_rate=0.1, steps_per_execution=bad)


def test_swarm_callback_counts_every_batch_of_a_built_model_with_steps_per_execution():
    model = build_model(tiny_json(), optimizer="sgd", learning_rate=0.1, steps_per_execution=4)
    bridge = QueueBridge()
    swarm = SwarmCallback(bridge, batch_size=10, sync_every=3, samples_per_epoch=95)
    model.fit(np.zeros((95, 4), np.float32), np.zeros(95, np.int64), batch_size=10, epochs=2,
              verbose=0, callbacks=[swarm])
    assert swarm.step == 20 and swarm.samples == 190
    assert int(model.optimizer.iterations.numpy()) == 20
    assert bridge.offers == 5  # boundaries 4, 8, 10 | 14, 18, 20: all but 18 -> 20 cross a 3
    assert swarm.offer_seconds > 0 and swarm.apply_seconds > 0


def test_fit_passes_runs_whole_passes_through_one_pipeline():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(95, 4)).astype(np.float32), rng.integers(0, 3, 95)
    model = build_model(tiny_json(), optimizer="sgd", learning_rate=0.1, seed=0,
                        steps_per_execution=5)  # 10 batches a pass: 5 divides them
    bridge = QueueBridge()
    swarm = SwarmCallback(bridge, batch_size=10, sync_every=3, samples_per_epoch=95)
    seen = []

    class Epochs(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(epoch)

    history = fit_passes(model, x, y, batch_size=10, epochs=3, callbacks=[swarm, Epochs()])
    assert len(history.history["loss"]) == 3 and seen == [0, 1, 2]
    assert int(model.optimizer.iterations.numpy()) == 30
    assert swarm.step == 30 and swarm.samples == 285 and bridge.offers == 6

    # with one execution per batch, stop_training ends fit at the epoch's end
    model = build_model(tiny_json(), optimizer="sgd", learning_rate=0.1, seed=0)

    class StopAfterOne(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True

    fit_passes(model, x, y, batch_size=32, epochs=5, callbacks=[StopAfterOne()])
    assert int(model.optimizer.iterations.numpy()) == 3


def test_fit_passes_learns_like_fit_on_arrays(digits):
    train, _, test = digits
    model = build_model(digits_json(), optimizer="adam", learning_rate=0.003, seed=0)
    fit_passes(model, train.x, train.y, batch_size=32, epochs=12)
    assert evaluate(model, test.x, test.y)["accuracy"] > 0.9


def test_fit_passes_refuses_what_would_drift_or_has_no_rows():
    from learnae.training.data import DataError

    model = build_model(tiny_json(), optimizer="sgd", learning_rate=0.1, steps_per_execution=4)
    x, y = np.zeros((95, 4), np.float32), np.zeros(95, np.int64)
    with pytest.raises(ConfigError, match="4 batches per execution, which does not divide the 10"):
        fit_passes(model, x, y, batch_size=10, epochs=1)
    assert int(model.optimizer.iterations.numpy()) == 0
    with pytest.raises(DataError):
        fit_passes(model, x[:0], y[:0], batch_size=10, epochs=1)
    with pytest.raises(DataError):
        fit_passes(model, x, y[:5], batch_size=10, epochs=1)
    for kwargs in ({"batch_size": 0, "epochs": 1}, {"batch_size": 10, "epochs": 0}):
        with pytest.raises(ConfigError):
            fit_passes(model, x, y, **kwargs)


def test_evaluate_reports_what_keras_evaluate_reports(digits):
    train, _, test = digits
    regularized = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(16, activation="relu", kernel_regularizer=keras.regularizers.L2(0.01),
                           activity_regularizer=keras.regularizers.L1(0.001)),
        keras.layers.Dropout(0.3),
        keras.layers.Dense(10, activation="softmax"),
    ]).to_json()
    for config in (digits_json(), regularized):
        model = build_model(config, optimizer="adam", learning_rate=0.003, seed=0)
        model.fit(train.x, train.y, batch_size=32, epochs=2, verbose=0)
        for batch_size in (256, 50):
            keras_says = model.evaluate(test.x, test.y, batch_size=batch_size, verbose=0,
                                        return_dict=True)
            ours = evaluate(model, test.x, test.y, batch_size=batch_size)
            assert ours["accuracy"] == pytest.approx(keras_says["accuracy"], abs=1e-6)
            assert ours["loss"] == pytest.approx(keras_says["loss"], rel=1e-5)


def test_row_losses_average_to_what_evaluate_reports(digits):
    train, _, test = digits
    model = build_model(digits_json(), optimizer="adam", learning_rate=0.003, seed=0)
    model.fit(train.x, train.y, batch_size=32, epochs=1, verbose=0)
    for batch_size in (256, 50):
        rows = row_losses(model, test.x, test.y, batch_size=batch_size)
        assert rows.shape == (len(test.y),) and rows.dtype == np.float64 and (rows >= 0).all()
        assert rows.mean() == pytest.approx(evaluate(model, test.x, test.y)["loss"], rel=1e-5)
    probs = np.asarray(model(test.x[:3], training=False), np.float64)
    expected = -np.log(probs[np.arange(3), test.y[:3]])
    assert row_losses(model, test.x[:3], test.y[:3]) == pytest.approx(expected, rel=1e-4)


def test_evaluate_needs_a_compiled_model_and_a_batch_size():
    bare = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    x, y = np.zeros((5, 4), np.float32), np.zeros(5, np.int64)
    with pytest.raises(ConfigError, match="compiled loss"):
        evaluate(bare, x, y)
    with pytest.raises(ConfigError, match="batch_size"):
        evaluate(small_model(), np.zeros((5, 64), np.float32), y, batch_size=0)
