"""Replaying a training segment (learnae.training.replay, learnae.verify.replay_verdict) with
real TensorFlow: the same segment trained again by a second model, in this process and in
another one, lands exactly on the first; one trained on other rows is disputed."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from learnae.models import model_config
from learnae.training.data import DataSpec
from learnae.verify import AGREE, DISPUTE, REPLAY_TOLERANCE, replay_verdict, segment_rows

MODEL = model_config("digits-mlp")


def _model(seed: int):
    from learnae.training.model import build_model

    return build_model(MODEL, optimizer="adam", learning_rate=0.003, seed=seed)


@pytest.fixture(scope="module")
def digits():
    return DataSpec.parse("digits:shard=0/4,partition=dirichlet:0.5,seed=3").load()


@pytest.mark.slow
def test_a_replayed_segment_lands_on_the_claimed_weights_and_other_rows_do_not(digits):
    from learnae.training.model import get_weights
    from learnae.training.replay import train_segment

    x, y = digits.train.x, digits.train.y
    prover, verifier = _model(0), _model(1)  # different initial weights: the start decides
    prover.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)  # an optimizer with state
    start = get_weights(_model(2))
    claimed = train_segment(prover, start, x, y, seed=7, steps=20, batch_size=32)
    replayed = train_segment(verifier, start, x, y, seed=7, steps=20, batch_size=32)
    for k in claimed:
        np.testing.assert_array_equal(claimed[k], replayed[k])
    verdict = replay_verdict(start, claimed, replayed)
    assert (verdict.method, verdict.verdict, verdict.code) == ("replay", AGREE, "ok")
    assert verdict.figures["replay_distance"] == 0.0 and verdict.figures["update_norm"] > 0

    # A checkpoint that names these rows and seed but trained on others (false-data-claim).
    other = train_segment(verifier, start, x, y, seed=8, steps=20, batch_size=32)
    lie = replay_verdict(start, other, replayed)
    assert (lie.verdict, lie.code) == (DISPUTE, "replay-mismatch")
    assert lie.figures["replay_distance"] > 10 * REPLAY_TOLERANCE  # 0.40 when written


@pytest.mark.slow
def test_a_replay_in_another_process_is_bit_identical(digits, tmp_path):
    from learnae.training.model import get_weights
    from learnae.training.replay import train_segment

    x, y = digits.train.x, digits.train.y
    start = get_weights(_model(3))
    claimed = train_segment(_model(0), start, x, y, seed=11, steps=15, batch_size=16)
    np.savez(tmp_path / "start.npz", **{k.replace("/", "|"): v for k, v in start.items()})
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from learnae.models import model_config
        from learnae.training.data import DataSpec
        from learnae.training.model import build_model
        from learnae.training.replay import train_segment
        d = DataSpec.parse("digits:shard=0/4,partition=dirichlet:0.5,seed=3").load()
        start = {{k.replace("|", "/"): v for k, v in np.load({str(tmp_path / "start.npz")!r}).items()}}
        model = build_model(model_config("digits-mlp"), optimizer="adam", learning_rate=0.003, seed=5)
        w = train_segment(model, start, d.train.x, d.train.y, seed=11, steps=15, batch_size=16)
        np.savez({str(tmp_path / "replayed.npz")!r}, **{{k.replace("/", "|"): v for k, v in w.items()}})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300, capture_output=True)
    replayed = {k.replace("|", "/"): v for k, v in np.load(tmp_path / "replayed.npz").items()}
    assert replay_verdict(start, claimed, replayed).figures["replay_distance"] == 0.0


def test_segment_rows_are_fixed_by_the_seed():
    rows = segment_rows(7, 100, 3, 4)
    assert rows.shape == (3, 4) and rows.dtype == np.int64 and rows.min() >= 0 and rows.max() < 100
    assert np.array_equal(rows, segment_rows(7, 100, 3, 4))
    assert not np.array_equal(rows, segment_rows(8, 100, 3, 4))
    # PCG64's stream is fixed by NumPy: the same numbers on every machine (pinned when written).
    assert segment_rows(1, 1000, 1, 5).tolist() == [[473, 511, 755, 950, 34]]
    for bad in ((-1, 10, 1, 1), (2**63, 10, 1, 1), (1, 0, 1, 1), (1, 10, 0, 1), (1, 10, 1, 0), (1.5, 10, 1, 1)):
        with pytest.raises(ValueError):
            segment_rows(*bad)


def test_replay_verdict_boundaries_and_bad_inputs():
    base = {"w": np.zeros(4, np.float32)}
    claimed = {"w": np.array([3.0, 4.0, 0.0, 0.0], np.float32)}  # an update of norm 5
    near = {"w": np.array([3.0, 4.0, 0.04, 0.0], np.float32)}  # 0.04 away: distance 0.008
    agreed = replay_verdict(base, claimed, near)
    assert agreed.code == "ok" and agreed.figures["replay_distance"] == pytest.approx(0.008, rel=1e-6)
    assert replay_verdict(base, claimed, near, tolerance=0.0079).code == "replay-mismatch"
    assert replay_verdict(base, base, base).figures == {"update_norm": 0.0, "replay_distance": 0.0}
    nothing = replay_verdict(base, base, claimed)  # claims no update, the replay moved
    assert nothing.code == "replay-mismatch" and nothing.figures == {"update_norm": 0.0}
    assert all(math.isfinite(v) for v in nothing.figures.values())
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        replay_verdict(base, claimed, near, tolerance=-1.0)
    with pytest.raises(ValueError, match="replayed has other weight paths or shapes"):
        replay_verdict(base, claimed, {"w": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="base has other weight paths or shapes"):
        replay_verdict({"v": np.zeros(4, np.float32)}, claimed, near)
