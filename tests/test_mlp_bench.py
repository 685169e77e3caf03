"""The MLP benchmark's code path on the CPU at small sizes: every competitor trains the same
network from the same weights with the same optimizer (their losses agree step by step), and a
quick run produces its rows, targets and files. No timing is asserted."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fastnn import _bf16
from fastnn.benchmarks import mlp


def _losses(impl, steps=4):
    out = []
    for _ in range(steps):
        impl.step()
        out.append(impl.loss())
    return out


@pytest.mark.parametrize("batchnorm", [False, True])
def test_competitors_train_the_same_network(batchnorm):
    case = mlp.Case((20, 16, 16, 6), 64, batchnorm=batchnorm)
    prob = mlp.problem(case, seed=3)
    expected = _losses(mlp.plain_impl(case, prob, "cpu"))
    assert expected[-1] < expected[0]  # it learns
    for impl in (mlp.fastnn_impl(case, prob, "cpu"), mlp.fastnn_impl(case, prob, "cpu", reference=True),
                 mlp.fastnn_impl(case, prob, "cpu", fused=True)):
        np.testing.assert_allclose(_losses(impl), expected, rtol=2e-5)
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    np.testing.assert_allclose(_losses(mlp.torch_impl(case, prob, "cpu")), expected, rtol=2e-5)


def test_problem_and_flops():
    case = mlp.Case((784, 512, 512, 10), 1024)
    assert case.flops == 2 * 1024 * (3 * (784 * 512 + 512 * 512 + 512 * 10) - 784 * 512)
    assert case.name == "784-512-512-10, batch 1024, fp32"
    assert mlp.Case((64, 16), 8, batchnorm=True, precision="medium").name == "64-16 +BN, batch 8, bf16"
    prob = mlp.problem(case)
    assert [w.shape for w, _ in prob.weights] == [(784, 512), (512, 512), (512, 10)]
    assert prob.x.dtype == np.float32 and prob.x.shape == (1024, 784)
    assert prob.labels.min() >= 0 and prob.labels.max() < 10


def test_cases_carry_the_issue_targets():
    cpu = mlp.cases("cpu", quick=False)
    assert [c.sizes for c in cpu] == [(784, 512, 512, 10), (64, 64, 64, 64, 16)]
    assert dict(cpu[0].targets) == {mlp.TORCH: 1.0, "NumPy (cs231n-style)": 2.0}
    assert dict(cpu[0].medium_targets) == {mlp.TORCH: 1.5}
    gpu = mlp.cases("cuda", quick=False)
    assert sum(c.sizes == (784, 2048, 2048, 10) for c in gpu) == 4
    assert {(c.precision, c.batchnorm) for c in gpu if c.batch == 8192 and c.sizes[0] == 784} == {
        ("high", False), ("high", True), ("medium", False), ("medium", True)}


def test_quick_run_and_files(tmp_path, capsys):
    results = mlp.run("cpu", quick=True, progress=False, min_time=0.005, settle=0.0)
    cases = {c.name for c in mlp.cases("cpu", quick=True)}
    assert {r.case for r in results} == cases
    for case in cases:
        rows = {r.impl: r for r in results if r.case == case}
        for impl in ("fastnn", "fastnn reference (NumPy)", "NumPy (cs231n-style)"):
            assert rows[impl].ms > 0 and rows[impl].tflops > 0
        assert mlp.TORCH in rows  # measured, or listed as skipped with the reason
        assert rows[mlp.GEMM_FLOOR].ms > 0
        medium = rows[mlp.FASTNN_MEDIUM]  # measured where bf16 GEMMs run, else skipped saying why
        assert medium.ms > 0 if _bf16.available() else medium.note.startswith("skipped: no bf16 GEMM:")
    line = mlp.throughput(results).splitlines()[2]
    assert line.startswith("| 784-128-128-10, batch 256, fp32 | fastnn |")

    assert mlp.main(["--quick", "--cases", "64-64", "--min-time", "0.005", "--settle", "0", "--no-progress",
                     "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "mlp_cpu.json").read_text())
    assert {r["case"] for r in data["results"]} == {"64-64-64-16, batch 2048, fp32"}
    assert "samples/s" in (tmp_path / "mlp_cpu.md").read_text()
    assert "speed-up of fastnn" in capsys.readouterr().out


def test_targets_report_met_and_missing():
    from fastnn.benchmarks._harness import Result

    case = mlp.cases("cpu", quick=False)[1]
    rows = [Result("mlp", case.name, "fastnn", "cpu", ms=10.0), Result("mlp", case.name, mlp.TORCH, "cpu", ms=16.0)]
    (line,) = mlp.targets(rows, "cpu")
    assert "1.60x (met" in line
    rows[1].ms = 12.0
    assert "NOT met" in mlp.targets(rows, "cpu")[0]
    assert "not measured" in mlp.targets(rows[:1], "cpu")[0]


def test_medium_target_compares_the_medium_row_with_torch_fp32():
    from fastnn.benchmarks._harness import Result

    case = mlp.cases("cpu", quick=False)[0]
    rows = [Result("mlp", case.name, impl, "cpu", ms=ms)
            for impl, ms in (("fastnn", 17.0), (mlp.FASTNN_MEDIUM, 10.0), (mlp.TORCH, 17.0))]
    lines = mlp.targets(rows, "cpu")
    assert lines[-1].startswith(f"{case.name}: {mlp.FASTNN_MEDIUM} vs torch eager fp32, target >= 1.5x: 1.70x (met")
    assert mlp.targets(rows[::2], "cpu")[-1].endswith("not measured")


def test_in_precision_restores_the_setting():
    from fastnn import functional as F

    seen = []
    mlp.in_precision(lambda: seen.append(F.get_matmul_precision()), "medium")()
    assert seen == ["medium"] and F.get_matmul_precision() == "highest"
