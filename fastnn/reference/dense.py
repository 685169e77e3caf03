"""Dense (fully connected) layers in plain xp code.

Shapes: x (N, in), W (in, out), b (out,) or None; y and z (N, out). W is stored
(in_features, out_features), so the layer is y = act(x @ W + b) with no transpose.
"""

from .activations import activation_backward, activation_forward

__all__ = ["dense_forward", "dense_backward"]


def dense_forward(x, W, b=None, activation="identity", alpha=0.01):
    """z = x @ W + b, y = act(z). Returns ``(y, z)``: the output and the pre-activation."""
    z = x @ W
    if b is not None:
        z = z + b
    return activation_forward(z, activation, alpha), z


def dense_backward(dy, x, W, activation="identity", saved=None, alpha=0.01):
    """Gradients of y = act(x @ W + b) given dy = dL/dy. ``saved`` is what the activation's
    backward reads: y for relu, sigmoid and tanh, z for the others, unused for identity.
    Returns ``(dx, dW, db)`` = (dz @ W.T, x.T @ dz, dz.sum(0)) with dz = dy * act'(.)."""
    dz = dy if activation == "identity" else activation_backward(dy, saved, activation, alpha)
    return dz @ W.T, x.T @ dz, dz.sum(axis=0)
