// Losses on the CPU: one pass computes the loss and the gradient (formulas in losses.h).
// Sums run in float64 (elementwise losses: blocks of kSumBlock values summed in T first, so the
// SIMD loop stays in T). Like the dense passes (cpu/dense.cpp) they run on the calling thread:
// the loss sits between the BLAS GEMMs of a training step, and an OpenMP team would keep
// spinning into them.
#include "losses.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "activation_math.h"

namespace fastnn::cpu {
namespace {

constexpr int64_t kSumBlock = 1024;

int64_t label_at(const void* labels, bool labels64, int64_t i) {
  return labels64 ? static_cast<const int64_t*>(labels)[i]
                  : int64_t(static_cast<const int32_t*>(labels)[i]);
}

// Elementwise losses: value(p, t) summed, grad(p, t) * scale written.
template <class T, class Op>
void elementwise_loss(const T* p, const T* t, T* loss, T* grad, int64_t n, Op op) {
  const T scale = T(1) / T(n);
  double total = 0.0;
  for (int64_t b = 0; b < n; b += kSumBlock) {
    const int64_t e = std::min(n, b + kSumBlock);
    T block = T(0);
    if (grad != nullptr) {
#pragma omp simd reduction(+ : block)
      for (int64_t i = b; i < e; ++i) {
        block += op.value(p[i], t[i]);
        grad[i] = op.grad(p[i], t[i]) * scale;
      }
    } else {
#pragma omp simd reduction(+ : block)
      for (int64_t i = b; i < e; ++i) block += op.value(p[i], t[i]);
    }
    total += double(block);
  }
  if (loss != nullptr) *loss = T(total / double(n));
}

template <class T>
struct Bce {
  T value(T z, T t) const {
    const T a = z < T(0) ? -z : z;
    return (z > T(0) ? z : T(0)) - z * t + std::log1p(math_exp(-a));
  }
  T grad(T z, T t) const { return Sigmoid<T>{}.forward(z) - t; }
};

template <class T>
struct Mse {
  T value(T p, T t) const { return (p - t) * (p - t); }
  T grad(T p, T t) const { return T(2) * (p - t); }
};

template <class T>
struct L1 {
  T value(T p, T t) const { return std::fabs(p - t); }
  T grad(T p, T t) const { return p > t ? T(1) : (p < t ? T(-1) : T(0)); }
};

}  // namespace

// The row losses m + log(sum) - x[y] are summed in float64 with one log per run of rows: the
// row sums (each in [1, cols]) are multiplied together until the product nears the top of
// the float64 range, and the log of the product is added. For few classes a log per row cost
// as much as the rest of the row.
template <class T>
void softmax_cross_entropy_forward(const T* logits, const void* labels, bool labels64, T* loss,
                                   T* grad, int64_t rows, int64_t cols) {
  const T inv_rows = T(1) / T(rows);
  double total = 0.0;
  double product = 1.0;
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = logits + r * cols;
    T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < cols; ++j) m = xr[j] > m ? xr[j] : m;
    T sum = T(0);
    if (grad != nullptr) {
      T* gr = grad + r * cols;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < cols; ++j) {
        const T e = math_exp(xr[j] - m);
        gr[j] = e;
        sum += e;
      }
      const T scale = inv_rows / sum;
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) gr[j] *= scale;
    } else {
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < cols; ++j) sum += math_exp(xr[j] - m);
    }
    const int64_t y = label_at(labels, labels64, r);
    if (grad != nullptr) grad[r * cols + y] -= inv_rows;
    total += double(m) - double(xr[y]);
    product *= double(sum);
    if (product > 1e250) {
      total += std::log(product);
      product = 1.0;
    }
  }
  total += std::log(product);
  if (loss != nullptr) *loss = T(total / double(rows));
}

template <class T>
void hinge_forward(const T* scores, const void* labels, bool labels64, T* loss, T* grad,
                   int64_t rows, int64_t cols) {
  const T inv_rows = T(1) / T(rows);
  double total = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    const T* sr = scores + r * cols;
    const int64_t y = label_at(labels, labels64, r);
    const T sy = sr[y];
    T acc = T(0);
    T count = T(0);
    T* gr = grad != nullptr ? grad + r * cols : nullptr;
#pragma omp simd reduction(+ : acc, count)
    for (int64_t j = 0; j < cols; ++j) {
      const T margin = sr[j] - sy + T(1);
      // !(margin <= 0) rather than margin > 0: a NaN score makes the loss NaN (as max(0, NaN)
      // in PyTorch) instead of being silently dropped.
      const bool active = j != y && !(margin <= T(0));
      acc += active ? margin : T(0);
      count += active ? T(1) : T(0);
      if (gr != nullptr) gr[j] = active ? inv_rows : T(0);
    }
    if (gr != nullptr) gr[y] = -count * inv_rows;
    total += double(acc);
  }
  if (loss != nullptr) *loss = T(total / double(rows));
}

template <class T>
void bce_with_logits_forward(const T* logits, const T* targets, T* loss, T* grad, int64_t n) {
  elementwise_loss(logits, targets, loss, grad, n, Bce<T>{});
}

template <class T>
void mse_forward(const T* pred, const T* target, T* loss, T* grad, int64_t n) {
  elementwise_loss(pred, target, loss, grad, n, Mse<T>{});
}

template <class T>
void l1_forward(const T* pred, const T* target, T* loss, T* grad, int64_t n) {
  elementwise_loss(pred, target, loss, grad, n, L1<T>{});
}

#define FASTNN_INSTANTIATE(T)                                                                  \
  template void softmax_cross_entropy_forward<T>(const T*, const void*, bool, T*, T*, int64_t, \
                                                 int64_t);                                     \
  template void hinge_forward<T>(const T*, const void*, bool, T*, T*, int64_t, int64_t);       \
  template void bce_with_logits_forward<T>(const T*, const T*, T*, T*, int64_t);               \
  template void mse_forward<T>(const T*, const T*, T*, T*, int64_t);                           \
  template void l1_forward<T>(const T*, const T*, T*, T*, int64_t);
FASTNN_INSTANTIATE(float)
FASTNN_INSTANTIATE(double)
#undef FASTNN_INSTANTIATE

}  // namespace fastnn::cpu
