"""``learnae node run``: options, --config files and refusals that need no running node."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

from learnae.cli import main
from learnae.errors import ConfigError
from learnae.manifest import Manifest, init_swarm
from learnae.models import model_config
from learnae.node import NodeConfig, TrainerNode, _lock_state, state_paths
from learnae.training.data import DataSpec


@pytest.fixture
def invite(tmp_path):
    made = init_swarm(tmp_path / "founder", Manifest(name="cli", model=model_config("digits-mlp"), pow_bits=4))
    path = tmp_path / "invite.json"
    made.invite.save(path)
    return made.invite, path


def test_help_lists_the_options():
    result = CliRunner().invoke(main, ["node", "run", "--help"])
    assert result.exit_code == 0
    for option in ("--invite", "--state", "--data", "--listen", "--peer", "--ipfs", "--api", "--threads",
                   "--keep", "--sync-every", "--config"):
        assert option in result.output


def test_bad_sync_every_is_a_usage_error(invite, tmp_path):
    result = CliRunner().invoke(main, ["node", "run", "--invite", str(invite[1]), "--state", str(tmp_path / "s"),
                                       "--data", "digits", "--sync-every", "often"])
    assert result.exit_code == 2 and "--sync-every" in result.output


def test_config_file_rejects_unknown_keys(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text('invite = "x.json"\ncolour = "blue"\n')
    result = CliRunner().invoke(main, ["node", "run", "--config", str(config)])
    assert result.exit_code == 2 and "unknown key 'colour'" in result.output


def test_config_file_supplies_required_options(invite, tmp_path):
    config = tmp_path / "node.toml"
    config.write_text(f'invite = "{invite[1]}"\nstate = "{tmp_path / "s"}"\ndata = "digits"\nlisten = "nonsense"\n')
    result = CliRunner().invoke(main, ["node", "run", "--config", str(config)])
    # every required option came from the file; the bad listen address is refused before anything starts
    assert result.exit_code == 2 and "listen address 'nonsense'" in result.output


def test_invite_without_genesis_is_refused(invite, tmp_path):
    bare = dataclasses.replace(invite[0], genesis_tx=None)
    with pytest.raises(ConfigError, match="no genesis transaction"):
        TrainerNode(NodeConfig(invite=bare, state=tmp_path / "s", data=DataSpec.parse("digits")))


def test_state_lock_is_exclusive(tmp_path):
    held = _lock_state(tmp_path)
    try:
        with pytest.raises(ConfigError, match="another learnae node is running"):
            _lock_state(tmp_path)
    finally:
        held.close()
    _lock_state(tmp_path).close()


def test_state_paths_name_every_file(tmp_path):
    paths = state_paths(tmp_path)
    assert paths["identity"].name == "identity.key" and paths["tangle"].name == "tangle.sqlite"
    assert {"ipfs", "checkpoint", "progress", "addrs", "api", "status"} <= set(paths)
