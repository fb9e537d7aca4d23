"""Local swarms on this machine: the demo, the process runner and the fault harness.

Modules:

- :mod:`learnae.local.demo`: ``learnae demo --in-process``: a small swarm in one process.
- :mod:`learnae.local.procdemo`: ``learnae demo``: the main job, node and sensor processes.
- :mod:`learnae.local.runner`: :class:`~learnae.local.runner.LocalSwarm`, node and sensor processes.
- :mod:`learnae.local.baselines`: centralized, FedAvg and local-only baselines for a run.
- :mod:`learnae.local.converge`: whether tangles converged, and the partition experiment.
- :mod:`learnae.local.fetcher`: a one-shot process that fetches a list of CIDs from the swarm.
- :mod:`learnae.local.netns`: test hosts in Linux network namespaces, with links to cut.
- :mod:`learnae.local.scenario`: fault-injection scenarios, read from TOML and validated.
- :mod:`learnae.local.harness`: a scenario run with faults and without, its invariants checked.
- :mod:`learnae.local.simulation`: the harness's ``memory`` driver, a simulated swarm.
- :mod:`learnae.local.shared`: one ledger shared by a large simulation's nodes, a view each.
- :mod:`learnae.local.clock`: the virtual-clock asyncio loop the simulation runs on.
- :mod:`learnae.local.procdriver`: the harness's ``processes`` driver, real node processes.
- :mod:`learnae.local.invariants`: what a run under faults must show against its reference.
- :mod:`learnae.local.timeline`: fault periods and ``timeline.png``.
- :mod:`learnae.local.results`: what a harness run produced, whichever driver ran it.
"""
