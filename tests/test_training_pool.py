"""The adopted-data store (a real SQLite file) and the bounded training pool (reservoir)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from learnae.errors import ConfigError
from learnae.training.pool import AdoptedStore, StoreError, TrainingPool, seed_from

AUTHOR = bytes(range(32))


def _rows(start: int, n: int, features: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose first feature is their index in the stream (start, start+1, ...)."""
    x = np.zeros((n, features), np.float32)
    x[:, 0] = np.arange(start, start + n)
    return x, np.arange(start, start + n, dtype=np.int64) % 3


def test_the_pool_never_exceeds_its_bound_and_keeps_the_own_rows():
    own_x, own_y = _rows(-10, 10)
    pool = TrainingPool(own_x, own_y, max_rows=100, seed=1)
    rng = np.random.default_rng(0)
    seen = 0
    for _ in range(300):
        n = int(rng.integers(0, 40))
        x, y = _rows(seen, n)
        pool.add(x, y)
        seen += n
        assert pool.held == min(seen, 100) and pool.seen == seen
        assert len(pool.x) == len(pool.y) == 10 + min(seen, 100)
    np.testing.assert_array_equal(pool.x[:10], own_x)  # own rows are never evicted
    np.testing.assert_array_equal(pool.y[:10], own_y)
    adopted = pool.x[10:, 0].astype(int)
    assert len(set(adopted.tolist())) == 100  # each row at most once
    assert adopted.min() >= 0 and adopted.max() < seen
    np.testing.assert_array_equal(pool.y[10:], adopted % 3)  # labels stay with their rows
    assert pool.x.dtype == np.float32 and pool.y.dtype == np.int64


def test_until_full_the_pool_holds_every_adopted_row_in_order():
    pool = TrainingPool(*_rows(-2, 2), max_rows=50)
    pool.add(*_rows(0, 30))
    pool.add(*_rows(30, 15))
    assert pool.x[2:, 0].tolist() == list(range(45))


def test_the_sample_is_uniform_over_every_adopted_row():
    """Algorithm R: each of n rows is in the pool with probability k/n, whatever the chunking."""
    k, n, trials = 5, 20, 4000
    counts = np.zeros(n)
    for seed in range(trials):
        pool = TrainingPool(*_rows(0, 0), max_rows=k, seed=seed)
        for start, size in ((0, 3), (3, 9), (12, 1), (13, 7)):  # chunks of uneven sizes
            pool.add(*_rows(start, size))
        counts[pool.x[:, 0].astype(int)] += 1
    freq = counts / trials
    assert np.all(np.abs(freq - k / n) < 0.04), freq  # 6 standard deviations


def test_the_same_seed_and_chunks_give_the_same_pool():
    a, b = (TrainingPool(*_rows(0, 0), max_rows=20, seed=7) for _ in range(2))
    for pool in (a, b):
        for start in range(0, 200, 25):
            pool.add(*_rows(start, 25))
    np.testing.assert_array_equal(a.x, b.x)
    assert seed_from(AUTHOR) == seed_from(AUTHOR) != seed_from(bytes(32))


def test_the_pool_refuses_rows_that_do_not_fit_and_a_bad_bound():
    pool = TrainingPool(*_rows(0, 4), max_rows=10)
    with pytest.raises(ValueError, match="do not fit"):
        pool.add(np.zeros((2, 5), np.float32), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="do not fit"):
        pool.add(np.zeros((2, 3), np.float32), np.zeros(3, np.int64))
    assert pool.held == 0 and len(pool.x) == 4
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="--adopt-max-rows"):
            TrainingPool(*_rows(0, 4), max_rows=bad)


# ------------------------------------------------------------------------------ the store
def test_stored_chunks_persist_across_a_reopen(tmp_path):
    path = tmp_path / "state" / "adopted.sqlite"
    store = AdoptedStore(path)
    assert (store.chunks, store.rows, store.last_seq) == (0, 0, 0)
    chunks = {f"tx{i}": _rows(10 * i, 10 + i, features=4) for i in range(5)}
    seqs = [store.add(tx, AUTHOR, x, y) for tx, (x, y) in chunks.items()]
    assert seqs == sorted(seqs) and None not in seqs
    assert store.add("tx0", AUTHOR, *chunks["tx0"]) is None  # held already: not stored twice
    assert store.held(["tx1", "tx3", "other"]) == {"tx1", "tx3"}

    again = AdoptedStore(path)  # another process after a restart: from the file alone
    assert (again.chunks, again.rows, again.last_seq) == (5, sum(10 + i for i in range(5)), seqs[-1])
    read = list(again.after())
    assert [c.tx for c in read] == list(chunks)
    for c in read:
        x, y = chunks[c.tx]
        np.testing.assert_array_equal(c.x, x)
        np.testing.assert_array_equal(c.y, y)
        assert c.x.dtype == np.float32 and c.y.dtype == np.int64 and c.author == AUTHOR
    assert [c.tx for c in again.after(seqs[2])] == ["tx3", "tx4"]
    assert again.held(f"tx{i}" for i in range(600)) == set(chunks)  # more ids than one query takes


def test_a_row_that_does_not_decode_is_skipped_and_counted(tmp_path):
    path = tmp_path / "adopted.sqlite"
    store = AdoptedStore(path)
    for i in range(3):
        store.add(f"tx{i}", AUTHOR, *_rows(0, 4))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE chunk SET x = x'00' WHERE tx = 'tx1'")
    assert [c.tx for c in store.after()] == ["tx0", "tx2"]
    assert store.unreadable == 1


def test_a_file_that_is_not_a_store_is_refused_with_what_to_do(tmp_path):
    path = tmp_path / "adopted.sqlite"
    path.write_bytes(b"this is not an SQLite file" * 100)
    with pytest.raises(StoreError, match="move it away"):
        AdoptedStore(path)


WRITER = """
import sys, numpy as np
from learnae.training.pool import AdoptedStore
store = AdoptedStore(sys.argv[1])
i = 0
while True:
    x = np.full((50, 8), i, np.float32)
    store.add(f"tx{i}", bytes(32), x, np.full(50, i, np.int64))
    print(i, flush=True)
    i += 1
"""


@pytest.mark.slow
def test_a_writer_killed_mid_write_leaves_whole_chunks(tmp_path):
    path = tmp_path / "adopted.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(20):  # let it commit some chunks, then kill it while it writes more
            assert proc.stdout.readline(), "the writer stopped"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
        proc.stdout.close()
    store = AdoptedStore(path)
    chunks = list(store.after())
    assert store.chunks == len(chunks) >= 20 and store.unreadable == 0
    for i, c in enumerate(chunks):  # every chunk whole, none missing before the last
        assert c.tx == f"tx{i}" and c.x.shape == (50, 8)
        assert (c.x == i).all() and (c.y == i).all()
