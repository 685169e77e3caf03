"""Data-parallel benchmark: samples per second of the MLP suite's training step (forward,
softmax cross-entropy, backward, Adam) in one process and in several, the scaling efficiency,
and the bytes each step communicates.

Every configuration runs in processes of its own (the thread counts are per process), one
after the other, each with the same per-process batch (weak scaling, as data-parallel
training is used: N processes train on N times the samples per step):

- CPU: ``1 process, all cores`` (what one process gets today), ``1 process, 1 thread`` (one
  rank's compute alone) and ``2 processes (MPI), 1 thread each`` (``mpiexec -n 2``, the
  gradients averaged by :class:`fastnn.distributed.GradientReducer` before every step);
- GPU: ``1 GPU``, ``1 GPU, NCCL`` (a world of one: the reducer's copies and NCCL's call, no
  peer) and, with two or more GPUs, ``N GPUs (NCCL)``.

Columns: ms per step (the slowest rank's, median over rounds), samples/s of the whole job,
scaling efficiency (samples/s over ranks times the one-rank rate at the same thread count),
the speed-up over one process on all cores, the gradient bytes each rank hands to the
allreduce per step, the bytes a ring allreduce sends (and receives) per rank, 2 (N - 1) / N
times that, and the time per step spent in ``synchronize`` (the allreduce left after
backward, and waiting for the slower rank).

Below the measured table, a model on paper: the expected efficiency on N nodes of the
measured one-process step (all cores standing in for a node) when each step adds a ring
allreduce of the step's bytes at ``--bandwidth`` GB/s with ``--latency`` microseconds per
message hop, without overlap: t(N) = t(1) + 2 (N - 1) (latency + bytes / (N bandwidth)).

    python bench/dist.py [--quick] [--device cpu|cuda] [--bandwidth 12.5] [--latency 5]
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from . import _harness as H
from . import mlp

SUITE = "dist"
ONE_ALL, ONE_THREAD, MPI_TWO = "1 process, all cores", "1 process, 1 thread", "2 processes (MPI), 1 thread each"
ONE_GPU, ONE_GPU_NCCL = "1 GPU", "1 GPU, NCCL"
NODES = (2, 4, 8, 16, 64)


@dataclasses.dataclass
class Config:
    """How one configuration is launched: ``ranks`` processes (under mpiexec when more than
    one), ``threads`` OpenMP/BLAS threads each (None: inherited), ``backend`` of
    fastnn.distributed (None: no reducer at all)."""

    label: str
    ranks: int
    threads: int | None
    backend: str | None


@dataclasses.dataclass
class Row:
    """One measured (or skipped) configuration of one case."""

    case: str
    config: str
    ranks: int
    batch: int  # per process
    ms: float | None = None  # per step, the slowest rank, median over rounds
    sync_ms: float | None = None  # per step in GradientReducer.synchronize (rank 0)
    bytes: int = 0  # gradient bytes per rank handed to the allreduce per step
    note: str = ""

    @property
    def samples_per_s(self) -> float | None:
        return None if self.ms is None else self.ranks * self.batch / (self.ms * 1e-3)

    @property
    def ring_bytes(self) -> float:
        return 2 * (self.ranks - 1) / self.ranks * self.bytes


def configs(device: str) -> list[Config]:
    if device == "cpu":
        return [Config(ONE_ALL, 1, None, None), Config(ONE_THREAD, 1, 1, None), Config(MPI_TWO, 2, 1, "mpi")]
    out = [Config(ONE_GPU, 1, None, None), Config(ONE_GPU_NCCL, 1, None, "nccl")]
    gpus = _gpu_count()
    if gpus >= 2:
        out.append(Config(f"{gpus} GPUs (NCCL)", gpus, None, "nccl"))
    return out


def _gpu_count() -> int:
    cupy = H.cupy_for("cuda")
    return 0 if cupy is None else cupy.cuda.runtime.getDeviceCount()


# ---------------------------------------------------------------------------------------------
# One configuration, inside its processes.


def worker(spec: dict) -> dict | None:
    """Train ``spec``'s case and time it (all ranks step together: rank 0 decides how many
    steps each round has); rank 0 returns {ms, sync_ms, bytes}, the others None."""
    from .. import distributed as dist
    from .. import nn, optim

    device = spec["device"]
    case = mlp.Case(tuple(spec["sizes"]), spec["batch"])
    prob = mlp.problem(case)
    backend = dist.init(spec["backend"], device=device) if spec["backend"] else None
    model = mlp.fastnn_model(case, prob.weights)
    if device != "cpu":
        model.to(dist.device() if backend else device)
    model.reuse_outputs(True)
    loss_fn = nn.SoftmaxCrossEntropy().reuse_outputs(True)
    opt = optim.Adam(model.parameters(), lr=mlp.LR)
    reducer = dist.GradientReducer(model) if backend else None
    xp = np if device == "cpu" else H.cupy_for(device)  # on the current device, the process's GPU
    x, labels = xp.asarray(prob.x), xp.asarray(prob.labels)
    loss = xp.empty((), np.float32)
    sync = H.gpu_sync() if device != "cpu" else (lambda: None)
    in_sync = [0.0]

    def step():
        opt.zero_grad()
        loss_fn.forward(model.forward(x, training=True), labels, sync=False, out=loss)
        model.backward(loss_fn.backward(), need_input_grad=False)
        if reducer is not None:
            start = time.perf_counter()
            reducer.synchronize()
            in_sync[0] += time.perf_counter() - start
        opt.step()

    def from_rank_0(value: float) -> float:
        if backend is None:
            return value
        a = np.array([value], np.float64)
        backend.host_broadcast(a, 0)
        return float(a[0])

    def slowest(value: float) -> float:
        if backend is None:
            return value
        a = np.zeros(backend.world_size)
        a[backend.rank] = value
        backend.host_allreduce(a)
        return float(a.max())

    for _ in range(spec["warmup"]):
        step()
    sync()
    start = time.perf_counter()
    step()
    sync()
    per_round = int(from_rank_0(max(1, int(spec["min_time"] / spec["rounds"] / max(time.perf_counter() - start,
                                                                                       1e-6)))))
    times, in_sync[0] = [], 0.0
    for _ in range(spec["rounds"]):
        slowest(0.0)  # every rank starts the round together
        start = time.perf_counter()
        for _ in range(per_round):
            step()
        sync()
        times.append(slowest((time.perf_counter() - start) / per_round))
    if backend is not None and backend.rank != 0:
        return None
    steps = spec["rounds"] * per_round
    return {"ms": statistics.median(times) * 1e3, "sync_ms": None if reducer is None else in_sync[0] / steps * 1e3,
            "bytes": sum(p.size * p.dtype.itemsize for p in model.parameters())}


# ---------------------------------------------------------------------------------------------
# Launching each configuration.


def _launcher() -> str | None:
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    # MPICH's hydra finds its proxy beside the binary it was started as: start the real one.
    return os.path.realpath(found) if found else None


def launch(config: Config, case: mlp.Case, device: str, *, quick: bool, timeout: float) -> Row:
    """Run ``config`` on ``case`` in fresh processes; a skipped Row says why it could not."""
    row = Row(case.name, config.label, config.ranks, case.batch)
    env = dict(os.environ)
    if config.threads is not None:
        env.update(OMP_NUM_THREADS=str(config.threads), OPENBLAS_NUM_THREADS=str(config.threads))
    command = [sys.executable, "-m", "fastnn.benchmarks.dist", "--worker"]
    if config.ranks > 1:
        launcher = _launcher()
        if launcher is None:
            row.note = "skipped: no mpiexec on PATH (pip install \"fastnn[mpi]\")"
            return row
        command = [launcher, "-n", str(config.ranks)] + command
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "row.json")
        spec = {"sizes": list(case.sizes), "batch": case.batch, "device": device, "backend": config.backend,
                "warmup": 2 if quick else 5, "rounds": 3 if quick else 7, "min_time": 0.2 if quick else 2.0,
                "out": out}
        try:
            done = subprocess.run(command + [json.dumps(spec)], env=env, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            row.note = f"skipped: no result within {timeout:.0f} s"
            return row
        if done.returncode != 0 or not os.path.exists(out):
            row.note = f"skipped: exit {done.returncode}: {done.stderr.strip()[-200:]}"
            return row
        with open(out) as f:
            measured = json.load(f)
    row.ms, row.sync_ms, row.bytes = measured["ms"], measured["sync_ms"], measured["bytes"]
    return row


def run(device: str = "cpu", quick: bool = False, progress: bool = True) -> list[Row]:
    """Every configuration of ``device`` on every network and batch of the MLP suite (without
    its BatchNorm and precision variants: float32 throughout); one Row each."""
    if device == "cuda" and _gpu_count() == 0:
        raise RuntimeError("--device cuda needs CuPy and a GPU")
    shapes = dict.fromkeys((c.sizes, c.batch) for c in mlp.cases(device, quick))
    chosen = [mlp.Case(sizes, batch) for sizes, batch in shapes]
    rows = []
    for case in H.progress(chosen, f"dist {device}", progress):
        for config in configs(device):
            rows.append(launch(config, case, device, quick=quick, timeout=120 if quick else 900))
    return rows


# ---------------------------------------------------------------------------------------------
# Reporting.


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[Row]) -> str:
    """The measured configurations as Markdown."""
    lines = ["| case | configuration | ms/step | samples/s | scaling efficiency | speed-up over 1 process "
             "(all cores) | allreduce MB/step/rank | ring traffic MB/step/rank | ms/step in synchronize |",
             "|" + "---|" * 9]
    for row in rows:
        same_case = [r for r in rows if r.case == row.case and r.ms is not None]
        alone = next((r for r in same_case if r.config in (ONE_THREAD, ONE_GPU)), None)  # one rank's compute
        base = next((r for r in same_case if r.config in (ONE_ALL, ONE_GPU)), None)  # one process today
        rate = row.samples_per_s
        efficiency = None if rate is None or alone is None else rate / (row.ranks * alone.samples_per_s)
        speedup = None if rate is None or base is None else rate / base.samples_per_s
        if row.ms is None:
            lines.append(f"| {row.case} | {row.config} | {row.note} | | | | | | |")
            continue
        lines.append(f"| {row.case} | {row.config} | {row.ms:.3f} | {rate:,.0f} | "
                     f"{_fmt(efficiency if row.ranks > 1 else None, '.0%')} | {_fmt(speedup, '.2f')}x | "
                     f"{row.bytes / 1e6:.3f} | {row.ring_bytes / 1e6:.3f} | {_fmt(row.sync_ms, '.3f')} |")
    return "\n".join(lines)


def model_on_paper(rows: list[Row], bandwidth_gbs: float, latency_us: float) -> str:
    """The expected efficiency on N nodes (see the module's docstring), from each case's
    measured one-process step on all cores (or one GPU) and its bytes per step."""
    lines = [f"Model on paper (not measured): a ring allreduce per step at {bandwidth_gbs:g} GB/s and "
             f"{latency_us:g} us per hop, no overlap with backward; one node = the measured one-process step.", "",
             "| case | bytes/step | t(1) ms | " + " | ".join(f"N={n}" for n in NODES) + " |",
             "|" + "---|" * (3 + len(NODES))]
    for row in rows:
        if row.config not in (ONE_ALL, ONE_GPU) or row.ms is None:
            continue
        cells = []
        for n in NODES:
            comm = 2 * (n - 1) * (latency_us * 1e-6 + row.bytes / (n * bandwidth_gbs * 1e9))
            cells.append(f"{row.ms / (row.ms + comm * 1e3):.0%}")
        lines.append(f"| {row.case} | {row.bytes / 1e6:.2f} MB | {row.ms:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write(device: str, rows: list[Row], out_dir: str, paper: str) -> dict[str, str]:
    """``dist_<device>.json`` and ``.md`` in ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"{SUITE}_{device}")
    payload = {"suite": SUITE, "device": device, "environment": H.environment(device),
               "rows": [{**dataclasses.asdict(r), "samples_per_s": r.samples_per_s, "ring_bytes": r.ring_bytes}
                        for r in rows]}
    paths = {"json": stem + ".json", "md": stem + ".md"}
    with open(paths["json"], "w") as f:
        json.dump(payload, f, indent=2, default=str)
    with open(paths["md"], "w") as f:
        f.write(f"# {SUITE} on {device} ({payload['environment']['date']})\n\n{table(rows)}\n\n{paper}\n")
    return paths


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        spec = json.loads(argv[1])
        result = worker(spec)
        if result is not None:
            with open(spec["out"], "w") as f:
                json.dump(result, f)
        return 0
    parser = H.arguments("bench/dist.py", __doc__)
    parser.add_argument("--bandwidth", type=float, default=12.5,
                        help="GB/s per node for the model on paper (default 12.5: 100 Gb/s)")
    parser.add_argument("--latency", type=float, default=5.0,
                        help="microseconds per message hop for the model on paper (default 5)")
    args = H.parse(parser, argv)
    rows = run(args.device, quick=args.quick, progress=not args.no_progress)
    paper = model_on_paper(rows, args.bandwidth, args.latency)
    print("\n" + table(rows) + "\n\n" + paper)
    paths = write(args.device, rows, args.out, paper)
    print("\nwrote " + ", ".join(paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
