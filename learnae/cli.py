"""The ``learnae`` command line (click).

Each subcommand is a thin surface over the layers below it; run ``learnae --help``
or ``learnae COMMAND --help`` for what each does.
"""

from __future__ import annotations

import logging

import click

from learnae import __version__


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
