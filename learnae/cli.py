"""The ``learnae`` command line (click).

Each subcommand is a thin surface over the layers below it; run ``learnae --help``
or ``learnae COMMAND --help`` for what each does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from learnae import __version__
from learnae.models import MODELS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="learnae")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """learnae: train one neural network together, peer to peer, with no server.

    Volunteer nodes train a shared Keras model on their own data, publish
    checkpoints to IPFS, record them in a tangle ledger and merge each other's
    work. Start with `make demo`, or see `learnae COMMAND --help`.
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command("cid")
@click.option("--cid-version", type=click.Choice(["0", "1"]), default="0", show_default=True,
              help="0: Kubo's default DAG (dag-pb leaves, 'Qm...'); "
                   "1: raw leaves, as `ipfs add --cid-version=1` ('baf...').")
@click.option("--base32", is_flag=True,
              help="Show the CID as CIDv1 base32, the form learnae's ledger and API use "
                   "(with --cid-version 0: the same DAG as 'Qm...', spelled 'bafybei...').")
@click.argument("files", nargs=-1, required=True, metavar="FILE...",
                type=click.Path(exists=True, dir_okay=False, allow_dash=True))
def cid_command(cid_version: str, base32: bool, files: tuple[str, ...]) -> None:
    """Print the CID of each FILE, one per line, as `ipfs add --only-hash -q` would.

    Nothing is stored or sent: the CID is computed locally, streaming, with
    Kubo's defaults (256 KiB chunks, balanced DAG, at most 174 links per node).
    Use - to read standard input. The CIDs learnae publishes are the default
    ones shown with --base32.
    """
    from learnae.content import file_cid, to_v1

    for name in files:
        try:
            with click.open_file(name, "rb") as stream:
                cid = file_cid(stream, cid_version=int(cid_version))
        except OSError as exc:
            raise click.FileError(name, exc.strerror or str(exc)) from exc
        click.echo(to_v1(cid) if base32 else cid)


# Swarm creation and the ledger --------------------------------------------------------------
class _Refused(click.ClickException):
    """A configuration or ledger problem the user can fix: the reason, exit status 2."""

    exit_code = 2


@contextmanager
def _reasons() -> Iterator[None]:
    """Turn learnae's typed errors into a clean message and exit status 2."""
    from learnae.errors import LearnaeError

    try:
        yield
    except LearnaeError as exc:
        raise _Refused(exc.reason) from None


@main.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", required=True, help="Swarm name (1-64 printable characters).")
@click.option("--model", required=True, metavar="NAME|MODEL.json",
              help=f"The shared model: a known name ({', '.join(MODELS)}) or a file holding "
                   "a Keras JSON config (model.to_json()). Lambda and custom layers are refused.")
@click.option("--pow-bits", type=click.IntRange(0, 32), default=None,
              help="Proof-of-work bits every transaction needs (0-32; default 12). Each "
                   "transaction then costs about 2**N sha2-256 hashes.")
@click.option("--admission", default="open", show_default=True, metavar="open|KEYS.txt",
              help="Who may publish: 'open' for everyone, or a file with one author id "
                   "(z6Mk...) per line, '#' comments. The founder is always admitted.")
@click.option("--listen", default="127.0.0.1:0", show_default=True, metavar="HOST:PORT",
              help="Where the founder's node listens (saved in node.json; port 0: any free port).")
@click.option("--bootstrap", multiple=True, metavar="MULTIADDR",
              help="A peer to put in the invite, /ip4/.../tcp/.../p2p/<peer id> (repeatable). "
                   "May be left empty: the founder's node address can be added to the invite "
                   "once it runs.")
@click.option("--merge", type=click.Choice(["mean", "age", "median", "trimmed", "krum", "multikrum"]),
              default=None, help="Merge rule (default mean; median, trimmed, krum and multikrum "
                                 "resist poisoned checkpoints).")
@click.option("--merge-param", multiple=True, metavar="KEY=VALUE",
              help="A parameter of the merge rule (repeatable), e.g. beta=0.2 for trimmed, "
                   "f=1 for krum, f=1 --merge-param m=3 for multikrum. VALUE is read as JSON "
                   "if it parses (3, 0.1, true), else as text.")
@click.option("--optimizer", type=click.Choice(["adam", "sgd", "rmsprop"]), default=None,
              help="Optimizer every node compiles the model with (default adam).")
@click.option("--learning-rate", type=float, default=None, help="Learning rate (default 0.001).")
@click.option("--batch-size", type=int, default=None, help="Examples per batch (default 32).")
@click.option("--sync-every", type=int, default=None,
              help="Batches of local training between two publish/merge steps (default 50).")
@click.option("--sync-interval", type=float, default=None,
              help="Seconds between a node's timed sync work (default 30).")
def init_command(directory: Path, name: str, model: str, pow_bits: int | None, admission: str,
                 listen: str, bootstrap: tuple[str, ...], merge: str | None,
                 merge_param: tuple[str, ...], optimizer: str | None,
                 learning_rate: float | None, batch_size: int | None, sync_every: int | None,
                 sync_interval: float | None) -> None:
    """Create a new swarm in DIRECTORY: its genesis, keys, ledger and invite.

    Writes genesis.tx (the genesis transaction, whose payload is the manifest),
    manifest.json (the same manifest, readable), swarm.key (the private network's
    key, mode 0600), identity.key (your Ed25519 key as founder, mode 0600),
    tangle.sqlite (the ledger, holding the genesis), invite.json (what joining
    nodes and sensors need; mode 0600, it holds the swarm key) and node.json.
    Refuses a directory that already holds a swarm.

    \b
    Examples:
      learnae init ./swarm --name digits --model digits-mlp
      learnae init ./lab --name lab --model my_model.json --admission members.txt --merge median
    """
    from learnae.manifest import Manifest, init_swarm, read_admission_file
    from learnae.models import model_config

    with _reasons():
        fields: dict[str, Any] = {
            "pow_bits": pow_bits, "merge": merge, "optimizer": optimizer,
            "learning_rate": learning_rate, "batch_size": batch_size, "sync_every": sync_every,
            "sync_interval": sync_interval,
        }
        fields = {k: v for k, v in fields.items() if v is not None}
        if merge_param:
            fields["merge_params"] = dict(_key_value(p, merge) for p in merge_param)
        if admission != "open":
            fields["admission"] = read_admission_file(admission)
        manifest = Manifest(name=name, model=model_config(model), **fields)
        made = init_swarm(directory, manifest, bootstrap=bootstrap, listen=listen)
    m, files = made.manifest, made.files
    admitted = "open" if m.admission == "open" else f"{len(m.admission)} author ids"
    click.echo(f"Created swarm {m.name!r} in {made.directory}")
    for label, text in (
        ("genesis", f"{made.genesis.id}  ({files['genesis'].name}, {files['manifest'].name})"),
        ("model", f"{model}: input {list(m.input_shape)} {m.dtype}, {m.classes} classes;"
                  f" {m.optimizer} lr {m.learning_rate:g}, batch {m.batch_size}, merge {m.merge}"),
        ("rules", f"pow {m.pow_bits} bits, admission {admitted}, tx limit {m.limits.tx_bytes} bytes"),
        ("founder", f"{made.founder.author_id}  ({files['identity'].name}, keep it private)"),
        ("swarm key", f"{files['swarm_key'].name}  (anyone holding it can enter the network)"),
        ("ledger", f"{files['tangle'].name}  (see `learnae ledger show {made.directory}`)"),
        ("invite", f"{files['invite'].name}  ({len(made.invite.bootstrap)} bootstrap peers;"
                   " holds the swarm key: share it only with members)"),
    ):
        click.echo(f"  {label:<10}{text}")
    click.echo(
        "\nNext: start the founder's node with\n"
        f"  learnae node run --invite {files['invite']} --state {made.directory}\n"
        "then give invite.json to the nodes that join; each starts with\n"
        "  learnae node run --invite invite.json --state ITS_OWN_DIR"
    )


def _key_value(text: str, rule: str | None) -> tuple[str, Any]:
    """Parse one ``--merge-param KEY=VALUE`` of merge rule ``rule`` (None: the default).

    Raises:
        ConfigError: ``text`` is not KEY=VALUE; the message names the rule's parameters
            (as :func:`learnae.merge.check_params` knows them).
    """
    from learnae.errors import ConfigError
    from learnae.manifest import DEFAULT_MERGE
    from learnae.merge import MergeError, check_params

    key, sep, value = text.partition("=")
    if not sep or not key:
        rule = rule or DEFAULT_MERGE
        try:  # check_params names the rule's parameters when given one it does not take
            check_params(rule, {text: None})
            hint = ""
        except MergeError as exc:
            hint = f" ({exc.reason})"
        raise ConfigError(f"--merge-param {text!r} must be KEY=VALUE, KEY a parameter of merge"
                          f" rule {rule!r}{hint}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


@main.group("ledger")
def ledger_group() -> None:
    """Read a swarm's ledger (the tangle) from a state directory.

    STATE_DIR is the directory `learnae init` made or a node runs in; the ledger
    is STATE_DIR/tangle.sqlite. These commands only read it, and can run while
    the node is running.

    \b
    Examples:
      learnae ledger show ./swarm
      learnae ledger verify ./swarm
      learnae ledger export ./swarm --format dot -o tangle.dot && dot -Tsvg tangle.dot > tangle.svg
    """


def _state_tangle(state_dir: Path) -> Path:
    """The ledger file of STATE_DIR, or a clear error (exit 2)."""
    from learnae.manifest import TANGLE_FILE

    if not state_dir.is_dir():
        raise _Refused(f"state directory {state_dir} does not exist (make one with "
                       f"`learnae init {state_dir} --name NAME --model MODEL`)")
    path = state_dir / TANGLE_FILE
    if not path.is_file():
        raise _Refused(f"{state_dir} holds no ledger ({TANGLE_FILE}); is it a learnae state "
                       "directory?")
    return path


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


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
    from learnae.manifest import open_tangle, short_author, short_id

    _state_tangle(state_dir)
    with _reasons():
        tangle, manifest = open_tangle(state_dir, read_only=True)
        with tangle:
            latest = [decode_tx(raw) for _, raw in deque(tangle.iter_raw(), maxlen=last)] if last else []
            info = {
                "swarm": tangle.swarm, "name": manifest.name, "count": tangle.count(),
                "counts": tangle.counts(), "tips": tangle.tips(), "pending": tangle.pending,
                "missing": tangle.missing_parents(), "pow_bits": tangle.pow_bits,
                "max_tx_bytes": tangle.max_tx_bytes,
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
    if latest:
        click.echo(f"\nlatest {len(latest)} (newest first)")
        click.echo(f"  {'TIME (UTC)':<19}  {'KIND':<10}  {'AUTHOR':<13}  ID")
        for tx in reversed(latest):
            click.echo(f"  {_when(tx.time):<19}  {tx.kind:<10}  {short_author(tx.author):<13}  {tx.id}")


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
        raise _Refused(state["error"])
    problems, count = state["problems"], state["count"]
    elapsed = time.monotonic() - start
    if not problems:
        click.echo(f"ok: {count} transactions verified in {elapsed:.1f} s ({path})")
        return
    click.echo(f"FAILED: {len(problems)} problems in {count} transactions ({path}):")
    for problem in problems:
        click.echo(f"  {problem}")
    sys.exit(1)


def _verify_into(state_dir: Path, path: Path, state: dict[str, Any]) -> None:
    """Run in a worker thread (the Tangle is opened and used there only)."""
    from learnae.errors import ConfigError, LearnaeError, TxRejected
    from learnae.ledger.tangle import Tangle
    from learnae.manifest import GENESIS_FILE, open_tangle

    problems: list[str] = []
    try:
        try:
            tangle, manifest = open_tangle(state_dir, read_only=True)
        except (ConfigError, TxRejected) as exc:  # the genesis itself is damaged
            problems.append(f"genesis: {exc.reason}")
            tangle, manifest = Tangle(path, read_only=True), None
        with tangle:
            state["count"] = tangle.count()
            problems += tangle.verify()
            if manifest is not None:
                if tangle.pow_bits != manifest.pow_bits:
                    problems.append(f"ledger: pow_bits {tangle.pow_bits} is not the manifest's {manifest.pow_bits}")
                if tangle.max_tx_bytes != manifest.limits.tx_bytes:
                    problems.append(f"ledger: max_tx_bytes {tangle.max_tx_bytes} is not the"
                                    f" manifest's {manifest.limits.tx_bytes}")
            genesis_file = state_dir / GENESIS_FILE
            if genesis_file.is_file():
                from learnae.ledger.tx import TX_CID_PREFIX, tx_id

                file_id = tx_id(TX_CID_PREFIX + hashlib.sha256(genesis_file.read_bytes()).digest())
                if file_id != tangle.swarm:
                    problems.append(f"{GENESIS_FILE}: holds transaction {file_id}, not the ledger's"
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
    A checkpoint met twice is expanded once ("shown above").

    \b
    Examples:
      learnae ledger lineage ./swarm bafyreia...      (checkpoint transaction id)
      learnae ledger lineage ./swarm bafybeib...      (checkpoint file CID)
    """
    from learnae.identity import author_id
    from learnae.manifest import open_tangle, short_id

    _state_tangle(state_dir)
    with _reasons():
        tangle, _ = open_tangle(state_dir, read_only=True)
        with tangle:
            root, note = _resolve_checkpoint(tangle, cid)
            lineage = tangle.lineage(root)
    ident = (lambda s: s) if full else short_id
    if as_json:
        click.echo(json.dumps({"root": root, "transactions": [
            {"id": i, "stored": tx is not None} | ({} if tx is None else _tx_json(tx))
            for i, tx in lineage.items()]}, indent=2))
        return
    if note:
        click.echo(note)

    def describe(tx_id_: str) -> str:
        tx = lineage.get(tx_id_)
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
    kinds = Counter(tx.kind if tx is not None else "missing" for tx in lineage.values())
    click.echo(f"\n{kinds['checkpoint']} checkpoints and {kinds['data']} data chunks in this lineage"
               + (f"; {kinds['missing']} not in this ledger" if kinds["missing"] else ""))


def _resolve_checkpoint(tangle: Any, text: str) -> tuple[str, str]:
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
    from learnae.manifest import open_tangle, short_id

    _state_tangle(state_dir)
    with _reasons():
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
                color = _DOT_COLORS.get(tx.kind, "white")
                label = f"{tx.kind}\\n{short_id(author_id(tx.author))}\\n{short_id(tx.id)}"
                out.write(f'  "{tx.id}" [label="{_dot_text(label)}", fillcolor="{color}"];\n')
                for parent in tx.parents:
                    out.write(f'  "{tx.id}" -> "{parent}";\n')
            out.write("}\n")


_DOT_COLORS = {"genesis": "gold", "checkpoint": "lightblue", "data": "palegreen"}


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


@main.command("demo")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for the swarm's state, report.json and accuracy.png (default: a new temporary one).")
@click.option("--nodes", type=click.IntRange(1, 16), default=None,
              help="Trainer nodes (default: 4; 3 with --in-process).")
@click.option("--sensors", type=click.IntRange(0, 8), default=2, show_default=True,
              help="Sensor processes streaming their own part of the data as new labelled rows.")
@click.option("--dataset", default="digits", show_default=True, metavar="digits|wine|breast_cancer|iris|PATH.npz",
              help="Data set (a bundled scikit-learn set, or a .npz/.csv file of x and y).")
@click.option("--partition", default="dirichlet:0.5", show_default=True, metavar="iid|dirichlet:A",
              help="How the training part is split among nodes and sensors.")
@click.option("--merge", type=click.Choice(["mean", "median", "trimmed", "krum"]), default="mean",
              show_default=True, help="The swarm's merge rule.")
@click.option("--duration", type=click.FloatRange(1, 3600), default=30, show_default=True,
              help="Seconds of training before every process is stopped (start-up and baselines come on top).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the data split and models.")
@click.option("--in-process", is_flag=True,
              help="Quick variant: every node in this one process, in lock-step rounds (--rounds), no sensors.")
@click.option("--rounds", type=click.IntRange(1, 100), default=15, show_default=True,
              help="Rounds of train one epoch, publish, merge (--in-process only).")
def demo_command(out: Path | None, nodes: int | None, sensors: int, dataset: str, partition: str, merge: str,
                 duration: float, seed: int, in_process: bool, rounds: int) -> None:
    """Run a local swarm of trainers and sensors on real data and report against baselines.

    NODES `learnae node run` processes (default 4), each with its own state
    directory and embedded IPFS node in one private swarm on 127.0.0.1, train a
    Keras MLP on a Dirichlet(0.5) shard of scikit-learn's digits, publishing
    checkpoints and merging their peers' as they go. SENSORS `learnae sensor
    run` processes (default 2) stream another part of the data as signed,
    labelled chunks through a node, and every node adopts them. A live table
    shows each node's step, accuracy, peers, merges and adopted chunks.

    After --duration seconds every process is stopped, and the report puts each
    node's accuracy on a common test split next to three baselines on the same
    split, model and epochs: centralized, local-only and FedAvg. It writes
    report.json and accuracy.png into --out. Exit status 1 unless every node
    beat its local-only baseline. Ctrl+C stops every process (exit 130).

    \b
    Examples:
      learnae demo                           # 4 nodes, 2 sensors, digits, about 2 min
      learnae demo --dataset wine --out wine-demo
      learnae demo --in-process --rounds 8   # 3 nodes in one process, about 20 s
    """
    import tempfile

    if out is None:
        out = Path(tempfile.mkdtemp(prefix="learnae-demo-"))
    elif out.exists() and any(out.iterdir()):
        raise click.UsageError(f"{out} is not empty; give a new directory to --out")
    click.echo(f"learnae demo in {out}")
    if in_process:
        if nodes is not None and nodes < 2:
            raise click.UsageError("the in-process demo needs --nodes >= 2")
        from learnae.local.demo import main as demo_main

        with _reasons():
            raise SystemExit(demo_main(out, nodes or 3, rounds, seed))
    from learnae.local.procdemo import main as process_demo_main

    with _reasons():
        raise SystemExit(process_demo_main(out, nodes=nodes or 4, sensors=sensors, dataset=dataset,
                                           partition=partition, merge=merge, duration=duration, seed=seed))


# The trainer node ---------------------------------------------------------------------------
@main.group("node")
def node_group() -> None:
    """Run a trainer node: train the swarm's model on your data, share checkpoints.

    \b
    Example:
      learnae node run --invite invite.json --state ~/.learnae/node \\
          --data digits:shard=0/3,partition=dirichlet:0.5
    """


_TOML_KEYS = {"invite": "invite_path", "data": "data_spec"}


def _node_config_file(ctx: click.Context, _param: click.Parameter, path: str | None) -> str | None:
    """--config: read a node.toml and make its keys the options' defaults (options given on the
    command line still win)."""
    import tomllib

    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="--config") from None
    names = {p.name for p in ctx.command.params}
    defaults = {}
    for key, value in table.items():
        name = _TOML_KEYS.get(key, key.replace("-", "_"))
        if name not in names or name == "config":
            raise click.BadParameter(f"{path}: unknown key {key!r}", param_hint="--config")
        defaults[name] = [str(v) for v in value] if isinstance(value, list) else value
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return path


@node_group.command("run")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), is_eager=True, expose_value=False,
              callback=_node_config_file, help="A node.toml whose keys set the options below (see nodes/node.toml).")
@click.option("--invite", "invite_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The swarm's invite file (from `learnae init`).")
@click.option("--state", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="State directory: keys, ledger, IPFS repo, last checkpoint (created; reuse it to resume).")
@click.option("--data", "data_spec", required=True, metavar="SPEC",
              help="Data to train on, e.g. digits:shard=0/3,partition=dirichlet:0.5 or rows.csv.")
@click.option("--listen", default=None, metavar="HOST:PORT",
              help="Where the embedded IPFS node listens (port 0: any free port; default: STATE/node.json's "
                   "listen, else 127.0.0.1:0).")
@click.option("--peer", "peers", multiple=True, metavar="MULTIADDR",
              help="A peer to keep connected (.../p2p/<peer id>); repeat for more. The invite's "
                   "bootstrap peers are always dialled.")
@click.option("--ipfs", default="embedded", show_default=True, metavar="embedded|rpc:URL",
              help="IPFS backend: Kubo inside this process, or a Kubo daemon's RPC API.")
@click.option("--allow-shared-daemon", is_flag=True,
              help="With --ipfs rpc:URL, use a Kubo daemon that is not set up for a private swarm as it"
                   " is: anyone on the IPFS network can then fetch what the node adds (without this"
                   " flag the node refuses it and lists the `ipfs config` commands that fix it).")
@click.option("--api", default="127.0.0.1:0", show_default=True, metavar="HOST:PORT|off",
              help="HTTP API address (GET /status, /metrics, /ledger/tips); the URL goes to STATE/api.json.")
@click.option("--threads", type=click.IntRange(1, 256), default=1, show_default=True,
              help="TensorFlow intra-op threads (CPU cores used for training).")
@click.option("--keep", type=click.IntRange(1, 1000), default=3, show_default=True,
              help="Own checkpoints kept pinned in the IPFS repo; older ones are unpinned.")
@click.option("--k", "k", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Merge with up to K peer checkpoints at a time.")
@click.option("--fetch-timeout", type=click.FloatRange(0.1), default=20.0, show_default=True,
              help="Seconds to wait for a peer's checkpoint.")
@click.option("--sync-every", default=None, metavar="N|epoch",
              help="Batches between checkpoints, or 'epoch' for one per pass over the data (merges then "
                   "weigh nodes by their data size); default: the swarm's manifest.")
@click.option("--epochs", type=click.IntRange(1), default=None,
              help="Stop after this many epochs (default: run until SIGINT/SIGTERM).")
@click.option("--seed", type=int, default=None, help="Model initialization seed (default: random).")
@click.option("--wait-peers", type=click.IntRange(0), default=0, show_default=True,
              help="Wait until this many peers are connected before training.")
@click.option("--network-nice", type=click.IntRange(0, 19), default=10, show_default=True,
              help="Run the network side (publishing, merging, IPFS) this many nice steps below "
                   "training, so training comes first when the CPU is short (Linux; 0: same priority).")
@click.option("--adopt", default="all", show_default=True, metavar="all|AUTHORS.txt|none",
              help="Sensors' data chunks to train on: all, none, or those by the authors listed in a file"
                   " (one author key, hex, or author id z6Mk... a line).")
@click.option("--adopt-max-rows", type=click.IntRange(1), default=50_000, show_default=True,
              help="Adopted sensor rows the training pool keeps at most: a uniform random sample of every"
                   " row adopted (reservoir sampling); all adopted chunks stay on disk in"
                   " STATE/adopted.sqlite, so a restart refills the pool without fetching them again.")
@click.option("--quiet", is_flag=True, help="No progress line.")
@click.option("--new-identity", is_flag=True,
              help="Make a new author key although STATE ran a node before and lost identity.key (the"
                   " node refuses to start otherwise: restore the key from a backup if you can; the"
                   " ledger credits the old key's work to it).")
@click.option("--fault-control", type=click.Path(dir_okay=False, path_type=Path), default=None, hidden=True,
              help="Fault harness only: apply the fault layer's rules from this control file.")
def node_run(invite_path: Path, state: Path, data_spec: str, listen: str | None, peers: tuple[str, ...], ipfs: str,
             api: str, threads: int, keep: int, k: int, fetch_timeout: float, sync_every: str | None,
             epochs: int | None, seed: int | None, wait_peers: int, network_nice: int, adopt: str,
             adopt_max_rows: int, quiet: bool, new_identity: bool, fault_control: Path | None,
             allow_shared_daemon: bool) -> None:
    """Train with the swarm until stopped (Ctrl-C or SIGTERM publishes a final checkpoint).

    Progress is one line per epoch: step, loss, accuracy (own held-out data and the
    common test split), peers, merges. Restarting with the same --state resumes from
    the last checkpoint.
    """
    from learnae.api import start_api
    from learnae.manifest import Invite, node_listen
    from learnae.node import NodeConfig, TrainerNode
    from learnae.training.data import DataSpec

    def progress(line: str) -> None:
        click.echo(f"{datetime.now(UTC):%H:%M:%S} {line}", err=False)

    if sync_every is not None and sync_every != "epoch":
        if not sync_every.isdigit() or int(sync_every) < 1:
            raise click.BadParameter("expected a number of batches >= 1, or 'epoch'", param_hint="--sync-every")
        sync_every = int(sync_every)
    with _reasons():
        if listen is None:
            host, port = node_listen(state)
            listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        config = NodeConfig(invite=Invite.load(invite_path), state=state, data=DataSpec.parse(data_spec),
                            listen=listen, peers=peers, ipfs=ipfs, api=None if api == "off" else api,
                            serve=start_api,
                            threads=threads, keep=keep, k=k, fetch_timeout=fetch_timeout, epochs=epochs,
                            seed=seed, sync_every=sync_every, wait_peers=wait_peers, network_nice=network_nice,
                            adopt=adopt, adopt_max_rows=adopt_max_rows,
                            progress=None if quiet else progress, fault_control=fault_control,
                            new_identity=new_identity, allow_shared_daemon=allow_shared_daemon)
        node = TrainerNode(config)
        click.echo(f"learnae node: swarm {config.invite.name} ({config.invite.genesis[:16]}…), state {state}")
        raise SystemExit(node.run())


# The sensor feeder's commands live in their own module so that `learnae sensor ...`
# never imports the trainer's dependencies.
from learnae.sensor_cli import sensor_group  # noqa: E402

main.add_command(sensor_group)

from learnae.faults_cli import faults_group  # noqa: E402

main.add_command(faults_group)
