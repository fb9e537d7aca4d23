"""A hostile swarm member, run as a separate process by the node tests.

It joins the swarm from an invite with an embedded Kubo node, a tangle and its syncer,
waits for a good node's first checkpoint (to learn the model's weight names and shapes
without TensorFlow), then, every ``--every`` seconds, publishes one checkpoint from each of
four identities of its own, each bad in one way:

- ``unfetchable``: announces a CID nobody holds (the same one each time);
- ``shape``: one weight has an extra row;
- ``nan``: one weight holds NaN (written around the encoder, which refuses NaN);
- ``norm``: a good checkpoint scaled by 1000;
- ``quantized``: a good checkpoint in the ``int8`` codec whose first scale is negative (a swarm
  of ``int8`` checkpoints refuses it ``quantized-scale``, any other swarm ``codec``).

It writes ``--status`` (JSON: published per kind) and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import signal
from pathlib import Path

import numpy as np

from learnae.content import file_cid, to_v1
from learnae.formats import (
    _CHECKPOINT_FORMAT,
    Checkpoint,
    _encode,
    decode_checkpoint,
    encode_checkpoint,
)
from learnae.identity import Identity
from learnae.invite import Invite
from learnae.ipfs.embedded import EmbeddedNode
from learnae.ipfs.peering import keep_connected
from learnae.ledger.sync import TangleSync
from learnae.ledger.tx import checkpoint_payload
from learnae.state import open_tangle

KINDS = ("unfetchable", "shape", "nan", "norm", "quantized")


def _nan_file(weights: dict, genesis: str, step: int) -> bytes:
    bad = {k: v.copy() for k, v in weights.items()}
    first = next(iter(bad))
    bad[first].flat[0] = np.nan
    metadata = {"format": _CHECKPOINT_FORMAT, "genesis": genesis, "step": str(step), "samples": "32",
                "names": json.dumps(list(bad), separators=(",", ":"))}
    return _encode(bad, metadata)


def _negative_scale_file(weights: dict, genesis: str, step: int) -> bytes:
    raw = encode_checkpoint(Checkpoint(weights, genesis, step, 32), codec="int8")
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    begin = header[next(iter(weights)) + "#scale"]["data_offsets"][0]
    at = 8 + n + begin  # the first scale: a float32 whose sign bit is the top bit of its last byte
    return raw[:at + 3] + bytes([raw[at + 3] | 0x80]) + raw[at + 4:]


async def run(args: argparse.Namespace) -> None:
    state = Path(args.state)
    invite = Invite.load(args.invite)
    tangle, manifest = open_tangle(state, invite=invite)
    ipfs = await EmbeddedNode.start(state / "ipfs", invite.swarm_key, port=args.port)
    sync = TangleSync(tangle, ipfs, announce_interval=0.5)
    await sync.start()
    dialer = asyncio.create_task(keep_connected(ipfs, args.peer, interval=0.5, dial_timeout=2))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    ids = {kind: Identity.generate() for kind in KINDS}
    mine = {i.public_key for i in ids.values()}
    published = dict.fromkeys(KINDS, 0)
    missing = to_v1(file_cid(io.BytesIO(os.urandom(64))))
    good = None
    step = 0
    try:
        while not stop.is_set():
            if good is None:
                for author, tx in tangle.latest_checkpoint_per_author().items():
                    if author not in mine:
                        with contextlib.suppress(Exception):
                            raw = await ipfs.cat(tx.payload["cid"], timeout=5)
                            good = decode_checkpoint(raw, max_bytes=manifest.limits.checkpoint_bytes).weights
                            break
            else:
                step += 10
                first = next(iter(good))
                shaped = dict(good)
                shaped[first] = np.concatenate([good[first], good[first][:1]], axis=0)
                files = {
                    "shape": encode_checkpoint(Checkpoint(shaped, tangle.swarm, step, 32)),
                    "nan": _nan_file(good, tangle.swarm, step),
                    "norm": encode_checkpoint(Checkpoint({k: v * 1000 for k, v in good.items()},
                                                         tangle.swarm, step, 32)),
                    "quantized": _negative_scale_file(good, tangle.swarm, step),
                }
                for kind in KINDS:
                    if kind == "unfetchable":
                        cid, size = missing, 1000
                    else:
                        cid, size = await ipfs.add(files[kind]), len(files[kind])
                    payload = checkpoint_payload(cid=cid, size=size, step=step, samples=32, base=[], data=[],
                                                 metrics={"loss": 0.1, "accuracy": 0.99})
                    await sync.append(ids[kind], "checkpoint", payload)
                    published[kind] += 1
            tmp = Path(args.status).with_suffix(".tmp")
            tmp.write_text(json.dumps({"published": published, "ready": good is not None}))
            os.replace(tmp, args.status)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.every)
    finally:
        dialer.cancel()
        await sync.stop()
        await ipfs.close()
        tangle.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", required=True)
    parser.add_argument("--invite", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--peer", action="append", default=[])
    parser.add_argument("--every", type=float, default=1.0)
    parser.add_argument("--status", required=True)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
