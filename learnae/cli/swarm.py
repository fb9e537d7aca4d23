"""``learnae init``: create a swarm (genesis, keys, ledger, invite)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from learnae.cli._common import reasons
from learnae.codec import CODECS, LOSSLESS, MAX_BLOCK
from learnae.errors import ConfigError
from learnae.manifest import (
    ADMISSION_OPEN,
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHECKPOINT_INTERVAL,
    DEFAULT_LEARNING_RATE,
    DEFAULT_MERGE,
    DEFAULT_OPTIMIZER,
    DEFAULT_POW_BITS,
    DEFAULT_SYNC_EVERY,
    DEFAULT_SYNC_INTERVAL,
    MAX_NAME,
    MAX_POW_BITS,
    OPTIMIZERS,
    Compression,
    Manifest,
    read_admission_file,
)
from learnae.merge import RULES, MergeError, check_params
from learnae.models import MODELS
from learnae.state import DEFAULT_LISTEN, init_swarm


@click.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", required=True, help=f"Swarm name (1-{MAX_NAME} printable characters).")
@click.option("--model", required=True, metavar="NAME|MODEL.json",
              help=f"The shared model: a known name ({', '.join(MODELS)}) or a file holding "
                   "a Keras JSON config (model.to_json()). Lambda and custom layers are refused.")
@click.option("--pow-bits", type=click.IntRange(0, MAX_POW_BITS), default=None,
              help=f"Proof-of-work bits every transaction needs (0-{MAX_POW_BITS}; default"
                   f" {DEFAULT_POW_BITS}). Each "
                   "transaction then costs about 2**N sha2-256 hashes.")
@click.option("--admission", default=ADMISSION_OPEN, show_default=True,
              metavar=f"{ADMISSION_OPEN}|KEYS.txt",
              help=f"Who may publish: '{ADMISSION_OPEN}' for everyone, or a file with one author id "
                   "(z6Mk...) per line, '#' comments. The founder is always admitted.")
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, metavar="HOST:PORT",
              help="Where the founder's node listens (saved in node.json; port 0: any free port).")
@click.option("--bootstrap", multiple=True, metavar="MULTIADDR",
              help="A peer to put in the invite, /ip4/.../tcp/.../p2p/<peer id> (repeatable). "
                   "May be left empty: the founder's node address can be added to the invite "
                   "once it runs.")
@click.option("--merge", type=click.Choice(RULES), default=None,
              help=f"Merge rule (default {DEFAULT_MERGE}; median, trimmed, krum and multikrum "
                   "resist poisoned checkpoints).")
@click.option("--merge-param", multiple=True, metavar="KEY=VALUE",
              help="A parameter of the merge rule (repeatable), e.g. beta=0.2 for trimmed, "
                   "f=1 for krum, f=1 --merge-param m=3 for multikrum. VALUE is read as JSON "
                   "if it parses (3, 0.1, true), else as text.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=None,
              help=f"Optimizer every node compiles the model with (default {DEFAULT_OPTIMIZER}).")
@click.option("--learning-rate", type=float, default=None,
              help=f"Learning rate (default {DEFAULT_LEARNING_RATE}).")
@click.option("--batch-size", type=int, default=None,
              help=f"Examples per batch (default {DEFAULT_BATCH_SIZE}).")
@click.option("--sync-every", type=int, default=None,
              help="Batches of local training between two publish/merge steps"
                   f" (default {DEFAULT_SYNC_EVERY}).")
@click.option("--sync-interval", type=float, default=None,
              help=f"Seconds between a node's timed sync work (default {DEFAULT_SYNC_INTERVAL:g}).")
@click.option("--checkpoint-interval", type=float, default=None,
              help="Least seconds between two checkpoints of one node (default"
                   f" {DEFAULT_CHECKPOINT_INTERVAL:g}: a 100-node swarm then announces about 3"
                   " checkpoints a second; 0 paces by batches only).")
@click.option("--codec", type=click.Choice(CODECS), default=LOSSLESS, show_default=True,
              help="How checkpoints travel: float32 exact; float16 half the bytes; int8 and int4"
                   " blockwise quantization, about a quarter and an eighth (see docs/benchmarks.md,"
                   " bytes to accuracy).")
@click.option("--delta-codec", type=click.Choice(CODECS), default=None,
              help="Send deltas against each member's last keyframe in this codec (int4 is made for"
                   " it); default: every checkpoint is full.")
@click.option("--keyframe-every", type=click.IntRange(1, 10_000), default=8, show_default=True,
              help="With --delta-codec: every this many checkpoints of a member is a full one.")
@click.option("--quant-block", type=click.IntRange(1, MAX_BLOCK), default=64, show_default=True,
              help="Values per scale of the int8 and int4 codecs.")
def init_command(directory: Path, name: str, model: str, pow_bits: int | None, admission: str,
                 listen: str, bootstrap: tuple[str, ...], merge: str | None,
                 merge_param: tuple[str, ...], optimizer: str | None,
                 learning_rate: float | None, batch_size: int | None, sync_every: int | None,
                 sync_interval: float | None, checkpoint_interval: float | None, codec: str,
                 delta_codec: str | None, keyframe_every: int, quant_block: int) -> None:
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
    from learnae.models import model_config

    with reasons():
        fields: dict[str, Any] = {
            "pow_bits": pow_bits, "merge": merge, "optimizer": optimizer,
            "learning_rate": learning_rate, "batch_size": batch_size, "sync_every": sync_every,
            "sync_interval": sync_interval, "checkpoint_interval": checkpoint_interval,
        }
        fields = {k: v for k, v in fields.items() if v is not None}
        if merge_param:
            fields["merge_params"] = dict(_key_value(p, merge) for p in merge_param)
        if admission != ADMISSION_OPEN:
            fields["admission"] = read_admission_file(admission)
        fields["compression"] = Compression(codec=codec, block=quant_block, delta_codec=delta_codec,
                                            keyframe_every=keyframe_every)
        manifest = Manifest(name=name, model=model_config(model), **fields)
        made = init_swarm(directory, manifest, bootstrap=bootstrap, listen=listen)
    m, files = made.manifest, made.state
    admitted = ADMISSION_OPEN if m.admission == ADMISSION_OPEN else f"{len(m.admission)} author ids"
    click.echo(f"Created swarm {m.name!r} in {made.directory}")
    for label, text in (
        ("genesis", f"{made.genesis.id}  ({files.genesis.name}, {files.manifest.name})"),
        ("model", f"{model}: input {list(m.input_shape or ())} {m.dtype}, {m.classes} classes;"
                  f" {m.optimizer} lr {m.learning_rate:g}, batch {m.batch_size}, merge {m.merge}"),
        ("rules", f"pow {m.pow_bits} bits, admission {admitted}, tx limit {m.limits.tx_bytes} bytes"),
        ("transfer", f"checkpoints {m.compression.codec}" + (
            f", deltas {m.compression.delta_codec} (a keyframe every {m.compression.keyframe_every})"
            if m.compression.delta_codec else "")),
        ("founder", f"{made.founder.author_id}  ({files.identity.name}, keep it private)"),
        ("swarm key", f"{files.swarm_key.name}  (anyone holding it can enter the network)"),
        ("ledger", f"{files.tangle.name}  (see `learnae ledger show {made.directory}`)"),
        ("invite", f"{files.invite.name}  ({len(made.invite.bootstrap)} bootstrap peers;"
                   " holds the swarm key: share it only with members)"),
    ):
        click.echo(f"  {label:<10}{text}")
    click.echo(
        "\nNext: start the founder's node with\n"
        f"  learnae node run --invite {files.invite} --state {made.directory}\n"
        "then give invite.json to the nodes that join; each starts with\n"
        "  learnae node run --invite invite.json --state ITS_OWN_DIR"
    )


def _key_value(text: str, rule: str | None) -> tuple[str, Any]:
    """Parse one ``--merge-param KEY=VALUE`` of merge rule ``rule`` (None: the default).

    Raises:
        ConfigError: ``text`` is not KEY=VALUE; the message names the rule's parameters
            (as :func:`learnae.merge.check_params` knows them).
    """
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
