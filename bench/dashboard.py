"""Benchmark: what the dashboard costs a node, and how fast its page loads.

Usage: python bench/dashboard.py [--seconds 30] [--rounds 2] [--out DIR]

Starts a local swarm of two ``learnae node run`` processes (digits, as the demo's) and waits
until both train and merge. Then, ``--rounds`` times each, measures node0 for ``--seconds``
with no page open and with its page open in headless Chromium (Debian's, under selenium;
the page refreshes from ``/status`` every 2 s, charts and the ledger picture every 6 s):

- the CPU time of node0's process and of its network side (the threads named
  ``learnae-network``: the event loop where the HTTP API runs, its workers, Kubo's threads),
  from ``/proc``, as a share of one core;
- the page's load time (Navigation Timing: navigation start to the load event) and the time
  until the script rendered its first fresh ``/status``.

The difference between the two states is what the open page adds; training makes it noisy,
so the bench also measures the network side's CPU per request of each route the page uses
(200 in a row, less the idle rate) and multiplies by the page's request rates. Needs Chromium
(``apt-get install chromium chromium-driver``) and selenium (``make install``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from procs.browser import chromium, missing  # noqa: E402

from learnae.local.runner import LocalSwarm  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def _ticks(stat: Path) -> int:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def cpu_seconds(pid: int, thread_name: str | None = None) -> float:
    """CPU seconds (user + system) of process ``pid``, or of its threads named ``thread_name``.

    A thread's name passes to the threads it starts: the node names its network thread
    ``learnae-network``, so that name covers the event loop, its workers and Kubo's threads.
    Threads that ended during a measurement are not counted.
    """
    if thread_name is None:
        return _ticks(Path(f"/proc/{pid}/stat")) / TICKS
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "comm").read_text().strip() == thread_name[:15]:
                total += _ticks(task / "stat")
        except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
            continue
    return total / TICKS


def measure(pid: int, seconds: float) -> tuple[float, float]:
    """Shares of one core used by the process and by its network side over ``seconds``."""
    p0, t0, w0 = cpu_seconds(pid), cpu_seconds(pid, "learnae-network"), time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - w0
    return (cpu_seconds(pid) - p0) / wall, (cpu_seconds(pid, "learnae-network") - t0) / wall


def request_cost(pid: int, url: str, n: int = 200) -> float:
    """CPU seconds the node's network side spends per GET of ``url`` (``n`` in a row, less
    what the same time costs it idle, measured just before)."""
    idle, start = cpu_seconds(pid, "learnae-network"), time.monotonic()
    time.sleep(2.0)
    idle = (cpu_seconds(pid, "learnae-network") - idle) / (time.monotonic() - start)
    before, start = cpu_seconds(pid, "learnae-network"), time.monotonic()
    for _ in range(n):
        with urllib.request.urlopen(url, timeout=10) as response:
            response.read()
    spent = cpu_seconds(pid, "learnae-network") - before - idle * (time.monotonic() - start)
    return max(0.0, spent / n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each measurement")
    parser.add_argument("--rounds", type=int, default=2, help="measurements of each state")
    parser.add_argument("--out", type=Path, default=None, help="swarm directory (default: a temporary one)")
    args = parser.parse_args()
    if missing():
        sys.exit(f"bench/dashboard.py: {missing()}")
    with tempfile.TemporaryDirectory() as tmp:
        swarm = LocalSwarm(args.out or Path(tmp), nodes=2)
        try:
            swarm.start()
            swarm.wait(lambda st: all(s and s.get("merges", 0) >= 1 for s in st), 180, "both nodes merging")
            node = swarm.members[0]
            pid, url = node.proc.pid, f"http://127.0.0.1:{node.api_port}/"
            costs = {path: request_cost(pid, url.rstrip("/") + path) for path in ("/status", "/history", "/ledger/recent", "/")}
            driver = chromium()
            try:
                closed, opened, loads, firsts = [], [], [], []
                for _ in range(args.rounds):
                    driver.get("about:blank")
                    closed.append(measure(pid, args.seconds))
                    start = time.monotonic()
                    driver.get(url)
                    loads.append(driver.execute_script(
                        "const n = performance.getEntriesByType('navigation')[0]; return n.loadEventEnd - n.startTime;"))
                    while not driver.execute_script("return window.learnae && learnae.updates >= 2"):
                        time.sleep(0.01)
                    firsts.append(1000 * (time.monotonic() - start))
                    opened.append(measure(pid, args.seconds))
            finally:
                driver.quit()
        finally:
            swarm.stop()
    pct = [100 * x for x in (statistics.mean(c[0] for c in closed), statistics.mean(o[0] for o in opened),
                             statistics.mean(c[1] for c in closed), statistics.mean(o[1] for o in opened))]
    print(f"== dashboard ({args.rounds} x {args.seconds:.0f} s each state, node0 of 2 training on digits)")
    print(f"page load (navigation start to load event)   median {statistics.median(loads):.0f} ms"
          f"  (each: {', '.join(f'{x:.0f}' for x in loads)})   target < 1000 ms")
    print(f"first fresh /status rendered                 median {statistics.median(firsts):.0f} ms")
    print(f"node0 process CPU, page closed / open        {pct[0]:.1f} % / {pct[1]:.1f} % of a core")
    print(f"node0 network side CPU, page closed / open   {pct[2]:.2f} % / {pct[3]:.2f} % of a core"
          f"   added {pct[3] - pct[2]:+.2f} %   target < 1 %")
    # the page asks /status every 2 s, /history and /ledger/recent every 6 s, and / once
    rate = {"/status": 1 / 2, "/history": 1 / 6, "/ledger/recent": 1 / 6}
    added = 100 * sum(costs[p] * r for p, r in rate.items())
    print("CPU per request on the network side           " + ", ".join(f"{p} {1000 * c:.2f} ms" for p, c in costs.items()))
    print(f"the open page's requests at its rates         {added:.3f} % of a core   target < 1 %")
    print(json.dumps({"load_ms": loads, "first_ms": firsts, "closed": closed, "open": opened, "cost_s": costs}))


if __name__ == "__main__":
    main()
