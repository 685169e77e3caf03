"""Arrays and devices, validation, and the choice of implementation path.

Every public op validates its arguments here, once, and then runs on one of three paths:

========== ===================================================== =============================
path       runs when                                             code
========== ===================================================== =============================
reference  always available; ``FASTNN_BACKEND=numpy`` forces it  ``fastnn.reference`` (xp code)
cpu        NumPy arrays and the extension was built              ``fastnn._C.cpu``
cuda       GPU arrays and the extension was built with CUDA      ``fastnn._C.cuda``
========== ===================================================== =============================

One module per question, all re-exported here (``from fastnn import _backend as B``):

- :mod:`.native`: is the compiled extension there, and which path is selected;
- :mod:`.arrays`: what device an array lives on, zero-copy views, moves, allocation, addresses;
- :mod:`.checks`: what a valid array argument is (dtype, device, shape, layout, writability,
  labels, hyperparameters, memory overlap), with messages that name the argument and the fix;
- :mod:`.launch`: which path an op takes, its CUDA stream (and whether it is being captured)
  and per-stream buffers, the call.

Arrays on different devices are never copied silently: mixing them raises ``ValueError``.
"""

from .arrays import (CPU, CudaView, Device, array_module, as_array, cupy_module, device_of, empty,
                     gpu_unavailable_reason, is_contiguous, is_cupy, is_writable, on_device, parse_device,
                     partially_overlaps, pointer, shares_memory, to_device, to_numpy)
from .checks import (FLOAT_DTYPES, LABEL_DTYPES, check_disjoint, check_finite, check_float, check_labels,
                     check_scalar, finish, output, shown)
from .launch import capturing, launch, path_of, stream_buffer, stream_buffers, stream_of, workspace_pointer
from .native import (NATIVE_ERROR, _C, cuda_device_count, cuda_unavailable_reason, get_backend, native_available,
                     set_backend, use_backend)
