"""The fault harness's pictures: fault periods and ``timeline.png``.

:func:`fault_periods` gives the fault periods in rounds; :func:`write_timeline` draws
``timeline.png``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from learnae.local.results import SimResult
from learnae.local.scenario import Scenario

__all__ = ["fault_periods", "write_timeline"]


def fault_periods(scn: Scenario) -> list[dict[str, Any]]:
    """Fault periods in rounds ``[start, end)``: partition..heal, crash..restart, at..until."""
    periods = []
    for f in scn.faults:
        end: int | None = f.until
        if f.kind == "partition":
            end = next((g.at for g in scn.faults if g.kind in ("heal", "partition") and g.at > f.at), None)
        elif f.kind == "crash":
            end = next((g.at for g in scn.faults if g.kind == "restart" and g.nodes == f.nodes and g.at > f.at), None)
        elif f.kind in ("heal", "restart"):
            continue
        label = f.kind + (f" {','.join(f.nodes)}" if f.nodes and f.kind != "byzantine" else "")
        if f.kind == "byzantine":
            label += f" {f.behaviour} x{len(f.nodes)}"
        periods.append({"kind": f.kind, "label": label, "start": f.at, "end": scn.rounds if end is None else end})
    return periods


def write_timeline(path: Path, scn: Scenario, run: SimResult, ref: SimResult, driver: str = "memory") -> None:
    """Draw ``timeline.png``: accuracy per node per round above the live nodes' ledger size.

    The accuracy plot shows the reference's mean dashed and the fault periods shaded; below it
    is the mean ledger size of the live nodes.

    Args:
        path: the PNG file to write.
        scn: the scenario.
        run: the run under faults.
        ref: its no-fault reference.
        driver: the driver that ran them (``memory`` or ``processes``), named in the title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, period in enumerate(fault_periods(scn)):
        for ax in (top, bottom):
            ax.axvspan(period["start"] - 0.5, period["end"] - 0.5, alpha=0.12, color=colours[k % len(colours)],
                       label=period["label"] if ax is top else None)
    byz = scn.byzantine()
    many = len(run.accuracy) > 12
    for name, hist in run.accuracy.items():
        rounds = range(max([scn.rounds, *(max(h) + 1 for h in run.accuracy.values() if h)]))  # NaN: node down
        style = {"color": "red", "alpha": 0.6} if name in byz else {"alpha": 0.35 if many else 0.8}
        top.plot(rounds, [hist.get(r, math.nan) for r in rounds], lw=1, marker=".", ms=3,
                 label=None if many else name, **style)
    ref_rounds = sorted({r for h in ref.accuracy.values() for r in h})
    ref_mean = [np.mean([h[r] for h in ref.accuracy.values() if r in h]) for r in ref_rounds]
    top.plot(ref_rounds, ref_mean, "k--", lw=2, label="no-fault run (mean)")
    top.set_ylabel("test accuracy")
    top.set_title(f"{scn.name}: {scn.nodes} nodes, merge '{scn.merge}', {driver} driver, seed {scn.seed}")
    top.legend(fontsize=7, ncol=3, loc="lower right")
    bottom.plot(range(len(run.ledger_size)), run.ledger_size, label="this run")
    bottom.plot(range(len(ref.ledger_size)), ref.ledger_size, "k--", label="no-fault run")
    bottom.set_ylabel("ledger size (txs)")
    bottom.set_xlabel("round")
    bottom.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
