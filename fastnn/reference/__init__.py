"""The reference implementation: every op in plain NumPy/CuPy (``xp``) code.

This is the spec. It is short and readable, and the native CPU and CUDA kernels are tested
against it. It runs when ``FASTNN_BACKEND=numpy`` is set, and wherever no compiled kernel
exists. Functions share their names with ``fastnn.functional`` and the C++ kernels.
"""

from .activations import *  # noqa: F401,F403
from .activations import __all__ as _activations_all
from .batchnorm import *  # noqa: F401,F403
from .batchnorm import __all__ as _batchnorm_all
from .dropout import *  # noqa: F401,F403
from .dropout import __all__ as _dropout_all
from .dense import *  # noqa: F401,F403
from .dense import __all__ as _dense_all
from .losses import *  # noqa: F401,F403
from .losses import __all__ as _losses_all
from .optim import *  # noqa: F401,F403
from .optim import __all__ as _optim_all

__all__ = [*_activations_all, *_batchnorm_all, *_dropout_all, *_dense_all, *_losses_all, *_optim_all]
