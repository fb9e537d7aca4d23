"""The volunteer's dashboard in a real browser, and ``learnae status`` in the terminal.

Two ``learnae node run`` processes (embedded Kubo, TensorFlow, digits) on loopback; each
node's page at ``/`` is opened in headless Chromium (Debian's, under selenium). The page must
update itself without a reload, show what ``/status`` said at that moment (step, test
accuracy, peer count, merges: the snapshot the page rendered is bracketed by two ``/status``
answers taken before and after), draw its charts and the ledger's top, and read as a table
without JavaScript. A screenshot of each page is saved in ``test-artifacts/`` (or
``$LEARNAE_TEST_ARTIFACTS``). ``learnae status`` prints the same facts for the running node
and, once stopped, from its ``status.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from procs.browser import chromium, missing
from procs.nodes import Nodes

from learnae.dashboard import page, static_file
from learnae.node.history import History

ARTIFACTS = Path(os.environ.get("LEARNAE_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "test-artifacts")
CLI = "from learnae.cli import main; main()"
FIGURES = ("step", "test.accuracy", "peer_count", "merges")


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def dig(obj: dict, path: str):
    for key in path.split("."):
        obj = obj[key]
    return obj


# ------------------------------------------------------------------------------------ units
def test_the_history_thins_itself_and_keeps_the_newest():
    history = History(capacity=4)
    for i in range(20):
        history.add({"step": i})
    steps = [s["step"] for s in history.samples()]
    assert len(steps) <= 5 and steps[0] == 0 and steps[-1] == 19 and steps == sorted(steps)
    assert history.stride == 8
    with pytest.raises(ValueError):
        History(capacity=1)


def test_the_page_reads_as_tables_without_javascript():
    status = {"step": 120, "epoch": 3, "test": {"accuracy": 0.93125, "loss": 0.25}, "peer_count": 2, "merges": 7,
              "swarm_name": "digits <&>", "author": "z6Mk", "network": {"peers": [{"peer": "12D3KooW" * 3,
              "via": "relayed", "author": None}]}, "rejections": {"timeout": 2}, "ledger": {"by_kind": {"checkpoint": 9}}}
    html = page(status)
    assert '<td data-f="step" data-v="120">120</td>' in html
    assert '<td data-f="test.accuracy" data-v="0.93125">93.12 %</td>' in html
    assert "digits &lt;&amp;&gt;" in html and "<&>" not in html.split("<script")[0]
    assert "relayed" in html and "timeout" in html and "checkpoint" in html
    assert "http" not in html.replace("http-equiv", "")  # nothing from another origin
    assert static_file("app.js")[1] == "text/javascript" and static_file("../api.py") is None


# ------------------------------------------------------------------------------ processes
@pytest.mark.slow
@pytest.mark.swarm
@pytest.mark.skipif(missing() is not None, reason=missing() or "")
def test_each_nodes_page_shows_its_status_live_in_a_real_browser(tmp_path, launch):
    nodes = Nodes(tmp_path, launch, 2)
    for i in range(2):
        nodes.start(i, "--wait-peers", "1")
    nodes.wait(lambda: all((s := nodes.status(i)) and s["merges"] >= 1 and s.get("test") for i in range(2)), 120,
               "both nodes training and merging")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver = chromium()
    try:
        for i in range(2):
            url = json.loads((nodes.states[i] / "api.json").read_text())["url"]
            driver.get(url + "/")
            before = get(url + "/status")
            # live: the page fetched /status again (after `before`) without a reload
            nodes.wait(lambda since=before["now_s"]: driver.execute_script(
                "return window.learnae && learnae.status.now_s > arguments[0] && learnae.history.length >= 2"
                " && document.querySelectorAll('#dag circle').length >= 2", since), 60,
                f"node{i}'s page updating itself")
            shown = driver.execute_script(  # the DOM and the status it rendered, read at once
                "const f = {}; for (const el of document.querySelectorAll('[data-f]'))"
                " f[el.dataset.f] = [el.dataset.v, el.textContent];"
                " return {figures: f, status: learnae.status, points: learnae.charts['chart-accuracy'].data[0].length,"
                " canvas: document.querySelectorAll('#chart-accuracy canvas').length};")
            after = get(url + "/status")
            snap = shown["status"]
            assert before["now_s"] < snap["now_s"] <= after["now_s"]  # an answer of /status in between
            for key in ("step", "merges", "uptime_s"):
                assert before[key] <= snap[key] <= after[key], (key, before[key], snap[key], after[key])
            assert snap["author"] == before["author"] and snap["id"] == before["id"]
            for key in FIGURES:  # what the page shows is exactly that answer
                raw, text = shown["figures"][key]
                assert json.loads(raw) == dig(snap, key), (key, raw)
            acc = dig(snap, "test.accuracy")
            assert shown["figures"]["test.accuracy"][1] == f"{100 * acc:.2f} %"
            assert shown["figures"]["step"][1] == str(snap["step"]) and snap["peer_count"] >= 1
            assert shown["points"] >= 2 and shown["canvas"] >= 1  # the chart has points, drawn
            driver.save_screenshot(str(ARTIFACTS / f"dashboard-node{i}.png"))
            with urllib.request.urlopen(url + "/", timeout=10) as response:  # without JavaScript
                html = response.read().decode()
            assert 'data-f="step"' in html and "Peers" in html
        # a phone's viewport (a window cannot be narrower than 500 px): the page fits its width
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
        driver.get(url + "/")
        nodes.wait(lambda: driver.execute_script("return window.learnae && learnae.history.length >= 2"
                                                 " && learnae.charts['chart-loss'] !== undefined"), 60, "the page at phone width")
        widths = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[1] == 390 and widths[0] <= widths[1], widths  # tables scroll in place
        driver.save_screenshot(str(ARTIFACTS / "dashboard-phone.png"))
    finally:
        driver.quit()

    out = subprocess.run([sys.executable, "-c", CLI, "status", str(nodes.states[0])],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "running, asked at http://127.0.0.1" in out.stdout, out.stdout + out.stderr
    for i in range(2):
        assert nodes.terminate(i) == 0, nodes.procs[i].tail()
    final = nodes.status(0)
    out = subprocess.run([sys.executable, "-c", CLI, "status", str(nodes.states[0])],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "stopped, read from status.json" in out.stdout, out.stdout + out.stderr
    assert f"step {final['step']}, epoch {final['epoch']}" in out.stdout
    assert f"swarm test split {100 * final['test']['accuracy']:.2f} %" in out.stdout
