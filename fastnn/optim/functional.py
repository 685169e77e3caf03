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
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np

from .. import _backend as B
from .. import reference as ref

__all__ = ["sgd_", "adagrad_", "rmsprop_", "adam_", "rprop_"]

# The parameter dtypes the optimizers take (the kernels also take bfloat16: csrc/optim.h).
DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16))
# The largest step count: the kernels receive it as a float64, exact up to 2^53.
MAX_STEP = 2 ** 53


class _StateList(NamedTuple):
    argument: str  # the functional's list argument ("exp_avgs")
    key: str  # the per-parameter state key, as in torch.optim ("exp_avg")
    used: Callable[[dict], bool] | None = None  # when the list takes part (always if None)


class _Rule(NamedTuple):
    kernel_args: tuple[str, ...]  # hyperparameters in the order of the rule's entry in csrc/optim.h
    states: tuple[_StateList, ...]  # state lists in kernel order, after params and grads
    counts_steps: bool  # whether torch.optim keeps a per-parameter "step"


RULES: dict[str, _Rule] = {
    "sgd": _Rule(("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize", "first_step"),
                 (_StateList("momentum_buffers", "momentum_buffer", lambda h: h["momentum"] != 0),), False),
    "adagrad": _Rule(("lr", "lr_decay", "weight_decay", "eps", "step", "maximize"),
                     (_StateList("state_sums", "sum"),), True),
    "rmsprop": _Rule(("lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize"),
                     (_StateList("square_avgs", "square_avg"),
                      _StateList("momentum_buffers", "momentum_buffer", lambda h: h["momentum"] > 0),
                      _StateList("grad_avgs", "grad_avg", lambda h: h["centered"])), True),
    "adam": _Rule(("lr", "beta1", "beta2", "eps", "weight_decay", "step", "amsgrad", "decoupled", "maximize"),
                  (_StateList("exp_avgs", "exp_avg"), _StateList("exp_avg_sqs", "exp_avg_sq"),
                   _StateList("max_exp_avg_sqs", "max_exp_avg_sq", lambda h: h["amsgrad"])), True),
    "rprop": _Rule(("etaminus", "etaplus", "step_size_min", "step_size_max", "maximize"),
                   (_StateList("prevs", "prev"), _StateList("step_sizes", "step_size")), True),
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


def run(rule: str, lists: list[list], hyper: dict, *, scalars=None, pointers: list[int] | None = None) -> None:
    """Update one device-and-dtype group: ``lists`` = [params, grads, *state lists in kernel
    order] of validated arrays; ``hyper`` from :func:`check_hyper`; ``scalars`` the capturable
    [lr, step] array or None; ``pointers`` the flat address list when the caller has it."""
    first = lists[0][0]
    path = B.path_of(first)
    if path == "reference":
        run_reference(rule, lists, hyper, scalars)
        return
    if pointers is None:
        pointers = [B.pointer(a) for lst in lists for a in lst]
    run_native(rule, path, first, pointers, [int(a.size) for a in lists[0]], hyper, scalars)


def run_reference(rule: str, lists: list[list], hyper: dict, scalars=None) -> None:
    """:func:`run` on the reference path (``fastnn.reference``)."""
    if isinstance(lists[0][0], B.CudaView):
        raise TypeError(f"{rule}: the reference path on GPU arrays needs CuPy (install fastnn[cuda])")
    if scalars is not None:
        scalars[1] += 1
        from_device = {"lr": float(scalars[0]), "step": int(scalars[1])}
        hyper = {k: from_device.get(k, v) for k, v in hyper.items()}
    names = ["params", "grads"] + [s.argument for s in used_states(rule, hyper)]
    # A gradient that is its own parameter is read whole before the parameter is written, as
    # in the kernels.
    grads = [g.copy() if aliases_own_param(g, p) else g for p, g in zip(lists[0], lists[1])]
    getattr(ref, rule + "_")(**dict(zip(names, [lists[0], grads, *lists[2:]])), **hyper)


def run_native(rule: str, path: str, first, pointers: list[int], sizes: list[int], hyper: dict, scalars=None) -> None:
    """:func:`run` on the native path ``path`` from raw addresses: ``first`` (an array of the
    group) gives the dtype, the device and, on the GPU, the stream. One entry point serves every
    rule: ``optim_step`` takes the hyperparameters as one list, in ``kernel_args`` order."""
    args = [hyper[name] for name in RULES[rule].kernel_args]
    B.launch(path, "optim_step", first, rule, pointers, sizes, args, 0 if scalars is None else B.pointer(scalars))


def _apply(rule: str, lists: dict[str, Any], hyper: dict, device_scalars) -> None:
    """The public functions' common body: validate everything, then update each group."""
    hyper = check_hyper(rule, hyper, need_step=device_scalars is None)
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
    arrays = [params]
    for name, lst in zip(names[1:], raw[1:]):
        arrays.append([B.check_float(a, f"{name}[{i}]", like=(f"params[{i}]", p), shape=p.shape,
                                     writable=name != "grads", dtypes=DTYPES)
                       for i, (a, p) in enumerate(zip(lst, params))])
    named = [(f"{name}[{i}]", a) for name, lst in zip(names, arrays) for i, a in enumerate(lst)
             if not (name == "grads" and aliases_own_param(a, params[i]))]
    check_no_overlap(f"{rule}_: ", spans(named))
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault((B.device_of(p), np.dtype(p.dtype)), []).append(i)
    scalars = None
    if device_scalars is not None:
        if len(groups) > 1:
            raise ValueError(f"{rule}_: with device_scalars all tensors must share one device and dtype")
        scalars = check_device_scalars(device_scalars, params[0] if params else None)
    for indices in groups.values():
        run(rule, [[lst[i] for i in indices] for lst in arrays], hyper, scalars=scalars)


def check_device_scalars(scalars, like) -> Any:
    """The capturable [lr, step] array: float64, 2 elements, writable, on ``like``'s device."""
    s = B.check_float(scalars, "device_scalars", dtype=np.float64, shape=(2,), writable=True)
    if like is not None and B.device_of(s) != B.device_of(like):
        raise ValueError(f"device_scalars is on {B.device_of(s)} but the parameters are on {B.device_of(like)}")
    return s


# ---------------------------------------------------------------------------------------------
# The public functions.


def sgd_(params, grads, momentum_buffers=None, *, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
         nesterov=False, maximize=False, first_step=False, device_scalars=None) -> None:
    """SGD with momentum, in place (``torch.optim.SGD``'s rule; see :class:`fastnn.optim.SGD`).

    ``momentum_buffers`` (needed when momentum != 0): one per parameter. ``first_step=True``
    sets each buffer to the (decayed) gradient instead of decaying it, as torch does when it
    creates the buffer. SGD uses no step count; ``device_scalars`` supplies lr only.
    ``nesterov=True`` needs momentum > 0 and dampening = 0, as SGD's constructor.
    """
    check_nesterov(momentum, dampening, nesterov)
    _apply("sgd", dict(params=params, grads=grads, momentum_buffers=momentum_buffers),
           dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                maximize=maximize, first_step=first_step), device_scalars)


def adagrad_(params, grads, state_sums, *, step=None, lr=1e-2, lr_decay=0.0, weight_decay=0.0, eps=1e-10,
             maximize=False, device_scalars=None) -> None:
    """Adagrad, in place (``torch.optim.Adagrad``; see :class:`fastnn.optim.Adagrad`).
    ``state_sums``: the running sums of squared gradients."""
    _apply("adagrad", dict(params=params, grads=grads, state_sums=state_sums),
           dict(step=step, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps, maximize=maximize),
           device_scalars)


def rmsprop_(params, grads, square_avgs, *, momentum_buffers=None, grad_avgs=None, lr=1e-2, alpha=0.99,
             eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, maximize=False,
             device_scalars=None) -> None:
    """RMSprop, in place (``torch.optim.RMSprop``; see :class:`fastnn.optim.RMSprop`).
    ``momentum_buffers`` are needed when momentum > 0, ``grad_avgs`` when centered."""
    _apply("rmsprop", dict(params=params, grads=grads, square_avgs=square_avgs, momentum_buffers=momentum_buffers,
                           grad_avgs=grad_avgs),
           dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum, centered=centered,
                maximize=maximize), device_scalars)


def adam_(params, grads, exp_avgs, exp_avg_sqs, *, step=None, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
          weight_decay=0.0, decoupled=False, amsgrad=False, max_exp_avg_sqs=None, maximize=False,
          device_scalars=None) -> None:
    """Adam, or AdamW with ``decoupled=True``, in place (``torch.optim.Adam`` / ``AdamW``; see
    :class:`fastnn.optim.Adam`). ``max_exp_avg_sqs`` are needed when amsgrad."""
    _apply("adam", dict(params=params, grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs,
                        max_exp_avg_sqs=max_exp_avg_sqs),
           dict(step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, decoupled=decoupled,
                amsgrad=amsgrad, maximize=maximize), device_scalars)


def rprop_(params, grads, prevs, step_sizes, *, etaminus=0.5, etaplus=1.2, step_size_min=1e-6, step_size_max=50.0,
           maximize=False, device_scalars=None) -> None:
    """Rprop, in place (``torch.optim.Rprop``; see :class:`fastnn.optim.Rprop`). ``prevs``: the
    previous step's gradients; ``step_sizes``: each element's step size (start them at lr).
    Rprop uses neither lr nor the step count; ``device_scalars`` only counts steps."""
    _apply("rprop", dict(params=params, grads=grads, prevs=prevs, step_sizes=step_sizes),
           dict(etaminus=etaminus, etaplus=etaplus, step_size_min=step_size_min, step_size_max=step_size_max,
                maximize=maximize), device_scalars)
