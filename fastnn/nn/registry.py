"""Architectures as data: a declarative, versioned spec of a model's layers and their
constructor arguments, and the registry of the layer classes such a spec may name.

``to_spec(model)`` describes a model as JSON-able data (no weights)::

    {"version": 1,
     "root": {"layer": "Sequential", "config": {"fuse": true}, "children": [
         {"layer": "Dense", "config": {"in_features": 64, "out_features": 32, "activation": null,
                                       "alpha": 0.01, "bias": true, "dtype": "float32"}},
         {"layer": "ReLU", "config": {}}, ...]}}

and ``from_spec(spec)`` builds a new model from it (weights freshly made, to be loaded from a
state dict: ``Dense`` layers start at zero). Every built-in layer is registered under its class
name; a custom layer registers itself with :func:`register_layer` and describes itself with
``get_config()``, a dict of JSON values (None, bools, numbers, strings, lists, dicts with
string keys) that its constructor takes back as keyword arguments::

    @fnn.nn.register_layer
    class Scale(fnn.nn.Module):
        def __init__(self, factor=2.0): ...
        def get_config(self): return {"factor": self.factor}

A custom layer is a leaf of the spec: children it builds itself from its config are rebuilt by
its constructor (their weights come from the state dict); it cannot take other layers as
arguments, as ``Sequential`` and ``Residual`` do.

A spec may come from a hostile file, so :func:`from_spec` trusts nothing: every node must be a
dict with the expected keys, every layer name registered, every argument of a built-in layer
of the declared type, nesting at most :data:`MAX_DEPTH` deep and at most :data:`MAX_LAYERS`
layers, and (with ``max_elements``) no built-in layer larger than the weights that came with
it. Every problem is a ``ValueError`` naming the layer's position (``root.children[2]``).
(keras's ``get_config`` / ``from_config``, without code in the file)
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import numpy as np

from .activations import GELU, LeakyReLU, PReLU, ReLU, Sigmoid, Softmax, Tanh
from .containers import Residual, Sequential
from .dense import Dense
from .dropout import Dropout
from .module import Module
from .normalization import BatchNorm

__all__ = ["register_layer", "to_spec", "from_spec", "registered_layers", "SPEC_VERSION", "MAX_DEPTH", "MAX_LAYERS"]

SPEC_VERSION = 1
MAX_DEPTH = 32  # nested containers; real models use a handful
MAX_LAYERS = 10_000


class _Builtin(NamedTuple):
    """How a built-in layer is described and rebuilt: ``config(layer)`` its constructor
    arguments, ``args`` their JSON types (a tuple: any of them), ``sizes`` the arguments whose
    product its parameters hold, ``children`` whether it takes layers (``"many"``: any number,
    ``"one"``: exactly one), ``fixed`` arguments always passed when rebuilding."""

    cls: type
    config: Callable[[Any], dict]
    args: dict
    sizes: tuple = ()
    children: str | None = None
    fixed: dict = {}


def _dtype_name(layer) -> str:
    return np.dtype(layer.dtype).name


def _placeholder(weight, rng) -> None:
    """Dense's initializer when rebuilding: zeros, to be overwritten by the saved weights
    (``init="zeros"`` would warn about a training start nobody is making)."""
    weight.fill(0)


_INT, _FLOAT, _BOOL, _STR, _NONE = (int,), (int, float), (bool,), (str,), (type(None),)
_BUILTINS = {
    "Sequential": _Builtin(Sequential, lambda m: {"fuse": m.fuse}, {"fuse": _BOOL}, children="many"),
    "Residual": _Builtin(Residual, lambda m: {}, {}, children="one"),
    "Dense": _Builtin(
        Dense,
        lambda m: {"in_features": m.in_features, "out_features": m.out_features,
                   "activation": None if m.activation == "identity" else m.activation, "alpha": m.alpha,
                   "bias": m.bias is not None, "dtype": _dtype_name(m)},
        {"in_features": _INT, "out_features": _INT, "activation": _STR + _NONE, "alpha": _FLOAT, "bias": _BOOL,
         "dtype": _STR},
        sizes=("in_features", "out_features"), fixed={"init": _placeholder}),
    "BatchNorm": _Builtin(
        BatchNorm, lambda m: {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum,
                              "dtype": _dtype_name(m)},
        {"num_features": _INT, "eps": _FLOAT, "momentum": _FLOAT, "dtype": _STR}, sizes=("num_features",)),
    "Dropout": _Builtin(Dropout, lambda m: {"p": m.p, "seed": m.seed}, {"p": _FLOAT, "seed": _INT}),
    "ReLU": _Builtin(ReLU, lambda m: {}, {}),
    "Sigmoid": _Builtin(Sigmoid, lambda m: {}, {}),
    "Tanh": _Builtin(Tanh, lambda m: {}, {}),
    "LeakyReLU": _Builtin(LeakyReLU, lambda m: {"alpha": m.alpha}, {"alpha": _FLOAT}),
    "GELU": _Builtin(GELU, lambda m: {"approximate": m.approximate}, {"approximate": _STR}),
    "Softmax": _Builtin(Softmax, lambda m: {"dim": m.dim}, {"dim": _INT}),
    "PReLU": _Builtin(PReLU, lambda m: {"num_parameters": m.num_parameters, "dtype": _dtype_name(m)},
                      {"num_parameters": _INT, "dtype": _STR}, sizes=("num_parameters",)),
}
_CUSTOM: dict[str, type] = {}


def register_layer(cls: type | None = None, *, name: str | None = None):
    """Let model files save and rebuild the layer class ``cls``: its spec stores ``name``
    (default the class name) and ``layer.get_config()``, and loading calls
    ``cls(**config)``. Use as a decorator (``@register_layer`` or
    ``@register_layer(name="MyScale")``) or a call; returns ``cls``. Registering the same class
    again is allowed; a name taken by another class (a built-in layer's included) is a
    ``ValueError``. Loading a model file that names a layer needs it registered in that
    process."""
    if cls is None:
        return lambda c: register_layer(c, name=name)
    if not (isinstance(cls, type) and issubclass(cls, Module)):
        raise TypeError(f"register_layer: expected a subclass of fastnn.nn.Module, got {cls!r}")
    if not callable(getattr(cls, "get_config", None)):
        raise TypeError(f"register_layer: {cls.__name__} needs a get_config() method returning its constructor's "
                        "keyword arguments as a dict of JSON values")
    name = cls.__name__ if name is None else name
    if not isinstance(name, str) or not name:
        raise TypeError(f"register_layer: name must be a non-empty string, got {name!r}")
    taken = _BUILTINS[name].cls if name in _BUILTINS else _CUSTOM.get(name)
    if taken is not None and taken is not cls:
        raise ValueError(f"register_layer: the name {name!r} is taken by {taken.__module__}.{taken.__qualname__}; "
                         "pass name=... to register under another")
    _CUSTOM[name] = cls
    return cls


def registered_layers() -> dict[str, type]:
    """Every layer name a spec may use -> its class (built-in and registered)."""
    return {**{name: entry.cls for name, entry in _BUILTINS.items()}, **_CUSTOM}


def _name_of(layer: Module, where: str) -> str:
    for name, entry in _BUILTINS.items():
        if type(layer) is entry.cls:
            return name
    for name, cls in _CUSTOM.items():
        if type(layer) is cls:
            return name
    raise TypeError(f"{where}: {type(layer).__module__}.{type(layer).__qualname__} is not a registered layer; "
                    "register it with fastnn.nn.register_layer (it needs a get_config() method)")


# ---------------------------------------------------------------------------------------------
# model -> spec


def to_spec(model: Module) -> dict:
    """The architecture of ``model`` as JSON-able data ``{"version": 1, "root": node}``, each
    node ``{"layer": name, "config": {...}}`` plus ``"children": [...]`` for ``Sequential`` and
    ``Residual``. ``TypeError`` for a layer that is not registered or a config that is not
    JSON."""
    return {"version": SPEC_VERSION, "root": _node(model, "root", 0)}


def _node(layer: Module, where: str, depth: int) -> dict:
    if depth > MAX_DEPTH:
        raise ValueError(f"{where}: layers nested deeper than {MAX_DEPTH} levels cannot be saved")
    name = _name_of(layer, where)
    if name in _BUILTINS:
        entry = _BUILTINS[name]
        node = {"layer": name, "config": entry.config(layer)}
        if entry.children == "many":
            node["children"] = [_node(child, f"{where}.children[{i}]", depth + 1)
                                for i, child in enumerate(layer.layers)]
        elif entry.children == "one":
            node["children"] = [_node(layer.block, f"{where}.children[0]", depth + 1)]
        return node
    config = layer.get_config()
    if not isinstance(config, dict):
        raise TypeError(f"{where}: {name}.get_config() must return a dict, got {type(config).__name__}")
    return {"layer": name, "config": {key: json_value(value, f"{where}.config.{key}") for key, value in
                                      _string_keys(config, f"{where}.config", TypeError).items()}}


def json_value(value, where: str, depth: int = 0):
    """``value`` as plain JSON data (tuples as lists, NumPy scalars as Python numbers);
    ``TypeError`` for anything else, ``ValueError`` for NaN, infinity or nesting deeper than
    :data:`MAX_DEPTH`."""
    if depth > MAX_DEPTH:
        raise ValueError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value!r} is not a finite number")
        return value
    if isinstance(value, (list, tuple)):
        return [json_value(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {key: json_value(item, f"{where}.{key}", depth + 1)
                for key, item in _string_keys(value, where, TypeError).items()}
    raise TypeError(f"{where}: a {type(value).__name__} is not JSON data (None, bool, number, string, list, dict)")


def _string_keys(mapping: dict, where: str, error: type) -> dict:
    bad = [key for key in mapping if not isinstance(key, str)]
    if bad:
        raise error(f"{where}: keys must be strings, got {bad[0]!r}")
    return mapping


# ---------------------------------------------------------------------------------------------
# spec -> model


def from_spec(spec, *, max_elements: int | None = None) -> Module:
    """A new model built from ``spec`` (as :func:`to_spec` writes it), its weights fresh
    (``Dense`` at zero; load a state dict next). ``max_elements``: the number of weight values
    available, above which a built-in layer's declared size (``Dense``'s in x out,
    ``BatchNorm``'s features, ``PReLU``'s slopes) is refused before anything is allocated.
    ``ValueError`` naming the node for anything malformed or unknown."""
    if not isinstance(spec, dict) or set(spec) != {"version", "root"}:
        raise ValueError("the architecture must be a dict with the keys 'version' and 'root'")
    if type(spec["version"]) is not int or spec["version"] != SPEC_VERSION:
        raise ValueError(f"architecture spec version {spec['version']!r}; this fastnn reads version {SPEC_VERSION}")
    count = [0]
    return _build(spec["root"], "root", 0, max_elements, count)


def _build(node, where: str, depth: int, max_elements, count: list) -> Module:
    if depth > MAX_DEPTH:
        raise ValueError(f"{where}: layers nested deeper than {MAX_DEPTH} levels")
    count[0] += 1
    if count[0] > MAX_LAYERS:
        raise ValueError(f"more than {MAX_LAYERS} layers")
    if not isinstance(node, dict):
        raise ValueError(f"{where}: expected a layer (a dict), got {type(node).__name__}")
    unknown = set(node) - {"layer", "config", "children"}
    if unknown or "layer" not in node:
        raise ValueError(f"{where}: a layer has the keys 'layer', 'config' and 'children', got {sorted(node)}")
    name, config = node["layer"], node.get("config", {})
    if not isinstance(name, str):
        raise ValueError(f"{where}: the layer name must be a string, got {type(name).__name__}")
    if not isinstance(config, dict):
        raise ValueError(f"{where}: the config of {name} must be a dict, got {type(config).__name__}")
    entry = _BUILTINS.get(name)
    cls = entry.cls if entry is not None else _CUSTOM.get(name)
    if cls is None:
        raise ValueError(f"{where}: unknown layer {name!r}; a custom layer must be registered with "
                         "fastnn.nn.register_layer before loading (built-in: " + ", ".join(sorted(_BUILTINS)) + ")")
    children = node.get("children", [])
    expected = None if entry is None else entry.children
    if not isinstance(children, list):
        raise ValueError(f"{where}: the children of {name} must be a list, got {type(children).__name__}")
    if (expected is None and children) or (expected == "one" and len(children) != 1):
        wanted = "no children" if expected is None else "exactly one child (its block)"
        raise ValueError(f"{where}: {name} takes {wanted}, got {len(children)}")
    if entry is not None:
        _check_args(entry, name, config, where, max_elements)
    else:
        _string_keys(config, f"{where}.config", ValueError)
        json_value(config, f"{where}.config", depth)
    layers = [_build(child, f"{where}.children[{i}]", depth + 1, max_elements, count)
              for i, child in enumerate(children)]
    try:
        return cls(*layers, **config, **({} if entry is None else entry.fixed))
    except Exception as exc:  # a constructor refusing its arguments, whichever way it says so
        raise ValueError(f"{where}: {name}(**{config!r}) failed: {type(exc).__name__}: {exc}") from exc


def _check_args(entry: _Builtin, name: str, config: dict, where: str, max_elements) -> None:
    """The arguments of a built-in layer: known names, declared JSON types, a size the file's
    weights can hold."""
    for key, value in config.items():
        types = entry.args.get(key)
        if types is None:
            raise ValueError(f"{where}: {name} has no argument {key!r} (it takes {sorted(entry.args)})")
        # bool is an int to Python, not to a spec
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ValueError(f"{where}: {name} argument {key!r} must be "
                             f"{' or '.join(t.__name__ for t in types)}, got {type(value).__name__}")
    if max_elements is not None and entry.sizes and all(type(config.get(s)) is int for s in entry.sizes):
        size = math.prod(config[s] for s in entry.sizes)
        if size > max_elements:
            raise ValueError(f"{where}: {name} declares {size:,} weights but the file holds {max_elements:,} values")
