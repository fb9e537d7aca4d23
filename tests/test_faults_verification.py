"""Verification in the fault harness's memory driver: liars that merge like honest nodes and
lie in what they publish (``lazy``, ``poison-within-bound``, ``inflate-samples``,
``false-data-claim``), the honest trainers' spot checks, and the invariants ``liars_flagged``
and ``honest_flagged``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from learnae.errors import ConfigError
from learnae.faults_cli import faults_group
from learnae.formats import decode_checkpoint
from learnae.local.clock import VirtualClockLoop
from learnae.local.invariants import check_invariants
from learnae.local.scenario import (
    BEHAVIOURS,
    INFLATE,
    LAZY_SIGMA,
    LIARS,
    POISON_SCALE,
    load_scenario,
    parse_scenario,
)
from learnae.local.simulation import LIMITS, _poison, _row_loss, _Sim, simulate
from learnae.merge import RejectedUpdate, check_update
from learnae.verify import claims_verdict

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "faults" / "verification.toml"


def small(**over) -> dict:
    base = {"name": "t", "seed": 3, "nodes": 4, "rounds": 4, "round_seconds": 2.0}
    base.update(over)
    return base


def liar(name: str, behaviour: str, **keys) -> dict:
    return {"kind": "byzantine", "nodes": [name], "behaviour": behaviour, **keys}


# ---------------------------------------------------------------------------------- parsing
def test_new_behaviours_parse_with_their_defaults():
    assert set(LIARS) <= set(BEHAVIOURS)
    scn = parse_scenario(small(nodes=6, faults=[
        liar("n2", "lazy"), liar("n3", "poison-within-bound", scale=3),
        liar("n4", "inflate-samples"), liar("n5", "false-data-claim", sigma=0.2)]))
    by = scn.byzantine()
    assert {n: f.behaviour for n, f in by.items()} == {
        "n2": "lazy", "n3": "poison-within-bound", "n4": "inflate-samples", "n5": "false-data-claim"}
    assert by["n2"].sigma == LAZY_SIGMA and by["n5"].sigma == 0.2  # lazy's own default
    assert by["n3"].scale == 3.0 and by["n2"].scale == POISON_SCALE
    noise = parse_scenario(small(faults=[liar("n3", "noise")])).byzantine()["n3"]
    assert noise.sigma == 0.5  # the publish-only behaviours keep theirs


def test_detect_updates_bound_parses_and_defaults_to_20():
    assert parse_scenario(small()).bounds["detect_updates"] == 20
    assert parse_scenario(small(bounds={"detect_updates": 8})).bounds["detect_updates"] == 8
    scn = load_scenario(EXAMPLE)
    assert scn.bounds["detect_updates"] == 20 and scn.bounds["byzantine_ratio"] == 0.98
    assert scn.verification is not None and scn.verification.rate == 0.05
    assert sorted(f.behaviour for f in scn.faults) == sorted(LIARS) and scn.nodes == 20


def test_verification_table_gives_the_manifest_s_parameters():
    from learnae.manifest import Verification

    assert parse_scenario(small()).verification is None  # no table: the scenario runs without
    scn = parse_scenario(small(verification={"rate": 0.2, "verifiers": 3}))
    assert scn.verification == Verification(rate=0.2, verifiers=3)


@pytest.mark.parametrize(("data", "words"), [
    ({"verification": {"rate": 2}}, "[verification]: verification.rate"),
    ({"verification": {"speed": 1}}, "[verification]: verification has unknown keys ['speed']"),
    ({"verification": 0.05}, "[verification]: verification must be a map"),
    ({"faults": [liar("n1", "poison-within-bound", scale=0)]}, "scale must be a number in (0, 1000]"),
    ({"faults": [liar("n1", "lazy", sigma=-1)]}, "sigma must be a positive number"),
    ({"faults": [liar("n1", "lazy-ish")]}, "behaviour is 'lazy-ish'"),
    ({"bounds": {"detect_updates": 0}}, "detect_updates must be a positive number"),
])
def test_invalid_liars_and_bounds_name_the_problem(data, words):
    with pytest.raises(ConfigError) as info:
        parse_scenario(small(**data), where="x.toml")
    assert words in info.value.reason


# ----------------------------------------------------------------- each behaviour's effect
def drive(scn, tmp_path, inspect):
    """Run ``scn`` in a :class:`_Sim` on a virtual clock; keep what each trainer publishes.

    ``inspect(sim, published)`` runs before the nodes close; ``published[name]`` lists
    ``(round, weights before the publish, weights after it, the checkpoint tx, its weights)``.
    """
    async def main():
        sim = _Sim(scn, tmp_path, with_faults=True)
        published: dict[str, list] = {}
        publish = sim.publish

        async def recording(node, r):
            before = {k: v.copy() for k, v in node.weights.items()}
            await publish(node, r)
            if node.sensor:
                return
            tx = node.up.tangle.get(node.acked[-1])
            raw = await node.up.ipfs.cat(tx.payload["cid"])
            ckpt = decode_checkpoint(raw, max_bytes=LIMITS.checkpoint_bytes, expect=sim.expect,
                                     genesis=sim.genesis.id)
            published.setdefault(node.name, []).append((r, before, dict(node.weights), tx, ckpt.weights))

        sim.publish = recording
        try:
            await sim.setup()
            await sim.run()
            return inspect(sim, published)
        finally:
            await sim.close()

    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def rms(w: dict) -> float:
    return float(np.sqrt(np.mean(np.concatenate([np.ravel(v.astype(np.float64)) ** 2 for v in w.values()]))))


def test_lazy_publishes_its_merge_plus_noise_without_training(tmp_path):
    scn = parse_scenario(small(faults=[liar("n3", "lazy")]))

    def inspect(sim, published):
        lazy, honest = sim.nodes["n3"], sim.nodes["n0"]
        assert lazy.merges == len(published["n3"]) and lazy.trainer.merges >= 2  # it merges
        for r, before, after, tx, weights in published["n3"]:
            assert all(np.array_equal(before[k], after[k]) for k in before)  # no training
            noise = {k: weights[k].astype(np.float64) - after[k] for k in after}
            assert 0.3 * LAZY_SIGMA < rms(noise) / rms(after) < 3 * LAZY_SIGMA, (r, rms(noise), rms(after))
            assert tx.payload["samples"] == scn.local_steps * scn.batch_size  # an honest claim
        # its base names what it merged: its previous checkpoint and peers' checkpoints
        last = published["n3"][-1][3]
        authors = {sim.nodes["n3"].up.tangle.get(b).author for b in last.links("base")}
        assert len(authors - {lazy.identity.public_key}) >= 1
        # an honest node trains between its merges
        assert all(not np.array_equal(b["output/kernel"], a["output/kernel"]) for _, b, a, _, _ in published["n0"])
        assert honest.merges == len(published["n0"])

    drive(scn, tmp_path, inspect)


def test_poison_within_bound_reverses_its_update_and_passes_the_norm_check(tmp_path):
    scn = parse_scenario(small(faults=[liar("n3", "poison-within-bound", scale=2)]))
    valid_loss: list[tuple[float, float]] = []

    def inspect(sim, published):
        assert sim.nodes["n3"].trainer.merges >= 2  # it merges too
        for _, before, after, _, weights in published["n3"]:
            expect = {k: before[k] - 2.0 * (after[k].astype(np.float64) - before[k]) for k in before}
            for k in weights:
                np.testing.assert_allclose(weights[k], expect[k], rtol=1e-5, atol=1e-6)
            check_update(before, weights)  # the merge's norm bound, against its own weights
            for name in ("n0", "n1", "n2"):  # and against every honest node's weights
                check_update(sim.nodes[name].weights, weights)
            x, y = sim.test.x, sim.test.y
            valid_loss.append((_row_loss(before, x, y).mean(), _row_loss(weights, x, y).mean()))

    drive(scn, tmp_path, inspect)
    assert all(poisoned > start for start, poisoned in valid_loss[1:]), valid_loss  # it does harm


def test_poison_scale_is_cut_to_stay_within_the_norm_bound():
    rng = np.random.default_rng(1)
    before = {"output/kernel": rng.normal(0, 1, (8, 3)).astype(np.float32),
              "output/bias": np.zeros(3, np.float32)}
    after = {k: (v + rng.normal(0, 0.1, v.shape)).astype(np.float32) for k, v in before.items()}
    huge = {k: before[k] - 1000.0 * (after[k] - before[k]) for k in before}
    with pytest.raises(RejectedUpdate, match="norm"):
        check_update(before, huge)  # what scale=1000 would give unchecked
    cut = _poison(before, after, 1000.0, max_norm_ratio=10.0, min_norm=1.0)
    check_update(before, cut)
    direction = np.ravel(cut["output/kernel"] - before["output/kernel"])
    update = np.ravel(after["output/kernel"] - before["output/kernel"])
    assert float(direction @ update) < 0  # still against the update


def test_inflate_samples_claims_100x_for_honest_steps(tmp_path):
    scn = parse_scenario(small(faults=[liar("n3", "inflate-samples")]))

    def inspect(sim, published):
        honest_claim = scn.local_steps * scn.batch_size
        steps = [tx.payload["step"] for *_, tx, _ in published["n3"]]
        assert steps == [scn.local_steps * (i + 1) for i in range(scn.rounds)]
        for i, (_, before, after, tx, _) in enumerate(published["n3"]):
            assert tx.payload["samples"] == INFLATE * honest_claim
            assert not np.array_equal(before["output/kernel"], after["output/kernel"])  # it trains
            previous = steps[i - 1] if i else None
            assert claims_verdict(tx.payload["samples"], tx.payload["step"], previous,
                                  scn.batch_size).code == "samples-inconsistent"
        assert all(tx.payload["samples"] == honest_claim for *_, tx, _ in published["n0"])
        assert sim.nodes["n3"].trainer.merges >= 2

    drive(scn, tmp_path, inspect)


def test_false_data_claim_names_chunks_it_never_adopted(tmp_path):
    scn = parse_scenario(small(sensors=1, rounds=5, faults=[liar("n3", "false-data-claim")]))

    def inspect(sim, published):
        lie, honest = sim.nodes["n3"], sim.nodes["n0"]
        data_txs = {tx.id for tx in lie.up.tangle.data_since(0)[0]}
        named = [d for *_, tx, _ in published["n3"] for d in tx.links("data")]
        assert named and set(named) <= data_txs and len(named) == len(set(named))
        assert not lie.adopted and not set(named) & lie.adopted  # trained on none of them
        assert len(lie.x) == len(sim.nodes["n3"].y)
        assert set(named) & honest.adopted  # honest nodes did adopt those chunks
        assert lie.trainer.merges >= 2

    drive(scn, tmp_path, inspect)


def test_under_replay_segments_are_replayed_and_a_false_data_claim_is_disputed(tmp_path):
    scn = parse_scenario(small(nodes=6, sensors=1, rounds=8, verification={"rate": 1.0, "data_claims": "replay"},
                               faults=[liar("n5", "false-data-claim")]))

    def inspect(sim, _published):
        tangle = sim.nodes["n0"].up.tangle
        names = {n.identity.public_key: n for n in sim.nodes.values()}
        segments = [tx for tx in tangle.checkpoints_since(0)[0] if "segment" in tx.payload]
        by = {name: [tx for tx in segments if names[tx.author].name == name] for name in sim.nodes}
        assert all(by[f"n{i}"] for i in range(6)), {k: len(v) for k, v in by.items()}
        for tx in segments:
            start = tangle.get(tx.links("base")[0])
            assert start.author == tx.author and tx.payload["step"] - start.payload["step"] == \
                tx.payload["segment"]["steps"]
        for name in ("n0", "n1"):  # honest: one pass over the chunks adopted since the last segment
            node = sim.nodes[name]
            assert all(set(tx.links("data")) <= node.adopted for tx in by[name])
        judged = {}
        for a in tangle.attestations():
            judged.setdefault(names[a.subject].name == "n5", set()).add((a.checkpoint in {t.id for t in segments},
                                                                         a.method, a.code))
        assert (True, "replay", "replay-mismatch") in judged[True]
        assert not {j for j in judged[True] if j[2] == "ok"}  # every check of the liar disputes it
        assert (True, "replay", "ok") in judged[False]
        assert not {j for j in judged[False] if j[1] == "replay" and j[2] != "ok"}  # honest replays agree
        assert sim.nodes["n0"].trainer.verifier.flagged(sim.nodes["n5"].identity.public_key)

    drive(scn, tmp_path, inspect)


def test_publish_only_behaviours_still_do_not_merge(tmp_path):
    scn = parse_scenario(small(rounds=3, faults=[liar("n3", "sign-flip")]))

    def inspect(sim, _published):
        assert sim.nodes["n3"].trainer.merges == 0 and sim.nodes["n3"].merges == 0
        assert sim.nodes["n0"].trainer.merges > 0

    drive(scn, tmp_path, inspect)


# ------------------------------------------------------------------------------ invariants
@pytest.mark.parametrize("rate", [0.0, 0.5])
def test_a_liar_is_flagged_only_where_the_swarm_verifies(rate):
    scn = parse_scenario(small(nodes=6, rounds=8, verification={"rate": rate},
                               faults=[liar("n5", "inflate-samples")]))
    run = simulate(scn)
    inv = check_invariants(scn, run, run)
    flagged = inv["liars_flagged"]
    if rate == 0:  # no checks: nobody is flagged, and the invariant says so
        assert run.checks == {"checked": 0, "disputed": 0}
        assert not flagged["pass"] and flagged["figure"] is None
        assert flagged["per_liar"]["n5"]["flagged_at_end_by"] == "0/5"
    else:
        assert run.checks["samples-inconsistent"] >= 3 and run.rejections["low-standing"] > 0
        assert flagged["pass"] and 1 <= flagged["figure"] <= 8
        assert flagged["per_liar"]["n5"]["flagged_at_end_by"] == "5/5"
    assert inv["honest_flagged"]["pass"]


def test_liars_flagged_and_honest_flagged_from_recorded_standings():
    scn = parse_scenario(small(rounds=3, faults=[liar("n2", "lazy"), liar("n3", "false-data-claim")]))
    run = simulate(scn)
    assert sorted(run.lied) == ["n2", "n3"] and run.lied["n2"] == [0, 1, 2]
    assert sorted(run.flagged) == [0, 1, 2] and set(run.flagged[0]) == {"n0", "n1"}

    def invariants(flagged, **bounds):
        s = replace(scn, bounds={**scn.bounds, **bounds})
        return check_invariants(s, replace(run, flagged=flagged), run)

    seen = {0: {"n0": [], "n1": ["n2"]}, 1: {"n0": ["n2"], "n1": ["n2"]}, 2: {"n0": ["n2"], "n1": ["n2"]}}
    inv = invariants(seen)
    liars, honest = inv["liars_flagged"], inv["honest_flagged"]
    assert liars["pass"] and liars["figure"] == 2 and liars["bound"] == 20
    assert liars["per_liar"]["n2"]["updates_until_flagged"] == 2
    assert liars["per_liar"]["n2"]["flagged_in_round"] == 1
    assert liars["per_liar"]["n2"]["relapsed_rounds"] == 0
    relapse = invariants({**seen, 2: {"n0": ["n2"], "n1": []}})["liars_flagged"]["per_liar"]["n2"]
    assert relapse["relapsed_rounds"] == 1 and relapse["flagged_at_end_by"] == "1/2"
    assert liars["per_liar"]["n3"]["excluded"] == "undetectable_without_replay"
    assert honest["pass"] and honest["figure"] == 0 and honest["bound"] == 0
    assert not invariants(seen, detect_updates=1)["liars_flagged"]["pass"]
    never = invariants({r: {"n0": [], "n1": ["n2"]} for r in range(3)})["liars_flagged"]
    assert not never["pass"] and never["figure"] is None  # a liar never flagged by all fails
    wrong = invariants({**seen, 2: {"n0": ["n1", "n2"], "n1": ["n2"]}})["honest_flagged"]
    assert not wrong["pass"] and wrong["figure"] == 1 and wrong["flagged"] == {"n1": {"round": 2, "by": "n0"}}


def test_scenarios_without_liars_have_no_verification_invariants():
    scn = parse_scenario(small(rounds=2, faults=[liar("n3", "noise")]))
    run = simulate(scn)
    inv = check_invariants(scn, run, run)
    assert "liars_flagged" not in inv and "honest_flagged" not in inv
    assert set(run.flagged[1]) == {"n0", "n1", "n2"}  # recorded for the honest trainers only


# ---------------------------------------------------------------------------------- example
def test_verification_example_flags_each_detectable_liar_and_no_honest_node(tmp_path):
    result = CliRunner().invoke(faults_group, ["run", str(EXAMPLE), "--driver", "memory",
                                               "--out", str(tmp_path), "--no-plot"])
    report = json.loads((tmp_path / "report.json").read_text())
    inv = report["invariants"]
    assert result.exit_code == 0, result.output + json.dumps(inv, indent=1)
    liars = inv["liars_flagged"]
    assert liars["pass"] and liars["figure"] <= 20
    per = liars["per_liar"]
    assert {n: v["behaviour"] for n, v in per.items()} == {
        "n16": "lazy", "n17": "poison-within-bound", "n18": "inflate-samples", "n19": "false-data-claim"}
    for name in ("n16", "n17", "n18", "n19"):  # false-data-claim too: the example replays segments
        assert 1 <= per[name]["updates_until_flagged"] <= 20, per[name]
        assert "excluded" not in per[name]
    assert liars["checks"]["checked"] > 0 and liars["checks"]["samples-inconsistent"] > 0
    assert liars["checks"]["replay-mismatch"] > 0
    assert inv["honest_flagged"]["pass"] and inv["honest_flagged"]["figure"] == 0
    assert inv["byzantine_resistance"]["pass"] and inv["byzantine_resistance"]["bound"] == 0.98
    assert report["rejections"].get("low-standing", 0) > 0  # flagged liars' checkpoints refused
