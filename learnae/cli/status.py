"""``learnae status STATE``: a node's status in the terminal, running or stopped."""

from __future__ import annotations

import fcntl
import json
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from learnae.cli._common import Refused
from learnae.dashboard import REFRESH_S
from learnae.errors import LearnaeError
from learnae.files import read_json
from learnae.state import StateDir


@click.command("status")
@click.argument("state_dir", metavar="STATE", type=click.Path(path_type=Path, file_okay=False))
@click.option("--watch", "watch", type=float, default=None, metavar="SECONDS",
              help=f"Refresh every SECONDS (e.g. {REFRESH_S:g}) until Ctrl+C.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON (what /status answers).")
def status_command(state_dir: Path, watch: float | None, as_json: bool) -> None:
    """Show a trainer node's status: progress, accuracy, peers, ledger, disk, credits.

    The same facts as the node's page in a browser, for a headless machine. A running
    node is asked over its HTTP API (STATE/api.json); a stopped one, or one that runs
    with --api off, is read from STATE/status.json, which the node rewrites every second
    and last when it stops. Times are in this machine's time zone.

    \b
    Examples:
      learnae status ~/.learnae/node
      learnae status ~/.learnae/node --watch 2
      learnae status ~/.learnae/node --json | jq .test
    """
    if watch is not None and watch <= 0:
        raise Refused("--watch needs a number of seconds above 0")
    while True:
        status, source = read_status(state_dir)
        text = json.dumps(status, indent=2) if as_json else status_table(status, source)
        if watch is None:
            click.echo(text)
            return
        click.clear()
        click.echo(text)
        try:
            time.sleep(watch)
        except KeyboardInterrupt:
            return


def read_status(state_dir: Path) -> tuple[dict[str, Any], str]:
    """The node's status and where it came from (``"running ..."`` or ``"stopped ..."``).

    Raises:
        Refused: STATE holds no node's status (never ran a node).
    """
    paths = StateDir(state_dir)
    if not state_dir.is_dir():
        raise Refused(f"state directory {state_dir} does not exist")
    running = _locked(paths.lock)
    if running and paths.api.is_file():
        try:
            url = read_json(paths.api, "api.json")["url"]
            with urllib.request.urlopen(f"{url}/status", timeout=5) as response:
                return json.load(response), f"running, asked at {url}"
        except (LearnaeError, KeyError, TypeError, OSError, ValueError):
            pass  # fall back to status.json
    if not paths.status.is_file():
        raise Refused(f"{state_dir} holds no status.json: no node has run there (start one with"
                      " `learnae node run --state ...`)")
    try:
        status = read_json(paths.status, "status.json")
    except LearnaeError as exc:
        raise Refused(exc.reason) from None
    written = datetime.fromtimestamp(paths.status.stat().st_mtime).strftime("%Y-%m-%d %H:%M:%S")
    return status, f"{'running' if running else 'stopped'}, read from status.json written {written}"


def _locked(path: Path) -> bool:
    """Whether a node holds ``STATE/node.lock`` (runs there)."""
    if not path.exists():
        return False
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f} %"


def _num(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def _local(ms: int | None) -> str:
    return "-" if ms is None else datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def status_table(s: dict[str, Any], source: str) -> str:
    """The status as the terminal table ``learnae status`` prints."""
    metrics, test = s.get("metrics") or {}, s.get("test") or {}
    ledger, disk, net = s.get("ledger") or {}, s.get("disk") or {}, s.get("network") or {}
    peers = net.get("peers") or []
    relayed = sum(p.get("via") == "relayed" for p in peers)
    rejected = s.get("rejections") or {}
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(rejected.items()))
    kinds = ", ".join(f"{k} {v}" for k, v in (ledger.get("by_kind") or {}).items())
    credits = s.get("credits") or {}
    lines = [
        f"learnae node, swarm {s.get('swarm_name', '-')} ({str(s.get('swarm'))[:16]}…): {source}",
        f"  author        {s.get('author')}",
        f"  peer          {s.get('id')}",
        f"  model         {s.get('model', '-')}",
        f"  progress      step {s.get('step')}, epoch {s.get('epoch')}, {s.get('samples')} examples"
        f" ({_num(s.get('samples_per_s'), 1)} a second), uptime {_num(s.get('uptime_s'), 0)} s",
        f"  accuracy      own held-out {_pct(metrics.get('accuracy'))} (loss {_num(metrics.get('loss'))}),"
        f" swarm test split {_pct(test.get('accuracy'))} (loss {_num(test.get('loss'))})",
        f"  peers         {s.get('peer_count')} connected ({len(peers) - relayed} direct, {relayed} relayed)",
        f"  merges        {s.get('merges')} (applied {s.get('merges_applied')}); published {s.get('published')},"
        f" last at {_local((s.get('last_checkpoint') or {}).get('time_ms'))}",
        f"  rejected      {sum(rejected.values())}" + (f" ({reasons})" if reasons else ""),
        f"  ledger        {ledger.get('transactions')} transactions ({kinds})",
        f"  disk          {_mib(disk.get('total_bytes'))} of {_mib(disk.get('budget_bytes'))} (--disk-max)",
        "  credits       " + (", ".join(f"{k.replace('_', ' ')} {v}" for k, v in credits.items()) or "-"),
    ]
    if s.get("refused"):
        lines.append(f"  REFUSED       {s['refused']}")
    if peers:
        merged = s.get("merged_from") or {}
        ckpts = ledger.get("checkpoints_by_author") or {}
        lines.append(f"\n  {'PEER':<18}  {'MEMBER':<18}  {'VIA':<8}  {'LAST CHECKPOINT':<19}  MERGES")
        for p in peers:
            author, member = p.get("author") or "", p.get("member") or ""
            lines.append(f"  {p['peer'][:16] + '…':<18}  {(member[:16] or '-'):<18}  {p.get('via', '-'):<8}"
                         f"  {_local((ckpts.get(author) or {}).get('time_ms')):<19}  {merged.get(author, 0)}")
    return "\n".join(lines)
