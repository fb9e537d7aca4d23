"""The sensor feeder: sources, row parsing, the store-and-forward queue, /ingest checks, the
--via and embedded ways out."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from learnae.content import content_id
from learnae.errors import ConfigError
from learnae.formats import decode_chunk
from learnae.identity import Identity
from learnae.ingest import (
    IngestRejected,
    check_ingest,
    encode_ingest_request,
    handle_ingest,
    ingest_info,
    parse_ingest_request,
    sensor_schema,
)
from learnae.invite import Invite
from learnae.ipfs.memory import MemoryNetwork
from learnae.ledger.tx import data_payload, make_tx
from learnae.manifest import Manifest
from learnae.models import model_config
from learnae.sensor import (
    Feeder,
    Outlet,
    Reading,
    Rejected,
    RowParser,
    SensorQueue,
    Signer,
    ViaOutlet,
    parse_rate,
    parse_source,
)
from learnae.sensor_cli import sensor_group
from learnae.state import init_swarm, open_tangle

ROOT = Path(__file__).resolve().parents[1]


def identity(n: int) -> Identity:
    return Identity(Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32))


SENSOR, STRANGER = identity(7), identity(8)


def make_swarm(d: Path, admission="open"):
    manifest = Manifest(checkpoint_interval=0, name="iris", model=model_config("iris-mlp"), pow_bits=2,
                        admission=admission)
    return init_swarm(d, manifest, founder=identity(1))


@pytest.fixture
def swarm(tmp_path):
    return make_swarm(tmp_path / "swarm")


def queue_for(path, swarm, **kw) -> SensorQueue:
    kw.setdefault("chunk_rows", 10)
    kw.setdefault("max_bytes", 1 << 20)
    return SensorQueue(path, schema=swarm.manifest.schema, sensor=SENSOR.author_id,
                       genesis=swarm.genesis.id, **kw)


def signer(swarm, who=SENSOR) -> Signer:
    return Signer(who, swarm.genesis, swarm.manifest.pow_bits, {"kind": "test"})


class Collect(Outlet):
    """An outlet that records what it is sent; fails the first ``fail`` sends."""

    def __init__(self, fail: int = 0):
        self.sent, self.fail = [], fail

    async def send(self, item, queue):
        if self.fail:
            self.fail -= 1
            raise ConnectionError("offline")
        self.sent.append(item)
        return f"tx-{item.seq}"


def write_csv(path: Path, n: int, bad: dict[int, str] | None = None) -> Path:
    lines = ["time,a,b,c,d,label"]
    for i in range(n):
        lines.append((bad or {}).get(i, f"{i},{i}.5,1,2,3,{i % 3}"))
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- layering
def test_starting_a_sensor_never_imports_tensorflow(tmp_path):
    code = (
        "import sys\n"
        "import learnae.sensor, learnae.sensor_cli\n"
        "from learnae.sensor_cli import sensor_group\n"
        "try:\n"
        "    sensor_group(['run', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('tensorflow', 'keras', 'sklearn') or m.startswith('learnae.training'))\n"
        "print('BAD', bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert "--source" in out
    assert out.strip().endswith("BAD []")


def test_learnae_sensor_run_help_never_imports_tensorflow():
    """Through the real `learnae` entry point, which must register the sensor group."""
    code = (
        "import sys\n"
        "from learnae.cli import main\n"
        "try:\n"
        "    main(['sensor', 'run', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('tensorflow', 'keras', 'sklearn') or m.startswith('learnae.training'))\n"
        "print('BAD', bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert "--source" in out and out.strip().endswith("BAD []")


# --------------------------------------------------------------------------- parsing
def test_rows_follow_the_schema(swarm):
    parser = RowParser(swarm.manifest.schema)
    row = parser.row(Reading(["1.5", 2, 3.0, 4], "2", 123))
    assert np.frombuffer(row.x, "<f4").tolist() == [1.5, 2, 3, 4]
    assert (row.y, row.t) == (2, 123)


@pytest.mark.parametrize("reading, code", [
    (Reading([1, 2, 3], 0), "feature-count"),
    (Reading([1, 2, 3, 4, 5], 0), "feature-count"),
    (Reading([1, "x", 3, 4], 0), "non-numeric"),
    (Reading([1, None, 3, 4], 0), "non-numeric"),
    (Reading([1, True, 3, 4], 0), "non-numeric"),
    (Reading([1, "nan", 3, 4], 0), "non-finite"),
    (Reading([1, 1e300, 3, 4], 0), "non-finite"),
    (Reading([1, 2, 3, 4], None), "missing-label"),
    (Reading([1, 2, 3, 4], 3), "bad-label"),
    (Reading([1, 2, 3, 4], 1.5), "bad-label"),
    (Reading([1, 2, 3, 4], "cat"), "bad-label"),
    (Reading({"a": 1}, 0), "malformed"),
])
def test_bad_readings_are_rejected_with_a_reason(swarm, reading, code):
    with pytest.raises(Rejected) as info:
        RowParser(swarm.manifest.schema).row(reading)
    assert info.value.code == code and info.value.reason


def test_unlabelled_sensors_drop_labels(swarm):
    schema = sensor_schema(swarm.manifest.schema, labelled=False)
    assert schema.label_dtype is None and schema.features == (4,)
    assert RowParser(schema).row(Reading([1, 2, 3, 4])).y is None


def test_rates_and_source_specs(tmp_path):
    assert parse_rate("10/s") == 10 and parse_rate("6/min") == 0.1 and parse_rate("max") == 0
    assert parse_rate("36/h") == pytest.approx(0.01)
    for bad in ("fast", "-1/s", "10/day"):
        with pytest.raises(ConfigError):
            parse_rate(bad)
    csv_path = write_csv(tmp_path / "a.csv", 3)
    src = parse_source(f"csv:{csv_path},rate=100/s,label=label")
    assert src.rate == 100 and src.describe() == {"kind": "csv", "file": "a.csv"}
    assert [r.values for r in src.readings()][0] == ["0.5", "1", "2", "3"]
    assert parse_source("stdin").name == "stdin"
    assert parse_source("cmd:python probe.py --fast").describe()["command"] == "python"
    assert parse_source("py:time:time,rate=2/s").rate == 2
    for bad in ("csv:/nonexistent.csv", "tcp:1234", f"csv:{csv_path},speed=3", "py:math", "py:math:pi",
                "py:math:nothing", "entry:no-such-sensor", "nonsense"):
        with pytest.raises(ConfigError):
            parse_source(bad)


def test_csv_without_header_takes_label_by_index(tmp_path):
    p = tmp_path / "plain.csv"
    p.write_text("1,2,3,4,0\n5,6,7,8,1\n")
    readings = list(parse_source(f"csv:{p},label=-1").readings())
    assert [(r.values, r.label, r.pos) for r in readings] == [
        (["1", "2", "3", "4"], "0", 1), (["5", "6", "7", "8"], "1", 2)]
    assert [r.pos for r in parse_source(f"csv:{p},label=4").readings(resume=1)] == [2]


def test_callable_sources(swarm, tmp_path):
    def gen():
        yield from ([i, i, i, i] for i in range(3))

    from learnae.sensor import CallableSource

    assert [r.values for r in CallableSource(gen, label="g", rate=0).readings()] == [
        [0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2]]
    calls = iter(range(100))
    src = CallableSource(lambda: {"x": [next(calls)] * 4, "y": 1}, label="f", rate=0)
    it = src.readings()
    assert [next(it).values[0] for _ in range(3)] == [0, 1, 2]


# --------------------------------------------------------------------------- the feeder
def run_feeder(source, queue, outlet, schema, **kw) -> dict:
    feeder = Feeder(source, RowParser(schema), queue, outlet, max_age=kw.pop("max_age", 60),
                    flush_interval=0.01, retry_max=kw.pop("retry_max", 0.05), **kw)
    return asyncio.run(feeder.run())


def test_bad_lines_are_counted_and_do_not_stop_the_feeder(swarm, tmp_path):
    lines = [
        '[1, 2, 3, 4]',                       # no label: missing-label
        '{"x": [1, 2, 3, 4], "y": 1}',
        'not json at all',                    # malformed
        '{"x": [1, 2, 3], "y": 1}',           # feature-count
        '{"x": [1, "two", 3, 4], "y": 1}',    # non-numeric
        '{"x": [1, NaN, 3, 4], "y": 1}',      # non-finite
        '{"x": [1, 2, 3, 4], "y": 7}',        # bad-label
        '{"features": [5, 6, 7, 8], "label": 2, "t": 1700000000000}',
        '"just a string"',                    # malformed
        '',
        '{"x": [9, 9, 9, 9], "y": 0}',
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    queue = queue_for(tmp_path / "q.sqlite", swarm)
    outlet = Collect()
    stats = run_feeder(parse_source(f"jsonl:{path}"), queue, outlet, swarm.manifest.schema)
    assert stats["rejected"] == {"missing-label": 1, "malformed": 2, "feature-count": 1,
                                 "non-numeric": 1, "non-finite": 1, "bad-label": 1}
    assert stats["published_rows"] == 3 and stats["queued_chunks"] == 0
    chunk = decode_chunk(outlet.sent[0].data, max_bytes=1 << 20, schema=swarm.manifest.schema)
    assert chunk.x.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 9, 9, 9]]
    assert chunk.y.tolist() == [1, 2, 0] and chunk.sensor == SENSOR.author_id and chunk.seq == 0
    assert chunk.time_range[0] == 1700000000000


def test_command_source_with_a_probe_script(swarm, tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import json\nfor i in range(25):\n"
                     "    print(json.dumps({'x': [i, i, i, i], 'y': i % 3}))\n"
                     "print('garbage')\n")
    queue = queue_for(tmp_path / "q.sqlite", swarm)
    outlet = Collect()
    stats = run_feeder(parse_source(f"cmd:{sys.executable} {probe}"), queue, outlet,
                       swarm.manifest.schema)
    assert stats["rejected"] == {"malformed": 1}
    assert [c.rows for c in outlet.sent] == [10, 10, 5] and stats["published"] == 3


def test_chunks_are_cut_by_age(swarm, tmp_path):
    q = queue_for(tmp_path / "q.sqlite", swarm)
    parser = RowParser(swarm.manifest.schema)
    q.add([parser.row(Reading([1, 2, 3, 4], 0, 1000))] * 3)
    assert q.cut(max_age_ms=5000, now_ms=2000) == []
    assert q.cut(max_age_ms=5000, now_ms=6000) == [0]
    assert q.next_chunk().rows == 3


# --------------------------------------------------------------------------- store and forward
def test_queue_survives_a_restart_and_sends_in_order(swarm, tmp_path):
    parser = RowParser(swarm.manifest.schema)
    q = queue_for(tmp_path / "q.sqlite", swarm)
    q.add(parser.row(Reading([i, 0, 0, 0], i % 3, 1000 + i)) for i in range(25))
    assert q.cut(max_age_ms=None) == [0, 1]
    q.set_tx(0, b"signed")
    q.close()  # power cut
    q = queue_for(tmp_path / "q.sqlite", swarm)
    assert q.readings == 5 and q.next_chunk().seq == 0 and q.next_chunk().tx == b"signed"
    q.acknowledged(0, "tx0")
    assert q.next_chunk().seq == 1
    assert q.cut(force=True) == [2]
    stats = q.stats
    assert (stats["published"], stats["queued_chunks"], stats["next_seq"]) == (1, 2, 3)
    q.close()
    other = make_swarm(tmp_path / "other")
    with pytest.raises(ConfigError, match="another swarm"):
        queue_for(tmp_path / "q.sqlite", other)


def test_offline_then_online_delivers_everything_in_order(swarm, tmp_path):
    csv_path = write_csv(tmp_path / "series.csv", 95, bad={40: "40,oops,1,2,3,1"})
    q = queue_for(tmp_path / "q.sqlite", swarm)
    outlet = Collect(fail=6)  # offline for a while
    stats = run_feeder(parse_source(f"csv:{csv_path}"), q, outlet, swarm.manifest.schema)
    assert stats["rejected"] == {"non-numeric": 1}
    assert [c.seq for c in outlet.sent] == list(range(10))
    xs = np.concatenate([decode_chunk(c.data, max_bytes=1 << 20).x[:, 0] for c in outlet.sent])
    assert xs.tolist() == [i + 0.5 for i in range(95) if i != 40]


def test_a_restart_resumes_the_csv_replay_without_duplicates(swarm, tmp_path):
    csv_path = write_csv(tmp_path / "series.csv", 60)

    class Offline(Outlet):
        async def send(self, item, queue):
            raise ConnectionError("no network")

    q = queue_for(tmp_path / "q.sqlite", swarm)
    run_feeder(parse_source(f"csv:{csv_path}"), q, Offline(), swarm.manifest.schema,
               drain_timeout=0.2)
    assert q.stats["stored"] == 60 and q.stats["queued_chunks"] == 6
    q.close()
    q = queue_for(tmp_path / "q.sqlite", swarm)
    outlet = Collect()
    stats = run_feeder(parse_source(f"csv:{csv_path}"), q, outlet, swarm.manifest.schema)
    assert stats["stored"] == 60 and stats["published_rows"] == 60
    assert [c.seq for c in outlet.sent] == list(range(6))


def test_a_failing_disk_holds_readings_in_memory_until_it_recovers(swarm, tmp_path):
    import sqlite3

    csv_path = write_csv(tmp_path / "series.csv", 30)
    q = queue_for(tmp_path / "q.sqlite", swarm)
    real_add, failures = q.add, [3]

    def flaky_add(rows):
        rows = list(rows)
        if rows and failures[0]:
            failures[0] -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return real_add(rows)

    q.add = flaky_add
    outlet = Collect()
    stats = run_feeder(parse_source(f"csv:{csv_path}"), q, outlet, swarm.manifest.schema,
                       write_retry=0.01)
    assert failures == [0] and stats["published_rows"] == 30
    xs = np.concatenate([decode_chunk(c.data, max_bytes=1 << 20).x[:, 0] for c in outlet.sent])
    assert xs.tolist() == [i + 0.5 for i in range(30)]


def test_full_queue_stop_policy_pauses_reading(swarm, tmp_path):
    q = queue_for(tmp_path / "q.sqlite", swarm, max_bytes=3000, chunk_rows=10)
    parser = RowParser(swarm.manifest.schema)
    rows = [parser.row(Reading([i, 0, 0, 0], 0)) for i in range(200)]
    feeder = Feeder(parse_source("stdin"), parser, q, Collect(), flush_rows=50)
    for r in rows:
        feeder._inbox.put(r)
    for _ in range(10):  # what the store loop does, with the network down
        feeder._drain()
        q.cut()
    stored = q.stats["stored"]
    assert q.full(1) and 0 < stored < 200 and feeder._inbox.qsize() == 200 - stored
    assert q.stats["dropped_rows"] == 0 and q.stats["queued_bytes"] <= 3000
    q.acknowledged(q.next_chunk().seq, "tx")  # one delivered: room again, reading resumes
    feeder._drain()
    assert q.stats["stored"] > stored


def test_full_queue_drop_oldest_policy_counts_what_it_drops(swarm, tmp_path):
    q = queue_for(tmp_path / "q.sqlite", swarm, max_bytes=3000, chunk_rows=10,
                  policy="drop-oldest")
    parser = RowParser(swarm.manifest.schema)
    for i in range(20):
        q.add([parser.row(Reading([i * 10 + j, 0, 0, 0], 0)) for j in range(10)])
        q.cut()
    stats = q.stats
    assert stats["queued_bytes"] <= 3000
    assert stats["dropped_rows"] > 0
    assert stats["dropped_rows"] + stats["queued_chunks"] * 10 + stats["queued_readings"] == 200
    first = decode_chunk(q.next_chunk().data, max_bytes=1 << 20)
    assert first.x[0, 0] == stats["dropped_rows"]  # the newest data is what remains
    with pytest.raises(ConfigError):
        queue_for(tmp_path / "q2.sqlite", swarm, policy="random")


# --------------------------------------------------------------------------- /ingest
def chunk_and_tx(swarm, tangle, who=SENSOR, seq=0, rows=5, parents=None, labelled=True, maker=None):
    """A chunk made by ``maker`` (default ``who``) and its ``data`` tx signed by ``who``."""
    schema = sensor_schema(swarm.manifest.schema, labelled)
    q = SensorQueue(":memory:", schema=schema, sensor=(maker or who).author_id, genesis=swarm.genesis.id,
                    chunk_rows=rows, max_bytes=1 << 20)
    q.put("next_seq", seq)
    parser = RowParser(schema)
    q.add(parser.row(Reading([i, 1, 2, 3], i % 3)) for i in range(rows))
    q.cut(force=True)
    item = q.next_chunk()
    tips = parents if parents is not None else [
        {"id": t, "time": tangle.get(t).time} for t in tangle.tips()]
    tx = Signer(who, swarm.genesis, swarm.manifest.pow_bits, {"kind": "t"}).data_tx(
        item, schema, tips)
    return item.data, tx


def test_check_ingest_accepts_a_signed_chunk_and_a_resend(swarm):
    tangle, manifest = open_tangle(swarm.directory)
    with tangle:
        data, tx = chunk_and_tx(swarm, tangle)
        got, chunk = check_ingest(manifest, tangle, data, tx.raw)
        assert got.id == tx.id and chunk.x.shape == (5, 4) and got.author == SENSOR.public_key
        tangle.insert(tx)
        assert check_ingest(manifest, tangle, data, tx.raw)[0].id == tx.id  # resend: fine
        assert tangle.owner(tx.payload["cid"]) == SENSOR.public_key
        data2, tx2 = chunk_and_tx(swarm, tangle, labelled=False, seq=1)  # unlabelled: fine
        assert check_ingest(manifest, tangle, data2, tx2.raw)[1].y is None


def _expect(code, status, fn):
    with pytest.raises(IngestRejected) as info:
        fn()
    assert (info.value.code, info.value.status) == (code, status), info.value.reason
    return info.value


def test_check_ingest_refusals(swarm, tmp_path):
    tangle, manifest = open_tangle(swarm.directory)
    with tangle:
        data, tx = chunk_and_tx(swarm, tangle)
        bad_sig = bytearray(tx.raw)
        bad_sig[10] ^= 1  # inside the signature
        _expect("bad-signature", 400, lambda: check_ingest(manifest, tangle, data, bytes(bad_sig)))
        _expect("undecodable", 400, lambda: check_ingest(manifest, tangle, data, b"\xff\x00"))
        _expect("too-large", 413,
                lambda: check_ingest(manifest, tangle, data, b"x" * (manifest.limits.tx_bytes + 1)))
        _expect("oversize", 413, lambda: check_ingest(
            manifest, tangle, data + b"\0" * manifest.limits.chunk_bytes, tx.raw))
        _expect("mismatch", 400, lambda: check_ingest(manifest, tangle, data + b" ", tx.raw))
        other, _ = chunk_and_tx(swarm, tangle, seq=3)
        if len(other) == len(data):
            _expect("cid-mismatch", 400, lambda: check_ingest(manifest, tangle, other, tx.raw))
        # a parent the node does not hold: 409 with the node's tips
        stranger_tangle = make_swarm(tmp_path / "elsewhere")
        foreign = stranger_tangle.genesis
        _, tx_far = chunk_and_tx(swarm, tangle, parents=[{"id": foreign.id, "time": 0}])
        err = _expect("unknown-parent", 409, lambda: check_ingest(manifest, tangle, data, tx_far.raw))
        assert err.body()["tips"] == [{"id": swarm.genesis.id, "time": swarm.genesis.time}]
        # a chunk of another schema, honestly announced
        wrong, tx_wrong = _wrong_schema_chunk(swarm)
        _expect("schema", 422, lambda: check_ingest(manifest, tangle, wrong, tx_wrong.raw))
        # another sensor's chunk, signed by this one: a copy
        copied, tx_copied = chunk_and_tx(swarm, tangle, maker=STRANGER, seq=4)
        _expect("not-owner", 403, lambda: check_ingest(manifest, tangle, copied, tx_copied.raw))
        # a checkpoint is not data
        ck = make_tx(SENSOR, kind="genesis", payload={}, parents=[], swarm=None, pow_bits=2)
        _expect("wrong-kind", 400, lambda: check_ingest(manifest, tangle, data, ck.raw))
        # the same seq twice from one sensor
        tangle.insert(tx)
        data3, tx3 = chunk_and_tx(swarm, tangle, rows=6, seq=0)
        _expect("duplicate-seq", 409, lambda: check_ingest(manifest, tangle, data3, tx3.raw))
        _expect("bad-request", 400, lambda: parse_ingest_request(b'{"chunk": 1}'))
        assert parse_ingest_request(encode_ingest_request(data, tx.raw)) == (data, tx.raw)


def _wrong_schema_chunk(swarm):
    """A chunk of another schema (3 features, no labels) and its honest data tx by SENSOR."""
    from learnae.formats import Chunk, Schema, encode_chunk

    schema = Schema((3,), "float32")
    wrong = encode_chunk(Chunk(np.zeros((2, 3), np.float32), None, schema, "p", 0, (0, 0)))
    payload = data_payload(cid=content_id(wrong), size=len(wrong), rows=2,
                           schema={"features": [3], "dtype": "float32", "label_dtype": None,
                                   "classes": None}, source="x", seq=0)
    tx = make_tx(SENSOR, kind="data", payload=payload, parents=[swarm.genesis.id],
                 swarm=swarm.genesis.id, pow_bits=2)
    return wrong, tx


def test_check_ingest_refuses_a_sensor_outside_a_closed_swarm(tmp_path):
    swarm = make_swarm(tmp_path / "closed", admission=(SENSOR.author_id,))
    tangle, manifest = open_tangle(swarm.directory)
    with tangle:
        data, tx = chunk_and_tx(swarm, tangle, who=SENSOR)
        check_ingest(manifest, tangle, data, tx.raw)
        data, tx = chunk_and_tx(swarm, tangle, who=STRANGER)
        _expect("not-admitted", 403, lambda: check_ingest(manifest, tangle, data, tx.raw))


def ingest_ipfs():
    """The node's IPFS side for ingest tests: a node of the simulated network (real CIDs)."""
    return MemoryNetwork(seed=0).node("node")


class IngestServer:
    """A stand-in trainer node: ``POST /ingest`` over :func:`handle_ingest`, in a thread that
    owns the tangle. ``outage`` requests are answered 503 first."""

    def __init__(self, directory: Path, outage: int = 0, author_query: bool = True):
        self.directory, self.outage, self.ipfs, self.published = directory, outage, ingest_ipfs(), []
        self.author_query = author_query  # GET /ingest?author=ID answers next_seq
        self.ready = threading.Event()
        self.answers: list[int] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _serve(self):
        tangle, manifest = open_tangle(self.directory)
        server = self

        async def publish(tx):
            server.published.append(tx.id)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                server.answers.append("GET")
                author = parse_qs(urlsplit(self.path).query).get("author", [None])[0]
                if server.author_query and author:
                    out = json.dumps(ingest_info(tangle, author=author)).encode()
                else:
                    out = json.dumps(ingest_info(tangle)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if server.outage:
                    server.outage -= 1
                    status, answer = 503, {"error": "busy", "reason": "try later"}
                else:
                    status, answer = asyncio.run(handle_ingest(
                        body, manifest=manifest, tangle=tangle, ipfs=server.ipfs,
                        publish=publish))
                server.answers.append(status)
                out = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.ready.set()
        try:
            self.httpd.serve_forever(poll_interval=0.05)
        finally:
            self.httpd.server_close()
            tangle.close()

    def close(self):
        self.httpd.shutdown()
        self.thread.join(5)


@pytest.fixture
def node(swarm):
    server = IngestServer(swarm.directory, outage=3)
    yield server
    server.close()


def test_via_mode_delivers_every_chunk_signed_by_the_sensor(swarm, node, tmp_path):
    csv_path = write_csv(tmp_path / "series.csv", 47)
    q = queue_for(tmp_path / "q.sqlite", swarm)
    outlet = ViaOutlet(node.url, signer(swarm), swarm.manifest.schema)
    stats = run_feeder(parse_source(f"csv:{csv_path},rate=max"), q, outlet,
                       swarm.manifest.schema, retry_max=0.05)
    assert stats["published"] == 5 and stats["published_rows"] == 47
    assert node.answers[0] == "GET"  # a new sensor asks for the node's tips first
    assert node.answers[1:4] == [503] * 3 and set(node.answers[4:]) == {200}
    node.close()
    tangle, _ = open_tangle(swarm.directory)
    with tangle:
        txs = tangle.data_by_author(SENSOR.public_key)
        assert sorted(t.payload["seq"] for t in txs) == list(range(5))
        assert set(node.published) == {t.id for t in txs}
        assert all(tangle.owner(t.payload["cid"]) == SENSOR.public_key for t in txs)
        assert all(node.ipfs.has(t.payload["cid"]) for t in txs)
        assert len(set(txs[-1].parents) - {swarm.genesis.id}) >= 1  # approves the node's tips


def test_cli_run_via_a_node(swarm, tmp_path):
    node = IngestServer(swarm.directory)
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"x": [i, 0, 0, 0], "y": 1}) + "\n" for i in range(12))
                    + "oops\n")
    state = tmp_path / "sensor"
    result = CliRunner().invoke(sensor_group, [
        "run", "--invite", str(swarm.directory / "invite.json"), "--state", str(state),
        "--source", f"jsonl:{path}", "--via", node.url, "--rows", "5", "--name", "pi-1"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    assert stats["published_rows"] == 12 and stats["rejected"] == {"malformed": 1}
    assert (state / "identity.key").stat().st_mode & 0o077 == 0
    status = CliRunner().invoke(sensor_group, ["status", "--state", str(state)])
    assert json.loads(status.stdout)["published"] == 3
    bad = CliRunner().invoke(sensor_group, [
        "run", "--invite", str(swarm.directory / "invite.json"), "--state", str(state),
        "--source", "tcp:1", "--via", node.url])
    assert bad.exit_code == 2 and "tcp" in bad.output
    node.close()


def test_handle_ingest_answers_in_json(swarm):
    tangle, manifest = open_tangle(swarm.directory)
    ipfs = ingest_ipfs()
    with tangle:
        data, tx = chunk_and_tx(swarm, tangle)
        body = encode_ingest_request(data, tx.raw)
        status, answer = asyncio.run(handle_ingest(body, manifest=manifest, tangle=tangle,
                                                   ipfs=ipfs))
        assert status == 200 and answer["tx"] == tx.id and answer["tips"] == [
            {"id": tx.id, "time": tx.time}]
        assert asyncio.run(handle_ingest(body, manifest=manifest, tangle=tangle,
                                         ipfs=ipfs))[0] == 200
        status, answer = asyncio.run(handle_ingest(b"{}", manifest=manifest, tangle=tangle,
                                                   ipfs=ipfs))
        assert status == 400 and answer["error"] == "bad-request" and answer["reason"]
        tampered = json.loads(body)
        tampered["chunk"] = base64.b64encode(data[:-1] + b"\x01").decode()
        status, answer = asyncio.run(handle_ingest(json.dumps(tampered).encode(),
                                                   manifest=manifest, tangle=tangle, ipfs=ipfs))
        assert (status, answer["error"]) == (400, "cid-mismatch")


# --------------------------------------------------------------------------- embedded Kubo
@pytest.mark.slow
async def test_embedded_sensor_publishes_chunks_another_node_receives(swarm, tmp_path):
    from conftest import eventually

    from learnae.ipfs.embedded import EmbeddedNode
    from learnae.ledger.sync import TangleSync
    from learnae.sensor import EmbeddedOutlet

    trainer_tangle, _ = open_tangle(swarm.directory)
    trainer = await EmbeddedNode.start(tmp_path / "trainer-ipfs", swarm.invite.swarm_key)
    sync = TangleSync(trainer_tangle, trainer, announce_interval=0.5)
    feeder_task = None
    try:
        await sync.start()
        invite = swarm.invite.with_bootstrap([(await trainer.addrs())[0]])
        invite_path = tmp_path / "invite.json"
        invite.save(invite_path)
        state = tmp_path / "pi"
        from learnae.sensor import load_identity

        me = load_identity(state)
        schema = swarm.manifest.schema
        q = SensorQueue(state / "queue.sqlite", schema=schema, sensor=me.author_id, chunk_rows=10,
                        genesis=swarm.genesis.id, max_bytes=1 << 20)
        csv_path = write_csv(tmp_path / "series.csv", 30)
        outlet = EmbeddedOutlet(state, Invite.load(invite_path), me, schema, {"kind": "csv"})
        feeder = Feeder(parse_source(f"csv:{csv_path}"), RowParser(schema), q, outlet,
                        flush_interval=0.01)

        async def received():
            return len(trainer_tangle.data_by_author(me.public_key)) == 3

        feeder_task = asyncio.create_task(feeder.run())
        await eventually(lambda: q.stats["published"] == 3, timeout=40)
        # the feeder stays up while the source is done? it returns once all is delivered;
        # the trainer gets the transactions by gossip (or anti-entropy) meanwhile
        stats = await asyncio.wait_for(feeder_task, 30)
        assert stats["published_rows"] == 30
        assert q.stats["published"] == 3
        q.close()
        # restart the sensor's node alone so the trainer can fetch from it and sync
        outlet2 = EmbeddedOutlet(state, Invite.load(invite_path), me, schema, {"kind": "csv"})
        await outlet2.start()
        try:
            await eventually(received, timeout=30)
            txs = trainer_tangle.data_by_author(me.public_key)
            data = await trainer.cat(txs[0].payload["cid"], timeout=20)
            chunk = decode_chunk(data, max_bytes=1 << 20, schema=schema)
            assert chunk.x.shape == (10, 4)
            assert trainer_tangle.owner(txs[0].payload["cid"]) == me.public_key
        finally:
            await outlet2.close()
    finally:
        if feeder_task is not None and not feeder_task.done():
            feeder_task.cancel()
        await sync.stop()
        await trainer.close()
        trainer_tangle.close()


# --------------------------------------------------------------------------- sensors/
def test_the_example_probe_feeds_an_iris_shaped_swarm(swarm, tmp_path):
    probe = ROOT / "sensors" / "examples" / "co2_probe.py"
    q = queue_for(tmp_path / "q.sqlite", swarm, chunk_rows=100)
    outlet = Collect()
    stats = run_feeder(parse_source(f"cmd:{sys.executable} {probe}"), q, outlet,
                       swarm.manifest.schema)
    assert stats["rejected"] == {} and stats["published_rows"] > 500
    y = np.concatenate([decode_chunk(c.data, max_bytes=1 << 20).y for c in outlet.sent])
    assert set(y.tolist()) == {0, 1, 2}


def test_sigterm_keeps_what_was_read(swarm, tmp_path):
    import signal
    import time

    state = tmp_path / "pi"
    proc = subprocess.Popen(
        [sys.executable, "-m", "learnae.sensor_cli", "run", "--invite",
         str(swarm.directory / "invite.json"), "--state", str(state), "--source", "stdin",
         "--via", "http://127.0.0.1:9", "--rows", "1000"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    for i in range(250):
        proc.stdin.write(json.dumps({"x": [i, 0, 0, 0], "y": 0}).encode() + b"\n")
    proc.stdin.flush()
    db = state / "queue.sqlite"
    for _ in range(300):  # until the feeder has stored them (it commits every 0.2 s)
        time.sleep(0.1)
        if db.exists():
            import sqlite3

            con = sqlite3.connect(db)
            try:
                row = con.execute("SELECT value FROM meta WHERE key = 'stored'").fetchone()
            except sqlite3.OperationalError:
                row = None
            finally:
                con.close()
            if row and int(row[0]) == 250:
                break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    stats = json.loads(out.decode().strip().splitlines()[-1])
    assert stats["stored"] == 250 and stats["published"] == 0  # nobody listens on port 9
    q = queue_for(state / "queue.sqlite", swarm, chunk_rows=1000, max_bytes=256 << 20)
    assert q.readings == 250
    q.close()


@pytest.mark.slow
async def test_cli_embedded_sensor_process_feeds_a_trainer_tangle(swarm, tmp_path):
    """`learnae sensor run` without --via, in its own process with its own Kubo node; a
    trainer's tangle (this process) receives its signed data transactions and chunks."""
    from conftest import eventually

    from learnae.ipfs.embedded import EmbeddedNode
    from learnae.ledger.sync import TangleSync

    tangle, _ = open_tangle(swarm.directory)
    trainer = await EmbeddedNode.start(tmp_path / "trainer-ipfs", swarm.invite.swarm_key)
    sync = TangleSync(tangle, trainer, announce_interval=0.5)
    proc = None
    try:
        await sync.start()
        invite_path = tmp_path / "invite.json"
        swarm.invite.with_bootstrap([(await trainer.addrs())[0]]).save(invite_path)
        probe = tmp_path / "probe.py"
        probe.write_text("import json, sys, time\nfor i in range(30):\n"
                         "    print(json.dumps({'x': [i, 1, 2, 3], 'y': i % 3}))\n"
                         "sys.stdout.flush()\ntime.sleep(12)\n")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "learnae.sensor_cli", "run", "--invite", str(invite_path),
            "--state", str(tmp_path / "pi"), "--source", f"cmd:{sys.executable} {probe}",
            "--rows", "10", "--max-age", "0.5", cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)

        def data_txs():
            return [t for t in (tangle.get(i) for i in tangle.order()) if t.kind == "data"]

        await eventually(lambda: len(data_txs()) == 3, timeout=40)
        txs = data_txs()
        author = txs[0].author
        assert {t.author for t in txs} == {author} and author != swarm.founder.public_key
        assert sorted(t.payload["seq"] for t in txs) == [0, 1, 2]
        chunk = decode_chunk(await trainer.cat(txs[0].payload["cid"], timeout=20),
                             max_bytes=1 << 20, schema=swarm.manifest.schema)
        assert chunk.x.shape == (10, 4)
        out, err = await asyncio.wait_for(proc.communicate(), 40)
        assert proc.returncode == 0, err.decode()
        assert json.loads(out.decode().strip().splitlines()[-1])["published_rows"] == 30
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        await sync.stop()
        await trainer.close()
        tangle.close()


async def test_via_mode_against_the_node_api(swarm, tmp_path):
    """A sensor in --via mode posting to the trainer node's own HTTP API (learnae/api.py),
    with a chunk larger than aiohttp's default 1 MiB body limit."""

    from learnae.api import start_api

    tangle, manifest = open_tangle(swarm.directory)
    ipfs = ingest_ipfs()
    node = SimpleNamespace(manifest=manifest, tangle=tangle, ipfs=ipfs, sync=None, status=dict)
    runner, url = await start_api(node)
    port = int(url.rsplit(":", 1)[1])
    try:
        rows = 60_000  # 60,000 rows x 24 bytes: a 1.4 MB chunk
        path = tmp_path / "big.jsonl"
        path.write_text("".join(f'{{"x": [{i}, 1, 2, 3], "y": {i % 3}}}\n' for i in range(rows)))
        q = queue_for(tmp_path / "q.sqlite", swarm, chunk_rows=rows, max_bytes=64 << 20)
        outlet = ViaOutlet(f"http://127.0.0.1:{port}", signer(swarm), swarm.manifest.schema)
        feeder = Feeder(parse_source(f"jsonl:{path}"), RowParser(swarm.manifest.schema), q,
                        outlet, flush_interval=0.01, retry_max=0.05, flush_rows=4096)
        stats = await feeder.run()
        assert stats["published"] == 1 and stats["published_rows"] == rows
        (tx,) = tangle.data_by_author(SENSOR.public_key)
        assert tx.payload["size"] > 1 << 20 and ipfs.has(tx.payload["cid"])
    finally:
        await runner.cleanup()
        tangle.close()


# --------------------------------------------------------------------------- /ingest over HTTP
@pytest.fixture
async def node_api(request, tmp_path):
    """The trainer node's HTTP API (learnae.api) over a swarm; ``request.param`` = admission."""
    from learnae.api import start_api

    admission = getattr(request, "param", "open")
    made = make_swarm(tmp_path / "api-swarm", admission=admission)
    tangle, manifest = open_tangle(made.directory)
    node = SimpleNamespace(manifest=manifest, tangle=tangle, ipfs=ingest_ipfs(), sync=None, status=dict)
    runner, url = await start_api(node)
    yield made, node, url
    await runner.cleanup()
    tangle.close()


async def _post(url: str, body: bytes) -> tuple[int, dict]:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.post(
            f"{url}/ingest", data=body, headers={"Content-Type": "application/json"}) as resp:
        return resp.status, await resp.json()


async def _refused(url, body, status, code) -> None:
    got_status, answer = await _post(url, body)
    assert (got_status, answer["error"]) == (status, code), answer
    assert answer["reason"]


async def test_ingest_accepts_a_signed_chunk(node_api):
    made, node, url = node_api
    data, tx = chunk_and_tx(made, node.tangle)
    status, answer = await _post(url, encode_ingest_request(data, tx.raw))
    assert status == 200 and answer["tx"] == tx.id
    assert tx.id in node.tangle and node.ipfs.has(tx.payload["cid"])


async def test_ingest_refuses_an_unsigned_tx(node_api):
    made, node, url = node_api
    data, tx = chunk_and_tx(made, node.tangle)
    await _refused(url, encode_ingest_request(data, tx.unsigned), 400, "bad-fields")
    assert tx.id not in node.tangle


async def test_ingest_refuses_a_wrong_signature(node_api):
    made, node, url = node_api
    data, tx = chunk_and_tx(made, node.tangle)
    raw = bytearray(tx.raw)
    raw[10] ^= 1  # inside the signature
    await _refused(url, encode_ingest_request(data, bytes(raw)), 400, "bad-signature")


async def test_ingest_refuses_an_oversize_chunk(node_api):
    made, node, url = node_api
    data, tx = chunk_and_tx(made, node.tangle)
    padded = data + b"\0" * (node.manifest.limits.chunk_bytes + 1 - len(data))
    await _refused(url, encode_ingest_request(padded, tx.raw), 413, "oversize")
    # a body far over the limit is refused by the HTTP layer, in JSON too
    status, answer = await _post(url, b"x" * (node.manifest.limits.chunk_bytes * 2))
    assert status == 413 and answer["reason"]


async def test_ingest_refuses_a_chunk_outside_the_schema(node_api):
    made, node, url = node_api
    wrong, tx = _wrong_schema_chunk(made)
    await _refused(url, encode_ingest_request(wrong, tx.raw), 422, "schema")


@pytest.mark.parametrize("node_api", [(identity(1).author_id,)], indirect=True)
async def test_ingest_refuses_a_sensor_not_admitted(node_api):
    made, node, url = node_api
    data, tx = chunk_and_tx(made, node.tangle, who=STRANGER)
    await _refused(url, encode_ingest_request(data, tx.raw), 403, "not-admitted")


# --------------------------------------------------------------------------- answers and seq
class FakeNode:
    """An HTTP server on 127.0.0.1 answering every request with ``answer(method, body)`` ->
    ``(status, body bytes)``; counts the POSTs it got."""

    def __init__(self, answer):
        self.answer, self.posts = answer, 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _reply(self, method, body):
                status, out = server.answer(method, body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def do_GET(self):
                self._reply("GET", b"")

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                server.posts += 1
                self._reply("POST", body)

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def _posted_tx(body: bytes):
    from learnae.ledger.tx import decode_tx

    return decode_tx(parse_ingest_request(body)[1])


_BOGUS_ANSWERS = {
    "empty-object": lambda m, body: (200, b"{}"),
    "not-json": lambda m, body: (200, b"<html>welcome to the router</html>"),
    "a-list": lambda m, body: (200, b"[]"),
    "another-tx": lambda m, body: (200, json.dumps(
        {"tx": "bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy",
         "cid": _posted_tx(body).payload["cid"] if body else "", "tips": []}).encode()),
    "another-cid": lambda m, body: (200, json.dumps(
        {"tx": _posted_tx(body).id if body else "", "cid": "bafkqaaa", "tips": []}).encode()),
}


@pytest.mark.parametrize("answer", sorted(_BOGUS_ANSWERS))
def test_via_mode_keeps_chunks_an_answer_does_not_name(swarm, tmp_path, caplog, answer):
    """A 2xx answer that does not name the exact transaction and chunk sent acknowledges
    nothing: the chunks stay queued, the answers are counted and logged as warnings."""
    fake = FakeNode(_BOGUS_ANSWERS[answer])
    try:
        csv_path = write_csv(tmp_path / "series.csv", 25)
        q = queue_for(tmp_path / "q.sqlite", swarm)
        outlet = ViaOutlet(fake.url, signer(swarm), swarm.manifest.schema)
        with caplog.at_level("WARNING", logger="learnae.sensor"):
            stats = run_feeder(parse_source(f"csv:{csv_path}"), q, outlet, swarm.manifest.schema,
                               retry_max=0.05, drain_timeout=0.5)
        assert fake.posts >= 2
        assert stats["published"] == 0 and stats["queued_chunks"] == 3, stats
        assert stats["bad_answers"] == fake.posts, stats
        warned = [r for r in caplog.records if r.levelname == "WARNING"
                  and "stays queued" in r.message]
        assert warned, caplog.text
        q.close()
        q = queue_for(tmp_path / "q.sqlite", swarm)  # on disk, after a restart
        assert q.next_chunk().seq == 0 and q.stats["queued_chunks"] == 3
        assert q.stats["bad_answers"] == stats["bad_answers"]
        q.close()
    finally:
        fake.close()


def test_a_queue_renumbers_its_pending_chunks(swarm, tmp_path):
    q = queue_for(tmp_path / "q.sqlite", swarm)
    parser = RowParser(swarm.manifest.schema)
    q.add(parser.row(Reading([i, 0, 0, 0], i % 3, 1000 + i)) for i in range(45))
    assert q.cut() == [0, 1, 2, 3]
    q.acknowledged(0, "tx0")
    q.reject(1, "schema: refused")
    q.set_tx(2, b"signed")
    before = q.stats["queued_bytes"]
    with pytest.raises(ValueError):
        q.renumber(2, 2)
    assert q.renumber(2, 40) == 2  # chunks 2, 3 -> 40, 41
    item = q.next_chunk()
    assert (item.seq, item.tx) == (40, None) and item.cid == content_id(item.data)
    chunk = decode_chunk(item.data, max_bytes=1 << 20, schema=swarm.manifest.schema)
    assert chunk.seq == 40 and chunk.x[:, 0].tolist() == list(range(20, 30))
    q.acknowledged(40, "tx40")
    assert decode_chunk(q.next_chunk().data, max_bytes=1 << 20).seq == 41
    assert q.cut(force=True) == [42]  # readings not yet cut follow
    stats = q.stats
    assert stats["renumbered"] == 1 and stats["next_seq"] == 43 and stats["rejected_chunks"] == 1
    assert abs(stats["queued_bytes"] - before) < 2048
    q.close()


def _published_seqs(tangle, who=SENSOR) -> list[int]:
    return sorted(tx.payload["seq"] for tx in tangle.data_by_author(who.public_key))


@pytest.mark.parametrize("learns_by", ["get-ingest", "duplicate-seq"])
def test_a_sensor_that_lost_its_state_carries_on_after_the_nodes_seq(swarm, tmp_path, caplog,
                                                                      learns_by):
    """Same key, empty state directory: the node already holds seq 0..2 of this sensor. The
    sensor learns the next free seq (from GET /ingest?author=, or the 409 duplicate-seq
    answer), renumbers its queued chunks, warns, and its chunks are accepted."""
    node = IngestServer(swarm.directory, author_query=learns_by == "get-ingest")
    try:
        first = write_csv(tmp_path / "first.csv", 30)
        q = queue_for(tmp_path / "old.sqlite", swarm)
        outlet = ViaOutlet(node.url, signer(swarm), swarm.manifest.schema)
        assert run_feeder(parse_source(f"csv:{first}"), q, outlet,
                          swarm.manifest.schema)["published"] == 3
        q.close()
        second = tmp_path / "second.jsonl"
        second.write_text("".join(json.dumps({"x": [100 + i, 0, 0, 0], "y": 1}) + "\n"
                                  for i in range(25)))
        q = queue_for(tmp_path / "new.sqlite", swarm)  # the state directory was lost
        outlet = ViaOutlet(node.url, signer(swarm), swarm.manifest.schema)
        with caplog.at_level("WARNING", logger="learnae.sensor"):
            stats = run_feeder(parse_source(f"jsonl:{second}"), q, outlet, swarm.manifest.schema,
                               drain_timeout=30)
        assert stats["published"] == 3 and stats["queued_chunks"] == 0, stats
        assert stats["renumbered"] == 1 and stats["next_seq"] == 6, stats
        warned = [r for r in caplog.records if r.levelname == "WARNING"
                  and "renumbered" in r.message]
        assert len(warned) == 1, caplog.text
        assert "seq 3" in warned[0].message
        q.close()
    finally:
        node.close()
    tangle, _ = open_tangle(swarm.directory)
    with tangle:
        assert _published_seqs(tangle) == list(range(6))
        txs = sorted(tangle.data_by_author(SENSOR.public_key), key=lambda t: t.payload["seq"])
        chunks = [decode_chunk(node.ipfs._blocks[t.payload["cid"]], max_bytes=1 << 20) for t in txs]
        assert [c.seq for c in chunks] == list(range(6))  # each file re-encoded with its new seq
        assert chunks[3].x[:, 0].tolist() == list(range(100, 110))


def test_duplicate_seq_answers_name_the_next_seq_without_scanning_history(swarm):
    tangle, manifest = open_tangle(swarm.directory)
    with tangle:
        for seq in range(3):
            tangle.insert(chunk_and_tx(swarm, tangle, seq=seq)[1])

        def scan(_author):
            raise AssertionError("check_ingest must not scan the author's history")

        tangle.data_by_author = scan
        data, tx = chunk_and_tx(swarm, tangle, seq=1, rows=7)
        err = _expect("duplicate-seq", 409, lambda: check_ingest(manifest, tangle, data, tx.raw))
        assert err.body()["next_seq"] == 3 and err.body()["tips"]
        data, tx = chunk_and_tx(swarm, tangle, seq=3)
        assert check_ingest(manifest, tangle, data, tx.raw)[0].id == tx.id
        assert ingest_info(tangle, author=SENSOR.author_id)["next_seq"] == 3
        assert ingest_info(tangle, author=STRANGER.author_id)["next_seq"] == 0
        assert "next_seq" not in ingest_info(tangle)
        assert "next_seq" not in ingest_info(tangle, author="not-an-author")


def test_an_embedded_sensor_that_lost_its_state_carries_on_after_its_ledgers_seq(swarm, tmp_path,
                                                                                caplog):
    """EmbeddedOutlet reads the next free seq from its own ledger instead of publishing a
    second transaction at a seq its key already used."""
    from learnae.sensor import EmbeddedOutlet

    class Published:
        def __init__(self):
            self.txs = []

        async def publish(self, tx):
            self.txs.append(tx.id)

    class Outlet(EmbeddedOutlet):  # the ledger and IPFS node are set below, not started
        async def start(self):
            pass

        async def close(self):
            pass

    tangle, _ = open_tangle(swarm.directory)
    with tangle:
        for seq in range(3):  # synced from the swarm: what this key published before
            tangle.insert(chunk_and_tx(swarm, tangle, seq=seq)[1])
        outlet = Outlet(tmp_path / "pi", swarm.invite, SENSOR, swarm.manifest.schema,
                        {"kind": "csv"})
        outlet.tangle, outlet.node, outlet.sync = tangle, ingest_ipfs(), Published()
        q = queue_for(tmp_path / "q.sqlite", swarm)
        with caplog.at_level("WARNING", logger="learnae.sensor"):
            stats = run_feeder(parse_source(f"csv:{write_csv(tmp_path / 's.csv', 25)}"), q,
                               outlet, swarm.manifest.schema, drain_timeout=30)
        assert _published_seqs(tangle) == list(range(6))  # no seq used twice
        assert stats["published"] == 3 and stats["renumbered"] == 1, stats
        assert len(outlet.sync.txs) == 3
        assert any("renumbered" in r.message for r in caplog.records if r.levelname == "WARNING")
        q.close()


def test_a_deeply_nested_json_body_is_a_bad_request(swarm):
    tangle, manifest = open_tangle(swarm.directory)
    with tangle:
        for body in (b"[" * 100_000 + b"]" * 100_000, b'{"chunk": ' * 50_000):
            status, answer = asyncio.run(handle_ingest(body, manifest=manifest, tangle=tangle,
                                                       ipfs=ingest_ipfs()))
            assert (status, answer["error"]) == (400, "bad-request") and answer["reason"]


async def test_ingest_answers_a_deeply_nested_body_with_bad_request(node_api):
    _made, _node, url = node_api
    await _refused(url, b"[" * 100_000, 400, "bad-request")


class HeldAdd:
    """An IPFS node whose ``add`` counts its calls and waits for :attr:`release`; ``fail``
    makes the next released add raise (the node's IPFS failed)."""

    def __init__(self):
        self.node, self.calls, self.release, self.fail = ingest_ipfs(), 0, asyncio.Event(), False

    async def add(self, data):
        from learnae.errors import IpfsError

        self.calls += 1
        await self.release.wait()
        if self.fail:
            self.fail = False
            raise IpfsError("the repo is locked")
        return await self.node.add(data)


async def test_handle_ingest_claims_a_seq_between_its_check_and_its_insert(swarm):
    """One loop, no timing: a task runs up to its first suspension when the test yields once."""
    tangle, manifest = open_tangle(swarm.directory)
    ipfs = HeldAdd()

    def post(data, tx):
        return asyncio.create_task(handle_ingest(encode_ingest_request(data, tx.raw),
                                                 manifest=manifest, tangle=tangle, ipfs=ipfs))

    tasks = []
    with tangle:
        try:
            data_a, tx_a = chunk_and_tx(swarm, tangle, seq=0, rows=5)
            data_b, tx_b = chunk_and_tx(swarm, tangle, seq=0, rows=6)
            tasks.append(a := post(data_a, tx_a))
            await asyncio.sleep(0)
            assert ipfs.calls == 1  # A is checked and inside ipfs.add
            tasks.append(b := post(data_b, tx_b))  # another tx at the same seq
            await asyncio.sleep(0)
            assert b.done() and ipfs.calls == 1, "B was not refused before ipfs.add"
            status, answer = b.result()
            assert (status, answer["error"], answer["next_seq"]) == (409, "duplicate-seq", 1)
            tasks.append(again := post(data_a, tx_a))  # A again: waits for the first's outcome
            await asyncio.sleep(0)
            assert ipfs.calls == 1 and not again.done()
            ipfs.fail = True  # the first post fails: the waiting one takes over
            ipfs.release.set()
            assert (await a)[0] == 503
            status, answer = await again
            assert (status, answer["tx"]) == (200, tx_a.id) and ipfs.calls == 2
            assert [t.id for t in tangle.data_by_author(SENSOR.public_key)] == [tx_a.id]
        finally:
            ipfs.release.set()
            await asyncio.gather(*tasks, return_exceptions=True)
