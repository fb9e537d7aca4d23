"""The package's layers (docs/design.md, "Layers"), checked by import-linter's contracts in
setup.cfg: each layer imports only from layers below it, sibling modules import each other
without cycles, and only the sensor's commands import the sensor feeder.

The first test checks the package as it is; the others check a copy with one bad import
added, so that a contract that stopped catching anything would fail here too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with ``root/setup.cfg`` on the package in ``root`` (no cache)."""
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: pip install -e '.[dev]' (import-linter)")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", "setup.cfg"], cwd=root,
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A copy of the package and setup.cfg in ``tmp_path`` (pytest removes it)."""
    shutil.copytree(ROOT / "learnae", tmp_path / "learnae",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.cfg", tmp_path / "setup.cfg")
    return tmp_path


def add_import(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n\n{line}  # noqa\n")


def test_the_package_keeps_its_contracts():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_an_upward_import_breaks_the_layers(copy):
    add_import(copy / "learnae" / "node" / "trainer.py", "from learnae.api import start_api")
    done = lint_imports(copy)
    assert done.returncode != 0
    assert "learnae.node is not allowed to import learnae.api" in done.stdout


def test_a_cycle_between_siblings_breaks_the_contract(copy):
    add_import(copy / "learnae" / "local" / "procdriver.py",
               "from learnae.local.harness import run_scenario")
    done = lint_imports(copy)
    assert done.returncode != 0
    assert "No cycles are allowed in learnae.local" in done.stdout


def test_the_api_may_not_import_the_sensor_feeder(copy):
    add_import(copy / "learnae" / "api.py", "from learnae.sensor import Feeder")
    done = lint_imports(copy)
    assert done.returncode != 0
    assert "learnae.api is not allowed to import learnae.sensor" in done.stdout


def test_a_new_module_must_be_given_a_layer(copy):
    (copy / "learnae" / "stray.py").write_text('"""Not in any layer."""\n')
    done = lint_imports(copy)
    assert done.returncode != 0
    assert "learnae.stray" in done.stdout


# ------------------------------------------------ the node (a role) gets its HTTP API injected
@pytest.fixture
def swarm(tmp_path):
    from learnae.manifest import Manifest
    from learnae.models import model_config
    from learnae.state import init_swarm

    return init_swarm(tmp_path / "swarm", Manifest(checkpoint_interval=0, name="t", model=model_config("digits-mlp"),
                                                   pow_bits=4))


def test_a_node_with_an_api_address_needs_a_server(swarm, tmp_path):
    from learnae.errors import ConfigError
    from learnae.node import NodeConfig, TrainerNode

    with pytest.raises(ConfigError, match="needs a server: pass serve=learnae.api.start_api"):
        TrainerNode(NodeConfig(invite=swarm.invite, state=tmp_path / "s", api="127.0.0.1:0"))
    assert TrainerNode(NodeConfig(invite=swarm.invite, state=tmp_path / "s")).config.api is None
    assert not (tmp_path / "s").exists()  # refused or not, nothing started


@pytest.mark.parametrize(("flag", "api"), [((), "127.0.0.1:0"), (("--api", "off"), None),
                                            (("--api", "127.0.0.1:8123"), "127.0.0.1:8123")])
def test_node_run_wires_the_api_server_into_the_node(swarm, tmp_path, monkeypatch, flag, api):
    from click.testing import CliRunner

    import learnae.node
    from learnae.api import start_api
    from learnae.cli import main

    seen = []

    class Node:
        def __init__(self, config):
            seen.append(config)

        def run(self) -> int:
            return 0

    monkeypatch.setattr(learnae.node, "TrainerNode", Node)
    result = CliRunner().invoke(main, ["node", "run", "--invite", str(swarm.directory / "invite.json"),
                                       "--state", str(tmp_path / "s"), "--data", "digits",
                                       "--listen", "127.0.0.1:0", *flag])
    assert result.exit_code == 0, result.output
    assert seen[0].api == api and seen[0].serve is start_api
