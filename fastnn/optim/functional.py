"""Optimizer steps as functions that update lists of arrays in place.

Each function takes parallel lists (``params[i]``, ``grads[i]`` and each state list's ``[i]``
have one shape, dtype and device) and updates the parameters and the state with no copy.
Arrays may be NumPy, CuPy, or anything exposing ``__dlpack__`` / ``__cuda_array_interface__``
(PyTorch tensors on the CPU or a GPU: pass ``p.data``/``p.grad``, or tensors that do not require
grad). Gradients are read, never written. Everything is validated (hyperparameters, counts,
shapes, dtypes, devices, contiguity, and that no two arrays overlap in memory) before anything
is modified. Tensors are grouped by device and dtype and each group is updated by one native
call (one multi-tensor launch on the GPU, one parallel pass on the CPU), or by
``fastnn.reference`` on the reference path.

dtypes: float32, float64 and float16 (NumPy's; arithmetic in float32 for float16, each
result rounded once when stored, as torch's fused kernels do for half-precision parameters).
bfloat16 tensors, which NumPy cannot represent, go through ``fastnn.integrations.torch``.

Memory: no two arrays of a call may share memory (``ValueError`` naming both), except that a
gradient may be its very own parameter (same address and size): every element is read before
it is written.

``step`` is the number of this update, counting from 1; the formulas are those of the
matching ``fastnn.optim`` classes (and of ``torch.optim``).

GPU streams: CuPy arrays are updated on CuPy's current stream; other GPU arrays seen through
``__cuda_array_interface__`` without CuPy on the stream they report (the default stream when
they report none, as PyTorch tensors do). In a PyTorch program that uses side streams, prefer
``fastnn.integrations.torch``, which runs on torch's current stream.

``device_scalars`` (capturable mode): a float64 array ``[lr, step]`` of two elements on the
parameters' device. The call first adds 1 to ``device_scalars[1]``, then reads lr and the step
from the array on the device, so the ``lr`` and ``step`` arguments are not used. A CUDA graph
that captured the call stays correct when replayed, and writing a new lr into
``device_scalars[0]`` between replays changes the learning rate. All tensors must then share
one device and dtype.

Low-bit state, ``state_dtype`` (every rule but Rprop, whose step sizes stay float):

- ``None`` (the default): the state has the parameters' dtype (torch's layout);
- ``"float32"``: float32 state, for float32, bfloat16 and float16 parameters;
- ``"bfloat16"``: each state array holds bfloat16 bit patterns (``uint16``: NumPy has no
  bfloat16), 2 bytes per element; the math runs in float32 and each result is rounded to
  nearest even, or with ``stochastic_rounding=True`` stochastically (unbiased, by Philox bits of
  ``seed``, the step, the tensor's index in the call and the element:
  :func:`fastnn.reference.round_bfloat16_stochastic`), so that small updates do not stall;
- ``"int8"``: block-wise 8-bit state as in Dettmers et al., "8-bit Optimizers via Block-wise
  Quantization" (2022): each state array is an :class:`Int8State`, one uint8 code per element
  and one float32 absmax per block of :data:`QUANT_BLOCK` = 256 elements (about 1.016 bytes per
  element), a signed 8-bit float code for first moments and momentum buffers and an unsigned
  one for second moments and sums (``fastnn.reference.quantize_state`` is the spec); a
  tensor with fewer than :data:`MIN_INT8_SIZE` = 4096 elements keeps float32 state instead, as
  bitsandbytes does. Each step decodes, updates and re-encodes in the same single pass. Centered
  RMSprop takes no int8 state (v - a^2 of two quantized values can go negative).

:func:`new_state` makes a tensor's state in any of these forms, :func:`quantize_state` and
:func:`dequantize_state` convert int8 blocks. ``step`` also counts stochastic rounding's random
stream, so ``sgd_`` and ``rmsprop_`` take it too when rounding stochastically.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np

from .. import _backend as B
from .. import reference as ref

__all__ = ["sgd_", "adagrad_", "rmsprop_", "adam_", "rprop_", "Int8State", "new_state", "quantize_state",
           "dequantize_state", "QUANT_BLOCK", "MIN_INT8_SIZE"]

# The parameter dtypes the optimizers take (the kernels also take bfloat16: csrc/optim.h).
DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16))
# The largest step count: the kernels receive it as a float64, exact up to 2^53.
MAX_STEP = 2 ** 53
# Elements per int8 block (csrc/optim_math.h's kQuantBlock; tests check the two agree).
QUANT_BLOCK = ref.QUANT_BLOCK
# Tensors with fewer elements keep float32 state under state_dtype="int8" (bitsandbytes' 4096):
# a block's absmax and the decode and encode work pay off on tensors of many blocks, and small
# tensors (biases, norms) are where quantization hurts most and saves least.
MIN_INT8_SIZE = 4096
# How the state can be stored for each parameter dtype, the parameters' own first (the table of
# csrc/optim.h, exported as fastnn._C.optim_state_dtypes; tests check the two agree).
STATE_STORAGE = {"float32": ("float32", "bfloat16", "int8"), "float64": ("float64",),
                 "bfloat16": ("bfloat16", "float32", "int8"), "float16": ("float16", "float32", "bfloat16", "int8")}
# The array dtype each storage keeps (bfloat16 as its bit patterns; int8 codes as uint8).
_STORAGE_DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64), "float16": np.dtype(np.float16),
                   "bfloat16": np.dtype(np.uint16), "int8": np.dtype(np.uint8)}
# stochastic rounding off, seed, step: the kernels' `rounding` argument.
NEAREST = (False, 0, 0)


class Int8State(NamedTuple):
    """One tensor's int8 block state: ``codes`` (uint8, the parameter's shape: one 8-bit code per
    element) and ``absmax`` (float32, ``ceil(size / QUANT_BLOCK)``: each block's largest
    magnitude). Made by :func:`new_state` or :func:`quantize_state`; read back with
    :func:`dequantize_state`."""

    codes: Any
    absmax: Any


class _StateList(NamedTuple):
    argument: str  # the functional's list argument ("exp_avgs")
    key: str  # the per-parameter state key, as in torch.optim ("exp_avg")
    used: Callable[[dict], bool] | None = None  # when the list takes part (always if None)
    nonnegative: bool = False  # never negative (int8: the unsigned code; csrc Op's kNonNegative)


class _Rule(NamedTuple):
    kernel_args: tuple[str, ...]  # hyperparameters in the order of the rule's entry in csrc/optim.h
    states: tuple[_StateList, ...]  # state lists in kernel order, after params and grads
    counts_steps: bool  # whether torch.optim keeps a per-parameter "step"


RULES: dict[str, _Rule] = {
    "sgd": _Rule(("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize", "first_step"),
                 (_StateList("momentum_buffers", "momentum_buffer", lambda h: h["momentum"] != 0),), False),
    "adagrad": _Rule(("lr", "lr_decay", "weight_decay", "eps", "step", "maximize"),
                     (_StateList("state_sums", "sum", nonnegative=True),), True),
    "rmsprop": _Rule(("lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize"),
                     (_StateList("square_avgs", "square_avg", nonnegative=True),
                      _StateList("momentum_buffers", "momentum_buffer", lambda h: h["momentum"] > 0),
                      _StateList("grad_avgs", "grad_avg", lambda h: h["centered"])), True),
    "adam": _Rule(("lr", "beta1", "beta2", "eps", "weight_decay", "step", "amsgrad", "decoupled", "maximize"),
                  (_StateList("exp_avgs", "exp_avg"), _StateList("exp_avg_sqs", "exp_avg_sq", nonnegative=True),
                   _StateList("max_exp_avg_sqs", "max_exp_avg_sq", lambda h: h["amsgrad"], True)), True),
    "rprop": _Rule(("etaminus", "etaplus", "step_size_min", "step_size_max", "maximize"),
                   (_StateList("prevs", "prev"), _StateList("step_sizes", "step_size", nonnegative=True)), True),
}


def used_states(rule: str, hyper: dict) -> list[_StateList]:
    """The state lists rule ``rule`` reads and writes under hyperparameters ``hyper``."""
    return [s for s in RULES[rule].states if s.used is None or s.used(hyper)]


# ---------------------------------------------------------------------------------------------
# Hyperparameters.

# name: (low, high, low_open, high_open) for check_scalar.
_RANGES = {
    "lr": (0.0, None, False, False),
    "momentum": (0.0, None, False, False),
    "dampening": (None, None, False, False),
    "weight_decay": (0.0, None, False, False),
    "eps": (0.0, None, False, False),
    "beta1": (0.0, 1.0, False, True),
    "beta2": (0.0, 1.0, False, True),
    "alpha": (0.0, None, False, False),
    "lr_decay": (0.0, None, False, False),
    "etaminus": (0.0, 1.0, True, True),
    "etaplus": (1.0, None, True, False),
    "step_size_min": (0.0, None, False, False),
    "step_size_max": (0.0, None, False, False),
}
_FLAGS = ("nesterov", "maximize", "first_step", "centered", "amsgrad", "decoupled")


def check_hyper(rule: str, hyper: dict, *, need_step: bool = True) -> dict:
    """``hyper`` validated for ``rule``: finite numbers in range (ValueError naming the
    argument), flags as bools, ``step`` an integer in [1, 2^53] when ``need_step``. Returns
    the kernel's arguments by name. Nesterov's conditions are the constructors' check
    (:func:`check_nesterov`), not every group's, as in torch.optim."""
    out = {}
    for name in RULES[rule].kernel_args:
        value = hyper.get(name, False if name in _FLAGS else None)
        if name in _FLAGS:
            out[name] = bool(value)
        elif name == "step":
            out[name] = _check_step(value) if need_step else 1
        else:
            low, high, low_open, high_open = _RANGES[name]
            out[name] = B.check_scalar(value, name, low=low, high=high, low_open=low_open, high_open=high_open)
    if rule == "rprop" and out["step_size_min"] > out["step_size_max"]:
        raise ValueError(f"step_size_min ({out['step_size_min']}) must be <= step_size_max ({out['step_size_max']})")
    return out


def check_nesterov(momentum: Any, dampening: Any, nesterov: Any) -> None:
    """SGD's constructor check, as torch.optim.SGD's: Nesterov momentum needs momentum > 0 and
    dampening = 0 (ValueError otherwise). A group changed later is not checked again: its
    update is then the formula as written, as in torch."""
    if nesterov and (float(momentum) <= 0 or float(dampening) != 0):
        raise ValueError("nesterov=True requires momentum > 0 and dampening = 0 (as torch.optim.SGD), "
                         f"got momentum={momentum}, dampening={dampening}")


# ---------------------------------------------------------------------------------------------
# State dtypes.


def check_state_dtype(state_dtype: Any, rule: str) -> str | None:
    """``state_dtype`` as a storage name ("float32", "float64", "float16", "bfloat16" or "int8"),
    or None (the parameters' dtype). Strings, NumPy dtypes and torch dtypes are accepted;
    anything else is a ValueError naming the choices; Rprop takes no low-bit state."""
    if state_dtype is None:
        return None
    if isinstance(state_dtype, str):
        name = state_dtype
    else:
        try:
            name = np.dtype(state_dtype).name
        except TypeError:
            name = str(state_dtype).removeprefix("torch.")
    if name not in _STORAGE_DTYPES:
        raise ValueError(f"state_dtype must be None (the parameters' dtype), 'float32', 'bfloat16' or 'int8', got "
                         f"{state_dtype!r}")
    if rule == "rprop" and name in ("bfloat16", "int8"):
        raise ValueError(f"Rprop takes no {name} state: its step sizes are multiplied by etaplus or etaminus and "
                         "clamped every step, which low-bit storage would stall; use state_dtype=None or 'float32'")
    return name


def check_state_options(rule: str, hyper: dict, state_dtype: str | None, stochastic_rounding: Any, seed: Any) -> int:
    """The checks that tie the state options to the rule and each other; returns the seed as an
    int. Centered RMSprop takes no int8 state; stochastic rounding is for bfloat16 state."""
    if state_dtype == "int8" and rule == "rmsprop" and hyper.get("centered"):
        raise ValueError("centered RMSprop takes no int8 state: its v - a^2 subtracts two quantized values, which "
                         "goes negative (a NaN step) where the gradient's variance is small next to its mean; use "
                         "state_dtype='bfloat16' or None")
    if stochastic_rounding and state_dtype != "bfloat16":
        raise ValueError("stochastic_rounding=True rounds bfloat16 state: it needs state_dtype='bfloat16', got "
                         f"state_dtype={state_dtype!r}")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    return int(seed)


def storage(param_dtype: str, state_dtype: str | None, size: int) -> str:
    """How the state of a tensor of ``size`` elements and dtype ``param_dtype`` is stored under
    ``state_dtype`` (ValueError when that dtype of parameters cannot keep it)."""
    if state_dtype is None:
        return param_dtype
    if state_dtype not in STATE_STORAGE[param_dtype]:
        raise ValueError(f"{param_dtype} parameters keep their state as one of {', '.join(STATE_STORAGE[param_dtype])} "
                         f"(state_dtype={state_dtype!r} given)")
    return "float32" if state_dtype == "int8" and size < MIN_INT8_SIZE else state_dtype


def blocks(size: int) -> int:
    """The int8 blocks of a tensor of ``size`` elements (its absmax count)."""
    return -(-int(size) // QUANT_BLOCK)


def storage_dtype(storage_name: str) -> np.dtype:
    """The array dtype a storage keeps (bfloat16 as uint16 bit patterns, int8 codes as uint8)."""
    return _STORAGE_DTYPES[storage_name]


def new_state(param, state_dtype=None, *, fill: float = 0.0, nonnegative: bool = False):
    """A state array for ``param`` (NumPy or CuPy) with every element ``fill``, stored as
    ``state_dtype`` says (see the module's docstring): an array of the parameter's shape (float,
    or uint16 bfloat16 bits, on its device), or an :class:`Int8State`, whose code is the unsigned
    one when ``nonnegative`` (second moments, sums) and the signed one otherwise; below
    :data:`MIN_INT8_SIZE` elements int8 asks for float32."""
    p = B.check_float(param, "param", dtypes=DTYPES)
    kind = storage(np.dtype(p.dtype).name, check_state_dtype(state_dtype, ""), int(p.size))
    xp = B.array_module(p)
    with B.on_device(p):
        if kind == "int8":
            return quantize_state(xp.full(p.shape, fill, xp.float32), signed=not nonnegative)
        if kind == "bfloat16":
            return xp.full(p.shape, int(ref.round_bfloat16(np.full(1, fill, np.float32))[0]), xp.uint16)
        return xp.full(p.shape, fill, storage_dtype(kind))


def quantize_state(x, *, signed: bool = True) -> Int8State:
    """float32 array ``x`` as int8 blocks (:class:`Int8State`), with the signed code or the
    unsigned one (for values >= 0: second moments, sums). Bit for bit the kernels' encoding
    (``fastnn.reference.quantize_state`` is the spec): per-element error at most 1/16 of |x|
    (half the code's step), or half the smallest code's step (2^-18, signed, or 2^-34,
    unsigned, times absmax / 1.875) for values near 0."""
    a = B.check_float(x, "x", dtype=np.float32, dtypes=(np.dtype(np.float32),))
    path = B.path_of(a)
    if path == "reference":
        codes, absmax = ref.quantize_state(a, signed)
        return Int8State(codes, absmax)
    xp = B.array_module(a)
    with B.on_device(a):
        out = Int8State(xp.empty(a.shape, xp.uint8), xp.empty(blocks(a.size), xp.float32))
    B.launch(path, "quantize_state", a, bool(signed), B.pointer(a), B.pointer(out.codes), B.pointer(out.absmax),
             int(a.size))
    return out


def dequantize_state(state, *, signed: bool = True):
    """The float32 values of int8 blocks (an :class:`Int8State`, or ``(codes, absmax)``):
    each code's value times its block's absmax / 1.875."""
    codes, absmax = _int8_pair(state, "state")
    codes = B.check_float(codes, "state.codes", dtype=np.uint8, dtypes=(np.dtype(np.uint8),))
    absmax = B.check_float(absmax, "state.absmax", dtype=np.float32, dtypes=(np.dtype(np.float32),),
                           shape=(blocks(codes.size),), like=None)
    if B.device_of(codes) != B.device_of(absmax):
        raise ValueError(f"state.codes is on {B.device_of(codes)} but state.absmax is on {B.device_of(absmax)}")
    path = B.path_of(codes)
    if path == "reference":
        return ref.dequantize_state(codes, absmax, signed)
    xp = B.array_module(codes)
    with B.on_device(codes):
        out = xp.empty(codes.shape, xp.float32)
    B.launch(path, "dequantize_state", out, bool(signed), B.pointer(codes), B.pointer(absmax), B.pointer(out),
             int(codes.size))
    return out


def _int8_pair(state, name: str) -> tuple:
    if isinstance(state, Int8State):
        return state
    if isinstance(state, tuple) and len(state) == 2:
        return Int8State(*state)
    raise TypeError(f"{name} must be an Int8State(codes, absmax) (fastnn.optim.functional.new_state makes one), got "
                    f"{type(state).__name__}")


def _check_state(value, name: str, kind: str, param, param_name: str):
    """One tensor's state array (or Int8State) checked against its parameter and storage."""
    if kind == "int8":
        codes, absmax = _int8_pair(value, name)
        codes = _check_state_array(codes, f"{name}.codes", np.uint8, param.shape, param, param_name)
        absmax = _check_state_array(absmax, f"{name}.absmax", np.float32, (blocks(param.size),), param, param_name)
        return Int8State(codes, absmax)
    if isinstance(value, Int8State):
        why = (f"{param_name} has {param.size} elements, fewer than MIN_INT8_SIZE = {MIN_INT8_SIZE}, so its state is "
               "float32 (as bitsandbytes keeps small tensors' state)") if kind == "float32" else f"the state is {kind}"
        raise TypeError(f"{name} is an Int8State but {why}; fastnn.optim.functional.new_state makes the right one")
    return _check_state_array(value, name, storage_dtype(kind), param.shape, param, param_name)


def _check_state_array(a, name: str, dtype, shape, param, param_name: str):
    a = B.check_float(a, name, shape=shape, writable=True, dtype=dtype, dtypes=(np.dtype(dtype),))
    if B.device_of(a) != B.device_of(param):
        raise ValueError(f"{name} is on {B.device_of(a)} but {param_name} is on {B.device_of(param)}: fastnn never "
                         "copies between devices")
    return a


def flat_arrays(lst: list) -> list:
    """A state list's arrays in the kernels' order: the arrays, or for Int8State entries all
    codes then all absmaxes."""
    if lst and isinstance(lst[0], Int8State):
        return [s.codes for s in lst] + [s.absmax for s in lst]
    return list(lst)


def _check_step(step: Any) -> int:
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)):
        if not (isinstance(step, (float, np.floating)) and float(step).is_integer()):
            raise TypeError(f"step must be an integer (the number of this update, from 1), got {step!r}")
    if not 1 <= step <= MAX_STEP:
        raise ValueError(f"step counts updates from 1 to 2**53, got {step}")
    return int(step)


def check_no_overlap(where: str, spans) -> None:
    """ValueError naming two of ``spans`` ((name, device, address, nbytes) of each array) whose
    memory overlaps: the kernels read and write every array at once, so overlapping arrays
    would give results that depend on the path and the thread count. Sorting the ranges makes
    it O(n log n). Empty arrays are skipped; the caller leaves out a gradient that is its very
    own parameter, which is allowed."""
    ranges = sorted(((device, start, start + nbytes, name) for name, device, start, nbytes in spans if nbytes),
                    key=lambda r: (r[0], r[1]))
    reach = None  # the range reaching furthest so far on the current device
    for r in ranges:
        if reach is not None and r[0] == reach[0] and r[1] < reach[2]:
            raise ValueError(f"{where}{reach[3]} and {r[3]} overlap in memory: an optimizer step reads and writes "
                             "all of its arrays at once, so each parameter, gradient and state needs memory of its own "
                             "(pass copies, or each array once)")
        if reach is None or r[0] != reach[0] or r[2] > reach[2]:
            reach = r


def spans(named) -> list:
    """(name, device, address, nbytes) of validated arrays ``named`` ((name, array) pairs), for
    :func:`check_no_overlap`."""
    return [(name, tuple(B.device_of(a)), B.pointer(a), int(a.size) * np.dtype(a.dtype).itemsize) for name, a in named]


def aliases_own_param(grad, param) -> bool:
    """Whether a gradient is its parameter's very memory (allowed: each element is read before
    it is written)."""
    return B.pointer(grad) == B.pointer(param) and grad.size == param.size and grad.dtype == param.dtype


# ---------------------------------------------------------------------------------------------
# Running one group of tensors (one device, one dtype) on its path.


def run(rule: str, lists: list[list], hyper: dict, *, scalars=None, pointers: list[int] | None = None,
        state: str | None = None, rounding: tuple = NEAREST) -> None:
    """Update one group (one device, parameter dtype and state storage): ``lists`` = [params,
    grads, *state lists in kernel order] of validated arrays (Int8State entries for int8);
    ``hyper`` from :func:`check_hyper`; ``scalars`` the capturable [lr, step] array or None;
    ``pointers`` the flat address list when the caller has it; ``state`` the storage (None: the
    parameters' dtype); ``rounding`` (stochastic, seed, step) for bfloat16 state."""
    first = lists[0][0]
    path = B.path_of(first)
    if path == "reference":
        run_reference(rule, lists, hyper, scalars, state, rounding)
        return
    if pointers is None:
        pointers = [B.pointer(a) for lst in lists for a in flat_arrays(lst)]
    run_native(rule, path, first, pointers, [int(a.size) for a in lists[0]], hyper, scalars, state, rounding)


def run_reference(rule: str, lists: list[list], hyper: dict, scalars=None, state: str | None = None,
                  rounding: tuple = NEAREST) -> None:
    """:func:`run` on the reference path (``fastnn.reference``): low-bit state is decoded to
    float32, updated by the rule, and encoded back."""
    if isinstance(lists[0][0], B.CudaView):
        raise TypeError(f"{rule}: the reference path on GPU arrays needs CuPy (install fastnn[cuda])")
    stochastic, seed, step = rounding
    if scalars is not None:
        scalars[1] += 1
        step = int(scalars[1])
        from_device = {"lr": float(scalars[0]), "step": step}
        hyper = {k: from_device.get(k, v) for k, v in hyper.items()}
    used = used_states(rule, hyper)
    names = ["params", "grads"] + [s.argument for s in used]
    # A gradient that is its own parameter is read whole before the parameter is written, as
    # in the kernels.
    grads = [g.copy() if aliases_own_param(g, p) else g for p, g in zip(lists[0], lists[1])]
    states = lists[2:]
    low_bit = state in ("bfloat16", "int8")
    if low_bit:
        states = [[ref.widen_bfloat16(s) if state == "bfloat16" else ref.dequantize_state(*s, not u.nonnegative)
                   for s in lst] for lst, u in zip(lists[2:], used)]
    getattr(ref, rule + "_")(**dict(zip(names, [lists[0], grads, *states])), **hyper)
    if not low_bit:
        return
    for li, (stored, wide, u) in enumerate(zip(lists[2:], states, used)):
        for t, (s, w) in enumerate(zip(stored, wide)):
            if state == "int8":
                s.codes[...], s.absmax[...] = ref.quantize_state(w, not u.nonnegative)
            elif stochastic:
                s[...] = ref.round_bfloat16_stochastic(w, seed, 4 * t + li, step)
            else:
                s[...] = ref.round_bfloat16(w)


def run_native(rule: str, path: str, first, pointers: list[int], sizes: list[int], hyper: dict, scalars=None,
               state: str | None = None, rounding: tuple = NEAREST) -> None:
    """:func:`run` on the native path ``path`` from raw addresses: ``first`` (an array of the
    group) gives the dtype, the device and, on the GPU, the stream. One entry point serves every
    rule: ``optim_step`` takes the hyperparameters as one list, in ``kernel_args`` order."""
    args = [hyper[name] for name in RULES[rule].kernel_args]
    B.launch(path, "optim_step", first, state or first.dtype.name, rule, pointers, sizes, args,
             0 if scalars is None else B.pointer(scalars), rounding)


def _apply(rule: str, lists: dict[str, Any], hyper: dict, device_scalars, state_dtype=None,
           stochastic_rounding=False, seed=0, step=None) -> None:
    """The public functions' common body: validate everything, then update each group."""
    hyper = check_hyper(rule, hyper, need_step=device_scalars is None)
    state_dtype = check_state_dtype(state_dtype, rule)
    seed = check_state_options(rule, hyper, state_dtype, stochastic_rounding, seed)
    if "step" in hyper:
        step = hyper["step"]
    elif stochastic_rounding and device_scalars is None:
        step = _check_step(step)
    rounding = (bool(stochastic_rounding), seed, int(step or 0))
    states = used_states(rule, hyper)
    names = ["params", "grads"] + [s.argument for s in states]
    raw = []
    for name in names:
        lst = lists.get(name)
        if lst is None:
            raise ValueError(f"{rule}_: {name} is required with these options")
        if not isinstance(lst, (list, tuple)):
            raise TypeError(f"{rule}_: {name} must be a list of arrays, got {type(lst).__name__}")
        raw.append(lst)
    count = len(raw[0])
    for name, lst in zip(names, raw):
        if len(lst) != count:
            raise ValueError(f"{rule}_: {name} has {len(lst)} arrays but params has {count}")
    params = [B.check_float(p, f"params[{i}]", writable=True, dtypes=DTYPES) for i, p in enumerate(raw[0])]
    kinds = [storage(np.dtype(p.dtype).name, state_dtype, int(p.size)) for p in params]
    arrays = [params, [B.check_float(a, f"grads[{i}]", like=(f"params[{i}]", p), shape=p.shape, dtypes=DTYPES)
                       for i, (a, p) in enumerate(zip(raw[1], params))]]
    for name, lst in zip(names[2:], raw[2:]):
        arrays.append([_check_state(a, f"{name}[{i}]", kind, p, f"params[{i}]")
                       for i, (a, p, kind) in enumerate(zip(lst, params, kinds))])
    named = [(f"{name}[{i}]", a) for name, lst in zip(names, arrays) for i, a in enumerate(lst)
             if not (name == "grads" and aliases_own_param(a, params[i]))]
    named = [(f"{name}.{part}", getattr(a, part)) if isinstance(a, Int8State) else (name, a)
             for name, a in named for part in (("codes", "absmax") if isinstance(a, Int8State) else ("",))]
    check_no_overlap(f"{rule}_: ", spans(named))
    groups: dict[tuple, list[int]] = {}
    for i, (p, kind) in enumerate(zip(params, kinds)):
        groups.setdefault((B.device_of(p), np.dtype(p.dtype), kind), []).append(i)
    scalars = None
    if device_scalars is not None:
        if len(groups) > 1:
            raise ValueError(f"{rule}_: with device_scalars all tensors must share one device, dtype and state "
                             "storage")
        scalars = check_device_scalars(device_scalars, params[0] if params else None)
    for (_, _, kind), indices in groups.items():
        run(rule, [[lst[i] for i in indices] for lst in arrays], hyper, scalars=scalars, state=kind,
            rounding=rounding)


def check_device_scalars(scalars, like) -> Any:
    """The capturable [lr, step] array: float64, 2 elements, writable, on ``like``'s device."""
    s = B.check_float(scalars, "device_scalars", dtype=np.float64, shape=(2,), writable=True)
    if like is not None and B.device_of(s) != B.device_of(like):
        raise ValueError(f"device_scalars is on {B.device_of(s)} but the parameters are on {B.device_of(like)}")
    return s


# ---------------------------------------------------------------------------------------------
# The public functions.


def sgd_(params, grads, momentum_buffers=None, *, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
         nesterov=False, maximize=False, first_step=False, state_dtype=None, stochastic_rounding=False, seed=0,
         step=None, device_scalars=None) -> None:
    """SGD with momentum, in place (``torch.optim.SGD``'s rule; see :class:`fastnn.optim.SGD`).

    ``momentum_buffers`` (needed when momentum != 0): one per parameter, stored as
    ``state_dtype`` says (see the module's docstring). ``first_step=True`` sets each buffer to
    the (decayed) gradient instead of decaying it, as torch does when it creates the buffer.
    SGD uses no step count: ``step`` is needed only by ``stochastic_rounding`` (the random
    stream's counter; vary it every call), and ``device_scalars`` supplies lr (and that count).
    ``nesterov=True`` needs momentum > 0 and dampening = 0, as SGD's constructor.
    """
    check_nesterov(momentum, dampening, nesterov)
    _apply("sgd", dict(params=params, grads=grads, momentum_buffers=momentum_buffers),
           dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                maximize=maximize, first_step=first_step), device_scalars, state_dtype, stochastic_rounding, seed, step)


def adagrad_(params, grads, state_sums, *, step=None, lr=1e-2, lr_decay=0.0, weight_decay=0.0, eps=1e-10,
             maximize=False, state_dtype=None, stochastic_rounding=False, seed=0, device_scalars=None) -> None:
    """Adagrad, in place (``torch.optim.Adagrad``; see :class:`fastnn.optim.Adagrad`).
    ``state_sums``: the running sums of squared gradients, stored as ``state_dtype`` says (with
    int8 the unsigned code; see the module's docstring)."""
    _apply("adagrad", dict(params=params, grads=grads, state_sums=state_sums),
           dict(step=step, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps, maximize=maximize),
           device_scalars, state_dtype, stochastic_rounding, seed)


def rmsprop_(params, grads, square_avgs, *, momentum_buffers=None, grad_avgs=None, lr=1e-2, alpha=0.99,
             eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, maximize=False, state_dtype=None,
             stochastic_rounding=False, seed=0, step=None, device_scalars=None) -> None:
    """RMSprop, in place (``torch.optim.RMSprop``; see :class:`fastnn.optim.RMSprop`).
    ``momentum_buffers`` are needed when momentum > 0, ``grad_avgs`` when centered; all stored
    as ``state_dtype`` says (not int8 when centered). ``step`` is needed only by
    ``stochastic_rounding`` (the random stream's counter)."""
    _apply("rmsprop", dict(params=params, grads=grads, square_avgs=square_avgs, momentum_buffers=momentum_buffers,
                           grad_avgs=grad_avgs),
           dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum, centered=centered,
                maximize=maximize), device_scalars, state_dtype, stochastic_rounding, seed, step)


def adam_(params, grads, exp_avgs, exp_avg_sqs, *, step=None, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
          weight_decay=0.0, decoupled=False, amsgrad=False, max_exp_avg_sqs=None, maximize=False, state_dtype=None,
          stochastic_rounding=False, seed=0, device_scalars=None) -> None:
    """Adam, or AdamW with ``decoupled=True``, in place (``torch.optim.Adam`` / ``AdamW``; see
    :class:`fastnn.optim.Adam`). ``max_exp_avg_sqs`` are needed when amsgrad. The state is
    stored as ``state_dtype`` says: with int8, ``exp_avgs`` take the signed code and
    ``exp_avg_sqs`` / ``max_exp_avg_sqs`` the unsigned one (:func:`new_state` with
    ``nonnegative=True``); see the module's docstring."""
    _apply("adam", dict(params=params, grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs,
                        max_exp_avg_sqs=max_exp_avg_sqs),
           dict(step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, decoupled=decoupled,
                amsgrad=amsgrad, maximize=maximize), device_scalars, state_dtype, stochastic_rounding, seed)


def rprop_(params, grads, prevs, step_sizes, *, etaminus=0.5, etaplus=1.2, step_size_min=1e-6, step_size_max=50.0,
           maximize=False, state_dtype=None, device_scalars=None) -> None:
    """Rprop, in place (``torch.optim.Rprop``; see :class:`fastnn.optim.Rprop`). ``prevs``: the
    previous step's gradients; ``step_sizes``: each element's step size (start them at lr).
    Rprop uses neither lr nor the step count; ``device_scalars`` only counts steps.
    ``state_dtype``: None or "float32" (for half-precision parameters); no low-bit state."""
    _apply("rprop", dict(params=params, grads=grads, prevs=prevs, step_sizes=step_sizes),
           dict(etaminus=etaminus, etaplus=etaplus, step_size_min=step_size_min, step_size_max=step_size_max,
                maximize=maximize), device_scalars, state_dtype)
