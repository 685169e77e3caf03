"""The captured training step (fastnn.cuda_graph.capture) and what it rests on: dropout counters kept
in memory, layers and losses that write into fixed buffers, a step that allocates nothing.

The GPU tests (marked gpu) compare captured replays with the same number of eager steps; the
others run here on NumPy arrays: the device-counter dropout API, buffer reuse, the allocation-
free step, argument validation, and, with a stand-in for CuPy's stream capture, what a
captured step owns and the refusal of a non-capturable optimizer under capture."""

from __future__ import annotations

import contextlib
import sys
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest

import fastnn as fnn
import fastnn.functional as F
from fastnn import _backend as B
from fastnn import cuda_graph, nn, optim
from fastnn import reference as R
from fastnn._backend import pointer, to_numpy
from fastnn.optim.lr_scheduler import StepLR

from conftest import GPU
from util import randn


def _model(seed, dtype=np.float32, p=0.25):
    """Dense, BatchNorm+ReLU, Dropout, Dense(gelu_tanh), Dropout, Dense: the same weights and
    dropout seeds for the same ``seed``."""
    s = np.random.default_rng(seed).integers(2**31, size=5)
    return nn.Sequential(
        nn.Dense(12, 16, seed=int(s[0]), dtype=dtype), nn.BatchNorm(16, dtype=dtype), nn.ReLU(),
        nn.Dropout(p, seed=int(s[1])),
        nn.Dense(16, 16, activation="gelu_tanh", seed=int(s[2]), dtype=dtype), nn.Dropout(p, seed=int(s[3])),
        nn.Dense(16, 5, seed=int(s[4]), dtype=dtype))


def _batch(xp, rng, n=32, dtype=np.float32):
    return randn(xp, rng, (n, 12), dtype), xp.asarray(rng.integers(0, 5, n))


def _eager_step(model, loss_fn, opt, x, y):
    opt.zero_grad()
    loss = loss_fn.forward(model.forward(x, training=True), y)
    model.backward(loss_fn.backward(), need_input_grad=False)
    opt.step()
    return loss


# ---------------------------------------------------------------------------------------------
# Dropout with the counter in memory.


@pytest.mark.parametrize("counter", [0, 41, 2**32 + 3, 2**64 - 1])
def test_dropout_counter_array_gives_the_int_counters_mask(xp, path, rng, counter):
    x = randn(xp, rng, (7, 33), np.float32)
    words = xp.asarray(np.array([counter], dtype=np.uint64))
    y_int = F.dropout_forward(x, 0.3, seed=12345, counter=counter)
    y_arr = F.dropout_forward(x, 0.3, seed=12345, counter=words)
    np.testing.assert_array_equal(to_numpy(y_arr), to_numpy(y_int))
    np.testing.assert_array_equal(to_numpy(y_arr), to_numpy(R.dropout_forward(x, 0.3, 12345, counter)))
    dy = randn(xp, rng, (7, 33), np.float32)
    np.testing.assert_array_equal(to_numpy(F.dropout_backward(dy, 0.3, seed=12345, counter=words)),
                                  to_numpy(F.dropout_backward(dy, 0.3, seed=12345, counter=counter)))


def test_dropout_counter_array_is_read_when_the_kernel_runs(xp, path, rng):
    x = randn(xp, rng, (64,), np.float64)
    words = xp.asarray(np.array([5, 0], dtype=np.uint64))
    F.dropout_next_counter(words)
    first = to_numpy(F.dropout_forward(x, 0.5, seed=3, counter=words[1:]))
    F.dropout_next_counter(words)
    second = to_numpy(F.dropout_forward(x, 0.5, seed=3, counter=words[1:]))
    np.testing.assert_array_equal(to_numpy(words), [7, 6])
    np.testing.assert_array_equal(first, to_numpy(F.dropout_forward(x, 0.5, seed=3, counter=5)))
    np.testing.assert_array_equal(second, to_numpy(F.dropout_forward(x, 0.5, seed=3, counter=6)))


def test_dropout_next_counter_wraps_like_the_kernels(xp, path):
    words = xp.asarray(np.array([2**64 - 1, 9], dtype=np.uint64))
    F.dropout_next_counter(words)
    np.testing.assert_array_equal(to_numpy(words), np.array([0, 2**64 - 1], dtype=np.uint64))


def test_dropout_counter_array_validation():
    x = np.ones((4, 4), np.float32)
    with pytest.raises(TypeError, match="uint64"):
        F.dropout_forward(x, 0.5, seed=1, counter=np.zeros(1, np.int64))
    with pytest.raises(ValueError, match="1 element"):
        F.dropout_forward(x, 0.5, seed=1, counter=np.zeros(2, np.uint64))
    with pytest.raises(TypeError, match="integer or a uint64 array"):
        F.dropout_forward(x, 0.5, seed=1, counter=1.5)
    with pytest.raises(ValueError, match="2 elements"):
        F.dropout_next_counter(np.zeros(3, np.uint64))
    with pytest.raises(ValueError, match="2 elements"):
        F.dropout_next_counter(np.zeros((1, 2), np.uint64))
    frozen = np.zeros(2, np.uint64)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        F.dropout_next_counter(frozen)
    with pytest.raises(ValueError, match="C-contiguous"):
        F.dropout_next_counter(np.zeros(4, np.uint64)[::2])


def test_dropout_layer_with_the_counter_in_memory_draws_the_same_masks(xp, path, rng):
    host, kept = nn.Dropout(0.4, seed=77), nn.Dropout(0.4, seed=77).counter_on_device()
    x = randn(xp, rng, (9, 10), np.float32)
    for _ in range(3):
        np.testing.assert_array_equal(to_numpy(kept.forward(x, training=True)),
                                      to_numpy(host.forward(x, training=True)))
        dy = randn(xp, rng, (9, 10), np.float32)
        np.testing.assert_array_equal(to_numpy(kept.backward(dy)), to_numpy(host.backward(dy)))
    assert kept.counter == host.counter == 3
    kept.forward(x, training=False)  # evaluation draws nothing and keeps the counter
    assert kept.counter == 3
    kept.counter = 2**64 - 2
    host.counter = 2**64 - 2
    np.testing.assert_array_equal(to_numpy(kept.forward(x, training=True)),
                                  to_numpy(host.forward(x, training=True)))
    assert kept.counter == 2**64 - 1
    kept.counter_on_device(False)
    assert kept._words is None and kept.counter == 2**64 - 1
    np.testing.assert_array_equal(to_numpy(kept.forward(x, training=True)),
                                  to_numpy(host.forward(x, training=True)))


def test_dropout_counter_setter_validates():
    layer = nn.Dropout(0.5, seed=1).counter_on_device()
    with pytest.raises(ValueError, match="counter"):
        layer.counter = -1
    with pytest.raises(TypeError, match="counter"):
        layer.counter = 1.0


# ---------------------------------------------------------------------------------------------
# A step on fixed buffers.


def test_batchnorm_and_loss_write_into_fixed_buffers(rng):
    model = nn.Sequential(nn.Dense(12, 16, seed=1), nn.BatchNorm(16), nn.ReLU(), nn.Dense(16, 5, seed=2))
    model.reuse_outputs(True)
    loss_fn = nn.SoftmaxCrossEntropy().reuse_outputs(True)
    out = np.empty((), np.float32)
    x, y = _batch(np, rng)
    addresses = None
    for _ in range(2):
        assert loss_fn.forward(model.forward(x, training=True), y, sync=False, out=out) is out
        model.backward(loss_fn.backward(), need_input_grad=False)
        saved = model[1]._saved[2]
        now = [pointer(a) for a in (*saved, model[1]._saved[1], loss_fn.backward())]
        assert addresses in (None, now)
        addresses = now
    assert float(out) == pytest.approx(loss_fn.forward(model.forward(x, training=True), y))


def test_a_training_step_allocates_no_arrays_once_warm(rng):
    model = _model(1)
    for layer in model:
        if isinstance(layer, nn.Dropout):
            layer.counter_on_device()
    model.reuse_outputs(True)
    loss_fn = nn.SoftmaxCrossEntropy().reuse_outputs(True)
    opt = optim.Adam(model.parameters(), lr=1e-3, capturable=True)
    x, y = _batch(np, rng, n=2048)  # large enough that a step's Python objects stay far below an activation
    out = np.empty((), np.float32)
    cuda_graph._train(model, loss_fn, opt, x, y, out)
    smallest = 2048 * 5 * 4  # bytes of the smallest activation (the logits)
    tracemalloc.start()
    try:
        for _ in range(3):
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            cuda_graph._train(model, loss_fn, opt, x, y, out)
            assert tracemalloc.get_traced_memory()[1] - before < smallest / 2
    finally:
        tracemalloc.stop()


def test_the_captured_step_body_matches_eager_steps_on_the_cpu(rng):
    # What capture records, run eagerly on NumPy with the counters in memory and a capturable
    # optimizer, against plain eager training with host counters.
    model, twin = _model(2), _model(2)
    for layer in model:
        if isinstance(layer, nn.Dropout):
            layer.counter_on_device()
    model.reuse_outputs(True)
    loss_fn, twin_loss = nn.SoftmaxCrossEntropy().reuse_outputs(True), nn.SoftmaxCrossEntropy()
    opt = optim.Adam(model.parameters(), lr=1e-2, capturable=True)
    twin_opt = optim.Adam(twin.parameters(), lr=1e-2)
    sched, twin_sched = StepLR(opt, step_size=1, gamma=0.5), StepLR(twin_opt, step_size=1, gamma=0.5)
    out = np.empty((), np.float32)
    for k in range(5):
        x, y = _batch(np, rng)
        cuda_graph._train(model, loss_fn, opt, x, y, out)
        assert float(out) == pytest.approx(_eager_step(twin, twin_loss, twin_opt, x, y), rel=1e-5)
        if k % 2:
            sched.step()
            twin_sched.step()
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
    assert [d.counter for d in model if isinstance(d, nn.Dropout)] == [5, 5]


def test_loss_forward_out_is_validated(rng):
    loss_fn = nn.MSE()
    pred, target = randn(np, rng, (4, 3), np.float32), randn(np, rng, (4, 3), np.float32)
    with pytest.raises(ValueError, match="out"):
        loss_fn.forward(pred, target, out=np.empty(1, np.float32))
    with pytest.raises(TypeError, match="out"):
        loss_fn.forward(pred, target, out=np.empty((), np.float64))


# ---------------------------------------------------------------------------------------------
# Capture with a stand-in for CuPy (host arrays, a stream whose capture is a flag): what the
# captured step owns, and the refusal of a non-capturable optimizer step under capture.


class _HostBuffer(np.ndarray):
    """A NumPy array with CuPy's ``set``, which CapturedStep copies host batches with."""

    def set(self, value, stream=None):
        self[...] = value


class _FakeStream:
    def __init__(self, cupy):
        self.cupy, self.capturing, self.ends, self.ptr = cupy, False, 0, 0x5

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def begin_capture(self):
        self.capturing = True

    def end_capture(self):
        self.capturing = False
        self.ends += 1
        self.cupy.at_capture_end()
        return SimpleNamespace(launch=lambda stream: None)


class _FakeCupy:
    """What CapturedStep asks of CuPy, on the host; ``at_capture_end`` runs as a capture ends."""

    def __init__(self):
        self.streams = []
        self.at_capture_end = lambda: None
        self.cuda = SimpleNamespace(Device=lambda index: contextlib.nullcontext(), Stream=self._stream)

    def _stream(self, non_blocking=False):
        self.streams.append(_FakeStream(self))
        return self.streams[-1]

    @staticmethod
    def empty(shape, dtype):
        return np.empty(shape, dtype).view(_HostBuffer)

    @staticmethod
    def copyto(dst, src):
        np.copyto(dst, src)


@pytest.fixture
def fake_capture(monkeypatch):
    cupy = _FakeCupy()
    monkeypatch.setattr(B, "capturing", lambda a: any(s.capturing for s in cupy.streams))
    return cupy


def _captured_parts(seed, capturable=True):
    model, loss_fn = _model(seed), nn.SoftmaxCrossEntropy()
    opt = optim.Adam(model.parameters(), lr=1e-2, capturable=capturable)
    return model, loss_fn, opt, [m for m in model.modules() if isinstance(m, nn.Dropout)]


def test_a_captured_step_owns_its_buffers_and_later_eager_calls_use_their_own(rng, fake_capture):
    model, loss_fn, opt, dropouts = _captured_parts(8)
    modules = [*model.modules(), loss_fn]
    recorded = []
    fake_capture.at_capture_end = lambda: recorded.extend(a for m in modules for a in m._workspace.values())
    step = cuda_graph.CapturedStep(fake_capture, 0, model, loss_fn, opt, *_batch(np, rng, n=64), 1, dropouts)
    assert len(recorded) >= 8  # the layers' outputs, aux, BatchNorm's statistics, the loss's gradient
    assert all(any(a is held for held in step._held) for a in recorded)
    for p in model.parameters():
        assert any(p.data is held for held in step._held) and any(p.grad is held for held in step._held)
    assert all(not m._workspace for m in modules)  # handed to the step
    assert not model._reuse_out and not model._reuse_dx and not loss_fn._reuse_out  # as before capture
    graph = [a for a in step._held if a.size]
    for n in (32, 64):  # a last partial batch, and a validation batch of the captured size
        x, y = _batch(np, rng, n=n)
        pred = model.forward(x, training=True)
        loss_fn.forward(pred, y)
        model.backward(loss_fn.backward(), need_input_grad=False)
        fresh = [pred, loss_fn.backward(), *(a for m in modules for a in m._workspace.values())]
        assert not any(np.shares_memory(f, g) for f in fresh for g in graph), n
    assert model.forward(x, training=False) is not model.forward(x, training=False)  # new outputs again


def test_capturing_a_step_of_a_non_capturable_optimizer_is_refused(rng, fake_capture):
    model, loss_fn, opt, dropouts = _captured_parts(9, capturable=False)
    with pytest.raises(RuntimeError, match="capturable=True"):
        cuda_graph.CapturedStep(fake_capture, 0, model, loss_fn, opt, *_batch(np, rng), 1, dropouts)
    assert fake_capture.streams[0].ends == 1  # the capture was ended
    assert opt.state[0]["step"] == 1  # the warm-up step only


@pytest.mark.parametrize("name", ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "Rprop"])
def test_a_non_capturable_optimizer_refuses_a_step_under_capture(rng, monkeypatch, name):
    cls = getattr(optim, name)
    w, g = randn(np, rng, (7, 3), np.float32), randn(np, rng, (7, 3), np.float32)
    opt = cls([w])
    opt.step([g])
    before = w.copy()
    monkeypatch.setattr(B, "capturing", lambda a: True)
    with pytest.raises(RuntimeError, match=f"{name}.step.. is being captured.*capturable=True"):
        opt.step([g])
    np.testing.assert_array_equal(w, before)
    capturable = cls([w], capturable=True)
    monkeypatch.setattr(B, "capturing", lambda a: False)
    capturable.step([g])  # eager: creates the state
    monkeypatch.setattr(B, "capturing", lambda a: True)
    capturable.step([g])  # captured: allowed
    assert not np.array_equal(w, before)


def test_the_torch_integration_refuses_a_step_under_graph_capture(rng, monkeypatch):
    torch = pytest.importorskip("torch")
    from fastnn.integrations import torch as fnt

    p = torch.nn.Parameter(torch.randn(6, dtype=torch.float32))
    p.grad = torch.randn(6)
    opt = fnt.Adam([p])
    opt.step()
    before = p.detach().clone()
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    with pytest.raises(RuntimeError, match="Adam.step.. is being captured.*capturable=True"):
        opt.step()
    assert torch.equal(p.detach(), before) and float(opt.state[p]["step"]) == 1


# ---------------------------------------------------------------------------------------------
# capture: argument checks (before anything needs a GPU) and what happens without one.


def _parts(rng, capturable=True):
    model = _model(3)
    return model, nn.SoftmaxCrossEntropy(), optim.Adam(model.parameters(), capturable=capturable)


def test_capture_checks_its_arguments(rng):
    model, loss_fn, opt = _parts(rng)
    x, y = _batch(np, rng)
    with pytest.raises(TypeError, match="model must be"):
        cuda_graph.capture(lambda v: v, loss_fn, opt, x, y)
    with pytest.raises(TypeError, match="loss must be"):
        cuda_graph.capture(model, nn.ReLU(), opt, x, y)
    with pytest.raises(TypeError, match="optimizer must be"):
        cuda_graph.capture(model, loss_fn, object(), x, y)
    with pytest.raises(ValueError, match="capturable=True"):
        cuda_graph.capture(model, loss_fn, optim.Adam(model.parameters()), x, y)
    for warmup in (0, 1.0, True):
        with pytest.raises(ValueError, match="warmup"):
            cuda_graph.capture(model, loss_fn, opt, x, y, warmup=warmup)


def test_capture_says_when_cupy_is_missing(rng, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy now raises ImportError
    model, loss_fn, opt = _parts(rng)
    with pytest.raises(RuntimeError, match="needs CuPy"):
        cuda_graph.capture(model, loss_fn, opt, *_batch(np, rng))


@pytest.mark.skipif(GPU, reason="checks the message on a machine without a GPU")
def test_capture_refuses_without_a_gpu(rng):
    model, loss_fn, opt = _parts(rng)
    with pytest.raises(RuntimeError, match="CuPy|GPU|CUDA"):
        cuda_graph.capture(model, loss_fn, opt, *_batch(np, rng))


def test_fnn_cuda_is_the_module():
    assert fnn.cuda_graph.capture is cuda_graph.capture


# ---------------------------------------------------------------------------------------------
# On a GPU: replays against eager steps.


@pytest.mark.gpu
def test_capture_refuses_a_model_on_the_cpu(rng):
    model, loss_fn, opt = _parts(rng)
    with pytest.raises(ValueError, match="model.to"):
        cuda_graph.capture(model, loss_fn, opt, *_batch(np, rng))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_captured_replays_match_eager_steps(rng, dtype):
    import cupy

    model, twin = _model(4, dtype).to("cuda"), _model(4, dtype).to("cuda")
    loss_fn, twin_loss = nn.SoftmaxCrossEntropy(), nn.SoftmaxCrossEntropy()
    opt = optim.Adam(model.parameters(), lr=1e-2, capturable=True)
    twin_opt = optim.Adam(twin.parameters(), lr=1e-2)
    sched, twin_sched = StepLR(opt, step_size=1, gamma=0.5), StepLR(twin_opt, step_size=1, gamma=0.5)
    x0, y0 = _batch(cupy, rng, dtype=dtype)
    step = cuda_graph.capture(model, loss_fn, opt, x0, y0, warmup=2)
    for _ in range(2):
        _eager_step(twin, twin_loss, twin_opt, x0, y0)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    for k in range(6):
        x, y = _batch(np, rng, dtype=dtype)
        x_gpu, y_gpu = cupy.asarray(x), cupy.asarray(y)
        loss = step(x_gpu, y_gpu) if k % 2 else step(x, y)  # device and host batches
        assert loss is step.loss
        expected = _eager_step(twin, twin_loss, twin_opt, x_gpu, y_gpu)
        np.testing.assert_allclose(float(loss), expected, **tol)
        assert step.item() == float(loss)
        if k % 2:
            sched.step()
            twin_sched.step()
    cupy.cuda.runtime.deviceSynchronize()
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), err_msg=name, **tol)
    assert [d.counter for d in model if isinstance(d, nn.Dropout)] == [8, 8]
    assert opt.state_dict()["state"][0]["step"] == 8
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5**3)


@pytest.mark.gpu
def test_captured_step_replays_on_its_buffers_and_checks_shapes(rng):
    import cupy

    model = _model(5).to("cuda")
    loss_fn = nn.SoftmaxCrossEntropy()
    opt = optim.Adam(model.parameters(), capturable=True)
    x, y = _batch(cupy, rng)
    step = cuda_graph.capture(model, loss_fn, opt, x, y.astype(cupy.int16))
    assert step.y.dtype == np.int64  # labels the loss can read without converting each step
    before = model[0].weight.data.copy()
    step()
    assert not bool((model[0].weight.data == before).all())
    with pytest.raises(ValueError, match="captured for"):
        step(x[:16], y[:16])


@pytest.mark.gpu
def test_captured_step_reports_labels_out_of_range(rng):
    import cupy

    model = _model(6).to("cuda")
    step = cuda_graph.capture(model, nn.SoftmaxCrossEntropy(), optim.Adam(model.parameters(), capturable=True),
                        *_batch(cupy, rng))
    x, y = _batch(cupy, rng)
    y[3] = 5
    step(x, y)
    with pytest.raises(ValueError, match="label 5 at index 3"):
        step.item()


@pytest.mark.gpu
def test_eager_calls_after_capture_never_touch_the_graphs_memory(rng):
    # Capture at batch 64, then a validation forward and loss at batch 32 (which, before the
    # step owned its buffers, replaced the layers' buffers and gave the graph's back to CuPy's
    # pool), then fill new arrays of the graph's buffer sizes, which the pool hands out first:
    # replays must leave them alone, and still train as an eager twin does.
    import cupy

    model, twin = _model(11).to("cuda"), _model(11).to("cuda")
    loss_fn, twin_loss = nn.SoftmaxCrossEntropy(), nn.SoftmaxCrossEntropy()
    opt = optim.Adam(model.parameters(), lr=1e-2, capturable=True)
    twin_opt = optim.Adam(twin.parameters(), lr=1e-2)
    x0, y0 = _batch(cupy, rng, n=64)
    step = cuda_graph.capture(model, loss_fn, opt, x0, y0)
    _eager_step(twin, twin_loss, twin_opt, x0, y0)
    xv, yv = _batch(cupy, rng, n=32)
    pred = model.forward(xv, training=False)
    loss_fn.forward(pred, yv)
    kept = pred.copy()
    shapes = {(tuple(a.shape), np.dtype(a.dtype).str) for a in step._held if B.is_cupy(a) and a.size}
    sentinels = [cupy.full(shape, 7, dtype) for shape, dtype in sorted(shapes) for _ in range(3)]
    cupy.cuda.runtime.deviceSynchronize()
    for _ in range(4):
        x, y = _batch(cupy, rng, n=64)
        loss = float(step(x, y))
        np.testing.assert_allclose(loss, _eager_step(twin, twin_loss, twin_opt, x, y), rtol=1e-4, atol=1e-5)
    cupy.cuda.runtime.deviceSynchronize()
    for s in sentinels:
        assert bool((s == 7).all()), f"a replay wrote into a new {s.dtype} array of shape {s.shape}"
    cupy.testing.assert_array_equal(pred, kept)  # the eager forward's output is its own
    full = model.forward(x0, training=False)
    assert not any(B.shares_memory(full, a) for a in step._held if B.is_cupy(a))


@pytest.mark.gpu
def test_a_non_capturable_optimizer_step_is_refused_under_cupy_capture(rng):
    import cupy

    w = cupy.asarray(rng.standard_normal(1000).astype(np.float32))
    g = cupy.asarray(rng.standard_normal(1000).astype(np.float32))
    opt = optim.Adam([w], lr=1e-2)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        opt.step([g])
        stream.synchronize()
        stream.begin_capture()
        try:
            with pytest.raises(RuntimeError, match="capturable=True"):
                opt.step([g])
        finally:
            stream.end_capture()
    assert opt.state[0]["step"] == 1


@pytest.mark.gpu
def test_a_non_capturable_torch_integration_step_is_refused_under_torch_cuda_graph():
    torch = pytest.importorskip("torch")
    from fastnn.integrations import torch as fnt

    p = torch.nn.Parameter(torch.randn(1000, device="cuda"))
    p.grad = torch.randn_like(p)
    opt = fnt.Adam([p], lr=1e-2)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        opt.step()  # warm-up on a side stream, as torch.cuda.graph asks
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="capturable=True"):
        with torch.cuda.graph(graph):
            opt.step()
    assert float(opt.state[p]["step"]) == 1


@pytest.mark.gpu
def test_a_collected_captured_step_unpins_its_cublaslt_workspace(rng):
    # A capture pins its stream's cuBLASLt workspace (the graph replays GEMMs at its address);
    # once the step is collected, the workspace may go to other streams again, so captures
    # made one after another do not keep 32 MiB each.
    import gc

    import cupy

    C = B._C
    pinned = C.cuda.lt_workspace_count()[1]
    for k in range(3):
        model = _model(12 + k).to("cuda")
        step = cuda_graph.capture(model, nn.SoftmaxCrossEntropy(), optim.Adam(model.parameters(), capturable=True),
                                  *_batch(cupy, rng, n=64))
        step()
        assert C.cuda.lt_workspace_count()[1] == pinned + 1
        del step
        gc.collect()
        assert C.cuda.lt_workspace_count()[1] == pinned
