"""Dense (fully connected) layers, forward and backward, with the bias and the activation fused
into the GEMM's output pass, validated and dispatched to the reference, native CPU or CUDA path.

Shapes: x (N, in), W (in, out) (``in_features`` rows: ``y = x @ W + b``, no transpose),
b (out,) or None, y / aux / dy (N, out), dx (N, in). All float32 or float64, one dtype and one
device, C-contiguous.

=========== =========================================================================
path        how
=========== =========================================================================
cpu         ``numpy.matmul`` (NumPy's BLAS, multi-threaded) writes x @ W straight into
            y (or aux); one C++ pass adds b and applies the activation. Backward: one
            C++ pass writes dz = dy * act'(.) into a reused scratch array and adds its
            column sums into db; then dW += x.T @ dz (a GEMM into scratch, then one add)
            and dx = dz @ W.T, both BLAS. The passes run on the calling thread, so
            they never compete with the BLAS threads (see ``csrc/cpu/dense.cpp``).
            With ``set_matmul_precision("medium")`` where ``fastnn._bf16`` found oneDNN
            and the CPU has AVX512_BF16, the GEMMs are oneDNN's bf16 GEMM (float32
            sums) instead: x and W are rounded to bf16 by one parallel pass each, the
            dz pass writes dz in bf16 only, and dW accumulates in the GEMM (beta = 1).
cpu chain   :func:`dense_chain_forward` / :func:`dense_chain_backward` (several layers,
            narrow): one C++ kernel; each OpenMP thread carries its row blocks through
            every layer while they are in its cache, calling NumPy's OpenBLAS on one
            thread (``csrc/cpu/dense_chain.cpp``, ``fastnn/_blas.py``);
            :func:`dense_chain_blocked` says when. In "medium", oneDNN's bf16 GEMM on
            each thread, its operands written by the passes the chain makes anyway.
cuda        cuBLASLt with the bias and activation in the GEMM's epilogue where one
            exists (BIAS, RELU_BIAS, GELU_AUX_BIAS for gelu_tanh), a fused pass
            otherwise; dW accumulates in the GEMM (beta = 1); db from the BGRADA
            epilogue or the fused dz pass. See ``csrc/dense.h``.
reference   ``fastnn.reference.dense`` (plain xp code).
=========== =========================================================================

What the backward reads (:func:`dense_needs_aux`): relu, sigmoid and tanh take their
derivative from the output y; leaky_relu, gelu and gelu_tanh need the pre-activation
z = x @ W + b, which the forward writes into ``aux``.

Fusing across layers: ``dense_backward(..., x_activation=, x_aux=, x_db=)`` returns, instead of
dL/dx, the gradient with respect to the pre-activation of the layer whose (activated) output x
is, and adds that layer's bias gradient into ``x_db``. Its own backward then only needs the
GEMMs: call it with ``activation="identity"`` and ``db=None``. On the GPU this puts gelu_tanh's
derivative into the dx GEMM's epilogue (DGELU_BGRAD).
"""

from __future__ import annotations

import math
import threading

import numpy as np

from .. import _backend as B
from .. import reference as ref
from .activations import _activation_code

__all__ = [
    "dense_forward", "dense_backward", "dense_needs_aux", "dense_chain_forward", "dense_chain_backward",
    "dense_chain_blocked", "CHAIN_MAX_WIDTH", "dense_chain_step", "CHAIN_LOSSES",
    "set_matmul_precision", "get_matmul_precision", "PRECISIONS", "dense_bf16", "to_bf16",
]

# Codes shared with csrc/dense.h (enum Precision).
PRECISIONS = {"highest": 0, "high": 1, "medium": 2}
# Activations whose backward needs the pre-activation z (the others read y, or nothing).
_AUX_ACTIVATIONS = frozenset({"leaky_relu", "gelu", "gelu_tanh"})

_precision = "highest"


def set_matmul_precision(precision: str) -> None:
    """Precision of float32 GEMMs, like ``torch.set_float32_matmul_precision``:

    - ``"highest"`` (default): strict float32 (CUBLAS_COMPUTE_32F on the GPU).
    - ``"high"``: on the GPU, TF32 tensor cores, inputs rounded to 10 mantissa bits, float32
      accumulation; error per output within about 2^-9 * (|x| @ |W|). The CPU computes it in
      float32.
    - ``"medium"``: GEMM inputs rounded to bfloat16 (8 significant bits, round to nearest
      even, relative error up to 2^-8 each), float32 accumulation and float32 outputs; error
      per output within 2^-7 * (|x| @ |W|) (each product's two roundings) plus the float32
      sums' k * 2^-24 * (|x| @ |W|). On the
      GPU through cuBLASLt; on the CPU through oneDNN's bf16 GEMM (``fastnn[bf16]``) where
      the CPU has AVX512_BF16, else in float32: ``backend_info()["cpu_medium_precision"]``
      says which, and why (``fastnn._bf16``).

    float64 is float64 everywhere."""
    global _precision
    if precision not in PRECISIONS:
        raise ValueError(f"matmul precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    _precision = precision


def get_matmul_precision() -> str:
    """The float32 GEMM precision set by :func:`set_matmul_precision` (``"highest"`` at start)."""
    return _precision


def dense_needs_aux(activation: str) -> bool:
    """Whether ``activation``'s backward needs the pre-activation z = x @ W + b (``aux``):
    True for leaky_relu, gelu and gelu_tanh; False for identity, relu, sigmoid and tanh."""
    _activation_code(activation)
    return activation in _AUX_ACTIVATIONS


# ---------------------------------------------------------------------------------------------
# Scratch memory on the CPU, reused across calls, per thread (the GPU's is
# ``_backend.workspace_pointer``, per device and stream).

_cpu_scratch = threading.local()


def _scratch(like, name: str, shape, dtype=None):
    """A reused C-contiguous NumPy array of ``dtype`` (default ``like``'s dtype), valid until
    the next call with the same name on this thread."""
    dtype = np.dtype(like.dtype if dtype is None else dtype)
    cache = _cpu_scratch.__dict__.setdefault("arrays", {})
    size = math.prod(shape)
    key = (name, dtype)
    buf = cache.get(key)
    if buf is None or buf.size < size:
        buf = cache[key] = np.empty(size, dtype)
    return buf[:size].reshape(shape)


def _bf16_copy(a, name: str):
    """float32 ``a`` rounded to bfloat16 (as uint16 bits) in a reused scratch array."""
    out = _scratch(a, name, a.shape, np.uint16)
    B._C.cpu.to_bf16(B.pointer(a), B.pointer(out), a.size)
    return out


def dense_bf16(x) -> bool:
    """Whether the dense ops on ``x`` run their GEMMs in bf16 on the CPU (precision "medium",
    float32 NumPy data, oneDNN's bf16 GEMM available): where the ``x16``/``W16``/``y16``
    arguments of :func:`dense_forward` and :func:`dense_backward` are used."""
    return isinstance(x, np.ndarray) and _cpu_bf16(x) and B.path_of(x) == "cpu"


def to_bf16(a, out=None):
    """float32 ``a`` rounded to bfloat16, nearest even (the bits as a uint16 array of ``a``'s
    shape, written into ``out`` when given): the operand copies :func:`dense_forward` takes.
    CPU arrays only."""
    a = B.check_float(a, "a", dtype=np.float32)
    if not isinstance(a, np.ndarray):
        raise TypeError("to_bf16: a must be a NumPy array (bf16 GEMMs run on the CPU)")
    out = np.empty(a.shape, np.uint16) if out is None else _check_bf16(out, "out", a.shape, writable=True)
    B._C.cpu.to_bf16(B.pointer(a), B.pointer(out), a.size)
    return out


def _check_bf16(a, name: str, shape, writable: bool = False):
    """A C-contiguous uint16 NumPy array of ``shape``: a bf16 operand copy."""
    if not isinstance(a, np.ndarray) or a.dtype != np.uint16:
        raise TypeError(f"{name}: expected a uint16 NumPy array (bf16 bits, see to_bf16), got "
                        f"{getattr(a, 'dtype', type(a).__name__)}")
    if tuple(a.shape) != tuple(shape) or not a.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array of shape {tuple(shape)}, got shape {tuple(a.shape)}")
    if writable and not a.flags.writeable:
        raise ValueError(f"{name} is read-only but fastnn writes into it")
    return a


def _cpu_bf16(x) -> bool:
    """Whether the CPU GEMMs on float32 ``x`` run in bf16: precision "medium" and oneDNN's
    bf16 GEMM available (``fastnn._bf16``)."""
    from .. import _bf16

    return _precision == "medium" and np.dtype(x.dtype) == np.float32 and _bf16.available()


def _gemm_bf16(a16, b16, c, *, trans_a: bool = False, trans_b: bool = False, accumulate: bool = False):
    """c (=, or += with ``accumulate``) op(a16) @ op(b16), bf16 operands and float32 sums
    (oneDNN), all C-contiguous."""
    m, n = c.shape
    k = a16.shape[0] if trans_a else a16.shape[1]
    B._C.cpu.gemm_bf16(trans_a, trans_b, m, n, k, 1.0, B.pointer(a16), a16.shape[1], B.pointer(b16),
                       b16.shape[1], 1.0 if accumulate else 0.0, B.pointer(c), n)


# ---------------------------------------------------------------------------------------------
# Validation.


def _check_weights(x, W, b, x_name: str = "x"):
    """W (in, out) and b (out,) or None, validated against the validated x (N, in)."""
    W = B.check_float(W, "W", like=(x_name, x), ndim=2)
    if W.shape[0] != x.shape[1]:
        raise ValueError(
            f"dense: W has shape {tuple(W.shape)} but {x_name} has shape {tuple(x.shape)}: W must be "
            f"(in_features, out_features) with in_features = {x_name}.shape[1] = {x.shape[1]}"
        )
    if b is not None:
        b = B.check_float(b, "b", like=(x_name, x), shape=(W.shape[1],))
    return W, b


def _optional_ptr(a) -> int:
    return 0 if a is None else B.pointer(a)


def _native_path(x, W) -> str:
    """The path for a layer: reference for empty sizes, where the kernels have nothing to do."""
    path = B.path_of(x)
    return "reference" if x.size == 0 or W.size == 0 else path


def _precision_code(x) -> int:
    return PRECISIONS[_precision] if np.dtype(x.dtype) == np.float32 else PRECISIONS["highest"]


# ---------------------------------------------------------------------------------------------
# The layer.


def dense_forward(x, W, b=None, activation: str = "identity", *, alpha: float = 0.01, out=None,
                  aux=None, x16=None, W16=None, y16=None):
    """Dense layer: y = act(x @ W + b) (``=``).

    x (N, in), W (in, out), b (out,) or None; ``activation`` is one of
    :data:`~fastnn.functional.ACTIVATIONS` (``alpha``: leaky_relu's slope). When
    :func:`dense_needs_aux` (leaky_relu, gelu, gelu_tanh), ``aux`` must be an (N, out) array and
    receives the pre-activation z = x @ W + b for the backward; otherwise ``aux`` is ignored.
    ``out`` (N, out) receives y, else a new array. Neither may share memory with x, W or b.

    Where the GEMM runs in bf16 on the CPU (:func:`dense_bf16`; elsewhere these are ignored):
    ``x16`` / ``W16`` are bf16 copies of x and W the caller already holds (:func:`to_bf16`;
    without them they are rounded here), and ``y16`` (N, out, uint16) receives bf16(y), written
    by the pass that adds the bias and applies the activation: the next layer's operand,
    without a pass of its own.
    Returns y. (torch: ``act(torch.nn.functional.linear(x, W.T, b))``)"""
    code = _activation_code(activation)
    alpha = B.check_scalar(alpha, "alpha")
    x = B.check_float(x, "x", ndim=2)
    W, b = _check_weights(x, W, b)
    n, in_features = x.shape
    out_features = W.shape[1]
    shape = (n, out_features)
    needs_aux = activation in _AUX_ACTIVATIONS
    if not needs_aux:
        aux = None
    elif aux is None:
        raise ValueError(f"dense_forward: activation {activation!r} needs aux, an {shape} array for the "
                         "pre-activation its backward reads (see dense_needs_aux)")
    else:
        aux = B.check_float(aux, "aux", like=("x", x), shape=shape, writable=True)
    y = B.output(out, x, "out", shape)
    B.check_disjoint([("out", y)] + ([("aux", aux)] if needs_aux else []),
                    [("x", x), ("W", W), ("b", b), ("aux", aux)])

    path = _native_path(x, W)
    if path == "reference":
        y[...], z = ref.dense_forward(x, W, b, activation, alpha)
        if needs_aux:
            aux[...] = z
        return y
    if path == "cpu":
        z = aux if needs_aux else y
        bf16 = _cpu_bf16(x)
        if bf16:
            x16 = _bf16_copy(x, "x16") if x16 is None else _check_bf16(x16, "x16", x.shape)
            W16 = _bf16_copy(W, "W16") if W16 is None else _check_bf16(W16, "W16", W.shape)
            y16 = None if y16 is None else _check_bf16(y16, "y16", shape, writable=True)
            _gemm_bf16(x16, W16, z)
        else:
            np.matmul(x, W, out=z)
            y16 = None
        if b is not None or activation != "identity":
            # aux already holds x @ W; it is rewritten only when b is added.
            aux_ptr = B.pointer(aux) if needs_aux and b is not None else 0
            B.launch(path, "bias_activation_forward", x, code, B.pointer(z), _optional_ptr(b),
                     B.pointer(y), aux_ptr, _optional_ptr(y16), n, out_features, alpha)
        elif y16 is not None:  # no pass over y to ride on
            B._C.cpu.to_bf16(B.pointer(y), B.pointer(y16), y.size)
        return y
    precision = _precision_code(x)
    workspace = B.workspace_pointer(x, B._C.cuda.dense_forward_workspace(
        n, in_features, out_features, precision, x.dtype.itemsize))
    B.launch(path, "dense_forward", x, code, B.pointer(x), B.pointer(W), _optional_ptr(b), B.pointer(y),
             _optional_ptr(aux), n, in_features, out_features, alpha, precision, workspace)
    return y


def _saved_for(activation: str, y, aux, shape, like, prefix: str = ""):
    """What the activation's backward reads (y, or aux = z), validated; None for identity."""
    if activation == "identity":
        return None
    name, saved = (f"{prefix}aux", aux) if activation in _AUX_ACTIVATIONS else (f"{prefix}y", y)
    if saved is None:
        what = "pre-activation" if name.endswith("aux") else "output"
        raise ValueError(f"dense_backward: activation {activation!r} needs {name}, the forward's {what} "
                         f"of shape {shape}")
    return B.check_float(saved, name, like=("dy", like), shape=shape)


def dense_backward(dy, x, W, *, activation: str = "identity", y=None, aux=None, alpha: float = 0.01,
                   dW, db=None, need_dx: bool = True, dx=None, x_activation: str = "identity",
                   x_aux=None, x_alpha: float = 0.01, x_db=None, x16=None, W16=None):
    """Gradients of y = act(x @ W + b) given dy = dL/dy (N, out).

    - dz = dy * act'(.), read from ``y`` for relu, sigmoid and tanh and from ``aux`` (the
      forward's z) for leaky_relu, gelu and gelu_tanh; nothing for identity;
    - ``dW`` (in, out) += x.T @ dz and ``db`` (out,) += dz.sum(0): parameter gradients
      accumulate (``db=None``: no bias);
    - dx = dz @ W.T (N, in) is written (``=``) into ``dx`` or a new array and returned, unless
      ``need_dx=False`` (a network's first layer), which returns None.

    Fused with the layer below (x = x_act(u), u that layer's pre-activation): with
    ``x_activation`` not "identity", the returned gradient is dL/du = (dz @ W.T) * x_act'(.),
    read from x itself for relu, sigmoid and tanh and from ``x_aux`` (= u) for the others
    (``x_alpha``: its leaky_relu slope). With ``x_db``, that layer's bias gradient accumulates:
    x_db += (returned gradient).sum(0). No output may share memory with an input.

    Where the GEMMs run in bf16 on the CPU (:func:`dense_bf16`), ``x16`` / ``W16`` are the bf16
    copies of x and W the forward used (rounded here when not given): the backward then rounds
    only dz, in the pass that computes it.
    (torch: what autograd computes for ``act(torch.nn.functional.linear(x, W.T, b))``)"""
    code = _activation_code(activation)
    x_code = _activation_code(x_activation)
    alpha = B.check_scalar(alpha, "alpha")
    x_alpha = B.check_scalar(x_alpha, "x_alpha")
    dy = B.check_float(dy, "dy", ndim=2)
    x = B.check_float(x, "x", like=("dy", dy), ndim=2)
    W, _ = _check_weights(x, W, None)
    n, in_features = x.shape
    out_features = W.shape[1]
    if tuple(dy.shape) != (n, out_features):
        raise ValueError(f"dy: expected shape {(n, out_features)} (x has shape {tuple(x.shape)}, W has shape "
                         f"{tuple(W.shape)}), got {tuple(dy.shape)}")
    saved = _saved_for(activation, y, aux, (n, out_features), dy)
    dW = B.check_float(dW, "dW", like=("W", W), shape=W.shape, writable=True)
    if db is not None:
        db = B.check_float(db, "db", like=("W", W), shape=(out_features,), writable=True)
    if not need_dx and (x_activation != "identity" or x_db is not None):
        raise ValueError("dense_backward: x_activation and x_db act on dx; they need need_dx=True")
    x_saved = x if x_activation in ("relu", "sigmoid", "tanh") else \
        _saved_for(x_activation, None, x_aux, (n, in_features), dy, prefix="x_")
    if x_db is not None:
        x_db = B.check_float(x_db, "x_db", like=("dy", dy), shape=(in_features,), writable=True)
    dx = B.output(dx, dy, "dx", (n, in_features)) if need_dx else None
    inputs = [("dy", dy), ("x", x), ("W", W), ("y" if activation not in _AUX_ACTIVATIONS else "aux", saved),
              ("x_aux", x_saved)]
    outputs = [(name, a) for name, a in (("dW", dW), ("db", db), ("dx", dx), ("x_db", x_db)) if a is not None]
    B.check_disjoint(outputs, inputs + outputs)

    path = _native_path(x, W)
    if path == "reference":
        grad_x, grad_W, grad_b = ref.dense_backward(dy, x, W, activation, saved, alpha)
        dW += grad_W
        if db is not None:
            db += grad_b
        if dx is None:
            return None
        if x_activation != "identity":
            grad_x = ref.activation_backward(grad_x, x_saved, x_activation, x_alpha)
        if x_db is not None:
            x_db += grad_x.sum(axis=0)
        dx[...] = grad_x
        return dx
    if path == "cpu":
        if _cpu_bf16(dy):
            # One pass writes dz in bf16 (and adds db); the GEMMs read it, dW accumulates in place.
            dz16 = _scratch(dy, "dz16", (n, out_features), np.uint16)
            B.launch(path, "bias_activation_backward", dy, code, B.pointer(dy), _optional_ptr(saved), 0,
                     B.pointer(dz16), _optional_ptr(db), n, out_features, alpha)
            x16 = _bf16_copy(x, "x16") if x16 is None else _check_bf16(x16, "x16", x.shape)
            _gemm_bf16(x16, dz16, dW, trans_a=True, accumulate=True)
            if dx is not None:
                W16 = _bf16_copy(W, "W16") if W16 is None else _check_bf16(W16, "W16", W.shape)
                _gemm_bf16(dz16, W16, dx, trans_b=True)
        else:
            if activation == "identity":
                dz = dy
                if db is not None:
                    B.launch(path, "bias_activation_backward", dy, code, B.pointer(dy), 0, 0, 0, B.pointer(db),
                             n, out_features, alpha)
            else:
                dz = _scratch(dy, "dz", (n, out_features))
                B.launch(path, "bias_activation_backward", dy, code, B.pointer(dy), B.pointer(saved),
                         B.pointer(dz), 0, _optional_ptr(db), n, out_features, alpha)
            grad_W = _scratch(dy, "dW", W.shape)
            np.matmul(x.T, dz, out=grad_W)
            np.add(dW, grad_W, out=dW)
            if dx is not None:
                np.matmul(dz, W.T, out=dx)
        if dx is None:
            return None
        if x_activation != "identity" or x_db is not None:
            B.launch(path, "bias_activation_backward", dy, x_code, B.pointer(dx), _optional_ptr(x_saved),
                     0 if x_activation == "identity" else B.pointer(dx), 0, _optional_ptr(x_db), n,
                     in_features, x_alpha)
        return dx
    precision = _precision_code(dy)
    workspace = B.workspace_pointer(dy, B._C.cuda.dense_backward_workspace(
        code, n, in_features, out_features, precision, dy.dtype.itemsize))
    B.launch(path, "dense_backward", dy, code, B.pointer(dy), B.pointer(x), B.pointer(W),
             _optional_ptr(saved), B.pointer(dW), _optional_ptr(db), _optional_ptr(dx), x_code,
             _optional_ptr(x_saved), _optional_ptr(x_db), n, in_features, out_features, alpha, x_alpha,
             precision, workspace)
    return dx


# ---------------------------------------------------------------------------------------------
# Several layers in a row.

# The widest layer for which dense_chain_* picks the row-blocked CPU kernel by itself. Measured
# on the 2-core development machine (bench/mlp.py): a 64-64-64-64-16 step at batch 16384 is
# faster blocked; 784-512-512-10 at batch 1024 is GEMM-bound at the machine's peak either way.
CHAIN_MAX_WIDTH = 256


def _chain_layers(layers):
    """[(W, b, activation, alpha)] from (W, b, activation[, alpha]) tuples."""
    out = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, (tuple, list)) or len(layer) not in (3, 4):
            raise TypeError(f"dense chain: layer {i} must be a tuple (W, b, activation[, alpha]), got {layer!r:.80}")
        W, b, activation = layer[:3]
        alpha = layer[3] if len(layer) == 4 else 0.01
        _activation_code(activation)
        out.append((W, b, activation, B.check_scalar(alpha, f"layer {i} alpha")))
    if not out:
        raise ValueError("dense chain: no layers")
    return out


def dense_chain_blocked(x, widths, blocked: bool | None = None) -> bool:
    """Whether a chain of dense layers of ``widths`` [in, out_0, out_1, ...] on the batch ``x``
    (N, in) runs in the row-blocked CPU kernel (``dense_chain_*``): never with
    ``blocked=False``; where it can (the native CPU path, a non-empty NumPy ``x``, NumPy's
    OpenBLAS found) and, with ``blocked=None``, where it pays (every width at most
    :data:`CHAIN_MAX_WIDTH`, two or more OpenMP threads). ``blocked=True`` answers True where
    it can and raises a ``ValueError`` where it cannot. Only x's path and size are read: x
    need not be validated yet (``Sequential`` asks before its first layer has seen it)."""
    if blocked is False:
        return False
    from .. import _blas

    can = _native_path(x, x) == "cpu" and _blas.available()
    if blocked:
        if not can:
            raise ValueError("dense chain: blocked=True needs the compiled CPU kernels, a non-empty NumPy input "
                             "and NumPy's OpenBLAS (fastnn.backend_info()['chain_blas'])")
        return True
    return can and max(widths) <= CHAIN_MAX_WIDTH and B._C.cpu.omp_threads() > 1


def _check_chain(x, layers, ys, auxs, x_name="x"):
    """The validated chain: x, [(W, b, activation, alpha)] and the widths [in, out_0, out_1,
    ...]; ys and auxs (None where not needed) are checked for one entry per layer."""
    x = B.check_float(x, x_name, ndim=2)
    checked, width = [], x.shape[1]
    for i, (W, b, activation, alpha) in enumerate(layers):
        W = B.check_float(W, f"layer {i} W", like=(x_name, x), ndim=2)
        if W.shape[0] != width:
            raise ValueError(f"dense chain: layer {i} W has shape {tuple(W.shape)} but its input has {width} "
                             f"features: W must be ({width}, out_features)")
        if b is not None:
            b = B.check_float(b, f"layer {i} b", like=(x_name, x), shape=(W.shape[1],))
        checked.append((W, b, activation, alpha))
        width = W.shape[1]
    for name, arrays in (("ys", ys), ("auxs", auxs)):
        if arrays is not None and len(arrays) != len(layers):
            raise ValueError(f"dense chain: {name} has {len(arrays)} entries for {len(layers)} layers")
    return x, checked, [x.shape[1]] + [W.shape[1] for W, _, _, _ in checked]


def _check_grads(dWs, dbs, layers, widths, like, where: str):
    """[(dW, db or None)] validated against the layers, on ``like``'s (name, array) device and
    dtype, and the (name, array) pairs they write, for check_disjoint."""
    if len(dWs) != len(layers) or (dbs is not None and len(dbs) != len(layers)):
        raise ValueError(f"{where}: dWs and dbs need one entry per layer ({len(layers)})")
    grads, written = [], []
    for i, (W, _, _, _) in enumerate(layers):
        dW = B.check_float(dWs[i], f"dWs[{i}]", like=like, shape=W.shape, writable=True)
        db = None if dbs is None or dbs[i] is None else \
            B.check_float(dbs[i], f"dbs[{i}]", like=like, shape=(widths[i + 1],), writable=True)
        grads.append((dW, db))
        written += [(f"dWs[{i}]", dW)] + ([(f"dbs[{i}]", db)] if db is not None else [])
    return grads, written


def _parameters_read(layers):
    """(name, array) pairs of the layers' weights and biases, for check_disjoint."""
    return [(f"layer {i} {name}", a) for i, (W, b, _, _) in enumerate(layers) for name, a in (("W", W), ("b", b))]


def _kernel_layers(layers):
    """The per-layer lists the compiled chain kernels take: W and b pointers, activation codes
    and slopes."""
    return ([B.pointer(W) for W, _, _, _ in layers], [_optional_ptr(b) for _, b, _, _ in layers],
            [_activation_code(a) for _, _, a, _ in layers], [alpha for _, _, _, alpha in layers])


def dense_chain_forward(x, layers, *, ys=None, auxs=None, block_rows: int = 0, blocked: bool | None = None):
    """Dense layers in a row: y_i = act_i(y_(i-1) @ W_i + b_i), y_(-1) = x (``=``).

    ``layers``: a sequence of ``(W, b, activation)`` or ``(W, b, activation, alpha)`` as for
    :func:`dense_forward`. ``ys``: the outputs (N, out_i), or None for new arrays; ``auxs``: per
    layer, the (N, out_i) array receiving the pre-activation where :func:`dense_needs_aux`
    (required there, ignored elsewhere; ``auxs=None`` when no layer needs one). Returns the
    list of outputs ``ys``.

    On the CPU a chain of narrow layers (``blocked=None``: every width at most
    :data:`CHAIN_MAX_WIDTH`, two or more threads) runs in one compiled kernel: each thread
    carries blocks of ``block_rows`` rows (0: about 256 KB of the widest activation) through
    every layer while they are in its cache, calling NumPy's OpenBLAS on one thread each
    (``csrc/cpu/dense_chain.cpp``). ``blocked=False`` runs :func:`dense_forward` layer by
    layer; ``True`` insists on the blocked kernel. The results agree to rounding."""
    x, layers, widths = _check_chain(x, _chain_layers(layers), ys, auxs)
    n = x.shape[0]
    out_ys, out_auxs = [], []
    for i, (W, b, activation, alpha) in enumerate(layers):
        shape = (n, widths[i + 1])
        out_ys.append(B.output(None if ys is None else ys[i], x, f"ys[{i}]", shape))
        aux = None if auxs is None else auxs[i]
        if activation in _AUX_ACTIVATIONS:
            if aux is None:
                raise ValueError(f"dense_chain_forward: layer {i}'s activation {activation!r} needs auxs[{i}], an "
                                 f"{shape} array for the pre-activation its backward reads (see dense_needs_aux)")
            aux = B.check_float(aux, f"auxs[{i}]", like=("x", x), shape=shape, writable=True)
        out_auxs.append(aux if activation in _AUX_ACTIVATIONS else None)
    written = [(f"ys[{i}]", y) for i, y in enumerate(out_ys)] + \
        [(f"auxs[{i}]", a) for i, a in enumerate(out_auxs) if a is not None]
    B.check_disjoint(written, [("x", x)] + _parameters_read(layers) + written)
    block_rows = _block_rows(block_rows)
    if not dense_chain_blocked(x, widths, blocked):
        below = x
        for (W, b, activation, alpha), y, aux in zip(layers, out_ys, out_auxs):
            below = dense_forward(below, W, b, activation, alpha=alpha, out=y, aux=aux)
        return out_ys
    B.launch("cpu", "dense_chain_forward", x, B.pointer(x), n, *_kernel_layers(layers),
             [B.pointer(y) for y in out_ys], [_optional_ptr(a) for a in out_auxs], widths, block_rows, _cpu_bf16(x))
    return out_ys


def _block_rows(block_rows) -> int:
    if isinstance(block_rows, bool) or not isinstance(block_rows, (int, np.integer)) or block_rows < 0:
        raise ValueError(f"dense chain: block_rows must be an integer >= 0 (0: automatic), got {block_rows!r}")
    return int(block_rows)


def dense_chain_backward(dy, x, layers, ys, auxs=None, *, dWs, dbs=None, need_dx: bool = True, dx=None,
                         block_rows: int = 0, blocked: bool | None = None):
    """Gradients of :func:`dense_chain_forward` given dy = dL/d(last y).

    ``x``, ``layers``, ``ys`` and ``auxs`` as the forward had them (its outputs). For every
    layer dW_i += y_(i-1).T @ dz_i and db_i += dz_i.sum(0) (``dWs``, ``dbs``: one per layer; a
    None db skips it), dz_i = (dz_(i+1) @ W_(i+1).T) * act_i'(.). Returns dx = dz_0 @ W_0.T
    (``=`` into ``dx`` or a new array), or None with ``need_dx=False``. ``block_rows`` and
    ``blocked`` as for the forward."""
    layers = _chain_layers(layers)
    dy = B.check_float(dy, "dy", ndim=2)
    x, layers, widths = _check_chain(x, layers, ys, auxs)
    if ys is None:
        raise ValueError("dense_chain_backward: ys, the forward's outputs, are required")
    n = x.shape[0]
    grads, written = _check_grads(dWs, dbs, layers, widths, ("dy", dy), "dense_chain_backward")
    saved_ys, saved_auxs = [], []
    for i, (_, _, activation, _) in enumerate(layers):
        shape = (n, widths[i + 1])
        saved_ys.append(B.check_float(ys[i], f"ys[{i}]", like=("dy", dy), shape=shape))
        aux = None
        if activation in _AUX_ACTIVATIONS:
            aux = _saved_for(activation, None, None if auxs is None else auxs[i], shape, dy, prefix=f"layer {i} ")
        saved_auxs.append(aux)
    if tuple(dy.shape) != (n, widths[-1]):
        raise ValueError(f"dy: expected shape {(n, widths[-1])} (the last layer's output), got {tuple(dy.shape)}")
    dx = B.output(dx, dy, "dx", (n, widths[0])) if need_dx else None
    written += [("dx", dx)] if dx is not None else []
    read = [("dy", dy), ("x", x)] + [(f"layer {i} W", W) for i, (W, _, _, _) in enumerate(layers)] + \
        [(f"ys[{i}]", y) for i, y in enumerate(saved_ys)] + [(f"auxs[{i}]", a) for i, a in enumerate(saved_auxs)]
    B.check_disjoint(written, read + written)
    block_rows = _block_rows(block_rows)
    if not dense_chain_blocked(x, widths, blocked):
        return _chain_backward_by_layer(dy, x, layers, saved_ys, saved_auxs, grads, dx)
    Ws, _, codes, alphas = _kernel_layers(layers)
    B.launch("cpu", "dense_chain_backward", dy, B.pointer(dy), B.pointer(x), n, Ws, codes, alphas,
             [B.pointer(y) for y in saved_ys],
             [_optional_ptr(a) for a in saved_auxs], [B.pointer(dW) for dW, _ in grads],
             [_optional_ptr(db) for _, db in grads], _optional_ptr(dx), widths, block_rows, _cpu_bf16(dy))
    return dx


def _chain_backward_by_layer(dy, x, layers, ys, auxs, grads, dx):
    """The chain's backward as :func:`dense_backward` calls, each applying the activation
    derivative and bias gradient of the layer below to its dx (``x_activation``)."""
    grad, done = dy, False
    for i in range(len(layers) - 1, -1, -1):
        W, _, activation, alpha = layers[i]
        dW, db = grads[i]
        fused = {}
        if i > 0:
            _, _, below_activation, below_alpha = layers[i - 1]
            fused = dict(x_activation=below_activation, x_aux=auxs[i - 1], x_alpha=below_alpha,
                         x_db=grads[i - 1][1])
            out = B.empty(ys[i - 1].shape, dy)
        else:
            out = dx
        grad = dense_backward(grad, ys[i - 1] if i > 0 else x, W, activation="identity" if done else activation,
                              y=ys[i], aux=auxs[i], alpha=alpha, dW=dW, db=None if done else db,
                              need_dx=out is not None, dx=out, **fused)
        done = True
    return dx


# The losses a fused chain step ends in (csrc/dense.h, enum ChainLoss); the kernel's codes come
# from the binding (fastnn._C.ChainLoss).
CHAIN_LOSSES = ("softmax_cross_entropy", "hinge", "bce_with_logits", "mse", "l1")
_CHAIN_LOSS_CODES = {} if B._C is None else {name: int(code) for name, code in B._C.ChainLoss.__members__.items()}
_CLASS_LOSSES = ("softmax_cross_entropy", "hinge")


def dense_chain_step(x, layers, loss: str, target, *, dWs, dbs=None, out=None, loss_out=None,
                     need_dx: bool = False, dx=None, block_rows: int = 0, blocked: bool | None = None):
    """Forward, loss and backward of a chain of dense layers in one call: the layers as in
    :func:`dense_chain_forward` on ``x``, then ``loss`` (one of :data:`CHAIN_LOSSES`, i.e. the
    ``functional`` loss of that name) of the last output against ``target`` (integer labels
    (N,) for softmax_cross_entropy and hinge, an array shaped like the output otherwise), then
    the parameter gradients as in :func:`dense_chain_backward` (``dWs``, ``dbs``: ``+=``).
    Returns the mean loss as a 0-d array (``=`` into ``loss_out`` when given), or with
    ``need_dx`` the pair (loss, dx), dx written (``=``) into ``dx`` or a new array. ``out``
    receives the last layer's output (``=``) when given.

    On the CPU where the chain runs blocked (see :func:`dense_chain_forward`), each row block
    goes up through the layers, through the loss and back down while it is in the thread's
    cache, and no activation is stored, which saves the activations' trips through memory
    that the forward, loss and backward called one after the other make. Elsewhere it is
    those three calls. The results agree to rounding."""
    from . import losses as L

    if loss not in CHAIN_LOSSES:
        raise ValueError(f"dense_chain_step: loss must be one of {sorted(CHAIN_LOSSES)}, got {loss!r}")
    x, layers, widths = _check_chain(x, _chain_layers(layers), None, None)
    n = x.shape[0]
    shape = (n, widths[-1])
    labeled = loss in _CLASS_LOSSES
    if labeled:
        target = L._check_labels(target, x)
    else:
        target = B.check_float(target, "target", like=("x", x), shape=shape)
    grads, written = _check_grads(dWs, dbs, layers, widths, ("x", x), "dense_chain_step")
    if out is not None:
        out = B.output(out, x, "out", shape)
    value = L._loss_output(loss_out, x, "loss_out")
    dx = B.output(dx, x, "dx", (n, widths[0])) if need_dx else None
    written += [(name, a) for name, a in (("out", out), ("dx", dx), ("loss_out", value)) if a is not None]
    B.check_disjoint(written, [("x", x), ("target", target)] + _parameters_read(layers) + written)
    block_rows = _block_rows(block_rows)
    if labeled and B.path_of(x) != "cuda":
        L._check_label_range(target, widths[-1])
    if not dense_chain_blocked(x, widths, blocked):
        auxs = [B.empty((n, w), x) if activation in _AUX_ACTIVATIONS else None
                for w, (_, _, activation, _) in zip(widths[1:], layers)]
        ys = dense_chain_forward(x, layers, auxs=auxs, blocked=False)
        grad = B.empty(shape, x)
        getattr(L, f"{loss}_forward")(ys[-1], target, grad_out=grad, out=value)
        if out is not None:
            out[...] = ys[-1]
        return_dx = dense_chain_backward(grad, x, layers, ys, auxs, dWs=[g for g, _ in grads],
                                         dbs=[b for _, b in grads], need_dx=need_dx, dx=dx, blocked=False)
        return value if return_dx is None else (value, return_dx)
    B.launch("cpu", "dense_chain_step", x, B.pointer(x), n, *_kernel_layers(layers),
             [B.pointer(dW) for dW, _ in grads], [_optional_ptr(db) for _, db in grads], widths,
             _CHAIN_LOSS_CODES[loss],
             B.pointer(target) if labeled else 0, labeled and np.dtype(target.dtype) == np.int64,
             0 if labeled else B.pointer(target), B.pointer(value), _optional_ptr(out), _optional_ptr(dx),
             block_rows, _cpu_bf16(x))
    return value if dx is None else (value, dx)
