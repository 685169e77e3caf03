"""Dispatch and build: backend_info, path selection, the no-extension fallback, the CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastnn
from fastnn import _backend
from fastnn import functional as F

KEYS = {"version", "native_cpu", "simd", "omp_threads", "cuda_compiled", "cuda_devices", "cublaslt_version"}


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=os.path.dirname(__file__),
                          env={**os.environ, **env}, timeout=120)


def test_backend_info_has_the_documented_keys():
    info = fastnn.backend_info()
    assert KEYS <= set(info)
    assert info["version"] == fastnn.__version__
    assert isinstance(info["native_cpu"], bool) and isinstance(info["cuda_compiled"], bool)
    assert isinstance(info["cuda_devices"], int) and info["cuda_devices"] >= 0
    if info["native_cpu"]:
        assert info["simd"] in {"avx512", "avx2+fma", "avx2", "avx", "sse4.2", "sse2", "neon", "sve", "scalar"}
        assert info["omp_threads"] >= 1
    if info["cuda_compiled"]:
        assert info["cublaslt_version"] > 0
    else:
        assert info["cublaslt_version"] is None and info["cuda_devices"] == 0


def test_path_selection_follows_the_backend(rng):
    x = rng.standard_normal(4).astype(np.float32)
    with fastnn.use_backend("reference"):
        assert _backend.path_of(x) == "reference"
        assert fastnn.get_backend() == "reference"
    expected = "cpu" if _backend.native_available("cpu") else "reference"
    assert _backend.path_of(x) == expected
    with pytest.raises(ValueError, match="backend must be one of"):
        fastnn.set_backend("fortran")
    assert fastnn.get_backend() == "auto"


def test_environment_variable_forces_the_reference_path():
    result = run_python("import fastnn, numpy as np; from fastnn import _backend;"
                        "print(fastnn.get_backend(), _backend.path_of(np.ones(3, np.float32)))",
                        FASTNN_BACKEND="numpy")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["reference", "reference"]
    bad = run_python("import fastnn", FASTNN_BACKEND="bogus")
    assert bad.returncode != 0 and "backend must be one of" in bad.stderr


def test_import_does_not_import_gpu_or_plot_libraries():
    result = run_python("import sys, fastnn, fastnn.functional; fastnn.backend_info();"
                        "print(sorted(m for m in ('cupy', 'torch', 'matplotlib') if m in sys.modules))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_without_the_extension_everything_runs_on_the_reference_path():
    code = ("import sys, warnings\n"
            "sys.modules['fastnn._C'] = None  # makes `from . import _C` fail, as a failed build would\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    import fastnn, numpy as np\n"
            "    from fastnn import functional as F\n"
            "    y = F.softmax_forward(np.array([[0.0, 1.0]], np.float32))\n"
            "print(len([w for w in caught if 'reference path' in str(w.message)]), fastnn.backend_info()['native_cpu'],"
            " round(float(y[0, 1]), 4))\n")
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "False", "0.7311"]


def test_cli_info():
    result = subprocess.run([sys.executable, "-m", "fastnn", "info", "--json"], capture_output=True, text=True,
                            cwd=os.path.dirname(__file__), timeout=120)
    assert result.returncode == 0, result.stderr
    assert KEYS <= set(json.loads(result.stdout))
    readable = subprocess.run([sys.executable, "-m", "fastnn", "info"], capture_output=True, text=True,
                              cwd=os.path.dirname(__file__), timeout=120)
    assert readable.returncode == 0 and "native_cpu" in readable.stdout


CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not os.path.isdir(os.path.join(CHECKOUT, "csrc")), reason="the tests are not in a checkout")
@pytest.mark.parametrize("command", [["-m", "fastnn", "info", "--json"],
                                     ["-c", "import json, fastnn; print(json.dumps(fastnn.backend_info()))"]])
def test_the_checkout_runs_its_own_build(command):
    # From the repository root Python puts the checkout first on sys.path (python -m pytest
    # does too): the editable install must still give it the compiled extension.
    result = subprocess.run([sys.executable, *command], capture_output=True, text=True, cwd=CHECKOUT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["native_cpu"], "the checkout imported no compiled extension: pip install -e ."
    where = subprocess.run([sys.executable, "-c", "import fastnn; print(fastnn.__file__)"], capture_output=True,
                           text=True, cwd=CHECKOUT, timeout=120)
    assert where.stdout.strip() == os.path.join(CHECKOUT, "fastnn", "__init__.py")


def test_native_and_reference_agree_through_the_public_api(rng):
    if not _backend.native_available("cpu"):
        pytest.skip("no native CPU kernels in this build")
    x = rng.standard_normal((50, 40)).astype(np.float32)
    with fastnn.use_backend("native"):
        native = F.gelu_forward(x, approximate="tanh")
    with fastnn.use_backend("reference"):
        reference = F.gelu_forward(x, approximate="tanh")
    np.testing.assert_allclose(native, reference, rtol=1e-5, atol=1e-6)


def test_torch_cpu_tensors_are_updated_in_place():
    torch = pytest.importorskip("torch")
    t = torch.linspace(-2, 2, 9, dtype=torch.float32)
    F.relu_forward(t, out=t)
    assert torch.equal(t, torch.clamp(torch.linspace(-2, 2, 9), min=0))


@pytest.mark.gpu
def test_gpu_outputs_and_streams_follow_the_array_device(rng):
    # Kernels run on the array's device whatever device is current; what fastnn allocates for
    # them (outputs, workspaces) must live there too, and the stream must be that device's.
    import cupy

    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs")
    with cupy.cuda.Device(1):
        x = cupy.asarray(rng.standard_normal((64, 40)).astype(np.float32))
        gamma, beta = cupy.ones(40, np.float32), cupy.zeros(40, np.float32)
        W = cupy.asarray(rng.standard_normal((40, 8)).astype(np.float32))
        labels = cupy.asarray(rng.integers(0, 8, 64))
        side = cupy.cuda.Stream(non_blocking=True)
    with cupy.cuda.Device(0):
        with cupy.cuda.Device(1):
            side.use()
        try:
            assert _backend.stream_of(x) == side.ptr  # device 1's current stream, not device 0's
        finally:
            with cupy.cuda.Device(1):
                cupy.cuda.Stream.null.use()
        outputs = [F.relu_forward(x), F.softmax_forward(x), F.prelu_backward(x, x, gamma)[1],
                   F.dense_forward(x, W), F.softmax_cross_entropy_forward(F.dense_forward(x, W), labels)]
        y, saved = F.batchnorm_forward(x, gamma, beta, None, None, training=True)
        outputs += [y, *saved, F.batchnorm_backward(x, x, gamma, saved, dgamma=cupy.zeros_like(gamma),
                                                    dbeta=cupy.zeros_like(beta))]
        assert cupy.cuda.runtime.getDevice() == 0
    assert [a.device.id for a in outputs] == [1] * len(outputs)
    with cupy.cuda.Device(1):
        expected = np.maximum(cupy.asnumpy(x), 0)
        np.testing.assert_array_equal(cupy.asnumpy(outputs[0]), expected)
        assert np.isfinite(float(outputs[4]))


def test_pandas_objects_are_arrays():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]}, dtype=np.float32)
    a = _backend.as_array(frame, "X")
    assert isinstance(a, np.ndarray) and a.dtype == np.float32
    np.testing.assert_array_equal(a, [[1.0, 3.0], [2.0, 4.0]])
    np.testing.assert_array_equal(_backend.as_array(frame["b"], "y"), [3.0, 4.0])
    np.testing.assert_array_equal(F.relu_forward(frame - 2.5), [[0.0, 0.5], [0.0, 1.5]])


@pytest.mark.parametrize("value,message", [
    (np.float64(-1.0), "lr must be >= 0.0, got -1.0"), (np.float32(np.inf), "lr must be finite, got inf"),
    (np.int64(5), "lr must be <= 1.0, got 5"), (-2.5, "lr must be >= 0.0, got -2.5"),
])
def test_scalar_checks_show_numpy_scalars_as_the_numbers_they_hold(value, message):
    """Hyperparameters often arrive as NumPy scalars (a value read from an array); the message
    shows the number, not NumPy 2's np.float64(-1.0)."""
    with pytest.raises(ValueError) as info:
        _backend.check_scalar(value, "lr", low=0.0, high=1.0)
    assert str(info.value) == message
    with pytest.raises(ValueError, match=r"test_size as a fraction must be in \(0, 1\), got 2\.0$"):
        fastnn.data.train_test_split(np.zeros((5, 2)), test_size=np.float64(2.0))
