"""The model-config check: which Keras JSON model configs a swarm may carry.

A swarm's model travels in its genesis transaction as a Keras JSON config; the training layer
rebuilds it in Keras' safe mode
(``keras.saving.deserialize_keras_object(json.loads(model), safe_mode=True)``). Before that,
:func:`check_model` refuses, without importing TensorFlow or Keras, any config that names a
``Lambda`` (or ``TFOpLambda``) layer or a serialized Python lambda, a layer class outside
:data:`LAYERS`, an object whose ``module`` is not one of Keras' own (:data:`KERAS_MODULES`) or
whose ``registered_name`` marks a custom object, an activation name outside
:data:`ACTIVATIONS`, or a non-empty ``compile_config`` (the manifest sets the optimizer).
Nothing in the config is ever executed here. It also counts the model's parameters as Keras
would build them (:func:`learnae.models.params.count_params`, every weight, trainable or not)
and refuses a model with more than ``max_params`` (the manifest passes
``limits.checkpoint_bytes / PARAM_BYTES``: a float32 parameter takes 4 bytes of a checkpoint),
or one a layer of which cannot be counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from learnae.errors import ConfigError
from learnae.formats import DTYPES
from learnae.models.params import Uncountable, count_params

__all__ = ["ACTIVATIONS", "DEFAULT_MAX_PARAMS", "KERAS_MODULES", "LAYERS", "PARAM_BYTES",
           "ModelInfo", "check_model"]

PARAM_BYTES = 4
"""Bytes a parameter takes in a checkpoint (float32): a model may have at most
``limits.checkpoint_bytes // PARAM_BYTES`` parameters."""
DEFAULT_MAX_PARAMS = 64 * 2**20 // PARAM_BYTES
"""The parameters a checkpoint of the manifest's default ``limits.checkpoint_bytes`` (64 MiB)
holds: 16,777,216."""

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


def check_model(model: str, *, max_params: int = DEFAULT_MAX_PARAMS) -> ModelInfo:
    """Check a Keras JSON model config against learnae's rules (see the module docstring).

    Does not import TensorFlow or Keras and executes nothing from the config.

    Args:
        model: the config, as ``model.to_json()`` writes it.
        max_params: the most parameters the model may have; default: what a checkpoint of the
            manifest's default ``limits.checkpoint_bytes`` holds (:data:`DEFAULT_MAX_PARAMS`).

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
    """Check one serialized object ``{"module", "class_name", "config", "registered_name"}``.

    Returns the location to name in errors about what is inside it.
    """
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
                               " Keras layers (learnae.models.check.LAYERS)")
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
