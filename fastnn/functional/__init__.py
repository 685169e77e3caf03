"""Array-level ops: validated once, then run on the reference, native CPU or CUDA path.

Names line up with the reference (``fastnn.reference``) and the C++ kernels.
"""

from .activations import *  # noqa: F401,F403
from .activations import __all__ as _activations_all

__all__ = [*_activations_all]
