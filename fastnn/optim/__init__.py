"""Optimizers with fused native kernels, in class and functional forms, and LR / momentum
schedules.

Every rule is ``torch.optim``'s, with its hyperparameter names and defaults, so results match
PyTorch to rounding (bit for bit on the CPU for float32 where no square root is involved).
Parameters may be :class:`fastnn.nn.Parameter` (gradients from ``.grad``) or plain arrays
(``opt.step(grads)``), float32, float64 or float16 (computed in float32), with state in the
parameters' dtype or, with ``state_dtype``, in float32, bfloat16 or block-wise int8 (about 2
bytes of Adam state per parameter; see :class:`Optimizer`). On the CPU each
step reads and writes every parameter and state element once, over all tensors at once
(SIMD + OpenMP); on the GPU many tensors of one dtype are updated per kernel launch. See
:class:`Optimizer` for the interface and for capturable mode (CUDA graphs).

- classes: :class:`SGD`, :class:`Adagrad`, :class:`RMSprop`, :class:`Adam`, :class:`AdamW`,
  :class:`Rprop`;
- :mod:`fastnn.optim.functional`: ``sgd_``, ``adagrad_``, ``rmsprop_``, ``adam_``, ``rprop_``
  on lists of NumPy / CuPy / PyTorch arrays, in place;
- :mod:`fastnn.optim.lr_scheduler`: ``StepLR``, ``ExponentialLR``, ``CosineAnnealingLR``,
  ``LinearWarmup``, ``MomentumSchedule``.
"""

from . import functional, lr_scheduler
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .optimizer import Optimizer
from .rmsprop import RMSprop
from .rprop import Rprop
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "Rprop", "functional", "lr_scheduler"]
