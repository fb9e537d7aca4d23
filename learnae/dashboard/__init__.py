"""The volunteer's dashboard: the trainer node's page at ``/``, served by its HTTP API.

:func:`page` renders the node's ``/status`` as HTML: a page that reads as tables without
JavaScript, and with it (``static/app.js``, from the node alone: no CDN) refreshes itself
from ``/status`` every :data:`REFRESH_S` seconds and draws the charts from ``/history`` and
the ledger's top from ``/ledger/recent``. Every figure carries its unit; the script shows
times in the viewer's time zone (the page without it, in UTC). The charts use uPlot
(MIT licence, ``static/uPlot.LICENSE``), vendored unchanged.

``STATIC`` holds the files the API serves under ``/static/``.
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["REFRESH_S", "STATIC", "page", "static_file"]

STATIC = Path(__file__).parent / "static"
"""The page's scripts, styles and the vendored chart library."""
REFRESH_S = 2.0
"""Seconds between two refreshes of the page's figures from ``/status``."""
_TYPES = {".js": "text/javascript", ".css": "text/css", ".LICENSE": "text/plain"}


def static_file(name: str) -> tuple[bytes, str] | None:
    """The bytes and content type of ``static/NAME``, or ``None`` for any other name."""
    path = STATIC / name
    if "/" in name or name.startswith(".") or not path.is_file():
        return None
    return path.read_bytes(), _TYPES.get(path.suffix, "application/octet-stream")


def _e(value: Any) -> str:
    return html.escape("-" if value is None else str(value))


def _figure(key: str, value: Any, text: str | None = None) -> str:
    """A cell the script updates: ``data-f`` names the field, ``data-v`` holds the raw value."""
    raw = "" if value is None else json.dumps(value)
    return f'<td data-f="{key}" data-v="{html.escape(raw)}">{_e(text if text is not None else value)}</td>'


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _utc(ms: int | None) -> str:
    return "-" if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(now_s: float | None, ms: int | None) -> str:
    return "-" if ms is None or now_s is None else f"{max(0.0, now_s - ms / 1000):.0f} s ago"


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _rows(items: list[tuple[str, str]]) -> str:
    return "".join(f"<tr><th scope=\"row\">{_e(k)}</th>{v}</tr>" for k, v in items)


def page(status: dict[str, Any]) -> str:
    """The dashboard's HTML for a node whose ``/status`` is ``status``."""
    s = status
    metrics, test = s.get("metrics") or {}, s.get("test") or {}
    last = s.get("last_checkpoint") or {}
    progress = _rows([
        ("step", _figure("step", s.get("step"))),
        ("epoch", _figure("epoch", s.get("epoch"))),
        ("examples trained", _figure("samples", s.get("samples"))),
        ("examples per second", _figure("samples_per_s", s.get("samples_per_s"), _num(s.get("samples_per_s"), 1))),
        ("accuracy, own held-out data", _figure("metrics.accuracy", metrics.get("accuracy"), _pct(metrics.get("accuracy")))),
        ("loss, own held-out data", _figure("metrics.loss", metrics.get("loss"), _num(metrics.get("loss")))),
        ("accuracy, swarm test split", _figure("test.accuracy", test.get("accuracy"), _pct(test.get("accuracy")))),
        ("loss, swarm test split", _figure("test.loss", test.get("loss"), _num(test.get("loss")))),
        ("peers connected", _figure("peer_count", s.get("peer_count"))),
        ("merges with peers", _figure("merges", s.get("merges"))),
        ("checkpoints published", _figure("published", s.get("published"))),
        ("last checkpoint", _figure("last_checkpoint.time_ms", last.get("time_ms"), _utc(last.get("time_ms")))),
        ("uptime", _figure("uptime_s", s.get("uptime_s"), _num(s.get("uptime_s"), 0) + " s")),
    ])
    ckpts = (s.get("ledger") or {}).get("checkpoints_by_author") or {}
    merged = s.get("merged_from") or {}
    peers = "".join(
        f"<tr><td>{_e(p.get('peer'))[:12]}…</td><td>{_e(p.get('member') or '-')[:12]}…</td>"
        f"<td>{_e(p.get('via'))}</td><td>{_age(s.get('now_s'), (ckpts.get(p.get('author') or '') or {}).get('time_ms'))}</td>"
        f"<td>{_e(merged.get(p.get('author') or '', 0))}</td></tr>"
        for p in (s.get("network") or {}).get("peers", []))
    rejections = _rows([(code, f"<td>{_e(n)}</td>") for code, n in sorted((s.get("rejections") or {}).items())]) \
        or "<tr><td colspan=\"2\">none</td></tr>"
    kinds = _rows([(kind, f"<td>{_e(n)}</td>") for kind, n in ((s.get("ledger") or {}).get("by_kind") or {}).items()])
    disk = s.get("disk") or {}
    credits = s.get("credits") or {}
    upkeep = _rows([
        ("disk used by the state directory", _figure("disk.total_bytes", disk.get("total_bytes"), _bytes(disk.get("total_bytes")))),
        ("disk budget (--disk-max)", _figure("disk.budget_bytes", disk.get("budget_bytes"), _bytes(disk.get("budget_bytes")))),
        *[(f"credits: {k.replace('_', ' ')}", _figure(f"credits.{k}", v)) for k, v in credits.items()],
    ])
    initial = json.dumps(status).replace("</", "<\\/")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>learnae node · {_e(s.get('swarm_name'))}</title>
<link rel="stylesheet" href="/static/uPlot.min.css">
<link rel="stylesheet" href="/static/style.css">
</head>
<body>
<header>
<h1>learnae node <span class="swarm">swarm {_e(s.get('swarm_name'))}</span></h1>
<p>model <b>{_e(s.get('model'))}</b></p>
<p>author <code data-f="author">{_e(s.get('author'))}</code></p>
<p>peer <code data-f="id">{_e(s.get('id'))}</code></p>
<p class="refused" data-f="refused" {'' if s.get('refused') else 'hidden'}>{_e(s.get('refused'))}</p>
</header>
<main>
<section><h2>Progress</h2><table id="progress">{progress}</table></section>
<section><h2>Accuracy and loss over time</h2>
<div id="chart-accuracy" class="chart" role="img" aria-label="accuracy over time"></div>
<div id="chart-loss" class="chart" role="img" aria-label="loss over time"></div>
<noscript><p>The charts need JavaScript; the tables are the node's status when this page was made.</p></noscript>
</section>
<section><h2>Peers</h2>
<table id="peers"><thead><tr><th>peer</th><th>member</th><th>connection</th><th>its last checkpoint</th><th>merges taken</th></tr></thead>
<tbody>{peers or '<tr><td colspan="5">no peer connected</td></tr>'}</tbody></table></section>
<section><h2>Merges and rejections</h2>
<div id="chart-merges" class="chart" role="img" aria-label="merges and rejections over time"></div>
<table id="rejections"><thead><tr><th>rejected, by reason</th><th>count</th></tr></thead><tbody>{rejections}</tbody></table></section>
<section><h2>Ledger near its tips</h2>
<svg id="dag" role="img" aria-label="the ledger's latest transactions and what they approve"></svg>
<table id="kinds"><thead><tr><th>transactions, by kind</th><th>count</th></tr></thead><tbody>{kinds}</tbody></table></section>
<section><h2>Disk and credits</h2><table id="upkeep">{upkeep}</table></section>
</main>
<footer>status at <time id="updated">{_utc(int(1000 * (s.get('now_s') or 0)) or None)}</time> ·
<a href="/status">/status</a> · <a href="/metrics">/metrics</a> · charts by uPlot (<a href="/static/uPlot.LICENSE">MIT</a>)</footer>
<script id="initial" type="application/json">{initial}</script>
<script>window.LEARNAE_REFRESH_S = {REFRESH_S};</script>
<script src="/static/uPlot.iife.min.js"></script>
<script src="/static/app.js"></script>
</body>
</html>
"""
