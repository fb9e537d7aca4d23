"""``learnae faults``: the fault-injection harness on the command line.

``learnae faults run SCENARIO.toml --driver memory|processes --out DIR`` runs the scenario
and its no-fault reference run (same seed), writes ``DIR/report.json`` (each invariant: pass
or fail, its figure and its bound) and ``DIR/timeline.png``, prints one line per invariant,
and exits 1 when an invariant fails (2 for an unusable scenario, or a fault the driver does
not apply).
"""

from __future__ import annotations

from pathlib import Path

import click

from learnae.errors import LearnaeError


@click.group("faults")
def faults_group() -> None:
    """Fault-injection harness: partitions, crashes, lossy links, lying peers.

    \b
    Examples:
      learnae faults run examples/faults/partition-heal.toml --out out/ph
      learnae faults run examples/faults/crash-restart.toml --driver processes --out out/cr

    The memory driver simulates the network and the clock in one process (a
    numpy model; 100 nodes in minutes). The processes driver runs real
    `learnae node run` processes (embedded Kubo, TensorFlow): SIGKILL for
    crashes, and for partitions network namespaces when run as root (the
    fault layer in each node otherwise). Only the processes driver runs
    a scenario's [topology] other than mesh (line, star, home-nat: nodes
    behind home routers with relay members), in network namespaces (root).
    It takes about (rounds x round_seconds + 60) seconds per run, twice
    (the reference run).
    """


@faults_group.command("run")
@click.argument("scenario", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--driver", type=click.Choice(["memory", "processes"]), default="memory", show_default=True,
              help="memory: simulated network and clock in one process (numpy model); "
                   "processes: real node processes (partition, heal, crash, restart, loss, delay).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for report.json and timeline.png (created).")
@click.option("--no-plot", is_flag=True, help="Skip timeline.png.")
def run_command(scenario: Path, driver: str, out: Path, no_plot: bool) -> None:
    """Run SCENARIO (TOML) and check its invariants; exit 1 if one fails."""
    from learnae.local.scenario import load_scenario

    try:
        scn = load_scenario(scenario)
    except LearnaeError as exc:
        raise click.ClickException(exc.reason) from None
    from learnae.local.harness import run_scenario

    topology = scn.topology
    relays = f" ({topology.relays} relay member{'s' * (topology.relays > 1)})" if topology.relays else ""
    click.echo(f"{scn.name}: {scn.nodes} nodes, {scn.sensors} sensors, {scn.rounds} rounds, "
               f"merge '{scn.merge}', {len(scn.faults)} faults, {topology.kind} topology{relays}, "
               f"driver {driver}, seed {scn.seed}")
    try:
        report = run_scenario(scn, out, plot=not no_plot, driver=driver, echo=click.echo)
    except LearnaeError as exc:
        click.echo(f"error: {exc.reason}", err=True)
        raise SystemExit(2) from None
    for name, inv in report["invariants"].items():
        click.echo(f"  {'pass' if inv['pass'] else 'FAIL'}  {name:26} figure {inv['figure']}  bound {inv['bound']}")
    click.echo(f"{'PASS' if report['pass'] else 'FAIL'} in {report['wall_seconds']:.1f} s; "
               f"report {out / 'report.json'}")
    raise SystemExit(0 if report["pass"] else 1)
