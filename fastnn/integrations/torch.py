"""fastnn's fused optimizers as ``torch.optim.Optimizer`` subclasses: a drop-in for a PyTorch
training loop.

``SGD``, ``Adagrad``, ``RMSprop``, ``Adam``, ``AdamW`` and ``Rprop`` take torch.optim's
arguments (minus ``foreach``/``fused``/``differentiable``/``capturable``) and keep torch.optim's
state layout (``state[p]["exp_avg"]``, a float ``step`` tensor, ...), so ``state_dict()`` loads
into the torch.optim class of the same rule and back. ``step()`` runs fastnn's kernels on each
``p.grad`` in place (parameters without a gradient are skipped): tensors of one group, device
and dtype are updated by one native call, on the CPU or, for CUDA tensors, on torch's current
stream (one multi-tensor launch per table of tensors; no host-device synchronisation).
Parameters and gradients must be dense, contiguous, float32 or float64. ``FASTNN_BACKEND=numpy``
runs the reference path instead (CuPy needed for CUDA tensors).

>>> model = torch.nn.Linear(10, 1)
>>> opt = fastnn.integrations.torch.AdamW(model.parameters(), lr=1e-3)
>>> loss = model(x).pow(2).mean(); loss.backward(); opt.step(); opt.zero_grad()
"""

from __future__ import annotations

import contextlib

import torch

from .. import _backend as B
from .. import optim as _optim
from ..optim import functional as OF

__all__ = ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "Rprop"]

_DTYPES = (torch.float32, torch.float64)


def _view(t: torch.Tensor):
    """A zero-copy fastnn view of a (detached) tensor: the dtype, the device and, on the GPU,
    torch's current stream, for the launch."""
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


class _FastnnOptimizer(torch.optim.Optimizer):
    _fastnn: type[_optim.Optimizer]  # the fastnn class whose rule, hyperparameters and state this runs

    def __init__(self, params, defaults: dict):
        super().__init__(params, defaults)
        for group in self.param_groups:
            OF.check_hyper(self._fastnn.rule, self._fastnn._hyper(group), need_step=False)

    def _check(self, gi: int, k: int, p: torch.Tensor) -> None:
        g = p.grad
        name = f"param_groups[{gi}]['params'][{k}]"
        if g.is_sparse or p.is_sparse:
            raise TypeError(f"{name}: fastnn's optimizers take dense tensors, not sparse gradients")
        if p.dtype not in _DTYPES or g.dtype != p.dtype:
            raise TypeError(f"{name}: expected float32 or float64 parameters with gradients of the same dtype, "
                            f"got {p.dtype} and {g.dtype}")
        if g.device != p.device or g.shape != p.shape:
            raise ValueError(f"{name}: the gradient is {tuple(g.shape)} on {g.device} but the parameter is "
                             f"{tuple(p.shape)} on {p.device}")
        if p.device.type not in ("cpu", "cuda"):
            raise ValueError(f"{name}: tensors on {p.device} are not supported (CPU and CUDA only)")
        if not (p.is_contiguous() and g.is_contiguous()):
            raise ValueError(f"{name}: fastnn's optimizers need contiguous parameters and gradients")

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
        work = []
        for gi, group in enumerate(self.param_groups):
            hyper = OF.check_hyper(rule, self._fastnn._hyper(group), need_step=False)
            params = []
            for k, p in enumerate(group["params"]):
                if p.grad is not None:
                    self._check(gi, k, p)
                    params.append(p)
            work.append((group, hyper, params))
        for group, hyper, params in work:
            self._update(rule, group, hyper, params)
        return loss

    def _update(self, rule: str, group: dict, hyper: dict, params: list) -> None:
        keys = [s.key for s in OF.used_states(rule, hyper)]
        counts_steps = OF.RULES[rule].counts_steps
        buckets: dict[tuple, list] = {}
        for p in params:
            state = self.state[p]
            fresh = False
            for key in keys:
                if state.get(key) is None:  # torch.optim.SGD may hold a None momentum buffer
                    state[key] = torch.full_like(p, self._fastnn._initial_value(key, group),
                                                 memory_format=torch.contiguous_format)
                    fresh = True
            if counts_steps and "step" not in state:
                state["step"] = torch.tensor(0.0)
            step = int(state["step"]) if counts_steps else None
            buckets.setdefault((p.device, p.dtype, step, fresh and rule == "sgd"), []).append(p)
        for (_, _, step, fresh), members in buckets.items():
            args = dict(hyper)
            if "step" in args:
                args["step"] = step + 1
            if "first_step" in args:
                args["first_step"] = fresh
            lists = [[p.data for p in members], [p.grad for p in members]]
            lists += [[self.state[p][key] for p in members] for key in keys]
            first = _view(lists[0][0])
            path = B.path_of(first)
            if path == "reference":
                with _torch_stream(lists[0][0]):
                    OF.run_reference(rule, [[B.as_array(t, "tensor") for t in lst] for lst in lists], args)
            else:
                OF.run_native(rule, path, first, [t.data_ptr() for lst in lists for t in lst],
                              [t.numel() for t in lists[0]], args)
            if counts_steps:
                torch._foreach_add_([self.state[p]["step"] for p in members], 1)


class SGD(_FastnnOptimizer):
    __doc__ = _optim.SGD.__doc__
    _fastnn = _optim.SGD

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, *,
                 maximize=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize))


class Adagrad(_FastnnOptimizer):
    __doc__ = _optim.Adagrad.__doc__
    _fastnn = _optim.Adagrad

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10,
                 *, maximize=False):
        B.check_scalar(initial_accumulator_value, "initial_accumulator_value", low=0.0)
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps, maximize=maximize))


class RMSprop(_FastnnOptimizer):
    __doc__ = _optim.RMSprop.__doc__
    _fastnn = _optim.RMSprop

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, *,
                 maximize=False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered, maximize=maximize))


class Adam(_FastnnOptimizer):
    __doc__ = _optim.Adam.__doc__
    _fastnn = _optim.Adam

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 maximize=False, decoupled_weight_decay=False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize, decoupled_weight_decay=decoupled_weight_decay))


class AdamW(Adam):
    __doc__ = _optim.AdamW.__doc__
    _fastnn = _optim.AdamW

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize, decoupled_weight_decay=True)


class Rprop(_FastnnOptimizer):
    __doc__ = _optim.Rprop.__doc__
    _fastnn = _optim.Rprop

    def __init__(self, params, lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50.0), *, maximize=False):
        super().__init__(params, dict(lr=lr, etas=tuple(etas), step_sizes=tuple(step_sizes), maximize=maximize))
