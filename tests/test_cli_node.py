"""``learnae node run``: options, --config files and refusals that need no running node."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from click.testing import CliRunner

from learnae.cli import main
from learnae.errors import ConfigError
from learnae.identity import Identity
from learnae.manifest import Manifest
from learnae.models import model_config
from learnae.node import NodeConfig, TrainerNode
from learnae.node.trainer import _lock_state
from learnae.state import StateDir, init_swarm
from learnae.training.data import DataSpec


@pytest.fixture
def invite(tmp_path):
    made = init_swarm(tmp_path / "founder", Manifest(checkpoint_interval=0, name="cli", model=model_config("digits-mlp"), pow_bits=4))
    path = tmp_path / "invite.json"
    made.invite.save(path)
    return made.invite, path


def test_help_lists_the_options():
    result = CliRunner().invoke(main, ["node", "run", "--help"])
    assert result.exit_code == 0
    for option in ("--invite", "--state", "--data", "--listen", "--peer", "--ipfs", "--api", "--threads",
                   "--keep", "--sync-every", "--config", "--new-identity"):
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
    held = _lock_state(StateDir(tmp_path))
    try:
        with pytest.raises(ConfigError, match="another learnae node is running"):
            _lock_state(StateDir(tmp_path))
    finally:
        held.close()
    _lock_state(StateDir(tmp_path)).close()


# ------------------------------------------------------------------ identity and ledger of a state
def _node(invite, state, **kw) -> TrainerNode:
    return TrainerNode(NodeConfig(invite=invite[0], state=state, data=DataSpec.parse("digits"), api=None, **kw))


@pytest.mark.parametrize("trace", ["progress", "checkpoint", "tangle"])
def test_a_lost_identity_key_is_refused_not_replaced(invite, tmp_path, trace):
    state = tmp_path / "s"
    state.mkdir()
    getattr(StateDir(state), trace).write_bytes(b"{}")  # the directory ran a node before
    result = CliRunner().invoke(main, ["node", "run", "--invite", str(invite[1]), "--state", str(state),
                                       "--data", "digits", "--api", "off", "--epochs", "1"])
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())
    assert "identity.key is missing" in out and getattr(StateDir(state), trace).name in out
    assert "Restore identity.key from your backup" in out and "--new-identity" in out
    assert not StateDir(state).identity.exists()


def test_new_identity_replaces_a_lost_key_deliberately_and_says_so(invite, tmp_path, caplog):
    state = tmp_path / "s"
    state.mkdir()
    StateDir(state).progress.write_text("{}")
    caplog.set_level("INFO", logger="learnae.node")
    identity = _node(invite, state, new_identity=True)._load_identity()
    assert Identity.load(StateDir(state).identity).public_key == identity.public_key
    assert [r for r in caplog.records if r.levelname == "WARNING" and "--new-identity" in r.getMessage()]
    # the flag never replaces a key that is there (left in a config file, it only warns)
    caplog.clear()
    assert _node(invite, state, new_identity=True)._load_identity().public_key == identity.public_key
    assert [r for r in caplog.records if r.levelname == "WARNING" and "is kept" in r.getMessage()]
    assert _node(invite, state)._load_identity().public_key == identity.public_key


def test_a_new_state_directory_gets_a_key_at_info(invite, tmp_path, caplog):
    state = tmp_path / "s"
    state.mkdir()
    (state / "ipfs").mkdir()  # a Kubo repo made beforehand is no sign of a previous run
    caplog.set_level("INFO", logger="learnae.node")
    identity = _node(invite, state)._load_identity()
    assert StateDir(state).identity.exists()
    infos = [r for r in caplog.records if r.levelname == "INFO" and "author key" in r.getMessage()]
    assert infos and identity.author_id in infos[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.slow
def test_a_lost_ledger_is_rebuilt_with_a_warning(invite, tmp_path, caplog):
    """A state directory that ran before (author key, progress) but lost tangle.sqlite: the
    network side starts (embedded Kubo) on a ledger made anew from the invite, and says so."""
    state = tmp_path / "s"
    state.mkdir()
    Identity.generate().save(StateDir(state).identity)
    StateDir(state).progress.write_text("{}")
    caplog.set_level("INFO", logger="learnae.node")
    node = _node(invite, state)
    net = node._start_network()
    try:
        assert node.tangle is not None and node.tangle.count() == 1  # the invite's genesis
    finally:
        node._stop_network(net)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("tangle.sqlite is missing" in w and "rebuilt from the invite" in w for w in warnings), warnings
    # a directory that never ran a node creates its ledger without a warning
    caplog.clear()
    fresh = _node(invite, tmp_path / "fresh")
    net = fresh._start_network()
    fresh._stop_network(net)
    assert not [r for r in caplog.records if "rebuilt from the invite" in r.getMessage()]
