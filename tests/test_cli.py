"""The command line end to end: `fastnn train` on the bundled digits, its error paths, and the
files `fastnn bench` writes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fastnn import _backend
from fastnn.benchmarks import _harness as H

HERE = os.path.dirname(__file__)


def fastnn_cli(*args, timeout=300):
    # From the tests folder, so that the installed package is the one run.
    return subprocess.run([sys.executable, "-m", "fastnn", *args], capture_output=True, text=True, cwd=HERE,
                          timeout=timeout)


def test_train_on_digits_reaches_the_stated_accuracy(tmp_path):
    out = tmp_path / "run"
    result = fastnn_cli("train", "--out", str(out), "--verbose", "0")
    assert result.returncode == 0, result.stderr
    line = next(l for l in result.stdout.splitlines() if l.startswith("test accuracy:"))
    accuracy = float(line.split()[2])
    assert accuracy >= 0.95, result.stdout
    assert sorted(os.listdir(out)) == ["checkpoint.npz", "curves.png", "metrics.json", "model.npz"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] == pytest.approx(accuracy, abs=1e-4)
    assert metrics["samples"] == {"train": 1437, "test": 360}
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {out / 'model.npz'}, {out / 'curves.png'}" in result.stdout
    assert f"model file: {out / 'model.npz'}" in result.stdout


def test_checkpoint_of_the_main_job_loads_back(tmp_path):
    import fastnn as fnn
    from fastnn.job import JobConfig, build_model

    out = tmp_path / "run"
    result = fastnn_cli("train", "--data", "spirals", "--epochs", "3", "--hidden", "16", "--out", str(out),
                        "--verbose", "0")
    assert result.returncode == 0, result.stderr
    model = build_model(2, 3, JobConfig(hidden=(16,)))
    extras = fnn.load(out / "checkpoint.npz", model=model)
    assert tuple(extras["config"]["hidden"]) == (16,) and len(extras["history"]["loss"]) == 3


def test_state_dtype_option_trains_with_int8_state_and_checkpoints_it(tmp_path):
    """`--state-dtype int8`: the job's Adam keeps int8 codes for the large weights (float32 for
    tensors under the int8 size), the checkpoint holds them and loads into an int8 Adam."""
    import fastnn as fnn
    from fastnn import optim
    from fastnn.job import JobConfig, build_model

    out = tmp_path / "run"
    result = fastnn_cli("train", "--epochs", "2", "--state-dtype", "int8", "--out", str(out), "--verbose", "0")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.8 and metrics["optimizer"] == {"rule": "adam", "state_dtype": "int8"}
    model = build_model(64, 10, JobConfig())
    opt = optim.Adam(model.parameters(), state_dtype="int8")
    extras = fnn.load(out / "checkpoint.npz", model=model, optimizer=opt)
    assert extras["config"]["state_dtype"] == "int8"
    sizes = [p.size for p in model.parameters()]
    kinds = [opt.state_dict()["state"][k]["exp_avg"].dtype for k in range(len(sizes))]
    assert kinds == [np.uint8 if n >= 4096 else np.float32 for n in sizes]
    assert np.uint8 in kinds and np.float32 in kinds


def test_train_on_a_csv_file_and_the_tiny_run_writes_everything(tmp_path, rng):
    X = rng.standard_normal((120, 3))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    path = tmp_path / "data.csv"
    np.savetxt(path, np.column_stack([X, y]), delimiter=",", header="a,b,c,target", comments="", fmt="%.6f")
    result = fastnn_cli("train", "--data", str(path), "--label-column", "target", "--epochs", "2", "--hidden", "8",
                        "--out", str(tmp_path / "out"), "--verbose", "0")
    assert result.returncode == 0, result.stderr
    assert "test accuracy:" in result.stdout
    assert (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.parametrize("args,message", [
    (["--data", "missing.csv"], "data file not found: missing.csv"),
    (["--data", "cats"], "unknown dataset 'cats'"),
    (["--optimizer", "lion"], "invalid choice: 'lion'"),
    (["--hidden", "64,x"], "comma-separated layer widths"),
    (["--dropout", "1.5"], "argument --dropout: must be in [0, 1), got 1.5"),
    (["--state-dtype", "fp8"], "invalid choice: 'fp8'"),
    (["--optimizer", "rprop", "--state-dtype", "int8"], "--state-dtype int8 is not available with --optimizer rprop"),
])
def test_train_errors_are_clear(tmp_path, args, message):
    result = fastnn_cli("train", *args, "--epochs", "1", "--out", str(tmp_path / "x"), "--verbose", "0")
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_train_reports_a_bad_csv_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b,label\n1,2,0\n3,4,1\n")
    result = fastnn_cli("train", "--data", str(path), "--label-column", "target", "--out", str(tmp_path / "x"))
    assert result.returncode != 0 and "no column named 'target'" in result.stderr and "['a', 'b', 'label']" in result.stderr


def test_cuda_without_a_gpu_is_refused(tmp_path):
    if _backend.cuda_device_count() > 0:
        pytest.skip("a GPU is visible here")
    for command in (["train", "--device", "cuda", "--out", str(tmp_path / "x")], ["bench", "--device", "cuda"]):
        result = fastnn_cli(*command)
        assert result.returncode == 2, result.stderr
        assert "--device cuda:" in result.stderr and "Traceback" not in result.stderr


def test_bench_refuses_an_unwritable_out_before_measuring(tmp_path):
    (tmp_path / "a_file").write_text("")
    for command in (["bench", "optim"], ["bench", "mlp"], ["bench", "dist"]):
        result = fastnn_cli(*command, "--quick", "--out", str(tmp_path / "a_file" / "results"), timeout=60)
        assert result.returncode == 2, result.stderr
        assert "--out" in result.stderr and "cannot write there (Not a directory)" in result.stderr
        assert "Traceback" not in result.stderr and "memory bandwidth" not in result.stdout  # nothing was measured


def test_memory_bandwidth_is_a_stream_triad_in_place():
    if _backend._C is None:
        pytest.skip("no native CPU kernels")
    n = 100_003
    a, b, c = np.empty(n), np.random.default_rng(0).random(n), np.random.default_rng(1).random(n)
    _backend._C.cpu.stream_triad(a.ctypes.data, b.ctypes.data, c.ctypes.data, 3.0, n)
    np.testing.assert_allclose(a, b + 3.0 * c, rtol=1e-15)  # one rounding (FMA) or two
    probe = H.bandwidth_probe("cpu", array_bytes=1 << 20)  # small: only the plumbing
    before = np.full(1 << 17, 1.0)
    probe.run()  # a = a + s b on the probe's own arrays: one pass of 24 bytes per element
    assert probe.bytes == 3 * (1 << 20) and probe.how.startswith("in-place STREAM triad a = a + s b, 2 x 0.00 GiB")
    gbs, how = H.memory_bandwidth("cpu", array_bytes=1 << 20, repeats=1)
    assert gbs > 0 and how.endswith("best of 1") and before.sum() == 1 << 17


def test_the_bandwidth_row_is_each_case_s_yardstick():
    rows = [H.Result("demo", "case A", H.BANDWIDTH_ROW, "cpu", ms=1.0, bytes=8_000_000),
            H.Result("demo", "case A", "fastnn", "cpu", ms=2.0, bytes=4_000_000),
            H.Result("demo", "case B", "fastnn", "cpu", ms=2.0, bytes=4_000_000)]
    markdown = H.table(rows, bandwidth_gbs=10.0)
    assert f"| case A | {H.BANDWIDTH_ROW} | 1.000 | 8.0 | - | 100 | - |" in markdown
    assert "| case A | fastnn | 2.000 | 2.0 | - | 25 | 1.00x |" in markdown  # 2 of the case's own 8 GB/s
    assert "| case B | fastnn | 2.000 | 2.0 | - | 20 | 1.00x |" in markdown  # no row: the run's reading


def test_bench_files_json_markdown_and_chart(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [H.Result("demo", "case A", "fastnn", "cpu", ms=2.0, bytes=4_000_000),
            H.Result("demo", "case A", "NumPy", "cpu", ms=5.0, bytes=4_000_000),
            H.skipped("demo", "case A", "PyTorch", "cpu", "torch not installed")]
    paths = H.write("demo", "cpu", rows, str(tmp_path), bandwidth=(10.0, "test"))
    data = json.loads(open(paths["json"]).read())
    assert [r["impl"] for r in data["results"]] == ["fastnn", "NumPy", "PyTorch"]
    assert data["results"][0]["gbs"] == pytest.approx(2.0)
    assert data["bandwidth_gbs"] == 10.0 and data["bandwidth_measured_with"] == "test"
    markdown = open(paths["md"]).read()
    assert "| case A | NumPy | 5.000 |" in markdown and "2.50x" in markdown and "skipped: torch not installed" in markdown
    assert "% of bandwidth" in markdown and "| case A | fastnn | 2.000 | 2.0 | - | 20 | 1.00x |" in markdown
    assert open(paths["png"], "rb").read()[:4] == b"\x89PNG"
