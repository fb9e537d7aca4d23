"""The demo's verdict (:func:`learnae.local.baselines.compare` and ``verdict``): swarm against
local-only accuracy with a margin for the test split's size, pure arithmetic (no TensorFlow)."""

from __future__ import annotations

import pytest

from learnae.local.baselines import (
    compare,
    describe_margin,
    newcombe_interval,
    verdict,
    wilson_interval,
)


@pytest.mark.parametrize(("x", "n", "low", "high"), [
    # Newcombe 1998, "Two-sided confidence intervals for the single proportion", Stat Med 17:857, Table I
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718),
])
def test_wilson_interval_matches_the_published_values(x, n, low, high):
    lo, hi = wilson_interval(x / n, n)
    assert lo == pytest.approx(low, abs=5e-5) and hi == pytest.approx(high, abs=5e-5)


@pytest.mark.parametrize(("x1", "n1", "x2", "n2", "low", "high"), [
    # Newcombe 1998, "Interval estimation for the difference between independent proportions",
    # Stat Med 17:873, Table II, method 10
    (56, 70, 48, 80, 0.0524, 0.3339), (9, 10, 3, 10, 0.1705, 0.8090), (6, 7, 2, 7, 0.0582, 0.8062),
    (5, 56, 0, 29, -0.0381, 0.1926),
])
def test_newcombe_interval_matches_the_published_values(x1, n1, x2, n2, low, high):
    lo, hi = newcombe_interval(x1 / n1, n1, x2 / n2, n2)
    assert lo == pytest.approx(low, abs=5e-5) and hi == pytest.approx(high, abs=5e-5)


def test_one_row_below_local_only_on_114_rows_is_not_worse():
    # the run of issue 19: node2 0.965 (110/114) against local-only 0.974 (111/114)
    c = compare(110 / 114, 111 / 114, 114)
    assert c.difference == pytest.approx(-1 / 114)
    assert c.low < c.difference < 0 < c.high and c.verdict == "same"
    assert c.margin_below > 3 / 114  # several rows, not one
    assert compare(111 / 114, 110 / 114, 114).verdict == "same"  # one row above is no win either
    # beside a node the swarm clearly helped, the run is ok
    judged = verdict([compare(111 / 114, 105 / 114, 114), c, compare(111 / 114, 95 / 114, 114)])
    assert judged == {"no_node_worse": True, "some_node_better": True, "ok": True}


def test_a_clearly_worse_node_fails_however_well_the_others_do():
    worse = compare(90 / 114, 110 / 114, 114)  # 20 rows below training alone
    assert worse.high < 0 and worse.verdict == "worse"
    judged = verdict([compare(112 / 114, 60 / 114, 114), worse])
    assert judged == {"no_node_worse": False, "some_node_better": True, "ok": False}
    # the edge: the verdict turns at the margin, not at 0
    local = 110 / 114
    below = [compare(local - k / 114, local, 114).verdict for k in range(15)]
    turn = below.index("worse")
    assert 3 < turn < 15 and set(below[:turn]) == {"same"} and set(below[turn:]) == {"worse"}


def test_a_swarm_that_only_matches_training_alone_is_not_ok():
    judged = verdict([compare(110 / 114, 110 / 114, 114), compare(109 / 114, 111 / 114, 114)])
    assert judged == {"no_node_worse": True, "some_node_better": False, "ok": False}
    assert verdict([]) == {"no_node_worse": True, "some_node_better": False, "ok": False}


def test_on_a_split_where_nobody_could_gain_the_swarm_must_match_centralized():
    # breast_cancer, seed 0: every shard alone already scores near centralized (0.956)
    local = [109 / 114, 108 / 114, 107 / 114]
    swarm = [compare(110 / 114, x, 114) for x in local]
    assert {c.verdict for c in swarm} == {"same"}
    assert verdict(swarm)["ok"] is False  # without centralized: no gain shown, not ok
    judged = verdict(swarm, centralized=109 / 114)
    assert judged == {"no_node_worse": True, "some_node_better": False, "ok": True,
                      "nothing_to_gain": True, "matches_centralized": True}
    # a node that had something to gain (centralized well above its local-only) and gained
    # nothing: a swarm whose merges do nothing still fails
    judged = verdict([compare(95 / 114, 95 / 114, 114), *swarm[1:]], centralized=109 / 114)
    assert not judged["nothing_to_gain"] and not judged["ok"]
    # nobody could gain, but the swarm scores clearly below training on all the data
    lagging = [compare(106 / 114, 112 / 114, 114)]
    assert lagging[0].verdict == "same"
    judged = verdict(lagging, centralized=1.0)
    assert judged["nothing_to_gain"] and not judged["matches_centralized"] and not judged["ok"]
    # a node without an accuracy fails here too
    assert not verdict([None, *swarm], centralized=109 / 114)["ok"]


def test_a_node_without_an_accuracy_fails():
    judged = verdict([compare(112 / 114, 60 / 114, 114), None])
    assert not judged["no_node_worse"] and not judged["ok"]


def test_a_larger_test_split_shrinks_the_margin():
    sizes = [36, 114, 360, 1000, 10_000]
    margins = [compare(0.95, 0.96, n).margin_below for n in sizes]
    assert all(a > b for a, b in zip(margins, margins[1:], strict=False))
    assert margins[-1] < 0.01 < 0.04 < margins[1]
    # the same 0.01 gap: noise on 114 rows, a real loss on 10,000
    assert compare(0.95, 0.96, 114).verdict == "same" and compare(0.95, 0.96, 10_000).verdict == "worse"
    assert compare(0.97, 0.96, 114).verdict == "same" and compare(0.97, 0.96, 10_000).verdict == "better"


def test_perfect_accuracies_keep_a_margin():
    c = compare(1.0, 1.0, 114)
    assert c.verdict == "same" and c.low < 0 < c.high
    assert compare(113 / 114, 1.0, 114).verdict == "same"


def test_report_fields_and_the_table_line():
    c = compare(110 / 114, 111 / 114, 114)
    j = c.as_json()
    assert j["verdict"] == "same" and j["test_rows"] == 114 and j["confidence"] == 0.95
    assert j["interval"][0] < j["difference"] < j["interval"][1]
    assert "n=114" in describe_margin(114) and "0.0088" in describe_margin(114)
    assert "centralized" not in describe_margin(114) and "matches centralized" in describe_margin(114, centralized=True)
    with pytest.raises(ValueError):
        compare(1.2, 0.5, 114)
    with pytest.raises(ValueError):
        wilson_interval(0.5, 0)
