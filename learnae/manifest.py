"""The swarm definition: the manifest (the genesis transaction's payload), the invite file that
nodes and sensors join with, and the files of a swarm's state directory.

The manifest (docs/design.md "Content and wire formats", kind ``genesis``) is a DAG-CBOR map of plain values:
text, integers, floats, lists and maps, never byte strings. (``libipld.encode_dag_cbor`` writes
any ``bytes`` that parse as a binary CID as a link, so a raw public key could silently turn into
one; admission lists therefore hold author ids, ``"z6Mk..."``.)

=================  ==================================================================  ============
key                meaning                                                              default
=================  ==================================================================  ============
``v``              manifest version                                                     1
``name``           swarm name: 1 to 64 printable characters                             (required)
``model``          Keras JSON config (``model.to_json()``), checked by :func:`check_model`  (required)
``input_shape``    shape of one example's features, list of ints >= 1                   from model
``dtype``          feature dtype, a numpy name (``formats.DTYPES``)                     from model
``classes``        number of classes (labels are int64 class indices)                   from model
``optimizer``      ``adam``, ``sgd`` or ``rmsprop``                                     adam
``learning_rate``  float in (0, 10]                                                     0.001
``batch_size``     examples per batch, 1 to 65536                                       32
``merge``          merge rule: mean, age, median, trimmed, krum, multikrum              mean
``merge_params``   the rule's parameters (``learnae.merge.check_params``), e.g.          {}
                   ``{"beta": 0.2}`` for trimmed, ``{"f": 1}`` for krum
``sync_every``     batches of local training between two publish/merge steps            50
``sync_interval``  seconds, in (0, 86400]: the node's timer for sync work (tips,        30.0
                   merges) between batch-driven steps
``pow_bits``       leading zero bits of every transaction's proof-of-work, 0 to 32      12
``limits``         ``tx_bytes``, ``checkpoint_bytes``, ``chunk_bytes``: largest          64 KiB,
                   accepted transaction, checkpoint file and data chunk file            64 MiB, 8 MiB
``admission``      ``"open"``, or a list of the author ids allowed to publish           open
``created``        ms since the Unix epoch (also the genesis transaction's time)        now
=================  ==================================================================  ============

Model check (:func:`check_model`): the training layer rebuilds the model in Keras' safe mode
(``keras.saving.deserialize_keras_object(json.loads(model), safe_mode=True)``); before that,
this module refuses, without importing TensorFlow or Keras, any config that names a ``Lambda``
(or ``TFOpLambda``) layer or a serialized Python lambda, a layer class outside :data:`LAYERS`,
an object whose ``module`` is not one of Keras' own (:data:`KERAS_MODULES`) or whose
``registered_name`` marks a custom object, an activation name outside :data:`ACTIVATIONS`, or a
non-empty ``compile_config`` (the manifest sets the optimizer). Nothing in the config is ever
executed here. It also counts the model's parameters as Keras would build them
(:func:`learnae.models.params.count_params`, every weight, trainable or not) and refuses a model
with more than ``limits.checkpoint_bytes / 4`` (a float32 parameter takes 4 bytes of a
checkpoint), or one a layer of which cannot be counted.

A swarm's state directory (``learnae init`` writes it; the node uses the same layout):
``genesis.tx`` (the genesis transaction's bytes), ``manifest.json`` (its payload, readable),
``swarm.key`` (libp2p pre-shared key, 0600), ``identity.key`` (this member's Ed25519 key, 0600),
``tangle.sqlite`` (the ledger), ``invite.json`` (what joiners need, 0600: it holds the swarm
key) and ``node.json`` (local node settings: ``listen``).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libipld

from learnae.errors import (
    ConfigError,
    IdentityError,
    InvalidCID,
    InvalidMultiaddr,
    LearnaeError,
    TxRejected,
)
from learnae.formats import DTYPES, Schema
from learnae.identity import Identity, author_id, parse_author_id
from learnae.ipfs.addr import check_multiaddr
from learnae.ipfs.privnet import check_swarm_key, new_swarm_key
from learnae.ledger.tangle import Tangle
from learnae.ledger.tx import Tx, decode_tx, make_tx, tx_link
from learnae.merge import RULES, MergeError, check_params
from learnae.models.params import Uncountable, count_params

__all__ = [
    "ACTIVATIONS", "KERAS_MODULES", "LAYERS", "MERGE_RULES", "OPTIMIZERS",
    "Invite", "Limits", "Manifest", "ModelInfo", "SwarmInit",
    "PARAM_BYTES", "check_model", "init_swarm", "make_genesis", "manifest_of", "node_listen",
    "open_tangle", "parse_listen", "read_admission_file", "short_author", "short_id",
    "state_files",
]

VERSION = 1
MAX_NAME = 64
MAX_POW_BITS = 32
"""Above this a transaction costs hours of hashing; no swarm wants that."""
OPTIMIZERS = ("adam", "sgd", "rmsprop")
MERGE_RULES = RULES
"""Merge rule names (:data:`learnae.merge.RULES`)."""
ADMISSION_OPEN = "open"
MAX_ADMISSION = 10_000
MAX_MERGE_PARAMS = 32

DEFAULT_OPTIMIZER = "adam"
DEFAULT_LEARNING_RATE = 0.001
DEFAULT_BATCH_SIZE = 32
DEFAULT_MERGE = "mean"
DEFAULT_SYNC_EVERY = 50
DEFAULT_SYNC_INTERVAL = 30.0
DEFAULT_POW_BITS = 12
"""About 4,000 sha2-256 hashes per transaction: milliseconds on a desktop, well under a
second on a Raspberry Pi; enough to make flooding cost something."""

# State directory files.
GENESIS_FILE = "genesis.tx"
MANIFEST_FILE = "manifest.json"
SWARM_KEY_FILE = "swarm.key"
IDENTITY_FILE = "identity.key"
TANGLE_FILE = "tangle.sqlite"
INVITE_FILE = "invite.json"
NODE_FILE = "node.json"
_SWARM_FILES = (GENESIS_FILE, MANIFEST_FILE, SWARM_KEY_FILE, IDENTITY_FILE, TANGLE_FILE,
                INVITE_FILE, NODE_FILE)
_MAX_JSON_FILE = 1 << 20
INVITE_FORMAT = "learnae-invite/1"
DEFAULT_LISTEN = "127.0.0.1:0"


# --------------------------------------------------------------------------- model check
LAYERS: frozenset[str] = frozenset({
    # core
    "InputLayer", "Input", "Dense", "EinsumDense", "Activation", "Embedding", "Masking", "Identity",
    # convolution
    "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
    "SeparableConv1D", "SeparableConv2D", "DepthwiseConv1D", "DepthwiseConv2D",
    # pooling
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
    "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    # reshaping
    "Flatten", "Reshape", "Permute", "RepeatVector",
    "Cropping1D", "Cropping2D", "Cropping3D", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
    "UpSampling1D", "UpSampling2D", "UpSampling3D",
    # normalization and numeric preprocessing
    "BatchNormalization", "LayerNormalization", "GroupNormalization", "UnitNormalization",
    "Normalization", "Rescaling",
    # regularization
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
    "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
    # activation layers
    "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax",
    # merging
    "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate", "Dot",
    # recurrent and attention
    "SimpleRNN", "GRU", "LSTM", "Bidirectional", "TimeDistributed",
    "MultiHeadAttention", "Attention", "AdditiveAttention",
})
"""Layer classes a swarm model may use: standard Keras layers with no code, file or string
lookup of their own. ``Input`` is listed for configs that spell ``InputLayer`` that way.
Refused among others: ``Lambda``/``TFOpLambda`` (arbitrary Python), text and lookup
preprocessing (vocabularies), and every custom layer."""

_MODELS = frozenset({"Sequential", "Functional", "Model"})
KERAS_MODULES: dict[str, frozenset[str]] = {
    "keras": _MODELS | {"DTypePolicy", "FloatDTypePolicy"},
    "keras.models": _MODELS,
    "keras.src.models.functional": frozenset({"Functional"}),
    "keras.src.models.sequential": frozenset({"Sequential"}),
    "keras.src.models.model": frozenset({"Model"}),
    "keras.layers": LAYERS,
    "keras.initializers": frozenset({
        "Constant", "Zeros", "Ones", "Identity", "GlorotUniform", "GlorotNormal", "HeUniform",
        "HeNormal", "LecunUniform", "LecunNormal", "Orthogonal", "RandomNormal",
        "RandomUniform", "TruncatedNormal", "VarianceScaling",
    }),
    "keras.regularizers": frozenset({"L1", "L2", "L1L2", "OrthogonalRegularizer"}),
    "keras.constraints": frozenset({"MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm"}),
}
"""Serialized object ``module`` -> the classes allowed from it (Keras 3's own modules only)."""

ACTIVATIONS: frozenset[str] = frozenset({
    "celu", "elu", "exponential", "gelu", "glu", "hard_shrink", "hard_sigmoid", "hard_silu",
    "hard_swish", "hard_tanh", "leaky_relu", "linear", "log_sigmoid", "log_softmax", "mish",
    "relu", "relu6", "selu", "sigmoid", "silu", "soft_shrink", "softmax", "softplus", "softsign",
    "sparse_plus", "sparsemax", "squareplus", "swish", "tanh", "tanh_shrink", "threshold",
})
"""Activation names (strings in a layer config) from ``keras.activations``."""

_LAMBDAS = frozenset({"Lambda", "TFOpLambda", "__lambda__"})
_INTERNAL = frozenset({"__keras_tensor__"})  # references between layers in a Functional config
_ACTIVATION_KEYS = frozenset({"activation", "recurrent_activation"})
_PASS_THROUGH = frozenset({"Activation", "Softmax", "Dropout", "GaussianNoise", "GaussianDropout",
                           "AlphaDropout", "ActivityRegularization"})
_MAX_DEPTH = 64
_MAX_LAYERS = 2_000
_ENVELOPE_BYTES = 256
"""Upper bound of a genesis transaction's bytes besides its payload (keys, author, sig, time,
nonce: about 150)."""
PARAM_BYTES = 4
"""Bytes a parameter takes in a checkpoint (float32): a model may have at most
``limits.checkpoint_bytes // PARAM_BYTES`` parameters."""


@dataclass(frozen=True)
class ModelInfo:
    """What :func:`check_model` could read off a model config without building it.

    ``input_shape``: features of one example (no batch dimension), ``None`` if the config has
    no single fully known input; ``dtype``: that input's dtype name, or ``None``;
    ``classes``: units of the final ``Dense`` layer of a ``Sequential`` model or a
    single-output ``Functional`` one (2 for a 1-unit output), or ``None``; ``layers``: number
    of layers (nested ones included); ``params``: the parameters Keras would allocate (what
    ``model.count_params()`` says once built).
    """

    input_shape: tuple[int, ...] | None
    dtype: str | None
    classes: int | None
    layers: int
    params: int


def check_model(model: str, *, max_params: int | None = None) -> ModelInfo:
    """Check a Keras JSON model config against learnae's rules (see the module docstring).

    Does not import TensorFlow or Keras and executes nothing from the config.

    Args:
        model: the config, as ``model.to_json()`` writes it.
        max_params: the most parameters the model may have; default: what a checkpoint of the
            default ``Limits.checkpoint_bytes`` holds (that divided by :data:`PARAM_BYTES`).

    Raises:
        ConfigError: with the reason and where in the config (``"manifest model: layer
            'lambda': ..."``); for a model over ``max_params``, its count and the limit.
    """
    if not isinstance(model, str):
        raise ConfigError(f"manifest model must be a Keras JSON config string, not {type(model).__name__}")
    try:
        top = json.loads(model)
    except RecursionError:
        raise ConfigError("manifest model: the JSON is nested too deeply") from None
    except ValueError as exc:
        raise ConfigError(f"manifest model is not JSON: {exc}") from None
    if not isinstance(top, dict) or top.get("class_name") not in _MODELS:
        raise ConfigError(
            "manifest model must be a Keras model config (class_name Sequential or Functional),"
            " as written by model.to_json()"
        )
    config = top.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list) or not config["layers"]:
        raise ConfigError("manifest model: config.layers must be a non-empty list of layers")
    if top.get("compile_config") not in (None, {}):
        raise ConfigError(
            "manifest model: compile_config must be empty; the manifest sets the optimizer and the"
            " loss (save the config before model.compile(), or drop compile_config)"
        )
    counter = [0]
    _walk(top, "model", 0, counter)
    if counter[0] > _MAX_LAYERS:
        raise ConfigError(f"manifest model has {counter[0]} layers, more than {_MAX_LAYERS}")
    if max_params is None:
        max_params = Limits().checkpoint_bytes // PARAM_BYTES
    try:
        params = count_params(top)
    except Uncountable as exc:
        raise _fail(f"layer {exc.layer!r}", f"learnae cannot count its parameters: {exc.reason}"
                    ) from None
    if params > max_params:
        raise ConfigError(
            f"manifest model has {params:,} parameters, more than the limit of {max_params:,}"
            f" (limits.checkpoint_bytes / {PARAM_BYTES} bytes per float32 parameter): use a smaller"
            " model or raise limits.checkpoint_bytes"
        )
    input_shape, dtype = _model_input(top)
    return ModelInfo(input_shape, dtype, _model_classes(top), counter[0], params)


def _fail(where: str, reason: str) -> ConfigError:
    return ConfigError(f"manifest model: {where}: {reason}")


def _walk(obj: Any, where: str, depth: int, counter: list[int]) -> None:
    if depth > _MAX_DEPTH:
        raise _fail(where, f"the config is nested more than {_MAX_DEPTH} levels deep")
    if isinstance(obj, list):
        for item in obj:
            _walk(item, where, depth + 1, counter)
        return
    if not isinstance(obj, dict):
        return
    if "class_name" in obj:
        where = _check_object(obj, where, counter)
    for key, value in obj.items():
        if key in _ACTIVATION_KEYS:
            if isinstance(value, str) and value not in ACTIVATIONS:
                raise _fail(where, f"{key} {value!r} is not a Keras activation name")
            if isinstance(value, dict):
                raise _fail(where, f"{key} must be a Keras activation name, not a serialized object")
        _walk(value, where, depth + 1, counter)


def _check_object(obj: dict, where: str, counter: list[int]) -> str:
    """Check one serialized object ``{"module", "class_name", "config", "registered_name"}``;
    returns the location to name in errors about what is inside it."""
    cls, module = obj["class_name"], obj.get("module")
    if not isinstance(cls, str):
        raise _fail(where, "class_name must be a string")
    if module == "keras.layers" or cls in _LAMBDAS:
        name = obj.get("config", {}).get("name") if isinstance(obj.get("config"), dict) else None
        where = f"layer {name!r}" if isinstance(name, str) else f"a {cls} layer in {where}"
        counter[0] += 1
    if cls in _LAMBDAS:
        raise _fail(where, f"{cls} layers and serialized lambdas run arbitrary Python code;"
                           " learnae refuses them (use standard layers)")
    if module is None:
        if cls in _INTERNAL:
            return where
        raise _fail(where, f"object {cls!r} names no Keras module")
    if not isinstance(module, str):
        raise _fail(where, "module must be a string")
    registered = obj.get("registered_name")
    if registered not in (None, cls):
        raise _fail(where, f"registered_name {registered!r} marks a custom object; only Keras'"
                           " own classes are allowed")
    allowed = KERAS_MODULES.get(module)
    if allowed is None:
        raise _fail(where, f"{cls} comes from module {module!r}, which is not one of Keras' own"
                           f" ({', '.join(sorted(KERAS_MODULES))})")
    if cls not in allowed:
        if module == "keras.layers":
            raise _fail(where, f"layer class {cls!r} is not in learnae's allowlist of standard"
                               " Keras layers (learnae.manifest.LAYERS)")
        raise _fail(where, f"{module}.{cls} is not allowed here")
    return where


def _model_input(top: dict) -> tuple[tuple[int, ...] | None, str | None]:
    layers = top["config"]["layers"]
    inputs = [la for la in layers if isinstance(la, dict) and la.get("class_name") in ("InputLayer", "Input")]
    shape: Any = None
    dtype: Any = None
    if len(inputs) == 1 and isinstance(inputs[0].get("config"), dict):
        cfg = inputs[0]["config"]
        shape = cfg.get("batch_shape", cfg.get("batch_input_shape"))
        dtype = cfg.get("dtype")
    elif not inputs and top["class_name"] == "Sequential":
        shape = top["config"].get("build_input_shape")
    if not (isinstance(shape, list) and len(shape) >= 2
            and all(type(d) is int and d >= 1 for d in shape[1:])):
        return None, None
    if isinstance(dtype, dict):  # a DTypePolicy
        dtype = dtype.get("config", {}).get("name") if isinstance(dtype.get("config"), dict) else None
    return tuple(shape[1:]), dtype if dtype in DTYPES.values() else None


def _model_classes(top: dict) -> int | None:
    layers = [la for la in top["config"]["layers"] if isinstance(la, dict)]
    if top["class_name"] != "Sequential":
        # One output: ``[name, 0, 0]`` (Keras 3) or ``[[name, 0, 0]]``.
        outputs = top["config"].get("output_layers")
        if isinstance(outputs, list) and len(outputs) == 1 and isinstance(outputs[0], list):
            outputs = outputs[0]
        if not (isinstance(outputs, list) and outputs and isinstance(outputs[0], str)):
            return None
        by_name = {la["config"].get("name"): la for la in layers if isinstance(la.get("config"), dict)}
        layers = [by_name[outputs[0]]] if outputs[0] in by_name else []
    for layer in reversed(layers):
        if layer.get("class_name") in _PASS_THROUGH:
            continue
        units = layer.get("config", {}).get("units") if layer.get("class_name") == "Dense" else None
        if type(units) is int and units >= 1:
            return 2 if units == 1 else units
        return None
    return None


# --------------------------------------------------------------------------- manifest
@dataclass(frozen=True)
class Limits:
    """Largest accepted sizes, in bytes: a transaction's encoding, a checkpoint file, a data
    chunk file.

    Raises:
        ConfigError: a limit is not an integer in its range (tx 4 KiB to 16 MiB, checkpoint
            and chunk 1 KiB to 4 GiB).
    """

    tx_bytes: int = 64 * 1024
    checkpoint_bytes: int = 64 * 2**20
    chunk_bytes: int = 8 * 2**20

    def __post_init__(self) -> None:
        _int("limits.tx_bytes", self.tx_bytes, 4096, 16 * 2**20)
        _int("limits.checkpoint_bytes", self.checkpoint_bytes, 1024, 4 * 2**30)
        _int("limits.chunk_bytes", self.chunk_bytes, 1024, 4 * 2**30)

    def to_payload(self) -> dict[str, int]:
        return {"tx_bytes": self.tx_bytes, "checkpoint_bytes": self.checkpoint_bytes,
                "chunk_bytes": self.chunk_bytes}

    @classmethod
    def from_payload(cls, value: Any) -> Limits:
        """Inverse of :meth:`to_payload`; missing keys take the defaults.

        Raises:
            ConfigError: ``value`` is not a map, has an unknown key, or a bad limit.
        """
        if not isinstance(value, dict):
            raise ConfigError(f"manifest limits must be a map, not {type(value).__name__}")
        unknown = sorted(set(value) - {f.name for f in dataclasses.fields(cls)}, key=str)
        if unknown:
            raise ConfigError(f"manifest limits has unknown keys {unknown}"
                              " (known: tx_bytes, checkpoint_bytes, chunk_bytes)")
        return cls(**value)


def _int(name: str, value: Any, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise ConfigError(f"manifest {name} must be an integer from {low} to {high}, got {value!r}")
    return value


def _number(name: str, value: Any, high: float) -> float:
    if type(value) not in (int, float) or not math.isfinite(value) or not 0 < value <= high:
        raise ConfigError(f"manifest {name} must be a number above 0 and at most {high:g},"
                          f" got {value!r}")
    return float(value)


def _choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices or type(value) is not str:
        raise ConfigError(f"manifest {name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def _check_name(value: Any, what: str = "manifest name") -> str:
    if (not isinstance(value, str) or not 1 <= len(value) <= MAX_NAME or value != value.strip()
            or not value.isprintable()):
        raise ConfigError(f"{what} must be 1 to {MAX_NAME} printable characters without leading or"
                          f" trailing spaces, got {value!r}")
    return value


def _no_bytes(value: Any, where: str) -> None:
    """Refuse byte strings anywhere (they could be re-encoded as links, see the module doc)."""
    if isinstance(value, bytes | bytearray | memoryview):
        raise ConfigError(f"manifest {where} holds a byte string; the manifest holds only text,"
                          " numbers, lists and maps (author ids, not raw keys)")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"manifest {where} has a non-text key {k!r}")
            _no_bytes(v, f"{where}.{k}" if where else k)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _no_bytes(v, f"{where}[{i}]")


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Manifest:
    """A swarm's definition; its payload form is the genesis transaction's payload.

    Build with ``Manifest(name=..., model=...)`` (everything else has a default; see the
    module docstring for every field) or :meth:`from_payload`. ``input_shape``, ``dtype`` and
    ``classes`` default to what the model config says (:func:`check_model`); given ones must
    agree with it. ``created`` defaults to now (ms).

    Raises:
        ConfigError: any field is invalid; the reason names it.
    """

    name: str
    model: str
    input_shape: tuple[int, ...] | None = None
    dtype: str | None = None
    classes: int | None = None
    optimizer: str = DEFAULT_OPTIMIZER
    learning_rate: float = DEFAULT_LEARNING_RATE
    batch_size: int = DEFAULT_BATCH_SIZE
    merge: str = DEFAULT_MERGE
    merge_params: dict[str, Any] = field(default_factory=dict)
    sync_every: int = DEFAULT_SYNC_EVERY
    sync_interval: float = DEFAULT_SYNC_INTERVAL
    pow_bits: int = DEFAULT_POW_BITS
    limits: Limits = field(default_factory=Limits)
    admission: str | tuple[str, ...] = ADMISSION_OPEN
    created: int | None = None
    _keys: frozenset[bytes] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        _check_name(self.name)
        if not isinstance(self.limits, Limits):
            raise ConfigError("manifest limits must be a Limits")
        info = check_model(self.model, max_params=self.limits.checkpoint_bytes // PARAM_BYTES)
        if len(self.model.encode()) > self.limits.tx_bytes - 1024:
            raise ConfigError(
                f"manifest model config is {len(self.model.encode())} bytes; with the rest of the"
                f" genesis it would not fit limits.tx_bytes ({self.limits.tx_bytes})"
            )
        # Shape, dtype and classes: given, or read from the model; both must agree.
        shape = self.input_shape
        if shape is None:
            shape = info.input_shape
            if shape is None:
                raise ConfigError("manifest input_shape is needed: the model config has no single"
                                  " fully known input shape")
        if not isinstance(shape, list | tuple) or not 1 <= len(shape) <= 8:
            raise ConfigError(f"manifest input_shape must be a list of 1 to 8 integers, got {shape!r}")
        shape = tuple(shape)
        for d in shape:
            _int("input_shape entries", d, 1, 2**31 - 1)
        if info.input_shape is not None and shape != info.input_shape:
            raise ConfigError(f"manifest input_shape {list(shape)} differs from the model's input"
                              f" {list(info.input_shape)}")
        put("input_shape", shape)
        dtype = self.dtype if self.dtype is not None else (info.dtype or "float32")
        put("dtype", _choice("dtype", dtype, tuple(DTYPES.values())))
        classes = self.classes if self.classes is not None else info.classes
        if classes is None:
            raise ConfigError("manifest classes is needed: the model config's output layer does"
                              " not say it")
        put("classes", _int("classes", classes, 2, 1_000_000))
        if info.classes is not None and classes != info.classes:
            raise ConfigError(f"manifest classes {classes} differs from the model's output"
                              f" ({info.classes} classes)")

        _choice("optimizer", self.optimizer, OPTIMIZERS)
        put("learning_rate", _number("learning_rate", self.learning_rate, 10.0))
        _int("batch_size", self.batch_size, 1, 65536)
        _choice("merge", self.merge, MERGE_RULES)
        put("merge_params", _check_merge_params(self.merge_params))
        try:
            check_params(self.merge, self.merge_params)
        except MergeError as exc:
            raise ConfigError(f"manifest merge_params: {exc.reason}") from None
        _int("sync_every", self.sync_every, 1, 1_000_000)
        put("sync_interval", _number("sync_interval", self.sync_interval, 86400.0))
        _int("pow_bits", self.pow_bits, 0, MAX_POW_BITS)
        admission, keys = _check_admission(self.admission)
        put("admission", admission)
        if keys is not None:
            put("_keys", keys)
        put("created", _now_ms() if self.created is None else
            _int("created (ms since the epoch)", self.created, 0, 2**63 - 1))
        size = len(libipld.encode_dag_cbor(self.to_payload()))
        if size + _ENVELOPE_BYTES > self.limits.tx_bytes:
            raise ConfigError(f"the manifest is {size} bytes; the genesis would not fit"
                              f" limits.tx_bytes ({self.limits.tx_bytes})")

    # payload form ------------------------------------------------------------------------------
    def to_payload(self) -> dict[str, Any]:
        """The genesis payload: plain DAG-CBOR-safe values (text, ints, floats, lists, maps)."""
        payload = {
            "v": VERSION,
            "name": self.name,
            "model": self.model,
            "input_shape": list(self.input_shape),
            "dtype": self.dtype,
            "classes": self.classes,
            "optimizer": self.optimizer,
            "learning_rate": self.learning_rate,
            "batch_size": self.batch_size,
            "merge": self.merge,
            "merge_params": dict(self.merge_params),
            "sync_every": self.sync_every,
            "sync_interval": self.sync_interval,
            "pow_bits": self.pow_bits,
            "limits": self.limits.to_payload(),
            "admission": self.admission if self.admission == ADMISSION_OPEN else list(self.admission),
            "created": self.created,
        }
        _no_bytes(payload, "")
        return payload

    @classmethod
    def from_payload(cls, payload: Any) -> Manifest:
        """A manifest from its payload form (a genesis payload or a ``manifest.json``).

        Missing keys other than ``name`` and ``model`` take their defaults (a genesis made by
        :func:`make_genesis` has them all).

        Raises:
            ConfigError: not a map, an unknown key or version, a byte string anywhere, or any
                invalid field; the reason names it.
        """
        if not isinstance(payload, dict):
            raise ConfigError(f"a manifest is a map, not {type(payload).__name__}")
        _no_bytes(payload, "")
        known = {f.name for f in dataclasses.fields(cls) if f.init} | {"v"}
        unknown = sorted(set(payload) - known)
        if unknown:
            raise ConfigError(f"manifest has unknown fields {unknown} (made by a newer learnae?)")
        if payload.get("v", VERSION) != VERSION or type(payload.get("v", VERSION)) is not int:
            raise ConfigError(f"manifest version {payload.get('v')!r} is not {VERSION}")
        for required in ("name", "model"):
            if required not in payload:
                raise ConfigError(f"manifest has no {required!r}")
        kwargs = {k: v for k, v in payload.items() if k != "v"}
        if "limits" in kwargs:
            kwargs["limits"] = Limits.from_payload(kwargs["limits"])
        if isinstance(kwargs.get("input_shape"), list):
            kwargs["input_shape"] = tuple(kwargs["input_shape"])
        if isinstance(kwargs.get("admission"), list):
            kwargs["admission"] = tuple(kwargs["admission"])
        return cls(**kwargs)

    # derived views -----------------------------------------------------------------------------
    @property
    def admitted(self) -> Callable[[bytes], bool] | None:
        """``admitted(author_key) -> bool`` for the tangle; ``None`` for an open swarm."""
        return None if self._keys is None else self._keys.__contains__

    def admits(self, author_key: bytes) -> bool:
        """May this 32-byte public key publish in the swarm?"""
        return self._keys is None or author_key in self._keys

    @property
    def schema(self) -> Schema:
        """The data chunk schema of this swarm: features ``input_shape`` of ``dtype``, int64
        class labels in ``[0, classes)``."""
        return Schema(features=self.input_shape, dtype=self.dtype, label_dtype="int64",
                      classes=self.classes)


def _check_merge_params(params: Any) -> dict[str, Any]:
    if not isinstance(params, dict) or len(params) > MAX_MERGE_PARAMS:
        raise ConfigError(f"manifest merge_params must be a map of at most {MAX_MERGE_PARAMS} entries")
    for key, value in params.items():
        if not isinstance(key, str) or not 1 <= len(key) <= 64:
            raise ConfigError(f"manifest merge_params key {key!r} must be text of 1 to 64 characters")
        ok = (type(value) in (bool, int, str)
              or (type(value) is float and math.isfinite(value)))
        if not ok or (type(value) is str and len(value) > 256):
            raise ConfigError(f"manifest merge_params[{key!r}] must be an int, a finite float,"
                              f" a bool or short text, got {value!r}")
    return dict(params)


def _check_admission(value: Any) -> tuple[str | tuple[str, ...], frozenset[bytes] | None]:
    """The admission value as stored (``"open"`` or a tuple of author ids) and the admitted
    public keys (None for an open swarm), each author id parsed once."""
    if value == ADMISSION_OPEN:
        return ADMISSION_OPEN, None
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError(f"manifest admission must be 'open' or a list of author ids, got {value!r}")
    if not 1 <= len(value) <= MAX_ADMISSION:
        raise ConfigError(f"manifest admission list must hold 1 to {MAX_ADMISSION} author ids"
                          " (use 'open' to admit everyone)")
    keys: dict[str, bytes] = {}
    for i, aid in enumerate(value):
        try:
            key = parse_author_id(aid)
        except IdentityError as exc:
            raise ConfigError(f"manifest admission[{i}]: {exc.reason}") from None
        if aid in keys:
            raise ConfigError(f"manifest admission lists {aid} twice")
        keys[aid] = key
    return tuple(value), frozenset(keys.values())


# --------------------------------------------------------------------------- genesis
def make_genesis(identity: Identity, manifest: Manifest) -> Tx:
    """The swarm's genesis transaction: kind ``genesis``, no parents, no swarm, payload
    ``manifest.to_payload()``, time ``manifest.created``, mined to ``manifest.pow_bits``.

    Raises:
        ConfigError: the genesis would be larger than ``manifest.limits.tx_bytes``.
    """
    payload = manifest.to_payload()
    size = len(libipld.encode_dag_cbor(payload))
    if size + _ENVELOPE_BYTES > manifest.limits.tx_bytes:  # before mining
        raise ConfigError(f"the manifest is {size} bytes; the genesis would not fit"
                          f" limits.tx_bytes ({manifest.limits.tx_bytes})")
    tx = make_tx(identity, kind="genesis", payload=payload, parents=[], swarm=None,
                 pow_bits=manifest.pow_bits, time_ms=manifest.created)
    if len(tx.raw) > manifest.limits.tx_bytes:
        raise ConfigError(f"the genesis is {len(tx.raw)} bytes, over limits.tx_bytes"
                          f" ({manifest.limits.tx_bytes})")
    return tx


def manifest_of(genesis: Tx) -> Manifest:
    """The manifest a genesis transaction carries.

    Raises:
        ConfigError: ``genesis`` is not a genesis transaction or its payload is not a valid
            manifest.
    """
    if genesis.kind != "genesis":
        raise ConfigError(f"transaction {genesis.id} is a {genesis.kind!r}, not a genesis")
    try:
        return Manifest.from_payload(genesis.payload)
    except ConfigError as exc:
        raise ConfigError(f"genesis {genesis.id}: {exc.reason}") from None


# --------------------------------------------------------------------------- invite
@dataclass(frozen=True)
class Invite:
    """What a node or sensor needs to join a swarm; saved as ``invite.json``.

    Attributes:
        genesis: the genesis transaction id (CIDv1 base32), which names the swarm.
        name: the swarm name.
        swarm_key: the text of the libp2p pre-shared key file (``swarm.key``). Secret: anyone
            holding it can enter the private network.
        bootstrap: multiaddrs ending in ``/p2p/<peer id>`` to dial first (may be empty; a
            running node adds its own address).
        pow_bits: the swarm's proof-of-work bits.
        genesis_tx: the genesis transaction's bytes (base64 in the file), so a joiner can open
            its ledger and read the manifest (schema, limits, admission) before it meets a peer;
            ``None`` if not included.

    Raises:
        ConfigError: a field is invalid; the reason names it.
    """

    genesis: str
    name: str
    swarm_key: str
    bootstrap: tuple[str, ...] = ()
    pow_bits: int = DEFAULT_POW_BITS
    genesis_tx: bytes | None = None

    def __post_init__(self) -> None:
        try:
            tx_link(self.genesis if isinstance(self.genesis, str) else "")
        except InvalidCID:
            raise ConfigError(f"invite genesis {self.genesis!r} is not a transaction id"
                              " (CIDv1 base32, 'bafyrei...')") from None
        _check_name(self.name, "invite name")
        if not isinstance(self.swarm_key, str):
            raise ConfigError("invite swarm_key must be the text of a swarm.key file")
        try:
            object.__setattr__(self, "swarm_key", check_swarm_key(self.swarm_key))
        except ConfigError as exc:
            raise ConfigError(f"invite swarm_key: {exc.reason}") from None
        if isinstance(self.bootstrap, str) or not isinstance(self.bootstrap, list | tuple):
            raise ConfigError("invite bootstrap must be a list of multiaddrs")
        for addr in self.bootstrap:
            try:
                check_multiaddr(addr, need_peer=True)
            except InvalidMultiaddr as exc:
                raise ConfigError(f"invite bootstrap: {exc.reason}") from None
        object.__setattr__(self, "bootstrap", tuple(dict.fromkeys(self.bootstrap)))
        if type(self.pow_bits) is not int or not 0 <= self.pow_bits <= MAX_POW_BITS:
            raise ConfigError(f"invite pow_bits must be an integer from 0 to {MAX_POW_BITS},"
                              f" got {self.pow_bits!r}")
        if self.genesis_tx is not None:
            manifest = self.manifest()
            if manifest.name != self.name or manifest.pow_bits != self.pow_bits:
                raise ConfigError("invite name and pow_bits must match the genesis manifest"
                                  f" ({manifest.name!r}, {manifest.pow_bits})")

    def genesis_transaction(self) -> Tx | None:
        """The decoded genesis (checked to have id :attr:`genesis`), or ``None`` if absent.

        Raises:
            ConfigError: the bytes are not a genesis transaction with that id.
        """
        if self.genesis_tx is None:
            return None
        try:
            tx = decode_tx(self.genesis_tx)
        except LearnaeError as exc:
            raise ConfigError(f"invite genesis_tx is not a transaction: {exc.reason}") from None
        if tx.id != self.genesis:
            raise ConfigError(f"invite genesis_tx has id {tx.id}, not the invite's genesis {self.genesis}")
        return tx

    def manifest(self) -> Manifest:
        """The swarm's manifest, from :attr:`genesis_tx`.

        Raises:
            ConfigError: the invite carries no genesis transaction, or it is invalid.
        """
        tx = self.genesis_transaction()
        if tx is None:
            raise ConfigError("the invite carries no genesis transaction (genesis_tx); fetch it"
                              " from a peer")
        return manifest_of(tx)

    def with_bootstrap(self, addrs: Iterable[str]) -> Invite:
        """A copy with ``addrs`` added to :attr:`bootstrap` (duplicates dropped, order kept)."""
        return dataclasses.replace(self, bootstrap=(*self.bootstrap, *addrs))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``format`` ``learnae-invite/1``, ``genesis_tx`` in base64)."""
        d: dict[str, Any] = {
            "format": INVITE_FORMAT, "genesis": self.genesis, "name": self.name,
            "swarm_key": self.swarm_key, "bootstrap": list(self.bootstrap),
            "pow_bits": self.pow_bits,
        }
        if self.genesis_tx is not None:
            d["genesis_tx"] = base64.b64encode(self.genesis_tx).decode()
        return d

    @classmethod
    def from_dict(cls, d: Any) -> Invite:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: not a map, wrong ``format``, a missing or unknown field, or an invalid
                value; the reason names the field.
        """
        if not isinstance(d, dict):
            raise ConfigError("an invite is a JSON object")
        if d.get("format", INVITE_FORMAT) != INVITE_FORMAT:
            raise ConfigError(f"invite format {d.get('format')!r} is not {INVITE_FORMAT!r}")
        known = {"format", "genesis", "name", "swarm_key", "bootstrap", "pow_bits", "genesis_tx"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"invite has unknown fields {unknown}")
        for required in ("genesis", "name", "swarm_key"):
            if required not in d:
                raise ConfigError(f"invite has no {required!r}")
        raw = d.get("genesis_tx")
        if raw is not None:
            try:
                raw = base64.b64decode(raw, validate=True) if isinstance(raw, str) else None
            except (binascii.Error, ValueError):
                raw = None
            if raw is None:
                raise ConfigError("invite genesis_tx must be base64 text")
        bootstrap = d.get("bootstrap", [])
        return cls(
            genesis=d["genesis"], name=d["name"], swarm_key=d["swarm_key"],
            bootstrap=tuple(bootstrap) if isinstance(bootstrap, list) else bootstrap,
            pow_bits=d.get("pow_bits", DEFAULT_POW_BITS), genesis_tx=raw,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Invite:
        """Read and check an ``invite.json``.

        Raises:
            ConfigError: missing, unreadable, too large, not JSON, or invalid (see :meth:`from_dict`);
                the reason names the file.
        """
        d = _read_json(Path(path), "invite file")
        try:
            return cls.from_dict(d)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc.reason}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the invite as JSON, mode 0600 (it holds the swarm key), replacing ``path``
        atomically.

        Raises:
            ConfigError: the write failed.
        """
        _write_atomic(Path(path), (json.dumps(self.to_dict(), indent=2) + "\n").encode(), 0o600)


# --------------------------------------------------------------------------- files
def _read_json(path: Path, what: str) -> Any:
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_JSON_FILE + 1)
    except FileNotFoundError:
        raise ConfigError(f"no {what} at {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > _MAX_JSON_FILE:
        raise ConfigError(f"{what} {path} is over {_MAX_JSON_FILE} bytes")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{what} {path} is not JSON: {exc}") from None


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = None
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (it must not exist) with exactly ``mode`` and ``data``, synced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_admission_file(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """Author ids from a text file: one per line; ``#`` starts a comment; blank lines skipped.

    Raises:
        ConfigError: unreadable, an invalid id (the reason gives the line), a duplicate, or no
            id at all.
    """
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read admission file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"admission file {path} is not UTF-8 text") from None
    ids: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        aid = line.split("#", 1)[0].strip()
        if not aid:
            continue
        try:
            parse_author_id(aid)
        except IdentityError as exc:
            raise ConfigError(f"{path} line {number}: {exc.reason}") from None
        if aid in ids:
            raise ConfigError(f"{path} line {number}: {aid} is listed twice")
        ids.append(aid)
    if not ids:
        raise ConfigError(f"admission file {path} lists no author ids (use 'open' to admit everyone)")
    return tuple(ids)


def parse_listen(text: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``"[::1]:4001"`` for IPv6) -> ``(host, port)``; HOST is an IP address,
    PORT 0 to 65535 (0: any free port).

    Raises:
        ConfigError: otherwise.
    """
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        number = -1
    if not sep or not 0 <= number <= 65535 or not port.isdigit():
        raise ConfigError(f"listen address {text!r} must be HOST:PORT with an IP address, e.g."
                          " 127.0.0.1:4001 or [::1]:4001 (port 0: any free port)")
    return host, number


def state_files(directory: str | os.PathLike[str]) -> dict[str, Path]:
    """The paths of a state directory's files, by role: ``genesis``, ``manifest``,
    ``swarm_key``, ``identity``, ``tangle``, ``invite``, ``node``."""
    d = Path(directory)
    roles = ("genesis", "manifest", "swarm_key", "identity", "tangle", "invite", "node")
    return {role: d / name for role, name in zip(roles, _SWARM_FILES, strict=True)}


def node_listen(directory: str | os.PathLike[str]) -> tuple[str, int]:
    """The listen address saved in ``DIR/node.json`` by ``learnae init --listen``, as
    ``(host, port)``; :data:`DEFAULT_LISTEN` if there is no such file.

    Raises:
        ConfigError: the file is unreadable or invalid.
    """
    path = state_files(directory)["node"]
    if not path.exists():
        return parse_listen(DEFAULT_LISTEN)
    d = _read_json(path, "node settings file")
    if not isinstance(d, dict) or not isinstance(d.get("listen", DEFAULT_LISTEN), str):
        raise ConfigError(f"{path}: 'listen' must be a HOST:PORT string")
    return parse_listen(d.get("listen", DEFAULT_LISTEN))


@dataclass(frozen=True)
class SwarmInit:
    """What :func:`init_swarm` made: the directory, its files (:func:`state_files`), the
    manifest, the genesis transaction, the founder's identity and the invite."""

    directory: Path
    files: dict[str, Path]
    manifest: Manifest
    genesis: Tx
    founder: Identity
    invite: Invite


def init_swarm(
    directory: str | os.PathLike[str],
    manifest: Manifest,
    *,
    founder: Identity | None = None,
    bootstrap: Iterable[str] = (),
    listen: str = DEFAULT_LISTEN,
) -> SwarmInit:
    """Create a swarm in ``directory``: genesis, manifest, swarm key, founder key, ledger,
    invite and node settings (see the module docstring for the files).

    The directory is created (mode 0700) if needed and may hold other files, but none of a
    swarm's. In a closed swarm the founder's author id is added to the admission list if it is
    missing, so the founder can publish. If anything fails, the files made so far are removed.

    Args:
        directory: the state directory.
        manifest: the swarm's definition.
        founder: the founder's identity; a new one by default.
        bootstrap: multiaddrs (``.../p2p/<peer id>``) for the invite.
        listen: ``HOST:PORT`` the founder's node listens on, saved in ``node.json``.

    Raises:
        ConfigError: ``directory`` already holds a swarm file, an argument is invalid, or a
            write failed.
    """
    d = Path(directory)
    files = state_files(d)
    parse_listen(listen)
    if d.exists() and not d.is_dir():
        raise ConfigError(f"{d} exists and is not a directory")
    present = [p.name for p in files.values() if p.exists()]
    present += [p.name for p in d.glob(f"{TANGLE_FILE}-*")] if d.is_dir() else []
    if present:
        raise ConfigError(f"{d} already holds a swarm ({', '.join(present)}); refusing to overwrite"
                          " it. Choose another directory, or delete these files first.")
    founder = founder or Identity.generate()
    if manifest.admission != ADMISSION_OPEN and founder.author_id not in manifest.admission:
        manifest = dataclasses.replace(manifest, admission=(*manifest.admission, founder.author_id))
    genesis = make_genesis(founder, manifest)
    swarm_key = new_swarm_key()
    invite = Invite(genesis=genesis.id, name=manifest.name, swarm_key=swarm_key,
                    bootstrap=tuple(bootstrap), pow_bits=manifest.pow_bits, genesis_tx=genesis.raw)
    made_dir = not d.exists()
    created: list[Path] = []
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        for role, data, mode in (
            ("genesis", genesis.raw, 0o644),
            ("manifest", (json.dumps(manifest.to_payload(), indent=2) + "\n").encode(), 0o644),
            ("swarm_key", swarm_key.encode(), 0o600),
            ("invite", (json.dumps(invite.to_dict(), indent=2) + "\n").encode(), 0o600),
            ("node", (json.dumps({"listen": listen}, indent=2) + "\n").encode(), 0o644),
        ):
            _write_new(files[role], data, mode)
            created.append(files[role])
        founder.save(files["identity"])
        created.append(files["identity"])
        created.append(files["tangle"])
        Tangle(files["tangle"], genesis_raw=genesis.raw, pow_bits=manifest.pow_bits,
               max_tx_bytes=manifest.limits.tx_bytes, admitted=manifest.admitted).close()
    except BaseException as exc:
        for path in created:
            path.unlink(missing_ok=True)
        for path in d.glob(f"{TANGLE_FILE}-*"):
            path.unlink(missing_ok=True)
        if made_dir:
            try:
                d.rmdir()
            except OSError:
                pass
        if isinstance(exc, OSError):
            raise ConfigError(f"cannot create the swarm in {d}: {exc.strerror or exc}") from None
        if isinstance(exc, LearnaeError) and not isinstance(exc, ConfigError):
            raise ConfigError(f"cannot create the swarm in {d}: {exc.reason}") from None
        raise
    return SwarmInit(d, files, manifest, genesis, founder, invite)


def open_tangle(
    directory: str | os.PathLike[str], *, invite: Invite | None = None, read_only: bool = False,
    **tangle_kwargs: Any,
) -> tuple[Tangle, Manifest]:
    """Open the ledger of a state directory (``DIR/tangle.sqlite``) with the swarm's admission
    rule, and return it with the manifest read from its genesis.

    If there is no ledger yet and ``invite`` carries the genesis transaction, the ledger is
    created from it (the directory too, mode 0700), unless ``read_only``: then nothing is ever
    written (commands that only read a ledger use it). Extra keyword arguments go to
    :class:`~learnae.ledger.tangle.Tangle` (e.g. ``clock``, ``max_pending_bytes``).

    Raises:
        ConfigError: the directory or the ledger is missing (and cannot be created), the
            ledger holds another swarm than ``invite``'s, or its stored genesis is damaged or
            not a valid manifest.
        LedgerError: the file is not a tangle store.
    """
    d = Path(directory)
    path = state_files(d)["tangle"]
    if not path.exists():
        genesis = invite.genesis_transaction() if invite is not None and not read_only else None
        if genesis is None:
            if not d.is_dir():
                raise ConfigError(f"state directory {d} does not exist; make a swarm with"
                                  f" `learnae init {d} --name NAME --model MODEL`")
            raise ConfigError(f"{d} holds no ledger ({TANGLE_FILE}); is it a learnae state"
                              f" directory? Make one with `learnae init {d} ...`")
        manifest = manifest_of(genesis)
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        tangle = Tangle(path, genesis_raw=genesis.raw, pow_bits=manifest.pow_bits,
                        max_tx_bytes=manifest.limits.tx_bytes, admitted=manifest.admitted,
                        **tangle_kwargs)
        return tangle, manifest
    with Tangle(path, read_only=read_only) as probe:
        swarm = probe.swarm
        try:
            genesis = probe.get(swarm)
        except TxRejected as exc:
            raise ConfigError(f"{path}: the stored genesis does not decode: {exc.reason}") from None
    if genesis is None or genesis.id != swarm:
        raise ConfigError(f"{path}: the stored genesis bytes are not transaction {swarm}; the"
                          " ledger is damaged (see `learnae ledger verify`)")
    if invite is not None and invite.genesis != swarm:
        raise ConfigError(f"{path} holds swarm {swarm}, not the invite's {invite.genesis}")
    manifest = manifest_of(genesis)
    return Tangle(path, admitted=manifest.admitted, read_only=read_only, **tangle_kwargs), manifest


def short_id(text: str) -> str:
    """A short form of a transaction id or author id for tables: the first 4 characters and
    the last 8 (``"bafy…k2jd8sa1"``, ``"z6Mk…Qw3h9xYz"``)."""
    return text if len(text) <= 14 else f"{text[:4]}…{text[-8:]}"


def short_author(key: bytes) -> str:
    """:func:`short_id` of a 32-byte public key's author id."""
    return short_id(author_id(key))
