"""A stop request (SIGTERM, SIGINT, :meth:`TrainerNode.stop`) ends training within one batch
wherever it arrives, also between two ``fit`` calls (``fit`` clears ``model.stop_training``
when it starts), and the node then publishes a final checkpoint.

- in process: a real Keras model, the node's own signal handler, the signal raised right
  before the node's second ``fit`` call; :meth:`TrainerNode.joined` with a user's two ``fit``
  calls and :meth:`TrainerNode.stop` between them;
- a real node process stopped by SIGTERM right after it adopted a sensor's data chunk.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from learnae.content import content_id
from learnae.formats import Chunk, encode_chunk
from learnae.identity import Identity
from learnae.ledger.tangle import Tangle
from learnae.ledger.tx import data_payload, make_tx
from learnae.local.runner import free_port
from learnae.manifest import Manifest
from learnae.models import model_config
from learnae.node import NodeConfig, TrainerNode
from learnae.state import init_swarm
from learnae.training.data import DataSpec

pytestmark = pytest.mark.slow  # one node process at a time: runs beside the others (not a swarm)

NODE = "from learnae.cli import main; main()"


@pytest.fixture
def invite(tmp_path):
    manifest = Manifest(checkpoint_interval=0, name="stop", model=model_config("iris-mlp"), pow_bits=2, sync_every=3, learning_rate=0.01)
    return init_swarm(tmp_path / "founder", manifest).invite


@pytest.fixture
def handlers():
    """The node installs SIGINT/SIGTERM handlers in the main thread (pytest's): put back ours."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _final_checkpoint(state: Path) -> dict:
    progress = json.loads((state / "progress.json").read_text())
    with Tangle(state / "tangle.sqlite") as tangle:
        assert progress["last_checkpoint"]["tx"] in set(tangle.order())
    return progress


def test_sigterm_between_two_fit_calls_stops_within_a_batch(invite, tmp_path, monkeypatch, handlers):
    import learnae.node.trainer
    from learnae.training import model as model_module

    monkeypatch.setattr(learnae.node.trainer, "FIT_EPOCHS", 5)  # fit() calls of 5 epochs (4 batches each)
    # TensorFlow's thread pools are fixed once it runs, and earlier tests in this process may
    # have started it: the threads are not what this test is about
    monkeypatch.setattr(model_module, "configure_threads", lambda n, **kw: (n, 1))
    fit_passes = model_module.fit_passes
    node = TrainerNode(NodeConfig(invite=invite, state=tmp_path / "node", data=DataSpec.parse("iris"),
                                  api=None, seed=0, adopt="none", sync_every=3))
    calls = []

    def fit_then_signal(*args, **kwargs):
        calls.append(node._cb.step)
        if len(calls) == 2:  # between two fit() calls, as after an adoption: the real handler runs
            signal.raise_signal(signal.SIGTERM)  # (raise_signal runs it before returning)
            assert node._stopping.is_set()
        if len(calls) > 2:
            pytest.fail("the node called fit() again after SIGTERM")
        return fit_passes(*args, **kwargs)

    monkeypatch.setattr(model_module, "fit_passes", fit_then_signal)
    assert node.run() == 0
    assert len(calls) == 2
    trained_after = node._cb.step - calls[1]
    assert trained_after <= 1, f"{trained_after} batches trained after SIGTERM (a fit() of 5 epochs is 20)"
    progress = _final_checkpoint(node.state)
    assert progress["step"] == progress["last_checkpoint"]["step"] == node._cb.step


def test_stop_between_a_users_fit_calls_ends_the_next_one(invite, tmp_path):
    from learnae.training.model import build_model

    node = TrainerNode(NodeConfig(invite=invite, state=tmp_path / "node", api=None))
    m = node.manifest
    model = build_model(m.model, optimizer=m.optimizer, learning_rate=m.learning_rate, seed=0)
    splits = DataSpec.parse("iris").load()
    x, y = splits.train.x, splits.train.y
    with node.joined(model, batch_size=m.batch_size, samples_per_epoch=len(x)) as cb:
        model.fit(x, y, batch_size=m.batch_size, epochs=1, verbose=0, callbacks=[cb])
        before = cb.step
        node.stop()
        model.fit(x, y, batch_size=m.batch_size, epochs=20, verbose=0, callbacks=[cb])
        assert cb.step - before <= 1, f"{cb.step - before} batches trained after stop()"
    progress = _final_checkpoint(node.state)
    assert progress["step"] == cb.step


# ------------------------------------------------------------------ a node process, SIGTERM
SIGTERM_BIT = 1 << (signal.SIGTERM - 1)
WRITE_SYSCALLS = {"x86_64": "1", "aarch64": "64"}


class StderrTap:
    """A node's stderr through a FIFO this test controls. :meth:`fill` fills the pipe, so the
    node's next write to stderr blocks (an observable point: :func:`_blocked_writing`) until
    :meth:`follow` reads again."""

    def __init__(self, path: Path):
        os.mkfifo(path)
        self.path = path
        self.read_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.data = bytearray()
        self.filled = False  # the pipe is full: nothing is read until follow()
        self.thread: threading.Thread | None = None

    def writer(self) -> int:
        return os.open(self.path, os.O_WRONLY)

    def drain(self) -> None:
        if self.filled or self.thread is not None:
            return
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.read_fd, 65536):
                self.data += chunk

    def fill(self) -> int:
        """Fill the pipe to the last byte; returns where the node's output continues."""
        self.drain()
        mark = len(self.data)
        fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        try:
            for size in (4096, 256, 16, 1):
                with contextlib.suppress(BlockingIOError):
                    while True:
                        os.write(fd, b"#" * (size - 1) + b"\n")
        finally:
            os.close(fd)
        self.filled = True
        return mark

    def follow(self) -> None:
        """Read until every writer closed the pipe (the node exited)."""
        def run():
            while True:
                select.select([self.read_fd], [], [], 0.2)
                try:
                    chunk = os.read(self.read_fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    return
                self.data += chunk

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def text(self, start: int = 0) -> str:
        lines = bytes(self.data[start:]).decode(errors="replace").splitlines()
        return "\n".join(line for line in lines if line.strip("#"))

    def close(self) -> None:
        if self.thread is not None:
            self.thread.join(10)
        os.close(self.read_fd)


def _blocked_writing(pid: int) -> bool:
    """Whether the process's main thread sleeps in a write to a pipe (Linux /proc)."""
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/wchan").read_text().strip() == "pipe_write":
            return True
    with contextlib.suppress(OSError):
        call = Path(f"/proc/{pid}/syscall").read_text().split()
        return call[:2] == [WRITE_SYSCALLS.get(os.uname().machine), "0x2"]
    return False


def _sigterm_pending(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    masks = [int(line.split()[1], 16) for line in status.splitlines() if line.startswith(("SigPnd:", "ShdPnd:"))]
    return any(mask & SIGTERM_BIT for mask in masks)


def _ingest_body(invite, sensor: Identity, rows: int) -> bytes:
    """A ``POST /ingest`` body: one labelled chunk of ``rows`` random rows of the swarm's schema."""
    manifest = invite.manifest()
    schema = manifest.schema
    rng = np.random.default_rng(0)
    now = int(time.time() * 1000)
    chunk = encode_chunk(Chunk(x=rng.normal(size=(rows, *schema.features)).astype(schema.dtype),
                               y=(np.arange(rows) % schema.classes).astype(schema.label_dtype), schema=schema,
                               sensor=sensor.author_id, seq=0, time_range=(now, now)))
    payload = data_payload(cid=content_id(chunk), size=len(chunk), rows=rows, schema=schema.to_dict(),
                           source={"kind": "test"}, seq=0)
    tx = make_tx(sensor, kind="data", payload=payload, parents=[invite.genesis], swarm=invite.genesis,
                 pow_bits=manifest.pow_bits)
    return json.dumps({"chunk": base64.b64encode(chunk).decode(), "tx": base64.b64encode(tx.raw).decode()}).encode()


def test_sigterm_right_after_an_adoption_stops_the_process_within_seconds(tmp_path, launch):
    """The node adopts a chunk posted to its API: an epoch's end ends ``fit`` and the main
    thread adds the rows and logs "adopted ..." before the next ``fit``. The test has filled
    the node's stderr pipe, so that line blocks the main thread there, between two ``fit``
    calls; SIGTERM lands at that point. The process must exit within seconds, having trained
    at most one more batch, with a final checkpoint in its ledger. (Digits: a fit() of
    FIT_EPOCHS epochs, what a lost stop costs, takes tens of seconds.)"""
    manifest = Manifest(checkpoint_interval=0, name="stop", model=model_config("digits-mlp"), pow_bits=2, sync_every=5,
                        learning_rate=0.003)
    invite = init_swarm(tmp_path / "founder", manifest).invite
    invite_path = tmp_path / "invite.json"
    invite.save(invite_path)
    state, api_port = tmp_path / "node", free_port()
    url = f"http://127.0.0.1:{api_port}"
    tap = StderrTap(tmp_path / "stderr.fifo")

    def status() -> dict:
        with contextlib.suppress(OSError, ValueError):
            return json.loads((state / "status.json").read_text())
        return {}

    def wait(predicate, timeout: float, what: str):
        def check():
            tap.drain()
            return predicate()

        return launch.wait(check, timeout, what)

    argv = [sys.executable, "-c", NODE, "-v", "node", "run", "--invite", str(invite_path), "--state", str(state),
            "--data", "digits", "--api", f"127.0.0.1:{api_port}", "--seed", "0", "--quiet"]
    writer = tap.writer()
    try:
        proc = launch.start("node", argv, stdout=subprocess.DEVNULL, stderr=writer,
                            tail=lambda: f"{tap.text()}\nstatus {status()}")
    finally:
        os.close(writer)
    try:
        wait(lambda: status().get("step", 0) >= 30, 90, "the node training")
        mark = tap.fill()
        body = _ingest_body(invite, Identity.generate(), rows=30)
        request = urllib.request.Request(url + "/ingest", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert resp.status == 200
        # the adoption happened and the main thread is stuck writing its log line
        at_stop = wait(lambda: (s := status()).get("adopt", {}).get("chunks", 0) >= 1
                       and _blocked_writing(proc.pid) and s, 60, "the adoption (main thread blocked on stderr)")
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        wait(lambda: not _sigterm_pending(proc.pid), 10, "SIGTERM delivered")
        tap.follow()
        code = launch.wait_exit(proc, 60)
        seconds = time.monotonic() - signalled
    finally:
        proc.stop()
        tap.close()
    log = tap.text()
    # where the signal landed: the blocked write was the adoption's line (the old handler's own
    # log line could come first: written from within the interrupted write)
    after = [line for line in tap.text(mark).splitlines() if "signal 15" not in line]
    assert after and "adopted 1 chunk(s), 30 row(s)" in after[0], after[:3]
    assert code == 0, log[-4000:]
    assert "signal 15: stopping after this batch" in log
    progress = _final_checkpoint(state)
    trained_after = progress["step"] - at_stop["step"]
    print(f"stopped {seconds:.1f} s after SIGTERM; {trained_after} batch(es) trained after it")
    assert 0 <= trained_after <= 1, f"{trained_after} batches trained after SIGTERM:\n{log[-3000:]}"
    assert progress["last_checkpoint"]["step"] == progress["step"]
    assert seconds < 15, f"the node took {seconds:.0f} s to stop"
