"""Array-level ops: validated once, then run on the reference, native CPU or CUDA path.

Names line up with the reference (``fastnn.reference``) and the C++ kernels.
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

__all__ = [*_activations_all, *_batchnorm_all, *_dropout_all, *_dense_all, *_losses_all]
