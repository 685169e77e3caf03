"""Optimizer benchmark: the time of one ``step()`` of each rule, fastnn against its competitors,
measured side by side in one run.

Cases: one large tensor and many smaller ones (CPU: 1 x 32M and 200 x 160K float32 parameters;
GPU: 1 x 256M and 400 tensors of 64K-1M). Competitors, each updating the same parameters and
gradients with its own state: fastnn's class (``fastnn.optim.X(params).step(grads)``), fastnn
through ``fastnn.integrations.torch``, the reference path (NumPy or CuPy ops, in place),
PyTorch ``foreach`` and ``fused`` where torch has them, and on the GPU a CuPy elementwise
kernel per tensor. Effective GB/s counts every byte a one-pass update reads and writes
(Adam: p, g, m, v read, p, m, v written: 28 bytes per float32 parameter); "% of bandwidth"
compares it with the machine's memory bandwidth measured in the same run as STREAM measures
it (``_harness.memory_bandwidth``: the triad a = b + s * c on every thread over arrays far
larger than the caches, best of 10, bytes read + written).

    python bench/optim.py --device cpu [--quick] [--out bench/results]
"""

from __future__ import annotations

import gc
from typing import Callable, NamedTuple

import numpy as np

from .. import _backend, optim, use_backend
from . import _harness as H

SUITE = "optim"


class Rule(NamedTuple):
    name: str
    cls: type
    kwargs: dict
    passes: int  # arrays read + arrays written per parameter in one pass
    torch_name: str
    cupy_kernel: tuple[str, str, str] | None  # ElementwiseKernel (inputs, outputs, body)


# The CuPy competitors: one elementwise kernel per tensor, bias corrections from the host.
_CUPY_ADAM = ("T g, T lr_t, T b1, T b2, T eps, T bc2s, T decay", "T p, T m, T v",
              "p = p * decay; m = b1 * m + (1 - b1) * g; v = b2 * v + (1 - b2) * g * g;"
              "p = p - lr_t * m / (sqrt(v) / bc2s + eps);")
RULES = [
    Rule("Adam", optim.Adam, {}, 7, "Adam", _CUPY_ADAM),
    Rule("AdamW", optim.AdamW, {}, 7, "AdamW", _CUPY_ADAM),
    Rule("SGD momentum", optim.SGD, dict(lr=1e-2, momentum=0.9), 5, "SGD",
         ("T g, T lr, T mu", "T p, T b", "b = mu * b + g; p = p - lr * b;")),
    Rule("RMSprop", optim.RMSprop, {}, 5, "RMSprop",
         ("T g, T lr, T alpha, T eps", "T p, T v", "v = alpha * v + (1 - alpha) * g * g; p = p - lr * g / (sqrt(v) + eps);")),
    Rule("Adagrad", optim.Adagrad, {}, 5, "Adagrad",
         ("T g, T lr, T eps", "T p, T s", "s = s + g * g; p = p - lr * g / (sqrt(s) + eps);")),
    Rule("Rprop", optim.Rprop, {}, 7, "Rprop",
         ("T g, T etam, T etap, T lo, T hi", "T p, T prev, T size",
          "T prod = g * prev; T f = prod > 0 ? etap : (prod < 0 ? etam : (T)1);"
          "size = min(max(size * f, lo), hi); T h = prod < 0 ? (T)0 : g;"
          "p = p - (h > 0 ? size : (h < 0 ? -size : (T)0)); prev = h;")),
]

_K, _M = 1 << 10, 1 << 20


def cases(device: str, quick: bool) -> list[tuple[str, list[int]]]:
    """(name, tensor sizes) for each case on ``device``."""
    rng = np.random.default_rng(0)
    if device == "cpu":
        if quick:
            return [("1 x 4M", [4 * _M]), ("50 x 80K", [80 * _K] * 50)]
        return [("1 x 32M", [32 * _M]), ("200 x 160K", [160 * _K] * 200)]
    if quick:
        return [("1 x 32M", [32 * _M]), ("100 x 64K-256K", _log_uniform(rng, 100, 64 * _K, 256 * _K))]
    return [("1 x 256M", [256 * _M]), ("400 x 64K-1M", _log_uniform(rng, 400, 64 * _K, _M))]


def _log_uniform(rng, count: int, low: int, high: int) -> list[int]:
    return [int(n) for n in np.exp(rng.uniform(np.log(low), np.log(high), count))]


def _cupy_step(rule: Rule, cupy, params, grads, state) -> Callable[[], None]:
    kernel = cupy.ElementwiseKernel(*rule.cupy_kernel, name=f"bench_{rule.name.replace(' ', '_').lower()}")
    f32 = np.float32
    if rule.torch_name in ("Adam", "AdamW"):
        count = [0]
        wd = 1e-2 if rule.torch_name == "AdamW" else 0.0

        def step():
            count[0] += 1
            t = count[0]
            lr_t, bc2s = 1e-3 / (1 - 0.9 ** t), (1 - 0.999 ** t) ** 0.5
            for p, g, (m, v) in zip(params, grads, state):
                kernel(g, f32(lr_t), f32(0.9), f32(0.999), f32(1e-8), f32(bc2s), f32(1 - 1e-3 * wd), p, m, v)
        return step
    scalars = {"SGD": (1e-2, 0.9), "RMSprop": (1e-2, 0.99, 1e-8), "Adagrad": (1e-2, 1e-10),
               "Rprop": (0.5, 1.2, 1e-6, 50.0)}[rule.torch_name]
    scalars = tuple(f32(s) for s in scalars)

    def step():
        for p, g, s in zip(params, grads, state):
            kernel(g, *scalars, p, *s)
    return step


def _competitors(rule: Rule, device: str, params, grads):
    """(implementation name, a function building the step to time, or the reason it cannot run)."""
    torch = H.torch_for(device)
    cupy = H.cupy_for(device)

    def fastnn_class():
        opt = rule.cls(params, **rule.kwargs)
        return lambda: opt.step(grads)

    def reference():
        opt = rule.cls(params, **rule.kwargs)

        def step():
            with use_backend("reference"):
                opt.step(grads)
        return step

    def torch_tensors():
        convert = torch.from_numpy if device == "cpu" else torch.from_dlpack
        tensors = [convert(p) for p in params]
        for t, g in zip(tensors, grads):
            t.grad = convert(g)
        return tensors

    def torch_optimizer(**flags):
        def build():
            opt = getattr(torch.optim, rule.torch_name)(torch_tensors(), **rule.kwargs, **flags)
            return opt.step
        return build

    def integration():
        from ..integrations import torch as fnn_torch

        opt = getattr(fnn_torch, rule.cls.__name__)(torch_tensors(), **rule.kwargs)
        return opt.step

    def cupy_kernel():
        state_count = 3 if rule.passes == 7 else 2
        state = [[cupy.zeros_like(p) for _ in range(state_count - 1)] for p in params]
        return _cupy_step(rule, cupy, params, grads, state)

    yield "fastnn", fastnn_class if _backend.native_available(device) else "fastnn built without native kernels here"
    yield "fastnn via torch integration", integration if torch is not None else "torch not installed"
    yield "reference (NumPy in place)" if device == "cpu" else "reference (CuPy in place)", reference
    no_torch = "torch not installed" if torch is None else None
    yield "torch foreach", no_torch or torch_optimizer(foreach=True)
    fused = rule.torch_name in ("Adam", "AdamW", "SGD", "Adagrad")
    yield "torch fused", no_torch or (torch_optimizer(fused=True) if fused else f"torch has no fused {rule.torch_name}")
    if device == "cuda":
        yield "CuPy elementwise kernel", cupy_kernel if cupy is not None else "CuPy not installed"


def run(device: str = "cpu", quick: bool = False, progress: bool = True, rules: list[str] | None = None) -> list[H.Result]:
    """Measure every rule on every case of ``device``; one row per (case, implementation)."""
    xp = np if device == "cpu" else H.cupy_for(device)
    if xp is None:
        raise RuntimeError("--device cuda needs CuPy and a GPU")
    chosen = [r for r in RULES if rules is None or r.name in rules]
    plan = [(rule, case) for case in cases(device, quick) for rule in chosen]
    results = []
    min_time = 0.2 if quick else 1.0
    for rule, (case_name, sizes) in H.progress(plan, f"optim {device}", progress):
        rng = np.random.default_rng(1)
        params = [xp.asarray(rng.standard_normal(n, dtype=np.float32)) for n in sizes]
        grads = [xp.asarray(rng.standard_normal(n, dtype=np.float32) * 1e-2) for n in sizes]
        nbytes = rule.passes * 4 * sum(sizes)
        case = f"{rule.name}, {case_name}"
        results.extend(H.run_case(SUITE, case, device, _competitors(rule, device, params, grads), min_time=min_time,
                                  bytes=nbytes))
        del params, grads
        gc.collect()
    return results


def targets(results: list[H.Result], device: str) -> list[str]:
    """The issue's targets, as measured in this run (speed-ups of fastnn over a competitor)."""
    def ratio(case_prefix, other):
        rows = [r for r in results if r.case.startswith(case_prefix) and r.ms is not None]
        mine = next((r.ms for r in rows if r.impl == "fastnn"), None)
        theirs = next((r.ms for r in rows if r.impl.startswith(other)), None)
        return None if mine is None or theirs is None else theirs / mine

    wanted = ([("Adam,", "reference", 4.0), ("Adam,", "torch fused", 0.9), ("RMSprop,", "torch foreach", 4.0)]
              if device == "cpu" else
              [("Adam,", "torch fused", 1.0), ("AdamW,", "torch fused", 1.0), ("SGD momentum,", "torch fused", 1.0),
               ("RMSprop,", "torch foreach", 2.0), ("Adagrad,", "torch foreach", 2.0)])
    lines = []
    for prefix, other, goal in wanted:
        for case_name in dict.fromkeys(r.case.split(", ", 1)[1] for r in results if r.case.startswith(prefix)):
            value = ratio(f"{prefix} {case_name}", other)
            verdict = "not measured" if value is None else f"{value:.2f}x ({'met' if value >= goal else 'NOT met'})"
            lines.append(f"{prefix[:-1]} {case_name}: fastnn vs {other}, target >= {goal}x: {verdict}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = H.arguments("bench/optim.py", __doc__)
    parser.add_argument("--rules", help="comma-separated subset, e.g. 'Adam,RMSprop'")
    args = parser.parse_args(argv)
    rules = None if args.rules is None else [r.strip() for r in args.rules.split(",")]
    bandwidth = H.memory_bandwidth(args.device, repeats=3 if args.quick else 10)
    results = run(args.device, quick=args.quick, progress=not args.no_progress, rules=rules)
    print(f"\nmemory bandwidth: {bandwidth[0]:.1f} GB/s ({bandwidth[1]})\n")
    print(H.table(results, bandwidth_gbs=bandwidth[0]))
    summary = targets(results, args.device)
    print("\n" + "\n".join(summary))
    paths = H.write(SUITE, args.device, results, args.out, bandwidth=bandwidth, extra={"targets": summary})
    print("\nwrote " + ", ".join(paths.values()))
    return 0
