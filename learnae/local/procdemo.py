"""``learnae demo``: the main job, on :class:`learnae.local.runner.LocalSwarm`.

Trainer nodes run as separate ``learnae node run`` processes (own state directory, embedded
Kubo, one private swarm on 127.0.0.1) and sensors as ``learnae sensor run`` processes
streaming their own part of the data through a node's ``POST /ingest``, for a bounded time
while a live table shows each node's step, test accuracy, peers, merges and sensor chunks
adopted, each sensor's chunks published, and the ledger size. Then every process is stopped
(SIGTERM; a node publishes a final checkpoint; SIGKILL for stragglers), and the report puts
each node's test accuracy next to three baselines on the same split, model and epochs
(:mod:`learnae.local.baselines`). The nodes' ledgers are then reconciled (the transactions
the last gossip before the stop did not deliver) and each computes the credits table, which
the report shows by process name. Writes ``report.json`` and ``accuracy.png`` in ``out``.

The verdict (``ok``, exit status 0) judges each node's accuracy against its local-only baseline
with the margin the test split's size allows (:func:`learnae.local.baselines.compare`: a 95%
interval of the difference, Newcombe's hybrid Wilson score method): every process exited 0,
no node is worse than training alone and at least one node is better. One test row more or
less on either side does not flip it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from learnae.identity import Identity
from learnae.local.converge import reconcile
from learnae.local.runner import LocalSwarm
from learnae.state import open_tangle

DEMO_LEDGER_KEEP = 100_000
"""Checkpoints an author the demo's ledgers keep: all of a demo's (see ``run_process_demo``)."""


def _adopted(s: dict | None) -> int:
    return int(((s or {}).get("adopt") or {}).get("chunks") or 0)


def _table(swarm: LocalSwarm, statuses: list[dict | None], elapsed: float) -> str:
    rows = [f"t={elapsed:5.0f}s  node     step  epoch  acc    peers merges adopted"]
    ledger = 0
    for m, s in zip(swarm.members, statuses, strict=True):
        if s is None:
            rows.append(f"          {m.name:7}  (starting)")
            continue
        acc = (s.get("test") or {}).get("accuracy")
        rows.append(f"          {m.name:7} {s.get('step', 0):5d} {s.get('epoch', 0):6d}  "
                    f"{'  -  ' if acc is None else f'{acc:.3f}'}  {s.get('peer_count', 0):5d} {s.get('merges', 0):6d}"
                    f" {_adopted(s):7d}")
        ledger = max(ledger, (s.get("ledger") or {}).get("transactions", 0))
    for sensor, c in zip(swarm.sensors, swarm.sensor_counters(), strict=True):
        c = c or {}
        rows.append(f"          {sensor.name:7}  chunks published {c.get('published', 0)}"
                    f" ({c.get('published_rows', 0)}/{sensor.rows} rows)")
    rows.append(f"          ledger: {ledger} transactions")
    return "\n".join(rows)


def run_process_demo(out: Path, *, nodes: int = 4, sensors: int = 2, dataset: str = "digits",
                     partition: str = "dirichlet:0.5", merge: str = "mean", duration: float = 90.0,
                     seed: int = 0, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the swarm for ``duration`` seconds of training, stop it, write and return the report."""
    from learnae.local import baselines as bl

    out.mkdir(parents=True, exist_ok=True)
    # The ledgers keep every checkpoint of the run (a node keeps 16 an author by default):
    # the credits at the end then count the whole run, on every node alike.
    swarm = LocalSwarm(out, nodes=nodes, sensors=sensors, dataset=dataset, partition=partition,
                       merge=merge, seed=seed, stream_seconds=max(1.0, duration * 0.6),
                       extra_args=lambda _i: ["--ledger-keep", str(DEMO_LEDGER_KEEP)])
    t0 = time.monotonic()
    interrupted = False
    try:
        if threading.current_thread() is threading.main_thread():
            swarm.install_signal_handlers()
        swarm.start()
        echo(f"{nodes} node and {sensors} sensor processes started (pids {swarm.pids()});"
             " waiting for the nodes to train…")
        swarm.wait(swarm.all_training, 180, "every node training")
        train_start = time.monotonic()
        last = 0.0
        tty = sys.stdout.isatty()
        while time.monotonic() - train_start < duration:
            statuses = swarm.poll()
            if time.monotonic() - last >= (2 if tty else 10):
                echo(_table(swarm, statuses, time.monotonic() - train_start))
                last = time.monotonic()
            time.sleep(0.5)
    except KeyboardInterrupt:
        interrupted = True
        echo("\ninterrupted: stopping every node…")
    finally:
        codes = swarm.stop()
    run_seconds = time.monotonic() - t0
    statuses = swarm.statuses()
    counters = swarm.sensor_counters()
    if interrupted:
        echo(f"stopped: exit codes {codes}")
        raise KeyboardInterrupt
    epochs = [int((s or {}).get("epoch") or 0) for s in statuses]
    echo(f"stopped ({codes}); computing baselines for {epochs} epochs…")
    base = bl.all_baselines(dataset, nodes, partition, seed, swarm.manifest, [max(1, e) for e in epochs],
                         shards=swarm.shards)
    per_node = {}
    for i, (m, s) in enumerate(zip(swarm.members, statuses, strict=True)):
        s = s or {}
        per_node[m.name] = {"accuracy": (s.get("test") or {}).get("accuracy"), "local_only": base["local_only"][i],
                            "epochs": epochs[i], "step": s.get("step"), "merges": s.get("merges"),
                            "peers_max": m.peers_max, "rejections": s.get("rejections"), "exit_code": codes[m.name],
                            "sensor_chunks_adopted": _adopted(s), "sensor_rows_adopted": (s.get("adopt") or {}).get("rows"),
                            "history": m.history}
    n = base["test_rows"]
    comparisons = [None if v["accuracy"] is None else bl.compare(v["accuracy"], v["local_only"], n)
                   for v in per_node.values()]
    for v, c in zip(per_node.values(), comparisons, strict=True):
        v["vs_local_only"] = None if c is None else c.as_json()
    by_kind = max((((s or {}).get("ledger") or {}).get("by_kind", {}) for s in statuses),
                  key=lambda d: sum(d.values()))
    report: dict[str, Any] = {
        "mode": "processes", "dataset": dataset, "partition": partition, "merge": merge, "seed": seed,
        "nodes": per_node,
        "sensors": {sensor.name: {"rows": sensor.rows, "published": (c or {}).get("published", 0),
                                  "published_rows": (c or {}).get("published_rows", 0), "exit_code": codes[sensor.name]}
                    for sensor, c in zip(swarm.sensors, counters, strict=True)},
        "sensor_chunks_adopted": {name: v["sensor_chunks_adopted"] for name, v in per_node.items()},
        "baselines": {"centralized": base["centralized"], "fedavg": base["fedavg"], "epochs": base["epochs"],
                      "fedavg_local_epochs": base["fedavg_local_epochs"], "local_only": base["local_only"]},
        "ledger": {"by_kind": by_kind, "transactions": sum(by_kind.values())},
        "seconds": {"run": round(run_seconds, 1), "total": round(time.monotonic() - t0, 1)},
    }
    report["credits"] = _credits(swarm)
    judged = bl.verdict(comparisons, centralized=base["centralized"])
    exited = all(v["exit_code"] == 0 for v in per_node.values())
    report["verdict"] = {"rule": "ok: every node exited 0, no node is worse than its local-only baseline"
                                 " and at least one is better, or none could be (no local-only baseline is"
                                 " worse than centralized) and no node is worse than centralized;"
                                 f" {bl.NODE_RULE}", "test_rows": n, "confidence": bl.CONFIDENCE,
                         "method": "Newcombe 1998 hybrid Wilson score interval of swarm - local-only",
                         "nodes_exited_0": exited, **judged}
    report["ok"] = exited and judged["ok"]
    (out / "report.json").write_text(json.dumps(report, indent=2))
    _plot(report, out / "accuracy.png")
    echo(f"\n{'node':8} {'swarm':>5}  {'local-only':>10}  {'diff':>6}  {'95% interval':^16}  verdict")
    for (name, v), c in zip(per_node.items(), comparisons, strict=True):
        if c is None:
            echo(f"{name:8} {'-':>5}  {v['local_only']:10.3f}  (no accuracy)")
            continue
        echo(f"{name:8} {c.swarm:5.3f}  {c.local_only:10.3f}  {c.difference:+6.3f}  [{c.low:+.3f}, {c.high:+.3f}]"
             f"  {c.verdict}")
    echo(bl.describe_margin(n, centralized=True))
    echo(f"verdict: no node worse {judged['no_node_worse']}, some node better {judged['some_node_better']},"
         f" nothing to gain {judged['nothing_to_gain']}, matches centralized {judged['matches_centralized']},"
         f" every node exited 0 {exited}")
    echo(f"centralized {base['centralized']:.3f}   FedAvg {base['fedavg']:.3f}   ({base['epochs']} epochs)")
    echo(f"ledger: {report['ledger']['transactions']} transactions {by_kind}")
    if swarm.sensors:
        published = sum(v["published"] for v in report["sensors"].values())
        echo(f"sensors: {published} chunks published; adopted per node {report['sensor_chunks_adopted']}")
    credits = report["credits"]
    echo(f"\ncredits (`learnae ledger credits`), {'the same on every node' if credits['identical'] else 'NOT the same on every node'}:")
    echo(f"{'':8} {'ckpt':>5} {'merged':>6} {'rows':>5} {'adopted':>7}")
    for name, row in credits["by_name"].items():
        echo(f"{name:8} {row['checkpoints']:5} {row['merged']:6} {row['data_rows']:5} {row['rows_adopted']:7}")
    echo(f"report: {out / 'report.json'}, {out / 'accuracy.png'}  ok={report['ok']}")
    return report


def _credits(swarm: LocalSwarm) -> dict[str, Any]:
    """The credits table (``learnae ledger credits``) of every node's ledger, once reconciled.

    ``identical``: every node computes the same table; ``by_name``: node0's table by process
    name (nodes and sensors), ``{}`` rows for a process the ledger does not credit.
    """
    from learnae.ledger.credits import credits_json

    tangles = [open_tangle(m.state)[0] for m in swarm.members]
    try:
        reconcile(tangles)
        tables = [credits_json(t) for t in tangles]
    finally:
        for t in tangles:
            t.close()
    names = {Identity.load(m.state / "identity.key").author_id: m.name
             for m in (*swarm.members, *swarm.sensors) if (m.state / "identity.key").is_file()}
    by_author = {row["author"]: row for row in tables[0]}
    zero = {"checkpoints": 0, "merged": 0, "data_rows": 0, "rows_adopted": 0}
    return {"identical": all(t == tables[0] for t in tables),
            "by_name": {name: by_author.get(aid, zero) for aid, name in sorted(names.items(), key=lambda x: x[1])},
            "table": tables[0]}


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, v in report["nodes"].items():
        if v["history"]:
            t, acc = zip(*v["history"], strict=True)
            ax.plot(t, acc, label=name)
    for key, style in (("centralized", "--"), ("fedavg", ":")):
        ax.axhline(report["baselines"][key], linestyle=style, color="black", label=key)
    lo = report["baselines"]["local_only"]
    ax.axhline(sum(lo) / len(lo), linestyle="-.", color="grey", label="local-only (mean)")
    ax.set_xlabel("seconds")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{report['dataset']}, {len(report['nodes'])} nodes, {report['partition']}, merge {report['merge']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(out: Path, **kwargs: Any) -> int:
    """Run :func:`run_process_demo`; the exit status (0: the report is ok, 130: Ctrl+C)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the baselines run TensorFlow here too
    start = time.monotonic()
    try:
        report = run_process_demo(out, **kwargs)
    except KeyboardInterrupt:
        return 130
    print(f"done in {time.monotonic() - start:.0f} s")
    return 0 if report["ok"] else 1
