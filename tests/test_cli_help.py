"""`learnae --help` and every command's options: registered groups, defaults and rule lists
taken from the library (never typed again in the CLI), and no heavy import for help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from learnae import manifest as manifest_module
from learnae.cli import main
from learnae.merge import RULES
from learnae.models import MODELS

ROOT = Path(__file__).resolve().parents[1]


def commands(group: click.Group = main, path: tuple[str, ...] = ()):
    """Every (path, command) below ``group``, lazily loaded ones included."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, f"learnae {' '.join(path + (name,))} is listed but not found"
        yield path + (name,), command
        if isinstance(command, click.Group):
            yield from commands(command, path + (name,))


def merge_options():
    return [(" ".join(path), p) for path, command in commands() for p in command.params
            if p.name == "merge"]


def help_text(*args: str) -> str:
    result = CliRunner().invoke(main, [*args, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


def test_every_group_is_registered():
    names = set(main.list_commands(click.Context(main)))
    assert {"cid", "init", "ledger", "demo", "node", "sensor", "faults"} <= names
    assert {"sensor", "faults"} <= set(main.commands)  # the sensor's and the harness's own modules
    text = help_text()
    for name in names:
        assert f"  {name} " in text


def test_there_are_merge_options_to_check():
    assert {path for path, _ in merge_options()} >= {"init", "demo"}


@pytest.mark.parametrize("rule", RULES)
def test_every_merge_option_accepts_every_merge_rule_of_the_library(rule):
    for path, option in merge_options():
        assert isinstance(option.type, click.Choice), path
        assert tuple(option.type.choices) == RULES, f"learnae {path} --merge"
        assert option.type.convert(rule, option, click.Context(main)) == rule


def test_the_merge_defaults_are_the_librarys():
    defaults = {path: option.default for path, option in merge_options()}
    assert defaults["demo"] == manifest_module.DEFAULT_MERGE
    assert f"default {manifest_module.DEFAULT_MERGE};" in help_text("init")


def test_node_run_help_shows_the_librarys_defaults():
    import learnae.node as node
    from learnae.training.pool import DEFAULT_MAX_ROWS

    run = dict(commands())[("node", "run")]
    expected = {"keep": node.DEFAULT_KEEP, "k": node.DEFAULT_K,
                "fetch_timeout": node.DEFAULT_FETCH_TIMEOUT, "network_nice": node.DEFAULT_NETWORK_NICE,
                "adopt_max_rows": DEFAULT_MAX_ROWS}
    fields = {f.name: f.default for f in node.NodeConfig.__dataclass_fields__.values()}
    for name, value in expected.items():
        option = next(p for p in run.params if p.name == name)
        assert option.default == value == fields[name], name
        assert option.show_default, name
    text = " ".join(help_text("node", "run").split())
    assert f"at a time. [default: {node.DEFAULT_K}; 1<=x<=64]" in text
    assert f"fetching them again. [default: {DEFAULT_MAX_ROWS}; x>=1]" in text


def test_init_help_names_the_librarys_models_optimizers_and_limits():
    init = dict(commands())[("init",)]
    params = {p.name: p for p in init.params}
    assert tuple(params["optimizer"].type.choices) == manifest_module.OPTIMIZERS
    assert params["pow_bits"].type.max == manifest_module.MAX_POW_BITS
    text = " ".join(help_text("init").split())
    assert all(name in text for name in MODELS)


# A changed constant of the library must change the CLI: run `--help` in a fresh interpreter
# whose library constants were set to odd values before the CLI was imported.
SENTINELS = """
import learnae.manifest as m, learnae.node as n, learnae.training.pool as pool
n.DEFAULT_K, n.DEFAULT_KEEP, n.DEFAULT_FETCH_TIMEOUT, n.DEFAULT_NETWORK_NICE = 7, 11, 13.5, 5
pool.DEFAULT_MAX_ROWS = 4321
m.DEFAULT_POW_BITS, m.DEFAULT_BATCH_SIZE, m.DEFAULT_SYNC_EVERY = 9, 17, 23
m.DEFAULT_LEARNING_RATE, m.DEFAULT_SYNC_INTERVAL, m.DEFAULT_OPTIMIZER = 0.25, 12.5, "sgd"
m.DEFAULT_MERGE = "median"
m.DEFAULT_CHECKPOINT_INTERVAL = 7.5
import learnae.node.upkeep as u
u.DEFAULT_DISK_MAX = 3 << 20
from learnae.cli import main
for args in (["node", "run", "--help"], ["init", "--help"], ["demo", "--help"]):
    try:
        main(args, prog_name="learnae", standalone_mode=True)
    except SystemExit:
        pass
"""


@pytest.fixture(scope="module")
def sentinel_help() -> str:
    out = subprocess.run([sys.executable, "-c", SENTINELS], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    node, init, demo = out.stdout.split("Usage: ")[1:]
    return {"node": " ".join(node.split()), "init": " ".join(init.split()),
            "demo": " ".join(demo.split())}


@pytest.mark.parametrize(("command", "shown"), [
    ("node", "Merge with up to K peer checkpoints at a time. [default: 7;"),
    ("node", "older ones are unpinned. [default: 11;"),
    ("node", "Seconds to wait for a peer's checkpoint. [default: 13.5;"),
    ("node", "(Linux; 0: same priority). [default: 5;"),
    ("node", "without fetching them again. [default: 4321;"),
    ("init", "(0-32; default 9)"),
    ("init", "Examples per batch (default 17)"),
    ("init", "publish/merge steps (default 23)"),
    ("init", "Learning rate (default 0.25)"),
    ("init", "timed sync work (default 12.5)"),
    ("init", "(default sgd)"),
    ("init", "one node (default 7.5:"),
    ("node", "--disk-max SIZE Disk the state directory may take"),
    ("node", "is refused with the least that works. [default: 3M]"),
    ("init", "Merge rule (default median;"),
    ("demo", "The swarm's merge rule. [default: median]"),
])
def test_help_follows_the_library_constants(sentinel_help, command, shown):
    assert shown in sentinel_help[command]


@pytest.mark.parametrize("args", [["--help"], ["sensor", "run", "--help"], ["faults", "--help"]])
def test_help_never_imports_tensorflow(args):
    code = ("import sys\nfrom learnae.cli import main\n"
            f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
            "print('BAD', sorted(m for m in sys.modules if m.split('.')[0] in"
            " ('tensorflow', 'keras', 'sklearn') or m == 'learnae.training.model'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=120, check=True).stdout
    assert "Usage: " in out and out.strip().endswith("BAD []"), out
