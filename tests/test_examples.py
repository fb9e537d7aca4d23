"""The examples run as written: ``examples/keras_callback.py`` joins a user's own ``fit`` to a
swarm with a running node process, publishes checkpoints and merges the peer's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from learnae.local.runner import LocalSwarm

pytestmark = [pytest.mark.slow, pytest.mark.swarm]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "keras_callback.py"


def test_keras_callback_example_publishes_and_merges_with_a_peer(tmp_path):
    with LocalSwarm(tmp_path / "swarm", nodes=1, seed=2) as swarm:
        swarm.wait(swarm.all_training, 120, "the peer node training")
        run = subprocess.run([sys.executable, str(EXAMPLE), "--invite", str(swarm.invite),
                              "--state", str(tmp_path / "mine"), "--peer", swarm.members[0].addr,
                              "--epochs", "60"], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        done = re.search(r"done: loss [\d.]+; (\d+) checkpoints published, (\d+) merges", run.stdout)
        assert done, run.stdout[-2000:]
        assert int(done.group(1)) >= 2 and int(done.group(2)) >= 1
        peer_status = swarm.poll()[0]
    # the peer saw the script's checkpoints on its ledger
    assert len(peer_status["ledger"]["checkpoints_by_author"]) == 2


def test_joined_refuses_a_model_that_is_not_the_swarm_s(tmp_path):
    import keras

    from learnae.errors import ConfigError
    from learnae.manifest import Manifest
    from learnae.models import model_config
    from learnae.node import NodeConfig, TrainerNode
    from learnae.state import init_swarm

    invite = init_swarm(tmp_path / "founder", Manifest(checkpoint_interval=0, name="t", model=model_config("digits-mlp"), pow_bits=4)).invite
    node = TrainerNode(NodeConfig(invite=invite, state=tmp_path / "mine"))
    wrong = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, name="dense")])
    with pytest.raises(ConfigError, match="not the swarm's"), node.joined(wrong, batch_size=32):
        pass
    assert not (tmp_path / "mine").exists()  # refused before the node started anything
