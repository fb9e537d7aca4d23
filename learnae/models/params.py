"""The number of parameters a Keras model config declares, counted without Keras.

:func:`count_params` reads a Keras 3 JSON model config (``Sequential`` or ``Functional``, as
``model.to_json()`` writes it) and returns what ``model.count_params()`` would say once Keras
built it: every weight, trainable or not (a ``BatchNormalization``'s moving mean and variance
count). Nothing is built or imported, so a config declaring a ``Dense`` layer of 2**31 units
costs nothing to refuse.

How each layer is counted: Keras builds a layer with the input shape in its ``build_config``
(which ``model.to_json()`` writes for every built layer) or, lacking one, with the shape the
model's input gives it; this module does the same, following shapes through the model from its
``InputLayer`` (or ``build_input_shape``). Every layer of :data:`learnae.models.check.LAYERS` is
counted as Keras builds it, including LoRA weights (``lora_rank``). Rules where Keras' own
allocation is not a plain sum:

- a layer that takes no part in building (a model with no input shape, a layer with no
  ``build_config``): Keras allocates nothing for it, and neither is anything counted;
- a layer used at several places of a ``Functional`` graph (shared) counts once;
- a layer that needs a dimension nobody can know (a weight shape from an unknown axis, or
  from a layer whose output shape this module does not follow) is refused
  (:class:`Uncountable`): give the model an input of known shape and save the config from the
  built model.

Transient copies Keras makes while deserializing a wrapper (``Bidirectional`` deserializes its
inner layer once more) are not counted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeGuard

__all__ = ["Uncountable", "count_params"]

Shape = tuple[Any, ...]
"""A tensor shape with its batch dimension first; ``None`` for an unknown dimension."""

_MODELS = frozenset({"Sequential", "Functional", "Model"})
_MALFORMED = (KeyError, IndexError, TypeError, ValueError, AttributeError, ZeroDivisionError)
_INPUTS = frozenset({"InputLayer", "Input"})


class Uncountable(ValueError):  # noqa: N818 (a reason, raised to the manifest check)
    """The config does not let this module count a layer's parameters.

    Attributes:
        layer: the layer's name (or class), for the message.
        reason: why, as a sentence.
    """

    def __init__(self, layer: str, reason: str):
        super().__init__(f"layer {layer!r}: {reason}")
        self.layer, self.reason = layer, reason


def count_params(model: dict) -> int:
    """Parameters Keras allocates for the model config ``model`` (a parsed ``to_json()``).

    Raises:
        Uncountable: a layer cannot be counted (see the module docstring), or the config is
            malformed where it matters for the count.
    """
    try:
        return _model(model, None)[0]
    except Uncountable:
        raise
    except _MALFORMED as exc:
        raise Uncountable(model.get("class_name", "?") if isinstance(model, dict) else "?",
                          f"the model config is malformed ({type(exc).__name__}: {exc})") from None


# --------------------------------------------------------------------------- models
def _model(obj: dict, inputs: list | None) -> tuple[int, list]:
    """``(parameters, output shapes)`` of a model config given its input shapes (or ``None``)."""
    cfg = obj["config"]
    layers = [la for la in cfg["layers"] if isinstance(la, dict)]
    if obj["class_name"] == "Sequential":
        return _sequential(obj, layers, inputs)
    tensors: dict[tuple, Any] = {}
    given = dict(zip((ref[0] for ref in _refs(cfg.get("input_layers"))), inputs or [], strict=False))
    total = 0
    for layer in layers:
        name = _name(layer)
        if layer["class_name"] in _INPUTS:  # as a nested model, its caller's shapes come first
            tensors[(name, 0, 0)] = given.get(name) or _input_shape(layer)
            continue
        nodes = layer.get("inbound_nodes") or []
        if not nodes:  # not called: built only by its build_config
            total += _layer(layer, None)[0]
        for index, node in enumerate(nodes):
            args, kwargs = _node_inputs(node)
            shapes = [tensors.get(ref) for ref in args]
            params, outs = _layer(layer, shapes, kwargs)
            total += params if index == 0 else 0  # a shared layer's weights exist once
            for j, out in enumerate(outs):
                tensors[(name, index, j)] = out
    outputs = [tensors.get(ref) for ref in _refs(cfg.get("output_layers"))]
    return total, outputs


def _sequential(obj: dict, layers: list[dict], inputs: list | None) -> tuple[int, list]:
    cfg = obj["config"]
    shape = inputs[0] if inputs else None
    declared = cfg.get("build_input_shape") or (obj.get("build_config") or {}).get("input_shape")
    if shape is None and _is_shape(declared):
        shape = tuple(declared)
    built = inputs is not None or shape is not None  # else Keras builds no layer but by its config
    total = 0
    for layer in layers:
        if layer["class_name"] in _INPUTS:
            shape, built = _input_shape(layer), True
            continue
        params, outs = _layer(layer, [shape] if built else None)
        total += params
        shape = outs[0] if outs else None
    return total, [shape]


def _refs(value: Any) -> list[tuple]:
    """``[name, node, tensor]`` references: one, or a list of them, as tuples."""
    if isinstance(value, list) and len(value) == 3 and isinstance(value[0], str):
        return [(value[0], value[1], value[2])]
    return [(v[0], v[1], v[2]) for v in value or [] if isinstance(v, list) and len(v) >= 3]


def _node_inputs(node: Any) -> tuple[list[tuple], dict]:
    """The tensors an inbound node passes (as references, in order) and its other kwargs."""
    if isinstance(node, list):  # Keras 2: [[name, node, tensor, kwargs], ...]
        return [(n[0], n[1], n[2]) for n in node], (node[0][3] if node and len(node[0]) > 3 else {})
    refs = list(_tensors(node.get("args", [])))
    kwargs = {k: v for k, v in (node.get("kwargs") or {}).items()}
    for key in ("query", "value", "key"):  # attention layers take these as keywords too
        if key in kwargs:
            refs += list(_tensors(kwargs.pop(key)))
    return refs, kwargs


def _tensors(value: Any) -> Iterator[tuple]:
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        history = value["config"]["keras_history"]
        yield (history[0], history[1], history[2])
    elif isinstance(value, list):
        for item in value:
            yield from _tensors(item)


# --------------------------------------------------------------------------- layers
def _layer(layer: dict, given: list | None, kwargs: dict | None = None) -> tuple[int, list]:
    """``(parameters, output shapes)`` of one layer config.

    The layer is built with ``given`` input shapes (``None`` where unknown) unless its
    ``build_config`` names them; ``given=None``: the model does not build it. An output shape
    is ``None`` where it cannot be followed.
    """
    cls = layer["class_name"]
    if cls in _MODELS:
        return _model(layer, given)
    cfg = layer["config"]
    shapes = _built_shapes(layer.get("build_config")) or given
    if shapes is None:
        return 0, [None]
    rule = _RULES.get(cls)
    if rule is None:  # no weights, same shape (activations, dropout, merging of equal shapes)
        return 0, [shapes[0] if shapes else None]
    try:
        params, outs = rule(cfg, shapes)
    except _Unknown as exc:
        raise Uncountable(_name(layer), f"{cls} needs {exc}, which is unknown here; give the model"
                                        " an input of known shape") from None
    except _MALFORMED as exc:
        raise Uncountable(_name(layer), f"its {cls} config is malformed ({exc})") from None
    if params < 0:  # a negative size somewhere: Keras would refuse it, perhaps after others
        raise Uncountable(_name(layer), f"its {cls} config gives a negative size")
    if (kwargs or {}).get("return_attention_scores"):
        outs = [*outs, None]
    return params, outs


class _Unknown(Exception):  # noqa: N818
    """A dimension a weight shape needs is unknown (the message names it)."""


def _name(layer: dict) -> str:
    name = layer.get("name") or (layer.get("config") or {}).get("name")
    return name if isinstance(name, str) else layer.get("class_name", "?")


def _is_shape(value: object) -> TypeGuard[list | tuple]:
    return isinstance(value, list | tuple) and all(
        d is None or (type(d) is int and d >= 0) for d in value)


def _built_shapes(build: Any) -> list | None:
    """The input shapes in a layer's ``build_config``.

    ``{"input_shape": shape or [shapes]}`` or ``{"shapes_dict": {"query_shape": ..., ...}}``.
    """
    if not isinstance(build, dict):
        return None
    if "shapes_dict" in build:
        return [tuple(s) if _is_shape(s) else None for s in build["shapes_dict"].values()]
    shape = build.get("input_shape")
    if _is_shape(shape):
        return [tuple(shape)]
    if isinstance(shape, list) and shape and all(_is_shape(s) for s in shape):
        return [tuple(s) for s in shape]
    return None


def _input_shape(layer: dict) -> Shape | None:
    cfg = layer["config"]
    shape = cfg.get("batch_shape", cfg.get("batch_input_shape"))
    return tuple(shape) if _is_shape(shape) else None


def _dim(shape: Shape | None, axis: int, what: str = "") -> int:
    """``shape[axis]``, which must be known."""
    if shape is None:
        raise _Unknown("its input shape")
    d = shape[axis]
    if d is None:
        raise _Unknown(what or f"the size of its input's axis {axis}")
    if d < 0:
        raise ValueError(f"its input's axis {axis} has the size {d}")
    return d


def _pos(cfg: dict, key: str, default: Any = None) -> int:
    value = cfg.get(key, default)
    if type(value) is not int or value < 1:
        raise ValueError(f"{key} must be a positive integer, not {value!r}")
    return value


def _ints(value: Any, n: int, low: int = 1) -> tuple[int, ...]:
    """An int or a list of ``n`` ints, each at least ``low``, as a tuple of ``n`` ints."""
    values = (value,) * n if type(value) is int else tuple(value)
    if len(values) != n or any(type(v) is not int or v < low for v in values):
        raise ValueError(f"expected {n} integers of at least {low}, got {value!r}")
    return values


def _flag(cfg: dict, key: str, default: bool) -> int:
    return int(bool(cfg.get(key, default)))


def _lora(cfg: dict, rows: int, cols: int) -> int:
    rank = cfg.get("lora_rank")
    return rank * (rows + cols) if type(rank) is int and rank > 0 else 0


def _mul(values) -> int | None:
    values = list(values)
    return None if any(v is None for v in values) else math.prod(values)


# core ------------------------------------------------------------------------------------------
def _dense(cfg, shapes):
    units, n_in = _pos(cfg, "units"), _dim(shapes[0], -1, "its input's last dimension")
    params = n_in * units + units * _flag(cfg, "use_bias", True) + _lora(cfg, n_in, units)
    return params, [(*shapes[0][:-1], units)]


def _embedding(cfg, shapes):
    rows, cols = _pos(cfg, "input_dim"), _pos(cfg, "output_dim")
    shape = shapes[0] or (None,)
    return rows * cols + _lora(cfg, rows, cols), [(*shape, cols)]


def _einsum_dense(cfg, shapes):
    """Kernel and bias as Keras' ``_analyze_einsum_string`` makes them."""
    shape = shapes[0]
    if shape is None:
        raise _Unknown("its input shape")
    eq = re.sub(r"\.\.\.", "0", cfg["equation"])
    left = re.fullmatch(r"0([a-zA-Z]+),([a-zA-Z]+)->0([a-zA-Z]+)", eq)
    match = (re.fullmatch(r"([a-zA-Z]+),([a-zA-Z]+)->([a-zA-Z]+)", eq) or left
             or re.fullmatch(r"([a-zA-Z]{2,})0,([a-zA-Z]+)->([a-zA-Z]+)0", eq))
    if match is None:
        raise ValueError(f"equation {cfg['equation']!r} is not one EinsumDense takes")
    ins, weights, outs = match.groups()
    wanted = cfg.get("output_shape")
    out = [shape[0], *([wanted] if type(wanted) is int else wanted)]
    elided = len(shape) - len(ins)
    if elided > 0 and left:
        out[1:1] = shape[1:elided]
    elif elided > 0:
        out += shape[len(shape) - elided:]
    offset = elided if left and elided > 0 else 0
    in_map = {c: i + elided - len(shape) if left else i for i, c in enumerate(ins)}
    out_map = {c: i + offset for i, c in enumerate(outs)}
    kernel = [out[out_map[c]] if c in out_map else shape[in_map[c]] for c in weights]
    if any(d is None for d in kernel):
        raise _Unknown("a kernel dimension")
    bias_axes = cfg.get("bias_axes") or ""
    bias = math.prod(out[out_map[c]] for c in bias_axes) if bias_axes else 0
    params = math.prod(kernel) + bias + _lora(cfg, math.prod(kernel[:-1]), kernel[-1])
    return params, [tuple(out)]


# convolution -----------------------------------------------------------------------------------
def _rank(cls: str) -> int:
    found = re.search(r"(\d)D", cls)
    if found is None:
        raise ValueError(f"layer class {cls!r} names no rank (as Conv2D does)")
    return int(found[1])


def _channels(cfg: dict, shape: Shape) -> int:
    axis = 1 if cfg.get("data_format") == "channels_first" else -1
    return _dim(shape, axis, "its input's channel dimension")


def _spatial(cfg: dict, shape: Shape, rank: int) -> tuple[list, Callable[[list, Any], Shape]]:
    """The spatial dims of ``shape`` and a function putting new spatial dims and channels back."""
    if shape is None or len(shape) != rank + 2:
        raise _Unknown(f"a {rank + 2}-dimensional input")
    if cfg.get("data_format") == "channels_first":
        return list(shape[2:]), lambda dims, ch: (shape[0], ch, *dims)
    return list(shape[1:-1]), lambda dims, ch: (shape[0], *dims, ch)


def _conv_dims(dims, kernel, strides, dilation, padding):
    out: list[int | None] = []
    for size, k, s, d in zip(dims, kernel, strides, dilation, strict=True):
        if size is None:
            out.append(None)
        elif padding == "valid":
            out.append((size - d * (k - 1) - 1) // s + 1)
        else:  # same, causal
            out.append((size - 1) // s + 1)
    return out


def _conv(cls: str, transpose: bool = False, depthwise: bool = False, separable: bool = False):
    rank = _rank(cls)

    def rule(cfg, shapes):
        shape = shapes[0]
        dims, rebuild = _spatial(cfg, shape, rank)
        c_in = _channels(cfg, shape)
        kernel = _ints(cfg["kernel_size"], rank)
        strides = _ints(cfg.get("strides", 1), rank)
        dilation = _ints(cfg.get("dilation_rate", 1), rank)
        padding = cfg.get("padding", "valid")
        bias = _flag(cfg, "use_bias", True)
        k = math.prod(kernel)
        if depthwise or separable:
            dm = _pos(cfg, "depth_multiplier", 1)
            params = k * c_in * dm
            c_out = c_in * dm if depthwise else _pos(cfg, "filters")
            params += c_in * dm * c_out if separable else 0
            params += c_out * bias
        elif transpose:
            c_out = _pos(cfg, "filters")
            params = k * c_in * c_out + c_out * bias
        else:
            c_out, groups = _pos(cfg, "filters"), _pos(cfg, "groups", 1)
            params = k * (c_in // groups) * c_out + c_out * bias
        if transpose:
            pads = cfg.get("output_padding")
            pads = [None] * rank if pads is None else _ints(pads, rank, low=0)
            out = [None if size is None else _transposed(size, kk, s, p, d, padding)
                   for size, kk, s, p, d in zip(dims, kernel, strides, pads, dilation, strict=True)]
        else:
            out = _conv_dims(dims, kernel, strides, dilation, padding)
        return params, [rebuild(out, c_out)]

    return rule


def _transposed(size, kernel, stride, output_padding, dilation, padding):
    kernel = (kernel - 1) * dilation + 1
    if padding == "valid":
        pad = max(kernel, stride) - kernel if output_padding is None else output_padding
        return (size - 1) * stride + kernel + pad
    if output_padding is None:
        return size * stride
    return (size - 1) * stride + kernel % 2 + output_padding


# shapes only -----------------------------------------------------------------------------------
def _pool(cls: str):
    rank = _rank(cls)

    def rule(cfg, shapes):
        dims, rebuild = _spatial(cfg, shapes[0], rank)
        pool = _ints(cfg.get("pool_size", 2), rank)
        strides = _ints(cfg.get("strides") or pool, rank)
        out = _conv_dims(dims, pool, strides, (1,) * rank, cfg.get("padding", "valid"))
        return 0, [rebuild(out, shapes[0][1 if cfg.get("data_format") == "channels_first" else -1])]

    return rule


def _global_pool(cfg, shapes):
    shape = shapes[0]
    if shape is None:
        return 0, [None]
    first = cfg.get("data_format") == "channels_first"
    ch = shape[1] if first else shape[-1]
    if cfg.get("keepdims"):
        ones = (1,) * (len(shape) - 2)
        return 0, [(shape[0], ch, *ones) if first else (shape[0], *ones, ch)]
    return 0, [(shape[0], ch)]


def _flatten(cfg, shapes):
    shape = shapes[0]
    return 0, [None if shape is None else (shape[0], _mul(shape[1:]))]


def _reshape(cfg, shapes):
    shape, target = shapes[0], list(cfg["target_shape"])
    if -1 in target:
        total = None if shape is None else _mul(shape[1:])
        known = math.prod(d for d in target if d != -1)
        target[target.index(-1)] = None if total is None or not known else total // known
    return 0, [(None if shape is None else shape[0], *target)]


def _permute(cfg, shapes):
    shape = shapes[0]
    return 0, [None if shape is None else (shape[0], *(shape[d] for d in cfg["dims"]))]


def _repeat(cfg, shapes):
    shape = shapes[0]
    return 0, [None if shape is None else (shape[0], _pos(cfg, "n"), *shape[1:])]


def _resize(cls: str):
    """Cropping, ZeroPadding and UpSampling: each spatial dim changes on its own."""
    rank = _rank(cls)
    key = {"Cropping": "cropping", "ZeroPadding": "padding", "UpSampling": "size"}[
        re.sub(r"\dD$", "", cls)]

    def rule(cfg, shapes):
        dims, rebuild = _spatial(cfg, shapes[0], rank)
        value = cfg.get(key, 2 if key == "size" else 1)
        if key == "size":
            change = [lambda d, f=f: d * f for f in _ints(value, rank)]
        else:
            pairs = [value] * rank if type(value) is int else value
            if rank == 1 and len(pairs) == 2 and all(type(p) is int for p in pairs):
                pairs = [pairs]
            sign = -1 if key == "cropping" else 1
            change = [lambda d, p=p: d + sign * sum(_ints(p, 2, low=0)) for p in pairs]
        out = [None if d is None else f(d) for d, f in zip(dims, change, strict=True)]
        ch = shapes[0][1 if cfg.get("data_format") == "channels_first" else -1]
        return 0, [rebuild(out, ch)]

    return rule


def _concatenate(cfg, shapes):
    if not shapes or any(s is None for s in shapes):
        return 0, [None]
    axis = cfg.get("axis", -1)
    out, sizes = list(shapes[0]), [s[axis] for s in shapes]
    out[axis] = None if None in sizes else sum(sizes)
    return 0, [tuple(out)]


def _dot(cfg, shapes):
    if len(shapes) != 2 or any(s is None for s in shapes):
        return 0, [None]
    a, b = list(shapes[0]), list(shapes[1])
    axes = cfg.get("axes", -1)
    if type(axes) is int:
        axes = [axes % len(a), axes % len(b)] if axes < 0 else [axes, axes]
    a.pop(axes[0])
    b.pop(axes[1])
    out = a + b[1:]
    return 0, [tuple(out + [1] if len(out) == 1 else out)]


# normalization and activations -----------------------------------------------------------------
def _axes(cfg: dict, shape: Shape, default: Any = -1) -> list[int]:
    axis = cfg.get("axis", default)
    if shape is None:
        raise _Unknown("its input shape")
    axes = [] if axis is None else [axis] if type(axis) is int else list(axis)
    return [_dim(shape, a, f"the size of its input's axis {a}") for a in axes]


def _batch_norm(cfg, shapes):
    (n,) = _axes(cfg, shapes[0])
    per = 2 + _flag(cfg, "scale", True) + _flag(cfg, "center", True)  # + moving mean, variance
    per += 3 * _flag(cfg, "renorm", False)  # moving stddev, renorm mean and stddev
    return n * per, [shapes[0]]


def _layer_norm(cfg, shapes):
    n = math.prod(_axes(cfg, shapes[0]))
    rms = cfg.get("rms_scaling", False)
    scale = bool(cfg.get("scale", True)) or bool(rms)
    center = bool(cfg.get("center", True)) and not rms
    return n * (scale + center), [shapes[0]]


def _group_norm(cfg, shapes):
    (n,) = _axes(cfg, shapes[0])
    return n * (_flag(cfg, "scale", True) + _flag(cfg, "center", True)), [shapes[0]]


def _normalization(cfg, shapes):
    if cfg.get("mean") is not None:  # given, not learned: no weights
        return 0, [shapes[0]]
    return 2 * math.prod(_axes(cfg, shapes[0])) + 1, [shapes[0]]  # mean, variance, count


def _prelu(cfg, shapes):
    shape = shapes[0]
    if shape is None:
        raise _Unknown("its input shape")
    alpha = list(shape[1:])
    for axis in cfg.get("shared_axes") or []:
        alpha[axis - 1] = 1
    if any(d is None for d in alpha):
        raise _Unknown("the size of every non-shared axis of its input")
    return math.prod(alpha), [shape]


# recurrent and attention -----------------------------------------------------------------------
_GATES = {"SimpleRNN": 1, "GRU": 3, "LSTM": 4}


def _rnn(cls: str):
    gates = _GATES[cls]

    def rule(cfg, shapes):
        shape = shapes[0]
        units, n_in = _pos(cfg, "units"), _dim(shape, -1, "its input's last dimension")
        bias = gates * units * _flag(cfg, "use_bias", True)
        if cls == "GRU" and cfg.get("reset_after", True):
            bias *= 2
        params = gates * units * (n_in + units) + bias
        out = (shape[0], shape[1], units) if cfg.get("return_sequences") else (shape[0], units)
        states = (2 if cls == "LSTM" else 1) if cfg.get("return_state") else 0
        return params, [out] + [(shape[0], units)] * states

    return rule


def _inner(cfg: dict, key: str, shape: Shape) -> tuple[int, list]:
    layer = cfg[key]
    if layer.get("class_name") not in _RULES and layer.get("class_name") not in _MODELS:
        return 0, [shape]
    return _layer({**layer, "build_config": None}, [shape])


def _bidirectional(cfg, shapes):
    forward, outs = _inner(cfg, "layer", shapes[0])
    backward = _inner(cfg, "backward_layer", shapes[0])[0] if cfg.get("backward_layer") else forward
    out = outs[0]
    mode = cfg.get("merge_mode", "concat")
    if mode == "concat" and out is not None:
        merged = [(*out[:-1], None if out[-1] is None else 2 * out[-1])]
    else:
        merged = [out] if mode else [out, out]
    states = outs[1:]
    return forward + backward, merged + states * 2


def _time_distributed(cfg, shapes):
    shape = shapes[0]
    if shape is None or len(shape) < 3:
        raise _Unknown("an input of at least 3 dimensions")
    params, outs = _inner(cfg, "layer", (shape[0], *shape[2:]))
    out = outs[0]
    return params, [None if out is None else (out[0], shape[1], *out[1:])]


def _multi_head_attention(cfg, shapes):
    query = shapes[0]
    value = shapes[1] if len(shapes) > 1 else query
    key = shapes[2] if len(shapes) > 2 and shapes[2] is not None else value
    heads, key_dim = _pos(cfg, "num_heads"), _pos(cfg, "key_dim")
    value_dim = cfg.get("value_dim") or key_dim
    bias = _flag(cfg, "use_bias", True)
    q_in = _dim(query, -1, "the query's last dimension")
    k_in = _dim(key, -1, "the key's last dimension")
    v_in = _dim(value, -1, "the value's last dimension")
    out_shape = cfg.get("output_shape")
    if not out_shape:
        out = [q_in]
    else:
        out = list(_ints(out_shape, 1 if type(out_shape) is int else len(out_shape)))
    n_out = math.prod(out)
    params = (heads * key_dim * (q_in + bias) + heads * key_dim * (k_in + bias)
              + heads * value_dim * (v_in + bias) + heads * value_dim * n_out + n_out * bias)
    if cfg.get("use_gate"):
        params += heads * value_dim * (q_in + bias)
    return params, [(*query[:-1], *out)]


def _attention(cfg, shapes):
    params = _flag(cfg, "use_scale", False) + (cfg.get("score_mode") == "concat")
    query, value = shapes[0], shapes[1] if len(shapes) > 1 else shapes[0]
    out = None if query is None or value is None else (*query[:-1], value[-1])
    return params, [out]


def _additive_attention(cfg, shapes):
    params = _dim(shapes[0], -1, "the query's last dimension") if cfg.get("use_scale", True) else 0
    return params, _attention({}, shapes)[1]


_RULES: dict[str, Callable[[dict, list], tuple[int, list]]] = {
    "Dense": _dense, "EinsumDense": _einsum_dense, "Embedding": _embedding,
    "BatchNormalization": _batch_norm, "LayerNormalization": _layer_norm,
    "GroupNormalization": _group_norm, "Normalization": _normalization, "PReLU": _prelu,
    "Bidirectional": _bidirectional, "TimeDistributed": _time_distributed,
    "MultiHeadAttention": _multi_head_attention, "Attention": _attention,
    "AdditiveAttention": _additive_attention,
    "GlobalMaxPooling1D": _global_pool, "GlobalMaxPooling2D": _global_pool,
    "GlobalMaxPooling3D": _global_pool, "GlobalAveragePooling1D": _global_pool,
    "GlobalAveragePooling2D": _global_pool, "GlobalAveragePooling3D": _global_pool,
    "Flatten": _flatten, "Reshape": _reshape, "Permute": _permute, "RepeatVector": _repeat,
    "Concatenate": _concatenate, "Dot": _dot,
    **{name: _rnn(name) for name in _GATES},
    **{f"Conv{n}D": _conv(f"Conv{n}D") for n in (1, 2, 3)},
    **{f"Conv{n}DTranspose": _conv(f"Conv{n}D", transpose=True) for n in (1, 2, 3)},
    **{f"SeparableConv{n}D": _conv(f"Conv{n}D", separable=True) for n in (1, 2)},
    **{f"DepthwiseConv{n}D": _conv(f"Conv{n}D", depthwise=True) for n in (1, 2)},
    **{f"{kind}Pooling{n}D": _pool(f"P{n}D") for kind in ("Max", "Average") for n in (1, 2, 3)},
    **{f"{kind}{n}D": _resize(f"{kind}{n}D") for kind in ("Cropping", "ZeroPadding", "UpSampling")
       for n in (1, 2, 3)},
}
"""Layers with weights or a shape of their own; every other allowed layer passes its first
input's shape on and has no weights."""
