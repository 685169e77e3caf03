"""A whole training step recorded once as a CUDA graph and replayed: :func:`capture`.

A training step of a small or medium network launches dozens of kernels, and at these sizes
the CPU launching them, not the GPU, sets the pace (PyTorch's own step runs about twice as
fast replayed as a graph as it does eager: the figures are in the README). CuPy's stream
capture records every kernel, copy and memset issued on a stream into a graph that one call
replays; fastnn's kernels launch on CuPy's current stream, so a fastnn step records whole::

    model = fnn.nn.Sequential(fnn.nn.Dense(784, 2048), fnn.nn.ReLU(), fnn.nn.Dropout(0.1),
                              fnn.nn.Dense(2048, 10)).to("cuda")
    loss_fn = fnn.nn.SoftmaxCrossEntropy()
    opt = fnn.optim.Adam(model.parameters(), lr=1e-3, capturable=True)
    sched = fnn.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    step = fnn.cuda_graph.capture(model, loss_fn, opt, x_example, y_example)   # trains once on them
    for epoch in range(epochs):
        for x, y in batches:            # same shapes as the examples; NumPy or CuPy arrays
            loss = step(x, y)           # a 0-d CuPy array, overwritten by the next step
        print(float(step.loss))         # the one synchronisation, when you want it
        sched.step()                    # the new lr reaches the graph (on the device)

One step is ``model.zero_grad()``, ``pred = model.forward(x, training=True)``,
``loss.forward(pred, y, sync=False, out=step.loss)``,
``model.backward(loss.backward(), need_input_grad=False)``, ``optimizer.step()``.

What :func:`capture` does, so that replays compute what eager steps would:

- ``model.reuse_outputs(True)`` and ``loss.reuse_outputs(True)``: every array a step writes is a
  buffer kept by its layer, at a fixed address (the loss into ``step.loss``, BatchNorm's saved
  statistics, the dense and loss scratch of the stream);
- every ``Dropout`` keeps its counter on the device (``Dropout.counter_on_device()``): a
  one-thread kernel in the graph advances it, so each replay draws a new mask, the same one an
  eager step with that counter draws;
- the optimizer must be capturable (``capturable=True``): its step count and lr live on the
  device; ``step(...)`` writes a changed ``param_groups[i]["lr"]`` there before each replay
  (``optimizer.sync_lr()``), so schedules work between replays;
- it runs ``warmup`` eager steps (default 1) on the examples, on the stream it then captures
  on: they create the optimizer state, the layers' buffers, the per-stream scratch and
  cuBLASLt's workspace, so that the captured step allocates nothing (memory CuPy's pool handed
  out during a capture could be handed out again while the graph still writes it) and never
  synchronises with the host. These warm-up steps are real training steps;
- the step owns every array the graph reads or writes for as long as it lives (when it is
  collected, it waits for its last replay before letting them go): it holds them
  (parameters and gradients, buffers, optimizer state, the dropout counters, the per-stream
  scratch), and takes the layers' and the loss's reused buffers from them, putting
  ``reuse_outputs`` back as it was. Eager calls after the capture (a validation pass, a last
  partial batch) therefore allocate their own buffers: they never write into the graph's, and
  replacing an array of the model (``model.to(...)``) cannot hand the graph's memory to
  anything else (the graph goes on updating the old arrays: capture again).

Replays run on ``step.stream``, a blocking CUDA stream: work on CuPy's default (legacy) stream,
such as ``float(step.loss)`` or a scheduler writing lr, is ordered with them.

What the graph fixes: the shapes and dtypes of x and y, the model's arrays (``model.to(...)``,
``load_state_dict`` that replaces arrays, or new gradient arrays need a new capture;
``load_state_dict`` of fastnn's modules and optimizers writes in place, which is fine), the
hyperparameters other than lr (betas, momentum, weight decay, dropout p), the matmul precision
(``fastnn.set_matmul_precision``) and the batch-norm momentum. Labels out of range give a NaN
loss on the GPU; :meth:`CapturedStep.item` raises the ``ValueError``.

It needs CuPy, a CUDA GPU and fastnn's CUDA kernels; without them it raises ``RuntimeError``
saying which is missing. (PyTorch: ``torch.cuda.graph`` around a step whose optimizer has
``capturable=True``, after warm-up iterations on a side stream.)
"""

from __future__ import annotations

import weakref

import numpy as np

from . import _backend as B

__all__ = ["capture", "CapturedStep"]

_LABEL_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))


def _release(cupy, device: int, stream) -> None:
    """When a captured step is collected: wait for its last replay, then let other streams have
    the cuBLASLt workspace its capture pinned (its arrays go back to CuPy's pool after this)."""
    with cupy.cuda.Device(device):
        stream.synchronize()
        B._C.cuda.lt_release_capture(stream.ptr)


def _train(model, loss, optimizer, x, y, loss_out) -> None:
    """One training step on (x, y): what :func:`capture` records. The loss goes into
    ``loss_out`` (a 0-d array)."""
    model.zero_grad()
    pred = model.forward(x, training=True)
    loss.forward(pred, y, sync=False, out=loss_out)
    model.backward(loss.backward(), need_input_grad=False)
    optimizer.step()


def _check_arguments(model, loss, optimizer, warmup):
    from .nn import Dropout, Loss, Module
    from .optim.optimizer import Optimizer

    if not isinstance(model, Module) or isinstance(model, Loss):
        raise TypeError(f"fastnn.cuda_graph.capture: model must be a fastnn.nn.Module, got {type(model).__name__}")
    if not isinstance(loss, Loss):
        raise TypeError(f"fastnn.cuda_graph.capture: loss must be a fastnn.nn loss (SoftmaxCrossEntropy, MSE, ...), "
                        f"got {type(loss).__name__}")
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"fastnn.cuda_graph.capture: optimizer must be a fastnn.optim optimizer, got "
                        f"{type(optimizer).__name__}")
    if not optimizer.capturable:
        raise ValueError("fastnn.cuda_graph.capture: the optimizer must be created with capturable=True (its step count "
                         "and lr then live on the device, so that replays keep counting and schedules take effect)")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
        raise ValueError(f"fastnn.cuda_graph.capture: warmup must be an integer >= 1 (the eager steps that create "
                         f"every buffer before the capture), got {warmup!r}")
    return [m for m in model.modules() if isinstance(m, Dropout)]


def _cupy_and_device(model):
    """CuPy and the GPU the model lives on, or RuntimeError/ValueError saying what is missing."""
    try:
        import cupy
    except ImportError as exc:
        raise RuntimeError(f"fastnn.cuda_graph.capture needs CuPy (pip install \"fastnn[cuda]\"): {exc}") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, or CuPy built for another CUDA version
        raise RuntimeError(f"fastnn.cuda_graph.capture needs a CUDA GPU; CuPy cannot see one: {exc}") from None
    if count == 0:
        raise RuntimeError("fastnn.cuda_graph.capture needs a CUDA GPU; CuPy sees none")
    if not B.native_available("cuda"):
        raise RuntimeError("fastnn.cuda_graph.capture needs fastnn's CUDA kernels, and this build has none "
                           f"({B.NATIVE_ERROR or 'the extension was built without CUDA'})")
    if B.get_backend() == "reference":
        raise RuntimeError("fastnn.cuda_graph.capture: the reference backend is selected; its ops allocate and "
                           "synchronise, which a CUDA graph cannot record (use the 'auto' backend)")
    params = model.parameters()
    if not params:
        raise ValueError("fastnn.cuda_graph.capture: the model has no parameters to train")
    places = {str(B.device_of(p.data)) if B.is_cupy(p.data) else "cpu" for p in params}
    if len(places) != 1 or "cpu" in places:
        raise ValueError(f"fastnn.cuda_graph.capture: the model's parameters must all be CuPy arrays on one GPU "
                         f"(model.to('cuda')), found them on {sorted(places)}")
    return cupy, B.device_of(params[0].data).index


def capture(model, loss, optimizer, x, y, *, warmup: int = 1) -> "CapturedStep":
    """Record one training step of ``model`` (forward, ``loss``, backward, ``optimizer.step()``)
    as a CUDA graph and return a :class:`CapturedStep` that replays it on new batches.

    ``x`` and ``y``: an example batch (NumPy or CuPy arrays) that fixes the shapes and dtypes;
    the step trains on it ``warmup`` times (eagerly, before capturing). ``model``: a
    ``fastnn.nn.Module`` on one GPU; ``loss``: a ``fastnn.nn`` loss; ``optimizer``: a fastnn
    optimizer created with ``capturable=True`` (``ValueError`` otherwise). Raises
    ``RuntimeError`` when CuPy, a GPU or fastnn's CUDA kernels are missing. See the module
    documentation for what the graph fixes. (``torch.cuda.graph`` of a whole step)"""
    dropouts = _check_arguments(model, loss, optimizer, warmup)
    cupy, device = _cupy_and_device(model)
    return CapturedStep(cupy, device, model, loss, optimizer, x, y, warmup, dropouts)


class CapturedStep:
    """A training step recorded by :func:`capture`. Call it as ``step(x, y)``: the batch is
    copied into the graph's input buffers ``step.x`` and ``step.y`` on ``step.stream``
    (host-to-device or device-to-device; x and y must have the examples' shapes), the
    optimizer's lr is brought up to date on the device, and the graph is launched. Returns
    ``step.loss``, the 0-d CuPy array the loss is written into (no synchronisation; it is
    overwritten by the next step: copy it, or read it with :meth:`item`, to keep it).
    ``step()`` replays on whatever ``step.x`` and ``step.y`` hold. The prediction and the
    gradients of a replay live in buffers the step owns, rewritten by every replay and never
    returned; the model's own ``forward`` after the capture computes on buffers of its own."""

    def __init__(self, cupy, device: int, model, loss, optimizer, x, y, warmup: int, dropouts):
        self.model, self.loss_fn, self.optimizer = model, loss, optimizer
        self._cupy = cupy
        self._device = cupy.cuda.Device(device)
        with self._device:
            self.stream = cupy.cuda.Stream(non_blocking=False)
            self.x = self._static(x, "x", None)
            self.y = self._static(y, "y", np.dtype(np.int64) if loss.labels else None)
            self.loss = cupy.empty((), dtype=model.dtype)
        modules = [*model.modules(), loss]
        reuse = [(m, m._reuse_out, m._reuse_dx) for m in modules]
        model.reuse_outputs(True)
        loss.reuse_outputs(True)
        for layer in dropouts:
            layer.counter_on_device(True)
        try:
            with self._device, self.stream:
                for _ in range(warmup):
                    self._train()
                self.graph = self._record()
                self._held = self._take_arrays(modules, dropouts)
        finally:
            for m, out, dx in reuse:
                m._reuse_out, m._reuse_dx = out, dx
        if B.is_cupy(self.loss):
            release = weakref.finalize(self, _release, cupy, device, self.stream)
            release.atexit = False  # at exit the driver may be gone; nothing needs the memory then

    def _static(self, example, name: str, label_dtype):
        """The device buffer the graph reads ``name`` from, holding the example."""
        a = B.as_array(example, name)
        dtype = np.dtype(a.dtype)
        if label_dtype is not None and dtype.kind in "iu" and dtype not in _LABEL_DTYPES:
            dtype = label_dtype  # labels are read as int32 or int64; converting per step would allocate
        buffer = self._cupy.empty(tuple(a.shape), dtype=dtype)
        self._copy_in(buffer, a, name)
        return buffer

    def _copy_in(self, buffer, value, name: str) -> None:
        a = B.as_array(value, name)
        if tuple(a.shape) != tuple(buffer.shape):
            raise ValueError(f"CapturedStep: {name} has shape {tuple(a.shape)} but the graph was captured for "
                             f"{tuple(buffer.shape)}; capture again for another batch shape")
        if isinstance(a, np.ndarray):
            buffer.set(np.ascontiguousarray(a, dtype=buffer.dtype), stream=self.stream)
        else:
            self._cupy.copyto(buffer, a)

    def _train(self) -> None:
        _train(self.model, self.loss_fn, self.optimizer, self.x, self.y, self.loss)

    def _record(self):
        """Capture one step on ``self.stream`` (the current stream)."""
        self.stream.begin_capture()
        try:
            self._train()
        except BaseException:
            try:
                self.stream.end_capture()
            except Exception:
                pass  # the capture was invalidated; the error that did it is the one to report
            raise
        return self.stream.end_capture()

    def _take_arrays(self, modules, dropouts) -> list:
        """Every array the graph reads or writes, held for the step's lifetime (the graph keeps
        their addresses): the modules' reused buffers, which they hand over (their next eager
        calls allocate their own), the parameters, gradients and buffers, the dropout counters,
        the optimizer's state and device scalars, and the stream's scratch (held in case the
        stream's cache drops or replaces it). Run on the capture stream."""
        held = [self.x, self.y, self.loss]
        for module in modules:
            held += module._hand_over_buffers()
        held += [a for p in self.model.parameters() for a in (p.data, p.grad)]
        held += [a for _, a in self.model.named_buffers()]
        held += [layer._words for layer in dropouts]
        held += [a for state in self.optimizer.state.values() for a in state.values() if hasattr(a, "shape")]
        held += list(self.optimizer._scalars.values())
        held += B.stream_buffers(self.model.parameters()[0].data)
        return held

    def __call__(self, x=None, y=None):
        with self._device, self.stream:
            if x is not None:
                self._copy_in(self.x, x, "x")
            if y is not None:
                self._copy_in(self.y, y, "y")
            self.optimizer.sync_lr()
            self.graph.launch(self.stream)
        return self.loss

    def item(self) -> float:
        """The latest loss as a float (waits for the step); ``ValueError`` when a label was out of
        range (the GPU kernels record it instead of stopping)."""
        from .functional.losses import loss_item

        with self._device, self.stream:
            return loss_item(self.loss)

    def __repr__(self) -> str:
        return (f"CapturedStep(x {tuple(self.x.shape)} {self.x.dtype}, y {tuple(self.y.shape)} {self.y.dtype}, "
                f"device {self._device.id})")
