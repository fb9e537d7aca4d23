"""The fault harness's invariants: what a run under faults must show against its reference.

:func:`check_invariants` checks them against the no-fault reference, for either driver.

Each invariant has its measured figure and its bound:

``ledger_converges``        seconds (simulated) from the recovery point (the start of the
                            round in which the last fault has ended; 0 if none ends) until every
                            live node holds the same transactions and tips (``in_step``), the
                            transactions published at the start of that round included,
                            bound ``converge_seconds``; a final in-step check after a drain
                            period is part of it.
``no_acknowledged_tx_lost``  transactions appended by an honest live node or sensor (before a
                            crash included) missing from some live node's tangle at the end, or
                            from the node's own reopened tangle at a restart; bound 0.
``content_fetchable``       share of the CIDs the swarm keeps (every data chunk; each honest
                            live author's newest ``keep`` checkpoints: older ones leave the
                            disks, :func:`kept_content`) that a live node fetches at the end;
                            bound 1.0. In a ``home-nat`` topology only what the relay members
                            hold can be fetched by a peer that is not a member behind NAT: each
                            author's newest checkpoint and the recent data chunks when they
                            serve content, nothing when they do not (``scope`` and
                            ``excluded_out_of_reach`` say so).
``disk_bounded``            the largest ratio, over live nodes and the run, of a node's IPFS
                            repository right after a garbage collection to its bound
                            (:func:`learnae.node.upkeep.repo_bound`: ``(keep + k + 4)`` of its
                            checkpoints, the data and snapshot it pins, and for Kubo's
                            datastore 64 MiB in processes, none in memory); bound 1.0.
``accuracy_recovers``       (scenarios with non-Byzantine faults) the most merges any live
                            honest node needed after the recovery point to reach
                            ``recovery_ratio`` x the reference run's final mean accuracy; bound
                            ``recovery_merges``.
``checkpoint_fetches``      share of the peer-checkpoint fetches the trainer nodes made over the
                            run that succeeded (``checkpoints_fetched`` over it plus the
                            ``timeout`` and ``ipfs`` rejections, from their ``/status``), bound
                            ``min_fetch_success`` (0 by default: reported only). Measured by the
                            processes driver; the memory driver reports it as not measured.
``byzantine_resistance``    (scenarios with Byzantine nodes) the lowest final accuracy of a live
                            honest node divided by the reference run's final mean accuracy;
                            bound ``byzantine_ratio``.
``liars_flagged``           (scenarios with :data:`~learnae.local.scenario.LIARS`) for each
                            liar, its own checkpoints published under its behaviour up to the
                            round after whose merges every live honest node had flagged it
                            (its standing below the swarm's threshold); the figure is the
                            worst such delay, bound ``detect_updates``. A liar never flagged by
                            all fails it. A behaviour verification cannot see is reported and
                            left out (:data:`UNDETECTABLE`): ``false-data-claim`` unless the
                            scenario's ``data_claims`` is ``"replay"`` (it trains honestly, and
                            only a replay of its training shows that it did not use the data it
                            names).
``honest_flagged``          (likewise) honest nodes that any live honest node flagged after any
                            round's merges; bound 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from learnae.ledger.reader import LedgerReader
from learnae.ledger.tx import Tx
from learnae.local.results import SimResult
from learnae.local.scenario import LIARS, Scenario

__all__ = ["UNDETECTABLE", "check_invariants", "final_mean", "kept_content"]

UNDETECTABLE = {"false-data-claim": "undetectable_without_replay"}
"""Liar behaviours ``liars_flagged`` leaves out when data claims are trusted (the manifest's
verification ``data_claims``), with the reason given in the report."""


def kept_content(tangle: LedgerReader, keep: int) -> dict[str, Tx]:
    """The content the swarm keeps, by CID: each with the transaction that announced it.

    Every ``data`` chunk (its adopters pin it) and each author's newest ``keep`` checkpoints
    (by time, then id; the author pins them). Peers' copies of older checkpoints
    are removed by their garbage collections, as the author's own pins beyond ``keep`` are.
    """
    out: dict[str, Tx] = {}
    data, _ = tangle.data_since(0)
    for tx in data:
        out.setdefault(tx.payload["cid"], tx)
    by_author: dict[bytes, list[Tx]] = {}
    for tx in tangle.checkpoints_since(0)[0]:
        by_author.setdefault(tx.author, []).append(tx)
    for txs in by_author.values():
        txs.sort(key=lambda tx: (tx.time, tx.id), reverse=True)
        for tx in txs[:keep]:
            out.setdefault(tx.payload["cid"], tx)
    return out


def _invariant(passed: bool, figure: Any, bound: Any, unit: str, **detail: Any) -> dict[str, Any]:
    return {"pass": bool(passed), "figure": figure, "bound": bound, "unit": unit, **detail}


def check_invariants(scn: Scenario, run: SimResult, ref: SimResult) -> dict[str, dict[str, Any]]:
    """Each invariant's pass/fail, measured figure and bound (see the module docstring)."""
    b = scn.bounds
    out: dict[str, dict[str, Any]] = {}
    conv = run.converge_seconds if run.final_in_step else None  # not in step after the drain: never converged
    out["ledger_converges"] = _invariant(
        conv is not None and conv <= b["converge_seconds"] and run.final_in_step and not run.verify_problems,
        None if conv is None else round(conv, 3), b["converge_seconds"], run.converge_unit,
        recovery_point_s=run.recovery_time, in_step_at_end=run.final_in_step,
        verify_problems=run.verify_problems[:5])
    lost = len(run.acked_missing) + len(run.restart_missing)
    out["no_acknowledged_tx_lost"] = _invariant(
        lost == 0, lost, 0, "acknowledged transactions missing (at restarts and on live nodes at the end)",
        checked=run.acked_checked, missing=(run.restart_missing + run.acked_missing)[:10])
    share = 1.0 if run.fetch_checked == 0 else 1 - len(run.fetch_missing) / run.fetch_checked
    scope = _fetch_scope(scn)
    out["content_fetchable"] = _invariant(
        not run.fetch_missing, round(share, 4), 1.0, "share of announced CIDs fetched after the faults",
        checked=run.fetch_checked, missing=run.fetch_missing[:10],
        **({"scope": scope, "excluded_out_of_reach": run.fetch_excluded} if scope else
           {"excluded_byzantine_or_dead_authors": run.fetch_excluded}))
    out["checkpoint_fetches"] = _checkpoint_fetches(run, b["min_fetch_success"])
    ratios = [(used / bound, name) for name, (used, bound) in run.disk.items()]
    ratio, fullest = max(ratios) if ratios else (0.0, None)
    out["disk_bounded"] = _invariant(
        bool(run.disk) and ratio <= 1.0, round(ratio, 4), 1.0,
        "largest IPFS repository right after a garbage collection over the node's bound",
        worst_node=fullest, per_node={k: {"bytes": u, "bound": b} for k, (u, b) in sorted(run.disk.items())})
    ref_acc = final_mean(ref, ref.honest)
    faults = {f.kind for f in scn.faults}
    if faults - {"byzantine"}:
        target = b["recovery_ratio"] * ref_acc
        start = scn.recovery_round()
        needed: dict[str, int | None] = {}
        for name in run.honest:
            if name not in run.live_at_end:
                continue
            hist = run.accuracy[name]
            reached = next((r for r in sorted(hist) if r >= start and hist[r] >= target), None)
            if reached is None:
                needed[name] = None
            elif run.merges is None:  # memory driver: one merge per round
                needed[name] = reached - start + 1
            else:  # processes: the node's own merge counter since the recovery point
                counts = run.merges[name]
                before = max((counts[r] for r in counts if r < start), default=0)
                needed[name] = counts[reached] - before
        known = [v for v in needed.values() if v is not None]
        worst = None if len(known) < len(needed) else max(known, default=0)
        out["accuracy_recovers"] = _invariant(
            worst is not None and worst <= b["recovery_merges"], worst, int(b["recovery_merges"]),
            "merges after the recovery point until every live honest node reaches the target accuracy",
            target_accuracy=round(target, 4), reference_accuracy=round(ref_acc, 4), recovery_round=start,
            per_node=needed)
    if "byzantine" in faults:
        finals = {n: run.accuracy[n][max(run.accuracy[n])] for n in run.honest
                  if n in run.live_at_end and run.accuracy[n]}
        ratio = min(finals.values()) / ref_acc if finals and ref_acc > 0 else 0.0
        out["byzantine_resistance"] = _invariant(
            ratio >= b["byzantine_ratio"], round(ratio, 4), b["byzantine_ratio"],
            "lowest final accuracy of a live honest node over the no-fault run's final mean accuracy",
            reference_accuracy=round(ref_acc, 4), byzantine=sorted(scn.byzantine()),
            merge_rule=scn.merge, honest_final={k: round(v, 4) for k, v in finals.items()})
    liars = {n: f.behaviour for n, f in scn.byzantine().items() if f.behaviour in LIARS}
    if liars:
        replay = scn.verification is not None and scn.verification.data_claims == "replay"
        out["liars_flagged"] = _liars_flagged(run, liars, int(b["detect_updates"]),
                                              {} if replay else UNDETECTABLE)
        out["honest_flagged"] = _honest_flagged(run)
    return out


def _liars_flagged(run: SimResult, liars: dict[str, str], bound: int,
                   undetectable: dict[str, str]) -> dict[str, Any]:
    """The ``liars_flagged`` invariant (see the module docstring).

    ``liars``: name -> behaviour; ``undetectable``: behaviour -> why it is left out.
    """
    per_liar: dict[str, dict[str, Any]] = {}
    delays: list[int | None] = []
    for name, behaviour in sorted(liars.items()):
        by_all = [r for r in sorted(run.flagged) if run.flagged[r]
                  and all(name in seen for seen in run.flagged[r].values())]
        detected = by_all[0] if by_all else None
        lies = run.lied.get(name, [])
        updates = None if detected is None else sum(1 for r in lies if r <= detected)
        last = run.flagged[max(run.flagged)] if run.flagged else {}
        # rounds after its detection in which some live honest node did not flag it (agreements
        # about some of its checkpoints lifted its standing again)
        after = 0 if detected is None else sum(1 for r in run.flagged if r > detected)
        per_liar[name] = {
            "behaviour": behaviour, "updates_until_flagged": updates, "flagged_in_round": detected,
            "updates_published": len(lies), "relapsed_rounds": after - max(len(by_all) - 1, 0),
            "flagged_at_end_by": f"{sum(name in seen for seen in last.values())}/{len(last)}"}
        if behaviour in undetectable:
            per_liar[name]["excluded"] = undetectable[behaviour]
        else:
            delays.append(updates)
    worst = None if None in delays or not delays else max(d for d in delays if d is not None)
    return _invariant(
        worst is not None and worst <= bound, worst, bound,
        "a liar's own checkpoints published until every live honest node flagged it (worst liar)",
        per_liar=per_liar, checks=run.checks)


def _honest_flagged(run: SimResult) -> dict[str, Any]:
    """The ``honest_flagged`` invariant (see the module docstring)."""
    honest = set(run.honest)
    first: dict[str, dict[str, Any]] = {}  # flagged honest node -> when first, and by whom
    for r in sorted(run.flagged):
        for observer, seen in sorted(run.flagged[r].items()):
            for name in seen:
                if name in honest and name not in first:
                    first[name] = {"round": r, "by": observer}
    return _invariant(not first, len(first), 0,
                      "honest nodes flagged by a live honest node after any round's merges",
                      observed_rounds=len(run.flagged), flagged=first)


def _fetch_scope(scn: Scenario) -> str | None:
    """What ``content_fetchable`` checks when it is not all the swarm keeps (else None)."""
    if scn.topology.kind != "home-nat":
        return None
    if scn.topology.serve_checkpoints:
        return ("what the relay members hold: each author's newest checkpoint and the data chunks"
                " of their stale window (the members behind NAT cannot be dialled)")
    return ("nothing: the relay members serve no content and the members behind NAT cannot be"
            " dialled")


def _checkpoint_fetches(run: SimResult, bound: float) -> dict[str, Any]:
    """The ``checkpoint_fetches`` invariant from the run's counters (see the module docstring)."""
    unit = "share of the trainer nodes' peer-checkpoint fetches that succeeded over the run"
    fetched, failed = run.counters.get("checkpoints_fetched"), run.counters.get("checkpoint_fetches_failed")
    if fetched is None or failed is None:
        return _invariant(bound == 0, None, bound, unit + " (not measured by this driver)")
    tried = fetched + failed
    share = fetched / tried if tried else None
    return _invariant(bound == 0 or (share is not None and share >= bound),
                      None if share is None else round(share, 4), bound, unit, fetched=fetched,
                      failed=failed)


def final_mean(run: SimResult, names: list[str]) -> float:
    """The mean over ``names`` of each node's accuracy in its last recorded round (0 if none)."""
    finals = [run.accuracy[n][max(run.accuracy[n])] for n in names if run.accuracy.get(n)]
    return float(np.mean(finals)) if finals else 0.0
