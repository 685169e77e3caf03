"""``Module``: the base of every layer, container and loss.

A module computes ``forward(x, training=False)`` (also ``module(x)``). **Inference is the
default** (Keras' choice): ``model(X)`` uses BatchNorm's running statistics and no dropout,
gives the same answer every time, and changes nothing in the model. Training behaviour is asked
for explicitly, ``forward(x, training=True)``: batch statistics (and their running averages
updated), dropout, and what ``backward`` needs kept; ``backward(dout)`` then returns the
gradient with respect to the input of the most recent training forward (``=``, a new result)
and accumulates the gradients of the module's parameters into their ``.grad`` (``+=``, as
PyTorch; ``zero_grad()`` resets them). There is no train()/eval() mode to forget to switch:
the call says which it is (docs/DECISIONS.md).

Threads: an inference forward writes nothing to the module (no kept state, no reused buffer),
so any number of threads may run inference on one model at once. A training forward and its
backward are one thread's at a time: a training call while another thread is inside one on the
same module, or a backward in another thread than the training forward it would read, raises
:class:`ConcurrentTrainingError` instead of returning wrong numbers.

Buffers of training calls are reused, so a training step allocates nothing once the shapes are
settled:

- arrays a layer needs only internally (the pre-activation kept for the backward, the
  intermediate results inside a container) are the layer's own and are rewritten by its next
  call with the same shapes;
- the arrays handed back to the caller (the output of a model's forward, the dx of its
  backward, a loss's gradient) are new arrays on every call, so results kept across calls stay
  valid; ``reuse_outputs(True)`` makes them reused buffers too. A step then runs on fixed
  addresses, which is what CUDA graph capture needs.

A layer used inside a container (``Sequential``, ``Residual``) reuses its output buffer in
training calls even when called on its own: copy what you keep. Inference returns new arrays.
A CUDA graph captured from a model (``fastnn.cuda_graph.capture``) takes the buffers the model
held then; the model's later calls allocate their own.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Iterator, NamedTuple

import numpy as np

from .. import _backend as B
from .parameter import Parameter

__all__ = ["Module", "LoadResult", "ConcurrentTrainingError"]


class ConcurrentTrainingError(RuntimeError):
    """Two threads used one module for training at once: a training forward or a backward
    while another thread is inside one, or a backward reading what another thread's training
    forward kept. Train one model per thread; inference (``training=False``) may be shared."""


class _TrainingUse:
    """Which thread is inside a training call of one module, and how deep (a training forward
    may call itself through ``super().forward``); ``enter`` raises when another thread is."""

    def __init__(self):
        self._lock = threading.Lock()
        self._thread = None
        self._depth = 0

    def enter(self, module: "Module", call: str) -> None:
        me = threading.get_ident()
        with self._lock:
            if self._thread not in (None, me):
                raise ConcurrentTrainingError(
                    f"{module._where()}: {call} called from one thread while another thread is inside a training "
                    "call of the same module; train one model per thread (inference, training=False, may be shared)")
            self._thread, self._depth = me, self._depth + 1

    def exit(self) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                self._thread = None

    # A copied or unpickled module is used by nobody yet (and a lock cannot be pickled).
    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()


def _is_training(args, kwargs) -> bool:
    """The ``training`` argument of a ``forward(x, training=False)`` call, from its arguments
    after ``x``."""
    return bool(kwargs["training"] if "training" in kwargs else args[1] if len(args) > 1 else False)


def _guard_forward(forward):
    """``forward`` entered through the module's :class:`_TrainingUse` when it trains."""
    @functools.wraps(forward)
    def guarded(self, *args, **kwargs):
        if not _is_training(args, kwargs):
            return forward(self, *args, **kwargs)
        self._training_use.enter(self, "a training forward")
        try:
            return forward(self, *args, **kwargs)
        finally:
            self._training_use.exit()
    return guarded


def _guard_backward(backward):
    """``backward`` entered through the module's :class:`_TrainingUse`."""
    @functools.wraps(backward)
    def guarded(self, *args, **kwargs):
        self._training_use.enter(self, "backward")
        try:
            return backward(self, *args, **kwargs)
        finally:
            self._training_use.exit()
    return guarded


class LoadResult(NamedTuple):
    """What ``load_state_dict(..., strict=False)`` skipped (as ``torch.nn.Module``'s)."""

    missing_keys: list
    unexpected_keys: list


def float_dtype(dtype: Any, name: str) -> np.dtype:
    """``dtype`` as a NumPy float32 or float64 dtype, else ``TypeError`` naming ``name``."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name}: expected a dtype (numpy.float32 or numpy.float64), got {dtype!r}") from None
    if dt not in B.FLOAT_DTYPES:
        raise TypeError(f"{name}: expected float32 or float64, got {dt}")
    return dt


def positive_int(value: Any, name: str) -> int:
    """``value`` as a positive int (bools and floats refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _converter(device, dtype):
    """A function moving/casting one array as ``Module.to`` asks (float arrays only are cast)."""
    place = None if device is None else B.parse_device(device)
    if device is not None and place is None:
        raise ValueError(f"Module.to: device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    dt = None if dtype is None else float_dtype(dtype, "Module.to: dtype")

    def convert(a):
        if dt is not None and np.dtype(a.dtype).kind == "f" and np.dtype(a.dtype) != dt:
            a = a.astype(dt)
        return a if place is None else B.to_device(a, place)

    return convert


def _same_place(a, b) -> bool:
    return type(a) is type(b) and (isinstance(a, np.ndarray) or B.device_of(a) == B.device_of(b))


class Module:
    """Base class of layers and containers.

    Subclasses call ``super().__init__()`` first; assigning a :class:`Parameter` or a
    ``Module`` to an attribute registers it (in assignment order), ``register_buffer`` registers
    a non-trained array such as BatchNorm's running statistics. They implement
    ``forward(x, training=False)`` and ``backward(dout, *, need_input_grad=True)``, and
    ``extra_repr()`` for their one-line description. (torch.nn.Module, with an explicit backward
    instead of autograd.)

    Every subclass's own ``forward`` and ``backward`` are wrapped (``__init_subclass__``) so
    that training calls hold the module for their thread (see the module's docstring); the
    losses, whose forward always computes a gradient, opt out with ``_guard_calls = False``.
    """

    _guard_calls = True
    # What backward's error asks for when nothing was kept.
    _forward_first = "a training forward first, forward(x, training=True) (an inference forward keeps nothing)"

    # Feature widths seen by Residual and Sequential; None means "same as the input".
    in_features: int | None = None
    out_features: int | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls._guard_calls:
            return
        for name, guard in (("forward", _guard_forward), ("backward", _guard_backward)):
            method = cls.__dict__.get(name)
            if method is not None:
                setattr(cls, name, guard(method))

    def __init__(self):
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "_buffer_names", [])
        object.__setattr__(self, "_training_use", _TrainingUse())
        self._workspace = {}
        self._saved = None  # what the latest training forward kept (and _saved_by, its thread)
        self._reuse_out = False
        self._reuse_dx = False
        self._check_nan = False
        self.qualname = ""  # the dotted name from the outermost container ("2.0"), set by it

    def __setattr__(self, name: str, value: Any) -> None:
        parameters = self.__dict__.get("_parameters")
        if parameters is None:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before assigning attributes")
        if name == "_saved":
            object.__setattr__(self, "_saved_by", threading.get_ident())
        parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, array) -> None:
        """Register a non-trained array (moved and cast by ``to``, saved in ``state_dict``)."""
        if name not in self._buffer_names:
            self._buffer_names.append(name)
        object.__setattr__(self, name, array)

    def add_module(self, name: str, module: "Module") -> None:
        """Register a child under ``name`` (which may be any string, e.g. ``"0"``)."""
        if not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__}: {name!r} must be a fastnn.nn.Module, got {type(module).__name__}")
        self._modules[name] = module
        object.__setattr__(self, name, module)

    # -- computing ------------------------------------------------------------------------

    def forward(self, x, training: bool = False):
        """y = f(x). ``training=False`` (the default) is inference: running statistics, no
        dropout, nothing kept and nothing in the module changed; ``training=True`` trains
        (batch statistics, dropout) and keeps what ``backward`` needs."""
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, dout, *, need_input_grad: bool = True):
        """dx from dout = d loss / d output of the most recent training forward; parameter
        gradients accumulate (``+=``). With ``need_input_grad=False`` dx is not computed and None is
        returned (the model's input needs no gradient)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # -- structure ------------------------------------------------------------------------

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        """(qualified name, module) for this module and every descendant, in registration order."""
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> list["Module"]:
        """This module and every descendant, parents before children."""
        return [m for _, m in self.named_modules()]

    def children(self) -> list["Module"]:
        """The direct children, in registration order."""
        return list(self._modules.values())

    def named_parameters(self) -> list[tuple[str, Parameter]]:
        """(name, parameter) pairs, names like ``"0.weight"``; a shared parameter once."""
        seen, result = set(), []
        for prefix, module in self.named_modules():
            for name, p in module._parameters.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    result.append((f"{prefix}.{name}" if prefix else name, p))
        return result

    def parameters(self) -> list[Parameter]:
        """The trainable parameters, in a fixed order (what optimizers take)."""
        return [p for _, p in self.named_parameters()]

    def named_buffers(self) -> list[tuple[str, Any]]:
        """(name, array) for the non-trained state, e.g. ``"1.running_mean"``."""
        return [(f"{prefix}.{name}" if prefix else name, getattr(module, name))
                for prefix, module in self.named_modules() for name in module._buffer_names]

    def parameter_count(self) -> int:
        """The number of trainable scalars."""
        return sum(p.size for p in self.parameters())

    def _assign_names(self) -> None:
        """Name every parameter and module by its dotted name from here (``qualname``) (containers call this)."""
        for prefix, module in self.named_modules():
            module.qualname = prefix
            for name, p in module._parameters.items():
                p.name = f"{prefix}.{name}" if prefix else name

    @property
    def dtype(self) -> np.dtype | None:
        """The dtype of the parameters (None for a module without any)."""
        params = self.parameters()
        return params[0].dtype if params else None

    @property
    def device(self) -> str | None:
        """Where the parameters live, ``"cpu"`` or ``"cuda:N"`` (None without parameters)."""
        params = self.parameters()
        return params[0].device if params else None

    def zero_grad(self) -> None:
        """Set every parameter gradient to zero, in place."""
        for p in self.parameters():
            p.zero_grad()

    # -- device, dtype, options -----------------------------------------------------------

    def to(self, device: str | None = None, *, dtype=None) -> "Module":
        """Move parameters (data and grad) and buffers to ``"cpu"`` (NumPy), ``"cuda"`` or
        ``"cuda:N"`` (CuPy), and/or cast them to ``dtype`` (float32 or float64); a dtype may
        also be given as the first argument. Parameter objects stay the same (optimizers built
        on them see the new arrays); what forward saved and the reused buffers are dropped.
        Returns the module. (torch.nn.Module.to)"""
        if device is not None and dtype is None and B.parse_device(device) is None:
            try:
                np.dtype(device)
            except TypeError:
                raise ValueError(f"Module.to: device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
            device, dtype = None, device
        convert = _converter(device, dtype)
        done = set()
        for module in self.modules():
            for p in module._parameters.values():
                if id(p) not in done:
                    done.add(id(p))
                    p.data, p.grad = convert(p.data), convert(p.grad)
            for name in module._buffer_names:
                object.__setattr__(module, name, convert(getattr(module, name)))
            module._workspace.clear()
            module._saved = None
        return self

    def reuse_outputs(self, enabled: bool = True) -> "Module":
        """Let forward's output and backward's dx be reused buffers (rewritten by the next call
        with the same shapes) instead of new arrays: no allocation at all in a step, and fixed
        addresses for CUDA graph capture. Returns the module."""
        self._set_reuse(bool(enabled), bool(enabled))
        return self

    def _set_reuse(self, out: bool, dx: bool) -> None:
        """Whether this module's returned output / dx may be reused; containers pass it on."""
        self._reuse_out, self._reuse_dx = out, dx

    def check_nan(self, enabled: bool = True) -> "Module":
        """Make every layer check its input for NaN and infinity (a ``ValueError`` naming the
        layer and the first bad position). A debugging aid: it costs a pass over each input
        and, on the GPU, a host synchronisation per layer. Returns the module."""
        for module in self.modules():
            module._check_nan = bool(enabled)
        return self

    # -- state ----------------------------------------------------------------------------

    def _state_arrays(self) -> dict[str, Any]:
        state = {}
        for prefix, module in self.named_modules():
            for name, p in module._parameters.items():
                state[f"{prefix}.{name}" if prefix else name] = p.data
            for name in module._buffer_names:
                state[f"{prefix}.{name}" if prefix else name] = getattr(module, name)
        return state

    def state_dict(self) -> dict[str, Any]:
        """Copies of the parameters and buffers (e.g. BatchNorm's running statistics) by name,
        on the module's device. (torch.nn.Module.state_dict)"""
        return {name: a.copy() for name, a in self._state_arrays().items()}

    def state_dict_mismatches(self, state: dict, strict: bool = True, *, buffers: bool = True,
                              source: str = "the state") -> list[str]:
        """Every way ``state`` does not fit this module, one line each; an empty list when it
        fits. With ``strict``, the module's keys missing from ``state`` and the keys it does
        not have; for every key in both, a value that is not an array (NumPy, CuPy or
        array-like), another shape or another dtype. ``buffers=False`` compares with the
        parameters alone (an EMA's averages); ``source`` is how the lines name ``state`` ("the
        checkpoint"). What ``load_state_dict``, ``fastnn.load`` and ``EMA.load_state_dict``
        check before they change anything."""
        if buffers:
            targets = self._state_arrays()
        else:
            targets = {name: p.data for name, p in self.named_parameters()}
        problems = []
        if strict:
            problems += [f"{k}: missing from {source}" for k in targets if k not in state]
            problems += [f"{k}: not in the model" for k in state if k not in targets]
        for key in (k for k in targets if k in state):
            try:
                value = B.as_array(state[key], key)
            except TypeError as exc:
                problems.append(str(exc))
                continue
            target = targets[key]
            if tuple(value.shape) != tuple(target.shape):
                problems.append(f"{key}: shape {tuple(value.shape)} in {source}, {tuple(target.shape)} in the model")
            elif np.dtype(value.dtype) != np.dtype(target.dtype):
                problems.append(f"{key}: dtype {np.dtype(value.dtype)} in {source}, {np.dtype(target.dtype)} in the "
                                "model (convert the model with .to(dtype=...) or the state with .astype)")
        return problems

    def load_state_dict(self, state: dict, strict: bool = True) -> LoadResult:
        """Copy ``state`` into the parameters and buffers, in place (their arrays, and so their
        addresses, stay the same; NumPy and CuPy values are both accepted).

        Every entry is checked first (:meth:`state_dict_mismatches`): with ``strict``, keys
        missing from ``state`` and keys the module does not have; for every key, the shape and
        the dtype. If anything does not match, a ``ValueError`` lists each mismatch and nothing
        is changed. Returns the missing and unexpected keys (empty when strict)."""
        problems = self.state_dict_mismatches(state, strict)
        if problems:
            raise ValueError(f"{type(self).__name__}.load_state_dict: the state does not match the model, "
                             "nothing was loaded:\n  " + "\n  ".join(problems))
        targets = self._state_arrays()
        for key in (k for k in targets if k in state):
            target, value = targets[key], B.as_array(state[key], key)
            if isinstance(target, np.ndarray):
                target[...] = B.to_numpy(value)
            else:
                target[...] = B.array_module(target).asarray(value)
        return LoadResult([k for k in targets if k not in state], [k for k in state if k not in targets])

    # -- description ----------------------------------------------------------------------

    def extra_repr(self) -> str:
        """The arguments shown between the parentheses of this module's repr."""
        return ""

    def _note(self, name: str) -> str:
        """A remark shown after child ``name`` in the repr (Sequential: what runs fused)."""
        return ""

    def _lines(self) -> list[str]:
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not self._modules:
            return [head + ")"]
        lines = [head + ("," if self.extra_repr() else "")]
        for name, child in self._modules.items():
            sub = child._lines()
            count = child.parameter_count()
            remarks = [f"{count:,} parameters"] if count else []
            remarks += [self._note(name)] if self._note(name) else []
            sub[-1] += f"  # {', '.join(remarks)}" if remarks else ""
            lines.append(f"  ({name}): {sub[0]}")
            lines += [f"  {line}" for line in sub[1:]]
        return lines + [")"]

    def __repr__(self) -> str:
        lines = self._lines()
        count = self.parameter_count()
        if count:
            lines[-1] += f"  # {count:,} parameters ({self.dtype.name}, {self.device})"
        return "\n".join(lines)

    # -- helpers for layers ---------------------------------------------------------------

    def _where(self) -> str:
        """How error messages name this layer: ``(2) Dense(784, 256)``."""
        label = f"{type(self).__name__}({self.extra_repr()})"
        return f"({self.qualname}) {label}" if self.qualname else label

    def _buffer(self, role: str, shape: tuple, like, reuse: bool, dtype=None):
        """An uninitialised array of ``shape`` with ``like``'s dtype (or ``dtype``) and device:
        the one kept for ``role`` when ``reuse`` and it still fits, else a new one (kept when
        ``reuse``). Inference passes ``reuse=False``: it must not write into anything another
        thread's call could be using."""
        dtype = like.dtype if dtype is None else np.dtype(dtype)
        if reuse:
            kept = self._workspace.get(role)
            if kept is not None and kept.shape == shape and kept.dtype == dtype and _same_place(kept, like):
                return kept
        array = B.empty(shape, like, dtype)
        if reuse:
            self._workspace[role] = array
        return array

    def _hand_over_buffers(self) -> list:
        """The arrays this module keeps for reuse, which it forgets: a captured CUDA graph
        (``fastnn.cuda_graph``) writes into them at every replay and so takes them for its
        lifetime, and the module's later calls allocate their own instead of writing into the
        graph's (or replacing one while the graph still uses it)."""
        kept = list(self._workspace.values())
        self._workspace = {}
        return kept

    def _output(self, shape: tuple, like, training: bool):
        """The array forward writes its result into: a reused buffer only in training calls
        (with ``reuse_outputs`` or inside a container), a new array in inference."""
        return self._buffer("y", shape, like, self._reuse_out and training)

    def _input_grad(self, shape: tuple, like):
        """The array backward writes dx into."""
        return self._buffer("dx", shape, like, self._reuse_dx)

    def _check_input(self, x, *, name: str = "input", ndim: int | None = None,
                     features: int | None = None, like=None, like_name: str = "the parameters"):
        """``x`` as a float array for this layer (``_backend.check_float``, messages prefixed
        with the layer): a dtype and device of ``like`` when given, ``ndim`` and ``features``;
        non-contiguous inputs are copied. Checks for NaN/inf when ``check_nan`` is on."""
        a = B.check_float(x, name, like=None if like is None else (like_name, like), ndim=ndim,
                          features=features, copy=True, where=self._where)
        if self._check_nan:
            B.check_finite(a, name, self._where)
        return a

    def _check_grad(self, dout, like, name: str = "dout"):
        """``dout`` checked against the forward output ``like`` (dtype, device, shape);
        copied when not contiguous."""
        return B.check_float(dout, name, like=("the forward output", like), shape=like.shape, copy=True,
                             where=self._where)

    def _saved_state(self):
        """What the most recent training forward kept: a ``RuntimeError`` when there is none,
        a :class:`ConcurrentTrainingError` when another thread's forward kept it."""
        if self._saved is None:
            raise RuntimeError(f"{self._where()}: backward needs {self._forward_first} (model.to() also drops what "
                               "forward kept)")
        if self._saved_by != threading.get_ident():
            raise ConcurrentTrainingError(f"{self._where()}: backward in one thread would read what a training forward "
                                          "in another thread kept; train one model per thread")
        return self._saved

