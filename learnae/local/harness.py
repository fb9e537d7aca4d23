"""The fault-injection harness: :func:`run_scenario` runs a scenario and checks its invariants.

It runs the scenario with faults and without, and checks the invariants against the
no-fault reference.

``run_scenario(scenario, out)`` runs the scenario twice with the same seed, once with its
timeline of faults and once without (the no-fault reference), checks the invariants, and
writes ``report.json`` and ``timeline.png`` to ``out``. Its parts:

- :mod:`learnae.local.scenario`: the scenario file (nodes, rounds, faults, bounds);
- :mod:`learnae.local.simulation`: the ``memory`` driver, a simulated swarm on a virtual
  clock (:mod:`learnae.local.clock`) whose trainers run the node's own network side;
- :mod:`learnae.local.procdriver`: the ``processes`` driver, real ``learnae node run``
  processes;
- :mod:`learnae.local.invariants`: what a run must show against its reference;
- :mod:`learnae.local.timeline`: fault periods and ``timeline.png``.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from learnae.local.invariants import check_invariants, final_mean
from learnae.local.results import SimResult
from learnae.local.scenario import Scenario, check_memory_driver
from learnae.local.simulation import simulate
from learnae.local.timeline import fault_periods, write_timeline

__all__ = ["run_scenario"]

log = logging.getLogger(__name__)

PARALLEL_NODES = 50
"""From this many nodes, on a machine of two or more cores, the memory driver runs the reference
and the faulted run at once, each in a process of its own (below it, starting a process costs
more than it saves)."""


def _simulate_both(scn: Scenario, parallel: bool | None) -> tuple[SimResult, SimResult]:
    """The memory driver's reference and faulted runs of ``scn``: ``(reference, run)``."""
    if parallel is None:
        parallel = scn.nodes >= PARALLEL_NODES and (os.cpu_count() or 1) >= 2
    if not parallel:
        return simulate(scn, with_faults=False), simulate(scn, with_faults=True)
    # spawn, not fork: the caller may hold threads (TensorFlow's, a test runner's)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        ref = pool.submit(simulate, scn, with_faults=False)
        run = pool.submit(simulate, scn, with_faults=True)
        return ref.result(), run.result()


def run_scenario(scn: Scenario, out: str | Path, *, plot: bool = True, driver: str = "memory",
                 echo: Callable[[str], None] = print,
                 use_netns: bool | None = None, parallel: bool | None = None) -> dict[str, Any]:
    """Run ``scn`` and its no-fault reference (same seed); write and return the report.

    Args:
        scn: the scenario.
        out: the output directory (created): ``report.json``, and ``timeline.png`` unless
            ``plot`` is false.
        plot: draw ``timeline.png``.
        driver: ``memory``, or ``processes`` (:mod:`learnae.local.procdriver`).
        echo: called with each line of progress.
        use_netns: for the processes driver: run nodes in network namespaces (None: where
            available).
        parallel: for the memory driver: run the reference and the faulted run in two processes
            at once (None: from :data:`PARALLEL_NODES` nodes on a machine of two or more cores).

    Returns:
        The report; ``report["pass"]`` is false when an invariant failed.

    Raises:
        ConfigError: the driver cannot run one of the scenario's faults or its topology.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if driver == "processes":
        from learnae.local.procdriver import check_supported, simulate_processes

        scn = scn.for_processes()
        check_supported(scn)
        echo("reference run (no faults):")
        ref = simulate_processes(scn, out / "reference", with_faults=False, echo=echo, use_netns=use_netns)
        echo("run with faults:")
        target = scn.bounds["recovery_ratio"] * final_mean(ref, ref.honest)
        run = simulate_processes(scn, out / "run", with_faults=True, echo=echo, use_netns=use_netns,
                                 target=target)
        model = "the manifest's Keras MLP in `learnae node run` processes (TensorFlow)"
    elif driver == "memory":
        check_memory_driver(scn)
        ref, run = _simulate_both(scn, parallel)
        model = "numpy softmax regression (output/kernel, output/bias), minibatch SGD"
    else:
        raise ValueError(f"unknown driver {driver!r}")
    invariants = check_invariants(scn, run, ref)
    rounds = range(max([scn.rounds, *(max(h) + 1 for h in run.accuracy.values() if h)]))
    report = {
        "scenario": scn.name,
        "driver": driver,
        "model": model,
        "seed": scn.seed,
        "nodes": scn.nodes,
        "sensors": scn.sensors,
        "rounds": scn.rounds,
        "round_seconds": scn.round_seconds,
        "merge": scn.merge,
        "pass": all(v["pass"] for v in invariants.values()),
        "invariants": invariants,
        "fault_periods": fault_periods(scn),
        "accuracy": {n: [h.get(r) for r in rounds] for n, h in run.accuracy.items()},
        "reference_accuracy": {n: [h.get(r) for r in rounds] for n, h in ref.accuracy.items()},
        "merges": None if run.merges is None else {n: [h.get(r) for r in rounds] for n, h in run.merges.items()},
        "ledger_size": run.ledger_size,
        "network": run.counters,
        "rejections": run.rejections,
        "simulated_seconds": round(run.simulated_seconds, 3),
        "wall_seconds": round(time.perf_counter() - started, 3),
    }
    report["timeline"] = None
    if plot:
        try:
            write_timeline(out / "timeline.png", scn, run, ref, driver)
            report["timeline"] = "timeline.png"
        except ImportError:
            log.warning("matplotlib is not installed (pip install learnae[train]): no timeline.png")
    (out / "report.json").write_text(json.dumps(report, indent=2, default=_json_default))
    return report


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
