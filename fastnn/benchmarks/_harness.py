"""The benchmark harness shared by every suite: timing, the memory bandwidth yardstick,
competitors, the table and the files a run writes.

A suite produces a list of :class:`Result` rows, one per (case, implementation), all measured
in the same process, so that ratios between rows are meaningful. Absolute times vary between
machines and runs; ratios measured side by side are what the suites report.

Timing: ``measure`` runs a warm-up, then repeats the call in batches until ``min_time`` has
passed and reports the median time per call over the batches. On the GPU each batch is
bracketed by a device synchronisation, so the time covers the kernels, not just the launches.
A case's competitors are timed in rounds, one batch of each per round, and a ratio between two
of them (:func:`speedup`) is the median of their per-round ratios: on a machine whose speed
changes from second to second (a VM's memory), each pair of batches ran under the same
conditions, where the ratio of two medians could compare a fast minute with a slow one.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import glob
import json
import os
import platform
import statistics
import time
from typing import Callable, Iterable

import numpy as np

from .._info import backend_info


@dataclasses.dataclass
class Result:
    """One measured (or skipped) row of a suite."""

    suite: str
    case: str
    impl: str
    device: str
    ms: float | None = None  # median milliseconds per call; None when skipped
    bytes: int | None = None  # bytes read + written per call, for bandwidth-bound work
    flops: float | None = None  # floating-point operations per call, for compute-bound work
    note: str = ""  # why a row was skipped, or what a configuration means
    rounds: list[float] | None = None  # milliseconds per call in each round of its case

    @property
    def gbs(self) -> float | None:
        return None if self.ms is None or not self.bytes else self.bytes / (self.ms * 1e-3) / 1e9

    @property
    def tflops(self) -> float | None:
        return None if self.ms is None or not self.flops else self.flops / (self.ms * 1e-3) / 1e12

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["gbs"], d["tflops"] = self.gbs, self.tflops
        return d


def speedup(mine: Result, theirs: Result) -> float | None:
    """How many times faster ``mine`` ran than ``theirs`` (their ms / mine): the median of the
    per-round ratios where both were timed in the same rounds, else the ratio of the medians;
    None when either was not measured."""
    if mine.ms is None or theirs.ms is None:
        return None
    if mine.rounds and theirs.rounds and len(mine.rounds) == len(theirs.rounds):
        return statistics.median(t / m for t, m in zip(theirs.rounds, mine.rounds))
    return theirs.ms / mine.ms


def skipped(suite: str, case: str, impl: str, device: str, why: str) -> Result:
    """A row for a competitor that could not run here (not installed, no GPU): listed, not hidden."""
    return Result(suite, case, impl, device, note=f"skipped: {why}")


# ---------------------------------------------------------------------------------------------
# Devices and competitors.


def gpu_sync() -> Callable[[], None]:
    """A function that waits for all work on the current GPU (CuPy's, else PyTorch's)."""
    try:
        import cupy

        return cupy.cuda.runtime.deviceSynchronize
    except ImportError:
        import torch

        return torch.cuda.synchronize


def optional_import(name: str):
    """The module, or None when it is not installed (its rows are then reported as skipped)."""
    try:
        return __import__(name)
    except ImportError:
        return None


def torch_for(device: str):
    """PyTorch when it is installed and can run on ``device``, else None."""
    torch = optional_import("torch")
    if torch is None or (device == "cuda" and not torch.cuda.is_available()):
        return None
    return torch


def cupy_for(device: str):
    """CuPy when ``device`` is "cuda" and CuPy sees a GPU, else None."""
    if device != "cuda":
        return None
    cupy = optional_import("cupy")
    try:
        return cupy if cupy is not None and cupy.cuda.runtime.getDeviceCount() > 0 else None
    except Exception:
        return None


# ---------------------------------------------------------------------------------------------
# Timing.


def measure(fn: Callable[[], object], device: str = "cpu", *, warmup: int = 3, min_time: float = 0.3,
            batches: int = 5) -> float:
    """Median milliseconds per call of ``fn`` over ``batches`` timed batches (after ``warmup``
    calls). Each batch repeats ``fn`` enough times to last about ``min_time / batches``."""
    return statistics.median(measure_rounds({"fn": fn}, device, warmup=warmup, min_time=min_time,
                                            rounds=batches)["fn"])


def measure_rounds(fns: dict[str, Callable[[], object]], device: str = "cpu", *, warmup: int = 3,
                   min_time: float = 0.3, rounds: int = 7, settle: float = 0.0) -> dict[str, list[float]]:
    """Like :func:`measure` for several functions at once, timed in turns: each round times one
    batch of every function, so that a burst of load on a shared machine slows them all alike
    and the ratios between them hold. ``settle``: seconds to pause (untimed) before each batch,
    so that worker threads the previous function left spinning have gone idle (OpenBLAS keeps
    its threads on their cores for about 0.1 s after a GEMM, which slows a library with its own
    thread pool, e.g. PyTorch, timed right after). Returns each function's milliseconds per call
    in each round."""
    sync = gpu_sync() if device == "cuda" else (lambda: None)
    per_batch = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        sync()
        start = time.perf_counter()
        fn()
        sync()
        per_batch[name] = max(1, int(min_time / rounds / max(time.perf_counter() - start, 1e-6)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            if settle:
                time.sleep(settle)
            sync()
            start = time.perf_counter()
            for _ in range(per_batch[name]):
                fn()
            sync()
            samples[name].append((time.perf_counter() - start) / per_batch[name])
    return {name: [t * 1e3 for t in s] for name, s in samples.items()}


def progress(cases: list, desc: str, enabled: bool = True):
    """``cases`` to loop over, behind a tqdm progress bar (one step per case) when ``enabled``."""
    if not enabled:
        return cases
    from tqdm import tqdm

    return tqdm(cases, desc=desc, unit="case")


BANDWIDTH_ROW = "memory bandwidth (in-place STREAM triad, the limit)"


def run_case(suite: str, case: str, device: str, competitors, *, min_time: float, settle: float = 0.0,
             probe: "BandwidthProbe | None" = None, rounds: int = 7, **measures) -> list[Result]:
    """One case of a suite, every competitor timed side by side in ``rounds`` rounds
    (:func:`measure_rounds`; each row keeps its per-round times for :func:`speedup`).
    ``competitors``: (implementation name, build) pairs, ``build`` a function returning the call
    to time, or a string saying why that competitor cannot run here. Each built call runs once
    first; one that raises is listed as skipped with the error. ``measures``: the
    :class:`Result` fields of the measured rows (``bytes=`` or ``flops=``). With ``probe`` (a
    :class:`BandwidthProbe`), the memory bandwidth is timed in the same rounds as a row of its
    own (:data:`BANDWIDTH_ROW`): the machine's limit at the moment the case ran, which the
    table's "% of bandwidth" divides by."""
    steps, rows = {}, []
    if probe is not None and probe.run is not None:
        steps[BANDWIDTH_ROW] = probe.run
        rows.append(Result(suite, case, BANDWIDTH_ROW, device, bytes=probe.bytes, note=probe.how))
    for impl, build in competitors:
        if isinstance(build, str):
            rows.append(skipped(suite, case, impl, device, build))
            continue
        try:
            steps[impl] = build()
            steps[impl]()  # fails here if this competitor cannot run the case
        except (RuntimeError, TypeError, ValueError, ImportError) as exc:
            steps.pop(impl, None)
            rows.append(skipped(suite, case, impl, device, f"{type(exc).__name__}: {exc}"[:160]))
            continue
        rows.append(Result(suite, case, impl, device, **measures))
    times = measure_rounds(steps, device, min_time=min_time, rounds=rounds, settle=settle)
    for row in rows:
        if row.impl in times:
            row.rounds = times[row.impl]
            row.ms = statistics.median(row.rounds)
    return rows


def _cache_bytes() -> int:
    """The largest CPU cache (the last level), from Linux's sysfs; 32 MiB where unknown."""
    largest = 0
    for path in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size")):
        try:
            with open(path) as f:
                text = f.read().strip().upper()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            largest = max(largest, int(digits) * scale)
    return largest or 32 << 20


def _best_ms(fn: Callable[[], object], sync: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` timed calls (after one untimed call), in milliseconds."""
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


@dataclasses.dataclass
class BandwidthProbe:
    """The memory-bandwidth yardstick as a call to time beside the competitors: STREAM's triad
    done in place, a = a + s * b, over two float64 arrays far larger than the caches, counting
    24 bytes per element (a and b read, a written), as STREAM counts its triad. In place, as
    every optimizer updates its arrays: STREAM's own a = b + s * c also makes each store
    first read a's cache line (write-allocate), which STREAM does not count, so an in-place
    kernel can run well above it (measured here: 48 against 70 GB/s). ``run`` makes one pass;
    ``how`` says what runs it."""

    run: Callable[[], object] | None
    bytes: int
    how: str


def bandwidth_probe(device: str, array_bytes: int | None = None) -> BandwidthProbe:
    """The :class:`BandwidthProbe` for ``device``: two arrays of ``array_bytes`` each (default:
    4x the largest cache and at least 128 MiB on the CPU, at least 1 GiB on a GPU, so nothing
    is served from a cache). CPU: fastnn's OpenMP triad on every thread
    (``csrc/cpu/triad.cpp``), else torch's multi-threaded ``a.add_(b, alpha=s)``. GPU: a CuPy
    elementwise kernel, else that torch call on the device. ``run`` is None where neither can
    run."""
    from .. import _backend

    if array_bytes is None:
        array_bytes = max(4 * _cache_bytes(), 128 << 20) if device == "cpu" else 1 << 30
    n = array_bytes // 8
    s = 1e-3
    torch = torch_for(device)
    gib = array_bytes / (1 << 30)
    if device == "cpu" and _backend._C is not None:
        a, b = np.full(n, 1.0), np.full(n, 2.0)
        C = _backend._C.cpu
        run = lambda: C.stream_triad(a.ctypes.data, a.ctypes.data, b.ctypes.data, s, n)  # noqa: E731
        how = f"fastnn's OpenMP triad, {C.omp_threads()} threads"
    elif device == "cuda" and cupy_for(device) is not None:
        cupy = cupy_for(device)
        triad = cupy.ElementwiseKernel("float64 b, float64 s", "float64 a", "a = a + s * b", "bench_stream_triad")
        a, b = cupy.full(n, 1.0), cupy.full(n, 2.0)
        run = lambda: triad(b, s, a)  # noqa: E731
        how = "a CuPy triad kernel"
    elif torch is not None:
        a, b = (torch.full((n,), v, dtype=torch.float64, device=device) for v in (1.0, 2.0))
        run = lambda: a.add_(b, alpha=s)  # noqa: E731
        how = "torch's a.add_(b, alpha=s)"
    else:
        return BandwidthProbe(None, 0, "no triad measured (needs fastnn's CPU kernels, CuPy or torch)")
    return BandwidthProbe(run, 3 * 8 * n, f"in-place STREAM triad a = a + s b, 2 x {gib:.2f} GiB float64: {how}")


def memory_bandwidth(device: str, array_bytes: int | None = None, repeats: int = 10) -> tuple[float, str]:
    """The machine's memory bandwidth in GB/s, measured now with :func:`bandwidth_probe`'s
    in-place triad (best of ``repeats`` passes), and what measured it; NaN where nothing can
    run it. A single reading: the suites also time the probe beside every case, since this
    machine's bandwidth changes from minute to minute."""
    probe = bandwidth_probe(device, array_bytes)
    if probe.run is None:
        return float("nan"), probe.how
    ms = _best_ms(probe.run, gpu_sync() if device == "cuda" else (lambda: None), repeats)
    return probe.bytes / (ms * 1e-3) / 1e9, f"{probe.how}, best of {repeats}"


# ---------------------------------------------------------------------------------------------
# Reporting.


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)


def table(results: Iterable[Result], *, baseline: str = "fastnn", bandwidth_gbs: float | None = None) -> str:
    """The comparison table as Markdown: per case, each implementation's time, bandwidth or
    rate, its bandwidth as a % of the machine's (the case's own :data:`BANDWIDTH_ROW`, timed in
    the same rounds, where it has one; else ``bandwidth_gbs``), and ``baseline``'s speed-up
    over it (:func:`speedup`: per round where both have rounds). Both are ratios of rows timed in
    the same rounds, so they are medians of per-round ratios."""
    results = list(results)
    header = "| case | implementation | ms | GB/s | TFLOP/s | % of bandwidth | speed-up of fastnn |"
    lines = [header, "|" + "---|" * 7]
    cases = list(dict.fromkeys(r.case for r in results))
    for case in cases:
        rows = [r for r in results if r.case == case]
        base = next((r for r in rows if r.impl == baseline and r.ms is not None), None)
        probe = next((r for r in rows if r.impl == BANDWIDTH_ROW and r.gbs), None)
        for r in rows:
            if r.gbs is None:
                pct = None
            elif probe is not None:  # bytes per second against the probe's, round by round
                pct = 100 * speedup(r, probe) * r.bytes / probe.bytes
            else:
                pct = None if bandwidth_gbs is None else 100 * r.gbs / bandwidth_gbs
            if r.impl == BANDWIDTH_ROW:
                lines.append(f"| {case} | {r.impl} | {_fmt(r.ms, '.3f')} | {_fmt(r.gbs, '.1f')} | - | "
                             f"{_fmt(pct, '.0f')} | - |")
                continue
            if r.ms is None:
                ratio = r.note or "skipped"
            elif base is None or r.impl == baseline:
                ratio = "1.00x" if r.impl == baseline else "-"
            else:
                ratio = f"{speedup(base, r):.2f}x"
            lines.append(f"| {case} | {r.impl} | {_fmt(r.ms, '.3f')} | {_fmt(r.gbs, '.1f')} | "
                         f"{_fmt(r.tflops, '.2f')} | {_fmt(pct, '.0f')} | {ratio} |")
    return "\n".join(lines)


def arguments(prog: str, doc: str) -> argparse.ArgumentParser:
    """The command line every suite takes (``--device``, ``--out``, ``--quick``,
    ``--no-progress``); a suite adds its own options. ``doc``: the suite's module docstring,
    whose first paragraph describes it."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--out", default="bench/results", help="folder for the JSON, Markdown and PNG results")
    parser.add_argument("--quick", action="store_true", help="small cases, short timings (a smoke test)")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def parse(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """``parser.parse_args(argv)``, and ``--out`` created and checked writable now: a bad folder
    is an argparse error before the minutes of measuring, not a traceback that loses them."""
    from ..job import prepare_out

    args = parser.parse_args(argv)
    try:
        prepare_out(args.out)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def environment(device: str) -> dict:
    """What the numbers were measured on."""
    env = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "fastnn": backend_info(),
        "device": device,
    }
    torch = optional_import("torch")
    if torch is not None:
        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
        if device == "cuda" and torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name()
    cupy = cupy_for(device)
    if cupy is not None:
        env["cupy"] = cupy.__version__
    return env


def write(suite: str, device: str, results: list[Result], out_dir: str, *,
          bandwidth: tuple[float, str] | None = None, extra: dict | None = None) -> dict[str, str]:
    """Write ``<suite>_<device>.json`` and ``.md`` (and a bar chart ``.png`` when matplotlib is
    installed) into ``out_dir``; return the paths written. ``bandwidth``: the
    :func:`memory_bandwidth` measured in the same run, if any."""
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"{suite}_{device}")
    payload = {
        "suite": suite,
        "device": device,
        "environment": environment(device),
        "bandwidth_gbs": None if bandwidth is None else bandwidth[0],
        "bandwidth_measured_with": None if bandwidth is None else bandwidth[1],
        "results": [r.as_dict() for r in results],
        **(extra or {}),
    }
    paths = {"json": stem + ".json", "md": stem + ".md"}
    with open(paths["json"], "w") as f:
        json.dump(payload, f, indent=2, default=str)
    with open(paths["md"], "w") as f:
        f.write(f"# {suite} on {device} ({payload['environment']['date']})\n\n")
        if bandwidth is not None:
            f.write(f"Memory bandwidth measured in the same run: {bandwidth[0]:.1f} GB/s ({bandwidth[1]}).\n\n")
        f.write(table(results, bandwidth_gbs=None if bandwidth is None else bandwidth[0]) + "\n")
    png = chart(suite, device, results, stem + ".png")
    if png:
        paths["png"] = png
    return paths


def chart(suite: str, device: str, results: list[Result], path: str, baseline: str = "fastnn") -> str | None:
    """A bar chart of each implementation's time relative to ``baseline`` per case (lower is
    slower than fastnn when > 1); None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cases = list(dict.fromkeys(r.case for r in results))
    impls = list(dict.fromkeys(r.impl for r in results if r.ms is not None and r.impl != BANDWIDTH_ROW))
    if not cases or not impls:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(cases) * max(1, len(impls)) / 2), 4))
    width = 0.8 / len(impls)
    for k, impl in enumerate(impls):
        ratios = []
        for case in cases:
            base = next((r.ms for r in results if r.case == case and r.impl == baseline and r.ms), None)
            mine = next((r.ms for r in results if r.case == case and r.impl == impl and r.ms), None)
            ratios.append(mine / base if base and mine else 0.0)
        ax.bar(np.arange(len(cases)) + k * width, ratios, width, label=impl)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(cases)) + 0.4 - width / 2)
    ax.set_xticklabels(cases, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(f"time relative to {baseline} (higher = {baseline} faster)")
    ax.set_title(f"fastnn {suite} benchmark, {device}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
