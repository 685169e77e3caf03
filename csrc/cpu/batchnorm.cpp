// Batch normalization on the CPU. Formulas in batchnorm.h.
//
// Rows are split over OpenMP threads in contiguous ranges; each thread sums its rows into a
// private row of double accumulators (SIMD along the columns) and the rows are added in thread
// order, so a given thread count always gives the same bits. The training statistics take two
// passes over x (the mean, then the centred squares, with the centred sum as a correction for
// the rounding of the mean), so a large mean does not cancel the variance away; a third pass
// writes y. The backward takes two passes (sums, then dx) in training and one in eval.
#include "batchnorm.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/parallel.h"

namespace fastnn::cpu {
namespace {

inline int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

inline int64_t row_grain(int64_t c) {
  return std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(c, 1));
}

// totals[0 .. k c) = sum over all rows of what body(begin, end, acc) adds into acc for rows
// [begin, end); acc is a zeroed block of k c doubles private to the calling thread. The blocks
// are a cache line apart at least, so that threads summing few columns do not share a line.
template <class Body>
void column_sums(int64_t n, int64_t c, int k, double* totals, Body&& body) {
  const size_t width = size_t(k) * size_t(c);
  const size_t stride = (width + 7) / 8 * 8 + 8;
  const int threads = max_threads();
  std::vector<double> partial(size_t(threads) * stride, 0.0);
  parallel_for(n, row_grain(c), [&](int64_t begin, int64_t end) {
    body(begin, end, partial.data() + size_t(thread_index()) * stride);
  }, 1);
  std::fill(totals, totals + width, 0.0);
  for (int t = 0; t < threads; ++t)
    for (size_t j = 0; j < width; ++j) totals[j] += partial[size_t(t) * stride + j];
}

// Calls f(std::integral_constant<bool, flag>{}) so that per-element loops test the flag at
// compile time (and never touch y when there is no ReLU).
template <class F>
void with_flag(bool flag, F&& f) {
  if (flag) f(std::true_type{});
  else f(std::false_type{});
}

}  // namespace

template <class T>
void batchnorm_forward(const T* x, const T* gamma, const T* beta, T* running_mean,
                       T* running_var, T* y, T* saved_mean, T* saved_invstd, int64_t n,
                       int64_t c, bool training, double momentum, double eps, bool relu) {
  if (c <= 0) return;
  std::vector<double> mean(c), var(c);
  if (training) {
    std::vector<double> sums(2 * size_t(c));
    column_sums(n, c, 1, sums.data(), [&](int64_t begin, int64_t end, double* acc) {
      for (int64_t r = begin; r < end; ++r) {
        const T* xr = x + r * c;
#pragma omp simd
        for (int64_t j = 0; j < c; ++j) acc[j] += double(xr[j]);
      }
    });
    for (int64_t j = 0; j < c; ++j) mean[j] = sums[j] / double(n);
    const double* m = mean.data();
    column_sums(n, c, 2, sums.data(), [&](int64_t begin, int64_t end, double* acc) {
      for (int64_t r = begin; r < end; ++r) {
        const T* xr = x + r * c;
#pragma omp simd
        for (int64_t j = 0; j < c; ++j) {
          const double d = double(xr[j]) - m[j];
          acc[j] += d;
          acc[c + j] += d * d;
        }
      }
    });
    for (int64_t j = 0; j < c; ++j) {
      const double centred = sums[j];
      var[j] = std::max(0.0, (sums[c + j] - centred * centred / double(n)) / double(n));
      if (running_mean != nullptr) {
        running_mean[j] = T((1.0 - momentum) * double(running_mean[j]) + momentum * mean[j]);
        running_var[j] = T((1.0 - momentum) * double(running_var[j]) +
                           momentum * var[j] * double(n) / double(n - 1));
      }
    }
  } else {
    for (int64_t j = 0; j < c; ++j) {
      mean[j] = double(running_mean[j]);
      var[j] = double(running_var[j]);
    }
  }
  std::vector<T> shift(c), scale(c);
  for (int64_t j = 0; j < c; ++j) {
    const double invstd = 1.0 / std::sqrt(var[j] + eps);
    saved_mean[j] = shift[j] = T(mean[j]);
    saved_invstd[j] = T(invstd);
    scale[j] = T(double(gamma[j]) * invstd);
  }
  const T* sh = shift.data();
  const T* sc = scale.data();
  with_flag(relu, [&](auto kRelu) {
    parallel_for(n, row_grain(c), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* xr = x + r * c;
        T* yr = y + r * c;
#pragma omp simd
        for (int64_t j = 0; j < c; ++j) {
          const T v = (xr[j] - sh[j]) * sc[j] + beta[j];
          yr[j] = kRelu && v < T(0) ? T(0) : v;
        }
      }
    }, 1);
  });
}

// dy where y > 0, else +0 (relu'(0) = 0, and a NaN in dy is dropped where masked, as in
// PyTorch). Written as a bit mask: as a branch, GCC sinks the float-to-double conversion that
// follows into it and then will not vectorize the loop (the conversion might trap).
template <class T>
inline T relu_mask(T dy, T y) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  Bits bits;
  std::memcpy(&bits, &dy, sizeof bits);
  bits &= Bits(0) - Bits(y > T(0));
  std::memcpy(&dy, &bits, sizeof bits);
  return dy;
}

// The backward's row loops; dz = dy, or relu_mask(dy, y) with kRelu.

// acc[j] += sum dz, acc[c + j] += sum dz (x - mean); with kWriteDx also dx = dz k (eval).
template <bool kRelu, bool kWriteDx, class T>
void backward_sum_rows(const T* dy, const T* x, const T* y, const T* mean, const T* k, T* dx,
                       double* acc, int64_t c, int64_t begin, int64_t end) {
  for (int64_t row = begin; row < end; ++row) {
    const int64_t o = row * c;
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) {
      const T dz = kRelu ? relu_mask(dy[o + j], y[o + j]) : dy[o + j];
      acc[j] += double(dz);
      acc[c + j] += double(dz) * double(x[o + j] - mean[j]);
      if (kWriteDx) dx[o + j] = dz * k[j];
    }
  }
}

// dx = k dz + q (x - mean) + r.
template <bool kRelu, class T>
void backward_dx_rows(const T* dy, const T* x, const T* y, const T* mean, const T* k,
                      const T* q, const T* r, T* dx, int64_t c, int64_t begin, int64_t end) {
  for (int64_t row = begin; row < end; ++row) {
    const int64_t o = row * c;
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) {
      const T dz = kRelu ? relu_mask(dy[o + j], y[o + j]) : dy[o + j];
      dx[o + j] = k[j] * dz + q[j] * (x[o + j] - mean[j]) + r[j];
    }
  }
}

template <class T>
void batchnorm_backward(const T* dy, const T* x, const T* gamma, const T* saved_mean,
                        const T* saved_invstd, const T* y, T* dx, T* dgamma, T* dbeta,
                        int64_t n, int64_t c, bool training, bool relu) {
  if (c <= 0) return;
  // dx = k dz + q (x - mean) + r per column; eval has q = r = 0 and writes dx while summing.
  std::vector<T> k(c), q(c), r(c);
  for (int64_t j = 0; j < c; ++j) k[j] = T(double(gamma[j]) * double(saved_invstd[j]));
  std::vector<double> sums(2 * size_t(c));
  with_flag(relu, [&](auto kRelu) {
    with_flag(!training, [&](auto kWriteDx) {
      column_sums(n, c, 2, sums.data(), [&](int64_t begin, int64_t end, double* acc) {
        backward_sum_rows<decltype(kRelu)::value, decltype(kWriteDx)::value>(
            dy, x, y, saved_mean, k.data(), dx, acc, c, begin, end);
      });
    });
  });
  for (int64_t j = 0; j < c; ++j) {
    const double invstd = double(saved_invstd[j]);
    const double sum_dz = sums[j];
    const double sum_dz_xhat = sums[c + j] * invstd;
    dbeta[j] += T(sum_dz);
    dgamma[j] += T(sum_dz_xhat);
    const double kj = double(gamma[j]) * invstd;
    q[j] = T(-kj * invstd * sum_dz_xhat / double(n));
    r[j] = T(-kj * sum_dz / double(n));
  }
  if (!training) return;
  with_flag(relu, [&](auto kRelu) {
    parallel_for(n, row_grain(c), [&](int64_t begin, int64_t end) {
      backward_dx_rows<decltype(kRelu)::value>(dy, x, y, saved_mean, k.data(), q.data(),
                                               r.data(), dx, c, begin, end);
    }, 1);
  });
}

#define FASTNN_INSTANTIATE(T)                                                                  \
  template void batchnorm_forward<T>(const T*, const T*, const T*, T*, T*, T*, T*, T*,        \
                                     int64_t, int64_t, bool, double, double, bool);            \
  template void batchnorm_backward<T>(const T*, const T*, const T*, const T*, const T*,       \
                                      const T*, T*, T*, T*, int64_t, int64_t, bool, bool);
FASTNN_INSTANTIATE(float)
FASTNN_INSTANTIATE(double)
#undef FASTNN_INSTANTIATE

}  // namespace fastnn::cpu
