"""``Dense``: the fully connected layer, y = act(x @ W + b)."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .. import _backend as B
from .. import functional as F
from . import init as initializers
from .module import Module, float_dtype, positive_int
from .parameter import Parameter

__all__ = ["Dense", "DenseSaved", "Bf16Link"]


class DenseSaved(NamedTuple):
    """What a ``Dense`` forward keeps for its backward (``layer._saved``): the layer's input
    ``x`` (N, in_features), its output ``y`` = act(z) (N, out_features), ``aux`` the
    pre-activation z = x @ W + b where ``functional.dense_needs_aux(activation)`` (else None),
    and the ``activation`` and slope ``alpha`` the forward applied: the layer's own, or those
    of the activation layer fused into it; where the GEMMs run in bf16 on the CPU
    (``functional.dense_bf16``), ``x16`` and ``W16``, the bf16 operands the forward used and the
    backward reuses (else None). Written by ``Dense`` and by the chains of
    ``fastnn.nn.fusion``; read by name."""

    x: Any
    y: Any
    aux: Any
    activation: str
    alpha: float
    x16: Any = None
    W16: Any = None


class Bf16Link:
    """Hands the bf16 copy of one Dense layer's output to the Dense layer it feeds, in a
    training forward where the GEMMs run in bf16 (``functional.dense_bf16``): the lower layer
    writes it in its bias-and-activation pass (``dense_forward(y16=...)``), the upper one takes
    it as its ``x16`` instead of rounding its input again. ``fastnn.nn.fusion`` links the
    consecutive Dense steps of a Sequential."""

    __slots__ = ("y", "y16")

    def __init__(self):
        self.y = self.y16 = None

    def put(self, y, y16) -> None:
        self.y, self.y16 = y, y16

    def take(self, x):
        """The bf16 copy of ``x`` when ``x`` is the array the lower layer put, else None."""
        return self.y16 if x is self.y else None


def activation_name(activation, where: str) -> str:
    """The ``functional.ACTIVATIONS`` name for ``activation`` (None is "identity")."""
    name = "identity" if activation is None else activation
    if name not in F.ACTIVATIONS:
        raise ValueError(f"{where}: activation must be None or one of {sorted(F.ACTIVATIONS)}, got {activation!r}")
    return name


class Dense(Module):
    """Fully connected layer: y = act(x @ W + b).

    x (N, in_features) -> y (N, out_features); ``weight`` W has shape (in_features,
    out_features) (the transpose of ``torch.nn.Linear.weight``), ``bias`` b (out_features,).

    - ``activation``: None (identity) or one of ``functional.ACTIVATIONS`` ("relu",
      "leaky_relu" with slope ``alpha``, "sigmoid", "tanh", "gelu", "gelu_tanh"), applied in
      the same kernel as the GEMM (``functional.dense_forward``).
    - ``init``: a name of ``init.INITIALIZERS`` ("he", the default, "he_uniform", "xavier",
      "xavier_uniform", "orthogonal", "normal", "uniform", and the aliases "kaiming",
      "glorot"...), "zeros", or a callable ``f(W, rng=generator)`` filling W in place. The bias
      starts at zero.
    - ``dtype``: float32 (default) or float64; ``rng``/``seed`` make the initialization
      reproducible.

    (torch.nn.Linear followed by the activation)
    """

    def __init__(self, in_features: int, out_features: int, activation: str | None = None, *,
                 init="he", bias: bool = True, alpha: float = 0.01, dtype=np.float32, rng=None, seed=None):
        super().__init__()
        self.in_features = positive_int(in_features, "Dense: in_features")
        self.out_features = positive_int(out_features, "Dense: out_features")
        self.activation = activation_name(activation, "Dense")
        self.alpha = B.check_scalar(alpha, "Dense: alpha")
        self.init = init
        dtype = float_dtype(dtype, "Dense: dtype")
        weight = np.empty((self.in_features, self.out_features), dtype)
        if init == "zeros":
            initializers.zeros(weight)
        elif callable(init):
            init(weight, rng=initializers.generator(rng, seed))
        elif init in initializers.INITIALIZERS:
            fill, options = initializers.INITIALIZERS[init]
            fill(weight, rng=rng, seed=seed, **options)
        else:
            raise ValueError(f"Dense: init must be a callable or one of "
                             f"{sorted([*initializers.INITIALIZERS, 'zeros'])}, got {init!r}")
        self.weight = Parameter(weight, "weight")
        self.bias = Parameter(np.zeros(self.out_features, dtype), "bias") if bias else None

    def extra_repr(self) -> str:
        text = f"{self.in_features}, {self.out_features}"
        if self.activation != "identity":
            text += f", activation={self.activation!r}"
            if self.activation == "leaky_relu":
                text += f", alpha={self.alpha}"
        return text + ("" if self.bias is not None else ", bias=False")

    def forward(self, x, training: bool = False):
        """y (N, out_features) = act(x @ W + b) for x (N, in_features); the same in training
        and inference, but only a training forward keeps x (and z) for the backward."""
        return self._forward(x, training, self.activation, self.alpha)

    def _forward(self, x, training, activation: str, alpha: float, *, below: Bf16Link | None = None,
                 above: Bf16Link | None = None):
        """The forward with ``activation`` in the GEMM epilogue (Sequential passes the one of
        the activation layer that follows). In a training forward with bf16 GEMMs, W and x are
        rounded once for the forward and the backward alike, x taken from ``below`` when the
        Dense under this one wrote it, and bf16(y) written for the Dense above into ``above``."""
        weight = self.weight.data
        x = self._check_input(x, ndim=2, features=self.in_features, like=weight)
        shape = (x.shape[0], self.out_features)
        aux = self._buffer("aux", shape, x, training) if F.dense_needs_aux(activation) else None
        bias = None if self.bias is None else self.bias.data
        x16 = W16 = y16 = None
        if training and F.dense_bf16(x):
            W16 = F.to_bf16(weight, out=self._buffer("W16", weight.shape, x, True, np.uint16))
            x16 = below.take(x) if below is not None else None
            if x16 is None:
                x16 = F.to_bf16(x, out=self._buffer("x16", x.shape, x, True, np.uint16))
            y16 = self._buffer("y16", shape, x, True, np.uint16) if above is not None else None
        y = F.dense_forward(x, weight, bias, activation, alpha=alpha, out=self._output(shape, x, training), aux=aux,
                            x16=x16, W16=W16, y16=y16)
        if training and above is not None:
            above.put(y, y16)
        if training:
            self._saved = DenseSaved(x, y, aux, activation, alpha, x16, W16)
        return y

    def backward(self, dout, *, need_input_grad: bool = True):
        """dz = dout * act'(.); weight.grad += x^T dz, bias.grad += sum_n dz; returns
        dx = dz W^T (N, in_features), or None when ``need_input_grad=False`` (then dx is
        not computed at all)."""
        return self._backward(dout, need_input_grad=need_input_grad)

    def _backward(self, dout, *, need_input_grad: bool = True, done: bool = False, below: "Dense | None" = None):
        """The backward, fused across layers by ``Sequential``: ``done`` means dout already is
        d loss / d z (the layer above applied this layer's activation derivative and added its
        bias gradient); ``below``, the Dense whose output is this layer's input, gets the same
        done here, in the pass over dx (``functional.dense_backward``'s ``x_activation``)."""
        saved = self._saved_state()
        x = saved.x
        dout = self._check_grad(dout, saved.y)
        dx = self._input_grad(x.shape, x) if need_input_grad else None
        fused = {}
        if below is not None and need_input_grad:
            under = below._saved_state()
            fused = dict(x_activation=under.activation, x_aux=under.aux, x_alpha=under.alpha,
                         x_db=None if below.bias is None else below.bias.grad)
        return F.dense_backward(dout, x, self.weight.data, activation="identity" if done else saved.activation,
                                y=saved.y, aux=saved.aux, alpha=saved.alpha, dW=self.weight.grad,
                                db=None if done or self.bias is None else self.bias.grad,
                                need_dx=need_input_grad, dx=dx, x16=saved.x16, W16=saved.W16, **fused)
