"""``learnae demo``: a short run (2 node processes, 1 sensor process) writes report.json with
each node's accuracy next to the baselines and the sensor chunks adopted, and accuracy.png;
Ctrl+C stops every process and a second demo straight after works."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from learnae.local.baselines import compare, node_splits, verdict
from learnae.local.runner import pid_alive

pytestmark = [pytest.mark.slow, pytest.mark.swarm]

DEMO = "from learnae.cli import main; main()"


def test_short_process_demo_writes_report_and_plot(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-c", DEMO, "demo", "--nodes", "2", "--sensors", "1",
                           "--duration", "15", "--out", str(out)], capture_output=True, text=True, timeout=400)
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert set(report["nodes"]) == {"node0", "node1"}
    for v in report["nodes"].values():
        assert 0 < v["accuracy"] <= 1 and 0 < v["local_only"] <= 1
        assert v["exit_code"] == 0 and v["epochs"] >= 1 and v["peers_max"] >= 1  # most peers seen while running
    for key in ("centralized", "fedavg"):
        assert 0 < report["baselines"][key] <= 1
    assert report["ledger"]["by_kind"]["checkpoint"] >= 2 and report["ledger"]["by_kind"]["genesis"] == 1
    # the sensor streamed its whole shard; every chunk reached the ledger and both nodes adopted it
    sensor = report["sensors"]["sensor0"]
    assert sensor["exit_code"] == 0 and sensor["published_rows"] == sensor["rows"] > 0
    assert report["ledger"]["by_kind"]["data"] == sensor["published"] > 0
    assert report["sensor_chunks_adopted"] == {"node0": sensor["published"], "node1": sensor["published"]}
    # every node computes the same credits from its (reconciled) ledger; each process is credited
    credits = report["credits"]
    assert credits["identical"] and set(credits["by_name"]) == {"node0", "node1", "sensor0"}
    for name in ("node0", "node1"):
        assert credits["by_name"][name]["checkpoints"] > 0 and credits["by_name"][name]["merged"] > 0
    assert credits["by_name"]["sensor0"]["data_rows"] == sensor["rows"]
    assert credits["by_name"]["sensor0"]["rows_adopted"] > 0
    # the verdict: each node against its local-only baseline with the test split's margin
    n = report["verdict"]["test_rows"]
    assert n == len(node_splits("digits", 3, "dirichlet:0.5", 0)[0].test) == 359
    comparisons = []
    for v in report["nodes"].values():
        assert v["accuracy"] * n == pytest.approx(round(v["accuracy"] * n), abs=1e-3)  # measured on the n rows
        c = compare(v["accuracy"], v["local_only"], n)
        lo, hi = v["vs_local_only"]["interval"]
        assert lo == pytest.approx(c.low, abs=1e-6) and hi == pytest.approx(c.high, abs=1e-6)
        assert lo < v["accuracy"] - v["local_only"] < hi
        assert v["vs_local_only"]["verdict"] == ("worse" if hi < 0 else "better" if lo > 0 else "same")
        comparisons.append(c)
    judged = verdict(comparisons, centralized=report["baselines"]["centralized"])
    assert {k: report["verdict"][k] for k in judged} == judged
    assert set(judged) >= {"nothing_to_gain", "matches_centralized"}
    assert report["ok"] == (judged["ok"] and all(v["exit_code"] == 0 for v in report["nodes"].values()))
    assert (proc.returncode == 0) == report["ok"]
    assert f"n={n} common test rows" in proc.stdout and "95% interval" in proc.stdout
    lines = proc.stdout.splitlines()
    for name, v in report["nodes"].items():  # the table shows each node's interval and verdict
        lo, hi = v["vs_local_only"]["interval"]
        row = f"[{lo:+.3f}, {hi:+.3f}]  {v['vs_local_only']['verdict']}"
        assert any(line.startswith(f"{name} ") and line.endswith(row) for line in lines), proc.stdout[-3000:]
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.rglob("repo.lock"))


def test_ctrl_c_stops_every_process_and_a_second_demo_works(tmp_path):
    out = tmp_path / "demo"
    # Ctrl+C as a terminal sends it. A runner that started the tests in the background (a shell's
    # `&` without job control) hands SIGINT down ignored, and Python then never raises
    # KeyboardInterrupt: the demo gets the disposition a terminal gives it.
    proc = subprocess.Popen([sys.executable, "-c", DEMO, "demo", "--nodes", "2", "--sensors", "1", "--duration", "300",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines = []
        pids: list[int] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if m := re.search(r"pids \[([\d, ]+)\]", line):
                pids = [int(p) for p in m.group(1).split(",")]
            if pids and "t=" in line:  # the live table: every node is training
                break
        assert pids, "".join(lines)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:  # failed: leave no node behind to slow the tests after this one
            proc.kill()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 130, "".join(lines) + rest
    assert not any(pid_alive(p) for p in pids)
    assert not list(out.rglob("repo.lock"))
    second = subprocess.run([sys.executable, "-c", DEMO, "demo", "--nodes", "2", "--sensors", "0", "--duration", "3",
                             "--out", str(tmp_path / "again")], capture_output=True, text=True, timeout=400)
    assert second.returncode in (0, 1), second.stdout[-3000:] + second.stderr[-3000:]
    assert (tmp_path / "again" / "report.json").exists()
