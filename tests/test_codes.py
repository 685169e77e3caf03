"""The integer codes Python passes to the kernels come from the binding's enums
(fastnn._C.Activation, fastnn._C.ChainLoss), numbered in C++ only: the Python name lists must
name the same members, and the package must run without the extension, where no code exists."""

import os
import subprocess
import sys

import pytest

from fastnn import _backend
from fastnn import functional as F
from fastnn.functional import activations, dense

_C = _backend._C
needs_extension = pytest.mark.skipif(_C is None, reason="the compiled extension is not built")


def members(enum) -> dict[str, int]:
    return {name: int(value) for name, value in enum.__members__.items()}


@needs_extension
def test_activation_names_are_the_bindings():
    assert len(set(F.ACTIVATIONS)) == len(F.ACTIVATIONS)
    assert set(F.ACTIVATIONS) == set(members(_C.Activation))
    assert {name: activations._activation_code(name) for name in F.ACTIVATIONS} == members(_C.Activation)
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        activations._activation_code("swish")


@needs_extension
def test_chain_loss_names_are_the_bindings():
    assert len(set(F.CHAIN_LOSSES)) == len(F.CHAIN_LOSSES)
    assert set(F.CHAIN_LOSSES) == set(members(_C.ChainLoss))
    assert dense._CHAIN_LOSS_CODES == members(_C.ChainLoss)
    # Each chain loss is the functional loss of the same name, which the unblocked step calls.
    assert all(callable(getattr(F, f"{loss}_forward", None)) for loss in F.CHAIN_LOSSES)


def test_without_the_extension_the_names_remain_and_the_reference_path_runs():
    code = ("import sys, warnings\n"
            "sys.modules['fastnn._C'] = None  # makes `from . import _C` fail, as a failed build would\n"
            "warnings.simplefilter('ignore')\n"
            "import numpy as np\n"
            "from fastnn import functional as F\n"
            "from fastnn.functional import activations\n"
            "x = np.array([[-1.0, 2.0]], np.float32)\n"
            "y = F.activation_forward(x, 'leaky_relu', alpha=0.5)\n"
            "W, b = np.eye(2, dtype=np.float32), np.zeros(2, np.float32)\n"
            "dW, db = np.zeros_like(W), np.zeros_like(b)\n"
            "loss = F.dense_chain_step(x, [(W, b, 'relu')], 'mse', np.zeros_like(x), dWs=[dW], dbs=[db])\n"
            "print(activations._activation_code('relu'), list(F.ACTIVATIONS) == list(activations.ACTIVATIONS),"
            " sorted(F.CHAIN_LOSSES) == sorted(set(F.CHAIN_LOSSES)), y.tolist(), float(loss), db.tolist())\n")
    # Outside the source tree, so that the installed package is the one imported.
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=os.path.dirname(__file__))
    assert result.returncode == 0, result.stderr
    # relu([-1, 2]) = [0, 2]: mse = (0 + 4) / 2 = 2, db = d/dz mean(relu(z)^2) = [0, 2 * 2 / 2].
    assert result.stdout.split() == ["None", "True", "True", "[[-0.5,", "2.0]]", "2.0", "[0.0,", "2.0]"]
