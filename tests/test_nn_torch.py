"""fastnn.nn against PyTorch's own layers and losses (skipped where torch is not installed):
same weights in, same outputs, running statistics and gradients out."""

import numpy as np
import pytest

from fastnn import nn
from util import assert_close

torch = pytest.importorskip("torch")
F64 = np.float64


def t(a):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=True)


def test_model_step_matches_torch(rng):
    model = nn.Sequential(
        nn.Dense(6, 8, dtype=F64, seed=0), nn.BatchNorm(8, dtype=F64), nn.ReLU(),
        nn.Dense(8, 8, dtype=F64, seed=1), nn.GELU(),
        nn.Dense(8, 8, "tanh", dtype=F64, seed=2), nn.PReLU(8, dtype=F64), nn.LeakyReLU(0.1),
        nn.Dense(8, 4, dtype=F64, seed=3))
    dense = [m for m in model.modules() if isinstance(m, nn.Dense)]
    reference = torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
        torch.nn.Linear(8, 8), torch.nn.GELU(),
        torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.PReLU(8), torch.nn.LeakyReLU(0.1),
        torch.nn.Linear(8, 4)).double()
    linears = [m for m in reference if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for ours, theirs in zip(dense, linears):
            ours.bias.data[...] = rng.standard_normal(ours.bias.shape)
            theirs.weight.copy_(torch.from_numpy(ours.weight.data.T))
            theirs.bias.copy_(torch.from_numpy(ours.bias.data))
        reference[7].weight.fill_(0.25)

    loss_fn, torch_loss = nn.SoftmaxCrossEntropy(), torch.nn.CrossEntropyLoss()
    for _ in range(3):
        x = rng.standard_normal((16, 6)) * 2
        labels = rng.integers(0, 4, 16)
        model.zero_grad()
        reference.zero_grad()
        loss = loss_fn(model(x, training=True), labels)
        dx = model.backward(loss_fn.backward())
        tx = t(x)
        expected = torch_loss(reference(tx), torch.from_numpy(labels))
        expected.backward()
        assert loss == pytest.approx(expected.item(), rel=1e-12)
        assert_close(dx, tx.grad.numpy())
        for ours, theirs in zip(dense, linears):
            assert_close(ours.weight.grad, theirs.weight.grad.numpy().T)
            assert_close(ours.bias.grad, theirs.bias.grad.numpy())
        assert_close(model[1].weight.grad, reference[1].weight.grad.numpy())
        assert_close(model[6].alpha.grad, reference[7].weight.grad.numpy())
        assert_close(model[1].running_mean, reference[1].running_mean.numpy())
        assert_close(model[1].running_var, reference[1].running_var.numpy())

    reference.eval()
    x = rng.standard_normal((5, 6))
    assert_close(model.forward(x, training=False), reference(t(x)).detach().numpy())


@pytest.mark.parametrize("ours,theirs,kind", [
    (nn.SoftmaxCrossEntropy(), torch.nn.CrossEntropyLoss(), "labels"),
    (nn.Hinge(), torch.nn.MultiMarginLoss(), "labels"),
    (nn.BCEWithLogits(), torch.nn.BCEWithLogitsLoss(), "probabilities"),
    (nn.MSE(), torch.nn.MSELoss(), "values"),
    (nn.L1(), torch.nn.L1Loss(), "values"),
], ids=["cross_entropy", "hinge", "bce", "mse", "l1"])
def test_losses_match_torch(rng, ours, theirs, kind):
    pred = rng.standard_normal((12, 5)) * 3
    target = {"labels": rng.integers(0, 5, 12), "probabilities": rng.uniform(0, 1, (12, 5)),
              "values": rng.standard_normal((12, 5))}[kind]
    scale = 5 if isinstance(ours, nn.Hinge) else 1  # MultiMarginLoss divides by C as well
    tp = t(pred)
    expected = theirs(tp, torch.from_numpy(target)) * scale
    expected.backward()
    assert ours(pred, target) == pytest.approx(expected.item(), rel=1e-12)
    assert_close(ours.backward(), tp.grad.numpy())
