"""``Optimizer``: parameter groups, state created on the first step, one native call per group
of tensors, ``state_dict`` / ``load_state_dict`` in torch.optim's format, and capturable mode.
"""

from __future__ import annotations

import contextlib
import math
import operator
from typing import Any, Iterable

import numpy as np

from .. import _backend as B
from ..nn.parameter import Parameter
from . import functional as OF


def pair(value, name: str) -> tuple:
    """``value`` as a 2-tuple (betas, etas, step_sizes), else ValueError naming it."""
    try:
        first, second = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair, got {value!r}") from None
    return first, second


def _on_device(a):
    """A context that makes ``a``'s GPU current while CuPy allocates beside it."""
    return a.device if B.is_cupy(a) else contextlib.nullcontext()


def _new_like(like, dtype=None, shape=None):
    """An uninitialised array on ``like``'s device, of ``like``'s dtype and shape unless given.
    On the CPU an array of ``like``'s dtype has the same offset within a 64-byte cache line as
    ``like``, so the kernel's cache-line-aligned loop (csrc/cpu/optim.cpp) covers parameter and
    state alike; one of another dtype (low-bit state) starts a cache line."""
    dtype = np.dtype(like.dtype if dtype is None else dtype)
    shape = tuple(like.shape if shape is None else shape)
    if not isinstance(like, np.ndarray):
        with _on_device(like):
            return B.array_module(like).empty(shape, dtype)
    size = math.prod(shape)
    buf = np.empty(size + 64 // dtype.itemsize, dtype)
    target = B.pointer(like) if dtype == like.dtype else 0
    shift = (target - B.pointer(buf)) % 64 // dtype.itemsize
    return buf[shift:shift + size].reshape(shape)


def _copy_onto(value, like, out=None, dtype=None):
    """A copy of array ``value`` with ``like``'s dtype (or ``dtype``) on ``like``'s device
    (moving it if needed), written into ``out`` (new if None)."""
    out = _new_like(like, dtype, value.shape) if out is None else out
    with _on_device(like):
        if isinstance(like, np.ndarray):
            source = B.to_numpy(value)
        elif B.is_cupy(value) and value.device == like.device:
            source = value
        else:
            source = B.array_module(like).asarray(B.to_numpy(value))
        B.array_module(like).copyto(out, source)
    return out


def _same_kind(a, b) -> bool:
    return B.device_of(a) == B.device_of(b) and a.dtype == b.dtype and a.shape == b.shape


def absmax_key(key: str) -> str:
    """The state entry holding int8 state ``key``'s block absmaxes (``"exp_avg_absmax"``)."""
    return key + "_absmax"


def _torch_bfloat16(value) -> bool:
    return type(value).__module__.startswith("torch") and str(getattr(value, "dtype", "")) == "torch.bfloat16"


class _Bucket:
    """Tensors of one group that one native call updates: one device, dtype and state storage
    (``kind``), one step count (outside capturable mode), and state either all just created or
    all existing."""

    __slots__ = ("positions", "indices", "datas", "states", "pointers", "grads", "grad_pointers",
                 "fresh", "scalars", "kind")

    def __init__(self, positions, indices, datas, states, fresh, scalars, native, kind):
        self.positions, self.indices, self.datas, self.states = positions, indices, datas, states
        self.fresh, self.scalars, self.kind = fresh, scalars, kind
        self.pointers = ([B.pointer(a) for a in datas],
                         [B.pointer(a) for lst in states for a in OF.flat_arrays(lst)]) if native else None
        self.grads = self.grad_pointers = None


class _Plan:
    """A group's buckets, valid while its parameters' arrays and its state layout stay the same;
    ``grads``: the gradient arrays last checked (their addresses are in the buckets).
    ``spans`` / ``grad_spans``: each array's address and shape when checked, compared again
    every step with its writable flag (cheap), so that an array made read-only or resized
    since is validated again, not written."""

    __slots__ = ("datas", "layout", "buckets", "grads", "spans", "grad_spans")

    def __init__(self, datas, layout, buckets):
        self.datas, self.layout, self.buckets, self.grads = datas, layout, buckets, None
        self.spans = _spans(datas)
        self.grad_spans = None

    def holds(self, datas: list) -> bool:
        """Whether the planned arrays are still as checked (same objects, address, shape) and
        writable."""
        return _same(datas, self.datas) and _spans(datas) == self.spans and all(map(B.is_writable, datas))

    def holds_grads(self, grads: list) -> bool:
        return self.grads is not None and _same(grads, self.grads) and _spans(grads) == self.grad_spans


def _spans(arrays: list) -> list:
    """What may not change under a plan: each array's shape and address. A NumPy array's memory
    moves only with its shape (``ndarray.resize``), so its shape is enough, and the per-step
    check takes no address."""
    return [a.shape if type(a) is np.ndarray else (B.pointer(a), a.shape) for a in arrays]


def _data(p):
    return p.data if isinstance(p, Parameter) else p


def _datas(params) -> list:
    return [p.data if isinstance(p, Parameter) else p for p in params]


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(map(operator.is_, a, b))


class Optimizer:
    """Base class of fastnn's optimizers, with the interface of ``torch.optim.Optimizer``.

    ``params``: an iterable of :class:`fastnn.nn.Parameter` (gradients are read from ``.grad``)
    or of arrays (NumPy, CuPy, or zero-copy views of others; ``step(grads)`` then takes the
    gradients in the same order), or an iterable of dicts, each a parameter group with a
    ``"params"`` entry and its own hyperparameters (the others come from the defaults).
    dtypes float32, float64 and float16 (computed in float32, rounded once when stored).

    - ``param_groups``: list of dicts; hyperparameters may be changed between steps (a schedule
      does). They are validated at construction and again by every ``step()``.
    - ``state``: per parameter (keyed by its position over all groups, as in ``state_dict``),
      created on the parameter's device on its first step: the same keys as torch.optim
      (``"step"``, ``"exp_avg"``, ...).
    - ``step(grads=None)``: one update of every parameter. Everything (hyperparameters,
      gradient count, shapes, dtypes, devices, contiguity, no two parameters or gradients
      sharing memory) is checked before anything changes; what was checked is cached, and
      each step re-checks only each array's address, shape and writable flag. A gradient may
      be its very own parameter. Tensors of a group with one device and dtype are updated by
      one native call.
    - ``zero_grad()``: zeroes every Parameter's ``.grad`` in place (nothing to do for arrays).
    - ``state_dict()`` / ``load_state_dict()``: torch.optim's format, ``{"state": {index:
      {...}}, "param_groups": [{..., "params": [indices]}]}``. ``state_dict`` returns the live
      state arrays (copy them for a snapshot), as torch does. Loading checks counts, keys and
      shapes (naming the parameter), and copies each array onto its parameter's device and
      dtype; PyTorch tensors are accepted, so a torch.optim state dict of the same rule loads.

    Low-bit state (``state_dtype``, as in :mod:`fastnn.optim.functional`): ``None`` keeps the
    parameters' dtype; ``"float32"``; ``"bfloat16"`` (arrays of uint16 bit patterns, rounded to
    nearest even, or stochastically with ``stochastic_rounding=True`` from Philox bits of
    ``seed``, by default drawn from :func:`fastnn.seed`'s sequence; the random stream counts
    each parameter's ``"step"``, which SGD then keeps too); ``"int8"`` (block-wise 8-bit: each
    state key holds uint8 codes of the parameter's shape and ``key + "_absmax"`` one float32 per
    256 elements; parameters under 4096 elements keep float32 state). The state dict holds
    exactly these arrays, so a checkpoint resumes bit for bit; loading converts a state of
    another storage (float, bfloat16 bits, int8 blocks) into this optimizer's, and refuses int8
    blocks whose codes or absmaxes do not fit the parameter.

    Capturable mode (``capturable=True``), for CUDA graphs (like torch's ``capturable=True``):
    each group keeps, per device and dtype, a float64 array ``[lr, step]`` beside its
    parameters. The kernels count the step there and read lr and the step from it (Adam's and
    Adagrad's step-dependent factors are computed on the device), so a captured ``step()``
    replays correctly, and a new lr written into the array between replays takes effect. The
    math is the same as in normal mode. How to capture a training step with CuPy::

        opt = fastnn.optim.Adam(model.parameters(), lr=1e-3, capturable=True)
        sched = fastnn.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        stream = cupy.cuda.Stream(non_blocking=True)
        with stream:
            train_step()               # eager, at least once: creates the optimizer state
            stream.begin_capture()
            train_step()               # forward, loss, backward, opt.step(), opt.zero_grad()
            graph = stream.end_capture()
            for epoch in range(epochs):
                for x, y in batches:
                    x_in[...], y_in[...] = x, y   # the arrays the graph captured
                    graph.launch(stream)
                sched.step()           # writes lr into the device arrays (opt.sync_lr()),
                                       # ordered on `stream` before the next replay

    What holds and what does not:

    - The graph holds the addresses of the parameters, gradients and state: keep the same
      arrays (``zero_grad`` and ``load_state_dict`` write in place; ``model.to(...)`` or new
      gradient arrays need a new capture).
    - Only lr (and the step count) are read on the device. Other hyperparameters (betas,
      momentum, weight_decay, eps, ...) are baked into the captured launches: change them and
      capture again (so a ``MomentumSchedule`` needs a new capture to take effect).
    - ``step()`` writes a changed ``group["lr"]`` to the device itself when run eagerly and
      refuses to do so during a capture (the write would be replayed); between replays call
      :meth:`sync_lr` after changing ``group["lr"]`` by hand (fastnn's schedulers call it).
    - The first ``step()`` (and the first after a new hyperparameter adds state, e.g. amsgrad)
      allocates state, which a capture cannot do: ``step()`` raises RuntimeError then.
    - Without ``capturable=True``, a ``step()`` under stream capture raises RuntimeError (the
      graph would hold lr and the step count as constants), as torch.optim does.
    - ``state_dict()`` reads the step back from the device (a synchronisation; not in a
      capture). Capturable mode works on NumPy arrays too (same semantics, handy for tests); on
      the GPU it needs CuPy arrays and the native CUDA path (the reference path synchronises).
    """

    rule = ""  # the fastnn.optim.functional rule the subclass runs

    def __init__(self, params: Iterable, defaults: dict, *, capturable: bool = False, state_dtype=None,
                 stochastic_rounding: bool = False, seed: int | None = None):
        if isinstance(params, (Parameter, dict)) or hasattr(params, "shape"):
            raise TypeError("params must be an iterable of Parameters or arrays, or of parameter-group dicts; "
                            f"got a single {type(params).__name__}")
        self.defaults = dict(defaults)
        self.capturable = bool(capturable)
        self.state_dtype = OF.check_state_dtype(state_dtype, self.rule)
        self.stochastic_rounding = bool(stochastic_rounding)
        if seed is None:
            from ..data import as_generator

            seed = int(as_generator(None).integers(2 ** 63)) if self.stochastic_rounding else 0
        self.seed = OF.check_state_options(self.rule, {}, self.state_dtype, self.stochastic_rounding, seed)
        # Stochastic rounding counts each parameter's steps for its random stream, SGD's too.
        self._counts_steps = OF.RULES[self.rule].counts_steps or self.stochastic_rounding
        self.param_groups: list[dict] = []
        self.state: dict[int, dict] = {}
        self._plans: dict[int, _Plan] = {}
        self._scalars: dict[tuple, Any] = {}  # (group, device, dtype) -> [lr, step] (capturable)
        self._scalars_lr: dict[tuple, float] = {}  # the lr last written into each
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    # --- subclass hooks -------------------------------------------------------------------------

    @staticmethod
    def _hyper(group: dict) -> dict:
        """The functional rule's keyword arguments for ``group`` (not yet validated)."""
        raise NotImplementedError

    @staticmethod
    def _initial_value(key: str, group: dict) -> float:
        """The value every element of state ``key`` starts from."""
        return 0.0

    def _kind(self, data) -> str:
        """How ``data``'s state is stored (a storage name of fastnn.optim.functional)."""
        return OF.storage(np.dtype(data.dtype).name, self.state_dtype, int(data.size))

    def _initial_state(self, state: dict, spec, data, group: dict, kind: str) -> None:
        """Create state ``spec.key`` (and its absmaxes, for int8) in ``state``, every element the
        rule's initial value."""
        value = self._initial_value(spec.key, group)
        if kind == "int8":
            # Every element alike: each block's absmax is |value| and each code the same one.
            codes, absmax = OF.ref.quantize_state(np.full(1, value, np.float32), not spec.nonnegative)
            state[spec.key] = _new_like(data, np.uint8)
            state[absmax_key(spec.key)] = _new_like(data, np.float32, (OF.blocks(data.size),))
            with _on_device(data):
                state[spec.key].fill(int(codes[0]))
                state[absmax_key(spec.key)].fill(float(absmax[0]))
            return
        if kind == "bfloat16":
            value = int(OF.ref.round_bfloat16(np.full(1, value, np.float32))[0])
        array = _new_like(data, OF.storage_dtype(kind))
        with _on_device(data):
            array.fill(value)
        state[spec.key] = array

    def _state_arrays(self, index: int, key: str, kind: str):
        """A parameter's state ``key`` as the kernels take it (an Int8State for int8)."""
        entry = self.state[index]
        return OF.Int8State(entry[key], entry[absmax_key(key)]) if kind == "int8" else entry[key]

    # --- groups ---------------------------------------------------------------------------------

    def add_param_group(self, param_group: dict) -> None:
        """Add a group: a dict with ``"params"`` (Parameters or arrays) and optional
        hyperparameters; the missing ones are taken from the optimizer's defaults."""
        if not isinstance(param_group, dict):
            raise TypeError(f"a parameter group must be a dict, got {type(param_group).__name__}")
        group = dict(param_group)
        params = group.get("params")
        if params is None:
            raise ValueError("a parameter group needs a 'params' entry")
        params = [params] if isinstance(params, Parameter) or hasattr(params, "shape") else list(params)
        if not params:
            raise ValueError("a parameter group needs at least one parameter")
        gi = len(self.param_groups)
        checked = []
        for k, p in enumerate(params):
            name = p.name if isinstance(p, Parameter) and p.name else f"param_groups[{gi}]['params'][{k}]"
            checked.append(p if isinstance(p, Parameter) else B.check_float(p, name, writable=True, dtypes=OF.DTYPES))
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in checked) or len({id(p) for p in checked}) != len(checked):
            raise ValueError("some parameters appear in more than one group (or twice in one)")
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        group["params"] = checked
        OF.check_state_options(self.rule, OF.check_hyper(self.rule, self._hyper(group), need_step=False),
                               self.state_dtype, self.stochastic_rounding, self.seed)
        self.param_groups.append(group)

    def _offsets(self) -> list[int]:
        offsets, total = [], 0
        for group in self.param_groups:
            offsets.append(total)
            total += len(group["params"])
        return offsets

    def _name(self, gi: int, k: int) -> str:
        p = self.param_groups[gi]["params"][k]
        if isinstance(p, Parameter) and p.name:
            return f"'{p.name}' (param_groups[{gi}]['params'][{k}])"
        return f"param_groups[{gi}]['params'][{k}]"

    # --- the step -------------------------------------------------------------------------------

    def zero_grad(self) -> None:
        """Set every Parameter's gradient to zero, in place (plain arrays have no gradient here)."""
        for group in self.param_groups:
            for p in group["params"]:
                if isinstance(p, Parameter):
                    p.zero_grad()

    def step(self, grads=None) -> None:
        """Update every parameter once. ``grads``: None to read each Parameter's ``.grad``, or
        a list with one gradient per parameter, in the order of ``param_groups``."""
        hypers = [OF.check_hyper(self.rule, self._hyper(g), need_step=False) for g in self.param_groups]
        for hyper in hypers:
            OF.check_state_options(self.rule, hyper, self.state_dtype, self.stochastic_rounding, self.seed)
        per_group = self._split_grads(grads)
        offsets = self._offsets()
        # 1. validate everything; 2. create missing state; 3. run. Nothing changes before 3.
        work, changed = [], False
        for gi, group in enumerate(self.param_groups):
            layout = tuple(s.key for s in OF.used_states(self.rule, hypers[gi]))
            datas = _datas(group["params"])
            plan = self._plans.get(gi)
            if plan is None or plan.layout != layout or not plan.holds(datas):
                plan = None
                datas = self._check_datas(gi, datas, offsets[gi], layout)
                changed = True
            grads = per_group[gi]
            if plan is None or not plan.holds_grads(grads):
                grads = self._check_grads(gi, datas, grads)
                changed = True
            work.append((gi, group, hypers[gi], layout, datas, grads, plan))
        if changed:
            self._check_overlap(work)
        if self.capturable:
            self._check_capture(work, offsets)
        else:
            self._refuse_capture(work)
        for gi, group, hyper, layout, datas, grads, plan in work:
            if plan is None:
                plan = self._plans[gi] = self._plan(gi, group, layout, datas, offsets[gi])
            self._run(group, hyper, plan, grads)

    def _split_grads(self, grads) -> list[list]:
        counts = [len(g["params"]) for g in self.param_groups]
        if grads is None:
            out = []
            for gi, group in enumerate(self.param_groups):
                try:
                    out.append([p.grad for p in group["params"]])
                except AttributeError:  # arrays have no .grad
                    k = next(k for k, p in enumerate(group["params"]) if not isinstance(p, Parameter))
                    raise TypeError(f"{type(self).__name__}.step() needs the gradients (step(grads)) because "
                                    f"{self._name(gi, k)} is a plain array, not a fastnn Parameter") from None
            return out
        if not isinstance(grads, (list, tuple)):
            raise TypeError(f"grads must be a list of arrays, one per parameter, got {type(grads).__name__}")
        if len(grads) != sum(counts):
            raise ValueError(f"{type(self).__name__}.step() got {len(grads)} gradients for {sum(counts)} parameters")
        out, start = [], 0
        for n in counts:
            out.append(list(grads[start:start + n]))
            start += n
        return out

    def _check_datas(self, gi: int, datas: list, offset: int, layout: tuple) -> list:
        checked = []
        for k, data in enumerate(datas):
            name = self._name(gi, k)
            data = B.check_float(data, name, writable=True, dtypes=OF.DTYPES)
            kind = self._kind(data)
            entry = self.state.get(offset + k, {})
            for key in layout:
                expected = [(key, OF.storage_dtype(kind), data.shape)]
                if kind == "int8":
                    expected.append((absmax_key(key), np.dtype(np.float32), (OF.blocks(data.size),)))
                for name_, dtype, shape in expected:
                    s = entry.get(name_)
                    if s is None:
                        continue
                    if not (B.device_of(s) == B.device_of(data) and s.dtype == dtype and s.shape == shape):
                        raise ValueError(
                            f"the optimizer state '{name_}' of {name} is {s.dtype} {tuple(s.shape)} on "
                            f"{B.device_of(s)} but the parameter ({data.dtype} {tuple(data.shape)} on "
                            f"{B.device_of(data)}) keeps it as {dtype} {tuple(shape)}: create the optimizer after "
                            "moving or converting the model, or reload its state with "
                            "opt.load_state_dict(opt.state_dict()), which moves it")
            checked.append(data)
        if self.capturable and any(isinstance(d, B.CudaView) for d in checked):
            raise TypeError("capturable mode on GPU arrays needs CuPy (install fastnn[cuda])")
        return checked

    def _check_grads(self, gi: int, datas: list, grads: list) -> list:
        out = []
        for k, (g, data) in enumerate(zip(grads, datas)):
            if not (type(g) is type(data) and g.shape == data.shape and g.dtype == data.dtype
                    and B.is_contiguous(g) and (type(g) is np.ndarray or B.device_of(g) == B.device_of(data))):
                name = self._name(gi, k)
                g = B.check_float(g, f"the gradient of {name}", like=(name, data), shape=data.shape, dtypes=OF.DTYPES)
            out.append(g)
        return out

    def _check_overlap(self, work) -> None:
        """No two parameters or gradients of the optimizer overlap (a gradient may be its very
        own parameter). The state is the optimizer's own memory."""
        named = []
        for gi, _, _, _, datas, grads, _ in work:
            for k, (d, g) in enumerate(zip(datas, grads)):
                name = self._name(gi, k)
                named.append((name, d))
                if not OF.aliases_own_param(g, d):
                    named.append((f"the gradient of {name}", g))
        OF.check_no_overlap(f"{type(self).__name__}: ", OF.spans(named))

    def _refuse_capture(self, work) -> None:
        """RuntimeError when a step of this non-capturable optimizer is being captured into a
        CUDA graph: the graph would replay it with lr and the step count as constants (as
        torch.optim refuses)."""
        for gi, group, hyper, layout, datas, grads, plan in work:
            if B.capturing(datas[0]):
                raise RuntimeError(
                    f"{type(self).__name__}.step() is being captured into a CUDA graph, but the optimizer was not "
                    "created with capturable=True: lr, the step count and the step-dependent factors (Adam's bias "
                    "corrections, Adagrad's lr decay) would be constants of the graph, and state['step'] would "
                    "advance once, at capture. Create it with capturable=True")

    def _check_capture(self, work, offsets) -> None:
        for gi, group, hyper, layout, datas, grads, plan in work:
            if not B.capturing(datas[0]):
                continue
            keys = {(gi, B.device_of(d), np.dtype(d.dtype)) for d in datas}
            if any(key not in self._scalars for key in keys) or any(
                    key not in self.state.get(offsets[gi] + k, {}) for k in range(len(datas)) for key in layout):
                raise RuntimeError(
                    f"{type(self).__name__}: run at least one step eagerly before capturing a CUDA graph: the first "
                    "step creates the optimizer state, and allocations cannot be captured")
            if any(self._scalars_lr.get(key) != float(group["lr"]) for key in keys):
                raise RuntimeError(f"{type(self).__name__}: param_groups[{gi}]['lr'] changed; call sync_lr() before "
                                   "capturing (a write captured into the graph would replay the old value)")

    def _plan(self, gi: int, group: dict, layout: tuple, datas: list, offset: int) -> _Plan:
        counts_steps = self._counts_steps
        specs = {s.key: s for s in OF.RULES[self.rule].states}
        buckets: dict[tuple, list[int]] = {}
        fresh_positions = set()
        for k, data in enumerate(datas):
            state = self.state.setdefault(offset + k, {})
            kind = self._kind(data)
            for key in layout:
                if key not in state:
                    self._initial_state(state, specs[key], data, group, kind)
                    fresh_positions.add(k)
            if counts_steps and not self.capturable:
                state.setdefault("step", 0)
            step = state["step"] if counts_steps and not self.capturable else None
            # Only SGD treats fresh state differently (its first momentum step); splitting other
            # rules' buckets would make capturable mode count their shared step twice.
            fresh = k in fresh_positions and self.rule == "sgd"
            buckets.setdefault((B.device_of(data), np.dtype(data.dtype), kind, step, fresh), []).append(k)
        out = []
        for (device, dtype, kind, _, fresh), positions in buckets.items():
            scalars = None
            if self.capturable:
                key = (gi, device, dtype)
                if key not in self._scalars:
                    self._scalars[key] = self._new_scalars(datas[positions[0]], float(group["lr"]), 0)
                    self._scalars_lr[key] = float(group["lr"])
                scalars = (key, self._scalars[key])
            indices = [offset + k for k in positions]
            states = [[self._state_arrays(i, key, kind) for i in indices] for key in layout]
            bucket_datas = [datas[k] for k in positions]
            native = B.path_of(bucket_datas[0]) != "reference"
            out.append(_Bucket(positions, indices, bucket_datas, states, fresh, scalars, native, kind))
        return _Plan(datas, layout, out)

    @staticmethod
    def _new_scalars(like, lr: float, step: int):
        with _on_device(like):
            return B.array_module(like).array([lr, float(step)], dtype=np.float64)

    def _run(self, group: dict, hyper: dict, plan: _Plan, grads: list) -> None:
        counts_steps = self._counts_steps
        new_grads = plan.grads is None or not _same(grads, plan.grads) or _spans(grads) != plan.grad_spans
        plan.grads = grads
        if new_grads:
            plan.grad_spans = _spans(grads)
        for b in plan.buckets:
            if new_grads:
                b.grads = [grads[k] for k in b.positions]
                b.grad_pointers = [B.pointer(g) for g in b.grads] if b.pointers is not None else None
            args = dict(hyper)
            if "first_step" in args:
                args["first_step"] = b.fresh
            scalars, step = None, 0
            if b.scalars is not None:
                key, scalars = b.scalars
                self._write_lr(key, scalars, float(group["lr"]))
            elif counts_steps:
                step = self.state[b.indices[0]]["step"] + 1
                if "step" in args:
                    args["step"] = step
            pointers = None if b.pointers is None else b.pointers[0] + b.grad_pointers + b.pointers[1]
            OF.run(self.rule, [b.datas, b.grads, *b.states], args, scalars=scalars, pointers=pointers, state=b.kind,
                   rounding=(self.stochastic_rounding, self.seed, step))
            if counts_steps and b.scalars is None:
                for i in b.indices:
                    self.state[i]["step"] += 1
            b.fresh = False

    # --- capturable mode ------------------------------------------------------------------------

    def _write_lr(self, key: tuple, scalars, lr: float) -> None:
        if self._scalars_lr.get(key) != lr:
            with _on_device(scalars):
                scalars[0] = lr
            self._scalars_lr[key] = lr

    def sync_lr(self) -> None:
        """Capturable mode: write each group's ``lr`` into its device ``[lr, step]`` arrays
        (asynchronously, on the current stream), for graph replays that follow. A no-op
        otherwise, and for groups whose lr did not change. Not during a capture."""
        for key, scalars in self._scalars.items():
            lr = B.check_scalar(self.param_groups[key[0]]["lr"], f"param_groups[{key[0]}]['lr']", low=0.0)
            self._write_lr(key, scalars, lr)

    def _step_of(self, index: int, gi: int) -> int:
        if not self.capturable:
            return self.state[index]["step"]
        data = _data(self.param_groups[gi]["params"][index - self._offsets()[gi]])
        return int(float(self._scalars[(gi, B.device_of(data), np.dtype(data.dtype))][1]))

    # --- state_dict -----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """``{"state": {index: {...}}, "param_groups": [{..., "params": [indices]}]}``, as
        torch.optim: indices number the parameters over all groups in order. The state arrays
        are the live ones (not copies); in capturable mode "step" is read from the device."""
        offsets = self._offsets()
        groups = []
        group_of = {}
        for gi, group in enumerate(self.param_groups):
            entry = {k: v for k, v in group.items() if k != "params"}
            entry["params"] = list(range(offsets[gi], offsets[gi] + len(group["params"])))
            groups.append(entry)
            group_of.update(dict.fromkeys(entry["params"], gi))
        state = {}
        for index, entry in self.state.items():
            entry = dict(entry)
            if self._counts_steps and entry:
                entry["step"] = self._step_of(index, group_of[index])
            state[index] = entry
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a :meth:`state_dict` (or a torch.optim one of the same rule). The groups and
        their parameter counts must match; each state array must have its parameter's shape
        (ValueError naming the parameter) and a float dtype (TypeError); it is copied onto the
        parameter's device and dtype, into the existing state array when there is one (so a
        captured CUDA graph stays valid). Hyperparameters come from the loaded groups. Nothing
        changes unless everything loads."""
        try:
            saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        except (KeyError, TypeError):
            raise ValueError("a state dict has 'state' and 'param_groups' entries") from None
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"the loaded state dict has {len(saved_groups)} parameter groups, "
                             f"this optimizer has {len(self.param_groups)}")
        new_groups, id_map = [], {}
        offsets = self._offsets()
        for gi, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"param_groups[{gi}] has {len(group['params'])} parameters but the loaded one has "
                                 f"{len(saved['params'])}")
            new = {k: v for k, v in saved.items() if k != "params"}
            new["params"] = group["params"]
            OF.check_hyper(self.rule, self._hyper(new), need_step=False)
            new_groups.append(new)
            for k, saved_id in enumerate(saved["params"]):
                id_map[saved_id] = (gi, k)
        loaded = {}
        for saved_id, entry in saved_state.items():
            if saved_id not in id_map:
                raise ValueError(f"the loaded state has an entry for parameter {saved_id!r}, which no group lists")
            gi, k = id_map[saved_id]
            loaded[offsets[gi] + k] = (_data(self.param_groups[gi]["params"][k]), self._load_entry(entry, gi, k))
        steps = self._capturable_steps(loaded, new_groups, offsets) if self.capturable else {}
        # Everything is checked: commit. Arrays that already exist with the right shape, dtype and
        # device are overwritten in place, so a captured CUDA graph that uses them stays valid.
        for group, new in zip(self.param_groups, new_groups):
            group.clear()
            group.update(new)
        state = {}
        for index, (data, entry) in loaded.items():
            old = self.state.get(index, {})
            state[index] = {}
            for key, value in entry.items():
                if key == "step":
                    state[index][key] = value
                    continue
                array, dtype = value
                into = old.get(key)
                fits = into is not None and B.device_of(into) == B.device_of(data) and into.dtype == dtype and \
                    tuple(into.shape) == tuple(array.shape)
                state[index][key] = _copy_onto(array, data, into if fits else None, dtype)
        self.state = state
        self._plans.clear()
        scalars = {}
        for key, (like, step) in steps.items():
            lr = float(self.param_groups[key[0]]["lr"])
            scalars[key] = self._scalars.get(key)
            if scalars[key] is None:
                scalars[key] = self._new_scalars(like, lr, step)
            else:
                with _on_device(like):
                    scalars[key][0], scalars[key][1] = lr, float(step)
        self._scalars = scalars
        self._scalars_lr = {key: float(self.param_groups[key[0]]["lr"]) for key in scalars}

    def _load_entry(self, entry: dict, gi: int, k: int) -> dict:
        """The entry's step and its arrays, checked and converted to the storage this optimizer
        keeps for the parameter: ``{"step": n, key: (array, dtype to keep it in), ...}``."""
        name = self._name(gi, k)
        data = B.check_float(_data(self.param_groups[gi]["params"][k]), name, dtypes=OF.DTYPES)
        kind = self._kind(data)
        specs = {s.key: s for s in OF.RULES[self.rule].states}
        out = {}
        for key, value in entry.items():
            if key == "step":
                if not self._counts_steps:  # a stochastically rounding SGD's count
                    continue
                try:
                    step = float(value)
                except OverflowError:
                    step = math.inf
                if not (0 <= step < OF.MAX_STEP and step.is_integer()):
                    raise ValueError(f"the loaded step of {name} must be a whole number from 0 to 2**53 - 1, "
                                     f"got {value!r}")
                out["step"] = int(step)
            elif key in specs:
                if value is None:  # torch.optim.SGD saves an absent momentum buffer as None
                    continue
                out.update(self._load_state(entry, specs[key], name, data, kind))
            elif key.endswith("_absmax") and key[:-len("_absmax")] in specs:
                if entry.get(key[:-len("_absmax")]) is None:
                    raise ValueError(f"the loaded state of {name} has {key!r} but no {key[:-len('_absmax')]!r} "
                                     "codes to go with it")
            else:
                raise ValueError(f"the loaded state of {name} has an unknown entry {key!r} for "
                                 f"{type(self).__name__} (expected {sorted(specs)})")
        required = [s.key for s in OF.RULES[self.rule].states if s.used is None]
        missing = [key for key in required if key not in out]
        if out and (missing or (self._counts_steps and "step" not in out)):
            raise ValueError(f"the loaded state of {name} lacks {missing or ['step']}")
        return out

    @staticmethod
    def _load_state(entry: dict, spec, name: str, data, kind: str) -> dict:
        """State ``spec.key`` of a loaded entry in storage ``kind``: float arrays, bfloat16 bits
        (uint16, or torch bfloat16 tensors) and int8 blocks (uint8 codes with their
        ``"_absmax"`` entry) each convert to the others (rounded to nearest even, quantized or
        decoded); the same storage is taken as it is, so a state dict loads back exactly."""
        key = spec.key
        where = f"the loaded state '{key}' of {name}"
        value = entry[key]
        if _torch_bfloat16(value):
            import torch

            value = value.view(torch.uint16)
        a = B.as_array(value, where)
        dt = np.dtype(a.dtype)
        if tuple(a.shape) != tuple(data.shape):
            raise ValueError(f"{where} has shape {tuple(a.shape)} but the parameter has shape {tuple(data.shape)}")
        absmax = entry.get(absmax_key(key))
        if absmax is not None:
            source = "int8"
            if dt != np.uint8:
                raise TypeError(f"{where} comes with '{absmax_key(key)}', so it should hold int8 codes (uint8), but "
                                f"it has dtype {dt}")
            absmax = B.as_array(absmax, f"the loaded state '{absmax_key(key)}' of {name}")
            count = OF.blocks(data.size)
            if np.dtype(absmax.dtype).kind != "f" or tuple(absmax.shape) != (count,):
                raise ValueError(f"the loaded state '{absmax_key(key)}' of {name} is {np.dtype(absmax.dtype)} "
                                 f"{tuple(absmax.shape)}, but the parameter's {data.size} elements are quantized in "
                                 f"{count} blocks of {OF.QUANT_BLOCK} (one float absmax each): these int8 blocks do "
                                 "not belong to this parameter")
        elif dt == np.uint16:
            source = "bfloat16"
        elif dt == np.uint8:
            raise ValueError(f"{where} holds int8 codes (uint8) without their '{absmax_key(key)}' entry, the block "
                             "absmaxes they are scaled by")
        elif dt.kind == "f":
            source = "float"
        else:
            raise TypeError(f"{where} has dtype {dt}; expected a floating dtype (or bfloat16 bits as uint16, or "
                            "int8 codes as uint8 with their absmaxes)")
        signed = not spec.nonnegative
        if source == kind or (source == "float" and kind not in ("bfloat16", "int8")):
            out = {key: (a, OF.storage_dtype(kind))}
            if kind == "int8":
                out[absmax_key(key)] = (absmax, np.dtype(np.float32))
            return out
        xp = B.array_module(a)
        wide = (a.astype(xp.float32) if source == "float" else
                OF.ref.widen_bfloat16(a) if source == "bfloat16" else
                OF.ref.dequantize_state(a, absmax.astype(xp.float32), signed))
        if kind == "int8":
            codes, absmaxes = OF.ref.quantize_state(wide, signed)
            return {key: (codes, np.dtype(np.uint8)), absmax_key(key): (absmaxes, np.dtype(np.float32))}
        if kind == "bfloat16":
            return {key: (OF.ref.round_bfloat16(wide), np.dtype(np.uint16))}
        return {key: (wide, OF.storage_dtype(kind))}

    def _capturable_steps(self, loaded: dict, groups: list, offsets: list) -> dict:
        """(group, device, dtype) -> (a parameter array there, the step its parameters share)."""
        steps: dict[tuple, dict[int, list]] = {}
        for gi, group in enumerate(groups):
            for k, p in enumerate(group["params"]):
                data = _data(p)
                entry = loaded.get(offsets[gi] + k, (None, {}))[1]
                key = (gi, B.device_of(data), np.dtype(data.dtype))
                steps.setdefault(key, {}).setdefault(entry.pop("step", 0), []).append((self._name(gi, k), data))
        out = {}
        for key, by_step in steps.items():
            if len(by_step) > 1:
                raise ValueError("capturable mode keeps one step count per group, device and dtype, but the loaded "
                                 f"state has steps {sorted(by_step)} in param_groups[{key[0]}] (e.g. "
                                 f"{', '.join(v[0][0] for v in by_step.values())})")
            step, members = next(iter(by_step.items()))
            out[key] = (members[0][1], step)
        return out

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for gi, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {gi}")
            lines.extend(f"    {k}: {v}" for k, v in sorted(group.items()) if k != "params")
        return "\n".join(lines + [")"])
