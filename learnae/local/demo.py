"""``learnae demo``: a small swarm in one process, on real parts, start to finish.

What it runs (every part real: Kubo nodes in a private swarm on 127.0.0.1,
SQLite tangles, Keras training on scikit-learn's bundled digits):

1. A founder creates the swarm (``init_swarm``: genesis, swarm key, invite).
2. ``nodes`` nodes join from the invite, each with its own embedded Kubo node,
   tangle and syncer, and a Dirichlet(0.5) shard of the training data.
3. Each round, every node trains one epoch on its shard, publishes its
   checkpoint (safetensors -> IPFS -> signed ``checkpoint`` transaction ->
   gossip), then fetches its peers' latest checkpoints by CID, validates them
   and merges them with the manifest's rule: through the node's own network
   side (:class:`~learnae.node.network.NetworkSide`).
4. At the end the ledgers are compared and verified, and each node's accuracy
   on the common test split is shown next to what the same node reached
   training alone, with the margin the test split's size allows
   (:func:`learnae.local.baselines.compare`). ``ok``: the ledgers are identical
   and verify, no node is worse than alone and at least one is better.

This is the preview of the swarm: rounds here are a loop in one process. The
trainer nodes of ``learnae node run`` run asynchronously in processes of their own.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from learnae.identity import Identity
from learnae.invite import Invite
from learnae.ipfs.embedded import EmbeddedNode
from learnae.ledger.sync import TangleSync
from learnae.ledger.tangle import Tangle
from learnae.local.converge import wait_in_step
from learnae.manifest import Manifest
from learnae.models import model_config
from learnae.node.network import NetworkSide
from learnae.state import init_swarm, open_tangle
from learnae.training.bridge import Offer
from learnae.training.data import DataSpec, Splits

if TYPE_CHECKING:
    import keras


@dataclass
class DemoNode:
    """One participant: identity, Kubo node, tangle, syncer, model, data and network side."""

    name: str
    identity: Identity
    ipfs: EmbeddedNode
    tangle: Tangle
    sync: TangleSync
    model: keras.Model
    splits: Splits
    net: NetworkSide  # publishes, fetches and merges for it
    step: int = 0
    merged: tuple = ()  # tags of the merges since its last checkpoint (its next one's base)
    history: list[float] = field(default_factory=list)


async def run_demo(out: Path, *, nodes: int = 3, rounds: int = 15, seed: int = 0,
                   echo: Callable[[str], None] = print) -> dict:
    """Run the demo in ``out`` (created; must not hold a swarm) and return the report dict."""
    from learnae.local import baselines as bl
    from learnae.training.model import build_model, configure_threads, evaluate, expected_shapes

    configure_threads(1)
    manifest = Manifest(name="demo", model=model_config("digits-mlp"), pow_bits=8, merge="mean",
                        learning_rate=0.003, checkpoint_interval=0)  # paced by its rounds
    founder = init_swarm(out / "founder", manifest)
    invite: Invite = founder.invite
    echo(f"swarm 'demo' created: genesis {founder.genesis.id[:16]}…, merge rule '{manifest.merge}'")

    members: list[DemoNode] = []
    try:
        for i in range(nodes):
            state = out / f"node{i}"
            identity = founder.founder if i == 0 else Identity.generate()
            tangle, _ = open_tangle(state if i else out / "founder", invite=invite)
            ipfs = await EmbeddedNode.start(state / "ipfs", invite.swarm_key)
            sync = TangleSync(tangle, ipfs, announce_interval=0.5)
            await sync.start()
            if members:
                await ipfs.connect((await members[0].ipfs.addrs())[0])
            spec = DataSpec(source="digits", shard=(i, nodes), partition="dirichlet:0.5", seed=seed)
            model = build_model(manifest.model, optimizer=manifest.optimizer,
                                learning_rate=manifest.learning_rate, seed=seed)
            net = NetworkSide(ipfs=ipfs, sync=sync, identity=identity, manifest=manifest,
                              expect=expected_shapes(model), fetch_timeout=30)
            members.append(DemoNode(f"node{i}", identity, ipfs, tangle, sync, model, spec.load(),
                                    net))
            counts = members[-1].splits.train.class_counts()
            echo(f"{members[-1].name}: peer {ipfs.id[:12]}…, {len(members[-1].splits.train)} training rows, "
                 f"labels per class {counts.tolist()}")

        alone = _train_alone(members, manifest, rounds, seed)
        echo("\nround  " + "  ".join(f"{m.name:>8}" for m in members) + "   ledger")
        for r in range(1, rounds + 1):
            for m in members:  # train and publish
                x, y = m.splits.train.x, m.splits.train.y
                await asyncio.to_thread(m.model.fit, x, y, batch_size=manifest.batch_size, epochs=1, verbose=0)
                m.step += -(-len(x) // manifest.batch_size)
                await _publish(m, len(x))
            await wait_in_step([m.tangle for m in members], timeout=30)
            for m in members:  # fetch and merge peers' latest checkpoints
                await _merge_peers(m)
                m.history.append(evaluate(m.model, m.splits.test.x, m.splits.test.y)["accuracy"])
            echo(f"{r:5d}  " + "  ".join(f"{m.history[-1]:8.3f}" for m in members)
                 + f"   {members[0].tangle.count()} txs")

        await wait_in_step([m.tangle for m in members], timeout=30)
        problems = [p for m in members for p in m.tangle.verify()]
        n = len(members[0].splits.test)
        comparisons = {m.name: bl.compare(m.history[-1], alone[m.name], n) for m in members}
        judged = bl.verdict(list(comparisons.values()))
        report: dict[str, Any] = {
            "nodes": {m.name: {"accuracy": m.history[-1], "alone": alone[m.name], "history": m.history,
                               "vs_alone": comparisons[m.name].as_json()}
                      for m in members},
            "ledger": {"transactions": members[0].tangle.count(), "by_kind": members[0].tangle.counts(),
                       "identical_on_every_node": len({tuple(sorted(m.tangle.order())) for m in members}) == 1,
                       "verify_problems": problems},
        }
        report["verdict"] = {"rule": "ok: the ledgers are identical and verify, no node is worse than alone and at"
                                     f" least one is better; {bl.NODE_RULE}",
                             "test_rows": n, "confidence": bl.CONFIDENCE,
                             "method": "Newcombe 1998 hybrid Wilson score interval of swarm - alone", **judged}
        report["ok"] = report["ledger"]["identical_on_every_node"] and not problems and judged["ok"]
        echo(f"\n{'node':7} {'swarm':>6}  {'alone':>6}  {'diff':>6}  {'95% interval':^16}  verdict")
        for name, c in comparisons.items():
            echo(f"{name:7} {c.swarm:6.3f}  {c.local_only:6.3f}  {c.difference:+6.3f}  [{c.low:+.3f}, {c.high:+.3f}]"
                 f"  {c.verdict}")
        echo(bl.describe_margin(n, baseline="alone"))
        echo(f"ledger: {report['ledger']['transactions']} transactions {report['ledger']['by_kind']}, "
             f"identical on every node: {report['ledger']['identical_on_every_node']}, "
             f"verify: {'ok' if not problems else problems[:3]}")
        (out / "report.json").write_text(json.dumps(report, indent=2))
        echo(f"report: {out / 'report.json'}  ok={report['ok']}")
        return report
    finally:
        for m in members:
            await m.sync.stop()
            await m.ipfs.close()
            m.tangle.close()


def _train_alone(members: list[DemoNode], manifest: Manifest, rounds: int, seed: int) -> dict[str, float]:
    """Baseline: each node's model trained on its own shard only, for the same epochs."""
    from learnae.training.model import build_model, evaluate

    result = {}
    for m in members:
        model = build_model(manifest.model, optimizer=manifest.optimizer,
                            learning_rate=manifest.learning_rate, seed=seed)
        model.fit(m.splits.train.x, m.splits.train.y, batch_size=manifest.batch_size, epochs=rounds, verbose=0)
        result[m.name] = evaluate(model, m.splits.test.x, m.splits.test.y)["accuracy"]
    return result


def _offer(m: DemoNode, samples: int) -> Offer:
    """The node's model as the network side takes it."""
    from learnae.training.model import get_weights

    return Offer(get_weights(m.model), step=m.step, samples=samples, total_samples=samples, merged=m.merged)


async def _publish(m: DemoNode, samples: int) -> None:
    from learnae.training.model import evaluate

    metrics = evaluate(m.model, m.splits.holdout.x, m.splits.holdout.y)
    await m.net.publish(_offer(m, samples), metrics=metrics)
    m.merged = ()


async def _merge_peers(m: DemoNode) -> None:
    """Merge with every peer's latest checkpoint."""
    from learnae.training.model import set_weights

    merged = await m.net.merge_all(_offer(m, len(m.splits.train)))
    if merged is not None:
        set_weights(m.model, merged.weights)
        m.merged += (merged.tag,)


def main(out: Path, nodes: int, rounds: int, seed: int) -> int:
    """Run :func:`run_demo` and print its duration; the exit status (0: the report is ok)."""
    start = time.monotonic()
    report = asyncio.run(run_demo(out, nodes=nodes, rounds=rounds, seed=seed))
    print(f"done in {time.monotonic() - start:.0f} s")
    return 0 if report["ok"] else 1
