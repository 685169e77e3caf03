"""fastnn's fused optimizers as ``torch.optim.Optimizer`` subclasses: a drop-in for a PyTorch
training loop.

``SGD``, ``Adagrad``, ``RMSprop``, ``Adam``, ``AdamW`` and ``Rprop`` take torch.optim's
arguments, with torch's defaults and checks, and keep torch.optim's state layout
(``state[p]["exp_avg"]``, a float ``step`` tensor, ...), so ``state_dict()`` loads into the
torch.optim class of the same rule and back. ``step()`` runs fastnn's kernels on each
``p.grad`` in place (parameters without a gradient are skipped): tensors of one group, device
and dtype are updated by one native call, on the CPU or, for CUDA tensors, on torch's current
stream (one multi-tensor launch per table of tensors; no host-device synchronisation).

What it takes, as torch.optim does:

- dtypes float32, float64, bfloat16 and float16 (bfloat16 and float16 computed in float32 and
  rounded once when stored, state in the parameter's dtype: torch's fused kernels' math), and
  complex64 / complex128, updated as their real and imaginary parts (``view_as_real``);
- any dense layout: a transposed or ``channels_last`` tensor is updated as the flat memory it
  is (state created with ``preserve_format``, like torch's); a tensor with gaps (a strided view)
  through a contiguous copy, written back;
- sparse gradients in ``SGD`` and ``Adagrad`` (torch's own update for those tensors, with
  torch's sparse semantics); the other rules raise as torch's do;
- ``foreach`` and ``fused`` (any value: the update is fused either way), ``differentiable=False``
  (``True`` raises NotImplementedError), ``capturable`` where torch has it (Adam, AdamW, RMSprop,
  Rprop): lr and the step count are then read on the device, for CUDA graphs, and each state's
  ``step`` lives on its parameter's device, as torch's; these keys stay in ``param_groups``.

Low-bit state, as in :mod:`fastnn.optim.functional` (``state_dtype``, every rule but Rprop):
``"bfloat16"`` keeps each state tensor in ``torch.bfloat16`` (rounded to nearest even, or with
``stochastic_rounding=True`` stochastically, from Philox bits of ``seed``); ``"int8"`` keeps
uint8 codes of the parameter's shape in ``state[p][key]`` and one float32 absmax per 256
elements in ``state[p][key + "_absmax"]`` (tensors under 4096 elements, and complex ones, keep
their state as they would without it), a drop-in for ``bitsandbytes.optim.Adam8bit`` /
``AdamW8bit`` on the CPU and CUDA alike; ``"float32"`` keeps float32 state for bfloat16 and
float16 parameters. ``state_dict()`` holds these tensors, so a checkpoint resumes exactly;
``load_state_dict`` converts state of another storage (a torch.optim state dict, say) into this
optimizer's.

Semantics follow torch.optim's where they could differ: Adagrad creates its state at
construction, from the constructor's ``initial_accumulator_value`` (a group's value is
ignored, as torch does); Nesterov's conditions are checked on the constructor's values only;
``eps=0`` is accepted. ``FASTNN_BACKEND=numpy`` runs the reference path instead (CuPy needed
for CUDA tensors).

>>> model = torch.nn.Linear(10, 1)
>>> opt = fastnn.integrations.torch.AdamW(model.parameters(), lr=1e-3)
>>> loss = model(x).pow(2).mean(); loss.backward(); opt.step(); opt.zero_grad()
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import numpy as np
import torch
from torch.optim import adagrad as _torch_adagrad
from torch.optim import sgd as _torch_sgd

from .. import _backend as B
from .. import optim as _optim
from .. import reference as _ref
from ..optim import functional as OF
from ..optim.optimizer import absmax_key

__all__ = ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "Rprop"]

# The kernels' name for each real dtype (csrc/optim.h); complex tensors run as their real view.
_KERNEL_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.bfloat16: "bfloat16",
                  torch.float16: "float16"}
_COMPLEX_DTYPES = (torch.complex64, torch.complex128)
# How each storage of fastnn.optim.functional keeps a state tensor (int8: its codes).
_STORAGE_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
                   "bfloat16": torch.bfloat16, "int8": torch.uint8}
_HOST = np.empty(0)  # stands for the CPU when asking which path runs there


class _Dtype(NamedTuple):
    name: str  # what fastnn's launcher reads of a dtype; NumPy has no bfloat16


class _HostView(NamedTuple):
    dtype: _Dtype


def _launch_view(t: torch.Tensor, dtype: str):
    """What the launcher needs of a group's first tensor: the dtype's name and, on the GPU, the
    device and torch's current stream."""
    if not t.is_cuda:
        return _HostView(_Dtype(dtype))
    stream = torch.cuda.current_stream(t.device).cuda_stream
    view = B.CudaView(t, dict(data=(t.data_ptr(), False), shape=(t.numel(),), typestr="|u1", stream=stream or None))
    view.dtype = _Dtype(dtype)
    return view


def _array_view(t: torch.Tensor):
    """A zero-copy fastnn view of a float32/float64 tensor (the capturable [lr, step] one)."""
    if t.is_cuda:
        stream = torch.cuda.current_stream(t.device).cuda_stream
        return B.CudaView(t, dict(t.__cuda_array_interface__, stream=stream or None))
    return t.numpy()


def _torch_stream(t: torch.Tensor):
    """CuPy work (the reference path) ordered on torch's current stream."""
    if not t.is_cuda:
        return contextlib.nullcontext()
    cupy = B.cupy_module()
    return cupy.cuda.ExternalStream(torch.cuda.current_stream(t.device).cuda_stream, t.device.index)


def _real(t: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


def _dense(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements fill one block of memory, each once (any order of the axes)."""
    if t.is_contiguous():
        return True
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _contiguous_strides(shape) -> tuple:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _scalar_dtype() -> torch.dtype:
    """The dtype of torch.optim's ``step`` tensors."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class _FastnnOptimizer(torch.optim.Optimizer):
    _fastnn: type[_optim.Optimizer]  # the fastnn class whose rule, hyperparameters and state this runs

    def __init__(self, params, defaults: dict, *, differentiable=False, state_dtype=None, stochastic_rounding=False,
                 seed=None, **flags):
        """``flags``: the torch class's own implementation switches (``foreach``, and ``fused``
        or ``capturable`` where it has them), kept in the groups as torch keeps them. The state
        options are the optimizer's (not the groups'): see the module's docstring."""
        if differentiable:
            raise NotImplementedError(
                "differentiable=True is not supported: fastnn's kernels update the tensors in place, outside "
                "autograd; use torch.optim's own class to differentiate through the optimizer step")
        rule = self._fastnn.rule
        self.state_dtype = OF.check_state_dtype(state_dtype, rule)
        self.stochastic_rounding = bool(stochastic_rounding)
        if seed is None:
            from ..data import as_generator

            seed = int(as_generator(None).integers(2 ** 63)) if self.stochastic_rounding else 0
        self.seed = OF.check_state_options(rule, {}, self.state_dtype, self.stochastic_rounding, seed)
        # Stochastic rounding counts each parameter's steps for its random stream, SGD's too.
        self._counts_steps = OF.RULES[rule].counts_steps or self.stochastic_rounding
        super().__init__(params, dict(defaults, differentiable=False, **flags))
        for group in self.param_groups:
            OF.check_state_options(rule, OF.check_hyper(rule, self._fastnn._hyper(group), need_step=False),
                                   self.state_dtype, self.stochastic_rounding, self.seed)

    def load_state_dict(self, state_dict) -> None:
        """torch.optim's ``load_state_dict``, then each state tensor as it was saved (torch casts
        every state tensor to its parameter's dtype, which would turn int8 codes and bfloat16
        state into floats), converted into the storage this optimizer keeps: the same storage
        loads exactly; float, bfloat16 and int8 state convert into one another."""
        saved_state = {pid: dict(entry) for pid, entry in state_dict["state"].items()}
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        ids = [pid for group in state_dict["param_groups"] for pid in group["params"]]
        by_id = dict(zip(ids, params))
        for pid, entry in saved_state.items():
            p = by_id.get(pid)
            if p is None or p not in self.state:
                continue
            self.state[p] = self._stored_state(p, entry, self.state[p])
        self._device_scalars().clear()

    def _kind(self, p: torch.Tensor) -> str:
        """How ``p``'s state is stored (a storage of fastnn.optim.functional); complex
        parameters keep theirs in their own dtype."""
        real = _real(p)
        if p.is_complex():
            return _KERNEL_DTYPES[real.dtype]
        return OF.storage(_KERNEL_DTYPES[real.dtype], self.state_dtype, real.numel())

    def _stored_state(self, p: torch.Tensor, saved: dict, loaded: dict) -> dict:
        """A loaded state entry in this optimizer's storage for ``p``: the saved tensors (before
        torch's casts) converted; "step" and other entries as torch loaded them."""
        kind = self._kind(p)
        specs = {spec.key: spec for spec in OF.RULES[self._fastnn.rule].states}
        out = {key: value for key, value in loaded.items() if key not in specs and
               not (key.endswith("_absmax") and key[:-len("_absmax")] in specs)}
        for key, spec in specs.items():
            value = saved.get(key)
            if not isinstance(value, torch.Tensor):
                if key in loaded:
                    out[key] = loaded[key]
                continue
            absmax = saved.get(absmax_key(key))
            value = value.to(device=p.device)
            if isinstance(absmax, torch.Tensor):
                absmax = absmax.to(device=p.device, dtype=torch.float32)
            out.update(_convert_state(p, key, value, absmax, kind, not spec.nonnegative))
        return out

    # --- validation -----------------------------------------------------------------------------

    def _check(self, gi: int, k: int, p: torch.Tensor) -> bool:
        """Validate a parameter and its gradient; True when the gradient is sparse (SGD and
        Adagrad update those through torch's own code)."""
        g = p.grad
        name = f"param_groups[{gi}]['params'][{k}]"
        if p.layout != torch.strided:
            raise TypeError(f"{name}: fastnn's optimizers update dense parameters, not {p.layout} ones")
        if p.dtype not in _KERNEL_DTYPES and p.dtype not in _COMPLEX_DTYPES:
            raise TypeError(f"{name}: expected a float32, float64, bfloat16, float16, complex64 or complex128 "
                            f"parameter, got {p.dtype}")
        if g.dtype != p.dtype:
            raise TypeError(f"{name}: the gradient is {g.dtype} but the parameter is {p.dtype}")
        if g.device != p.device or g.shape != p.shape:
            raise ValueError(f"{name}: the gradient is {tuple(g.shape)} on {g.device} but the parameter is "
                             f"{tuple(p.shape)} on {p.device}")
        if p.device.type not in ("cpu", "cuda"):
            raise ValueError(f"{name}: tensors on {p.device} are not supported (CPU and CUDA only)")
        if g.is_sparse:
            rule = self._fastnn.rule
            if rule not in ("sgd", "adagrad"):
                hint = ", please consider SparseAdam instead" if rule == "adam" else ""
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients{hint}")
            if self.param_groups[gi]["weight_decay"] != 0:  # torch.optim.SGD fails there too
                raise RuntimeError("weight_decay option is not compatible with sparse gradients")
            return True
        if g.layout != torch.strided:
            raise TypeError(f"{name}: the gradient's layout {g.layout} is not supported (dense or sparse COO)")
        for key, s in self.state.get(p, {}).items():
            if key == "step":
                # (On the CPU only: reading a device step would synchronise, in capturable mode.)
                if not isinstance(s, torch.Tensor) or s.device.type == "cpu":
                    step = float(s)
                    if not (0 <= step < OF.MAX_STEP and step.is_integer()):
                        raise ValueError(f"{name}: its state 'step' is {step!r}; a step count is a whole number "
                                         "from 0 to 2**53 - 1")
                continue
            if not isinstance(s, torch.Tensor):
                continue
            if s.layout != torch.strided:
                raise ValueError(f"{name}: its state '{key}' is {s.layout} (left by sparse gradients) but the gradient "
                                 "is dense now; reset the state (optimizer.state[p].clear())")
            kind = self._kind(p)
            if key.endswith("_absmax"):
                shape, dtype = (OF.blocks(_real(p).numel()),), torch.float32
            else:
                shape, dtype = p.shape, p.dtype if p.is_complex() else _STORAGE_DTYPES[kind]
            if s.shape != shape or s.dtype != dtype or s.device != p.device:
                raise ValueError(f"{name}: its state '{key}' is {s.dtype} {tuple(s.shape)} on {s.device} but the "
                                 f"parameter ({p.dtype} {tuple(p.shape)} on {p.device}) keeps it as {dtype} "
                                 f"{tuple(shape)}")
        return False

    # --- the step -------------------------------------------------------------------------------

    def _refuse_capture(self) -> None:
        """RuntimeError when step() is being captured into a CUDA graph (``torch.cuda.graph``)
        and a group is not capturable: the graph would replay lr and the step count as
        constants and ``state["step"]`` would advance once, at capture (torch.optim refuses
        too)."""
        capturing = torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()
        if capturing and not all(group.get("capturable", False) for group in self.param_groups):
            raise RuntimeError(
                f"{type(self).__name__}.step() is being captured into a CUDA graph, but its param_groups are not "
                "capturable: lr, the step count and the step-dependent factors would be constants of the graph, "
                "and state['step'] would advance once, at capture. Create the optimizer with capturable=True")

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient. ``closure``: as torch.optim
        (re-evaluates the model and returns the loss, which step returns)."""
        self._refuse_capture()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rule = self._fastnn.rule
        work, spans = [], []
        for gi, group in enumerate(self.param_groups):
            hyper = OF.check_hyper(rule, self._fastnn._hyper(group), need_step=False)
            OF.check_state_options(rule, hyper, self.state_dtype, self.stochastic_rounding, self.seed)
            dense, sparse = [], []
            for k, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if self._check(gi, k, p):
                    sparse.append(p)
                    continue
                dense.append(p)
                if _dense(p):
                    spans.append((f"param_groups[{gi}]['params'][{k}]", (p.device.type, p.device.index), p.data_ptr(),
                                  p.numel() * p.element_size()))
            work.append((gi, group, hyper, dense, sparse))
        # Parameters that are views of one another would be updated at once by one fused call
        # (torch.optim updates them one after the other): refused. Views with gaps go through
        # temporaries, one after the other; gradients and state are torch's own allocations.
        OF.check_no_overlap(f"{type(self).__name__}: ", spans)
        for gi, group, hyper, dense, sparse in work:
            if sparse:
                self._sparse_update(group, sparse)
            if dense:
                self._update(gi, group, hyper, dense)
        return loss

    def _initial_value(self, key: str, group: dict, p: torch.Tensor):
        value = self._fastnn._initial_value(key, group)
        return complex(value, value) if p.is_complex() else value

    def _new_state(self, state: dict, key: str, group: dict, p: torch.Tensor) -> None:
        """Create state ``key`` of ``p`` (and its absmaxes, for int8), every element the rule's
        initial value, laid out as ``p`` (``preserve_format``, as torch)."""
        value = self._initial_value(key, group, p)
        kind = self._kind(p)
        if kind == "int8":
            spec = next(s for s in OF.RULES[self._fastnn.rule].states if s.key == key)
            codes, absmax = _ref.quantize_state(np.full(1, value, np.float32), not spec.nonnegative)
            state[key] = torch.full_like(p, int(codes[0]), dtype=torch.uint8, memory_format=torch.preserve_format)
            state[absmax_key(key)] = torch.full((OF.blocks(p.numel()),), float(absmax[0]), dtype=torch.float32,
                                                device=p.device)
            return
        dtype = p.dtype if p.is_complex() else _STORAGE_DTYPES[kind]
        state[key] = torch.full_like(p, value, dtype=dtype, memory_format=torch.preserve_format)

    def _new_step(self, p: torch.Tensor, group: dict) -> torch.Tensor:
        """A ``step`` as torch.optim creates it: on the parameter's device in capturable mode,
        else on the CPU."""
        if group.get("capturable"):
            return torch.zeros((), dtype=torch.float32, device=p.device)
        return torch.tensor(0.0, dtype=_scalar_dtype())

    def _update(self, gi: int, group: dict, hyper: dict, params: list) -> None:
        rule = self._fastnn.rule
        keys = [s.key for s in OF.used_states(rule, hyper)]
        counts_steps = self._counts_steps
        capturable = bool(group.get("capturable"))
        buckets: dict[tuple, list] = {}
        for p in params:
            state = self.state[p]
            fresh = False
            for key in keys:
                if state.get(key) is None:  # torch.optim.SGD may hold a None momentum buffer
                    self._new_state(state, key, group, p)
                    fresh = True
            step = None
            if counts_steps:
                if "step" not in state:
                    state["step"] = self._new_step(p, group)
                if not isinstance(state["step"], torch.Tensor):  # an old state dict's number
                    state["step"] = torch.tensor(float(state["step"]), dtype=_scalar_dtype(),
                                                 device=p.device if capturable else "cpu")
                if not capturable:
                    if state["step"].device.type != "cpu":  # loaded from a capturable or fused torch state
                        state["step"] = state["step"].cpu()
                    step = int(state["step"])
            dtype = _KERNEL_DTYPES[_real(p).dtype]
            buckets.setdefault((p.device, dtype, self._kind(p), step, fresh and rule == "sgd"), []).append(p)
        for (device, dtype, kind, step, fresh), members in buckets.items():
            args = dict(hyper)
            if "step" in args:
                args["step"] = 1 if step is None else step + 1
            if "first_step" in args:
                args["first_step"] = fresh
            rounding = (self.stochastic_rounding, self.seed, 1 if step is None else step + 1)
            lists = [members, [p.grad for p in members], *[[self.state[p][key] for p in members] for key in keys]]
            kernel_lists, write_back = _kernel_tensors(lists)
            absmaxes = [[self.state[p][absmax_key(key)] for p in members] for key in keys] if kind == "int8" else []
            scalars = self._scalars(gi, group, device, dtype, members) if capturable else None
            first = kernel_lists[0][0]
            view = _launch_view(first, dtype)
            path = B.path_of(view if first.is_cuda else _HOST)
            if path == "reference":
                self._run_reference(rule, kernel_lists, absmaxes, args, scalars, kind, rounding)
            else:
                states = [t.data_ptr() for li, lst in enumerate(kernel_lists[2:])
                          for t in lst + (absmaxes[li] if absmaxes else [])]
                OF.run_native(rule, path, view, [t.data_ptr() for lst in kernel_lists[:2] for t in lst] + states,
                              [t.numel() for t in kernel_lists[0]], args,
                              None if scalars is None else _array_view(scalars), kind, rounding)
            for target, temporary in write_back:
                target.copy_(temporary)
            if counts_steps:
                torch._foreach_add_([self.state[p]["step"] for p in members], 1)

    @staticmethod
    def _run_reference(rule: str, lists: list, absmaxes: list, args: dict, scalars, kind: str, rounding) -> None:
        """The reference path on NumPy/CuPy views of the tensors: bfloat16 parameters through
        float32 copies (the kernels compute in float32), bfloat16 state as its bit patterns,
        which the reference rounds as the kernels do (stochastically too), int8 state as its codes
        and absmaxes."""
        first = lists[0][0]
        wide = first.dtype == torch.bfloat16
        # Every tensor is dense (_kernel_tensors): the reference sees each as its memory, in
        # order, as the kernels do (int8 blocks and random streams follow memory order).
        work = [[_flat(t.detach().view(torch.uint16) if kind == "bfloat16" and li >= 2 else t.detach())
                 for t in lst] for li, lst in enumerate(lists)]
        work = [[t.float() if t.dtype == torch.bfloat16 else t for t in lst] for lst in work]
        with _torch_stream(first):
            arrays = [[B.as_array(t, "tensor") for t in lst] for lst in work]
            if kind == "int8":
                arrays[2:] = [[OF.Int8State(c, B.as_array(a, "tensor")) for c, a in zip(lst, amax)]
                              for lst, amax in zip(arrays[2:], absmaxes)]
            device_scalars = None if scalars is None else B.as_array(scalars, "device_scalars")
            OF.run_reference(rule, arrays, args, device_scalars, kind, rounding)
        if wide:
            for p, w in zip(lists[0], work[0]):
                _flat(p).copy_(w)

    def _sparse_update(self, group: dict, params: list) -> None:
        """torch's own update for the parameters with sparse gradients (SGD, Adagrad)."""
        grads = [p.grad for p in params]
        if self._fastnn.rule == "sgd":
            buffers = [self.state[p].get("momentum_buffer") for p in params]
            _torch_sgd.sgd(params, grads, buffers, has_sparse_grad=True, foreach=False,
                           weight_decay=group["weight_decay"], momentum=group["momentum"], lr=group["lr"],
                           dampening=group["dampening"], nesterov=group["nesterov"], maximize=group["maximize"])
            if group["momentum"] != 0:
                for p, buf in zip(params, buffers):
                    self.state[p]["momentum_buffer"] = buf
            return
        for p in params:
            state = self.state[p]
            if "sum" not in state:
                self._new_state(state, "sum", group, p)
            state.setdefault("step", self._new_step(p, group))
        _torch_adagrad.adagrad(params, grads, [self.state[p]["sum"] for p in params],
                               [self.state[p]["step"] for p in params], has_sparse_grad=True, foreach=False,
                               lr=group["lr"], weight_decay=group["weight_decay"], lr_decay=group["lr_decay"],
                               eps=group["eps"], maximize=group["maximize"])

    # --- capturable mode ------------------------------------------------------------------------

    def _device_scalars(self) -> dict:
        """(group, device, dtype) -> [the float64 [lr, step] tensor, its members, the lr written]."""
        return self.__dict__.setdefault("_fastnn_scalars", {})

    def _scalars(self, gi: int, group: dict, device, dtype: str, members: list) -> torch.Tensor:
        """Capturable mode: the float64 [lr, step] tensor the kernels read lr and the step from
        (and count the step in). It is made, from the members' shared step, the first time a
        set of parameters is updated (which a CUDA graph capture cannot do), and after
        load_state_dict; lr is written into it when it changed (a Tensor lr is copied every
        step, on the device)."""
        key = (gi, device, dtype)
        entry = self._device_scalars().get(key)
        ids = [id(p) for p in members]
        lr = group["lr"]
        if entry is None or entry[1] != ids:
            if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                raise RuntimeError(f"{type(self).__name__}: run at least one step eagerly before capturing a CUDA "
                                   "graph: the first step creates the optimizer state, and the step count is read "
                                   "from it then")
            steps = {float(self.state[p]["step"]) for p in members} if "step" in self.state[members[0]] else {0.0}
            if len(steps) > 1:
                raise ValueError(f"{type(self).__name__}: capturable mode keeps one step count per group, device and "
                                 f"dtype, but param_groups[{gi}] has parameters at steps {sorted(steps)}")
            entry = [torch.tensor([float(lr), steps.pop()], dtype=torch.float64, device=device), ids, None]
            self._device_scalars()[key] = entry
        scalars = entry[0]
        if isinstance(lr, torch.Tensor):
            scalars[0].copy_(lr.reshape(()), non_blocking=True)
        elif entry[2] != float(lr):
            scalars[0].fill_(float(lr))
            entry[2] = float(lr)
        return scalars


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A dense tensor's elements in memory order, as the kernels see them."""
    return t.as_strided((t.numel(),), (1,))


def _quantize(flat: torch.Tensor, signed: bool) -> tuple:
    """int8 blocks (codes, absmax) of a 1-d float32 tensor, as the kernels store them."""
    n = flat.numel()
    codes = torch.empty(n, dtype=torch.uint8, device=flat.device)
    absmax = torch.empty(OF.blocks(n), dtype=torch.float32, device=flat.device)
    view = _launch_view(flat, "float32")
    path = B.path_of(view if flat.is_cuda else _HOST)
    if path == "reference":
        c, a = _ref.quantize_state(flat.cpu().numpy(), signed)
        codes.copy_(torch.from_numpy(c))
        absmax.copy_(torch.from_numpy(a))
    else:
        B.launch(path, "quantize_state", view, signed, flat.data_ptr(), codes.data_ptr(), absmax.data_ptr(), n)
    return codes, absmax


def _dequantize(codes: torch.Tensor, absmax: torch.Tensor, signed: bool) -> torch.Tensor:
    """The float32 values (1-d) of int8 blocks (1-d codes, absmax)."""
    out = torch.empty(codes.numel(), dtype=torch.float32, device=codes.device)
    view = _launch_view(out, "float32")
    path = B.path_of(view if out.is_cuda else _HOST)
    if path == "reference":
        out.copy_(torch.from_numpy(_ref.dequantize_state(codes.cpu().numpy(), absmax.cpu().numpy(), signed)))
    else:
        B.launch(path, "dequantize_state", view, signed, codes.data_ptr(), absmax.data_ptr(), out.data_ptr(),
                 codes.numel())
    return out


def _convert_state(p: torch.Tensor, key: str, value: torch.Tensor, absmax, kind: str, signed: bool) -> dict:
    """State ``key`` of ``p`` in storage ``kind`` from a loaded tensor (and its absmaxes): float,
    bfloat16 or int8 codes, each converted to the others (rounded to nearest even, quantized or
    decoded, element by element in the parameter's memory order); the same storage as it is.
    ValueError or TypeError when it cannot be ``p``'s."""
    where = f"the loaded state '{key}' of a {p.dtype} parameter of shape {tuple(p.shape)}"
    if value.shape != p.shape:
        raise ValueError(f"{where} has shape {tuple(value.shape)}")
    if value.dtype == torch.uint8:
        if absmax is None:
            raise ValueError(f"{where} holds int8 codes (uint8) without their '{absmax_key(key)}' entry, the block "
                             "absmaxes they are scaled by")
        blocks = OF.blocks(_real(p).numel())
        if absmax.shape != (blocks,):
            raise ValueError(f"{where} comes with '{absmax_key(key)}' of shape {tuple(absmax.shape)}, but the "
                             f"parameter's {p.numel()} elements are quantized in {blocks} blocks of "
                             f"{OF.QUANT_BLOCK}: these int8 blocks do not belong to this parameter")
        source = "int8"
    elif value.dtype == torch.bfloat16:
        source = "bfloat16"
    elif value.is_floating_point() or value.is_complex():
        source = "float"
    else:
        raise TypeError(f"{where} has dtype {value.dtype}; expected a floating dtype, or int8 codes (uint8) with "
                        "their absmaxes")
    if p.is_complex() and source != "float":
        raise TypeError(f"{where} is {source} state, but complex parameters keep their state in their own dtype")
    if source == "int8" and kind == "int8":
        return {key: value, absmax_key(key): absmax}
    if source == kind or (source == "float" and kind not in ("bfloat16", "int8")):
        return {key: value.to(p.dtype if p.is_complex() else _STORAGE_DTYPES[kind])}
    like = torch.empty_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
    if source == "int8":
        like_codes = torch.empty_like(p, dtype=torch.uint8, memory_format=torch.preserve_format)
        like_codes.copy_(value)
        _flat(like).copy_(_dequantize(_flat(like_codes), absmax, signed))
    else:
        like.copy_(value)
    if kind == "int8":
        codes, absmaxes = _quantize(_flat(like), signed)
        out = torch.empty_like(p, dtype=torch.uint8, memory_format=torch.preserve_format)
        _flat(out).copy_(codes)
        return {key: out, absmax_key(key): absmaxes}
    return {key: like.to(_STORAGE_DTYPES[kind])}


def _kernel_tensors(lists: list) -> tuple[list, list]:
    """The tensors to hand the kernel for each list, element by element in one flat order, and
    the (tensor, temporary) pairs to copy back afterwards. A parameter is handed over as the
    memory it is when its elements fill one block (contiguous or not: a transposed or
    channels_last weight) and its gradient and state lie the same way; otherwise (a view with
    gaps, or a gradient or state laid out differently) through temporaries in the parameter's
    layout (contiguous for a view with gaps), the written ones copied back. Complex tensors are
    handed over as their real views."""
    out = [[] for _ in lists]
    write_back = []
    for i in range(len(lists[0])):
        if not lists[0][i].is_complex() and all(lst[i].is_contiguous() for lst in lists):  # the usual case
            for li, lst in enumerate(lists):
                out[li].append(lst[i])
            continue
        p = _real(lists[0][i])
        layout = p.stride() if _dense(p) else _contiguous_strides(p.shape)
        for li, lst in enumerate(lists):
            t = _real(lst[i])
            if t.stride() != layout or not _dense(t):
                temporary = torch.empty_strided(t.shape, layout, dtype=t.dtype, device=t.device)
                temporary.copy_(t)
                if li != 1:  # the gradient is only read
                    write_back.append((t, temporary))
                t = temporary
            out[li].append(t)
    return out, write_back


class SGD(_FastnnOptimizer):
    __doc__ = _optim.SGD.__doc__
    _fastnn = _optim.SGD

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, *,
                 maximize=False, foreach=None, differentiable=False, fused=None, state_dtype=None,
                 stochastic_rounding=False, seed=None):
        OF.check_nesterov(momentum, dampening, nesterov)
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize),
                         foreach=foreach, differentiable=differentiable, fused=fused, state_dtype=state_dtype,
                         stochastic_rounding=stochastic_rounding, seed=seed)


class Adagrad(_FastnnOptimizer):
    __doc__ = _optim.Adagrad.__doc__
    _fastnn = _optim.Adagrad

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10,
                 foreach=None, *, maximize=False, differentiable=False, fused=None, state_dtype=None,
                 stochastic_rounding=False, seed=None):
        B.check_scalar(initial_accumulator_value, "initial_accumulator_value", low=0.0)
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps, maximize=maximize),
                         foreach=foreach, differentiable=differentiable, fused=fused, state_dtype=state_dtype,
                         stochastic_rounding=stochastic_rounding, seed=seed)
        # As torch: the state exists from the start (so share_memory() and state_dict() see it).
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["step"] = self._new_step(p, group)
                self._new_state(self.state[p], "sum", group, p)

    def _initial_value(self, key, group, p):
        # torch.optim.Adagrad reads the constructor's value, never a group's.
        value = float(self.defaults["initial_accumulator_value"])
        return complex(value, value) if p.is_complex() else value

    def share_memory(self) -> None:
        """``share_memory_()`` on the state sums (and their absmaxes), as torch.optim.Adagrad."""
        for group in self.param_groups:
            for p in group["params"]:
                for key in ("sum", absmax_key("sum")):
                    if key in self.state[p]:
                        self.state[p][key].share_memory_()


class RMSprop(_FastnnOptimizer):
    __doc__ = _optim.RMSprop.__doc__
    _fastnn = _optim.RMSprop

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                 capturable=False, foreach=None, maximize=False, differentiable=False, *, state_dtype=None,
                 stochastic_rounding=False, seed=None):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered, maximize=maximize),
                         foreach=foreach, differentiable=differentiable, capturable=capturable,
                         state_dtype=state_dtype, stochastic_rounding=stochastic_rounding, seed=seed)


class Adam(_FastnnOptimizer):
    __doc__ = _optim.Adam.__doc__
    _fastnn = _optim.Adam

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 foreach=None, maximize=False, capturable=False, differentiable=False, fused=None,
                 decoupled_weight_decay=False, state_dtype=None, stochastic_rounding=False, seed=None):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize, decoupled_weight_decay=decoupled_weight_decay),
                         foreach=foreach, differentiable=differentiable, fused=fused, capturable=capturable,
                         state_dtype=state_dtype, stochastic_rounding=stochastic_rounding, seed=seed)


class AdamW(Adam):
    __doc__ = _optim.AdamW.__doc__
    _fastnn = _optim.AdamW

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, foreach=None, capturable=False, differentiable=False, fused=None, state_dtype=None,
                 stochastic_rounding=False, seed=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True, state_dtype=state_dtype,
                         stochastic_rounding=stochastic_rounding, seed=seed)


class Rprop(_FastnnOptimizer):
    __doc__ = _optim.Rprop.__doc__
    _fastnn = _optim.Rprop

    def __init__(self, params, lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50.0), *, capturable=False, foreach=None,
                 maximize=False, differentiable=False, state_dtype=None):
        super().__init__(params, dict(lr=lr, etas=tuple(etas), step_sizes=tuple(step_sizes), maximize=maximize),
                         foreach=foreach, differentiable=differentiable, capturable=capturable, state_dtype=state_dtype)
