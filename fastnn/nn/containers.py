"""Containers: ``Sequential`` (a chain of layers, fused where it can) and ``Residual``."""

from __future__ import annotations

import functools

from .. import _backend as B
from .. import functional as F
from .activations import Elementwise, ReLU
from .dense import Dense
from .module import Module
from .normalization import BatchNorm

__all__ = ["Sequential", "Residual"]


def _widths(layers) -> tuple[int | None, int | None]:
    """(in, out) feature widths of a chain: the first known input width, the last known output
    width (None when every layer keeps the width of its input)."""
    ins = [layer.in_features for layer in layers if layer.in_features is not None]
    outs = [layer.out_features for layer in layers if layer.out_features is not None]
    return (ins[0] if ins else None), (outs[-1] if outs else None)


class Sequential(Module):
    """Layers applied in order: y = f_n(... f_1(x)); ``backward`` runs them in reverse.

    It fuses without being asked (``fuse=False`` turns it off; the results are the same):

    - a ``Dense`` without activation followed by ``ReLU``, ``LeakyReLU``, ``Sigmoid``, ``Tanh``
      or ``GELU`` runs as one ``dense_forward`` with that activation in the GEMM epilogue;
    - a ``BatchNorm`` followed by ``ReLU`` runs as one ``batchnorm_forward(relu=True)``.

    The activation layer is then not run at all (its output is the fused layer's). The repr
    marks such layers. Backward, two ``Dense`` steps in a row share one pass: the upper one
    applies the lower one's activation derivative and bias gradient to its dx in place
    (``dense_backward(x_activation=...)``), and the lower one then runs only its GEMMs.

    On the CPU, when every ``Dense`` of the model is narrow (at most
    ``functional.CHAIN_MAX_WIDTH`` features in and out), each run of consecutive ``Dense``
    steps goes forward and backward as one row-blocked chain (``functional.dense_chain_*``),
    every thread carrying its rows through all of the run's layers while they are in its cache.
    All of the model's Dense layers or none: a layer left on NumPy's multi-threaded GEMM would
    leave OpenBLAS's threads spinning on the cores the chain's threads need. So a model with a
    Dense inside a nested module (a ``Residual``) runs layer by layer; a nested ``Sequential``
    decides for its own layers.

    ``backward(dout, need_input_grad=False)`` skips the gradient with respect to the model's
    input: layers before the first one with parameters are not run backward, and the first
    one with parameters computes no dx (``dense_backward(need_dx=False)``). Parameters are
    named by position: ``"0.weight"``, ``"2.alpha"``. The layers are fixed at construction; a
    layer may appear only once.
    (torch.nn.Sequential)
    """

    def __init__(self, *layers: Module, fuse: bool = True):
        super().__init__()
        seen = set()
        for index, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: layer {index} must be a fastnn.nn.Module, got {type(layer).__name__}")
            if id(layer) in seen:
                raise ValueError(f"Sequential: layer {index} ({type(layer).__name__}) appears twice; each layer keeps "
                                 "the state of its own forward, so use a separate instance")
            seen.add(id(layer))
            self.add_module(str(index), layer)
        self.fuse = bool(fuse)
        self.in_features, self.out_features = _widths(layers)
        self._plan, self._fused_into = self._make_plan(list(layers))
        self._backward_fusion = self._make_backward_fusion()
        self._runs, self._chain_widths = self._make_runs()
        self._chained = False  # whether the latest forward ran the Dense runs as chains
        trainable = [k for k, (layer, _) in enumerate(self._plan) if layer.parameters()]
        self._first_trainable = trainable[0] if trainable else None
        self._set_reuse(False, False)
        self._assign_names()

    def _make_plan(self, layers):
        """The steps forward runs, [(layer, run(x, training))], and {skipped layer index:
        index of the layer it runs fused into}."""
        plan, fused_into = [], {}
        index = 0
        while index < len(layers):
            layer = layers[index]
            following = layers[index + 1] if index + 1 < len(layers) else None
            run = layer.forward
            if self.fuse and isinstance(layer, Dense) and layer.activation == "identity" and isinstance(
                    following, Elementwise):
                activation, alpha = following.fusable
                run = functools.partial(_run_dense, layer, activation=activation, alpha=alpha)
            elif self.fuse and isinstance(layer, BatchNorm) and type(following) is ReLU:
                run = functools.partial(_run_batchnorm_relu, layer)
            else:
                following = None
            plan.append((layer, run))
            if following is not None:
                fused_into[index + 1] = index
                index += 1
            index += 1
        return plan, fused_into

    def _make_backward_fusion(self):
        """For each step of the plan, None (the layer's own backward) or the keyword arguments
        of ``Dense._backward`` that fuse it with the Dense steps next to it."""
        fusion = []
        for step, (layer, _) in enumerate(self._plan):
            if not (self.fuse and isinstance(layer, Dense)):
                fusion.append(None)
                continue
            above = self._plan[step + 1][0] if step + 1 < len(self._plan) else None
            below = self._plan[step - 1][0] if step > 0 else None
            fusion.append(dict(done=isinstance(above, Dense), below=below if isinstance(below, Dense) else None))
        return fusion

    def _make_runs(self):
        """{first step: end step} of each run of consecutive Dense steps, and the widths of
        every Dense layer of the model. No runs without fusion, or when a Dense sits inside a
        nested module (a Residual's block or projection), which would run on NumPy's GEMMs."""
        direct = [layer for layer, _ in self._plan if isinstance(layer, Dense)]
        nested = [m for m in self.modules() if isinstance(m, Dense) and all(m is not d for d in direct)]
        runs, step = {}, 0
        while self.fuse and not nested and step < len(self._plan):
            end = step
            while end < len(self._plan) and isinstance(self._plan[end][0], Dense):
                end += 1
            if end > step:
                runs[step] = end
            step = max(end, step + 1)
        return runs, [w for layer in direct for w in (layer.in_features, layer.out_features)]

    def _dense_activation(self, step: int):
        """(activation, alpha) the Dense at ``step`` applies: its own, or the fused layer's."""
        layer, run = self._plan[step]
        if isinstance(run, functools.partial):
            return run.keywords["activation"], run.keywords["alpha"]
        return layer.activation, layer.alpha

    def _use_chains(self, x) -> bool:
        if not self._runs or any(layer._check_nan for layer, _ in self._plan):
            return False
        try:
            x = B.as_array(x, "input")
        except TypeError:
            return False
        return F.dense._chain_blocked(x, self._chain_widths, None)

    def _chain_specs(self, start: int, end: int):
        """(W, b, activation, alpha) of the Dense steps [start, end), as the chain kernels take them."""
        specs = []
        for step in range(start, end):
            layer = self._plan[step][0]
            bias = None if layer.bias is None else layer.bias.data
            specs.append((layer.weight.data, bias, *self._dense_activation(step)))
        return specs

    @staticmethod
    def _chain_grads(layers):
        """dict(dWs=, dbs=): the gradients of ``layers``' parameters, for the chain kernels."""
        return dict(dWs=[layer.weight.grad for layer in layers],
                    dbs=[None if layer.bias is None else layer.bias.grad for layer in layers])

    def _chain_forward(self, start: int, end: int, x, training):
        layers = [self._plan[step][0] for step in range(start, end)]
        first = layers[0]
        x = first._check_input(x, ndim=2, features=first.in_features, like=first.weight.data)
        specs, ys, auxs = self._chain_specs(start, end), [], []
        for layer, (_, _, activation, _) in zip(layers, specs):
            shape = (x.shape[0], layer.out_features)
            ys.append(layer._output(shape, x))
            auxs.append(layer._buffer("aux", shape, x) if F.dense_needs_aux(activation) else None)
        F.dense_chain_forward(x, specs, ys=ys, auxs=auxs, blocked=True)
        below = x
        for layer, y, aux, (_, _, activation, alpha) in zip(layers, ys, auxs, specs):
            layer._saved = (below, y, aux, activation, alpha)
            below = y
        return below

    def _chain_backward(self, start: int, end: int, dout, need_input_grad: bool):
        layers = [self._plan[step][0] for step in range(start, end)]
        states = [layer._saved_state() for layer in layers]
        x = states[0][0]
        dout = layers[-1]._check_grad(dout, states[-1][1])
        dx = layers[0]._input_grad(x.shape, x) if need_input_grad else None
        return F.dense_chain_backward(
            dout, x, [(layer.weight.data, None, state[3], state[4]) for layer, state in zip(layers, states)],
            [state[1] for state in states], [state[2] for state in states], **self._chain_grads(layers),
            need_dx=need_input_grad, dx=dx, blocked=True)

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, index: int) -> Module:
        return self.layers[index]

    def __iter__(self):
        return iter(self.layers)

    @property
    def layers(self) -> list[Module]:
        """The layers, in order."""
        return list(self._modules.values())

    def _note(self, name: str) -> str:
        target = self._fused_into.get(int(name))
        return "" if target is None else f"runs fused into ({target})"

    def _set_reuse(self, out: bool, dx: bool) -> None:
        super()._set_reuse(out, dx)
        last = len(self._plan) - 1
        for step, (layer, _) in enumerate(self._plan):
            layer._set_reuse(out if step == last else True, dx if step == 0 else True)

    def forward(self, x, training: bool = True):
        """Every layer in order (fused steps as one); returns the last output."""
        self._chained = self._use_chains(x)
        step = 0
        while step < len(self._plan):
            if self._chained and step in self._runs:
                x = self._chain_forward(step, self._runs[step], x, training)
                step = self._runs[step]
            else:
                x = self._plan[step][1](x, training)
                step += 1
        return x

    def fused_step(self, x, target, loss, *, sync: bool = True):
        """One training step's forward, loss and backward, as ``loss.forward(self.forward(x),
        target)`` then ``self.backward(loss.backward(), need_input_grad=False)``: parameter
        gradients accumulate (``+=``), and the mean loss is returned (a float, or with
        ``sync=False`` the 0-d array).

        On the CPU, a model that is one run of Dense layers (activation layers fused into them)
        and runs as a chain (see above), with one of the five fastnn losses, does all three in
        one compiled pass (``functional.dense_chain_step``): each row block goes up through the
        layers, through the loss and back down while it is in cache, and no activation is
        stored, so ``backward`` has nothing to run on afterwards (a RuntimeError, as before any
        forward). Elsewhere it makes the three calls."""
        from .losses import Loss

        if not isinstance(loss, Loss):
            raise TypeError(f"Sequential.fused_step: loss must be a fastnn.nn loss, got {type(loss).__name__}")
        name = getattr(loss.kernel, "__name__", "").removesuffix("_forward")
        whole_run = self._runs == {0: len(self._plan)}
        if not (whole_run and name in F.CHAIN_LOSSES and not loss._check_nan and self._use_chains(x)):
            value = loss.forward(self.forward(x, training=True), target, sync=sync)
            self.backward(loss.backward(), need_input_grad=False)
            return value
        layers = [layer for layer, _ in self._plan]
        first = layers[0]
        x = first._check_input(x, ndim=2, features=first.in_features, like=first.weight.data)
        if loss.labels:
            target = loss._check_labels(x, target)  # x stands for pred: same rows and device
        else:
            target = loss._check_input(target, name="target", like=x, like_name="pred")
        value = loss._buffer("fused loss", (), x)
        F.dense_chain_step(x, self._chain_specs(0, len(layers)), name, target, **self._chain_grads(layers),
                           loss_out=value, blocked=True)
        for layer in layers:
            layer._saved = None
        loss._saved = None
        self._chained = False
        return float(value) if sync else value

    def backward(self, dout, *, need_input_grad: bool = True):
        """Every layer's backward in reverse order; returns d loss / d input, or None when
        ``need_input_grad=False``. Parameter gradients accumulate (``+=``)."""
        first = 0 if need_input_grad else self._first_trainable
        if first is None:
            return None
        starts = {end - 1: start for start, end in self._runs.items()} if self._chained else {}
        step = len(self._plan) - 1
        while step >= first:
            if step in starts:
                start = starts[step]
                dout = self._chain_backward(start, step + 1, dout, need_input_grad or start > first)
                step = start - 1
                continue
            layer, fusion = self._plan[step][0], self._backward_fusion[step]
            need = need_input_grad or step > first
            dout = layer.backward(dout, need_input_grad=need) if fusion is None else \
                layer._backward(dout, need_input_grad=need, **fusion)
            step -= 1
        return dout


def _run_dense(layer: Dense, x, training, *, activation: str, alpha: float):
    return layer._forward(x, training, activation, alpha)


def _run_batchnorm_relu(layer: BatchNorm, x, training):
    return layer._forward(x, training, True)


class Residual(Module):
    """Skip connection: y = block(x) + x, or y = block(x) + x P when the block changes the width
    (P a bias-free ``Dense(in, out)`` projection, ``projection_init`` "xavier" by default, drawn
    from ``rng``/``seed``; He et al. 2016). The widths are read from the block's layers.
    ``backward`` adds the gradients of both paths."""

    def __init__(self, block: Module, *, projection_init="xavier", rng=None, seed=None):
        super().__init__()
        if not isinstance(block, Module):
            raise TypeError(f"Residual: block must be a fastnn.nn.Module, got {type(block).__name__}")
        self.block = block
        self.in_features, self.out_features = block.in_features, block.out_features
        if self.in_features is not None and self.out_features is not None and self.in_features != self.out_features:
            self.projection = Dense(self.in_features, self.out_features, bias=False, init=projection_init,
                                    dtype=block.dtype or "float32", rng=rng, seed=seed)
        else:
            self.projection = None
        self._set_reuse(False, False)
        self._assign_names()

    def _set_reuse(self, out: bool, dx: bool) -> None:
        super()._set_reuse(out, dx)
        for child in self.children():
            child._set_reuse(True, True)

    def forward(self, x, training: bool = True):
        """y = block(x) + skip(x)."""
        x = self._check_input(x)
        h = self.block.forward(x, training)
        skip = x if self.projection is None else self.projection.forward(x, training)
        if tuple(h.shape) != tuple(skip.shape):
            raise ValueError(f"{self._where()}: the block maps shape {tuple(x.shape)} to {tuple(h.shape)}, which "
                             f"cannot be added to the skip path's {tuple(skip.shape)}")
        y = self._output(h.shape, h)
        B.array_module(h).add(h, skip, out=y)
        self._saved = y
        return y

    def backward(self, dout, *, need_input_grad: bool = True):
        """dx = block.backward(dout) + (dout, or the projection's backward)."""
        y = self._saved_state()
        dout = self._check_grad(dout, y)
        through_block = self.block.backward(dout, need_input_grad=need_input_grad)
        skip = dout if self.projection is None else self.projection.backward(dout, need_input_grad=need_input_grad)
        if not need_input_grad:
            return None
        dx = self._input_grad(through_block.shape, through_block)
        B.array_module(dx).add(through_block, skip, out=dx)
        return dx
