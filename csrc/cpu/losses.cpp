// Losses on the CPU: one pass computes the loss and the gradient (formulas in losses.h).
// Rows or elements are split over OpenMP threads; each thread sums in float64 (elementwise
// losses: blocks of kSumBlock values summed in T first, so the SIMD loop stays in T), and the
// threads' sums are added in thread order, so a result depends only on the thread count.
#include "losses.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "activation_math.h"
#include "cpu/parallel.h"

namespace fastnn::cpu {
namespace {

constexpr int64_t kSumBlock = 1024;

// sum over [0, n) of body(begin, end), one partial per thread, added in thread order.
template <class Body>
double parallel_sum(int64_t n, int64_t grain, Body&& body) {
  std::vector<double> partial(size_t(max_threads()), 0.0);
  parallel_for(n, grain, [&](int64_t begin, int64_t end) {
#ifdef _OPENMP
    partial[size_t(omp_get_thread_num())] = body(begin, end);
#else
    partial[0] = body(begin, end);
#endif
  }, 1);
  double s = 0.0;
  for (double p : partial) s += p;
  return s;
}

int64_t label_at(const void* labels, bool labels64, int64_t i) {
  return labels64 ? static_cast<const int64_t*>(labels)[i]
                  : int64_t(static_cast<const int32_t*>(labels)[i]);
}

int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(cols, 1)); }

// Elementwise losses: value(p, t) summed, grad(p, t) * scale written.
template <class T, class Op>
void elementwise_loss(const T* p, const T* t, T* loss, T* grad, int64_t n, Op op) {
  const T scale = T(1) / T(n);
  const double total = parallel_sum(n, kParallelGrain, [&](int64_t begin, int64_t end) {
    double s = 0.0;
    for (int64_t b = begin; b < end; b += kSumBlock) {
      const int64_t e = std::min(end, b + kSumBlock);
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
      s += double(block);
    }
    return s;
  });
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

template <class T>
void softmax_cross_entropy_forward(const T* logits, const void* labels, bool labels64, T* loss,
                                   T* grad, int64_t rows, int64_t cols) {
  const T inv_rows = T(1) / T(rows);
  const double total = parallel_sum(rows, row_grain(cols), [&](int64_t begin, int64_t end) {
    double s = 0.0;
    for (int64_t r = begin; r < end; ++r) {
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
      s += double(m) + std::log(double(sum)) - double(xr[y]);
    }
    return s;
  });
  if (loss != nullptr) *loss = T(total / double(rows));
}

template <class T>
void hinge_forward(const T* scores, const void* labels, bool labels64, T* loss, T* grad,
                   int64_t rows, int64_t cols) {
  const T inv_rows = T(1) / T(rows);
  const double total = parallel_sum(rows, row_grain(cols), [&](int64_t begin, int64_t end) {
    double s = 0.0;
    for (int64_t r = begin; r < end; ++r) {
      const T* sr = scores + r * cols;
      const int64_t y = label_at(labels, labels64, r);
      const T sy = sr[y];
      T acc = T(0);
      T count = T(0);
      T* gr = grad != nullptr ? grad + r * cols : nullptr;
#pragma omp simd reduction(+ : acc, count)
      for (int64_t j = 0; j < cols; ++j) {
        const T margin = sr[j] - sy + T(1);
        const bool active = j != y && margin > T(0);
        acc += active ? margin : T(0);
        count += active ? T(1) : T(0);
        if (gr != nullptr) gr[j] = active ? inv_rows : T(0);
      }
      if (gr != nullptr) gr[y] = -count * inv_rows;
      s += double(acc);
    }
    return s;
  });
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
