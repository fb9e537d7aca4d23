"""What a run of the fault harness produced, whichever driver ran it.

:func:`learnae.local.harness.simulate` (the ``memory`` driver) and
:func:`learnae.local.procdriver.simulate_processes` (the ``processes`` driver) both return a
:class:`SimResult`; :func:`learnae.local.harness.run_scenario` dispatches between them and
checks the invariants on it. Kept apart so that neither driver imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SimResult"]


@dataclass
class SimResult:
    """What one run produced.

    The run is :func:`~learnae.local.harness.simulate` or
    :func:`~learnae.local.procdriver.simulate_processes`.
    """

    accuracy: dict[str, dict[int, float]]
    ledger_size: list[float]
    honest: list[str]
    live_at_end: list[str]
    converge_seconds: float | None
    final_in_step: bool
    recovery_time: float
    acked_missing: list[str]
    acked_checked: int
    restart_missing: list[str]
    fetch_checked: int
    fetch_missing: list[str]
    fetch_excluded: int
    verify_problems: list[str]
    counters: dict[str, int]
    rejections: dict[str, int]
    simulated_seconds: float
    merges: dict[str, dict[int, int]] | None = None  # node -> round -> its merge counter (processes)
    # node -> (IPFS repository bytes right after a garbage collection, the node's bound then),
    # the measurement nearest its bound over the run
    disk: dict[str, tuple[int, int]] = field(default_factory=dict)
    # round -> live honest trainer -> the authors (node names) it had flagged after that round's
    # merge, sorted (memory driver; empty where verification is not observed)
    flagged: dict[int, dict[str, list[str]]] = field(default_factory=dict)
    # Byzantine node -> the rounds in which it published a checkpoint under its behaviour
    lied: dict[str, list[int]] = field(default_factory=dict)
    # the honest trainers' spot checks summed: "checked", "disputed", and one count per verdict code
    checks: dict[str, int] = field(default_factory=dict)
    converge_unit: str = ("simulated seconds from the recovery point until every live node holds the same"
                          " transactions and tips")
