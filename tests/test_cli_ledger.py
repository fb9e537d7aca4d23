"""`learnae init` and `learnae ledger ...` on real files: modes, refusals, show, verify (tamper
detection), lineage and export."""

from __future__ import annotations

import fcntl
import json
import re
import sqlite3
import stat

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from learnae import manifest as manifest_module
from learnae.cli import main
from learnae.content import content_id
from learnae.identity import Identity
from learnae.invite import Invite
from learnae.ledger.tx import checkpoint_payload, data_payload, snapshot_payload
from learnae.manifest import Manifest, short_id
from learnae.models import MODELS
from learnae.state import node_listen, open_tangle

PEER = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
FILES = {"genesis.tx": 0o644, "manifest.json": 0o644, "swarm.key": 0o600, "identity.key": 0o600,
         "tangle.sqlite": None, "invite.json": 0o600, "node.json": 0o644}


def identity(n: int) -> Identity:
    return Identity(Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32))


BOB, CAROL = identity(2), identity(3)


def run(*args: str, ok: bool = True):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def swarm(tmp_path):
    d = tmp_path / "swarm"
    run("init", d, "--name", "digits", "--model", "digits-mlp", "--pow-bits", "2")
    return d


def append_data(tangle, author: Identity, n: int):
    payload = data_payload(cid=content_id(b"chunk %d" % n), size=10, rows=5,
                           schema={"features": [64]}, source="probe", seq=n)
    return tangle.append(author, "data", payload)


def append_checkpoint(tangle, author: Identity, n: int, base=(), data=()):
    payload = checkpoint_payload(cid=content_id(b"checkpoint %d" % n), size=100, step=n, samples=32,
                                 base=[t.id for t in base], data=[t.id for t in data],
                                 metrics={"loss": 0.5 / (n + 1), "accuracy": 0.9})
    return tangle.append(author, "checkpoint", payload)


@pytest.fixture
def history(swarm):
    """A swarm with data chunks and a chain of checkpoints c3 -> c2 -> c1 (base links)."""
    founder = Identity.load(swarm / "identity.key")
    tangle, _ = open_tangle(swarm)
    with tangle:
        d1, d2, d3 = (append_data(tangle, CAROL, n) for n in range(3))
        c1 = append_checkpoint(tangle, founder, 1, data=[d1])
        c2 = append_checkpoint(tangle, BOB, 2, base=[c1], data=[d2])
        c3 = append_checkpoint(tangle, founder, 3, base=[c2], data=[d3])
    return {"d1": d1, "d2": d2, "d3": d3, "c1": c1, "c2": c2, "c3": c3}


# --------------------------------------------------------------------------- init
def test_init_writes_every_file_with_the_right_modes(swarm):
    for name, mode in FILES.items():
        path = swarm / name
        assert path.is_file(), name
        if mode is not None:
            assert stat.S_IMODE(path.stat().st_mode) == mode, name
    assert stat.S_IMODE(swarm.stat().st_mode) == 0o700
    manifest = Manifest.from_payload(json.loads((swarm / "manifest.json").read_text()))
    assert manifest.name == "digits" and manifest.pow_bits == 2
    assert json.loads(manifest.model) == MODELS["digits-mlp"]
    invite = Invite.load(swarm / "invite.json")
    assert invite.swarm_key == (swarm / "swarm.key").read_text()
    assert invite.genesis_tx == (swarm / "genesis.tx").read_bytes()
    assert (invite.name, invite.pow_bits, invite.bootstrap) == ("digits", 2, ())
    assert invite.manifest() == manifest
    Identity.load(swarm / "identity.key")
    tangle, m = open_tangle(swarm)
    with tangle:
        assert tangle.swarm == invite.genesis and tangle.count() == 1 and m == manifest


def test_init_prints_what_it_made_and_the_next_step(tmp_path):
    result = run("init", tmp_path / "s", "--name", "n", "--model", "iris-mlp", "--pow-bits", "0")
    invite = Invite.load(tmp_path / "s" / "invite.json")
    assert invite.genesis in result.output
    assert "learnae node run --invite" in result.output and "--state" in result.output
    assert "invite.json" in result.output


def test_init_refuses_to_overwrite(swarm):
    before = {name: (swarm / name).read_bytes() for name in FILES}
    result = run("init", swarm, "--name", "other", "--model", "digits-mlp", ok=False)
    assert result.exit_code == 2
    assert "already holds a swarm" in result.output and "refusing to overwrite" in result.output
    assert {name: (swarm / name).read_bytes() for name in FILES} == before


def test_init_refuses_when_any_swarm_file_is_present(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    (d / "swarm.key").write_text("x")
    result = run("init", d, "--name", "n", "--model", "digits-mlp", ok=False)
    assert result.exit_code == 2 and "swarm.key" in result.output


def test_init_options_reach_the_manifest_and_invite(tmp_path):
    keys = tmp_path / "members.txt"
    keys.write_text(f"# lab members\n{BOB.author_id}  # bob\n\n{CAROL.author_id}\n")
    model = tmp_path / "model.json"
    model.write_text(json.dumps(MODELS["wine-mlp"]))
    d = tmp_path / "lab"
    run("init", d, "--name", "lab", "--model", model, "--pow-bits", "1", "--admission", keys,
        "--listen", "127.0.0.1:4123", "--bootstrap", f"/ip4/10.0.0.1/tcp/4001/p2p/{PEER}",
        "--merge", "multikrum", "--merge-param", "f=1", "--merge-param", "m=2",
        "--optimizer", "sgd", "--learning-rate", "0.01", "--batch-size", "16",
        "--sync-every", "5", "--sync-interval", "2.5")
    m = Invite.load(d / "invite.json").manifest()
    founder = Identity.load(d / "identity.key").author_id
    assert m.admission == (BOB.author_id, CAROL.author_id, founder)
    assert (m.input_shape, m.classes, m.merge, m.merge_params) == ((13,), 3, "multikrum", {"f": 1, "m": 2})
    assert (m.optimizer, m.learning_rate, m.batch_size, m.sync_every, m.sync_interval) == ("sgd", 0.01, 16, 5, 2.5)
    assert Invite.load(d / "invite.json").bootstrap == (f"/ip4/10.0.0.1/tcp/4001/p2p/{PEER}",)
    assert json.loads((d / "node.json").read_text()) == {"listen": "127.0.0.1:4123"}
    assert node_listen(d) == ("127.0.0.1", 4123)


@pytest.mark.parametrize(("args", "reason"), [
    (["--model", "nonexistent"], "neither a known model"),
    (["--model", "digits-mlp", "--admission", "missing.txt"], "no admission file at"),
    (["--model", "digits-mlp", "--bootstrap", "/ip4/1.2.3.4/tcp/1"], "/p2p/"),
    (["--model", "digits-mlp", "--listen", "localhost:1"], "HOST:PORT"),
    (["--model", "digits-mlp", "--learning-rate", "-1"], "learning_rate"),
    (["--model", "digits-mlp", "--merge-param", "nokey"], "KEY=VALUE"),
    (["--model", "digits-mlp", "--merge", "trimmed", "--merge-param", "trim=0.2"], "no parameter 'trim'"),
])
def test_init_refuses_bad_options_with_a_reason(tmp_path, args, reason):
    result = run("init", tmp_path / "s", "--name", "n", *args, ok=False)
    assert result.exit_code == 2 and reason in result.output, result.output
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(("rule", "params"), [
    (["--merge", "trimmed"], "its parameters: beta"),
    (["--merge", "multikrum"], "its parameters: f, m"),
    ([], "its parameters: none"),  # the default rule, mean
])
def test_init_bad_merge_param_names_the_rules_real_parameters(tmp_path, rule, params):
    result = run("init", tmp_path / "s", "--name", "n", "--model", "digits-mlp", *rule,
                 "--merge-param", "trim0.2", ok=False)
    assert result.exit_code == 2 and "KEY=VALUE" in result.output, result.output
    assert params in result.output and "trim=" not in result.output, result.output


def test_init_help_shows_the_real_defaults_and_rules():
    from learnae.merge import RULES

    init = main.get_command(None, "init")  # loaded on first use
    merge = next(p for p in init.params if p.name == "merge")
    assert tuple(merge.type.choices) == RULES
    text = run("init", "--help").output
    assert f"default {manifest_module.DEFAULT_POW_BITS})" in text
    assert f"default {manifest_module.DEFAULT_LEARNING_RATE})" in text
    assert f"default {manifest_module.DEFAULT_BATCH_SIZE})" in text
    assert f"default {manifest_module.DEFAULT_SYNC_EVERY})" in text
    assert f"default {manifest_module.DEFAULT_MERGE};" in text


@pytest.mark.parametrize("command", [["init"], ["ledger"], ["ledger", "show"], ["ledger", "verify"],
                                     ["ledger", "lineage"], ["ledger", "export"]])
def test_every_command_has_help_with_an_example(command):
    assert "Example" in run(*command, "--help").output


# --------------------------------------------------------------------------- show
def test_show_on_a_fresh_swarm(swarm):
    genesis = Invite.load(swarm / "invite.json").genesis
    text = run("ledger", "show", swarm).output
    assert "digits" in text and genesis in text and "1 transactions (genesis 1)" in text
    assert "tips      1:" in text
    info = json.loads(run("ledger", "show", swarm, "--json").output)
    assert info["count"] == 1 and info["counts"] == {"genesis": 1} and info["tips"] == [genesis]
    assert info["pending"] == 0 and info["missing"] == [] and info["admission"] == "open"
    assert info["latest"][0]["id"] == genesis and info["latest"][0]["author"].startswith("z6Mk")


def test_show_after_appending(swarm, history):
    info = json.loads(run("ledger", "show", swarm, "--json", "-n", "3").output)
    assert info["count"] == 7 and info["counts"] == {"checkpoint": 3, "data": 3, "genesis": 1}
    assert [t["id"] for t in info["latest"]] == [history[k].id for k in ("c3", "c2", "c1")]
    assert history["c3"].id in info["tips"]
    text = run("ledger", "show", swarm).output
    assert "7 transactions (checkpoint 3, data 3, genesis 1)" in text
    assert history["c3"].id in text and short_id(BOB.author_id) in text
    assert "latest 7" in text


# --------------------------------------------------------------------------- verify
def test_verify_passes_then_catches_a_changed_byte(swarm, history):
    result = run("ledger", "verify", swarm)
    assert result.output.startswith("ok: 7 transactions verified")
    victim = history["c2"].id
    db = sqlite3.connect(swarm / "tangle.sqlite")
    (raw,) = db.execute("SELECT raw FROM tx WHERE id = ?", (victim,)).fetchone()
    tampered = bytearray(raw)
    tampered[-40] ^= 0x01  # inside the payload
    with db:
        db.execute("UPDATE tx SET raw = ? WHERE id = ?", (bytes(tampered), victim))
    db.close()
    result = run("ledger", "verify", swarm, ok=False)
    assert result.exit_code == 1
    assert "FAILED" in result.output and victim in result.output
    assert re.search(rf"{victim}: (the stored bytes have id|transaction .*not)", result.output)


def test_verify_catches_a_changed_signature_byte(swarm, history):
    victim = history["d1"].id
    db = sqlite3.connect(swarm / "tangle.sqlite")
    (raw,) = db.execute("SELECT raw FROM tx WHERE id = ?", (victim,)).fetchone()
    with db:
        db.execute("UPDATE tx SET raw = ? WHERE id = ?", (raw[:10] + bytes([raw[10] ^ 0x80]) + raw[11:], victim))
    db.close()
    result = run("ledger", "verify", swarm, ok=False)
    assert result.exit_code == 1 and victim in result.output


def test_verify_catches_a_damaged_genesis(swarm):
    db = sqlite3.connect(swarm / "tangle.sqlite")
    (raw,) = db.execute("SELECT raw FROM tx WHERE height = 0").fetchone()
    with db:
        db.execute("UPDATE tx SET raw = ? WHERE height = 0", (raw[:-1] + bytes([raw[-1] ^ 1]),))
    db.close()
    result = run("ledger", "verify", swarm, ok=False)
    assert result.exit_code == 1 and "genesis:" in result.output


def test_verify_reports_a_store_sqlite_cannot_read(swarm):
    db = sqlite3.connect(swarm / "tangle.sqlite")
    with db:  # || makes TEXT of the BLOB, which SQLite then fails to decode as UTF-8
        db.execute("UPDATE tx SET raw = substr(raw, 1, length(raw) - 1) || x'00' WHERE height = 0")
    db.close()
    result = run("ledger", "verify", swarm, ok=False)
    assert result.exit_code == 1 and "the store is damaged" in result.output


def test_verify_checks_genesis_file(swarm, tmp_path):
    other = tmp_path / "other"
    run("init", other, "--name", "other", "--model", "iris-mlp", "--pow-bits", "0")
    (swarm / "genesis.tx").write_bytes((other / "genesis.tx").read_bytes())
    result = run("ledger", "verify", swarm, ok=False)
    assert result.exit_code == 1 and "genesis.tx: holds transaction" in result.output


@pytest.mark.parametrize("command", [["show"], ["verify"], ["lineage", "bafyreix"], ["export"]])
def test_ledger_commands_refuse_missing_state(tmp_path, command):
    result = run("ledger", command[0], tmp_path / "nowhere", *command[1:], ok=False)
    assert result.exit_code == 2 and "does not exist" in result.output
    (tmp_path / "empty").mkdir()
    result = run("ledger", command[0], tmp_path / "empty", *command[1:], ok=False)
    assert result.exit_code == 2 and "holds no ledger" in result.output
    assert not (tmp_path / "empty" / "tangle.sqlite").exists()


def test_ledger_refuses_a_file_that_is_not_a_ledger(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "tangle.sqlite").write_bytes(b"not sqlite at all" * 100)
    result = run("ledger", "show", tmp_path / "s", ok=False)
    assert result.exit_code == 2 and "not a usable tangle store" in result.output


@pytest.mark.parametrize("command", [["show"], ["verify"], ["lineage", "bafyreix"], ["export"]])
def test_ledger_commands_never_write_an_empty_or_foreign_file(tmp_path, command):
    """A 0-byte ledger (a disk that filled, a copy cut short) and another program's SQLite
    file get a clear message, and their bytes are left as they were."""
    (tmp_path / "s").mkdir()
    ledger = tmp_path / "s" / "tangle.sqlite"
    ledger.write_bytes(b"")
    result = run("ledger", command[0], tmp_path / "s", *command[1:], ok=False)
    assert result.exit_code == 2 and "empty file, not a learnae ledger" in result.output
    assert ledger.stat().st_size == 0 and "genesis_raw" not in result.output
    ledger.unlink()
    db = sqlite3.connect(ledger)
    db.execute("CREATE TABLE photos (name TEXT)")
    db.commit()
    db.close()
    before = ledger.read_bytes()
    result = run("ledger", command[0], tmp_path / "s", *command[1:], ok=False)
    assert result.exit_code == 2 and "not a learnae ledger" in result.output
    assert ledger.read_bytes() == before


# --------------------------------------------------------------------------- lineage
def test_lineage_of_a_checkpoint_whose_base_has_a_base(swarm, history):
    h = history
    text = run("ledger", "lineage", swarm, h["c3"].id).output
    lines = text.splitlines()

    def line_of(key):
        return next(i for i, line in enumerate(lines) if short_id(h[key].id) in line)

    def indent(key):
        line = lines[line_of(key)]
        return len(line) - len(line.lstrip(" │├└─"))

    assert lines[0].startswith("checkpoint " + short_id(h["c3"].id))
    assert indent("c2") < indent("c1") and indent("c2") < indent("d2") < indent("d1")
    assert indent("d3") == indent("c2")
    assert "merged: checkpoint" in lines[line_of("c2")] and "trained on: data" in lines[line_of("d3")]
    assert "3 checkpoints and 3 data chunks" in text
    full = run("ledger", "lineage", swarm, h["c3"].id, "--full").output
    assert all(h[k].id in full for k in h)


def test_lineage_depth_and_sharing(swarm, history):
    h = history
    text = run("ledger", "lineage", swarm, h["c3"].id, "--depth", "1").output
    assert "more below: raise --depth" in text and short_id(h["c1"].id) not in text
    assert "3 checkpoints and 3 data chunks" in text  # the summary counts everything
    tangle, _ = open_tangle(swarm)
    with tangle:  # c4 merges c3 and c2; c2 is also c3's base: expanded once
        c4 = append_checkpoint(tangle, BOB, 4, base=[h["c3"], h["c2"]])
    text = run("ledger", "lineage", swarm, c4.id, "--depth", "0").output
    assert text.count("(shown above)") == 1 and text.count(short_id(h["d1"].id)) == 1


def test_lineage_of_a_long_chain(swarm):
    tangle, _ = open_tangle(swarm)
    with tangle:
        chain = [append_checkpoint(tangle, BOB, 0)]
        for n in range(1, 1200):  # deeper than Python's recursion limit
            chain.append(append_checkpoint(tangle, BOB, n, base=[chain[-1]]))
    text = run("ledger", "lineage", swarm, chain[-1].id, "--depth", "0").output
    assert short_id(chain[0].id) in text and "1200 checkpoints" in text


def test_lineage_by_content_cid_and_json(swarm, history):
    h = history
    by_cid = run("ledger", "lineage", swarm, h["c2"].payload["cid"]).output
    assert by_cid.splitlines()[0].startswith("checkpoint " + short_id(h["c2"].id))
    assert short_id(h["c3"].id) not in by_cid
    data = json.loads(run("ledger", "lineage", swarm, h["c3"].id, "--json").output)
    assert data["root"] == h["c3"].id
    assert {t["id"] for t in data["transactions"]} == {h[k].id for k in h}
    c3 = next(t for t in data["transactions"] if t["id"] == h["c3"].id)
    assert c3["payload"]["base"] == [h["c2"].id] and c3["payload"]["data"] == [h["d3"].id]


def test_lineage_refusals(swarm, history):
    cases = [
        (history["d1"].id, "is a data, not a checkpoint"),
        ("bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy", "not in this ledger"),
        (content_id(b"never announced"), "no checkpoint in this ledger announces"),
        ("hello", "neither a transaction id nor a content CID"),
    ]
    for arg, reason in cases:
        result = run("ledger", "lineage", swarm, arg, ok=False)
        assert result.exit_code == 2 and reason in result.output, (arg, result.output)


# --------------------------------------------------------------------------- export
def test_export_dot_holds_every_id_and_edge(swarm, history):
    text = run("ledger", "export", swarm, "--format", "dot").output
    assert text.startswith("digraph tangle {") and text.rstrip().endswith("}")
    tangle, _ = open_tangle(swarm)
    with tangle:
        ids = tangle.order()
        edges = {(i, p) for i in ids for p in tangle.get(i).parents}
    assert len(ids) == 7 and all(f'"{i}" [label=' in text for i in ids)
    assert all(f'"{c}" -> "{p}";' in text for c, p in edges)
    assert text.count(" -> ") == len(edges)


def test_export_json_parses(swarm, history, tmp_path):
    out = tmp_path / "ledger.json"
    run("ledger", "export", swarm, "--format", "json", "-o", out)
    txs = json.loads(out.read_text())
    tangle, _ = open_tangle(swarm)
    with tangle:
        assert [t["id"] for t in txs] == tangle.order()
    by_id = {t["id"]: t for t in txs}
    c3 = by_id[history["c3"].id]
    assert c3["kind"] == "checkpoint" and c3["author"] == Identity.load(swarm / "identity.key").author_id
    assert c3["payload"]["base"] == [history["c2"].id] and c3["swarm"] == txs[0]["id"]
    assert len(bytes.fromhex(c3["sig"])) == 64
    genesis = txs[0]
    assert genesis["kind"] == "genesis" and genesis["swarm"] is None and genesis["parents"] == []
    assert Manifest.from_payload(genesis["payload"]).name == "digits"
    assert json.loads(run("ledger", "export", swarm).output) == txs  # json is the default


# --------------------------------------------------------------------------- pruned ledgers
@pytest.fixture
def pruned_history(swarm):
    """A chain of merges c1 <- c2 <- ... <- c5 by two authors, pruned by `ledger prune` to each
    author's newest checkpoint (c4, c5)."""
    founder = Identity.load(swarm / "identity.key")
    tangle, _ = open_tangle(swarm)
    with tangle:
        d1 = append_data(tangle, CAROL, 0)
        cs = [append_checkpoint(tangle, founder, 1, data=[d1])]
        for n in range(2, 6):
            cs.append(append_checkpoint(tangle, BOB if n % 2 == 0 else founder, n, base=[cs[-1]]))
    out = run("ledger", "prune", swarm, "--window", "0", "--keep-per-author", "1").output
    assert out.startswith("pruned 3 of 7 transactions"), out
    assert "kept 4 (checkpoint 2, data 1, genesis 1)" in out
    return {"d1": d1, **{f"c{n}": c for n, c in enumerate(cs, 1)}}


def test_verify_says_what_was_pruned(swarm, pruned_history):
    out = run("ledger", "verify", swarm).output
    assert re.match(r"ok: 4 transactions verified in .*; 3 pruned, the last prune cut checkpoints before"
                    r" \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC; \d+ entry points$", out.strip()), out
    show = run("ledger", "show", swarm).output
    assert "pruned    3 pruned, the last prune cut checkpoints before" in show
    assert json.loads(run("ledger", "show", swarm, "--json").output)["pruning"]["total"] == 3


def test_lineage_says_where_history_was_pruned(swarm, pruned_history):
    h = pruned_history
    text = run("ledger", "lineage", swarm, h["c5"].id).output
    c3_line = next(line for line in text.splitlines() if short_id(h["c3"].id) in line)
    assert "merged:" in c3_line and "(pruned: history stops here; this ledger cut checkpoints before" in c3_line
    assert "not in this ledger" not in text
    assert "2 checkpoints and 0 data chunks in this lineage; 1 pruned (checkpoints before" in text
    data = json.loads(run("ledger", "lineage", swarm, h["c5"].id, "--json").output)
    c3 = next(t for t in data["transactions"] if t["id"] == h["c3"].id)
    assert c3 == {"id": h["c3"].id, "stored": False, "pruned": True}


def test_prune_refuses_while_a_node_runs(swarm, history):
    with open(swarm / "node.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running node holds
        result = run("ledger", "prune", swarm, ok=False)
    assert result.exit_code == 2 and "a learnae node is running on" in result.output
    assert "7 transactions" in run("ledger", "show", swarm).output


def test_prune_help_and_durations():
    from learnae.cli.ledger import PRUNE_KEEP, PRUNE_WINDOW, parse_duration
    from learnae.node.upkeep import DEFAULT_LEDGER_KEEP, DEFAULT_LEDGER_WINDOW

    text = run("ledger", "prune", "--help").output
    assert "Example" in text and "refuses while a node runs" in text and "entry points" in text
    assert (parse_duration(PRUNE_WINDOW), PRUNE_KEEP) == (DEFAULT_LEDGER_WINDOW * 1000, DEFAULT_LEDGER_KEEP)
    assert [parse_duration(d) for d in ("90s", "30m", "1h", "2d", "500ms", "3600", "1.5h")] == [
        90_000, 1_800_000, 3_600_000, 172_800_000, 500, 3_600_000, 5_400_000]
    result = run("ledger", "prune", "/nonexistent", "--window", "soon", ok=False)
    assert result.exit_code == 2 and "is not a duration" in result.output


def test_show_and_export_a_snapshot_transaction(swarm, history):
    founder = Identity.load(swarm / "identity.key")
    tangle, _ = open_tangle(swarm)
    with tangle:
        snap = tangle.append(founder, "snapshot", snapshot_payload(cid=content_id(b"snapshot"), size=4321,
                                                                   txs=7, top=tangle.top_height))
    text = run("ledger", "show", swarm).output
    assert "snapshot 1" in text and re.search(rf"snapshot\s+{re.escape(short_id(founder.author_id))}\s+{snap.id}", text)
    txs = {t["id"]: t for t in json.loads(run("ledger", "export", swarm).output)}
    assert txs[snap.id]["kind"] == "snapshot"
    assert txs[snap.id]["payload"] == {"cid": content_id(b"snapshot"), "size": 4321, "txs": 7,
                                      "top": snap.payload["top"]}
    assert 'fillcolor="plum"' in run("ledger", "export", swarm, "--format", "dot").output
    assert run("ledger", "verify", swarm).output.startswith("ok: 8 transactions verified")


def test_attestations_shows_standings_and_disputes(swarm):
    from learnae.ledger.tx import attestation_payload

    founder = Identity.load(swarm / "identity.key")
    tangle, _ = open_tangle(swarm)
    with tangle:
        liar = [append_checkpoint(tangle, BOB, n) for n in range(1, 11)]
        honest = append_checkpoint(tangle, CAROL, 12)
        # the 5% draw (on ids that differ from run to run) seldom gives a checkpoint here a
        # committee; whatever it draws, 18 disputes (each weighing 0.25 or 1: at least 4.5)
        # against 2 agreements (at most 2) put BOB's score below 0.5, (3 + A) / (4 + A + D)
        for n, c in enumerate(liar):
            verdict, code = ("agree", "ok") if n == 9 else ("dispute", "holdout-no-gain")
            for verifier in (founder, CAROL):
                tangle.append(verifier, "attestation", attestation_payload(
                    checkpoint=c.id, method="holdout", verdict=verdict, code=code,
                    figures={"loss": 1.0, "base_loss": 0.9}), approve=c.id)
        tangle.append(founder, "attestation", attestation_payload(
            checkpoint=honest.id, method="holdout", verdict="agree", code="ok", figures={}), approve=honest.id)
    report = json.loads(run("ledger", "attestations", swarm, "--json").output)
    by_key = {row["author_key"]: row for row in report["standings"]}
    assert report["attestations"] == 21
    assert by_key[BOB.public_key.hex()]["flagged"] and not by_key[CAROL.public_key.hex()]["flagged"]
    assert len(report["disputes"]) == 18 and {d["code"] for d in report["disputes"]} == {"holdout-no-gain"}
    assert report["disputes"][0]["subject"] == BOB.author_id
    text = run("ledger", "attestations", swarm, "--disputes", "2").output
    assert "latest 2 disputes" in text and "holdout-no-gain" in text
    assert re.search(rf"{re.escape(manifest_module.short_author(BOB.public_key))}.*yes", text)
    fresh = run("ledger", "attestations", swarm.parent / "nothing", ok=False)
    assert fresh.exit_code == 2 and "does not exist" in fresh.output


def test_attestations_of_a_ledger_nobody_judged(swarm):
    assert "no author has been judged yet" in run("ledger", "attestations", swarm).output


def test_credits_count_checkpoints_lineage_data_and_verdicts(swarm):
    from learnae.ledger.credits import Credit, credits
    from learnae.ledger.tx import attestation_payload

    dave, sensor = identity(4), identity(5)
    tangle, _ = open_tangle(swarm)
    with tangle:
        d1, d2, _unused = (append_data(tangle, sensor, n) for n in range(3))  # 5 rows each
        a1 = append_checkpoint(tangle, BOB, 1, data=[d1])
        a2 = append_checkpoint(tangle, BOB, 2, base=[a1])
        b1 = append_checkpoint(tangle, CAROL, 3, base=[a2], data=[d1, d2])  # merges a2 (a1 through it)
        c1 = append_checkpoint(tangle, dave, 4)
        append_checkpoint(tangle, dave, 5, base=[c1])  # its own: not merged by another
        append_checkpoint(tangle, sensor, 6, data=[d2])  # its own data: not adopted by another
        for verifier, target, verdict in ((dave, b1, "agree"), (BOB, b1, "dispute"), (BOB, c1, "agree"),
                                          (CAROL, c1, "agree")):
            tangle.append(verifier, "attestation", attestation_payload(
                checkpoint=target.id, method="holdout", verdict=verdict,
                code="ok" if verdict == "agree" else "holdout-no-gain", figures={}), approve=target.id)
        table = credits(tangle)
    assert table[BOB.public_key] == Credit(checkpoints=2, merged=2)
    assert table[CAROL.public_key] == Credit(checkpoints=1, attested=1, disputed=1)
    assert table[dave.public_key] == Credit(checkpoints=2, attested=1)
    assert table[sensor.public_key] == Credit(checkpoints=1, data_chunks=3, data_rows=15, rows_adopted=10)
    assert Identity.load(swarm / "identity.key").public_key not in table  # the founder made the genesis only

    report = json.loads(run("ledger", "credits", swarm, "--json").output)
    assert report["transactions"] == 14 and len(report["credits"]) == 4  # genesis, 3 data, 6 checkpoints, 4 verdicts
    by_key = {row["author_key"]: row for row in report["credits"]}
    assert by_key[sensor.public_key.hex()]["rows_adopted"] == 10 and by_key[BOB.public_key.hex()]["merged"] == 2
    text = run("ledger", "credits", swarm).output
    assert "14 transactions; 4 contributors" in text and "ADOPTED" in text
    assert re.search(rf"{re.escape(manifest_module.short_author(BOB.public_key))}\s+2\s+2\s+0", text)


def test_credits_follow_base_links_to_a_checkpoint_higher_in_the_tangle(swarm):
    """A ``base`` link is not a parent: a checkpoint on old tips (low in the tangle) can name a
    base far above it. Its lineage still counts, whatever the tangle's order."""
    from learnae.ledger.credits import credits
    from learnae.ledger.tx import make_tx

    tangle, manifest = open_tangle(swarm)
    with tangle:
        chain = [append_checkpoint(tangle, BOB, 1)]
        for n in range(2, 6):
            chain.append(append_checkpoint(tangle, BOB, n, base=[chain[-1]]))
        late = make_tx(CAROL, kind="checkpoint", parents=[tangle.genesis.id], swarm=tangle.genesis.id,
                       pow_bits=manifest.pow_bits, payload=checkpoint_payload(
                           cid=content_id(b"late"), size=1, step=1, samples=1, base=[chain[-1].id], data=[],
                           metrics={}))
        tangle.insert(late)
        assert tangle.order().index(late.id) < tangle.order().index(chain[-1].id)
        assert credits(tangle)[BOB.public_key].merged == 5


def test_credits_of_a_fresh_swarm_and_a_missing_directory(swarm):
    assert "nobody has published a checkpoint or data yet" in run("ledger", "credits", swarm).output
    missing = run("ledger", "credits", swarm.parent / "nothing", ok=False)
    assert missing.exit_code == 2 and "does not exist" in missing.output
