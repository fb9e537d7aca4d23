"""``learnae node run``: a trainer node (TensorFlow and the node itself load when it runs)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, cast

import click

from learnae.cli._common import reasons
from learnae.invite import Invite
from learnae.ipfs.privnet import REACHABILITY, Reachability
from learnae.node import (
    DEFAULT_FETCH_TIMEOUT,
    DEFAULT_K,
    DEFAULT_KEEP,
    DEFAULT_NETWORK_NICE,
    NodeConfig,
)
from learnae.node.upkeep import DEFAULT_DISK_MAX, format_size, parse_size
from learnae.state import DEFAULT_LISTEN, node_listen
from learnae.training.pool import DEFAULT_MAX_ROWS

#: The node's own defaults for the options that have no constant of their own.
_CONFIG = {f.name: f.default for f in dataclasses.fields(NodeConfig)}


@click.group("node")
def node_group() -> None:
    """Run a trainer node: train the swarm's model on your data, share checkpoints.

    \b
    Example:
      learnae node run --invite invite.json --state ~/.learnae/node \\
          --data digits:shard=0/3,partition=dirichlet:0.5
    """


_TOML_KEYS = {"invite": "invite_path", "data": "data_spec"}


def _node_config_file(ctx: click.Context, _param: click.Parameter, path: str | None) -> str | None:
    """--config: read a node.toml and make its keys the options' defaults.

    Options given on the command line still win.
    """
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
@click.option("--data", "data_spec", default=None, metavar="SPEC",
              help="Data to train on, e.g. digits:shard=0/3,partition=dirichlet:0.5 or rows.csv "
                   "(required, unless --relay).")
@click.option("--relay", is_flag=True,
              help="Run as a relay member: no data, no training. With a public address it lets members behind "
                   "home routers reach each other (relay and hole punching); it also keeps and serves the "
                   "ledger.")
@click.option("--serve-checkpoints/--no-serve-checkpoints", default=True, show_default=True,
              help="With --relay: also hold and serve each member's newest checkpoint, for members whose "
                   "routers defeat hole punching (one download per checkpoint published).")
@click.option("--reachability", type=click.Choice(REACHABILITY), default="auto",
              show_default=True,
              help="Whether others can dial this node: auto lets the swarm find out (AutoNAT); say public "
                   "or private only if you know.")
@click.option("--listen", default=None, metavar="HOST:PORT",
              help="Where the embedded IPFS node listens (port 0: any free port; default: STATE/node.json's "
                   f"listen, else {DEFAULT_LISTEN}).")
@click.option("--peer", "peers", multiple=True, metavar="MULTIADDR",
              help="A peer to keep connected (.../p2p/<peer id>); repeat for more. The invite's "
                   "bootstrap peers are always dialled.")
@click.option("--ipfs", default=_CONFIG["ipfs"], show_default=True, metavar="embedded|rpc:URL",
              help="IPFS backend: Kubo inside this process, or a Kubo daemon's RPC API.")
@click.option("--allow-shared-daemon", is_flag=True,
              help="With --ipfs rpc:URL, use a Kubo daemon that is not set up for a private swarm as it"
                   " is: anyone on the IPFS network can then fetch what the node adds (without this"
                   " flag the node refuses it and lists the `ipfs config` commands that fix it).")
@click.option("--api", default="127.0.0.1:0", show_default=True, metavar="HOST:PORT|off",
              help="HTTP API address (GET /status, /metrics, /ledger/tips); the URL goes to STATE/api.json.")
@click.option("--threads", type=click.IntRange(1, 256), default=_CONFIG["threads"],
              show_default=True, help="TensorFlow intra-op threads (CPU cores used for training).")
@click.option("--keep", type=click.IntRange(1, 1000), default=DEFAULT_KEEP, show_default=True,
              help="Own checkpoints kept pinned in the IPFS repo; older ones are unpinned.")
@click.option("--k", "k", type=click.IntRange(1, 64), default=DEFAULT_K, show_default=True,
              help="Merge with up to K peer checkpoints at a time.")
@click.option("--fetch-timeout", type=click.FloatRange(0.1), default=DEFAULT_FETCH_TIMEOUT,
              show_default=True, help="Seconds to wait for a peer's checkpoint.")
@click.option("--sync-every", default=None, metavar="N|epoch",
              help="Batches between checkpoints, or 'epoch' for one per pass over the data (merges then "
                   "weigh nodes by their data size); default: the swarm's manifest.")
@click.option("--epochs", type=click.IntRange(1), default=None,
              help="Stop after this many epochs (default: run until SIGINT/SIGTERM).")
@click.option("--seed", type=int, default=None, help="Model initialization seed (default: random).")
@click.option("--wait-peers", type=click.IntRange(0), default=_CONFIG["wait_peers"],
              show_default=True, help="Wait until this many peers are connected before training.")
@click.option("--network-nice", type=click.IntRange(0, 19), default=DEFAULT_NETWORK_NICE,
              show_default=True,
              help="Run the network side (publishing, merging, IPFS) this many nice steps below "
                   "training, so training comes first when the CPU is short (Linux; 0: same priority).")
@click.option("--adopt", default=_CONFIG["adopt"], show_default=True, metavar="all|AUTHORS.txt|none",
              help="Sensors' data chunks to train on: all, none, or those by the authors listed in a file"
                   " (one author key, hex, or author id z6Mk... a line).")
@click.option("--adopt-max-rows", type=click.IntRange(1), default=DEFAULT_MAX_ROWS,
              show_default=True,
              help="Adopted sensor rows the training pool keeps at most: a uniform random sample of every"
                   " row adopted (reservoir sampling); all adopted chunks stay on disk in"
                   " STATE/adopted.sqlite, so a restart refills the pool without fetching them again.")
@click.option("--disk-max", default=format_size(DEFAULT_DISK_MAX), show_default=True, metavar="SIZE",
              help="Disk the state directory may take (K, M, G: binary units). The node removes peer"
                   " checkpoints once merged and its own beyond --keep, and prunes the ledger; over the"
                   " budget it says what takes the room and adopts no new data. A budget too small for"
                   " the swarm's model is refused with the least that works.")
@click.option("--ledger-window", type=click.FloatRange(1.0), default=_CONFIG["ledger_window"],
              show_default=True, metavar="SECONDS",
              help="Checkpoint history the ledger keeps; older checkpoint transactions are pruned (data"
                   " and membership transactions are kept for good).")
@click.option("--ledger-keep", type=click.IntRange(1), default=_CONFIG["ledger_keep"], show_default=True,
              help="Checkpoint transactions kept per author at most (each author's newest always).")
@click.option("--snapshot-interval", type=click.FloatRange(1.0), default=_CONFIG["snapshot_interval"],
              show_default=True, metavar="SECONDS",
              help="Seconds between two snapshots of the kept ledger, which nodes joining late import"
                   " instead of the whole history.")
@click.option("--quiet", is_flag=True, help="No progress line.")
@click.option("--new-identity", is_flag=True,
              help="Make a new author key although STATE ran a node before and lost identity.key (the"
                   " node refuses to start otherwise: restore the key from a backup if you can; the"
                   " ledger credits the old key's work to it).")
@click.option("--fault-control", type=click.Path(dir_okay=False, path_type=Path), default=None, hidden=True,
              help="Fault harness only: apply the fault layer's rules from this control file.")
@click.option("--behaviour", type=click.Choice(["lazy"]), default=None, hidden=True,
              help="Fault experiments only: misbehave (lazy: train nothing, publish what was merged"
                   " plus noise).")
def node_run(invite_path: Path, state: Path, data_spec: str | None, relay: bool, serve_checkpoints: bool,
             reachability: str,
             listen: str | None, peers: tuple[str, ...], ipfs: str,
             api: str, threads: int, keep: int, k: int, fetch_timeout: float, sync_every: str | None,
             epochs: int | None, seed: int | None, wait_peers: int, network_nice: int, adopt: str,
             adopt_max_rows: int, disk_max: str, ledger_window: float, ledger_keep: int,
             snapshot_interval: float, quiet: bool, new_identity: bool, fault_control: Path | None,
             behaviour: str | None, allow_shared_daemon: bool) -> None:
    """Train with the swarm until stopped (Ctrl-C or SIGTERM publishes a final checkpoint).

    Progress is one line per epoch: step, loss, accuracy (own held-out data and the
    common test split), peers, merges. Restarting with the same --state resumes from
    the last checkpoint.
    """
    from learnae.api import start_api
    from learnae.node import TrainerNode
    from learnae.training.data import DataSpec

    def progress(line: str) -> None:
        click.echo(f"{datetime.now(UTC):%H:%M:%S} {line}", err=False)

    if (data_spec is None) == (not relay):
        raise click.UsageError("give --data SPEC to train, or --relay to run a relay member (not both)")
    every: int | str | None = sync_every
    if sync_every is not None and sync_every != "epoch":
        if not sync_every.isdigit() or int(sync_every) < 1:
            raise click.BadParameter("expected a number of batches >= 1, or 'epoch'", param_hint="--sync-every")
        every = int(sync_every)
    with reasons():
        if listen is None:
            host, port = node_listen(state)
            listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        config = NodeConfig(invite=Invite.load(invite_path), state=state,
                            data=None if data_spec is None else DataSpec.parse(data_spec),
                            relay=relay, serve_checkpoints=serve_checkpoints,
                            reachability=cast(Reachability, reachability),
                            listen=listen, peers=peers, ipfs=ipfs, api=None if api == "off" else api,
                            serve=start_api,
                            threads=threads, keep=keep, k=k, fetch_timeout=fetch_timeout, epochs=epochs,
                            seed=seed, sync_every=every, wait_peers=wait_peers, network_nice=network_nice,
                            adopt=adopt, adopt_max_rows=adopt_max_rows, disk_max=parse_size(disk_max),
                            ledger_window=ledger_window, ledger_keep=ledger_keep,
                            snapshot_interval=snapshot_interval,
                            progress=None if quiet else progress, fault_control=fault_control,
                            new_identity=new_identity, allow_shared_daemon=allow_shared_daemon,
                            behaviour=cast(Literal["lazy"] | None, behaviour))
        node = TrainerNode(config)
        click.echo(f"learnae node: swarm {config.invite.name} ({config.invite.genesis[:16]}…), state {state}")
        raise SystemExit(node.run())
