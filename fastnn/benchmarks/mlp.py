"""MLP benchmark: one full training step (forward, softmax cross-entropy, backward, Adam with
lr 1e-3) of the same network from the same initial weights, fastnn against its competitors,
measured side by side in one run.

Networks: Dense layers with ReLU between them (and BatchNorm before each ReLU in the "+BN"
cases), a softmax cross-entropy on integer labels at the end. Competitors, where they can run:

- ``fastnn``: ``Sequential`` (fused epilogues), ``SoftmaxCrossEntropy``, ``optim.Adam``, with
  ``reuse_outputs`` so a step allocates nothing; on a GPU also ``fastnn, CUDA graph``: the same
  step recorded once by :func:`fastnn.cuda_graph.capture` and replayed; on the CPU also ``fastnn,
  fused step``: forward, loss and backward as one ``Sequential.fused_step`` call (one compiled
  pass over row blocks where the model is a chain of Dense layers) and ``optim.Adam``;
- ``torch eager``: ``torch.nn.Sequential`` of Linear/ReLU(/BatchNorm1d), ``F.cross_entropy``,
  ``torch.optim.Adam`` fused where the device supports it (else foreach); on the CPU with
  ``torch.set_num_threads(os.cpu_count())``; on a GPU also ``torch, CUDA graph``: the whole
  step captured with ``torch.cuda.graph`` as in PyTorch's documentation (warm-up on a side
  stream, static inputs, capturable fused Adam);
- ``fastnn reference``: fastnn's model under ``fastnn.use_backend("reference")`` (plain
  NumPy/CuPy code);
- ``NumPy (cs231n-style)``: the step written out by hand in the array module, float32, as in
  cs231n's layers (CuPy on a GPU); the targets are measured against it. On the CPU also
  ``NumPy (cs231n-style, float64)``: the same code on NumPy's default dtype, as cs231n's
  assignments run it (ANCHORS' 48.1 ms NumPy figure, about twice torch's, matches this one).
- on the CPU, ``fastnn, medium precision (bf16)``: the fused-step row under
  ``fastnn.set_matmul_precision("medium")``, bf16 GEMM operands with float32 sums through
  oneDNN (``fastnn._bf16``; skipped, saying why, where this CPU or installation has no bf16
  GEMM), in the same run as the float32 rows and torch eager float32;
- on the CPU, ``GEMMs alone``: not a competitor but the floor, the step's float32 GEMMs and
  nothing else on NumPy's BLAS. Where it is more than half the NumPy step, a 2x speed-up over
  NumPy on the same BLAS cannot be had.

Precisions on the GPU: "TF32" is ``fastnn.set_matmul_precision("high")`` and torch's
``set_float32_matmul_precision("high")``; "bf16" is ``"medium"`` (bfloat16 GEMM inputs, float32
accumulation) and ``torch.autocast(dtype=torch.bfloat16)``; "fp32" is strict float32. The CPU
cases are float32 but for the medium-precision row.

TFLOP/s counts the GEMMs only: 6 * batch * sum(in * out) minus the first layer's dx GEMM
(2 * batch * in * out), which no competitor computes.

    python bench/mlp.py --device cpu [--quick] [--cases 784] [--out bench/results]
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
from typing import Callable, NamedTuple

import numpy as np

from .. import _backend, use_backend
from . import _harness as H

SUITE = "mlp"

FASTNN, FASTNN_GRAPH, FASTNN_FUSED = "fastnn", "fastnn, CUDA graph", "fastnn, fused step"
FASTNN_MEDIUM = "fastnn, medium precision (bf16)"
GEMM_FLOOR = "GEMMs alone (NumPy fp32, the floor)"
TORCH, TORCH_GRAPH = "torch eager", "torch, CUDA graph"
PRECISION_LABELS = {"highest": "fp32", "high": "TF32", "medium": "bf16"}
LR = 1e-3
# Seconds between timed batches on the CPU: the NumPy-based competitors leave OpenBLAS's
# threads spinning for ~0.1 s, which slowed PyTorch's step timed right after by 15-40%.
SETTLE = 0.25


class Case(NamedTuple):
    """One network and batch; ``targets``: (competitor, the speed-up of fastnn over it wanted)."""

    sizes: tuple[int, ...]
    batch: int
    batchnorm: bool = False
    precision: str = "highest"
    targets: tuple[tuple[str, float], ...] = ()
    medium_targets: tuple[tuple[str, float], ...] = ()  # (competitor, speed-up of FASTNN_MEDIUM)

    @property
    def name(self) -> str:
        widths = "-".join(map(str, self.sizes)) + (" +BN" if self.batchnorm else "")
        return f"{widths}, batch {self.batch}, {PRECISION_LABELS[self.precision]}"

    @property
    def flops(self) -> float:
        gemms = sum(a * b for a, b in zip(self.sizes[:-1], self.sizes[1:]))
        return 2.0 * self.batch * (3 * gemms - self.sizes[0] * self.sizes[1])


def cases(device: str, quick: bool) -> list[Case]:
    """The cases of ``device`` (issue 4's targets attached); ``quick``: small ones."""
    if device == "cpu":
        if quick:
            return [Case((784, 128, 128, 10), 256), Case((64, 64, 64, 16), 2048)]
        return [Case((784, 512, 512, 10), 1024, targets=((TORCH, 1.0), ("NumPy (cs231n-style)", 2.0)),
                     medium_targets=((TORCH, 1.5),)),
                Case((64, 64, 64, 64, 16), 16384, targets=((TORCH, 1.5),))]
    wide = (64,) * 5 + (16,)
    if quick:  # the same kinds of case, smaller, without the targets
        mid, big, wide, goal = ((784, 512, 512, 10), 2048), ((1024, 1024, 1024, 1000), 2048), (wide, 65536), {}
    else:
        mid, big, wide = ((784, 2048, 2048, 10), 8192), ((1024, 4096, 4096, 4096, 1000), 8192), (wide, 262144)
        goal = {"mid": ((TORCH, 1.3), (TORCH_GRAPH, 1.0)), "big": ((TORCH, 0.95), (TORCH_GRAPH, 0.95)),
                "wide": ((TORCH, 1.5),)}
    out = [Case(*mid, batchnorm=bn, precision=p, targets=goal.get("mid", ()))
           for p in ("high", "medium") for bn in (False, True)]
    out.append(Case(*big, precision="highest", targets=goal.get("big", ())))
    out.append(Case(*wide, precision="high", targets=goal.get("wide", ())))
    return out


# ---------------------------------------------------------------------------------------------
# The problem every competitor solves.


class Problem(NamedTuple):
    """Initial weights [(W (in, out), b (out,))] and one batch (x, labels), all NumPy."""

    weights: list
    x: np.ndarray
    labels: np.ndarray


def problem(case: Case, seed: int = 0) -> Problem:
    """He-normal weights, zero biases, a standard normal batch and uniform labels, float32."""
    rng = np.random.default_rng(seed)
    weights = [((rng.standard_normal((a, b), dtype=np.float32) * np.float32(math.sqrt(2.0 / a))),
                np.zeros(b, np.float32)) for a, b in zip(case.sizes[:-1], case.sizes[1:])]
    x = rng.standard_normal((case.batch, case.sizes[0]), dtype=np.float32)
    labels = rng.integers(0, case.sizes[-1], case.batch).astype(np.int64)
    return Problem(weights, x, labels)


class Impl(NamedTuple):
    """A competitor ready to run: ``step()`` trains once; ``loss()`` reads the latest loss."""

    step: Callable[[], object]
    loss: Callable[[], float]


def _xp(device: str):
    return np if device == "cpu" else H.cupy_for(device)


# ---------------------------------------------------------------------------------------------
# fastnn.


def fastnn_model(case: Case, weights: list):
    """fastnn's network for ``case`` holding ``weights`` (on the CPU)."""
    from .. import nn

    layers = []
    for i, (W, b) in enumerate(weights):
        dense = nn.Dense(*W.shape, seed=i)
        dense.weight.data[...] = W
        dense.bias.data[...] = b
        layers.append(dense)
        if i < len(weights) - 1:
            if case.batchnorm:
                layers.append(nn.BatchNorm(W.shape[1]))
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def in_precision(step: Callable[[], object], precision: str) -> Callable[[], None]:
    """``step`` run under ``set_matmul_precision(precision)``, the setting restored after."""
    from ..functional import dense

    def run():
        before = dense.get_matmul_precision()
        dense.set_matmul_precision(precision)
        try:
            step()
        finally:
            dense.set_matmul_precision(before)

    return run


def fastnn_impl(case: Case, prob: Problem, device: str, *, graph: bool = False, reference: bool = False,
                fused: bool = False) -> Impl:
    """fastnn's step: eager, recorded as a CUDA graph (``graph``), as ``Sequential.fused_step``
    (``fused``), or on the reference path."""
    from .. import nn, optim

    xp = _xp(device)
    model = fastnn_model(case, prob.weights)
    if device != "cpu":
        model.to(device)
    model.reuse_outputs(True)
    loss_fn = nn.SoftmaxCrossEntropy().reuse_outputs(True)
    opt = optim.Adam(model.parameters(), lr=LR, capturable=graph)
    x, labels = xp.asarray(prob.x), xp.asarray(prob.labels)
    if graph:
        from .. import cuda_graph

        step = cuda_graph.capture(model, loss_fn, opt, x, labels)
        return Impl(step, lambda: float(step.loss))
    loss = xp.empty((), np.float32)
    if fused:
        state = {"loss": None}

        def train_fused():
            opt.zero_grad()
            state["loss"] = model.fused_step(x, labels, loss_fn, sync=False)
            opt.step()

        return Impl(train_fused, lambda: float(state["loss"]))

    def train():
        opt.zero_grad()
        logits = model.forward(x, training=True)
        loss_fn.forward(logits, labels, sync=False, out=loss)
        model.backward(loss_fn.backward(), need_input_grad=False)
        opt.step()

    if not reference:
        return Impl(train, lambda: float(loss))

    def train_reference():
        with use_backend("reference"):
            train()

    return Impl(train_reference, lambda: float(loss))


# ---------------------------------------------------------------------------------------------
# PyTorch.


def _torch_adam(torch, params, device: str, capturable: bool):
    """torch.optim.Adam, fused where this torch supports it on ``device``, else foreach."""
    try:
        return torch.optim.Adam(params, lr=LR, fused=True, capturable=capturable)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.Adam(params, lr=LR, foreach=True, capturable=capturable)


def torch_impl(case: Case, prob: Problem, device: str, *, graph: bool = False) -> Impl:
    """PyTorch's step, eager or captured whole with ``torch.cuda.graph``."""
    torch = H.torch_for(device)
    layers = []
    for i, (W, b) in enumerate(prob.weights):
        linear = torch.nn.Linear(*W.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
            linear.bias.copy_(torch.from_numpy(b))
        layers.append(linear)
        if i < len(prob.weights) - 1:
            if case.batchnorm:
                layers.append(torch.nn.BatchNorm1d(W.shape[1]))
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).to(device)
    x, labels = torch.from_numpy(prob.x).to(device), torch.from_numpy(prob.labels).to(device)
    opt = _torch_adam(torch, model.parameters(), device, capturable=graph)
    bf16 = case.precision == "medium"

    def forward_backward():
        # A captured graph may not keep autocast's cache of cast weights (torch's CUDA graph notes).
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16, cache_enabled=not graph):
            loss = torch.nn.functional.cross_entropy(model(x), labels)
        loss.backward()
        return loss

    if not graph:
        last = {}

        def train():
            opt.zero_grad(set_to_none=True)
            last["loss"] = forward_backward()
            opt.step()

        return Impl(train, lambda: last["loss"].item())
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            forward_backward()
            opt.step()
    torch.cuda.current_stream().wait_stream(side)
    cuda_graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(cuda_graph):
        static_loss = forward_backward()
        opt.step()
    return Impl(cuda_graph.replay, lambda: static_loss.item())


# ---------------------------------------------------------------------------------------------
# The step written out by hand (cs231n's layers), in NumPy or CuPy.


def plain_impl(case: Case, prob: Problem, device: str, dtype=np.float32) -> Impl:
    """Forward, softmax loss, backward and Adam in plain array code, in ``dtype`` (float32; the
    float64 variant is cs231n's code as written, on NumPy's default dtype)."""
    xp = _xp(device)
    params = [[xp.asarray(W, dtype=dtype).copy(), xp.asarray(b, dtype=dtype).copy()] for W, b in prob.weights]
    hidden = len(params) - 1
    if case.batchnorm:
        params += [[xp.ones(W.shape[1], dtype), xp.zeros(W.shape[1], dtype)] for W, _ in prob.weights[:-1]]
    running = [[xp.zeros(W.shape[1], dtype), xp.ones(W.shape[1], dtype)] for W, _ in prob.weights[:-1]]
    flat = [p for pair in params for p in pair]
    moments = [[xp.zeros_like(p), xp.zeros_like(p)] for p in flat]
    x, labels = xp.asarray(prob.x, dtype=dtype), xp.asarray(prob.labels)
    rows = xp.arange(case.batch)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    state = {"t": 0, "loss": None}

    def batchnorm_forward(a, gamma, beta, stats):
        mean = a.mean(axis=0)
        centered = a - mean
        var = (centered ** 2).mean(axis=0)
        std = xp.sqrt(var + 1e-5)
        xhat = centered / std
        n = a.shape[0]
        stats[0] = 0.9 * stats[0] + 0.1 * mean
        stats[1] = 0.9 * stats[1] + 0.1 * var * (n / (n - 1))
        return gamma * xhat + beta, (xhat, gamma, std)

    def batchnorm_backward(dout, cache):
        xhat, gamma, std = cache
        n = dout.shape[0]
        dxhat = dout * gamma
        dx = (n * dxhat - dxhat.sum(axis=0) - xhat * (dxhat * xhat).sum(axis=0)) / (n * std)
        return dx, (dout * xhat).sum(axis=0), dout.sum(axis=0)

    def train():
        caches, h = [], x
        for i in range(hidden):
            W, b = params[i]
            a = h.dot(W) + b
            bn_cache = None
            if case.batchnorm:
                a, bn_cache = batchnorm_forward(a, *params[hidden + 1 + i], running[i])
            caches.append((h, a, bn_cache))
            h = xp.maximum(a, 0)
        W, b = params[hidden]
        scores = h.dot(W) + b
        shifted = scores - scores.max(axis=1, keepdims=True)
        log_probs = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        state["loss"] = -log_probs[rows, labels].mean()
        dscores = xp.exp(log_probs)
        dscores[rows, labels] -= 1
        dscores /= case.batch

        grads = [None] * len(flat)
        grads[2 * hidden], grads[2 * hidden + 1] = h.T.dot(dscores), dscores.sum(axis=0)
        dh = dscores.dot(W.T)
        for i in reversed(range(hidden)):
            h_in, a, bn_cache = caches[i]
            da = dh * (a > 0)
            if case.batchnorm:
                da, dgamma, dbeta = batchnorm_backward(da, bn_cache)
                k = 2 * (hidden + 1 + i)
                grads[k], grads[k + 1] = dgamma, dbeta
            grads[2 * i], grads[2 * i + 1] = h_in.T.dot(da), da.sum(axis=0)
            if i > 0:
                dh = da.dot(params[i][0].T)

        state["t"] += 1
        t = state["t"]
        for p, g, (m, v) in zip(flat, grads, moments):
            m[...] = beta1 * m + (1 - beta1) * g
            v[...] = beta2 * v + (1 - beta2) * g * g
            m_hat = m / (1 - beta1 ** t)
            v_hat = v / (1 - beta2 ** t)
            p -= LR * m_hat / (xp.sqrt(v_hat) + eps)

    return Impl(train, lambda: float(state["loss"]))


def gemm_floor_impl(case: Case, prob: Problem) -> Impl:
    """Only the step's GEMMs, as NumPy float32 ``matmul``s into preallocated arrays: forward
    x @ W per layer, backward x.T @ dz and dz @ W.T (no dx for the first layer). Every
    competitor computes these; their time is the floor of a step on NumPy's BLAS."""
    sizes, n = case.sizes, case.batch
    Ws = [W.copy() for W, _ in prob.weights]
    acts = [prob.x.copy()] + [np.ones((n, width), np.float32) for width in sizes[1:]]
    grads = [np.ones((n, width), np.float32) for width in sizes]
    dWs = [np.empty_like(W) for W in Ws]

    def gemms():
        for i, W in enumerate(Ws):
            np.matmul(acts[i], W, out=acts[i + 1])
        for i in reversed(range(len(Ws))):
            np.matmul(acts[i].T, grads[i + 1], out=dWs[i])
            if i > 0:
                np.matmul(grads[i + 1], Ws[i].T, out=grads[i])

    return Impl(gemms, lambda: float("nan"))


# ---------------------------------------------------------------------------------------------
# Running a suite.


def competitors(case: Case, prob: Problem, device: str):
    """(implementation name, a function building its step on ``prob``, or the reason it cannot
    run here), for :func:`fastnn.benchmarks._harness.run_case`."""
    torch = H.torch_for(device)
    array = "NumPy" if device == "cpu" else "CuPy"
    no_xp = None if _xp(device) is not None else "CuPy not installed or no GPU"
    no_native = no_xp or (None if _backend.native_available(device) else f"fastnn built without {device} kernels")
    no_torch = None if torch is not None else "torch not installed"
    yield FASTNN, no_native or (lambda: fastnn_impl(case, prob, device).step)
    if device == "cpu":
        yield FASTNN_FUSED, no_native or (lambda: fastnn_impl(case, prob, device, fused=True).step)
        yield FASTNN_MEDIUM, no_native or _no_bf16() or (
            lambda: in_precision(fastnn_impl(case, prob, device, fused=True).step, "medium"))
    if device != "cpu":
        yield FASTNN_GRAPH, no_native or (lambda: fastnn_impl(case, prob, device, graph=True).step)
    yield TORCH, no_torch or (lambda: torch_impl(case, prob, device).step)
    if device != "cpu":
        yield TORCH_GRAPH, no_torch or (lambda: torch_impl(case, prob, device, graph=True).step)
    yield f"fastnn reference ({array})", no_xp or (lambda: fastnn_impl(case, prob, device, reference=True).step)
    yield f"{array} (cs231n-style)", no_xp or (lambda: plain_impl(case, prob, device).step)
    if device == "cpu":
        yield f"{array} (cs231n-style, float64)", (lambda: plain_impl(case, prob, device, np.float64).step)
        yield GEMM_FLOOR, lambda: gemm_floor_impl(case, prob).step


def _no_bf16() -> str | None:
    """Why "medium" would compute in float32 on this CPU, or None where it runs in bf16."""
    from .. import _bf16

    on, why = _bf16.status()
    return None if on else f"no bf16 GEMM: {why}"


@contextlib.contextmanager
def precision(case: Case, device: str):
    """fastnn's and torch's float32 GEMM precision for the case, restored afterwards."""
    from ..functional import dense

    torch = H.torch_for(device)
    before = dense.get_matmul_precision(), None if torch is None else torch.get_float32_matmul_precision()
    dense.set_matmul_precision(case.precision)
    if torch is not None:
        torch.set_float32_matmul_precision("high" if case.precision == "high" else "highest")
    try:
        yield
    finally:
        dense.set_matmul_precision(before[0])
        if torch is not None:
            torch.set_float32_matmul_precision(before[1])


def run(device: str = "cpu", quick: bool = False, progress: bool = True, cases_filter: str | None = None,
        min_time: float | None = None, settle: float | None = None) -> list[H.Result]:
    """Measure every competitor on every case of ``device`` (those whose name contains
    ``cases_filter``); one row per (case, implementation). ``min_time``: seconds of timing per
    competitor and case; ``settle``: the pause before each timed batch (``SETTLE`` on the CPU)."""
    if device == "cuda" and H.cupy_for(device) is None and H.torch_for(device) is None:
        raise RuntimeError("--device cuda needs CuPy or PyTorch and a GPU")
    torch = H.torch_for(device)
    if torch is not None and device == "cpu":
        torch.set_num_threads(os.cpu_count())
    chosen = [c for c in cases(device, quick) if cases_filter is None or cases_filter in c.name]
    min_time = (0.2 if quick else 1.0) if min_time is None else min_time
    settle = (SETTLE if device == "cpu" else 0.0) if settle is None else settle
    results = []
    for case in H.progress(chosen, f"mlp {device}", progress):
        prob = problem(case)
        with precision(case, device):
            results.extend(H.run_case(SUITE, case.name, device, competitors(case, prob, device), min_time=min_time,
                                      settle=settle, flops=case.flops))
        del prob
        gc.collect()
    return results


def _batch_of(case_name: str) -> int:
    return int(case_name.split("batch ")[1].split(",")[0])


def throughput(results: list[H.Result]) -> str:
    """Samples per second of each measured row, as a Markdown table."""
    lines = ["| case | implementation | ms/step | samples/s |", "|---|---|---|---|"]
    for r in results:
        if r.ms is not None:
            lines.append(f"| {r.case} | {r.impl} | {r.ms:.3f} | {_batch_of(r.case) / (r.ms * 1e-3):,.0f} |")
    return "\n".join(lines)


def targets(results: list[H.Result], device: str, quick: bool = False) -> list[str]:
    """Issue 4's targets as measured in this run: fastnn's speed-up over each named competitor
    (the fastest of fastnn's ways: eager, and captured on a GPU or fused on the CPU)."""
    lines = []
    for case in cases(device, quick):
        rows = {r.impl: r for r in results if r.case == case.name and r.ms is not None}
        mine = {impl: rows[impl] for impl in (FASTNN, FASTNN_GRAPH, FASTNN_FUSED) if impl in rows}
        for other, goal in case.targets:
            if other not in rows or not mine:
                if any(r.case == case.name for r in results):
                    lines.append(f"{case.name}: fastnn vs {other}, target >= {goal}x: not measured")
                continue
            ratios = {impl: H.speedup(row, rows[other]) for impl, row in mine.items()}
            value = max(ratios.values())
            each = ", ".join(f"{impl} {ratio:.2f}x" for impl, ratio in ratios.items())
            lines.append(f"{case.name}: fastnn vs {other}, target >= {goal}x: {value:.2f}x "
                         f"({'met' if value >= goal else 'NOT met'}; {each})")
        for other, goal in case.medium_targets:
            if FASTNN_MEDIUM not in rows or other not in rows:
                if any(r.case == case.name for r in results):
                    lines.append(f"{case.name}: {FASTNN_MEDIUM} vs {other} fp32, target >= {goal}x: not measured")
                continue
            value = H.speedup(rows[FASTNN_MEDIUM], rows[other])
            lines.append(f"{case.name}: {FASTNN_MEDIUM} vs {other} fp32, target >= {goal}x: {value:.2f}x "
                         f"({'met' if value >= goal else 'NOT met'})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = H.arguments("bench/mlp.py", __doc__)
    parser.add_argument("--cases", help="only the cases whose name contains this text, e.g. '784' or '+BN'")
    parser.add_argument("--min-time", type=float, help="seconds of timing per competitor and case")
    parser.add_argument("--settle", type=float, help=f"seconds of pause before each timed batch (CPU default {SETTLE})")
    args = H.parse(parser, argv)
    results = run(args.device, quick=args.quick, progress=not args.no_progress, cases_filter=args.cases,
                  min_time=args.min_time, settle=args.settle)
    print("\n" + H.table(results))
    print("\n" + throughput(results))
    summary = targets(results, args.device, args.quick)
    if summary:
        print("\n" + "\n".join(summary))
    paths = H.write(SUITE, args.device, results, args.out, extra={"targets": summary})
    with open(paths["md"], "a") as f:
        f.write("\n" + throughput(results) + "\n")
        if summary:
            f.write("\n" + "\n".join(f"- {line}" for line in summary) + "\n")
    print("\nwrote " + ", ".join(paths.values()))
    return 0
