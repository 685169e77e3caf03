"""Layers, losses, initializers (``init``, and the data-driven ``lsuv``) and containers
(``Sequential`` plans what it runs fused with ``fusion``).

Every layer has ``forward(x, training=False)`` (also ``layer(x)``) and ``backward(dout)``,
which returns d loss / d input and accumulates the parameter gradients into
``Parameter.grad`` (``+=``). Inference is the default: ``model(x)`` uses BatchNorm's running
statistics and no dropout, and keeps nothing; a training step asks for training explicitly.
Losses return a float from ``forward(pred, target)`` and start the backward with
``backward()``::

    model = nn.Sequential(nn.Dense(784, 256), nn.BatchNorm(256), nn.ReLU(), nn.Dropout(0.5),
                          nn.Dense(256, 10))
    loss_fn = nn.SoftmaxCrossEntropy()
    loss = loss_fn(model(x, training=True), labels)
    model.backward(loss_fn.backward(), need_input_grad=False)
    predictions = model(x).argmax(axis=1)      # inference

See ``fastnn.nn.module`` for how buffers are reused between calls, and which calls may run
from several threads at once; ``fastnn.nn.registry`` for architectures as data (what model
files store; ``register_layer`` for custom layers).
"""

from . import init
from .activations import GELU, LeakyReLU, PReLU, ReLU, Sigmoid, Softmax, Tanh
from .containers import Residual, Sequential
from .dense import Dense
from .dropout import Dropout
from .losses import BCEWithLogits, Hinge, L1, Loss, MSE, SoftmaxCrossEntropy
from .lsuv_init import lsuv
from .module import ConcurrentTrainingError, LoadResult, Module
from .normalization import BatchNorm
from .parameter import Parameter
from .perceptron import Perceptron
from .registry import register_layer

__all__ = [
    "Parameter", "Module", "LoadResult", "ConcurrentTrainingError", "init", "lsuv",
    "Dense", "ReLU", "LeakyReLU", "PReLU", "Sigmoid", "Tanh", "GELU", "Softmax", "BatchNorm", "Dropout",
    "Residual", "Sequential",
    "Loss", "SoftmaxCrossEntropy", "BCEWithLogits", "MSE", "Hinge", "L1",
    "Perceptron", "register_layer",
]
