"""learnae.training.bridge: the replace-latest queues between Keras and the node (no TensorFlow)."""

from __future__ import annotations

import threading
import time

import numpy as np

from learnae.training.bridge import Merged, Offer, QueueBridge, SwarmBridge


def _offer(step: int, samples: int, tags=()) -> Offer:
    return Offer(
        weights={"w": np.full(2, step, np.float32)},
        step=step,
        samples=samples,
        total_samples=step * 10,
        merged=tuple(tags),
        k=3,
        min_peers=1,
    )


def test_queue_bridge_is_a_swarm_bridge():
    assert isinstance(QueueBridge(), SwarmBridge)


def test_offer_replaces_an_untaken_offer_and_keeps_its_counts():
    bridge = QueueBridge()
    assert bridge.take_offer() is None
    assert bridge.offer_checkpoint(_offer(1, 10, ["a"])) is True
    assert bridge.offer_checkpoint(_offer(2, 10, ["b"])) is True
    assert bridge.offer_checkpoint(_offer(3, 10)) is True
    got = bridge.take_offer()
    assert got.step == 3 and got.weights["w"][0] == 3 and got.total_samples == 30
    assert got.samples == 30 and got.merged == ("a", "b")  # nothing lost from the counts
    assert (got.k, got.min_peers) == (3, 1)
    assert bridge.take_offer() is None
    assert (bridge.offers, bridge.offers_replaced) == (3, 2)
    bridge.offer_checkpoint(_offer(4, 10))
    assert bridge.take_offer().samples == 10  # a taken offer is not counted again


def test_take_offer_waits_up_to_its_timeout():
    bridge = QueueBridge()
    assert bridge.take_offer(timeout=0.05) is None
    threading.Timer(0.05, bridge.offer_checkpoint, [_offer(7, 1)]).start()
    assert bridge.take_offer(timeout=10).step == 7


def test_a_pull_bridge_wants_an_offer_only_while_its_node_waits_for_one():
    assert QueueBridge().wants_offer()  # the default bridge always does
    bridge = QueueBridge(pull=True)
    assert not bridge.wants_offer()
    got = []
    taker = threading.Thread(target=lambda: got.append(bridge.take_offer(timeout=10)))
    taker.start()
    deadline = time.monotonic() + 10
    while not bridge.wants_offer() and time.monotonic() < deadline:
        time.sleep(0.001)
    assert bridge.wants_offer()
    bridge.offer_checkpoint(_offer(3, 5))
    taker.join(10)
    assert got[0].step == 3 and not bridge.wants_offer()
    bridge.offer_checkpoint(_offer(4, 5))  # an offer is still accepted while nobody waits
    assert bridge.take_offer().step == 4 and not bridge.wants_offer()


def test_put_merged_replaces_an_unloaded_set():
    bridge = QueueBridge()
    assert bridge.take_merged() is None
    assert bridge.put_merged({"w": np.zeros(2)}, tag="m1") is False
    assert bridge.put_merged(Merged({"w": np.ones(2)}, tag="m2")) is True
    got = bridge.take_merged()
    assert got.tag == "m2" and np.array_equal(got.weights["w"], np.ones(2))
    assert bridge.take_merged() is None
    assert (bridge.merged_put, bridge.merged_replaced) == (2, 1)


def test_concurrent_offers_and_takes_lose_no_samples():
    bridge = QueueBridge()
    taken: list[Offer] = []
    done = threading.Event()

    def node():
        while not done.is_set() or not bridge.outbox.empty():
            offer = bridge.take_offer(timeout=0.001)
            if offer is not None:
                taken.append(offer)

    thread = threading.Thread(target=node)
    thread.start()
    for step in range(1, 2001):
        bridge.offer_checkpoint(_offer(step, 3))
    done.set()
    thread.join(10)
    assert sum(o.samples for o in taken) == 3 * 2000
    assert [o.step for o in taken] == sorted(o.step for o in taken)
    assert taken[-1].step == 2000
