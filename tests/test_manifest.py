"""The swarm manifest (genesis payload), the model check, invites and state directory files."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import stat
import subprocess
import sys

import libipld
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from learnae.errors import ConfigError
from learnae.identity import Identity
from learnae.invite import Invite
from learnae.ipfs.privnet import new_swarm_key
from learnae.ledger.members import Rules
from learnae.ledger.tx import decode_tx, make_tx, validate_tx
from learnae.manifest import (
    Limits,
    Manifest,
    Newcomers,
    make_genesis,
    manifest_of,
    read_admission_file,
)
from learnae.models import MODELS, model_config
from learnae.models.check import ACTIVATIONS, DEFAULT_MAX_PARAMS, LAYERS, check_model
from learnae.state import StateDir, init_swarm, node_listen, open_tangle, parse_listen


def identity(n: int) -> Identity:
    return Identity(Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32))


ALICE, BOB = identity(1), identity(2)
DIGITS = model_config("digits-mlp")
PEER = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
NOW = 1_700_000_000_000


def digits(**kw) -> Manifest:
    return Manifest(**({"name": "digits", "model": DIGITS, "created": NOW} | kw))


def with_layer(layer: dict, config: dict | None = None) -> str:
    """The digits-mlp config with ``layer`` inserted after the input."""
    config = copy.deepcopy(config or MODELS["digits-mlp"])
    config["config"]["layers"].insert(1, layer)
    return json.dumps(config)


def layer(class_name: str, module: str = "keras.layers", name: str = "extra", **config) -> dict:
    return {"module": module, "class_name": class_name, "config": {"name": name, **config},
            "registered_name": None}


def has_bytes(value) -> bool:
    if isinstance(value, bytes):
        return True
    if isinstance(value, dict):
        return any(has_bytes(v) for v in value.values())
    if isinstance(value, list):
        return any(has_bytes(v) for v in value)
    return False


# --------------------------------------------------------------------------- round trips
def test_defaults_come_from_the_model_and_the_manifest():
    m = digits()
    assert (m.input_shape, m.dtype, m.classes) == ((64,), "float32", 10)
    assert (m.optimizer, m.merge, m.admission, m.limits) == ("adam", "mean", "open", Limits())
    assert m.limits.tx_bytes == 64 * 1024 and m.limits.checkpoint_bytes == 64 * 2**20
    assert m.membership(ALICE.public_key) == Rules(founder=ALICE.public_key)  # open, no stewards
    assert (m.stewards, m.steward_quorum) == ((), 1) and "stewards" not in m.to_payload()
    assert m.schema.features == (64,) and m.schema.classes == 10 and m.schema.label_dtype == "int64"
    assert Manifest(name="x", model=DIGITS).created > NOW  # now, by default


def test_round_trip_through_payload_dag_cbor_json_and_genesis():
    m = digits(optimizer="sgd", learning_rate=0.05, batch_size=64, merge="multikrum",
               merge_params={"f": 1, "m": 3}, sync_every=10,
               sync_interval=5, pow_bits=3, limits=Limits(tx_bytes=8192, chunk_bytes=4096),
               admission=(ALICE.author_id, BOB.author_id))
    payload = m.to_payload()
    assert Manifest.from_payload(payload) == m
    assert Manifest.from_payload(libipld.decode_dag_cbor(libipld.encode_dag_cbor(payload))) == m
    assert Manifest.from_payload(json.loads(json.dumps(payload))) == m
    genesis = make_genesis(ALICE, m)
    assert manifest_of(genesis) == m
    assert manifest_of(decode_tx(genesis.raw)).to_payload() == payload


def test_payload_keys_and_plain_types():
    payload = digits().to_payload()
    assert set(payload) == {
        "v", "name", "model", "input_shape", "dtype", "classes", "optimizer", "learning_rate",
        "batch_size", "merge", "merge_params", "sync_every", "sync_interval", "checkpoint_interval",
        "pow_bits", "limits", "admission", "created",
    }
    assert payload["limits"] == {"tx_bytes": 65536, "checkpoint_bytes": 64 * 2**20, "chunk_bytes": 8 * 2**20}
    assert type(payload["learning_rate"]) is float and type(payload["sync_interval"]) is float
    assert payload["checkpoint_interval"] == 30.0  # 100 nodes: about 3.3 checkpoints a second


@pytest.mark.parametrize("name", sorted(MODELS))
def test_known_models_are_valid(name):
    expected = {"digits-mlp": (64, 10), "wine-mlp": (13, 3), "breast-cancer-mlp": (30, 2),
                "iris-mlp": (4, 3), "mlp-1m": (64, 10)}[name]
    info = check_model(model_config(name))
    assert (info.input_shape, info.classes, info.dtype) == ((expected[0],), expected[1], "float32")
    m = Manifest(name=name, model=model_config(name))
    assert len(make_genesis(ALICE, dataclasses.replace(m, pow_bits=0)).raw) < m.limits.tx_bytes


def test_model_config_reads_files(tmp_path):
    path = tmp_path / "model.json"
    path.write_text(json.dumps(MODELS["iris-mlp"], indent=4))
    assert json.loads(model_config(path)) == MODELS["iris-mlp"]
    assert " " not in model_config(str(path)).replace('"', "")  # compact
    for text, reason in (("[1, 2]", "JSON object"), ("{", "not JSON")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=reason):
            model_config(path)
    with pytest.raises(ConfigError, match="neither a known model"):
        model_config("no-such-model")


# --------------------------------------------------------------------------- invalid fields
INVALID = [
    ("name", "", "manifest name"),
    ("name", " padded", "manifest name"),
    ("name", "x" * 65, "manifest name"),
    ("name", "tab\there", "manifest name"),
    ("input_shape", (65,), "input_shape .* differs from the model"),
    ("input_shape", (0,), "input_shape entries"),
    ("input_shape", "64", "input_shape must be a list"),
    ("dtype", "float128", "manifest dtype"),
    ("classes", 3, "classes 3 differs from the model"),
    ("classes", 1, "manifest classes"),
    ("classes", True, "manifest classes"),
    ("optimizer", "adagrad", "manifest optimizer must be one of adam, sgd, rmsprop"),
    ("learning_rate", 0, "manifest learning_rate"),
    ("learning_rate", float("nan"), "manifest learning_rate"),
    ("learning_rate", "0.1", "manifest learning_rate"),
    ("batch_size", 0, "manifest batch_size"),
    ("batch_size", 2.0, "manifest batch_size"),
    ("merge", "vote", "manifest merge must be one of"),
    ("merge_params", {"trim": float("inf")}, r"merge_params\['trim'\]"),
    ("merge_params", {"w": [1, 2]}, r"merge_params\['w'\]"),
    ("merge_params", [], "merge_params must be a map"),
    ("merge_params", {"beta": 0.2}, "merge_params: merge rule 'mean' takes no parameter 'beta'"),
    ("sync_every", 0, "manifest sync_every"),
    ("sync_interval", -1, "manifest sync_interval"),
    ("checkpoint_interval", -1, "manifest checkpoint_interval must be a number from 0"),
    ("checkpoint_interval", 86401, "manifest checkpoint_interval"),
    ("pow_bits", 33, "manifest pow_bits"),
    ("pow_bits", -1, "manifest pow_bits"),
    ("admission", "closed", "manifest admission"),
    ("admission", (), "admission list must hold 1"),
    ("admission", ("z6MkNotAKey",), r"manifest admission\[0\]"),
    ("admission", (ALICE.author_id, ALICE.author_id), "twice"),
    ("created", -5, "manifest created"),
]


@pytest.mark.parametrize(("field", "value", "reason"), INVALID, ids=[f"{f}={v!r}" for f, v, _ in INVALID])
def test_each_invalid_field_is_refused_with_a_reason(field, value, reason):
    with pytest.raises(ConfigError, match=reason):
        digits(**{field: value})
    payload = digits().to_payload()
    payload[field] = list(value) if isinstance(value, tuple) else value
    with pytest.raises(ConfigError, match=reason):
        Manifest.from_payload(payload)


@pytest.mark.parametrize(("limits", "reason"), [
    ({"tx_bytes": 100}, "limits.tx_bytes"),
    ({"checkpoint_bytes": "big"}, "limits.checkpoint_bytes"),
    ({"chunk_bytes": 0}, "limits.chunk_bytes"),
    ({"tx": 4096}, "unknown keys"),
    ([], "limits must be a map"),
])
def test_invalid_limits_are_refused(limits, reason):
    payload = digits().to_payload()
    payload["limits"] = limits
    with pytest.raises(ConfigError, match=reason):
        Manifest.from_payload(payload)


def test_from_payload_refuses_unknown_fields_versions_and_missing_name():
    payload = digits().to_payload()
    with pytest.raises(ConfigError, match="unknown fields"):
        Manifest.from_payload(payload | {"extra": 1})
    with pytest.raises(ConfigError, match="version"):
        Manifest.from_payload(payload | {"v": 2})
    for key in ("name", "model"):
        with pytest.raises(ConfigError, match=f"no '{key}'"):
            Manifest.from_payload({k: v for k, v in payload.items() if k != key})
    with pytest.raises(ConfigError, match="is a map"):
        Manifest.from_payload([payload])
    assert Manifest.from_payload({"name": "n", "model": DIGITS}).classes == 10  # defaults


def test_merge_params_are_checked_by_the_merge_rules():
    assert digits(merge="trimmed", merge_params={"beta": 0.1}).merge_params == {"beta": 0.1}
    with pytest.raises(ConfigError, match="merge_params: trimmed: beta"):
        digits(merge="trimmed", merge_params={"beta": 0.7})
    with pytest.raises(ConfigError, match="takes no parameter 'trim'"):
        digits(merge="trimmed", merge_params={"trim": 0.1})


def test_model_too_large_for_the_tx_limit_is_refused():
    many = tuple(identity(i).author_id for i in range(1, 60))
    with pytest.raises(ConfigError, match="would not fit limits.tx_bytes"):
        digits(limits=Limits(tx_bytes=4096), admission=many)
    big = model_config("mlp-1m")
    with pytest.raises(ConfigError, match="model config is .* bytes"):
        Manifest(name="big", model=big, limits=Limits(tx_bytes=4096))


# --------------------------------------------------------------------------- model check
def test_lambda_layers_are_refused():
    lam = layer("Lambda", function={"class_name": "__lambda__", "config": {"code": "4wEAAA"}})
    with pytest.raises(ConfigError, match="layer 'extra': Lambda layers .* arbitrary Python"):
        check_model(with_layer(lam))
    with pytest.raises(ConfigError, match="TFOpLambda"):
        check_model(with_layer(layer("TFOpLambda")))
    hidden = layer("Dense", units=64, activation={"class_name": "__lambda__", "config": {}})
    with pytest.raises(ConfigError, match="arbitrary Python|activation must be"):
        check_model(with_layer(hidden))
    with pytest.raises(ConfigError, match="Lambda"):
        Manifest(name="x", model=with_layer(lam))


@pytest.mark.parametrize(("bad", "reason"), [
    (layer("MyLayer"), "layer class 'MyLayer' is not in learnae's allowlist"),
    (layer("TextVectorization"), "'TextVectorization' is not in learnae's allowlist"),
    (layer("Dense", module="my_package.layers"), "module 'my_package.layers', which is not one of Keras' own"),
    (layer("Dense", module="builtins"), "not one of Keras' own"),
    ({**layer("Dense"), "registered_name": "Custom>Dense"}, "registered_name 'Custom>Dense'"),
    (layer("Dense", units=4, activation="my_activation"), "activation 'my_activation' is not a Keras activation"),
    (layer("Dense", kernel_initializer={"module": "keras.initializers", "class_name": "MyInit",
                                        "config": {}, "registered_name": None}), "keras.initializers.MyInit"),
    (layer("Dense", kernel_initializer={"class_name": "__numpy__", "config": {}}), "names no Keras module"),
    (layer("Dense", module=None), "names no Keras module"),
])
def test_unknown_and_custom_objects_are_refused(bad, reason):
    with pytest.raises(ConfigError, match=reason):
        check_model(with_layer(bad))


def test_model_structure_is_checked():
    for text, reason in (
        ("not json", "not JSON"),
        ("[]", "class_name Sequential or Functional"),
        (json.dumps({"class_name": "Dense", "config": {}}), "class_name Sequential or Functional"),
        (json.dumps({"class_name": "Sequential", "config": {"layers": []}}), "non-empty list"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply|not JSON|Sequential"),
    ):
        with pytest.raises(ConfigError, match=reason):
            check_model(text)
    compiled = copy.deepcopy(MODELS["digits-mlp"])
    compiled["compile_config"] = {"loss": "mse"}
    with pytest.raises(ConfigError, match="compile_config must be empty"):
        check_model(json.dumps(compiled))
    deep: dict = {"a": 1}
    for _ in range(80):
        deep = {"x": deep}
    with pytest.raises(ConfigError, match="nested more than"):
        check_model(with_layer(layer("Dense", units=3, extra=deep)))


def test_standard_layers_pass_and_shapes_without_an_input_layer_need_the_fields():
    conv = copy.deepcopy(MODELS["digits-mlp"])
    conv["config"]["layers"][1:1] = [
        layer("Reshape", name="r", target_shape=[8, 8, 1]),
        layer("Conv2D", name="c", filters=4, kernel_size=[3, 3], activation="gelu"),
        layer("BatchNormalization", name="b"),
        layer("MaxPooling2D", name="p"),
        layer("Flatten", name="f"),
        layer("Dropout", name="d", rate=0.1),
    ]
    assert check_model(json.dumps(conv)).layers == 9
    assert {"Dense", "Conv2D", "Lambda"} & LAYERS == {"Dense", "Conv2D"}
    assert "relu" in ACTIVATIONS
    headless = copy.deepcopy(MODELS["digits-mlp"])
    del headless["config"]["layers"][0], headless["config"]["build_input_shape"]
    headless["config"]["layers"].append(layer("Activation", name="a", activation="softmax"))
    assert check_model(json.dumps(headless)).input_shape is None
    assert check_model(json.dumps(headless)).classes == 10  # through the Activation layer
    with pytest.raises(ConfigError, match="input_shape is needed"):
        Manifest(name="h", model=json.dumps(headless))
    assert Manifest(name="h", model=json.dumps(headless), input_shape=(64,)).input_shape == (64,)


# --------------------------------------------------------------------------- admission, bytes
def _without_build_configs(obj):
    """A config as written by hand: no layer says the shape it was built with."""
    if isinstance(obj, dict):
        return {k: _without_build_configs(v) for k, v in obj.items() if k != "build_config"}
    if isinstance(obj, list):
        return [_without_build_configs(v) for v in obj]
    return obj


def _digits_with_hidden(units: int) -> str:
    config = copy.deepcopy(MODELS["digits-mlp"])
    config["config"]["layers"][1]["config"]["units"] = units
    return json.dumps(_without_build_configs(config))


HUGE = 2**31
HUGE_PARAMS = 64 * HUGE + HUGE + HUGE * 10 + 10  # Input(64) -> Dense(2**31) -> Dense(10)


def test_a_model_too_large_to_build_is_refused_with_its_count_and_the_limit():
    message = f"has {HUGE_PARAMS:,} parameters, more than the limit of {64 * 2**20 // 4:,}"
    with pytest.raises(ConfigError, match=message):
        check_model(_digits_with_hidden(HUGE))
    with pytest.raises(ConfigError, match=message):
        Manifest(name="huge", model=_digits_with_hidden(HUGE))
    # ... and nothing was built: Keras and TensorFlow are never imported (a fresh interpreter)
    code = ("import sys\nfrom learnae.errors import ConfigError\n"
            "from learnae.manifest import Manifest\n"
            f"try: Manifest(name='huge', model={_digits_with_hidden(HUGE)!r})\n"
            "except ConfigError as e: print(e.reason)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120)
    assert out.stdout.splitlines() == [
        f"manifest model {message} (limits.checkpoint_bytes / 4 bytes per float32 parameter): use"
        " a smaller model or raise limits.checkpoint_bytes", "[]"]


def test_the_parameter_limit_follows_the_checkpoint_limit():
    big = model_config("mlp-1m")  # 1,053,194 parameters: 4,212,776 bytes as float32
    assert check_model(big).params == 1_053_194
    assert Manifest(name="big", model=big).limits.checkpoint_bytes == 64 * 2**20
    with pytest.raises(ConfigError, match="1,053,194 parameters, more than the limit of 1,048,576"):
        Manifest(name="big", model=big, limits=Limits(checkpoint_bytes=4 * 2**20))
    assert Manifest(name="big", model=big, limits=Limits(checkpoint_bytes=4_212_776)).classes == 10
    with pytest.raises(ConfigError, match="more than the limit of 1,053,193"):
        check_model(big, max_params=1_053_193)
    huge = _digits_with_hidden(HUGE)
    limits = Limits(checkpoint_bytes=4 * 2**30)  # the largest limit still refuses 2**31 units
    with pytest.raises(ConfigError, match="more than the limit of 1,073,741,824"):
        Manifest(name="huge", model=huge, limits=limits)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shipped_models_are_counted_with_and_without_build_configs(name):
    expected = {"digits-mlp": 4_810, "wine-mlp": 547, "breast-cancer-mlp": 1_058, "iris-mlp": 131,
                "mlp-1m": 1_053_194}[name]  # the module docstring's table (Keras agrees: slow test)
    assert check_model(model_config(name)).params == expected
    assert check_model(json.dumps(_without_build_configs(MODELS[name]))).params == expected


def test_a_layer_whose_parameters_cannot_be_counted_is_refused():
    config = copy.deepcopy(MODELS["digits-mlp"])
    config["config"]["layers"][0]["config"]["batch_shape"] = [None, None, 8]  # any length
    config["config"]["layers"][1:1] = [layer("Flatten", name="flat")]  # (None, None): unknown
    with pytest.raises(ConfigError, match="layer 'dense_0': learnae cannot count its parameters:"
                                          " Dense needs its input's last dimension"):
        check_model(json.dumps(_without_build_configs(config)))
    conv = copy.deepcopy(MODELS["digits-mlp"])
    conv["config"]["layers"][1:1] = [layer("Conv2D", name="c", filters=2, kernel_size=[3, 3])]
    with pytest.raises(ConfigError, match="layer 'c': .* Conv2D needs a 4-dimensional input"):
        check_model(json.dumps(_without_build_configs(conv)))  # a 2-D input: Keras would fail too
    bad = copy.deepcopy(MODELS["digits-mlp"])
    bad["config"]["layers"][1]["config"]["units"] = "many"
    with pytest.raises(ConfigError, match="layer 'dense_0': .* its Dense config is malformed"
                                          " .units must be a positive integer, not 'many'"):
        check_model(json.dumps(_without_build_configs(bad)))


def test_admission_list_is_author_ids_and_admits_only_them():
    m = digits(admission=(ALICE.author_id, BOB.author_id))
    assert m.membership(ALICE.public_key).admission == {ALICE.public_key, BOB.public_key}
    assert m.to_payload()["admission"] == [ALICE.author_id, BOB.author_id]


def test_stewards_and_their_quorum_reach_the_membership_rules_and_the_payload():
    carol = identity(3)
    m = digits(stewards=(BOB.author_id, carol.author_id), steward_quorum=2)
    rules = m.membership(ALICE.public_key)
    assert rules.stewards == {BOB.public_key, carol.public_key} and rules.quorum == 2
    payload = m.to_payload()
    assert payload["stewards"] == [BOB.author_id, carol.author_id] and payload["steward_quorum"] == 2
    assert Manifest.from_payload(payload) == m
    with pytest.raises(ConfigError, match="steward_quorum"):
        digits(stewards=(BOB.author_id,), steward_quorum=2)
    with pytest.raises(ConfigError, match="stewards lists .* twice"):
        digits(stewards=(BOB.author_id, BOB.author_id))
    with pytest.raises(ConfigError, match=r"stewards\[0\]"):
        digits(stewards=("z6Mknot-an-id",))


def test_admission_file(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text(f"# members\n{ALICE.author_id}   # alice\n\n  {BOB.public_key.hex()}\n")
    assert read_admission_file(path) == (ALICE.author_id, BOB.author_id)  # ids, either form
    path.write_text(f"{ALICE.author_id}\nnot-a-key\n")
    with pytest.raises(ConfigError, match=f"{path}:2: .*author id .* or by public key"):
        read_admission_file(path)
    path.write_text(f"{ALICE.author_id}\n{ALICE.public_key.hex()}\n")
    with pytest.raises(ConfigError, match=f"{path}:2: author {ALICE.author_id} is listed twice"):
        read_admission_file(path)
    path.write_text("# nobody\n")
    with pytest.raises(ConfigError, match="lists no author ids"):
        read_admission_file(path)
    with pytest.raises(ConfigError, match="no admission file at"):
        read_admission_file(tmp_path / "missing.txt")


def test_raw_bytes_never_enter_the_payload():
    # Many admitted keys: about 1 in 2,500 raw 32-byte keys would parse as a CID and be
    # re-encoded as a link by libipld; author id strings cannot be.
    ids = tuple(Identity.generate().author_id for _ in range(200))
    m = digits(admission=ids, limits=Limits(tx_bytes=1 << 20), pow_bits=0)
    payload = m.to_payload()
    assert not has_bytes(payload)
    genesis = make_genesis(ALICE, m)
    assert not has_bytes(genesis.payload) and genesis.payload == payload
    for bad in ({"admission": [ALICE.public_key]}, {"merge_params": {"k": b"\x01"}}, {"name": b"x"}):
        with pytest.raises(ConfigError, match="byte string"):
            Manifest.from_payload(payload | bad)


def test_genesis_is_a_valid_parentless_transaction():
    m = digits(pow_bits=4)
    genesis = make_genesis(ALICE, m)
    assert (genesis.kind, genesis.parents, genesis.swarm, genesis.time) == ("genesis", (), None, NOW)
    assert genesis.author == ALICE.public_key
    validate_tx(genesis, swarm=genesis.id, pow_bits=4, max_bytes=m.limits.tx_bytes, now_ms=NOW)
    data = make_tx(ALICE, kind="genesis", payload={"name": "x"}, parents=[], swarm=None, pow_bits=0)
    with pytest.raises(ConfigError, match="genesis .*: manifest has no 'model'"):
        manifest_of(data)


# --------------------------------------------------------------------------- invites
def make_invite(**kw) -> Invite:
    genesis = make_genesis(ALICE, digits(pow_bits=2))
    fields = dict(genesis=genesis.id, name="digits", swarm_key=new_swarm_key(),
                  bootstrap=(f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}",), pow_bits=2, genesis_tx=genesis.raw)
    return Invite(**(fields | kw))


def test_invite_round_trip_and_mode(tmp_path):
    invite = make_invite()
    path = tmp_path / "invite.json"
    invite.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Invite.load(path) == invite
    assert invite.manifest() == digits(pow_bits=2)
    more = invite.with_bootstrap([f"/ip4/10.0.0.2/tcp/4001/p2p/{PEER}", invite.bootstrap[0]])
    assert len(more.bootstrap) == 2
    bare = dataclasses.replace(invite, genesis_tx=None)
    assert Invite.from_dict(bare.to_dict()) == bare and "genesis_tx" not in bare.to_dict()
    with pytest.raises(ConfigError, match="carries no genesis"):
        bare.manifest()


@pytest.fixture
def synced(monkeypatch) -> list[str]:
    """The paths ``os.fsync`` syncs (directories end in ``/``), recorded, then synced."""
    seen: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        seen.append(path + "/" if os.path.isdir(path) else path)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_invite_save_is_atomic_and_durable(tmp_path, synced):
    path = tmp_path / "invite.json"
    make_invite().save(path)
    assert synced[0].startswith(f"{tmp_path}/.invite.json.")  # a temporary file beside it
    assert synced[-1] == f"{tmp_path}/"  # then the directory, which makes the rename durable
    assert os.listdir(tmp_path) == ["invite.json"]


@pytest.mark.parametrize(("change", "reason"), [
    ({"genesis": "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"}, "invite genesis .* is not a transaction id"),
    ({"name": ""}, "invite name"),
    ({"swarm_key": "secret"}, "invite swarm_key"),
    ({"bootstrap": ["/ip4/127.0.0.1/tcp/4001"]}, "invite bootstrap: .* /p2p/"),
    ({"bootstrap": "/ip4/1.2.3.4/tcp/1/p2p/x"}, "bootstrap must be a list"),
    ({"pow_bits": 40}, "invite pow_bits"),
    ({"pow_bits": 3}, "must match the genesis manifest"),
    ({"genesis_tx": "!!!"}, "base64"),
    ({"format": "other/1"}, "invite format"),
    ({"surprise": 1}, "unknown fields"),
])
def test_invalid_invites_are_refused(tmp_path, change, reason):
    d = make_invite().to_dict() | change
    path = tmp_path / "invite.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=reason):
        Invite.load(path)


def test_invite_genesis_tx_must_match_and_files_must_parse(tmp_path):
    other = make_genesis(BOB, digits(pow_bits=2))
    with pytest.raises(ConfigError, match="genesis_tx has id"):
        make_invite(genesis_tx=other.raw)
    with pytest.raises(ConfigError, match="no invite file"):
        Invite.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="not JSON"):
        Invite.load(tmp_path / "bad.json")
    d = make_invite().to_dict()
    del d["swarm_key"]
    with pytest.raises(ConfigError, match="no 'swarm_key'"):
        Invite.from_dict(d)


# --------------------------------------------------------------------------- state directory
def test_parse_listen():
    assert parse_listen("127.0.0.1:4001") == ("127.0.0.1", 4001)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("localhost:4001", "127.0.0.1", "1.2.3.4:70000", "1.2.3.4:-1", ":5"):
        with pytest.raises(ConfigError, match="HOST:PORT"):
            parse_listen(bad)


def test_init_swarm_and_open_tangle(tmp_path):
    d = tmp_path / "swarm"
    made = init_swarm(d, digits(pow_bits=1, admission=(BOB.author_id,)), founder=ALICE,
                      listen="127.0.0.1:4001")
    assert made.manifest.admission == (BOB.author_id, ALICE.author_id)  # the founder added
    assert made.state == StateDir(d) and made.directory == d
    assert sorted(os.listdir(d)) == sorted(p.name for p in made.state.swarm_files)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert node_listen(d) == ("127.0.0.1", 4001)
    assert Identity.load(made.state.identity).public_key == ALICE.public_key
    tangle, manifest = open_tangle(d)
    with tangle:
        assert manifest == made.manifest and tangle.swarm == made.genesis.id
        tangle.append(BOB, "data", {"cid": "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e",
                                    "size": 1, "rows": 1, "schema": {}, "source": "p", "seq": 0})
        with pytest.raises(Exception, match="not admitted"):
            tangle.append(identity(9), "data", {"cid": "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e",
                                                "size": 1, "rows": 1, "schema": {}, "source": "p", "seq": 1})
    with pytest.raises(ConfigError, match="already holds a swarm"):
        init_swarm(d, digits())
    # A joiner's empty state directory is created from the invite.
    joined = tmp_path / "joiner"
    tangle, manifest = open_tangle(joined, invite=made.invite)
    with tangle:
        assert tangle.count() == 1 and manifest == made.manifest
    with pytest.raises(ConfigError, match="not the invite's"):
        open_tangle(joined, invite=make_invite())
    with pytest.raises(ConfigError, match="does not exist"):
        open_tangle(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no ledger"):
        open_tangle(tmp_path / "empty")
    assert not (tmp_path / "empty" / "tangle.sqlite").exists()


def test_init_swarm_writes_every_file_whole_and_durably(tmp_path, synced):
    d = tmp_path / "swarm"
    made = init_swarm(d, digits(pow_bits=1), founder=ALICE)
    for path in made.state.swarm_files:
        if path != made.state.tangle:  # SQLite syncs its own files
            temporary = [p for p in synced if p.startswith(f"{d}/.{path.name}.")]
            assert temporary and synced[synced.index(temporary[0]) + 1] == f"{d}/", path.name
    assert not [name for name in os.listdir(d) if name.endswith(".tmp")]


def test_state_dir_names_every_file(tmp_path):
    state = StateDir(str(tmp_path))
    assert state.root == tmp_path and StateDir(tmp_path) == state
    names = {attr: getattr(state, attr) for attr in (
        "genesis", "manifest", "swarm_key", "identity", "tangle", "invite", "node_settings",
        "ipfs", "checkpoint", "progress", "addrs", "api", "status", "lock", "adopted")}
    assert {attr: p.name for attr, p in names.items()} == {
        "genesis": "genesis.tx", "manifest": "manifest.json", "swarm_key": "swarm.key",
        "identity": "identity.key", "tangle": "tangle.sqlite", "invite": "invite.json",
        "node_settings": "node.json", "ipfs": "ipfs", "checkpoint": "checkpoint.safetensors",
        "progress": "progress.json", "addrs": "addrs.json", "api": "api.json",
        "status": "status.json", "lock": "node.lock", "adopted": "adopted.sqlite"}
    assert all(p.parent == tmp_path for p in names.values())
    assert state.swarm_files == tuple(names.values())[:7]
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.root = tmp_path / "other"


def test_the_default_model_limit_is_what_the_default_checkpoint_limit_holds():
    assert Limits().checkpoint_bytes == 64 * 2**20 == DEFAULT_MAX_PARAMS * 4


def test_init_swarm_cleans_up_after_a_failure(tmp_path):
    d = tmp_path / "swarm"
    future = digits(created=4_000_000_000_000)  # the ledger refuses a genesis from the future
    with pytest.raises(ConfigError, match="cannot create the swarm"):
        init_swarm(d, future)
    assert not d.exists()
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError):
        init_swarm(d, future)
    assert sorted(os.listdir(d)) == ["notes.txt"]


def test_manifest_module_never_imports_tensorflow():
    code = ("import sys, learnae.manifest, learnae.models, learnae.invite, learnae.state;"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- with Keras
@pytest.mark.slow
def test_known_models_load_in_keras_safe_mode_and_real_configs_pass():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    keras = pytest.importorskip("keras")
    from keras import layers

    widths = {"digits-mlp": [64, 64, 10], "wine-mlp": [13, 32, 3], "breast-cancer-mlp": [30, 32, 2],
              "iris-mlp": [4, 16, 3], "mlp-1m": [64, 1024, 768, 256, 10]}
    for name, w in widths.items():
        # keras.models.model_from_json has no safe_mode argument in Keras 3 (it is safe by
        # default); deserialize_keras_object takes it explicitly.
        model = keras.saving.deserialize_keras_object(json.loads(model_config(name)), safe_mode=True)
        names = [f"dense_{i}" for i in range(len(w) - 2)] + ["output"]
        expected = []
        for lname, a, b in zip(names, w, w[1:], strict=False):
            expected += [(f"{lname}/kernel", (a, b)), (f"{lname}/bias", (b,))]
        assert [(v.path, tuple(v.shape)) for v in model.weights] == expected
        assert tuple(model.input_shape) == (None, w[0]) and tuple(model.output_shape) == (None, w[-1])
    assert keras.models.model_from_json(model_config("mlp-1m")).count_params() == 1_053_194

    # Configs Keras writes for common standard models pass the check...
    inp = keras.Input((28, 28, 1))
    x = layers.Conv2D(8, 3, padding="same", kernel_regularizer=keras.regularizers.L2(1e-4),
                      kernel_constraint=keras.constraints.MaxNorm(3))(inp)
    x = layers.LeakyReLU()(layers.BatchNormalization()(x))
    x = layers.Add()([x, layers.Conv2D(8, 1)(inp)])
    x = layers.Dropout(0.2)(layers.MaxPooling2D()(x))
    out = layers.Dense(10, activation="softmax")(layers.Flatten()(x))
    functional = keras.Model(inp, out)
    info = check_model(functional.to_json())
    assert (info.input_shape, info.classes) == ((28, 28, 1), 10)
    seq = keras.Sequential([keras.Input((64,)), layers.Normalization(), layers.Reshape((8, 8, 1)),
                            layers.Conv2D(4, 3), layers.Activation("gelu"),
                            layers.GlobalAveragePooling2D(), layers.Dense(3), layers.Softmax()])
    assert check_model(seq.to_json()).classes == 3
    # ... and a real Lambda layer does not (nor does Keras' safe mode load it).
    lam = keras.Sequential([keras.Input((4,)), layers.Lambda(lambda t: t * 2), layers.Dense(3)])
    with pytest.raises(ConfigError, match="Lambda"):
        check_model(lam.to_json())
    with pytest.raises(ValueError, match="Lambda"):
        keras.saving.deserialize_keras_object(json.loads(lam.to_json()), safe_mode=True)


def _keras_models(keras):
    """Models using most of learnae.models.check.LAYERS, as Keras builds them."""
    L = keras.layers  # noqa: N806
    yield "conv-functional", _conv_functional(keras)
    yield "sequential", keras.Sequential([
        keras.Input((64,)), L.Normalization(), L.Reshape((8, 8, 1)), L.Conv2D(4, 3),
        L.Activation("gelu"), L.GlobalAveragePooling2D(), L.Dense(3), L.Softmax()])
    yield "recurrent", keras.Sequential([
        keras.Input((12, 5)), L.SimpleRNN(7, return_sequences=True),
        L.GRU(6, return_sequences=True), L.GRU(4, reset_after=False, return_sequences=True),
        L.LSTM(5, return_sequences=True), L.Bidirectional(L.LSTM(3, return_sequences=True)),
        L.Bidirectional(L.GRU(2), merge_mode="sum"), L.Dense(2)])
    yield "time-distributed", keras.Sequential([keras.Input((6, 10)), L.TimeDistributed(L.Dense(4)),
                                                L.Flatten(), L.Dense(3)])
    q, v = keras.Input((5, 16)), keras.Input((7, 12))
    a = L.MultiHeadAttention(num_heads=2, key_dim=3, value_dim=4)(q, v)
    b = L.MultiHeadAttention(num_heads=3, key_dim=2, output_shape=9, use_bias=False)(q, v, key=v)
    c = L.Attention(use_scale=True, score_mode="concat")([q, L.Dense(16)(v)])
    d = L.AdditiveAttention()([q, L.Dense(16)(v)])
    m = L.GlobalAveragePooling1D()(L.Concatenate()([a, c, d]))
    both = L.Concatenate()([m, L.GlobalMaxPooling1D()(b)])
    yield "attention", keras.Model([q, v], L.Dense(2)(both))
    e = keras.Input((20,), dtype="int32")
    x = L.Conv1D(6, 3, strides=2, padding="causal")(L.Embedding(100, 8)(e))
    x = L.DepthwiseConv1D(2, depth_multiplier=3)(L.SeparableConv1D(5, 3, depth_multiplier=2)(x))
    x = L.Conv1DTranspose(4, 3, strides=2)(x)
    x = L.Cropping1D((1, 2))(L.ZeroPadding1D(2)(L.UpSampling1D(2)(x)))
    x = L.LayerNormalization(center=False)(L.AveragePooling1D(3, strides=2, padding="same")(x))
    x = L.EinsumDense("abc,cd->abd", output_shape=(None, 7), bias_axes="d")(x)
    x = L.EinsumDense("...b,bc->...c", output_shape=5, bias_axes="c")(x)
    x = L.Permute((2, 1))(L.RepeatVector(3)(L.GlobalAveragePooling1D()(x)))
    yield "sequences", keras.Model(e, L.Dense(2, lora_rank=2)(L.Flatten()(x)))
    i = keras.Input((16, 16, 3))
    x = L.SeparableConv2D(8, 3, depth_multiplier=2, padding="same")(i)
    x = L.DepthwiseConv2D((3, 2), strides=(2, 1), depth_multiplier=2)(x)
    x = L.Conv2DTranspose(5, 3, strides=2, padding="same", output_padding=1)(x)
    x = L.BatchNormalization(renorm=True, center=False)(L.Conv2D(6, 3, dilation_rate=2)(x))
    x = L.PReLU(shared_axes=[1, 2])(L.GroupNormalization(groups=2, scale=False)(x))
    x = L.ZeroPadding2D(((1, 0), (2, 1)))(L.Cropping2D(((1, 1), (0, 2)))(L.UpSampling2D((2, 1))(x)))
    x = L.PReLU()(L.MaxPooling2D((3, 3), strides=2)(x))
    y = L.Dense(4)(L.Flatten()(x))
    z = L.Flatten()(L.Dense(4)(L.GlobalAveragePooling2D(keepdims=True)(x)))
    yield "images", keras.Model(i, L.Dot(axes=1)([y, z]))
    i = keras.Input((8, 8, 8, 2))
    x = L.Conv3DTranspose(2, 2, strides=2)(L.Conv3D(3, 3, padding="same")(i))
    x = L.AveragePooling3D(2)(L.UpSampling3D(1)(L.ZeroPadding3D(1)(L.Cropping3D(1)(x))))
    yield "volumes", keras.Model(i, L.Dense(2)(L.GlobalMaxPooling3D()(L.MaxPooling3D(2)(x))))
    inner, shared = keras.Sequential([keras.Input((4,)), L.Dense(3)]), L.Dense(5)
    i1, i2 = keras.Input((4,)), keras.Input((4,))
    out = L.Concatenate()([shared(inner(i1)), shared(inner(i2))])
    yield "nested-and-shared", keras.Model([i1, i2], L.Dense(2)(out))
    yield "channels-first", keras.Sequential([
        keras.Input((3, 10, 10)), L.Conv2D(4, 3, data_format="channels_first"),
        L.BatchNormalization(axis=1), L.MaxPooling2D(data_format="channels_first"), L.Flatten(),
        L.Dense(2)])
    yield "axes", keras.Sequential([keras.Input((4, 5, 6)), L.LayerNormalization(axis=[1, 2]),
                                    L.Normalization(axis=(1, 3)), L.Reshape((-1, 6)), L.Dense(2)])


def _conv_functional(keras):
    L = keras.layers  # noqa: N806
    inp = keras.Input((28, 28, 1))
    x = L.LeakyReLU()(L.BatchNormalization()(L.Conv2D(8, 3, padding="same")(inp)))
    x = L.Dropout(0.2)(L.MaxPooling2D()(L.Add()([x, L.Conv2D(8, 1)(inp)])))
    return keras.Model(inp, L.Dense(10, activation="softmax")(L.Flatten()(x)))


@pytest.mark.slow
def test_parameter_counts_equal_keras_count_params():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    keras = pytest.importorskip("keras")
    for name in MODELS:
        config = model_config(name)
        model = keras.saving.deserialize_keras_object(json.loads(config), safe_mode=True)
        assert check_model(config).params == model.count_params(), name
    for name, model in _keras_models(keras):
        config = model.to_json()
        assert check_model(config).params == model.count_params(), name
        # a config without build_config: shapes followed from the model's input instead
        bare = json.dumps(_without_build_configs(json.loads(config)))
        assert check_model(bare).params == model.count_params(), f"{name} without build_config"


def test_newcomers_rule_is_in_the_payload_only_when_not_the_default():
    assert "newcomers" not in digits().to_payload() and digits().newcomers == Newcomers(3, 0.25, 30.0)
    m = digits(newcomers=Newcomers(record=10, weight=0.1, tx_per_minute=6))
    assert m.to_payload()["newcomers"] == {"record": 10, "weight": 0.1, "tx_per_minute": 6.0}
    assert Manifest.from_payload(m.to_payload()) == m
    for bad, match in (({"weight": 1.5}, "newcomers.weight"), ({"tx_per_minute": 0.5}, "tx_per_minute"),
                       ({"record": -1}, "newcomers.record")):
        with pytest.raises(ConfigError, match=match):
            Newcomers(**bad)
    with pytest.raises(ConfigError, match="newcomers"):
        Manifest.from_payload({**m.to_payload(), "newcomers": {"probation": 3}})
