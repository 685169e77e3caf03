"""The data-parallel benchmark's code path at tiny sizes: the timed step in one process (with
and without the reducer), a configuration launched under ``mpiexec -n 2``, and the arithmetic
of its table and of the model on paper. No timing is asserted."""

from __future__ import annotations

import pytest

from fastnn import distributed
from fastnn.benchmarks import dist, mlp

import dist_util as du

TINY = {"sizes": [8, 6, 3], "batch": 16, "device": "cpu", "warmup": 1, "rounds": 2, "min_time": 0.002}


@pytest.fixture(autouse=True)
def alone():
    distributed.shutdown()
    yield
    distributed.shutdown()


@pytest.mark.parametrize("backend", [None, "local"])
def test_worker_times_the_step_and_counts_its_bytes(backend):
    result = dist.worker({**TINY, "backend": backend})
    assert result["ms"] > 0 and result["bytes"] == 4 * (8 * 6 + 6 + 6 * 3 + 3)
    assert (result["sync_ms"] is None) == (backend is None)


def test_two_ranks_under_mpiexec_give_a_row(monkeypatch):
    env, why = du.mpi_setup()
    if env is None:
        pytest.skip(why)
    monkeypatch.setattr(dist.os, "environ", env)
    row = dist.launch(dist.Config(dist.MPI_TWO, 2, 1, "mpi"), mlp.Case((8, 6, 3), 16), "cpu", quick=True,
                      timeout=120)
    assert row.ms is not None, row.note
    assert row.sync_ms is not None and row.bytes == 4 * 75 and row.ring_bytes == row.bytes


def test_table_and_model_on_paper():
    rows = [dist.Row("c", dist.ONE_ALL, 1, 100, ms=10.0, bytes=10**6),
            dist.Row("c", dist.ONE_THREAD, 1, 100, ms=20.0, bytes=10**6),
            dist.Row("c", dist.MPI_TWO, 2, 100, ms=25.0, sync_ms=5.0, bytes=10**6),
            dist.Row("c", "4 processes", 4, 100, note="skipped: no mpiexec")]
    assert rows[2].samples_per_s == 8000 and rows[2].ring_bytes == 10**6
    lines = dist.table(rows).splitlines()
    assert "| 80% | 0.80x |" in lines[4]  # 8000 / (2 * 5000); 8000 / 10000
    assert "skipped: no mpiexec" in lines[5]
    paper = dist.model_on_paper(rows, bandwidth_gbs=1.0, latency_us=0.0).splitlines()
    # N = 2: 2 (2 - 1) * 1 MB / (2 * 1 GB/s) = 1 ms added to 10 ms
    assert paper[-1].startswith("| c | 1.00 MB | 10.00 | 91% |")


def test_fastnn_bench_offers_the_suite():
    from fastnn.__main__ import build_parser
    from fastnn.benchmarks import SUITES

    assert "dist" in SUITES and build_parser().parse_args(["bench", "dist", "--quick"]).suite == "dist"
    assert [c.label for c in dist.configs("cpu")] == [dist.ONE_ALL, dist.ONE_THREAD, dist.MPI_TWO]
