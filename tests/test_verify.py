"""Verification rules (learnae.verify): committees, verdicts, standings, the sample cap; and the
manifest's verification parameters."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import statistics
from typing import NamedTuple

import libipld
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from learnae.errors import ConfigError, InvalidCID
from learnae.identity import Identity
from learnae.ledger.tx import TX_CID_PREFIX, decode_tx, tx_id
from learnae.manifest import Manifest, Verification, make_genesis, manifest_of
from learnae.models import model_config
from learnae.verify import (
    AGREE,
    DISPUTE,
    MIN_RECENT,
    HoldoutLoss,
    Standing,
    cap_samples,
    claims_verdict,
    committee,
    gain_bar,
    holdout_loss,
    holdout_verdict,
    is_selected,
    nearest_mix,
    standings,
)

CFG = Verification(rate=0.05)  # the default rate, the one verification is designed for


def checkpoint_id(n: int | str) -> str:
    return tx_id(TX_CID_PREFIX + hashlib.sha256(str(n).encode()).digest())


def key(n: int) -> bytes:
    return hashlib.sha256(b"key %d" % n).digest()


SUBJECT = key(0)
CANDIDATES = [key(i) for i in range(1, 20)]  # 19 candidates besides the subject


class Att(NamedTuple):
    """A stand-in for the tangle's Attestation (the attributes standings reads)."""

    verifier: bytes
    subject: bytes
    checkpoint: str
    verdict: str
    method: str = "holdout"
    code: str = "ok"


def att(verifier: bytes, subject: bytes, checkpoint: str, agrees: bool) -> Att:
    return Att(verifier, subject, checkpoint, AGREE if agrees else DISPUTE,
               code="ok" if agrees else "holdout-worse")


# ------------------------------------------------------------------------------- committee
def test_each_member_checks_about_rate_of_its_peers_checkpoints():
    ids = [checkpoint_id(i) for i in range(2000)]
    per_member = dict.fromkeys(CANDIDATES, 0)
    checked = 0
    for cid in ids:
        members = committee(cid, SUBJECT, CANDIDATES, CFG)
        assert len(members) in (0, CFG.verifiers)
        assert len(set(members)) == len(members) and SUBJECT not in members
        checked += bool(members)
        for m in members:
            per_member[m] += 1
    share = sum(per_member.values()) / (len(ids) * len(CANDIDATES))
    assert abs(share - CFG.rate) < 0.005, share  # 0.05 +- 10%
    # about rate * n / verifiers = 47.5% of the checkpoints are checked, each by 2 members
    assert abs(checked / len(ids) - CFG.rate * 19 / CFG.verifiers) < 0.04
    assert all(50 < count < 150 for count in per_member.values()), per_member  # 100 expected


def test_the_committee_is_deterministic_and_never_holds_the_subject():
    rng = random.Random(1)
    for i in range(300):
        cid = checkpoint_id(i)
        members = committee(cid, SUBJECT, CANDIDATES, CFG)
        shuffled = [*CANDIDATES, *CANDIDATES[:5]]
        rng.shuffle(shuffled)
        assert committee(cid, SUBJECT, shuffled, CFG) == members  # order, duplicates
        assert committee(cid, SUBJECT, [SUBJECT, *shuffled], CFG) == members  # subject dropped
        everyone = [SUBJECT, *CANDIDATES]
        for subject in everyone[:4]:
            assert subject not in committee(cid, subject, everyone, CFG)
        for member in CANDIDATES:
            assert is_selected(cid, SUBJECT, member, CANDIDATES, CFG) == (member in members)
        assert not is_selected(cid, SUBJECT, SUBJECT, everyone, CFG)


def test_committee_size_rate_zero_and_one_and_few_candidates():
    ids = [checkpoint_id(i) for i in range(200)]
    off = dataclasses.replace(CFG, rate=0.0)
    assert all(committee(c, SUBJECT, CANDIDATES, off) == () for c in ids)
    always = dataclasses.replace(CFG, rate=1.0, verifiers=3)
    assert all(len(committee(c, SUBJECT, CANDIDATES, always)) == 3 for c in ids)
    # Fewer candidates than verifiers: a checked checkpoint gets them all.
    two = CANDIDATES[:2]
    for c in ids:
        assert committee(c, SUBJECT, two, always) in ((), tuple(sorted(two, key=lambda k: (
            hashlib.sha256(libipld.decode_multibase(c)[1] + k).digest(), k))))
    assert all(committee(c, SUBJECT, [SUBJECT], always) == () for c in ids)  # nobody else
    assert all(committee(c, SUBJECT, [], always) == () for c in ids)


def test_committee_refuses_bad_ids_and_keys():
    with pytest.raises(InvalidCID, match="not a transaction id"):
        committee("QmNotATx", SUBJECT, CANDIDATES, CFG)
    with pytest.raises(TypeError, match="expected a public key"):
        committee(checkpoint_id(1), SUBJECT, ["z6Mk..."], CFG)


# -------------------------------------------------------------------------------- verdicts
BASE = HoldoutLoss(2.0, (1.0, 4.0))  # two classes, the second one's rows twice as many


@pytest.mark.parametrize(("checked", "min_gain", "code"), [
    (HoldoutLoss(3.0, (0.75, 5.0)), 0.25, "ok"),  # 25% lower on class 0: agreed though worse in all
    (HoldoutLoss(3.0, (0.7501, 5.0)), 0.25, "holdout-worse"),  # just under: and 50% worse in all
    (HoldoutLoss(2.1, (0.9, 4.0)), 0.25, "holdout-no-gain"),  # 10% lower on one class, 5% worse in all
    (HoldoutLoss(2.1001, (0.9, 4.0)), 0.25, "holdout-worse"),
    (HoldoutLoss(1.9, (0.85, 3.9)), 0.25, "holdout-no-gain"),  # a little better everywhere: too little
    (HoldoutLoss(1.9, (0.85, 3.9)), 0.1, "ok"),
    (HoldoutLoss(0.0, (0.0, 0.0)), 0.25, "ok"),
    (HoldoutLoss(2.0, (1.0, 4.0)), 0.0, "ok"),  # min_gain 0: anything not worse on every class
])
def test_holdout_verdict_boundaries(checked, min_gain, code):
    verdict = holdout_verdict(BASE, checked, dataclasses.replace(CFG, min_gain=min_gain))
    _check_figures(verdict, checked, code, bar=min_gain)
    # The same bar given by the caller (a verifier's gain_bar) under the manifest's 0.25.
    lowered = holdout_verdict(BASE, checked, dataclasses.replace(CFG, min_gain=0.25), min_gain=min_gain)
    _check_figures(lowered, checked, code, bar=min_gain)


def test_holdout_verdict_bar_never_rises_above_the_manifest_s():
    checked = HoldoutLoss(1.9, (0.85, 3.9))  # best class gain 0.15
    assert holdout_verdict(BASE, checked, CFG, min_gain=0.1).code == "ok"
    raised = holdout_verdict(BASE, checked, dataclasses.replace(CFG, min_gain=0.1), min_gain=0.9)
    assert (raised.code, raised.figures["min_gain"]) == ("ok", 0.1)
    assert holdout_verdict(BASE, checked, CFG, min_gain=-1.0).figures["min_gain"] == 0.0


@pytest.mark.parametrize(("checked", "code"), [
    (HoldoutLoss(2.1, (0.5, 5.0)), "ok"),  # taught class 0, 5% worse in all: within max_rise
    (HoldoutLoss(2.1001, (0.5, 5.0)), "holdout-worse"),  # beyond it, whatever it taught
])
def test_holdout_verdict_max_rise(checked, code):
    verdict = holdout_verdict(BASE, checked, dataclasses.replace(CFG, max_rise=0.05))
    _check_figures(verdict, checked, code, bar=CFG.min_gain)


def _check_figures(verdict, checked, code, *, bar):
    assert (verdict.method, verdict.code) == ("holdout", code)
    assert verdict.verdict == (AGREE if code == "ok" else DISPUTE)
    best = max((b - c) / b for b, c in zip(BASE.per_class, checked.per_class, strict=True))
    assert verdict.figures == {"base_loss": 2.0, "loss": checked.loss, "gain": (2.0 - checked.loss) / 2.0,
                               "class_gain": best, "min_gain": bar}
    assert all(type(v) is float and math.isfinite(v) for v in verdict.figures.values())


def test_holdout_verdict_diverged_model_and_bad_inputs():
    for loss in (math.inf, math.nan, np.float32("nan")):
        for checked in (HoldoutLoss(loss, (1.0, 1.0)), HoldoutLoss(1.0, (1.0, loss))):
            verdict = holdout_verdict(BASE, checked, CFG)
            assert (verdict.verdict, verdict.code, verdict.figures) == (DISPUTE, "holdout-worse", {"base_loss": 2.0})
    exact = holdout_verdict(HoldoutLoss(2.0, (0.0, 4.0)), HoldoutLoss(1.0, (0.1, 2.0)), CFG)
    assert exact.code == "ok" and exact.figures["class_gain"] == 0.5  # class 0 could not fall
    numpy_floats = HoldoutLoss(np.float32(1.0), (np.float32(0.5), np.float64(3.0)))
    assert holdout_verdict(BASE, numpy_floats, CFG).figures["class_gain"] == 0.5
    for bad in (0.0, -1.0, math.inf, math.nan, True, "1"):
        with pytest.raises(ValueError, match="base_loss must be a finite number > 0"):
            holdout_verdict(HoldoutLoss(bad, (1.0, 4.0)), BASE, CFG)
        if bad != 0.0:
            with pytest.raises(ValueError, match="a base class loss must be a finite number > 0"):
                holdout_verdict(HoldoutLoss(2.0, (1.0, bad)), BASE, CFG)
    for loss in (-0.1, None, False):
        with pytest.raises(ValueError, match="a loss must be a number >= 0"):
            holdout_verdict(BASE, HoldoutLoss(1.0, (loss, 1.0)), CFG)
    for classes in ((1.0,), (1.0, 1.0, 1.0)):
        with pytest.raises(ValueError, match="the base covers 2 classes and the checkpoint"):
            holdout_verdict(BASE, HoldoutLoss(1.0, classes), CFG)


def test_gain_bar_is_half_the_median_of_recent_gains_and_never_above_the_manifest_s():
    assert gain_bar([0.1] * (MIN_RECENT - 1), CFG) == CFG.min_gain  # too few judged yet
    assert gain_bar([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, math.nan, 0.2], CFG) == pytest.approx(0.175)
    assert gain_bar([0.9] * MIN_RECENT, CFG) == CFG.min_gain
    assert gain_bar([-0.5] * MIN_RECENT, CFG) == 0.0
    # A few liars' gains do not move the median of many honest ones.
    assert gain_bar([0.4] * 20 + [0.0] * 5, CFG) == pytest.approx(0.2)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 6), seed=st.integers(0, 2**32 - 1), dirichlet=st.booleans())
def test_nearest_mix_finds_the_mix_a_checkpoint_is_and_stays_on_the_simplex(n, seed, dirichlet):
    rng = np.random.default_rng(seed)
    bases = [{"kernel": rng.normal(size=(7, 5)).astype(np.float32), "bias": rng.normal(size=5).astype(np.float32)}
             for _ in range(n)]
    a_true = rng.dirichlet(np.ones(n)) if dirichlet else np.eye(n)[rng.integers(n)]
    checked = {k: sum(a * b[k] for a, b in zip(a_true, bases, strict=True)).astype(np.float32) for k in bases[0]}
    mix, a = nearest_mix(checked, bases, iterations=3000)
    assert a.shape == (n,) and np.all(a >= 0) and a.sum() == pytest.approx(1.0)
    for k in checked:
        assert mix[k].dtype == np.float32 and mix[k].shape == checked[k].shape
        np.testing.assert_allclose(mix[k], checked[k], atol=1e-3)


def test_nearest_mix_projects_a_point_outside_onto_the_nearest_base_or_edge():
    bases = [{"w": np.array([0.0, 0.0])}, {"w": np.array([2.0, 0.0])}]
    mix, a = nearest_mix({"w": np.array([1.0, 5.0])}, bases)  # above the segment's middle
    np.testing.assert_allclose(a, [0.5, 0.5], atol=1e-9)
    mix, a = nearest_mix({"w": np.array([9.0, 1.0])}, bases)  # beyond its end: that base
    np.testing.assert_allclose(a, [0.0, 1.0], atol=1e-9)
    np.testing.assert_allclose(mix["w"], [2.0, 0.0])


def test_nearest_mix_refuses_no_bases_and_other_shapes():
    with pytest.raises(ValueError, match="at least one base"):
        nearest_mix({"w": np.zeros(2)}, [])
    with pytest.raises(ValueError, match="missing or has another shape"):
        nearest_mix({"w": np.zeros(2)}, [{"w": np.zeros(3)}])
    with pytest.raises(ValueError, match="missing or has another shape"):
        nearest_mix({"w": np.zeros(2)}, [{"v": np.zeros(2)}])


def test_holdout_loss_groups_rows_by_class_in_label_order():
    got = holdout_loss(np.array([1.0, 2.0, 3.0, 5.0]), np.array([7, 3, 7, 3]))
    assert got == HoldoutLoss(2.75, (3.5, 2.0))  # classes 3 and 7
    assert all(type(v) is float for v in (got.loss, *got.per_class))
    for rows, labels in ((np.zeros(0), np.zeros(0)), (np.zeros(3), np.zeros(2)), (np.zeros((2, 2)), np.zeros((2, 2)))):
        with pytest.raises(ValueError, match="need two equal"):
            holdout_loss(rows, labels)


def test_claims_verdict_boundaries():
    ok = claims_verdict(64, 12, 10, 32)  # 2 steps of 32
    assert (ok.method, ok.verdict, ok.code, ok.figures) == (
        "claims", AGREE, "ok", {"samples": 64.0, "steps": 2.0})
    bad = claims_verdict(65, 12, 10, 32)
    assert (bad.verdict, bad.code, bad.figures) == (
        DISPUTE, "samples-inconsistent", {"samples": 65.0, "steps": 2.0})
    assert claims_verdict(64, 2, None, 32).code == "ok"  # the first checkpoint
    assert claims_verdict(65, 2, None, 32).code == "samples-inconsistent"
    assert claims_verdict(0, 10, 10, 32).code == "ok"
    assert claims_verdict(1, 10, 10, 32).code == "samples-inconsistent"  # no step, samples
    assert claims_verdict(96, 3, 50, 32).figures["steps"] == 3.0  # step went back: a restart
    assert claims_verdict(np.int64(64), np.int64(12), np.int64(10), 32).code == "ok"
    for args in ((-1, 1, None, 32), (1, -1, None, 32), (1, 1, -1, 32), (1, 1, None, 0),
                 (1.0, 1, None, 32), (True, 1, None, 32)):
        with pytest.raises(ValueError, match="must be an integer >= "):
            claims_verdict(*args)


# ------------------------------------------------------------------------------- standings
AUTHOR, V1, V2, V3, V4, LIAR = (key(100 + i) for i in range(6))


def test_three_disputes_flag_an_author_and_agreements_recover_it():
    disputes = [att(v, AUTHOR, checkpoint_id(i), False) for i, v in enumerate((V1, V2, V3))]
    two = standings(disputes[:2], None, CFG)[AUTHOR]
    assert two == Standing(0.0, 2.0, 0.5, False, 2)  # exactly at the threshold
    three = standings(disputes, None, CFG)[AUTHOR]
    assert three == Standing(0.0, 3.0, 3 / 7, True, 3)
    agreed = [*disputes, att(V4, AUTHOR, checkpoint_id(0), True)]
    assert standings(agreed, None, CFG)[AUTHOR] == Standing(1.0, 3.0, 0.5, False, 3)
    assert standings([], None, CFG) == {}


def test_one_count_per_verifier_and_checkpoint_and_no_self_attestation():
    same = [att(V1, AUTHOR, checkpoint_id(1), False)] * 3 + [att(V1, AUTHOR, checkpoint_id(1), True)]
    assert standings(same, None, CFG)[AUTHOR] == Standing(0.0, 1.0, 0.6, False, 1)  # first only
    selfish = [att(AUTHOR, AUTHOR, checkpoint_id(i), True) for i in range(5)]
    assert standings(selfish, None, CFG) == {}
    selfish_d = [att(LIAR, AUTHOR, checkpoint_id(i), False) for i in range(3)]
    flagged = standings(selfish_d + selfish, None, CFG)
    assert flagged[AUTHOR].flagged and AUTHOR in flagged and LIAR not in flagged


def _checked_ids(count: int, subject: bytes, candidates: list[bytes]) -> list[str]:
    """``count`` checkpoint ids that the committee rule picks for checking."""
    ids = (checkpoint_id(f"checked {i}") for i in range(10_000))
    return [c for c in ids if committee(c, subject, candidates, CFG)][:count]


def test_attestations_outside_the_committee_weigh_less():
    candidates = [V1, V2, V3, V4, LIAR]
    ids = _checked_ids(12, AUTHOR, candidates)

    def candidates_of(checkpoint: str) -> list[bytes]:
        return candidates

    selected = [att(committee(c, AUTHOR, candidates, CFG)[0], AUTHOR, c, False) for c in ids[:3]]
    assert standings(selected, candidates_of, CFG)[AUTHOR].flagged
    outsider = [next(v for v in candidates if v not in committee(c, AUTHOR, candidates, CFG))
                for c in ids]
    unselected = [att(v, AUTHOR, c, False) for v, c in zip(outsider, ids, strict=True)]
    eight = standings(unselected[:8], candidates_of, CFG)[AUTHOR]
    assert (eight.dispute, eight.disputes, eight.flagged) == (2.0, 8, False)  # 8 x 0.25
    nine = standings(unselected[:9], candidates_of, CFG)[AUTHOR]
    assert (nine.dispute, nine.disputes, nine.flagged) == (2.25, 9, True)
    # Without candidates every attestation weighs 1; unselected_weight 0 ignores outsiders.
    assert standings(unselected[:3], None, CFG)[AUTHOR].flagged
    zero = dataclasses.replace(CFG, unselected_weight=0.0)
    assert standings(unselected, candidates_of, zero)[AUTHOR].dispute == 0.0


def test_a_liar_flagged_in_the_first_pass_is_outvoted_in_the_second():
    # The liar alone judged the victim's checkpoints (and disputed them all); two honest
    # members disputed the liar's own (bad) checkpoints.
    victim = [att(LIAR, AUTHOR, checkpoint_id(f"victim {i}"), False) for i in range(4)]
    liar = [att(v, LIAR, checkpoint_id(f"liar {i}"), False) for i in range(2) for v in (V1, V2)]
    result = standings(victim + liar, None, CFG)
    assert result[LIAR].flagged and result[LIAR].disputes == 4
    assert result[AUTHOR] == Standing(0.0, 0.0, 0.75, False, 0)  # the liar's votes dropped
    assert standings(victim, None, CFG)[AUTHOR].flagged  # what the liar alone would do
    # A liar disputing members that others vouch for flags nobody.
    vouched = [att(LIAR, AUTHOR, checkpoint_id(i), False) for i in range(10)]
    vouched += [att(V1, AUTHOR, checkpoint_id(i), True) for i in range(10)]
    assert not standings(vouched, None, CFG)[AUTHOR].flagged


def test_standings_do_not_depend_on_the_order_of_distinct_attestations():
    rng = random.Random(7)
    keys = [key(200 + i) for i in range(8)]
    atts = [att(v, s, checkpoint_id(f"{i}"), rng.random() < 0.4)
            for i in range(60) for v, s in [rng.sample(keys, 2)]]
    cfg = dataclasses.replace(CFG, unselected_weight=0.1)  # not exact in binary

    def candidates_of(checkpoint: str) -> list[bytes]:
        return keys

    expected = standings(atts, candidates_of, cfg)
    cache: dict = {}
    for _ in range(5):
        rng.shuffle(atts)
        assert standings(atts, candidates_of, cfg) == expected
        assert standings(atts, candidates_of, cfg, cache) == expected  # the committees cached
    assert len(cache) == len({(a.checkpoint, a.subject) for a in atts})


# ------------------------------------------------------------------------------------- cap
def test_cap_samples():
    assert cap_samples([100, 100, 1_000_000], 4.0) == [100, 100, 400]
    assert cap_samples([100, 10**9], 4.0) == [100, 400]  # the lower median of two
    assert cap_samples([0, 0, 5], 4.0) == [0, 0, 1]  # the bound is at least 1
    assert cap_samples([3, 5, 7], 1.5) == [3, 5, 7]  # floor(1.5 * 5) = 7
    assert cap_samples([3, 5, 8], 1.5) == [3, 5, 7]
    assert cap_samples([], 4.0) == []
    assert cap_samples(np.array([10, 10, 1000]), 4.0) == [10, 10, 40]
    for bad, cap in (([-1], 4.0), ([1.5], 4.0), ([1], 0.0), ([1], math.inf), ([1], math.nan)):
        with pytest.raises(ValueError, match="must be"):
            cap_samples(bad, cap)


@given(st.lists(st.integers(0, 10**12), max_size=40), st.floats(1.0, 100.0))
def test_cap_samples_bounds_every_claim_by_the_lower_median(samples, cap):
    out = cap_samples(samples, cap)
    assert len(out) == len(samples)
    assert all(0 <= o <= s for o, s in zip(out, samples, strict=True))
    if samples:
        bound = max(1, math.floor(cap * statistics.median_low(samples)))
        assert max(out) <= bound
        assert [o for o, s in zip(out, samples, strict=True) if s <= bound] == [
            s for s in samples if s <= bound]  # claims under the bound are kept


# -------------------------------------------------------------------- manifest parameters
DIGITS = model_config("digits-mlp")
ALICE = Identity(Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32))


def digits(**kw) -> Manifest:
    return Manifest(**({"name": "digits", "model": DIGITS, "created": 1_700_000_000_000} | kw))


def test_verification_defaults_and_old_manifests():
    m = digits()
    assert m.verification == Verification(0.05, 2, 0.5, 3.0, 1.0, 0.25, 4.0, 0.25, 0.0)
    assert "verification" not in m.to_payload()  # default: the payload of an older manifest
    assert Manifest.from_payload(m.to_payload()).verification == Verification()
    off = digits(verification=Verification(rate=0.0)).to_payload()  # off is said explicitly
    assert Manifest.from_payload(off).verification.rate == 0.0
    partial = m.to_payload() | {"verification": {"rate": 0.2}}
    assert Manifest.from_payload(partial).verification == Verification(rate=0.2)


def test_verification_round_trip():
    v = Verification(rate=0.1, verifiers=3, threshold=0.4, prior_agree=4, prior_dispute=2.0,
                     unselected_weight=0.0, sample_cap=2.5, min_gain=0.02, max_rise=2, data_claims="replay")
    assert type(v.prior_agree) is float  # ints given are kept as floats
    m = digits(verification=v)
    payload = m.to_payload()
    assert payload["verification"] == {
        "rate": 0.1, "verifiers": 3, "threshold": 0.4, "prior_agree": 4.0, "prior_dispute": 2.0,
        "unselected_weight": 0.0, "sample_cap": 2.5, "min_gain": 0.02,
        "max_rise": 2.0, "data_claims": "replay"}
    assert Manifest.from_payload(payload) == m
    assert Manifest.from_payload(libipld.decode_dag_cbor(libipld.encode_dag_cbor(payload))) == m
    assert Manifest.from_payload(json.loads(json.dumps(payload))) == m
    genesis = make_genesis(ALICE, dataclasses.replace(m, pow_bits=0))
    assert manifest_of(decode_tx(genesis.raw)).verification == v


INVALID = [
    ({"rate": -0.1}, "verification.rate"),
    ({"rate": 1.5}, "verification.rate"),
    ({"rate": True}, "verification.rate"),
    ({"verifiers": 0}, "verification.verifiers must be an integer from 1 to 16"),
    ({"verifiers": 17}, "verification.verifiers"),
    ({"verifiers": 2.0}, "verification.verifiers"),
    ({"threshold": 1.2}, "verification.threshold"),
    ({"threshold": 0.8}, r"threshold 0.8 is not below .* 0.75: every author would be flagged"),
    ({"prior_agree": 0}, "verification.prior_agree"),
    ({"prior_dispute": math.inf}, "verification.prior_dispute"),
    ({"unselected_weight": 2}, "verification.unselected_weight"),
    ({"sample_cap": 0.5}, "verification.sample_cap must be at least 1"),
    ({"sample_cap": math.nan}, "verification.sample_cap"),
    ({"min_gain": -0.01}, "verification.min_gain"),
    ({"min_gain": 1.5}, "verification.min_gain"),
    ({"min_gain": "0"}, "verification.min_gain"),
    ({"max_rise": -1}, "verification.max_rise"),
    ({"max_rise": math.inf}, "verification.max_rise"),
    ({"data_claims": "verify"}, "verification.data_claims must be one of trust, replay"),
    ({"data_claims": True}, "verification.data_claims"),
]


@pytest.mark.parametrize(("params", "reason"), INVALID, ids=[str(p) for p, _ in INVALID])
def test_invalid_verification_parameters_are_refused(params, reason):
    with pytest.raises(ConfigError, match=reason):
        Verification(**params)
    payload = digits().to_payload() | {"verification": params}
    with pytest.raises(ConfigError, match=reason):
        Manifest.from_payload(payload)


def test_verification_payload_must_be_a_map_of_known_keys():
    payload = digits().to_payload()
    with pytest.raises(ConfigError, match="verification must be a map"):
        Manifest.from_payload(payload | {"verification": [0.1]})
    with pytest.raises(ConfigError, match=r"verification has unknown keys \['speed'\]"):
        Manifest.from_payload(payload | {"verification": {"speed": 1.0}})
    with pytest.raises(ConfigError, match="must be a Verification"):
        digits(verification={"rate": 0.1})
