// Batch normalization over a batch of feature vectors: the C++ API the bindings call.
//
// x, y, dy, dx: (n, c) row-major; gamma, beta, running_mean, running_var, saved_mean,
// saved_invstd, dgamma, dbeta: (c,). Statistics accumulate in double whatever T is.
//
// batchnorm_forward
//   training:  mean = sum_r x / n,  var = sum_r (x - mean)^2 / n  (biased)
//              running_mean = (1 - momentum) running_mean + momentum mean            (in place)
//              running_var  = (1 - momentum) running_var + momentum var n / (n - 1)  (unbiased)
//              (skipped when running_mean / running_var are null)
//   eval:      mean = running_mean, var = running_var; nothing updated
//   invstd = 1 / sqrt(var + eps)
//   y = (x - mean) invstd gamma + beta, then max(y, 0) when relu                     (=)
//   saved_mean = mean, saved_invstd = invstd                                         (=)
//
// batchnorm_backward, from saved_mean and saved_invstd:
//   dz = relu ? dy [y > 0] : dy,  xhat = (x - mean) invstd
//   dbeta += sum_r dz,  dgamma += sum_r dz xhat                                      (+=)
//   training:  dx = gamma invstd / n (n dz - sum_r dz - xhat sum_r dz xhat)          (=)
//   eval:      dx = dz gamma invstd  (the statistics are constants)                  (=)
//   y is read only when relu (it may be null otherwise).
//
// y may alias x, and dx may alias dy. The CUDA kernels combine per-block partial sums in a fixed
// order (bit-for-bit repeatable) through a caller-provided workspace of
// batchnorm_workspace_size(n, c) doubles.
#pragma once

#include <cstdint>

#include "common.h"

namespace fastnn {

namespace cpu {
template <class T>
void batchnorm_forward(const T* x, const T* gamma, const T* beta, T* running_mean,
                       T* running_var, T* y, T* saved_mean, T* saved_invstd, int64_t n,
                       int64_t c, bool training, double momentum, double eps, bool relu);
template <class T>
void batchnorm_backward(const T* dy, const T* x, const T* gamma, const T* saved_mean,
                        const T* saved_invstd, const T* y, T* dx, T* dgamma, T* dbeta,
                        int64_t n, int64_t c, bool training, bool relu);
}  // namespace cpu

namespace cuda {
int64_t batchnorm_workspace_size(int64_t n, int64_t c);
template <class T>
void batchnorm_forward(const T* x, const T* gamma, const T* beta, T* running_mean,
                       T* running_var, T* y, T* saved_mean, T* saved_invstd, int64_t n,
                       int64_t c, bool training, double momentum, double eps, bool relu,
                       double* workspace, Stream stream);
template <class T>
void batchnorm_backward(const T* dy, const T* x, const T* gamma, const T* saved_mean,
                        const T* saved_invstd, const T* y, T* dx, T* dgamma, T* dbeta,
                        int64_t n, int64_t c, bool training, bool relu, double* workspace,
                        Stream stream);
}  // namespace cuda

}  // namespace fastnn
