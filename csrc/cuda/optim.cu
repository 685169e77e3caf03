// Fused optimizers on the GPU. Formulas and the rule table in optim.h, per-element math in
// optim_math.h, the multi-tensor launcher in multi_tensor.cuh: one launch per table of up to
// ~80 Adam tensors (4 KB of kernel parameters) or, with CUDA 12.1+, ~700 (32 KB), grids sized
// by occupancy, 16-byte vector loads where aligned, math in float32 registers (float64 for
// float64 parameters; bfloat16 and float16 are widened on load and rounded on store), bias
// corrections on the host (or, in capturable mode, from the device [lr, step] array).
#include "cuda/multi_tensor.cuh"

namespace fastnn::cuda {

void optim_step(const std::string& dtype, const std::string& rule, const TensorPointers& tensors,
                const TensorSizes& sizes, const Hyperparameters& hyper, double* scalars,
                Stream stream) {
  optim_dispatch(dtype, rule, hyper, Run{{rule.c_str(), tensors, sizes, scalars}, stream});
}

}  // namespace fastnn::cuda
