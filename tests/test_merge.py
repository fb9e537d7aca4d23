"""Tests for learnae.merge: update checks and merge rules over weight dicts."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from learnae import merge as M
from learnae.errors import LearnaeError
from learnae.merge import (
    RULES,
    Contribution,
    MergeError,
    RejectedUpdate,
    check_params,
    check_update,
    merge,
)

K, B = "dense/kernel", "dense/bias"


def w(kernel, bias, dtype=np.float32) -> dict[str, np.ndarray]:
    """A tiny model: a 2x2 kernel and a bias vector of 2, in model.weights order."""
    return {K: np.array(kernel, dtype=dtype), B: np.array(bias, dtype=dtype)}


def c(weights, author, samples=1, age=1) -> Contribution:
    return Contribution(weights=weights, samples=samples, age=age, author=author)


def assert_weights(got: dict, expected: dict, exact: bool = True) -> None:
    assert list(got) == list(expected)
    for name in expected:
        assert got[name].dtype == expected[name].dtype, name
        assert got[name].shape == expected[name].shape, name
        if exact:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
        else:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, err_msg=name)


# Five inputs for the coordinate-wise rules; per coordinate (kernel row-major, then bias):
#   K00: 1, 3, 2, -5, 100   K01: 2, 2, 8, 2, -1   K10: 3, 1, 0, 2, 3   K11: 4, 0, 4, 6, 5
#   b0:  0, 2, 1, 4, -2     b1:  1, -1, 1, 0, 3
OWN = w([[1, 2], [3, 4]], [0, 1])
PA = w([[3, 2], [1, 0]], [2, -1])
PB = w([[2, 8], [0, 4]], [1, 1])
PC = w([[-5, 2], [2, 6]], [4, 0])
PD = w([[100, -1], [3, 5]], [-2, 3])


# ----------------------------------------------------------------- rules, by hand
def test_mean_is_sample_weighted():
    # own has 1 sample, the peer 3: 0.25 * own + 0.75 * peer
    got = M.mean(c(OWN, "me", samples=1), [c(PA, "a", samples=3)])
    assert_weights(got, w([[2.5, 2.0], [1.5, 1.0]], [1.5, -0.5]))


def test_mean_with_no_samples_anywhere_is_the_plain_mean():
    got = M.mean(c(OWN, "me", samples=0), [c(PA, "a", samples=0)])
    assert_weights(got, w([[2, 2], [2, 2]], [1, 0]))


def test_mean_ignores_a_peer_with_zero_samples():
    res = merge("mean", c(OWN, "me", samples=5), [c(PA, "a", samples=0)])
    assert_weights(res.weights, OWN)
    assert res.used == ["me", "a"]
    assert res.selected == ["me"]


def test_age_weights_by_model_age():
    # own is 3 steps old, the peer 1: 0.75 * own + 0.25 * peer
    got = M.age(c(OWN, "me", age=3), [c(PA, "a", age=1)])
    assert_weights(got, w([[1.5, 2.0], [2.5, 3.0]], [0.5, 0.5]))


def test_age_of_three_models():
    # ages 1, 1, 2: (own + A + 2B) / 4
    got = M.age(c(OWN, "me", age=1), [c(PA, "a", age=1), c(PB, "b", age=2)])
    assert_weights(got, w([[2.0, 5.0], [1.0, 3.0]], [1.0, 0.5]))


def test_median_odd():
    got = M.median(c(OWN, "me"), [c(PA, "a"), c(PB, "b"), c(PC, "c"), c(PD, "d")])
    assert_weights(got, w([[2, 2], [2, 4]], [1, 1]))


def test_median_even_averages_the_middle_two():
    got = M.median(c(OWN, "me"), [c(PA, "a"), c(PB, "b"), c(PC, "c")])
    assert_weights(got, w([[1.5, 2], [1.5, 4]], [1.5, 0.5]))


def test_median_of_own_alone_is_own():
    got = M.median(c(OWN, "me"), [])
    assert_weights(got, OWN)


def test_trimmed_drops_one_from_each_end_of_five():
    # beta = 0.2, n = 5: k = 1, the middle three are averaged
    got = M.trimmed(c(OWN, "me"), [c(PA, "a"), c(PB, "b"), c(PC, "c"), c(PD, "d")], beta=0.2)
    assert_weights(got, w([[2, 2], [2, 13 / 3]], [1, 2 / 3]))


def test_trimmed_beta_zero_is_the_plain_mean():
    got = M.trimmed(c(OWN, "me"), [c(PA, "a"), c(PB, "b")], beta=0.0)
    assert_weights(got, w([[2, 4], [4 / 3, 8 / 3]], [1, 1 / 3]))


# Krum inputs: all zero except one coordinate each (flattened: K00 K01 K10 K11 b0 b1).
#   own = 0, A: K00 = 1, B: K00 = 2, C: b0 = 2, D: K11 = 10.
# Squared distances: own-A 1, own-B 4, own-C 4, own-D 100, A-B 1, A-C 5, A-D 101,
#   B-C 8, B-D 104, C-D 104.  n = 5, f = 1: sum of the 2 smallest to the others:
#   own 1+4 = 5, A 1+1 = 2, B 1+4 = 5, C 4+5 = 9, D 100+101 = 201.
KO = w([[0, 0], [0, 0]], [0, 0])
KA = w([[1, 0], [0, 0]], [0, 0])
KB = w([[2, 0], [0, 0]], [0, 0])
KC = w([[0, 0], [0, 0]], [2, 0])
KD = w([[0, 0], [0, 10]], [0, 0])
KRUM_PEERS = [c(KA, "a"), c(KB, "b"), c(KC, "c"), c(KD, "d")]


def test_krum_picks_the_lowest_score():
    assert_weights(M.krum(c(KO, "me"), KRUM_PEERS, f=1), KA)
    res = merge("krum", c(KO, "me"), KRUM_PEERS, f=1)
    assert res.selected == ["a"]
    assert res.notes == []


def test_multikrum_default_m_drops_the_f_worst():
    # m = n - f = 4: own, A, B, C averaged
    got = M.multikrum(c(KO, "me"), KRUM_PEERS, f=1)
    assert_weights(got, w([[0.75, 0], [0, 0]], [0.5, 0]))
    res = merge("multikrum", c(KO, "me"), KRUM_PEERS, f=1)
    assert res.selected == ["me", "a", "b", "c"]


def test_multikrum_ties_go_to_the_lexicographically_smaller_input():
    # m = 2: A (score 2), then own and B tie at 5; own (K00 = 0) sorts before B (K00 = 2)
    got = M.multikrum(c(KO, "me"), KRUM_PEERS, f=1, m=2)
    assert_weights(got, w([[0.5, 0], [0, 0]], [0, 0]))
    reordered = [KRUM_PEERS[i] for i in (3, 2, 0, 1)]
    assert_weights(M.multikrum(c(KO, "me"), reordered, f=1, m=2), got)


def test_multikrum_m_one_is_krum_and_m_above_n_is_clamped():
    assert_weights(M.multikrum(c(KO, "me"), KRUM_PEERS, f=1, m=1), KA)
    res = merge("multikrum", c(KO, "me"), KRUM_PEERS, f=1, m=9)
    assert_weights(res.weights, w([[0.6, 0], [0, 2]], [0.4, 0]))
    assert "m=9" in res.notes[0]


def test_krum_with_too_few_inputs_for_f_uses_the_largest_valid_f():
    # f = 2 needs 7 inputs; with 5 it runs with f = 1
    res = merge("krum", c(KO, "me"), KRUM_PEERS, f=2)
    assert_weights(res.weights, KA)
    assert res.notes == ["krum: f=2 needs at least 7 inputs, got 5: used f=1"]


def test_krum_with_two_inputs_falls_back_to_the_median():
    res = merge("krum", c(OWN, "me"), [c(PA, "a")], f=1)
    assert_weights(res.weights, w([[2, 2], [2, 2]], [1, 0]))
    assert "median" in res.notes[0]
    res = merge("multikrum", c(OWN, "me"), [], f=1)
    assert_weights(res.weights, OWN)


# ----------------------------------------------------------------------- dtypes
def test_results_keep_order_dtypes_and_integer_tensors_of_own():
    own = {
        "a/kernel": np.array([[1, 2], [3, 4]], np.float16),
        "a/seed": np.array([7, 9], np.uint32),
        "a/bias": np.array([0.5, 1.5], np.float64),
    }
    peer = {
        "a/kernel": np.array([[3, 4], [5, 6]], np.float16),
        "a/seed": np.array([1, 1], np.uint32),
        "a/bias": np.array([1.5, 2.5], np.float64),
    }
    for rule in RULES:
        res = merge(rule, c(own, "me"), [c(peer, "p")])
        expected = {
            "a/kernel": np.array([[2, 3], [4, 5]], np.float16),
            "a/seed": np.array([7, 9], np.uint32),
            "a/bias": np.array([1.0, 2.0], np.float64),
        }
        assert_weights(res.weights, expected)


def test_results_are_fresh_arrays_and_inputs_are_untouched():
    own = {k: v.copy() for k, v in OWN.items()}
    res = merge("mean", c(own, "me"), [])
    for name in own:
        assert res.weights[name] is not own[name]
        assert not np.shares_memory(res.weights[name], own[name])
    res = merge("krum", c(KO, "me"), KRUM_PEERS, f=1)
    assert not np.shares_memory(res.weights[K], KA[K])
    res.weights[K][:] = 99
    assert_weights(own, OWN)
    assert_weights(KA, w([[1, 0], [0, 0]], [0, 0]))


def test_scalar_and_empty_tensors():
    own = {"s": np.array(1.0, np.float32), "e": np.zeros((0, 3), np.float32)}
    peer = {"s": np.array(3.0, np.float32), "e": np.zeros((0, 3), np.float32)}
    for rule in RULES:
        got = merge(rule, c(own, "me"), [c(peer, "p")]).weights
        assert got["s"].shape == () and got["s"] == 2.0
        assert got["e"].shape == (0, 3)


def test_model_without_float_weights():
    own = {"counter": np.array([3], np.int64)}
    for rule in RULES:
        res = merge(rule, c(own, "me"), [c({"counter": np.array([5], np.int64)}, "p")])
        assert_weights(res.weights, own)


# ------------------------------------------------------------------ check_update
def rejection(peer, own=OWN, **kw) -> RejectedUpdate:
    with pytest.raises(RejectedUpdate) as info:
        check_update(own, peer, **kw)
    assert isinstance(info.value, LearnaeError)
    assert str(info.value) == info.value.reason
    return info.value


def test_check_update_accepts_a_sane_peer():
    check_update(OWN, PA)
    check_update(OWN, {k: v * 9 for k, v in OWN.items()})


def test_check_update_wrong_shape():
    e = rejection({K: np.zeros((2, 3), np.float32), B: OWN[B]})
    assert e.code == "shape"
    assert e.reason == "weight 'dense/kernel' has shape (2, 3), the node's has (2, 2)"


def test_check_update_wrong_dtype():
    e = rejection({K: OWN[K], B: OWN[B].astype(np.float64)})
    assert e.code == "dtype"
    assert e.reason == "weight 'dense/bias' has dtype float64, the node's has float32"


def test_check_update_missing_name():
    e = rejection({K: OWN[K]})
    assert e.code == "names"
    assert (
        e.reason == "update's weights differ from the node's: missing ['dense/bias'], unexpected []"
    )


def test_check_update_extra_name():
    e = rejection({**OWN, "dense_1/kernel": np.zeros(2, np.float32)})
    assert e.code == "names"
    assert "unexpected ['dense_1/kernel']" in e.reason
    assert "missing []" in e.reason


def test_check_update_reordered_names():
    e = rejection({B: OWN[B], K: OWN[K]})
    assert e.code == "names"
    assert e.reason == (
        "update holds the node's weights in another order: weight #0 is 'dense/bias',"
        " the node's is 'dense/kernel'"
    )


def test_check_update_not_a_mapping():
    e = rejection([OWN[K], OWN[B]])
    assert e.code == "names"
    assert "is a list" in e.reason


def test_check_update_nan():
    e = rejection(w([[1, np.nan], [3, 4]], [0, 1]))
    assert e.code == "non-finite"
    assert e.reason == "update's weight 'dense/kernel' holds 1 NaN and 0 infinite values"


def test_check_update_inf():
    e = rejection(w([[1, 2], [3, 4]], [np.inf, -np.inf]))
    assert e.code == "non-finite"
    assert e.reason == "update's weight 'dense/bias' holds 0 NaN and 2 infinite values"


def test_check_update_norm_1000x_own():
    # own norm = sqrt(1 + 4 + 9 + 16 + 0 + 1) = sqrt(31) = 5.56776
    e = rejection({k: v * 1000 for k, v in OWN.items()})
    assert e.code == "norm"
    assert e.reason.startswith(
        "global L2 norm 5567.76 is 1000× the node's own 5.56776, over the bound 10×"
    )
    assert "largest tensor is 'dense/kernel' with norm 5477.23" in e.reason


def test_check_update_norm_ratio_is_configurable():
    peer = {k: v * 3 for k, v in OWN.items()}
    check_update(OWN, peer)
    assert rejection(peer, max_norm_ratio=2.0).code == "norm"
    check_update(OWN, {k: v * 1e6 for k, v in OWN.items()}, max_norm_ratio=float("inf"))


def test_check_update_norm_floor_when_own_is_zero():
    zero = w([[0, 0], [0, 0]], [0, 0])
    check_update(zero, w([[3, 0], [0, 4]], [0, 0]))  # norm 5 <= 10 x floor 1.0
    e = rejection(w([[12, 0], [0, 16]], [0, 0]), own=zero)  # norm 20
    assert e.code == "norm"
    assert e.reason.startswith(
        "global L2 norm 20 is over the bound 10 (10× the floor min_norm=1, which stands in"
        " for the node's own norm 0)"
    )
    check_update(zero, w([[12, 0], [0, 16]], [0, 0]), min_norm=2.0)
    assert rejection(w([[0, 0], [0, 0]], [0, 1e-3]), own=zero, min_norm=0.0).code == "norm"


def test_check_update_norm_ignores_integer_tensors():
    own = {**OWN, "seed": np.array([1], np.uint32)}
    check_update(own, {**PA, "seed": np.array([4_000_000_000], np.uint32)})


def test_check_update_refuses_unusable_own_and_bounds():
    with pytest.raises(MergeError) as info:
        check_update(w([[np.nan, 0], [0, 0]], [0, 0]), PA)
    assert info.value.code == "bad-own" and "diverged" in info.value.reason
    for kw in ({"max_norm_ratio": 0}, {"max_norm_ratio": float("nan")}, {"min_norm": -1}):
        with pytest.raises(MergeError) as info:
            check_update(OWN, PA, **kw)
        assert info.value.code == "bad-params"


# ------------------------------------------------------------------------- merge
def test_merge_drops_and_reports_rejected_updates():
    bad_nan = c(w([[np.nan, 0], [0, 0]], [0, 0]), "nan-peer")
    huge = c({k: v * 1000 for k, v in OWN.items()}, "huge-peer")
    wrong = c({K: OWN[K]}, "names-peer")
    res = merge("mean", c(OWN, "me", samples=1), [bad_nan, c(PA, "a", samples=3), huge, wrong])
    assert_weights(res.weights, w([[2.5, 2.0], [1.5, 1.0]], [1.5, -0.5]))
    assert res.used == ["me", "a"]
    assert [(a, code) for a, code, _ in res.rejected] == [
        ("nan-peer", "non-finite"),
        ("huge-peer", "norm"),
        ("names-peer", "names"),
    ]
    assert "1 NaN" in res.rejected[0][2]


def test_merge_rejects_duplicate_authors_and_bad_metadata():
    res = merge(
        "median",
        c(OWN, "me"),
        [c(PA, "a"), c(PB, "a"), c(PC, "me"), c(PD, "d", samples=-1), c(PD, "e", age=1.5)],
    )
    assert res.used == ["me", "a"]
    codes = [(a, code) for a, code, _ in res.rejected]
    assert codes == [("a", "duplicate"), ("me", "duplicate"), ("d", "meta"), ("e", "meta")]
    assert "samples is -1" in res.rejected[2][2]
    assert "age is 1.5" in res.rejected[3][2]
    res = merge("mean", c(OWN, "me"), ["not a contribution"])
    assert res.rejected[0][1] == "meta"


def test_merge_with_no_peers_returns_own():
    for rule in RULES:
        res = merge(rule, c(OWN, "me"), [])
        assert_weights(res.weights, OWN)
        assert res.used == ["me"] and res.rejected == []


def test_merge_unknown_rule_and_bad_params():
    with pytest.raises(MergeError) as info:
        merge("fedprox", c(OWN, "me"), [])
    assert info.value.code == "unknown-rule" and "fedprox" in info.value.reason
    bad = [
        ("trimmed", {"beta": 0.5}),
        ("trimmed", {"beta": -0.1}),
        ("krum", {"f": -1}),
        ("krum", {"f": 1.5}),
        ("multikrum", {"m": 0}),
        ("mean", {"beta": 0.1}),
        ("median", {"f": 1}),
    ]
    for rule, params in bad:
        with pytest.raises(MergeError) as info:
            merge(rule, c(OWN, "me"), [], **params)
        assert info.value.code == "bad-params", (rule, params)
        with pytest.raises(MergeError):
            check_params(rule, params)
    check_params("multikrum", {"f": 2, "m": 3})
    check_params("mean", {})


def test_merge_refuses_unusable_own():
    with pytest.raises(MergeError) as info:
        merge("mean", c(w([[np.inf, 0], [0, 0]], [0, 0]), "me"), [c(PA, "a")])
    assert info.value.code == "bad-own"
    with pytest.raises(MergeError) as info:
        merge("mean", OWN, [c(PA, "a")])
    assert info.value.code == "bad-own"
    with pytest.raises(MergeError) as info:
        merge("mean", c(OWN, "me", samples=-3), [])
    assert info.value.code == "bad-own"


def test_rules_called_directly_check_structure():
    with pytest.raises(RejectedUpdate) as info:
        M.median(c(OWN, "me"), [c({K: OWN[K]}, "a")])
    assert info.value.code == "names"


def test_sorting_network_sorts_every_zero_one_input():
    # 0-1 principle (Knuth, TAOCP 5.3.4): a network sorting every 0/1 input sorts everything
    for n in range(1, 18):
        idx = np.arange(2**n, dtype=np.uint32)
        rows = [((idx >> b) & 1).astype(np.uint8) for b in range(n)]
        for i, j in M._sorting_network(n):
            assert i < j
            rows[i], rows[j] = np.minimum(rows[i], rows[j]), np.maximum(rows[i], rows[j])
        for k in range(n - 1):
            assert (rows[k] <= rows[k + 1]).all(), n


def test_median_with_many_inputs_uses_numpy_sort():
    rng = np.random.default_rng(7)
    peers = [c(w(rng.normal(size=(2, 2)), rng.normal(size=2)), f"p{i}") for i in range(20)]
    got = M.median(c(OWN, "me"), peers)
    stacked = [np.stack([x.weights[n] for x in [c(OWN, "me"), *peers]]) for n in (K, B)]
    np.testing.assert_array_equal(got[K], np.median(stacked[0], axis=0).astype(np.float32))
    np.testing.assert_array_equal(got[B], np.median(stacked[1], axis=0).astype(np.float32))


def test_module_does_not_import_tensorflow():
    code = "import sys, learnae.merge; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ------------------------------------------------------------------- properties
SHAPES = {"k": (3, 2), "b": (2,), "s": ()}
values = st.floats(-1e3, 1e3, width=32, allow_subnormal=False)


@st.composite
def models(draw, n_min=1, n_max=6):
    """(own, peers): n_min..n_max inputs of one small float32 model, with samples and age."""
    n = draw(st.integers(n_min, n_max))
    out = []
    for i in range(n):
        weights = {
            name: draw(hnp.arrays(np.float32, shape, elements=values))
            for name, shape in SHAPES.items()
        }
        samples = draw(st.integers(0, 1000))
        age = draw(st.integers(0, 1000))
        out.append(c(weights, "me" if i == 0 else f"p{i}", samples=samples, age=age))
    return out[0], out[1:]


RULE_PARAMS = [
    ("mean", {}),
    ("age", {}),
    ("median", {}),
    ("trimmed", {"beta": 0.2}),
    ("trimmed", {"beta": 0.4}),
    ("krum", {"f": 1}),
    ("krum", {"f": 0}),
    ("multikrum", {"f": 1}),
    ("multikrum", {"f": 1, "m": 2}),
]
NO_NORM = {"max_norm_ratio": float("inf")}


@settings(deadline=None, max_examples=60)
@given(inputs=models(), data=st.data())
def test_order_of_contributions_does_not_matter(inputs, data):
    own, peers = inputs
    order = data.draw(st.permutations(range(len(peers))))
    for rule, params in RULE_PARAMS:
        a = merge(rule, own, peers, **NO_NORM, **params).weights
        b = merge(rule, own, [peers[i] for i in order], **NO_NORM, **params).weights
        for name in SHAPES:
            if rule in ("median", "trimmed", "krum"):
                np.testing.assert_array_equal(a[name], b[name], err_msg=rule)
            else:
                np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-4, err_msg=rule)


@settings(deadline=None, max_examples=60)
@given(inputs=models(), beta=st.floats(0, 0.49))
def test_median_and_trimmed_stay_within_the_inputs(inputs, beta):
    own, peers = inputs
    everyone = [own, *peers]
    for rule, params in (("median", {}), ("trimmed", {"beta": beta})):
        got = merge(rule, own, peers, **NO_NORM, **params).weights
        for name in SHAPES:
            stacked = np.stack([x.weights[name] for x in everyone])
            assert (got[name] >= stacked.min(axis=0)).all(), rule
            assert (got[name] <= stacked.max(axis=0)).all(), rule


@settings(deadline=None, max_examples=60)
@given(inputs=models(), copies=st.integers(0, 5))
def test_mean_of_identical_inputs_is_that_input(inputs, copies):
    own, _ = inputs
    peers = [c(own.weights, f"p{i}", samples=i * 7, age=i) for i in range(copies)]
    for rule in ("mean", "age", "median", "trimmed", "multikrum"):
        got = merge(rule, own, peers).weights
        assert_weights(got, dict(own.weights))


@st.composite
def honest_and_outlier(draw):
    """4 honest inputs near a centre (within 1 per coordinate) and one ~1e3 away from it."""
    centre = {
        n: draw(hnp.arrays(np.float32, s, elements=st.floats(-10, 10, width=32)))
        for n, s in SHAPES.items()
    }
    noise = st.floats(-1, 1, width=32)
    honest = [
        {
            n: (centre[n] + draw(hnp.arrays(np.float32, s, elements=noise))).astype(np.float32)
            for n, s in SHAPES.items()
        }
        for _ in range(4)
    ]
    direction = {
        n: draw(hnp.arrays(np.float64, s, elements=st.floats(-1, 1))) for n, s in SHAPES.items()
    }
    length = np.sqrt(sum(float((d**2).sum()) for d in direction.values()))
    if length < 1e-3:
        direction, length = {n: np.ones(s) for n, s in SHAPES.items()}, np.sqrt(9.0)
    outlier = {n: (centre[n] + direction[n] / length * 1e3).astype(np.float32) for n in SHAPES}
    slot = draw(st.integers(0, 4))
    weights = honest[:slot] + [outlier] + honest[slot:]
    everyone = [c(x, "me" if i == 0 else f"p{i}") for i, x in enumerate(weights)]
    return everyone, slot, honest


@settings(deadline=None, max_examples=60)
@given(case=honest_and_outlier())
def test_krum_ignores_one_far_outlier(case):
    everyone, slot, honest = case
    res = merge("krum", everyone[0], everyone[1:], f=1, **NO_NORM)
    assert res.selected != [everyone[slot].author]
    assert any(all(np.array_equal(res.weights[n], h[n]) for n in SHAPES) for h in honest)
    outlier = everyone[slot].weights
    assert not all(np.array_equal(res.weights[n], outlier[n]) for n in SHAPES)


@settings(deadline=None, max_examples=60)
@given(case=honest_and_outlier())
def test_multikrum_excludes_the_outlier(case):
    everyone, slot, honest = case
    res = merge("multikrum", everyone[0], everyone[1:], f=1, **NO_NORM)
    assert everyone[slot].author not in res.selected
    assert len(res.selected) == 4
    for n in SHAPES:
        expected = np.mean([h[n].astype(np.float64) for h in honest], axis=0)
        np.testing.assert_allclose(res.weights[n], expected, rtol=1e-6, atol=1e-5)


def test_merge_checks_the_norm_before_any_rule():
    own = c(OWN, "me")
    far = c({k: v * 1000 for k, v in OWN.items()}, "far")
    for rule in RULES:
        res = merge(rule, own, [far])
        assert res.used == ["me"] and res.rejected[0][:2] == ("far", "norm")


# ------------------------------------------------------- packed inputs, norms, finiteness
@settings(deadline=None, max_examples=40)
@given(inputs=models(n_min=2), data=st.data())
def test_packed_inputs_merge_exactly_like_separate_arrays(inputs, data):
    """Weights packed back to back (as get_weights lays out a snapshot) are read as one
    vector without a copy; every rule gives the same result as with separate arrays, and
    the result shares no memory with any input."""
    from learnae.formats import pack

    own, peers = inputs
    rule, params = data.draw(st.sampled_from(RULE_PARAMS))
    packed_own = Contribution(pack(own.weights), own.samples, own.age, own.author)
    packed = [Contribution(pack(p.weights), p.samples, p.age, p.author) for p in peers]
    plain = merge(rule, own, peers, **params, **NO_NORM)
    fast = merge(rule, packed_own, packed, **params, **NO_NORM)
    assert_weights(fast.weights, plain.weights)
    assert (fast.used, fast.selected, fast.notes) == (plain.used, plain.selected, plain.notes)
    for out in fast.weights.values():
        for c_ in (packed_own, *packed):
            assert not any(np.shares_memory(out, a) for a in c_.weights.values())


def test_flatten_views_only_gapless_runs_of_the_flat_dtype():
    from learnae.formats import pack

    packed = pack(OWN)
    layout = M._Layout.of(OWN)
    flat = layout.flatten(list(packed.values()))
    assert flat.base is not None and not flat.flags.writeable
    np.testing.assert_array_equal(flat, [1, 2, 3, 4, 0, 1])
    # separate arrays, a reordered pack, and an integer tensor in between are copied
    assert layout.flatten(list(OWN.values())).flags.owndata
    swapped = pack({B: OWN[B], K: OWN[K]})
    assert layout.flatten([swapped[K], swapped[B]]).flags.owndata
    mixed = {K: OWN[K], "count": np.array(3, np.int64), B: OWN[B]}
    layout = M._Layout.of(mixed)
    flat = layout.flatten(list(pack(mixed).values()))
    assert flat.flags.owndata
    np.testing.assert_array_equal(flat, [1, 2, 3, 4, 0, 1])


def test_float64_weights_whose_squares_overflow_are_finite_but_over_the_norm():
    own = w([[1, 2], [3, 4]], [0, 1], dtype=np.float64)
    e = rejection(w([[1e200, 0], [0, 0]], [0, 0], dtype=np.float64), own=own)
    assert e.code == "norm" and "global L2 norm inf" in e.reason
    e = rejection(w([[1e200, 0], [0, np.nan]], [0, 0], dtype=np.float64), own=own)
    assert e.code == "non-finite"
    assert e.reason == "update's weight 'dense/kernel' holds 1 NaN and 0 infinite values"
