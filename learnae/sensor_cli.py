"""``learnae sensor ...``: the sensor feeder's commands.

A click group that :mod:`learnae.cli` registers. Imports nothing heavy at import time; never
TensorFlow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from learnae.sensor import Feeder, Outlet

log = logging.getLogger(__name__)


class _Refused(click.ClickException):
    exit_code = 2


@click.group("sensor")
def sensor_group() -> None:
    """Feed a swarm with a sensor's readings (a Raspberry Pi next to a probe).

    A sensor contributes data, never computation: it signs its readings with its own key,
    buffers them on disk while offline and publishes them as data chunks. See
    sensors/README.md.

    \b
    Example:
      learnae sensor run --invite invite.json --state ~/.learnae-sensor \\
          --source "cmd:python probe.py" --via http://192.168.1.20:8470
    """


@sensor_group.command("run")
@click.option("--invite", "invite_path", required=True, envvar="LEARNAE_SENSOR_INVITE",
              type=click.Path(exists=True, dir_okay=False), help="The swarm's invite.json.")
@click.option("--state", "state", required=True, envvar="LEARNAE_SENSOR_STATE",
              type=click.Path(file_okay=False),
              help="State directory: identity.key, queue.sqlite (and the embedded node).")
@click.option("--source", required=True, envvar="LEARNAE_SENSOR_SOURCE",
              help="csv:PATH[,rate=10/s][,label=COL][,loop] | jsonl:PATH[,rate=..] | stdin |"
                   " cmd:'python probe.py' | py:MODULE:FUNC[,rate=1/s] | entry:NAME")
@click.option("--via", envvar="LEARNAE_SENSOR_VIA", default=None, metavar="URL",
              help="Post chunks to a trainer node's POST /ingest (http://NODE:PORT) instead"
                   " of running an embedded Kubo node.")
@click.option("--name", envvar="LEARNAE_SENSOR_NAME", default=None,
              help="A name for this sensor, recorded in its data transactions' source. Chunk"
                   " files name the sensor by its author id, which nodes check against the"
                   " transaction's signer (a chunk copied by someone else is refused).")
@click.option("--rows", envvar="LEARNAE_SENSOR_ROWS", default=1000, show_default=True, type=click.IntRange(1),
              help="Readings per chunk (fewer if the swarm's chunk limit needs it).")
@click.option("--max-age", envvar="LEARNAE_SENSOR_MAX_AGE", default=60.0, show_default=True, type=click.FloatRange(0.01),
              help="Seconds after which a partial chunk is cut anyway.")
@click.option("--max-queue-mb", envvar="LEARNAE_SENSOR_MAX_QUEUE_MB", default=256.0, show_default=True, type=click.FloatRange(0.01),
              help="Disk bound of the store-and-forward queue, MiB.")
@click.option("--on-full", envvar="LEARNAE_SENSOR_ON_FULL", type=click.Choice(["stop", "drop-oldest"]), default="stop",
              show_default=True,
              help="When the queue is full: stop reading until chunks are delivered, or drop"
                   " the oldest unpublished data (counted).")
@click.option("--unlabelled", envvar="LEARNAE_SENSOR_UNLABELLED", is_flag=True,
              help="Readings carry no labels: chunks hold the swarm's features only.")
@click.option("--listen", envvar="LEARNAE_SENSOR_LISTEN", default="127.0.0.1:0", show_default=True,
              help="Embedded mode: the Kubo node's HOST:PORT.")
@click.option("--drain-timeout", envvar="LEARNAE_SENSOR_DRAIN_TIMEOUT", default=None, type=click.FloatRange(0),
              help="After the source ends, give up delivering after this many seconds"
                   " (default: wait; undelivered chunks stay queued for the next run).")
def run_command(invite_path, state, source, via, name, rows, max_age, max_queue_mb, on_full,
                unlabelled, listen, drain_timeout) -> None:
    """Read a source, sign and publish its readings as data chunks.

    Readings are checked one by one (a bad line is counted and skipped), kept
    in STATE/queue.sqlite until their chunk is acknowledged, and published in
    order: to a trainer node's POST /ingest with --via, else through the
    sensor's own embedded Kubo node. Every option can also be set by an
    environment variable LEARNAE_SENSOR_<OPTION> (e.g. LEARNAE_SENSOR_SOURCE).

    \b
    Example:
      learnae sensor run --invite invite.json --state ~/.learnae-sensor \\
          --source "csv:co2.csv,rate=10/s" --via http://192.168.1.20:8470
    """
    from learnae.errors import LearnaeError

    if not logging.getLogger().handlers:  # run alone (python -m, systemd): log to stderr
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        feeder, feeding = _build(Path(invite_path), Path(state), source, via, name, rows, max_age,
                                 max_queue_mb, on_full, unlabelled, listen, drain_timeout)
    except LearnaeError as exc:
        raise _Refused(exc.reason) from None
    click.echo(f"{feeding}; queue {feeder.queue.path}", err=True)
    try:
        stats = asyncio.run(_run(feeder))
    except LearnaeError as exc:  # e.g. the embedded node cannot start; systemd restarts us
        raise _Refused(exc.reason) from None
    click.echo(json.dumps(stats, sort_keys=True))


async def _run(feeder: Feeder) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, feeder.stop)
    try:
        return await feeder.run()
    finally:
        feeder.queue.close()


def _build(invite_path: Path, state: Path, source: str, via: str | None, name: str | None,
           rows: int, max_age: float, max_queue_mb: float, on_full: str, unlabelled: bool,
           listen: str, drain_timeout: float | None) -> tuple[Feeder, str]:
    """Make the feeder ``learnae sensor run``'s options ask for.

    Returns:
        ``(feeder, line)``, the line saying which sensor feeds which swarm, and how.

    Raises:
        LearnaeError: the invite, the source or the state directory is unusable.
    """
    from learnae.errors import ConfigError
    from learnae.ingest import sensor_schema
    from learnae.invite import Invite
    from learnae.manifest import manifest_of
    from learnae.sensor import (
        EmbeddedOutlet,
        Feeder,
        RowParser,
        SensorQueue,
        Signer,
        ViaOutlet,
        load_identity,
        parse_source,
    )
    from learnae.state import parse_listen

    invite = Invite.load(invite_path)
    genesis = invite.genesis_transaction()
    if genesis is None:
        raise ConfigError(f"{invite_path} carries no genesis transaction (genesis_tx): ask the"
                          " swarm for a full invite (learnae init writes one)")
    manifest = manifest_of(genesis)
    src = parse_source(source)
    identity = load_identity(state)
    schema = sensor_schema(manifest.schema, labelled=not unlabelled)
    queue = SensorQueue(state / "queue.sqlite", schema=schema, sensor=identity.author_id,
                        genesis=invite.genesis, max_bytes=int(max_queue_mb * 2**20),
                        policy=on_full, chunk_rows=rows,
                        max_chunk_bytes=manifest.limits.chunk_bytes)
    described = src.describe()
    if name:
        described = {**described, "name": name}
    outlet: Outlet
    if via:
        outlet = ViaOutlet(via, Signer(identity, genesis, manifest.pow_bits, described), schema)
        mode = f"via {via}"
    else:
        host, port = parse_listen(listen)
        outlet = EmbeddedOutlet(state, invite, identity, schema, described, host=host, port=port)
        mode = "embedded Kubo node"
    feeder = Feeder(src, RowParser(schema), queue, outlet, max_age=max_age,
                    drain_timeout=drain_timeout)
    return feeder, f"sensor {identity.author_id} feeding swarm {manifest.name} ({mode})"


@sensor_group.command("status")
@click.option("--state", "state", required=True, envvar="LEARNAE_SENSOR_STATE",
              type=click.Path(exists=True, file_okay=False), help="The sensor's state directory.")
def status_command(state: str) -> None:
    """Print the sensor's author id and queue counters as JSON.

    \b
    Example:
      learnae sensor status --state ~/.learnae-sensor
    """
    import sqlite3

    from learnae.identity import Identity

    d = Path(state)
    out: dict = {}
    if (d / "identity.key").exists():
        out["author"] = Identity.load(d / "identity.key").author_id
    path = d / "queue.sqlite"
    if path.exists():
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            out.update({k: v for k, v in db.execute("SELECT key, value FROM meta")
                        if k not in ("tips", "swarm")})
            out["queued_readings"] = db.execute("SELECT count(*) FROM readings").fetchone()[0]
            out["queued_chunks"] = db.execute(
                "SELECT count(*) FROM chunks WHERE state = 'pending'").fetchone()[0]
            out["refused_chunks"] = [
                {"seq": s, "reason": r} for s, r in
                db.execute("SELECT seq, reason FROM chunks WHERE state = 'rejected'")]
        finally:
            db.close()
    click.echo(json.dumps(out, indent=2, sort_keys=True))


if __name__ == "__main__":  # `python -m learnae.sensor_cli run ...` works before registration
    sensor_group()
