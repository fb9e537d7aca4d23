"""The ``learnae`` command line (click).

Each subcommand is a thin surface over the layers below it; run ``learnae --help``
or ``learnae COMMAND --help`` for what each does. One module per command group:

- ``_common``: learnae's typed errors as a clean message and exit status 2;
- ``cid``: ``learnae cid``, a file's CID computed locally;
- ``swarm``: ``learnae init``, a new swarm (genesis, keys, ledger, invite);
- ``ledger``: ``learnae ledger show|verify|lineage|export|prune``;
- ``node``: ``learnae node run``, a trainer node;
- ``members``: ``learnae admit``, ``learnae revoke`` and ``learnae invite``: who may publish;
- ``status``: ``learnae status``, a node's status in the terminal;
- ``demo``: ``learnae demo``, a local swarm of trainers and sensors against baselines;
- ``learnae.sensor_cli`` (``learnae sensor ...``, the sensor feeder) and
  ``learnae.faults_cli`` (``learnae faults ...``, the fault harness) stay modules of their
  own and are only registered here.

Options take their defaults and choices from the library (``learnae.manifest``,
``learnae.state``, ``learnae.merge``, ``learnae.models``, ``learnae.node``,
``learnae.training``), so each module imports what it needs at the top, and ``main`` imports a command's module only when that command is
looked up (:class:`_LazyGroup`): ``learnae sensor run`` never imports the trainer node,
and no help text imports TensorFlow.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import click

from learnae import __version__
from learnae.faults_cli import faults_group
from learnae.sensor_cli import sensor_group


class _LazyGroup(click.Group):
    """A group that imports a subcommand's module on first use (click's documented pattern).

    Args:
        lazy_subcommands: command name -> ``"module:attribute"`` of its click command.
    """

    def __init__(self, *args: Any, lazy_subcommands: dict[str, str], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lazy_subcommands = lazy_subcommands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_subcommands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy_subcommands:
            return super().get_command(ctx, cmd_name)
        module, _, attribute = self.lazy_subcommands[cmd_name].partition(":")
        return getattr(importlib.import_module(module), attribute)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]},
             lazy_subcommands={"cid": "learnae.cli.cid:cid_command",
                               "init": "learnae.cli.swarm:init_command",
                               "ledger": "learnae.cli.ledger:ledger_group",
                               "demo": "learnae.cli.demo:demo_command",
                               "node": "learnae.cli.node:node_group",
                               "admit": "learnae.cli.members:admit_command",
                               "revoke": "learnae.cli.members:revoke_command",
                               "invite": "learnae.cli.members:invite_command",
                               "status": "learnae.cli.status:status_command"})
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


# The sensor feeder's and the fault harness's commands live in modules of their own, so that
# `learnae sensor ...` never imports the trainer's dependencies.
main.add_command(sensor_group)
main.add_command(faults_group)
