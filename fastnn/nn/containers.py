"""Containers: ``Sequential`` (a chain of layers, fused where it can) and ``Residual``."""

from __future__ import annotations

from .. import _backend as B
from .. import functional as F
from .dense import Dense
from .fusion import FusionPlan
from .losses import Loss
from .module import Module

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
    named by position: ``"0.weight"``, ``"2.alpha"``. The layers are fixed at construction,
    where what runs fused is planned (``fastnn.nn.fusion``); a layer may appear only once.

    ``grads_ready_hook``: None, or a function that ``backward`` calls with a list of
    parameters as soon as their gradients are complete (after each step, or each chain), so
    that data-parallel training can reduce them while the layers below still run
    (``fastnn.distributed.GradientReducer`` sets it). (torch.nn.Sequential)
    """

    grads_ready_hook = None

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
        self._plan = FusionPlan(list(layers), self.fuse)
        self._set_reuse(False, False)
        self._assign_names()

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
        target = self._plan.fused_into.get(int(name))
        return "" if target is None else f"runs fused into ({target})"

    def _set_reuse(self, out: bool, dx: bool) -> None:
        super()._set_reuse(out, dx)
        last = len(self._plan.steps) - 1
        for index, step in enumerate(self._plan.steps):
            step.layer._set_reuse(out if index == last else True, dx if index == 0 else True)

    def forward(self, x, training: bool = False):
        """Every layer in order (fused steps as one); returns the last output. Inference by
        default; ``training=True`` for batch statistics, dropout and a backward."""
        return self._plan.forward(x, training)

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
        if not isinstance(loss, Loss):
            raise TypeError(f"Sequential.fused_step: loss must be a fastnn.nn loss, got {type(loss).__name__}")
        self._training_use.enter(self, "fused_step")
        try:
            if not self._plan.fuses_step(x, loss):
                value = loss.forward(self.forward(x, training=True), target, sync=sync)
                self.backward(loss.backward(), need_input_grad=False)
                return value
            value = self._plan.fused_step(x, target, loss)
        finally:
            self._training_use.exit()
        return F.loss_item(value) if sync else value

    def backward(self, dout, *, need_input_grad: bool = True):
        """Every layer's backward in reverse order; returns d loss / d input, or None when
        ``need_input_grad=False``. Parameter gradients accumulate (``+=``)."""
        return self._plan.backward(dout, need_input_grad, self.grads_ready_hook)


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

    def forward(self, x, training: bool = False):
        """y = block(x) + skip(x)."""
        x = self._check_input(x)
        h = self.block.forward(x, training)
        skip = x if self.projection is None else self.projection.forward(x, training)
        if tuple(h.shape) != tuple(skip.shape):
            raise ValueError(f"{self._where()}: the block maps shape {tuple(x.shape)} to {tuple(h.shape)}, which "
                             f"cannot be added to the skip path's {tuple(skip.shape)}")
        y = self._output(h.shape, h, training)
        B.array_module(h).add(h, skip, out=y)
        if training:
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
