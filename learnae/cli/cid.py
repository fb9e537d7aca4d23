"""``learnae cid``: the CID of a file, computed locally."""

from __future__ import annotations

from typing import cast

import click


@click.command("cid")
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
    from learnae.content import BinaryReader, file_cid, to_v1

    for name in files:
        try:
            with click.open_file(name, "rb") as stream:
                cid = file_cid(cast(BinaryReader, stream), cid_version=int(cid_version))
        except OSError as exc:
            raise click.FileError(name, exc.strerror or str(exc)) from exc
        click.echo(to_v1(cid) if base32 else cid)
