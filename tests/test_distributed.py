"""fastnn.distributed: sharding, bucketed gradient averaging, the Sequential hook and the
trainer in one process; then real jobs of two processes under ``mpiexec -n 2`` (skipped with
the reason where MPI cannot start) and ``torchrun`` (gloo), compared with one process training
on the same global batches."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

import fastnn as fnn
from fastnn import distributed as dist
from fastnn import nn
from fastnn.distributed import backends, world
from fastnn.nn import fusion

import dist_util as du


@pytest.fixture(autouse=True)
def alone():
    """Every test starts and ends outside any job."""
    dist.shutdown()
    yield
    dist.shutdown()


# ---------------------------------------------------------------------------------------------
# Sharding.


@pytest.mark.parametrize("n, world, batch", [(96, 2, 8), (100, 2, 12), (101, 3, 5), (7, 4, 3)])
def test_ranks_batches_concatenated_are_the_global_batches(n, world, batch):
    X = np.arange(n, dtype=np.float64)[:, None]
    shards = [dist.DistributedBatches(X, batch_size=batch, seed=5, rank=r, world_size=world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    epochs = [[xb[:, 0].astype(int) for xb in s] for s in shards]
    order = np.resize(np.random.default_rng(5).permutation(n), -(-n // world) * world)
    step = batch * world
    for k, parts in enumerate(zip(*epochs)):
        assert len({len(p) for p in parts}) == 1  # equal batches on every rank
        np.testing.assert_array_equal(np.concatenate(parts), order[k * step:(k + 1) * step])
    seen = np.concatenate([np.concatenate(e) for e in epochs])
    assert set(seen) == set(range(n)) and len(seen) == -(-n // world) * world  # padded, nothing lost


def test_without_padding_at_most_world_minus_one_samples_are_left_out():
    shards = [dist.DistributedBatches(np.arange(10)[:, None], batch_size=2, seed=0, pad=False, rank=r, world_size=4)
              for r in range(4)]
    seen = np.concatenate([xb[:, 0] for s in shards for xb in s])
    assert len(seen) == 8 and len(set(seen)) == 8
    assert [s.samples_per_rank for s in shards] == [2] * 4


def test_global_batches_match_one_process_with_the_batch_times_the_ranks():
    X, y = du.problem(np.float64, 96)
    one = list(fnn.data.batches(X, y, batch_size=16, seed=2))
    ranks = [list(dist.batches(X, y, batch_size=8, seed=2, rank=r, world_size=2)) for r in range(2)]
    for (xb, yb), (x0, y0), (x1, y1) in zip(one, *ranks):
        np.testing.assert_array_equal(xb, np.concatenate([x0, x1]))
        np.testing.assert_array_equal(yb, np.concatenate([y0, y1]))


def test_drop_last_and_unshuffled_order():
    shard = dist.DistributedBatches(np.arange(10)[:, None], batch_size=2, shuffle=False, drop_last=True, rank=1,
                                    world_size=2)
    assert len(shard) == 2
    np.testing.assert_array_equal(np.concatenate([xb[:, 0] for xb in shard]), [2, 3, 6, 7])


def test_shard_range_tiles_the_samples():
    for n, world in [(10, 3), (2, 4), (0, 2)]:
        ranges = [dist.shard_range(n, r, world) for r in range(world)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1


def test_sharding_refuses_bad_arguments():
    X = np.zeros((10, 1))
    with pytest.raises(ValueError, match="rank must be in"):
        dist.DistributedBatches(X, rank=2, world_size=2)
    with pytest.raises(ValueError, match="both rank and world_size"):
        dist.DistributedBatches(X, rank=0)
    with pytest.raises(ValueError, match="no batch at all"):
        dist.DistributedBatches(X, batch_size=8, drop_last=True, rank=0, world_size=2)
    with pytest.raises(ValueError, match="leaves no sample"):
        dist.DistributedBatches(np.zeros((1, 1)), pad=False, rank=0, world_size=2)
    with pytest.raises(RuntimeError, match="call fastnn.distributed.init"):
        dist.DistributedBatches(X)


# ---------------------------------------------------------------------------------------------
# The process's place: init, local backend, failures.


def test_init_in_a_lone_process_is_local_and_says_so():
    backend = dist.init()
    assert backend.name == "local" and "1 process" in backend.describe()
    assert (dist.rank(), dist.world_size(), dist.local_rank(), dist.device()) == (0, 1, 0, "cpu")
    assert dist.init() is backend and dist.init("local") is backend
    with pytest.raises(RuntimeError, match="already initialised"):
        dist.init("mpi")
    dist.shutdown()
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="init"):
        dist.rank()


def test_init_refuses_bad_arguments():
    with pytest.raises(ValueError, match="backend must be one of"):
        dist.init("gloo")
    with pytest.raises(ValueError, match="device must be"):
        dist.init(device="gpu")
    with pytest.raises(ValueError, match="'nccl' reduces GPU arrays"):
        dist.init("nccl", device="cpu")
    with pytest.raises(ValueError, match="'mpi' reduces CPU arrays"):
        dist.init("mpi", device="cuda")


def test_launchers_are_recognised_from_their_environment(monkeypatch):
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert not dist.launched()
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert dist.launched() and backends.launch_size() == (4, "OMPI_COMM_WORLD_SIZE")
    assert world._choose("auto", "cpu") == "mpi" and world._choose("auto", "cuda") == "nccl"
    monkeypatch.delenv("OMPI_COMM_WORLD_SIZE")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not dist.launched()  # torchrun also sets RANK and MASTER_ADDR
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "localhost")
    assert dist.launched() and world._choose("auto", "cpu") == "torch"


def test_abort_on_error_lets_a_lone_process_see_the_error():
    dist.init()
    with pytest.raises(KeyError), dist.abort_on_error():
        raise KeyError("x")


def test_broadcast_object_round_trips_checkpoint_values():
    dist.init()
    value = {"a": (1, 2.5, None), "b": np.arange(6.0).reshape(2, 3), 3: [np.float32(1.5), "s"]}
    back = dist.broadcast_object(value)
    assert back["a"] == (1, 2.5, None) and back[3][1] == "s"
    np.testing.assert_array_equal(back["b"], value["b"])
    assert back[3][0] == np.float32(1.5) and back[3][0].dtype == np.float32


def test_collectives_check_their_arrays():
    dist.init()
    a = np.arange(4.0)
    assert dist.allreduce(a, average=True) is a and np.array_equal(a, np.arange(4.0))
    with pytest.raises(ValueError, match="root must be a rank"):
        dist.broadcast(a, root=1)
    with pytest.raises(TypeError, match="must hold numbers"):
        dist.allreduce(np.array(["x"]))


# ---------------------------------------------------------------------------------------------
# Gradient buckets, with a backend that stands in for two ranks holding the same gradients.


class TwoIdenticalRanks(backends.Backend):
    """World size 2 where the other rank's arrays equal this one's: a sum doubles. Records the
    sizes of the arrays it reduces, in order, and which buckets were started before backward
    reached the first layer."""

    name = "test"
    world_size = 2

    def __init__(self):
        self.reduced = []

    def device_allreduce_start(self, a):
        self.reduced.append(a.size)
        a *= 2
        return backends.Pending()

    def host_allreduce(self, a):
        a *= 2

    def host_broadcast(self, a, root=0):
        pass

    device_broadcast = host_broadcast


@pytest.fixture
def two_ranks(monkeypatch):
    backend = TwoIdenticalRanks()
    monkeypatch.setattr(world, "_current", backend)
    return backend


def _backward(model, x, labels, zero=True):
    """Forward, softmax cross-entropy and backward; gradients accumulate unless ``zero``."""
    loss = nn.SoftmaxCrossEntropy()
    if zero:
        model.zero_grad()
    loss.forward(model.forward(x, training=True), labels)
    model.backward(loss.backward(), need_input_grad=False)


def test_reducer_averages_in_buckets_started_during_backward(two_ranks, rng):
    model = nn.Sequential(nn.Dense(300, 300, seed=0, dtype=np.float64), nn.ReLU(),
                          nn.Dense(300, 300, seed=1, dtype=np.float64), nn.ReLU(),
                          nn.Dense(300, 4, seed=2, dtype=np.float64))
    x, labels = rng.standard_normal((16, 300)), rng.integers(0, 4, 16)
    _backward(model, x, labels)
    expected = [p.grad.copy() for p in model.parameters()]
    # In reverse order: 4.bias + 4.weight fill the first bucket (9632 bytes of 10 KB), 2.bias +
    # 2.weight the next (722,400 of 723,000 bytes), 0.bias + 0.weight the last.
    reducer = dist.GradientReducer(model, bucket_bytes=723_000, first_bucket_bytes=10_000)
    hook, started = model.grads_ready_hook, []

    def watch(params):
        hook(params)
        started.append(reducer._next)

    model.grads_ready_hook = watch
    _backward(model, x, labels)
    assert started == [1, 2, 3]  # each bucket left as soon as its layer's backward was done
    reducer.synchronize()
    assert [sum(p.size for p in b.params) for b in reducer.buckets] == [1204, 90300, 90300]
    assert two_ranks.reduced == [1204, 90300, 90300]
    for p, g in zip(model.parameters(), expected):
        np.testing.assert_array_equal(p.grad, g)  # (g + g) / 2
    model.grads_ready_hook = hook
    _backward(model, x, labels)
    with pytest.raises(RuntimeError, match="backward ran again before synchronize"):
        _backward(model, x, labels)
    reducer.close()
    assert model.grads_ready_hook is None


def test_reducer_accumulates_under_no_sync(two_ranks, rng):
    model = nn.Sequential(nn.Dense(5, 7, seed=0, dtype=np.float64), nn.Tanh(),
                          nn.Dense(7, 3, seed=1, dtype=np.float64))
    x, labels = rng.standard_normal((8, 5)), rng.integers(0, 3, 8)
    _backward(model, x, labels)
    once = [p.grad.copy() for p in model.parameters()]
    reducer = dist.GradientReducer(model)
    model.zero_grad()
    with reducer.no_sync():
        _backward(model, x, labels, zero=False)
        _backward(model, x, labels, zero=False)
    assert two_ranks.reduced == []
    _backward(model, x, labels, zero=False)
    reducer.synchronize()
    assert two_ranks.reduced == [66]  # everything in one bucket
    for p, g in zip(model.parameters(), once):
        np.testing.assert_allclose(p.grad, 3 * g, rtol=1e-13)


def test_models_without_the_hook_reduce_everything_in_synchronize(two_ranks, rng):
    model = nn.Residual(nn.Sequential(nn.Dense(4, 4, seed=0, dtype=np.float64), nn.ReLU()))
    x = rng.standard_normal((6, 4))
    model.forward(x, training=True)
    model.backward(np.ones((6, 4)))
    before = [p.grad.copy() for p in model.parameters()]
    reducer = dist.GradientReducer(model)
    reducer.synchronize()
    assert two_ranks.reduced == [20]
    for p, g in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.grad, g)


def test_reducer_refuses_bad_arguments(two_ranks):
    model = nn.Sequential(nn.Dense(2, 2))
    with pytest.raises(TypeError, match="fastnn.nn.Module"):
        dist.GradientReducer([1, 2])
    with pytest.raises(ValueError, match="bucket_bytes must be a positive int"):
        dist.GradientReducer(model, bucket_bytes=0)
    dist.GradientReducer(model)
    with pytest.raises(RuntimeError, match="already has a grads_ready_hook"):
        dist.GradientReducer(model)


# ---------------------------------------------------------------------------------------------
# The Sequential hook.


def test_backward_reports_each_parameter_once_as_soon_as_it_is_complete(rng):
    shared = nn.Dense(6, 6, seed=3, dtype=np.float64)
    model = nn.Sequential(nn.Dense(4, 6, seed=0, dtype=np.float64), nn.ReLU(), nn.BatchNorm(6, dtype=np.float64),
                          nn.Residual(nn.Sequential(shared)), nn.Dense(6, 3, seed=1, dtype=np.float64))
    reported = []
    model.grads_ready_hook = lambda params: reported.append([p.name for p in params])
    model.forward(rng.standard_normal((5, 4)), training=True)
    model.backward(rng.standard_normal((5, 3)), need_input_grad=False)
    assert reported == [["4.weight", "4.bias"], ["3.block.0.weight", "3.block.0.bias"], ["2.weight", "2.bias"],
                        ["0.weight", "0.bias"]]


def test_a_parameter_shared_by_two_steps_is_reported_after_the_lower_one():
    lower, upper = nn.Dense(3, 3, seed=0), nn.Dense(3, 3, seed=1)
    upper.weight = lower.weight
    plan = fusion.FusionPlan([lower, nn.ReLU(), upper], fuse=True)
    assert [[id(p) for p in c] for c in plan.completes] == [[id(lower.weight), id(lower.bias)], [id(upper.bias)]]


def test_a_chain_reports_its_layers_together(chain_threads, rng):
    model = nn.Sequential(nn.Dense(4, 6, seed=0), nn.ReLU(), nn.Dense(6, 3, seed=1))
    reported = []
    model.grads_ready_hook = lambda params: reported.append([p.name for p in params])
    model.forward(rng.standard_normal((64, 4)).astype(np.float32), training=True)
    assert model._plan.chained
    model.backward(np.ones((64, 3), np.float32), need_input_grad=False)
    assert reported == [["0.weight", "0.bias", "2.weight", "2.bias"]]


# ---------------------------------------------------------------------------------------------
# Trainer(distributed=True) in one process.


def test_a_distributed_trainer_alone_trains_exactly_as_an_ordinary_one():
    X, y = du.problem(np.float64)
    ordinary, alone = du.build(np.float64), du.build(np.float64)
    h1 = du.trainer(ordinary).fit(X, y, epochs=2, batch_size=16, validation_split=0.2, verbose=0)
    t2 = du.trainer(alone, distributed=True)
    h2 = t2.fit(X, y, epochs=2, batch_size=16, validation_split=0.2, verbose=0)
    assert dist.current().name == "local" and t2.is_main_process
    assert h1.history == h2.history and h2.params["world_size"] == 1
    for k, v in du.parameters(ordinary).items():
        np.testing.assert_array_equal(v, du.parameters(alone)[k])
    assert alone.grads_ready_hook is None  # unhooked when fit ends


# ---------------------------------------------------------------------------------------------
# Two processes under MPI.


def _mpi():
    env, why = du.mpi_setup()
    if env is None:
        pytest.skip(why)


def _launch(tmp_path, *args, ranks=2, timeout=180):
    _mpi()
    code, out, err = du.mpirun(ranks, [du.WORKER, str(tmp_path), *args], timeout=timeout)
    assert code == 0, f"exit {code}\n{out[-2000:]}\n{err[-4000:]}"
    return [(dict(np.load(tmp_path / f"rank{r}.npz")), json.loads((tmp_path / f"rank{r}.json").read_text()))
            for r in range(ranks)]


def _single(dtype, epochs, batch, resume=None, checkpoint=None):
    """One process on the global batches: (parameters, History)."""
    X, y = du.problem(dtype)
    model = du.build(dtype)
    callbacks = [fnn.callbacks.ModelCheckpoint(checkpoint)] if checkpoint else []
    run = du.trainer(model, callbacks=callbacks)
    if resume:
        run.load_state_dict(fnn.load(resume, model=model, optimizer=run.optimizer)["trainer"])
    history = run.fit(X, y, epochs=epochs, batch_size=batch, validation_split=0.2, verbose=0)
    return du.parameters(model), history


def _close(got: dict, expected: dict, rtol: float):
    for name, value in expected.items():
        scale = np.abs(value).max()
        assert np.abs(got[name] - value).max() <= rtol * scale, (name, np.abs(got[name] - value).max() / scale)


@pytest.mark.parametrize("dtype, batch, rtol", [("float64", 8, 1e-12), ("float64", 12, 1e-12),
                                                ("float32", 8, 2e-5)])
def test_two_ranks_train_to_the_parameters_of_one_process_on_the_global_batch(tmp_path, dtype, batch, rtol):
    ranks = _launch(tmp_path, "--dtype", dtype, "--batch", str(batch))
    expected, history = _single(dtype, 3, 2 * batch)
    (params0, log0), (params1, log1) = ranks
    for name in params0:
        np.testing.assert_array_equal(params0[name], params1[name])  # the replicas are identical
    _close(params0, expected, rtol)
    assert log0["history"] == log1["history"] and log0["world_size"] == 2 and log0["backend"].startswith("mpi")
    for key, values in history.history.items():
        np.testing.assert_allclose(log0["history"][key], values, rtol=100 * rtol, err_msg=key)


def test_a_world_of_one_under_mpi_goes_through_the_reducer_and_changes_nothing(tmp_path):
    [(params, log)] = _launch(tmp_path, "--batch", "16", "--backend", "mpi", ranks=1)
    expected, _ = _single("float64", 3, 16)
    _close(params, expected, 1e-12)
    assert log["backend"].startswith("mpi: 1 process ")


def test_batchnorm_statistics_end_the_same_on_every_rank(tmp_path):
    (params0, _), (params1, _) = _launch(tmp_path, "--batchnorm", "--epochs", "2")
    assert "3.running_mean" in params0
    for name in params0:
        np.testing.assert_array_equal(params0[name], params1[name])


def test_a_failing_rank_ends_the_job_instead_of_hanging(tmp_path):
    _mpi()
    code, _, err = du.mpirun(2, [du.WORKER, str(tmp_path), "--fail-rank", "1"], timeout=60)
    assert code is not None, "the job hung after rank 1 failed"
    assert code != 0 and "rank 1 fails on purpose" in err and "ending every rank" in err


def test_a_stop_on_one_rank_stops_every_rank(tmp_path):
    (_, log0), (_, log1) = _launch(tmp_path, "--stop-rank", "1")
    assert log0["epoch"] == log1["epoch"] == 0
    assert log1["stop_reason"] == "StopOn: rank 1 asked"
    assert log0["stop_reason"] == "StopOn: rank 1 asked (on rank 1)"


def test_ranks_fitting_other_data_fail_together(tmp_path):
    _mpi()
    code, _, err = du.mpirun(2, [du.WORKER, str(tmp_path), "--samples", "100", "--uneven"], timeout=60)
    assert code is not None and code != 0
    assert "fit other data or settings than rank 0" in err


def test_a_checkpoint_of_two_ranks_resumes_in_one_process(tmp_path):
    checkpoint = tmp_path / "ckpt.npz"
    _launch(tmp_path, "--epochs", "2", "--checkpoint", str(checkpoint))
    resumed, history = _single("float64", 2, 16, resume=checkpoint)
    expected, whole = _single("float64", 4, 16)
    _close(resumed, expected, 1e-12)
    assert len(history.epoch) == 4 and history.params["epochs"] == 4


def test_a_checkpoint_of_one_process_resumes_on_two_ranks_read_by_rank_0_alone(tmp_path):
    checkpoint = tmp_path / "ckpt.npz"
    _single("float64", 2, 16, checkpoint=checkpoint)
    (params0, log0), (params1, _) = _launch(tmp_path, "--epochs", "2", "--resume", str(checkpoint))
    expected, whole = _single("float64", 4, 16)
    _close(params0, expected, 1e-12)
    for name in params0:
        np.testing.assert_array_equal(params0[name], params1[name])
    assert log0["epoch"] == 4
    np.testing.assert_allclose(log0["history"]["loss"], whole.history["loss"], rtol=1e-10)


def test_fastnn_train_runs_unchanged_under_mpiexec(tmp_path):
    _mpi()
    out = tmp_path / "run"
    code, stdout, err = du.mpirun(2, ["-m", "fastnn", "train", "--data", "blobs", "--hidden", "16", "--epochs", "3",
                                      "--out", str(out), "--verbose", "0"], timeout=300, cwd=str(tmp_path))
    assert code == 0, err[-3000:]
    assert stdout.count("test accuracy") == 1  # rank 0 alone reports
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data_parallel"].startswith("mpi: 2 processes")
    assert (out / "checkpoint.npz").exists()


# ---------------------------------------------------------------------------------------------
# Two processes under torchrun (a gloo process group).


@pytest.mark.slow
def test_two_ranks_of_a_torch_process_group_train_like_one_process(tmp_path):
    pytest.importorskip("torch.distributed")
    code, out, err = du.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             du.WORKER, str(tmp_path)], timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1"))
    if code != 0 and "errno" in err.lower() and "socket" in err.lower():
        pytest.skip(f"torchrun cannot open its rendezvous socket here: {err.strip()[-300:]}")
    assert code == 0, f"exit {code}\n{err[-4000:]}"
    logs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    params = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(2)]
    assert logs[0]["backend"].startswith("torch: 2 processes (torch.distributed gloo")
    for name in params[0]:
        np.testing.assert_array_equal(params[0][name], params[1][name])
    expected, _ = _single("float64", 3, 16)
    _close(params[0], expected, 1e-12)


# ---------------------------------------------------------------------------------------------
# NCCL on one GPU.


@pytest.mark.gpu
def test_nccl_on_one_gpu_reduces_broadcasts_and_trains_like_one_process():
    cp = pytest.importorskip("cupy")
    try:
        backend = dist.init("nccl", device="cuda")
    except ImportError as exc:
        pytest.skip(str(exc))
    assert backend.name == "nccl" and dist.device().startswith("cuda:") and "NCCL" in backend.describe()
    a = cp.arange(5, dtype=cp.float32)
    dist.allreduce(a)
    dist.broadcast(a)
    backend.device_allreduce_start(a).wait()
    np.testing.assert_array_equal(a.get(), np.arange(5, dtype=np.float32))
    with pytest.raises(ValueError, match="is on cpu"):
        dist.allreduce(np.zeros(3, np.float32))
    X, y = du.problem(np.float64)
    expected, history = _single("float64", 2, 16)
    model = du.build(np.float64, batchnorm=False).to(dist.device())
    run = du.trainer(model, distributed=True)
    got = run.fit(cp.asarray(X), cp.asarray(y), epochs=2, batch_size=16, validation_split=0.2, verbose=0)
    assert run._sync.reducer is None  # unhooked at the end of fit
    _close(du.parameters(model), expected, 1e-10)
    np.testing.assert_allclose(got.history["loss"], history.history["loss"], rtol=1e-10)
