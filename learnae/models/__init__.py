"""The model configurations learnae knows by name, and reading a model from a file.

A swarm's model travels in its genesis transaction as a Keras JSON config: the string
``keras.Sequential.to_json()`` returns (Keras 3). The training layer rebuilds it with
``keras.saving.deserialize_keras_object(json.loads(config), safe_mode=True)`` (Keras 3's
``model_from_json`` takes no ``safe_mode`` argument); :mod:`learnae.models.check` checks it first,
without importing Keras (allowed layers only, no ``Lambda``, nothing outside Keras).

Known models (:data:`MODELS`), all small multi-layer perceptrons on flat float32 features with a
softmax output over class indices:

=====================  ===========  ==================  =======  ==========================
name                   input        hidden (ReLU)       classes  parameters
=====================  ===========  ==================  =======  ==========================
``digits-mlp``         64           64                  10       4,810 (sklearn digits 8x8)
``wine-mlp``           13           32                  3        547 (sklearn wine)
``breast-cancer-mlp``  30           32                  2        1,058 (sklearn breast cancer)
``iris-mlp``           4            16                  3        131 (sklearn iris)
``mlp-1m``             64           1024, 768, 256      10       1,053,194 (benchmarks)
=====================  ===========  ==================  =======  ==========================

Each config is exactly what Keras 3.15 writes for
``keras.Sequential([keras.Input((n,), name="features"), Dense(h, "relu", name="dense_0"), ...,
Dense(c, "softmax", name="output")], name=...)``; layer names are fixed so that the weight
paths (checkpoint tensor names, e.g. ``dense_0/kernel``) are the same on every node. The dicts
are built by :func:`mlp` rather than spelled out; ``tests/test_manifest.py`` checks them
against Keras itself (slow test).

:func:`learnae.models.params.count_params` counts a config's parameters without Keras (the
table's last column); the manifest refuses a model with more than its checkpoint limit holds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from learnae.errors import ConfigError
from learnae.files import read_json
from learnae.models.check import ModelInfo, check_model

__all__ = ["MAX_MODEL_FILE_BYTES", "MODELS", "ModelInfo", "check_model", "mlp", "model_config"]

MAX_MODEL_FILE_BYTES = 1 << 20
"""Largest MODEL.json read (1 MiB); a genesis transaction must hold the config anyway."""


def _obj(module: str, class_name: str, config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A serialized Keras object: ``{"module", "class_name", "config", "registered_name"}``."""
    return {"module": module, "class_name": class_name, "config": config, "registered_name": None,
            **extra}


def _float32() -> dict[str, Any]:
    return _obj("keras", "DTypePolicy", {"name": "float32"})


def _dense(name: str, units: int, activation: str, n_in: int) -> dict[str, Any]:
    config = {
        "name": name,
        "trainable": True,
        "dtype": _float32(),
        "units": units,
        "activation": activation,
        "use_bias": True,
        "kernel_initializer": _obj(
            "keras.initializers", "GlorotUniform",
            {"seed": None, "input_axes": None, "output_axes": None},
        ),
        "bias_initializer": _obj("keras.initializers", "Zeros", {}),
        "kernel_regularizer": None,
        "bias_regularizer": None,
        "kernel_constraint": None,
        "bias_constraint": None,
        "quantization_config": None,
    }
    return _obj("keras.layers", "Dense", config, build_config={"input_shape": [None, n_in]})


def mlp(name: str, n_in: int, hidden: list[int], classes: int) -> dict[str, Any]:
    """The config of ``Input((n_in,)) -> Dense(h, relu) for h in hidden -> Dense(classes, softmax)``."""
    layers: list[dict[str, Any]] = [_obj("keras.layers", "InputLayer", {
        "batch_shape": [None, n_in], "dtype": "float32", "sparse": False, "ragged": False,
        "name": "features", "optional": False,
    })]
    width = n_in
    for i, units in enumerate(hidden):
        layers.append(_dense(f"dense_{i}", units, "relu", width))
        width = units
    layers.append(_dense("output", classes, "softmax", width))
    config = {
        "name": name.replace("-", "_"),
        "trainable": True,
        "dtype": _float32(),
        "layers": layers,
        "build_input_shape": [None, n_in],
    }
    return _obj("keras", "Sequential", config, build_config={"input_shape": [None, n_in]},
                compile_config={})


MODELS: dict[str, dict[str, Any]] = {
    "digits-mlp": mlp("digits-mlp", 64, [64], 10),
    "wine-mlp": mlp("wine-mlp", 13, [32], 3),
    "breast-cancer-mlp": mlp("breast-cancer-mlp", 30, [32], 2),
    "iris-mlp": mlp("iris-mlp", 4, [16], 3),
    "mlp-1m": mlp("mlp-1m", 64, [1024, 768, 256], 10),
}
"""Known model configs by name (Keras JSON configs as dicts; see the module docstring)."""


def model_config(name_or_path: str | os.PathLike[str]) -> str:
    """The Keras JSON config of a known model name (:data:`MODELS`) or of a ``MODEL.json`` file.

    A file holds what ``model.to_json()`` returns. The result is compact JSON (no spaces), as
    it goes into the genesis transaction. It is *not* checked here: use
    :func:`learnae.models.check.check_model`.

    Raises:
        ConfigError: ``name_or_path`` is neither a known name nor a readable file of at most
            :data:`MAX_MODEL_FILE_BYTES` bytes holding a JSON object.
    """
    if isinstance(name_or_path, str) and name_or_path in MODELS:
        return json.dumps(MODELS[name_or_path], separators=(",", ":"))
    path = Path(name_or_path)
    if not path.exists():
        raise ConfigError(
            f"model {str(name_or_path)!r} is neither a known model ({', '.join(MODELS)}) nor a file"
        )
    obj = read_json(path, "model file", MAX_MODEL_FILE_BYTES)
    if not isinstance(obj, dict):
        raise ConfigError(f"model file {path} does not hold a JSON object (write it with model.to_json())")
    return json.dumps(obj, separators=(",", ":"))
