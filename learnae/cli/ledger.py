"""``learnae ledger show|verify|lineage|attestations|credits|members|export|prune``: read a swarm's ledger, prune it."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import sys
import threading
import time
from collections import Counter, deque
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from learnae.cli._common import Refused, reasons
from learnae.manifest import short_author, short_id
from learnae.state import StateDir, open_tangle

if TYPE_CHECKING:
    from learnae.ledger.tangle import Tangle


@click.group("ledger")
def ledger_group() -> None:
    """Read a swarm's ledger (the tangle) from a state directory.

    STATE_DIR is the directory `learnae init` made or a node runs in; the ledger
    is STATE_DIR/tangle.sqlite. show, verify, lineage, attestations, credits, members and export only read it,
    and can run while the node is running; prune changes it, and only while no
    node runs there (a running node prunes its own ledger).

    \b
    Examples:
      learnae ledger show ./swarm
      learnae ledger verify ./swarm
      learnae ledger attestations ./swarm
      learnae ledger credits ./swarm
      learnae ledger members ./swarm
      learnae ledger export ./swarm --format dot -o tangle.dot && dot -Tsvg tangle.dot > tangle.svg
      learnae ledger prune ./swarm --window 1h
    """


def _state_tangle(state_dir: Path) -> Path:
    """The ledger file of STATE_DIR, or a clear error (exit 2)."""
    if not state_dir.is_dir():
        raise Refused(f"state directory {state_dir} does not exist (make one with "
                      f"`learnae init {state_dir} --name NAME --model MODEL`)")
    path = StateDir(state_dir).tangle
    if not path.is_file():
        raise Refused(f"{state_dir} holds no ledger ({path.name}); is it a learnae state "
                      "directory?")
    return path


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _pruned_note(pruning: dict[str, Any]) -> str:
    """What pruning did, in words ("" for a ledger never pruned)."""
    if pruning.get("last_cutoff_ms") is None:
        return ""
    return (f"{pruning['total']} pruned, the last prune cut checkpoints before"
            f" {_when(pruning['last_cutoff_ms'])} UTC; {pruning['frontier']} entry points")


@ledger_group.command("show")
@click.argument("state_dir", type=click.Path(path_type=Path))
@click.option("-n", "--last", type=click.IntRange(0), default=10, show_default=True,
              help="How many of the latest transactions to list.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def ledger_show(state_dir: Path, last: int, as_json: bool) -> None:
    """Summarize the ledger: transactions by kind, tips, the latest transactions.

    Tips are the transactions nobody approves yet; the latest are the last
    ones this ledger stored. Pending (waiting for their parents) and missing
    transactions live in a running node's memory, so they read 0 from disk.

    \b
    Examples:
      learnae ledger show ./swarm
      learnae ledger show ./swarm -n 50
      learnae ledger show ./swarm --json | jq .counts
    """
    from learnae.identity import author_id
    from learnae.ledger.tx import decode_tx

    _state_tangle(state_dir)
    with reasons():
        tangle, manifest = open_tangle(state_dir, read_only=True)
        with tangle:
            latest = [decode_tx(raw) for _, raw in deque(tangle.iter_raw(), maxlen=last)] if last else []
            info: dict[str, Any] = {
                "swarm": tangle.swarm, "name": manifest.name, "count": tangle.count(),
                "counts": tangle.counts(), "tips": tangle.tips(), "pending": tangle.pending,
                "missing": tangle.missing_parents(), "pow_bits": tangle.pow_bits,
                "max_tx_bytes": tangle.max_tx_bytes, "pruning": tangle.pruning(),
                "admission": manifest.admission if manifest.admission == "open" else list(manifest.admission),
                "latest": [{"id": tx.id, "kind": tx.kind, "author": author_id(tx.author), "time": tx.time}
                           for tx in reversed(latest)],
            }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    admission = "open" if manifest.admission == "open" else f"{len(manifest.admission)} authors"
    tips = info["tips"]
    shown_tips = ", ".join(short_id(t) for t in tips[:8]) + (f", … {len(tips) - 8} more" if len(tips) > 8 else "")
    click.echo(f"swarm     {manifest.name}  {tangle.swarm}")
    click.echo(f"ledger    {info['count']} transactions ({', '.join(f'{k} {v}' for k, v in info['counts'].items())})")
    click.echo(f"rules     pow {tangle.pow_bits} bits, tx limit {tangle.max_tx_bytes} bytes, admission {admission}")
    click.echo(f"tips      {len(tips)}: {shown_tips}")
    click.echo(f"pending   {info['pending']} waiting for parents, {len(info['missing'])} missing")
    if note := _pruned_note(info["pruning"]):
        click.echo(f"pruned    {note}")
    if latest:
        click.echo(f"\nlatest {len(latest)} (newest first)")
        click.echo(f"  {'TIME (UTC)':<19}  {'KIND':<10}  {'AUTHOR':<13}  ID")
        for tx in reversed(latest):
            click.echo(f"  {_when(tx.time):<19}  {tx.kind:<10}  {short_author(tx.author):<13}  {tx.id}")


@ledger_group.command("attestations")
@click.argument("state_dir", type=click.Path(path_type=Path))
@click.option("--disputes", "last_disputes", type=click.IntRange(0), default=20, show_default=True,
              help="How many of the latest disputes to list.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def ledger_attestations(state_dir: Path, last_disputes: int, as_json: bool) -> None:
    """Each author's standing from the ledger's attestations, and the latest disputes.

    Nodes spot-check each other's checkpoints and record the verdict as a signed
    `attestation` in the ledger. Every node derives the same standings from the same
    ledger: a score between 0 and 1 from the weighted agreements and disputes about the
    author's checkpoints; below the swarm's threshold the author is flagged and the
    others no longer merge its checkpoints (docs/design.md, "Verification").
    Nodes check at the manifest's `verification.rate` (5% of their peers'
    checkpoints by default; 0 turns checking off).

    \b
    Examples:
      learnae ledger attestations ./swarm
      learnae ledger attestations ./swarm --json | jq '.standings[] | select(.flagged)'
    """
    from learnae.identity import author_id
    from learnae.verify import standings

    _state_tangle(state_dir)
    with reasons():
        tangle, manifest = open_tangle(state_dir, read_only=True)
        with tangle:
            attestations = tangle.attestations()
            candidates = list(tangle.latest_checkpoint_per_author())
    cfg = manifest.verification
    table = standings(attestations, lambda _checkpoint: candidates, cfg)
    disputes = [a for a in attestations if a.verdict == "dispute"][-last_disputes:] if last_disputes else []
    rows: list[dict[str, Any]] = [{"author": author_id(a), "author_key": a.hex(), "agree": s.agree, "dispute": s.dispute,
             "disputes": s.disputes, "score": round(s.score, 4), "flagged": s.flagged}
            for a, s in sorted(table.items(), key=lambda item: item[1].score)]
    info = {
        "rules": {"rate": cfg.rate, "verifiers": cfg.verifiers, "threshold": cfg.threshold},
        "attestations": len(attestations), "standings": rows,
        "disputes": [{"tx": a.tx, "time": a.time, "verifier": author_id(a.verifier),
                      "subject": author_id(a.subject), "checkpoint": a.checkpoint, "method": a.method,
                      "code": a.code, "figures": a.figures} for a in reversed(disputes)],
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"{len(attestations)} attestations; spot-check rate {cfg.rate:g}, {cfg.verifiers} verifiers"
               f" per checked checkpoint, flagged below {cfg.threshold:g}")
    if not table:
        click.echo("no author has been judged yet")
        return
    click.echo(f"\n  {'AUTHOR':<13}  {'AGREE':>7}  {'DISPUTE':>7}  {'SCORE':>5}  FLAGGED")
    for row in rows:
        click.echo(f"  {short_author(bytes.fromhex(row['author_key'])):<13}  {row['agree']:>7.2f}"
                   f"  {row['dispute']:>7.2f}  {row['score']:>5.2f}  {'yes' if row['flagged'] else ''}")
    if disputes:
        click.echo(f"\nlatest {len(disputes)} disputes (newest first)")
        click.echo(f"  {'TIME (UTC)':<19}  {'VERIFIER':<13}  {'SUBJECT':<13}  {'CODE':<20}  CHECKPOINT")
        for a in reversed(disputes):
            click.echo(f"  {_when(a.time):<19}  {short_author(a.verifier):<13}  {short_author(a.subject):<13}"
                       f"  {a.code:<20}  {short_id(a.checkpoint)}")


@ledger_group.command("credits")
@click.argument("state_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def ledger_credits(state_dir: Path, as_json: bool) -> None:
    """Who contributed what: each author's checkpoints, data, and what others made of them.

    Counted from the ledger alone, so every node holding the same ledger prints the
    same table. Per author: CKPT checkpoints published; MERGED those of them in the
    lineage of another author's checkpoint (merged directly, or an ancestor of one
    that was); DATA data chunks published and ROWS their rows; ADOPTED the rows of
    those chunks that another author's checkpoint names as trained on; AGREED and
    DISPUTED its checkpoints that another member's attestation agreed with or disputed
    (docs/design.md, "Credits"). A pruned ledger counts what it still holds.

    \b
    Examples:
      learnae ledger credits ./swarm
      learnae ledger credits ./node0 --json | jq '.credits[] | select(.rows_adopted > 0)'
    """
    from learnae.ledger.credits import credits_json

    _state_tangle(state_dir)
    with reasons():
        tangle, _ = open_tangle(state_dir, read_only=True)
        with tangle:
            rows = credits_json(tangle)
            total = sum(tangle.counts().values())
    if as_json:
        click.echo(json.dumps({"transactions": total, "credits": rows}, indent=2))
        return
    if not rows:
        click.echo(f"{total} transactions; nobody has published a checkpoint or data yet")
        return
    click.echo(f"{total} transactions; {len(rows)} contributors")
    heads = ("CKPT", "MERGED", "DATA", "ROWS", "ADOPTED", "AGREED", "DISPUTED")
    keys = ("checkpoints", "merged", "data_chunks", "data_rows", "rows_adopted", "attested", "disputed")
    click.echo(f"\n  {'AUTHOR':<13}" + "".join(f"  {h:>8}" for h in heads))
    for row in sorted(rows, key=lambda r: (-r["checkpoints"], -r["data_rows"], r["author"])):
        click.echo(f"  {short_author(bytes.fromhex(row['author_key'])):<13}"
                   + "".join(f"  {row[k]:>8}" for k in keys))


@ledger_group.command("members")
@click.argument("state_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def ledger_members(state_dir: Path, as_json: bool) -> None:
    """Who may publish, and since when: the founder, stewards and members.

    From the genesis (founder, admission list, stewards) and every `admit` and
    `revoke` transaction the ledger holds (`learnae admit`, `learnae revoke`).
    SINCE is the time of the admit that took effect ("genesis" for those the
    genesis names); a revoked member shows when and why. In an open swarm anyone
    may publish: the table lists the founder, stewards and revoked authors only.

    \b
    Examples:
      learnae ledger members ./swarm
      learnae ledger members ./node0 --json | jq '.members[] | select(.revoked)'
    """
    from learnae.identity import author_id

    _state_tangle(state_dir)
    with reasons():
        tangle, _ = open_tangle(state_dir, read_only=True)
        with tangle:
            rules, roll = tangle.rules, tangle.roll()
            times = {i: t.time for i in tangle.roll_events() if (t := tangle.get(i)) is not None}
    stewards = {author_id(k) for k in rules.stewards}
    founder = author_id(rules.founder)
    rows: list[dict[str, Any]] = [{
        "author": m.author, "role": m.role,
        "standing": "founder" if m.author == founder else "steward" if m.author in stewards else "member",
        "since": m.since, "since_time": times.get(m.since) if m.since else None,
        "revoked": m.revoked, "revoked_time": times.get(m.revoked) if m.revoked else None, "reason": m.reason,
    } for m in roll.listing()]
    if as_json:
        click.echo(json.dumps({"open": rules.admission is None, "quorum": rules.quorum, "members": rows}, indent=2))
        return
    kind = "open: anyone may publish" if rules.admission is None else "closed: members only"
    click.echo(f"swarm {tangle.swarm[:16]}…, {kind}; admit and revoke by the founder"
               + (f" or {rules.quorum} of {len(stewards)} stewards" if stewards else ""))
    click.echo(f"\n  {'AUTHOR':<48}  {'ROLE':<6}  {'STANDING':<8}  {'SINCE':<19}  STATUS")
    for row in rows:
        since = _when(row["since_time"]) if row["since_time"] else "genesis"
        status = (f"revoked {_when(row['revoked_time'])}: {row['reason']}" if row["revoked"] else "may publish")
        click.echo(f"  {row['author']:<48}  {row['role']:<6}  {row['standing']:<8}  {since:<19}  {status}")


@ledger_group.command("verify")
@click.argument("state_dir", type=click.Path(path_type=Path))
def ledger_verify(state_dir: Path) -> None:
    """Re-check every transaction from its stored bytes.

    For each transaction: canonical DAG-CBOR, id = CID of the bytes, Ed25519
    signature, proof-of-work, the swarm's rules (size, admission, times),
    parents stored before it, and the indexes agree with the bytes. Also
    checks the genesis manifest and that genesis.tx, if present, is the
    ledger's genesis. Any changed byte of a stored transaction is caught.
    Exit status 0 when all is well, 1 with the reasons when not.

    A pruned ledger is verified as far as it is kept: parents that were pruned
    are checked against the entry points (the pruned transactions that kept
    ones approve: their id, time and height). The output says how many were
    pruned and where the last prune cut.

    \b
    Example:
      learnae ledger verify ./swarm
    """
    path = _state_tangle(state_dir)
    state: dict[str, Any] = {}
    worker = threading.Thread(target=_verify_into, args=(state_dir, path, state), daemon=True)
    start = time.monotonic()
    worker.start()
    ticking = sys.stderr.isatty()
    while worker.is_alive():
        worker.join(0.5)
        if ticking and worker.is_alive():
            total = state.get("count")
            click.echo(f"\rverifying {total if total is not None else '…'} transactions:"
                       f" {time.monotonic() - start:.0f} s", nl=False, err=True)
    if ticking and time.monotonic() - start >= 0.5:
        click.echo("\r" + " " * 60 + "\r", nl=False, err=True)
    if "error" in state:
        raise Refused(state["error"])
    problems, count = state["problems"], state["count"]
    elapsed = time.monotonic() - start
    note = _pruned_note(state.get("pruning", {}))
    if not problems:
        click.echo(f"ok: {count} transactions verified in {elapsed:.1f} s ({path})" + (f"; {note}" if note else ""))
        return
    click.echo(f"FAILED: {len(problems)} problems in {count} transactions ({path})"
               + (f"; {note}" if note else "") + ":")
    for problem in problems:
        click.echo(f"  {problem}")
    sys.exit(1)


def _verify_into(state_dir: Path, path: Path, state: dict[str, Any]) -> None:
    """Run in a worker thread (the Tangle is opened and used there only)."""
    from learnae.errors import ConfigError, LearnaeError, TxRejected
    from learnae.ledger.tangle import Tangle

    problems: list[str] = []
    try:
        try:
            tangle, manifest = open_tangle(state_dir, read_only=True)
        except (ConfigError, TxRejected) as exc:  # the genesis itself is damaged
            problems.append(f"genesis: {exc.reason}")
            tangle, manifest = Tangle(path, read_only=True), None
        with tangle:
            state["count"] = tangle.count()
            state["pruning"] = tangle.pruning()
            problems += tangle.verify()
            if manifest is not None:
                if tangle.pow_bits != manifest.pow_bits:
                    problems.append(f"ledger: pow_bits {tangle.pow_bits} is not the manifest's {manifest.pow_bits}")
                if tangle.max_tx_bytes != manifest.limits.tx_bytes:
                    problems.append(f"ledger: max_tx_bytes {tangle.max_tx_bytes} is not the"
                                    f" manifest's {manifest.limits.tx_bytes}")
            genesis_file = StateDir(state_dir).genesis
            if genesis_file.is_file():
                from learnae.ledger.tx import TX_CID_PREFIX, tx_id

                file_id = tx_id(TX_CID_PREFIX + hashlib.sha256(genesis_file.read_bytes()).digest())
                if file_id != tangle.swarm:
                    problems.append(f"{genesis_file.name}: holds transaction {file_id}, not the ledger's"
                                    f" genesis {tangle.swarm}")
    except LearnaeError as exc:
        state["error"] = exc.reason
    except OSError as exc:
        state["error"] = f"cannot read {path}: {exc.strerror or exc}"
    except sqlite3.Error as exc:  # damage SQLite itself trips on, e.g. a raw column turned to text
        problems.append(f"ledger: the store is damaged, verification stopped: {exc}")
    except Exception as exc:  # never leave the main thread without an answer
        state["error"] = f"verification failed unexpectedly: {type(exc).__name__}: {exc}"
    finally:
        state["problems"] = problems
        state.setdefault("count", 0)


@ledger_group.command("lineage")
@click.argument("state_dir", type=click.Path(path_type=Path))
@click.argument("cid")
@click.option("--depth", type=click.IntRange(0), default=20, show_default=True,
              help="Levels of the tree to print (0: all). The summary counts all of them.")
@click.option("--full", is_flag=True, help="Show full transaction and author ids.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the lineage as JSON: the root and every transaction in it.")
def ledger_lineage(state_dir: Path, cid: str, depth: int, full: bool, as_json: bool) -> None:
    """Show where a checkpoint came from: what it merged and what it trained on.

    CID is the checkpoint's transaction id, or the CID of the checkpoint file
    it announced (any CID form; the first announcement in the ledger's order
    counts). The tree lists the checkpoints it merged ("merged", its base,
    recursively) and the data chunks each trained on ("trained on").
    A checkpoint met twice is expanded once ("shown above"). In a pruned
    ledger a checkpoint that is no longer kept is shown as pruned, with where
    the last prune cut: the history goes no further there.

    \b
    Examples:
      learnae ledger lineage ./swarm bafyreia...      (checkpoint transaction id)
      learnae ledger lineage ./swarm bafybeib...      (checkpoint file CID)
    """
    from learnae.identity import author_id

    _state_tangle(state_dir)
    with reasons():
        tangle, _ = open_tangle(state_dir, read_only=True)
        with tangle:
            root, note = _resolve_checkpoint(tangle, cid)
            lineage = tangle.lineage(root)
            pruning = tangle.pruning()
            # Data is never pruned; a checkpoint merged into a kept one and missing from a pruned
            # ledger went with the pruned history (or never reached this ledger before that).
            merged = {b for tx in lineage.values() if tx is not None and tx.kind == "checkpoint"
                      for b in tx.links("base")}
            pruned = {i for i, tx in lineage.items() if tx is None and (tangle.is_pruned(i) or (
                pruning["last_cutoff_ms"] is not None and i in merged))}
    ident = (lambda s: s) if full else short_id
    if as_json:
        click.echo(json.dumps({"root": root, "transactions": [
            {"id": i, "stored": tx is not None} | ({"pruned": i in pruned} if tx is None else _tx_json(tx))
            for i, tx in lineage.items()]}, indent=2))
        return
    if note:
        click.echo(note)
    cut_at = "" if pruning["last_cutoff_ms"] is None else f"before {_when(pruning['last_cutoff_ms'])} UTC"

    def describe(tx_id_: str) -> str:
        tx = lineage.get(tx_id_)
        if tx is None and tx_id_ in pruned:
            return f"{ident(tx_id_)}  (pruned: history stops here; this ledger cut checkpoints {cut_at})"
        if tx is None:
            return f"{ident(tx_id_)}  (not in this ledger)"
        by = f"by {ident(author_id(tx.author))}  {_when(tx.time)}"
        p = tx.payload
        if tx.kind == "checkpoint":
            metrics = " ".join(f"{k} {v:.4g}" for k, v in sorted(p["metrics"].items()))
            return (f"checkpoint {ident(tx_id_)}  step {p['step']}  samples {p['samples']}"
                    f"{'  ' + metrics if metrics else ''}  file {ident(p['cid'])}  {by}")
        if tx.kind == "data":
            return f"data {ident(tx_id_)}  rows {p['rows']}  seq {p['seq']}  file {ident(p['cid'])}  {by}"
        return f"{tx.kind} {ident(tx_id_)}  {by}"

    def children(tx_id_: str) -> list[tuple[str, str, bool]]:
        tx = lineage.get(tx_id_)
        if tx is None or tx.kind != "checkpoint":
            return []
        kids = [("merged", b) for b in tx.links("base")] + [("trained on", d) for d in tx.links("data")]
        return [(role, kid, n == len(kids) - 1) for n, (role, kid) in enumerate(kids)]

    # Depth-first, with an explicit stack: a long-lived swarm's lineage is thousands deep.
    lines = [describe(root)]
    expanded = {root}
    stack = [(iter(children(root)), "", 1)]
    while stack:
        it, prefix, level = stack[-1]
        item = next(it, None)
        if item is None:
            stack.pop()
            continue
        role, kid, last = item
        seen = kid in expanded
        kids = [] if seen else children(kid)
        cut = bool(kids) and depth > 0 and level >= depth
        mark = "  (shown above)" if seen else "  (… more below: raise --depth)" if cut else ""
        lines.append(f"{prefix}{'└── ' if last else '├── '}{role}: {describe(kid)}{mark}")
        if kids and not cut:
            expanded.add(kid)
            stack.append((iter(kids), prefix + ("    " if last else "│   "), level + 1))
    click.echo("\n".join(lines))
    kinds = Counter(tx.kind if tx is not None else "pruned" if i in pruned else "missing"
                    for i, tx in lineage.items())
    click.echo(f"\n{kinds['checkpoint']} checkpoints and {kinds['data']} data chunks in this lineage"
               + (f"; {kinds['pruned']} pruned (checkpoints {cut_at})" if kinds["pruned"] else "")
               + (f"; {kinds['missing']} not in this ledger" if kinds["missing"] else ""))


def _resolve_checkpoint(tangle: Tangle, text: str) -> tuple[str, str]:
    """A checkpoint transaction id from a tx id or a content CID, and a note for the user.

    Raises:
        ConfigError: ``text`` names no checkpoint in ``tangle``.
    """
    from learnae.content import to_v1
    from learnae.errors import ConfigError, InvalidCID
    from learnae.ledger.tx import decode_tx, tx_link

    try:
        tx_link(text)
        is_tx = True
    except InvalidCID:
        is_tx = False
    if is_tx:
        tx = tangle.get(text)
        if tx is None:
            raise ConfigError(f"transaction {text} is not in this ledger")
        if tx.kind != "checkpoint":
            raise ConfigError(f"transaction {text} is a {tx.kind}, not a checkpoint")
        return text, ""
    try:
        content = to_v1(text)
    except InvalidCID:
        raise ConfigError(f"{text!r} is neither a transaction id nor a content CID") from None
    needle = content.encode()
    claims = [tx for tx in (decode_tx(raw) for _, raw in tangle.iter_raw() if needle in raw)
              if tx.kind == "checkpoint" and tx.payload["cid"] == content]
    if not claims:
        raise ConfigError(f"no checkpoint in this ledger announces file {content}")
    owner = tangle.owner(content)
    chosen = min(claims, key=lambda tx: (tx.author != owner, tx.time, tx.id))
    note = "" if len(claims) == 1 else (
        f"note: {len(claims)} checkpoint transactions announce {content}; showing the first in"
        f" the ledger's order ({chosen.id}); the others: {', '.join(t.id for t in claims if t != chosen)}\n")
    return chosen.id, note


@ledger_group.command("export")
@click.argument("state_dir", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["dot", "json"]), default="json", show_default=True,
              help="dot: a Graphviz graph (boxes labelled kind, author, id; arrows from each "
                   "transaction to the ones it approves). json: every transaction decoded.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default="-",
              help="File to write (default: standard output).")
def ledger_export(state_dir: Path, fmt: str, output: str) -> None:
    """Export the whole ledger (the DAG of transactions) in the tangle's order.

    The order is by height, then id: the same on every node that holds the
    same transactions, parents always before children. In JSON, ids are
    strings, authors are author ids (z6Mk...), signatures and other bytes hex,
    and links inside payloads (a checkpoint's base and data) transaction ids.

    \b
    Examples:
      learnae ledger export ./swarm --format json -o ledger.json
      learnae ledger export ./swarm --format dot | dot -Tsvg > tangle.svg
    """
    from learnae.identity import author_id

    _state_tangle(state_dir)
    with reasons():
        tangle, _ = open_tangle(state_dir, read_only=True)
        with tangle, click.open_file(output, "w", atomic=output != "-") as out:
            ids = tangle.order()
            if fmt == "json":
                out.write("[")
                for n, i in enumerate(ids):
                    out.write(("\n" if n == 0 else ",\n") + json.dumps(_tx_json(tangle.get(i))))
                out.write("\n]\n")
                return
            out.write('digraph tangle {\n  rankdir=RL;\n  node [shape=box, style=filled,'
                      ' fontname="monospace", fontsize=10];\n')
            for i in ids:
                tx = tangle.get(i)
                assert tx is not None  # every id of order() is stored
                color = _DOT_COLORS.get(tx.kind, "white")
                label = f"{tx.kind}\\n{short_id(author_id(tx.author))}\\n{short_id(tx.id)}"
                out.write(f'  "{tx.id}" [label="{_dot_text(label)}", fillcolor="{color}"];\n')
                for parent in tx.parents:
                    out.write(f'  "{tx.id}" -> "{parent}";\n')
            out.write("}\n")


PRUNE_WINDOW = "1h"
"""``ledger prune``'s default window: a node's default ``--ledger-window`` (3600 s)."""
PRUNE_KEEP = 16
"""``ledger prune``'s default checkpoints per author: a node's default ``--ledger-keep``."""
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?")
_DURATION_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, None: 1000}


def parse_duration(text: str) -> int:
    """Milliseconds from ``"90s"``, ``"30m"``, ``"1h"``, ``"2d"``, ``"500ms"`` or ``"3600"`` (seconds).

    Raises:
        click.BadParameter: anything else.
    """
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise click.BadParameter(f"{text!r} is not a duration; write e.g. 90s, 30m, 1h or 2d")
    return round(float(match[1]) * _DURATION_MS[match[2]])


@ledger_group.command("prune")
@click.argument("state_dir", type=click.Path(path_type=Path))
@click.option("--window", default=PRUNE_WINDOW, show_default=True, metavar="DURATION",
              help="Checkpoint history to keep: older checkpoints go, beyond each author's newest."
                   " 90s, 30m, 1h, 2d; a bare number is seconds.")
@click.option("--keep-per-author", type=click.IntRange(1), default=PRUNE_KEEP, show_default=True,
              help="Checkpoints kept per author at most, within the window (its newest always).")
def ledger_prune(state_dir: Path, window: str, keep_per_author: int) -> None:
    """Prune a stopped node's ledger: old checkpoint transactions go.

    Kept: the genesis, every data transaction, each author's newest
    checkpoint, its newest --keep-per-author checkpoints of the last --window,
    and each author's newest snapshot. Everything else is deleted. Pruned
    transactions that kept ones approve stay as entry points (id, time and
    height), so the kept ones still verify and peers may still approve them.
    Data ownership and the order of what is kept do not change.

    A running node prunes its own ledger (`learnae node run --ledger-window
    --ledger-keep`): this command refuses while a node runs on STATE_DIR. The
    file keeps its size; SQLite reuses the freed pages for new transactions.

    \b
    Examples:
      learnae ledger prune ./swarm
      learnae ledger prune ./swarm --window 30m --keep-per-author 4
      learnae ledger verify ./swarm        (then check what is kept)
    """
    import fcntl

    window_ms = parse_duration(window)
    path = _state_tangle(state_dir)
    with open(StateDir(state_dir).lock, "a+") as lock, reasons():
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise Refused(f"a learnae node is running on {state_dir}: it prunes its own ledger (see"
                          " --ledger-window and --ledger-keep of `learnae node run`); stop it first"
                          " to prune by hand") from None
        tangle, _ = open_tangle(state_dir)
        with tangle:
            before = tangle.count()
            stats = tangle.prune(int(time.time() * 1000), window_ms=window_ms, keep_per_author=keep_per_author)
            counts = ", ".join(f"{k} {v}" for k, v in tangle.counts().items())
    click.echo(f"pruned {stats.pruned} of {before} transactions in {stats.seconds:.1f} s: checkpoints"
               f" before {_when(stats.cutoff_ms)} UTC, and beyond the newest {keep_per_author} per author"
               f" (each author's newest kept)")
    click.echo(f"kept {stats.kept} ({counts}); {stats.frontier} entry points ({path})")


_DOT_COLORS = {"genesis": "gold", "checkpoint": "lightblue", "data": "palegreen", "snapshot": "plum",
               "attestation": "lightgrey", "admit": "orange", "revoke": "tomato"}


def _dot_text(text: str) -> str:
    return text.replace('"', '\\"')


def _tx_json(tx: Any) -> dict[str, Any]:
    """A transaction as JSON-safe values (see ``learnae ledger export --help``)."""
    from learnae.identity import author_id

    return {
        "id": tx.id, "v": 1, "swarm": tx.swarm, "kind": tx.kind, "author": author_id(tx.author),
        "parents": list(tx.parents), "time": tx.time, "payload": _json_safe(tx.payload),
        "nonce": tx.nonce, "sig": tx.sig.hex(),
    }


def _json_safe(value: Any) -> Any:
    from learnae.ledger.tx import TX_CID_PREFIX, tx_id

    if isinstance(value, bytes):
        if len(value) == 36 and value.startswith(TX_CID_PREFIX):
            return tx_id(value)
        return value.hex()
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
