"""``learnae admit``, ``learnae revoke`` and ``learnae invite``: who may publish in a swarm."""

from __future__ import annotations

import fcntl
import json
import urllib.error
import urllib.request
from pathlib import Path

import click

from learnae.cli._common import Refused, reasons
from learnae.errors import LearnaeError
from learnae.files import read_json
from learnae.identity import Identity, author_id, parse_author_id
from learnae.invite import Invite
from learnae.ledger.tx import ROLES, admit_payload, revoke_payload
from learnae.state import StateDir, open_tangle

SUBMIT_TIMEOUT = 30.0
"""Seconds ``learnae admit``/``revoke`` wait for the running node's answer."""

_STATE = click.argument("state_dir", metavar="STATE", type=click.Path(path_type=Path, file_okay=False))
_MEMBER = click.argument("member", metavar="AUTHOR_ID")


@click.command("admit")
@_STATE
@_MEMBER
@click.option("--role", type=click.Choice(ROLES), default="node", show_default=True,
              help="node: may publish every kind (checkpoints, data, attestations); sensor: data only.")
def admit_command(state_dir: Path, member: str, role: str) -> None:
    """Admit AUTHOR_ID to a closed swarm: sign an `admit` transaction with STATE's key.

    STATE is the state directory of the founder or of a steward the manifest names
    (its identity.key signs). The member may publish in every transaction that
    approves the admit, directly or not. With stewards and a quorum k, each
    steward's admit is a vote: the admission takes effect with the k-th.

    If a node runs on STATE, the transaction goes to it (POST /ledger/tx, from
    STATE/api.json) and it gossips it at once; otherwise it is stored in STATE's
    ledger and reaches the swarm when that node runs again.

    \b
    Examples:
      learnae admit ./swarm z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK --role sensor
      learnae ledger members ./swarm
    """
    with reasons():
        parse_author_id(member)
        _issue(state_dir, "admit", admit_payload(member, role))


@click.command("revoke")
@_STATE
@_MEMBER
@click.option("--reason", required=True, metavar="TEXT",
              help="Why (kept in the ledger for everyone to read; 1 to 500 printable characters).")
def revoke_command(state_dir: Path, member: str, reason: str) -> None:
    """Revoke AUTHOR_ID: sign a `revoke` transaction with STATE's key.

    Every transaction of the member that approves the revoke is refused from then on,
    by every node, with code `revoked`; its earlier ones stay valid (and still
    verify). Nodes also stop merging its checkpoints and adopting its data. A
    revocation is final for that author id. Signed by the founder, or voted by k
    stewards; the founder cannot be revoked. Delivered as `learnae admit` says.

    \b
    Example:
      learnae revoke ./swarm z6Mkf5rGMoatrSj1f4CyvuHBeXJELe9RPdzo2PKGNCKVtZxP --reason "poisoned checkpoints"
    """
    with reasons():
        parse_author_id(member)
        _issue(state_dir, "revoke", revoke_payload(member, reason))


@click.command("invite")
@_STATE
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Where to write the invite (mode 0600: it holds the swarm key).")
@click.option("--invite", "source", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="The invite this node joined with (default: STATE/invite.json, which `learnae init` wrote).")
def invite_command(state_dir: Path, output: Path, source: Path | None) -> None:
    """Write an invite for a new member: the swarm key, genesis and where to dial.

    The invite adds the addresses of the node that runs (or last ran) on STATE to
    the bootstrap peers, so the newcomer finds the swarm. It is secret: send it the
    way you would send a password. In a closed swarm the newcomer must also be
    admitted: they send you their author id (printed by `learnae node run` and
    `learnae sensor run` at start, and in /status), and you run `learnae admit`.

    \b
    Example:
      learnae invite ./swarm -o alice-invite.json
    """
    paths = StateDir(state_dir)
    with reasons():
        invite = Invite.load(source or paths.invite)
        addrs: list[str] = []
        if paths.addrs.is_file():
            seen = read_json(paths.addrs, "addrs.json")
            addrs = [a if "/p2p/" in a else f"{a}/p2p/{seen['id']}" for a in seen.get("addrs", [])]
        invite = invite.with_bootstrap(a for a in addrs if a not in invite.bootstrap)
        if invite.genesis_tx is None:
            with open_tangle(state_dir, read_only=True)[0] as tangle:
                invite = Invite(**{**invite.__dict__, "genesis_tx": tangle.genesis.raw})
        invite.save(output)
    click.echo(f"wrote {output}: swarm {invite.name}, {len(invite.bootstrap)} bootstrap peers")


def _issue(state_dir: Path, kind: str, payload: dict) -> None:
    """Sign a ``kind`` transaction with STATE's key and deliver it (see ``learnae admit``)."""
    paths = StateDir(state_dir)
    if not paths.identity.is_file():
        raise Refused(f"{state_dir} holds no identity.key: give the state directory of the founder or a steward")
    identity = Identity.load(paths.identity)
    with open(paths.lock, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            _submit(state_dir, identity, kind, payload)
            return
        tangle, _ = open_tangle(state_dir)
        with tangle:
            tx = tangle.append(identity, kind, payload)
    click.echo(f"{kind} {tx.id} stored in {paths.tangle}; no node runs on {state_dir}: the swarm"
               " hears of it when one runs there again")


def _submit(state_dir: Path, identity: Identity, kind: str, payload: dict) -> None:
    """Make the transaction on the running node's ledger and POST it to the node."""
    paths = StateDir(state_dir)
    try:
        url = read_json(paths.api, "api.json")["url"]
    except (LearnaeError, KeyError, TypeError):
        raise Refused(f"a node runs on {state_dir} without its HTTP API (api.json): restart it with"
                      " --api, or stop it and run this again") from None
    tangle, _ = open_tangle(state_dir, read_only=True)
    with tangle:
        tx = tangle.make(identity, kind, payload)
        tangle.check_author(tx)
    request = urllib.request.Request(f"{url}/ledger/tx", data=tx.raw, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=SUBMIT_TIMEOUT) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as exc:
        error = json.loads(exc.read() or b"{}")
        raise Refused(f"the node refused the {kind}: {error.get('reason', exc.reason)}"
                      f" ({error.get('error', exc.code)})") from None
    except OSError as exc:
        raise Refused(f"cannot reach the node on {state_dir} at {url}: {exc}") from None
    click.echo(f"{kind} {tx.id} {answer['status']} by the node on {state_dir}, which gossips it"
               f" (signed by {author_id(identity.public_key)})")

