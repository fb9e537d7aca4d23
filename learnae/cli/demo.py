"""``learnae demo``: a local swarm of trainers and sensors on real data, against baselines."""

from __future__ import annotations

from pathlib import Path

import click

from learnae.cli._common import reasons
from learnae.manifest import DEFAULT_MERGE
from learnae.merge import RULES
from learnae.training.data import BUNDLED


@click.command("demo")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for the swarm's state, report.json and accuracy.png (default: a new temporary one).")
@click.option("--nodes", type=click.IntRange(1, 16), default=None,
              help="Trainer nodes (default: 4; 3 with --in-process).")
@click.option("--sensors", type=click.IntRange(0, 8), default=2, show_default=True,
              help="Sensor processes streaming their own part of the data as new labelled rows.")
@click.option("--dataset", default="digits", show_default=True,
              metavar="|".join([*BUNDLED, "PATH.npz"]),
              help="Data set (a bundled scikit-learn set, or a .npz/.csv file of x and y).")
@click.option("--partition", default="dirichlet:0.5", show_default=True, metavar="iid|dirichlet:A",
              help="How the training part is split among nodes and sensors.")
@click.option("--merge", type=click.Choice(RULES), default=DEFAULT_MERGE, show_default=True,
              help="The swarm's merge rule.")
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
    report.json and accuracy.png into --out. Each node's swarm accuracy is
    judged against its local-only baseline with the margin the test split's
    size allows (a 95% interval of the difference, shown in the table): exit
    status 1 unless no node is worse than training alone, at least one is
    better, and every node exited cleanly. Ctrl+C stops every process (exit 130).

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

        with reasons():
            raise SystemExit(demo_main(out, nodes or 3, rounds, seed))
    from learnae.local.procdemo import main as process_demo_main

    with reasons():
        raise SystemExit(process_demo_main(out, nodes=nodes or 4, sensors=sensors, dataset=dataset,
                                           partition=partition, merge=merge, duration=duration, seed=seed))
