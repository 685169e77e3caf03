// Losses: the C++ API the bindings call. Each kernel computes the mean loss and, in the same
// pass, its gradient with respect to the prediction; either output may be null.
//
//   softmax_cross_entropy_forward  logits (rows, cols), labels (rows) in [0, cols):
//       loss = mean_i (logsumexp(x_i) - x_i[y_i])        grad = (softmax(x_i) - onehot(y_i)) / rows
//   hinge_forward  scores (rows, cols), labels (rows), margin 1:
//       loss = mean_i sum_{j != y_i} max(0, s_ij - s_iy + 1)
//       grad_ij = [j != y_i, margin > 0] / rows,  grad_iy = -(number of such j) / rows
//   bce_with_logits_forward  z, t (n):
//       loss = mean(max(z, 0) - z t + log(1 + e^-|z|))   grad = (sigmoid(z) - t) / n
//   mse_forward  p, t (n):   loss = mean((p - t)^2)       grad = 2 (p - t) / n
//   l1_forward   p, t (n):   loss = mean|p - t|           grad = sign(p - t) / n (0 at 0)
//
// loss is one element (=); grad has the prediction's shape (=). labels are int32 or int64
// (labels64). Sums run in float64.
//
// The CPU kernels trust their labels (Python checks them first). The CUDA kernels check them
// without a host sync: a row with a label outside [0, cols) gets a NaN loss and NaN gradient,
// and `status` (one int64 on the device) receives the first such row, or -1. Reductions are
// deterministic: per-block partial sums in a workspace of loss_workspace_bytes(), added in a
// fixed order by one block.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common.h"

namespace fastnn {

namespace cpu {
template <class T>
void softmax_cross_entropy_forward(const T* logits, const void* labels, bool labels64, T* loss,
                                   T* grad, int64_t rows, int64_t cols);
template <class T>
void hinge_forward(const T* scores, const void* labels, bool labels64, T* loss, T* grad,
                   int64_t rows, int64_t cols);
template <class T>
void bce_with_logits_forward(const T* logits, const T* targets, T* loss, T* grad, int64_t n);
template <class T>
void mse_forward(const T* pred, const T* target, T* loss, T* grad, int64_t n);
template <class T>
void l1_forward(const T* pred, const T* target, T* loss, T* grad, int64_t n);
}  // namespace cpu

namespace cuda {
size_t loss_workspace_bytes();
template <class T>
void softmax_cross_entropy_forward(const T* logits, const void* labels, bool labels64, T* loss,
                                   T* grad, int64_t rows, int64_t cols, int64_t* status,
                                   void* workspace, Stream stream);
template <class T>
void hinge_forward(const T* scores, const void* labels, bool labels64, T* loss, T* grad,
                   int64_t rows, int64_t cols, int64_t* status, void* workspace, Stream stream);
template <class T>
void bce_with_logits_forward(const T* logits, const T* targets, T* loss, T* grad, int64_t n,
                             void* workspace, Stream stream);
template <class T>
void mse_forward(const T* pred, const T* target, T* loss, T* grad, int64_t n, void* workspace,
                 Stream stream);
template <class T>
void l1_forward(const T* pred, const T* target, T* loss, T* grad, int64_t n, void* workspace,
                Stream stream);
}  // namespace cuda

}  // namespace fastnn
